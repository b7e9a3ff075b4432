"""The removal audit as a library: its configuration, the break point, the data it refuses, the audit on the tiny
stamping generator, and the public-base case of the threat model (forensics recovers a merged defensive patch)."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors.torch import save_file

from lora_patch_adapters import cli
from lora_patch_adapters.audit.budgets import parse_budgets
from lora_patch_adapters.audit.defensive import (
    DefensiveAuditConfig,
    break_point,
    psnr_threshold,
    run_defensive_audit,
)
from lora_patch_adapters.audit.defensive_report import write_defensive_report
from lora_patch_adapters.generators import load_editor
from lora_patch_adapters.tuner.config import LoraPatchConfig
from lora_patch_adapters.tuner.layer import GatedLoraLayer
from tests.removal.conftest import MARK, faces, stamp_editor


def _row(visible, psnr, flops):
    return {"visible_after": visible, "psnr_outside_db": psnr, "attacker_flops": flops}


def test_the_quality_bar_is_30_db_or_the_defended_quality_less_the_slack():
    config = DefensiveAuditConfig()
    assert psnr_threshold(config, 34.0) == 30.0
    assert psnr_threshold(config, 29.5) == pytest.approx(28.5)  # a worse defended edit cannot make itself unbreakable
    assert psnr_threshold(DefensiveAuditConfig(quality_slack_db=None), 20.0) == 30.0
    assert break_point({"8x1": _row(0.0, 28.9, 10)}, config, psnr_threshold(config, 29.5))["budget"] == "8x1"


def test_the_break_point_is_the_cheapest_budget_that_hides_the_warning_and_keeps_the_edit():
    config = DefensiveAuditConfig()
    budgets = {"8x1": _row(1.0, 32.0, 10), "32x1": _row(0.2, 29.0, 40), "128x1": _row(0.4, 31.0, 160),
               "512x1": _row(0.0, 33.0, 640)}
    assert break_point(budgets, config)["budget"] == "128x1"  # 32x1 hides it but ruins the edit
    assert break_point({"8x1": _row(0.5, 40.0, 10)}, config) is None  # 50 % visible is not broken
    assert break_point({"8x1": _row(0.0, 29.99, 10)}, config) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"budgets": []}, "budgets must be a non-empty list"),
    ({"attacks": []}, "at least one attack"),
    ({"attacks": ["erase"]}, "unknown removal attack"),
    ({"attacks": ["full", "full"]}, "Repeated removal attack"),
    ({"break_visibility": 0.0}, "break_visibility"),
    ({"break_psnr_db": float("inf")}, "break_psnr_db"),
    ({"quality_slack_db": -1.0}, "quality_slack_db"),
])
def test_bad_configs_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        DefensiveAuditConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_too_few_attacker_photos_are_refused_before_any_training(tmp_path):
    config = DefensiveAuditConfig(budgets=parse_budgets("4,16"), attacks=["inpaint"])
    x, labels = faces(4)
    with pytest.raises(ValueError, match="largest budget needs 16 attacker photos but 8 were given"):
        run_defensive_audit(config, stamp_editor(0.0), stamp_editor(3.0), MARK, faces(8)[0], (x, labels),
                            str(tmp_path / "out"), echo=lambda _: None)
    assert not (tmp_path / "out" / "grids").exists()


def test_the_audit_of_the_stamping_generator(tmp_path):
    config = DefensiveAuditConfig(budgets=parse_budgets("4,8x120"), attacks=["unseen"], eval_images=4, grid_images=2)
    base, defended = stamp_editor(0.0), stamp_editor(3.0)
    before = {k: v.clone() for k, v in defended.generator.state_dict().items()}
    results = run_defensive_audit(config, base, defended, MARK, faces(8, seed=3)[0], faces(4, seed=9),
                                  str(tmp_path), echo=lambda _: None)
    assert results["visible_before"] == 1.0
    assert results["mask_iou"] > 0.5
    rows = results["attacks"]["unseen"]["budgets"]
    assert (rows["4x1"]["attacker_steps"], rows["8x120"]["attacker_steps"]) == (1, 240)
    assert rows["8x120"]["visible_after"] < rows["4x1"]["visible_after"]  # more compute erases more
    assert all(torch.equal(before[k], v) for k, v in defended.generator.state_dict().items())
    point = results["break_point"]
    assert (point is None) == (results["break_point_flops"] is None)
    paths = write_defensive_report(results, str(tmp_path))
    assert json.loads(open(paths["summary"]).read())["attacks"]["unseen"]["budgets"]["8x120"]["attacker_steps"] == 240
    assert "| unseen | 8x120 | 240 |" in open(paths["markdown"]).read()


def test_a_public_base_gives_the_defensive_patch_away(tmp_path, capsys):
    """The threat model's caveat, shown: base weights minus defended weights is the merged patch, exactly."""
    base = load_editor("testbed")
    defended = load_editor("testbed")
    torch.manual_seed(0)
    model = peft.get_peft_model(defended.generator, LoraPatchConfig.from_preset("paper-defensive"))
    deltas = {name: m.get_delta_weight("default").detach().clone() for name, m in model.named_modules()
              if isinstance(m, GatedLoraLayer)}
    merged = model.merge_and_unload()
    base_state, merged_state = base.generator.state_dict(), merged.state_dict()
    for name, delta in deltas.items():
        key = name.replace("base_model.model.", "") + ".weight"
        assert torch.allclose(merged_state[key] - base_state[key], delta, atol=1e-5)
    save_file({k: v.contiguous() for k, v in merged_state.items()}, str(tmp_path / "defended.safetensors"))
    save_file({k: v.contiguous() for k, v in base_state.items()}, str(tmp_path / "base.safetensors"))
    assert cli.main(["forensics", "--model", str(tmp_path / "defended.safetensors"), "--reference",
                     str(tmp_path / "base.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "low-rank patch merged" and report["rank"] <= 16
