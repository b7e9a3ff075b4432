"""Sharing patches safely: base-model fingerprints, atomic saves and validated, no-code loads.

A patch directory holds::

    adapter_config.json         the LoraPatchConfig (peft format), with ``base_fingerprint``
    adapter_model.safetensors   the adapter tensors; the file metadata repeats the provenance below
    lora_patch.json             provenance: base_fingerprint, package_version, format_version, target_modules,
                                created (UTC ISO time), adapter_name, peft_version and ``training`` metadata if given

Public API:

* :func:`base_fingerprint` -- ``"sha256:<hex>"`` over the names, shapes, dtypes and bytes of the base weights (weight
  and bias) of the layers a patch attaches to. Names are relative to the generator, with peft wrappers removed
  (``base_model.model.``, ``.base_layer``), so one base gives one fingerprint before and after patching. A model with
  merged patch weights is refused (``ValueError``): its base weights are not available exactly (subtracting the patch
  again is not bit-exact); call ``unmerge_adapter()`` first. The fingerprint covers the dtype: a float16 copy of a
  float32 base is a different base.
* :func:`save_patch` -- writes the three files into ``<directory>.tmp-<random>``, fsyncs them and swaps the directory
  into place, so a crash never leaves half a patch at ``directory``: a first save either completes or leaves nothing
  there, and a crash while replacing an existing patch leaves the previous complete patch. The swap is two renames
  (old patch to ``<directory>.old-<random>``, new one in); a crash exactly between them leaves no ``directory`` and
  the previous patch under ``<directory>.old-*``. Leftover ``.tmp-*`` directories of crashed saves are removed by the
  next save of the same directory, and ``.old-*`` ones once a new patch is in place. One writer per directory.
* :func:`load_patch` -- validates everything before the model is touched (config, targets, weights file, tensor
  names, shapes, dtypes, finiteness, fingerprint), then loads through peft from a staged copy of exactly the validated
  tensors; if peft fails after touching the model, the model is restored. Weights are read with safetensors only;
  pickle files (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) are refused unless ``trust_pickle=True``, and even
  then read with ``torch.load(weights_only=True)`` only.
* :func:`validate_patch` -- the checks of :func:`load_patch` without loading; :func:`read_patch_info` -- the
  ``lora_patch.json`` provenance.

Tensor dtypes: float16, bfloat16, float32 and float64 are accepted (a patch saved in half precision is legitimate);
the values are cast to the dtype the adapter has in the target model (the base layer's dtype, float32 for half
precision bases under peft's adapter autocast) and must be finite before and after that cast. Integer, bool, complex
and float8 tensors are refused.

Plain ``peft.PeftModel.from_pretrained`` / ``load_adapter`` of a patch whose config carries ``base_fingerprint`` also
refuses a different base (``FingerprintMismatchError``, raised by ``LoraPatchModel.inject_adapter`` before any layer
is replaced); set the environment variable ``LORA_PATCH_ALLOW_FINGERPRINT_MISMATCH=1`` to turn that into a warning.
On that path the other checks are peft's own: peft reads ``adapter_model.safetensors`` when it exists and only falls
back to ``adapter_model.bin``, which peft 0.18-0.21 read with ``torch.load(weights_only=True)`` (no code runs, but
no pickle is refused either); it does not check tensor dtypes or finiteness, or refuse extra tensors; use
:func:`load_patch` for the full validation.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import peft
import safetensors
import safetensors.torch
import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from peft.utils import ModulesToSaveWrapper, get_peft_model_state_dict
from torch import nn

from .tuner.config import LoraPatchConfig
from .tuner.layer import ConvTranspose2d, GatedLoraLayer, wrapper_for
from .tuner.model import discover_target_modules
from .tuner.registry import PEFT_TYPE_NAME
from .version import __version__

FORMAT_VERSION = 1
"""Version of the patch directory layout written by :func:`save_patch`."""
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SIDECAR_NAME = "lora_patch.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PICKLE_WEIGHTS = tuple("adapter_model" + suffix for suffix in PICKLE_SUFFIXES)
ALLOW_MISMATCH_ENV = "LORA_PATCH_ALLOW_FINGERPRINT_MISMATCH"
ACCEPTED_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
"""safetensors dtype codes accepted for patch tensors."""

_FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_JSON_BYTES = 16 * 1024 * 1024
_SIBLING_RE = r"\.(?:tmp|old)-[A-Za-z0-9_]+"
# Set while load_patch injects a patch whose fingerprint it has already checked (or was told to ignore).
_FINGERPRINT_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("lora_patch_fingerprint", default=False)


# ---------------------------------------------------------------------------------------------------------- errors
class PatchLoadError(ValueError):
    """A patch was refused; the model was not modified. The message names the file or tensor and what to do."""


class PatchFileError(PatchLoadError):
    """A file of the patch is missing, truncated, corrupt or not what its name says."""


class PatchConfigError(PatchLoadError):
    """``adapter_config.json`` is not a valid lora-patch config, or does not fit the model (missing or unsupported
    target layers)."""


class PatchShapeError(PatchLoadError):
    """The weights file holds missing, extra or misnamed tensors, or tensors of the wrong shape or dtype."""


class NonFinitePatchError(PatchLoadError):
    """A patch tensor holds NaN or infinite values (or overflows when cast to the model's dtype)."""


class FingerprintMismatchError(PatchLoadError):
    """The patch was saved for other base weights. ``expected`` (recorded in the patch) and ``actual`` (this model)
    hold the two fingerprints."""

    def __init__(self, message: str, expected: str | None = None, actual: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class UnsafePatchFileError(PatchLoadError):
    """The weights are a pickle file (which can run code when loaded) and ``trust_pickle`` was not given, or
    ``torch.load(weights_only=True)`` refused its content."""


class _NotFingerprintable(ValueError):
    """A targeted tensor is on the meta device (not loaded yet)."""


class MissingFingerprintWarning(UserWarning):
    """The patch records no base fingerprint (e.g. saved with plain ``save_pretrained``), so it was not checked."""


# ------------------------------------------------------------------------------------------------ model structure
def _one_line(text: object, limit: int = 240) -> str:
    """``text`` on one line, shortened to ``limit`` characters (library messages can be long)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _name(key: str) -> str:
    """A tensor or module name for a message: quoted, shortened if absurdly long."""
    return repr(key) if len(key) <= 160 else repr(key[:150] + "...")


def _inner_module(model: Any) -> nn.Module:
    """The generator module behind an Editor, a PeftModel, a tuner or a plain module."""
    from .generators.base import Editor

    if isinstance(model, Editor):
        model = model.generator
    if isinstance(model, peft.PeftModel):
        model = model.base_model
    if isinstance(model, BaseTuner):
        model = model.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected an nn.Module, an Editor or a peft.PeftModel, got {type(model).__name__}.")
    return model


def _canonical_layers(module: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """``({name: base layer}, {name: peft wrapper})`` with every peft wrapper replaced by the layer it wraps, so
    names and tensors are those of the unpatched model."""
    layers: dict[str, nn.Module] = {}
    wrappers: dict[str, nn.Module] = {}
    inside: str | None = None
    for name, child in module.named_modules():
        if not name or (inside is not None and name.startswith(inside)):
            continue
        inside = None
        if isinstance(child, BaseTunerLayer):
            layers[name], wrappers[name], inside = child.get_base_layer(), child, name + "."
        elif isinstance(child, ModulesToSaveWrapper):
            layers[name], wrappers[name], inside = child.original_module, child, name + "."
        else:
            layers[name] = child
    return layers, wrappers


def _select_layers(layers: Mapping[str, nn.Module], target_modules: Any) -> list[str]:
    if target_modules is None:
        names = [n for n, layer in layers.items() if wrapper_for(layer) is not None]
    elif isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise ValueError(f"target_modules={target_modules!r} is not a valid regex: {exc}") from exc
        names = [n for n in layers if pattern.fullmatch(n)]
    elif isinstance(target_modules, (list, tuple, set, frozenset)):
        names = sorted(set(target_modules))
        missing = [n for n in names if n not in layers]
        if missing:
            raise ValueError(
                f"No module named {missing[0]!r} in the model; base_fingerprint takes full module names (as in "
                "lora_patch.json's target_modules), a full-match regex, or None for every supported layer."
            )
    else:
        raise TypeError(f"target_modules must be None, a regex string or a list of names, got {target_modules!r}.")
    if not names:
        raise ValueError(f"target_modules={target_modules!r} selects no layer of the model.")
    return sorted(names)


def _fingerprint(layers: Mapping[str, nn.Module], wrappers: Mapping[str, nn.Module], names: list[str]) -> str:
    digest = hashlib.sha256(b"lora-patch base fingerprint v1\0")

    def record(text: str) -> None:
        data = text.encode()
        digest.update(len(data).to_bytes(8, "little") + data)

    for name in sorted(names):
        merged = getattr(wrappers.get(name), "merged_adapters", None)
        if merged:
            raise ValueError(
                f"Layer {name!r} has adapter(s) {list(merged)} merged into its weight, so the base weights cannot be "
                "fingerprinted exactly; call model.unmerge_adapter() first."
            )
        layer = layers[name]
        record(f"layer {name}")
        for attr in ("weight", "bias"):
            tensor = getattr(layer, attr, None)
            if not isinstance(tensor, torch.Tensor):
                continue
            if tensor.is_meta:
                raise _NotFingerprintable(f"{name}.{attr} is on the meta device (not loaded yet): nothing to hash.")
            record(f"tensor {name}.{attr} {str(tensor.dtype).replace('torch.', '')} {list(tensor.shape)}")
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            digest.update(data.nbytes.to_bytes(8, "little"))
            digest.update(memoryview(data))
    return "sha256:" + digest.hexdigest()


def base_fingerprint(model: Any, target_modules: list[str] | str | None = None) -> str:
    """``"sha256:<hex>"`` identifying the base weights of the layers a patch attaches to.

    ``model``: an ``nn.Module``, an ``Editor`` (its ``generator``) or a ``peft.PeftModel`` (its base layers: the
    same value before and after patching). ``target_modules``: a list of full module names (as in
    ``lora_patch.json``), a regex matching whole names, or None for every Conv2d, ConvTranspose2d and Linear layer.
    The hash covers each selected layer's name and the name, dtype, shape and bytes of its ``weight`` and ``bias``,
    in sorted name order. Raises ``ValueError`` for unknown names and for layers with merged patch weights.
    """
    layers, wrappers = _canonical_layers(_inner_module(model))
    return _fingerprint(layers, wrappers, _select_layers(layers, target_modules))


def _resolve_targets(module: nn.Module, config: LoraPatchConfig) -> list[str]:
    """The layer names peft patches for ``config`` (its own matching rules, excludes included), sorted."""
    layers, _ = _canonical_layers(module)
    if config.target_modules is None:
        config = copy.copy(config)
        discovered = discover_target_modules(module, config.include_linear)
        if not discovered:
            return []
        config.target_modules = discovered
    return sorted(name for name in layers if check_target_module_exists(config, name))


def _env_allows_mismatch() -> bool:
    return os.environ.get(ALLOW_MISMATCH_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def verify_injection_fingerprint(model: nn.Module, config: LoraPatchConfig, adapter_name: str) -> None:
    """Called by ``LoraPatchModel.inject_adapter`` when the config records ``base_fingerprint``: raise
    :class:`FingerprintMismatchError` if ``model``'s targeted layers differ (a warning when the environment variable
    ``LORA_PATCH_ALLOW_FINGERPRINT_MISMATCH=1`` is set)."""
    expected = config.base_fingerprint
    if not expected or _FINGERPRINT_CHECKED.get():
        return
    hint = (
        f"Load it on the base model it was trained for; to load it anyway set {ALLOW_MISMATCH_ENV}=1 (or use "
        "lora_patch_adapters.patch_io.load_patch(..., allow_fingerprint_mismatch=True)). If you are starting a new "
        "patch from a saved config, set config.base_fingerprint = None."
    )
    layers, wrappers = _canonical_layers(model)
    names = _resolve_targets(model, config)
    if not names:
        return  # peft reports the missing targets itself
    try:
        actual = _fingerprint(layers, wrappers, names)
    except _NotFingerprintable as exc:
        warnings.warn(f"Adapter {adapter_name!r}: base fingerprint not checked: {exc}", stacklevel=2)
        return
    except ValueError as exc:
        raise FingerprintMismatchError(
            f"Adapter {adapter_name!r}: cannot check the base fingerprint: {exc} {hint}", expected, None
        ) from exc
    if actual == expected:
        return
    message = (
        f"Adapter {adapter_name!r} was saved for base weights {expected}, but this model's {len(names)} targeted "
        f"layers give {actual}: the patch belongs to a different base model (or other weights or dtype). {hint}"
    )
    if _env_allows_mismatch():
        warnings.warn(message + f" ({ALLOW_MISMATCH_ENV} is set: loading anyway.)", stacklevel=2)
        return
    raise FingerprintMismatchError(message, expected, actual)


def _adapter_state(model: peft.PeftModel, adapter_name: str) -> dict[str, torch.Tensor]:
    """``get_peft_model_state_dict`` of one adapter. Older peft versions (0.18) also return the tensors of the other
    adapters of a custom method, still carrying their adapter name (``...lora_patch_A.other.weight``); a key of this
    adapter has exactly one segment after ``lora_patch_<part>``, so those are dropped."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {key: value for key, value in state.items() if key.partition(".lora_patch_")[2].count(".") <= 1}


# ---------------------------------------------------------------------------------------------------------- saving
def _patched_layer_names(module: nn.Module, adapter_name: str) -> list[str]:
    _, wrappers = _canonical_layers(module)
    return sorted(
        name
        for name, wrapper in wrappers.items()
        if isinstance(wrapper, GatedLoraLayer) and adapter_name in wrapper.lora_patch_A
    )


def _fsync(path: str) -> None:
    if os.name == "nt" and os.path.isdir(path):  # directories cannot be opened on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, allow_nan=False))


def _remove_siblings(directory: str, kind: str) -> None:
    """Remove ``<directory>.<kind>-*`` directories left by earlier (crashed) saves."""
    parent, base = os.path.split(directory)
    pattern = re.compile(re.escape(base) + r"\." + kind + r"-[A-Za-z0-9_]+")
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if pattern.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


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


def save_patch(
    model: peft.PeftModel, directory: str | os.PathLike, adapter_name: str = "default", metadata: dict | None = None
) -> str:
    """Save the lora-patch adapter ``adapter_name`` of ``model`` (a ``peft.PeftModel``) to ``directory``, atomically.

    Writes ``adapter_config.json`` (with ``base_fingerprint``), ``adapter_model.safetensors`` (provenance in its
    metadata) and ``lora_patch.json`` (``base_fingerprint``, ``package_version``, ``format_version``,
    ``target_modules``, ``created``, and ``training`` = ``metadata`` when given; it must be JSON-serialisable) into
    ``<directory>.tmp-<random>``, then swaps it into place (see the module docstring for the crash guarantees). An
    existing patch at ``directory`` is replaced as a whole; a non-empty directory that is not a patch is refused.
    Returns the absolute path of the directory. Raises ``ValueError`` if the adapter is merged (unmerge it first).
    """
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

    module = _inner_module(model)
    targets = _patched_layer_names(module, adapter_name)
    if not targets:
        raise ValueError(f"Adapter {adapter_name!r} is not attached to any layer of the model; nothing to save.")
    layers, wrappers = _canonical_layers(module)
    fingerprint = _fingerprint(layers, wrappers, targets)
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

    directory = os.path.abspath(os.fspath(directory))
    _check_destination(directory)
    parent, base = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    _remove_siblings(directory, "tmp")
    tmp = tempfile.mkdtemp(prefix=base + ".tmp-", dir=parent)
    try:
        from .training.checkpoint import save_patch_files

        save_patch_files(model, adapter_name, tmp)
        config_path, weights_path = os.path.join(tmp, CONFIG_NAME), os.path.join(tmp, WEIGHTS_NAME)
        if not (os.path.isfile(config_path) and os.path.isfile(weights_path)):
            raise RuntimeError(f"peft's save_pretrained did not write {CONFIG_NAME} and {WEIGHTS_NAME} in {tmp!r}.")
        with open(config_path, encoding="utf-8") as f:
            saved_config = json.load(f)
        saved_config["base_fingerprint"] = fingerprint
        _write_json(config_path, saved_config)

        with safetensors.safe_open(weights_path, framework="pt") as f:
            file_metadata = dict(f.metadata() or {})
            own = set(_adapter_state(model, adapter_name))
            tensors = {key: f.get_tensor(key) for key in f.keys() if key in own}  # noqa: SIM118 - not a dict
        file_metadata.update({key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                              for key, value in info.items()})
        file_metadata["format_version"] = str(FORMAT_VERSION)
        partial = weights_path + ".partial"
        safetensors.torch.save_file(tensors, partial, metadata=file_metadata)
        os.replace(partial, weights_path)
        _write_json(os.path.join(tmp, SIDECAR_NAME), info)
        for name in os.listdir(tmp):
            _fsync(os.path.join(tmp, name))
        _fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if os.path.lexists(directory):
        old = tempfile.mkdtemp(prefix=base + ".old-", dir=parent)
        os.rmdir(old)  # only the unique name is wanted
        os.replace(directory, old)
        try:
            os.replace(tmp, directory)
        except BaseException:
            os.replace(old, directory)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
        _fsync(parent)
    _remove_siblings(directory, "old")
    return directory


# --------------------------------------------------------------------------------------------------------- reading
def _read_json_file(path: str, error: type[PatchLoadError], what: str) -> Any:
    try:
        size = os.path.getsize(path)
        if size > _MAX_JSON_BYTES:
            raise error(f"{path}: {size} bytes is too large for {what}; the file is not a patch file.")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise PatchFileError(f"{path}: cannot be read ({_one_line(exc)}).") from exc

    def reject_constant(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(
            f"{path}: is not valid JSON ({_one_line(exc)}); the file is corrupt or was edited: re-download or re-save "
            "the patch."
        ) from exc


def read_patch_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``lora_patch.json`` provenance of the patch directory ``path`` (``{}`` for patches saved by plain peft).

    Raises :class:`PatchFileError` if the file is not a JSON object or was written by a newer format version.
    """
    file = os.path.join(os.fspath(path), SIDECAR_NAME)
    if not os.path.lexists(file):
        return {}
    if not os.path.isfile(file):
        raise PatchFileError(f"{file}: is not a regular file; remove it or re-save the patch.")
    info = _read_json_file(file, PatchFileError, "the patch provenance")
    if not isinstance(info, dict):
        raise PatchFileError(f"{file}: must hold a JSON object, got {type(info).__name__}; re-save the patch.")
    version = info.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PatchFileError(f"{file}: format_version={version!r} is not a positive integer; re-save the patch.")
    if version > FORMAT_VERSION:
        raise PatchFileError(
            f"{file}: format_version {version} is newer than this lora-patch-adapters ({__version__}, format "
            f"{FORMAT_VERSION}); upgrade lora-patch-adapters to load this patch."
        )
    fingerprint = info.get("base_fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, str) and _FINGERPRINT_RE.fullmatch(fingerprint)):
        raise PatchFileError(f"{file}: base_fingerprint={fingerprint!r} is not 'sha256:<64 hex digits>'.")
    return info


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(LoraPatchConfig)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_names(value: Any, allow_regex: bool) -> bool:
    if value is None or (allow_regex and isinstance(value, str)):
        return True
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "r": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "lora_alpha": (_is_number, "a finite number"),
    "gate_init": (_is_number, "a finite number"),
    "scaling": (lambda v: isinstance(v, str), "a string"),
    "gate": (lambda v: isinstance(v, str), "a string"),
    "init_weights": (lambda v: isinstance(v, str), "a string"),
    "forward_mode": (lambda v: isinstance(v, str), "a string"),
    "include_linear": (lambda v: isinstance(v, bool), "true or false"),
    "inference_mode": (lambda v: isinstance(v, bool), "true or false"),
    "target_modules": (lambda v: _is_names(v, True), "null, a regex string or a list of module names"),
    "exclude_modules": (lambda v: _is_names(v, True), "null, a regex string or a list of module names"),
    "modules_to_save": (lambda v: _is_names(v, False), "null or a list of module names"),
    "base_fingerprint": (
        lambda v: v is None or (isinstance(v, str) and _FINGERPRINT_RE.fullmatch(v) is not None),
        "null or 'sha256:<64 hex digits>'",
    ),
}


def _read_config(path: str) -> tuple[LoraPatchConfig, dict[str, Any]]:
    file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(file):
        nested = [
            d for d in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, d, CONFIG_NAME))
        ] if os.path.isdir(path) else []
        hint = f" (found one in the sub-folder {nested[0]!r}: pass that directory)" if nested else ""
        raise PatchFileError(
            f"{file}: missing{hint}; a patch directory holds {CONFIG_NAME} and {WEIGHTS_NAME} (save one with "
            "lora_patch_adapters.patch_io.save_patch)."
        )
    data = _read_json_file(file, PatchConfigError, "an adapter config")
    if not isinstance(data, dict):
        raise PatchConfigError(f"{file}: must hold a JSON object, got {type(data).__name__}; re-save the patch.")
    peft_type = data.get("peft_type")
    if peft_type != PEFT_TYPE_NAME:
        raise PatchConfigError(
            f"{file}: peft_type={peft_type!r}, not {PEFT_TYPE_NAME!r}: this is not a lora-patch adapter (load other "
            "PEFT adapters with peft.PeftModel.from_pretrained)."
        )
    for key, (check, expected) in _FIELD_CHECKS.items():
        if key in data and not check(data[key]):
            raise PatchConfigError(f"{file}: {key}={data[key]!r} is invalid, it must be {expected}; re-save the patch.")
    for key in ("target_modules", "exclude_modules"):
        if isinstance(data.get(key), str):
            try:
                re.compile(data[key])
            except re.error as exc:
                raise PatchConfigError(f"{file}: {key}={data[key]!r} is not a valid regex ({exc}).") from exc
    unknown = sorted(set(data) - _CONFIG_FIELDS)
    if unknown:
        warnings.warn(
            f"{file}: ignoring unknown config field(s) {unknown} (written by a newer version?).", stacklevel=3
        )
    known = {key: value for key, value in data.items() if key in _CONFIG_FIELDS}
    try:
        config = LoraPatchConfig(**known)
    except (TypeError, ValueError) as exc:
        raise PatchConfigError(f"{file}: {_one_line(exc)}") from exc
    return config, known


# -------------------------------------------------------------------------------------------------- the load target
@dataclasses.dataclass
class _Target:
    module: nn.Module  # the generator module (patched in place)
    peft_model: peft.PeftModel | None  # set when adding an adapter to an existing PeftModel


def _load_target(model_or_editor: Any, adapter_name: str) -> _Target:
    from .generators.base import Editor

    obj = model_or_editor.generator if isinstance(model_or_editor, Editor) else model_or_editor
    if isinstance(obj, peft.PeftModel):
        others = {name: type(c).__name__ for name, c in obj.peft_config.items() if not isinstance(c, LoraPatchConfig)}
        if others or not isinstance(obj.base_model, BaseTuner):
            raise PatchLoadError(
                f"The PeftModel carries adapters of other PEFT methods ({others}); a lora-patch can only be added to a "
                "PeftModel of lora-patch adapters: unload() it first."
            )
        if adapter_name in obj.peft_config:
            raise PatchLoadError(
                f"The model already has an adapter named {adapter_name!r}; pass another adapter_name, or remove it "
                f"with model.delete_adapter({adapter_name!r})."
            )
        return _Target(_inner_module(obj), obj)
    if isinstance(obj, BaseTuner):
        raise PatchLoadError("Pass the peft.PeftModel (or its base module), not its tuner (PeftModel.base_model).")
    if not isinstance(obj, nn.Module):
        raise TypeError(
            f"load_patch expects an nn.Module, an Editor or a peft.PeftModel, got {type(model_or_editor).__name__}."
        )
    tuned = [name for name, m in obj.named_modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))]
    if tuned:
        raise PatchLoadError(
            f"The module already carries PEFT adapter layers (e.g. {tuned[0]!r}); to add a patch, pass the PeftModel "
            "returned when the first one was loaded, or unload() that one first."
        )
    return _Target(obj, None)


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in text
        or text.count("/") > 1
        or (len(text) > 1 and text[1] == ":")
    )


def _patch_dir(path_or_repo_id: Any, revision: str | None, token: Any, local_files_only: bool) -> str:
    path = os.fspath(path_or_repo_id)
    if os.path.isdir(path):
        return path
    if os.path.lexists(path):
        raise PatchFileError(
            f"{path}: is a file, not a patch directory; pass the directory holding {CONFIG_NAME} and {WEIGHTS_NAME}."
        )
    if isinstance(path_or_repo_id, os.PathLike) or _looks_like_path(path):
        raise PatchFileError(f"{path}: no such patch directory.")
    try:
        hub = importlib.import_module(f"{__package__}.hub")
    except ModuleNotFoundError as exc:
        raise PatchFileError(
            f"{path}: is not a local directory, and Hub support (lora_patch_adapters.hub) is unavailable ({exc})."
        ) from exc
    return os.fspath(hub.pull_patch(path, revision=revision, token=token, local_files_only=local_files_only))


# ------------------------------------------------------------------------------------------------------ validation
def _meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers live on the meta device (no data copied)."""
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for tensor in sub.parameters(recurse=False):
            if id(tensor) not in memo:
                memo[id(tensor)] = nn.Parameter(torch.empty_like(tensor, device="meta"), tensor.requires_grad)
        for tensor in sub.buffers(recurse=False):
            if id(tensor) not in memo:
                memo[id(tensor)] = torch.empty_like(tensor, device="meta")
    return copy.deepcopy(module, memo)


def _expected_tensors(target: _Target, config: LoraPatchConfig, adapter_name: str, file: str) -> dict[str, Any]:
    """{key: meta tensor} that peft saves for this patch on this model: the patch injected into a meta copy."""
    shadow_config = copy.deepcopy(config)
    shadow_config.base_fingerprint = None
    shadow_config.inference_mode = True
    token = _FINGERPRINT_CHECKED.set(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if target.peft_model is None:
                shadow = peft.PeftModel(_meta_copy(target.module), shadow_config, adapter_name)
            else:
                shadow = _meta_copy(target.peft_model)
                shadow.add_adapter(adapter_name, shadow_config)
            return _adapter_state(shadow, adapter_name)
    except Exception as exc:
        raise PatchConfigError(f"{file}: the patch cannot be applied to this model: {_one_line(exc)}") from exc
    finally:
        _FINGERPRINT_CHECKED.reset(token)


def _check_targets(module: nn.Module, config: LoraPatchConfig, file: str) -> list[str]:
    layers, _ = _canonical_layers(module)
    if isinstance(config.target_modules, list):
        for entry in config.target_modules:
            if not any(name == entry or name.endswith("." + entry) for name in layers):
                raise PatchConfigError(
                    f"{file}: target module {_name(entry)} does not exist in the model; the patch was made for another "
                    "architecture (or its config was edited)."
                )
    names = _resolve_targets(module, config)
    if not names:
        raise PatchConfigError(
            f"{file}: target_modules={config.target_modules!r} matches no layer of the model; the patch was made for "
            "another architecture (or its config was edited)."
        )
    for name in names:
        layer = layers[name]
        wrapper = wrapper_for(layer)
        if wrapper is None:
            raise PatchConfigError(
                f"{file}: target module {name!r} is of type {type(layer).__name__}; lora-patch only patches "
                "nn.Conv2d, nn.ConvTranspose2d and nn.Linear layers."
            )
        if getattr(layer, "groups", 1) != 1 or (wrapper is ConvTranspose2d and layer.padding_mode != "zeros"):
            raise PatchConfigError(
                f"{file}: target module {name!r} is a grouped or non-zero-padded convolution, which lora-patch cannot "
                "patch."
            )
    return names


def _check_fingerprint(path: str, recorded: dict[str, str], module: nn.Module, names: list[str]) -> str | None:
    opt_out = "pass allow_fingerprint_mismatch=True to load it anyway"
    if not recorded:
        warnings.warn(
            f"{path}: the patch records no base fingerprint (saved with plain peft save_pretrained?), so it cannot "
            "be checked against this model; re-save it with lora_patch_adapters.patch_io.save_patch.",
            MissingFingerprintWarning,
            stacklevel=3,
        )
        return None
    values = set(recorded.values())
    if len(values) > 1:
        listing = ", ".join(f"{where}: {value}" for where, value in sorted(recorded.items()))
        raise FingerprintMismatchError(
            f"{path}: the patch records conflicting base fingerprints ({listing}): its files were edited or mixed "
            f"from different patches; re-save it, or {opt_out}.",
            min(values),
            None,
        )
    (expected,) = values
    layers, wrappers = _canonical_layers(module)
    try:
        actual = _fingerprint(layers, wrappers, names)
    except ValueError as exc:
        raise FingerprintMismatchError(
            f"{path}: cannot check the base fingerprint ({_one_line(exc)}); {opt_out}.", expected, None
        ) from exc
    if actual != expected:
        where = next(iter(sorted(recorded)))
        raise FingerprintMismatchError(
            f"{os.path.join(path, where)}: the patch was saved for base weights {expected}, but this model's "
            f"{len(names)} targeted layers give {actual}: it belongs to a different base model (or other weights "
            f"or dtype). Load it on the base model it was trained for, or {opt_out}.",
            expected,
            actual,
        )
    return actual


class _WeightsReader:
    """The tensors of a patch's weights file: safetensors (header parsed up front), or a trusted pickle."""

    def __init__(self, path: str, trust_pickle: bool) -> None:
        self.metadata: dict[str, str] = {}
        self._handle: Any = None
        self._tensors: dict[str, torch.Tensor] | None = None
        file = os.path.join(path, WEIGHTS_NAME)
        if os.path.lexists(file):
            self.file = file
            self._open_safetensors(file)
            return
        pickles = sorted(name for name in os.listdir(path) if name.endswith(PICKLE_SUFFIXES))
        if not pickles:
            raise PatchFileError(f"{file}: missing; a patch directory holds {CONFIG_NAME} and {WEIGHTS_NAME}.")
        if not trust_pickle:
            raise UnsafePatchFileError(
                f"{os.path.join(path, pickles[0])}: the weights are pickle file(s) ({', '.join(pickles)}) and there is "
                f"no {WEIGHTS_NAME}; pickle can run code when loaded, so it is refused. Convert it to safetensors on "
                "a trusted machine, or pass trust_pickle=True to read it with torch.load(weights_only=True)."
            )
        chosen = next((name for name in PICKLE_WEIGHTS if name in pickles), None)
        if chosen is None:
            raise PatchFileError(
                f"{os.path.join(path, pickles[0])}: not a patch weights file; expected {WEIGHTS_NAME} (or, with "
                f"trust_pickle=True, one of {', '.join(PICKLE_WEIGHTS)})."
            )
        self.file = os.path.join(path, chosen)
        self._load_pickle(self.file)

    def _open_safetensors(self, file: str) -> None:
        if not os.path.isfile(file):
            raise PatchFileError(f"{file}: is not a regular file; re-download or re-save the patch.")
        try:
            self._handle = safetensors.safe_open(file, framework="pt").__enter__()
            self.metadata = dict(self._handle.metadata() or {})
            self._header = {}
            for key in self._handle.keys():  # noqa: SIM118 - safe_open is not a dict
                piece = self._handle.get_slice(key)
                self._header[key] = (str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
        except Exception as exc:
            raise PatchFileError(
                f"{file}: is not a valid safetensors file ({_one_line(exc)}); it is truncated or corrupt: re-download "
                "or re-save the patch."
            ) from exc

    def _load_pickle(self, file: str) -> None:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafePatchFileError(
                f"{file}: torch.load(weights_only=True) refused it: it is not a plain tensor pickle (it references "
                "code or other objects, or is corrupt); do not use this file."
            ) from exc
        except Exception as exc:
            raise PatchFileError(f"{file}: cannot be read ({_one_line(exc)}); it is truncated or corrupt.") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise PatchFileError(f"{file}: does not hold a {{name: tensor}} dict; it is not a patch weights file.")
        self._tensors = loaded
        reverse = {dtype: code for code, dtype in ACCEPTED_DTYPES.items()}
        self._header = {k: (reverse.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in loaded.items()}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
            self._handle = None

    @property
    def header(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return self._header

    def tensor(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._handle.get_tensor(key)
        except Exception as exc:
            raise PatchFileError(f"{self.file}: tensor {key!r} cannot be read ({_one_line(exc)}).") from exc


def _check_tensors(reader: _WeightsReader, expected: dict[str, Any], config: LoraPatchConfig) -> dict[str, Any]:
    file, header = reader.file, reader.header
    extra = sorted(set(header) - set(expected))
    missing = sorted(set(expected) - set(header))
    if extra or missing:
        parts = [
            f"{what} tensor {_name(names[0])}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")
            for what, names in (("unexpected", extra), ("missing", missing))
            if names
        ]
        raise PatchShapeError(
            f"{file}: {' and '.join(parts)}; the file does not match its config and this model (edited, truncated "
            "by a tool, or from another patch): re-download or re-save the patch."
        )
    for key in sorted(expected):
        dtype_code, shape = header[key]
        want = tuple(expected[key].shape)
        if dtype_code not in ACCEPTED_DTYPES:
            raise PatchShapeError(
                f"{file}: tensor {key!r} has dtype {dtype_code}; patch tensors must be float16, bfloat16, float32 or "
                "float64."
            )
        if shape != want:
            raise PatchShapeError(
                f"{file}: tensor {key!r} has shape {list(shape)}, expected {list(want)} for this model and rank "
                f"r={config.r}; the patch does not fit this model, or its files were edited."
            )
    tensors = {}
    for key in sorted(expected):
        value = reader.tensor(key)
        if not torch.isfinite(value).all():
            raise NonFinitePatchError(
                f"{file}: tensor {key!r} holds NaN or infinite values; the patch is broken (e.g. its training "
                "diverged) and would corrupt every output: retrain it or use an earlier checkpoint."
            )
        cast = value.to(expected[key].dtype).contiguous()
        if not torch.isfinite(cast).all():
            raise NonFinitePatchError(
                f"{file}: tensor {key!r} overflows when cast from {value.dtype} to the model's {cast.dtype}; the patch "
                "is broken."
            )
        tensors[key] = cast
    return tensors


@dataclasses.dataclass
class _Checked:
    path: str
    config: LoraPatchConfig
    config_data: dict[str, Any]
    targets: list[str]
    tensors: dict[str, torch.Tensor]
    weights_file: str
    recorded_fingerprint: str | None
    info: dict[str, Any]


def _validate(
    target: _Target, path: str, adapter_name: str, allow_fingerprint_mismatch: bool, trust_pickle: bool
) -> _Checked:
    config, config_data = _read_config(path)
    config_file = os.path.join(path, CONFIG_NAME)
    info = read_patch_info(path)
    targets = _check_targets(target.module, config, config_file)
    reader = _WeightsReader(path, trust_pickle)
    try:
        recorded = {}
        if config.base_fingerprint:
            recorded[CONFIG_NAME] = config.base_fingerprint
        if info.get("base_fingerprint"):
            recorded[SIDECAR_NAME] = info["base_fingerprint"]
        if reader.metadata.get("base_fingerprint"):
            recorded[os.path.basename(reader.file)] = reader.metadata["base_fingerprint"]
        if not allow_fingerprint_mismatch:
            _check_fingerprint(path, recorded, target.module, targets)
        expected = _expected_tensors(target, config, adapter_name, config_file)
        tensors = _check_tensors(reader, expected, config)
    finally:
        reader.close()
    return _Checked(
        path=path,
        config=config,
        config_data=config_data,
        targets=targets,
        tensors=tensors,
        weights_file=reader.file,
        recorded_fingerprint=next(iter(recorded.values()), None),
        info=info,
    )


def validate_patch(
    model_or_editor: Any,
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    adapter_name: str = "default",
    allow_fingerprint_mismatch: bool = False,
    trust_pickle: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """Run every check of :func:`load_patch` without modifying the model; raise the same errors.

    Returns ``{"path", "config" (the adapter_config.json fields), "target_modules", "base_fingerprint" (recorded,
    or None), "weights_file", "tensors" (count), "info" (lora_patch.json)}``.
    """
    target = _load_target(model_or_editor, adapter_name)
    path = _patch_dir(path_or_repo_id, revision, token, local_files_only)
    checked = _validate(target, path, adapter_name, allow_fingerprint_mismatch, trust_pickle)
    return {
        "path": os.path.abspath(path),
        "config": checked.config_data,
        "target_modules": checked.targets,
        "base_fingerprint": checked.recorded_fingerprint,
        "weights_file": checked.weights_file,
        "tensors": len(checked.tensors),
        "info": checked.info,
    }


# --------------------------------------------------------------------------------------------------------- loading
class _Snapshot:
    """Enough of a model's state to undo a failed peft load: module tree, requires_grad, modes, adapter state."""

    def __init__(self, target: _Target) -> None:
        root = target.peft_model if target.peft_model is not None else target.module
        self.target = target
        self.children = [(m, name, child) for m in root.modules() for name, child in m._modules.items()]
        self.grads = [(p, p.requires_grad) for p in root.parameters()]
        self.modes = [(m, m.training) for m in root.modules()]
        self.layer_state = [
            (m, m._active_adapter, m._disable_adapters, list(m.merged_adapters))
            for m in root.modules()
            if isinstance(m, BaseTunerLayer)
        ]
        self.module_dict = dict(target.module.__dict__)
        self.tuner_active = target.peft_model.base_model.active_adapter if target.peft_model is not None else None

    def restore(self, adapter_name: str) -> None:
        pm = self.target.peft_model
        if pm is not None and adapter_name in pm.peft_config:
            try:
                pm.delete_adapter(adapter_name)
            except Exception:  # noqa: BLE001 - best effort; the layers are cleaned below
                pm.peft_config.pop(adapter_name, None)
        for m in list(self.target.module.modules()):
            if isinstance(m, BaseTunerLayer) and adapter_name in getattr(m, "lora_patch_A", {}):
                with contextlib.suppress(Exception):
                    m.delete_adapter(adapter_name)
        for parent, name, child in self.children:
            if parent._modules.get(name) is not child:
                parent._modules[name] = child
        for param, flag in self.grads:
            param.requires_grad_(flag)
        for module, mode in self.modes:
            module.training = mode
        for layer, active, disabled, merged in self.layer_state:
            layer._active_adapter = active
            layer._disable_adapters = disabled
            layer.merged_adapters[:] = merged
        state = self.target.module.__dict__
        for key in set(state) - set(self.module_dict):
            if not key.startswith("_"):
                del state[key]
        if "peft_config" in self.module_dict:
            state["peft_config"] = self.module_dict["peft_config"]
        if pm is not None:
            pm.base_model.active_adapter = self.tuner_active


def _stage(checked: _Checked, directory: str) -> None:
    _write_json(os.path.join(directory, CONFIG_NAME), checked.config_data)
    safetensors.torch.save_file(checked.tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})


def load_patch(
    model_or_editor: Any,
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    adapter_name: str = "default",
    is_trainable: bool = False,
    allow_fingerprint_mismatch: bool = False,
    trust_pickle: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> peft.PeftModel:
    """Validate a patch against ``model_or_editor``, then load it; returns the ``peft.PeftModel``.

    ``model_or_editor``: an ``nn.Module`` (patched in place and wrapped), an ``Editor`` (its ``generator`` is patched
    in place, so ``editor.edit`` runs the patched network), or a ``peft.PeftModel`` of lora-patch adapters (the patch
    is added as ``adapter_name``; as with peft's ``load_adapter``, call ``set_adapter`` to activate it).
    ``path_or_repo_id``: a patch directory, or a Hub repo id fetched with ``lora_patch_adapters.hub.pull_patch``
    (``revision``, ``token`` and ``local_files_only`` are passed on; they are ignored for local directories).

    Nothing is modified unless every check passes: :class:`PatchFileError` (missing, truncated or corrupt files),
    :class:`PatchConfigError` (invalid config, target layers missing or unsupported), :class:`PatchShapeError`
    (missing, extra, misnamed tensors; wrong shapes or dtypes), :class:`NonFinitePatchError`,
    :class:`FingerprintMismatchError` (saved for other base weights; ``allow_fingerprint_mismatch=True`` skips the
    check; a patch without fingerprint only warns, :class:`MissingFingerprintWarning`) and
    :class:`UnsafePatchFileError` (pickle weights without ``trust_pickle=True``). All are :class:`PatchLoadError`
    (a ``ValueError``).
    """
    target = _load_target(model_or_editor, adapter_name)
    path = _patch_dir(path_or_repo_id, revision, token, local_files_only)
    checked = _validate(target, path, adapter_name, allow_fingerprint_mismatch, trust_pickle)

    snapshot = _Snapshot(target)
    token_var = _FINGERPRINT_CHECKED.set(True)
    staged = tempfile.mkdtemp(prefix="lora-patch-load-")
    try:
        _stage(checked, staged)
        if target.peft_model is None:
            result = peft.PeftModel.from_pretrained(
                target.module, staged, adapter_name=adapter_name, is_trainable=is_trainable
            )
        else:
            result = target.peft_model
            result.load_adapter(staged, adapter_name=adapter_name, is_trainable=is_trainable)
        loaded = _adapter_state(result, adapter_name)
        for key, value in checked.tensors.items():
            if key not in loaded or not torch.equal(loaded[key].detach().cpu(), value):
                raise PatchLoadError(f"{checked.weights_file}: tensor {key!r} was not loaded as validated.")
        if set(loaded) != set(checked.tensors):
            raise PatchLoadError(f"{checked.weights_file}: peft loaded other tensors than the validated ones.")
    except BaseException as exc:
        snapshot.restore(adapter_name)
        if isinstance(exc, PatchLoadError) or not isinstance(exc, Exception):
            raise
        raise PatchLoadError(
            f"{path}: loading failed after validation ({type(exc).__name__}: {_one_line(exc)}); the model was "
            "restored unchanged."
        ) from exc
    finally:
        _FINGERPRINT_CHECKED.reset(token_var)
        shutil.rmtree(staged, ignore_errors=True)
    return result


__all__ = [
    "ACCEPTED_DTYPES",
    "ALLOW_MISMATCH_ENV",
    "FORMAT_VERSION",
    "FingerprintMismatchError",
    "MissingFingerprintWarning",
    "NonFinitePatchError",
    "PatchConfigError",
    "PatchFileError",
    "PatchLoadError",
    "PatchShapeError",
    "UnsafePatchFileError",
    "base_fingerprint",
    "load_patch",
    "read_patch_info",
    "save_patch",
    "validate_patch",
    "verify_injection_fingerprint",
]
