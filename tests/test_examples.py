"""The quickstart example (examples/quickstart.py) and the custom-generator example run end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_trains_saves_and_reloads(tmp_path):
    out_dir = tmp_path / "patch"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "quickstart.py"), "--steps", "3", "--out", str(out_dir)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "patched 12 layers of the testbed editor" in out
    assert (out_dir / "adapter_model.safetensors").is_file() and (out_dir / "adapter_config.json").is_file()
    reload_diff = float(re.search(r"reloaded onto a fresh generator: max \|difference\| = (\S+)", out).group(1))
    merge_diff = float(re.search(r"merged into the weights .*max \|difference\| = (\S+)", out).group(1))
    assert reload_diff == 0.0
    assert merge_diff < 1e-5


def test_attach_to_custom_generator_example():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "attach_to_custom_generator.py")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "patched layers: ['decode.1', 'encode.0', 'encode.2', 'style']" in result.stdout
    changed = float(re.search(r"mean \|patched - original\| = (\S+);", result.stdout).group(1))
    disabled = float(re.search(r"with the adapter disabled: (\S+)", result.stdout).group(1))
    assert changed > 1e-3 and disabled == 0.0


def test_custom_defense_example_runs_and_its_pgd_beats_noise():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "custom_defense.py")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    rates = dict(re.findall(r"^(\w+): disrupts (\S+)% of the edits", result.stdout, flags=re.MULTILINE))
    assert set(rates) == {"momentum_pgd", "random_noise"}
    assert float(rates["momentum_pgd"]) > float(rates["random_noise"])
    sizes = [float(v) for v in re.findall(r"L-inf (\S+)\)", result.stdout)]
    assert len(sizes) == 2 and all(0 < s <= 0.05 + 1e-6 for s in sizes)
