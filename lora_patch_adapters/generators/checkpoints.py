"""Reading official generator checkpoints safely, and loading them strictly with errors that name the problem.

Files are read with ``torch.load(weights_only=True)`` (no code runs while loading) or as safetensors. Layout checks
compare the file against every known network layout so that a wrong file is named ("this is an AttGAN
inject_layers=1 checkpoint") instead of reported as a list of missing keys.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, Union

import torch
from torch import nn

PathLike = Union[str, os.PathLike]

_LAYOUTS: dict[str, Callable[[], nn.Module]] = {}
_LAYOUT_CACHE: dict[str, dict[str, tuple[int, ...]]] = {}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the requested network."""


def register_layout(name: str, factory: Callable[[], nn.Module]) -> None:
    """Make a network layout known to :func:`identify_layout` (``factory`` builds the network; it is built on the
    meta device, so it costs no memory)."""
    _LAYOUTS[name] = factory
    _LAYOUT_CACHE.pop(name, None)


def layout_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of a registered layout, ``num_batches_tracked`` excluded."""
    if name not in _LAYOUT_CACHE:
        with torch.device("meta"):
            module = _LAYOUTS[name]()
        _LAYOUT_CACHE[name] = {
            k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")
        }
    return _LAYOUT_CACHE[name]


def identify_layout(state_dict: Mapping[str, Any]) -> str | None:
    """The registered layout whose keys and shapes exactly match ``state_dict``, if any."""
    shapes = {
        k: tuple(v.shape)
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and not k.endswith("num_batches_tracked")
    }
    for name in _LAYOUTS:
        if layout_shapes(name) == shapes:
            return name
    return None


def read_checkpoint(path: PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Read a checkpoint file: ``.safetensors`` with safetensors, anything else with
    ``torch.load(weights_only=True)``. Raises :class:`CheckpointError` for a missing, truncated or unsafe file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file not found: {path!r}.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        device = "cpu" if map_location is None else str(map_location)
        try:
            return load_file(path, device=device)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path!r} is not a readable safetensors file ({exc}).") from exc
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path!r} holds Python objects other than tensors and plain containers, which are not loaded for "
            f"safety (weights_only=True). Re-save just the state dict. Details: {exc}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path!r} is not a readable PyTorch checkpoint (truncated or corrupted?): {str(exc).splitlines()[0]}"
        ) from exc


def pick_state_dict(obj: Any, key: str | None, model_name: str, path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object: ``obj[key]`` for dict-of-dicts formats, ``obj`` itself otherwise."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{os.fspath(path)!r} does not hold a state dict (found {type(obj).__name__}).")
    if key is not None:
        if key not in obj:
            nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
            hint = f"; it holds the dicts {nested}" if nested else "; it looks like a plain state dict"
            raise CheckpointError(
                f"{os.fspath(path)!r} is not a {model_name} checkpoint: expected the generator weights under "
                f"key {key!r}{hint}."
            )
        obj = obj[key]
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = {k: v for k, v in obj.items() if isinstance(v, Mapping)}
        known = {k: identify_layout(v) for k, v in nested.items()}
        known = {k: name for k, name in known.items() if name}
        if known:
            detail = "; ".join(f"under {k!r} it holds a checkpoint of {name!r}" for k, name in known.items())
            detail = f" ({detail}: load it with that editor)"
        elif nested:
            detail = f" (it holds the dicts {sorted(nested)}: a training checkpoint of another format?)"
        else:
            detail = ""
        raise CheckpointError(f"{os.fspath(path)!r} is not a plain {model_name} state dict{detail}.")
    return dict(obj)


def _weight_problems(state_dict: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """What makes ``state_dict`` unfit for a model whose own state dict is ``expected``, one entry per key, e.g.
    ``'"main.0.weight": holds NaN (3 of 432 values)'``: NaN or Inf, a value beyond the model's float type (it would
    become Inf), or integer / bool / complex tensors where the model holds float ones (``load_state_dict`` would
    cast them silently). Keys whose model tensor is not floating point (``num_batches_tracked``) are not judged."""
    problems = []
    for key, value in state_dict.items():
        own = expected.get(key)
        if own is None or not own.is_floating_point():
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f'"{key}": a {type(value).__name__} where a float tensor is expected')
            continue
        if not value.is_floating_point():
            kind = "bool" if value.dtype == torch.bool else "complex" if value.is_complex() else "integer"
            problems.append(f'"{key}": {kind} values ({value.dtype}) where float weights are expected')
            continue
        if value.device.type == "meta" or value.numel() == 0:
            continue
        if not bool(torch.isfinite(value).all()):
            counts = {"NaN": int(torch.isnan(value).sum()), "Inf": int(torch.isinf(value).sum())}
            held = " and ".join(f"{name} ({n} of {value.numel()} values)" for name, n in counts.items() if n)
            problems.append(f'"{key}": holds {held}')
        elif torch.finfo(own.dtype).max < torch.finfo(value.dtype).max:  # e.g. float32 file, float16 model
            largest = float(value.detach().abs().max())
            if largest > torch.finfo(own.dtype).max:
                problems.append(f'"{key}": holds {largest:.3g}, beyond {own.dtype} (it would load as Inf)')
    return problems


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], model_name: str, path: PathLike) -> None:
    """``module.load_state_dict(state_dict, strict=True)``, accepting files with or without ``num_batches_tracked``
    buffers, and raising :class:`CheckpointError` that names the file's actual model when the layout differs, or
    the key and the problem when a value is unfit (NaN/Inf, integer or bool where float weights are expected). Every
    check runs before anything is copied: after an error the module is unchanged."""
    own = module.state_dict()
    state = dict(state_dict)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key].clone()
    for key in list(state):
        if key.endswith("num_batches_tracked") and key not in own:
            del state[key]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        actual = identify_layout(state)
        what = f"a checkpoint of {actual!r}" if actual else "not this network's layout"
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if mismatched:
            k = mismatched[0]
            details.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)}, "
                f"expected {tuple(own[k].shape)})"
            )
        hint = f" Load it as {actual!r} instead." if actual else ""
        raise CheckpointError(
            f"{os.fspath(path)!r} does not fit {model_name}: it is {what}; " + "; ".join(details) + "." + hint
        )
    problems = _weight_problems(state, own)
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{os.fspath(path)!r} cannot be loaded into {model_name}: " + "; ".join(problems[:3]) + more
            + ". Nothing was loaded (the model is unchanged); the file is corrupted or not this model's weights."
        )
    module.load_state_dict(state, strict=True)
