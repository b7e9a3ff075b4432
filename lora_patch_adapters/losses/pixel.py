"""Pixel term of the MMFA loss: mean squared error between images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_images as _check_images


def check_images(x: torch.Tensor, name: str = "images", channels: int | None = 3) -> None:
    """``x`` must be a floating tensor [N, C, H, W] with N >= 1 (and C equal to ``channels`` unless it is None), or a
    clear error naming it ``name``."""
    _check_images(x, name, channels, allow_empty=False)


def check_image_pair(output: torch.Tensor, target: torch.Tensor, channels: int | None = 3) -> None:
    """``output`` and ``target`` must pass :func:`check_images` and have the same shape, or a clear error."""
    check_images(output, "output", channels)
    check_images(target, "target", channels)
    if output.shape != target.shape:
        raise ValueError(
            f"output and target must have the same shape, got output {tuple(output.shape)} and target "
            f"{tuple(target.shape)}; pair each output with its own target (repeat the target batch if needed)."
        )


def pixel_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements of ``output`` and ``target`` [N, C, H, W] (same shape) -> scalar."""
    check_image_pair(output, target, channels=None)
    return F.mse_loss(output, target)
