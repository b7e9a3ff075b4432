"""Gates that scale a patch's update: ``y = base(x) + gate(u) * u`` with ``u = scale * B(A x)``.

A gate whose class sets ``reads_unscaled = True`` (only ``input_adaptive_pixel``) is computed from the update before
the scale, ``y = base(x) + gate(B(A x)) * u``, as the paper's official code computes its gates.

Each gate is a small ``nn.Module`` (stored per adapter in a ``ModuleDict``). Input-independent gates (``none``,
``basic``) also expose :meth:`Gate.factor`, which is what lets a patch be fused into, or merged with, the base weight.

Every gate parameter has at least one dimension (scalars are stored with shape ``(1,)``), so that flat-parameter
wrappers such as ``torch.distributed.fsdp`` and PEFT's own utilities (which index ``param[0]``) handle them. Files
written before that change hold 0-d gate tensors; :meth:`Gate._load_from_state_dict` still loads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Gate(nn.Module):
    """Base class. ``forward(update)`` returns a factor broadcastable to ``update``."""

    input_independent: bool = False
    reads_unscaled: bool = False
    """True: ``forward`` receives ``B(A x)`` before the scale (the official code's convention); else the scaled
    update."""

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # Patches saved before gate scalars became (1,)-shaped store them as 0-d tensors: read those as (1,).
        for name, param in self._parameters.items():
            key = prefix + name
            value = state_dict.get(key)
            if param is not None and isinstance(value, torch.Tensor) and value.dim() == 0 and param.shape == (1,):
                state_dict[key] = value.reshape(1)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def constant_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors an input-independent gate's value depends on (for cache keys)."""
        return ()

    def factor(self) -> float | torch.Tensor:
        """The input-independent gate value (a float, or a tensor of shape ``(1,)``)."""
        raise TypeError(
            f"{type(self).__name__} depends on the layer's input, so it has no constant value and its patch cannot "
            "be merged into the base weights; use gate='basic' or 'none' for mergeable patches."
        )


class NoGate(Gate):
    """``gate='none'``: the update is added unscaled (factor 1)."""

    input_independent = True

    def factor(self) -> float:
        return 1.0

    def forward(self, update: torch.Tensor) -> float:
        return 1.0


class BasicGate(Gate):
    """``gate='basic'``: one learnable scalar per layer, ``sigmoid(logit)``; ``logit`` (shape ``(1,)``) starts at
    ``gate_init``."""

    input_independent = True

    def __init__(self, gate_init: float) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.full((1,), float(gate_init)))

    def constant_tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.logit,)

    def factor(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)

    def forward(self, update: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit).to(update.dtype)


class InputAdaptiveGate(Gate):
    """``gate='input_adaptive'``: ``sigmoid(weight * mean(u) + bias)``, one scalar per sample (conv: mean over C, H,
    W) or per row (Linear: mean over features): a learnable 1->1 affine, ``weight`` starting at 0 and ``bias`` at
    ``gate_init``, both of shape ``(1,)``. Parameters sit directly on the gate so that saved keys read
    ``lora_patch_gate.weight`` / ``.bias``.

    The statistic is the mean of the update, as in the paper's official code (``input_ada``); an update whose
    entries cancel out on average gives ``weight`` no gradient (e.g. a 2-output Linear whose two rows move in
    opposite directions), and the gate then stays at ``sigmoid(bias)``.
    """

    def __init__(self, gate_init: float, reduce_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.reduce_dims = reduce_dims
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.full((1,), float(gate_init)))

    def forward(self, update: torch.Tensor) -> torch.Tensor:
        mean = update.mean(dim=self.reduce_dims, keepdim=True)
        return torch.sigmoid(mean * self.weight.to(update.dtype) + self.bias.to(update.dtype))


class ChannelGate(Gate):
    """``gate='input_adaptive_channel'``: one gate per output channel.

    Conv layers: ``sigmoid(W @ mean_hw(u) + b)`` (a learnable 1x1 conv on the pooled update), shape [N, C, 1, 1].
    Linear layers: ``sigmoid(W @ u + b)`` per row, one gate per feature. ``W`` [C, C] starts at zero and ``b`` [C]
    at ``gate_init``.
    """

    def __init__(self, gate_init: float, channels: int, spatial: bool) -> None:
        super().__init__()
        self.spatial = spatial
        self.weight = nn.Parameter(torch.zeros(channels, channels))
        self.bias = nn.Parameter(torch.full((channels,), float(gate_init)))

    def forward(self, update: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            pooled = update.mean(dim=(2, 3))  # [N, C]
            return torch.sigmoid(F.linear(pooled, self.weight, self.bias))[:, :, None, None].to(update.dtype)
        return torch.sigmoid(F.linear(update, self.weight, self.bias)).to(update.dtype)


class PixelGate(ChannelGate):
    """``gate='input_adaptive_pixel'``: the official code's ``input_ada_channel`` gate, one value per output channel
    *and position*.

    Conv layers: ``sigmoid(conv1x1(v))`` with ``v = B(A x)`` [N, C, H, W] the update before the scale, i.e.
    ``g[n, o, h, w] = sigmoid(sum_c W[o, c] v[n, c, h, w] + b[o])``, shape [N, C, H, W]. Linear layers:
    ``sigmoid(W @ v + b)`` per row. ``W`` [C, C] (the official ``gate_conv.weight`` [C, C, 1, 1] reshaped, or
    ``gate_fc.weight``) starts at zero and ``b`` [C] at ``gate_init``. Reading the unscaled update is what the
    official code does, so its weights carry over unchanged.
    """

    reads_unscaled = True  # parameters as in ChannelGate; only the forward differs

    def forward(self, update: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.to(update.dtype), self.bias.to(update.dtype)
        if self.spatial:  # a 1x1 convolution: the same CxC map at every position
            logits = F.conv2d(update, weight[:, :, None, None], bias)
        else:
            logits = F.linear(update, weight, bias)
        return torch.sigmoid(logits)


def make_gate(kind: str, gate_init: float, channels: int, spatial: bool) -> Gate:
    """Build the gate named ``kind`` for a layer with ``channels`` output channels (``spatial``: conv layer)."""
    if kind == "none":
        return NoGate()
    if kind == "basic":
        return BasicGate(gate_init)
    if kind == "input_adaptive":
        return InputAdaptiveGate(gate_init, reduce_dims=(1, 2, 3) if spatial else (-1,))
    if kind == "input_adaptive_channel":
        return ChannelGate(gate_init, channels, spatial)
    if kind == "input_adaptive_pixel":
        return PixelGate(gate_init, channels, spatial)
    raise ValueError(
        f"Unknown gate {kind!r}; choose one of 'none', 'basic', 'input_adaptive', 'input_adaptive_channel', "
        "'input_adaptive_pixel'."
    )

