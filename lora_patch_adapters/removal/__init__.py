"""Removal attacks on defensive patches: estimate the warning's region from the defended generator's outputs, then
fine-tune the defended generator (a new LoRA patch, or every weight) so that the region is filled in."""

from .attack import (
    ATTACKS,
    DEFAULT_ATTACKS,
    MASKS,
    METHODS,
    OPTIMIZERS,
    RemovalAttack,
    RemovalResult,
    RemovalTrainer,
    attacker_labels,
    edit_all,
    get_attack,
    make_optimizer,
    row_masks,
    warning_mask,
)
from .mask import estimate_mask, mask_iou, mask_score, otsu_threshold
from .targets import FILLS, fill_from_surroundings, inpaint_target

__all__ = [
    "ATTACKS",
    "DEFAULT_ATTACKS",
    "FILLS",
    "MASKS",
    "METHODS",
    "OPTIMIZERS",
    "RemovalAttack",
    "RemovalResult",
    "RemovalTrainer",
    "attacker_labels",
    "edit_all",
    "estimate_mask",
    "fill_from_surroundings",
    "get_attack",
    "inpaint_target",
    "make_optimizer",
    "mask_iou",
    "mask_score",
    "otsu_threshold",
    "row_masks",
    "warning_mask",
]
