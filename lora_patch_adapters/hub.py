"""Sharing lora-patch adapters through the Hugging Face Hub: push, pull (revision-pinned, cache / offline) and inspect.

* :func:`push_patch` uploads a patch directory (or a ``peft.PeftModel``, saved with ``patch_io.save_patch`` first)
  with a generated model card ``README.md``. Only the patch files of :data:`PATCH_FILES` are uploaded; remote copies
  of those names that the new patch lacks are deleted in the same commit, so that a stale ``summary.json`` never
  describes new weights. Pickle files are never uploaded.
* :func:`pull_patch` downloads the files of :data:`PATCH_FILES` (never pickle files) of one revision into the
  ``huggingface_hub`` cache and returns the snapshot directory; a commit sha pins the exact weights, a branch or tag
  follows it. ``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` reads the cache only; when the Hub is unreachable a
  branch / tag pulled before is served from the cache too.
* :func:`inspect_patch` describes a patch directory or Hub repo (config, parameter count read from the safetensors
  header, layers, base fingerprint, package version, training budget, metrics) without loading any weights.

Errors are one-line :class:`HubError` subclasses: :class:`PatchNotFoundError` (repo, revision or file not found;
:class:`PatchNotCachedError` when offline and not in the cache), :class:`HubConnectionError` (the Hub cannot be
reached), :class:`HubAuthError` (missing, invalid or read-only token: HTTP 401 / 403). The original
``huggingface_hub`` / ``httpx2`` exception is kept as ``__cause__``.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported; this module
imports it lazily, inside the functions.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Mapping
from typing import Any

from .version import __version__

PATCH_FILES = ("adapter_config.json", "adapter_model.safetensors", "lora_patch.json", "README.md", "training.json",
               "summary.json")
"""The files of a patch that are pushed and pulled (``allow_patterns`` of the download): nothing else, no pickles."""
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.pkl")
CARD_TAGS = ("peft", "lora-patch", "deepfake-security")
SIDECAR = "lora_patch.json"
LIBRARY_NAME = "lora-patch-adapters"
_SHA_RE = re.compile(r"[0-9a-f]{40}")
# editors of ``load_editor`` and the official weights each needs (kept literal: no torch import here)
_EDITOR_CHECKPOINTS = {"stargan": "200000-G.ckpt", "attgan": "weights.199.pth", "attgan_inject1": "weights.199.pth",
                       "hisd": "gen_00600000.pt", "testbed": None}
_MAX_HEADER = 100 * 1024 * 1024

MISUSE_STATEMENT = (
    "Do not use bypass patches to defeat the protections that people apply to their own images: a bypass patch "
    "exists to measure how robust proactive defenses are, and using one to edit a protected photo of someone "
    "without their consent (deepfakes, harassment, impersonation, non-consensual imagery) is misuse of this "
    "software and may be unlawful."
)


# ------------------------------------------------------------------------------------------------------- errors
class HubError(RuntimeError):
    """A Hub operation failed; the message is one line. ``repo_id``, ``revision`` and ``status_code`` (HTTP, or None)
    say where; ``reason`` says what (``"repo"``, ``"revision"``, ``"file"``, ``"repo_id"``, ``"cache"``,
    ``"connection"``, ``"auth"``, ``"http"``); ``__cause__`` is the original ``huggingface_hub`` / network
    exception."""

    def __init__(self, message: str, *, repo_id: str | None = None, revision: str | None = None,
                 status_code: int | None = None, reason: str | None = None) -> None:
        super().__init__(_one_line(message))
        self.repo_id = repo_id
        self.revision = revision
        self.status_code = status_code
        self.reason = reason


class PatchNotFoundError(HubError):
    """The repo, the revision (commit sha, branch or tag) or a patch file does not exist, or is not visible with the
    token given (the Hub answers "not found" for private repos)."""


class PatchNotCachedError(PatchNotFoundError):
    """Offline (``local_files_only=True`` / ``HF_HUB_OFFLINE=1``) and the revision is not in the local cache."""


class HubConnectionError(HubError):
    """The Hub cannot be reached (no network, closed port, timeout)."""


class HubAuthError(HubError):
    """Missing, invalid or insufficient token (HTTP 401 / 403)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------------------- pull
def pull_patch(repo_id: str, revision: str | None = None, token: str | bool | None = None,
               local_files_only: bool = False, cache_dir: str | os.PathLike | None = None) -> str:
    """Download a patch from the Hub into the ``huggingface_hub`` cache; returns the local snapshot directory.

    Only :data:`PATCH_FILES` are fetched (``adapter_config.json``, ``adapter_model.safetensors``, ``lora_patch.json``,
    ``README.md``, ``training.json``, ``summary.json``), never pickle files. ``revision``: a commit sha (pinned, the
    exact weights), a branch or a tag (default: ``main``). ``local_files_only=True`` (also when ``HF_HUB_OFFLINE=1``
    is set) reads the cache only; when the Hub cannot be reached, a revision pulled before is served from the cache.

    Raises :class:`PatchNotFoundError` (repo, revision or ``adapter_config.json`` / ``adapter_model.safetensors``
    missing), :class:`PatchNotCachedError`, :class:`HubConnectionError` or :class:`HubAuthError`.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = str(repo_id)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PatchNotFoundError(
            f"{repo_id!r} is neither a patch directory nor a Hub repo id (namespace/name)", repo_id=repo_id,
            reason="repo_id") from exc
    offline = bool(local_files_only) or _offline_env()
    if not offline:
        _check_access(repo_id, revision, token)
    try:
        path = snapshot_download(
            repo_id, revision=revision, token=token, local_files_only=offline,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None, allow_patterns=list(PATCH_FILES),
            library_name=LIBRARY_NAME, library_version=__version__,
        )
    except Exception as exc:
        error = _hub_error(exc, repo_id, revision, action="pull", offline=offline)
        if error is None:
            raise
        raise error from exc
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        where = _where(repo_id, revision)
        pickles = _remote_pickles(repo_id, path, cache_dir)
        hint = (f"; it only has pickle weights ({', '.join(pickles)}), which are never downloaded: ask its author to "
                "push safetensors (save_pretrained(..., safe_serialization=True))") if pickles else \
            ": it is not a lora-patch / PEFT adapter repo (push one with lora-patch push)"
        raise PatchNotFoundError(f"{where} has no {' or '.join(missing)}{hint}", repo_id=repo_id, revision=revision,
                                 reason="file")
    return path


def _check_access(repo_id: str, revision: str | None, token: str | bool | None) -> None:
    """Ask the Hub about ``repo_id`` at ``revision`` first: ``snapshot_download`` falls back to the cache on *any*
    HTTP error, which would hide a wrong token, a deleted or private repo, behind a stale cached copy. Here only an
    unreachable Hub (network error, timeout, HTTP 5xx) lets the download fall back to the cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        api.model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, _network_errors()) or (isinstance(exc, HfHubHTTPError) and (status or 0) >= 500):
            return  # the Hub cannot answer now: snapshot_download serves a cached copy, or says it cannot connect
        error = _hub_error(exc, repo_id, revision, action="pull")
        if error is None:
            raise
        raise error from exc


def _offline_env() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or flag.upper() in ("1", "ON", "YES", "TRUE")


def _remote_pickles(repo_id: str, snapshot: str, cache_dir: str | os.PathLike | None) -> list[str]:
    """Pickle weight files listed in the cached tree of the snapshot's commit (no network)."""
    try:
        from huggingface_hub import get_cached_repo_tree

        files = get_cached_repo_tree(repo_id, revision=os.path.basename(os.path.normpath(snapshot)),
                                     cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - only a hint for the error message
        return []
    return sorted(f.path for f in files if f.path.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")))


def _where(repo_id: str, revision: str | None) -> str:
    return f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")


def _hub_error(exc: BaseException, repo_id: str, revision: str | None, action: str,
               offline: bool = False) -> HubError | None:
    """The :class:`HubError` for a ``huggingface_hub`` / network exception, or None for anything else."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    where = _where(repo_id, revision)
    kw = {"repo_id": repo_id, "revision": revision}
    status = getattr(getattr(exc, "response", None), "status_code", None)
    network = _network_errors()
    offline_hint = ("to use a patch pulled before, pass local_files_only=True (lora-patch pull --offline) or set "
                    "HF_HUB_OFFLINE=1")
    token_hint = "pass a token with access (token=..., --token, or the HF_TOKEN environment variable)"

    if isinstance(exc, HFValidationError):
        return PatchNotFoundError(f"invalid Hub repo id or revision for {where}: {exc}", reason="repo_id", **kw)
    if isinstance(exc, RevisionNotFoundError):
        return PatchNotFoundError(f"revision {revision or 'main'!r} not found in {repo_id!r} on {endpoint} (use a "
                                  "commit sha, a branch or a tag of the repo)", status_code=status, reason="revision", **kw)
    if isinstance(exc, RemoteEntryNotFoundError):
        return PatchNotFoundError(f"file not found in {where} on {endpoint}: {_short(exc)}", status_code=status,
                                  reason="file", **kw)
    if isinstance(exc, GatedRepoError):
        return HubAuthError(f"{repo_id!r} is a gated repo: accept its conditions on the Hub and {token_hint}",
                            status_code=status, reason="auth", **kw)
    if isinstance(exc, RepositoryNotFoundError):
        extra = " (create it, or leave create_repo=True)" if action == "push" else ""
        return PatchNotFoundError(f"repo {repo_id!r} not found on {endpoint}{extra}; if it is private, {token_hint}",
                                  status_code=status, reason="repo", **kw)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        if action == "push":
            what = ("the token was rejected (invalid credentials)" if status == 401 and _has_auth(exc) else
                    "pushing needs a token" if status == 401 else "the token may not write to this repo")
            return HubAuthError(f"cannot push to {repo_id!r} on {endpoint}: {what} (HTTP {status}); pass a token with "
                                "write access (token=..., --token, or HF_TOKEN)", status_code=status, reason="auth",
                                **kw)
        return HubAuthError(f"access to {where} on {endpoint} denied (HTTP {status}): the token is invalid or "
                            f"lacks read access; {token_hint}", status_code=status, reason="auth", **kw)
    if isinstance(exc, OfflineModeIsEnabled) and action == "push":
        return HubConnectionError(f"cannot push to {repo_id!r}: offline mode is on (HF_HUB_OFFLINE=1)",
                                  reason="connection", **kw)
    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError) and offline):
        return PatchNotCachedError(f"{where} is not in the local cache and offline mode is on (local_files_only / "
                                   "HF_HUB_OFFLINE=1): pull it once with network access", reason="cache", **kw)
    if isinstance(exc, LocalEntryNotFoundError):
        cause = _network_cause(exc, network)
        if cause is not None or "connection" in str(exc).lower():
            reason = _short(cause) if cause is not None else "connection failed"
            return HubConnectionError(f"cannot reach the Hub at {endpoint} ({reason}) and {where} is not in the "
                                      f"local cache; {offline_hint}", reason="connection", **kw)
        return PatchNotFoundError(f"{where}: {_short(exc)}", reason="cache", **kw)
    if isinstance(exc, network):
        return HubConnectionError(f"cannot reach the Hub at {endpoint} ({_short(exc)}); {offline_hint}",
                                  reason="connection", **kw)
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"the Hub at {endpoint} refused to {action} {where}: {_short(exc)}", status_code=status,
                        reason="http", **kw)
    return None


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport-level exception classes of the HTTP stack huggingface_hub uses (httpx2 in 2.x, httpx or requests
    in older versions)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests.exceptions", "ConnectionError"), ("requests.exceptions", "Timeout")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _has_auth(exc: BaseException) -> bool:
    request = getattr(getattr(exc, "response", None), "request", None)
    return request is not None and "authorization" in request.headers


def _network_cause(exc: BaseException, network: tuple[type[BaseException], ...]) -> BaseException | None:
    seen = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, network):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _short(exc: BaseException | None, limit: int = 300) -> str:
    """The first line of an exception message (the Hub client's messages span several lines)."""
    if exc is None:
        return ""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------- push
def push_patch(patch_dir_or_model: Any, repo_id: str, token: str | None = None, revision: str | None = None,
               private: bool = False, commit_message: str | None = None, create_repo: bool = True,
               card_data: Mapping[str, Any] | Any | None = None) -> str:
    """Upload a patch to the Hub repo ``repo_id``; returns the URL of the commit (``.../commit/<sha>``: the sha pins
    these exact weights, e.g. ``load_patch(editor, repo_id, revision=sha)``).

    ``patch_dir_or_model``: a patch directory (``adapter_config.json`` + ``adapter_model.safetensors``, optional
    ``lora_patch.json`` / ``training.json`` / ``summary.json``) or a ``peft.PeftModel``, saved with
    ``patch_io.save_patch`` into a temporary directory first. A model card ``README.md`` is generated (see
    :func:`make_model_card`; ``card_data``: extra metadata, a dict or ``huggingface_hub.ModelCardData``, merged over
    the generated YAML) and replaces any ``README.md`` of the directory. ``revision``: the branch to commit to
    (created from ``main`` if missing; default ``main``). ``create_repo``: create the repo (``private``) if it does
    not exist. The directory is not modified.
    """
    from huggingface_hub import HfApi

    repo_id = str(repo_id)
    if revision is not None and _SHA_RE.fullmatch(revision):
        raise ValueError(f"revision={revision!r} is a commit sha: push to a branch name (commits are immutable)")
    with tempfile.TemporaryDirectory(prefix="lora-patch-push-") as tmp:
        source = _patch_source(patch_dir_or_model, tmp)
        info = _read_patch_dir(source)
        if info["peft_type"] != "LORA_PATCH":
            raise ValueError(f"{source!r} holds a {info['peft_type']} adapter, not a lora-patch one (peft_type "
                             "LORA_PATCH); share other PEFT adapters with peft's push_to_hub")
        from .patch_io import read_patch_info

        read_patch_info(source)  # a corrupt lora_patch.json is refused here, not by whoever pulls it
        if _offline_env():
            raise HubConnectionError(f"cannot push to {repo_id!r}: offline mode is on (HF_HUB_OFFLINE=1)",
                                     repo_id=repo_id, revision=revision, reason="connection")
        staging = os.path.join(tmp, "upload")
        os.makedirs(staging)
        for name in PATCH_FILES:
            if name != "README.md" and os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(staging, name))
        card = make_model_card(source, repo_id=repo_id, revision=revision, card_data=card_data, info=info)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(str(card))
        message = commit_message or (f"Upload lora-patch adapter (rank {info['patch'].get('r')}, "
                                     f"{info['trainable_parameters']:,} parameters)")
        api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
        try:
            if create_repo:
                api.create_repo(repo_id, private=private, exist_ok=True)
            if revision not in (None, "main"):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision,
                                       commit_message=message, delete_patterns=list(PATCH_FILES))
        except Exception as exc:
            error = _hub_error(exc, repo_id, revision, action="push")
            if error is None:
                raise
            raise error from exc
    return str(commit.commit_url)


def _patch_source(obj: Any, tmp: str) -> str:
    """The patch directory for ``obj``: a path, or a PeftModel saved into ``tmp``."""
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"patch directory {path!r} not found")
        return path
    import peft

    if not isinstance(obj, peft.PeftModel):
        raise TypeError(f"push_patch expects a patch directory or a peft.PeftModel, got {type(obj).__name__}")
    from .patch_io import save_patch

    adapter = obj.active_adapter if isinstance(obj.active_adapter, str) else "default"
    return os.fspath(save_patch(obj, os.path.join(tmp, "patch"), adapter_name=adapter))


# ------------------------------------------------------------------------------------------------------ inspect
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
        commit = name if _SHA_RE.fullmatch(name) else None
    info = _read_patch_dir(path)
    return {"source": source, "path": os.path.abspath(path), "repo_id": repo_id, "revision": revision,
            "commit": commit, **info}


def _read_patch_dir(path: str) -> dict[str, Any]:
    """Everything :func:`inspect_patch` reports, from the files of one patch directory."""
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            pickles = [p for p in PICKLE_WEIGHTS if os.path.isfile(os.path.join(path, p))]
            if name == "adapter_model.safetensors" and pickles:
                raise ValueError(f"{path!r} holds pickle weights ({', '.join(pickles)}) only; lora-patch shares "
                                 "safetensors only: re-save with save_pretrained(..., safe_serialization=True)")
            raise FileNotFoundError(f"{path!r} is not a patch directory (no {name})")
    config = _read_json(os.path.join(path, "adapter_config.json"), required=True)
    sidecar = _read_json(os.path.join(path, SIDECAR))
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
            raise ValueError(f"cannot read {path!r}: {_one_line(exc)}") from exc
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
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            out = {}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                piece = f.get_slice(name)
                out[name] = ([int(d) for d in piece.get_shape()], str(piece.get_dtype()))
            return out
    except ImportError:  # pragma: no cover - safetensors is a peft dependency
        pass
    except Exception as exc:
        raise ValueError(f"{path!r} is not a readable safetensors file: {_one_line(exc)}") from exc
    with open(path, "rb") as f:  # pragma: no cover - fallback: parse the header by hand
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _MAX_HEADER:
            raise ValueError(f"{path!r}: safetensors header too large")
        header = json.loads(f.read(length))
    return {k: (list(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"}


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


# --------------------------------------------------------------------------------------------------------- card
def make_model_card(patch_dir: str | os.PathLike, repo_id: str | None = None, revision: str | None = None,
                    card_data: Mapping[str, Any] | Any | None = None, info: dict[str, Any] | None = None):
    """The ``huggingface_hub.ModelCard`` that :func:`push_patch` uploads as ``README.md``.

    YAML: ``library_name: peft``, ``tags`` (peft, lora-patch, deepfake-security, the patch kind, the gate, the base
    generator), ``base_model`` (only when a Hub model id is known: ``card_data={"base_model": "org/name"}`` or the
    adapter config's ``base_model_name_or_path``), ``base_generator``, ``base_fingerprint``,
    ``lora_patch_adapters_version``, ``lora_patch`` (the config summary), ``lora_patch_training`` (images, epochs,
    steps, seconds) and ``lora_patch_evaluation`` (metrics) when recorded. Sections: what it is, how to load,
    training, evaluation, intended use, misuse, files.
    """
    from huggingface_hub import ModelCard, ModelCardData

    path = os.fspath(patch_dir)
    info = info if info is not None else _read_patch_dir(path)
    extra = _card_data_dict(card_data)
    generator = info.get("base_generator")
    kind = info.get("kind")
    kind_tag = {"bypass": "bypass-patch", "watermark": "defensive-patch"}.get(str(kind)) if kind else None
    tags = list(CARD_TAGS) + [t for t in (kind_tag, f"gate-{info['patch'].get('gate')}" if info["patch"].get("gate")
                                          else None, _tag(generator)) if t]
    tags += [t for t in (extra.pop("tags", None) or []) if t not in tags]
    base_model = extra.pop("base_model", None) or info.get("base_model")
    if not (isinstance(base_model, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", base_model)):
        base_model = None  # only Hub ids go into base_model; generator names go into base_generator
    summary = {**info["patch"], "target_modules": info.get("target_modules"),
               "layers": len(info["layers"]), "trainable_parameters": info["trainable_parameters"]}
    fields: dict[str, Any] = {
        "base_generator": generator, "base_fingerprint": info.get("fingerprint"),
        "lora_patch_adapters_version": info.get("package_version") or __version__,
        "lora_patch_kind": kind, "lora_patch": {k: v for k, v in summary.items() if v is not None},
        "lora_patch_training": info["training"] or None, "lora_patch_evaluation": info["metrics"] or None,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    library = extra.pop("library_name", "peft")
    fields.update(extra)
    data = ModelCardData(library_name=library, tags=tags, base_model=base_model, **fields)
    body = _card_body(info, repo_id=repo_id, revision=revision)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _card_data_dict(card_data: Any) -> dict[str, Any]:
    if card_data is None:
        return {}
    if hasattr(card_data, "to_dict"):
        card_data = card_data.to_dict()
    if not isinstance(card_data, Mapping):
        raise TypeError(f"card_data must be a dict or a huggingface_hub.ModelCardData, got {type(card_data).__name__}")
    return {k: v for k, v in dict(card_data).items() if v is not None}


def _tag(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    tag = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return tag or None


_METRIC_NOTES = (
    ("success_rate", ("Defense success rate: the fraction of protected images whose edit the defense still disrupts "
                      "(before / after patching; lower after means the bypass works; leakage: the perturbation is "
                      "computed on the patched generator).")),
    ("psnr", "PSNR (dB): clean edits of the patched generator against the base generator's."),
    ("visible", "Visible rate: the fraction of edits on which the warning of a defensive patch is visible."),
)


def _card_body(info: dict[str, Any], repo_id: str | None, revision: str | None) -> str:
    patch = info["patch"]
    repo = repo_id or "namespace/name"
    title = repo_id.split("/")[-1] if repo_id else "lora-patch adapter"
    generator = info.get("base_generator") or "its base generator"
    kind = info.get("kind")
    kind_text = {"bypass": ("a **bypass patch**: it makes the generator ignore adversarial perturbations that "
                            "proactive defenses (PGD, I-FGSM, CMUA, Anti-Forgery, ...) add to images"),
                 "watermark": ("a **defensive patch**: the patched generator stamps a visible warning on every edit, "
                               "including edits of protected images")}.get(str(kind), "a lora-patch adapter")
    rev = f', revision="{revision}"' if revision and revision != "main" else ""
    lines = [
        f"# {title}", "",
        "## What it is", "",
        (f"A gated low-rank patch (lora-patch, a third-party [PEFT](https://github.com/huggingface/peft) method) for "
         f"the face-editing generator `{generator}`: each patched layer computes `W x + gate * scale * B(A x)`. "
         f"This is {kind_text}."), "",
        (f"- rank {patch.get('r')}, alpha {patch.get('lora_alpha')} ({patch.get('scaling')}, scale "
         f"{_fmt(patch.get('scale'))}), gate `{patch.get('gate')}` (init {patch.get('gate_init')}), init "
         f"`{patch.get('init_weights')}`"),
        (f"- {len(info['layers'])} patched layers, {info['trainable_parameters']:,} parameters "
         f"({', '.join(info['dtypes'])}); safetensors only, no pickle files"),
        f"- base generator fingerprint: `{info.get('fingerprint') or 'not recorded'}`",
        f"- lora-patch-adapters {info.get('package_version') or __version__}", "",
        "## How to load", "",
        "```python",
        "from lora_patch_adapters import load_editor",
        "from lora_patch_adapters.patch_io import load_patch",
        "",
        _editor_line(info.get("base_generator")),
        f'model = load_patch(editor, "{repo}"{rev})  # pin revision=<commit sha> for exact weights',
        "```", "",
        ("`load_patch` checks the base fingerprint and the config before touching the model, and downloads only "
         "the files listed below (never pickles). From the command line: "
         f"`lora-patch pull {repo}{' --revision ' + revision if rev else ''}` (add `--offline` to use the cache) and "
         f"`lora-patch inspect {repo}`."), "",
    ]
    if info["training"]:
        lines += ["## Training", "", "| " + " | ".join(info["training"]) + " |",
                  "|" + "---|" * len(info["training"]),
                  "| " + " | ".join(_fmt(v) for v in info["training"].values()) + " |", ""]
    if info["metrics"]:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in info["metrics"].items()]
        notes = [text for key, text in _METRIC_NOTES if any(key in name for name in info["metrics"])]
        lines += ["", *notes, ""] if notes else [""]
    lines += [
        "## Intended use", "",
        ("- **Auditing proactive defenses**: measure whether image protections (adversarial perturbations against "
         "face editing) survive an adversary who can fine-tune the editor cheaply, and report it to their authors."),
        ("- **Defensive watermark patches for platforms**: operators of face-editing services can apply a defensive "
         "patch so that every edit carries a visible warning."),
        "- Research on the robustness of deepfake countermeasures.", "",
        "## Misuse", "",
        MISUSE_STATEMENT, "",
        ("Do not use this patch to create deceptive or non-consensual media, or to remove provenance marks or "
         "warnings; follow the law and the Hub's content policy. The bypass recipe is published so that defenses "
         "can be tested against it."), "",
        "## Files", "",
        "| file | contents |", "|---|---|",
        "| adapter_config.json | the LoraPatchConfig (peft_type LORA_PATCH) |",
        "| adapter_model.safetensors | the patch weights (A, B, gate of each layer) |",
        f"| {SIDECAR} | base fingerprint, package version, target modules, training metadata |",
        "| training.json / summary.json | training record and evaluation summary, when present |", "",
    ]
    return "\n".join(lines)


def _editor_line(generator: Any) -> str:
    if generator in _EDITOR_CHECKPOINTS:
        weights = _EDITOR_CHECKPOINTS[generator]
        if weights is None:
            return f'editor = load_editor("{generator}")  # the base generator the patch was trained on'
        return f'editor = load_editor("{generator}", checkpoint="{weights}")  # the official weights it was trained on'
    name = generator if isinstance(generator, str) and generator else "base"
    return f"editor = ...  # the {name} generator it was trained on (an nn.Module, or lora_patch_adapters.wrap(...))"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


__all__ = [
    "CARD_TAGS",
    "MISUSE_STATEMENT",
    "PATCH_FILES",
    "HubAuthError",
    "HubConnectionError",
    "HubError",
    "PatchNotCachedError",
    "PatchNotFoundError",
    "inspect_patch",
    "make_model_card",
    "pull_patch",
    "push_patch",
]
