"""Shared fixtures: tiny models, deterministic seeds, CPU only."""

from __future__ import annotations

import pytest
import torch

import lora_patch_adapters  # noqa: F401  (registers the PEFT method)
from tests.helpers import MixedNet, ToyEditor


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def toy_editor() -> ToyEditor:
    return ToyEditor()


@pytest.fixture
def mixed_net() -> MixedNet:
    return MixedNet()
