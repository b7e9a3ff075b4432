"""Differentiable image transformations for EOT (expectation over transformation) defenses, built on kornia.

A defender who expects a site to re-encode or blur the protected image optimises the perturbation through
differentiable versions of those transformations (Athalye et al., "Synthesizing Robust Adversarial Examples",
ICML 2018): ``PGD(eot=["identity", "jpeg75", "blur1"])`` maximises the disruption averaged over the listed views.

Names (:func:`parse_transform`):

* ``"identity"``: the image itself;
* ``"jpeg<Q>"`` (e.g. ``jpeg75``), quality Q in 1..100: :func:`differentiable_jpeg`, kornia's differentiable JPEG
  codec (Reich et al., WACV 2024: standard tables, 4:2:0 chroma subsampling, polynomial rounding). It approximates
  a real codec for gradients; measurements (``audit.transforms.jpeg``) use Pillow's real encoder;
* ``"blur<S>"`` (e.g. ``blur1``, ``blur0.5``), sigma S > 0 pixels: :func:`gaussian_blur`, kernel
  ``2 * max(1, round(2 S)) + 1`` (about 4 S + 1), reflect padding -- the audit's blur, one implementation.

All take and return images [N, 3, H, W] in [-1, 1] of any size H, W: kornia's codec pads the bottom and right edge
to a multiple of 16 by replicating the last row / column (as JPEG encoders do) and crops back, so no size is
refused; the blur needs H, W larger than the kernel's half width.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import gaussian_blur2d

__all__ = ["EOT_FORMS", "Transform", "blur_kernel_size", "differentiable_jpeg", "gaussian_blur", "identity",
           "parse_eot", "parse_transform", "transform_views"]

Transform = Callable[[torch.Tensor], torch.Tensor]

EOT_FORMS = ("identity", "jpeg<Q> with Q in 1..100 (e.g. jpeg75)", "blur<S> with sigma S > 0 pixels (e.g. blur1, "
             "blur0.5)")
"""The accepted transformation names, in words (for error messages and help texts)."""

_JPEG = re.compile(r"jpeg(\d+)")
_BLUR = re.compile(r"blur(\d+(?:\.\d*)?|\.\d+)")


def identity(x: torch.Tensor) -> torch.Tensor:
    """The image itself: [N, 3, H, W] -> the same tensor."""
    return x


def _check_quality(quality: Any) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or int(quality) != quality \
            or not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}.")
    return int(quality)


def _check_sigma(sigma: Any) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < float(sigma) < float("inf"):
        raise ValueError(f"Blur sigma must be a finite number > 0 pixels, got {sigma!r}.")
    return float(sigma)


def differentiable_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Differentiable JPEG round trip of images [N, 3, H, W] in [-1, 1] at ``quality`` (1..100) -> [N, 3, H, W] in
    [-1, 1] (kornia's ``jpeg_codec_differentiable`` on [0, 1]; any H, W, see the module docstring). Half-precision
    inputs are coded in float32 by kornia and returned in their dtype. The decoded image is clamped to [-1, 1] as a
    real decoder clamps to 8 bits (no gradient through saturated pixels)."""
    quality = _check_quality(quality)
    codec_dtype = torch.promote_types(x.dtype, torch.float32)
    table_quality = torch.tensor([float(quality)], device=x.device, dtype=codec_dtype)
    coded = jpeg_codec_differentiable(((x + 1) / 2).to(codec_dtype), table_quality)
    return (coded * 2 - 1).clamp(-1.0, 1.0).to(x.dtype)


def blur_kernel_size(sigma: float) -> int:
    """The odd kernel size for ``sigma`` pixels: ``2 * max(1, round(2 sigma)) + 1`` (about 4 sigma + 1)."""
    return 2 * max(1, round(2 * _check_sigma(sigma))) + 1


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of images [N, C, H, W] with standard deviation ``sigma`` pixels (kernel
    :func:`blur_kernel_size`, reflect padding; kornia's ``gaussian_blur2d``), differentiable; same shape and dtype."""
    size = blur_kernel_size(sigma)
    half = size // 2
    if x.dim() != 4 or min(x.shape[-2:]) <= half:
        raise ValueError(f"A blur of sigma {float(sigma):g} pixels ({size}x{size} kernel, reflect padding) needs "
                         f"images [N, C, H, W] with H and W > {half}, got {tuple(x.shape)}: use a smaller sigma or "
                         "larger images.")
    return gaussian_blur2d(x, (size, size), (float(sigma), float(sigma)), border_type="reflect")


def parse_transform(name: str) -> tuple[str, Transform]:
    """``(canonical name, transformation)`` for ``"identity"``, ``"jpeg<Q>"`` or ``"blur<S>"`` (see the module
    docstring); the canonical name writes Q as an int and S with ``:g`` (``"blur1.0"`` -> ``"blur1"``). Raises a
    ``ValueError`` listing the accepted forms for anything else."""
    text = name.strip().lower() if isinstance(name, str) else None
    if text == "identity":
        return "identity", identity
    match = _JPEG.fullmatch(text) if text else None
    if match:
        quality = int(match.group(1))
        if not 1 <= quality <= 100:
            raise ValueError(f"EOT transformation {name!r}: JPEG quality must be in 1..100 (e.g. jpeg75).")
        return f"jpeg{quality}", partial(differentiable_jpeg, quality=quality)
    match = _BLUR.fullmatch(text) if text else None
    if match:
        sigma = float(match.group(1))
        if not sigma > 0:
            raise ValueError(f"EOT transformation {name!r}: blur sigma must be > 0 pixels (e.g. blur1, blur0.5).")
        return f"blur{sigma:g}", partial(gaussian_blur, sigma=sigma)
    raise ValueError(f"Unknown EOT transformation {name!r}: use {'; '.join(EOT_FORMS)}.")


def parse_eot(eot: Any) -> tuple[str, ...] | None:
    """The ``eot=`` option of the defenses as a tuple of canonical names, or None (no EOT).

    ``eot`` is None, a list/tuple of names, or one string of comma-separated names (``"identity,jpeg75"``). The
    list is exactly what the defense averages over: ``"identity"`` (the untransformed image) is not implied. Empty
    lists, repeated transformations (after canonicalisation) and unknown names are ``ValueError`` s."""
    if eot is None:
        return None
    if isinstance(eot, str):
        names: Sequence[Any] = [part for part in eot.split(",") if part.strip()]
    elif isinstance(eot, (list, tuple)):
        names = eot
    else:
        raise TypeError(f"eot must be None or a list of transformation names ({'; '.join(EOT_FORMS)}), got "
                        f"{type(eot).__name__}.")
    if not names:
        raise ValueError("eot is an empty list: name at least one transformation (e.g. eot=['identity', 'jpeg75']), "
                         "or pass eot=None for no EOT.")
    canonical = tuple(parse_transform(name)[0] for name in names)
    repeated = sorted({n for n in canonical if canonical.count(n) > 1})
    if repeated:
        raise ValueError(f"eot names {repeated[0]!r} more than once ({list(names)}): each transformation is averaged "
                         "once; list it once.")
    return canonical


def transform_views(x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """The views of ``x`` [N, 3, H, W] under the transformations ``names``, stacked along the batch:
    [T * N, 3, H, W], rows ``t * N ... (t + 1) * N - 1`` for ``names[t]``. Differentiable in ``x``."""
    return torch.cat([parse_transform(name)[1](x) for name in names])
