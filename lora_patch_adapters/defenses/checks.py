"""Argument checks of the defenses: budgets, step sizes, learning rates, seeds, images (one place, one wording)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_images, check_int, check_number, check_positive_int, check_value_range
from .transforms import parse_eot

__all__ = ["check_eot", "check_eps", "check_image_range", "check_lab_eps", "check_lr", "check_noise_rows",
           "check_positive_int", "check_seed", "check_step_size"]


def check_eps(eps: float, name: str = "eps") -> float:
    """``eps`` as a float in (0, 1] (the L-inf budget on the [-1, 1] image scale), or a clear error."""
    return check_number(eps, name, maximum=1, hint=" on the [-1, 1] image scale (0.05 is the usual budget)")


def check_lab_eps(eps: float) -> float:
    """Anti-Forgery's budget: (0, 1] in normalised Lab units."""
    return check_number(eps, "eps", maximum=1, hint=" (Anti-Forgery's budget on the a/b channels in normalised Lab "
                                                    "units, a / 110 and b / 110; the paper uses 0.05)")


def check_step_size(step_size: float) -> float:
    return check_number(step_size, "step_size", what="> 0", hint=" (0.01 on the [-1, 1] scale is the usual value)")


def check_lr(lr: float) -> float:
    return check_number(lr, "lr", hint=" (Adam's learning rate; the paper uses 1e-4)")


def check_seed(seed: int) -> int:
    return check_int(seed, "seed", minimum=0)


def check_noise_rows(rows: Any) -> tuple[tuple[int, ...], int]:
    """``rows = (indices, total)`` -- the images are rows ``indices`` of a batch of ``total`` -- as a tuple of ints
    and an int, or a clear error (whether the indices fit the images is checked when the noise is drawn)."""
    hint = ("noise_rows must be a pair (indices, total): the images are rows `indices` (a list of ints) of a batch "
            "of `total` rows")
    if not isinstance(rows, (tuple, list)) or len(rows) != 2 or not isinstance(rows[0], Sequence) \
            or isinstance(rows[0], (str, bytes)):
        raise ValueError(f"{hint}, got {rows!r}.")
    indices, total = rows
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in indices):
        raise ValueError(f"{hint}; the indices must be ints, got {list(indices)!r}.")
    return tuple(int(i) for i in indices), check_int(total, "noise_rows' total", minimum=1)


def check_image_range(x: torch.Tensor, what: str = "images") -> None:
    """Images must be float [N, 3, H, W], finite and within [-1, 1] (a small tolerance for rounding)."""
    check_value_range(check_images(x, what), what)


def check_eot(eot: Any) -> tuple[str, ...] | None:
    """The ``eot=`` option of the defenses: None, or a non-empty list of distinct transformation names
    (``identity``, ``jpeg<Q>``, ``blur<S>``; see :mod:`.transforms`) as a tuple of canonical names, or a clear error
    naming ``eot`` and the accepted forms."""
    try:
        return parse_eot(eot)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc) if str(exc).startswith("eot") else f"eot: {exc}") from None
