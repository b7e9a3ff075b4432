"""Validating a patch against a model before anything is touched: the config, the target layers, the recorded base
fingerprints, and every tensor (see :mod:`~lora_patch_adapters.patches.weights`). :func:`validate_patch` runs the
checks alone; :func:`~lora_patch_adapters.patches.load.load_patch` runs them, then loads."""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from typing import Any

import peft
import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from .._checks import one_line
from ..generators.base import Editor
from ..tuner.config import LoraPatchConfig, weights_digest
from ..tuner.fingerprint import (
    FINGERPRINT_CHECKED,
    RANK_RULE,
    canonical_layers,
    hash_layers,
    inner_module,
    rank_bound,
    resolve_targets,
)
from ..tuner.layer import ConvTranspose2d, wrapper_for
from . import hub
from .errors import (
    FingerprintMismatchError,
    MissingFingerprintError,
    MissingFingerprintWarning,
    PatchConfigError,
    PatchFileError,
    PatchLoadError,
)
from .format import (
    CONFIG_NAME,
    SIDECAR_NAME,
    WEIGHTS_NAME,
    adapter_state,
    check_adapter_name,
    quoted_name,
    read_config,
    read_patch_info,
)
from .weights import WeightsReader, check_tensors


@dataclasses.dataclass
class LoadTarget:
    module: nn.Module  # the generator module (patched in place)
    peft_model: peft.PeftModel | None  # set when adding an adapter to an existing PeftModel


def load_target(model_or_editor: Any, adapter_name: str) -> LoadTarget:
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
        return LoadTarget(inner_module(obj), obj)
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
    return LoadTarget(obj, None)


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in text
        or text.count("/") > 1
        or (len(text) > 1 and text[1] == ":")
    )


def patch_dir(path_or_repo_id: Any, revision: str | None, token: Any, local_files_only: bool) -> str:
    path = os.fspath(path_or_repo_id)
    if os.path.isdir(path):
        return path
    if os.path.lexists(path):
        raise PatchFileError(
            f"{path}: is a file, not a patch directory; pass the directory holding {CONFIG_NAME} and {WEIGHTS_NAME}."
        )
    if isinstance(path_or_repo_id, os.PathLike) or _looks_like_path(path):
        raise PatchFileError(f"{path}: no such patch directory.")
    return os.fspath(hub.pull_patch(path, revision=revision, token=token, local_files_only=local_files_only))


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


def _expected_tensors(target: LoadTarget, config: LoraPatchConfig, adapter_name: str, file: str) -> dict[str, Any]:
    """{key: meta tensor} that peft saves for this patch on this model: the patch injected into a meta copy."""
    shadow_config = copy.deepcopy(config)
    shadow_config.base_fingerprint = None
    shadow_config.base_model_name_or_path = None  # never a Hub lookup for a local patch
    shadow_config.revision = None
    shadow_config.inference_mode = True
    token = FINGERPRINT_CHECKED.set(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if target.peft_model is None:
                shadow = peft.PeftModel(_meta_copy(target.module), shadow_config, adapter_name)
            else:
                shadow = _meta_copy(target.peft_model)
                shadow.add_adapter(adapter_name, shadow_config)
            return adapter_state(shadow, adapter_name)
    except Exception as exc:
        raise PatchConfigError(f"{file}: the patch cannot be applied to this model: {one_line(exc, 240)}") from exc
    finally:
        FINGERPRINT_CHECKED.reset(token)


def _check_targets(module: nn.Module, config: LoraPatchConfig, file: str) -> list[str]:
    layers, _ = canonical_layers(module)
    if isinstance(config.target_modules, list):
        for entry in config.target_modules:
            if not any(name == entry or name.endswith("." + entry) for name in layers):
                raise PatchConfigError(
                    f"{file}: target module {quoted_name(entry)} does not exist in the model; the patch was made for "
                    "another "                    "architecture (or its config was edited)."
                )
    names = resolve_targets(module, config)
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


def _check_rank(module: nn.Module, names: list[str], config: LoraPatchConfig, file: str) -> None:
    """Refuse a rank no targeted layer can use, before any (meta or real) adapter is built: the adapter's memory
    grows with ``r``, and no update ``B @ A`` of a layer has rank above ``min(fan_in, fan_out)``.

    The bound is the largest ``min(fan_in, fan_out)`` over the targeted layers, not the smallest: the paper's patch
    (r 8 on every convolution of StarGAN) legitimately exceeds the 3 output channels of the last convolution, where
    the extra rank is merely unused; above the largest, every layer's extra rank is unused and only memory grows.
    """
    bound, widest = rank_bound(module, names)
    if config.r > bound:
        raise PatchConfigError(
            f"{file}: r={config.r} is larger than any targeted layer can use: the rank of a layer's update is at most "
            f"min(fan_in, fan_out) ({RANK_RULE}), at most {bound} here (layer {widest!r}); the config does not fit "
            "this model or was edited: re-save the patch with r <= that bound."
        )


def _check_fingerprint(
    path: str, recorded: dict[str, str], module: nn.Module, names: list[str], allow_missing: bool
) -> str | None:
    opt_out = "pass allow_fingerprint_mismatch=True to load it anyway"
    if not recorded:
        what = (
            f"{os.path.join(path, CONFIG_NAME)}: the patch records no base fingerprint (not in {CONFIG_NAME}, "
            f"{SIDECAR_NAME} or the weights metadata: saved with plain peft save_pretrained by an older version?), "
            "so it cannot be checked against this model"
        )
        if not allow_missing:
            raise MissingFingerprintError(
                f"{what}; re-save it with lora_patch_adapters.save_patch from the model it was trained on, or pass "
                "allow_missing_fingerprint=True to load it unchecked (with a MissingFingerprintWarning).",
                None,
                None,
            )
        warnings.warn(
            f"{what}; loading it because allow_missing_fingerprint=True; re-save it with "
            "lora_patch_adapters.save_patch.",
            MissingFingerprintWarning,
            stacklevel=4,
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
    layers, wrappers = canonical_layers(module)
    try:
        actual = hash_layers(layers, wrappers, names)
    except ValueError as exc:
        raise FingerprintMismatchError(
            f"{path}: cannot check the base fingerprint ({one_line(exc, 240)}); {opt_out}.", expected, None
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


@dataclasses.dataclass
class CheckedPatch:
    path: str
    config: LoraPatchConfig
    config_data: dict[str, Any]
    targets: list[str]
    tensors: dict[str, torch.Tensor]
    weights_file: str
    recorded_fingerprint: str | None
    info: dict[str, Any]


def _check_weights_digest(config: LoraPatchConfig, config_file: str, weights_file: str) -> None:
    """The weights file must be the one the config was saved beside (``weights_sha256``; None in files written
    before it was recorded): peft's ``save_pretrained`` writes the weights, then the config, in place."""
    if config.weights_sha256 is None or os.path.basename(weights_file) != WEIGHTS_NAME:
        return
    found = weights_digest(weights_file)
    if found != config.weights_sha256:
        raise PatchFileError(
            f"{weights_file}: is not the weights file {config_file} was saved with (its weights_sha256 "
            f"{config.weights_sha256[:12]}..., this file {str(found)[:12]}...): a save interrupted between the two "
            "files, or files of two saves mixed. Re-save the patch, or re-download it (if you rewrote the weights "
            "file on purpose, set weights_sha256 to null in the config)."
        )


def validate(
    target: LoadTarget,
    path: str,
    adapter_name: str,
    allow_fingerprint_mismatch: bool,
    trust_pickle: bool,
    allow_missing_fingerprint: bool = False,
) -> CheckedPatch:
    """Every check of a patch directory against ``target``; the config is bounded by the target layers (rank, scale,
    task type) before any adapter is built, and the returned tensors are private copies (see ``check_tensors``)."""
    config, config_data = read_config(path)
    config_file = os.path.join(path, CONFIG_NAME)
    info = read_patch_info(path)
    targets = _check_targets(target.module, config, config_file)
    _check_rank(target.module, targets, config, config_file)
    reader = WeightsReader(path, trust_pickle)
    try:
        recorded = {}
        if config.base_fingerprint:
            recorded[CONFIG_NAME] = config.base_fingerprint
        if info.get("base_fingerprint"):
            recorded[SIDECAR_NAME] = info["base_fingerprint"]
        if reader.metadata.get("base_fingerprint"):
            recorded[os.path.basename(reader.file)] = reader.metadata["base_fingerprint"]
        if not allow_fingerprint_mismatch:
            _check_fingerprint(path, recorded, target.module, targets, allow_missing_fingerprint)
        expected = _expected_tensors(target, config, adapter_name, config_file)
        tensors = check_tensors(reader, expected, config)
    finally:
        reader.close()
    _check_weights_digest(config, config_file, reader.file)
    return CheckedPatch(
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
    allow_missing_fingerprint: bool = False,
) -> dict[str, Any]:
    """Run every check of :func:`load_patch` without modifying the model; raise the same errors.

    Returns ``{"path", "config" (the adapter_config.json fields), "target_modules", "base_fingerprint" (recorded,
    or None), "weights_file", "tensors" (count), "info" (lora_patch.json)}``.
    """
    check_adapter_name(adapter_name, PatchLoadError)
    target = load_target(model_or_editor, adapter_name)
    path = patch_dir(path_or_repo_id, revision, token, local_files_only)
    checked = validate(target, path, adapter_name, allow_fingerprint_mismatch, trust_pickle, allow_missing_fingerprint)
    return {
        "path": os.path.abspath(path),
        "config": checked.config_data,
        "target_modules": checked.targets,
        "base_fingerprint": checked.recorded_fingerprint,
        "weights_file": checked.weights_file,
        "tensors": len(checked.tensors),
        "info": checked.info,
    }

