"""A tiny StarGAN-shaped editor (8 channels, 1 residual block, 32x32) and data for the trainer tests."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters.defenses.base import Defense, project
from lora_patch_adapters.generators import StarGANEditor, StarGANGenerator
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import TrainingConfig


def tiny_editor(seed: int = 0) -> StarGANEditor:
    torch.manual_seed(seed)
    return StarGANEditor(StarGANGenerator(conv_dim=8, c_dim=5, repeat_num=1))


def tiny_data(n: int = 6, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=generator) * 2 - 1
    labels = (torch.rand(n, 5, generator=generator) > 0.5).float()
    return images, labels


def quick_config(**overrides) -> TrainingConfig:
    """A tiny run. The batched schedule unless asked (the paper's per-condition one is the library default, tested
    on its own); ``fast=True`` brings the "fast" preset's automatic channels_last and precision with it."""
    settings = {"batch_size": 2, "max_steps": 2, "seed": 3, "progress": False, "lr": 1e-2, "schedule": "batched"}
    if overrides.get("fast"):
        settings.update(channels_last=None, precision="auto")
    settings.update(overrides)
    return TrainingConfig(**settings)


class PatternAttack(Defense):
    """A deterministic 'attack' (a fixed function of x): lets schedules be compared exactly."""

    name = "pattern"

    def __init__(self, eps: float = 0.05) -> None:
        self.eps = eps

    def _protect(self, x: torch.Tensor, editor, conditions: list) -> torch.Tensor:
        return project(x + self.eps * torch.sign(torch.sin(997 * x)), x, self.eps)


@pytest.fixture
def pixel_loss() -> MMFALoss:
    return MMFALoss.pixel_only()
