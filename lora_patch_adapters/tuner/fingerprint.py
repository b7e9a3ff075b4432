"""Which layers a patch attaches to, and which base weights it was made for: canonical layer names, target
selection, the base fingerprint, and the check that runs when a patch with a recorded fingerprint is injected.

* :func:`discover_target_modules` -- every Conv2d / ConvTranspose2d (and Linear) of a model, sorted;
* :func:`base_fingerprint` -- ``"sha256:<hex>"`` over the names, shapes, dtypes and bytes of the base weights (weight
  and bias) of the layers a patch attaches to. Names are relative to the generator, with peft wrappers removed
  (``base_model.model.``, ``.base_layer``), so one base gives one fingerprint before and after patching. A model with
  merged patch weights is refused (``ValueError``): its base weights are not available exactly (subtracting the patch
  again is not bit-exact); call ``unmerge_adapter()`` first. The fingerprint covers the dtype: a float16 copy of a
  float32 base is a different base.
* :func:`verify_injection_fingerprint` -- called by ``LoraPatchModel.inject_adapter``: plain
  ``peft.PeftModel.from_pretrained`` / ``load_adapter`` of a patch whose config carries ``base_fingerprint`` refuses a
  different base (:class:`FingerprintMismatchError`) before any layer is replaced; the environment variable
  ``LORA_PATCH_ALLOW_FINGERPRINT_MISMATCH=1`` turns that into a warning. A config without a fingerprint gets one at
  injection instead (``LoraPatchModel.inject_adapter`` stamps ``base_fingerprint`` over the targeted layers, unless
  they are on the meta device or carry merged weights), so every save path records it.

:class:`PatchLoadError` is the root of every refusal to load a patch (the rest live in
:mod:`lora_patch_adapters.patches.errors`); it is defined here because the tuner itself refuses mismatched bases.
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import peft
import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from peft.utils import ModulesToSaveWrapper
from torch import nn

from .config import LoraPatchConfig
from .layer import GatedLoraLayer, wrapper_for

ALLOW_MISMATCH_ENV = "LORA_PATCH_ALLOW_FINGERPRINT_MISMATCH"
FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
"""What a recorded fingerprint looks like."""
DEFAULT_TARGET_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
# Set while load_patch injects a patch whose fingerprint it has already checked (or was told to ignore).
FINGERPRINT_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("lora_patch_fingerprint", default=False)


class PatchLoadError(ValueError):
    """A patch was refused; the model was not modified. The message names the file or tensor and what to do."""


class FingerprintMismatchError(PatchLoadError):
    """The patch was saved for other base weights. ``expected`` (recorded in the patch) and ``actual`` (this model)
    hold the two fingerprints."""

    def __init__(self, message: str, expected: str | None = None, actual: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class _NotFingerprintable(ValueError):
    """A targeted tensor is on the meta device (not loaded yet)."""


def discover_target_modules(model: nn.Module, include_linear: bool = False) -> list[str] | str:
    """Names of every Conv2d and ConvTranspose2d (and Linear if ``include_linear``) in ``model``, sorted.

    Layers already patched count once (by the wrapper's name); modules inside a patch (its A and B) are skipped.
    PEFT matches a list entry also as a dotted suffix ("0" matches "head.0"); when that would pick up a layer of
    another kind, a full-match regex of the exact names is returned instead.
    """
    wanted = DEFAULT_TARGET_TYPES + ((nn.Linear,) if include_linear else ())
    names: list[str] = []
    others: list[str] = []
    inside_patch: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p) for p in inside_patch):
            continue
        if isinstance(module, GatedLoraLayer):
            inside_patch.append(name + ".")
            base = module.get_base_layer()
            (names if isinstance(base, wanted) else others).append(name)
        elif isinstance(module, wanted):
            names.append(name)
        else:
            others.append(name)
    names = sorted(names)
    suffixes = tuple("." + n for n in names)
    if any(other.endswith(suffixes) for other in others):
        return "(?:" + "|".join(re.escape(n) for n in names) + ")"
    return names


RANK_RULE = (
    "fan_in/fan_out: Linear in_features/out_features; Conv2d and ConvTranspose2d in_channels*kh*kw/out_channels"
)


def layer_fans(layer: nn.Module) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a patchable layer: the sides of the matrix its low-rank update ``B @ A`` lives in.

    Linear: ``(in_features, out_features)``. Conv2d: ``(in_channels * kh * kw, out_channels)`` (``A`` is
    ``[r, in, kh, kw]``, ``B`` is ``[out, r]``). ConvTranspose2d: likewise ``(in_channels * kh * kw, out_channels)``
    (``A`` is ``[in, r, kh, kw]``, ``delta W[i, o, k, l] = sum_r A[i, r, k, l] B[o, r]``). The update has rank at most
    ``min(fan_in, fan_out)``.
    """
    if isinstance(layer, nn.Linear):
        return int(layer.in_features), int(layer.out_features)
    kh, kw = layer.kernel_size
    return int(layer.in_channels) * int(kh) * int(kw), int(layer.out_channels)


def rank_bound(module: nn.Module, names: list[str]) -> tuple[int, str]:
    """``(bound, layer)``: the largest ``min(fan_in, fan_out)`` over the layers ``names`` of ``module`` and the layer
    that has it; a rank above it is of no use to any of them (only memory grows with it)."""
    layers, _ = canonical_layers(module)
    bound, widest = 0, names[0]
    for name in names:
        fan_in, fan_out = layer_fans(layers[name])
        if min(fan_in, fan_out) > bound:
            bound, widest = min(fan_in, fan_out), name
    return bound, widest


def inner_module(model: Any) -> nn.Module:
    """The generator module behind an Editor (anything whose ``generator`` is an ``nn.Module``: editors live a floor
    above the tuner), a PeftModel, a tuner or a plain module."""
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "generator", None), nn.Module):
        model = model.generator
    if isinstance(model, peft.PeftModel):
        model = model.base_model
    if isinstance(model, BaseTuner):
        model = model.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected an nn.Module, an Editor or a peft.PeftModel, got {type(model).__name__}.")
    return model


def canonical_layers(module: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
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


def select_layers(layers: Mapping[str, nn.Module], target_modules: Any) -> list[str]:
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


def hash_layers(layers: Mapping[str, nn.Module], wrappers: Mapping[str, nn.Module], names: list[str]) -> str:
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
    layers, wrappers = canonical_layers(inner_module(model))
    return hash_layers(layers, wrappers, select_layers(layers, target_modules))


def resolve_targets(module: nn.Module, config: LoraPatchConfig) -> list[str]:
    """The layer names peft patches for ``config`` (its own matching rules, excludes included), sorted."""
    layers, _ = canonical_layers(module)
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
    if not expected or FINGERPRINT_CHECKED.get():
        return
    hint = (
        f"Load it on the base model it was trained for; to load it anyway set {ALLOW_MISMATCH_ENV}=1 (or use "
        "lora_patch_adapters.load_patch(..., allow_fingerprint_mismatch=True)). If you are starting a new "
        "patch from a saved config, set config.base_fingerprint = None."
    )
    layers, wrappers = canonical_layers(model)
    names = resolve_targets(model, config)
    if not names:
        return  # peft reports the missing targets itself
    try:
        actual = hash_layers(layers, wrappers, names)
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

