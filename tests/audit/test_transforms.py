"""JPEG and blur transformations on [-1, 1] images."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters.audit.transforms import gaussian_blur, jpeg, standard_transforms


def _smooth_images() -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    return torch.stack([torch.stack([x, y, x * y]), torch.stack([-x, y * 0.5, x])])


def test_jpeg_round_trip_keeps_range_shape_and_loses_more_at_low_quality():
    x = _smooth_images()
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    high, low = jpeg(noisy, 95), jpeg(noisy, 20)
    assert high.shape == x.shape and high.dtype == x.dtype
    assert high.min() >= -1 and high.max() <= 1
    err_high, err_low = (high - noisy).abs().mean(), (low - noisy).abs().mean()
    assert 0 < err_high < err_low
    assert (jpeg(x, 95) - x).abs().mean() < 0.03  # a smooth image survives a high-quality encode


def test_blur_removes_high_frequencies_and_keeps_constants():
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1
    x = checker.expand(1, 3, 32, 32).clone()
    blurred = gaussian_blur(x, 1.0)
    assert blurred[..., 4:-4, 4:-4].abs().max() < 0.2 < x.abs().min()
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 0.5), flat, atol=1e-6)


def test_standard_transforms_names_and_errors():
    names = list(standard_transforms((90, 50), (0.5, 2)))
    assert names == ["jpeg90", "jpeg50", "blur0.5", "blur2"]
    with pytest.raises(ValueError, match="quality"):
        standard_transforms((0,), ())
    with pytest.raises(ValueError, match="sigma"):
        standard_transforms((), (0,))
