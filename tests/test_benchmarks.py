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
