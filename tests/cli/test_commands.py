"""The lora-patch command line.

Runs are tiny (testbed editor, 1-2 images, 1-step PGD, pixel loss only): the whole file must stay well under a
minute on 2 CPU cores. Most commands run in-process through ``main([...])``; a few run as real processes to check
that errors print one line and no traceback.

Torch runs single-threaded here (in-process and in the child processes): on a small shared machine, two OpenMP
threads with one core busy elsewhere make every convolution wait for the descheduled thread (measured: the same
evaluation 1.8 s with one thread, 40-97 s with two while another process held a core).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_patch_adapters import PRESETS, __version__, cli
from lora_patch_adapters.cli import main
from tests.evaluation.test_grid import assert_captioned
from tests.helpers import fake_celeba

REPO_ROOT = Path(__file__).resolve().parents[2]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--images", "2", "--batch-size", "1", "--pgd-steps", "1", "--feature-weight", "0", "--semantic-weight", "0",
        "--eval-images", "1", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    out = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and __version__ in out.stdout


# ------------------------------------------------------------------------------------------------------ the parser
@pytest.mark.parametrize("command", ["presets", "train", "train-defensive", "evaluate", "demo"])
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: lora-patch {command}" in capsys.readouterr().out


def test_parser_choices_match_the_library():
    from lora_patch_adapters.data import SPLITS
    from lora_patch_adapters.defenses import CMUA, FGSM, IFGSM, PGD, AntiForgery
    from lora_patch_adapters.defenses.plugins import BUILTIN_DEFENSES
    from lora_patch_adapters.generators import EDITOR_NAMES
    from lora_patch_adapters.training.config import COMPILE_MODES, LR_SCHEDULES, PRECISIONS, SCHEDULES
    from lora_patch_adapters.training.watermark import POSITIONS
    from lora_patch_adapters.tuner.config import GATE_TYPES, INIT_SCHEMES

    assert cli.GENERATORS == EDITOR_NAMES
    assert set(cli.CELEBA_PRESETS) == set(EDITOR_NAMES)
    assert cli.SPLITS == tuple(SPLITS) and cli.GATES == GATE_TYPES and cli.INITS == INIT_SCHEMES
    assert cli.LR_SCHEDULES == LR_SCHEDULES and cli.SCHEDULES == SCHEDULES and cli.POSITIONS == POSITIONS
    assert cli.PRECISIONS == PRECISIONS and cli.COMPILE_MODES == COMPILE_MODES
    assert cli.DEFENSES == (*(d.name for d in (PGD, IFGSM, FGSM, CMUA, AntiForgery)), "pgd_eot")
    assert cli.DEFENSES == BUILTIN_DEFENSES


def test_training_defaults_are_the_papers():
    parser = cli.build_parser()
    train = parser.parse_args(["train", "--out", "x"])
    assert (train.generator, train.preset, train.seed, train.batch_size, train.lr, train.eps) == (
        "testbed", "paper", 42, 4, 1e-3, 0.05)
    assert (train.pgd_steps, train.pgd_step_size, train.feature_weight, train.semantic_weight) == (10, 0.01, 0.1, 0.1)
    assert (train.split, train.eval_images, train.resume, train.device) == ("paper-train", 16, None, "cpu")
    defensive = parser.parse_args(["train-defensive", "--out", "x", "--resume"])
    assert (defensive.preset, defensive.feature_weight, defensive.semantic_weight) == ("paper-defensive", 0, 0)
    assert (defensive.text, defensive.position, defensive.mark_size, defensive.strength) == (
        "AI-GENERATED", "bottom-right", 0.35, 2.0)
    assert defensive.resume == "latest"
    evaluate = parser.parse_args(["evaluate", "p", "--defense", "pgd,fgsm", "--defense", "cmua"])
    assert evaluate.defense == [["pgd", "fgsm"], ["cmua"]] and evaluate.scenario == "both"
    assert evaluate.split == "paper-test" and evaluate.generator is None
    demo = parser.parse_args(["demo"])
    assert (demo.out, demo.seed, demo.quick) == (os.path.join("runs", "demo"), 0, False)


# ---------------------------------------------------------------------------------------------- one-line errors
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


@pytest.mark.parametrize("argv, code, fragment", [
    (["train", "--out", "o", "--generator", "nope"], 2, "invalid choice: 'nope'"),
    (["train", "--out", "o", "--batch-size", "-1"], 2, "must be a positive integer"),
    (["train", "--out", "o", "--batch-size", "0"], 2, "must be a positive integer"),
    (["train", "--out", "o", "--eps", "2"], 2, "must be in (0, 1]"),
    (["train", "--out", "o", "--lr", "nan"], 2, "finite"),
    (["train", "--out", "o", "--feature-weight", "-0.1"], 2, ">= 0"),
    (["train", "--out", "o", "--device", "tpu"], 2, "device"),
    (["train"], 2, "--out"),
    (["evaluate", "p", "--defense", "pgd,nope"], 2, "unknown defense nope"),
    (["train", "--out", "o", "--generator", "stargan"], 2, "--allow-random-weights"),
    (["train", "--out", "o", "--data", "d"], 2, "--data and --attr-file go together"),
    (["train", "--out", "o", "--generator", "stargan", "--allow-random-weights"], 2, "needs CelebA"),
])
def test_usage_errors_are_one_line(capsys, argv, code, fragment):
    assert fragment in _one_line_error(capsys, argv, code)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_when_unavailable(capsys):
    assert "CUDA is not available" in _one_line_error(capsys, ["evaluate", "p", "--device", "cuda"], 2)


def test_runtime_input_errors_are_one_line(capsys, tmp_path, monkeypatch):
    out = str(tmp_path / "o")
    err = _one_line_error(capsys, ["train", "--out", out, "--checkpoint", str(tmp_path / "missing.safetensors"),
                                   *TINY], 1)
    assert "missing.safetensors" in err
    err = _one_line_error(capsys, ["evaluate", str(tmp_path / "no-patch"), "--out", out], 1)
    assert "patch directory" in err and "not found" in err
    (tmp_path / "empty").mkdir()
    assert "adapter_config.json" in _one_line_error(capsys, ["evaluate", str(tmp_path / "empty"), "--out", out], 1)
    err = _one_line_error(capsys, ["train-defensive", "--out", out, "--mark-image", str(tmp_path / "m.png"), *TINY], 1)
    assert "m.png" in err
    attr = tmp_path / "list_attr_celeba.txt"
    attr.write_text("1\nBlack_Hair\n000001.jpg 1\n")
    err = _one_line_error(capsys, ["train", "--out", out, "--data", str(tmp_path / "nodir"), "--attr-file", str(attr),
                                   *TINY], 1)
    assert "CelebA image directory" in err
    err = _one_line_error(capsys, ["train", "--out", out, "--resume", *TINY], 1)
    assert "No checkpoint to resume from" in err
    err = _one_line_error(capsys, ["train", "--out", out, "--preset", "nope", *TINY], 1)
    assert "preset 'nope'" in err
    # an unavailable encoder: the library's message plus the way around it
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    err = _one_line_error(capsys, ["train", "--out", out, *TINY, "--feature-weight", "0.1", "--offline"], 1)
    assert "ResNet-50" in err and "--feature-weight 0 --semantic-weight 0" in err


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_patch_adapters", *args], check=False, capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT, env={**os.environ, **ONE_THREAD, **(env or {})})


@pytest.mark.parametrize("case", ["unknown-generator", "encoder-offline"])
def test_errors_in_a_real_process_have_no_traceback(tmp_path, case):
    if case == "unknown-generator":
        result, code = _run("train", "--generator", "nope", "--out", str(tmp_path)), 2
    else:
        result = _run("train", "--out", str(tmp_path / "o"), *TINY, "--feature-weight", "0.1", "--offline",
                      env={"TORCH_HOME": str(tmp_path / "torch-home")})
        code = 1
    err = result.stderr.strip()
    assert result.returncode == code, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("lora-patch train: error: ")


# ------------------------------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def bypass_run(tmp_path_factory) -> Path:
    """A 2-step bypass run (one epoch of 2 images) with a checkpoint after every step."""
    out = tmp_path_factory.mktemp("bypass")
    argv = ["train", "--out", str(out), *TINY, "--epochs", "2", "--max-steps", "2", "--checkpoint-every", "1"]
    assert main(argv) == 0
    return out


def test_train_on_the_fast_path(tmp_path):
    parser = cli.build_parser()
    defaults = parser.parse_args(["train", "--out", "x"])
    # the fast path is opt-in: by default schedule and precision come from the paper's recipe
    assert (defaults.fast, defaults.schedule, defaults.precision, defaults.compile, defaults.cache_references) == (
        False, None, None, None, False)
    out = tmp_path / "fast"
    argv = ["train", "--out", str(out), *TINY, "--max-steps", "2", "--fast", "--precision", "bf16",
            "--cache-references"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training_config"]["fast"] is True and summary["training_config"]["precision"] == "bf16"
    assert summary["training_config"]["schedule"] == "batched"  # the "fast" recipe's
    assert summary["training_preset"] is None  # fast, but bf16 forced: not a preset as such
    training = json.loads((out / "patch" / "lora_patch.json").read_text())["training"]
    assert training["runtime"] == {"device": "cpu", "fast": True, "precision": "bf16", "channels_last": True,
                                   "compile": None, "processes": 1}
    assert len(summary["training"]["history"]) == 2


def test_train_defaults_to_the_papers_recipe(bypass_run):
    summary = json.loads((bypass_run / "summary.json").read_text())
    config = summary["training_config"]
    paper = {"schedule": "per_condition", "fast": False, "precision": "fp32", "channels_last": False,
             "betas": [0.5, 0.999], "lr": 1e-3, "batch_size": 4, "seed": 42, "epochs": 1, "compile": None}
    # the fixture changes only the size of the run (images, batch, epochs, steps, checkpoints)
    sized = {"batch_size", "epochs"}
    assert {k: config[k] for k in paper if k not in sized} == {k: v for k, v in paper.items() if k not in sized}
    assert "per_condition, fp32" in (bypass_run / "report.md").read_text()
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--out", "x"]).epochs == 1
    assert parser.parse_args(["train-defensive", "--out", "x"]).epochs == 5  # the paper's defensive run


def _assert_run_files(out: Path) -> dict:
    for name in ("summary.json", "report.md", "grid.png"):
        assert (out / name).is_file(), name
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["version"] == __version__ and summary["torch"] == torch.__version__
    assert summary["device"] == "cpu" and isinstance(summary["seed"], int)
    assert isinstance(summary["argv"], list) and summary["arguments"]["out"] == str(out)
    assert summary["timings"]["total_seconds"] > 0
    return summary


def _fraction(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_train_writes_summary_report_grid_and_a_loadable_patch(bypass_run, capsys):
    import peft

    from lora_patch_adapters import load_editor
    from lora_patch_adapters.tuner import GatedLoraLayer

    summary = _assert_run_files(bypass_run)
    assert summary["command"] == "train" and summary["kind"] == "bypass" and summary["seed"] == 42
    assert summary["arguments"]["batch_size"] == 1 and summary["arguments"]["max_steps"] == 2
    training = summary["training"]
    assert training["steps"] == 2 and len(training["history"]) == 2
    assert all(isinstance(training[k], float) and math.isfinite(training[k]) for k in ("first_loss", "final_loss"))
    assert set(training["grad_norm"]) == {"max", "mean", "last"}
    for key in ("defense_success_rate_before", "defense_success_rate_after", "defense_success_rate_after_leakage"):
        assert _fraction(summary[key]), key
    assert isinstance(summary["clean_psnr_db"], float)
    assert set(summary["evaluation"]) == {"default", "leakage"}
    assert summary["evaluation"]["default"]["n_images"] == 1
    assert summary["patch"] == str(bypass_run / "patch")
    assert "| pgd | default |" in (bypass_run / "report.md").read_text()
    assert_captioned(bypass_run / "grid.png", 6, 1, 64, 64)  # the protocol's rows, one evaluation image

    meta = json.loads((bypass_run / "patch" / "lora_patch.json").read_text())["training"]
    assert meta["kind"] == "bypass" and meta["generator"] == "testbed"
    editor = load_editor("testbed")
    peft.PeftModel.from_pretrained(editor.generator, str(bypass_run / "patch"))
    assert any(isinstance(m, GatedLoraLayer) for m in editor.generator.modules())


def test_resume_latest_continues(bypass_run, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(bypass_run, out)
    first = json.loads((out / "summary.json").read_text())["training"]["history"]
    assert main(["train", "--out", str(out), *TINY, "--epochs", "2", "--max-steps", "3", "--checkpoint-every", "1",
                 "--resume", "latest"]) == 0
    assert "resuming from latest" in capsys.readouterr().out
    training = json.loads((out / "summary.json").read_text())["training"]
    assert training["steps"] == 3 and training["resumed_from"] == "latest"
    assert [h["loss"] for h in training["history"][:2]] == [h["loss"] for h in first]
    assert (out / "checkpoints" / "step-000003").is_dir()


def test_evaluate_a_saved_patch(bypass_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(bypass_run / "patch"), "--images", "1", "--defense", "pgd,fgsm", "--defense", "pgd",
                 "--scenario", "both", "--steps", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"summary: {out / 'summary.json'}" in printed and f"grid:    {out / 'grid.png'}" in printed
    summary = _assert_run_files(out)
    assert summary["generator"] == "testbed" and summary["images"] == 1
    assert summary["arguments"]["defense"] == ["pgd", "fgsm"]
    assert [(r["defense"], r["scenario"]) for r in summary["rates"]] == [
        ("pgd", "default"), ("pgd", "leakage"), ("fgsm", "default"), ("fgsm", "leakage")]
    assert all(_fraction(r["success_rate_base"]) and _fraction(r["success_rate_patched"]) for r in summary["rates"])
    assert "watermark" not in summary
    # the patch knows its generator: another one is refused
    err = _one_line_error(capsys, ["evaluate", str(bypass_run / "patch"), "--generator", "attgan", "--out",
                                   str(out)], 1)
    assert "trained on 'testbed'" in err


def test_evaluate_cmua_across_editors_with_the_masked_criterion(bypass_run, tmp_path, capsys, monkeypatch):
    from lora_patch_adapters.defenses import cmua as cmua_module

    fitted_on = []
    real_fit = cmua_module.CMUA.fit

    def recording_fit(self, data, editors=None, *args, **kwargs):
        result = real_fit(self, data, editors, *args, **kwargs)
        fitted_on.append([type(e).__name__ for e in self.editors])
        return result

    monkeypatch.setattr(cmua_module.CMUA, "fit", recording_fit)
    out = tmp_path / "cmua"
    argv = ["evaluate", str(bypass_run / "patch"), "--images", "2", "--steps", "1", "--no-progress", "--defense",
            "cmua", "--scenario", "default", "--criterion", "masked_l2", "--cmua-editor", "testbed", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arguments"]["criterion"] == "masked_l2"
    assert [r["criterion"] for r in summary["results"]] == ["masked_l2"]
    assert fitted_on and len(fitted_on[0]) == 2  # the evaluated editor and the --cmua-editor one
    assert "masked L2" in (out / "report.md").read_text()
    base = ["evaluate", str(bypass_run / "patch"), "--images", "1", "--steps", "1", "--out", str(tmp_path / "x")]
    err = _one_line_error(capsys, base + ["--defense", "pgd", "--cmua-editor", "testbed"], 1)
    assert "--cmua-editor applies to --defense cmua only" in err and not (tmp_path / "x").exists()
    err = _one_line_error(capsys, base + ["--defense", "cmua", "--cmua-editor", "stargann"], 1)
    assert "unknown generator 'stargann'" in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("existing", [False, True])
def test_an_evaluation_that_fails_midway_leaves_out_as_it_was(bypass_run, tmp_path, monkeypatch, existing):
    from lora_patch_adapters.runs import evaluate as evaluate_module

    out = tmp_path / "eval"
    argv = ["evaluate", str(bypass_run / "patch"), "--images", "1", "--steps", "1", "--no-progress", "--out", str(out)]
    if existing:  # an earlier evaluation and a file of the user's
        assert main(argv) == 0
        (out / "notes.txt").write_text("mine")
    before = {p.relative_to(tmp_path).as_posix(): p.read_bytes() if p.is_file() else None
              for p in sorted(tmp_path.rglob("*"))}
    staged = []

    def fail_after_the_grid(results):  # the grid was written by then: the first scenario renders it
        staged.extend(Path(r.grid_path).parent for r in results if getattr(r, "grid_path", None))
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "compare", fail_after_the_grid)
    assert main(argv) == 130  # Ctrl-C: "lora-patch evaluate: interrupted"
    after = {p.relative_to(tmp_path).as_posix(): p.read_bytes() if p.is_file() else None
             for p in sorted(tmp_path.rglob("*"))}
    assert after == before
    assert not out.exists() or existing
    assert staged and not [p for p in staged if p.exists()]  # the staging folder is gone too


def test_train_defensive_and_evaluate_reports_the_warning(tmp_path, capsys):
    out = tmp_path / "shield"
    assert main(["train-defensive", "--out", str(out), *TINY, "--max-steps", "1", "--text", "FAKE",
                 "--position", "top-left", "--strength", "1.5"]) == 0
    summary = _assert_run_files(out)
    assert summary["command"] == "train-defensive" and summary["kind"] == "watermark"
    assert summary["patch_config"]["r"] == 16 and summary["loss"] == {"pixel": 1.0, "feature": 0.0, "semantic": 0.0}
    assert _fraction(summary["watermark_visible_rate"])
    assert summary["watermark_settings"]["text"] == "FAKE"
    meta = json.loads((out / "patch" / "lora_patch.json").read_text())["training"]
    assert meta["kind"] == "watermark" and meta["watermark"]["position"] == "top-left"
    assert meta["watermark"]["strength"] == 1.5
    assert_captioned(out / "grid.png", 4, 1, 64, 64)  # input, base edit, patched edit, patched edit of protected

    evaluation = tmp_path / "eval"
    assert main(["evaluate", str(out / "patch"), "--images", "1", "--defense", "fgsm", "--scenario", "default",
                 "--steps", "1", "--out", str(evaluation)]) == 0
    summary = _assert_run_files(evaluation)
    assert len(summary["rates"]) == 1 and _fraction(summary["watermark_visible_rate"])
    assert "warning visible" in (evaluation / "report.md").read_text()


def test_train_on_celeba_files(tmp_path, capsys):
    images, attr = fake_celeba(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data", str(images), "--attr-file", str(attr), *TINY,
                 "--eval-images", "2", "--max-steps", "1"]) == 0
    summary = _assert_run_files(out)
    assert summary["data"].startswith("2 CelebA images (paper-train)")
    assert summary["training"]["steps"] == 1 and summary["evaluation"]["default"]["n_images"] == 2


def test_demo_quick_in_a_real_process(tmp_path):
    out = tmp_path / "demo"
    result = _run("demo", "--quick", "--no-progress", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in ("defense_success_rate_before", "defense_success_rate_after", "defense_success_rate_after_leakage",
                "watermark_visible_rate"):
        assert _fraction(summary[key]), key
    assert isinstance(summary["clean_psnr_db"], float) and summary["reload_max_abs_diff"] == 0.0
    assert summary["seconds"] > 0 and summary["settings"]["train_images"] == cli.QUICK_DEMO["train_images"]
    assert (out / "report.md").is_file() and (out / "grid.png").is_file()
    assert_captioned(out / "grid.png", 6, 1, 64, 64)
    assert_captioned(out / "watermark_grid.png", 5, 1, 64, 64)


def test_parser_defaults_are_the_run_settings_defaults():
    """The parser keeps its defaults literal (building it imports no torch); the runs' settings and the defenses'
    constants are the library's. They must agree."""
    import dataclasses

    from lora_patch_adapters.cli import _args
    from lora_patch_adapters.defenses.base import PGD_EPS, PGD_STEP_SIZE, PGD_STEPS
    from lora_patch_adapters.runs import EvaluateSettings, TrainSettings

    assert (_args.PGD_EPS, _args.PGD_STEPS, _args.PGD_STEP_SIZE) == (PGD_EPS, PGD_STEPS, PGD_STEP_SIZE)
    parser = cli.build_parser()
    cases = ((["train", "--out", "x"], TrainSettings(), {"out", "argv"}),
             (["evaluate", "p"], EvaluateSettings(), {"patch", "argv", "defense"}))
    for argv, defaults, skipped in cases:
        args = parser.parse_args(argv)
        compared = [f.name for f in dataclasses.fields(defaults) if f.name not in skipped and hasattr(args, f.name)]
        assert len(compared) > 15
        for name in compared:
            assert getattr(args, name) == getattr(defaults, name), (argv[0], name)


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--out", "o", "--seed", str(2**63)], "[0, 2**63 - 1]"),
    (["train", "--out", "o", "--seed", "-1"], "[0, 2**63 - 1]"),
    (["demo", "--seed", str(2**64)], "[0, 2**63 - 1]"),
    (["audit", "--lr", "2"], "learning rate in (0, 1]"),
    (["audit", "--lr", "0"], "learning rate in (0, 1]"),
])
def test_numeric_flags_are_bounded(capsys, argv, fragment, tmp_path):
    assert fragment in _one_line_error(capsys, argv, 2)
    assert not (tmp_path / "o").exists()


def test_the_largest_seed_is_accepted():
    assert cli.build_parser().parse_args(["train", "--out", "o", "--seed", str(2**63 - 1)]).seed == 2**63 - 1


# ------------------------------------------------------------------------------------ trustworthy resume (h2)
def test_images_beyond_the_celeba_data_are_refused_before_anything_is_written(tmp_path, capsys):
    images, attr = fake_celeba(tmp_path)  # 1000 paper-train rows, of which the first 2 have image files
    out = tmp_path / "run"
    base = ["train", "--out", str(out), "--data", str(images), "--attr-file", str(attr), *TINY]
    err = _one_line_error(capsys, [*base, "--images", "1001"], 1)
    assert "--images 1001: the CelebA paper-train split" in err and "has 1000 images" in err
    assert "pass --images between 1 and 1000" in err
    err = _one_line_error(capsys, [*base, "--images", "3"], 1)
    assert "--images 3: only the first 2 image(s) of the CelebA paper-train split exist" in err
    assert "000003.jpg is missing" in err and "pass --images 2 or fewer" in err
    err = _one_line_error(capsys, [*base, "--images", "2", "--eval-images", "3"], 1)
    assert "--eval-images 3: only the first 2 image(s) of the CelebA paper-test split exist" in err
    assert "029003.jpg is missing" in err
    assert not out.exists()


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_resume_with_other_settings_is_refused_unless_forced(bypass_run, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(bypass_run, out)
    argv = ["train", "--out", str(out), *TINY, "--epochs", "2", "--max-steps", "3", "--checkpoint-every", "1",
            "--resume"]
    err = _one_line_error(capsys, [*argv[:-1], "--seed", "7", "--resume"], 1)
    assert "was written by another run configuration (" in err and "--force-resume" in err
    # the seed also seeds the inner PGD and draws the testbed faces: all three are named
    assert "attack: 'PGD(" in err and "data.first_labels: " in err and "training.seed: 42 -> 7" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert main([*argv, "--seed", "7", "--force-resume"]) == 0
    captured = capsys.readouterr()
    assert "lora-patch train: warning: force_resume: resuming from" in captured.err
    assert "training.seed: 42 -> 7" in captured.err
    assert json.loads((out / "summary.json").read_text())["training"]["steps"] == 3


def _poison_checkpoint(directory: Path) -> None:
    """An intact checkpoint (sizes, hashes, checksum valid) whose patch holds NaNs."""
    from tests.training.test_resume import first_key, weights_with

    weights_with(directory, lambda t: t[first_key(t, "lora_patch_B")].fill_(float("nan")))


def test_a_resumed_run_never_replaces_the_good_patch(bypass_run, tmp_path, capsys, monkeypatch):
    from lora_patch_adapters.training import BypassTrainer

    out = tmp_path / "finished"
    shutil.copytree(bypass_run, out)
    patch, summary = _files(out / "patch"), (out / "summary.json").read_bytes()
    argv = ["train", "--out", str(out), *TINY, "--epochs", "2", "--max-steps", "2", "--checkpoint-every", "1"]
    # every checkpoint non-finite: nothing to resume from, nothing written
    for step in (1, 2):
        _poison_checkpoint(out / "checkpoints" / f"step-00000{step}")
    err = _one_line_error(capsys, [*argv, "--resume"], 1)
    assert f"No intact checkpoint to resume from under {str(out)!r}" in err and "NaN/Inf" in err
    assert _files(out / "patch") == patch and (out / "summary.json").read_bytes() == summary
    # an earlier checkpoint than the patch: refused before the patch is touched
    shutil.rmtree(out)
    shutil.copytree(bypass_run, out)
    err = _one_line_error(capsys, [*argv[:-4], "--max-steps", "1", "--resume", str(out / "checkpoints" /
                                                                                   "step-000001")], 1)
    assert f"not replacing {out / 'patch'} (trained for 2 steps) with the patch of this resumed run (1 steps)" in err
    assert _files(out / "patch") == patch
    # a run whose weights end non-finite never writes them
    original = BypassTrainer.train

    def diverging(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        with torch.no_grad():
            self.parameters[0].fill_(float("inf"))
        return result

    monkeypatch.setattr(BypassTrainer, "train", diverging)
    err = _one_line_error(capsys, [*argv[:-4], "--max-steps", "1"], 1)
    assert "The trained patch holds NaN/Inf in 1 tensor(s)" in err and "(the patch there is left as it was)" in err
    assert _files(out / "patch") == patch and (out / "summary.json").read_bytes() == summary


def test_resume_falls_back_past_a_non_finite_latest_checkpoint_to_the_same_patch(bypass_run, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "finished"
    shutil.copytree(bypass_run, out)
    before = load_file(str(out / "patch" / "adapter_model.safetensors"))
    _poison_checkpoint(out / "checkpoints" / "step-000002")
    assert main(["train", "--out", str(out), *TINY, "--epochs", "2", "--max-steps", "2", "--checkpoint-every", "1",
                 "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning: Skipped checkpoint" in err and "step-000002" in err and "NaN/Inf" in err
    after = load_file(str(out / "patch" / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_evaluate_refuses_a_patch_without_fingerprint_unless_asked(bypass_run, tmp_path, capsys):
    patch = tmp_path / "plain"
    shutil.copytree(bypass_run / "patch", patch)
    for name in ("adapter_config.json", "lora_patch.json"):
        data = json.loads((patch / name).read_text())
        data.pop("base_fingerprint", None)
        data.pop("weights_sha256", None)  # an older file records neither
        (patch / name).write_text(json.dumps(data))
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = patch / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "base_fingerprint"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    save_file(tensors, str(weights), metadata=metadata)
    before = sorted(p.name for p in patch.iterdir())
    err = _one_line_error(capsys, ["evaluate", str(patch), "--images", "1", "--steps", "1", "--no-progress",
                                   "--out", str(tmp_path / "e")], 1)
    assert "--allow-missing-fingerprint" in err and sorted(p.name for p in patch.iterdir()) == before
    assert main(["evaluate", str(patch), "--images", "1", "--steps", "1", "--no-progress", "--out",
                 str(tmp_path / "e"), "--allow-missing-fingerprint"]) == 0


def test_a_rank_no_layer_can_use_is_refused_before_anything_is_built(capsys, tmp_path):
    err = _one_line_error(capsys, ["train", "--out", str(tmp_path / "o"), *TINY, "--rank", "100000000"], 2)
    assert "--rank 100000000 is larger than any layer of testbed can use" in err and "pass --rank" in err
    assert not (tmp_path / "o").exists()


def test_train_with_a_cheaper_inner_maximisation(tmp_path, capsys):
    out = tmp_path / "free"
    assert main(["train", "--out", str(out), *TINY, "--max-steps", "1", "--inner", "free", "--replays", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["training_config"]["inner"], summary["training_config"]["replays"]) == ("free", 2)
    assert "inner free (2 replays)" in (out / "report.md").read_text()
    err = _one_line_error(capsys, ["train", "--out", str(tmp_path / "x"), *TINY, "--inner", "fgsm_rs",
                                   "--inner-steps", "3"], 2)
    assert "--inner-steps applies to --inner pgd only" in err and not (tmp_path / "x").exists()
    err = _one_line_error(capsys, ["train", "--out", str(tmp_path / "x"), *TINY, "--inner", "free",
                                   "--inner-warm-start"], 2)
    assert "--inner-warm-start applies to --inner pgd only" in err and not (tmp_path / "x").exists()
    err = _one_line_error(capsys, ["train", "--out", str(tmp_path / "x"), "--inner", "trades"], 2)
    assert "invalid choice: 'trades'" in err
