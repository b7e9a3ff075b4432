"""Training patches: the min-max loop (:class:`PatchTrainer`), :class:`BypassTrainer`, :class:`WatermarkTrainer`
with its visible-warning target (:class:`Watermark`), checkpoints and seeding."""

from ..marks.watermark import Watermark
from .bypass import BypassTrainer
from .checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWarning,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from .config import PRESETS as TRAINING_PRESETS
from .config import SCHEDULES, TrainingConfig
from .defensive import WatermarkTrainer
from .seeding import derive_seed, seed_everything
from .trainer import NonFiniteLossError, PatchTrainer, TrainingResult, as_dataset, epoch_batches

__all__ = [
    "SCHEDULES",
    "TRAINING_PRESETS",
    "BypassTrainer",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWarning",
    "NonFiniteLossError",
    "PatchTrainer",
    "TrainingConfig",
    "TrainingResult",
    "Watermark",
    "WatermarkTrainer",
    "as_dataset",
    "derive_seed",
    "epoch_batches",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "seed_everything",
]
