"""Is the warning of a defensive patch visible?

Inside the mark's region (``mask``: mark alpha > 0.5) compare the change the generator made,
``d = output - y_ref``, with the change the target asks for, ``t = target - y_ref``:

* ``correlation`` -- cosine similarity of ``d`` and ``t`` over the 3 channels and the masked pixels: does the change
  have the warning's shape and colour (1 = exactly; a mark of another colour scores low or negative);
* ``contrast_ratio`` -- mean ``|d|`` over mean ``|t|`` in the region: how much of the intended change is there
  (1 = full strength, 0 = nothing).

The warning counts as **visible** when the change inside its region has its shape/colour and at least half its
intended magnitude: ``correlation >= VISIBLE_MIN_CORRELATION (0.8) and contrast_ratio >= VISIBLE_MIN_CONTRAST
(0.5)``. ``psnr_to_target`` (whole image) and ``outside_psnr`` (outside the region, against ``y_ref``: is the rest of
the edit kept) complete the picture. Outputs and references are clamped to [-1, 1] before scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .._checks import check_images, check_positive_int
from ..defenses.base import Defense
from ..defenses.pgd import PGD
from ..generators.base import Editor
from ..marks.watermark import Watermark

VISIBLE_MIN_CORRELATION = 0.8
"""Smallest cosine similarity between the change made and the change asked for inside the mark."""
VISIBLE_MIN_CONTRAST = 0.5
"""Smallest fraction of the intended change's magnitude inside the mark."""
_PSNR_EPS = 1e-10  # MSE floor on [0, 1]: PSNR capped at 100 dB, as in lora_patch_adapters.evaluation.metrics.psnr


def _masked_psnr(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PSNR [N] (dB, images mapped to [0, 1]) over the pixels where weight [1 or N, 1, H, W] is 1; capped at 100 dB.

    Written here because torchmetrics' PSNR has no pixel mask: this is its definition restricted to the mask."""
    squared = ((a - b) / 2).square() * weight
    count = (weight.expand(a.shape[0], 1, *a.shape[2:]).flatten(1).sum(dim=1) * a.shape[1]).clamp_min(1)
    return -10.0 * torch.log10((squared.flatten(1).sum(dim=1) / count).clamp_min(_PSNR_EPS))


def watermark_visibility(output: torch.Tensor, y_ref: torch.Tensor, watermark: Watermark,
                         slots: int | Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Per-sample visibility of ``watermark`` in ``output`` against the clean edits ``y_ref``; both [N, 3, H, W] in
    [-1, 1] (clamped first). ``slots``: the target condition of every row (an int: all rows), which places a mark
    with ``vary``; None: slot 0. Returns a dict of [N] tensors: ``psnr_to_target``, ``correlation``,
    ``contrast_ratio``, ``outside_psnr`` (float) and ``visible`` (bool; see the module docstring)."""
    output = check_images(output, "output")
    y_ref = check_images(y_ref, "y_ref")
    if output.shape != y_ref.shape:
        raise ValueError(
            f"output and y_ref must have the same shape [N, 3, H, W], got {tuple(output.shape)} and "
            f"{tuple(y_ref.shape)}."
        )
    if not isinstance(watermark, Watermark):
        raise TypeError(f"watermark must be a Watermark, got {type(watermark).__name__}.")
    dtype = torch.promote_types(torch.promote_types(output.dtype, y_ref.dtype), torch.float32)
    with torch.no_grad(), torch.autocast(device_type=output.device.type, enabled=False):
        out = output.detach().to(dtype).clamp(-1, 1)
        ref = y_ref.detach().to(device=out.device, dtype=dtype).clamp(-1, 1)
        rows = [slots] * out.shape[0] if isinstance(slots, int) else slots
        target = watermark.target(ref, rows)
        mask = watermark.rows(out.shape[2], out.shape[3], rows, "mask", device=out.device, dtype=dtype)
        change, intended = (out - ref) * mask, (target - ref) * mask
        dot = (change * intended).flatten(1).sum(dim=1)
        norms = change.flatten(1).norm(dim=1) * intended.flatten(1).norm(dim=1)
        correlation = dot / norms.clamp_min(1e-12)
        contrast = change.abs().flatten(1).sum(dim=1) / intended.abs().flatten(1).sum(dim=1).clamp_min(1e-12)
        return {
            "psnr_to_target": _masked_psnr(out, target, torch.ones_like(mask)),
            "correlation": correlation,
            "contrast_ratio": contrast,
            "outside_psnr": _masked_psnr(out, ref, 1 - mask),
            "visible": (correlation >= VISIBLE_MIN_CORRELATION) & (contrast >= VISIBLE_MIN_CONTRAST),
        }


def visible_rate(output: torch.Tensor, y_ref: torch.Tensor, watermark: Watermark,
                 slots: int | Sequence[int] | None = None) -> float:
    """Fraction of the samples in which the warning is visible (see :func:`watermark_visibility`)."""
    return watermark_visibility(output, y_ref, watermark, slots)["visible"].float().mean().item()


def evaluate_watermark(
    patched: Editor,
    base: Editor,
    watermark: Watermark,
    images: torch.Tensor,
    labels: torch.Tensor,
    defense: Defense | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Is the warning visible on the patched editor's outputs, for clean and for protected inputs?

    ``defense`` (default PGD eps 0.05) protects every image against the *patched* editor (the strongest case: the
    perturbation tries to move the output away from the warned edit) and against the base editor. Returns the
    visible fractions per input kind and overall (``visible_rate``), and mean visibility scores. ``progress``: show
    a progress bar.
    """
    check_positive_int(batch_size, "batch_size")
    defense = defense if defense is not None else PGD()
    device = base.device
    counts = {"clean": 0, "protected_vs_base": 0, "protected_vs_patched": 0}
    scores: dict[str, float] = {}
    n = 0
    bar = tqdm(total=images.shape[0], disable=not progress, unit="image", desc="watermark visibility",
               dynamic_ncols=True)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        conditions = base.conditions(labels[start : start + batch_size].to(device))
        for slot, condition in enumerate(conditions):
            inputs = {
                "clean": x,
                "protected_vs_base": defense.protect(x, base, condition),
                "protected_vs_patched": defense.protect(x, patched, condition),
            }
            with torch.no_grad():
                reference = base.edit(x, condition)
                for kind, x_in in inputs.items():
                    result = watermark_visibility(patched.edit(x_in, condition), reference, watermark, slot)
                    counts[kind] += int(result["visible"].sum())
                    for name, values in result.items():
                        if name != "visible":
                            key = f"{kind}_{name}"
                            scores[key] = scores.get(key, 0.0) + float(values.float().sum())
            n += x.shape[0]
        bar.update(x.shape[0])
    bar.close()
    rates = {f"visible_rate_{k}": v / n for k, v in counts.items()}
    return {"visible_rate": sum(counts.values()) / (3 * n), **rates, "samples_per_kind": n,
            **{k: v / n for k, v in scores.items()}}
