"""One seed for everything: Python, NumPy and torch RNGs, plus per-step seeds derived from it."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: spreads (seed, step) pairs over the seed space


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, *keys: int) -> int:
    """A deterministic seed in [0, 2**31) for ``keys`` (e.g. epoch, step) under the run's ``seed``."""
    value = seed & 0xFFFFFFFFFFFFFFFF
    for key in keys:
        value = ((value ^ (key + 1)) * _MIX) & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 29
    return value % 2**31


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain Python values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()),
                             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
