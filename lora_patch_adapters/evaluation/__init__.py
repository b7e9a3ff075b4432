"""Evaluation: does a proactive defense still disrupt the editor once the generator is patched, and does a
defensive patch's warning show?

* :mod:`~lora_patch_adapters.evaluation.protocol` -- defend -> edit -> compare (default / leakage scenarios);
* :mod:`~lora_patch_adapters.evaluation.metrics` -- pure functions of tensors (MSE, L1, PSNR, SSIM, CMUA's masked L2);
* :mod:`~lora_patch_adapters.evaluation.watermark` -- visibility of a defensive patch's warning.
"""

from . import metrics
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
    "compare",
    "evaluate_defense",
    "evaluate_patches",
    "evaluate_watermark",
    "fit_universal",
    "metrics",
    "visible_rate",
    "watermark_visibility",
]
