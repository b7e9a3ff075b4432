"""Evaluation: does a proactive defense still disrupt the editor once the generator is patched, and does a
defensive patch's warning show?

* :mod:`~lora_patch_adapters.evaluation.protocol` -- defend -> edit -> compare (default / leakage scenarios);
* :mod:`~lora_patch_adapters.evaluation.metrics` -- pure functions of tensors (MSE, L1, PSNR, SSIM, LPIPS, CMUA's
  masked L2);
* :mod:`~lora_patch_adapters.evaluation.lpips` -- LPIPS networks from local weights (never downloaded);
* :mod:`~lora_patch_adapters.evaluation.watermark` -- visibility of a defensive patch's warning.
* :mod:`~lora_patch_adapters.evaluation.grid` -- PNG grids with row and column captions drawn in the image.
"""

from . import metrics
from .grid import default_column_names, labelled_grid, save_labelled_grid
from .lpips import LpipsWeightsError, find_lpips_weights, lpips_available
from .protocol import (
    GROUPS,
    METRIC_NAMES,
    SCENARIOS,
    EvaluationOptions,
    EvaluationResult,
    compare,
    evaluate_defense,
    evaluate_patches,
    fit_universal,
)
from .watermark import (
    VISIBLE_MIN_CONTRAST,
    VISIBLE_MIN_CORRELATION,
    evaluate_watermark,
    visible_rate,
    watermark_visibility,
)

__all__ = [
    "GROUPS",
    "METRIC_NAMES",
    "SCENARIOS",
    "VISIBLE_MIN_CONTRAST",
    "VISIBLE_MIN_CORRELATION",
    "EvaluationOptions",
    "EvaluationResult",
    "LpipsWeightsError",
    "compare",
    "default_column_names",
    "evaluate_defense",
    "evaluate_patches",
    "evaluate_watermark",
    "find_lpips_weights",
    "fit_universal",
    "labelled_grid",
    "lpips_available",
    "metrics",
    "save_labelled_grid",
    "visible_rate",
    "watermark_visibility",
]
