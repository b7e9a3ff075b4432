"""Kill -9 scenarios for tests/training/test_resume.py. Usage: ``resume_script.py OUT_DIR SCENARIO...``.

A scenario is a comma-separated list of kill points, one per phase (``-`` for none): phase 1 trains from scratch,
every later phase resumes from ``"latest"``; a phase with a kill point SIGKILLs itself there, and one more phase runs
to the end after the last kill. Kill points (``N``: the step, or the checkpoint of that step being written):

* ``step:N``       at the start of step N, between checkpoints;
* ``weights:N``    after half of ``adapter_model.safetensors`` of checkpoint N is on disk;
* ``optimizer:N``  / ``rng:N``: inside ``torch.save`` of that checkpoint's ``optimizer.pt`` / ``rng_state.pt``,
  after half of the bytes are on disk;
* ``state:N``      inside the write of ``trainer_state.json``, half of it on disk;
* ``rename:N``     with the complete ``step-N.tmp`` directory not yet renamed into place;
* ``prune:N``      while an older checkpoint is removed after checkpoint N (one of its files deleted);
* ``patch``        inside the final ``save_patch`` (after training), its temporary directory written.

The hooks live here, in the child, not in the package. The script imports torch once and forks one process per
phase (a fresh interpreter per phase would take seconds each); the forked phases run with one thread. Writes
``OUT_DIR/results.json``: per scenario, each phase's exit (``"SIGKILL"``, ``0`` or an error) and the last phase's
result (history without timings, warnings, or the error message), and ``OUT_DIR/<scenario>/patch``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_data, tiny_editor

from lora_patch_adapters import save_patch
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.patches import save as patch_save
from lora_patch_adapters.training import BypassTrainer, TrainingConfig
from lora_patch_adapters.training import checkpoint as ckpt
from lora_patch_adapters.tuner.config import LoraPatchConfig

IMAGES = 4  # in batches of 2, two epochs: 4 steps; a checkpoint after every step, the last two kept


def make_trainer(out: str) -> BypassTrainer:
    config = TrainingConfig(batch_size=2, epochs=2, seed=3, lr=1e-2, lr_schedule="cosine", checkpoint_every=1,
                            keep_checkpoints=2, progress=False)
    return BypassTrainer(tiny_editor(), patch=LoraPatchConfig(r=4, init_weights="kaiming"),
                         loss=MMFALoss.pixel_only(), attack=PGD(steps=1, step_size=0.03), config=config,
                         output_dir=out)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def half(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    die()


def install(point: str, trainer: BypassTrainer) -> None:
    """Make this process SIGKILL itself at ``point``."""
    what, _, n = point.partition(":")
    tag = f"step-{int(n):06d}" if n else ""
    if what == "step":
        original_step = trainer._step

        def step(x, labels, shard=None):
            if trainer.step + 1 == int(n):
                die()
            return original_step(x, labels, shard)

        trainer._step = step
    elif what == "weights":
        original_files = ckpt.save_patch_files

        def save_files(model, adapter_name, directory):
            original_files(model, adapter_name, directory)
            if os.path.basename(directory) == tag + ".tmp":
                path = os.path.join(directory, ckpt.WEIGHTS_FILE)
                with open(path, "rb") as f:
                    half(path, f.read())

        ckpt.save_patch_files = save_files
    elif what in ("optimizer", "rng"):
        name = ckpt.OPTIMIZER_FILE if what == "optimizer" else ckpt.RNG_FILE
        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, str) and f.endswith(os.path.join(tag + ".tmp", name)):
                buffer = io.BytesIO()
                original_save(obj, buffer, *args, **kwargs)
                half(f, buffer.getvalue())
            return original_save(obj, f, *args, **kwargs)

        torch.save = save
    elif what == "state":
        original_write = ckpt._write_bytes

        def write(path, data):
            if path.endswith(os.path.join(tag + ".tmp", ckpt.STATE_FILE)):
                half(path, data)
            return original_write(path, data)

        ckpt._write_bytes = write
    elif what == "rename":
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(src).endswith(tag + ".tmp") and str(dst).endswith(tag):
                die()
            return original_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif what == "prune":
        original_rmtree = ckpt.shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if str(path).endswith(".deleting") and os.path.isdir(os.path.join(os.path.dirname(path), tag)):
                os.remove(os.path.join(path, sorted(os.listdir(path))[0]))
                die()
            return original_rmtree(path, *args, **kwargs)

        ckpt.shutil.rmtree = rmtree
    elif what == "patch":
        original_patch_files = patch_save.save_patch_files

        def save_patch_files(model, adapter_name, directory):
            original_patch_files(model, adapter_name, directory)
            die()

        patch_save.save_patch_files = save_patch_files
    else:
        raise ValueError(f"unknown kill point {point!r}")


def phase(out: str, point: str | None, resume: bool, result_file: str) -> None:
    """One training process: train (or resume), save ``out/patch``, write the result; dies at ``point``."""
    torch.set_num_threads(1)
    trainer = make_trainer(out)
    if point:
        install(point, trainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.train(tiny_data(IMAGES), resume_from="latest" if resume else None)
        except ckpt.CheckpointError as exc:
            result = {"error": str(exc)}
        else:
            save_patch(trainer, os.path.join(out, "patch"))
            result = {"history": [{k: v for k, v in h.items() if k != "seconds"} for h in trainer.history],
                      "steps": trainer.step}
    result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, ckpt.CheckpointWarning)]
    with open(result_file, "w") as f:
        json.dump(result, f)


def run_phase(out: str, point: str | None, resume: bool, result_file: str) -> object:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            phase(out, point, resume, result_file)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return os.WEXITSTATUS(status)


def main(out: str, scenarios: list[str]) -> None:
    torch.set_num_threads(1)
    results = {}
    for scenario in scenarios:
        points = [p for p in scenario.split(",") if p != "-"] + [None]
        directory = os.path.join(out, scenario.replace(":", "_").replace(",", "+"))
        result_file = os.path.join(directory + ".json")
        exits = [run_phase(directory, point, i > 0, result_file) for i, point in enumerate(points)]
        with open(result_file) as f:
            results[scenario] = {"exits": exits, "result": json.load(f), "directory": directory}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
