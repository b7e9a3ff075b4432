"""StarGAN generator (Choi et al., CVPR 2018) with the official module layout.

Parameter and buffer names match the official release (``main.0.weight`` ... ``main.21.weight``), so an official
``200000-G.ckpt`` state dict fits with ``strict=True``. Layout: 7x7 conv, two 4x4 stride-2 down-sampling convs,
``repeat_num`` residual blocks, two 4x4 stride-2 transposed convs, 7x7 conv to RGB and tanh; every conv is bias-free and
followed by ``InstanceNorm2d(affine=True, track_running_stats=True)``.

Official inference keeps the generator in train mode, so instance norm uses per-image statistics; in ``eval()`` it
would use the stored running statistics instead and the results differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..attributes import HAIR_COLOURS, STARGAN_ATTRIBUTES  # noqa: F401  (re-exported: the old import path)
from .base import Editor, check_labels
from .checkpoints import PathLike, load_into, pick_state_dict, read_checkpoint, register_layout


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=True)


class ResidualBlock(nn.Module):
    """``x + (conv3x3 -> IN -> ReLU -> conv3x3 -> IN)(x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class StarGANGenerator(nn.Module):
    """``G(x, c)``: x [N, 3, H, W] in [-1, 1] (H, W divisible by 4), c [N, c_dim] target labels -> [N, 3, H, W]."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        self.c_dim = c_dim
        layers: list[nn.Module] = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False), _norm(conv_dim), nn.ReLU(True)]
        channels = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False), _norm(channels * 2), nn.ReLU(True)]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                _norm(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.Conv2d(channels, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if c.dim() != 2 or c.shape[0] != x.shape[0] or c.shape[1] != self.c_dim:
            raise ValueError(
                f"StarGAN condition must be [N, {self.c_dim}] for N={x.shape[0]} images, got {tuple(c.shape)}."
            )
        c_map = c.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.main(torch.cat([x, c_map], dim=1))




def stargan_conditions(labels: torch.Tensor, attribute_names: Sequence[str] = STARGAN_ATTRIBUTES) -> list[torch.Tensor]:
    """Target labels the way StarGAN's official test builds them: one per attribute; a hair colour is set one-hot
    among the hair colours present, any other attribute is flipped. ``labels`` [N, A] 0/1 -> A tensors [N, A]."""
    labels = check_labels(labels, attribute_names)
    hair = [i for i, name in enumerate(attribute_names) if name in HAIR_COLOURS]
    targets = []
    for i, name in enumerate(attribute_names):
        target = labels.clone()
        if i in hair:
            target[:, hair] = 0
            target[:, i] = 1
        else:
            target[:, i] = 1 - target[:, i]
        targets.append(target)
    return targets


class StarGANEditor(Editor):
    """StarGAN as an :class:`~lora_patch_adapters.generators.base.Editor`: condition = target labels [N, c_dim].

    Runs the generator in **train mode** by default, like the official test script (instance norm with per-image
    statistics; the stored running statistics are ignored). Set ``editor.generator_mode = "eval"`` to use them.
    """

    name = "stargan"
    attribute_names = STARGAN_ATTRIBUTES
    generator_mode = "train"

    def __init__(self, generator: nn.Module, attribute_names: Sequence[str] | None = None, name: str = "") -> None:
        super().__init__(generator)
        if attribute_names is not None:
            self.attribute_names = tuple(attribute_names)
        if name:
            self.name = name

    def _run(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        condition = torch.as_tensor(condition, dtype=x.dtype, device=x.device)
        if condition.dim() != 2 or condition.shape != (x.shape[0], len(self.attribute_names)):
            raise ValueError(
                f"{self.name} condition must be target labels [N={x.shape[0]}, {len(self.attribute_names)}] over "
                f"{list(self.attribute_names)}, got {tuple(condition.shape)}."
            )
        return self.generator(x, condition)

    def conditions(self, labels: torch.Tensor) -> list[torch.Tensor]:
        return stargan_conditions(labels, self.attribute_names)


def build_editor(checkpoint: PathLike | None = None, device: str | torch.device | None = None) -> StarGANEditor:
    """The official CelebA StarGAN (conv_dim 64, c_dim 5, 6 blocks) as an editor; ``checkpoint`` is an official
    ``200000-G.ckpt`` (a plain state dict; read with weights_only=True). Without a checkpoint the weights are random."""
    generator = StarGANGenerator()
    if checkpoint is None:
        warnings.warn("load_editor('stargan') without a checkpoint: the generator has random weights.", stacklevel=3)
    else:
        state = pick_state_dict(read_checkpoint(checkpoint, map_location=device or "cpu"), None, "StarGAN", checkpoint)
        load_into(generator, state, "StarGAN (conv_dim 64, c_dim 5, repeat_num 6)", checkpoint)
    if device is not None:
        generator.to(device)
    return StarGANEditor(generator)


register_layout("stargan", StarGANGenerator)
