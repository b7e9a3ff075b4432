"""Checks and message helpers shared by every floor of the package (this module imports nothing from it).

* :func:`one_line` -- a library message folded onto one line (and shortened), for one-line errors;
* :func:`check_int`, :func:`check_positive_int`, :func:`check_number` -- argument checks whose messages name the
  argument and the accepted range;
* :func:`check_images`, :func:`check_value_range` -- image batches: float ``[N, C, H, W]``, finite, within [-1, 1].
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` on one line (runs of white space folded), shortened to ``limit`` characters when given."""
    line = " ".join(str(text).split())
    if limit is None or len(line) <= limit:
        return line
    return line[: limit - 3] + "..."


def _integer_phrase(minimum: int) -> str:
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer >= {minimum}"


def check_int(value: Any, name: str, minimum: int = 1, allow_none: bool = False, hint: str = "") -> Any:
    """``value`` if it is an int (not a bool) >= ``minimum`` (or None when allowed), else a ``ValueError`` that names
    ``name``, the accepted range and ``hint``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {_integer_phrase(minimum)}{' or None' if allow_none else ''}{hint}, "
                         f"got {value!r}.")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """``check_int(value, name, minimum=1)``."""
    return check_int(value, name)


def check_number(value: Any, name: str, minimum: float | None = 0.0, strict: bool = True,
                 maximum: float | None = None, allow_none: bool = False, hint: str = "", what: str = "") -> Any:
    """``value`` as a float if it is a finite real number (not a bool) above ``minimum`` (``strict``: ``>``, else
    ``>=``; None: no bound) and at most ``maximum``, or None when allowed; else a ``ValueError`` naming ``name``
    and the accepted range (``what`` words it instead, e.g. ``"> 0"``)."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        if maximum is not None and minimum is not None:
            phrase = f"in {'(' if strict else '['}{minimum:g}, {maximum:g}]"
        elif minimum == 0:
            phrase = "a positive finite number" if strict else "a finite number >= 0"
        elif minimum is not None:
            phrase = f"a finite number {'>' if strict else '>='} {minimum:g}"
        else:
            phrase = "a finite number"
        raise ValueError(f"{name} must be {what or phrase}{' or None' if allow_none else ''}{hint}, got {value!r}.")
    return float(value)


# ---------------------------------------------------------------------------------------------------------- images
def check_images(x: Any, name: str = "images", channels: int | None = 3, allow_empty: bool = True) -> Any:
    """``x`` if it is a floating tensor [N, C, H, W] (C = ``channels`` unless None; N >= 1 unless ``allow_empty``),
    else a ``TypeError`` / ``ValueError`` that names ``name`` and the fix."""
    import torch  # here: this module is imported by code that must not pull torch in (the CLI parser)

    layout = f"[N, {channels if channels is not None else 'C'}, H, W]"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout} in [-1, 1], got {type(x).__name__}.")
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        hint = ""
        if x.dim() == 3 and (channels is None or x.shape[0] == channels):
            hint = "; add a batch dimension with x.unsqueeze(0)"
        elif x.dim() == 4 and channels is not None and x.shape[-1] == channels:
            hint = "; it looks channels-last: use x.permute(0, 3, 1, 2)"
        what = f"have {channels} channels, shaped" if x.dim() == 4 else "be a batch shaped"
        raise ValueError(f"{name} must {what} {layout} (channels first), got {tuple(x.shape)}{hint}.")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point in [-1, 1] (a floating-point dtype such as float32), got "
                        f"{x.dtype}; convert uint8 with x.float() / 127.5 - 1.")
    if not allow_empty and x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}).")
    return x


RANGE_TOLERANCE = 1e-3
"""How far outside [-1, 1] an image value may be (rounding) before it is refused."""


def check_value_range(x: Any, name: str = "images", check_range: bool = True, hint_unbounded: str = "") -> None:
    """No NaN in ``x`` and (``check_range``) every value within [-1, 1] up to :data:`RANGE_TOLERANCE`, else a
    ``ValueError`` that guesses the scale the values are on. Reads two numbers back from the device."""
    import torch

    if x.numel() == 0:
        return
    low, high = (v.item() for v in torch.aminmax(x.detach()))
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"{name} contains NaN; check the generator or defense that produced it.")
    if check_range and (low < -1.0 - RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE):
        if high > 2.0:
            hint = "they look like [0, 255]: use x / 127.5 - 1"
        elif low >= 0.0:
            hint = "if they are [0, 1] images use x * 2 - 1"
        else:
            hint = hint_unbounded or "clamp them with x.clamp(-1, 1)"
        raise ValueError(f"{name} must lie in [-1, 1], got values in [{low:.4f}, {high:.4f}] ({hint}).")


def state_dict_problems(expected: dict[str, Any], given: dict[str, Any], shown: int = 5) -> list[str]:
    """What keeps ``given`` (name -> tensor) from loading where ``expected`` (name -> tensor of the right shape) is
    wanted: ``["missing keys: a, b (+3 more)", "unexpected keys: ...", "wrong shapes: w (3, 3) != (4, 3)"]``, the
    first ``shown`` of each kind; empty when it matches."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in given and given[k].shape != v.shape]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            problems.append(f"{label}: {', '.join(keys[:shown])}{more}")
    return problems
