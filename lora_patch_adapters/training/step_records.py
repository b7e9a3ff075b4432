"""What one training step leaves behind for the loop: the fast path's pending record (numbers still on the device)
and the error that stops a run whose loss or gradient is no longer finite."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient became NaN/Inf; the step was not applied."""


@dataclass
class Pending:
    """A fast-path step whose numbers are still on the device: loop position before the step, learning rate, host
    start time, loss terms, max gradient norm, and one non-finite flag per optimiser step."""

    position: tuple[int, int, int]
    lr: float
    start: float
    terms: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    flags: torch.Tensor
