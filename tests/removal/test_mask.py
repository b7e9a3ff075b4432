"""Mask estimation from outputs alone: finds a known mark; Otsu's threshold; one-line errors."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters.removal import estimate_mask, mask_iou, mask_score, otsu_threshold, warning_mask

from .conftest import MARK, SIZE, faces


def test_otsu_separates_two_clusters():
    values = torch.cat([torch.full((100,), 0.1), torch.full((30,), 0.9)]) + 0.01 * torch.randn(130)
    threshold = otsu_threshold(values)
    assert 0.1 < threshold < 0.85
    assert int((values > threshold).sum()) == 30


def test_otsu_of_a_constant_is_that_constant():
    assert otsu_threshold(torch.full((10,), 0.3)) == pytest.approx(0.3)


def test_estimated_mask_finds_a_known_mark_among_edits():
    x, _ = faces(48, seed=1)
    pattern, mark = MARK.pattern(SIZE, SIZE)
    # outputs: the input with an edit that differs per "condition" (a brightness change of the upper half) and the
    # mark stamped at the same place on every output
    edits = []
    for sign in (-1.0, 1.0):
        y = x.clone()
        y[:, :, : SIZE // 2] += 0.4 * sign
        edits.append(((y + 2 * pattern).clamp(-1, 1), x))
    outputs = torch.cat([e[0] for e in edits])
    inputs = torch.cat([e[1] for e in edits])
    estimate = estimate_mask(outputs, inputs, dilate=0)
    assert estimate.shape == (1, 1, SIZE, SIZE)
    assert mask_iou(estimate, mark) >= 0.8
    # the edited (but not agreed-upon) upper half is not taken for the mark
    assert float(estimate[..., : SIZE // 2, :].sum()) <= 0.05 * float(mark.sum())


def test_mask_of_the_defended_generator_overlaps_its_footprint(defended):
    x, labels = faces(32, seed=2)
    mask = warning_mask(defended, x, labels)
    assert mask_iou(mask, MARK.footprint(SIZE, SIZE, margin=1)) >= 0.7


def test_dilation_grows_the_mask():
    x, _ = faces(16)
    pattern, _ = MARK.pattern(SIZE, SIZE)
    outputs = torch.cat([(x + 2 * pattern).clamp(-1, 1)] * 2)
    inputs = torch.cat([x, x])
    assert estimate_mask(outputs, inputs, dilate=2).sum() > estimate_mask(outputs, inputs, dilate=0).sum()


@pytest.mark.parametrize("outputs, inputs, message", [
    (torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 9), "same shape"),
    (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), "at least 2 outputs"),
])
def test_bad_inputs_are_one_line_errors(outputs, inputs, message):
    with pytest.raises(ValueError, match=message) as info:
        mask_score(outputs, inputs)
    assert "\n" not in str(info.value)


def test_negative_dilation_is_refused():
    with pytest.raises(ValueError, match="dilate"):
        estimate_mask(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), dilate=-1)
