"""The audit on the testbed editor at toy sizes: every number is where the report says, and reproducible."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import lora_patch_adapters as lpa
from lora_patch_adapters.audit import AuditConfig, parse_budgets, run_audit, write_report
from lora_patch_adapters.audit.runner import Audit
from lora_patch_adapters.defenses.plugins import PluginDefense, load_defense
from lora_patch_adapters.evaluation import evaluate_defense
from lora_patch_adapters.patches import load_patch
from tests.evaluation.test_grid import assert_captioned

TOY = dict(eval_images=2, batch_size=2, shadow_patches=1, inner_steps=1, defense_steps=1, jpeg_qualities=(75,),
           blur_sigmas=(1.0,), init="zero", lr=3e-3, seed=3)


def _editor():
    return lpa.load_editor("testbed")


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("audit"))
    config = AuditConfig(budgets=parse_budgets("2,4"), **TOY)
    train = lpa.testbed_faces(4, seed=3, split="train")
    evaluation = lpa.testbed_faces(2, seed=3, split="test")
    results = run_audit(config, _editor, train, evaluation, out, echo=lambda line: None)
    return config, results, out, evaluation


def test_results_record_config_versions_and_attacker_cost(audit):
    _, results, out, _ = audit
    assert results["format"] == "lora-patch-audit/1" and results["version"] == lpa.__version__
    assert results["seed"] == 3 and results["config"]["budgets"] == ["2x1", "4x1"]
    assert results["config"]["defenses"] == ["pgd", "cmua", "anti_forgery"]
    assert results["headline_budget"] == "4x1"  # the paper's 1000x1 is not audited: the largest is the headline
    costs = results["attacker"]["pgd"]
    for key, images in (("2x1", 2), ("4x1", 4)):
        cost = costs[key]
        assert (cost["images"], cost["epochs"], cost["batches"]) == (images, 1, math.ceil(images / 2))
        assert cost["seconds"] > 0 and cost["device"].startswith("cpu")
        assert os.path.isfile(os.path.join(out, cost["patch"], "adapter_model.safetensors"))
    assert len(results["defender"]["shadow_patches"]) == 1
    assert results["defender"]["shadow_patches"][0]["seed"] == 4  # seed + 1: independent of the attacker's
    timings = results["timings"]
    assert timings["total_seconds"] >= timings["attacker_training_seconds"] + timings["evaluation_seconds"]


def test_numbers_match_an_independent_evaluation_of_the_saved_patches(audit):
    _, results, out, (images, labels) = audit
    base = _editor()
    pgd = next(d for d in results["defenses"] if d["name"] == "pgd")
    defense = load_defense("pgd", eps=0.05, seed=3, steps=1)
    for key in ("2x1", "4x1"):
        patched = _editor()
        load_patch(patched, os.path.join(out, results["attacker"]["pgd"][key]["patch"]))
        for scenario in ("default", "leakage"):
            again = evaluate_defense(defense, base, images, labels, patched=patched, scenario=scenario)
            recorded = pgd["budgets"][key][scenario]
            assert recorded["success_rate_patched"] == again.success_rate_patched
            assert recorded["metrics"]["patched_protected"]["mse"] == pytest.approx(
                again.metrics["patched_protected"]["mse"], rel=1e-4)
        assert pgd["success_rates"]["default"][key] == pgd["budgets"][key]["default"]["success_rate_patched"]
    assert pgd["success_rates"]["before"] == again.success_rate_base


def test_patch_aware_row_and_robustness_are_recorded(audit):
    _, results, _, _ = audit
    for defense in results["defenses"]:
        aware = defense["budgets"]["4x1"]["patch_aware"]
        assert aware["scenario"] == "patch-aware" and aware["config"]["protected_against"] == "base+1 shadow patches"
        assert defense["success_rates"]["patch_aware"]["4x1"] == aware["success_rate_patched"]
        assert set(defense["robustness"]) == {"jpeg75", "blur1"}
        for row in defense["robustness"].values():
            assert 0 <= row["success_rate"] <= 1 and row["mse"] >= 0 and row["mse_clean"] >= 0
        assert defense["patch_aware_error"] is None
    cmua = next(d for d in results["defenses"] if d["name"] == "cmua")
    assert cmua["universal"] is True and cmua["before"]["perturbation"]["linf_max"] <= 0.05 + 1e-6


def test_report_files_are_self_contained_and_agree_with_the_results(audit):
    _, results, out, _ = audit
    paths = write_report(results, out)
    assert json.loads(Path(paths["results"]).read_text()) == json.loads(json.dumps(results))
    Image.open(paths["curves"]).verify()
    page = Path(paths["html"]).read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 + len(results["defenses"])  # the curves and one grid per defense
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    markdown = Path(paths["markdown"]).read_text()
    head = results["headline_budget"]
    for defense in results["defenses"]:
        r = defense["success_rates"]
        row = (f"| {defense['name']} | {100 * r['before']:.1f}% | {100 * r['default'][head]:.1f}% | "
               f"{100 * r['leakage'][head]:.1f}% | {100 * r['patch_aware'][head]:.1f}% |")
        assert row in markdown
        assert f"<td>{defense['name']}</td><td>{100 * r['before']:.1f}%</td>" in page
        assert f"]({defense['grid']})" in markdown


def test_every_defense_grid_carries_its_captions(audit):
    _, results, out, _ = audit
    grids = {d["name"]: assert_captioned(os.path.join(out, d["grid"]), 6, 2, 64, 64) for d in results["defenses"]}
    pgd, cmua = grids["pgd"], grids["cmua"]
    assert pgd.shape == cmua.shape  # the same widest caption: "patch 4x1: edit of protected"
    top, left = pgd.shape[0] - (2 + 6 * 66), pgd.shape[1] - (2 + 2 * 66)
    assert (pgd[: top + 67, :left] == cmua[: top + 67, :left]).all()  # the blank corner, row 1: "input"
    assert (pgd[top + 67 : top + 133, :left] != cmua[top + 67 : top + 133, :left]).any()  # "protected (<defense>)"
    assert (pgd[:top] == cmua[:top]).all()  # the column captions "image 1", "image 2"


def test_defense_attacker_and_a_plugin_that_cannot_be_patch_aware(tmp_path):
    def three_channels_only(x, editor, condition):
        with torch.no_grad():
            out = editor.edit(x, condition)
        if out.shape[1] != 3:
            raise ValueError("expected an RGB output")
        return x

    plugin = PluginDefense(three_channels_only, "rgb_only", 0.05)
    config = AuditConfig(budgets=parse_budgets("2"), attack_with="defense", **TOY)
    pgd = load_defense("pgd", steps=1, seed=3)
    results = run_audit(config, _editor, lpa.testbed_faces(2, seed=3, split="train"),
                        lpa.testbed_faces(2, seed=3, split="test"), str(tmp_path), defenses=[pgd, plugin],
                        echo=lambda line: None)
    assert set(results["attacker"]) == {"pgd", "rgb_only"}  # one patch per defense, trained against it
    rgb = next(d for d in results["defenses"] if d["name"] == "rgb_only")
    assert rgb["success_rates"]["patch_aware"] is None and "expected an RGB output" in rgb["patch_aware_error"]
    assert rgb["success_rates"]["before"] == 0.0  # the identity "defense" disrupts nothing
    write_report(results, str(tmp_path))
    assert "The patch-aware row failed" in (tmp_path / "report.md").read_text()


def test_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="needs 4 training images but the training data has 2"):
        run_audit(AuditConfig(budgets=parse_budgets("4"), **TOY), _editor, lpa.testbed_faces(2, seed=0),
                  lpa.testbed_faces(2, seed=0, split="test"), str(tmp_path), echo=lambda line: None)
    with pytest.raises(ValueError, match="attack_with"):
        AuditConfig(attack_with="magic")
    with pytest.raises(ValueError, match="at least one defense"):
        AuditConfig(defenses=[])


def _untrained_patch(self, data, budget, seed, attack, directory):
    """Audit._train without the training: LPIPS reporting does not depend on it (keeps the test fast)."""
    cost = {"images": budget.images, "epochs": budget.epochs, "image_passes": budget.image_passes, "batches": 1,
            "seconds": 0.1, "flops": 1, "device": self.device, "seed": seed, "final_loss": 0.0, "patch": directory}
    return self.make_editor(), cost


def _tiny_lpips_audit(out: Path) -> dict:
    config = AuditConfig(budgets=parse_budgets("1"), defenses=["pgd"], eval_images=1, batch_size=1, shadow_patches=0,
                         inner_steps=1, defense_steps=1, jpeg_qualities=(), blur_sigmas=(), init="zero", seed=3)
    results = run_audit(config, _editor, lpa.testbed_faces(1, seed=3, split="train"),
                        lpa.testbed_faces(1, seed=3, split="test"), str(out), echo=lambda line: None)
    write_report(results, str(out))
    return results


def test_lpips_column_appears_only_with_cached_weights(tmp_path, monkeypatch):
    from tests.evaluation.test_lpips import install_alexnet

    home = tmp_path / "torch_home"  # never the real ~/.cache
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(Audit, "_train", _untrained_patch)

    without = _tiny_lpips_audit(tmp_path / "without")
    assert without["evaluation"]["lpips_weights"] is None
    assert without["defenses"][0]["clean_lpips"] is None
    markdown = (tmp_path / "without" / "report.md").read_text()
    assert "LPIPS" not in markdown and "LPIPS" not in (tmp_path / "without" / "report.html").read_text()

    weights = install_alexnet(home)
    results = _tiny_lpips_audit(tmp_path / "with")
    assert results["evaluation"]["lpips_weights"] == str(weights.resolve())
    pgd = results["defenses"][0]
    default = pgd["budgets"]["1x1"]["default"]
    assert default["lpips_weights"] == str(weights.resolve())
    assert pgd["clean_lpips"]["1x1"] == default["metrics"]["patched_clean"]["lpips"] == 0  # the "patch" is the base
    assert pgd["budgets"]["1x1"]["leakage"]["metrics"]["base_protected"]["lpips"] > 0
    markdown = (tmp_path / "with" / "report.md").read_text()
    assert "| clean PSNR (dB) | clean LPIPS | attacker cost |" in markdown
    assert f"| clean edit LPIPS, patched vs base | {pgd['clean_lpips']['1x1']:.4f} |" in markdown
    lpips_perturbation = pgd["before"]["perturbation"]["lpips_protected_vs_clean"]
    assert f"LPIPS protected vs clean {lpips_perturbation:.4f}" in markdown
    assert f"`{weights.name}`" in markdown
    assert "<th>clean LPIPS</th>" in (tmp_path / "with" / "report.html").read_text()
