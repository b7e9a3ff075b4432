"""Hardened defensive training: the config, one hardened step re-derived from the equations, no trace of the
simulated attacker afterwards, determinism and resume, and the refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import BypassTrainer, TrainingConfig, WatermarkTrainer, derive_seed
from lora_patch_adapters.training.config import PRESETS
from lora_patch_adapters.training.hardening import HardeningConfig
from lora_patch_adapters.training.simulated_removal import SIMULATED_ADAPTER
from lora_patch_adapters.tuner.config import LoraPatchConfig
from tests.removal.conftest import MARK, faces, stamp_editor
from tests.training.conftest import PatternAttack

HARDENING = HardeningConfig(steps=3, ranks=(2,), lrs=(0.02,), optimizers=("adam",), fills=("input",), weight=1.5,
                            margin=1)


def hardened_trainer(hardening=HARDENING, out=None, **config) -> WatermarkTrainer:
    settings = {"batch_size": 4, "seed": 3, "progress": False, "lr": 1e-2, "schedule": "batched",
                "hardening": hardening, **config}
    return WatermarkTrainer(stamp_editor(0.0), watermark=MARK, patch=LoraPatchConfig(r=2), attack=PatternAttack(),
                            loss=MMFALoss.pixel_only(), config=TrainingConfig(**settings), output_dir=out)


# ------------------------------------------------------------------------------------------------------ config
def test_config_round_trips_through_json_and_training_config():
    config = TrainingConfig(hardening=HARDENING)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["hardening"]["ranks"] == [2]
    again = TrainingConfig.from_dict(data)
    assert again.hardening == HARDENING
    assert TrainingConfig(hardening=HardeningConfig().to_dict()).hardening == HardeningConfig()


def test_paper_presets_are_not_hardened():
    for name in ("paper", "paper-defensive"):
        assert PRESETS[name]["hardening"] is None
        assert TrainingConfig.from_preset(name).hardening is None
    assert TrainingConfig.from_preset("paper-defensive", hardening=HardeningConfig()).preset_name() is None


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"ranks": ()}, "ranks must not be empty"),
    ({"ranks": (0,)}, "ranks"),
    ({"lrs": (0.0,)}, "lrs"),
    ({"lrs": (2.0,)}, "lrs"),
    ({"optimizers": ("lion",)}, "unknown \\['lion'\\]"),
    ({"fills": ("magic",)}, "unknown \\['magic'\\]"),
    ({"weight": -1.0}, "weight"),
    ({"margin": -1}, "margin"),
    ({"ranks": "8"}, "must be a list"),
])
def test_bad_hardening_settings_are_one_line_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        HardeningConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_hardening_keys_are_refused():
    with pytest.raises(ValueError, match="Unknown HardeningConfig fields \\['rnak'\\]"):
        HardeningConfig.from_dict({"rnak": 8})


def test_hardening_is_refused_on_the_fast_path_and_for_bypass_patches():
    with pytest.raises(ValueError, match="fast path"):
        TrainingConfig(hardening=HardeningConfig(), fast=True)
    with pytest.raises(ValueError, match="defensive patches"):
        BypassTrainer(stamp_editor(0.0), patch=LoraPatchConfig(r=2), loss=MMFALoss.pixel_only(),
                      config=TrainingConfig(hardening=HardeningConfig(), progress=False))


def test_sampling_draws_from_the_lists_and_depends_on_the_seed():
    config = HardeningConfig(ranks=(4, 8, 16), lrs=(1e-3, 3e-3), optimizers=("adam", "sgd"))
    draws = [config.sample(seed) for seed in range(40)]
    assert {d.rank for d in draws} == {4, 8, 16}
    assert {d.optimizer for d in draws} == {"adam", "sgd"}
    assert config.sample(7) == config.sample(7)


# --------------------------------------------------------------------------------------------- the step itself
def _stamp(weight: torch.Tensor, plane: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    planes = torch.cat([x, plane.expand(x.shape[0], -1, -1, -1)], dim=1)
    return torch.tanh(F.conv2d(planes, weight) + 0.5 * c.view(-1, 1, 1, 1))


def _delta(a: torch.Tensor, b: torch.Tensor, gate: torch.Tensor, scale: float) -> torch.Tensor:
    return (b[:, :, 0, 0] @ a.flatten(1)).view(b.shape[0], a.shape[1], 1, 1) * torch.sigmoid(gate) * scale


def test_one_hardened_step_equals_the_step_rederived_from_the_equations():
    trainer = hardened_trainer()
    layer = trainer.model.base_model.model.mix
    w0 = layer.base_layer.weight.detach().clone()
    plane = trainer.editor.generator.plane
    theta = [layer.lora_patch_A["default"].weight, layer.lora_patch_B["default"].weight,
             layer.lora_patch_gate["default"].logit]
    theta = [p.detach().clone().requires_grad_(True) for p in theta]
    scale = layer.scaling["default"]
    x, labels = faces(4, seed=21)
    conditions = trainer.editor.conditions(labels)
    xs, c = x.repeat(len(conditions), 1, 1, 1), torch.cat(conditions)

    def patched(weight_delta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return _stamp(w0 + _delta(*theta, scale) + weight_delta, plane, images, c)

    # the defensive loss: clean and protected edits towards the warning target
    with torch.no_grad():
        target = MARK.target(_stamp(w0, plane, xs, c))
        protected = PatternAttack().protect(xs, trainer.editor, torch.cat(conditions))
    zero = torch.zeros_like(w0)
    loss = F.mse_loss(patched(zero, xs), target) + F.mse_loss(patched(zero, protected), target)
    # the simulated removal: a fresh rank-2 adapter, 3 Adam steps towards the inpainted defended edit
    seed = derive_seed(derive_seed(3, 0, 0, 0), 1)
    setting = HARDENING.sample(seed)
    bound = 1 / math.sqrt(6)  # Kaiming-uniform(sqrt(5)) of a 1x1 convolution with 6 input channels
    a = ((torch.rand(setting.rank, 6, 1, 1, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * bound)
    phi = [a.requires_grad_(True), torch.zeros(3, setting.rank, 1, 1, requires_grad=True),
           torch.full((1,), -1.0, requires_grad=True)]
    sim_scale = LoraPatchConfig(r=setting.rank).layer_scale(linear=False)
    mask = MARK.footprint(32, 32, margin=1)
    with torch.no_grad():
        removal_target = (patched(zero, xs) * (1 - mask) + xs * mask).clamp(-1, 1)
    optimizer = torch.optim.Adam(phi, lr=setting.lr)
    for _ in range(HARDENING.steps):
        frozen_theta = _delta(*[t.detach() for t in theta], scale)
        attack_loss = F.mse_loss(_stamp(w0 + frozen_theta + _delta(*phi, sim_scale), plane, xs, c), removal_target)
        optimizer.zero_grad()
        attack_loss.backward()
        optimizer.step()
    after_output = patched(_delta(*[p.detach() for p in phi], sim_scale), xs)
    after = ((after_output - target) ** 2 * mask).mean()
    total = loss + HARDENING.weight * after
    total.backward()
    outer = torch.optim.Adam(theta, lr=1e-2, betas=(0.5, 0.999))
    outer.step()

    record = trainer.train_step(x, labels)
    got = [layer.lora_patch_A["default"].weight, layer.lora_patch_B["default"].weight,
           layer.lora_patch_gate["default"].logit]
    for mine, want in zip(got, theta):
        assert torch.allclose(mine, want, atol=1e-6, rtol=1e-5)
    assert record["warning_after_attack"] == pytest.approx(after.item(), rel=1e-5)
    assert record["loss"] == pytest.approx(total.item(), rel=1e-5)


def test_nothing_of_the_simulated_attacker_remains():
    trainer = hardened_trainer()
    base_weight = trainer.model.base_model.model.mix.base_layer.weight.detach().clone()
    x, labels = faces(4)
    trainer.train_step(x, labels)
    layer = trainer.model.base_model.model.mix
    assert SIMULATED_ADAPTER not in layer.lora_patch_A and SIMULATED_ADAPTER not in layer.r
    assert layer.active_adapters == ["default"]
    assert torch.equal(layer.base_layer.weight, base_weight)
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == [
        n for n, _ in trainer.model.named_parameters() if ".default" in n]
    assert list(trainer.model.peft_config) == ["default"]


def test_hardened_training_is_deterministic_and_resumes_to_the_same_bits(tmp_path):
    data = faces(8, seed=4)
    reference = hardened_trainer(epochs=2)
    reference.train(data)
    again = hardened_trainer(epochs=2)
    again.train(data)
    weights = {n: p for n, p in reference.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, weights[n]) for n, p in again.model.named_parameters() if p.requires_grad)

    interrupted = hardened_trainer(out=str(tmp_path), epochs=2, checkpoint_every=1, max_steps=3)
    interrupted.train(data)
    resumed = hardened_trainer(out=str(tmp_path), epochs=2, checkpoint_every=1)
    resumed.train(data, resume_from="latest")
    assert resumed.step == reference.step == 4
    assert all(torch.equal(p, weights[n]) for n, p in resumed.model.named_parameters() if p.requires_grad)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in reference.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip


def test_a_resume_with_other_hardening_settings_is_refused(tmp_path):
    from lora_patch_adapters.training import CheckpointError

    data = faces(8, seed=4)
    hardened_trainer(out=str(tmp_path), checkpoint_every=1, max_steps=1).train(data)
    other = hardened_trainer(hardening=HardeningConfig(steps=5, ranks=(2,)), out=str(tmp_path), checkpoint_every=1)
    with pytest.raises(CheckpointError, match="hardening"):
        other.train(data, resume_from="latest")


# ------------------------------------------------------------------------------------------ persistent attackers
PERSISTENT = HardeningConfig(steps=2, ranks=(2,), lrs=(0.02,), fills=("input",), persist=3)


def test_a_persistent_attacker_carries_on_then_is_drawn_anew():
    trainer = hardened_trainer(hardening=PERSISTENT)
    hardener = trainer.hardener
    x, labels = faces(4)
    trainer.train_step(x, labels)
    first = dict(hardener.episode)
    assert first["age"] == 1 and len(first["weights"]) == 3  # A, B, gate of the one layer
    trainer.train_step(x, labels)
    assert hardener.episode["seed"] == first["seed"] and hardener.episode["age"] == 2
    assert not torch.equal(hardener.episode["weights"][1], first["weights"][1])  # B kept training
    trainer.train_step(x, labels)
    trainer.train_step(x, labels)  # the fourth forward starts a fresh attacker
    assert hardener.episode["age"] == 1 and hardener.episode["seed"] != first["seed"]
    state = hardener.state()
    again = hardened_trainer(hardening=PERSISTENT).hardener
    again.load(state)
    assert again.episode["seed"] == hardener.episode["seed"] and again.episode["age"] == 1
    assert all(torch.equal(a, b) for a, b in zip(again.episode["weights"], hardener.episode["weights"]))


def test_a_persistent_attacker_resumes_to_the_same_bits(tmp_path):
    data = faces(8, seed=4)
    reference = hardened_trainer(hardening=PERSISTENT, epochs=2)
    reference.train(data)
    hardened_trainer(hardening=PERSISTENT, out=str(tmp_path), epochs=2, checkpoint_every=1, max_steps=3).train(data)
    assert any(p.name == "inner_state.pt" for p in tmp_path.rglob("*"))
    resumed = hardened_trainer(hardening=PERSISTENT, out=str(tmp_path), epochs=2, checkpoint_every=1)
    resumed.train(data, resume_from="latest")
    weights = {n: p for n, p in reference.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, weights[n]) for n, p in resumed.model.named_parameters() if p.requires_grad)
    assert resumed.hardener.episode["age"] == reference.hardener.episode["age"]
