"""Verifying a pulled snapshot before it is used.

Before the snapshot is returned, every patch file in it is checked against the file metadata of its
commit, byte for byte: the size, and the SHA-256 of LFS files or the git blob id (SHA-1 of ``blob <size>\\0`` +
content) of regular files. Online the metadata comes from the Hub (``HfApi.model_info(files_metadata=True)`` of the
commit); the verified sizes and SHA-256s are then recorded in ``<repo cache>/lora-patch-verified/<commit>.json``,
beside ``snapshots/``. Offline (or when the Hub cannot be reached) the files are checked against that record; a
revision cached without one (fetched by another tool) is checked against the commit's file list that
``huggingface_hub`` cached when it downloaded it (``get_cached_repo_tree``: sizes and git blob ids), and refused
when neither exists. A mismatch raises :class:`PatchIntegrityError` naming the file, the expected and actual values
and the cache file to delete; the corrupt file is never used. The record protects against corrupted or altered
downloads and cache files, not against someone who can rewrite the record too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

from ..version import __version__
from .format import PATCH_FILES
from .hub_common import LIBRARY_NAME, PatchIntegrityError, describe_revision, hub_error

VERIFIED_DIR = "lora-patch-verified"
"""Folder of a repo's cache (beside ``snapshots/``): ``<commit>.json``, the sizes and SHA-256s verified online."""
_RECORD_VERSION = 1
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class _Expected:
    """What one file of a commit must be: ``size`` in bytes, ``sha256`` (LFS files, verified records) and / or the
    git ``blob_id`` (regular files; for LFS files the id of their pointer)."""

    size: int | None
    sha256: str | None = None
    blob_id: str | None = None


def _verify_snapshot(path: str, repo_id: str, revision: str | None, remote: Any, token: str | bool | None) -> None:
    """Check every patch file of the snapshot ``path`` against its commit's metadata: ``remote`` (the Hub's
    ``ModelInfo``, online) or the record of an earlier verified pull (offline); record what was verified online."""
    snapshot = os.path.normpath(path)
    commit = os.path.basename(snapshot)
    storage = os.path.dirname(os.path.dirname(snapshot))
    if remote is not None:
        if getattr(remote, "sha", None) != commit:  # the branch moved between the two requests: ask about this one
            remote = _commit_metadata(repo_id, commit, revision, token)
        if remote.siblings is None:
            raise PatchIntegrityError(f"{describe_revision(repo_id, revision)}: the Hub returned no file metadata "
                                      f"for commit {commit}, so the download cannot be verified; it was not used",
                                      path=snapshot, repo_id=repo_id, revision=revision, reason="unverified")
        expected = {s.rfilename: _Expected(size=s.size, sha256=s.lfs.sha256 if s.lfs is not None else None,
                                           blob_id=s.blob_id)
                    for s in remote.siblings if s.rfilename in PATCH_FILES}
        source = "the commit's file metadata on the Hub"
    else:
        expected, source = _offline_metadata(repo_id, revision, storage, snapshot)
    verified = _check_files(snapshot, expected, source, repo_id, revision)
    if remote is not None:
        _write_record(storage, repo_id, commit, verified)


def _commit_metadata(repo_id: str, commit: str, revision: str | None, token: str | bool | None) -> Any:
    from huggingface_hub import HfApi, constants

    api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        return api.model_info(repo_id, revision=commit, timeout=constants.HF_HUB_ETAG_TIMEOUT, files_metadata=True)
    except Exception as exc:
        error = hub_error(exc, repo_id, revision, action="pull")
        if error is None:
            raise
        raise error from exc


def _offline_metadata(repo_id: str, revision: str | None, storage: str,
                      snapshot: str) -> tuple[dict[str, _Expected], str]:
    """The expected files of a cached commit without network: the record of the verified online pull, else the
    commit's file list ``huggingface_hub`` cached when it downloaded it; refused when neither exists."""
    commit = os.path.basename(snapshot)
    record = _read_record(storage, repo_id, commit)
    if record is not None:
        return record, "the sizes and hashes verified when it was pulled"
    try:
        from huggingface_hub import get_cached_repo_tree

        tree = get_cached_repo_tree(repo_id, revision=commit, cache_dir=os.path.dirname(storage))
    except Exception:  # noqa: BLE001 - no cached file list: nothing to verify against (refused below)
        tree = None
    if tree:
        return ({f.path: _Expected(size=f.size, blob_id=f.blob_id) for f in tree if f.path in PATCH_FILES},
                "the commit's file list cached by huggingface_hub")
    raise PatchIntegrityError(
        f"{describe_revision(repo_id, revision)} (commit {commit}) is in the cache at {snapshot} but cannot be "
        "verified offline: "
        f"no record of its verified file hashes ({os.path.join(storage, VERIFIED_DIR, commit + '.json')}; fetched by "
        "another tool?); pull it once with network access, which verifies and records it",
        path=snapshot, repo_id=repo_id, revision=revision, reason="unverified")


def _check_files(snapshot: str, expected: dict[str, _Expected], source: str, repo_id: str,
                 revision: str | None) -> dict[str, dict[str, Any]]:
    """Verify the patch files of ``snapshot`` against ``expected``; returns ``{name: {"size", "sha256"}}``."""
    commit = os.path.basename(snapshot)
    kw = {"repo_id": repo_id, "revision": revision}
    where = f"{repo_id!r} at commit {commit}"
    present = [name for name in PATCH_FILES if os.path.lexists(os.path.join(snapshot, name))]
    verified: dict[str, dict[str, Any]] = {}
    for name in [n for n in PATCH_FILES if n in expected or n in present]:
        file = os.path.join(snapshot, name)
        if name not in expected:
            raise PatchIntegrityError(
                f"{file} is not a file of {where} according to {source}; it was not used: delete it and pull again",
                path=file, reason="integrity", **kw)
        if not os.path.isfile(file):
            raise PatchIntegrityError(
                f"{name} of {where} is missing from the cached snapshot {snapshot} (an interrupted download?): "
                "delete that snapshot folder and pull again with network access", path=snapshot, reason="integrity",
                **kw)
        want = expected[name]
        if want.size is None and want.sha256 is None and want.blob_id is None:
            raise PatchIntegrityError(f"{name} of {where} cannot be verified: {source} gives no size or hash for it; "
                                      "it was not used", path=file, reason="unverified", **kw)
        size, sha256, blob_id = _hash_file(file)
        problem = None
        if want.size is not None and size != want.size:
            problem = f"size: expected {want.size} bytes, got {size}"
        elif want.sha256 is not None and sha256 != want.sha256:
            problem = f"sha256: expected {want.sha256}, got {sha256}"
        elif want.blob_id is not None and want.sha256 is None and want.blob_id not in (blob_id,
                                                                                      _lfs_pointer_id(sha256, size)):
            problem = f"git blob id: expected {want.blob_id}, got {blob_id}"
        if problem is not None:
            cached = os.path.realpath(file)
            raise PatchIntegrityError(
                f"{name} of {where} does not match {source} ({problem}); the file was not used: the cached copy is "
                f"corrupt or was tampered with: delete {cached} (that cache entry) and pull again",
                path=cached, reason="integrity", **kw)
        verified[name] = {"size": size, "sha256": sha256}
    return verified


def _hash_file(path: str) -> tuple[int, str, str]:
    """``(size, SHA-256, git blob id)`` of a file, read once in 1 MiB chunks."""
    size = os.path.getsize(path)
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    read = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
            read += len(chunk)
    return read, sha256.hexdigest(), sha1.hexdigest() if read == size else ""


def _lfs_pointer_id(sha256: str, size: int) -> str:
    """The git blob id of the Git LFS pointer of a file with this SHA-256 and size (what git stores for LFS files)."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


def _record_path(storage: str, commit: str) -> str:
    return os.path.join(storage, VERIFIED_DIR, commit + ".json")


def _read_record(storage: str, repo_id: str | None, commit: str) -> dict[str, _Expected] | None:
    """The verified ``{name: _Expected}`` recorded for ``commit`` (of ``repo_id`` unless None), or None (absent,
    unreadable or not for it)."""
    try:
        with open(_record_path(storage, commit), encoding="utf-8") as f:
            data = json.load(f)
        files = data["files"]
        owner = data.get("repo_id") if repo_id is None else repo_id
        if data.get("format_version") != _RECORD_VERSION or data.get("repo_id") != owner or \
                data.get("commit") != commit or not isinstance(files, dict):
            return None
        out = {}
        for name, entry in files.items():
            size, sha256 = entry["size"], entry["sha256"]
            if name not in PATCH_FILES or isinstance(size, bool) or not isinstance(size, int) or \
                    not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
                return None
            out[name] = _Expected(size=size, sha256=sha256)
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_record(storage: str, repo_id: str, commit: str, files: dict[str, dict[str, Any]]) -> None:
    """Write the verified sizes / SHA-256s of ``commit`` atomically beside its snapshot (a warning if it cannot)."""
    path = _record_path(storage, commit)
    data = {"format_version": _RECORD_VERSION, "repo_id": repo_id, "commit": commit, "files": files,
            "written_by": f"{LIBRARY_NAME} {__version__}"}
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=commit + ".", suffix=".tmp", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        warnings.warn(f"could not record the verified hashes of {repo_id!r} at {commit} in {path} ({exc}); offline "
                      "pulls of it will fall back to huggingface_hub's cached file list", stacklevel=3)
