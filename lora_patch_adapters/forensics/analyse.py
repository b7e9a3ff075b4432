""":func:`analyse`: has this generator been patched, and how? (See :mod:`lora_patch_adapters.forensics`.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .report import DEFAULT_RTOL, STATISTICS, ForensicsError, ForensicsReport, Source
from .spectrum import adapter_report, compare_layer, patch_rank
from .weights import (
    ExpectedReference,
    describe_source,
    expected_reference,
    fingerprint_layers,
    fingerprint_weights,
    read_weights,
    split_adapters,
)


def analyse(model: Source, reference: Source, *, rtol: float = DEFAULT_RTOL,
            include_running_stats: bool = False) -> ForensicsReport:
    """Compare ``model`` with ``reference`` and say whether (and how) it was patched.

    ``model``: any source :func:`read_weights` accepts. ``reference``: the same, or a fingerprint
    ``"sha256:<64 hex>"`` (``base_fingerprint(model)`` over every Conv2d/ConvTranspose2d/Linear layer), or
    a saved patch directory / its ``lora_patch.json`` (its recorded ``base_fingerprint`` over its
    ``target_modules``). ``rtol`` in (0, 1): singular values below ``rtol * s_max`` are not counted (a round-off
    floor from the dtype's epsilon applies as well). ``running_mean`` / ``running_var`` buffers change with every
    train-mode forward pass; they are listed in ``statistics_changed`` and only count as a change with
    ``include_running_stats=True``. Raises :class:`ForensicsError` (a ``ValueError``) for bad input.

    The cost is two small SVDs per 4-D weight (about 0.8 s for StarGAN on one CPU thread); on a busy machine
    ``torch.set_num_threads(1)`` avoids OpenMP threads waiting for each other (the command line does this).
    """
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ForensicsError(f"rtol must be a number in (0, 1), got {rtol!r}.")
    base, adapters = split_adapters(read_weights(model, "model"))
    if not base:
        raise ForensicsError(
            f"the model {describe_source(model)} holds only adapter tensors (a saved patch, not a generator); pass the "
            "patched generator's weights."
        )
    unmerged = adapter_report(adapters, rtol)
    expected = expected_reference(reference)
    if expected is not None:
        return _analyse_fingerprint(model, reference, base, unmerged, expected, rtol)

    ref_base, ref_adapters = split_adapters(read_weights(reference, "reference"))
    notes = []
    if ref_adapters:
        notes.append(f"the reference holds {len(ref_adapters)} adapter tensors; they were ignored.")

    def comparable(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in weights.items() if v.is_floating_point() and not k.endswith("num_batches_tracked")}

    ours, theirs = comparable(base), comparable(ref_base)
    common = [k for k in ours if k in theirs]
    if not common:
        raise ForensicsError("the model and reference share no weight names — is it the same architecture?")
    for key in common:
        if ours[key].shape != theirs[key].shape:
            raise ForensicsError(
                f"tensor {key!r} has shape {list(ours[key].shape)} in the model and {list(theirs[key].shape)} in "
                "the reference: they are different architectures or variants; compare like with like."
            )
    layers, statistics = [], []
    for key in common:
        report = compare_layer(key, ours[key], theirs[key], float(rtol))
        if key.rsplit(".", 1)[-1] in STATISTICS and not include_running_stats:
            if report.changed:
                statistics.append(key)
            continue
        layers.append(report)
    rank = patch_rank(layers)
    added = [k for k in ours if k not in theirs]
    removed = [k for k in theirs if k not in ours]
    matrices = [layer for layer in layers if layer.is_matrix]
    changed = [layer for layer in layers if layer.changed]
    if unmerged:
        verdict = "unmerged patch"
        rank = unmerged["rank"]
        if changed:
            notes.append("the base weights differ from the reference as well (see the layers): a patch may be merged "
                         "in addition to the adapter tensors.")
    elif not changed and not added and not removed:
        verdict, rank = "unchanged", None
    elif not added and not removed and all(layer.verdict == "low-rank patch merged" for layer in changed):
        verdict = "low-rank patch merged"
    else:
        verdict, rank = "other change", None
    subtle = [layer.name for layer in layers if not layer.changed and layer.max_abs_diff]
    if subtle:
        notes.append(f"{len(subtle)} tensors differ at float round-off level only (e.g. a dtype round trip): "
                     f"{', '.join(subtle[:3])}{' ...' if len(subtle) > 3 else ''}.")
    if statistics:
        notes.append(f"{len(statistics)} normalisation statistics (running_mean / running_var) differ; every forward "
                     "pass in train mode updates them, so they are not counted as a change.")
    dtypes = {(str(ours[k].dtype), str(theirs[k].dtype)) for k in common if ours[k].dtype != theirs[k].dtype}
    if dtypes:
        notes.append("model and reference dtypes differ (" + ", ".join(f"{a} vs {b}" for a, b in sorted(dtypes))
                     + "); the round-off floor follows the coarser one.")
    return ForensicsReport(
        verdict=verdict, rank=rank, model=describe_source(model), reference=describe_source(reference), reference_kind="weights",
        layers=layers, changed_layers=sum(layer.changed for layer in matrices), weight_layers=len(matrices),
        other_changed=sum(layer.changed for layer in layers if not layer.is_matrix), added=added, removed=removed,
        statistics_changed=statistics, unmerged_patch=unmerged, notes=notes, rtol=float(rtol),
    )


def _analyse_fingerprint(model: Any, reference: Any, base: dict[str, torch.Tensor], unmerged: bool | dict[str, Any],
                         expected: ExpectedReference, rtol: float) -> ForensicsReport:
    names = fingerprint_layers(base, expected.layers)
    actual = fingerprint_weights(base, names)
    match = actual == expected.fingerprint
    if unmerged:
        verdict, rank = "unmerged patch", unmerged["rank"]
    else:
        verdict, rank = ("unchanged" if match else "changed"), None
    notes = [] if match else [
        ("the fingerprints differ; per-layer analysis (which layers, what rank) needs the reference weights: pass "
         "the base generator's checkpoint as the reference.")
    ]
    return ForensicsReport(
        verdict=verdict, rank=rank, model=describe_source(model), reference=describe_source(reference),
        reference_kind=expected.kind, unmerged_patch=unmerged, notes=notes, rtol=float(rtol),
        fingerprint={"expected": expected.fingerprint, "actual": actual, "match": match, "layers": len(names)},
    )


