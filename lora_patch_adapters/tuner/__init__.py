"""The gated LoRA patch as a PEFT method (mirrors ``peft/tuners/lora``)."""

from .config import GATE_TYPES, MERGEABLE_GATES, PRESETS, LoraPatchConfig
from .layer import Conv2d, ConvTranspose2d, GatedLoraLayer, Linear
from .model import LoraPatchModel, NonFiniteAdapterError, discover_target_modules
from .registry import PEFT_METHOD_NAME, PEFT_TYPE_NAME, PREFIX, ensure_peft_type, is_registered, register

register(LoraPatchConfig, LoraPatchModel)

__all__ = [
    "GATE_TYPES",
    "MERGEABLE_GATES",
    "PEFT_METHOD_NAME",
    "PEFT_TYPE_NAME",
    "PREFIX",
    "PRESETS",
    "Conv2d",
    "ConvTranspose2d",
    "GatedLoraLayer",
    "Linear",
    "LoraPatchConfig",
    "LoraPatchModel",
    "NonFiniteAdapterError",
    "discover_target_modules",
    "ensure_peft_type",
    "is_registered",
    "register",
]
