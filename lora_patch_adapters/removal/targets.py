"""What a removal attacker trains towards: the defended output with the warning's region filled in.

``inpaint_target(defended, inputs, mask, fill)``: outside ``mask`` the defended generator's own output (the edit is
kept as the defender's generator makes it), inside it either the input face's pixels (``fill="input"``: the region
unedited) or a fill diffused in from the surrounding output pixels (``fill="surroundings"``: repeated 3x3 averaging
with the known pixels reset after every pass, so the hole takes the colours around it). All images [N, 3, H, W] in
[-1, 1]; the mask [1 or N, 1, H, W] in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_images

FILLS = ("input", "surroundings")


def fill_from_surroundings(images: torch.Tensor, mask: torch.Tensor, passes: int | None = None) -> torch.Tensor:
    """``images`` with the pixels where ``mask`` is 1 replaced by a diffusion of the pixels around them.

    Written by hand: a few lines of averaging; kornia and torchvision have no inpainting operator. Runs until every
    pixel is reached, at most ``passes`` times (default: the image's larger side, enough to cross any hole)."""
    known = 1 - mask
    passes = max(images.shape[-2:]) if passes is None else passes
    filled = images * known
    weight = known.expand(images.shape[0], 1, *images.shape[-2:]).clone()
    for _ in range(passes):  # normalised convolution: average only over the pixels already filled
        summed = F.avg_pool2d(filled, 3, stride=1, padding=1, count_include_pad=False)
        covered = F.avg_pool2d(weight, 3, stride=1, padding=1, count_include_pad=False)
        grown = summed / covered.clamp_min(1e-6)
        filled = torch.where(known.bool(), images, torch.where(covered > 0, grown, filled))
        weight = torch.maximum(known.expand_as(weight), (covered > 0).float())
        if bool(weight.min() > 0):
            break
    return filled


def inpaint_target(defended: torch.Tensor, inputs: torch.Tensor, mask: torch.Tensor,
                   fill: str = "input") -> torch.Tensor:
    """The removal target [N, 3, H, W]: ``defended`` outside ``mask``, ``fill`` inside (see the module docstring)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {list(FILLS)}, got {fill!r}.")
    defended = check_images(defended, "defended")
    with torch.no_grad():
        mask = mask.to(device=defended.device, dtype=defended.dtype)
        if fill == "input":
            inside = check_images(inputs, "inputs").to(device=defended.device, dtype=defended.dtype)
            if inside.shape != defended.shape:
                raise ValueError(f"inputs {tuple(inside.shape)} must match the defended outputs "
                                 f"{tuple(defended.shape)}: one input row per output row.")
        else:
            inside = fill_from_surroundings(defended.clamp(-1, 1), mask)
        return (defended * (1 - mask) + inside * mask).clamp(-1, 1)
