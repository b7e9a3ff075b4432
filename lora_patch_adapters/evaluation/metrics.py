"""Image-comparison metrics of the proactive-defense literature, as pure per-sample functions of tensors.

Every image metric takes two float tensors ``a``, ``b`` shaped [N, 3, H, W] in [-1, 1] (the package convention) and
returns a float tensor [N] with one value per sample; none of them reduces over the batch, so the evaluation protocol
can average, filter or count as it needs. All of them are differentiable and run on any device.

* :func:`mse` -- mean squared error on the [-1, 1] scale. This is what Disrupting Deepfakes (Ruiz et al. 2020) and
  CMUA-Watermark (Huang et al. 2022) call the "L2 error"; a sample counts as disrupted when it exceeds 0.05
  (:func:`success`, :func:`success_rate`).
* :func:`l1` -- mean absolute error on the [-1, 1] scale.
* :func:`psnr` -- standard PSNR in dB of the images mapped to [0, 1] (data range 1), computed by torchmetrics'
  ``peak_signal_noise_ratio``.
* :func:`ssim` -- standard SSIM (Wang et al. 2004) of the images mapped to [0, 1], computed by torchmetrics'
  ``structural_similarity_index_measure`` (11 x 11 Gaussian, sigma 1.5) and averaged over the valid region: the
  definition of scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`` and pytorch-msssim's ``ssim(data_range=1)``.
* :func:`lpips` -- LPIPS (Zhang et al. 2018), torchmetrics' network with torchvision backbone weights read from a
  local file, never downloaded (:mod:`~lora_patch_adapters.evaluation.lpips`); :func:`lpips_available` says whether
  they are present.
* :func:`masked_l2` with :func:`cmua_mask` -- CMUA-Watermark's masked MSE, which only scores the pixels the clean
  edit actually changed.

Inputs are checked: a wrong shape, a non-float dtype, NaN, or values outside [-1, 1] (beyond a 1e-3 rounding
tolerance) raise a ``ValueError``/``TypeError`` that names the problem and the fix. Generators without a final tanh
(HiSD) can produce values slightly outside [-1, 1]: clamp their outputs with ``y.clamp(-1, 1)``, or pass
``check_range=False`` to compare the raw values (the checks cost one host synchronisation per call).

Half-precision inputs (float16 / bfloat16) are computed in float32, with autocast disabled, so that the figures do
not depend on the precision the editor ran in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from types import ModuleType

import torch

from .._checks import check_images, check_number, check_value_range
from .lpips import LPIPS_MIN_SIZE, load_lpips, lpips_available

__all__ = [
    "DISRUPTION_THRESHOLD",
    "SSIM_WINDOW_SIZE",
    "cmua_mask",
    "l1",
    "lpips",
    "lpips_available",
    "masked_l2",
    "mse",
    "psnr",
    "ssim",
    "success",
    "success_rate",
]

#: A sample counts as disrupted when MSE(edit of the protected image, edit of the clean image) exceeds this
#: (Ruiz et al. 2020; CMUA-Watermark uses the same threshold on its masked MSE).
DISRUPTION_THRESHOLD = 0.05

#: SSIM's Gaussian window: 11 x 11, sigma 1.5 (Wang et al. 2004).
SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

_UNBOUNDED_HINT = "clamp generator outputs without a final tanh (HiSD) with y.clamp(-1, 1), or pass check_range=False"


def _image_metrics() -> ModuleType:
    """``torchmetrics.functional.image``, imported on first use (importing torchmetrics takes about two seconds)."""
    from torchmetrics.functional import image

    return image


# ----------------------------------------------------------------------------------------------------------------
# Input checks


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _check_pair(a: object, b: object, check_range: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two image batches and return them in a common compute dtype (at least float32)."""
    a = check_images(a, "a")
    b = check_images(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape [N, 3, H, W], got {tuple(a.shape)} and {tuple(b.shape)}; "
            "compare images of the same size (resize or crop one of them first)."
        )
    if a.device != b.device:
        raise ValueError(f"a and b must be on the same device, got {a.device} and {b.device}; move one with .to().")
    check_value_range(a, "a", check_range, _UNBOUNDED_HINT)
    check_value_range(b, "b", check_range, _UNBOUNDED_HINT)
    dtype = torch.promote_types(_compute_dtype(a), _compute_dtype(b))
    return a.to(dtype), b.to(dtype)


def _check_threshold(threshold: object, name: str = "threshold") -> float:
    return check_number(threshold, name, strict=False, hint=" (it is compared with a non-negative distance)")


# ----------------------------------------------------------------------------------------------------------------
# Pixel distances


def mse(a: torch.Tensor, b: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
    """Mean squared error per sample on the [-1, 1] scale: mean over (C, H, W) of (a - b)^2. Returns [N].

    This is the "L2 error" of Disrupting Deepfakes and CMUA-Watermark (their code computes mean squared error on
    [-1, 1] images). Its maximum is 4 (black vs white); on the [0, 1] scale the same pair has a quarter of it.
    """
    a, b = _check_pair(a, b, check_range)
    with torch.autocast(device_type=a.device.type, enabled=False):
        return (a - b).square().flatten(1).mean(dim=1)


def l1(a: torch.Tensor, b: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
    """Mean absolute error per sample on the [-1, 1] scale: mean over (C, H, W) of |a - b|. Returns [N]."""
    a, b = _check_pair(a, b, check_range)
    with torch.autocast(device_type=a.device.type, enabled=False):
        return (a - b).abs().flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-10, *, check_range: bool = True) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample, of the images mapped to [0, 1] (data range 1). Returns [N].

    PSNR = 10 * log10(1 / MSE01) with MSE01 = mean((a01 - b01)^2) = mse(a, b) / 4. Example: a constant offset of 0.2
    on the [-1, 1] scale is 0.1 on [0, 1], MSE01 = 0.01, PSNR = 20 dB.

    Identical images (MSE01 = 0) have infinite PSNR. To keep batch means finite the MSE is clamped from below at
    ``eps``, so PSNR is capped at ``-10 * log10(eps)``: 100 dB with the default ``eps=1e-10``. Any MSE01 above
    ``eps`` (every real pair of 8-bit-representable images) gets the exact standard value. Pass ``eps=0`` to get
    ``+inf`` for identical images instead. Samples at the cap have a zero gradient.

    Computed by torchmetrics' ``peak_signal_noise_ratio(data_range=1, dim=(1, 2, 3), reduction="none")``.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < 1):
        raise ValueError(f"eps must be a number in [0, 1) (the smallest MSE on [0, 1]; it caps PSNR), got {eps!r}.")
    a, b = _check_pair(a, b, check_range)

    def standard(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _image_metrics().peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))

    with torch.autocast(device_type=a.device.type, enabled=False):
        x, y = (a + 1) / 2, (b + 1) / 2
        value = standard(x, y)
        if eps == 0:
            return value
        cap = -10.0 * math.log10(eps)
        capped = value.detach() >= cap  # MSE01 <= eps
        if value.requires_grad:
            # torchmetrics takes log(MSE), whose backward is 0/0 = NaN at MSE 0 even where the cap discards the
            # value: recompute with the capped samples detached, so that they get a zero gradient (a clamped MSE's).
            keep = ~capped.view(-1, 1, 1, 1)
            value = standard(torch.where(keep, x, x.detach()), torch.where(keep, y, y.detach()))
        return torch.where(capped, torch.full_like(value, cap), value)


# ----------------------------------------------------------------------------------------------------------------
# SSIM


def ssim(a: torch.Tensor, b: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per sample, of the images mapped to [0, 1]. Returns [N].

    Standard parameters: 11 x 11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, population
    (not sample) covariances. torchmetrics' ``structural_similarity_index_measure`` computes the SSIM map; it is
    averaged over channels and the 'valid' positions only (windows that lie entirely inside the image; torchmetrics'
    own mean would include the border windows of its reflect padding). This is the definition of scikit-image's
    ``structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
    channel_axis=0)`` and of pytorch-msssim's ``ssim(x, y, data_range=1, size_average=False)``.

    1 means identical; values decrease towards 0 (and can go slightly negative) as structure differs.
    H and W must be at least 11 (the window size).
    """
    a, b = _check_pair(a, b, check_range)
    height, width = a.shape[-2:]
    if height < SSIM_WINDOW_SIZE or width < SSIM_WINDOW_SIZE:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE} pixels (its Gaussian window size), "
            f"got {height}x{width}; compare larger images or use mse/psnr for tiny ones."
        )
    if a.shape[0] == 0:  # torchmetrics cannot split an empty batch
        return a.new_zeros(0)
    with torch.autocast(device_type=a.device.type, enabled=False):
        # With gaussian_kernel=True torchmetrics sizes the window from sigma: 2 * int(3.5 * 1.5 + 0.5) + 1 = 11.
        _, ssim_map = _image_metrics().structural_similarity_index_measure(
            (a + 1) / 2, (b + 1) / 2, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_WINDOW_SIZE,
            reduction="none", data_range=1.0, k1=SSIM_K1, k2=SSIM_K2, return_full_image=True,
        )
        border = SSIM_WINDOW_SIZE // 2
        # Every channel has the same number of valid positions, so the mean over (C, H', W') equals the mean over
        # channels of the per-channel means.
        return ssim_map[..., border : height - border, border : width - border].flatten(1).mean(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# LPIPS


def lpips(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    net: str = "alex",
    weights: str | os.PathLike | None = None,
    check_range: bool = True,
) -> torch.Tensor:
    """LPIPS (Zhang et al. 2018) per sample, images in [-1, 1] (LPIPS' own input range). Returns float32 [N].

    torchmetrics' LPIPS network (linear layers from the torchmetrics package) with the ImageNet backbone ``net``
    ("alex", the usual choice; "vgg"; "squeeze") read from ``weights`` (a ``.safetensors``/``.pth`` state dict of
    torchvision's model) or else from torchvision's cache ``torch.hub.get_dir()/checkpoints/`` (``TORCH_HOME``).
    Nothing is downloaded: missing weights raise
    :class:`~lora_patch_adapters.evaluation.lpips.LpipsWeightsError` naming the expected file; check first with
    :func:`lpips_available`. The network is built once per (net, weights file, device) and cached.

    0 means identical; larger is more different (typically up to ~0.7). Differentiable in ``a`` and ``b`` (the
    network is frozen); computed in float32. H and W must be at least :data:`LPIPS_MIN_SIZE` [net] (31 for alex).
    """
    if net not in LPIPS_MIN_SIZE:
        raise ValueError(f"net must be one of {list(LPIPS_MIN_SIZE)} (LPIPS' backbones), got {net!r}.")
    a, b = _check_pair(a, b, check_range)
    height, width = a.shape[-2:]
    if min(height, width) < LPIPS_MIN_SIZE[net]:
        size = LPIPS_MIN_SIZE[net]
        raise ValueError(
            f"LPIPS with net={net!r} needs images of at least {size}x{size} pixels, got {height}x{width}; compare "
            "larger images (upsample both) or use mse/psnr/ssim."
        )
    model = load_lpips(net, weights, a.device)
    if a.shape[0] == 0:
        return a.new_zeros(0, dtype=torch.float32)
    with torch.autocast(device_type=a.device.type, enabled=False):
        return model(a.float(), b.float()).reshape(a.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# CMUA-Watermark's masked L2


def cmua_mask(
    edited: torch.Tensor, original: torch.Tensor, threshold: float = 0.5, *, check_range: bool = True
) -> torch.Tensor:
    """CMUA-Watermark's mask of the pixels an edit changed, float [N, 1, H, W] of 0/1.

    mask = 1 where sum over the RGB channels of |edited - original| > ``threshold`` (strictly), else 0, on the
    [-1, 1] scale. In CMUA's protocol ``edited`` is the clean edit G(x, c) and ``original`` the input x.
    The mask is a hard threshold: no gradient flows through it.
    """
    threshold = _check_threshold(threshold)
    edited, original = _check_pair(edited, original, check_range)
    change = (edited.detach() - original.detach()).abs().sum(dim=1, keepdim=True)
    return (change > threshold).to(edited.dtype)


def masked_l2(
    a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, *, check_range: bool = True
) -> torch.Tensor:
    """CMUA-Watermark's masked MSE per sample: sum(((a - b) * mask)^2) / (3 * sum(mask)). Returns [N].

    ``mask`` is [N, 1, H, W] or [N, H, W] of 0/1 (bool or float; typically :func:`cmua_mask` of the clean edit
    against the input) and is shared by the three channels, hence the 3 in the denominator: the result is the mean
    squared error over the masked pixels, on the [-1, 1] scale. A sample whose mask is empty (the edit changed no
    pixel above the threshold) scores 0: there is nothing to disrupt, and it counts as not disrupted.
    """
    a, b = _check_pair(a, b, check_range)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor [N, 1, H, W] of 0/1, got {type(mask).__name__}.")
    n, _, height, width = a.shape
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or tuple(mask.shape) != (n, 1, height, width):
        raise ValueError(
            f"mask must be shaped [N, 1, H, W] or [N, H, W] = {[n, 1, height, width]} for images of shape "
            f"{tuple(a.shape)}, got {tuple(mask.shape)}; build it with cmua_mask(edited, original), or reduce a "
            "per-channel mask with mask.amax(dim=1, keepdim=True)."
        )
    if mask.device != a.device:
        raise ValueError(f"mask must be on the images' device {a.device}, got {mask.device}; move it with .to().")
    mask = mask.to(a.dtype)
    if mask.numel() and not torch.all((mask == 0) | (mask == 1)).item():
        raise ValueError("mask must contain only 0 and 1 (a hard pixel mask); threshold a soft mask with (m > 0.5).")
    with torch.autocast(device_type=a.device.type, enabled=False):
        squared = ((a - b) * mask).square().flatten(1).sum(dim=1)
        count = 3 * mask.flatten(1).sum(dim=1)
        return torch.where(count > 0, squared / count.clamp_min(1), torch.zeros_like(squared))


# ----------------------------------------------------------------------------------------------------------------
# Success rates


def _check_scores(scores: torch.Tensor | Sequence[float], name: str) -> torch.Tensor:
    scores = torch.as_tensor(scores)
    if scores.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D tensor [N] of per-sample values (as returned by mse or masked_l2), "
            f"got shape {tuple(scores.shape)}; use scores.flatten() or stack per-batch results with torch.cat."
        )
    if not (scores.dtype.is_floating_point or scores.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got {scores.dtype}.")
    if torch.isnan(scores).any().item():
        raise ValueError(f"{name} contains NaN; a NaN distance can be counted neither as disrupted nor as not.")
    return scores


def success(
    disruption_mse: torch.Tensor | Sequence[float], threshold: float = DISRUPTION_THRESHOLD
) -> torch.Tensor:
    """Per-sample disruption flags, bool [N]: ``disruption_mse > threshold`` (strictly greater).

    ``disruption_mse`` is the per-sample distance between the edit of the protected image and the edit of the clean
    image: :func:`mse` (Disrupting Deepfakes) or :func:`masked_l2` (CMUA-Watermark). The field's threshold is 0.05.
    """
    threshold = _check_threshold(threshold)
    scores = _check_scores(disruption_mse, "disruption_mse")
    return scores.detach() > threshold


def success_rate(
    disruption_mse: torch.Tensor | Sequence[float], threshold: float = DISRUPTION_THRESHOLD
) -> float:
    """Fraction of samples whose disruption MSE exceeds ``threshold`` (see :func:`success`), a float in [0, 1]."""
    flags = success(disruption_mse, threshold)
    if flags.numel() == 0:
        raise ValueError("success_rate of an empty batch is undefined; pass at least one per-sample value.")
    return flags.float().mean().item()
