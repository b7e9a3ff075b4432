"""``lora-patch audit-defensive`` end to end at toy sizes, ``train-defensive --harden``, and their one-line errors
(refused before any training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_patch_adapters import cli

TRAIN_TOY = ["--images", "4", "--max-steps", "1", "--batch-size", "2", "--pgd-steps", "1", "--eval-images", "1",
             "--no-progress", "--seed", "5"]


@pytest.fixture(scope="module")
def defensive_patch(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("defensive")
    assert cli.main(["train-defensive", *TRAIN_TOY, "--harden", "--harden-steps", "1", "--out", str(out)]) == 0
    return out


def test_train_defensive_harden_records_the_hardening(defensive_patch):
    summary = json.loads((defensive_patch / "summary.json").read_text())
    hardening = summary["training_config"]["hardening"]
    assert hardening["steps"] == 1 and hardening["weight"] == 1.0
    assert summary["training_preset"] is None  # not the paper's recipe any more
    assert "warning_after_attack" in summary["training"]["history"][0]
    info = json.loads((defensive_patch / "patch" / "lora_patch.json").read_text())
    assert info["training"]["config"]["hardening"]["steps"] == 1
    assert info["training"]["watermark"]["position"] == "bottom-right"
    assert "hardened against simulated removal" in (defensive_patch / "report.md").read_text()


def test_audit_defensive_writes_the_report(defensive_patch, tmp_path, capsys):
    out = tmp_path / "audit"
    code = cli.main(["audit-defensive", str(defensive_patch / "patch"), "--budgets", "4,8", "--attacks",
                     "inpaint,full", "--eval-images", "2", "--seed", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("summary.json", "report.md", "report.html", "visibility_vs_budget.png", "grids/removal.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "summary.json").read_text())
    assert 0 <= results["visible_before"] <= 1 and results["psnr_outside_db"] > 0
    assert list(results["attacks"]) == ["inpaint", "full"]
    for attack in results["attacks"].values():
        assert list(attack["budgets"]) == ["4x1", "8x1"]
        small, large = attack["budgets"]["4x1"], attack["budgets"]["8x1"]
        assert (small["attacker_steps"], large["attacker_steps"]) == (1, 2)
        assert large["attacker_flops"] == 2 * small["attacker_flops"] > 0
        assert small["attacker_seconds"] > 0 and 0 <= small["visible_after"] <= 1
    assert results["break_point_flops"] is None or results["break_point_flops"] > 0
    assert "does NOT" not in results["threat_model"] and "un-warned base" in results["threat_model"]
    assert results["command"].startswith("lora-patch audit-defensive")
    assert "break point:" in printed and f"summary:  {out / 'summary.json'}" in printed
    assert "Removal audit of a defensive patch" in (out / "report.html").read_text()


def test_parser_defaults_match_the_library():
    from lora_patch_adapters.audit.budgets import parse_budgets
    from lora_patch_adapters.audit.defensive import DEFAULT_DEFENSIVE_BUDGETS, DefensiveAuditConfig
    from lora_patch_adapters.cli import _args
    from lora_patch_adapters.cli import audit_defensive as command
    from lora_patch_adapters.removal import ATTACKS
    from lora_patch_adapters.training.hardening import HardeningConfig

    assert command.DEFAULT_BUDGETS == DEFAULT_DEFENSIVE_BUDGETS == "8,32,128,512"
    assert command.ATTACKS == tuple(ATTACKS)
    assert parse_budgets(command.DEFAULT_BUDGETS) == DefensiveAuditConfig().budgets
    assert (_args.HARDEN_STEPS, _args.HARDEN_WEIGHT) == (HardeningConfig().steps, HardeningConfig().weight)


@pytest.mark.parametrize("argv, message", [
    (["--budgets", "0"], "must be a positive integer"),
    (["--budgets", "abc"], "Bad attacker budget 'abc'"),
    (["--attacks", "erase"], "unknown removal attack"),
    (["--attacks", "inpaint,inpaint"], "repeated removal attack"),
    (["--eval-images", "0"], "must be a positive integer"),
])
def test_bad_flags_are_one_line_usage_errors(defensive_patch, tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as info:
        cli.main(["audit-defensive", str(defensive_patch / "patch"), *argv, "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_a_missing_lpips_file_is_refused_before_any_work(defensive_patch, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["audit-defensive", str(defensive_patch / "patch"), "--lpips-weights", "missing.pth", "--out",
                     str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pth: no such file" in err[0]
    assert not out.exists()


def test_a_missing_patch_and_a_bypass_patch_are_refused(tmp_path, capsys):
    assert cli.main(["audit-defensive", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")]) == 2
    assert "no such directory" in capsys.readouterr().err
    bypass = tmp_path / "bypass"
    assert cli.main(["train", *TRAIN_TOY, "--feature-weight", "0", "--semantic-weight", "0", "--out",
                     str(bypass)]) == 0
    capsys.readouterr()
    assert cli.main(["audit-defensive", str(bypass / "patch"), "--budgets", "2", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a defensive one" in err[0]
    assert not (tmp_path / "b").exists()


def test_harden_with_fast_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train-defensive", *TRAIN_TOY, "--harden", "--fast", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--harden runs off the fast path" in err[0]
    assert not out.exists()


def test_harden_is_a_flag_of_train_defensive_only(tmp_path, capsys):
    from lora_patch_adapters.runs.errors import RunInputError
    from lora_patch_adapters.runs.train import TrainSettings, run_train

    with pytest.raises(SystemExit):
        cli.main(["train", *TRAIN_TOY, "--harden", "--out", str(tmp_path / "cli")])
    assert "unrecognized arguments: --harden" in capsys.readouterr().err
    with pytest.raises(RunInputError, match="--harden applies to defensive patches"):
        run_train(TrainSettings(kind="bypass", harden=True, out=str(tmp_path / "lib"), images=4, max_steps=1))
    assert not (tmp_path / "lib").exists()


def test_vary_flag_matches_the_library_and_refuses_bad_values(tmp_path, capsys):
    from lora_patch_adapters.cli import _args
    from lora_patch_adapters.training.watermark import VARIATIONS

    assert _args.VARIATIONS == VARIATIONS
    args = cli.build_parser().parse_args(["train-defensive", "--vary", "position,opacity", "--out", "x"])
    assert args.vary == ("position", "opacity")
    with pytest.raises(SystemExit):
        cli.main(["train-defensive", *TRAIN_TOY, "--vary", "size", "--out", str(tmp_path / "a")])
    assert "expected distinct names among position,opacity" in capsys.readouterr().err
    assert cli.main(["train-defensive", *TRAIN_TOY, "--vary", "position", "--position", "center", "--out",
                     str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "start from one of them" in err[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
