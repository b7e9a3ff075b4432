"""Downloading patches from the Hugging Face Hub: :func:`pull_patch` (revision-pinned, cache / offline), and the
mapping of ``huggingface_hub`` / network exceptions to the one-line
:class:`~lora_patch_adapters.patches.errors.HubError` family used by every Hub operation.

:func:`pull_patch` downloads the files of :data:`~lora_patch_adapters.patches.format.PATCH_FILES` (never pickle
files) of one revision into the ``huggingface_hub`` cache and returns the snapshot directory; a commit sha pins the
exact weights, a branch or tag follows it. ``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` reads the cache only;
when the Hub is unreachable a branch / tag pulled before is served from the cache too.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported; this module
imports it lazily, inside the functions.
"""

from __future__ import annotations

import os
import re

from ..version import __version__
from .errors import HubAuthError, HubConnectionError, HubError, PatchNotCachedError, PatchNotFoundError
from .format import PATCH_FILES, REQUIRED_FILES

LIBRARY_NAME = "lora-patch-adapters"
SHA_RE = re.compile(r"[0-9a-f]{40}")
"""A full commit sha (a pinned revision)."""


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
    offline = bool(local_files_only) or offline_env()
    if not offline:
        _check_access(repo_id, revision, token)
    try:
        path = snapshot_download(
            repo_id, revision=revision, token=token, local_files_only=offline,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None, allow_patterns=list(PATCH_FILES),
            library_name=LIBRARY_NAME, library_version=__version__,
        )
    except Exception as exc:
        error = hub_error(exc, repo_id, revision, action="pull", offline=offline)
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
        error = hub_error(exc, repo_id, revision, action="pull")
        if error is None:
            raise
        raise error from exc


def offline_env() -> bool:
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


def hub_error(exc: BaseException, repo_id: str, revision: str | None, action: str,
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
                                  "commit sha, a branch or a tag of the repo)", status_code=status, reason="revision",
                                  **kw)
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


