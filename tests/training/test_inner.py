"""Inner-maximisation strategies (``TrainingConfig.inner``): the perturbation stays within eps and [-1, 1], only the
patch trains, runs are deterministic under a seed and resume bit-identically, and each strategy costs what it says."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters.defenses import PGD, AntiForgery
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import BypassTrainer, TrainingConfig
from lora_patch_adapters.training.inner import FGSM_RS_STEP, inner_attack

from .conftest import quick_config, tiny_data, tiny_editor

EPS = 0.05
STRATEGIES = [("pgd", {}), ("pgd", {"inner_steps": 2}), ("pgd", {"inner_warm_start": True}), ("fgsm_rs", {}),
              ("free", {"replays": 3})]
IDS = ["pgd", "pgd-2", "pgd-warm", "fgsm_rs", "free"]


def _trainer(inner: str, output_dir=None, schedule="batched", **config) -> BypassTrainer:
    return BypassTrainer(tiny_editor(), attack=PGD(eps=EPS, steps=3, step_size=0.02), loss=MMFALoss.pixel_only(),
                         config=quick_config(inner=inner, schedule=schedule, **config), output_dir=output_dir)


def _record_protected(trainer: BypassTrainer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen = []
    real = trainer.protect

    def recording(x, condition, seed=0, noise_rows=None):
        protected = real(x, condition, seed, noise_rows)
        seen.append((x.detach().clone(), protected.detach().clone()))
        return protected

    trainer.protect = recording
    return seen


def _patch(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("schedule", ["batched", "per_condition"])
@pytest.mark.parametrize(("inner", "extra"), STRATEGIES, ids=IDS)
def test_perturbations_stay_in_the_eps_ball_and_the_image_range(inner, extra, schedule):
    trainer = _trainer(inner, schedule=schedule, **extra)
    seen = _record_protected(trainer)
    x, labels = tiny_data(4)
    x[0, 0, :4] = 1.0  # pixels at the range's edges: the projection must keep them inside
    x[1, 1, :4] = -1.0
    trainer.train((x, labels))
    assert seen
    for clean, protected in seen:
        assert (protected - clean).abs().max() <= EPS + 1e-6
        assert protected.min() >= -1 and protected.max() <= 1
        assert (protected - clean).abs().max() > EPS / 2  # not a no-op


@pytest.mark.parametrize(("inner", "extra"), STRATEGIES, ids=IDS)
def test_only_the_patch_trains_and_runs_are_deterministic(inner, extra):
    runs = []
    for _ in range(2):
        trainer = _trainer(inner, **extra)
        base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
        before = _patch(trainer)
        trainer.train(tiny_data(4))
        after = _patch(trainer)
        assert all(not torch.equal(after[n], before[n]) for n in after)  # every patch tensor moved
        assert all(torch.equal(p, base[n]) for n, p in trainer.model.named_parameters() if not p.requires_grad)
        runs.append((after, [h["loss"] for h in trainer.history]))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][n], runs[1][0][n]) for n in runs[0][0])


@pytest.mark.parametrize(("inner", "extra"), STRATEGIES, ids=IDS)
def test_resume_is_bit_identical(inner, extra, tmp_path):
    data = tiny_data(8)
    settings = {"max_steps": 4, "checkpoint_every": 1, "keep_checkpoints": 4, **extra}
    full = _trainer(inner, output_dir=str(tmp_path / "full"), **settings)
    full.train(data)
    resumed = _trainer(inner, output_dir=str(tmp_path / "resumed"), **settings)
    resumed.train(data, resume_from=str(tmp_path / "full" / "checkpoints" / "step-000002"))
    assert [h["loss"] for h in resumed.history[-2:]] == [h["loss"] for h in full.history[-2:]]
    a, b = _patch(full), _patch(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_warm_starts_are_checkpointed_and_resume_bit_identically(tmp_path):
    data = tiny_data(4)  # 2 batches per epoch: the second epoch starts every attack from the first one's end
    settings = {"schedule": "per_condition", "inner_warm_start": True, "max_steps": None, "epochs": 2,
                "checkpoint_every": 1, "keep_checkpoints": 4}
    full = _trainer("pgd", output_dir=str(tmp_path / "full"), **settings)
    full.train(data)
    checkpoint = tmp_path / "full" / "checkpoints" / "step-000002"
    assert (checkpoint / "inner_state.pt").is_file()
    resumed = _trainer("pgd", output_dir=str(tmp_path / "resumed"), **settings)
    resumed.train(data, resume_from=str(checkpoint))
    assert sorted(resumed._warm.deltas) == sorted(full._warm.deltas)
    assert all(torch.equal(resumed._warm.deltas[i], full._warm.deltas[i]) for i in full._warm.deltas)
    assert [h["loss"] for h in resumed.history[-2:]] == [h["loss"] for h in full.history[-2:]]
    a, b = _patch(full), _patch(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    fresh = _trainer("pgd", output_dir=str(tmp_path / "fresh"), **{**settings, "inner_warm_start": False})
    fresh.train(data)
    assert fresh.history[-1]["loss"] != full.history[-1]["loss"]  # the warm starts changed the second epoch


def test_what_each_strategy_runs():
    x, labels = tiny_data(2)
    conditions = len(tiny_editor().conditions(labels))
    # fgsm_rs: one signed step of 1.25 eps from the random start, then the projection
    fgsm = _trainer("fgsm_rs")
    assert (fgsm.attack.steps, fgsm.attack.step_size, fgsm.attack.eps) == (1, FGSM_RS_STEP * EPS, EPS)
    assert _trainer("pgd", inner_steps=7).attack.steps == 7 and _trainer("pgd").attack.steps == 3
    # free: per condition, `replays` outer updates each moving the perturbation
    free = _trainer("free", schedule="per_condition", replays=3, max_steps=1)
    seen = _record_protected(free)
    free.train((x, labels))
    state = free.optimizer.state[free.parameters[0]]
    assert int(state["step"]) == conditions * 3
    assert len(seen) == conditions * 3
    first, second = seen[0][1], seen[1][1]  # replays 0 and 1 of the first condition
    assert torch.equal(seen[0][0], seen[1][0]) and not torch.equal(first, second)
    moved = (second - first).abs()
    assert moved.max() <= 2 * EPS + 1e-6 and moved.max() > 0


def test_warm_starts_continue_each_images_last_perturbation():
    x, labels = tiny_data(4)
    trainer = _trainer("pgd", schedule="per_condition", inner_warm_start=True, max_steps=None, epochs=2)
    starts = []
    real = trainer._warm.start

    def recording(images_x, images, eps, seed, noise_rows):
        stored = {i: trainer._warm.deltas.get(i) for i in images}
        start = real(images_x, images, eps, seed, noise_rows)
        starts.append((list(images), stored, (start - images_x).detach()))
        return start

    trainer._warm.start = recording
    trainer.train((x, labels))
    assert sorted(trainer._warm.deltas) == [0, 1, 2, 3]  # one perturbation per training image
    assert all(d.dtype == torch.float16 and d.abs().max() <= EPS + 1e-3 for d in trainer._warm.deltas.values())
    reused = [(row, images[row]) for images, stored, _ in starts for row in range(len(images))
              if stored[images[row]] is not None]
    assert reused  # later attacks on an image start from its stored perturbation
    for images, stored, delta in starts:
        for row, index in enumerate(images):
            if stored[index] is not None:
                assert torch.equal(delta[row], stored[index].float())


def test_unknown_strategies_and_bad_combinations_are_refused():
    with pytest.raises(ValueError, match=r"TrainingConfig.inner must be one of \['pgd', 'fgsm_rs', 'free'\]"):
        TrainingConfig(inner="trades")
    with pytest.raises(ValueError, match="inner_steps applies to inner='pgd' only"):
        TrainingConfig(inner="free", inner_steps=3)
    with pytest.raises(ValueError, match="replays"):
        TrainingConfig(inner="free", replays=0)
    with pytest.raises(ValueError, match="inner_warm_start applies to inner='pgd' only"):
        TrainingConfig(inner="fgsm_rs", inner_warm_start=True)
    with pytest.raises(ValueError, match="has no eps / step_size"):
        BypassTrainer(tiny_editor(), attack=AntiForgery(), loss=MMFALoss.pixel_only(),
                      config=quick_config(inner="fgsm_rs"))


@pytest.mark.parametrize("strategy,inner_steps,warm_start", [("pgd", 3, False), ("pgd", None, True),
                                                             ("fgsm_rs", None, False)])
def test_an_eot_attack_keeps_its_transformations_in_the_rebuilt_inner_attack(strategy, inner_steps, warm_start):
    eot_attack = PGD(eps=0.05, eot=["identity", "jpeg75"])
    rebuilt = inner_attack(strategy, eot_attack, inner_steps, warm_start)
    assert rebuilt is not eot_attack and rebuilt.eot == eot_attack.eot
    assert inner_attack(strategy, PGD(eps=0.05), inner_steps, warm_start).eot is None
