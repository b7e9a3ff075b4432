"""Downloading patches from the Hugging Face Hub: :func:`pull_patch` (revision-pinned, cache / offline, every file
verified), :func:`copy_pulled_patch` (the atomic copy behind ``lora-patch pull --out``), and the mapping of
``huggingface_hub`` / network exceptions to the one-line :class:`~lora_patch_adapters.patches.errors.HubError` family
used by every Hub operation.

:func:`pull_patch` downloads the files of :data:`~lora_patch_adapters.patches.format.PATCH_FILES` (never pickle
files) of one revision into the ``huggingface_hub`` cache and returns the snapshot directory; a commit sha pins the
exact weights, a branch or tag follows it. ``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` reads the cache only;
when the Hub is unreachable a branch / tag pulled before is served from the cache too.

Every file is verified before the snapshot is returned (:mod:`~lora_patch_adapters.patches.verify`).

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported; this module
imports it lazily, inside the functions.
"""

from __future__ import annotations

import os
from typing import Any

from ..version import __version__
from .errors import PatchNotFoundError
from .format import PATCH_FILES, REQUIRED_FILES
from .hub_common import LIBRARY_NAME, describe_revision, hub_error, network_errors, offline_env
from .verify import _verify_snapshot


def pull_patch(repo_id: str, revision: str | None = None, token: str | bool | None = None,
               local_files_only: bool = False, cache_dir: str | os.PathLike | None = None) -> str:
    """Download a patch from the Hub into the ``huggingface_hub`` cache; returns the local snapshot directory.

    Only :data:`PATCH_FILES` are fetched (``adapter_config.json``, ``adapter_model.safetensors``, ``lora_patch.json``,
    ``README.md``, ``training.json``, ``summary.json``), never pickle files. ``revision``: a commit sha (pinned, the
    exact weights), a branch or a tag (default: ``main``). ``local_files_only=True`` (also when ``HF_HUB_OFFLINE=1``
    is set) reads the cache only; when the Hub cannot be reached, a revision pulled before is served from the cache.

    Every file is verified against its commit's metadata before the path is returned (see the module docstring:
    the Hub's metadata online, the record written by an earlier online pull offline).

    Raises :class:`PatchNotFoundError` (repo, revision or ``adapter_config.json`` / ``adapter_model.safetensors``
    missing), :class:`PatchNotCachedError`, :class:`HubConnectionError`, :class:`HubAuthError` or
    :class:`PatchIntegrityError` (a file differs from its commit's metadata, or cannot be verified offline).
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
    remote = None if offline else _check_access(repo_id, revision, token)
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
        where = describe_revision(repo_id, revision)
        pickles = _remote_pickles(repo_id, path, cache_dir)
        hint = (f"; it only has pickle weights ({', '.join(pickles)}), which are never downloaded: ask its author to "
                "push safetensors (save_pretrained(..., safe_serialization=True))") if pickles else \
            ": it is not a lora-patch / PEFT adapter repo (push one with lora-patch push)"
        raise PatchNotFoundError(f"{where} has no {' or '.join(missing)}{hint}", repo_id=repo_id, revision=revision,
                                 reason="file")
    _verify_snapshot(path, repo_id, revision, remote, token)
    return path


def _check_access(repo_id: str, revision: str | None, token: str | bool | None) -> Any:
    """Ask the Hub about ``repo_id`` at ``revision`` first: ``snapshot_download`` falls back to the cache on *any*
    HTTP error, which would hide a wrong token, a deleted or private repo, behind a stale cached copy. Here only an
    unreachable Hub (network error, timeout, HTTP 5xx) lets the download fall back to the cache (returns None).
    Returns the ``ModelInfo`` with its files' metadata (size, git blob id, LFS SHA-256) to verify the download."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        return api.model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT, files_metadata=True)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, network_errors()) or (isinstance(exc, HfHubHTTPError) and (status or 0) >= 500):
            return None  # the Hub cannot answer now: snapshot_download serves a cached copy, or cannot connect
        error = hub_error(exc, repo_id, revision, action="pull")
        if error is None:
            raise
        raise error from exc


def _remote_pickles(repo_id: str, snapshot: str, cache_dir: str | os.PathLike | None) -> list[str]:
    """Pickle weight files listed in the cached tree of the snapshot's commit (no network)."""
    try:
        from huggingface_hub import get_cached_repo_tree

        files = get_cached_repo_tree(repo_id, revision=os.path.basename(os.path.normpath(snapshot)),
                                     cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - only a hint for the error message
        return []
    return sorted(f.path for f in files if f.path.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")))
