"""Removal targets: the defended output outside the mask, the input or a fill from the surroundings inside."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters.removal import fill_from_surroundings, inpaint_target


def _mask(size: int = 16) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., 4:9, 6:12] = 1
    return mask


def test_input_fill_keeps_the_output_outside_and_the_input_inside():
    defended, inputs, mask = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1, _mask()
    target = inpaint_target(defended, inputs, mask, "input")
    inside = mask.expand_as(target).bool()
    assert torch.equal(target[~inside], defended[~inside])
    assert torch.equal(target[inside], inputs[inside])


def test_surroundings_fill_recovers_a_smooth_background():
    # a horizontal ramp: the hole must be filled with values between its left and right borders
    ramp = torch.linspace(-0.8, 0.8, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16).contiguous()
    holed = ramp.clone()
    mask = _mask()
    holed[mask.expand_as(holed).bool()] = 1.0  # the "warning"
    target = inpaint_target(holed, holed, mask, "surroundings")
    inside = mask.expand_as(target).bool()
    assert torch.equal(target[~inside], holed[~inside])
    assert (target[inside] - ramp[inside]).abs().max() < 0.2
    assert float(target[inside].max()) < 0.9  # the mark's colour is gone


def test_fill_reaches_every_pixel_of_a_large_hole():
    images = torch.full((1, 3, 20, 20), 0.25)
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., 1:19, 1:19] = 1
    filled = fill_from_surroundings(images * (1 - mask) + mask, mask)
    assert torch.allclose(filled, images, atol=1e-6)


def test_unknown_fill_is_refused():
    with pytest.raises(ValueError, match="fill must be one of"):
        inpaint_target(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4), "magic")


def test_input_rows_must_match_outputs():
    with pytest.raises(ValueError, match="one input row per output row"):
        inpaint_target(torch.zeros(2, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4), "input")
