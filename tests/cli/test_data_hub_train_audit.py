"""``train`` and ``audit`` with ``--data hf:...``: the dataset's train split trains, its test split evaluates."""

from __future__ import annotations

import json

import pytest

datasets = pytest.importorskip("datasets")

from lora_patch_adapters.cli import main  # noqa: E402
from tests.cli.test_audit import TOY  # noqa: E402
from tests.cli.test_data_hub import COLUMNS, TINY, _one_line_error, faces  # noqa: E402,F401


def test_train_on_hf_data(faces, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data", f"hf:{faces}", *TINY, "--max-steps", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == f"2 images (paper-train: split 'train') of the dataset hf:{faces}"
    assert summary["training"]["steps"] == 1 and summary["evaluation"]["default"]["n_images"] == 1
    err = _one_line_error(capsys, ["train", "--out", str(tmp_path / "o"), "--data", f"hf:{faces}", *TINY,
                                   "--images", "5"], 1)
    assert "--images 5: the 'train' split of hf:" in err and "has 4 images; pass --images between 1 and 4" in err


def test_audit_on_hf_data_uses_its_train_and_test_splits(faces, tmp_path):  # noqa: F811
    out = tmp_path / "audit"
    assert main(["audit", "--defense", "pgd", *TOY, "--data", f"hf:{faces}", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "the first 2 images of its 'train' split" in results["data"] and "'test' split" in results["data"]
    assert results["evaluation"]["images"] == 1 and results["attacker"]["pgd"]["2x1"]["images"] == 2
