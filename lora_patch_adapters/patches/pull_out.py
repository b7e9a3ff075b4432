"""The atomic copy behind ``lora-patch pull --out``: a pulled patch copied into a folder the user names, replacing
only what an earlier pull wrote (listed in a marker file), swapped in with renames so a killed pull never mixes two
revisions."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

from .._io import fsync_path
from .format import CONFIG_NAME, PATCH_FILES
from .hub_common import SHA_RE, PatchIntegrityError
from .verify import _hash_file, _read_record

PULL_MARKER = ".lora-patch-pull.json"
"""What :func:`copy_pulled_patch` wrote into ``--out`` (name -> SHA-256, repo, commit): all a later pull replaces."""


def copy_pulled_patch(snapshot: str | os.PathLike, out: str | os.PathLike, repo_id: str | None = None,
                      revision: str | None = None) -> str:
    """Copy the patch files of a pulled ``snapshot`` into the folder ``out`` (``lora-patch pull --out``),
    atomically; returns the absolute path of ``out``.

    ``out`` may be new, empty, or a folder an earlier pull wrote (it holds :data:`PULL_MARKER`): the files are
    written into a temporary sibling ``<out>.pull-tmp-<random>`` with a new marker listing them (name -> SHA-256),
    then swapped in with two renames, so ``out`` never mixes two revisions. A crash before the swap leaves ``out``
    as it was; one exactly between the two renames leaves no ``out`` and its previous contents in
    ``<out>.pull-old-<random>`` (the next pull says so and stops). Files of ``out`` that no pull wrote (notes,
    folders) are carried over (hard links, else copies); a previous pull's files are replaced, stale ones dropped.

    Refused with ``FileExistsError`` / ``NotADirectoryError`` (nothing touched): ``out`` is a file; a non-empty
    folder without ``adapter_config.json``; a file this pull would write that no pull wrote (e.g. a patch saved
    with ``save_patch``) or that was edited since; a leftover ``.pull-old-*`` of an interrupted pull. A copied file
    whose SHA-256 differs from the verified record of the snapshot raises :class:`PatchIntegrityError`.
    """
    source, target = os.fspath(snapshot), os.path.abspath(os.fspath(out))
    parent, base = os.path.split(target)
    keep = _check_out(target, parent, base)
    os.makedirs(parent, exist_ok=True)
    for leftover in _leftovers(parent, base, "tmp"):  # of interrupted pulls: copies and links only
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=base + ".pull-tmp-", dir=parent)
    try:
        written = {}
        for name in PATCH_FILES:
            if os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
                written[name] = _hash_file(os.path.join(tmp, name))[1]
        snap = os.path.normpath(source)
        recorded = _read_record(os.path.dirname(os.path.dirname(snap)), None, os.path.basename(snap)) or {}
        for name, digest in written.items():
            if name in recorded and recorded[name].sha256 != digest:
                raise PatchIntegrityError(
                    f"the copy of {os.path.join(source, name)} has sha256 {digest}, not the verified "
                    f"{recorded[name].sha256}: the cached file changed after it was verified; pull again",
                    path=os.path.realpath(os.path.join(source, name)), repo_id=repo_id, revision=revision,
                    reason="integrity")
        for name in keep:
            _link_or_copy(os.path.join(target, name), os.path.join(tmp, name))
        commit = os.path.basename(os.path.normpath(source))
        marker = {"written_by": "lora-patch pull", "repo_id": repo_id, "revision": revision,
                  "commit": commit if SHA_RE.fullmatch(commit) else None, "files": written}
        with open(os.path.join(tmp, PULL_MARKER), "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=1, sort_keys=True)
        for name in [*written, PULL_MARKER]:
            fsync_path(os.path.join(tmp, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(target):
        old = tempfile.mkdtemp(prefix=base + ".pull-old-", dir=parent)
        os.rmdir(old)  # only the unique name is wanted
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)  # the previous pull's files; kept files live on in ``target``
    else:
        os.replace(tmp, target)
    return target


def check_pull_out(out: str | os.PathLike) -> None:
    """Raise what :func:`copy_pulled_patch` would refuse ``out`` for, before anything is downloaded."""
    target = os.path.abspath(os.fspath(out))
    _check_out(target, *os.path.split(target))


def _check_out(target: str, parent: str, base: str) -> list[str]:
    """Refuse an ``out`` that a pull must not replace; returns the entries to carry over."""
    if os.path.lexists(target) and (os.path.islink(target) or not os.path.isdir(target)):
        raise NotADirectoryError(f"--out {target!r} exists and is not a directory; pass a new, empty or earlier "
                                 "pull's folder")
    if not os.path.isdir(target):
        old = _leftovers(parent, base, "old")
        if old:
            raise FileExistsError(f"an earlier pull into {target!r} was interrupted: its previous contents are in "
                                  f"{old[0]!r}; rename that folder back to {target!r} (or delete it), then pull again")
        return []
    entries = sorted(os.listdir(target))
    if not entries:
        return []
    if CONFIG_NAME not in entries:
        raise FileExistsError(f"--out {target!r} is a non-empty folder that is not a patch directory (no "
                              f"{CONFIG_NAME}); nothing was changed: pass a new or empty folder")
    ours = _marker_files(target)
    keep = []
    for name in entries:
        path = os.path.join(target, name)
        if name == PULL_MARKER:
            continue
        if name in ours:
            if not os.path.isfile(path) or os.path.islink(path) or _hash_file(path)[1] != ours[name]:
                raise FileExistsError(f"{path} was changed after lora-patch pull wrote it; pulling would overwrite "
                                      "your change: move it away or pass another --out")
        elif name in PATCH_FILES:
            raise FileExistsError(f"{path} was not written by lora-patch pull (no record in {PULL_MARKER}); pulling "
                                  "would overwrite it: pass a new or empty --out folder")
        else:
            keep.append(name)
    return keep


def _marker_files(folder: str) -> dict[str, str]:
    """``{name: sha256}`` of the files an earlier pull wrote into ``folder`` (its :data:`PULL_MARKER`)."""
    try:
        with open(os.path.join(folder, PULL_MARKER), encoding="utf-8") as f:
            files = json.load(f)["files"]
        return {str(k): str(v) for k, v in files.items() if k in PATCH_FILES}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _leftovers(parent: str, base: str, kind: str) -> list[str]:
    pattern = re.compile(re.escape(base) + r"\.pull-" + kind + r"-[A-Za-z0-9_]+")
    paths = [os.path.join(parent, n) for n in (os.listdir(parent) if os.path.isdir(parent) else [])]
    return sorted(p for p in paths if pattern.fullmatch(os.path.basename(p)) and os.path.isdir(p)
                  and not os.path.islink(p))


def _link_or_copy(src: str, dst: str) -> None:
    """Carry a user's entry of ``out`` into the new folder: hard links (the same files), copies where impossible."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b, follow_symlinks=False)
        except OSError:
            shutil.copy2(a, b, follow_symlinks=False)

    if os.path.isdir(src) and not os.path.islink(src):
        shutil.copytree(src, dst, symlinks=True, copy_function=link)
    else:
        link(src, dst)


