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


def test_differentiable_jpeg_approximates_pillows_codec():
    from lora_patch_adapters.defenses.transforms import differentiable_jpeg

    smooth = _smooth_images() * 0.8
    real, approx = jpeg(smooth, 75), differentiable_jpeg(smooth, 75)
    # measured 0.0083 (about one 8-bit level; Pillow also rounds the input to 8 bits) and 0.046 at most
    assert (approx - real).abs().mean() < 0.015 and (approx - real).abs().max() < 0.1
    noise = 0.1 * torch.randn(smooth.shape, generator=torch.Generator().manual_seed(0))
    noisy = (smooth + noise).clamp(-1, 1)
    real, approx = jpeg(noisy, 75), differentiable_jpeg(noisy, 75)
    # both codecs remove much the same detail: measured 0.016 between them against 0.078 removed
    assert (approx - real).abs().mean() < 0.35 * (real - noisy).abs().mean()


def test_blur_is_the_previous_torchvision_blur():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(2, 3, 24, 29, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for sigma, size in ((0.5, 3), (1.0, 5), (1.5, 7), (2.0, 9)):
        previous = TF.gaussian_blur(x, kernel_size=[size, size], sigma=[sigma])
        torch.testing.assert_close(gaussian_blur(x, sigma), previous, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["jpeg75", "blur1"])
def test_gradients_through_the_differentiable_versions_are_finite_and_non_zero(name):
    from lora_patch_adapters.defenses.transforms import parse_transform

    x = (_smooth_images() * 0.8).requires_grad_(True)
    (grad,) = torch.autograd.grad(parse_transform(name)[1](x).sin().sum(), x)
    assert torch.isfinite(grad).all() and (grad != 0).float().mean() > 0.5
