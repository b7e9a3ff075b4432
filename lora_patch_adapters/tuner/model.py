"""``LoraPatchModel``: the peft ``BaseTuner`` that inserts gated low-rank patches into a generator."""

from __future__ import annotations

import copy
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .config import LoraPatchConfig, unmergeable_gate_error
from .fingerprint import (
    _NotFingerprintable,
    base_fingerprint,
    discover_target_modules,
    resolve_targets,
    verify_injection_fingerprint,
)
from .layer import GatedLoraLayer, create_gated_layer
from .registry import PREFIX

_FILLED = "_lora_patch_filled"
"""Instance attribute (not a dataclass field, so never saved) of a LoraPatchConfig: {field: value} for the values
that ``inject_adapter`` filled in (discovered targets, stamped fingerprint), as opposed to values the user set or a
file recorded."""


def _with_targets(config: LoraPatchConfig, targets: list[str] | str) -> LoraPatchConfig:
    probe = copy.copy(config)
    probe.target_modules = targets
    return probe


def _stamp_fingerprint(model: nn.Module, config: LoraPatchConfig, targets: list[str] | str) -> str | None:
    """``base_fingerprint`` of the layers ``config`` (with ``targets``) patches in ``model``; None when it cannot be
    computed exactly (weights on the meta device, merged adapters) or when nothing matches (peft reports that)."""
    names = resolve_targets(model, _with_targets(config, targets))
    if not names:
        return None
    try:
        return base_fingerprint(model, names)
    except (_NotFingerprintable, ValueError):
        return None


class NonFiniteAdapterError(ValueError):
    """An adapter tensor holds NaN or infinite values, so peft's save path (``PeftModel.save_pretrained``,
    ``get_peft_model_state_dict``) refuses to hand it out for writing. ``key``: the tensor's state-dict name;
    ``bad`` / ``total``: how many of its values are not finite, of how many."""

    def __init__(self, message: str, key: str, bad: int, total: int) -> None:
        super().__init__(message)
        self.key, self.bad, self.total = key, bad, total


class LoraPatchModel(BaseTuner):
    """Inserts gated low-rank patches (see :mod:`lora_patch_adapters.tuner.layer`) into every targeted layer.

    Used through ``peft.get_peft_model(model, LoraPatchConfig(...))`` or
    :func:`lora_patch_adapters.get_peft_model`; works on any ``nn.Module`` (no transformers config needed).
    """

    prefix: str = PREFIX
    tuner_layer_cls = GatedLoraLayer
    target_module_mapping: dict[str, list[str]] = {}

    # ------------------------------------------------------------------------------------------------- injection
    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """Resolve the targets and the base fingerprint into the adapter's config, then let peft inject it.

        * ``target_modules=None``: the discovered layer names (sorted) are written into the config object the user
          passed, as peft does with its own defaults, so ``peft_config[adapter_name] is config``.
        * ``base_fingerprint``: a recorded value (loaded from a file, or set by the user) is verified first and a
          mismatch refused (:func:`verify_injection_fingerprint`); when unset, the fingerprint of the targeted base
          layers is stamped into the config (unless they are on the meta device or carry merged weights), so that
          every save path records it.
        * A config object whose targets or fingerprint were filled in for *another* model is not overwritten: if
          this model needs other values, the adapter gets a copy of it (so the first model's config stays true).
        """
        config = self.peft_config[adapter_name]
        if not isinstance(config, LoraPatchConfig):
            raise TypeError(
                f"LoraPatchModel needs a LoraPatchConfig, got {type(config).__name__} for adapter {adapter_name!r}."
            )
        filled: dict[str, Any] = dict(getattr(config, _FILLED, {}))
        targets = config.target_modules
        discovered = None
        if targets is None or ("target_modules" in filled and targets == filled["target_modules"]):
            discovered = discover_target_modules(model, config.include_linear)
            if not discovered:
                raise ValueError(
                    "The model has no nn.Conv2d or nn.ConvTranspose2d layer to patch"
                    + ("" if config.include_linear else " (set include_linear=True to patch nn.Linear layers)")
                    + "; name the layers with target_modules."
                )
            targets = discovered
        recorded = config.base_fingerprint
        if recorded and filled.get("base_fingerprint") != recorded:
            # A saved patch records the base weights it was trained on; refuse other weights before touching the
            # model (plain peft.PeftModel.from_pretrained / load_adapter land here).
            probe = config if targets == config.target_modules else _with_targets(config, targets)
            verify_injection_fingerprint(model, probe, adapter_name)
            fingerprint = recorded
        else:
            fingerprint = _stamp_fingerprint(model, config, targets)

        updates: dict[str, Any] = {}
        if discovered is not None and discovered != config.target_modules:
            updates["target_modules"] = discovered
        if fingerprint != config.base_fingerprint:
            updates["base_fingerprint"] = fingerprint
        restore: dict[str, Any] | None = None
        if updates:
            if filled:  # filled in for another model: keep that model's config as it is
                config = copy.deepcopy(config)
                self.peft_config[adapter_name] = config
            else:
                restore = {name: getattr(config, name) for name in updates}
            for name, value in updates.items():
                setattr(config, name, value)
                if value is None:
                    filled.pop(name, None)
                else:
                    filled[name] = value
            setattr(config, _FILLED, filled)
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        except BaseException:
            if restore is not None:  # the user's config is left as it was passed
                for name, value in restore.items():
                    setattr(config, name, value)
                config.__dict__.pop(_FILLED, None)
            raise
        # peft may shrink a long list to a set of suffixes; keep the saved config explicit and ordered.
        if discovered is not None:
            config.target_modules = discovered
        elif isinstance(config.target_modules, (set, tuple)):
            config.target_modules = sorted(config.target_modules)

    def _prepare_adapter_config(self, peft_config: LoraPatchConfig, model_config: dict) -> LoraPatchConfig:
        # Targets are resolved from the model itself in inject_adapter; no per-architecture table is needed.
        return peft_config

    def _create_and_replace(
        self,
        peft_config: LoraPatchConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs,
    ) -> None:
        if isinstance(target, GatedLoraLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if isinstance(target, BaseTunerLayer):
            raise TypeError(
                f"Layer {current_key!r} already carries an adapter of another PEFT method ({type(target).__name__}); "
                "lora-patch cannot be stacked on it."
            )
        new_module = create_gated_layer(target, adapter_name, peft_config, layer_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    # ------------------------------------------------------------------------------------------------------ saving
    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: Any,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """peft's hook for the adapter entries it is about to save (``PeftModel.save_pretrained`` calls it through
        ``get_peft_model_state_dict`` before writing any weight or config file): refuse NaN/Inf adapter tensors
        there, so a diverged patch is never written (:class:`NonFiniteAdapterError` names the tensor)."""
        selected = super()._get_adapter_state_dict(
            model=model,
            config=config,
            adapter_name=adapter_name,
            state_dict=state_dict,
            unwanted_adapter_names=unwanted_adapter_names,
        )
        for key, value in sorted(selected.items()):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.device.type == "meta":
                continue
            finite = torch.isfinite(value.detach())
            if not bool(finite.all()):
                bad, total = int(finite.numel() - finite.sum()), finite.numel()
                key = cls._remove_adapter_name_from_key(key, adapter_name)  # the name it has in the file
                raise NonFiniteAdapterError(
                    f"Adapter {adapter_name!r} tensor {key!r} holds {bad} NaN or infinite value(s) of {total}; "
                    "refusing to save it; no weights or config file was written. The patch is broken (e.g. training "
                    "diverged): save an earlier checkpoint, or retrain with a lower learning rate or grad_clip.",
                    key,
                    bad,
                    total,
                )
        return selected

    # ------------------------------------------------------------------------------------------------------ merging
    def _check_mergeable(self, adapter_names: list[str] | None) -> None:
        """Refuse, before touching any weight, to merge adapters whose gate depends on the input."""
        names = adapter_names if adapter_names is not None else self.active_adapters
        for name in names:
            config = self.peft_config.get(name)
            if config is None:
                raise ValueError(f"No adapter named {name!r}; known adapters: {sorted(self.peft_config)}.")
            if not config.is_mergeable:
                raise unmergeable_gate_error(name, config.gate)

    def _check_finite_merge(self, adapter_names: list[str] | None) -> None:
        """For ``safe_merge``: raise peft's "NaNs detected in the merged weights" error before any layer is merged
        (peft itself checks layer by layer, so a broken patch would leave the layers before it merged)."""
        for module in self.model.modules():
            if isinstance(module, GatedLoraLayer):
                names = adapter_names if adapter_names is not None else module.active_adapters
                module.check_finite_merge([n for n in names if n not in module.merged_adapters])

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self._check_mergeable(adapter_names)
        if safe_merge:
            self._check_finite_merge(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            self._check_mergeable(adapter_names)
            if safe_merge:
                self._check_finite_merge(adapter_names)
        return super()._unload_and_optionally_merge(merge, progressbar, safe_merge, adapter_names)
