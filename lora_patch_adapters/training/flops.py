"""Counting training FLOPs with torch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``).

Written by hand around the counter for one reason: its per-module tracker adds backward hooks to module inputs, and
``torch.autograd.grad`` on a leaf input (what every inner attack does) then fails (pytorch/pytorch#131753). Only the
total is wanted here, so the tracker is replaced by a stand-in that attributes every op to "Global".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode


class _TotalOnly:
    """Stands in for FlopCounterMode's per-module tracker: every op counts towards the global total."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _TotalOnly:
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode(display=False)`` counting the total only (``get_total_flops()``): the FLOPs of the aten
    matmul / convolution ops, forward and backward (inner attack included; optimiser and elementwise ops count 0)."""
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _TotalOnly()
    return counter


def count_flops(run: Callable[[], Any]) -> int:
    """Total FLOPs of what ``run()`` executes, forward and backward."""
    with flop_counter() as counter:
        run()
    return int(counter.get_total_flops())
