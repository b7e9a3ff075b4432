"""Checkpoints and resume you can trust: every damaged checkpoint is one error naming the file, "latest" falls back to
the newest intact checkpoint (with a warning) and still reaches the uninterrupted result bit for bit, a checkpoint of
another run configuration is refused unless forced, non-finite checkpoints are never resumed from, and training
processes killed with SIGKILL anywhere (also inside a checkpoint write) resume to the same bits or refuse in one line.

The reference and the resumed runs of a comparison run in the same process (or, for the kill tests, in processes
forked from the same interpreter), so the same kernels give the same bits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from peft.tuners.tuners_utils import BaseTuner
from safetensors.torch import load_file, save_file

from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import BypassTrainer
from lora_patch_adapters.training import checkpoint as ckpt
from lora_patch_adapters.tuner.config import LoraPatchConfig
from lora_patch_adapters.tuner.model import LoraPatchModel, NonFiniteAdapterError
from tests.training.conftest import PatternAttack, quick_config, tiny_data, tiny_editor

KAIMING = LoraPatchConfig(r=4, init_weights="kaiming")
DATA = tiny_data(6)  # batches of 2: 3 steps per epoch, 2 epochs, 6 steps
REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("resume_script.py")


def make(out: Path, patch: LoraPatchConfig = KAIMING, **overrides) -> BypassTrainer:
    settings = {"max_steps": None, "epochs": 2, "lr_schedule": "cosine", "checkpoint_every": 1,
                "keep_checkpoints": 3, **overrides}
    return BypassTrainer(tiny_editor(), patch=patch, loss=MMFALoss.pixel_only(), attack=PGD(steps=2, step_size=0.03),
                         config=quick_config(**settings), output_dir=str(out))


def outcome(trainer: BypassTrainer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return weights, [{k: v for k, v in h.items() if k != "seconds"} for h in trainer.history]


def assert_same(got: tuple, want: tuple) -> None:
    assert got[0].keys() == want[0].keys()
    assert all(torch.equal(got[0][n], want[0][n]) for n in want[0]), "patch weights differ"
    assert got[1] == want[1], "histories differ"


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, tuple]:
    """An uninterrupted run: its directory (checkpoints 4, 5, 6) and its result."""
    out = tmp_path_factory.mktemp("reference")
    trainer = make(out)
    trainer.train(DATA)
    return out, outcome(trainer)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """The same run stopped before step 6: checkpoints 3, 4, 5."""
    out = tmp_path_factory.mktemp("interrupted")
    trainer = make(out)
    original = trainer._step

    def crashing(x, labels, shard=None):
        if trainer.step + 1 == 6:
            raise KeyboardInterrupt
        return original(x, labels, shard)

    trainer._step = crashing
    with pytest.raises(KeyboardInterrupt):
        trainer.train(DATA)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000003", "step-000004", "step-000005"]
    return out


@pytest.fixture
def run_dir(interrupted, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    return out


# --------------------------------------------------------------------------------------------- ways to damage one
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF  # inside the last tensor's data: the file still parses
    path.write_bytes(bytes(data))


def edit_state(directory: Path, change, reseal: bool = False) -> None:
    """Change trainer_state.json; ``reseal``: recompute the recorded file sizes, hashes and checksum afterwards, so
    only the intended problem remains (the format: "files" {name: {bytes, sha256}}, "checksum" = SHA-256 of the
    sorted-key JSON of everything else)."""
    state = json.loads((directory / "trainer_state.json").read_text())
    change(state)
    if reseal:
        state["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                          for p in sorted(directory.iterdir()) if p.name != "trainer_state.json"}
        body = {k: v for k, v in state.items() if k != "checksum"}
        state["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (directory / "trainer_state.json").write_text(json.dumps(state))


def legacy(directory: Path) -> None:
    """A checkpoint as older versions wrote it: no recorded sizes, hashes or checksum."""
    edit_state(directory, lambda s: [s.pop("files"), s.pop("checksum")])


def weights_with(directory: Path, change) -> None:
    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    edit_state(directory, lambda s: None, reseal=True)


def replace_pt(directory: Path, name: str, value) -> None:
    torch.save(value, directory / name)
    edit_state(directory, lambda s: None, reseal=True)


def first_key(tensors: dict, part: str) -> str:
    return sorted(k for k in tensors if part in k)[0]


DAMAGES = {
    "weights truncated": (lambda d: truncate(d / "adapter_model.safetensors"), "adapter_model.safetensors",
                          "truncated"),
    "optimizer truncated": (lambda d: truncate(d / "optimizer.pt"), "optimizer.pt", "truncated"),
    "rng truncated": (lambda d: truncate(d / "rng_state.pt"), "rng_state.pt", "truncated"),
    "state truncated": (lambda d: truncate(d / "trainer_state.json"), "trainer_state.json", "not valid JSON"),
    "weights damaged in place": (lambda d: flip_a_byte(d / "adapter_model.safetensors"),
                                 "adapter_model.safetensors", "SHA-256"),
    "optimizer missing": (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt", "missing"),
    "state missing": (lambda d: (d / "trainer_state.json").unlink(), "trainer_state.json", "missing"),
    "state: wrong JSON type": (lambda d: edit_state(d, lambda s: s.update(step="5")), "trainer_state.json",
                               "'step' = '5'; it must be an integer"),
    "state: history not numbers": (lambda d: edit_state(d, lambda s: s["history"][0].update(loss="low")),
                                   "trainer_state.json", "history record 0"),
    "state: missing key": (lambda d: edit_state(d, lambda s: s.pop("history")), "trainer_state.json",
                           "lacks the keys ['history']"),
    "state: edited value": (lambda d: edit_state(d, lambda s: s.update(epoch=0)), "trainer_state.json",
                            "does not match the checksum"),
    "legacy: weights truncated": (lambda d: [legacy(d), truncate(d / "adapter_model.safetensors")],
                                  "adapter_model.safetensors", "cannot be read as safetensors"),
    "legacy: optimizer truncated": (lambda d: [legacy(d), truncate(d / "optimizer.pt")], "optimizer.pt",
                                    "cannot be read as a torch state dict"),
    "legacy: rng truncated": (lambda d: [legacy(d), truncate(d / "rng_state.pt")], "rng_state.pt",
                              "cannot be read as a torch state dict"),
    "rng of the wrong form": (lambda d: replace_pt(d, "rng_state.pt", {"torch": torch.zeros(3, dtype=torch.uint8),
                                                                       "python": [], "numpy": []}),
                              "rng_state.pt", "does not hold valid RNG states"),
    "optimizer of the wrong form": (lambda d: replace_pt(d, "optimizer.pt", {"lr": 1.0}), "optimizer.pt",
                                    "not a torch optimizer state dict"),
    "weights NaN": (lambda d: weights_with(d, lambda t: t[first_key(t, "lora_patch_B")].fill_(float("nan"))),
                    "adapter_model.safetensors", "NaN/Inf"),
    "weights of the wrong shape": (lambda d: weights_with(d, lambda t: t.update({first_key(t, "lora_patch_A"):
                                                                                torch.zeros(2, 2)})),
                                   "adapter_model.safetensors", "wrong shapes"),
}


def read_for_resume(path: Path) -> None:
    """What a resume does with a checkpoint: read it, then check it against the trainer that wants it."""
    trainer = make(path.parent.parent / "elsewhere")
    trainer.load_checkpoint(str(path))


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_checkpoint_is_one_error_naming_the_file(case, run_dir):
    damage, name, fragment = DAMAGES[case]
    newest = step_dir(run_dir, 5)
    damage(newest)
    with pytest.raises(ckpt.CheckpointError) as info:
        read_for_resume(newest)
    message = str(info.value)
    assert "\n" not in message and name in message and fragment in message, message
    assert str(newest) in message
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


@pytest.mark.parametrize("case", list(DAMAGES))
def test_resume_falls_back_to_the_newest_intact_checkpoint_and_gets_the_same_bits(case, run_dir, reference):
    damage, _, fragment = DAMAGES[case]
    damage(step_dir(run_dir, 5))
    trainer = make(run_dir)
    with pytest.warns(ckpt.CheckpointWarning) as caught:
        trainer.train(DATA, resume_from="latest")
    warning = str(caught[0].message)
    assert len(caught) == 1 and "\n" not in warning
    assert f"Skipped checkpoint {step_dir(run_dir, 5)}" in warning and fragment in warning
    assert f"Resuming from {step_dir(run_dir, 4)}" in warning
    assert_same(outcome(trainer), reference[1])
    for step in (4, 5, 6):  # the damaged checkpoint was written again, intact
        assert ckpt.load_checkpoint(str(step_dir(run_dir, step)))["state"]["step"] == step


def test_latest_with_no_intact_checkpoint_is_a_one_line_error(run_dir):
    for step, file in ((3, "rng_state.pt"), (4, "optimizer.pt"), (5, "adapter_model.safetensors")):
        truncate(step_dir(run_dir, step) / file)
    trainer = make(run_dir)
    with pytest.raises(ckpt.CheckpointError) as info:
        trainer.train(DATA, resume_from="latest")
    message = str(info.value)
    assert message.startswith(f"No intact checkpoint to resume from under {str(run_dir)!r}") and "\n" not in message
    for step, file in ((3, "rng_state.pt"), (4, "optimizer.pt"), (5, "adapter_model.safetensors")):
        assert f"step-{step:06d}: Checkpoint file {step_dir(run_dir, step) / file} is truncated" in message
    assert trainer.step == 0 and not (run_dir / "checkpoints" / "step-000006").exists()


# ------------------------------------------------------------------------------------------ the run configuration
@pytest.mark.parametrize("change, difference", [
    ({"batch_size": 3}, "training.batch_size: 2 -> 3"),
    ({"seed": 4}, "training.seed: 3 -> 4"),
    ({"schedule": "per_condition"}, "training.schedule: 'batched' -> 'per_condition'"),
    ({"lr": 2e-2}, "training.lr: 0.01 -> 0.02"),
    ({"patch": LoraPatchConfig(r=2, init_weights="kaiming")}, "patch.r: 4 -> 2"),
    ({"patch": LoraPatchConfig(r=4, init_weights="kaiming", gate="none")}, "patch.gate: 'basic' -> 'none'"),
    ({"patch": LoraPatchConfig(r=4)}, "patch.init_weights: 'kaiming' -> 'zero'"),
    ({"data": tiny_data(8)}, "data.items: 6 -> 8"),
    ({"data": tiny_data(6, seed=5)}, "data.first_labels: "),
])
def test_resume_refuses_another_run_configuration(change, difference, run_dir):
    change = dict(change)
    data = change.pop("data", DATA)
    if data is not DATA and len(data[0]) == 6:  # the premise: other labels among the first items
        assert not torch.equal(data[1], DATA[1])
    trainer = make(run_dir, **change)
    with pytest.raises(ckpt.CheckpointMismatchError) as info:
        trainer.train(data, resume_from="latest")
    message = str(info.value)
    assert "\n" not in message and difference in message, message
    assert message.startswith(f"Checkpoint {step_dir(run_dir, 5)} was written by another run configuration")
    assert "force_resume=True" in message and "--force-resume" in message
    assert trainer.step == 0 and sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-000003", "step-000004", "step-000005"]


def test_a_mismatch_is_not_hidden_by_the_fallback(run_dir):
    truncate(step_dir(run_dir, 5) / "optimizer.pt")
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"step-000004 was written by .*training.seed: 3 -> 4"):
        make(run_dir, seed=4).train(DATA, resume_from="latest")


def test_force_resume_continues_with_a_warning(run_dir, tmp_path):
    trainer = make(run_dir, seed=4, force_resume=True)
    with pytest.warns(ckpt.CheckpointWarning, match=r"force_resume: resuming from .*step-000005 although "
                                                    r"training.seed: 3 -> 4"):
        trainer.train(DATA, resume_from="latest")
    assert trainer.step == 6 and len(trainer.history) == 6
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    trainer = make(other, lr=2e-2)  # the train() argument, config.force_resume left False
    with pytest.warns(ckpt.CheckpointWarning, match=r"training.lr: 0.01 -> 0.02"):
        trainer.train(DATA, resume_from="latest", force_resume=True)
    assert trainer.step == 6


def test_tensors_of_the_wrong_shape_for_this_patch_are_named(run_dir):
    trainer = make(run_dir, patch=LoraPatchConfig(r=2, init_weights="kaiming"), force_resume=True)
    with pytest.raises(ckpt.CheckpointError) as info:
        trainer.load_checkpoint(str(step_dir(run_dir, 5)))
    message = str(info.value)
    assert f"Checkpoint file {step_dir(run_dir, 5) / 'adapter_model.safetensors'} does not fit this patch" in message
    assert "lora_patch_A.weight [4, " in message and "(this patch: [2, " in message and "\n" not in message
    with pytest.warns(ckpt.CheckpointWarning, match="patch.r: 4 -> 2"):  # forced: the shapes are what stops it
        with pytest.raises(ckpt.CheckpointError, match=r"^No intact checkpoint .*step-000005: .*does not fit"):
            trainer.train(DATA, resume_from="latest")


# --------------------------------------------------------------------------------------------------- non-finite
def poison(out: Path, step: int) -> None:
    """Rewrite checkpoint ``step`` as an intact checkpoint whose patch holds NaNs (hashes and checksum valid)."""
    trainer = make(out / "poisoner")
    trainer.train(DATA, resume_from=str(step_dir(out, step)))  # restores step `step`; nothing left to train
    with torch.no_grad():
        trainer.parameters[0].fill_(float("nan"))
    # the writer refuses NaN weights (test_checkpoint_writer_refuses_non_finite_weights); write it as an older
    # version without that guard did
    unguarded = classmethod(BaseTuner._get_adapter_state_dict.__func__)
    with mock.patch.object(LoraPatchModel, "_get_adapter_state_dict", unguarded):
        ckpt.save_checkpoint(str(out), trainer.model, "default", trainer.optimizer, trainer.trainer_state(), keep=3)
    shutil.rmtree(out / "poisoner")


def test_non_finite_checkpoints_are_never_resumed_from(reference, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(reference[0], out)
    poison(out, 6)
    with pytest.raises(ckpt.CheckpointError, match="NaN/Inf"):
        make(out).load_checkpoint(str(step_dir(out, 6)))
    trainer = make(out)
    with pytest.warns(ckpt.CheckpointWarning, match=r"Skipped checkpoint .*step-000006: .*NaN/Inf"):
        trainer.train(DATA, resume_from="latest")
    assert_same(outcome(trainer), reference[1])
    assert torch.isfinite(load_file(str(step_dir(out, 6) / "adapter_model.safetensors"))[
        first_key(load_file(str(step_dir(out, 6) / "adapter_model.safetensors")), "lora_patch_")]).all()


def test_checkpoint_writer_refuses_non_finite_weights(run_dir):
    trainer = make(run_dir / "nan")
    trainer.train(DATA, resume_from=str(step_dir(run_dir, 3)), force_resume=True)
    before = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*"))
    with torch.no_grad():
        trainer.parameters[0].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteAdapterError, match=r"lora_patch_\w+\.weight' holds 1 NaN or infinite"):
        ckpt.save_checkpoint(str(run_dir), trainer.model, "default", trainer.optimizer, trainer.trainer_state(), 3)
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) == before  # no .tmp left


def test_pruning_ignores_checkpoints_of_later_steps(run_dir):
    trainer = make(run_dir, keep_checkpoints=1)
    trainer.train(DATA, resume_from=str(step_dir(run_dir, 3)), force_resume=True)  # keep_checkpoints differs: fine
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000006"]
    assert trainer.step == 6


# ----------------------------------------------------------------------------------------------------- kill -9
SCENARIOS = {
    # every phase but the last SIGKILLs itself at the point named; each later phase resumes from "latest"
    "inside every file of a checkpoint write": "weights:2,optimizer:2,rng:2,state:2,rename:2",
    "between checkpoints, while pruning, while saving the patch": "step:3,prune:3,patch",
    "before the first checkpoint is complete": "optimizer:1",
}


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "-", *SCENARIOS.values()], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["-"]["exits"] == [0] and results["-"]["result"]["steps"] == 4
    return out, results


def _patch_tensors(directory: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(directory, "patch", "adapter_model.safetensors"))


@pytest.mark.parametrize("scenario", list(SCENARIOS)[:2])
def test_killed_runs_resume_to_the_same_bits(scenario, killed):
    _, results = killed
    points = SCENARIOS[scenario].split(",")
    got, want = results[SCENARIOS[scenario]], results["-"]
    assert got["exits"] == ["SIGKILL"] * len(points) + [0], got  # every kill point was reached
    assert got["result"]["history"] == want["result"]["history"] and got["result"]["warnings"] == []
    mine, theirs = _patch_tensors(got["directory"]), _patch_tensors(want["directory"])
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    checkpoints = Path(got["directory"]) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000003", "step-000004"]  # no leftovers
    for path in checkpoints.iterdir():
        ckpt.load_checkpoint(str(path))
    assert not [p for p in Path(got["directory"]).iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_killed_before_the_first_checkpoint_resume_is_a_one_line_refusal(killed):
    _, results = killed
    got = results[SCENARIOS["before the first checkpoint is complete"]]
    assert got["exits"] == ["SIGKILL", 0]
    error = got["result"]["error"]
    assert error == f"No checkpoint to resume from under {got['directory']!r}."
    assert not (Path(got["directory"]) / "patch").exists()
    assert os.listdir(Path(got["directory"]) / "checkpoints") == ["step-000001.tmp"]  # never listed as a checkpoint


def test_a_defensive_run_resumed_with_another_warning_is_refused(tmp_path):
    from lora_patch_adapters.training import Watermark, WatermarkTrainer
    from lora_patch_adapters.training.checkpoint import CheckpointMismatchError

    def trainer(text: str) -> WatermarkTrainer:
        return WatermarkTrainer(tiny_editor(), watermark=Watermark(text=text), loss=MMFALoss.pixel_only(),
                                attack=PatternAttack(), config=quick_config(max_steps=1, checkpoint_every=1),
                                output_dir=str(tmp_path))

    trainer("FAKE").train(tiny_data(2))
    with pytest.raises(CheckpointMismatchError, match="target.text: 'FAKE' -> 'AI'"):
        trainer("AI").train(tiny_data(2), resume_from="latest")
    trainer("FAKE").train(tiny_data(2), resume_from="latest")  # the same warning resumes
