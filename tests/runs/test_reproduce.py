"""``lora-patch reproduce``: our patches trained with the paper's recipe and the authors' converted patch, evaluated
side by side on the same held-out images (tiny, on the testbed)."""

from __future__ import annotations

import copy
import json

import torch

from lora_patch_adapters.cli import main
from lora_patch_adapters.generators import load_editor
from tests.patches.test_official import inject_reference

SMALL = ["--images", "2", "--eval-images", "2", "--max-steps", "1", "--batch-size", "1", "--pgd-steps", "1",
         "--pgd-step-size", "0.1", "--feature-weight", "0", "--semantic-weight", "0", "--no-progress"]


def _authors_patch(path, seed: int = 0, base_seed: int | None = None):
    """An official-format patched testbed generator (random patch), saved as the authors save theirs."""
    torch.manual_seed(base_seed if base_seed is not None else 0)
    generator = copy.deepcopy(load_editor("testbed").generator)
    if base_seed is not None:  # another base: perturb the weights
        with torch.no_grad():
            for p in generator.parameters():
                p.add_(torch.randn_like(p) * 0.01)
    torch.manual_seed(seed)
    patched = inject_reference(generator, r=4, gate="basic")
    torch.save(patched.state_dict(), path)
    return path


def test_reproduce_trains_ours_and_compares_with_the_authors_patch(tmp_path, capsys):
    out = tmp_path / "repro"
    authors = _authors_patch(tmp_path / "lora_patch4testbed.pth")
    assert main(["reproduce", "--out", str(out), "--patch", str(authors), *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["patches"]) == {"ours", "authors"}
    rows = summary["comparison"]
    assert [(r["patch"], r["scenario"]) for r in rows] == [
        ("ours", "default"), ("ours", "leakage"), ("authors", "default"), ("authors", "leakage")]
    # both patches were evaluated on the same images
    images = {name: e["images"] for name, e in summary["evaluations"].items()}
    assert images == {"ours": 2, "authors": 2}
    trained = json.loads((out / "ours-bypass" / "summary.json").read_text())["training_config"]
    assert (trained["schedule"], trained["precision"], trained["fast"], trained["lr"]) == (
        "per_condition", "fp32", False, 1e-3)
    defensive = json.loads((out / "ours-defensive" / "summary.json").read_text())
    assert defensive["training_config"]["epochs"] == 5 and defensive["patch_config"]["r"] == 16
    assert isinstance(summary["watermark_visible_rate"], float)
    converted = json.loads((out / "authors-bypass" / "patch" / "lora_patch.json").read_text())
    assert converted["training"]["source"] == "official"
    report = (out / "report.md").read_text()
    assert "| ours | default |" in report and "| authors | leakage |" in report


def test_reproduce_refuses_before_training(tmp_path, capsys):
    other = _authors_patch(tmp_path / "other.pth", base_seed=3)  # trained on another base
    out = tmp_path / "repro"
    assert main(["reproduce", "--out", str(out), "--no-train", *SMALL]) == 2
    assert "--no-train leaves nothing to reproduce" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(out), "--patch", str(other), *SMALL]) == 1
    err = capsys.readouterr().err
    assert "does not patch this testbed generator" in err and "\n" not in err.strip()
    assert not (out / "ours-bypass").exists()  # nothing was trained
