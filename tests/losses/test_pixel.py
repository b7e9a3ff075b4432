"""Pixel term: MSE value, gradient, shape checks."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters.losses import check_image_pair, pixel_loss
from tests.helpers import images


def test_pixel_loss_is_mean_squared_error():
    a, b = images(2, 8), images(2, 8)
    a.requires_grad_(True)
    loss = pixel_loss(a, b)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, ((a - b) ** 2).mean())
    loss.backward()
    torch.testing.assert_close(a.grad, 2 * (a - b).detach() / a.numel())


def test_pixel_loss_zero_for_identical_images():
    a = images(3, 8)
    assert pixel_loss(a, a.clone()).item() == 0.0


def test_pixel_loss_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3, 8, 8\).*\(2, 3, 16, 16\)"):
        pixel_loss(images(2, 8), images(2, 16))
    with pytest.raises(ValueError, match="same shape"):
        pixel_loss(images(2, 8), images(1, 8))


@pytest.mark.parametrize(
    ("bad", "error", "pattern"),
    [
        (torch.rand(3, 8, 8), ValueError, r"\[N, C, H, W\]"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), TypeError, "floating-point"),
        ([[0.0]], TypeError, "torch.Tensor"),
        (torch.rand(0, 3, 8, 8), ValueError, "empty batch"),
    ],
)
def test_pixel_loss_rejects_bad_inputs(bad, error, pattern):
    with pytest.raises(error, match=pattern):
        pixel_loss(bad, bad)


def test_check_image_pair_channels():
    one_channel = torch.rand(2, 1, 8, 8)
    pixel_loss(one_channel, one_channel)  # the pixel term itself accepts any channel count
    with pytest.raises(ValueError, match="output must have 3 channels"):
        check_image_pair(one_channel, one_channel)
