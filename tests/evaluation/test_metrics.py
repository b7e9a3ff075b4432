"""Tests for lora_patch_adapters.evaluation.metrics: hand-computed values, an independent SSIM reference, checks,
gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_patch_adapters.evaluation import metrics
from lora_patch_adapters.evaluation.metrics import cmua_mask, l1, masked_l2, mse, psnr, ssim, success, success_rate


def _images(n: int = 2, h: int = 16, w: int = 16, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g, dtype=dtype) * 2 - 1).clamp(-1, 1)


def _smooth_images(n: int = 2, h: int = 24, w: int = 24, seed: int = 0) -> torch.Tensor:
    """Images with structure (smooth gradients + blobs), so that SSIM is not dominated by noise."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    phase = torch.rand(n, 3, 1, 1, generator=g) * 6
    return (0.6 * torch.sin(3 * xs + phase) * torch.cos(2 * ys - phase)).expand(n, 3, h, w).contiguous()


# ------------------------------------------------------------------------------------------------ MSE / L1


def test_mse_and_l1_hand_computed():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[0] = 0.5  # constant difference 0.5 -> MSE 0.25, L1 0.5
    b[1, :, :2, :] = 1.0  # half of the values differ by 1 -> MSE 0.5, L1 0.5
    b[1, 0, 2, 0] = -1.0  # one more value of 48 differs by 1 -> MSE (24 + 1) / 48, L1 the same
    assert torch.allclose(mse(a, b), torch.tensor([0.25, 25 / 48]))
    assert torch.allclose(l1(a, b), torch.tensor([0.5, 25 / 48]))
    # Symmetric, zero for identical images.
    assert torch.allclose(mse(b, a), mse(a, b))
    assert torch.equal(mse(a, a), torch.zeros(2))
    assert torch.equal(l1(b, b), torch.zeros(2))


def test_mse_extremes_and_squared_not_absolute():
    black = -torch.ones(1, 3, 8, 8)
    white = torch.ones(1, 3, 8, 8)
    assert mse(black, white).item() == pytest.approx(4.0)  # maximum on the [-1, 1] scale
    assert l1(black, white).item() == pytest.approx(2.0)
    b = torch.zeros(1, 3, 8, 8)
    b[..., 0, 0] = 0.8
    assert mse(torch.zeros_like(b), b).item() == pytest.approx(3 * 0.64 / 192)
    assert l1(torch.zeros_like(b), b).item() == pytest.approx(3 * 0.8 / 192)


def test_batch_metrics_are_per_sample():
    a, b = _smooth_images(3, seed=1), _images(3, 24, 24, seed=2)
    for fn in (mse, l1, psnr, ssim):
        batch = fn(a, b)
        assert batch.shape == (3,)
        single = torch.cat([fn(a[i : i + 1], b[i : i + 1]) for i in range(3)])
        assert torch.allclose(batch, single, atol=1e-6), fn.__name__
    mask = cmua_mask(b, a, threshold=0.5)
    assert mask.shape == (3, 1, 24, 24)
    assert masked_l2(a, b, mask).shape == (3,)
    assert success(mse(a, b)).shape == (3,)


# ------------------------------------------------------------------------------------------------ PSNR


def test_psnr_known_values():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.2  # 0.1 on [0, 1] -> MSE01 0.01 -> 20 dB
    b[1] += 1.0  # 0.5 on [0, 1] -> MSE01 0.25 -> 10*log10(4) dB
    values = psnr(a, b)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == pytest.approx(10 * math.log10(4), abs=1e-4)
    # Consistent with mse: PSNR = 10 log10(4 / mse).
    x, y = _images(seed=3), _images(seed=4)
    assert torch.allclose(psnr(x, y), 10 * torch.log10(4 / mse(x, y)), atol=1e-4)


def test_psnr_identical_images_cap_and_inf():
    x = _images()
    assert torch.allclose(psnr(x, x), torch.full((2,), 100.0))  # -10 log10(1e-10)
    assert torch.allclose(psnr(x, x, eps=1e-8), torch.full((2,), 80.0))
    assert torch.isinf(psnr(x, x, eps=0)).all() and (psnr(x, x, eps=0) > 0).all()
    # The cap does not touch real differences.
    y = x.clone()
    y[0] = (y[0] + 0.2).clamp(-1, 1)
    assert psnr(x, y)[0].item() == pytest.approx(psnr(x, y, eps=0)[0].item())
    assert psnr(x, y)[1].item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="eps"):
        psnr(x, y, eps=-1e-3)


# ------------------------------------------------------------------------------------------------ SSIM


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Straightforward SSIM of one [3, H, W] pair in [0, 1]: explicit loops over channels and valid windows."""
    size, sigma, c1, c2 = 11, 1.5, 0.01**2, 0.03**2
    half = size // 2
    g1 = np.array([math.exp(-((i - half) ** 2) / (2 * sigma * sigma)) for i in range(size)])
    window = np.outer(g1, g1)
    window /= window.sum()
    channels, height, width = x.shape
    values = []
    for c in range(channels):
        for i in range(height - size + 1):
            for j in range(width - size + 1):
                px = x[c, i : i + size, j : j + size]
                py = y[c, i : i + size, j : j + size]
                mx = float((window * px).sum())
                my = float((window * py).sum())
                vx = float((window * (px - mx) ** 2).sum())
                vy = float((window * (py - my) ** 2).sum())
                cxy = float((window * (px - mx) * (py - my)).sum())
                values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_matches_loop_reference(dtype):
    a = _smooth_images(2, 16, 16, seed=5).to(dtype)
    b = (a + 0.3 * _images(2, 16, 16, dtype=dtype, seed=6)).clamp(-1, 1)
    b[1] = _images(1, 16, 16, dtype=dtype, seed=7)[0]  # an unrelated image: low SSIM
    got = ssim(a, b)
    assert got.dtype == dtype
    for k in range(2):
        want = _reference_ssim(((a[k] + 1) / 2).double().numpy(), ((b[k] + 1) / 2).double().numpy())
        assert got[k].item() == pytest.approx(want, abs=1e-5)


def test_ssim_matches_reference_on_non_square_images():
    a = _smooth_images(1, 13, 17, seed=8)
    b = (a + 0.2 * _images(1, 13, 17, seed=9)).clamp(-1, 1)
    want = _reference_ssim(((a[0] + 1) / 2).double().numpy(), ((b[0] + 1) / 2).double().numpy())
    assert ssim(a, b).item() == pytest.approx(want, abs=1e-5)


def test_ssim_matches_scikit_image_when_installed():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a = _smooth_images(2, 32, 40, seed=10).double()
    b = (a + 0.25 * _images(2, 32, 40, dtype=torch.float64, seed=11)).clamp(-1, 1)
    got = ssim(a, b)
    for k in range(2):
        want = skimage_metrics.structural_similarity(
            ((a[k] + 1) / 2).numpy(),
            ((b[k] + 1) / 2).numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=0,
        )
        assert got[k].item() == pytest.approx(want, abs=1e-6)


def test_ssim_identical_is_one_and_symmetric():
    x = _images(3, 20, 20, seed=12)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert ssim(flat, flat).item() == pytest.approx(1.0, abs=1e-6)
    y = _images(3, 20, 20, seed=13)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)


def test_ssim_decreases_with_noise():
    x = _smooth_images(1, 32, 32, seed=14)
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(15))
    scores = [ssim(x, (x + level * noise).clamp(-1, 1)).item() for level in (0.0, 0.02, 0.05, 0.1, 0.3, 1.0)]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert all(later < earlier for earlier, later in zip(scores, scores[1:])), scores
    assert scores[-1] < 0.5


def test_ssim_rejects_images_smaller_than_window():
    x = _images(1, 10, 16)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x, x)
    x = _images(1, 11, 11)
    assert ssim(x, x).shape == (1,)  # exactly one window position


def test_ssim_half_precision_computed_in_float32():
    a = _smooth_images(1, 16, 16, seed=16)
    b = (a + 0.2 * _images(1, 16, 16, seed=17)).clamp(-1, 1)
    low = ssim(a.bfloat16(), b.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ssim(a.bfloat16().float(), b.bfloat16().float()).item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ gradients


def test_gradients_flow_through_mse_psnr_ssim_masked_l2():
    target = _smooth_images(2, 16, 16, seed=18)
    x = (target + 0.1 * _images(2, 16, 16, seed=19)).clamp(-0.99, 0.99).requires_grad_(True)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    for fn in (mse, l1, psnr, ssim, lambda a, b: masked_l2(a, b, mask)):
        (grad,) = torch.autograd.grad(fn(x, target).sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_psnr_gradient_is_zero_at_the_cap_and_finite():
    # identical samples sit at the 100 dB cap: zero gradient (as a clamped MSE), never NaN from log(0)
    target = _smooth_images(2, 16, 16, seed=22)
    x = target.clone()
    x[1] = (x[1] + 0.1).clamp(-1, 1)
    x.requires_grad_(True)
    values = psnr(x, target)
    assert values[0].item() == pytest.approx(100.0)
    (grad,) = torch.autograd.grad(values.sum(), x)
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0


def test_empty_batches_give_empty_results():
    empty = torch.zeros(0, 3, 16, 16)
    for fn in (mse, l1, psnr, ssim):
        assert fn(empty, empty).shape == (0,), fn.__name__


def test_ssim_and_psnr_gradcheck():
    target = _smooth_images(1, 12, 12, seed=20).double()
    x = (target + 0.2 * _images(1, 12, 12, dtype=torch.float64, seed=21)).clamp(-0.9, 0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ssim(t, target), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda t: psnr(t, target), (x,), fast_mode=True)


# ------------------------------------------------------------------------------------------------ CMUA masked L2


def test_masked_l2_hand_computed():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[0, :, 0, 0] = 0.5  # inside the mask: 3 values of 0.25
    b[0, 0, 0, 1] = 1.0  # inside the mask: 1 value of 1
    b[0, :, 3, 3] = 1.0  # outside the mask: ignored
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 0, :2] = 1  # 2 pixels -> denominator 3 * 2
    # sample 1: empty mask -> 0 even though the images differ
    b[1] = 0.7
    got = masked_l2(a, b, mask)
    assert torch.allclose(got, torch.tensor([(3 * 0.25 + 1.0) / 6, 0.0]))
    # A full mask gives the plain MSE.
    full = torch.ones(2, 1, 4, 4)
    assert torch.allclose(masked_l2(a, b, full), mse(a, b))


def test_masked_l2_accepts_nhw_and_bool_masks():
    a, b = _images(seed=22), _images(seed=23)
    mask = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(24)) > 0.5
    want = masked_l2(a, b, mask.float())
    assert torch.allclose(masked_l2(a, b, mask), want)
    assert torch.allclose(masked_l2(a, b, mask[:, 0].float()), want)


def test_masked_l2_rejects_bad_masks():
    a, b = _images(), _images(seed=1)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        masked_l2(a, b, torch.ones(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        masked_l2(a, b, torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="only 0 and 1"):
        masked_l2(a, b, torch.full((2, 1, 16, 16), 0.5))
    with pytest.raises(TypeError, match="mask"):
        masked_l2(a, b, [[1]])


def test_cmua_mask_threshold_behaviour():
    original = torch.zeros(1, 3, 2, 3)
    edited = original.clone()
    edited[0, :2, 0, 0] = 0.25  # channel sum 0.5 exactly: not above 0.5 -> 0
    edited[0, :2, 0, 1] = 0.25
    edited[0, 2, 0, 1] = -0.125  # channel sum of |.| 0.625 -> 1 (signs do not cancel)
    edited[0, 0, 0, 2] = 0.4  # 0.4 -> 0
    edited[0, :, 1, 0] = 1.0  # 3.0 -> 1
    mask = cmua_mask(edited, original)
    assert mask.shape == (1, 1, 2, 3) and mask.dtype == torch.float32
    assert torch.equal(mask[0, 0], torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    # A lower threshold includes the 0.5 and 0.4 pixels; a high one keeps only the strongest change.
    assert torch.equal(cmua_mask(edited, original, threshold=0.3)[0, 0], torch.tensor([[1.0, 1, 1], [1, 0, 0]]))
    assert torch.equal(cmua_mask(edited, original, threshold=2.0)[0, 0], torch.tensor([[0.0, 0, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="threshold"):
        cmua_mask(edited, original, threshold=-0.1)


def test_cmua_pipeline_on_constructed_edit():
    x = torch.zeros(1, 3, 4, 4)
    clean_edit = x.clone()
    clean_edit[..., :2, :] = 0.5  # the edit changed the top half (channel sum 1.5 > 0.5)
    disrupted = clean_edit.clone()
    disrupted[..., 0, :] += 0.4  # disruption inside the edited region
    disrupted[..., 3, :] += 0.9  # disruption outside: not scored
    mask = cmua_mask(clean_edit, x)
    assert mask.sum().item() == 8
    value = masked_l2(disrupted, clean_edit, mask)
    assert value.item() == pytest.approx(3 * 4 * 0.16 / (3 * 8))
    assert success(value).tolist() == [True]


# ------------------------------------------------------------------------------------------------ success


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_success_at_boundary(dtype):
    scores = torch.tensor([0.0, 0.0499, 0.05, 0.0501, 0.4], dtype=dtype)
    assert success(scores).tolist() == [False, False, False, True, True]
    assert success(scores).dtype == torch.bool
    assert success_rate(scores) == pytest.approx(0.4)
    assert success_rate(scores, threshold=0.01) == pytest.approx(0.8)
    assert metrics.DISRUPTION_THRESHOLD == 0.05


def test_success_accepts_sequences_and_rejects_bad_input():
    assert success([0.1, 0.01]).tolist() == [True, False]
    assert success_rate([0.1, 0.01, 0.2, 0.3]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="1-D"):
        success(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        success(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        success_rate(torch.zeros(0))
    with pytest.raises(ValueError, match="threshold"):
        success(torch.zeros(2), threshold=True)


# ------------------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize("fn", [mse, l1, psnr, ssim], ids=lambda f: f.__name__)
def test_shape_and_type_errors(fn):
    x = _images()
    with pytest.raises(ValueError, match="unsqueeze"):
        fn(x[0], x[0])
    with pytest.raises(ValueError, match="permute"):
        fn(x.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="same shape"):
        fn(x, x[:1])
    with pytest.raises(TypeError, match="floating point"):
        fn((x * 100).long(), (x * 100).long())
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn(x.numpy(), x)


@pytest.mark.parametrize("fn", [mse, l1, psnr, ssim], ids=lambda f: f.__name__)
def test_range_errors(fn):
    x = _images()
    with pytest.raises(ValueError, match=r"127\.5"):
        fn((x + 1) * 127.5, x)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        fn(x, x * 1.5)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fn(x, nan)
    # Rounding noise is tolerated; check_range=False compares raw values (HiSD outputs have no tanh).
    assert fn(x, (x * 1.0005)).shape == (2,)
    assert torch.isfinite(fn(x, x * 1.5, check_range=False)).all()


def test_range_check_can_be_disabled_for_masked_metrics():
    x = _images()
    y = x * 1.5
    with pytest.raises(ValueError, match="check_range=False"):
        masked_l2(x, y, torch.ones(2, 1, 16, 16))
    assert torch.allclose(masked_l2(x, y, torch.ones(2, 1, 16, 16), check_range=False), mse(x, y, check_range=False))
    assert cmua_mask(y, x, check_range=False).shape == (2, 1, 16, 16)
