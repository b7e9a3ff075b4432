"""Configuration of a gated LoRA patch (``LoraPatchConfig``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

from .registry import ensure_peft_type

GATE_TYPES = ("none", "basic", "input_adaptive", "input_adaptive_channel")
"""Accepted values of ``LoraPatchConfig.gate``."""

MERGEABLE_GATES = ("none", "basic")
"""Gates whose value does not depend on the input, so that the patch folds into the base weight."""


def unmergeable_gate_error(adapter_name: str, gate: str) -> ValueError:
    """The error for merging an adapter whose gate depends on the input."""
    return ValueError(
        f"Adapter {adapter_name!r} uses gate={gate!r}, whose value depends on the input, so it cannot be merged "
        "into the base weights. Keep it unmerged, or train a patch with gate='basic' or gate='none' if you need "
        "merged inference."
    )


SCALING_RULES = ("sqrt_rank", "rank")
INIT_SCHEMES = ("zero", "kaiming")
FORWARD_MODES = ("fused", "two_branch")

_PAPER_BYPASS: dict[str, Any] = dict(
    r=8,
    lora_alpha=2.0,
    scaling="sqrt_rank",
    gate="basic",
    gate_init=-1.0,
    init_weights="kaiming",
    include_linear=True,
)
PRESETS: dict[str, dict[str, Any]] = {
    # The bypass patch of Qu et al. (arXiv 2510.03747): rank 8, alpha 2, alpha/sqrt(r), basic gate at -1,
    # A and B Kaiming-uniform, every Conv2d, ConvTranspose2d and Linear layer.
    "paper": _PAPER_BYPASS,
    # The paper's defensive (watermark) patch: the same recipe at rank 16.
    "paper-defensive": {**_PAPER_BYPASS, "r": 16},
}


@dataclass
class LoraPatchConfig(PeftConfig):
    """Configuration of a gated low-rank patch ``y = W x + gate * scale * B(A x)``.

    Every field is saved in ``adapter_config.json`` and restored by ``peft.PeftConfig.from_pretrained``.
    """

    r: int = field(default=8, metadata={"help": "Rank of the patch (number of channels between A and B); > 0."})
    lora_alpha: float = field(
        default=2.0, metadata={"help": "Patch strength alpha; the update is multiplied by the scale derived from it."}
    )
    scaling: str = field(
        default="sqrt_rank",
        metadata={
            "help": "How alpha becomes the scale: 'sqrt_rank' = alpha / sqrt(r) (the paper's rule), "
            "'rank' = alpha / r (PEFT LoRA's rule)."
        },
    )
    gate: str = field(
        default="basic",
        metadata={
            "help": "Gate multiplying the update. 'basic': one learnable scalar per layer, sigmoid(g). "
            "'input_adaptive': sigmoid(w * mean(update) + b), a per-sample scalar (per row for Linear) from a "
            "learnable 1->1 affine. 'input_adaptive_channel': per-channel sigmoid of a learnable 1x1 conv (Linear "
            "for Linear layers) applied to the spatially pooled update. 'none': no gate (factor 1). Only 'none' "
            "and 'basic' can be merged into the base weights."
        },
    )
    gate_init: float = field(
        default=-1.0,
        metadata={
            "help": "Initial gate logit: sigmoid(-1) ~ 0.27. Input-adaptive gates start with zero weights and this "
            "value as bias, so every gate starts at sigmoid(gate_init)."
        },
    )
    init_weights: str = field(
        default="zero",
        metadata={
            "help": "'zero': A Kaiming-uniform, B = 0, so the patched model equals the base model before training. "
            "'kaiming': A and B both Kaiming-uniform (the paper's choice; the patch is active from the start). "
            "PEFT's boolean spelling is accepted and stored as the name: True (an identity start) is 'zero', False "
            "(a random start) is 'kaiming'."
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Modules to patch, as in PEFT: a list of names (exact or dotted suffix) or a regex that must "
            "match the whole module name. None = every Conv2d and ConvTranspose2d (plus Linear when "
            "include_linear); the discovered names are written into this config object, sorted, when the patch is "
            "created (a config object already filled in for another model is copied instead of overwritten)."
        },
    )
    include_linear: bool = field(
        default=False,
        metadata={"help": "With target_modules=None, also patch every nn.Linear layer."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Modules never patched: a list of names (exact or dotted suffix) or a full-match regex."},
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules (e.g. a final layer) trained in full and saved with the patch, besides the low-rank "
            "update; as in PEFT."
        },
    )
    forward_mode: str = field(
        default="fused",
        metadata={
            "help": "How an unmerged 'none'/'basic' patch runs: 'fused' folds B @ A into the base kernel on the "
            "fly (one convolution, exact same maths, trainable), 'two_branch' runs base(x) and B(A(x)) separately. "
            "Input-adaptive gates always run two branches."
        },
    )
    base_fingerprint: str | None = field(
        default=None,
        metadata={
            "help": "'sha256:<hex>' fingerprint of the base weights of the targeted layers the patch was made for "
            "(see lora_patch_adapters.tuner.fingerprint.base_fingerprint). When None, it is computed and written "
            "here when the patch is injected (unless the base weights are on the meta device or merged), so every "
            "save path -- peft's save_pretrained, save_patch, trainer checkpoints -- records it. "
            "When set, injecting the patch into a model whose targeted layers differ raises FingerprintMismatchError "
            "(opt out: "
            "load_patch(..., allow_fingerprint_mismatch=True), or LORA_PATCH_ALLOW_FINGERPRINT_MISMATCH=1 for plain "
            "peft loading). Set it to None to start a new patch on another base from a loaded config."
        },
    )

    def __post_init__(self) -> None:
        ensure_peft_type()
        super().__post_init__()
        self.peft_type = ensure_peft_type()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraPatchConfig.r must be a positive integer (the patch rank), got {self.r!r}.")
        if not float(self.lora_alpha) > 0:
            raise ValueError(f"LoraPatchConfig.lora_alpha must be > 0, got {self.lora_alpha!r}.")
        _check_choice("scaling", self.scaling, SCALING_RULES)
        _check_choice("gate", self.gate, GATE_TYPES)
        if isinstance(self.init_weights, bool):  # PEFT's init_lora_weights=True / False convention
            self.init_weights = "zero" if self.init_weights else "kaiming"
        _check_choice("init_weights", self.init_weights, INIT_SCHEMES)
        _check_choice("forward_mode", self.forward_mode, FORWARD_MODES)
        self.target_modules = _normalise_names("target_modules", self.target_modules)
        self.exclude_modules = _normalise_names("exclude_modules", self.exclude_modules)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        if self.base_fingerprint is not None and not isinstance(self.base_fingerprint, str):
            raise TypeError(
                "LoraPatchConfig.base_fingerprint must be None or a 'sha256:<hex>' string, "
                f"got {self.base_fingerprint!r}."
            )

    @property
    def scale(self) -> float:
        """The factor applied to ``B(A x)`` before the gate: alpha/sqrt(r) or alpha/r."""
        if self.scaling == "sqrt_rank":
            return float(self.lora_alpha) / float(self.r) ** 0.5
        return float(self.lora_alpha) / float(self.r)

    @property
    def is_mergeable(self) -> bool:
        """Whether the gate is input-independent, so that the patch can be folded into the base weights."""
        return self.gate in MERGEABLE_GATES

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LoraPatchConfig:
        """Build a config from a named preset (``"paper"``, ``"paper-defensive"``), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown LoraPatchConfig preset {name!r}; choose one of {sorted(PRESETS)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"LoraPatchConfig has no field(s) {unknown}; see help(LoraPatchConfig).")
        return cls(**{**PRESETS[name], **overrides})


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"LoraPatchConfig.{name}={value!r} is not supported; choose one of {list(choices)}.")


def _normalise_names(name: str, value: Any) -> list[str] | str | None:
    """Lists/sets/tuples become a sorted, de-duplicated list (deterministic configs); strings stay regexes."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        if not all(isinstance(v, str) for v in value):
            raise TypeError(f"LoraPatchConfig.{name} must contain module names (str), got {value!r}.")
        return sorted(set(value))
    raise TypeError(f"LoraPatchConfig.{name} must be None, a regex string or a list of names, got {type(value)}.")
