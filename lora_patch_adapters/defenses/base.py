"""What every proactive defense shares: the ``protect`` contract, budget checks, the disruption objective.

A defense turns clean images x [N, 3, H, W] in [-1, 1] into protected images within an L-inf budget ``eps`` (in the
[-1, 1] scale; 0.05 there is 0.025 on [0, 1]) such that an editor's output on them differs from its output on the
clean images. ``protect(x, editor, condition)`` targets one condition; given a list of conditions it returns one
protected image meant to disrupt all of them. Defenses never modify their input tensor and are deterministic given
their ``seed``.
"""

from __future__ import annotations

import contextlib
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F

from .._checks import check_images
from ..generators.base import Editor
from .checks import check_image_range

Conditions = Union[Any, Sequence[Any]]

_inputs_checked = contextvars.ContextVar("lora_patch_inputs_checked", default=False)


@contextlib.contextmanager
def inputs_already_checked() -> Iterator[None]:
    """Inside this context :meth:`Defense.protect` skips its [-1, 1] range check (reading the range back from a GPU
    stalls the pipeline); for callers that validated the images themselves, e.g. on the CPU before the copy."""
    token = _inputs_checked.set(True)
    try:
        yield
    finally:
        _inputs_checked.reset(token)


def as_condition_list(condition: Conditions) -> list:
    """One condition -> [condition]; a list/tuple of conditions -> list. Tensors are single conditions."""
    if isinstance(condition, (list, tuple)):
        if not condition:
            raise ValueError("The list of conditions is empty.")
        return list(condition)
    return [condition]


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x_adv`` into the L-inf ball of radius ``eps`` around ``x`` and into [-1, 1]."""
    return torch.max(torch.min(x_adv, x + eps), x - eps).clamp(-1.0, 1.0)


def disruption_loss(editor: Editor, x_adv: torch.Tensor, conditions: list, references: list) -> torch.Tensor:
    """Mean over conditions of MSE(editor(x_adv, c), reference_c): the quantity the defenses maximise."""
    total = x_adv.new_zeros(())
    for condition, reference in zip(conditions, references):
        total = total + F.mse_loss(editor.edit(x_adv, condition), reference)
    return total / len(conditions)


@torch.no_grad()
def clean_edits(editor: Editor, x: torch.Tensor, conditions: list) -> list:
    """The editor's outputs on the clean images, one per condition (the references the attack moves away from)."""
    return [editor.edit(x, condition).detach() for condition in conditions]


NoiseRows = tuple[Sequence[int], int]


def seeded_uniform(like: torch.Tensor, eps: float, seed: int, rows: NoiseRows | None = None) -> torch.Tensor:
    """U(-eps, eps) noise shaped like ``like``, drawn on the CPU from ``seed`` (the same on every device).

    ``rows=(indices, total)``: ``like`` holds rows ``indices`` of a batch of ``total`` rows; the noise is drawn for
    the whole batch and those rows are returned, so a shard of a batch (one process of a data-parallel run) gets the
    same noise as the full batch in one process.
    """
    generator = torch.Generator().manual_seed(seed)
    if rows is None:
        noise = torch.rand(like.shape, generator=generator, dtype=torch.float32)
    else:
        indices, total = rows
        if len(indices) != like.shape[0] or any(not 0 <= i < total for i in indices):
            raise ValueError(f"rows must name {like.shape[0]} row indices in [0, {total}), got {list(indices)}.")
        noise = torch.rand((total, *like.shape[1:]), generator=generator, dtype=torch.float32)[list(indices)]
    noise = (noise * 2 - 1) * eps
    if like.device.type == "cuda":  # pinned + non-blocking: a pageable copy would synchronise with the GPU
        return noise.pin_memory().to(device=like.device, dtype=like.dtype, non_blocking=True)
    return noise.to(device=like.device, dtype=like.dtype)


class Defense(ABC):
    """Base class: subclasses implement :meth:`_protect` on validated inputs."""

    name: str = "defense"
    eps: float = 0.05
    # set by data-parallel trainers for one call: the images are these rows of a larger batch (see seeded_uniform)
    noise_rows: NoiseRows | None = None

    def protect(self, x: torch.Tensor, editor: Editor, condition: Conditions) -> torch.Tensor:
        """Protected images [N, 3, H, W] in [-1, 1], within ``eps`` of ``x`` (L-inf); ``x`` is not modified."""
        if not _inputs_checked.get():
            check_image_range(x)
        else:
            check_images(x)
        if not isinstance(editor, Editor):
            raise TypeError(
                f"protect() needs an Editor (see lora_patch_adapters.load_editor / wrap), got {type(editor).__name__}."
            )
        x = x.detach()
        with torch.enable_grad():
            x_protected = self._protect(x, editor, as_condition_list(condition))
        return project(x_protected.detach(), x, self.eps)

    @abstractmethod
    def _protect(self, x: torch.Tensor, editor: Editor, conditions: list) -> torch.Tensor:
        """Return protected images for ``conditions`` (projected again by :meth:`protect`)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
