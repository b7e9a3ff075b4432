"""Training checkpoints: a patch directory (``save_pretrained``) plus the optimiser, RNG and loop state.

Layout of ``<output_dir>/checkpoints/step-000100/``::

    adapter_config.json, adapter_model.safetensors   the patch (loadable with PeftModel.from_pretrained)
    optimizer.pt                                     torch.optim state dict (tensors and numbers only)
    rng_state.pt                                     global RNG states (tensors and numbers only)
    trainer_state.json                               step, epoch, position in the epoch, config, history

Both ``.pt`` files are read back with ``torch.load(weights_only=True)``: no code runs when a checkpoint is opened.
A checkpoint is written under a temporary name and renamed when complete, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import peft
import torch
from safetensors.torch import load_file

from .seeding import rng_state

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
WEIGHTS_FILE = "adapter_model.safetensors"
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete or not a training checkpoint."""


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CHECKPOINTS, f"step-{step:06d}")


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = os.path.join(output_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _NAME.match(name)
        if match and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    output_dir: str,
    model: peft.PeftModel,
    adapter_name: str,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> str:
    """Write a checkpoint for ``state["step"]`` atomically and prune all but the ``keep`` most recent."""
    final = checkpoint_dir(output_dir, int(state["step"]))
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_patch_files(model, adapter_name, tmp)
    torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
    torch.save(rng_state(), os.path.join(tmp, RNG_FILE))
    with open(os.path.join(tmp, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_patch_files(model: peft.PeftModel, adapter_name: str, directory: str) -> None:
    """``save_pretrained`` of one adapter with its files directly in ``directory`` (peft puts non-default adapters
    in a sub-folder named after them; this flattens that)."""
    model.save_pretrained(directory, selected_adapters=[adapter_name])
    nested = os.path.join(directory, adapter_name)
    if adapter_name != "default" and os.path.isdir(nested):
        for name in os.listdir(nested):
            os.replace(os.path.join(nested, name), os.path.join(directory, name))
        os.rmdir(nested)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint: ``{"state", "adapter_weights", "optimizer", "rng"}`` (no pickled code is executed)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"No checkpoint directory at {path!r}; checkpoints live in <out>/{CHECKPOINTS}/step-N.")
    missing = [n for n in (STATE_FILE, OPTIMIZER_FILE, RNG_FILE, WEIGHTS_FILE) if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise CheckpointError(f"{path!r} is not a complete training checkpoint (missing {', '.join(missing)}).")
    with open(os.path.join(path, STATE_FILE)) as f:
        state = json.load(f)
    return {
        "state": state,
        "adapter_weights": load_file(os.path.join(path, WEIGHTS_FILE)),
        "optimizer": torch.load(os.path.join(path, OPTIMIZER_FILE), weights_only=True, map_location="cpu"),
        "rng": torch.load(os.path.join(path, RNG_FILE), weights_only=True, map_location="cpu"),
    }
