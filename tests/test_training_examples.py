"""The training examples run end to end on the testbed: a bypass patch, a defensive patch, and loading a saved patch.

The scripts run as subprocesses with tiny settings (2 steps of 1 image, PGD-1, 1 evaluation image) in two chains side
by side, one per CPU core; interpreter start-up (importing peft) is most of their time. Error paths and ``--help``
run in-process (``runpy``), which costs no extra interpreter start.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
TINY = ["--testbed", "--images", "2", "--batch-size", "1", "--max-steps", "2", "--eval-images", "1",
        "--pgd-steps", "1", "--seed", "0", "--no-progress"]
PATCH_FILES = ("adapter_config.json", "adapter_model.safetensors", "lora_patch.json")


class Run:
    """A script started in the background; its output goes to files (no pipe can fill up and block it)."""

    def __init__(self, name: str, script: str, args: list[object], log_dir: Path) -> None:
        self.name = name
        self.stdout_path, self.stderr_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}  # concurrent runs share 2 cores
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([sys.executable, str(EXAMPLES / script), *map(str, args)],
                                            cwd=REPO_ROOT, env=env, stdout=out, stderr=err, text=True)

    def wait(self, timeout: float = 300) -> Run:
        try:
            self.returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        self.stdout = self.stdout_path.read_text()
        self.stderr = self.stderr_path.read_text()
        return self

    def check(self) -> str:
        assert self.returncode == 0, f"{self.name} failed:\n{self.stdout}\n{self.stderr}"
        return self.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """All subprocess runs, as two chains side by side (one per CPU core): bypass -> load its patch, and
    defensive -> the missing-checkpoint error."""
    root = tmp_path_factory.mktemp("training_examples")
    results: dict = {"root": root}

    def bypass_then_load() -> None:
        results["bypass"] = Run("bypass", "bypass_official_stargan.py",
                                [*TINY, "--feature-weight", "0", "--semantic-weight", "0", "--checkpoint-every", "1",
                                 "--out", root / "bypass"], root).wait()
        if results["bypass"].returncode == 0:  # load the patch the bypass run produced
            results["load"] = Run("load", "load_saved_patch.py",
                                  [root / "bypass" / "patch", "--faces", "2", "--out", root / "before_after.png"],
                                  root).wait()

    def defensive_then_missing_checkpoint() -> None:
        results["defensive"] = Run("defensive", "defensive_patch.py", [*TINY, "--out", root / "defensive"],
                                   root).wait()
        results["missing_checkpoint"] = Run(
            "missing_checkpoint", "bypass_official_stargan.py",
            ["--checkpoint", root / "nowhere" / "200000-G.ckpt", "--celeba-images", root,
             "--attr-file", root / "list_attr_celeba.txt", "--out", root / "never"], root).wait()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(bypass_then_load), pool.submit(defensive_then_missing_checkpoint)]:
            future.result()
    return results


def test_bypass_trains_saves_and_evaluates(runs):
    out, root = runs["bypass"].check(), runs["root"]
    assert "testbed editor + synthetic faces: 2 training images, 1 test images, 5 target attributes" in out
    assert "trained 2 steps" in out
    for name in PATCH_FILES:
        assert (root / "bypass" / "patch" / name).is_file(), name
    assert (root / "bypass" / "checkpoints" / "step-000002" / "optimizer.pt").is_file()  # --checkpoint-every 1
    for scenario in ("default", "leakage"):
        assert (root / "bypass" / f"grid_{scenario}.png").stat().st_size > 0
    number = r"\s+([\d.]+)"
    rows = re.findall(rf"^pgd\s+(default|leakage){number}%{number}%{number}{number}$", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["default", "leakage"], out
    for _, success_base, success_patched, mse_base, mse_patched in rows:
        assert 0 <= float(success_base) <= 100 and 0 <= float(success_patched) <= 100
        assert float(mse_base) > 0 and float(mse_patched) >= 0
    psnr = float(re.search(r"clean edits, patched vs base: PSNR (\S+) dB", out).group(1))
    assert psnr > 10
    record = json.loads((root / "bypass" / "results.json").read_text())
    assert [r["scenario"] for r in record["results"]] == ["default", "leakage"]
    assert record["training_steps"] == 2 and record["results"][0]["n_conditions"] == 5
    training = json.loads((root / "bypass" / "patch" / "lora_patch.json").read_text())["training"]
    assert training["kind"] == "bypass" and training["steps"] == 2


def test_defensive_trains_saves_and_reports_visibility(runs):
    out, root = runs["defensive"].check(), runs["root"]
    assert "trained 2 steps" in out and "patch: rank 16" in out
    for name in PATCH_FILES:
        assert (root / "defensive" / "patch" / name).is_file(), name
    for name in ("grid.png", "watermark_preview.png", "results.json"):
        assert (root / "defensive" / name).stat().st_size > 0, name
    rate, outputs = re.search(r"warning visible on ([\d.]+)% of (\d+) outputs", out).groups()
    assert 0 <= float(rate) <= 100 and int(outputs) == 3 * 1 * 5  # 3 input kinds x 1 image x 5 targets
    for kind in ("clean", "protected_vs_base", "protected_vs_patched"):
        match = re.search(rf"^{kind}\s+([\d.]+)%\s+(-?[\d.]+)\s+([\d.]+)\s+([\d.]+) dB$", out, re.MULTILINE)
        assert match, (kind, out)
    visibility = json.loads((root / "defensive" / "results.json").read_text())["visibility"]
    for key in ("visible_rate", "visible_rate_clean", "visible_rate_protected_vs_base",
                "visible_rate_protected_vs_patched"):
        assert 0 <= visibility[key] <= 1, key
    training = json.loads((root / "defensive" / "patch" / "lora_patch.json").read_text())["training"]
    assert training["kind"] == "watermark" and training["watermark"]["text"] == "AI-GENERATED"


def test_load_saved_patch_edits_disables_and_merges(runs):
    assert "load" in runs, "the bypass run failed, so there was no patch to load"
    out = runs["load"].check()
    assert "onto the testbed generator (LoraPatchConfig, peft type LORA_PATCH)" in out
    assert "r=8" in out and "trainable now: 0" in out
    assert "lora_patch.json: a bypass patch, 2 steps" in out
    changed = float(re.search(r"mean \|patched - original\| = (\S+)", out).group(1))
    assert changed > 0  # the patch (Kaiming-initialised, "paper" preset) changes the edit; disable_adapter undoes it
    merge_diff = float(re.search(r"max \|merged - unmerged\| = (\S+)", out).group(1))
    assert merge_diff < 1e-4
    assert (runs["root"] / "before_after.png").stat().st_size > 0


def test_bypass_without_official_checkpoint_fails_in_one_line(runs):
    run = runs["missing_checkpoint"]
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "StarGAN checkpoint not found" in lines[0] and "200000-G.ckpt" in lines[0] and "--testbed" in lines[0]
    assert not (runs["root"] / "never").exists()  # nothing was created before the check


def run_in_process(script: str, args: list[object], monkeypatch) -> SystemExit:
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    return info.value


@pytest.mark.parametrize("script", ["bypass_official_stargan.py", "defensive_patch.py", "load_saved_patch.py"])
def test_help_shows_the_command_line(script, monkeypatch, capsys):
    assert run_in_process(script, ["--help"], monkeypatch).code == 0
    assert f"python examples/{script}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    ([], "--checkpoint is required"),
    (["--checkpoint", __file__], "--celeba-images and --attr-file are required"),
    (["--testbed", "--resume"], "--resume: no checkpoint under"),
])
def test_defensive_setup_errors_are_one_line(args, message, tmp_path, monkeypatch):
    code = run_in_process("defensive_patch.py", [*args, "--out", tmp_path / "out"], monkeypatch).code
    assert isinstance(code, str) and message in code and "\n" not in code
    assert "--testbed" in code or "--resume" in message
    assert not (tmp_path / "out").exists()


def test_load_saved_patch_rejects_a_folder_without_a_patch(tmp_path, monkeypatch):
    code = run_in_process("load_saved_patch.py", [tmp_path], monkeypatch).code
    assert isinstance(code, str) and "is not a saved patch" in code and "\n" not in code
