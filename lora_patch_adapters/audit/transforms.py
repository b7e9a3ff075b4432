"""Simple transformations a protected image meets in the wild (re-encoding, resampling blur), for context: does the
protection survive them before any patching?

JPEG here is Pillow's real codec (8-bit RGB, 4:2:0), not the differentiable approximation
(:func:`lora_patch_adapters.defenses.transforms.differentiable_jpeg`) that EOT defenses optimise through: a site
re-encodes with a real codec, so that is what the audit measures; the differentiable codec only supplies gradients.
The blur is the one implementation shared with the defenses (kornia's, through
:func:`lora_patch_adapters.defenses.transforms.gaussian_blur`), so an EOT defense optimises through exactly the blur
it is measured against.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from PIL import Image

from ..defenses.transforms import gaussian_blur as _kornia_blur
from ..evaluation.protocol import Transform


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of images [N, 3, H, W] in [-1, 1] at ``quality`` (1-100), through 8-bit RGB (Pillow's real
    encoder, 4:2:0 chroma subsampling as most sites re-encode); not differentiable (see the module docstring)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality!r}.")
    pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        decoded.append(torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()))
    return (torch.stack(decoded).permute(0, 3, 1, 2).float() / 127.5 - 1).to(device=x.device, dtype=x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of images [N, 3, H, W] with standard deviation ``sigma`` pixels (kernel
    ``2 * max(1, round(2 sigma)) + 1``, about 4 sigma + 1, reflect padding): the defenses' kornia blur."""
    if not float(sigma) > 0:
        raise ValueError(f"Blur sigma must be > 0 pixels, got {sigma!r}.")
    return _kornia_blur(x, float(sigma))


def standard_transforms(jpeg_qualities: Sequence[int] = (90, 75, 50),
                        blur_sigmas: Sequence[float] = (0.5, 1.0)) -> dict[str, Transform]:
    """name -> transformation: ``"jpeg90"``, ..., ``"blur0.5"``, ..."""
    transforms: dict[str, Transform] = {}
    for quality in jpeg_qualities:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality!r}.")
        transforms[f"jpeg{int(quality)}"] = partial(jpeg, quality=int(quality))
    for sigma in blur_sigmas:
        if not float(sigma) > 0:
            raise ValueError(f"Blur sigma must be > 0 pixels, got {sigma!r}.")
        transforms[f"blur{float(sigma):g}"] = partial(gaussian_blur, sigma=float(sigma))
    return transforms
