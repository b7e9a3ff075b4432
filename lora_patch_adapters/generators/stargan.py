"""StarGAN generator (Choi et al., CVPR 2018) with the official module layout.

Parameter and buffer names match the official release (``main.0.weight`` ... ``main.21.weight``), so an official
``200000-G.ckpt`` state dict fits with ``strict=True``. Layout: 7x7 conv, two 4x4 stride-2 down-sampling convs,
``repeat_num`` residual blocks, two 4x4 stride-2 transposed convs, 7x7 conv to RGB and tanh; every conv is bias-free and
followed by ``InstanceNorm2d(affine=True, track_running_stats=True)``.

Official inference keeps the generator in train mode, so instance norm uses per-image statistics; in ``eval()`` it
would use the stored running statistics instead and the results differ.
"""

from __future__ import annotations

import torch
from torch import nn


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
