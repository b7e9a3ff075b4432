"""File-system helpers shared by every floor that writes atomically (this module imports nothing of the package)."""

from __future__ import annotations

import os


def fsync_path(path: str) -> None:
    """Flush ``path`` (a file or a directory) to disk; a no-op for directories on Windows, which cannot open them."""
    if os.name == "nt" and os.path.isdir(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
