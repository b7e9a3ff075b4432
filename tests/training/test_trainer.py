"""The min-max loop: inner attack, what a step changes, schedules, clipping, NaN handling, resume."""

from __future__ import annotations

import json
import os

import peft
import pytest
import torch
import torch.nn.functional as F

from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.patches import base_fingerprint, save_patch
from lora_patch_adapters.training import BypassTrainer, NonFiniteLossError, list_checkpoints
from lora_patch_adapters.training.checkpoint import CheckpointError
from lora_patch_adapters.tuner.config import LoraPatchConfig
from tests.training.conftest import PatternAttack, quick_config, tiny_data, tiny_editor

KAIMING = LoraPatchConfig(r=4, init_weights="kaiming")


def patch_state(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_inner_attack_stays_within_eps_and_targets_the_current_patched_model(pixel_loss):
    editor = tiny_editor()
    trainer = BypassTrainer(editor, patch=KAIMING, loss=pixel_loss, config=quick_config(),
                            attack=PGD(eps=0.05, steps=5, step_size=0.02))
    x, labels = tiny_data(4)
    condition = editor.conditions(labels)[0]
    x_protected = trainer.protect(x, condition, seed=0)
    assert (x_protected - x).abs().max() <= 0.05 + 1e-6
    assert x_protected.min() >= -1 and x_protected.max() <= 1
    noise = (x + torch.empty_like(x).uniform_(-0.05, 0.05)).clamp(-1, 1)
    with torch.no_grad():
        clean = editor.edit(x, condition)
        attacked = F.mse_loss(editor.edit(x_protected, condition), clean)
        random = F.mse_loss(editor.edit(noise, condition), clean)
    assert attacked > 2 * random  # the attack raises the disruption of the (patched) model it runs against
    with trainer.model.disable_adapter():  # the same attack against the base model gives other images
        against_base = trainer.attack.protect(x, editor, condition)
    assert not torch.allclose(against_base, x_protected)


def test_inner_attack_gets_the_seed_and_noise_rows_per_call_without_being_modified(pixel_loss):
    editor = tiny_editor()
    trainer = BypassTrainer(editor, patch=KAIMING, loss=pixel_loss, config=quick_config(),
                            attack=PGD(eps=0.05, steps=2, step_size=0.02, seed=0))
    before = (dict(vars(trainer.attack)), repr(trainer.attack))
    x, labels = tiny_data(4)
    condition = editor.conditions(labels)[0]
    got = trainer.protect(x, condition, seed=7)
    assert torch.equal(got, PGD(eps=0.05, steps=2, step_size=0.02, seed=7).protect(x, editor, condition))
    rows = trainer.protect(x[:2], condition[:2], seed=7, noise_rows=([2, 3], 4))
    assert torch.equal(rows, trainer.attack.protect(x[:2], editor, condition[:2], seed=7, noise_rows=([2, 3], 4)))
    assert (dict(vars(trainer.attack)), repr(trainer.attack)) == before


def test_one_step_changes_only_patch_parameters(pixel_loss):
    editor = tiny_editor()
    trainer = BypassTrainer(editor, patch=KAIMING, loss=pixel_loss, config=quick_config(max_steps=1),
                            attack=PGD(steps=2, step_size=0.03))
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    before = patch_state(trainer)
    assert before and all("lora_patch_" in n for n in before)
    trainer.train(tiny_data(2))
    after = patch_state(trainer)
    for name, value in trainer.model.named_parameters():
        if name in frozen:
            assert torch.equal(value, frozen[name]), name
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) == len(before)  # A, B and every gate moved
    for name in ("lora_patch_A", "lora_patch_B", "lora_patch_gate"):
        assert any(name in n for n in changed)


def test_batched_and_per_condition_schedules_give_the_same_loss(pixel_loss):
    x, labels = tiny_data(3)
    losses = {}
    for schedule in ("batched", "per_condition"):
        editor = tiny_editor()
        trainer = BypassTrainer(editor, patch=KAIMING, loss=pixel_loss, config=quick_config(schedule=schedule),
                                attack=PatternAttack())
        groups = trainer._condition_groups(x, labels)
        with torch.no_grad():
            per_group = [sum(trainer.compute_loss(images, c)[0] for images, c in group) / len(group)
                         for group in groups]
        losses[schedule] = sum(per_group) / len(per_group)
        assert len(groups) == (1 if schedule == "batched" else 5)
        if schedule == "batched":  # N images x T conditions in one forward
            (images, condition), = groups[0]
            assert images.shape[0] == 3 * 5 and condition.shape == (15, 5)
    assert losses["batched"] == pytest.approx(losses["per_condition"].item(), rel=1e-5)


def test_per_condition_schedule_takes_one_optimiser_step_per_condition(pixel_loss):
    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=pixel_loss,
                            config=quick_config(schedule="per_condition", max_steps=1), attack=PatternAttack())
    trainer.train(tiny_data(2))
    assert trainer.optimizer.state[trainer.parameters[0]]["step"].item() == 5


def test_unstackable_conditions_fall_back_to_one_forward_each(pixel_loss):
    editor = tiny_editor()
    editor.concat_conditions = lambda conditions: None  # e.g. HiSD's condition objects
    trainer = BypassTrainer(editor, patch=KAIMING, loss=pixel_loss, config=quick_config(), attack=PatternAttack())
    x, labels = tiny_data(2)
    groups = trainer._condition_groups(x, labels)
    assert len(groups) == 1 and len(groups[0]) == 5
    record = trainer.train_step(x, labels)
    assert torch.isfinite(torch.tensor(record["loss"]))


def test_gradient_clipping_bounds_the_applied_gradient(pixel_loss):
    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=pixel_loss,
                            config=quick_config(grad_clip=1e-4, max_steps=1), attack=PatternAttack())
    trainer.train(tiny_data(2))
    applied = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.parameters]))
    assert trainer.history[-1]["grad_norm"] > 1e-3  # logged before clipping
    assert applied <= 1e-4 * 1.001


def test_history_records_loss_terms_and_grad_norm(pixel_loss):
    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=pixel_loss, config=quick_config(max_steps=2),
                            attack=PatternAttack())
    result = trainer.train(tiny_data(4))
    assert result.steps == 2 and len(result.history) == 2
    record = result.history[0]
    assert {"loss", "pixel_clean", "pixel_protected", "grad_norm", "lr", "seconds"} <= set(record)
    assert record["loss"] == pytest.approx(record["pixel_clean"] + record["pixel_protected"], rel=1e-5)
    assert result.grad_norm_stats()["max"] >= result.grad_norm_stats()["mean"] > 0


def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path, pixel_loss):
    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=pixel_loss, attack=PatternAttack(),
                            config=quick_config(max_steps=5, checkpoint_every=1), output_dir=str(tmp_path))
    original_forward = trainer.loss.forward
    calls = {"n": 0}

    def poisoned(output, target, target_features=None):
        calls["n"] += 1
        loss, terms = original_forward(output, target, target_features)
        if trainer.step == 2:  # the third step goes wrong
            return loss * float("nan"), {**terms, "pixel": terms["pixel"] * float("nan")}
        return loss, terms

    trainer.loss.forward = poisoned
    snapshot = {}

    def remember(*args, **kwargs):
        snapshot.update(patch_state(trainer))

    trainer.optimizer.register_step_post_hook(lambda *a, **k: remember())
    with pytest.raises(NonFiniteLossError, match=r"step 3.*Last good checkpoint: .*step-000002"):
        trainer.train(tiny_data(10))
    assert trainer.step == 2
    state = patch_state(trainer)
    assert all(torch.equal(state[n], snapshot[n]) for n in state)  # nothing applied after step 2
    assert os.path.basename(list_checkpoints(str(tmp_path))[-1]) == "step-000002"
    fresh = peft.PeftModel.from_pretrained(tiny_editor().generator, list_checkpoints(str(tmp_path))[-1])
    loaded = {n: p for n, p in fresh.named_parameters() if "lora_patch_" in n}
    assert all(torch.equal(loaded[n], state[n]) for n in state)


def _train_with_crash(tmp_path, crash_at=None, resume=False):
    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=MMFALoss.pixel_only(),
                            attack=PGD(steps=2, step_size=0.03),
                            config=quick_config(max_steps=None, epochs=2, lr_schedule="cosine", checkpoint_every=2,
                                                schedule="batched"),
                            output_dir=str(tmp_path))
    if crash_at is not None:
        original = trainer._step

        def crashing(x, labels, shard=None):
            if trainer.step + 1 == crash_at:
                raise KeyboardInterrupt
            return original(x, labels, shard)

        trainer._step = crashing
    data = tiny_data(6)  # 3 batches per epoch, 6 steps
    if crash_at is not None:
        with pytest.raises(KeyboardInterrupt):
            trainer.train(data)
        return trainer
    trainer.train(data, resume_from="latest" if resume else None)
    return trainer


def test_resume_continues_to_exactly_the_uninterrupted_result(tmp_path):
    uninterrupted = _train_with_crash(tmp_path / "a")
    crashed = _train_with_crash(tmp_path / "b", crash_at=6)  # crash mid-epoch 2, last checkpoint at step 4
    assert crashed.step == 5
    assert os.path.basename(list_checkpoints(str(tmp_path / "b"))[-1]) == "step-000004"
    resumed = _train_with_crash(tmp_path / "b", resume=True)
    assert resumed.step == uninterrupted.step == 6 and resumed.epoch == uninterrupted.epoch == 2
    expected, got = patch_state(uninterrupted), patch_state(resumed)
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in uninterrupted.history]
    assert len(list_checkpoints(str(tmp_path / "b"))) == 2  # keep_checkpoints


def test_resume_errors_are_clear(tmp_path, pixel_loss):
    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=pixel_loss, config=quick_config(),
                            output_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="No checkpoint to resume from"):
        trainer.train(tiny_data(2), resume_from="latest")
    with pytest.raises(CheckpointError, match="No checkpoint directory"):
        trainer.train(tiny_data(2), resume_from=str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        trainer.load_checkpoint(str(tmp_path / "half"))


def test_bad_arguments_get_clear_errors(pixel_loss):
    with pytest.raises(TypeError, match="Editor"):
        BypassTrainer(torch.nn.Conv2d(3, 3, 1), loss=pixel_loss)
    with pytest.raises(TypeError, match="Defense"):
        BypassTrainer(tiny_editor(), attack="pgd", loss=pixel_loss)
    editor = tiny_editor()
    BypassTrainer(editor, patch=KAIMING, loss=pixel_loss, config=quick_config())
    with pytest.raises(ValueError, match="already carries a lora-patch"):
        BypassTrainer(editor, patch=KAIMING, loss=pixel_loss)
    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=pixel_loss, config=quick_config())
    with pytest.raises(ValueError, match="same N"):
        trainer.train((torch.zeros(2, 3, 32, 32), torch.zeros(3, 5)))
    with pytest.raises(TypeError, match="Dataset"):
        trainer.train([1, 2, 3])


def test_accepts_an_existing_peft_model_and_datasets(pixel_loss):
    editor = tiny_editor()
    model = peft.get_peft_model(editor.generator, KAIMING)
    trainer = BypassTrainer(editor, patch=model, loss=pixel_loss, config=quick_config(max_steps=1),
                            attack=PatternAttack())
    assert trainer.model is model
    images, labels = tiny_data(2)
    dataset = torch.utils.data.TensorDataset(images, labels)
    assert trainer.train(dataset).steps == 1


def test_saved_patch_reloads_with_training_record(tmp_path, pixel_loss):
    editor = tiny_editor()
    trainer = BypassTrainer(editor, patch=KAIMING, loss=pixel_loss, config=quick_config(max_steps=1),
                            attack=PatternAttack())
    trainer.train(tiny_data(2))
    path = save_patch(trainer, str(tmp_path / "patch"), metadata={"note": "test"})
    # the training record is written once, in lora_patch.json (inside the atomic save)
    assert sorted(os.listdir(path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                        "lora_patch.json"]
    with open(os.path.join(path, "lora_patch.json")) as f:
        info = json.load(f)
    assert info["training"]["note"] == "test" and info["training"]["steps"] == 1
    assert info["base_fingerprint"] == base_fingerprint(tiny_editor(seed=0).generator, info["target_modules"])
    fresh = tiny_editor(seed=0)
    peft.PeftModel.from_pretrained(fresh.generator, path)
    x, labels = tiny_data(2, seed=9)
    condition = editor.conditions(labels)[2]
    with torch.no_grad():
        assert torch.equal(fresh.edit(x, condition), editor.edit(x, condition))


def test_non_finite_mid_batch_in_the_per_condition_schedule_names_the_last_periodic_checkpoint(tmp_path, pixel_loss):
    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=pixel_loss, attack=PatternAttack(),
                            config=quick_config(max_steps=3, checkpoint_every=1, schedule="per_condition"),
                            output_dir=str(tmp_path))
    original_forward = trainer.loss.forward
    calls = {"n": 0}

    def poisoned(output, target, target_features=None):
        calls["n"] += 1
        loss, terms = original_forward(output, target, target_features)
        # 2 loss calls (clean, protected) per condition, 5 conditions per step: call 17 = step 2, condition 4
        return (loss * float("nan"), terms) if calls["n"] == 17 else (loss, terms)

    trainer.loss.forward = poisoned
    with pytest.raises(NonFiniteLossError, match=r"already applied 3 of this batch.*step-000001"):
        trainer.train(tiny_data(6))
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step-000001"]


def test_a_checkpoint_records_its_files_and_the_run_it_belongs_to(tmp_path, pixel_loss):
    import hashlib

    trainer = BypassTrainer(tiny_editor(), patch=KAIMING, loss=pixel_loss, attack=PatternAttack(),
                            config=quick_config(max_steps=1, checkpoint_every=1), output_dir=str(tmp_path))
    trainer.train(tiny_data(3))
    path = list_checkpoints(str(tmp_path))[-1]
    with open(os.path.join(path, "trainer_state.json")) as f:
        state = json.load(f)
    for name in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "rng_state.pt"):
        with open(os.path.join(path, name), "rb") as f:
            data = f.read()
        assert state["files"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    run = state["run"]
    assert run["kind"] == "bypass" and run["patch"]["r"] == 4 and run["patch"]["init_weights"] == "kaiming"
    assert run["training"]["batch_size"] == 2 and run["training"]["seed"] == 3 and run["data"]["items"] == 3
    assert run["attack"] == "PatternAttack(eps=0.05)" and run["loss"] == {"pixel": 1.0, "feature": 0.0,
                                                                          "semantic": 0.0}
