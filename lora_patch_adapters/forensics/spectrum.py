"""The numerics of forensics: the numerical rank of a weight difference in both kernel views, above a round-off
floor, the per-layer verdict, the patch rank that fits every changed layer, and the rank of unmerged adapters."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from .report import ADAPTER_MARKERS, MIN_ENERGY, NOISE_FACTOR, LayerReport


def _noise_floor(magnitude: torch.Tensor, eps: float) -> float:
    """Spectral norm that storage round-off alone can give a difference whose weights have ``magnitude`` [m, n].

    Rounding a value ``x`` to the stored dtype moves it by at most half an ulp, ``<= eps * |x| / 2``, and the error
    is close to uniform, so its standard deviation is at most ``eps * |x| / sqrt(12)``. A matrix of independent
    errors with those deviations has a spectral norm close to (largest row norm + largest column norm) of the
    deviations (Latala; Bandeira and van Handel). Merging stores ``W + dW`` rounded once, so the difference to the
    reference is ``dW`` plus such a matrix; NOISE_FACTOR leaves a wide margin on both sides (the measured margins are
    in benchmarks/README.md, "Measurements behind defaults").
    """
    if magnitude.numel() == 0:
        return 0.0
    rows = magnitude.norm(dim=1).max().item()
    cols = magnitude.norm(dim=0).max().item()
    return NOISE_FACTOR * eps / math.sqrt(12.0) * (rows + cols)


def _views(tensor: torch.Tensor) -> list[tuple[str, int]]:
    """``(label, dim)`` pairs: the matrix views ``tensor.movedim(dim, 0).flatten(1)`` that are analysed."""
    if tensor.dim() == 2:
        return [("[dim0, rest]", 0)]
    return [("[dim0, rest]", 0), ("[dim1, rest]", 1)]


def _matrix(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    return tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)


def _singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a float64 ``[m, n]`` matrix, descending. A wide matrix is first reduced to the triangular
    factor of its QR decomposition (same singular values, Householder QR is backward stable): about twice as fast
    on the ``[256, 2304]`` kernels of StarGAN."""
    rows, cols = matrix.shape
    if cols > 2 * rows:
        matrix = torch.linalg.qr(matrix.T, mode="r").R
    elif rows > 2 * cols:
        matrix = torch.linalg.qr(matrix, mode="r").R
    return torch.linalg.svdvals(matrix)


@dataclasses.dataclass
class _Spectrum:
    view: str
    rank: int
    full_rank: int
    energy: float | None
    signal_energy: float | None
    threshold: float
    values: list[float]


def _spectrum(delta: torch.Tensor, magnitude: torch.Tensor, eps: float, rtol: float, view: str, dim: int) -> _Spectrum:
    matrix = _matrix(delta, dim)
    values = _singular_values(matrix)
    floor = _noise_floor(_matrix(magnitude, dim), eps)
    top = values[0].item() if values.numel() else 0.0
    threshold = max(rtol * top, floor)
    rank = int((values > threshold).sum().item())
    energy_all = float((values**2).sum().item())
    energy_top = float((values[:rank] ** 2).sum().item())
    energy = energy_top / energy_all if energy_all > 0 else None
    energy_signal = float((values[values > floor] ** 2).sum().item())
    signal = energy_top / energy_signal if energy_signal > 0 else None
    shown = values[: min(values.numel(), rank + 4, 40)].tolist()
    return _Spectrum(view, rank, min(matrix.shape), energy, signal, threshold, shown)


def compare_layer(name: str, model: torch.Tensor, reference: torch.Tensor, rtol: float) -> LayerReport:
    a = model.detach().to("cpu", torch.float64)
    b = reference.detach().to("cpu", torch.float64)
    delta = a - b
    shape = list(model.shape)
    if delta.numel() == 0:
        return LayerReport(name, shape, False, "unchanged")
    if not torch.isfinite(delta).all():
        return LayerReport(name, shape, True, "other change", max_abs_diff=None)  # NaN or inf: not a patch
    # The coarser of the two dtypes bounds the round-off (e.g. fp32 weights re-saved in bf16).
    eps = max(torch.finfo(model.dtype).eps, torch.finfo(reference.dtype).eps)
    magnitude = torch.maximum(a.abs(), b.abs())
    max_abs = delta.abs().max().item()
    ref_norm = b.norm().item()
    relative = delta.norm().item() / ref_norm if ref_norm > 0 else None
    if delta.dim() < 2:
        # A merged patch never touches 1-D tensors; a difference beyond one ulp is a real edit.
        changed = bool((delta.abs() > eps * magnitude).any())
        return LayerReport(name, shape, changed, "other change" if changed else "unchanged",
                           relative_change=relative, max_abs_diff=max_abs)
    if max_abs == 0.0:
        views = _views(delta)
        full = max(min(_matrix(delta, dim).shape) for _, dim in views)
        return LayerReport(name, shape, False, "unchanged", rank=0, full_rank=full, view=views[0][0],
                           relative_change=0.0, max_abs_diff=0.0)
    spectra = [_spectrum(delta, magnitude, eps, rtol, label, dim) for label, dim in _views(delta)]
    # A view whose rank is its full rank says nothing about the change (a [8, ...] view of a Conv2d with 8 input
    # channels is rank 8 whatever the patch), so prefer a rank-deficient view; among those (or among full-rank ones,
    # for a dense change) the smaller rank.
    best = min(spectra, key=lambda s: (s.rank >= s.full_rank, s.rank, -s.full_rank))
    changed = best.rank > 0
    report = LayerReport(name, shape, changed, "unchanged" if not changed else "other change",  # refined later
                         relative_change=relative, max_abs_diff=max_abs)
    _use_view(report, best)
    report._views = spectra  # both views, for patch_rank (not part of the report's fields)
    return report


def _use_view(report: LayerReport, spectrum: _Spectrum) -> None:
    report.rank, report.full_rank, report.view = spectrum.rank, spectrum.full_rank, spectrum.view
    report.energy_top_rank, report.signal_energy = spectrum.energy, spectrum.signal_energy
    report.threshold, report.singular_values = spectrum.threshold, spectrum.values


def patch_rank(layers: list[LayerReport]) -> int | None:
    """Set the verdict of the changed matrices; return the estimated patch rank (None if no low-rank layer).

    A layer is clearly low-rank when its rank is at most half its smaller dimension (a dense change is full rank)
    and the counted singular values carry the energy above the round-off floor (round-off spreads a little energy
    over every singular value, so ``energy_top_rank`` of a faint patch can be below 1). Those layers establish the
    patch rank ``r``; a changed layer whose rank is at most ``r`` fits the same patch even when it exceeds half its
    smaller side (e.g. a 24-row kernel under a rank-16 patch) or is full rank because it is too small to show ``r``
    (an RGB output conv has only 3 rows).
    """

    def energetic(layer: LayerReport) -> bool:
        return layer.signal_energy is not None and layer.signal_energy >= MIN_ENERGY

    changed = [layer for layer in layers if layer.changed and layer.is_matrix and layer.rank is not None]
    clear = [layer.rank for layer in changed if energetic(layer) and layer.rank <= layer.full_rank // 2]
    estimate = max(clear) if clear else None
    for layer in changed:
        # A layer with fewer output channels than the patch rank (e.g. the RGB output conv) is full rank in the view
        # that matches its type, while the other view shows a large rank; the view within the estimate fits.
        fitting = [s for s in getattr(layer, "_views", []) if estimate is not None and 0 < s.rank <= estimate]
        if estimate is not None and layer.rank > estimate and fitting:
            _use_view(layer, min(fitting, key=lambda s: s.rank))
        fits = layer.rank <= layer.full_rank // 2 or (estimate is not None and layer.rank <= estimate)
        layer.verdict = "low-rank patch merged" if energetic(layer) and fits else "other change"
    merged = [layer for layer in changed if layer.verdict == "low-rank patch merged"]
    below_full = [layer.rank for layer in merged if layer.rank < layer.full_rank]
    if below_full:
        return max(below_full)
    return max((layer.rank for layer in merged), default=None)


# ------------------------------------------------------------------------------------------------------ adapters
def adapter_report(adapters: Mapping[str, torch.Tensor], rtol: float) -> bool | dict[str, Any]:
    """False without adapter tensors; else ``{"kind", "adapters", "layers", "rank", "numerical_rank",
    "per_layer": [{"layer", "adapter", "rank", "numerical_rank"}], "tensors"}``."""
    if not adapters:
        return False
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in adapters.items():
        parts = name.split(".")
        index = next(i for i, part in enumerate(parts) if part in ADAPTER_MARKERS)
        rest = parts[index + 1:]
        adapter = rest[0] if len(rest) > 1 else "default"
        groups.setdefault((".".join(parts[:index]), adapter), {})[parts[index]] = tensor
    per_layer = []
    for (layer, adapter), tensors in sorted(groups.items()):
        a = tensors.get("lora_patch_A", tensors.get("lora_A"))
        b = tensors.get("lora_patch_B", tensors.get("lora_B"))
        if a is None or b is None or b.dim() < 2:
            continue
        r = int(b.shape[1])
        numerical = _product_rank(a, b, r, rtol)
        per_layer.append({"layer": layer, "adapter": adapter, "rank": r, "numerical_rank": numerical})
    kinds = {"lora-patch" if any(k.startswith("lora_patch_") for k in tensors) else "lora"
             for tensors in groups.values()}
    return {
        "kind": ", ".join(sorted(kinds)),
        "adapters": sorted({adapter for _, adapter in groups}),
        "layers": len({layer for layer, _ in groups}),
        "rank": max((entry["rank"] for entry in per_layer), default=None),
        "numerical_rank": max((entry["numerical_rank"] for entry in per_layer if entry["numerical_rank"] is not None),
                              default=None),
        "per_layer": per_layer,
        "tensors": len(adapters),
    }


def _product_rank(a: torch.Tensor, b: torch.Tensor, r: int, rtol: float) -> int | None:
    """Numerical rank of ``B @ A`` in the ``[out, in*kh*kw]`` view (A ``[r, ...]``, or ``[in, r, kh, kw]`` for a
    transposed convolution)."""
    b2 = b.detach().to("cpu", torch.float64).reshape(b.shape[0], b.shape[1])
    a64 = a.detach().to("cpu", torch.float64)
    if a64.shape[0] == r:
        a2 = a64.reshape(r, -1)
    elif a64.dim() == 4 and a64.shape[1] == r:
        a2 = a64.movedim(1, 0).reshape(r, -1)
    else:
        return None
    values = torch.linalg.svdvals(b2 @ a2)
    if values.numel() == 0 or values[0] == 0:
        return 0
    threshold = max(rtol, torch.finfo(torch.float64).eps * max(b2.shape[0], a2.shape[1])) * values[0]
    return int((values > threshold).sum().item())


