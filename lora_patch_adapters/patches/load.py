"""Loading a patch: :func:`load_patch` validates everything before the model is touched (config, targets, weights
file, tensor names, shapes, dtypes, finiteness, fingerprint), then loads through peft from a staged copy of exactly
the validated tensors; if peft fails after touching the model, the model is restored.

Weights are read with safetensors only; pickle files (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) are refused
unless ``trust_pickle=True``, and even then read with ``torch.load(weights_only=True)`` only. Values are cast to the
dtype the adapter has in the target model (the base layer's dtype, float32 for half precision bases under peft's
adapter autocast) and must be finite before and after that cast.

Plain ``peft.PeftModel.from_pretrained`` / ``load_adapter`` of a patch whose config carries ``base_fingerprint`` also
refuses a different base (see :mod:`lora_patch_adapters.tuner.fingerprint`). On that path the other checks are
peft's own: peft reads ``adapter_model.safetensors`` when it exists and only falls back to ``adapter_model.bin``,
which peft 0.18-0.21 read with ``torch.load(weights_only=True)`` (no code runs, but no pickle is refused either); it
does not check tensor dtypes or finiteness, or refuse extra tensors; use :func:`load_patch` for the full validation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

import peft
import safetensors.torch
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from .._checks import one_line
from ..tuner.fingerprint import FINGERPRINT_CHECKED
from .errors import PatchLoadError
from .format import CONFIG_NAME, WEIGHTS_NAME, adapter_state, check_adapter_name, write_json
from .validate import CheckedPatch, LoadTarget, load_target, patch_dir, validate


class _Snapshot:
    """Enough of a model's state to undo a failed peft load: module tree, requires_grad, modes, adapter state."""

    def __init__(self, target: LoadTarget) -> None:
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


_HUB_FIELDS = ("base_model_name_or_path", "revision")
"""Config fields naming a Hub repo / revision. They are left out of the staged copy peft loads from, so the loaded
model never carries a foreign repo id that peft would look up (``get_peft_model_state_dict`` asks the Hub about
``base_model_name_or_path`` whenever the model is saved or its state read)."""


def _stage(checked: CheckedPatch, directory: str) -> None:
    config = {key: value for key, value in checked.config_data.items() if key not in _HUB_FIELDS}
    write_json(os.path.join(directory, CONFIG_NAME), config)
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
    allow_missing_fingerprint: bool = False,
) -> peft.PeftModel:
    """Validate a patch against ``model_or_editor``, then load it; returns the ``peft.PeftModel``.

    ``model_or_editor``: an ``nn.Module`` (patched in place and wrapped), an ``Editor`` (its ``generator`` is patched
    in place, so ``editor.edit`` runs the patched network), or a ``peft.PeftModel`` of lora-patch adapters (the patch
    is added as ``adapter_name``; as with peft's ``load_adapter``, call ``set_adapter`` to activate it).
    ``path_or_repo_id``: a patch directory, or a Hub repo id fetched with ``lora_patch_adapters.pull_patch``
    (``revision``, ``token`` and ``local_files_only`` are passed on; they are ignored for local directories).

    Nothing is modified unless every check passes: :class:`PatchFileError` (missing, truncated or corrupt files),
    :class:`PatchConfigError` (invalid config, target layers missing or unsupported), :class:`PatchShapeError`
    (missing, extra, misnamed tensors; wrong shapes or dtypes), :class:`NonFinitePatchError`,
    :class:`FingerprintMismatchError` (saved for other base weights; ``allow_fingerprint_mismatch=True`` skips the
    check), :class:`MissingFingerprintError` (the patch records no base fingerprint, e.g. saved with plain
    ``save_pretrained`` by an older version; ``allow_missing_fingerprint=True`` loads it with a
    :class:`MissingFingerprintWarning`) and :class:`UnsafePatchFileError` (pickle weights without
    ``trust_pickle=True``). An ``adapter_name`` that is not a plain name (1-64 letters, digits, '_', '-') is refused
    first. All are :class:`PatchLoadError` (a ``ValueError``).

    A local directory is loaded without any network access: the config's Hub fields (``base_model_name_or_path``,
    ``revision``) are not passed on to peft, and what peft loads is a private copy of exactly the validated tensors.
    """
    check_adapter_name(adapter_name, PatchLoadError)
    target = load_target(model_or_editor, adapter_name)
    path = patch_dir(path_or_repo_id, revision, token, local_files_only)
    checked = validate(
        target, path, adapter_name, allow_fingerprint_mismatch, trust_pickle, allow_missing_fingerprint
    )

    snapshot = _Snapshot(target)
    token_var = FINGERPRINT_CHECKED.set(True)
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
        loaded = adapter_state(result, adapter_name)
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
            f"{path}: loading failed after validation ({type(exc).__name__}: {one_line(exc, 240)}); the model was "
            "restored unchanged."
        ) from exc
    finally:
        FINGERPRINT_CHECKED.reset(token_var)
        shutil.rmtree(staged, ignore_errors=True)
    return result

