"""lora-patch-adapters: gated low-rank patches for face-editing generators, as a PEFT method.

Importing the package registers ``PeftType.LORA_PATCH`` with peft, so that ``peft.get_peft_model``,
``peft.PeftConfig.from_pretrained`` and ``peft.PeftModel.from_pretrained`` handle lora-patch adapters.
"""

from __future__ import annotations

import peft
from torch import nn

from .data import testbed_faces
from .evaluation import evaluate_defense
from .generators import Editor, load_editor, wrap
from .losses import MMFALoss
from .patches import (
    export_official_patch,
    import_official_patch,
    inspect_patch,
    load_patch,
    pull_patch,
    push_patch,
    save_patch,
)
from .training import BypassTrainer, TrainingConfig, Watermark, WatermarkTrainer
from .tuner import (
    GATE_TYPES,
    PRESETS,
    GatedLoraLayer,
    LoraPatchConfig,
    LoraPatchModel,
    discover_target_modules,
    register,
)
from .version import __version__


def get_peft_model(
    model: nn.Module, config: LoraPatchConfig | None = None, adapter_name: str = "default", **kwargs
) -> peft.PeftModel:
    """Wrap ``model`` with a gated LoRA patch; ``config`` defaults to ``LoraPatchConfig()`` (rank 8, basic gate,
    zero-initialised B, every Conv2d/ConvTranspose2d). Returns a ``peft.PeftModel``; extra keyword arguments go to
    ``peft.get_peft_model``."""
    if config is None:
        config = LoraPatchConfig()
    if not isinstance(config, LoraPatchConfig):
        raise TypeError(
            f"lora_patch_adapters.get_peft_model expects a LoraPatchConfig, got {type(config).__name__}; "
            "use peft.get_peft_model for other PEFT methods."
        )
    return peft.get_peft_model(model, config, adapter_name=adapter_name, **kwargs)


__all__ = [
    "GATE_TYPES",
    "PRESETS",
    "BypassTrainer",
    "Editor",
    "GatedLoraLayer",
    "LoraPatchConfig",
    "LoraPatchModel",
    "MMFALoss",
    "TrainingConfig",
    "Watermark",
    "WatermarkTrainer",
    "__version__",
    "discover_target_modules",
    "evaluate_defense",
    "export_official_patch",
    "get_peft_model",
    "import_official_patch",
    "inspect_patch",
    "load_editor",
    "load_patch",
    "pull_patch",
    "push_patch",
    "register",
    "save_patch",
    "testbed_faces",
    "wrap",
]
