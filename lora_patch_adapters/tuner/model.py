"""``LoraPatchModel``: the peft ``BaseTuner`` that inserts gated low-rank patches into a generator."""

from __future__ import annotations

import copy

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .config import LoraPatchConfig, unmergeable_gate_error
from .fingerprint import discover_target_modules, verify_injection_fingerprint
from .layer import GatedLoraLayer, create_gated_layer
from .registry import PREFIX


class LoraPatchModel(BaseTuner):
    """Inserts gated low-rank patches (see :mod:`lora_patch_adapters.tuner.layer`) into every targeted layer.

    Used through ``peft.get_peft_model(model, LoraPatchConfig(...))`` or
    :func:`lora_patch_adapters.get_peft_model`; works on any ``nn.Module`` (no transformers config needed).
    """

    prefix: str = PREFIX
    tuner_layer_cls = GatedLoraLayer
    target_module_mapping: dict[str, list[str]] = {}

    # ------------------------------------------------------------------------------------------------- injection
    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        config = self.peft_config[adapter_name]
        if not isinstance(config, LoraPatchConfig):
            raise TypeError(
                f"LoraPatchModel needs a LoraPatchConfig, got {type(config).__name__} for adapter {adapter_name!r}."
            )
        discovered = None
        if config.target_modules is None:
            # Work on a copy so that one user config can patch several different models.
            config = copy.deepcopy(config)
            config.target_modules = discovered = discover_target_modules(model, config.include_linear)
            if not discovered:
                raise ValueError(
                    "The model has no nn.Conv2d or nn.ConvTranspose2d layer to patch"
                    + ("" if config.include_linear else " (set include_linear=True to patch nn.Linear layers)")
                    + "; name the layers with target_modules."
                )
            self.peft_config[adapter_name] = config
        if getattr(config, "base_fingerprint", None):
            # A saved patch records the base weights it was trained on; refuse other weights before touching the
            # model (plain peft.PeftModel.from_pretrained / load_adapter land here).
            verify_injection_fingerprint(model, config, adapter_name)
        super().inject_adapter(model, adapter_name, *args, **kwargs)
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

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self._check_mergeable(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _unload_and_optionally_merge(self, merge: bool = True, *args, **kwargs):
        if merge:
            self._check_mergeable(kwargs.get("adapter_names"))
        return super()._unload_and_optionally_merge(merge, *args, **kwargs)
