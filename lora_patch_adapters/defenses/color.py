"""Differentiable sRGB <-> CIE L*a*b* (D65) for image tensors, as used by Lab-space defenses (Anti-Forgery).

The conversions are thin wrappers over :mod:`kornia.color` (``rgb_to_lab``, ``lab_to_rgb``, ``rgb_to_linear_rgb``,
``linear_rgb_to_rgb``), which follow scikit-image's ``rgb2lab`` / ``lab2rgb``. This module adds the package's input
checks, the Anti-Forgery normalisation and a few documented contracts on top.

Conventions:
- RGB is gamma-encoded **sRGB in [0, 1]**, channels first: [..., 3, H, W] (usually [N, 3, H, W]). Images of the
  package live in [-1, 1]: convert at the edge with ``(x + 1) / 2`` and back with ``rgb * 2 - 1``.
- Lab is CIE 1976 L*a*b* relative to the D65 white point: L in [0, 100], a and b roughly in [-128, 128].
- :func:`normalise_lab` maps Lab to the units Anti-Forgery (Wang et al., IJCAI 2022) perturbs in:
  L -> (L - 50) / 100, a -> a / 110, b -> b / 110 (all roughly within [-1, 1]); :func:`denormalise_lab` inverts it.

Numerics (kornia's, measured): the sRGB -> XYZ matrix has six decimals (:data:`RGB_TO_XYZ`, read from kornia) and the
white is the tabulated D65 (0.95047, 1.0, 1.08883) (:data:`D65_WHITE`), not the matrix's row sums, so sRGB white
(1, 1, 1) maps to L = 100 with a, b within 0.01 of 0 (not exactly 0). The CIE f function uses the rounded constants
epsilon = 0.008856 and 7.787. Results agree with scikit-image to about 1e-12 Lab units in float64.

Everything is differentiable with finite gradients everywhere, including at black and outside [0, 1] (kornia
evaluates every power branch on inputs clamped into its own domain, so the branch that ``torch.where`` discards never
produces an inf/NaN gradient). :func:`lab_to_rgb` does **not** clamp its output (kornia's ``clip=False``): Lab colours
outside the sRGB gamut give RGB values outside [0, 1] (clamp them yourself when you need valid images), and
rgb -> lab -> rgb is a round trip to floating-point precision. The one clamp kornia keeps is f_z >= 0 (Z >= 0) for
extreme colours with b > 200 * f_y, which no sRGB colour reaches. Half-precision inputs are computed in float32 and
returned in their own dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from kornia import color as kornia_color

__all__ = [
    "AB_SCALE",
    "D65_WHITE",
    "L_OFFSET",
    "L_SCALE",
    "RGB_TO_XYZ",
    "XYZ_TO_RGB",
    "denormalise_lab",
    "lab_to_rgb",
    "linear_to_srgb",
    "normalise_lab",
    "rgb_to_lab",
    "srgb_to_linear",
]


def _matrix_of(transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The [3, 3] matrix of a linear kornia colour transform, read off by applying it to the basis colours."""
    basis = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)  # three 1x1 images: pure R, G, B
    return transform(basis)[:, :, 0, 0].T.contiguous()


# Linear sRGB -> CIE XYZ for the D65 white point (rows: X, Y, Z), exactly the matrix kornia applies.
RGB_TO_XYZ = _matrix_of(kornia_color.rgb_to_xyz)
XYZ_TO_RGB = _matrix_of(kornia_color.xyz_to_rgb)
# The D65 reference white kornia divides by (CIE 1931 2-degree observer).
D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)

# Anti-Forgery normalisation.
L_OFFSET = 50.0
L_SCALE = 100.0
AB_SCALE = 110.0


def _check_channels(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [N, 3, H, W], got {type(x).__name__}.")
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{what} must be shaped [N, 3, H, W] (three channels first), got {tuple(x.shape)}.")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{what} must be floating point, got {x.dtype}.")


def _elementwise(transform: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, what: str) -> torch.Tensor:
    """Apply a per-value kornia transform (which insists on [*, 3, H, W]) to a floating tensor of any shape."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{what} must be floating point, got {x.dtype}.")
    if x.dim() >= 3 and x.shape[-3] == 3:
        return transform(x)
    # The transform works value by value: present the values as one 3-channel image and keep the first channel.
    return transform(x.reshape(1, 1, -1).expand(3, 1, -1))[0].reshape(x.shape)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Decode gamma-encoded sRGB to linear RGB (IEC 61966-2-1: linear below 0.04045, exponent 2.4 above).

    Value by value, any shape, any real input (kornia's ``rgb_to_linear_rgb``).
    """
    return _elementwise(kornia_color.rgb_to_linear_rgb, rgb, "rgb")


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Encode linear RGB as gamma-encoded sRGB (inverse of :func:`srgb_to_linear`; kornia's ``linear_rgb_to_rgb``).

    Value by value, any shape, any real input.
    """
    return _elementwise(kornia_color.linear_rgb_to_rgb, linear, "linear")


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB [N, 3, H, W] in [0, 1] -> CIE Lab (D65) [N, 3, H, W]: L in [0, 100], a/b roughly in [-128, 128].

    Computed in the input's floating dtype (float16/bfloat16 in float32, rounded back: use float32 or float64, half
    precision loses several Lab units).
    """
    _check_channels(rgb, "rgb")
    return kornia_color.rgb_to_lab(rgb)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) [N, 3, H, W] -> sRGB [N, 3, H, W]; the inverse of :func:`rgb_to_lab`.

    Not clamped: out-of-gamut colours give values outside [0, 1].
    """
    _check_channels(lab, "lab")
    return kornia_color.lab_to_rgb(lab, clip=False)


def normalise_lab(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> Anti-Forgery units: ((L - 50) / 100, a / 110, b / 110)."""
    _check_channels(lab, "lab")
    offset = lab.new_tensor([L_OFFSET, 0.0, 0.0]).view(3, 1, 1)
    scale = lab.new_tensor([L_SCALE, AB_SCALE, AB_SCALE]).view(3, 1, 1)
    return (lab - offset) / scale


def denormalise_lab(lab_normalised: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalise_lab`: (100 L' + 50, 110 a', 110 b')."""
    _check_channels(lab_normalised, "normalised lab")
    offset = lab_normalised.new_tensor([L_OFFSET, 0.0, 0.0]).view(3, 1, 1)
    scale = lab_normalised.new_tensor([L_SCALE, AB_SCALE, AB_SCALE]).view(3, 1, 1)
    return lab_normalised * scale + offset
