"""Where is the warning? An estimate from the defended generator's outputs alone.

A defensive patch stamps the same mark on every edit, whatever the face: at the mark's pixels the outputs *agree*
with each other while the inputs differ, and they *differ from their inputs*. Elsewhere at most one of the two holds
(the background is kept, so outputs follow their inputs; an edited region changes with the target). For outputs
``y`` and their inputs ``x`` (both [M, 3, H, W] in [-1, 1]) the per-pixel score is

    score = mean ||y - x|| * clamp(1 - spread(y) / spread(x), 0, 1)

with ``||.||`` the L2 norm over the colour channels and ``spread`` the mean distance to the batch mean; the mask is
the score above Otsu's threshold, dilated by ``dilate`` pixels (to cover the mark's soft edge). No labels, no
knowledge of the mark: what an attacker holding only the defended weights and their own photos can compute.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

from .._checks import check_images, check_int

_EPS = 1e-3  # spread floor (in [-1, 1] units): a pixel whose inputs never vary carries no agreement signal


def mask_score(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The per-pixel warning score [H, W] >= 0 (see the module docstring) of outputs and inputs [M, 3, H, W]."""
    outputs = check_images(outputs, "outputs", allow_empty=False)
    inputs = check_images(inputs, "inputs", allow_empty=False)
    if outputs.shape != inputs.shape:
        raise ValueError(f"outputs and inputs must have the same shape [M, 3, H, W], got {tuple(outputs.shape)} and "
                         f"{tuple(inputs.shape)}: repeat each input once per edit of it.")
    if outputs.shape[0] < 2:
        raise ValueError("estimating the warning's mask needs at least 2 outputs (agreement is measured across them).")
    with torch.no_grad():
        y, x = outputs.detach().float().clamp(-1, 1), inputs.detach().float().to(outputs.device).clamp(-1, 1)
        difference = (y - x).norm(dim=1).mean(dim=0)
        spread_y = (y - y.mean(dim=0)).norm(dim=1).mean(dim=0)
        spread_x = (x - x.mean(dim=0)).norm(dim=1).mean(dim=0)
        agreement = (1 - spread_y / (spread_x + _EPS)).clamp(0, 1)
        return difference * agreement


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape, one population): ``values > threshold`` is the upper class of
    the ``bins``-bin histogram split that maximises the between-class variance (kornia's ``otsu_threshold``)."""
    plane = values.detach().float().reshape(1, -1)
    if float(plane.max()) <= float(plane.min()):
        return float(plane.max())
    _, threshold = kornia.filters.otsu_threshold(plane, nbins=bins)
    return float(threshold.reshape(()))


def estimate_mask(outputs: torch.Tensor, inputs: torch.Tensor, dilate: int = 1) -> torch.Tensor:
    """The estimated warning mask [1, 1, H, W] in {0, 1} (float) from outputs and their inputs [M, 3, H, W] in
    [-1, 1], M >= 2; ``dilate`` >= 0 pixels of growth (see the module docstring)."""
    check_int(dilate, "dilate", minimum=0)
    score = mask_score(outputs, inputs)
    mask = (score > otsu_threshold(score)).float()[None, None]
    if dilate:
        mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
    return mask


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two {0, 1} masks of the same shape (1.0 when both are empty)."""
    a, b = a.bool(), b.to(a.device).bool()
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union
