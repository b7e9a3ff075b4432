"""Moved: the warning mark lives in :mod:`lora_patch_adapters.marks.watermark` (``Watermark``, ``render_warning``,
``load_warning_image``, ``save_preview``). This alias is that very module, so ``from
lora_patch_adapters.training.watermark import Watermark`` keeps working (also ``lpa.Watermark``)."""

import sys

from ..marks import watermark as _watermark

sys.modules[__name__] = _watermark
