"""Reading weights for forensics -- checkpoints (safetensors, or ``torch.load(weights_only=True)``), state dicts,
modules, patch directories -- into canonical ``{name: tensor}`` dicts, and the references a comparison is made
against (weights, a fingerprint, or a patch that records one)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._checks import one_line
from ..generators.base import Editor
from ..generators.checkpoints import CheckpointError, identify_layout, read_checkpoint
from ..patches.format import CONFIG_NAME as PATCH_CONFIG
from ..patches.format import SIDECAR_NAME as PATCH_SIDECAR
from ..tuner.fingerprint import FINGERPRINT_RE, hash_layers
from .report import ADAPTER_MARKERS, GENERATOR_KEYS, ForensicsError, Source


def describe_source(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__}>"


def _canonical_name(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    return ".".join(part for part in name.split(".") if part != "base_layer")


def _tensor_items(mapping: Mapping) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in mapping.items() if isinstance(v, torch.Tensor)}


def _holds_tensors(mapping: Mapping, depth: int = 3) -> bool:
    for value in mapping.values():
        if isinstance(value, torch.Tensor):
            return True
        if depth and isinstance(value, Mapping) and _holds_tensors(value, depth - 1):
            return True
    return False


def _state_dict_of(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The generator state dict inside a loaded checkpoint object (plain, or official dict-of-dicts formats)."""
    if not isinstance(obj, Mapping):
        raise ForensicsError(f"{where} holds a {type(obj).__name__}, not a state dict of named tensors.")
    nested = {str(k): v for k, v in obj.items() if isinstance(v, Mapping) and _holds_tensors(v)}
    if not nested:
        tensors = _tensor_items(obj)
        if not tensors:
            raise ForensicsError(f"{where} holds no tensors; pass a checkpoint with the generator weights.")
        return tensors
    for key in GENERATOR_KEYS:
        if key in nested:
            return _state_dict_of(nested[key], f"{where}[{key!r}]")
    known = {k: identify_layout(_tensor_items(v)) for k, v in nested.items()}
    known = {k: layout for k, layout in known.items() if layout}
    if len(known) == 1:
        return _tensor_items(nested[next(iter(known))])
    raise ForensicsError(
        f"{where} holds several dicts ({', '.join(repr(k) for k in sorted(nested))}) and none is a generator key "
        f"({', '.join(repr(k) for k in GENERATOR_KEYS)}) or {'more than one' if known else 'any'} known generator "
        "layout; re-save the generator's state dict alone (torch.save(G.state_dict(), path))."
    )


def _read_file(path: str, role: str) -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise ForensicsError(
            f"{role} file {path!r} not found; pass a checkpoint (.safetensors, .pt, .pth, .ckpt)"
            + (", a 'sha256:...' fingerprint or a patch directory." if role == "reference" else ".")
        )
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, name)) for name in (PATCH_SIDECAR, PATCH_CONFIG)):
            raise ForensicsError(
                f"{role} {path!r} is a patch directory: it holds adapter weights only; pass the generator's "
                "checkpoint" + (" (a patch directory can only be the reference)." if role == "model" else ".")
            )
        raise ForensicsError(f"{role} {path!r} is a directory; pass a checkpoint file.")
    try:
        obj = read_checkpoint(path)
    except CheckpointError as exc:
        if isinstance(exc.__cause__, pickle.UnpicklingError):
            raise ForensicsError(
                f"{role} file {path!r} holds pickled Python objects besides tensors and is not read for safety "
                "(torch.load(weights_only=True) refused it); re-save only the state dict "
                "(torch.save(model.state_dict(), path)) or convert it to safetensors."
            ) from exc
        raise ForensicsError(f"{role}: {one_line(exc)}") from exc
    return _state_dict_of(obj, f"{role} file {path!r}")


def _raw_weights(source: Any, role: str) -> dict[str, torch.Tensor]:
    if isinstance(source, Editor):
        source = source.generator
    if isinstance(source, nn.Module):
        return {k: v.detach() for k, v in source.state_dict().items()}
    if isinstance(source, Mapping):
        return _state_dict_of(source, f"the {role} mapping")
    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, str) and source.startswith("sha256:"):
            raise ForensicsError(
                f"the {role} must be weights (a module, a state dict or a checkpoint file), not a fingerprint."
            )
        return _read_file(os.fspath(source), role)
    raise TypeError(
        f"{role}: expected an nn.Module, an Editor, a peft.PeftModel, a mapping of tensors or a file path, got "
        f"{type(source).__name__}."
    )


def read_weights(source: Source, role: str = "model") -> dict[str, torch.Tensor]:
    """The named tensors of ``source`` with canonical names.

    ``source``: an ``nn.Module``, an ``Editor`` (its ``generator``), a ``peft.PeftModel``, a mapping of tensors, or
    a checkpoint path (``.safetensors``; anything else with ``torch.load(weights_only=True)``), including official
    formats that hold the generator under a key (``'gen_test'``, ``'gen'``, ``'G'``) or as the one nested dict of a
    known layout. Canonical names drop a leading ``base_model.model.`` and every ``base_layer`` segment (peft
    wrappers) and a ``module.`` prefix shared by all keys (DataParallel). Adapter tensors keep their names (see
    :func:`split_adapters`). ``role`` ("model" / "reference") only words the error messages.
    """
    raw = _raw_weights(source, role)
    if raw and all(k.startswith("module.") for k in raw):
        raw = {k[len("module."):]: v for k, v in raw.items()}
    weights: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = _canonical_name(key)
        if name in weights:
            raise ForensicsError(f"{role}: tensors {key!r} and another one both map to {name!r}.")
        weights[name] = value
    return weights


def _is_adapter(name: str) -> bool:
    return any(part in ADAPTER_MARKERS for part in name.split("."))


def split_adapters(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(base tensors, adapter tensors)`` of canonical ``weights``."""
    base = {k: v for k, v in weights.items() if not _is_adapter(k)}
    adapters = {k: v for k, v in weights.items() if _is_adapter(k)}
    return base, adapters


# --------------------------------------------------------------------------------------------------- fingerprints
def weight_layers(weights: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the base layers whose ``.weight`` is 2-D or 4-D (Linear, Conv2d, ConvTranspose2d), sorted.

    ``base_fingerprint(model)`` hashes every Conv2d, ConvTranspose2d and Linear layer; a state dict cannot tell an
    ``nn.Embedding`` (also a 2-D weight) from a Linear, so models with embeddings fingerprint differently here.
    """
    return sorted(
        k[: -len(".weight")]
        for k, v in weights.items()
        if k.endswith(".weight") and v.dim() in (2, 4) and not _is_adapter(k)
    )


def fingerprint_weights(weights: Mapping[str, torch.Tensor], layers: list[str] | None = None) -> str:
    """``"sha256:<hex>"`` of canonical base ``weights``, equal to ``base_fingerprint`` of the model they
    came from for the same layers (``layers=None``: :func:`weight_layers`, i.e. ``target_modules=None``)."""
    names = weight_layers(weights) if layers is None else sorted(layers)
    modules = {
        name: types.SimpleNamespace(weight=weights.get(f"{name}.weight"), bias=weights.get(f"{name}.bias"))
        for name in names
    }
    return hash_layers(modules, {}, names)


@dataclasses.dataclass
class ExpectedReference:
    fingerprint: str
    layers: list[str] | str | None
    kind: str  # "fingerprint" or "patch"


def _patch_reference(path: str) -> ExpectedReference:
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    for name in (PATCH_SIDECAR, PATCH_CONFIG):
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            continue
        try:
            with open(file, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ForensicsError(f"reference {file!r} is not readable JSON ({one_line(exc)}).") from exc
        fingerprint = data.get("base_fingerprint") if isinstance(data, dict) else None
        if fingerprint is None:
            continue
        if not (isinstance(fingerprint, str) and FINGERPRINT_RE.fullmatch(fingerprint)):
            raise ForensicsError(f"reference {file!r}: base_fingerprint={fingerprint!r} is not 'sha256:<64 hex>'.")
        return ExpectedReference(fingerprint, data.get("target_modules"), "patch")
    raise ForensicsError(
        f"reference patch {path!r} records no base_fingerprint (in {PATCH_SIDECAR} or {PATCH_CONFIG}); pass the "
        "base generator's checkpoint as the reference instead."
    )


def expected_reference(reference: Any) -> ExpectedReference | None:
    """The fingerprint a reference records, or None when the reference is weights."""
    if isinstance(reference, str) and reference.startswith("sha256:"):
        if not FINGERPRINT_RE.fullmatch(reference):
            raise ForensicsError(
                f"malformed fingerprint {reference[:90]!r}: expected 'sha256:' and 64 lowercase hex digits, as "
                "printed by lora_patch_adapters.tuner.fingerprint.base_fingerprint(model)."
            )
        return ExpectedReference(reference, None, "fingerprint")
    if isinstance(reference, (str, os.PathLike)):
        path = os.fspath(reference)
        if os.path.basename(path) in (PATCH_SIDECAR, PATCH_CONFIG) or (
            os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in (PATCH_SIDECAR, PATCH_CONFIG))
        ):
            return _patch_reference(path)
    return None


def fingerprint_layers(base: Mapping[str, torch.Tensor], targets: list[str] | str | None) -> list[str]:
    available = weight_layers(base)
    if targets is None:
        return available
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise ForensicsError(f"the reference patch's target_modules={targets!r} is not a valid regex.") from exc
        names = [n for n in available if pattern.fullmatch(n)]
    else:
        names = sorted(set(targets))
        missing = [n for n in names if f"{n}.weight" not in base]
        if missing:
            raise ForensicsError(
                f"the reference patch targets layer {missing[0]!r}, which the model does not have; is it the same "
                "architecture?"
            )
    if not names:
        raise ForensicsError(f"the reference patch's target_modules={targets!r} select no layer of the model.")
    return names

