"""Configuration of a gated LoRA patch (``LoraPatchConfig``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

from .._io import fsync_path
from .registry import ensure_peft_type

GATE_TYPES = ("none", "basic", "input_adaptive", "input_adaptive_channel", "input_adaptive_pixel")
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


CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
"""peft's file names for an adapter's config and (safetensors) weights."""


def weights_digest(path: str) -> str | None:
    """sha256 (hex) of the file at ``path``, or None when there is no such regular file."""
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SCALING_RULES = ("sqrt_rank", "rank", "official")
"""How ``lora_alpha`` becomes a layer's scale; see :meth:`LoraPatchConfig.layer_scale`."""
INIT_SCHEMES = ("zero", "kaiming")
FORWARD_MODES = ("fused", "two_branch")

_PAPER_BYPASS: dict[str, Any] = dict(
    r=8,
    lora_alpha=2.0,
    scaling="official",
    gate="basic",
    gate_init=-1.0,
    init_weights="kaiming",
    include_linear=True,
)
PRESETS: dict[str, dict[str, Any]] = {
    # The bypass patch of Qu et al. (arXiv 2510.03747): rank 8, alpha 2, the official code's scaling (alpha/sqrt(r)
    # on Conv2d/ConvTranspose2d, alpha on Linear), basic gate at -1, A and B Kaiming-uniform, every Conv2d,
    # ConvTranspose2d and Linear layer.
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
            "help": "How alpha becomes the scale: 'sqrt_rank' = alpha / sqrt(r) (the paper's rule for convolutions), "
            "'rank' = alpha / r (PEFT LoRA's rule), 'official' = the paper's code: alpha / sqrt(r) on Conv2d and "
            "ConvTranspose2d layers, alpha (no division) on Linear layers."
        },
    )
    gate: str = field(
        default="basic",
        metadata={
            "help": "Gate multiplying the update. 'basic': one learnable scalar per layer, sigmoid(g). "
            "'input_adaptive': sigmoid(w * mean(update) + b), a per-sample scalar (per row for Linear) from a "
            "learnable 1->1 affine. 'input_adaptive_channel': per-channel sigmoid of a learnable 1x1 conv (Linear "
            "for Linear layers) applied to the spatially pooled update. 'input_adaptive_pixel': the paper's code's "
            "'input_ada_channel': sigmoid of a learnable 1x1 conv (CxC) applied to the update at every pixel (Linear: "
            "a CxC Linear on the update), reading the update before the scale, as the official code does. 'none': "
            "no gate (factor 1). Only 'none' and 'basic' can be merged into the base weights."
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

    weights_sha256: str | None = field(
        default=None,
        metadata={
            "help": "sha256 (hex) of the adapter_model.safetensors this config was saved beside; filled in when the "
            "config is saved (peft's save_pretrained writes the weights first, then the config). "
            "lora_patch_adapters.load_patch refuses a directory whose weights file does not match it: a save "
            "interrupted between the two files, or files of two saves mixed. None: not recorded (older files)."
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

        if self.weights_sha256 is not None and not (
            isinstance(self.weights_sha256, str) and re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256)
        ):
            raise ValueError(
                "LoraPatchConfig.weights_sha256 must be None or 64 lowercase hex digits (a sha256 digest), "
                f"got {self.weights_sha256!r}; set it to null in adapter_config.json to skip the check."
            )

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` into ``save_directory`` atomically (a temporary file swapped in), recording
        ``weights_sha256`` of the ``adapter_model.safetensors`` already there (peft writes the weights first), so a
        reader can tell this config's weights from another save's. The config object itself is not changed."""
        if os.path.isfile(save_directory):
            raise ValueError(f"{save_directory!r} is a file; save_pretrained needs a directory.")
        os.makedirs(save_directory, exist_ok=True)
        auto_mapping = kwargs.pop("auto_mapping_dict", None)
        data = self.to_dict()
        data = {key: sorted(value) if isinstance(value, set) else value for key, value in data.items()}
        data["weights_sha256"] = weights_digest(os.path.join(save_directory, WEIGHTS_FILE))
        if auto_mapping is not None:
            data["auto_mapping"] = auto_mapping
        text = json.dumps(data, indent=2, sort_keys=True)
        # by hand: peft writes the file in place, so a crash mid-write would leave a truncated config
        fd, tmp = tempfile.mkstemp(prefix=CONFIG_FILE + ".", suffix=".partial", dir=save_directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            fsync_path(tmp)
            os.replace(tmp, os.path.join(save_directory, CONFIG_FILE))
        except BaseException:
            if os.path.lexists(tmp):
                os.remove(tmp)
            raise

    @property
    def scale(self) -> float:
        """The factor applied to ``B(A x)`` of a Conv2d / ConvTranspose2d layer: alpha/sqrt(r) (``"sqrt_rank"``,
        ``"official"``) or alpha/r (``"rank"``). Linear layers may differ: see :meth:`layer_scale`."""
        return self.layer_scale(linear=False)

    def layer_scale(self, linear: bool) -> float:
        """The factor applied to ``B(A x)`` in one layer: ``linear`` for nn.Linear layers, else convolutions.
        ``"sqrt_rank"``: alpha/sqrt(r); ``"rank"``: alpha/r; ``"official"``: alpha/sqrt(r) on convolutions and alpha
        on Linear layers (the paper's code divides only its convolution patches)."""
        alpha, r = float(self.lora_alpha), float(self.r)
        if self.scaling == "rank":
            return alpha / r
        if self.scaling == "official" and linear:
            return alpha
        return alpha / r**0.5

    @property
    def max_scale(self) -> float:
        """The largest scale any layer type gets under this config (for bounds checks)."""
        return max(self.layer_scale(linear=False), self.layer_scale(linear=True))

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
