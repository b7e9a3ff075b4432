"""Training patches: the min-max loop (:class:`PatchTrainer`), :class:`BypassTrainer`, :class:`WatermarkTrainer`,
checkpoints and seeding."""

from .bypass import BypassTrainer
from .checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from .config import SCHEDULES, TrainingConfig
from .defensive import WatermarkTrainer, evaluate_watermark
from .seeding import derive_seed, seed_everything
from .trainer import NonFiniteLossError, PatchTrainer, TrainingResult, as_dataset, epoch_batches

__all__ = [
    "SCHEDULES",
    "BypassTrainer",
    "CheckpointError",
    "NonFiniteLossError",
    "PatchTrainer",
    "TrainingConfig",
    "TrainingResult",
    "WatermarkTrainer",
    "as_dataset",
    "derive_seed",
    "epoch_batches",
    "evaluate_watermark",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "seed_everything",
]
