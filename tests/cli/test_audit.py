"""``lora-patch audit`` end to end at toy sizes (testbed faces and CelebA files), with a user's defense file, and its
one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lora_patch_adapters import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_defense.py"
TOY = ["--budgets", "2", "--eval-images", "1", "--batch-size", "2", "--shadow-patches", "1", "--inner-steps", "1",
       "--defense-steps", "1", "--jpeg", "80", "--blur", "1", "--no-progress", "--seed", "5"]


def test_audit_with_a_builtin_and_a_user_defense_writes_the_report(tmp_path, capsys):
    out = tmp_path / "audit"
    code = cli.main(["audit", "--defense", f"pgd,{EXAMPLE}:random_noise", *TOY, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("results.json", "report.md", "report.html", "success_vs_budget.png", "grids/pgd.png",
                 "grids/random_noise.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert [d["name"] for d in results["defenses"]] == ["pgd", "random_noise"]
    assert results["defenses"][1]["spec"] == f"{EXAMPLE}:random_noise"
    assert results["command"].startswith("lora-patch audit --defense") and results["generator"] == "testbed"
    assert results["seed"] == 5 and results["config"]["eval_images"] == 1
    pgd = results["defenses"][0]["success_rates"]
    assert f"pgd              {100 * pgd['before']:5.1f}% -> {100 * pgd['default']['2x1']:5.1f}%" in printed
    assert f"html:     {os.path.join(str(out), 'report.html')}" in printed


def test_parser_defaults_are_the_papers_and_match_the_library():
    from lora_patch_adapters.audit.budgets import DEFAULT_BUDGETS, parse_budgets
    from lora_patch_adapters.audit.runner import ATTACK_WITH, AuditConfig
    from lora_patch_adapters.cli import audit as cli_audit

    assert cli_audit.DEFAULT_BUDGETS == DEFAULT_BUDGETS and cli_audit.ATTACK_WITH == ATTACK_WITH
    args = cli.build_parser().parse_args(["audit"])
    defaults = AuditConfig()
    assert (args.rank, args.lr, args.batch_size, args.inner_steps, args.eps) == (
        defaults.rank, defaults.lr, defaults.batch_size, defaults.inner_steps, defaults.eps) == (8, 1e-3, 4, 10, 0.05)
    assert cli_audit.DEFAULT_DEFENSES.split(",") == defaults.defenses
    assert parse_budgets(cli_audit.DEFAULT_BUDGETS) == defaults.budgets
    assert args.out == os.path.join("runs", "audit") and args.generator == "testbed"
    from lora_patch_adapters.audit.runner import FREE_REPLAYS
    from lora_patch_adapters.training.config import INNER_STRATEGIES

    assert cli_audit.INNER == INNER_STRATEGIES and (args.inner, args.replays) == (defaults.inner, FREE_REPLAYS)
    assert AuditConfig(inner="free").replays == args.replays == 4


def test_audit_with_the_free_inner_maximisation_records_it_and_the_flops(tmp_path, capsys):
    out = tmp_path / "audit"
    at = TOY.index("--inner-steps")
    toy = TOY[:at] + TOY[at + 2:]
    assert cli.main(["audit", "--defense", "pgd", *toy, "--inner", "free", "--replays", "2", "--shadow-patches", "0",
                     "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["config"]["inner"], results["config"]["replays"], results["config"]["inner_steps"]) == (
        "free", 2, None)
    assert results["attacker"]["pgd"]["2x1"]["flops"] > 0
    assert "inner free adversarial training (2 replays" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--inner", "fgsm_rs", "--inner-steps", "3"], "--inner-steps applies to --inner pgd only"),
    (["--inner", "free", "--inner-steps", "3"], "--inner-steps applies to --inner pgd only"),
    (["--replays", "2"], "--replays applies to --inner free only"),
    (["--inner", "fgsm_rs", "--attack-with", "defense"], "--attack-with defense needs --inner pgd"),
])
def test_inner_combinations_that_do_not_apply_are_one_line(tmp_path, capsys, argv, message):
    assert cli.main(["audit", *argv, "--out", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "audit").exists()


@pytest.mark.parametrize("argv, code, message", [
    (["--defense", "nope"], 1, "Unknown defense 'nope'"),
    (["--defense", "missing_file.py:x"], 1, "not found"),
    (["--budgets", "0"], 2, "positive integer"),
    (["--budgets", "ten"], 2, "IMAGESxEPOCHS"),
    (["--jpeg", "0"], 2, "JPEG qualities"),
    (["--inner", "adam"], 2, "invalid choice: 'adam'"),
    (["--generator", "stargan"], 2, "needs --checkpoint"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, code, message):
    if code == 2 and argv[0] != "--generator":
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["audit", *argv, "--out", str(tmp_path)])
        assert exit_info.value.code == 2
    else:
        assert cli.main(["audit", *argv, "--out", str(tmp_path)]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_audit_on_celeba_files_uses_disjoint_rows(tmp_path):
    from tests.helpers import fake_celeba

    images, attr = fake_celeba(tmp_path, rows=(0, 1, 2, 3, 29000))
    out = tmp_path / "audit"
    assert cli.main(["audit", "--defense", "pgd", *TOY, "--data", str(images), "--attr-file", str(attr),
                     "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "CelebA" in results["data"] and "the first 2 images" in results["data"] and "next 2" in results["data"]
    assert results["evaluation"]["images"] == 1 and results["attacker"]["pgd"]["2x1"]["images"] == 2
