"""``--targets paper|all`` (AttGAN) and ``--references a.jpg,b.jpg`` (HiSD) on ``lora-patch train`` and
``evaluate``: parsed, refused for a generator they do not apply to (one line, exit 2), and the run edits what they
say. The official generators are swapped for tiny ones of the same kind (the flags only apply to them), so a run
takes a second or two."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_patch_adapters import cli
from lora_patch_adapters.cli import main
from lora_patch_adapters.cli._args import settings_from
from lora_patch_adapters.generators.attgan import AttGANEditor, AttGANGenerator
from lora_patch_adapters.generators.hisd import HiSDEditor, HiSDGenerator, small_hyperparameters
from lora_patch_adapters.runs import EvaluateSettings
from tests.cli.test_commands import _one_line_error
from tests.helpers import fake_celeba

TINY = ["--images", "1", "--batch-size", "1", "--max-steps", "1", "--pgd-steps", "1", "--feature-weight", "0",
        "--semantic-weight", "0", "--eval-images", "1", "--no-progress", "--allow-random-weights"]


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_generators(monkeypatch):
    """runs.inputs builds tiny AttGAN / HiSD editors (256 px, as the CelebA presets give) instead of the official
    networks; returns the editors it built."""
    built = []

    def load_editor(name, checkpoint=None, device=None):
        if name.startswith("attgan"):
            editor = AttGANEditor(AttGANGenerator(enc_dim=2, dec_dim=2, enc_layers=3, dec_layers=3, img_size=256),
                                  name=name)
        else:
            assert name == "hisd", name
            editor = HiSDEditor(HiSDGenerator(small_hyperparameters(256, width=2, style_dim=4, noise_dim=2)))
        built.append(editor)
        return editor

    monkeypatch.setattr("lora_patch_adapters.runs.inputs.load_editor", load_editor)
    return built


@pytest.fixture(scope="module")
def celeba(tmp_path_factory) -> list[str]:
    images, attr = fake_celeba(tmp_path_factory.mktemp("celeba"))
    return ["--data", str(images), "--attr-file", str(attr)]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# ------------------------------------------------------------------------------------------------------- the parser
def test_flags_parse_and_default_to_the_editors_choice():
    from lora_patch_adapters.cli._args import TARGET_SETS
    from lora_patch_adapters.generators.attgan import ATTGAN_TARGET_SETS

    assert TARGET_SETS == ATTGAN_TARGET_SETS  # the parser's literal choices are the library's
    parser = cli.build_parser()
    for command in (["train", "--out", "x"], ["train-defensive", "--out", "x"], ["evaluate", "p"]):
        args = parser.parse_args(command)
        assert args.targets is None and args.references is None
    args = parser.parse_args(["train", "--out", "x", "--targets", "paper", "--references", "a.jpg, b.jpg,c.jpg"])
    assert args.targets == "paper" and args.references == ["a.jpg", "b.jpg", "c.jpg"]
    assert parser.parse_args(["evaluate", "p", "--targets", "all"]).targets == "all"


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--out", "o", "--targets", "five"], "invalid choice: 'five'"),
    (["train", "--out", "o", "--references", ","], "expected image paths separated by commas"),
])
def test_malformed_values_are_one_line_usage_errors(capsys, argv, fragment):
    assert fragment in _one_line_error(capsys, argv, 2)


@pytest.mark.parametrize("flags, generator", [
    (["--targets", "paper"], "testbed"),
    (["--targets", "all"], "hisd"),
    (["--targets", "paper"], "stargan"),
    (["--references", "a.jpg"], "testbed"),
    (["--references", "a.jpg,b.jpg"], "attgan"),
    (["--references", "a.jpg"], "attgan_inject1"),
])
def test_a_flag_for_another_generator_is_refused(capsys, tmp_path, celeba, flags, generator):
    out = tmp_path / "o"
    data = [] if generator == "testbed" else celeba
    err = _one_line_error(capsys, ["train", "--out", str(out), "--generator", generator, *data, *TINY, *flags], 2)
    assert f"{flags[0]} applies to --generator" in err and f"not to --generator {generator}" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------------ runs
def test_attgan_paper_targets_train_and_evaluate(tmp_path, celeba, tiny_generators, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--generator", "attgan", *celeba, *TINY, "--targets", "paper"]) == 0
    assert [e.targets for e in tiny_generators] == ["paper", "paper"]  # the patched editor and the base
    summary = _summary(out)
    assert summary["arguments"]["targets"] == "paper"
    assert summary["evaluation"]["default"]["n_conditions"] == 5
    edits = json.loads((out / "patch" / "lora_patch.json").read_text())["training"]["edits"]
    assert edits["targets"] == "paper"
    assert edits["edited"] == ["Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Male"]

    # evaluate: the generator comes from the patch, the targets from the flag
    evaluation = tmp_path / "eval"
    assert main(["evaluate", str(out / "patch"), *celeba, "--allow-random-weights", "--images", "1", "--defense",
                 "fgsm", "--scenario", "default", "--no-progress", "--out", str(evaluation), "--targets", "paper"]) == 0
    result = _summary(evaluation)
    assert result["arguments"]["targets"] == "paper" and [r["n_conditions"] for r in result["results"]] == [5]
    # without the flag the editor keeps its default, all 13 edits
    settings = settings_from(cli.build_parser().parse_args(["evaluate", str(out / "patch"), "--generator", "attgan"]),
                             EvaluateSettings)
    assert settings.targets is None and len(settings.editor().conditions(torch.zeros(2, 13))) == 13

    # a HiSD flag on this AttGAN patch is refused before anything is loaded or written
    built = len(tiny_generators)
    err = _one_line_error(capsys, ["evaluate", str(out / "patch"), *celeba, "--allow-random-weights", "--references",
                                   "a.jpg", "--out", str(tmp_path / "refused")], 2)
    assert "--references applies to --generator hisd only, not to --generator attgan" in err
    assert len(tiny_generators) == built and not (tmp_path / "refused").exists()


def test_hisd_reference_guided_train(tmp_path, celeba, tiny_generators):
    paths = []
    for i, colour in enumerate([(20, 20, 20), (230, 200, 120), (120, 70, 30)]):
        paths.append(tmp_path / f"reference_haircolor_{i}.png")
        Image.new("RGB", (64, 64), colour).save(paths[-1])
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--generator", "hisd", *celeba, *TINY,
                 "--references", ",".join(map(str, paths))]) == 0
    editor = tiny_generators[0]
    assert editor.guidance == "reference" and editor.reference_tag == 2
    # read as the official transform: shorter side 256, [-1, 1]; the second is the blond reference
    assert [tuple(r.shape) for r in editor.references] == [(1, 3, 256, 256)] * 3
    expected = torch.tensor([230, 200, 120]) / 127.5 - 1
    torch.testing.assert_close(editor.references[1][0].mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
    summary = _summary(out)
    assert summary["arguments"]["references"] == [str(p) for p in paths]
    assert summary["evaluation"]["default"]["n_conditions"] == 3


def test_a_bad_reference_file_is_named_before_the_generator_is_built(tmp_path, celeba, tiny_generators, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"no image here")
    out = tmp_path / "run"
    base = ["train", "--out", str(out), "--generator", "hisd", *celeba, *TINY]
    err = _one_line_error(capsys, [*base, "--references", str(broken)], 1)
    assert "--references: image" in err and "broken.jpg is not an image" in err
    err = _one_line_error(capsys, [*base, "--references", str(tmp_path / "gone.png")], 1)
    assert "--references: reference image" in err and "gone.png' not found" in err
    assert tiny_generators == [] and not out.exists()
