"""The evaluation protocol's numbers against closed forms, on hand-made editors and defenses.

Every image, offset and edit below is a multiple of 1/16 in [-1, 1], so each difference the protocol measures is an
exact float32 constant per sample: the expected MSE / L1 / PSNR / masked L2 and success rates are computed here by
hand (``_expected``), independently of ``lora_patch_adapters.evaluation``.

* base editor ``G(x, c) = x + c`` with ``c = 0.25 * label`` (per image and attribute, 2 attributes -> 2 conditions);
* a patched editor ``G'(x, c) = x + c + bias`` (a constant shift);
* the defense :class:`TagOffset` adds a per-image constant offset ``OFFSETS[i]``, image ``i`` being recognised by a
  tag pixel (so the offset does not depend on how the images are batched).

So for sample (i, k): base_protected differs from the reference by ``d_i``, patched_protected by ``d_i + bias`` and
patched_clean by ``bias``; the CMUA mask (sum over RGB of |G(x, c) - x| > 0.5) is full when ``label[i, k] = 1``
(3 * 0.25 = 0.75) and empty otherwise.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lora_patch_adapters import wrap
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.defenses.base import Defense
from lora_patch_adapters.evaluation import (
    GROUPS,
    EvaluationOptions,
    EvaluationResult,
    compare,
    evaluate_defense,
    evaluate_patches,
    fit_universal,
    labelled_grid,
)
from lora_patch_adapters.generators.ensemble import EnsembleEditor
from tests.evaluation.test_grid import assert_captioned

SIZE = 16  # SSIM needs at least 11 x 11
OFFSETS = (0.0, 0.125, 0.25, 0.5, 0.25)  # the defense's offset of image i
LABELS = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], dtype=torch.float32)
N_IMAGES, N_CONDITIONS = LABELS.shape
BIAS = 0.125  # the patched editor's shift
BOUNDARY = 0.0625  # = 0.25 ** 2: the MSE of images 2 and 4 on the base editor and of image 1 on the patched one


# ------------------------------------------------------------------------------------------------ hand-made parts


def make_images() -> torch.Tensor:
    """[5, 3, 16, 16] multiples of 1/16 in [-0.25, 0]; pixel (0, 0, 0) of image i is the tag -i/16."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(-4, 1, (N_IMAGES, 3, SIZE, SIZE), generator=generator).float() / 16
    images[:, 0, 0, 0] = -torch.arange(N_IMAGES, dtype=torch.float32) / 16
    return images


def image_index(x: torch.Tensor) -> torch.Tensor:
    return (-x[:, 0, 0, 0] * 16).round().long()


def conditions(labels: torch.Tensor) -> list[torch.Tensor]:
    return [0.25 * labels[:, k].view(-1, 1, 1, 1) for k in range(labels.shape[1])]


def shift_editor(bias: float = 0.0, name: str = "base"):
    """G(x, c) = x + c + bias."""
    return wrap(nn.Identity(), edit_fn=lambda module, x, c: x + c + bias, conditions_fn=conditions,
                attribute_names=("a", "b"), name=name)


class TagOffset(Defense):
    """Adds ``offsets[i]`` to image i (found by its tag pixel); records every call."""

    name = "tag-offset"

    def __init__(self, offsets=OFFSETS) -> None:
        self.eps = 1.0  # the projection then only clamps to [-1, 1], which these offsets never reach
        self.offsets = torch.tensor(offsets)
        self.calls: list[dict] = []

    def _protect(self, x, editor, conditions):
        self.calls.append({"n": x.shape[0], "editor": editor, "conditions": list(conditions),
                           "images": image_index(x).tolist()})
        return x + self.offsets[image_index(x)].view(-1, 1, 1, 1)


class EditorDependent(Defense):
    """Adds 0.5 when protecting against the editor named ``patched``, nothing otherwise."""

    name = "editor-dependent"

    def __init__(self) -> None:
        self.eps = 1.0
        self.calls: list = []

    def _protect(self, x, editor, conditions):
        self.calls.append(editor)
        return x + (0.5 if editor.name == "patched" else 0.0)


class PerConditionCount(Defense):
    """Adds 0.125 per condition it is asked to disrupt at once."""

    name = "count"

    def __init__(self) -> None:
        self.eps = 1.0

    def _protect(self, x, editor, conditions):
        return x + 0.125 * len(conditions)


def make_universal(log: list):
    """A universal defense: ``perturbation`` (a float) is added to every image; ``fit`` sets it to 0.5 and logs
    (perturbation before the fit, data, editors) into ``log`` (a closure: a deep copy still logs there)."""

    class Universal(Defense):
        name = "universal"

        def __init__(self, perturbation: float | None) -> None:
            self.eps = 1.0
            self.perturbation = perturbation

        def fit(self, data, editors):
            log.append((self.perturbation, data, editors))
            self.perturbation = 0.5
            return self

        def _protect(self, x, editor, conditions):
            return x + self.perturbation

    return Universal


# -------------------------------------------------------------------------------------------- closed-form numbers


def _psnr(diff: float) -> float:
    """PSNR of a constant difference ``diff`` on the [-1, 1] scale (images mapped to [0, 1]), capped at 100 dB."""
    return 100.0 if diff == 0 else -10 * math.log10((diff / 2) ** 2)


def _expected(threshold: float = BOUNDARY, offsets=OFFSETS, bias: float = BIAS) -> dict:
    samples = [(d, float(LABELS[i, k])) for i, d in enumerate(offsets) for k in range(N_CONDITIONS)]
    diffs = {"base_protected": [d for d, _ in samples], "patched_protected": [d + bias for d, _ in samples],
             "patched_clean": [bias for _ in samples]}
    n = len(samples)
    metrics = {
        group: {
            "mse": sum(v * v for v in values) / n,
            "l1": sum(abs(v) for v in values) / n,
            "psnr": sum(_psnr(v) for v in values) / n,
            "masked_l2": sum(v * v * label for v, (_, label) in zip(values, samples)) / n,
        }
        for group, values in diffs.items()
    }
    return {
        "base": sum(d * d > threshold for d in diffs["base_protected"]) / n,
        "patched": sum(d * d > threshold for d in diffs["patched_protected"]) / n,
        "metrics": metrics,
    }


def _assert_metrics(result: EvaluationResult, expected: dict) -> None:
    for group, values in expected["metrics"].items():
        for name, value in values.items():
            assert result.metrics[group][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (group, name)


def _run(defense=None, patched="default", **kwargs) -> EvaluationResult:
    patched = shift_editor(BIAS, "patched") if patched == "default" else patched
    defense = TagOffset() if defense is None else defense
    kwargs.setdefault("threshold", BOUNDARY)
    return evaluate_defense(defense, shift_editor(), make_images(), LABELS, patched=patched, **kwargs)


# ------------------------------------------------------------------------------------------ 1. the success rule


def test_rates_and_means_equal_the_closed_form():
    result = _run()
    # by hand: base MSEs d^2 = 0, 1/64, 1/16, 1/4, 1/16 -> only image 3 (both conditions) is above 1/16;
    # patched (d + 1/8)^2 = 1/64, 1/16, 9/64, 25/64, 9/64 -> images 2, 3, 4
    assert result.success_rate_base == 0.2
    assert result.success_rate_patched == 0.6
    expected = _expected()
    assert (expected["base"], expected["patched"]) == (0.2, 0.6)
    _assert_metrics(result, expected)
    assert result.metrics["base_protected"]["mse"] == pytest.approx((0 + 1 / 64 + 1 / 16 + 1 / 4 + 1 / 16) / 5)
    assert result.metrics["patched_clean"]["mse"] == pytest.approx(1 / 64)
    assert result.metrics["patched_clean"]["psnr"] == pytest.approx(-10 * math.log10(1 / 256))
    assert result.metrics["base_protected"]["ssim"] < 1
    assert (result.n_images, result.n_conditions, result.threshold) == (5, 2, BOUNDARY)
    assert result.defense == "tag-offset" and result.scenario == "default"
    assert result.perturbation["linf_max"] == 0.5
    assert result.perturbation["psnr_protected_vs_clean"] == pytest.approx(sum(_psnr(d) for d in OFFSETS) / 5)


@pytest.mark.parametrize(
    ("threshold", "base", "patched"),
    [
        (BOUNDARY, 0.2, 0.6),  # MSE exactly 1/16 is not a success (strictly greater)
        (BOUNDARY - 1e-6, 0.6, 0.8),  # ... and is one just below
        (0.25, 0.0, 0.2),  # image 3's base MSE is exactly 1/4
        (0.05, 0.6, 0.8),  # the field's threshold
        (0.0, 0.8, 1.0),  # every non-zero MSE
    ],
)
def test_the_threshold_is_strict(threshold, base, patched):
    result = _run(threshold=threshold)
    assert (result.success_rate_base, result.success_rate_patched) == (base, patched)
    expected = _expected(threshold)
    assert (expected["base"], expected["patched"]) == (base, patched)


def test_outputs_are_clamped_before_scoring():
    # G(x, c) = x + c + 3 saturates: clamped to 1 it differs from the reference 1 - (x + c) per pixel
    big = shift_editor(3.0, "big")
    result = _run(patched=big)
    x = make_images()
    reference = x + torch.stack(conditions(LABELS))  # [K, N, 3, H, W]
    expected = (1 - reference).square().flatten(2).mean(dim=2).mean().item()
    assert result.metrics["patched_clean"]["mse"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------ 2. scenarios


def test_default_protects_against_base_and_leakage_against_patched():
    base, patched = shift_editor(), shift_editor(BIAS, "patched")
    images = make_images()
    default_defense, leakage_defense = EditorDependent(), EditorDependent()
    default = evaluate_defense(default_defense, base, images, LABELS, patched=patched)
    leakage = evaluate_defense(leakage_defense, base, images, LABELS, patched=patched, scenario="leakage")
    assert default_defense.calls and all(e is base for e in default_defense.calls)
    assert leakage_defense.calls and all(e is patched for e in leakage_defense.calls)
    assert (default.scenario, leakage.scenario) == ("default", "leakage")
    assert default.config["protected_against"] == "base" and leakage.config["protected_against"] == "patched"
    # default: no offset -> base MSE 0, patched (1/8)^2 = 1/64 < 0.05; leakage: offset 0.5 -> 1/4 and (5/8)^2
    assert (default.success_rate_base, default.success_rate_patched) == (0.0, 0.0)
    assert default.metrics["base_protected"]["mse"] == 0
    assert default.metrics["patched_protected"]["mse"] == pytest.approx(1 / 64)
    assert (leakage.success_rate_base, leakage.success_rate_patched) == (1.0, 1.0)
    assert leakage.metrics["base_protected"]["mse"] == pytest.approx(0.25)
    assert leakage.metrics["patched_protected"]["mse"] == pytest.approx(25 / 64)


def test_no_patch_gives_equal_before_and_after_numbers():
    result = _run(patched=None)
    assert result.success_rate_base == result.success_rate_patched == 0.2
    assert result.metrics["base_protected"] == result.metrics["patched_protected"]
    _assert_metrics(result, {"metrics": {"base_protected": _expected()["metrics"]["base_protected"]}})
    clean = result.metrics["patched_clean"]
    assert clean["mse"] == 0 and clean["l1"] == 0 and clean["psnr"] == pytest.approx(100)
    assert clean["ssim"] == pytest.approx(1)
    assert result.config["patched_is_base"] is True


def test_an_unknown_scenario_raises_before_protecting():
    defense = TagOffset()
    with pytest.raises(ValueError, match="scenario must be one of"):
        _run(defense, scenario="patch-aware")
    assert defense.calls == []


# ------------------------------------------------------------------------------------------ 3. per_condition


def test_per_condition_protects_once_per_condition():
    defense = TagOffset()
    _run(defense, batch_size=2)
    # 3 batches (2, 2, 1 images) x 2 conditions, one condition per call, in order
    assert [c["n"] for c in defense.calls] == [2, 2, 2, 2, 1, 1]
    for call, (start, k) in zip(defense.calls, [(0, 0), (0, 1), (2, 0), (2, 1), (4, 0), (4, 1)]):
        assert len(call["conditions"]) == 1
        expected = 0.25 * LABELS[start : start + call["n"], k].view(-1, 1, 1, 1)
        assert torch.equal(call["conditions"][0], expected)
        assert call["images"] == list(range(start, start + call["n"]))


def test_joint_protection_is_one_call_with_every_condition():
    defense = TagOffset()
    result = _run(defense, batch_size=2, per_condition=False)
    assert [c["n"] for c in defense.calls] == [2, 2, 1]
    for call, start in zip(defense.calls, (0, 2, 4)):
        assert len(call["conditions"]) == N_CONDITIONS
        for k, condition in enumerate(call["conditions"]):
            assert torch.equal(condition, 0.25 * LABELS[start : start + call["n"], k].view(-1, 1, 1, 1))
    assert result.config["per_condition"] is False
    _assert_metrics(result, _expected())  # this defense ignores the conditions: same numbers


def test_the_joint_image_is_scored_for_every_condition():
    per = _run(PerConditionCount(), threshold=0.05)  # offset 1/8: MSE 1/64 everywhere
    joint = _run(PerConditionCount(), threshold=0.05, per_condition=False)  # offset 2/8: MSE 1/16 everywhere
    assert per.metrics["base_protected"]["mse"] == pytest.approx(1 / 64) and per.success_rate_base == 0.0
    assert joint.metrics["base_protected"]["mse"] == pytest.approx(1 / 16) and joint.success_rate_base == 1.0


# ---------------------------------------------------------------------------------------------------- 4. batching


@pytest.mark.parametrize(("batch_size", "sizes"), [(1, [1] * 10), (3, [3, 3, 2, 2]), (16, [5, 5])])
def test_results_do_not_depend_on_batch_size(batch_size, sizes):
    defense = TagOffset()
    result = _run(defense, batch_size=batch_size)
    assert [c["n"] for c in defense.calls] == sizes
    assert (result.success_rate_base, result.success_rate_patched) == (0.2, 0.6)
    _assert_metrics(result, _expected())
    assert result.perturbation["linf_max"] == 0.5
    assert result.perturbation["psnr_protected_vs_clean"] == pytest.approx(sum(_psnr(d) for d in OFFSETS) / 5)
    assert result.config["batch_size"] == batch_size


def test_batch_sizes_agree_with_each_other():
    results = [_run(batch_size=b) for b in (1, 3, 16)]
    for other in results[1:]:
        assert other.success_rate_base == results[0].success_rate_base
        assert other.success_rate_patched == results[0].success_rate_patched
        for group in GROUPS:
            assert other.metrics[group] == pytest.approx(results[0].metrics[group], rel=1e-6)


@pytest.mark.parametrize("field", ["batch_size", "grid_images"])
@pytest.mark.parametrize("value", [0, -1, True, 2.0])
def test_options_reject_non_positive_sizes(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        EvaluationOptions(**{field: value})
    defense = TagOffset()
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        _run(defense, **{field: value})
    assert defense.calls == []


# ------------------------------------------------------------------------------------------ 5. evaluate_patches


def test_evaluate_patches_protects_once_and_scores_every_editor():
    base, defense = shift_editor(), TagOffset()
    editors = {"large": shift_editor(0.25, "large"), "none": base, "small": shift_editor(BIAS, "small")}
    results = evaluate_patches(defense, base, make_images(), LABELS, editors, threshold=BOUNDARY, batch_size=2)
    assert len(defense.calls) == 6  # 3 batches x 2 conditions, not x 3 editors
    assert all(c["editor"] is base for c in defense.calls)
    assert list(results) == ["large", "none", "small"]
    for name, bias in (("large", 0.25), ("none", 0.0), ("small", BIAS)):
        expected = _expected(bias=bias)
        assert results[name].success_rate_base == expected["base"] == 0.2
        assert results[name].success_rate_patched == expected["patched"]
        _assert_metrics(results[name], expected)
        assert results[name].config["patched"] == editors[name].name  # the editor's own name
    assert results["small"].success_rate_patched == 0.6
    assert results["large"].success_rate_patched == 0.8  # (d + 1/4)^2 = 1/16 (not > 1/16), 9/64, 1/4, 9/16, 1/4
    assert results["none"].config["patched_is_base"] is True and results["large"].config["patched_is_base"] is False


def test_evaluate_patches_protects_against_the_given_editor_and_labels_the_scenario():
    base, patched, defense = shift_editor(), shift_editor(BIAS, "patched"), EditorDependent()
    results = evaluate_patches(defense, base, make_images(), LABELS, {"p": patched}, protect_against=patched,
                               scenario="patch-aware")
    assert defense.calls and all(e is patched for e in defense.calls)
    assert results["p"].scenario == "patch-aware"
    assert results["p"].metrics["base_protected"]["mse"] == pytest.approx(0.25)  # the 0.5 offset was applied


def test_evaluate_patches_rejects_a_missing_grid_patch_and_an_empty_mapping(tmp_path):
    base, defense = shift_editor(), TagOffset()
    with pytest.raises(ValueError, match="grid_patch='other' is not one of the patched editors"):
        evaluate_patches(defense, base, make_images(), LABELS, {"p": base}, grid_patch="other",
                         grid_path=str(tmp_path / "g.png"))
    with pytest.raises(ValueError, match="at least one patched editor"):
        evaluate_patches(defense, base, make_images(), LABELS, {})
    assert defense.calls == [] and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ 6. transforms


def test_transforms_apply_to_protected_and_clean_images_before_the_base_editor():
    images = make_images()
    shift = lambda x: x + 0.25  # noqa: E731
    halve = lambda x: x / 2  # noqa: E731
    result = _run(transforms={"shift": shift, "halve": halve})
    n = N_IMAGES * N_CONDITIONS
    # shift: the protected edit differs from the reference by d + 1/4, the clean one by exactly 1/4 (MSE 1/16 = the
    # threshold: not a success); squares 1/16, 9/64, 1/4, 9/16, 1/4 -> 4 of 5 images
    shifted = result.transforms["shift"]
    assert shifted["success_rate"] == 0.8
    assert shifted["mse"] == pytest.approx(sum((d + 0.25) ** 2 for d in OFFSETS) / 5)
    assert shifted["success_rate_clean"] == 0.0 and shifted["mse_clean"] == pytest.approx(1 / 16)
    # halve: (x + d) / 2 + c vs x + c, i.e. (d - x) / 2 per pixel; clean: -x / 2 (plain torch, per image)
    offsets = torch.tensor(OFFSETS, dtype=torch.float64).view(-1, 1, 1, 1)
    x = images.double()
    mse_protected = ((offsets - x) / 2).square().flatten(1).mean(dim=1)
    mse_clean = (x / 2).square().flatten(1).mean(dim=1)
    halved = result.transforms["halve"]
    assert halved["mse"] == pytest.approx(mse_protected.mean().item(), rel=1e-5)
    assert halved["mse_clean"] == pytest.approx(mse_clean.mean().item(), rel=1e-5)
    assert halved["success_rate"] == (mse_protected > BOUNDARY).double().mean().item()
    assert halved["success_rate_clean"] == (mse_clean > BOUNDARY).double().mean().item() == 0.0
    assert halved["success_rate"] > 0
    assert set(result.transforms) == {"shift", "halve"}
    assert set(shifted) == {"success_rate", "mse", "success_rate_clean", "mse_clean"}
    # the untransformed numbers are unchanged
    assert (result.success_rate_base, result.success_rate_patched) == (0.2, 0.6)
    _assert_metrics(result, _expected())
    assert n == 10


def test_transform_outputs_are_clamped_to_the_image_range():
    result = _run(transforms={"saturate": lambda x: x + 5})
    # clamped to 1, the edit 1 + c is then clamped to 1 too: it differs from x + c by 1 - x - c per pixel
    x = make_images().double()
    reference = x + torch.stack(conditions(LABELS.double()))
    expected = (1 - reference).square().flatten(2).mean(dim=2).mean().item()
    assert result.transforms["saturate"]["mse"] == pytest.approx(expected, rel=1e-5)
    assert result.transforms["saturate"]["mse_clean"] == pytest.approx(expected, rel=1e-5)


def test_no_transforms_give_an_empty_mapping():
    assert _run().transforms == {}


# ------------------------------------------------------------------------------------------------------ 7. grids


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8, as make_grid(normalize, value_range=(-1, 1)) + save_image."""
    return ((t.double() + 1) / 2 * 255 + 0.5).floor().clamp(0, 255).permute(1, 2, 0).numpy()


def _expected_rows(bias: float) -> list[torch.Tensor]:
    """The grid's rows for condition 0: input, protected, base clean, base protected, patched clean/protected."""
    x = make_images()
    d = torch.tensor(OFFSETS).view(-1, 1, 1, 1)
    c0 = conditions(LABELS)[0]
    return [x, x + d, x + c0, x + d + c0, x + c0 + bias, x + d + c0 + bias]


def _check_grid(path, columns: int, bias: float = BIAS) -> None:
    # the make_grid part sits in the bottom-right corner, the captions left of it and above it
    captioned = assert_captioned(path, 6, columns, SIZE, SIZE).astype(np.float64)
    # make_grid(padding=2): 2 px before every tile and after the last one
    pixels = captioned[-(2 + 6 * (SIZE + 2)) :, -(2 + columns * (SIZE + 2)) :]
    assert pixels.shape == (2 + 6 * (SIZE + 2), 2 + columns * (SIZE + 2), 3)
    for r, row in enumerate(_expected_rows(bias)):
        for j in range(columns):
            top, left = 2 + r * (SIZE + 2), 2 + j * (SIZE + 2)
            tile = pixels[top : top + SIZE, left : left + SIZE]
            assert np.abs(tile - _to_uint8(row[j])).max() <= 1, (r, j)
    assert pixels[:2].max() == 0 and pixels[:, :2].max() == 0  # black padding


def _check_captions(path, columns: int, patched: str, bias: float = BIAS) -> None:
    """The captions are the protocol's six rows (the defense and the shown patch named), one column per image."""
    names = ["input", "protected (tag-offset)", "base: edit of input", "base: edit of protected",
             f"{patched}: edit of input", f"{patched}: edit of protected"]
    expected = np.asarray(labelled_grid([r[:columns] for r in _expected_rows(bias)], names,
                                        [f"image {j + 1}" for j in range(columns)])).astype(int)
    written = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert written.shape == expected.shape
    assert np.abs(written - expected).max() <= 1


@pytest.mark.parametrize(("grid_images", "columns"), [(3, 3), (4, 4), (10, 5)])
def test_grid_shows_six_rows_of_the_first_images_for_the_first_condition(tmp_path, grid_images, columns):
    path = tmp_path / "grid.png"
    result = _run(grid_path=str(path), grid_images=grid_images)
    assert result.grid_path == str(path)
    _check_grid(path, columns)
    _check_captions(path, columns, "patched")


def test_grid_in_evaluate_patches_shows_the_chosen_patch(tmp_path):
    path = tmp_path / "grid.png"
    base = shift_editor()
    editors = {"small": shift_editor(BIAS, "small"), "large": shift_editor(0.25, "large")}
    results = evaluate_patches(TagOffset(), base, make_images(), LABELS, editors, grid_path=str(path),
                               grid_patch="large", grid_images=2)
    _check_grid(path, 2, bias=0.25)
    assert results["large"].grid_path == str(path) and results["small"].grid_path is None
    _check_captions(path, 2, "patch large", bias=0.25)


def test_no_grid_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run()
    assert result.grid_path is None
    assert list(tmp_path.iterdir()) == []


def test_grid_shows_grid_images_even_when_batches_are_smaller(tmp_path):
    path = tmp_path / "grid.png"
    _run(grid_path=str(path), grid_images=4, batch_size=2)
    _check_grid(path, 4)


# ----------------------------------------------------------------------------------------- 8. universal defenses


def test_fit_data_fits_a_copy_against_the_scenario_editor():
    log: list = []
    universal = make_universal(log)(0.125)
    base, patched = shift_editor(), shift_editor(BIAS, "patched")
    images = make_images()
    fit_data = (images[:2], LABELS[:2])
    unfitted = evaluate_defense(universal, base, images, LABELS, patched=patched)
    assert log == []
    assert unfitted.metrics["base_protected"]["mse"] == pytest.approx(1 / 64)  # the current perturbation 1/8
    default = evaluate_defense(universal, base, images, LABELS, patched=patched, fit_data=fit_data)
    leakage = evaluate_defense(universal, base, images, LABELS, patched=patched, fit_data=fit_data,
                               scenario="leakage")
    assert universal.perturbation == 0.125  # the original is untouched
    assert [(before, data is fit_data, editors) for before, data, editors in log] == [
        (None, True, base), (None, True, patched)]  # refitted from scratch, against the scenario's editor
    for result in (default, leakage):
        assert result.metrics["base_protected"]["mse"] == pytest.approx(0.25)  # the fitted perturbation 1/2
        assert result.defense == "universal"


def test_fit_universal_returns_a_fitted_copy_and_fits_ensembles_member_by_member():
    log: list = []
    universal = make_universal(log)(0.125)
    base, patched = shift_editor(), shift_editor(BIAS, "patched")
    data = (make_images(), LABELS)
    fitted = fit_universal(universal, base, data)
    assert fitted is not universal and type(fitted) is type(universal)
    assert fitted.perturbation == 0.5 and universal.perturbation == 0.125
    ensemble = EnsembleEditor([base, patched])
    fit_universal(universal, ensemble, data)
    assert log[0] == (None, data, base)
    assert log[1][0] is None and log[1][2] == [base, patched]
    assert len(log) == 2


def test_evaluate_patches_fits_against_protect_against():
    log: list = []
    universal = make_universal(log)(None)
    base, patched = shift_editor(), shift_editor(BIAS, "patched")
    ensemble = EnsembleEditor([base, patched])
    images = make_images()
    results = evaluate_patches(universal, base, images, LABELS, {"p": patched}, protect_against=ensemble,
                               fit_data=(images, LABELS))
    assert len(log) == 1 and log[0][2] == [base, patched]
    assert universal.perturbation is None
    assert results["p"].metrics["patched_protected"]["mse"] == pytest.approx((0.5 + BIAS) ** 2)
    assert results["p"].config["protected_against"] == "ensemble"


def test_public_pgd_keeps_its_budget_on_a_hand_made_editor():
    result = _run(PGD(eps=0.05, steps=2), threshold=0.05)
    assert 0 < result.perturbation["linf_max"] <= 0.05 + 1e-6
    # |G(x') - G(x)| = |x' - x| <= 0.05 per pixel: MSE at most 0.0025, never above the threshold
    assert 0 < result.metrics["base_protected"]["mse"] <= 0.05**2 + 1e-7
    assert result.success_rate_base == 0.0


# ------------------------------------------------------------------------------------------------- 9. compare()


def test_compare_prints_one_line_per_result():
    results = [_run(), _run(threshold=0.05, scenario="leakage")]
    lines = compare(results).splitlines()
    assert len(lines) == 1 + len(results)
    assert "success base" in lines[0] and "success patched" in lines[0]
    expected_mse = (sum(d * d for d in OFFSETS) / 5, sum((d + BIAS) ** 2 for d in OFFSETS) / 5)
    for line, (scenario, base, patched) in zip(lines[1:], [("default", "20.0%", "60.0%"),
                                                           ("leakage", "60.0%", "80.0%")]):
        fields = line.split()
        assert fields[:4] == ["tag-offset", scenario, base, patched]
        assert [float(v) for v in fields[4:]] == pytest.approx(list(expected_mse), abs=1e-4)


# ---------------------------------------------------------------------------------------- 10. to_dict / to_json


def test_to_dict_and_to_json_round_trip_the_numbers():
    result = _run(transforms={"shift": lambda x: x + 0.25})
    data = json.loads(result.to_json())
    assert data == result.to_dict()
    assert EvaluationResult(**data) == result
    assert (data["success_rate_base"], data["success_rate_patched"]) == (0.2, 0.6)
    assert data["metrics"]["patched_clean"]["mse"] == pytest.approx(1 / 64)
    assert data["transforms"]["shift"]["success_rate"] == 0.8
    assert data["n_images"] == 5 and data["n_conditions"] == 2 and data["threshold"] == BOUNDARY
    assert set(data["metrics"]) == set(GROUPS)
    assert data["config"]["base"] == "base" and data["config"]["patched"] == "patched"
