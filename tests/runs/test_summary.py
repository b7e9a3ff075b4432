"""RunSummary (the one record of a run), write_run, and the checks every run makes on its inputs."""

from __future__ import annotations

import json

import pytest
import torch

from lora_patch_adapters.runs import Inputs, RunInputError, RunSummary
from lora_patch_adapters.runs.reporting import print_outputs, save_grid, write_run
from tests.evaluation.test_grid import assert_captioned


def _summary() -> RunSummary:
    return RunSummary(command="evaluate", seed=7, device="cpu", data="3 faces", argv=["evaluate", "p"],
                      arguments={"batch_size": 2}, results={"images": 3, "rates": [{"defense": "pgd"}]},
                      timings={"total_seconds": 1.5}, report="# title\n\nbody", outputs={"patch": "/p"})


def test_to_dict_is_the_environment_then_the_results_then_the_timings():
    record = _summary().to_dict()
    assert list(record)[:9] == ["command", "argv", "arguments", "seed", "version", "torch", "device", "threads",
                                "data"]
    assert list(record)[-1] == "timings" and record["timings"] == {"total_seconds": 1.5}
    assert record["images"] == 3 and record["rates"] == [{"defense": "pgd"}]
    assert record["torch"] == torch.__version__ and record["threads"] == torch.get_num_threads()
    assert _summary()["images"] == 3 and _summary()["seed"] == 7


def test_write_run_writes_the_record_once_and_returns_every_path(tmp_path, capsys):
    summary = _summary()
    paths = write_run(str(tmp_path / "out"), summary)
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(summary.to_dict()))
    assert (tmp_path / "out" / "report.md").read_text() == "# title\n\nbody\n"
    assert list(paths) == ["summary", "report", "patch"]  # no grid.png was written
    (tmp_path / "out" / "grid.png").write_bytes(b"")
    assert list(write_run(str(tmp_path / "out"), summary)) == ["summary", "report", "grid", "patch"]
    print_outputs({"summary": "a", "grid": "b"})
    assert capsys.readouterr().out == "summary: a\ngrid:    b\n"


def test_save_grid_captions_rows_and_columns_and_cuts_rows_to_the_shortest(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    path = save_grid(str(tmp_path / "out" / "grid.png"), rows, ["clean", "patched"])
    assert path == str(tmp_path / "out" / "grid.png")
    named = assert_captioned(path, 2, 2, 32, 32)  # two columns: the shorter row's length
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.png", "keep.txt"]
    default = assert_captioned(save_grid(str(tmp_path / "default.png"), rows), 2, 2, 32, 32)  # "row 1", "image 1"
    columns = assert_captioned(save_grid(str(tmp_path / "columns.png"), rows, None, ["clean", "edit"]), 2, 2, 32, 32)
    def differ(a, b) -> bool:
        return a.shape != b.shape or bool((a != b).any())

    assert (named[-70:, -70:] == default[-70:, -70:]).all()  # the same tiles (2 x 2 of 32 px, padding 2)
    assert differ(named[-70:, :-70], default[-70:, :-70])  # other row captions
    assert not differ(columns[-70:, :-70], default[-70:, :-70])  # the same default row captions ...
    assert differ(columns[:-70, -70:], default[:-70, -70:])  # ... other column captions
    with pytest.raises(ValueError, match="column_names has 3 name"):
        save_grid(str(tmp_path / "bad.png"), rows, None, ["a", "b", "c"])
    assert not (tmp_path / "bad.png").exists()


def test_the_training_runs_watermark_grid_is_captioned(tmp_path):
    from lora_patch_adapters import load_editor, testbed_faces
    from lora_patch_adapters.defenses import FGSM
    from lora_patch_adapters.runs.train import watermark_grid

    editor = load_editor("testbed")
    images, labels = testbed_faces(2, seed=0, split="test")
    watermark_grid(str(tmp_path / "grid.png"), editor, editor, FGSM(), images, labels)
    assert_captioned(tmp_path / "grid.png", 4, 2, 64, 64)


@pytest.mark.parametrize("inputs, usage, fragment", [
    (Inputs(generator="stargan"), True, "needs --checkpoint"),
    (Inputs(data="d"), True, "--data and --attr-file go together"),
    (Inputs(generator="hisd", allow_random_weights=True), True, "needs CelebA"),
])
def test_inputs_refuse_runs_that_cannot_mean_anything(inputs, usage, fragment):
    with pytest.raises(RunInputError, match=fragment) as info:
        inputs.check()
    assert info.value.usage is usage


def test_testbed_inputs_need_nothing_and_describe_themselves():
    inputs = Inputs(seed=3)
    inputs.check()
    editor = inputs.editor()
    images, labels = inputs.images_for(editor, "test", "paper-test", 2, 5)
    assert images.shape[0] == 2 and labels.shape == (2, len(editor.attribute_names))
    assert inputs.describe(2, "test", "paper-test") == "2 procedural testbed faces (test split, seed 3)"
