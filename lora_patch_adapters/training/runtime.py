"""How a training run executes on its device: the fast path's switches, resolved once per trainer.

The fast path (``TrainingConfig.fast``; on by default for CUDA) keeps the maths of the loop and changes how it runs:

* bf16 autocast for every generator/encoder forward (``precision``), the loss reductions stay in fp32;
* channels_last kernels and activations (``channels_last``);
* no host synchronisation inside a step: inputs are checked on the CPU before the copy, copies are non-blocking, loss
  terms stay on the device and are read back every ``log_every`` steps, and a non-finite step is skipped on the
  device (fused Adam's ``found_inf``) and reported at the next read-back;
* the inner attack runs with the patch parameters frozen, so every patched layer reuses one composed kernel for the
  whole attack instead of rebuilding it (and its autograd graph) at each PGD step;
* optionally ``torch.compile`` of the generator (``compile``; "reduce-overhead" records CUDA graphs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .config import TrainingConfig


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings of one trainer."""

    device: torch.device
    fast: bool
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile_mode: str | None

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the run's device, or nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, value: Any) -> Any:
        """``value`` (a tensor, or tuples/lists/dicts of them) on the run's device; non-blocking from pinned memory,
        channels_last for image batches on the fast path."""
        if isinstance(value, torch.Tensor):
            moved = value.to(self.device, non_blocking=value.is_pinned())
            if self.channels_last and moved.dim() == 4:
                moved = moved.contiguous(memory_format=torch.channels_last)
            return moved
        if isinstance(value, (list, tuple)):
            return type(value)(self.to_device(v) for v in value)
        if isinstance(value, dict):
            return {k: self.to_device(v) for k, v in value.items()}
        return value

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "fast": self.fast,
                "precision": "bf16" if self.amp_dtype is torch.bfloat16 else "fp32",
                "channels_last": self.channels_last, "compile": self.compile_mode}


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def resolve_runtime(config: TrainingConfig, device: torch.device) -> Runtime:
    """Turn the config's automatic settings into concrete ones for ``device``."""
    fast = config.fast if config.fast is not None else device.type == "cuda"
    if config.precision == "bf16":
        if not bf16_supported(device):
            raise ValueError(f"precision='bf16' is not supported on {device}; use precision='fp32'.")
        amp_dtype: torch.dtype | None = torch.bfloat16
    elif config.precision == "auto" and fast and device.type == "cuda" and bf16_supported(device):
        amp_dtype = torch.bfloat16
    else:
        amp_dtype = None
    channels_last = config.channels_last if config.channels_last is not None else fast
    return Runtime(device=device, fast=fast, amp_dtype=amp_dtype, channels_last=channels_last,
                   compile_mode=config.compile)


@contextlib.contextmanager
def frozen(parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    """Temporarily stop gradients to ``parameters`` (restored on exit, also after an exception)."""
    flags = [p.requires_grad for p in parameters]
    try:
        for p in parameters:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)
