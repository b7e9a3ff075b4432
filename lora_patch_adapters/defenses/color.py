"""Differentiable sRGB <-> CIE L*a*b* (D65) for image tensors, as used by Lab-space defenses (Anti-Forgery).

Conventions:
- RGB is gamma-encoded **sRGB in [0, 1]**, channels first: [..., 3, H, W] (usually [N, 3, H, W]). Images of the
  package live in [-1, 1]: convert at the edge with ``(x + 1) / 2`` and back with ``rgb * 2 - 1``.
- Lab is CIE 1976 L*a*b* relative to the D65 white point: L in [0, 100], a and b roughly in [-128, 128].
- :func:`normalise_lab` maps Lab to the units Anti-Forgery (Wang et al., IJCAI 2022) perturbs in:
  L -> (L - 50) / 100, a -> a / 110, b -> b / 110 (all roughly within [-1, 1]); :func:`denormalise_lab` inverts it.

The pipeline is the standard one: sRGB decoding (IEC 61966-2-1 piecewise curve: linear below 0.04045, exponent 2.4
above), the sRGB -> XYZ matrix (D65 primaries), and the CIE f function with epsilon = 216/24389 and
kappa = 24389/27. The D65 white is taken as the XYZ of sRGB white (the row sums of the matrix), so that RGB (1, 1, 1)
maps to a = b = 0 exactly.

Everything is differentiable with finite gradients everywhere: the power and cube-root branches are evaluated on
inputs clamped into their own domain, so the branch ``torch.where`` discards never produces an inf/NaN gradient
(e.g. at black). :func:`lab_to_rgb` does **not** clamp its output: Lab colours outside the sRGB gamut give RGB values
outside [0, 1] (clamp them yourself when you need valid images); this keeps rgb -> lab -> rgb an exact round trip.
"""

from __future__ import annotations

import torch

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

# Linear sRGB -> CIE XYZ for the D65 white point (sRGB primaries; rows: X, Y, Z).
RGB_TO_XYZ = torch.tensor(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=torch.float64,
)
XYZ_TO_RGB = torch.linalg.inv(RGB_TO_XYZ)
# XYZ of sRGB white = reference white D65 (0.95047, 1.0, 1.08883).
D65_WHITE = RGB_TO_XYZ.sum(dim=1)

# sRGB transfer function (IEC 61966-2-1).
_SRGB_DECODE_THRESHOLD = 0.04045  # on the encoded value
_SRGB_ENCODE_THRESHOLD = 0.0031308  # on the linear value (= 0.04045 / 12.92)
_SRGB_SLOPE = 12.92
_SRGB_GAMMA = 2.4
_SRGB_A = 0.055

# CIE Lab constants (exact rational forms).
_LAB_EPSILON = 216.0 / 24389.0  # (6/29)^3
_LAB_KAPPA = 24389.0 / 27.0  # (29/3)^3
_LAB_F_THRESHOLD = 6.0 / 29.0  # f(epsilon)

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


def _apply_matrix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix`` [3, 3] applied to the channel dimension (-3) of ``x`` [..., 3, H, W]."""
    return torch.einsum("ij,...jhw->...ihw", matrix.to(device=x.device, dtype=x.dtype), x)


def _channel_view(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 3-vector shaped to broadcast over the channel dimension of ``like``."""
    return vector.to(device=like.device, dtype=like.dtype).view(3, 1, 1)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Decode gamma-encoded sRGB to linear RGB (piecewise IEC 61966-2-1 curve); defined for any real input."""
    linear_part = rgb / _SRGB_SLOPE
    # Clamp into the power branch's own domain so that its (discarded) gradient stays finite below the threshold.
    base = (rgb.clamp(min=_SRGB_DECODE_THRESHOLD) + _SRGB_A) / (1.0 + _SRGB_A)
    power_part = base.pow(_SRGB_GAMMA)
    return torch.where(rgb <= _SRGB_DECODE_THRESHOLD, linear_part, power_part)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Encode linear RGB as gamma-encoded sRGB (inverse of :func:`srgb_to_linear`); defined for any real input."""
    linear_part = linear * _SRGB_SLOPE
    power_part = (1.0 + _SRGB_A) * linear.clamp(min=_SRGB_ENCODE_THRESHOLD).pow(1.0 / _SRGB_GAMMA) - _SRGB_A
    return torch.where(linear <= _SRGB_ENCODE_THRESHOLD, linear_part, power_part)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    """CIE f(t): cube root above epsilon, the linear segment (kappa t + 16) / 116 below (guarded cube root)."""
    cube_root = t.clamp(min=_LAB_EPSILON).pow(1.0 / 3.0)
    linear = (_LAB_KAPPA * t + 16.0) / 116.0
    return torch.where(t > _LAB_EPSILON, cube_root, linear)


def _lab_f_inverse(f: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_lab_f`: f^3 above 6/29, (116 f - 16) / kappa below."""
    return torch.where(f > _LAB_F_THRESHOLD, f * f * f, (116.0 * f - 16.0) / _LAB_KAPPA)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB [N, 3, H, W] in [0, 1] -> CIE Lab (D65) [N, 3, H, W]: L in [0, 100], a/b roughly in [-128, 128].

    Computed in the input's floating dtype (use float32 or float64; half precision loses several Lab units).
    """
    _check_channels(rgb, "rgb")
    xyz = _apply_matrix(RGB_TO_XYZ, srgb_to_linear(rgb))
    f = _lab_f(xyz / _channel_view(D65_WHITE, xyz))
    fx, fy, fz = f.unbind(dim=-3)
    lightness = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack((lightness, a, b), dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) [N, 3, H, W] -> sRGB [N, 3, H, W]; the inverse of :func:`rgb_to_lab`.

    Not clamped: out-of-gamut colours give values outside [0, 1].
    """
    _check_channels(lab, "lab")
    lightness, a, b = lab.unbind(dim=-3)
    fy = (lightness + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    xyz = _lab_f_inverse(torch.stack((fx, fy, fz), dim=-3)) * _channel_view(D65_WHITE, lab)
    return linear_to_srgb(_apply_matrix(XYZ_TO_RGB, xyz))


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
