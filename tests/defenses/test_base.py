"""The Defense base: per-call seed and noise rows (no mutation), the final ``protect``, universal defenses, layout."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters.defenses import CMUA, FGSM, IFGSM, PGD, AntiForgery, Defense, UniversalDefense
from lora_patch_adapters.defenses.base import project, seeded_uniform
from lora_patch_adapters.generators import StarGANEditor, StarGANGenerator
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import BypassTrainer
from lora_patch_adapters.tuner.config import LoraPatchConfig
from tests.training.conftest import quick_config, tiny_data, tiny_editor


@pytest.fixture(scope="module")
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
    return x, labels


class Noise(Defense):
    """Only the random start: x + start_noise(x, eps)."""

    name = "noise"

    def __init__(self, eps: float = 0.05, seed: int = 0) -> None:
        self.eps, self.seed = eps, seed

    def _protect(self, x, editor, conditions):
        return x + self.start_noise(x, self.eps)


def _snapshot(defense):
    return dict(vars(defense)), repr(defense)


@pytest.mark.parametrize("make", [
    lambda seed: PGD(steps=2, seed=seed),
    lambda seed: IFGSM(steps=2, seed=seed),
    lambda seed: FGSM(seed=seed),
    lambda seed: AntiForgery(steps=3, lr=1e-2, random_start=True, seed=seed),
])
def test_call_seed_matches_constructed_seed_and_leaves_the_defense_unchanged(editor, make):
    x, labels = _data()
    condition = editor.conditions(labels)[0]
    defense = make(0)
    before = _snapshot(defense)
    with_call_seed = defense.protect(x, editor, condition, seed=11)
    assert _snapshot(defense) == before
    assert torch.equal(with_call_seed, make(11).protect(x, editor, condition))
    assert torch.equal(defense.protect(x, editor, condition), make(0).protect(x, editor, condition))  # None: own seed
    assert not torch.equal(with_call_seed, defense.protect(x, editor, condition))
    assert _snapshot(defense) == before


def test_call_noise_rows_are_rows_of_the_full_batch_noise_and_leave_the_defense_unchanged(editor):
    x, labels = _data(n=6)
    defense = Noise(eps=0.05, seed=0)
    before = _snapshot(defense)
    rows = [1, 4, 5]
    part = defense.protect(x[rows], editor, None, seed=9, noise_rows=(rows, 6))
    expected = project(x[rows] + seeded_uniform(x, 0.05, 9)[rows], x[rows], 0.05)
    assert torch.equal(part, expected)
    assert torch.equal(defense.protect(x, editor, None, seed=9), project(x + seeded_uniform(x, 0.05, 9), x, 0.05))
    assert _snapshot(defense) == before
    # the options belong to the call: outside it the defense draws from its own seed, for the whole input
    assert torch.equal(defense.start_noise(x, 0.05), seeded_uniform(x, 0.05, 0))
    # PGD and Anti-Forgery use them too (deterministic, and different from the whole-batch noise)
    condition = editor.conditions(_data(n=2)[1])[0]
    for attack in (PGD(steps=1), AntiForgery(steps=2, lr=1e-2, random_start=True)):
        snapshot = _snapshot(attack)
        placed = attack.protect(x[:2], editor, condition, noise_rows=([3, 5], 6))
        assert torch.equal(placed, attack.protect(x[:2], editor, condition, noise_rows=([3, 5], 6)))
        assert not torch.equal(placed, attack.protect(x[:2], editor, condition))
        assert _snapshot(attack) == snapshot


def test_call_options_are_checked(editor):
    x, labels = _data()
    condition = editor.conditions(labels)[0]
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        PGD(steps=1).protect(x, editor, condition, seed=-1)
    with pytest.raises(ValueError, match=r"noise_rows must be a pair \(indices, total\)"):
        PGD(steps=1).protect(x, editor, condition, noise_rows=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="row indices"):
        PGD(steps=1).protect(x, editor, condition, noise_rows=([0, 1, 2, 9], 4))
    with pytest.raises(TypeError, match="keyword|positional"):
        PGD(steps=1).protect(x, editor, condition, 3)  # seed and noise_rows are keyword-only


def test_protect_is_final_and_overriding_it_is_refused_at_class_creation():
    assert getattr(Defense.protect, "__final__", False)
    with pytest.raises(TypeError, match=r"Sneaky overrides Defense\.protect.*implement _protect"):
        class Sneaky(PGD):
            def protect(self, x, editor, condition):
                return x
    with pytest.raises(TypeError, match=r"AlsoSneaky overrides Defense\.protect.*_finish"):
        class AlsoSneaky(UniversalDefense):
            protect = staticmethod(lambda x, editor=None, condition=None: x)

            def fit(self, data, editors):
                return self
    for cls in (FGSM, IFGSM, PGD, CMUA, AntiForgery, UniversalDefense):
        assert "protect" not in vars(cls) and cls.protect is Defense.protect


def test_a_training_step_leaves_the_trainer_attack_unchanged():
    attack = PGD(steps=2, step_size=0.03, seed=4)
    trainer = BypassTrainer(tiny_editor(), patch=LoraPatchConfig(r=4, init_weights="kaiming"),
                            loss=MMFALoss.pixel_only(), config=quick_config(max_steps=2), attack=attack)
    before = _snapshot(trainer.attack)
    trainer.train(tiny_data(4))
    assert trainer.step == 2
    assert _snapshot(trainer.attack) == before
    assert _snapshot(attack) == before  # and the caller's object, which the trainer copied
    assert "noise_rows" not in dir(trainer.attack)


class Constant(UniversalDefense):
    """A universal defense whose fit sets a fixed +-eps checkerboard."""

    name = "constant"

    def __init__(self, eps: float = 0.05) -> None:
        self.eps = eps
        self.perturbation = None

    def fit(self, data, editors):
        images, _ = data
        sign = torch.ones_like(images[:1])
        sign[..., ::2, :] = -1
        self.perturbation = self.eps * sign
        return self


def test_universal_defense_refuses_before_fit_then_applies_one_perturbation(editor):
    x, labels = _data(n=3)
    x[0, 0, 0, 0] = 1.0  # at the range boundary: clamped
    defense = Constant()
    with pytest.raises(RuntimeError, match=r"Constant has no perturbation yet: call fit\(data, editors\) first"):
        defense.protect(x)
    defense.fit((x, labels), editor)
    out = defense.protect(x)
    assert torch.equal(out, (x + defense.perturbation).clamp(-1, 1))
    inside = (x.abs() < 0.9)
    delta = out - x
    for i in range(x.shape[0]):  # the same perturbation for every image (away from the clamp)
        torch.testing.assert_close(delta[i][inside[i]], defense.perturbation[0][inside[i]], rtol=0, atol=1e-6)
    conditions = editor.conditions(labels)
    for args in ((editor, conditions[0]), (editor, conditions), (None, None), (editor, None)):
        assert torch.equal(defense.protect(x, *args), out)  # editor and condition are ignored
    assert torch.equal(defense.protect(x, editor, conditions[1], seed=5, noise_rows=([0, 1, 2], 3)), out)
    with pytest.raises(ValueError, match="universal perturbation is"):
        defense.protect(torch.zeros(1, 3, 16, 16))
    with pytest.raises(TypeError, match="abstract"):
        UniversalDefense()
    assert issubclass(CMUA, UniversalDefense) and not issubclass(PGD, UniversalDefense)


def test_one_defense_per_module_and_the_old_imports_still_work():
    from lora_patch_adapters.defenses import base
    from lora_patch_adapters.defenses.pgd import FGSM as FGSM_
    from lora_patch_adapters.defenses.pgd import IFGSM as IFGSM_
    from lora_patch_adapters.defenses.pgd import PGD_EPS, PGD_STEP_SIZE, PGD_STEPS

    assert (FGSM_, IFGSM_) == (FGSM, IFGSM)
    assert (PGD_EPS, PGD_STEPS, PGD_STEP_SIZE) == (base.PGD_EPS, base.PGD_STEPS, base.PGD_STEP_SIZE) == (0.05, 10, 0.01)
    modules = {cls: cls.__module__.rsplit(".", 1)[-1] for cls in (FGSM, IFGSM, PGD, CMUA, AntiForgery)}
    assert modules == {FGSM: "fgsm", IFGSM: "ifgsm", PGD: "pgd", CMUA: "cmua", AntiForgery: "anti_forgery"}
    assert (PGD().eps, PGD().steps, PGD().step_size) == (0.05, 10, 0.01)
    assert (CMUA().eps, CMUA().steps, CMUA().step_size, CMUA().momentum) == (0.05, 10, 0.01, 0.5)


@pytest.mark.parametrize("cls", [Defense, UniversalDefense, FGSM, IFGSM, PGD, CMUA, AntiForgery])
def test_class_docstrings_are_uniform(cls):
    doc = cls.__doc__ or ""
    for section in ("Paper:", "Objective:", "Shapes:", "Example::", "[N, 3, H, W]", "[-1, 1]"):
        assert section in doc, f"{cls.__name__}'s docstring lacks {section!r}"
    if cls not in (Defense, UniversalDefense):
        assert "Args" in doc and "Default" in doc
