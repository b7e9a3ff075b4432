"""sRGB <-> CIE Lab (D65): reference colours, round trips, normalisation, finite gradients."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters.defenses.color import (
    D65_WHITE,
    denormalise_lab,
    lab_to_rgb,
    linear_to_srgb,
    normalise_lab,
    rgb_to_lab,
    srgb_to_linear,
)

# sRGB colour -> CIE Lab (D65), standard published values (IEC 61966-2-1 sRGB, CIE 1976 L*a*b*).
REFERENCE_COLOURS = [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),  # white
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),  # black
    ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),  # red
    ((0.0, 1.0, 0.0), (87.7347, -86.1827, 83.1793)),  # green
    ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),  # blue
    ((1.0, 1.0, 0.0), (97.1393, -21.5537, 94.4780)),  # yellow
    ((0.0, 1.0, 1.0), (91.1132, -48.0875, -14.1312)),  # cyan
    ((1.0, 0.0, 1.0), (60.3242, 98.2343, -60.8249)),  # magenta
    ((0.5, 0.5, 0.5), (53.3890, 0.0, 0.0)),  # mid grey (linear 0.2140)
]


def _pixels(colours, dtype=torch.float32) -> torch.Tensor:
    """Colours (k triples) as an image [1, 3, k, 1]."""
    return torch.tensor(colours, dtype=dtype).T.reshape(1, 3, len(colours), 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_colours(dtype):
    rgb = _pixels([rgb for rgb, _ in REFERENCE_COLOURS], dtype)
    expected = _pixels([lab for _, lab in REFERENCE_COLOURS], torch.float64)
    lab = rgb_to_lab(rgb)
    assert lab.dtype == dtype and lab.shape == rgb.shape
    torch.testing.assert_close(lab.double(), expected, atol=0.05, rtol=0)
    # and back
    torch.testing.assert_close(lab_to_rgb(expected.to(dtype)).double(), rgb.double(), atol=1e-4, rtol=0)


def test_white_point_is_d65():
    torch.testing.assert_close(D65_WHITE, torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64), atol=1e-5, rtol=0)


def test_srgb_transfer_function():
    encoded = torch.tensor([0.0, 0.02, 0.04045, 0.5, 1.0], dtype=torch.float64)
    linear = srgb_to_linear(encoded)
    expected = torch.tensor(
        [0.0, 0.02 / 12.92, 0.04045 / 12.92, ((0.5 + 0.055) / 1.055) ** 2.4, 1.0], dtype=torch.float64
    )
    torch.testing.assert_close(linear, expected, atol=1e-12, rtol=0)
    # The standard's rounded thresholds (0.04045 / 12.92 = 0.00313080... > 0.0031308) leave a ~3e-8 seam there.
    torch.testing.assert_close(linear_to_srgb(linear), encoded, atol=1e-7, rtol=0)


def test_round_trip_rgb_lab_rgb():
    rgb = torch.rand(4, 3, 32, 32)
    back = lab_to_rgb(rgb_to_lab(rgb))
    assert (back - rgb).abs().max().item() < 1e-4
    # includes the exact corners of the cube and values at the piecewise thresholds
    special = _pixels([(0.0, 0.04045, 1.0), (0.0031308, 0.008856, 0.5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)])
    assert (lab_to_rgb(rgb_to_lab(special)) - special).abs().max().item() < 1e-4


def test_round_trip_lab_rgb_lab_in_gamut():
    lab = rgb_to_lab(torch.rand(2, 3, 16, 16, dtype=torch.float64))
    torch.testing.assert_close(rgb_to_lab(lab_to_rgb(lab)), lab, atol=1e-8, rtol=0)


def test_lab_to_rgb_does_not_clamp_out_of_gamut():
    lab = _pixels([(50.0, 120.0, 0.0), (50.0, 0.0, -120.0)])
    rgb = lab_to_rgb(lab)
    assert rgb.min().item() < 0
    assert torch.isfinite(rgb).all()


def test_normalisation():
    lab = _pixels([(100.0, 0.0, 0.0), (50.0, 110.0, -55.0), (0.0, -22.0, 11.0)])
    normalised = normalise_lab(lab)
    expected = _pixels([(0.5, 0.0, 0.0), (0.0, 1.0, -0.5), (-0.5, -0.2, 0.1)])
    torch.testing.assert_close(normalised, expected)
    torch.testing.assert_close(denormalise_lab(normalised), lab)
    random_lab = rgb_to_lab(torch.rand(2, 3, 8, 8))
    torch.testing.assert_close(denormalise_lab(normalise_lab(random_lab)), random_lab)


@pytest.mark.parametrize("value", [0.0, 0.04045, 0.5, 1.0])
def test_gradients_finite_rgb_to_lab(value):
    rgb = torch.full((1, 3, 2, 2), value, requires_grad=True)
    rgb_to_lab(rgb).square().sum().backward()
    assert torch.isfinite(rgb.grad).all()


def test_gradients_finite_lab_to_rgb():
    lab = torch.stack(
        [torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)], dim=1
    )  # black, where the cube root / pow branches meet zero
    lab = torch.cat([lab, rgb_to_lab(torch.rand(1, 3, 4, 4)), _pixels([(50.0, 120.0, -120.0)]).expand(1, 3, 4, 4)])
    lab.requires_grad_(True)
    lab_to_rgb(lab).square().sum().backward()
    assert torch.isfinite(lab.grad).all()
    assert lab.grad.abs().sum() > 0


def test_gradcheck_away_from_thresholds():
    rgb = (torch.rand(1, 3, 3, 3, dtype=torch.float64) * 0.8 + 0.15).requires_grad_(True)
    assert torch.autograd.gradcheck(rgb_to_lab, (rgb,))
    lab = rgb_to_lab(rgb.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(lab_to_rgb, (lab,))


def test_unbatched_and_shape_errors():
    rgb = torch.rand(3, 4, 4)
    torch.testing.assert_close(rgb_to_lab(rgb), rgb_to_lab(rgb[None])[0])
    with pytest.raises(ValueError, match="3, H, W"):
        rgb_to_lab(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="3, H, W"):
        lab_to_rgb(torch.rand(8, 8))
    with pytest.raises(TypeError, match="floating point"):
        rgb_to_lab(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        normalise_lab([[0.0]])


# ------------------------------------------------------------------------------------------------ scikit-image
# An independent implementation (NumPy, HWC): the kornia-backed conversions must agree with it.


def _skimage(function_name: str, images: torch.Tensor) -> torch.Tensor:
    """Apply skimage.color.<function_name> to each [3, H, W] image of a batch, back to [N, 3, H, W] float64."""
    skcolor = pytest.importorskip("skimage.color")
    function = getattr(skcolor, function_name)
    converted = [torch.from_numpy(function(image.permute(1, 2, 0).double().numpy())) for image in images]
    return torch.stack(converted).permute(0, 3, 1, 2)


def _skimage_lab(rgb: torch.Tensor) -> torch.Tensor:
    return _skimage("rgb2lab", rgb)


def _skimage_rgb(lab: torch.Tensor) -> torch.Tensor:
    return _skimage("lab2rgb", lab)


def test_rgb_to_lab_matches_scikit_image():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 12, 10, generator=g, dtype=torch.float64)
    rgb[0, :, 0, :3] = torch.tensor([[0.0, 1.0, 0.04045]] * 3)  # black, white and the sRGB seam
    want = _skimage_lab(rgb)
    torch.testing.assert_close(rgb_to_lab(rgb), want, atol=1e-9, rtol=0)
    # float32 carries about 1e-4 Lab units of rounding
    torch.testing.assert_close(rgb_to_lab(rgb.float()).double(), want, atol=1e-3, rtol=0)


def test_lab_to_rgb_matches_scikit_image_in_gamut():
    g = torch.Generator().manual_seed(1)
    lab = _skimage_lab(torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    torch.testing.assert_close(lab_to_rgb(lab), _skimage_rgb(lab), atol=1e-9, rtol=0)


def test_white_maps_to_neutral_within_kornia_rounding():
    # kornia's RGB->XYZ matrix rows do not sum exactly to its D65 white: white is neutral to 0.01 Lab units, not 0.
    lab = rgb_to_lab(torch.ones(1, 3, 1, 1, dtype=torch.float64)).flatten()
    assert lab[0].item() == pytest.approx(100.0, abs=1e-6)
    assert abs(lab[1].item()) < 0.01 and abs(lab[2].item()) < 0.01


def test_matrices_are_inverse_and_white_is_near_row_sums():
    from lora_patch_adapters.defenses.color import RGB_TO_XYZ, XYZ_TO_RGB

    torch.testing.assert_close(XYZ_TO_RGB @ RGB_TO_XYZ, torch.eye(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(RGB_TO_XYZ.sum(dim=1), D65_WHITE, atol=1e-4, rtol=0)
    # Lab of a linear-RGB colour follows from the matrix and the white point (CIE formulas, exact constants).
    linear = torch.tensor([0.3, 0.6, 0.1], dtype=torch.float64)
    xyz = RGB_TO_XYZ @ linear / D65_WHITE
    f = xyz ** (1 / 3)  # all above epsilon
    want = torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])
    rgb = linear_to_srgb(linear.view(1, 3, 1, 1))
    torch.testing.assert_close(rgb_to_lab(rgb).flatten(), want, atol=1e-9, rtol=0)


def test_transfer_functions_accept_any_shape():
    values = torch.linspace(-0.2, 1.2, 24, dtype=torch.float64)
    as_image = values.view(2, 3, 2, 2)
    torch.testing.assert_close(srgb_to_linear(values), srgb_to_linear(as_image).flatten())
    torch.testing.assert_close(linear_to_srgb(values), linear_to_srgb(as_image).flatten())
    assert srgb_to_linear(values[:5]).shape == (5,)
    with pytest.raises(TypeError, match="floating point"):
        srgb_to_linear(torch.arange(3))


@pytest.mark.parametrize("value", [-0.3, -0.055, 1.4])
def test_gradients_finite_outside_unit_range(value):
    rgb = torch.full((1, 3, 2, 2), value, requires_grad=True)
    rgb_to_lab(rgb).square().sum().backward()
    assert torch.isfinite(rgb.grad).all()
    linear = torch.full((5,), value, requires_grad=True)
    (srgb_to_linear(linear).sum() + linear_to_srgb(linear).sum()).backward()
    assert torch.isfinite(linear.grad).all()
