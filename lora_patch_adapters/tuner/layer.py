"""Gated low-rank patch layers for Conv2d, ConvTranspose2d and Linear.

For each adapter: ``y = base(x) + gate * scale * B(A(x))``, with ``A`` applied with the base layer's geometry (kernel,
stride, padding, dilation, output_padding) down to ``r`` channels and ``B`` a 1x1 mix (Linear: ``r -> out``) back to
the output channels. Merged kernels:

* Conv2d          ``dW[o,i,k,l] = sum_r B[o,r] A[r,i,k,l]``
* ConvTranspose2d ``dW[i,o,k,l] = sum_r A[i,r,k,l] B[o,r]``
* Linear          ``dW = B @ A``

and ``W' = W + gate * scale * dW``. ``scale`` comes from the config per layer type
(:meth:`~lora_patch_adapters.tuner.config.LoraPatchConfig.layer_scale`: ``"official"`` scaling gives Linear layers
alpha and convolutions alpha/sqrt(r)). For input-independent gates the unmerged forward folds the patch into the kernel
on the fly (``forward_mode='fused'``): one convolution instead of three, the same result up to float rounding, still
trainable and leaving the base weights untouched.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from .config import LoraPatchConfig, unmergeable_gate_error
from .gates import Gate, make_gate


def kaiming_uniform_bound(fan_in: int, a: float = math.sqrt(5)) -> float:
    """The bound of ``nn.init.kaiming_uniform_(w, a=a)`` for a fan-in of ``fan_in``: ``gain * sqrt(3 / fan_in)`` with
    ``gain = sqrt(2 / (1 + a^2))``; for the default ``a = sqrt(5)`` that is ``1 / sqrt(fan_in)``. Computed in the same
    order as torch does, so that layers whose fan-in torch gets right draw bit-identical values."""
    if fan_in <= 0:
        raise ValueError(f"kaiming_uniform_bound: fan_in must be > 0, got {fan_in}.")
    gain = math.sqrt(2.0 / (1 + a**2))
    return math.sqrt(3.0) * (gain / math.sqrt(fan_in))


class GatedLoraLayer(BaseTunerLayer):
    """Mixin holding the adapters of one patched layer; the concrete classes add the geometry."""

    adapter_layer_names = ("lora_patch_A", "lora_patch_B", "lora_patch_gate")
    other_param_names = ("r", "lora_alpha", "scaling", "gate_type", "forward_mode")

    def __init__(self, base_layer: nn.Module, in_features: int, out_features: int) -> None:
        self.base_layer = base_layer
        self.in_features = in_features
        self.out_features = out_features
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.gate_type: dict[str, str] = {}
        self.forward_mode: dict[str, str] = {}
        self.lora_patch_A = nn.ModuleDict()
        self.lora_patch_B = nn.ModuleDict()
        self.lora_patch_gate = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._fused_cache: tuple[list, torch.Tensor] | None = None  # see _fused_weight

    # ----------------------------------------------------------------------------------------------------- building
    @abstractmethod
    def _make_A(self, r: int) -> nn.Module:
        """The down-projection ``A``: the base layer's geometry, ``r`` output channels, no bias."""

    def _make_B(self, r: int) -> nn.Module:
        """The up-projection ``B``: a 1x1 mix from ``r`` channels to the base layer's outputs, no bias."""
        return nn.Conv2d(r, self.out_features, 1, bias=False)

    spatial = True  # conv layers; Linear overrides

    def _a_fan_in(self) -> int:
        """Fan-in of ``A`` as the paper's code draws it: ``in * kh * kw`` for Conv2d *and* ConvTranspose2d (its A is
        drawn as an (r, in*kh*kw) matrix, whatever the layout it is stored in), ``in`` for Linear."""
        kernel = getattr(self.get_base_layer(), "kernel_size", ())
        return self.in_features * math.prod(kernel)

    def update_layer(self, adapter_name: str, config: LoraPatchConfig) -> None:
        """Create (or replace) the adapter ``adapter_name`` on this layer from ``config``."""
        self.r[adapter_name] = config.r
        self.lora_alpha[adapter_name] = float(config.lora_alpha)
        self.scaling[adapter_name] = config.layer_scale(linear=not self.spatial)
        self.gate_type[adapter_name] = config.gate
        self.forward_mode[adapter_name] = config.forward_mode
        self.lora_patch_A[adapter_name] = self._make_A(config.r)
        self.lora_patch_B[adapter_name] = self._make_B(config.r)
        self.lora_patch_gate[adapter_name] = make_gate(config.gate, config.gate_init, self.out_features, self.spatial)
        self.reset_patch_parameters(adapter_name, config.init_weights)
        base_weight = self.get_base_layer().weight
        dtype = base_weight.dtype if base_weight.dtype.is_floating_point else None
        for container in (self.lora_patch_A, self.lora_patch_B, self.lora_patch_gate):
            module = container[adapter_name]
            # low_cpu_mem_usage=True creates the adapter on the meta device (peft's init_empty_weights): there is no
            # data to move; peft assigns the loaded tensors and moves them to the base layer's device afterwards.
            if not any(p.is_meta for p in module.parameters()):
                module.to(device=base_weight.device, dtype=dtype)
        self.set_adapter(self.active_adapters)

    def reset_patch_parameters(self, adapter_name: str, init_weights: str) -> None:
        """Initialise A (Kaiming-uniform) and B (zeros for ``"zero"``, Kaiming-uniform for ``"kaiming"``); a no-op
        for an adapter created on the meta device (its values come from the loaded file).

        The bounds are computed here from the paper's fan-ins, not from the stored layouts: A uniform in
        ``±1/sqrt(in*kh*kw)`` (``in`` for Linear; a ConvTranspose2d's A is stored [in, r, kh, kw], whose layout fan-in
        ``r*kh*kw`` torch would use), B uniform in ``±1/sqrt(r)``."""
        a = self.lora_patch_A[adapter_name].weight
        b = self.lora_patch_B[adapter_name].weight
        if a.is_meta or b.is_meta:
            return
        with torch.no_grad():
            a.uniform_(-kaiming_uniform_bound(self._a_fan_in()), kaiming_uniform_bound(self._a_fan_in()))
            if init_weights == "zero":
                b.zero_()
            else:
                fan_in = b.shape[1]  # r: B is [out, r] (Linear) or [out, r, 1, 1]
                b.uniform_(-kaiming_uniform_bound(fan_in), kaiming_uniform_bound(fan_in))

    # -------------------------------------------------------------------------------------------------------- maths
    @abstractmethod
    def _raw_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``dW`` of B and A (before gate and scale), shaped like the base weight."""

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``gate * scale * dW`` for an input-independent gate; shaped like the base weight, in the patch's dtype."""
        gate: Gate = self.lora_patch_gate[adapter_name]
        factor = gate.factor()
        return self._raw_delta_weight(adapter_name) * (factor * self.scaling[adapter_name])

    @abstractmethod
    def _add_low_rank(self, weight: torch.Tensor, a: torch.Tensor, b_scaled: torch.Tensor) -> torch.Tensor:
        """``weight + dW(A, B_scaled)`` in one fused matmul-add kernel (addmm / baddbmm), shaped like ``weight``."""

    def compose_weight(self, weight: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        """``weight + sum(gate * scale * dW)`` over ``adapter_names`` (input-independent gates), differentiable in
        the patch parameters; the gate and scale are folded into B before one matmul-add per adapter."""
        composed = weight
        for name in adapter_names:
            a = self.lora_patch_A[name].weight
            b = self.lora_patch_B[name].weight
            factor = self.lora_patch_gate[name].factor() * self.scaling[name]
            composed = self._add_low_rank(composed.to(a.dtype), a, b.reshape(b.shape[0], b.shape[1]) * factor)
        return composed.to(weight.dtype)

    def _fused_weight(self, adapter_names: list[str]) -> torch.Tensor:
        """The composed kernel for the forward pass.

        When no gradient can flow to the patch (``torch.no_grad()``, or frozen patch parameters), the kernel is
        cached and reused until the base weight or a patch parameter changes (tracked by storage address, dtype and
        in-place version counter), so unmerged inference costs one plain convolution per layer. This hot path is
        written for low Python overhead: on a GPU the per-layer host time is what an unmerged patch adds.
        """
        base_weight = self.base_layer.weight
        tensors = [base_weight]
        for name in adapter_names:
            tensors.append(self.lora_patch_A[name].weight)
            tensors.append(self.lora_patch_B[name].weight)
            tensors.extend(self.lora_patch_gate[name].constant_tensors())
        if torch.is_grad_enabled():
            for tensor in tensors:
                if tensor.requires_grad:
                    self._fused_cache = None
                    return self.compose_weight(base_weight, adapter_names)
        key = [adapter_names, base_weight.device]
        for tensor in tensors:
            key += (tensor.data_ptr(), tensor._version, tensor.dtype)
        cache = self._fused_cache
        if cache is not None and cache[0] == key:
            return cache[1]
        with torch.no_grad():
            weight = self.compose_weight(base_weight, adapter_names)
        self._fused_cache = (key, weight)
        return weight

    @abstractmethod
    def _forward_with_weight(self, x: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base layer's operation with ``weight`` in place of its own kernel (same bias and geometry)."""

    def _low_rank(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``B(A(x))``, before the scale."""
        return self.lora_patch_B[adapter_name](self.lora_patch_A[adapter_name](x))

    def _update(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``scale * B(A(x))``."""
        return self._low_rank(adapter_name, x, *args, **kwargs) * self.scaling[adapter_name]

    # ------------------------------------------------------------------------------------------------------ forward
    def patched_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus every active, unmerged adapter (the concrete layers' ``forward``)."""
        if self._disable_adapters:
            if self.merged_adapters:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = self._active_adapter
        pending = [
            name
            for name in ((active,) if isinstance(active, str) else active)
            if name in self.lora_patch_A and name not in self.merged_adapters
        ]
        if not pending:
            return self.base_layer(x, *args, **kwargs)
        fused, branches = [], []
        for name in pending:
            gate_is_constant = self.lora_patch_gate[name].input_independent
            (fused if gate_is_constant and self.forward_mode[name] == "fused" else branches).append(name)
        if fused:
            y = self._forward_with_weight(x, self._fused_weight(fused), *args, **kwargs)
        else:
            y = self.base_layer(x, *args, **kwargs)
        for name in branches:
            a_dtype = self.lora_patch_A[name].weight.dtype
            x_in = x if torch.is_autocast_enabled(x.device.type) else x.to(a_dtype)
            gate = self.lora_patch_gate[name]
            low_rank = self._low_rank(name, x_in, *args, **kwargs)
            update = low_rank * self.scaling[name]
            y = y + (gate(low_rank if gate.reads_unscaled else update) * update).to(y.dtype)
        return y

    # ------------------------------------------------------------------------------------------------ merge/unmerge
    def check_mergeable(self, adapter_names: list[str]) -> None:
        """Raise a clear error if one of ``adapter_names`` has an input-dependent gate."""
        for name in adapter_names:
            if name in self.gate_type and not self.lora_patch_gate[name].input_independent:
                raise unmergeable_gate_error(name, self.gate_type[name])

    def check_finite_merge(self, adapter_names: list[str]) -> None:
        """Raise peft's ``ValueError`` ("NaNs detected in the merged weights. The adapter <name> seems to be broken")
        if merging ``adapter_names`` one after the other would give a non-finite weight; changes nothing."""
        with torch.no_grad():
            weight = self.get_base_layer().weight.data
            for name in adapter_names:
                if name not in self.lora_patch_A:
                    continue
                weight = self.compose_weight(weight, [name])
                if not torch.isfinite(weight).all():
                    raise broken_adapter_error(name)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add ``gate * scale * dW`` of the (active) adapters to the base weight, in place. With ``safe_merge``, a
        merge that would give non-finite weights raises peft's "NaNs detected in the merged weights" ``ValueError``
        before this layer's weight is touched."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        self.check_mergeable(adapter_names)
        if safe_merge:
            self.check_finite_merge(adapter_names)
        base_layer = self.get_base_layer()
        with torch.no_grad():
            for name in adapter_names:
                if name not in self.lora_patch_A:
                    continue
                merged = self.compose_weight(base_layer.weight.data, [name])
                base_layer.weight.copy_(merged)  # in place: bumps the version counter the fused cache watches
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract every merged adapter from the base weight, in reverse order of merging."""
        base_layer = self.get_base_layer()
        with torch.no_grad():
            while self.merged_adapters:
                name = self.merged_adapters.pop()
                if name in self.lora_patch_A:
                    base_layer.weight.sub_(self.get_delta_weight(name).to(base_layer.weight.dtype))


def broken_adapter_error(adapter_name: str) -> ValueError:
    """The ``safe_merge`` error, in peft's wording (its tests and users match on it)."""
    return ValueError(
        f"NaNs detected in the merged weights. The adapter {adapter_name} seems to be broken: merging it would give "
        "non-finite (NaN or Inf) weights. Nothing was merged into this layer; check the patch for NaN/Inf values "
        "(e.g. a diverged training run) before merging."
    )


class _GatedModule(nn.Module, GatedLoraLayer):
    """An ``nn.Module`` holding one wrapped layer and its adapters; ``forward`` is defined here because nn.Module
    precedes the mixin in the MRO, so its placeholder forward would otherwise win."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraPatchConfig) -> None:
        nn.Module.__init__(self)
        if isinstance(base_layer, nn.Linear):
            features = (base_layer.in_features, base_layer.out_features)
        else:
            features = (base_layer.in_channels, base_layer.out_channels)
        GatedLoraLayer.__init__(self, base_layer, *features)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.patched_forward(x, *args, **kwargs)


class Conv2d(_GatedModule):
    """Gated patch around an ``nn.Conv2d`` (any kernel, stride, padding, dilation, padding mode; groups == 1)."""

    def _make_A(self, r: int) -> nn.Module:
        base = self.get_base_layer()
        return nn.Conv2d(
            base.in_channels,
            r,
            base.kernel_size,
            stride=base.stride,
            padding=base.padding,
            dilation=base.dilation,
            bias=False,
            padding_mode=base.padding_mode,
        )

    def _raw_delta_weight(self, adapter_name: str) -> torch.Tensor:
        a = self.lora_patch_A[adapter_name].weight  # [r, in, kh, kw]
        b = self.lora_patch_B[adapter_name].weight[:, :, 0, 0]  # [out, r]
        return torch.einsum("or,rikl->oikl", b, a)

    def _add_low_rank(self, weight: torch.Tensor, a: torch.Tensor, b_scaled: torch.Tensor) -> torch.Tensor:
        # [out, in*kh*kw] + [out, r] @ [r, in*kh*kw]
        return torch.addmm(weight.reshape(weight.shape[0], -1), b_scaled, a.reshape(a.shape[0], -1)).view(weight.shape)

    def _forward_with_weight(self, x: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.base_layer
        return base._conv_forward(x, weight, base.bias)


class ConvTranspose2d(_GatedModule):
    """Gated patch around an ``nn.ConvTranspose2d`` (any kernel, stride, padding, output_padding, dilation;
    groups == 1). ``forward(x, output_size=None)`` as the base layer."""

    def _make_A(self, r: int) -> nn.Module:
        base = self.get_base_layer()
        return nn.ConvTranspose2d(
            base.in_channels,
            r,
            base.kernel_size,
            stride=base.stride,
            padding=base.padding,
            output_padding=base.output_padding,
            dilation=base.dilation,
            bias=False,
        )

    def _raw_delta_weight(self, adapter_name: str) -> torch.Tensor:
        a = self.lora_patch_A[adapter_name].weight  # [in, r, kh, kw]
        b = self.lora_patch_B[adapter_name].weight[:, :, 0, 0]  # [out, r]
        return torch.einsum("irkl,or->iokl", a, b)

    def _add_low_rank(self, weight: torch.Tensor, a: torch.Tensor, b_scaled: torch.Tensor) -> torch.Tensor:
        # per input channel i: [out, kh*kw] + [out, r] @ [r, kh*kw]
        n_in, n_out = weight.shape[0], weight.shape[1]
        w3 = weight.reshape(n_in, n_out, -1)
        a3 = a.reshape(n_in, a.shape[1], -1)
        return torch.baddbmm(w3, b_scaled.expand(n_in, -1, -1), a3).view(weight.shape)

    @staticmethod
    def _output_size(args: tuple, kwargs: dict) -> list[int] | None:
        return kwargs.get("output_size", args[0] if args else None)

    def _forward_with_weight(self, x: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.base_layer
        output_padding = base._output_padding(
            x, self._output_size(args, kwargs), base.stride, base.padding, base.kernel_size, 2, base.dilation
        )
        return F.conv_transpose2d(
            x, weight, base.bias, base.stride, base.padding, output_padding, base.groups, base.dilation
        )

    def _low_rank(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        low_rank = self.lora_patch_A[adapter_name](x, output_size=self._output_size(args, kwargs))
        return self.lora_patch_B[adapter_name](low_rank)


class Linear(_GatedModule):
    """Gated patch around an ``nn.Linear``: ``A`` is ``Linear(in, r)``, ``B`` is ``Linear(r, out)``."""

    spatial = False

    def _make_A(self, r: int) -> nn.Module:
        return nn.Linear(self.in_features, r, bias=False)

    def _make_B(self, r: int) -> nn.Module:
        return nn.Linear(r, self.out_features, bias=False)

    def _raw_delta_weight(self, adapter_name: str) -> torch.Tensor:
        return self.lora_patch_B[adapter_name].weight @ self.lora_patch_A[adapter_name].weight

    def _add_low_rank(self, weight: torch.Tensor, a: torch.Tensor, b_scaled: torch.Tensor) -> torch.Tensor:
        return torch.addmm(weight, b_scaled, a)

    def _forward_with_weight(self, x: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return F.linear(x, weight, self.base_layer.bias)


SUPPORTED_LAYERS: dict[type, type] = {
    nn.Conv2d: Conv2d,
    nn.ConvTranspose2d: ConvTranspose2d,
    nn.Linear: Linear,
}
"""Base layer type -> gated wrapper. Subclasses of these types are matched too (exact types take precedence)."""


def wrapper_for(module: nn.Module) -> type | None:
    """The gated wrapper class for ``module``, or None if its type is not supported."""
    for base_type, wrapper in SUPPORTED_LAYERS.items():
        if type(module) is base_type:
            return wrapper
    for base_type, wrapper in SUPPORTED_LAYERS.items():
        if isinstance(module, base_type):
            return wrapper
    return None


def create_gated_layer(target: nn.Module, adapter_name: str, config: LoraPatchConfig, layer_name: str) -> nn.Module:
    """Wrap ``target`` (named ``layer_name`` in the model) in the matching gated layer, with clear errors for
    unsupported layers."""
    wrapper = wrapper_for(target)
    if wrapper is None:
        raise TypeError(
            f"Layer {layer_name!r} is a {type(target).__name__}; lora-patch supports nn.Conv2d, nn.ConvTranspose2d and "
            "nn.Linear. Remove it from target_modules (or add it to exclude_modules)."
        )
    if getattr(target, "groups", 1) != 1:
        raise ValueError(
            f"Layer {layer_name!r} is a grouped convolution (groups={target.groups}); lora-patch only patches "
            "convolutions with groups=1. Add it to exclude_modules to patch the rest of the model."
        )
    if wrapper is ConvTranspose2d and target.padding_mode != "zeros":
        raise ValueError(
            f"Layer {layer_name!r} uses padding_mode={target.padding_mode!r}; ConvTranspose2d only supports 'zeros'."
        )
    return wrapper(target, adapter_name, config)
