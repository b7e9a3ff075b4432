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
    assert config.schedule == "batched"


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
