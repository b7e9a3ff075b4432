"""The lora-patch command line."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from lora_patch_adapters import PRESETS, __version__
from lora_patch_adapters.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_presets_json(capsys):
    assert main(["presets"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == set(PRESETS)
    assert data["paper"]["r"] == 8 and abs(data["paper"]["scale"] - 2 / 8**0.5) < 1e-12


def test_unknown_preset_is_a_one_line_error(capsys):
    assert main(["presets", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lora-patch: unknown preset 'nope'") and "\n" not in err


def test_console_script_is_installed():
    exe = shutil.which("lora-patch")
    assert exe is not None, "the console script is missing: install the package (pip install -e .)"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and __version__ in out.stdout
