"""Describing a patch without loading its weights: :func:`inspect_patch` reads a patch directory or Hub repo (pulled
with :func:`~lora_patch_adapters.patches.hub.pull_patch`): config, parameter count read from the safetensors header,
layers, base fingerprint, package version, training budget, metrics."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from safetensors import safe_open

from .._checks import one_line
from .errors import PatchNotFoundError
from .format import PICKLE_WEIGHTS, REQUIRED_FILES, SIDECAR_NAME
from .hub import SHA_RE, pull_patch


def inspect_patch(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                  local_files_only: bool = False) -> dict[str, Any]:
    """Describe a patch directory or Hub repo (pulled with :func:`pull_patch`) without loading its weights.

    Returns a JSON-serialisable dict: ``source``, ``path``, ``repo_id`` / ``revision`` / ``commit`` (Hub only),
    ``files``, ``peft_type``, ``config`` (adapter_config.json), ``patch`` (rank, alpha, scale, gate, init, ...),
    ``target_modules``, ``trainable_parameters`` (sum of the tensor sizes in the safetensors header), ``tensors``,
    ``dtypes``, ``layers`` (name, rank, parameters per patched layer), ``fingerprint`` (of the base generator),
    ``package_version``, ``base_generator``, ``kind``, ``training`` (images, epochs, steps, seconds when recorded)
    and ``metrics`` (from summary.json, lora_patch.json, training.json or the model card).
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
    sidecar = _read_json(os.path.join(path, SIDECAR_NAME))
    training = _read_json(os.path.join(path, "training.json"))
    summary = _read_json(os.path.join(path, "summary.json"))
    card = _card_metadata(os.path.join(path, "README.md"))
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
    meta = _training_metadata(sidecar)
    nested = [r.get(key) for r, key in ((summary, "training"), (card, "lora_patch_training"))]
    records = [r for r in (training, meta, nested[0], summary, nested[1]) if isinstance(r, dict) and r]
    patch = {k: config.get(k) for k in ("r", "lora_alpha", "scaling", "gate", "gate_init", "init_weights",
                                         "forward_mode", "include_linear") if k in config}
    if isinstance(config.get("r"), int) and config.get("lora_alpha"):
        alpha, r = float(config["lora_alpha"]), config["r"]
        patch["scale"] = alpha / (r ** 0.5 if config.get("scaling", "sqrt_rank") == "sqrt_rank" else r)
    generator = (_first([sidecar], "base_generator", "generator") or _first(records, "generator")
                 or card.get("base_generator") or (config.get("auto_mapping") or {}).get("base_model_class"))
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
        "fingerprint": sidecar.get("base_fingerprint") or card.get("base_fingerprint"),
        "package_version": (sidecar.get("package_version") or _first(records, "version")
                            or card.get("lora_patch_adapters_version")),
        "base_generator": generator if isinstance(generator, str) else None,
        "base_model": config.get("base_model_name_or_path") or card.get("base_model"),
        "kind": _first(records, "kind") or card.get("lora_patch_kind"),
        "training": _budget(records),
        "metrics": _metrics(card, training, meta, sidecar, summary),
    }


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


def _training_metadata(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("metadata", "training", "training_metadata"):
        value = sidecar.get(key)
        if isinstance(value, dict):
            return value
    return {}


def _first(records: list[Any], *keys: str) -> Any:
    for record in records:
        if isinstance(record, Mapping):
            for key in keys:
                if record.get(key) not in (None, ""):
                    return record[key]
    return None


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _budget(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Training budget (images, epochs, steps, seconds) from the first records that state them."""
    budget: dict[str, Any] = {}
    for record in records:
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        timings = record.get("timings") if isinstance(record.get("timings"), dict) else {}
        candidates = {
            "images": [record.get(k) for k in ("images", "train_images", "n_images", "num_images")]
            + [_leading_int(record.get("data"))],
            "epochs": [record.get("epochs_completed"), record.get("epochs"), config.get("epochs")],
            "steps": [record.get("steps")],
            "seconds": [record.get("seconds"), record.get("training_seconds"), timings.get("training_seconds")],
        }
        for key, values in candidates.items():
            if key not in budget:
                value = next((v for v in map(_number, values) if v is not None), None)
                if value is not None:
                    budget[key] = value
    return budget


def _leading_int(text: Any) -> int | None:
    match = re.match(r"\s*(\d+)\s", text) if isinstance(text, str) else None
    return int(match.group(1)) if match else None


_SUMMARY_METRICS = ("defense_success_rate_before", "defense_success_rate_after", "defense_success_rate_after_leakage",
                    "clean_psnr_db", "watermark_visible_rate")


def _metrics(card: Mapping[str, Any], training: Mapping[str, Any], meta: Mapping[str, Any],
             sidecar: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar evaluation results; later sources override earlier ones (card < training < sidecar < summary)."""
    metrics: dict[str, Any] = {}
    evaluation = card.get("lora_patch_evaluation")
    if isinstance(evaluation, dict):
        metrics.update({k: v for k, v in evaluation.items() if _number(v) is not None})
    for record in (training, meta, sidecar, summary):
        nested = record.get("metrics")
        if isinstance(nested, dict):
            metrics.update({str(k): v for k, v in nested.items() if _number(v) is not None})
        metrics.update({k: record[k] for k in _SUMMARY_METRICS if _number(record.get(k)) is not None})
    rates = summary.get("rates")
    if isinstance(rates, list):
        for row in rates:
            if isinstance(row, dict) and row.get("defense") and row.get("scenario"):
                prefix = f"{row['defense']}_{row['scenario']}"
                for key in ("success_rate_base", "success_rate_patched", "clean_psnr_db"):
                    if _number(row.get(key)) is not None:
                        metrics[f"{prefix}_{key}"] = row[key]
    return metrics


