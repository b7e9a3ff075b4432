"""Run outputs: every run writes ``summary.json`` (its :class:`~lora_patch_adapters.runs.summary.RunSummary`),
``report.md`` and ``grid.png`` into its output folder; tables for the report and the terminal."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision

from .summary import RunSummary

SUMMARY = "summary.json"
REPORT = "report.md"
GRID = "grid.png"


def save_grid(path: str, rows: Sequence[torch.Tensor], row_names: Sequence[str] | None = None) -> str:
    """A PNG with one row per tensor [k, 3, H, W] in [-1, 1] (rows are cut to the shortest ``k``)."""
    if not rows:
        raise ValueError("save_grid needs at least one row of images.")
    k = min(r.shape[0] for r in rows)
    images = torch.cat([r[:k].detach().float().clamp(-1, 1).cpu() for r in rows])
    grid = torchvision.utils.make_grid(images, nrow=k, normalize=True, value_range=(-1, 1), padding=2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torchvision.utils.save_image(grid, path)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats are shown with 4 significant decimals."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same table aligned for a terminal."""
    cells = [list(header)] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in cells)


def _write_atomically(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def _move_in(source: str, path: str) -> None:
    """Move ``source`` to ``path`` atomically, also across file systems (copied beside ``path``, then renamed)."""
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=os.path.dirname(path))
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    os.remove(source)
    with contextlib.suppress(OSError):  # the staging folder, once empty
        os.rmdir(os.path.dirname(source))


def write_run(out_dir: str, summary: RunSummary) -> dict[str, str]:
    """Write ``summary.json`` (``summary.to_dict()``) and ``report.md`` (``summary.report``) into ``out_dir``, and
    move ``summary.staged`` files in; each file is swapped in whole. Returns their paths, the grid's if there is one,
    then ``summary.outputs``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"summary": os.path.join(out_dir, SUMMARY), "report": os.path.join(out_dir, REPORT)}
    record = json.dumps(summary.to_dict(), indent=2, sort_keys=True, default=_jsonable) + "\n"
    for name, source in summary.staged.items():
        _move_in(source, os.path.join(out_dir, name))
    summary.staged = {}
    _write_atomically(paths["summary"], record)
    _write_atomically(paths["report"], summary.report.rstrip() + "\n")
    grid = os.path.join(out_dir, GRID)
    if os.path.isfile(grid):
        paths["grid"] = grid
    return {**paths, **summary.outputs}


def print_outputs(paths: dict[str, str], echo: Callable[[str], None] = print) -> None:
    """``name: path`` lines, the names padded to one column."""
    for name, path in paths.items():
        echo(f"{name + ':':9s}{path}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
