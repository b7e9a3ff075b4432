"""``--data hf:...`` on the command line: a tiny ``datasets`` dataset saved into tmp_path goes through the real
parser into an evaluation run of the testbed editor; bad combinations are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")

from lora_patch_adapters.cli import main  # noqa: E402
from lora_patch_adapters.data import make_transform  # noqa: E402
from lora_patch_adapters.generators.testbed import TESTBED_ATTRIBUTES  # noqa: E402
from lora_patch_adapters.runs import evaluate as evaluate_run  # noqa: E402
from tests.cli.test_commands import TINY, _single_thread  # noqa: E402,F401 (a module fixture)
from tests.data.test_hub import expected_labels, pixels, table  # noqa: E402

COLUMNS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young", "Eyeglasses", "Smiling")


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hub-cli") / "faces"
    datasets.DatasetDict(train=table(range(4), COLUMNS), test=table(range(4, 7), COLUMNS)).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def patch(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub-cli-patch")
    assert main(["train", "--out", str(out), *TINY, "--max-steps", "1"]) == 0  # testbed faces
    return out / "patch"


def _one_line_error(capsys, argv: list[str], code: int) -> str:
    try:
        result = main(argv)
    except SystemExit as exc:
        result = exc.code
    err = capsys.readouterr().err.strip()
    assert result == code, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"lora-patch {argv[0]}: error: "), err
    return err


def test_evaluate_on_hf_data_uses_the_datasets_test_split(faces, patch, tmp_path, monkeypatch):
    seen = []
    real = evaluate_run.evaluate_defense

    def spy(defense, base, images, labels, **kwargs):
        seen.append((images.clone(), labels.clone()))
        return real(defense, base, images, labels, **kwargs)

    monkeypatch.setattr(evaluate_run, "evaluate_defense", spy)
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(patch), "--data", f"hf:{faces}", "--defense", "fgsm", "--scenario", "default",
                 "--steps", "1", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3  # the whole test split (the testbed default would be 50 faces)
    assert summary["data"] == f"3 images (paper-test: split 'test') of the dataset hf:{faces}"
    assert summary["arguments"]["data"] == f"hf:{faces}" and summary["arguments"]["attr_file"] is None
    assert (out / "report.md").is_file() and (out / "grid.png").is_file()

    (images, labels), = seen
    resize = make_transform(size=(64, 64))  # the testbed editor's preset: a square 64 x 64 resize
    expected = torch.stack([resize(Image.fromarray(pixels(row))) for row in range(4, 7)])
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    columns = [COLUMNS.index(name) for name in TESTBED_ATTRIBUTES]
    assert torch.equal(labels, expected_labels(range(4, 7), range(len(COLUMNS)))[:, columns])


def test_hf_data_errors_are_one_line(faces, patch, tmp_path, capsys):
    err = _one_line_error(capsys, ["train", "--out", str(tmp_path / "o"), "--data", f"hf:{faces}", "--attr-file",
                                   "list_attr_celeba.txt"], 2)
    assert "--attr-file does not apply to --data hf:" in err
    err = _one_line_error(capsys, ["train", "--out", str(tmp_path / "o"), "--data", "celeba/img", "--attr-file",
                                   "a.txt", "--data-split", "train"], 2)
    assert "--data-split applies to --data hf:" in err
    err = _one_line_error(capsys, ["evaluate", str(patch), "--data", f"hf:{faces}", "--data-split", "train",
                                   "--images", "1", "--no-progress", "--out", str(tmp_path / "e")], 1)
    assert "has only 4 rows; rows 29000-29999 asked for" in err and "drop --data-split" in err
    err = _one_line_error(capsys, ["evaluate", str(patch), "--data", f"hf:{tmp_path / 'none'}", "--no-progress",
                                   "--out", str(tmp_path / "e")], 1)
    assert f"dataset folder {tmp_path / 'none'} not found" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()
