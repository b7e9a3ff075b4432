"""lora_patch_adapters.evaluation.watermark: visibility scores against independent computations, and
evaluate_watermark on hand-made editors whose outputs show the warning exactly where the test wants it.

The expected numbers use only the mark's placement (``Watermark.pattern``: the pattern ``W`` and its mask) and the
documented definitions: ``target = clamp(y_ref + strength * W, -1, 1)``; inside the mask, ``d = output - y_ref`` and
``t = target - y_ref``; correlation = cos(d, t), contrast = sum|d| / sum|t|; visible = correlation >= 0.8 and
contrast >= 0.5.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_patch_adapters import wrap
from lora_patch_adapters.defenses.base import Defense
from lora_patch_adapters.evaluation import (
    VISIBLE_MIN_CONTRAST,
    VISIBLE_MIN_CORRELATION,
    evaluate_watermark,
    visible_rate,
    watermark_visibility,
)
from lora_patch_adapters.training.watermark import Watermark

SIZE = 32
N_IMAGES = 5
OFFSETS = {"a": 0.0, "b": 0.25}  # the base editor's shift per condition


@pytest.fixture(scope="module")
def watermark() -> Watermark:
    return Watermark()


def _references(n: int = 4, low: float = -0.9, high: float = 0.9, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=generator) * (high - low) + low


def _target(y_ref: torch.Tensor, watermark: Watermark) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, mask) computed here from the placed pattern."""
    pattern, mask = watermark.pattern(SIZE, SIZE)
    return (y_ref + watermark.strength * pattern).clamp(-1, 1), mask


def _scores(output: torch.Tensor, y_ref: torch.Tensor, watermark: Watermark) -> dict[str, torch.Tensor]:
    """Correlation and contrast by their definitions, per sample, in float64 with explicit masked-pixel selection."""
    target, mask = _target(y_ref, watermark)
    inside = mask[0, 0] > 0
    d = (output - y_ref).double()[:, :, inside].flatten(1)
    t = (target - y_ref).double()[:, :, inside].flatten(1)
    correlation = (d * t).sum(1) / (d.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)
    contrast = d.abs().sum(1) / t.abs().sum(1)
    return {"correlation": correlation, "contrast_ratio": contrast}


def _outside_psnr(output: torch.Tensor, y_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, [0, 1] scale) of output vs y_ref over the pixels outside the mask, per sample, in float64."""
    outside = mask[0, 0] == 0
    diff = ((output - y_ref).double() / 2)[:, :, outside].flatten(1)
    return -10 * torch.log10(diff.square().mean(1).clamp_min(1e-10))


def test_the_mark_has_a_region(watermark):
    pattern, mask = watermark.pattern(SIZE, SIZE)
    inside = mask[0, 0] > 0
    assert 0 < inside.sum() < SIZE * SIZE
    assert pattern[0][:, inside].abs().sum(0).min() > 0  # the mark pushes every pixel of its region


# ------------------------------------------------------------------------------------------ watermark_visibility


def test_the_full_target_is_visible(watermark):
    y_ref = _references()
    target, mask = _target(y_ref, watermark)
    result = watermark_visibility(target, y_ref, watermark)
    assert set(result) == {"psnr_to_target", "correlation", "contrast_ratio", "outside_psnr", "visible"}
    assert all(v.shape == (4,) for v in result.values())
    assert torch.allclose(result["correlation"], torch.ones(4), atol=1e-5)
    assert torch.allclose(result["contrast_ratio"], torch.ones(4), atol=1e-5)
    assert result["visible"].dtype == torch.bool and result["visible"].all()
    assert torch.allclose(result["psnr_to_target"], torch.full((4,), 100.0))  # identical to the target: the cap
    # outside the mask (alpha <= 0.5) the target still has the mark's soft edges: PSNR over those pixels only
    assert torch.allclose(result["outside_psnr"].double(), _outside_psnr(target, y_ref, mask), atol=1e-4)
    assert visible_rate(target, y_ref, watermark) == 1.0


def test_no_change_is_not_visible(watermark):
    y_ref = _references()
    target, _ = _target(y_ref, watermark)
    result = watermark_visibility(y_ref, y_ref, watermark)
    assert torch.equal(result["contrast_ratio"], torch.zeros(4))
    assert torch.equal(result["correlation"], torch.zeros(4))
    assert not result["visible"].any()
    assert torch.allclose(result["outside_psnr"], torch.full((4,), 100.0))
    # PSNR over the whole image, [0, 1] scale: -10 log10(mean(((y_ref - target) / 2)^2))
    expected = -10 * torch.log10(((y_ref - target).double() / 2).square().flatten(1).mean(1))
    assert torch.allclose(result["psnr_to_target"].double(), expected, atol=1e-4)
    assert visible_rate(y_ref, y_ref, watermark) == 0.0


@pytest.mark.parametrize(("fraction", "visible"), [(0.25, False), (0.5, None), (0.75, True), (1.0, True)])
def test_a_partial_warning_has_the_matching_contrast(watermark, fraction, visible):
    y_ref = _references()
    target, _ = _target(y_ref, watermark)
    output = y_ref + fraction * (target - y_ref)
    result = watermark_visibility(output, y_ref, watermark)
    own = _scores(output, y_ref, watermark)
    assert torch.allclose(result["contrast_ratio"].double(), own["contrast_ratio"], atol=1e-5)
    assert torch.allclose(result["contrast_ratio"], torch.full((4,), fraction), atol=1e-5)
    assert torch.allclose(result["correlation"], torch.ones(4), atol=1e-5)
    if visible is not None:  # at exactly 0.5 the flag is a rounding question
        assert result["visible"].tolist() == [visible] * 4


def test_the_wrong_colour_is_not_visible(watermark):
    y_ref = _references(low=-0.2, high=0.2)
    target, _ = _target(y_ref, watermark)
    output = y_ref - 0.6 * (target - y_ref)  # the opposite colour, 60% of the magnitude (|t| <= 1.2: no clamping)
    assert output.abs().max() <= 1
    result = watermark_visibility(output, y_ref, watermark)
    assert torch.allclose(result["correlation"], -torch.ones(4), atol=1e-5)
    assert torch.allclose(result["contrast_ratio"], torch.full((4,), 0.6), atol=1e-5)
    assert not result["visible"].any()


def test_a_change_outside_the_mark_does_not_count(watermark):
    y_ref = _references(low=-0.5, high=0.5)
    _, mask = _target(y_ref, watermark)
    output = y_ref + 0.25 * (1 - mask)
    result = watermark_visibility(output, y_ref, watermark)
    assert torch.equal(result["contrast_ratio"], torch.zeros(4)) and not result["visible"].any()
    # outside the mark the output differs from y_ref by 0.25 everywhere: 0.125 on [0, 1]
    assert torch.allclose(result["outside_psnr"], torch.full((4,), -10 * math.log10(0.125**2)), atol=1e-4)


def test_a_strong_change_of_another_shape_is_not_visible(watermark):
    """Changes of more than half the intended magnitude that only partly point the warning's way: the correlation
    decides, and the flag follows the definition (correlation >= 0.8 and contrast >= 0.5) computed here."""
    y_ref = torch.zeros(1, 3, SIZE, SIZE)
    target, mask = _target(y_ref, watermark)
    t = (target - y_ref) * mask
    u = (torch.randint(0, 2, (1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(5)) * 2 - 1) * mask
    u = u - (u * t).sum() / (t * t).sum() * t  # orthogonal to t over the mark, as long as t
    u = u * t.norm() / u.norm()
    for b, scale, expect in ((0.33, 0.6, True), (1.33, 0.4, False)):
        output = scale * (t + b * u)
        assert output.abs().max() <= 1  # no clamping: cos(change, t) = 1 / sqrt(1 + b^2), 0.95 and 0.60
        own = _scores(output, y_ref, watermark)
        assert own["correlation"].item() == pytest.approx(1 / math.sqrt(1 + b * b), abs=1e-5)
        assert own["contrast_ratio"].item() >= 0.55
        result = watermark_visibility(output, y_ref, watermark)
        assert result["correlation"].item() == pytest.approx(own["correlation"].item(), abs=1e-5)
        assert result["contrast_ratio"].item() == pytest.approx(own["contrast_ratio"].item(), abs=1e-5)
        by_definition = bool(own["correlation"][0] >= VISIBLE_MIN_CORRELATION) and bool(
            own["contrast_ratio"][0] >= VISIBLE_MIN_CONTRAST)
        assert result["visible"].item() == by_definition == expect


def test_visible_rate_is_the_fraction_of_visible_samples(watermark):
    y_ref = _references(n=4)
    target, _ = _target(y_ref, watermark)
    output = torch.cat([target[:3], y_ref[3:]])
    assert visible_rate(output, y_ref, watermark) == 0.75
    assert watermark_visibility(output, y_ref, watermark)["visible"].tolist() == [True, True, True, False]


def test_bad_inputs(watermark):
    y_ref = _references()
    with pytest.raises(ValueError, match="same shape"):
        watermark_visibility(y_ref[:2], y_ref, watermark)
    with pytest.raises(TypeError, match="must be a Watermark"):
        watermark_visibility(y_ref, y_ref, "warning")


# -------------------------------------------------------------------------------------------- evaluate_watermark


def _labels() -> torch.Tensor:
    return torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], dtype=torch.float32)


def _images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(N_IMAGES, 3, SIZE, SIZE, generator=generator) * 0.5 - 0.25  # in [-0.25, 0.25]


def _editor(edit, name: str):
    return wrap(nn.Identity(), edit_fn=edit, conditions_fn=lambda labels: ["a", "b"], attribute_names=("x", "y"),
                name=name)


def _base():
    return _editor(lambda module, x, c: x + OFFSETS[c], "base")


class Recorder(Defense):
    """Adds ``offset`` when protecting against the editor named ``patched``, nothing otherwise; records calls."""

    name = "recorder"

    def __init__(self, offset: float = 0.0) -> None:
        self.eps = 1.0
        self.offset = offset
        self.calls: list = []

    def _protect(self, x, editor, conditions):
        self.calls.append((editor.name, list(conditions), x.shape[0]))
        return x + (self.offset if editor.name == "patched" else 0.0)


def test_a_patch_that_stamps_every_edit_is_always_visible(watermark):
    base = _base()
    patched = _editor(lambda module, x, c: watermark.target(x + OFFSETS[c]), "patched")
    defense = Recorder()
    result = evaluate_watermark(patched, base, watermark, _images(), _labels(), defense=defense, batch_size=2)
    assert result["visible_rate"] == 1.0
    for kind in ("clean", "protected_vs_base", "protected_vs_patched"):
        assert result[f"visible_rate_{kind}"] == 1.0
        assert result[f"{kind}_contrast_ratio"] == pytest.approx(1.0, abs=1e-5)
        assert result[f"{kind}_correlation"] == pytest.approx(1.0, abs=1e-5)
        assert result[f"{kind}_psnr_to_target"] == pytest.approx(100.0)
    assert result["samples_per_kind"] == N_IMAGES * 2  # images x conditions
    # per batch (2, 2, 1 images) and condition: once against the base editor, once against the patched one
    assert defense.calls == [(name, [c], n) for n in (2, 2, 1) for c in ("a", "b") for name in ("base", "patched")]


def test_no_patch_shows_no_warning_even_with_the_default_defense(watermark):
    base = _base()
    result = evaluate_watermark(base, base, watermark, _images(), _labels())  # default defense: PGD, eps 0.05
    assert result["visible_rate"] == 0.0
    assert result["visible_rate_clean"] == result["visible_rate_protected_vs_base"] == 0.0
    assert result["visible_rate_protected_vs_patched"] == 0.0
    assert result["clean_contrast_ratio"] == 0.0
    assert result["samples_per_kind"] == N_IMAGES * 2


def test_visible_rate_is_the_mean_of_the_three_kinds(watermark):
    """The patched editor stamps the warning unless its input was shifted by 0.5 (it then returns the clean edit
    exactly); the defense shifts only when protecting against the patched editor: rates 1, 1, 0."""
    base = _base()

    def edit(module, x, c):
        shifted = (x.flatten(1).mean(1) > 0.3).view(-1, 1, 1, 1)
        return torch.where(shifted, x - 0.5 + OFFSETS[c], watermark.target(x + OFFSETS[c]))

    patched = _editor(edit, "patched")
    result = evaluate_watermark(patched, base, watermark, _images(), _labels(), defense=Recorder(0.5), batch_size=3)
    assert result["visible_rate_clean"] == 1.0
    assert result["visible_rate_protected_vs_base"] == 1.0
    assert result["visible_rate_protected_vs_patched"] == 0.0
    assert result["visible_rate"] == pytest.approx(2 / 3)
    assert result["protected_vs_patched_contrast_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert result["samples_per_kind"] == 10


def test_a_patch_that_stamps_one_condition_of_two(watermark):
    base = _base()

    def edit(module, x, c):
        y = x + OFFSETS[c]
        return watermark.target(y) if c == "a" else y

    patched = _editor(edit, "patched")
    result = evaluate_watermark(patched, base, watermark, _images(), _labels(), defense=Recorder(), batch_size=16)
    for kind in ("clean", "protected_vs_base", "protected_vs_patched"):
        assert result[f"visible_rate_{kind}"] == 0.5
        assert result[f"{kind}_contrast_ratio"] == pytest.approx(0.5, abs=1e-5)  # mean of 1 and 0
    assert result["visible_rate"] == 0.5
    assert result["samples_per_kind"] == 10


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True])
def test_evaluate_watermark_refuses_a_bad_batch_size_before_protecting(watermark, batch_size):
    defense = Recorder()
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate_watermark(_base(), _base(), watermark, _images(), _labels(), defense=defense, batch_size=batch_size)
    assert defense.calls == []
