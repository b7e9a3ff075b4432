"""Visible warning watermarks: rendering, placement, training target, visibility metric, loading, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lora_patch_adapters.evaluation.watermark import (
    VISIBLE_MIN_CONTRAST,
    VISIBLE_MIN_CORRELATION,
    visible_rate,
    watermark_visibility,
)
from lora_patch_adapters.training.watermark import Watermark, load_warning_image, render_warning, save_preview

RED = (220, 20, 20)
GREEN = (20, 220, 20)


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) inclusive of a [1, 1, H, W] or [H, W] {0, 1} mask."""
    mask = mask.reshape(mask.shape[-2:]) > 0.5
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return rows[0].item(), cols[0].item(), rows[-1].item(), cols[-1].item()


def _faces(n: int = 4, size: int = 64) -> torch.Tensor:
    """Smooth, face-like stand-ins in [-1, 1] (not saturated, so every mark pixel can move)."""
    base = torch.rand(n, 3, size // 8, size // 8) * 1.2 - 0.6
    return F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------------------
# render_warning


@pytest.mark.parametrize("size, shape", [(16, (16, 16)), (64, (64, 64)), ((48, 96), (48, 96)), (200, (200, 200))])
def test_render_shape_ranges_and_alpha(size, shape):
    mark = render_warning(size)
    assert mark.shape == (4, *shape) and mark.dtype == torch.float32
    assert mark.min() >= 0 and mark.max() <= 1
    alpha = mark[3]
    assert (alpha == 0).any() and (alpha == 1).any()


@pytest.mark.parametrize("colour", [RED, GREEN, (30, 60, 200)])
def test_render_triangle_has_requested_colour(colour):
    mark = render_warning(96, colour=colour)
    opaque = mark[3] > 0.99
    rgb = mark[:3][:, opaque]
    expected = torch.tensor(colour, dtype=torch.float32) / 255
    # most of the opaque area is the triangle fill: its median is the colour exactly
    assert torch.allclose(rgb.median(dim=1).values, expected, atol=1 / 255)
    # the mean is pulled towards white by the exclamation mark only (a small fraction of the area)
    assert torch.allclose(rgb.mean(dim=1), expected, atol=0.15)
    # and the exclamation mark is there: some opaque pixels are (nearly) white
    assert (rgb.min(dim=0).values > 0.95).sum() > 20


def test_render_is_deterministic_and_text_optional():
    assert torch.equal(render_warning((48, 96)), render_warning((48, 96)))
    with_text, without = render_warning(160), render_warning(160, text="")
    assert not torch.equal(with_text, without)
    # the caption sits below the same full-width triangle: the mark gets taller, not wider
    top, left, bottom, right = _bbox(with_text[3])
    top0, left0, bottom0, right0 = _bbox(without[3])
    assert bottom - top > bottom0 - top0 + 10
    assert right0 - left0 + 1 >= 158 and right - left >= right0 - left0
    text_only = render_warning((24, 120), text="FAKE", sign=False)
    assert (text_only[3] > 0.5).any()


def test_render_errors():
    with pytest.raises(FileNotFoundError, match="font file not found: .*nope.ttf"):
        render_warning(64, font="/definitely/nope.ttf")
    with pytest.raises(ValueError, match="size"):
        render_warning(0)
    with pytest.raises(ValueError, match="colour"):
        render_warning(32, colour=(300, 0, 0))
    with pytest.raises(ValueError, match="nothing to draw"):
        render_warning(32, text="", sign=False)


# ----------------------------------------------------------------------------------------------------------------
# pattern


def test_pattern_background_is_exactly_zero():
    wm = Watermark()
    pattern, mask = wm.pattern(64, 64)
    assert pattern.shape == (1, 3, 64, 64) and mask.shape == (1, 1, 64, 64)
    assert pattern.min() >= -1 and pattern.max() <= 1
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 50
    # zero everywhere except on the mark and its 1-2 px antialiased rim
    near = F.max_pool2d(mask, 5, stride=1, padding=2)
    assert (pattern * (1 - near)).abs().max() == 0
    top, left, bottom, right = _bbox(mask)
    outside_box = torch.ones(64, 64, dtype=torch.bool)
    outside_box[top - 2 : bottom + 3, left - 2 : right + 3] = False
    assert (pattern[0][:, outside_box] == 0).all()
    # the mark pushes towards its colour: red up, green/blue down
    inside = pattern[0][:, mask[0, 0] > 0.5]
    assert (inside[0] > 0).all() and (inside[1:].median(dim=1).values < -0.5).all()


@pytest.mark.parametrize("position", ["top-left", "top-right", "bottom-left", "bottom-right", "center"])
def test_pattern_named_positions(position):
    size = 128
    wm = Watermark(position=position, size=0.3, margin=0.05)
    _, mask = wm.pattern(size, size)
    top, left, bottom, right = _bbox(mask)
    margin = round(0.05 * size)
    if position == "center":
        assert abs((left + right) / 2 - (size - 1) / 2) <= 1.5 and abs((top + bottom) / 2 - (size - 1) / 2) <= 1.5
        return
    vertical, horizontal = position.split("-")
    if horizontal == "left":
        assert abs(left - margin) <= 1 and right < size / 2
    else:
        assert abs(right - (size - 1 - margin)) <= 1 and left > size / 2
    if vertical == "top":
        assert abs(top - margin) <= 1 and bottom < size / 2
    else:
        assert abs(bottom - (size - 1 - margin)) <= 1 and top > size / 2


def test_pattern_fraction_position_and_size():
    height, width = 96, 160
    wm = Watermark(position=(0.25, 0.5), size=0.25, margin=0.0)
    _, mask = wm.pattern(height, width)
    top, left, _, right = _bbox(mask)
    assert abs(left - 0.25 * width) <= 2 and abs(top - 0.5 * height) <= 2
    assert abs((right - left + 1) - 0.25 * width) <= 2
    # a full-opaque user mark: the placed box is exactly size * W wide, aspect kept, and clamped inside the image
    user = torch.ones(4, 20, 40)
    _, mask = Watermark(image=user, position=(1.0, 1.0), size=0.5).pattern(height, width)
    assert _bbox(mask) == (height - 40, width - 80, height - 1, width - 1)


@pytest.mark.parametrize("size", [0.2, 0.35, 0.6, 1.0])
def test_pattern_size_fraction(size):
    width = 200
    _, mask = Watermark(size=size, position="center").pattern(200, width)
    _, left, _, right = _bbox(mask)
    assert abs((right - left + 1) - size * width) <= 2


def test_pattern_cache_device_dtype():
    wm = Watermark()
    first = wm.pattern(64, 64)
    assert wm.pattern(64, 64)[0] is first[0]
    half, _ = wm.pattern(64, 64, dtype=torch.float64)
    assert half.dtype == torch.float64 and torch.equal(half.float(), first[0])
    wm.position = "top-left"  # changing a setting invalidates the cached pattern
    assert not torch.equal(wm.pattern(64, 64)[0], first[0])


# ----------------------------------------------------------------------------------------------------------------
# target


def test_target_matches_formula_and_range():
    wm = Watermark(strength=2.0)
    y_ref = torch.rand(3, 3, 64, 64) * 2 - 1
    pattern, _ = wm.pattern(64, 64)
    expected = torch.clamp(y_ref + 2.0 * pattern, min=-1.0, max=1.0)
    target = wm.target(y_ref)
    assert torch.equal(target, expected)
    assert target.min() >= -1 and target.max() <= 1
    outside = F.max_pool2d(wm.pattern(64, 64)[1], 5, stride=1, padding=2) == 0
    assert torch.equal(target * outside, y_ref * outside)


def test_target_shape_errors():
    wm = Watermark()
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*unsqueeze"):
        wm.target(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        wm.target(torch.zeros(2, 1, 64, 64))
    with pytest.raises(TypeError, match="floating point"):
        wm.target(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


# ----------------------------------------------------------------------------------------------------------------
# visibility


def test_visibility_of_target_and_of_nothing():
    wm = Watermark()
    y_ref = _faces()
    target = wm.target(y_ref)
    full = watermark_visibility(target, y_ref, wm)
    assert set(full) == {"psnr_to_target", "correlation", "contrast_ratio", "outside_psnr", "visible"}
    assert full["visible"].dtype == torch.bool and full["visible"].all()
    assert torch.allclose(full["contrast_ratio"], torch.ones(4), atol=1e-5)
    assert torch.allclose(full["correlation"], torch.ones(4), atol=1e-5)
    assert (full["psnr_to_target"] >= 99).all() and (full["outside_psnr"] > 30).all()

    none = watermark_visibility(y_ref, y_ref, wm)
    assert not none["visible"].any()
    assert torch.equal(none["contrast_ratio"], torch.zeros(4))
    assert (none["outside_psnr"] >= 99).all() and (none["psnr_to_target"] < 30).all()


def test_visibility_partial_noisy_and_wrong_colour():
    wm = Watermark()
    y_ref = _faces()
    target = wm.target(y_ref)

    faint = watermark_visibility(y_ref + 0.3 * (target - y_ref), y_ref, wm)
    assert torch.allclose(faint["contrast_ratio"], torch.full((4,), 0.3), atol=1e-4)
    assert torch.allclose(faint["correlation"], torch.ones(4), atol=1e-4)
    assert not faint["visible"].any()

    noisy = watermark_visibility((target + 0.05 * torch.randn_like(target)).clamp(-1, 1), y_ref, wm)
    assert noisy["visible"].all() and (noisy["correlation"] > 0.95).all()

    green = Watermark(colour=GREEN).target(y_ref)
    wrong = watermark_visibility(green, y_ref, wm)
    assert (wrong["correlation"] < VISIBLE_MIN_CORRELATION - 0.3).all()
    assert not wrong["visible"].any()

    # outputs beyond [-1, 1] (no final tanh) are clamped before scoring
    overshoot = watermark_visibility(target * 1.5, y_ref, wm)
    assert overshoot["visible"].all()


def test_visible_rate_mixed_batch():
    wm = Watermark()
    y_ref = _faces(8)
    target = wm.target(y_ref)
    output = torch.cat([target[:3], y_ref[3:6] + 0.2 * (target[3:6] - y_ref[3:6]), y_ref[6:]])
    assert visible_rate(output, y_ref, wm) == pytest.approx(3 / 8)
    assert VISIBLE_MIN_CONTRAST == 0.5 and VISIBLE_MIN_CORRELATION == 0.8
    with pytest.raises(ValueError, match="same shape"):
        watermark_visibility(output[:2], y_ref, wm)


# ----------------------------------------------------------------------------------------------------------------
# load_warning_image, save_preview


def test_load_warning_image_rgba_and_opaque(tmp_path):
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[2:8, 3:9, 3] = 255
    rgba[0, 0, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mark.png")
    loaded = load_warning_image(tmp_path / "mark.png")
    assert loaded.shape == (4, 10, 12) and loaded.dtype == torch.float32
    assert torch.equal(loaded[3], torch.from_numpy(rgba[..., 3]).float() / 255)
    assert torch.allclose(loaded[0], torch.full((10, 12), 200 / 255))

    rgb = np.full((6, 5, 3), 90, dtype=np.uint8)
    for name in ("opaque.png", "opaque.jpg"):
        Image.fromarray(rgb, "RGB").save(tmp_path / name)
        opaque = load_warning_image(str(tmp_path / name))
        assert opaque.shape == (4, 6, 5) and torch.equal(opaque[3], torch.ones(6, 5))


def test_load_warning_image_errors(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png") as info:
        load_warning_image(missing)
    assert "\n" not in str(info.value)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png") as info:
        load_warning_image(broken)
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        Watermark(image_path=str(missing))


def test_save_preview(tmp_path):
    path = save_preview(tmp_path / "sub" / "preview.png", Watermark(), size=64)
    with Image.open(path) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
        pixels = np.asarray(image)
    assert (pixels == 128).all(axis=2).mean() > 0.8  # mostly mid-grey
    assert ((pixels[..., 0] > 200) & (pixels[..., 1] < 60)).sum() > 50  # a red mark


# ----------------------------------------------------------------------------------------------------------------
# Watermark settings


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"position": "middle"}, "top-left, top-right, bottom-left, bottom-right, center"),
        ({"position": (1.2, 0.0)}, "fractions in \\[0, 1\\]"),
        ({"position": (0.5,)}, "position"),
        ({"size": 0.0}, "size"),
        ({"size": 1.5}, "size"),
        ({"margin": -0.1}, "margin"),
        ({"strength": 0.0}, "strength"),
        ({"strength": float("inf")}, "strength"),
        ({"strength": float("nan")}, "strength"),
        ({"colour": (1, 2)}, "colour"),
        ({"image": torch.zeros(2, 8, 8)}, "\\[4, h, w\\]"),
        ({"image": torch.full((4, 8, 8), 2.0)}, "\\[0, 1\\]"),
    ],
)
def test_watermark_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Watermark(**kwargs)


def test_watermark_type_errors():
    with pytest.raises(TypeError, match="text must be a string"):
        Watermark(text=3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        Watermark(image=np.ones((4, 8, 8)))


def test_to_dict_from_dict_round_trip(tmp_path):
    wm = Watermark(text="DEEPFAKE", position=(0.1, 0.2), size=0.5, margin=0.02, strength=1.5)
    data = json.loads(json.dumps(wm.to_dict()))
    restored = Watermark.from_dict(data)
    assert restored == wm and restored.position == (0.1, 0.2)
    assert torch.equal(restored.pattern(64, 64)[0], wm.pattern(64, 64)[0])

    Image.fromarray(np.full((8, 16, 4), 255, dtype=np.uint8), "RGBA").save(tmp_path / "mark.png")
    from_file = Watermark(image_path=str(tmp_path / "mark.png"), position="top-left")
    restored = Watermark.from_dict(json.loads(json.dumps(from_file.to_dict())))
    assert restored == from_file and restored.image is not None and restored.image.shape == (4, 8, 16)

    with pytest.raises(ValueError, match="in-memory tensor"):
        Watermark(image=torch.ones(4, 8, 8)).to_dict()
    with pytest.raises(ValueError, match="unknown Watermark keys"):
        Watermark.from_dict({"size": 0.3, "opacity": 1.0})


def test_a_mark_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    import lora_patch_adapters.training.watermark as watermark_module

    monkeypatch.setattr(watermark_module, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "mark.png"
    Image.new("RGBA", (11, 10), (255, 0, 0, 255)).save(path)
    with pytest.raises(ValueError, match=r"mark\.png: its header declares 11x10 pixels, more than "
                                         r"MAX_IMAGE_PIXELS=100"):
        load_warning_image(path)
    Image.new("RGBA", (10, 10), (255, 0, 0, 255)).save(path)
    assert load_warning_image(path).shape == (4, 10, 10)
