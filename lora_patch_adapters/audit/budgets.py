"""Attacker budgets: how many training images and epochs the attacker spends on a bypass patch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._checks import check_int

# the paper's attacker (1000 images, one epoch) with a smaller and a larger one around it
DEFAULT_BUDGETS = "250x1,1000x1,2000x1"
_BUDGET_RE = re.compile(r"^\s*(\d+)\s*(?:[x*]\s*(\d+)\s*)?$")


@dataclass(frozen=True, order=True)
class Budget:
    """``images`` training images seen ``epochs`` times (``images * epochs`` image passes)."""

    images: int
    epochs: int = 1

    def __post_init__(self) -> None:
        for name in ("images", "epochs"):
            value = getattr(self, name)
            check_int(value, f"Budget {name}")

    @property
    def key(self) -> str:
        """``"<images>x<epochs>"``, e.g. ``"1000x1"``."""
        return f"{self.images}x{self.epochs}"

    @property
    def image_passes(self) -> int:
        return self.images * self.epochs


def parse_budgets(text: str) -> list[Budget]:
    """``"250,1000x1,1000x3"`` -> budgets sorted by image passes (then images); ``N`` means ``Nx1``."""
    budgets = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        match = _BUDGET_RE.match(part)
        if match is None:
            raise ValueError(f"Bad attacker budget {part.strip()!r}: write IMAGES or IMAGESxEPOCHS, e.g. "
                             "250,1000x1,1000x3.")
        budgets.append(Budget(int(match.group(1)), int(match.group(2) or 1)))
    if not budgets:
        raise ValueError(f"No attacker budget in {text!r}: write e.g. {DEFAULT_BUDGETS}.")
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"Repeated attacker budget in {text!r}.")
    return sorted(budgets, key=lambda b: (b.image_passes, b.images))
