import math

import pytest

from lora_patch_adapters.training import TrainingConfig
from lora_patch_adapters.training.seeding import derive_seed


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("batch_size", -1), ("batch_size", 2.5), ("lr", 0), ("lr", float("nan")), ("max_steps", 0),
     ("schedule", "sometimes"), ("lr_schedule", "linear"), ("grad_clip", -1.0), ("seed", -3), ("betas", (0.5,)),
     ("betas", (1.2, 0.9)), ("checkpoint_every", 0)],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**{field: value})


def test_defaults_are_the_papers():
    config = TrainingConfig()
    assert (config.lr, config.betas, config.batch_size, config.epochs, config.seed) == (1e-3, (0.5, 0.999), 4, 1, 42)
    assert config.schedule == "per_condition"  # one optimiser step per target condition, as in the paper


def test_round_trip_and_unknown_fields():
    config = TrainingConfig(max_steps=7, grad_clip=1.5, schedule="per_condition")
    assert TrainingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown TrainingConfig fields"):
        TrainingConfig.from_dict({"learning_rate": 1.0})


def test_cosine_schedule_decays_from_lr_to_zero():
    config = TrainingConfig(lr=2e-3, lr_schedule="cosine")
    lrs = [config.lr_at(step, 5) for step in range(5)]
    assert lrs[0] == pytest.approx(2e-3) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[2] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert TrainingConfig(lr=2e-3).lr_at(4, 5) == 2e-3


def test_derived_seeds_are_deterministic_and_distinct():
    seeds = {derive_seed(42, step, k) for step in range(50) for k in range(5)}
    assert len(seeds) == 250
    assert derive_seed(42, 3, 1) == derive_seed(42, 3, 1) != derive_seed(43, 3, 1)
    assert all(0 <= s < 2**31 for s in seeds)


# ------------------------------------------------------------------------------------------------------- presets
PAPER_RECIPE = {  # Qu et al. and their code (lora_patching.py / main.py): the facts, written out here
    "epochs": 1, "batch_size": 4, "lr": 1e-3, "betas": (0.5, 0.999), "seed": 42, "schedule": "per_condition",
    "fast": False, "precision": "fp32", "lr_schedule": "constant", "grad_clip": None, "compile": None,
    "channels_last": False,
}


def test_the_defaults_are_the_papers_recipe_on_every_device():
    default, paper = TrainingConfig(), TrainingConfig.from_preset("paper")
    assert default == paper
    assert {key: getattr(paper, key) for key in PAPER_RECIPE} == PAPER_RECIPE
    assert default.preset_name() == "paper"


def test_the_defensive_and_fast_presets():
    defensive = TrainingConfig.from_preset("paper-defensive")
    assert defensive.epochs == 5
    assert {k: getattr(defensive, k) for k in PAPER_RECIPE if k != "epochs"} == {
        k: v for k, v in PAPER_RECIPE.items() if k != "epochs"}
    fast = TrainingConfig.from_preset("fast")
    assert (fast.schedule, fast.fast, fast.precision, fast.channels_last) == ("batched", True, "auto", None)
    assert fast.preset_name() == "fast" and TrainingConfig(lr=2e-3).preset_name() is None
    assert TrainingConfig.from_preset("paper", max_steps=3, progress=False).preset_name() == "paper"  # bookkeeping
    with pytest.raises(ValueError, match="Unknown training preset 'papr'.*'paper'"):
        TrainingConfig.from_preset("papr")
