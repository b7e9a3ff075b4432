"""FGSM / I-FGSM / PGD and CMUA: budgets, ranges, determinism, strength ordering, universality, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_patch_adapters.defenses import CMUA, FGSM, IFGSM, PGD
from lora_patch_adapters.generators import StarGANEditor, StarGANGenerator, wrap


@pytest.fixture
def editor():
    torch.manual_seed(0)
    generator = StarGANGenerator(conv_dim=8, repeat_num=1)
    for p in generator.parameters():
        p.requires_grad_(False)
    return StarGANEditor(generator)


def _data(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    labels = torch.zeros(n, 5)
    labels[torch.arange(n), torch.arange(n) % 3] = 1
    labels[:, 3] = (torch.arange(n) % 2).float()
    return x, labels


def _disruption(editor, x, x_adv, condition):
    with torch.no_grad():
        return F.mse_loss(editor.edit(x_adv, condition), editor.edit(x, condition)).item()


@pytest.mark.parametrize("defense", [FGSM(eps=0.05), IFGSM(eps=0.03, steps=3), PGD(eps=0.05, steps=3, seed=1)])
def test_budget_range_and_input_untouched(editor, defense):
    x, labels = _data()
    x[0, 0, 0, 0] = 1.0  # at the range boundary
    x_copy = x.clone()
    conditions = editor.conditions(labels)
    for condition in (conditions[0], conditions):  # one condition, and all of them jointly
        x_adv = defense.protect(x, editor, condition)
        assert torch.equal(x, x_copy)
        assert (x_adv - x).abs().max() <= defense.eps + 1e-6
        assert x_adv.min() >= -1 and x_adv.max() <= 1
        assert not torch.equal(x_adv, x)


def test_deterministic_given_seed(editor):
    x, labels = _data()
    c = editor.conditions(labels)[0]
    a = PGD(steps=2, seed=3).protect(x, editor, c)
    b = PGD(steps=2, seed=3).protect(x, editor, c)
    d = PGD(steps=2, seed=4).protect(x, editor, c)
    assert torch.equal(a, b) and not torch.equal(a, d)


def test_more_steps_disrupt_at_least_as_much(editor):
    x, labels = _data(n=6)
    c = editor.conditions(labels)[1]
    fgsm = _disruption(editor, x, FGSM(eps=0.05).protect(x, editor, c), c)
    pgd = _disruption(editor, x, PGD(eps=0.05, steps=10, step_size=0.01).protect(x, editor, c), c)
    noise = _disruption(editor, x, (x + 0.05 * torch.randn_like(x).sign()).clamp(-1, 1), c)
    assert pgd >= fgsm > noise


def test_joint_protection_disrupts_every_condition(editor):
    x, labels = _data()
    conditions = editor.conditions(labels)
    x_adv = PGD(steps=5).protect(x, editor, conditions)
    noise = (x + 0.05 * torch.randn_like(x).sign()).clamp(-1, 1)
    for c in conditions:
        assert _disruption(editor, x, x_adv, c) > _disruption(editor, x, noise, c)


def test_defense_errors(editor):
    x, labels = _data()
    c = editor.conditions(labels)[0]
    for bad in (0, -0.1, 1.5, True, "0.05"):
        with pytest.raises(ValueError, match=r"eps must be in \(0, 1\]"):
            PGD(eps=bad)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        IFGSM(steps=0)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        PGD(step_size=0)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*\[0, 255\]"):
        PGD().protect(x * 127.5 + 127.5, editor, c)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        PGD().protect(x[0], editor, c)
    with pytest.raises(TypeError, match="needs an Editor"):
        PGD().protect(x, editor.generator, c)
    with pytest.raises(ValueError, match="list of conditions is empty"):
        PGD().protect(x, editor, [])


def test_cmua_shares_one_perturbation_across_images_and_editors(editor):
    x, labels = _data(n=6)
    other = StarGANEditor(StarGANGenerator(conv_dim=8, repeat_num=1))
    # the published update favours the editor fitted last (momentum 0.5 per iteration): fit `editor` last
    cmua = CMUA(eps=0.05, steps=2, batch_size=3, seed=0).fit((x, labels), [other, editor])
    assert cmua.perturbation.shape == (1, 3, 32, 32)
    assert cmua.perturbation.abs().max() <= 0.05 + 1e-7 and cmua.perturbation.abs().max() > 0
    fresh, _ = _data(n=3, seed=9)
    protected = cmua.protect(fresh)
    delta = protected - fresh
    inside = (fresh.abs() < 0.9).all(1, keepdim=True).expand_as(delta)  # away from the clamp, delta is identical
    assert torch.allclose(delta[0][inside[0]], cmua.perturbation[0][inside[0]], atol=1e-6)
    assert torch.allclose(delta[1][inside[1]], cmua.perturbation[0][inside[1]], atol=1e-6)
    # on the images it was fitted on, it disrupts more than noise of the same magnitude with random signs
    c = editor.conditions(labels)[0]
    signs = torch.randn(cmua.perturbation.shape, generator=torch.Generator().manual_seed(1)).sign()
    scrambled = cmua.perturbation.abs() * signs
    noise = (x + scrambled).clamp(-1, 1)
    assert _disruption(editor, x, cmua.protect(x), c) > _disruption(editor, x, noise, c)
    # deterministic
    again = CMUA(eps=0.05, steps=2, batch_size=3, seed=0).fit((x, labels), [other, editor])
    assert torch.equal(again.perturbation, cmua.perturbation)


def test_cmua_errors(editor):
    x, labels = _data()
    with pytest.raises(RuntimeError, match="call fit"):
        CMUA().protect(x)
    with pytest.raises(ValueError, match="no images"):
        CMUA().fit([], editor)
    with pytest.raises(ValueError, match="momentum"):
        CMUA(momentum=1.0)
    with pytest.raises(TypeError, match="Editor"):
        CMUA().fit((x, labels), [])
    cmua = CMUA(steps=1).fit((x, labels), editor)
    with pytest.raises(ValueError, match="universal perturbation is"):
        cmua.protect(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="4 images but 3 label rows"):
        CMUA().fit((x, labels[:3]), editor)


def test_works_with_custom_editors():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Tanh())
    custom = wrap(net)
    x, _ = _data(n=2)
    x_adv = PGD(steps=2).protect(x, custom, None)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6
