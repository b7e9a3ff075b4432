"""The evaluation protocol on the testbed editor."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.defenses import CMUA, PGD
from lora_patch_adapters.evaluation import GROUPS, EvaluationResult, compare, evaluate_defense
from tests.evaluation.test_grid import assert_captioned


@pytest.fixture(scope="module")
def testbed():
    editor = lpa.load_editor("testbed")
    for p in editor.generator.parameters():
        p.requires_grad_(False)
    images, labels = lpa.testbed_faces(4, seed=0, split="test")
    return editor, images, labels


def test_identity_patch_reports_equal_before_and_after(testbed, tmp_path):
    editor, images, labels = testbed
    result = evaluate_defense(PGD(steps=2), editor, images, labels, grid_path=str(tmp_path / "grid.png"))
    assert isinstance(result, EvaluationResult)
    assert result.n_images == 4 and result.n_conditions == 5
    assert result.success_rate_base == result.success_rate_patched
    assert result.metrics["base_protected"] == result.metrics["patched_protected"]
    # the patched editor on clean inputs *is* the reference here
    assert result.metrics["patched_clean"]["mse"] == 0 and result.metrics["patched_clean"]["ssim"] == pytest.approx(1)
    assert result.metrics["base_protected"]["mse"] > 0
    assert result.perturbation["linf_max"] <= 0.05 + 1e-6
    # 4 images x 6 rows of 64 px with 2 px padding, captions left of and above them
    pixels = assert_captioned(tmp_path / "grid.png", 6, 4, 64, 64)
    assert pixels.shape[0] > 2 + 6 * 66 and pixels.shape[1] > 2 + 4 * 66
    data = json.loads(result.to_json())
    assert set(data["metrics"]) == set(GROUPS)
    assert "pgd" in result.summary() and "pgd" in compare([result])


def test_a_real_patch_changes_the_after_numbers(testbed):
    editor, images, labels = testbed
    patched = lpa.load_editor("testbed")
    lpa.get_peft_model(patched.generator, lpa.LoraPatchConfig(init_weights="kaiming"))
    default = evaluate_defense(PGD(steps=2), editor, images, labels, patched=patched)
    assert default.metrics["patched_clean"]["mse"] > 0
    assert default.metrics["patched_protected"] != default.metrics["base_protected"]
    assert default.metrics["base_protected"]["mse"] > 0
    leakage = evaluate_defense(PGD(steps=2), editor, images, labels, patched=patched, scenario="leakage")
    assert leakage.scenario == "leakage"
    assert leakage.metrics["patched_protected"] != default.metrics["patched_protected"]


def test_joint_protection_and_cmua(testbed):
    editor, images, labels = testbed
    joint = evaluate_defense(PGD(steps=2), editor, images, labels, per_condition=False)
    assert joint.config["per_condition"] is False
    cmua = CMUA(steps=1, batch_size=4)
    result = evaluate_defense(cmua, editor, images, labels, fit_data=(images, labels))
    assert cmua.perturbation is None  # fitted on a copy
    assert result.defense == "cmua" and result.metrics["base_protected"]["mse"] > 0


def test_bad_inputs(testbed):
    editor, images, labels = testbed
    with pytest.raises(ValueError, match="scenario must be one of"):
        evaluate_defense(PGD(), editor, images, labels, scenario="white-box")
    with pytest.raises(ValueError, match="empty batch"):
        evaluate_defense(PGD(), editor, images[:0], labels[:0])
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        evaluate_defense(PGD(), editor, (images + 1) * 127.5, labels)
    with pytest.raises(ValueError, match="4 images but 3 label rows"):
        evaluate_defense(PGD(), editor, images, labels[:3])
    with pytest.raises(TypeError, match="Defense"):
        evaluate_defense(copy.copy, editor, images, labels)
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        evaluate_defense(PGD(), editor, images, torch.zeros(4, 3))


def test_evaluate_patches_scores_every_editor_on_one_protection(testbed):
    from lora_patch_adapters.evaluation import evaluate_patches

    editor, images, labels = testbed
    other = lpa.load_editor("testbed")
    with torch.no_grad():
        for p in other.generator.parameters():
            p.mul_(1.05)
    defense = PGD(steps=2)
    many = evaluate_patches(defense, editor, images, labels, {"same": editor, "other": other})
    for name, patched in (("same", editor), ("other", other)):
        single = evaluate_defense(defense, editor, images, labels, patched=patched)
        for group in GROUPS:
            assert many[name].metrics[group] == pytest.approx(single.metrics[group])
        assert many[name].success_rate_patched == single.success_rate_patched
        assert many[name].success_rate_base == single.success_rate_base
    assert many["other"].metrics["patched_clean"]["mse"] > 0 == many["same"].metrics["patched_clean"]["mse"]
    with pytest.raises(ValueError, match="at least one patched editor"):
        evaluate_patches(defense, editor, images, labels, {})


def test_transforms_are_scored_against_the_clean_reference(testbed):
    editor, images, labels = testbed
    identity = lambda x: x  # noqa: E731
    wipe = lambda x: torch.zeros_like(x)  # noqa: E731
    result = evaluate_defense(PGD(steps=2), editor, images, labels, transforms={"id": identity, "wipe": wipe})
    assert result.transforms["id"]["success_rate"] == result.success_rate_base
    assert result.transforms["id"]["mse"] == pytest.approx(result.metrics["base_protected"]["mse"])
    assert result.transforms["id"]["success_rate_clean"] == 0 and result.transforms["id"]["mse_clean"] == 0
    # a transformation that destroys the image "disrupts" clean and protected inputs alike: the control shows it
    assert result.transforms["wipe"]["success_rate_clean"] == result.transforms["wipe"]["success_rate"] == 1.0
