"""Tiny models and random inputs shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

from lora_patch_adapters.generators import StarGANGenerator


class ToyEditor(nn.Module):
    """A StarGAN-shaped toy generator: 8 channels, 2 residual blocks (convs, 2 transposed convs, instance norm)."""

    def __init__(self, conv_dim: int = 8, c_dim: int = 5, repeat_num: int = 2) -> None:
        super().__init__()
        self.net = StarGANGenerator(conv_dim=conv_dim, c_dim=c_dim, repeat_num=repeat_num)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(x, c)


class MixedNet(nn.Module):
    """Conv2d, ConvTranspose2d and Linear layers in one model (32x32 RGB in, 4 numbers out)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1)
        self.head = nn.Linear(4 * 32 * 32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = torch.relu(self.up(h))
        return self.head(h.flatten(1))


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    """Random images in [-1, 1]."""
    return torch.rand(n, 3, size, size) * 2 - 1


def labels(n: int = 2, c_dim: int = 5) -> torch.Tensor:
    return (torch.rand(n, c_dim) > 0.5).float()
