"""The differentiable transformations behind EOT: names, ranges, sizes, gradients, errors."""

from __future__ import annotations

import kornia
import pytest
import torch

from lora_patch_adapters.defenses.transforms import (
    blur_kernel_size,
    differentiable_jpeg,
    gaussian_blur,
    identity,
    parse_eot,
    parse_transform,
    transform_views,
)


def _images(n=2, h=32, w=32, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name, canonical", [("identity", "identity"), ("jpeg75", "jpeg75"), ("JPEG050", "jpeg50"),
                                             ("blur1", "blur1"), ("blur1.0", "blur1"), ("blur0.5", "blur0.5"),
                                             ("blur.5", "blur0.5"), (" jpeg100 ", "jpeg100")])
def test_names_parse_to_canonical_forms(name, canonical):
    assert parse_transform(name)[0] == canonical


def test_transformations_compute_what_their_names_say():
    x = _images()
    assert parse_transform("identity")[1](x) is x and identity(x) is x
    expected_jpeg = kornia.enhance.jpeg_codec_differentiable((x + 1) / 2, torch.tensor([75.0])) * 2 - 1
    torch.testing.assert_close(parse_transform("jpeg75")[1](x), expected_jpeg.clamp(-1, 1))
    expected_blur = kornia.filters.gaussian_blur2d(x, (5, 5), (1.0, 1.0), border_type="reflect")
    torch.testing.assert_close(parse_transform("blur1")[1](x), expected_blur)
    assert [blur_kernel_size(s) for s in (0.3, 0.5, 1, 1.5, 2)] == [3, 3, 5, 7, 9]


@pytest.mark.parametrize("name", ["jpeg0", "jpeg101", "blur0", "blur-1", "sharpen", "jpeg", "blur", "", "jpeg7.5"])
def test_unknown_or_out_of_range_names_say_what_is_accepted(name):
    with pytest.raises(ValueError, match="jpeg|blur"):
        parse_transform(name)
    with pytest.raises(ValueError, match="Unknown EOT transformation"):
        parse_transform("sharpen")
    with pytest.raises(ValueError, match=r"identity.*jpeg<Q>.*blur<S>"):
        parse_transform("sharpen")


def test_eot_lists_are_validated():
    assert parse_eot(None) is None
    assert parse_eot(["identity", "JPEG75", "blur1.0"]) == ("identity", "jpeg75", "blur1")
    assert parse_eot("identity, jpeg75") == ("identity", "jpeg75")
    with pytest.raises(ValueError, match="empty"):
        parse_eot([])
    with pytest.raises(ValueError, match="more than once"):
        parse_eot(["blur1", "blur1.0"])
    with pytest.raises(TypeError, match="list of transformation names"):
        parse_eot(75)


@pytest.mark.parametrize("h, w", [(32, 32), (20, 27), (8, 8)])
def test_jpeg_keeps_shape_range_dtype_for_any_size(h, w):
    x = _images(h=h, w=w)
    y = differentiable_jpeg(x, 75)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert 0 < (y - x).abs().mean() < (differentiable_jpeg(x, 10) - x).abs().mean()
    assert differentiable_jpeg(x.half(), 75).dtype == torch.float16


@pytest.mark.parametrize("name", ["jpeg75", "blur1", "blur0.5"])
def test_gradients_flow_through_and_are_finite(name):
    x = _images().requires_grad_(True)
    (grad,) = torch.autograd.grad(parse_transform(name)[1](x).square().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_blur_refuses_images_smaller_than_its_kernel():
    with pytest.raises(ValueError, match="H and W > 4"):
        gaussian_blur(_images(h=4, w=16), 2.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(_images(), 0)


def test_views_stack_along_the_batch_in_order():
    x = _images(n=3)
    views = transform_views(x, ("identity", "blur1"))
    assert views.shape == (6, 3, 32, 32)
    assert torch.equal(views[:3], x) and torch.equal(views[3:], gaussian_blur(x, 1.0))
