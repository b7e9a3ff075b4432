"""Moved: Hub sharing lives in :mod:`lora_patch_adapters.patches` (``pull_patch``, ``push_patch``,
``inspect_patch``, ``make_model_card``, the ``HubError`` family). This alias keeps
``from lora_patch_adapters.hub import pull_patch`` working."""

from . import patches as _patches
from .patches import *

__all__ = list(_patches.__all__)
