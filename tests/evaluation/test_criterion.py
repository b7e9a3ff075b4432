"""The success criterion of the evaluation: MSE (default) or CMUA-Watermark's masked L2, on a hand-made editor and
defense whose scores are worked out here by hand, independently of ``lora_patch_adapters.evaluation.metrics``.

* editor ``G(x, c) = x + 0.4`` on the region ``REGIONS[c]`` (top half for c = 0, left half for c = 1): the clean edit
  changes those pixels by 3 * 0.4 = 1.2 > 0.5 summed over RGB, so the CMUA mask is exactly that region;
* defense: image ``i`` gets ``AMPLITUDES[i]`` added on the top half only, so ``G(x') - G(x) = x' - x``.
"""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters import wrap
from lora_patch_adapters.defenses.base import Defense
from lora_patch_adapters.evaluation.protocol import (
    EvaluationOptions,
    EvaluationResult,
    evaluate_defense,
    evaluate_patches,
)

SIZE = 16
AMPLITUDES = (0.1, 0.2, 0.3, 0.4)
THRESHOLD = 0.05


def _region(c: int) -> torch.Tensor:
    region = torch.zeros(1, 1, SIZE, SIZE)
    if c == 0:
        region[..., : SIZE // 2, :] = 1
    else:
        region[..., :, : SIZE // 2] = 1
    return region


def _editor():
    return wrap(torch.nn.Identity(), edit_fn=lambda m, x, c: x + 0.4 * _region(c).to(x),
                conditions_fn=lambda labels: [0, 1], name="regions")


class TopShift(Defense):
    name = "top-shift"

    def __init__(self) -> None:
        self.eps = 0.5

    def _protect(self, x, editor, conditions):
        amplitude = torch.tensor(AMPLITUDES[: x.shape[0]], dtype=x.dtype).view(-1, 1, 1, 1)
        return x + amplitude * _region(0).to(x)


def _inputs():
    # in [-0.75, -0.25]: the edits and shifts stay inside [-1, 1], where the protocol clamps outputs
    x = torch.rand(len(AMPLITUDES), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.5 - 0.75
    return x, torch.zeros(len(AMPLITUDES), 1)


def _expected() -> dict[str, float]:
    """Success rates over the 4 images x 2 conditions, by hand: delta = a on the top half.
    MSE = a^2 / 2 for both conditions; masked L2 = a^2 on the top-half mask, a^2 / 2 on the left-half mask (half of
    its pixels are shifted)."""
    mse_hits = masked_hits = 0
    for a in AMPLITUDES:
        mse = a * a / 2
        masked = (a * a, a * a / 2)
        mse_hits += 2 * (mse > THRESHOLD)
        masked_hits += sum(m > THRESHOLD for m in masked)
    total = 2 * len(AMPLITUDES)
    return {"mse": mse_hits / total, "masked_l2": masked_hits / total}


def test_hand_computed_masked_scores_against_torch():
    # the closed form above, checked pixel by pixel (mask = sum_RGB |G(x) - x| > 0.5, masked mean over 3 channels)
    x, _ = _inputs()
    editor = _editor()
    protected = TopShift().protect(x, editor, 0)
    for c in (0, 1):
        clean, edited = editor.edit(x, c), editor.edit(protected, c)
        mask = ((clean - x).abs().sum(dim=1, keepdim=True) > 0.5).float()
        assert torch.equal(mask, _region(c).expand(len(AMPLITUDES), 1, SIZE, SIZE))
        masked = (((edited - clean) * mask) ** 2).flatten(1).sum(1) / (3 * mask.flatten(1).sum(1))
        want = torch.tensor([a * a / (1 if c == 0 else 2) for a in AMPLITUDES])
        assert torch.allclose(masked, want, atol=1e-6)


@pytest.mark.parametrize("criterion", ["mse", "masked_l2"])
def test_success_rate_follows_the_criterion(criterion):
    x, labels = _inputs()
    result = evaluate_defense(TopShift(), _editor(), x, labels, threshold=THRESHOLD, criterion=criterion,
                              transforms={"identity": lambda images: images})
    expected = _expected()
    assert expected["mse"] != expected["masked_l2"]  # the two criteria disagree on this setup (2/8 vs 5/8)
    assert result.success_rate_base == pytest.approx(expected[criterion])
    assert result.success_rate_patched == pytest.approx(expected[criterion])  # patched defaults to base
    assert result.transforms["identity"]["success_rate"] == pytest.approx(expected[criterion])
    # the scores themselves do not depend on the criterion
    want_mse = sum(a * a / 2 for a in AMPLITUDES) / len(AMPLITUDES)
    assert result.metrics["base_protected"]["mse"] == pytest.approx(want_mse, abs=1e-6)
    want_masked = sum(a * a * 1.5 for a in AMPLITUDES) / (2 * len(AMPLITUDES))
    assert result.metrics["base_protected"]["masked_l2"] == pytest.approx(want_masked, abs=1e-6)
    data = result.to_dict()
    assert data["criterion"] == criterion
    assert EvaluationResult(**data) == result
    assert criterion in result.summary()


def test_default_is_mse_and_evaluate_patches_takes_the_criterion():
    x, labels = _inputs()
    editor = _editor()
    default = evaluate_defense(TopShift(), editor, x, labels, threshold=THRESHOLD)
    assert default.criterion == "mse" and default.to_dict()["criterion"] == "mse"
    assert default.success_rate_base == pytest.approx(_expected()["mse"])
    assert EvaluationOptions().criterion == "mse"
    results = evaluate_patches(TopShift(), editor, x, labels, {"same": editor}, threshold=THRESHOLD,
                               criterion="masked_l2")
    assert results["same"].criterion == "masked_l2"
    assert results["same"].success_rate_patched == pytest.approx(_expected()["masked_l2"])


def test_unknown_criterion_is_refused_before_any_work():
    calls = []

    class Counting(TopShift):
        def _protect(self, x, editor, conditions):
            calls.append(1)
            return super()._protect(x, editor, conditions)

    x, labels = _inputs()
    with pytest.raises(ValueError, match="criterion must be one of"):
        evaluate_defense(Counting(), _editor(), x, labels, criterion="l1")
    with pytest.raises(ValueError, match="criterion"):
        EvaluationOptions(criterion="psnr")
    assert calls == []
