"""``EnsembleEditor``: several editors seen as one, so that any defense can be computed against all of them at once.

``edit(x, c)`` returns the members' outputs concatenated along the channel axis, [N, 3·K, H, W]. A defense that
maximises a distance between ``edit(x_adv, c)`` and ``edit(x, c)`` (MSE, L1, ...) then maximises the mean of that
distance over the K members without knowing about them: this is how the audit builds a *patch-aware* defender
(the base generator plus patches the defender trained itself). Conditions come from the first member.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import Editor, check_images


class EnsembleEditor(Editor):
    """The editors ``members`` (sharing one condition format, e.g. one base generator and patched copies of it)."""

    def __init__(self, members: Sequence[Editor], name: str = "ensemble") -> None:
        members = list(members)
        if not members or not all(isinstance(m, Editor) for m in members):
            raise TypeError("EnsembleEditor needs a non-empty list of Editors.")
        formats = {tuple(m.attribute_names) for m in members}
        if len(formats) > 1:
            raise ValueError(f"The members' attributes differ ({sorted(formats)}): they must share one condition "
                             "format (patched copies of one generator).")
        super().__init__(nn.ModuleList([m.generator for m in members]))
        self.members = members
        self.name = name
        self.attribute_names = members[0].attribute_names

    def edit(self, x: torch.Tensor, condition: Any) -> torch.Tensor:
        """[N, 3·K, H, W]: member ``k``'s edit in channels ``3k .. 3k+2``."""
        check_images(x)
        return torch.cat([member.edit(x, condition) for member in self.members], dim=1)

    __call__ = edit

    def _run(self, x: torch.Tensor, condition: Any) -> torch.Tensor:  # edit() is overridden; kept for the ABC
        return self.edit(x, condition)

    def conditions(self, labels: torch.Tensor) -> list[Any]:
        return self.members[0].conditions(labels)

    def concat_conditions(self, conditions: Sequence[Any]) -> Any | None:
        return self.members[0].concat_conditions(conditions)
