"""Describing a patch without loading its weights: :func:`inspect_patch` reads a patch directory or Hub repo (pulled
with :func:`~lora_patch_adapters.patches.hub.pull_patch`): config, parameter count read from the safetensors header,
layers, base fingerprint, package version, training budget, metrics."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from safetensors import safe_open

from .._checks import one_line
from .errors import PatchNotFoundError
from .format import PICKLE_WEIGHTS, REQUIRED_FILES, SIDECAR_NAME
from .hub import pull_patch
from .hub_common import SHA_RE


def inspect_patch(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                  local_files_only: bool = False) -> dict[str, Any]:
    """Describe a patch directory or Hub repo (pulled with :func:`pull_patch`) without loading its weights.

    Returns a JSON-serialisable dict: ``source``, ``path``, ``repo_id`` / ``revision`` / ``commit`` (Hub only),
    ``files``, ``peft_type``, ``config`` (adapter_config.json), ``patch`` (rank, alpha, scale, gate, init, ...),
    ``target_modules``, ``trainable_parameters`` (sum of the tensor sizes in the safetensors header), ``tensors``,
    ``dtypes``, ``layers`` (name, rank, parameters per patched layer), ``fingerprint`` (of the base generator) with
    ``fingerprint_source`` (``"lora_patch.json"`` / ``"adapter_config.json"``: recorded by the patch and checked
    against the model by ``load_patch``; ``"card (claimed)"``: only the model card states it, nothing checks it) and
    ``card_fingerprint`` (what the card claims, None without a card; inspect checks neither against a model),
    ``package_version``, ``base_generator``, ``kind``, ``training`` (images, epochs, steps, seconds when recorded)
    and ``metrics``. Each is read from one named field: the provenance ``save_patch`` wrote in ``lora_patch.json``
    (``training.kind``, ``training.generator``, ``training.images``, ``training.steps``,
    ``training.epochs_completed``, ``training.metrics``), a run's ``summary.json`` placed beside the patch (its
    headline rates, ``rates`` and ``training.seconds``), and for patches without provenance the Hub card's metadata.
    """
    source = os.fspath(path_or_repo_id)
    repo_id = commit = None
    if os.path.isdir(source):
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to Hub repos; {source!r} is a local directory")
        path = source
    else:
        repo_id = source
        try:
            path = pull_patch(source, revision=revision, local_files_only=local_files_only)
        except PatchNotFoundError as exc:
            if exc.reason not in ("repo", "repo_id"):
                raise
            raise PatchNotFoundError(f"{exc} (and there is no local directory {source!r})", repo_id=source,
                                     revision=revision, status_code=exc.status_code, reason=exc.reason) from exc
        name = os.path.basename(os.path.normpath(path))
        commit = name if SHA_RE.fullmatch(name) else None
    info = describe_patch_dir(path)
    return {"source": source, "path": os.path.abspath(path), "repo_id": repo_id, "revision": revision,
            "commit": commit, **info}


def describe_patch_dir(path: str) -> dict[str, Any]:
    """Everything :func:`inspect_patch` reports, from the files of one patch directory."""
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            pickles = [p for p in PICKLE_WEIGHTS if os.path.isfile(os.path.join(path, p))]
            if name == "adapter_model.safetensors" and pickles:
                raise ValueError(f"{path!r} holds pickle weights ({', '.join(pickles)}) only; lora-patch shares "
                                 "safetensors only: re-save with save_pretrained(..., safe_serialization=True)")
            raise FileNotFoundError(f"{path!r} is not a patch directory (no {name})")
    config = _read_json(os.path.join(path, "adapter_config.json"), required=True)
    sidecar = _read_json(os.path.join(path, SIDECAR_NAME))  # provenance written by save_patch
    record = sidecar.get("training") if isinstance(sidecar.get("training"), dict) else {}
    summary = _read_json(os.path.join(path, "summary.json"))  # a run's RunSummary placed beside the patch
    card = _card_metadata(os.path.join(path, "README.md"))  # a Hub card: fallback for patches without provenance
    tensors = _safetensors_shapes(os.path.join(path, "adapter_model.safetensors"))

    layers: dict[str, dict[str, Any]] = {}
    total = 0
    for key, (shape, _dtype) in tensors.items():
        n = math.prod(shape)
        total += n
        name = key.removeprefix("base_model.model.")
        layer, sep, part = name.partition(".lora_patch_")
        if not sep:
            layer, part = name, "(saved module)"
        entry = layers.setdefault(layer, {"name": layer, "rank": None, "parameters": 0})
        entry["parameters"] += n
        if part[:2] in ("A.", "B."):
            entry.setdefault("_shapes", []).append(shape[:2])
    for entry in layers.values():  # the rank is the dimension A and B share (A: [r, in] or [in, r] when transposed)
        shapes = entry.pop("_shapes", [])
        if len(shapes) == 2:
            shared = set(shapes[0]) & set(shapes[1])
            entry["rank"] = config.get("r") if config.get("r") in shared else min(shared, default=None)
    patch = {k: config.get(k) for k in ("r", "lora_alpha", "scaling", "gate", "gate_init", "init_weights",
                                         "forward_mode", "include_linear") if k in config}
    if isinstance(config.get("r"), int) and config.get("lora_alpha"):
        alpha, r = float(config["lora_alpha"]), config["r"]
        rule = config.get("scaling", "sqrt_rank")
        patch["scale"] = alpha / (r if rule == "rank" else r ** 0.5)  # of a convolution layer
        if rule == "official":  # the paper's code: Linear layers are not divided
            patch["linear_scale"] = alpha
    generator = (record.get("generator") or card.get("base_generator")
                 or (config.get("auto_mapping") or {}).get("base_model_class"))
    fingerprint, fingerprint_source = _fingerprint(sidecar, config, card)
    return {
        "files": sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f))),
        "peft_type": config.get("peft_type"),
        "config": config,
        "patch": patch,
        "target_modules": config.get("target_modules"),
        "trainable_parameters": total,
        "tensors": len(tensors),
        "dtypes": sorted({dtype for _, dtype in tensors.values()}),
        "layers": sorted(layers.values(), key=lambda e: e["name"]),
        "fingerprint": fingerprint,
        "fingerprint_source": fingerprint_source,
        "card_fingerprint": _text(card.get("base_fingerprint")),
        "package_version": sidecar.get("package_version") or card.get("lora_patch_adapters_version"),
        "base_generator": generator if isinstance(generator, str) else None,
        "base_model": config.get("base_model_name_or_path") or card.get("base_model"),
        "kind": record.get("kind") or card.get("lora_patch_kind"),
        "training": _budget(record, summary, card),
        "metrics": _metrics(card, record, summary),
    }


FINGERPRINT_CLAIMED = "card (claimed)"
"""``fingerprint_source`` of a fingerprint that only the model card states: not recorded by the patch files, so
``load_patch`` never checks it (it checks the files' own records against the model)."""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _fingerprint(sidecar: Mapping[str, Any], config: Mapping[str, Any],
                 card: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The base fingerprint and where it is written: ``"lora_patch.json"`` or ``"adapter_config.json"`` (recorded by
    the patch; ``load_patch`` checks it against the model), :data:`FINGERPRINT_CLAIMED` (only the README card says
    so), or None."""
    for value, source in ((sidecar.get("base_fingerprint"), SIDECAR_NAME),
                          (config.get("base_fingerprint"), "adapter_config.json"),
                          (card.get("base_fingerprint"), FINGERPRINT_CLAIMED)):
        if _text(value):
            return value, source
    return None, None


def _read_json(path: str, required: bool = False) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        if required:
            raise ValueError(f"cannot read {path!r}: {one_line(exc)}") from exc
        return {}
    if not isinstance(data, dict):
        if required:
            raise ValueError(f"{path!r} is not a JSON object")
        return {}
    return data


def _card_metadata(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(path, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # noqa: BLE001 - a broken card only loses the metrics it would have given
        return {}
    return data if isinstance(data, dict) else {}


def _safetensors_shapes(path: str) -> dict[str, tuple[list[int], str]]:
    """{tensor name: (shape, dtype)} from the safetensors header (no tensor data is read)."""
    try:
        with safe_open(path, framework="numpy") as f:
            out = {}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                piece = f.get_slice(name)
                out[name] = ([int(d) for d in piece.get_shape()], str(piece.get_dtype()))
            return out
    except Exception as exc:
        raise ValueError(f"{path!r} is not a readable safetensors file: {one_line(exc)}") from exc


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _budget(record: Mapping[str, Any], summary: Mapping[str, Any], card: Mapping[str, Any]) -> dict[str, Any]:
    """Training budget: ``images``, ``epochs`` (completed) and ``steps`` from the training record, ``seconds`` from
    the run summary; a Hub card's ``lora_patch_training`` fills what neither records."""
    run = summary.get("training") if isinstance(summary.get("training"), dict) else {}
    fields = {"images": record.get("images"), "epochs": record.get("epochs_completed"), "steps": record.get("steps"),
              "seconds": run.get("seconds")}
    recorded = card.get("lora_patch_training") if isinstance(card.get("lora_patch_training"), dict) else {}
    budget = {}
    for key, value in fields.items():
        value = _number(value) if _number(value) is not None else _number(recorded.get(key))
        if value is not None:
            budget[key] = value
    return budget


_SUMMARY_METRICS = ("defense_success_rate_before", "defense_success_rate_after", "defense_success_rate_after_leakage",
                    "clean_psnr_db", "watermark_visible_rate")


def _metrics(card: Mapping[str, Any], record: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar evaluation results; later sources override earlier ones: the card's ``lora_patch_evaluation``, the
    training record's ``metrics``, then the run summary's headline fields and per-defense ``rates``."""
    metrics: dict[str, Any] = {}
    for source in (card.get("lora_patch_evaluation"), record.get("metrics")):
        if isinstance(source, dict):
            metrics.update({str(k): v for k, v in source.items() if _number(v) is not None})
    metrics.update({k: summary[k] for k in _SUMMARY_METRICS if _number(summary.get(k)) is not None})
    rates = summary.get("rates")
    if isinstance(rates, list):
        for row in rates:
            if isinstance(row, dict) and row.get("defense") and row.get("scenario"):
                prefix = f"{row['defense']}_{row['scenario']}"
                for key in ("success_rate_base", "success_rate_patched", "clean_psnr_db"):
                    if _number(row.get(key)) is not None:
                        metrics[f"{prefix}_{key}"] = row[key]
    return metrics


