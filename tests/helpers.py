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


def fake_celeba(root, rows=(0, 1, 29000, 29001)):
    """A 30000-row CelebA attribute file (both paper splits) under ``root``, with images only for ``rows``;
    returns ``(image folder, attribute file)``."""
    from PIL import Image

    from lora_patch_adapters.data import CELEBA_ATTRIBUTES

    images = root / "img_align_celeba"
    images.mkdir()
    generator = torch.Generator().manual_seed(0)
    flags = torch.randint(0, 2, (30000, len(CELEBA_ATTRIBUTES)), generator=generator) * 2 - 1
    lines = [f"{i + 1:06d}.jpg " + " ".join(map(str, flags[i].tolist())) for i in range(30000)]
    attr = root / "list_attr_celeba.txt"
    attr.write_text("\n".join(["30000", " ".join(CELEBA_ATTRIBUTES), *lines]) + "\n")
    for i in rows:
        Image.new("RGB", (178, 218), (40 + 50 * (i % 3), 120, 90)).save(images / f"{i + 1:06d}.jpg")
    return images, attr


def write_celeba_attr(path, filenames):
    """A valid CelebA attribute file at ``path`` listing ``filenames`` (all 40 attributes; row r has 1 at the columns
    c with (r + c) even, -1 elsewhere); returns ``path``."""
    from lora_patch_adapters.data import CELEBA_ATTRIBUTES

    rows = [
        name + "".join(f" {1 if (r + c) % 2 == 0 else -1:>2}" for c in range(40)) for r, name in enumerate(filenames)
    ]
    path.write_text("\n".join([str(len(filenames)), " ".join(CELEBA_ATTRIBUTES), *rows]) + "\n")
    return path
