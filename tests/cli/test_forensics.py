"""``lora-patch forensics``: the JSON contract, the human report, exit codes and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lora_patch_adapters as lpa
from lora_patch_adapters import forensics
from lora_patch_adapters.cli import forensics as cli_forensics
from lora_patch_adapters.cli import main
from lora_patch_adapters.patches import base_fingerprint

REPO_ROOT = Path(__file__).resolve().parents[2]
RANK = 4


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """base / merged (rank-4 patch) / unmerged (a PeftModel state dict) checkpoints of the testbed generator."""
    root = tmp_path_factory.mktemp("forensics")
    editor = lpa.load_editor("testbed")
    out = {"base": _save(editor.generator.state_dict(), root / "base.safetensors"),
           "fingerprint": base_fingerprint(editor)}
    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(r=RANK, init_weights="kaiming"))
    out["unmerged"] = _save(model.state_dict(), root / "unmerged.safetensors")
    out["merged"] = _save(model.merge_and_unload().state_dict(), root / "merged.safetensors")
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["forensics", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_contract_for_a_merged_patch(files, capsys):
    code, out, err = _run(capsys, "--model", files["merged"], "--reference", files["base"], "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["verdict"] == "low-rank patch merged" and data["rank"] == RANK
    assert data["model"] == files["merged"] and data["reference"] == files["base"]
    assert data["unmerged_patch"] is False
    assert data["layers"] and all({"name", "changed", "rank", "verdict"} <= set(layer) for layer in data["layers"])
    weights = [layer for layer in data["layers"] if len(layer["shape"]) == 4]
    assert len(weights) == 12 and all(layer["changed"] for layer in weights)
    assert {layer["verdict"] for layer in weights} == {"low-rank patch merged"}


def test_human_report_for_a_merged_patch(files, capsys):
    code, out, _ = _run(capsys, "--model", files["merged"], "--reference", files["base"])
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1] == f"verdict: low-rank patch merged (rank {RANK}, 12 of 12 weight layers changed)"
    header = next(line for line in lines if line.startswith("layer"))
    assert header.split() == ["layer", "shape", "changed", "rank", "rel.", "change", "verdict"]
    row = next(line for line in lines if line.startswith("main.6.weight "))
    assert row.split()[:4] == ["main.6.weight", "96x48x4x4", "yes", f"{RANK}/96"]
    assert row.endswith("low-rank patch merged")


def test_unchanged_and_unmerged(files, capsys):
    code, out, _ = _run(capsys, "--model", files["base"], "--reference", files["base"])
    assert code == 0 and out.strip().splitlines()[-1] == "verdict: unchanged (0 of 12 weight layers changed)"
    code, out, _ = _run(capsys, "--model", files["unmerged"], "--reference", files["base"], "--json")
    data = json.loads(out)
    assert code == 0 and data["verdict"] == "unmerged patch" and data["rank"] == RANK
    assert data["unmerged_patch"]["numerical_rank"] == RANK and data["unmerged_patch"]["layers"] == 12
    code, out, _ = _run(capsys, "--model", files["unmerged"], "--reference", files["base"])
    assert "adapter tensors: 36 (lora-patch), adapters default, 12 layers, rank 4" in out


def test_fingerprint_reference(files, capsys):
    code, out, _ = _run(capsys, "--model", files["base"], "--reference", files["fingerprint"], "--json")
    data = json.loads(out)
    assert code == 0 and data["verdict"] == "unchanged" and data["reference"] == files["fingerprint"]
    assert data["layers"] == [] and data["fingerprint"]["match"] is True
    code, out, _ = _run(capsys, "--model", files["merged"], "--reference", files["fingerprint"])
    assert code == 0 and out.strip().splitlines()[-1] == "verdict: changed (fingerprint differs)"
    assert "fingerprint over 12 layers: mismatch" in out


def test_rtol_reaches_the_analysis(files, capsys):
    # a cut-off just below the largest singular value: only that one counts, so no layer shows the patch's rank
    code, out, _ = _run(capsys, "--model", files["merged"], "--reference", files["base"], "--json", "--rtol", "0.999")
    data = json.loads(out)
    assert code == 0 and data["rtol"] == 0.999
    assert max(layer["rank"] or 0 for layer in data["layers"]) < RANK


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "MISSING.pt", "--reference", "BASE"], "model file 'MISSING.pt' not found"),
        (["--model", "BASE", "--reference", "sha256:abc"], "malformed fingerprint"),
        (["--model", "BASE", "--reference", "EVIL"], "pickled Python objects"),
        (["--model", "OTHER", "--reference", "BASE"], "share no weight names"),
    ],
)
def test_errors_are_one_line_with_exit_1(files, tmp_path, capsys, argv, message):
    evil = tmp_path / "evil.pt"
    torch.save({"model": Pickled()}, evil)
    other = _save({"x.weight": torch.ones(2, 2)}, tmp_path / "other.safetensors")
    paths = {"BASE": files["base"], "EVIL": str(evil), "OTHER": other}
    code, out, err = _run(capsys, *[paths.get(arg, arg) for arg in argv])
    assert code == 1 and out == ""
    assert err.startswith("lora-patch forensics: error: ") and message in err
    assert err.count("\n") == 1


class Pickled:
    """Not a tensor or a plain container: torch.load(weights_only=True) refuses it."""


@pytest.mark.parametrize("argv", [["--model", "x"], ["--model", "x", "--reference", "y", "--rtol", "2"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["forensics", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lora-patch forensics: error:") and err.count("\n") == 1


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["forensics", "--help"])
    assert exit_info.value.code == 0
    assert "usage: lora-patch forensics [-h] --model CKPT --reference CKPT_OR_FINGERPRINT" in capsys.readouterr().out


def test_parser_default_matches_the_library():
    assert cli_forensics.DEFAULT_RTOL == forensics.DEFAULT_RTOL


def test_building_the_parser_imports_no_torch():
    # cli_forensics loaded on its own (not through the package, whose __init__ imports torch)
    spec = importlib.util.find_spec("lora_patch_adapters.cli.forensics")
    code = (
        "import argparse, importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('cli_forensics', {spec.origin!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "parser = argparse.ArgumentParser(prog='lora-patch'); sub = parser.add_subparsers(dest='command')\n"
        "module.add_forensics_command(sub)\n"
        "args = parser.parse_args(['forensics', '--model', 'a', '--reference', 'b', '--rtol', '1e-4'])\n"
        "assert args.rtol == 1e-4 and args.func.__name__ == 'cmd_forensics'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr
