"""What forensics reports: the verdict vocabulary, its thresholds, and the per-layer and overall reports."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

Source = nn.Module | Mapping | str | os.PathLike

VERDICTS = ("unchanged", "low-rank patch merged", "other change")
"""Per-layer verdicts."""
OVERALL_VERDICTS = ("unchanged", "low-rank patch merged", "unmerged patch", "other change", "changed")
"""Overall verdicts (``"changed"`` only with a fingerprint reference)."""

DEFAULT_RTOL = 1e-5
"""Singular values below ``rtol * s_max`` are not counted in the numerical rank."""
NOISE_FACTOR = 4.0
"""Safety factor of the round-off floor over the expected spectral norm of storage round-off (see ``_noise_floor``)."""
MIN_ENERGY = 0.999
"""A low-rank layer's counted singular values must carry this fraction of the energy above the round-off floor."""

ADAPTER_MARKERS = (
    "lora_patch_A", "lora_patch_B", "lora_patch_gate",
    "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
)
"""A tensor whose name has one of these segments belongs to an adapter, not to the base network."""
STATISTICS = ("running_mean", "running_var")
"""Normalisation statistics: buffers that every forward pass in train mode updates (not weights)."""
GENERATOR_KEYS = ("gen_test", "gen", "G")
"""Keys under which official checkpoints hold the generator (HiSD EMA weights first, then HiSD, AttGAN)."""


class ForensicsError(ValueError):
    """Bad input to the forensics: a missing or unsafe file, a malformed fingerprint, incompatible weights."""


# ------------------------------------------------------------------------------------------------------- reports
@dataclasses.dataclass
class LayerReport:
    """One compared tensor.

    ``rank``: numerical rank of the difference in the matrix view that shows it (a rank-deficient view first, the
    smaller rank among those; a view within the network's patch rank for layers too narrow to show it; None for 1-D
    tensors);
    ``full_rank``: ``min(rows, cols)`` of that view; ``relative_change``: ``||dW||_F / ||W_ref||_F`` (None when the
    reference is zero); ``energy_top_rank``: ``sum_{i<=rank} s_i^2 / sum s_i^2`` in [0, 1]; ``signal_energy``: the
    same over the singular values above the round-off floor only (below 1 only when ``rtol`` cuts off real
    components); ``max_abs_diff``: largest ``|dW|`` entry (None if non-finite); ``threshold``: the singular-value
    cut-off used; ``singular_values``: the largest few singular values of the difference.
    """

    name: str
    shape: list[int]
    changed: bool
    verdict: str
    rank: int | None = None
    full_rank: int | None = None
    view: str | None = None
    relative_change: float | None = None
    energy_top_rank: float | None = None
    signal_energy: float | None = None
    max_abs_diff: float | None = 0.0
    threshold: float | None = None
    singular_values: list[float] = dataclasses.field(default_factory=list)

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ForensicsReport:
    """The result of :func:`analyse`; ``to_dict()`` is JSON-ready.

    ``verdict`` is one of :data:`OVERALL_VERDICTS`; ``rank`` the estimated patch rank (merged: the largest rank of a
    changed layer below its full rank; unmerged: the adapters' rank); ``changed_layers`` / ``weight_layers`` count
    the changed / compared weight matrices; ``unmerged_patch`` is False or a dict describing the adapter tensors.
    """

    verdict: str
    rank: int | None
    model: str
    reference: str
    reference_kind: str  # "weights", "fingerprint" or "patch"
    layers: list[LayerReport] = dataclasses.field(default_factory=list)
    changed_layers: int = 0
    weight_layers: int = 0
    other_changed: int = 0
    added: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    statistics_changed: list[str] = dataclasses.field(default_factory=list)
    unmerged_patch: bool | dict[str, Any] = False
    fingerprint: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    rtol: float = DEFAULT_RTOL

    def summary(self) -> str:
        """The one-line verdict, e.g. ``low-rank patch merged (rank 8, 12 of 12 weight layers changed)``."""
        if self.reference_kind != "weights":
            match = self.fingerprint and self.fingerprint.get("match")
            detail = "fingerprint matches" if match else "fingerprint differs"
        else:
            detail = f"{self.changed_layers} of {self.weight_layers} weight layers changed"
            if self.other_changed:
                detail += f", {self.other_changed} other tensors changed"
            if self.added or self.removed:
                detail += f", {len(self.added)} added, {len(self.removed)} removed"
        if self.verdict == "unmerged patch" and isinstance(self.unmerged_patch, dict):
            detail = f"{self.unmerged_patch['layers']} adapted layers; base weights: {detail}"
        if self.rank is not None:
            detail = f"rank {self.rank}, {detail}"
        return f"{self.verdict} ({detail})"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = [layer.to_dict() for layer in self.layers]
        data["summary"] = self.summary()
        return data

