"""CMUA-Watermark's published update (VDIGPKU/CMUA-Watermark, attacks.py ``universal_perturb_*``) re-derived here
from its equations and compared with :class:`CMUA`; budget, cross-editor fitting, defaults, options, builtin."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lora_patch_adapters.defenses import CMUA
from lora_patch_adapters.defenses.plugins import DefenseLoadError, builtin_defense
from lora_patch_adapters.evaluation.protocol import fit_universal
from lora_patch_adapters.generators import StarGANEditor, StarGANGenerator, wrap

SIZE = 16


def _stargan(seed: int) -> StarGANEditor:
    torch.manual_seed(seed)
    generator = StarGANGenerator(conv_dim=8, repeat_num=1)
    for p in generator.parameters():
        p.requires_grad_(False)
    return StarGANEditor(generator, name=f"stargan{seed}")


@pytest.fixture
def pair() -> tuple[StarGANEditor, StarGANEditor]:
    """A tiny testbed editor pair: two StarGAN generators (5 attributes, 16 px) with different weights."""
    return _stargan(1), _stargan(2)


def _data(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g) * 1.8 - 0.9
    labels = torch.zeros(n, 5)
    labels[torch.arange(n), torch.arange(n) % 3] = 1
    labels[:, 4] = (torch.arange(n) % 2).float()
    return x, labels


def _published(batches, editors, eps, a, m, steps, seed, factors=None):
    """The published update, written from its equations: per batch, editor and target condition, restart from
    X = x + U(-eps, eps) (one torch.rand per restart from a generator seeded with `seed`), then per iteration
    X_adv = X + a sign(grad MSE(G(X, c), G(x, c))), eta = mean_batch clip(f (X_adv - x), +-eps),
    up = eta (first) or m up + (1 - m) eta, X = clip(x + up, -1, 1)."""
    factors = factors or {}
    noise = torch.Generator().manual_seed(seed)
    up = None
    for x, labels in batches:
        for editor in editors:
            f = factors.get(editor.name, 1.0)
            for c in editor.conditions(labels):
                with torch.no_grad():
                    y = editor.edit(x, c)
                X = x + (torch.rand(x.shape, generator=noise) * 2 - 1) * eps
                for _ in range(steps):
                    X = X.detach().clone().requires_grad_(True)
                    F.mse_loss(editor.edit(X, c), y).backward()
                    X_adv = X.detach() + a * X.grad.sign()
                    eta = torch.clamp(f * (X_adv - x), min=-eps, max=eps).mean(dim=0, keepdim=True)
                    up = eta if up is None else up * m + eta * (1 - m)
                    X = torch.clamp(x + up, min=-1, max=1)
    return up


def test_first_step_matches_the_equations():
    # one editor with one condition, one iteration: the watermark is exactly eta of the first restart
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Tanh())
    editor = wrap(net, edit_fn=lambda m, x, c: m(x), conditions_fn=lambda labels: [None])
    x, labels = _data()
    cmua = CMUA(eps=0.05, steps=1, step_size=0.01, seed=3).fit([(x, labels)], editor)
    start = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 0.05
    start.requires_grad_(True)
    ((net(start) - net(x).detach()) ** 2).mean().backward()
    want = torch.clamp(start.detach() + 0.01 * start.grad.sign() - x, -0.05, 0.05).mean(dim=0, keepdim=True)
    assert cmua.perturbation.shape == (1, 3, SIZE, SIZE)
    assert torch.allclose(cmua.perturbation, want, atol=1e-6)
    # not the simplified rule, not the clean start: the batch mean of the noisy first step
    assert not torch.allclose(want, torch.zeros_like(want))


@pytest.mark.parametrize(("steps", "momentum"), [(1, 0.5), (2, 0.5), (2, 0.3)])
def test_published_update_across_two_editors_and_batches(pair, steps, momentum):
    a, b = pair
    x, labels = _data(n=5)
    x = (x / 0.9).clamp(-1, 1)  # values near +-1: the restart leaves [-1, 1] (the published code does not clamp it)
    batches = [(x[:3], labels[:3]), (x[3:], labels[3:])]
    factors = {b.name: 2.0}
    cmua = CMUA(eps=0.05, steps=steps, step_size=0.01, momentum=momentum, seed=7, factors=factors)
    cmua.fit(batches, [a, b])
    want = _published(batches, [a, b], 0.05, 0.01, momentum, steps, 7, factors)
    assert torch.allclose(cmua.perturbation, want, atol=1e-6)


def test_perturbation_stays_within_eps_and_protect_applies_it(pair):
    x, labels = _data()
    cmua = CMUA(eps=0.03, steps=3, step_size=0.5, seed=0, factors={pair[0].name: 10.0}).fit((x, labels), pair)
    assert cmua.perturbation.abs().max().item() <= 0.03 + 1e-7
    assert cmua.perturbation.abs().max().item() > 0.01
    fresh, _ = _data(n=3, seed=5)
    protected = cmua.protect(fresh)
    assert (protected - fresh).abs().max().item() <= 0.03 + 1e-6
    assert protected.min() >= -1 and protected.max() <= 1
    assert torch.allclose(protected, (fresh + cmua.perturbation).clamp(-1, 1), atol=1e-6)


def test_fitting_across_two_editors_differs_from_one(pair):
    a, b = pair
    x, labels = _data()
    both = CMUA(steps=2, seed=0).fit((x, labels), [a, b]).perturbation
    only_a = CMUA(steps=2, seed=0).fit((x, labels), a).perturbation
    only_b = CMUA(steps=2, seed=0).fit((x, labels), [b]).perturbation
    assert not torch.allclose(both, only_a, atol=1e-4)
    assert not torch.allclose(both, only_b, atol=1e-4)
    # the order matters (momentum favours the editor fitted last)
    assert not torch.allclose(both, CMUA(steps=2, seed=0).fit((x, labels), [b, a]).perturbation, atol=1e-4)


def test_published_defaults_and_options():
    cmua = CMUA()
    assert (cmua.eps, cmua.steps, cmua.step_size, cmua.momentum) == (0.05, 10, 0.01, 0.5)
    assert (cmua.batch_size, cmua.n_images, cmua.update, cmua.factors, cmua.editors) == (64, 128, "published", {}, ())
    with pytest.raises(ValueError, match="update must be one of"):
        CMUA(update="fast")
    with pytest.raises(ValueError, match="factors"):
        CMUA(factors={"stargan": 0})
    with pytest.raises(TypeError, match="factors"):
        CMUA(factors=[1.0])
    with pytest.raises(ValueError, match="n_images"):
        CMUA(n_images=0)
    with pytest.raises(TypeError, match="Editor"):
        CMUA(editors=["stargan"])


def test_n_images_limits_the_fit(pair):
    a, _ = pair
    x, labels = _data(n=5)
    limited = CMUA(steps=1, seed=1, n_images=3, batch_size=2).fit([(x[:2], labels[:2]), (x[2:], labels[2:])], a)
    want = _published([(x[:2], labels[:2]), (x[2:3], labels[2:3])], [a], 0.05, 0.01, 0.5, 1, 1)
    assert torch.allclose(limited.perturbation, want, atol=1e-6)
    # a pair: the first n_images of the seeded permutation, in batches of batch_size
    order = torch.randperm(5, generator=torch.Generator().manual_seed(1))[:3]
    from_pair = CMUA(steps=1, seed=1, n_images=3, batch_size=2).fit((x, labels), a)
    want = _published([(x[order[:2]], labels[order[:2]]), (x[order[2:]], labels[order[2:]])], [a],
                      0.05, 0.01, 0.5, 1, 1)
    assert torch.allclose(from_pair.perturbation, want, atol=1e-6)


def test_simple_update_is_kept_as_an_option(pair):
    x, labels = _data()
    simple = CMUA(steps=2, seed=0, update="simple").fit((x, labels), pair)
    published = CMUA(steps=2, seed=0).fit((x, labels), pair)
    assert simple.perturbation.abs().max() <= 0.05 + 1e-7
    assert not torch.allclose(simple.perturbation, published.perturbation, atol=1e-4)


def test_configured_editors_are_fitted_first_and_shared_by_copies(pair):
    a, b = pair
    x, labels = _data()
    configured = CMUA(steps=1, seed=0, editors=[b, a])
    assert configured.editors == (b, a) and "stargan2" in repr(configured)
    clone = copy.deepcopy(configured)
    assert clone.editors[0] is b and clone.editors[1] is a
    # fit(data, a): a is already configured (used once, in its place)
    got = configured.fit((x, labels), a).perturbation
    assert torch.allclose(got, CMUA(steps=1, seed=0).fit((x, labels), [b, a]).perturbation, atol=0)
    # the evaluation's fit against one editor: the configured ones, then that editor
    fitted = fit_universal(CMUA(steps=1, seed=0, editors=[b]), a, (x, labels))
    assert torch.allclose(fitted.perturbation, CMUA(steps=1, seed=0).fit((x, labels), [b, a]).perturbation, atol=0)
    with pytest.raises(TypeError, match="Editor"):
        CMUA().fit((x, labels))


def test_builtin_cmua_fits_across_the_editors_given(pair):
    a, b = pair
    one = builtin_defense("cmua", editors=[a])
    assert isinstance(one, CMUA) and one.editors == ()  # one editor: fitted on the evaluation's editor, as before
    assert builtin_defense("cmua").editors == ()
    many = builtin_defense("cmua", eps=0.04, steps=4, seed=2, editors=[a, b])
    assert many.editors == (a, b)
    assert (many.eps, many.steps, many.step_size, many.seed) == (0.04, 4, 0.02, 2)
    with pytest.raises(DefenseLoadError, match="Editors"):
        builtin_defense("cmua", editors=[a, "attgan"])


def test_the_repr_shows_a_fitted_perturbation_by_its_shape():
    defense = CMUA(eps=0.05)
    defense.perturbation = torch.zeros(1, 3, 8, 8)
    text = repr(defense)
    assert "perturbation=tensor[1, 3, 8, 8]" in text and "\n" not in text and len(text) < 300
