"""``TrainingConfig``: the knobs of the patch-training loop, validated, JSON-serialisable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .._checks import check_int, check_number
from .hardening import HardeningConfig

SCHEDULES = ("batched", "per_condition")
INNER_STRATEGIES = ("pgd", "fgsm_rs", "free")  # see lora_patch_adapters.training.inner
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    check_int(value, f"TrainingConfig.{name}", allow_none=allow_none)


def _positive_float(name: str, value: Any, allow_none: bool = False) -> None:
    check_number(value, f"TrainingConfig.{name}", allow_none=allow_none)


_PAPER: dict[str, Any] = {
    "epochs": 1, "batch_size": 4, "lr": 1e-3, "betas": (0.5, 0.999), "lr_schedule": "constant",
    "schedule": "per_condition", "seed": 42, "fast": False, "precision": "fp32", "channels_last": False,
    "compile": None, "grad_clip": None, "inner": "pgd", "inner_steps": None, "hardening": None,
}
PRESETS: dict[str, dict[str, Any]] = {
    # Qu et al. (arXiv 2510.03747) and their code: Adam lr 1e-3, betas (0.5, 0.999), batch 4, one epoch over 1000
    # images, seed 42, one optimiser step per (batch, target condition), fp32.
    "paper": _PAPER,
    # The paper's defensive (warning) patch: the same loop for 5 epochs (the patch itself is rank 16: the
    # LoraPatchConfig preset of the same name).
    "paper-defensive": {**_PAPER, "epochs": 5},
    # Opt-in throughput: every target condition of a batch in one forward and one optimiser step, no host syncs per
    # step, fused Adam, bf16 autocast and channels_last where the device has them. Not the paper's recipe: see
    # benchmarks/README.md for its measured quality gap.
    "fast": {**_PAPER, "schedule": "batched", "fast": True, "precision": "auto", "channels_last": None},
}
"""Named training recipes for :meth:`TrainingConfig.from_preset`; the dataclass defaults are ``"paper"``."""


@dataclass
class TrainingConfig:
    """How a patch is trained. The defaults are the paper's recipe (preset ``"paper"``: Adam 1e-3, betas 0.5/0.999,
    batch 4, one epoch, seed 42, one optimiser step per target condition, fp32, no fast path) on every device.

    A *step* is one batch: ``"per_condition"`` (the paper's schedule) takes one optimiser step per (batch, target
    condition); in the ``"batched"`` schedule all target conditions of the batch go through the generator together
    (N images x T conditions in one forward) and the optimiser steps once.
    """

    epochs: int = 1
    max_steps: int | None = None  # stop after this many batches (over all epochs); None: run every epoch fully
    batch_size: int = 4
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "cosine": decay to 0 over the run (a function of the step: resume-safe)
    betas: tuple[float, float] = (0.5, 0.999)
    schedule: str = "per_condition"
    seed: int = 42
    grad_clip: float | None = None  # max global L2 norm of the patch gradient; None: no clipping
    log_every: int = 10  # history keeps every step; the progress bar / log line refreshes this often
    checkpoint_every: int | None = None  # steps between checkpoints (needs an output directory); None: only final
    keep_checkpoints: int = 2  # the most recent checkpoints kept on disk
    force_resume: bool = False  # resume even from a checkpoint of another run configuration (patch, schedule, data)
    progress: bool = True  # show a tqdm progress bar
    # ---- the fast path (see lora_patch_adapters.training.runtime), opt-in: preset "fast", or fast=True
    fast: bool | None = False  # no host syncs per step (records read back every log_every steps), fused Adam;
    #                            None: on for CUDA devices, off otherwise
    precision: str = "fp32"  # "bf16": bf16 autocast; "fp32"; "auto": bf16 on the fast path where the device has it
    channels_last: bool | None = False  # NHWC activations and kernels; None: follows ``fast``
    compile: str | None = None  # torch.compile mode for the generator ("default", "reduce-overhead" = CUDA graphs,
    #                             "max-autotune"); None: eager
    cache_references: bool = False  # keep the frozen base's clean edits across epochs (needs deterministic data)
    # ---- the inner maximisation (lora_patch_adapters.training.inner): "pgd" (the paper), "fgsm_rs", "free"
    inner: str = "pgd"
    inner_steps: int | None = None  # "pgd": steps of the inner attack; None: the attack's own (10 by default)
    replays: int = 4  # "free": outer updates per batch and condition, each also moving the perturbation
    inner_warm_start: bool = False  # "pgd": start each image's attack where its previous one ended (checkpointed)
    # ---- defensive patches only: train the warning against simulated removal attacks (training.hardening); None: off
    hardening: HardeningConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, recorded with checkpoints and reports

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("max_steps", self.max_steps, allow_none=True)
        _positive_int("batch_size", self.batch_size)
        _positive_float("lr", self.lr)
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"TrainingConfig.betas must be two numbers in [0, 1), got {self.betas!r}.")
        self.betas = (float(betas[0]), float(betas[1]))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainingConfig.lr_schedule must be one of {list(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}.")
        if self.inner not in INNER_STRATEGIES:
            raise ValueError(f"TrainingConfig.inner must be one of {list(INNER_STRATEGIES)} (the inner maximisation), "
                             f"got {self.inner!r}.")
        _positive_int("inner_steps", self.inner_steps, allow_none=True)
        _positive_int("replays", self.replays)
        if not isinstance(self.inner_warm_start, bool):
            raise TypeError(f"TrainingConfig.inner_warm_start must be True or False, got {self.inner_warm_start!r}.")
        if self.inner_warm_start and self.inner != "pgd":
            raise ValueError(f"TrainingConfig.inner_warm_start applies to inner='pgd' only, not to {self.inner!r}.")
        if self.inner_steps is not None and self.inner != "pgd":
            raise ValueError(f"TrainingConfig.inner_steps applies to inner='pgd' only, not to {self.inner!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainingConfig.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainingConfig.seed must be an integer >= 0, got {self.seed!r}.")
        _positive_float("grad_clip", self.grad_clip, allow_none=True)
        _positive_int("log_every", self.log_every)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        _positive_int("keep_checkpoints", self.keep_checkpoints)
        for name in ("fast", "channels_last"):
            if not (getattr(self, name) is None or isinstance(getattr(self, name), bool)):
                raise ValueError(f"TrainingConfig.{name} must be True, False or None (automatic), "
                                 f"got {getattr(self, name)!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainingConfig.precision must be one of {list(PRECISIONS)}, got {self.precision!r}.")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"TrainingConfig.compile must be None or one of {list(COMPILE_MODES)}, "
                             f"got {self.compile!r}.")
        if isinstance(self.hardening, dict):
            self.hardening = HardeningConfig.from_dict(self.hardening)
        if self.hardening is not None and not isinstance(self.hardening, HardeningConfig):
            raise TypeError(f"TrainingConfig.hardening must be a HardeningConfig (or its dict) or None, "
                            f"got {type(self.hardening).__name__}.")
        if self.hardening is not None and self.fast:
            raise ValueError("TrainingConfig.hardening runs off the fast path (its simulated attack needs the checked "
                             "step): pass fast=False.")
        for name in ("cache_references", "force_resume"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TrainingConfig.{name} must be True or False, got {getattr(self, name)!r}.")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainingConfig:
        """A named recipe (``"paper"``, ``"paper-defensive"``, ``"fast"``; see :data:`PRESETS`) with field
        overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown training preset {name!r}; known: {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def preset_name(self) -> str | None:
        """The preset whose fields this config has (ignoring run bookkeeping: steps, logging, checkpoints), or None."""
        for name, values in PRESETS.items():
            if all(getattr(self, key) == (tuple(value) if key == "betas" else value) for key, value in values.items()):
                return name
        return None

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of 0-based ``step`` out of ``total_steps``."""
        if self.lr_schedule == "cosine" and total_steps > 1:
            return self.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps - 1) / (total_steps - 1)))
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["hardening"] = self.hardening.to_dict() if self.hardening is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown TrainingConfig fields {unknown}; known: {sorted(known)}.")
        return cls(**data)
