"""The training benchmarks run on a CPU at tiny sizes and print the promised JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args, "--json"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_bench_train_prints_both_paths_side_by_side():
    out = _run("bench_train.py", "--size", "32", "--conv-dim", "8", "--repeat-num", "1", "--pgd-steps", "2",
               "--rounds", "1", "--device", "cpu")
    for key in ("device", "reference_s_per_batch", "fast_s_per_batch", "speedup", "reference_peak_bytes",
                "fast_peak_bytes"):
        assert key in out, key
    assert out["reference_s_per_batch"] > 0 and out["fast_s_per_batch"] > 0
    assert out["speedup"] == pytest.approx(out["reference_s_per_batch"] / out["fast_s_per_batch"])
    assert out["fast_s_per_epoch"] == pytest.approx(out["fast_s_per_batch"] * 1000 / 4)
    assert out["reference_peak_bytes"] > 0 and out["fast_peak_bytes"] > 0
    assert out["flops_per_batch"] > 0 and out["fraction_of_bf16_peak"] is None  # no bf16 peak for a CPU
    assert out["fast_runtime"]["fast"] is True


def test_bench_quality_reports_both_paths_and_the_gap():
    out = _run("bench_quality.py", "--train-images", "4", "--eval-images", "2", "--batch", "2", "--inner-steps", "1")
    reference, fast = out["results"]["reference"], out["results"]["fast"]
    assert out["gap"]["clean_psnr_db"] == pytest.approx(abs(fast["clean_psnr_db"] - reference["clean_psnr_db"]))
    assert out["gap"]["success_rate_points"] == pytest.approx(
        100 * abs(fast["success_rate_patched"] - reference["success_rate_patched"]))
    assert all(0 <= r["success_rate_patched"] <= 1 for r in (reference, fast))


def test_forensics_benchmark_reports_every_case_as_expected():
    rows = _run("forensics_ranks.py")
    assert len(rows) == 12
    cases = {(row["network"], row["case"]): row for row in rows}
    for network in ("testbed", "stargan-sized (random)"):
        assert cases[(network, "untouched")]["verdict"] == "unchanged"
        assert cases[(network, "dense fine-tune")]["verdict"] == "other change"
        for r in (1, 4, 8, 16):
            row = cases[(network, f"merged r={r}")]
            assert (row["verdict"], row["rank"]) == ("low-rank patch merged", r)
    assert all(row["ok"] and row["seconds"] > 0 for row in rows)


def test_bench_attack_compute_reports_every_strategy_against_the_paper():
    out = _run("bench_attack_compute.py", "--train-images", "2", "--eval-images", "1", "--batch", "2",
               "--strategies", "paper,fgsm_rs,free-2")
    assert out["device"] == "cpu" and out["baseline"] == "paper"
    keys = {"inner", "inner_steps", "replays", "train_seconds", "train_flops", "success_before", "success_after",
            "success_after_leakage", "clean_psnr_db"}
    assert set(out["strategies"]) == {"paper", "fgsm_rs", "free-2"}
    for entry in out["strategies"].values():
        assert keys <= set(entry) and entry["train_flops"] > 0 and entry["train_seconds"] > 0
        assert all(0 <= entry[k] <= 1 for k in ("success_before", "success_after", "success_after_leakage"))
    paper, fgsm, free = (out["strategies"][n] for n in ("paper", "fgsm_rs", "free-2"))
    assert (paper["inner"], paper["inner_steps"], fgsm["inner_steps"], free["replays"]) == ("pgd", 10, 1, 2)
    # per update, counting a forward as F, an input-only backward as ~F and a full one as ~2F: PGD-10 ~28F (base
    # edit, patched clean edit, 10 attack steps, outer clean + protected), FGSM-RS ~10F, free with 2 replays ~13F
    assert 2.2 < paper["train_flops"] / fgsm["train_flops"] < 3.6
    assert 1.6 < paper["train_flops"] / free["train_flops"] < 2.8


def test_the_flop_counter_counts_a_convolution_exactly():
    import torch

    from lora_patch_adapters.training.flops import count_flops

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 16, 16)
    assert count_flops(lambda: conv(x)) == 2 * 8 * 3 * 3 * 3 * 16 * 16 * 2  # 2 FLOPs per multiply-add


def test_bench_defensive_removal_reports_both_patches_in_the_promised_schema():
    out = _run("bench_defensive_removal.py", "--train-images", "4", "--budgets", "4,8", "--attacks", "inpaint,full",
               "--eval-images", "2", "--hardening", '{"steps": 1}')
    assert out["device"] == "cpu" and "un-warned base" in out["threat_model"]
    assert set(out["patches"]) == {"paper", "hardened"}
    for patch in out["patches"].values():
        for key in ("visible_before", "psnr_outside_db", "train_seconds", "train_flops", "budgets",
                    "break_point_flops"):
            assert key in patch, key
        assert patch["train_flops"] > 0 and patch["train_seconds"] > 0
        assert set(patch["budgets"]) == {"4", "8"}
        for budget in patch["budgets"].values():
            assert set(budget) == {"visible_after", "psnr_outside_db", "attacker_steps", "attacker_flops",
                                   "attacker_seconds", "attack"}
            assert budget["attack"] in ("inpaint", "full") and budget["attacker_flops"] > 0
        assert patch["budgets"]["8"]["attacker_steps"] == 2 * patch["budgets"]["4"]["attacker_steps"]
    paper, hardened = out["patches"]["paper"], out["patches"]["hardened"]
    assert paper["hardening"] is None and hardened["hardening"]["steps"] == 1
    assert hardened["train_flops"] > paper["train_flops"]  # the simulated attacker costs compute
