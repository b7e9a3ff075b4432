"""The fast training path: same results as the standard path, no host syncs inside a step, non-finite steps skipped
on the device and reported, channels_last / bf16 / reference cache / compile switches."""

from __future__ import annotations

import sys

import pytest
import torch

from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import BypassTrainer, NonFiniteLossError, TrainingConfig, list_checkpoints
from lora_patch_adapters.training.runtime import resolve_runtime

from .conftest import quick_config, tiny_data, tiny_editor


def _trainer(loss=None, **config):
    return BypassTrainer(tiny_editor(), loss=loss or MMFALoss.pixel_only(), attack=PGD(steps=3),
                         config=quick_config(**config))


def _patch_state(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("schedule", ["batched", "per_condition"])
def test_fast_path_follows_the_standard_path(schedule):
    data = tiny_data(8)
    # per condition: 5 Adam steps per record; at the paper's lr (1e-3) rounding differences stay small over 20 steps
    lr = 1e-2 if schedule == "batched" else 1e-3
    standard = _trainer(schedule=schedule, max_steps=4, lr=lr)
    fast = _trainer(schedule=schedule, max_steps=4, fast=True, channels_last=False, log_every=3, lr=lr)
    assert not standard.runtime.fast and fast.runtime.fast
    a = standard.train(data).history
    b = fast.train(data).history
    assert [h["step"] for h in b] == [1, 2, 3, 4]
    for key in ("loss", "pixel_clean", "pixel_protected", "grad_norm", "lr"):
        got, want = torch.tensor([h[key] for h in b]), torch.tensor([h[key] for h in a])
        if schedule == "batched":  # same start, one optimiser step: the same first record
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-7)
        # then fused vs foreach Adam and two backward passes vs one round differently; Adam's normalised updates
        # carry that into the next steps
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-6)
    # the patched editors agree: same edits up to the drift above (outputs in [-1, 1]); over seeds 0-3 the drift
    # measured 2e-4..4.3e-3 (mean) and 5e-3..3e-2 (max), depending on the patch's random start
    x, labels = data
    condition = standard.editor.conditions(labels)[0]
    with torch.no_grad():
        difference = (fast.editor.edit(x, condition) - standard.editor.edit(x, condition)).abs()
    assert difference.mean() < 6e-3 and difference.max() < 5e-2


def test_channels_last_and_bf16_switches():
    trainer = _trainer(fast=True, precision="bf16")
    assert trainer.runtime.amp_dtype is torch.bfloat16 and trainer.runtime.channels_last
    conv_weights = [p for n, p in trainer.model.named_parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    reference = _trainer().train(tiny_data(4)).history
    history = trainer.train(tiny_data(4)).history
    for got, want in zip(history, reference):  # bf16 autocast: close to fp32, not equal
        assert got["loss"] == pytest.approx(want["loss"], rel=0.05)
        assert got["loss"] != want["loss"]


def test_automatic_settings_follow_the_device():
    cpu = resolve_runtime(TrainingConfig(), torch.device("cpu"))
    assert (cpu.fast, cpu.amp_dtype, cpu.channels_last) == (False, None, False)
    forced = resolve_runtime(TrainingConfig.from_preset("fast"), torch.device("cpu"))
    assert (forced.fast, forced.amp_dtype, forced.channels_last) == (True, None, True)  # bf16 only when asked, on CPU
    paper = resolve_runtime(TrainingConfig(), torch.device("cuda"))  # the paper's recipe on every device
    assert (paper.fast, paper.amp_dtype, paper.channels_last) == (False, None, False)
    automatic = resolve_runtime(TrainingConfig(fast=None, channels_last=None), torch.device("cuda"))
    assert automatic.fast and automatic.channels_last


@pytest.mark.parametrize("field,value", [("fast", "yes"), ("precision", "fp16"), ("compile", "fastest"),
                                         ("channels_last", 1), ("cache_references", "no")])
def test_bad_fast_path_settings_are_refused(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        TrainingConfig(**{field: value})


def test_a_fast_step_never_reads_device_values(monkeypatch):
    """Every host read of a tensor value goes through one of these methods; inside a fast step only the check of the
    CPU-side labels (conditions are built on the CPU, before the copy) may use one."""
    trainer = _trainer(fast=True)
    x, labels = tiny_data(2)
    reads = []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            reads.append((name, sys._getframe(1).f_code.co_name))
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    pending = trainer._step(x, labels)
    step_reads = list(reads)
    records = trainer._read_back([pending])
    assert step_reads and {caller for _, caller in step_reads} == {"check_labels"}
    assert reads  # the read-back is where the values come to the host
    assert records[0]["step"] == 1 and trainer.history == records


def test_records_are_read_back_every_log_every_steps(monkeypatch):
    trainer = _trainer(fast=True, max_steps=5, log_every=2, batch_size=1)
    sizes = []
    original = trainer._read_back

    def counting(pending):
        sizes.append(len(pending))
        return original(pending)

    monkeypatch.setattr(trainer, "_read_back", counting)
    result = trainer.train(tiny_data(5))
    assert [s for s in sizes if s] == [2, 2, 1]
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5]


class NaNAfter(MMFALoss):
    """Pixel loss that turns NaN from its ``after``-th call on."""

    def __init__(self, after: int) -> None:
        super().__init__(pixel_weight=1.0, feature_weight=0.0, semantic_weight=0.0)
        self.calls, self.after = 0, after

    def forward(self, output, target, target_features=None):
        self.calls += 1
        loss, terms = super().forward(output, target, target_features)
        if self.calls > self.after:
            loss = loss * float("nan")
        return loss, terms


def test_a_non_finite_step_is_skipped_on_the_device_and_reported(tmp_path):
    data = tiny_data(8)
    good = _trainer(max_steps=2, fast=True, batch_size=2)
    good.train(data)
    # the fast path makes 2 loss calls per step (clean, protected): NaN from the 3rd step on
    bad = BypassTrainer(tiny_editor(), loss=NaNAfter(after=4), attack=PGD(steps=3),
                        config=quick_config(max_steps=4, fast=True, batch_size=2, log_every=10, checkpoint_every=10),
                        output_dir=str(tmp_path))
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*before the optimiser applied it.*Last good checkpoint"):
        bad.train(data)
    assert bad.step == 2 and len(bad.history) == 2
    for name, value in _patch_state(good).items():
        torch.testing.assert_close(_patch_state(bad)[name], value, rtol=0, atol=0)
    steps = {float(s["step"]) for s in bad.optimizer.state.values()}
    assert steps == {2.0}  # the skipped steps left Adam's state alone
    assert [int(c.rsplit("-", 1)[-1]) for c in list_checkpoints(str(tmp_path))] == [2]
    assert bad.optimizer.found_inf is None  # the trainer can go on after the error is handled


def test_reference_cache_skips_the_base_forward_in_later_epochs(monkeypatch):
    data = tiny_data(4)
    plain = _trainer(max_steps=None, epochs=2, fast=True).train(data).history
    trainer = _trainer(max_steps=None, epochs=2, fast=True, cache_references=True)
    calls = []
    original = trainer.model.disable_adapter

    def counting():
        calls.append(trainer.epoch)
        return original()

    monkeypatch.setattr(trainer.model, "disable_adapter", counting)
    cached = trainer.train(data).history
    assert calls == [0, 0]  # two batches in epoch 0, none in epoch 1
    assert len(trainer._reference_cache) == 4 * 5  # one entry per (image, target condition)
    assert [h["loss"] for h in cached] == [h["loss"] for h in plain]


def test_compiled_generator_trains_like_eager(monkeypatch):
    """``compile`` puts the generator through torch.compile with the mode asked for. The test traces with the
    aot_eager backend (dynamo + AOTAutograd, where the patch layers meet the compiler) instead of inductor, whose
    C++ code generation would take minutes on a CPU."""
    calls = []
    original = torch.nn.Module.compile

    def compile_with_aot_eager(module, *args, **kwargs):
        calls.append(kwargs.get("mode"))
        return original(module, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_aot_eager)
    eager = _trainer(max_steps=2, fast=True).train(tiny_data(4)).history
    trainer = _trainer(max_steps=2, fast=True, compile="reduce-overhead")
    compiled = trainer.train(tiny_data(4)).history
    assert calls == ["reduce-overhead"]
    assert trainer.editor.generator._compiled_call_impl is not None
    for got, want in zip(compiled, eager):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
