"""What every Hub operation shares: the client's name, the commit-sha pattern, the offline switch, and the mapping of
``huggingface_hub`` / network exceptions to the one-line :class:`~lora_patch_adapters.patches.errors.HubError`
family (with :class:`PatchIntegrityError` for files that do not match their commit)."""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import HubAuthError, HubConnectionError, HubError, PatchNotCachedError, PatchNotFoundError

LIBRARY_NAME = "lora-patch-adapters"
SHA_RE = re.compile(r"[0-9a-f]{40}")
"""A full commit sha (a pinned revision)."""


class PatchIntegrityError(HubError):
    """A file of a pulled revision does not match its commit's file metadata (size, LFS SHA-256 or git blob id), is
    missing from the cached snapshot, or cannot be verified offline (``reason`` ``"integrity"`` or
    ``"unverified"``). The file was not used; ``path`` is the cache file (or snapshot) to delete before pulling
    again."""

    def __init__(self, message: str, *, path: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.path = path


def offline_env() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or flag.upper() in ("1", "ON", "YES", "TRUE")


def describe_revision(repo_id: str, revision: str | None) -> str:
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
    where = describe_revision(repo_id, revision)
    kw = {"repo_id": repo_id, "revision": revision}
    status = getattr(getattr(exc, "response", None), "status_code", None)
    network = network_errors()
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
    if isinstance(exc, OSError) and str(exc).startswith("Consistency check failed"):  # huggingface_hub's size check
        return PatchIntegrityError(f"a file downloaded from {where} on {endpoint} is not the size the Hub announced "
                                   f"({str(exc).splitlines()[0]}); it was not used: pull again", reason="integrity",
                                   **kw)
    if isinstance(exc, network):
        return HubConnectionError(f"cannot reach the Hub at {endpoint} ({_short(exc)}); {offline_hint}",
                                  reason="connection", **kw)
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"the Hub at {endpoint} refused to {action} {where}: {_short(exc)}", status_code=status,
                        reason="http", **kw)
    return None


def network_errors() -> tuple[type[BaseException], ...]:
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
