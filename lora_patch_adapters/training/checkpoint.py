"""Training checkpoints: a patch directory (``save_pretrained``) plus the optimiser, RNG and loop state.

Layout of ``<output_dir>/checkpoints/step-000100/``::

    adapter_config.json, adapter_model.safetensors   the patch (loadable with PeftModel.from_pretrained)
    optimizer.pt                                     torch.optim state dict (tensors and numbers only)
    rng_state.pt                                     global RNG states (tensors and numbers only)
    trainer_state.json                               step, epoch, position in the epoch, config, history, the run's
                                                     description ("run"), the size and SHA-256 of every other file
                                                     ("files") and a checksum of itself ("checksum")

Both ``.pt`` files are read back with ``torch.load(weights_only=True)``: no code runs when a checkpoint is opened.
A checkpoint is written under ``step-N.tmp``, fsynced and renamed when complete, so a crash (even ``kill -9``) never
leaves half of one under a ``step-N`` name; old ones are renamed to ``step-N.deleting`` before they are removed.

Reading (:func:`load_checkpoint`) checks everything before anything is applied, and every problem is one
:class:`CheckpointError` naming the file and what is wrong: missing, truncated or damaged files (sizes and hashes
recorded at write time), unreadable JSON or tensors, wrong JSON types, missing keys, RNG or optimiser states of the
wrong form, non-finite weights. :func:`check_compatible` then compares the checkpoint with the trainer that wants it
(:class:`CheckpointMismatchError`: another run configuration, tensors of other shapes) and :func:`resume_point`
falls back from a damaged newest checkpoint to the newest intact one, with a :class:`CheckpointWarning`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import peft
import torch
from safetensors.torch import load_file

from .._checks import one_line
from .._io import fsync_path
from .seeding import rng_state

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
INNER_FILE = "inner_state.pt"  # optional: the inner attack's warm starts (TrainingConfig.inner_warm_start)
WEIGHTS_FILE = "adapter_model.safetensors"
_NAME = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^step-\d+\.(tmp|deleting)$")  # written (and so removable) by this module only
_STATE_KEYS = {"step": int, "epoch": int, "batch_in_epoch": int, "kind": str, "config": dict, "history": list}
PATCH_FIELDS = ("r", "lora_alpha", "scaling", "gate", "gate_init", "init_weights", "target_modules",
                "include_linear", "exclude_modules", "modules_to_save")
TRAINING_FIELDS = ("schedule", "batch_size", "seed", "lr", "lr_schedule", "betas", "grad_clip", "inner", "inner_steps",
                   "replays", "inner_warm_start", "hardening")
FORCE_HINT = "pass force_resume=True (lora-patch train --force-resume) to continue anyway"


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete, damaged or not a training checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """An intact checkpoint written by another run configuration or for another patch (no fallback helps)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (damaged, non-finite) or its run configuration differs under ``force_resume``."""


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CHECKPOINTS, f"step-{step:06d}")


def _step_of(path: str) -> int:
    return int(os.path.basename(path).split("-")[1])


def _step_dirs(output_dir: str) -> list[str]:
    """Every ``step-N`` directory under ``output_dir/checkpoints``, oldest first."""
    root = os.path.join(output_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root)
             for m in [_NAME.match(name)] if m and os.path.isdir(os.path.join(root, name))]
    return [path for _, path in sorted(found)]


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint directories under ``output_dir/checkpoints`` that have a state file, oldest first (whether their
    files are intact is checked when they are read)."""
    return [path for path in _step_dirs(output_dir) if os.path.isfile(os.path.join(path, STATE_FILE))]


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------------------- writing


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_checksum(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _remove(path: str) -> None:
    """Remove a checkpoint directory: renamed first, so a crash part-way leaves no half checkpoint under its name."""
    doomed = path + ".deleting"
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(
    output_dir: str,
    model: peft.PeftModel,
    adapter_name: str,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
    inner: dict[str, torch.Tensor] | None = None,
) -> str:
    """Write a checkpoint for ``state["step"]`` atomically and prune all but the ``keep`` most recent up to it.

    Checkpoints of later steps (left by a run that went further before it was resumed from an earlier one) are not
    counted and are replaced when this run reaches their step.
    """
    step = int(state["step"])
    final = checkpoint_dir(output_dir, step)
    root = os.path.dirname(final)
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):  # leftovers of writes or removals that a crash interrupted
        if _LEFTOVER.match(name) and os.path.isdir(os.path.join(root, name)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    tmp = final + ".tmp"
    os.makedirs(tmp)
    try:  # a refusal (e.g. NaN adapter weights, see LoraPatchModel._get_adapter_state_dict) leaves nothing behind
        save_patch_files(model, adapter_name, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
    torch.save(rng_state(), os.path.join(tmp, RNG_FILE))
    if inner is not None:
        torch.save(inner, os.path.join(tmp, INNER_FILE))
    files = {name: {"bytes": os.path.getsize(os.path.join(tmp, name)), "sha256": _sha256(os.path.join(tmp, name))}
             for name in sorted(os.listdir(tmp))}
    record = json.loads(json.dumps({**state, "files": files}))
    record["checksum"] = _state_checksum(record)
    _write_bytes(os.path.join(tmp, STATE_FILE), json.dumps(record, indent=1, sort_keys=True).encode())
    for name in files:
        fsync_path(os.path.join(tmp, name))
    fsync_path(tmp)
    if os.path.lexists(final):  # this step written before, by a run this one resumed from an earlier point
        _remove(final)
    os.replace(tmp, final)
    fsync_path(root)
    for old in [p for p in list_checkpoints(output_dir) if _step_of(p) <= step][:-keep]:
        _remove(old)
    return final


def save_patch_files(model: peft.PeftModel, adapter_name: str, directory: str) -> None:
    """``save_pretrained`` of one adapter with its files directly in ``directory`` (peft puts non-default adapters
    in a sub-folder named after them; this flattens that)."""
    # save_embedding_layers=False: peft would otherwise ask the Hub about the repo named in base_model_name_or_path
    model.save_pretrained(directory, selected_adapters=[adapter_name], save_embedding_layers=False)
    nested = os.path.join(directory, adapter_name)
    if adapter_name != "default" and os.path.isdir(nested):
        for name in os.listdir(nested):
            os.replace(os.path.join(nested, name), os.path.join(directory, name))
        os.rmdir(nested)


# ------------------------------------------------------------------------------------------------------- reading
def _fail(path: str, name: str, problem: str, fix: str = "") -> CheckpointError:
    fix = fix or "resume from another checkpoint (resume_from=PATH) or delete this one"
    return CheckpointError(f"Checkpoint file {os.path.join(path, name)} {problem}; {fix}.")


def _read_state(path: str) -> dict[str, Any]:
    where = os.path.join(path, STATE_FILE)
    try:
        with open(where, encoding="utf-8") as f:
            state = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, STATE_FILE, f"is truncated or damaged (not valid JSON: {one_line(exc, 100)})") from None
    if not isinstance(state, dict):
        raise _fail(path, STATE_FILE, f"must hold a JSON object, found {type(state).__name__}")
    missing = sorted(set(_STATE_KEYS) - set(state))
    if missing:
        raise _fail(path, STATE_FILE, f"lacks the keys {missing} (has {sorted(state)})")
    for key, kind in _STATE_KEYS.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            wanted = {int: "an integer >= 0", str: "a string", dict: "a JSON object", list: "a JSON array"}[kind]
            raise _fail(path, STATE_FILE, f"has {key!r} = {one_line(repr(value), 60)}; it must be {wanted}")
    for i, record in enumerate(state["history"]):
        if not isinstance(record, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in record.values()):
            raise _fail(path, STATE_FILE, f"has a history record {i} that is not an object of numbers")
    if len(state["history"]) != state["step"]:
        raise _fail(path, STATE_FILE, f"has {len(state['history'])} history records for step {state['step']} "
                                      "(one per step expected)")
    for key in ("run", "files"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise _fail(path, STATE_FILE, f"has {key!r} of type {type(state[key]).__name__}; it must be an object")
    if "checksum" in state:
        if state.pop("checksum") != _state_checksum(state):
            raise _fail(path, STATE_FILE, "is damaged (its content does not match the checksum written with it)")
    return state


def _check_files(path: str, files: dict[str, Any]) -> None:
    """Sizes and SHA-256 recorded when the checkpoint was written (checkpoints of older versions have none)."""
    for name, expected in sorted(files.items()):
        if os.path.basename(name) != name or not isinstance(expected, dict) or not {"bytes", "sha256"} <= set(expected):
            raise _fail(path, STATE_FILE, f"has a malformed 'files' entry for {name!r}")
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise _fail(path, name, "is missing (the checkpoint is incomplete)")
        size = os.path.getsize(file)
        if size != expected["bytes"]:
            what = "truncated" if size < expected["bytes"] else "damaged"
            raise _fail(path, name, f"is {what}: {size} bytes, {expected['bytes']} when it was written")
        if _sha256(file) != expected["sha256"]:
            raise _fail(path, name, "is damaged: its SHA-256 differs from the one recorded when it was written")


def _load(path: str, name: str, reader: Callable[[str], Any], what: str) -> Any:
    try:
        return reader(os.path.join(path, name))
    except Exception as exc:  # any reader failure is a damaged file, reported as one line
        raise _fail(path, name, f"is truncated or damaged (cannot be read as {what}: "
                                f"{type(exc).__name__}: {one_line(exc, 120)})") from None


def _torch_load(file: str) -> Any:
    return torch.load(file, weights_only=True, map_location="cpu")


def _check_optimizer(path: str, state: Any) -> None:
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not (isinstance(groups, list) and isinstance(state.get("state"), dict)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise _fail(path, OPTIMIZER_FILE, "is not a torch optimizer state dict ('state' and 'param_groups' with "
                                          "'params' lists expected)")


def _check_rng(path: str, state: Any) -> None:
    try:
        torch.Generator().set_state(state["torch"])  # throw-away generators: nothing global changes here
        python = state["python"]
        random.Random().setstate((python[0], tuple(python[1]), python[2]))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.RandomState().set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    except Exception as exc:
        raise _fail(path, RNG_FILE, f"does not hold valid RNG states ({type(exc).__name__}: "
                                    f"{one_line(exc, 100)})") from None


def _non_finite(tensors: dict[Any, Any]) -> list[str]:
    return [str(k) for k, t in tensors.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read and check a checkpoint: ``{"state", "adapter_weights", "optimizer", "rng"}`` (no pickled code runs).

    Raises :class:`CheckpointError`, one line naming the file, when anything is missing, truncated, damaged, of the
    wrong form, or when the weights or optimiser moments hold NaN/Inf.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"No checkpoint directory at {path!r}; checkpoints live in <out>/{CHECKPOINTS}/step-N.")
    missing = [n for n in (STATE_FILE, OPTIMIZER_FILE, RNG_FILE, WEIGHTS_FILE)
               if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise CheckpointError(f"{path!r} is not a complete training checkpoint (missing {', '.join(missing)}).")
    state = _read_state(path)
    _check_files(path, state.get("files") or {})
    weights = _load(path, WEIGHTS_FILE, load_file, "safetensors")
    optimizer = _load(path, OPTIMIZER_FILE, _torch_load, "a torch state dict")
    rng = _load(path, RNG_FILE, _torch_load, "a torch state dict")
    _check_optimizer(path, optimizer)
    _check_rng(path, rng)
    bad = _non_finite(weights)
    if bad:
        raise _fail(path, WEIGHTS_FILE, f"holds NaN/Inf in {len(bad)} of {len(weights)} tensors (e.g. {bad[0]}): "
                                        "the run had diverged", "resume from an earlier checkpoint")
    moments = {f"{i}.{k}": t for i, s in optimizer["state"].items() if isinstance(s, dict) for k, t in s.items()}
    if _non_finite(moments):
        raise _fail(path, OPTIMIZER_FILE, f"holds NaN/Inf optimiser moments ({_non_finite(moments)[0]})",
                    "resume from an earlier checkpoint")
    data = {"state": state, "adapter_weights": weights, "optimizer": optimizer, "rng": rng}
    if os.path.isfile(os.path.join(path, INNER_FILE)):
        data["inner"] = _load(path, INNER_FILE, _torch_load, "a torch state dict")
    return data


# ------------------------------------------------------------------------------------------ matching the trainer
def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value


def describe_data(dataset: Any, first: int = 8) -> dict[str, Any]:
    """What a resume checks about the data: the number of items and a hash of the labels of the ``first`` items (in
    dataset order, so neither the seed nor the batch size changes it; only those items are read)."""
    labels = torch.stack([torch.as_tensor(dataset[i][1]).cpu() for i in range(min(first, len(dataset)))])
    digest = hashlib.sha256(labels.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]
    return {"items": len(dataset), "first_labels": digest}


def describe_run(kind: str, model: peft.PeftModel, adapter_name: str, config: Any, attack: Any, loss: Any,
                 data: dict[str, Any] | None, target: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run configuration a checkpoint records and a resume compares: trainer kind, patch (rank, gate, init,
    targets...), training (schedule, batch size, seed, learning rate...), inner attack, loss weights, data, and the
    target's settings (a defensive patch's warning)."""
    patch_config = model.peft_config[adapter_name]
    record = {"kind": kind, "patch": {k: _plain(getattr(patch_config, k, None)) for k in PATCH_FIELDS},
              "training": {k: _setting(config, k) for k in TRAINING_FIELDS}, "attack": repr(attack),
              "loss": getattr(loss, "weights", type(loss).__name__), "data": data}
    if target is not None:
        record["target"] = target
    return json.loads(json.dumps(record, default=str))


def _setting(config: Any, name: str) -> Any:
    """A training setting as the checkpoint records it (nested settings such as ``hardening`` as their dict)."""
    value = getattr(config, name, None)
    return value.to_dict() if hasattr(value, "to_dict") else value


def run_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"field: saved -> current"`` for every field recorded on both sides that differs (dotted for sections)."""
    out = []
    for key in sorted(set(saved) & set(current)):
        old, new = saved[key], current[key]
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new)) if old[k] != new[k]]
        elif old != new:
            out.append(f"{key}: {one_line(repr(old), 80)} -> {one_line(repr(new), 80)}")
    return out


def check_compatible(data: dict[str, Any], path: str, kind: str, run: dict[str, Any] | None, force: bool,
                     model: peft.PeftModel, adapter_name: str, optimizer: torch.optim.Optimizer) -> None:
    """Refuse a checkpoint of another trainer kind or of another run configuration (:class:`CheckpointMismatchError`;
    with ``force`` the configuration differences are a :class:`CheckpointWarning` instead), or whose tensors do not
    fit this patch and optimiser (:class:`CheckpointError`: damaged, or written for another patch)."""
    state = data["state"]
    if state["kind"] != kind:
        raise CheckpointMismatchError(f"{path!r} is a {state['kind']!r} checkpoint; this is a {kind!r} trainer.")
    saved = state.get("run")
    if run is not None and saved is not None:
        differences = run_differences(saved, run)
        if differences and not force:
            raise CheckpointMismatchError(
                f"Checkpoint {path} was written by another run configuration ({'; '.join(differences)}; checkpoint "
                f"-> now). Resume with the same settings, or {FORCE_HINT}.")
        if differences:
            warnings.warn(f"force_resume: resuming from {path} although {'; '.join(differences)}.", CheckpointWarning,
                          stacklevel=3)
    expected = {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
    weights = data["adapter_weights"]
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [f"{k} {list(weights[k].shape)} (this patch: {list(s)})" for k, s in sorted(expected.items())
             if k in weights and tuple(weights[k].shape) != s]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (f"missing {missing[:2]}" if missing else "",
                                             f"unexpected {unexpected[:2]}" if unexpected else "",
                                             f"wrong shapes: {', '.join(wrong[:2])}" if wrong else "") if part)
        raise CheckpointError(f"Checkpoint file {os.path.join(path, WEIGHTS_FILE)} does not fit this patch "
                              f"({detail}); it was written for another patch or generator.")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_groups = data["optimizer"]["param_groups"]
    counts, ours = [len(g["params"]) for g in saved_groups], [len(g["params"]) for g in optimizer.param_groups]
    if counts != ours:
        raise CheckpointError(f"Checkpoint file {os.path.join(path, OPTIMIZER_FILE)} holds parameter groups of "
                              f"{counts} tensors; this patch's optimiser has {ours}.")
    index = dict(zip([i for g in saved_groups for i in g["params"]], params))
    for i, entry in data["optimizer"]["state"].items():
        tensors = [t for t in entry.values() if isinstance(t, torch.Tensor)] if isinstance(entry, dict) else []
        if i not in index or any(t.dim() > 0 and t.shape != index[i].shape for t in tensors):
            raise CheckpointError(f"Checkpoint file {os.path.join(path, OPTIMIZER_FILE)} holds a state for "
                                  f"parameter {i} that does not fit this patch's optimiser.")


def resume_point(resume_from: str, output_dir: str | None,
                 read: Callable[[str], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """``(path, data)`` to resume from: ``resume_from`` itself, or for ``"latest"`` the newest checkpoint under
    ``output_dir`` that ``read`` accepts. Damaged or non-finite newer ones are skipped with a
    :class:`CheckpointWarning` naming each and why; a :class:`CheckpointMismatchError` is raised at once."""
    if resume_from != "latest":
        return resume_from, read(resume_from)
    found = _step_dirs(output_dir) if output_dir is not None else []
    if not found:
        raise CheckpointError(f"No checkpoint to resume from under {output_dir!r}.")
    skipped: list[tuple[str, str]] = []
    for path in reversed(found):
        try:
            data = read(path)
        except CheckpointMismatchError:
            raise
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
            continue
        for bad, why in skipped:
            warnings.warn(f"Skipped checkpoint {bad}: {why} Resuming from {path} instead.", CheckpointWarning,
                          stacklevel=3)
        return path, data
    reasons = " | ".join(f"{os.path.basename(p)}: {one_line(why, 200)}" for p, why in skipped)
    raise CheckpointError(f"No intact checkpoint to resume from under {output_dir!r} ({reasons}).")
