"""Anti-Forgery: Lab a/b budget, untouched lightness and input, determinism, disruption, condition cycling, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_patch_adapters import wrap
from lora_patch_adapters.defenses.anti_forgery import AntiForgery, ab_perturb, to_normalised_lab
from lora_patch_adapters.defenses.base import seeded_uniform
from lora_patch_adapters.generators import StarGANEditor, StarGANGenerator

EPS = 0.05
# A few Adam steps with a large learning rate, so that the +-eps clamp binds and the test stays fast.
FAST = dict(eps=EPS, steps=5, lr=0.02)


@pytest.fixture
def editor() -> StarGANEditor:
    return StarGANEditor(StarGANGenerator(conv_dim=8, repeat_num=1))


@pytest.fixture
def x() -> torch.Tensor:
    """Moderate colours (RGB in [0.2, 0.8]) so that almost no perturbed pixel leaves the sRGB gamut."""
    return torch.rand(2, 3, 32, 32) * 1.2 - 0.6


@pytest.fixture
def small_x() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16) * 1.2 - 0.6


def _targets(n: int = 2) -> list[torch.Tensor]:
    return [torch.eye(5)[[i] * n] for i in range(5)]


def _disruption(editor, x_adv: torch.Tensor, x: torch.Tensor, conditions: list) -> float:
    with torch.no_grad():
        return sum(F.mse_loss(editor.edit(x_adv, c), editor.edit(x, c)).item() for c in conditions) / len(conditions)


def test_paper_defaults():
    defense = AntiForgery()
    assert (defense.ab_eps, defense.steps, defense.lr, defense.seed) == (0.05, 100, 1e-4, 0)
    assert defense.rgb_eps is None and defense.eps == 2.0  # the RGB projection never binds by default
    assert defense.random_start is False
    assert defense.name == "anti_forgery"
    assert "ab_eps=0.05" in repr(defense)


def test_within_lab_budget_lightness_unchanged_input_untouched(editor, x):
    original = x.clone()
    x_adv = AntiForgery(**FAST).protect(x, editor, _targets())
    torch.testing.assert_close(x, original, atol=0, rtol=0)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min().item() >= -1.0 and x_adv.max().item() <= 1.0

    # Pixels no RGB channel of which was clipped to [0, 1] are exact Lab perturbations: check those (almost all).
    unclipped = ((x_adv > -1 + 1e-6) & (x_adv < 1 - 1e-6)).all(dim=1, keepdim=True)
    assert unclipped.float().mean().item() > 0.95
    delta = to_normalised_lab(x_adv) - to_normalised_lab(x)
    delta_l, delta_ab = delta[:, :1], delta[:, 1:]
    assert delta_l[unclipped].abs().max().item() < 1e-3  # 0.1 L units
    ab = delta_ab[unclipped.expand_as(delta_ab)].abs()
    assert ab.max().item() <= EPS + 1e-3
    assert ab.max().item() > 0.9 * EPS  # the clamp binds with this learning rate
    # The image did change, in RGB as well.
    assert (x_adv - x).abs().max().item() > 1e-2


def test_rgb_eps_adds_an_rgb_budget(editor, small_x):
    x = small_x
    x_adv = AntiForgery(**FAST, rgb_eps=0.01).protect(x, editor, _targets())
    assert (x_adv - x).abs().max().item() <= 0.01 + 1e-6


def test_deterministic_per_seed(editor, small_x):
    x = small_x
    conditions = _targets()
    zero_start = AntiForgery(**FAST)
    torch.testing.assert_close(zero_start.protect(x, editor, conditions), zero_start.protect(x, editor, conditions))
    first = AntiForgery(**FAST, seed=1, random_start=True).protect(x, editor, conditions)
    torch.manual_seed(123)  # the global generator plays no part
    again = AntiForgery(**FAST, seed=1, random_start=True).protect(x, editor, conditions)
    other = AntiForgery(**FAST, seed=2, random_start=True).protect(x, editor, conditions)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert (first - other).abs().max().item() > 1e-3


def test_disrupts_more_than_random_noise_of_the_same_lab_budget(editor, x):
    conditions = _targets()
    lab = to_normalised_lab(x)
    delta_shape = torch.empty(x.shape[0], 2, *x.shape[2:])
    # The strongest random noise of the budget: a random sign at full +-eps on every a/b value.
    noise = [ab_perturb(lab, EPS * seeded_uniform(delta_shape, 1.0, s).sign()) * 2 - 1 for s in range(3)]
    noise_disruption = max(_disruption(editor, x_noise, x, conditions) for x_noise in noise)

    x_adv = AntiForgery(eps=EPS, steps=10, lr=0.01).protect(x, editor, conditions)
    attack_disruption = _disruption(editor, x_adv, x, conditions)
    assert attack_disruption > 2 * noise_disruption, (attack_disruption, noise_disruption)


def test_single_condition_tensor(editor, x):
    target = torch.eye(5)[[3, 3]]
    x_adv = AntiForgery(**FAST).protect(x, editor, target)
    assert _disruption(editor, x_adv, x, [target]) > 1e-4


class _Recorder(nn.Module):
    """A 1x1 conv editor that records the condition of every call (conditions are ints, added as a bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, condition: int) -> torch.Tensor:
        self.calls.append(condition)
        return torch.tanh(self.conv(x) + 0.1 * condition)


def test_cycles_over_conditions_one_per_step_without_touching_editor_grads(small_x):
    x = small_x
    module = _Recorder()
    editor = wrap(module, name="recorder")
    AntiForgery(**dict(FAST, steps=7)).protect(x, editor, [0, 1, 2])
    assert module.calls[:3] == [0, 1, 2]  # the clean references
    assert module.calls[3:] == [0, 1, 2, 0, 1, 2, 0]  # one target per Adam step, in turn
    assert all(p.grad is None for p in module.parameters())


@pytest.mark.parametrize("eps", [0, -0.05, 1.5, True, "0.05", math.nan])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="normalised Lab"):
        AntiForgery(eps=eps)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        AntiForgery(steps=steps)


@pytest.mark.parametrize("lr", [0, -1e-4, math.inf, math.nan, "1e-4", False])
def test_bad_lr(lr):
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        AntiForgery(lr=lr)


def test_bad_seed_rgb_eps_random_start():
    with pytest.raises(ValueError, match="seed"):
        AntiForgery(seed=-1)
    with pytest.raises(ValueError, match="rgb_eps"):
        AntiForgery(rgb_eps=2.0)
    with pytest.raises(TypeError, match="random_start"):
        AntiForgery(random_start=1)
    with pytest.raises(TypeError):
        AntiForgery(0.05)  # keyword-only hyper-parameters


def test_bad_inputs(editor):
    defense = AntiForgery(**FAST)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        defense.protect(torch.rand(1, 3, 8, 8) * 255, editor, torch.eye(5)[[0]])
    with pytest.raises(TypeError, match="Editor"):
        defense.protect(torch.zeros(1, 3, 8, 8), lambda x, c: x, torch.eye(5)[[0]])
    with pytest.raises(ValueError, match="delta_ab"):
        ab_perturb(to_normalised_lab(torch.zeros(1, 3, 8, 8)), torch.zeros(1, 3, 8, 8))
