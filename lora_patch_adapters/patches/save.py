"""Saving a patch atomically.

:func:`save_patch` writes the three files into ``<directory>.tmp-<random>``, fsyncs them and swaps the directory into
place, so a crash never leaves half a patch at ``directory``: a first save either completes or leaves nothing there,
and a crash while replacing an existing patch leaves the previous complete patch. The swap is two renames (old patch
to ``<directory>.old-<random>``, new one in); a crash exactly between them leaves no ``directory`` and the previous
patch under ``<directory>.old-*``. One writer per directory.

Only folders the package made itself are ever removed: the first thing written into a ``.tmp-*`` folder, and into a
patch about to be renamed to ``.old-*``, is the marker file :data:`LEFTOVER_MARKER`, whose content names that exact
folder. Leftover ``.tmp-*`` folders of crashed saves are removed by the next save of the same directory, and
``.old-*`` ones once a new patch is in place -- if, and only if, they carry a marker naming them; a folder that only
looks like a leftover (``<directory>.tmp-mine``, a copy of a leftover) is never touched.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from typing import Any

import peft
import safetensors
import safetensors.torch
import torch
from torch import nn

from .._io import fsync_path
from ..training import PatchTrainer
from ..training.checkpoint import save_patch_files
from ..tuner.config import LoraPatchConfig, weights_digest
from ..tuner.fingerprint import canonical_layers, hash_layers, inner_module
from ..tuner.layer import GatedLoraLayer
from ..tuner.model import NonFiniteAdapterError
from ..version import __version__
from .errors import PatchSaveError
from .format import (
    CONFIG_NAME,
    FORMAT_VERSION,
    MAX_JSON_BYTES,
    SAFETENSORS_HEADER_LIMIT,
    SIDECAR_NAME,
    WEIGHTS_NAME,
    adapter_state,
    check_adapter_name,
    quoted_name,
    write_json,
)

LEFTOVER_MARKER = ".lora-patch-adapters-leftover"
"""Marker file written first into every temporary (``.tmp-*``) and backup (``.old-*``) folder :func:`save_patch`
creates; its content is :func:`leftover_marker_content` of the folder's own name. Removed from the new patch once it
is in place."""


def _patched_layer_names(module: nn.Module, adapter_name: str) -> list[str]:
    _, wrappers = canonical_layers(module)
    return sorted(
        name
        for name, wrapper in wrappers.items()
        if isinstance(wrapper, GatedLoraLayer) and adapter_name in wrapper.lora_patch_A
    )


def leftover_marker_content(kind: str, name: str) -> bytes:
    """The bytes of the marker file of the ``kind`` (``"tmp"`` or ``"old"``) folder named ``name`` (a basename)."""
    return f"lora-patch-adapters save_patch {kind}\n".encode() + os.fsencode(name) + b"\n"


def _write_marker(folder: str, kind: str, name: str) -> None:
    """Write the marker of the ``kind`` folder ``name`` into ``folder`` (the folder itself, or a patch about to be
    renamed to ``name``)."""
    with open(os.path.join(folder, LEFTOVER_MARKER), "wb") as f:
        f.write(leftover_marker_content(kind, name))
        f.flush()
        os.fsync(f.fileno())


def _is_own_leftover(path: str, kind: str) -> bool:
    """Whether ``path`` is a real folder holding a marker (a regular file, not a link) that names exactly it."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    marker = os.path.join(path, LEFTOVER_MARKER)
    expected = leftover_marker_content(kind, os.path.basename(path))
    try:
        if not os.path.isfile(marker) or os.path.islink(marker) or os.path.getsize(marker) != len(expected):
            return False
        with open(marker, "rb") as f:
            return f.read() == expected
    except OSError:
        return False


def _remove_siblings(directory: str, kind: str) -> None:
    """Remove the ``<directory>.<kind>-*`` folders left by earlier (crashed) saves: only those marked as ours."""
    parent, base = os.path.split(directory)
    pattern = re.compile(re.escape(base) + r"\." + kind + r"-[A-Za-z0-9_]+")
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if pattern.fullmatch(name) and _is_own_leftover(path, kind):
            shutil.rmtree(path, ignore_errors=True)


def _non_finite_error(adapter_name: str, key: str, bad: int, total: int) -> PatchSaveError:
    return PatchSaveError(
        f"save_patch: adapter {adapter_name!r} tensor {quoted_name(key)} holds {bad} NaN or infinite "
        f"value(s) of {total}; nothing was written. The patch is broken (e.g. training diverged): "
        "save an earlier checkpoint, or retrain with a lower learning rate or grad_clip."
    )


def _finite_adapter_state(model: peft.PeftModel, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors, refused (PatchSaveError) when one holds NaN/Inf. peft versions that call the tuner's
    ``_get_adapter_state_dict`` refuse inside ``adapter_state``; older ones are checked here."""
    try:
        state = adapter_state(model, adapter_name)
    except NonFiniteAdapterError as exc:
        raise _non_finite_error(adapter_name, exc.key, exc.bad, exc.total) from exc
    for key, value in sorted(state.items()):
        finite = torch.isfinite(value.detach())
        if not finite.all():
            raise _non_finite_error(adapter_name, key, int(finite.numel() - finite.sum()), finite.numel())
    return state


def _check_sizes(state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Refuse provenance that the patch's readers could not read back, before anything is written."""
    sidecar = len(json.dumps(info, indent=2, sort_keys=True, allow_nan=False).encode("utf-8"))
    if sidecar > MAX_JSON_BYTES:
        raise PatchSaveError(
            f"save_patch: the metadata makes {SIDECAR_NAME} {sidecar} bytes, above the {MAX_JSON_BYTES}-byte "
            f"({MAX_JSON_BYTES // 2**20} MiB) limit of the patch readers, so the patch could not be loaded; nothing "
            "was written. Pass smaller metadata (e.g. a path to a file instead of its content)."
        )
    # An upper bound of the safetensors header: the tensor table (offsets at their largest) plus the metadata, as
    # peft's save and the provenance below fill it.
    total = sum(v.numel() * v.element_size() for v in state.values())
    table = {
        key: {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [total, total]} for key, v in state.items()
    }
    metadata = {"format": "pt"}
    metadata.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in info.items()})
    header = len(json.dumps({"__metadata__": metadata, **table}).encode("utf-8")) + 8
    if header > SAFETENSORS_HEADER_LIMIT:
        raise PatchSaveError(
            f"save_patch: the metadata makes the {WEIGHTS_NAME} header about {header} bytes, above safetensors' "
            f"{SAFETENSORS_HEADER_LIMIT}-byte header limit; nothing was written. Pass smaller metadata."
        )


def _remove_file(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


REPLACEABLE = (CONFIG_NAME, WEIGHTS_NAME, SIDECAR_NAME, "README.md", "training.json", LEFTOVER_MARKER)
"""What save_patch may replace in an existing patch directory: the files it (or peft, or an earlier version of this
package: ``training.json``) writes there. Anything else makes it refuse instead of deleting the user's file."""


def _check_destination(directory: str) -> None:
    if not os.path.lexists(directory):
        return
    if not os.path.isdir(directory) or os.path.islink(directory):
        raise FileExistsError(f"{directory!r} exists and is not a directory; save_patch writes a patch directory.")
    entries = os.listdir(directory)
    if entries and CONFIG_NAME not in entries and SIDECAR_NAME not in entries:
        raise FileExistsError(
            f"{directory!r} is a non-empty directory that is not a patch (no {CONFIG_NAME}); save_patch replaces its "
            "destination as a whole, so choose a new or empty directory."
        )
    foreign = sorted(set(entries) - set(REPLACEABLE))
    if foreign:
        raise FileExistsError(
            f"{directory!r} is a patch directory that also holds {', '.join(foreign[:5])}"
            + (f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else "") + ", which save_patch did not write; "
            "replacing the patch would delete them: move them out, or save to another directory."
        )


def save_patch(
    model: peft.PeftModel | PatchTrainer,
    directory: str | os.PathLike,
    adapter_name: str = "default",
    metadata: dict | None = None,
) -> str:
    """Save the lora-patch adapter ``adapter_name`` of ``model`` (a ``peft.PeftModel``) to ``directory``, atomically.

    ``model`` may also be a trainer (:class:`~lora_patch_adapters.training.PatchTrainer`): its patch is saved with its
    training record (kind, steps, epochs, config, runtime, attack, loss, plus ``metadata``) as the ``training``
    provenance; in a data-parallel run rank 0 writes and every rank returns once the files are there.

    Writes ``adapter_config.json`` (with ``base_fingerprint``), ``adapter_model.safetensors`` (provenance in its
    metadata) and ``lora_patch.json`` (``base_fingerprint``, ``package_version``, ``format_version``,
    ``target_modules``, ``created``, and ``training`` = ``metadata`` when given; it must be JSON-serialisable) into
    ``<directory>.tmp-<random>``, then swaps it into place (see the module docstring for the crash guarantees). An
    existing patch at ``directory`` is replaced as a whole; a non-empty directory that is not a patch is refused.
    Returns the absolute path of the directory. Raises ``ValueError`` if the adapter is merged (unmerge it first).

    Refused before anything is written (:class:`~lora_patch_adapters.patches.errors.PatchSaveError`): an
    ``adapter_name`` that is not a plain name (1-64 letters, digits, '_', '-'; a path, '', '.' or '..' would write
    outside the patch directory), adapter tensors holding NaN/Inf (the message names the tensor), and ``metadata``
    too large for the patch readers (``lora_patch.json`` at most 16 MiB, the safetensors header at most 100,000,000
    bytes).
    """
    if isinstance(model, PatchTrainer):
        check_adapter_name(model.adapter_name, PatchSaveError)
        return _save_trained(model, directory, metadata)
    check_adapter_name(adapter_name, PatchSaveError)
    if not isinstance(model, peft.PeftModel):
        raise TypeError(f"save_patch expects a peft.PeftModel with a lora-patch adapter, got {type(model).__name__}.")
    known = {name: type(c).__name__ for name, c in model.peft_config.items()}
    if adapter_name not in known:
        raise ValueError(f"The model has no adapter named {adapter_name!r} (its adapters: {known}).")
    if not isinstance(model.peft_config[adapter_name], LoraPatchConfig):
        raise TypeError(f"Adapter {adapter_name!r} is not a lora-patch adapter (its adapters: {known}).")
    try:
        training = json.loads(json.dumps(metadata, allow_nan=False)) if metadata is not None else None
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_patch metadata must be JSON-serialisable (str keys, finite numbers): {exc}") from exc
    if training is not None and not isinstance(training, dict):
        raise TypeError(f"save_patch metadata must be a dict, got {type(metadata).__name__}.")

    module = inner_module(model)
    targets = _patched_layer_names(module, adapter_name)
    if not targets:
        raise ValueError(f"Adapter {adapter_name!r} is not attached to any layer of the model; nothing to save.")
    layers, wrappers = canonical_layers(module)
    fingerprint = hash_layers(layers, wrappers, targets)
    info: dict[str, Any] = {
        "base_fingerprint": fingerprint,
        "package_version": __version__,
        "format_version": FORMAT_VERSION,
        "target_modules": targets,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "adapter_name": adapter_name,
        "peft_version": peft.__version__,
    }
    if training is not None:
        info["training"] = training
    state = _finite_adapter_state(model, adapter_name)
    _check_sizes(state, info)

    directory = os.path.abspath(os.fspath(directory))
    _check_destination(directory)
    parent, base = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    _remove_siblings(directory, "tmp")
    tmp = tempfile.mkdtemp(prefix=base + ".tmp-", dir=parent)
    try:
        _write_marker(tmp, "tmp", os.path.basename(tmp))
        save_patch_files(model, adapter_name, tmp)
        config_path, weights_path = os.path.join(tmp, CONFIG_NAME), os.path.join(tmp, WEIGHTS_NAME)
        if not (os.path.isfile(config_path) and os.path.isfile(weights_path)):
            raise RuntimeError(f"peft's save_pretrained did not write {CONFIG_NAME} and {WEIGHTS_NAME} in {tmp!r}.")

        with safetensors.safe_open(weights_path, framework="pt") as f:
            file_metadata = dict(f.metadata() or {})
            own = set(adapter_state(model, adapter_name))
            tensors = {key: f.get_tensor(key) for key in f.keys() if key in own}  # noqa: SIM118 - not a dict
        file_metadata.update({key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                              for key, value in info.items()})
        file_metadata["format_version"] = str(FORMAT_VERSION)
        partial = weights_path + ".partial"
        safetensors.torch.save_file(tensors, partial, metadata=file_metadata)
        os.replace(partial, weights_path)
        with open(config_path, encoding="utf-8") as f:
            saved_config = json.load(f)
        saved_config["base_fingerprint"] = fingerprint
        saved_config["weights_sha256"] = weights_digest(weights_path)  # of the file as rewritten above
        write_json(config_path, saved_config)
        write_json(os.path.join(tmp, SIDECAR_NAME), info)
        for name in os.listdir(tmp):
            fsync_path(os.path.join(tmp, name))
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if os.path.lexists(directory):
        old = tempfile.mkdtemp(prefix=base + ".old-", dir=parent)
        os.rmdir(old)  # only the unique name is wanted
        own_marker = os.path.join(directory, LEFTOVER_MARKER)
        # the previous patch gets the marker of its backup name before it moves there (a crash between the two leaves
        # a marker that does not name the folder it is in: inert)
        _write_marker(directory, "old", os.path.basename(old))
        try:
            os.replace(directory, old)
        except BaseException:
            _remove_file(own_marker)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.replace(tmp, directory)
        except BaseException:
            os.replace(old, directory)
            _remove_file(own_marker)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
        fsync_path(parent)
    # The marker stays until the folder is the patch, so a crash before never leaves an unmarked .tmp-* folder; a
    # crash right here leaves it in the patch, naming the .tmp-* folder it no longer is: inert.
    _remove_file(os.path.join(directory, LEFTOVER_MARKER))
    fsync_path(directory)
    _remove_siblings(directory, "old")
    return directory


def _save_trained(trainer: PatchTrainer, directory: str | os.PathLike, metadata: dict | None) -> str:
    record = trainer.training_record(metadata)
    if trainer.dist.is_main:  # data-parallel runs: rank 0 writes, the others wait until the files are there
        directory = save_patch(trainer.model, directory, trainer.adapter_name, metadata=record)
    trainer.dist.barrier()
    return os.path.abspath(os.fspath(directory))
