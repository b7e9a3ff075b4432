"""Moved: patch I/O lives in :mod:`lora_patch_adapters.patches` (``save_patch``, ``load_patch``, ``validate_patch``,
``read_patch_info``, the errors) and :mod:`lora_patch_adapters.tuner.fingerprint` (``base_fingerprint``). This alias
keeps ``from lora_patch_adapters.patch_io import load_patch`` -- printed on model cards of patches already shared --
working."""

from . import patches as _patches
from .patches import *

__all__ = list(_patches.__all__)
