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

from .._checks import check_images
from ..evaluation.grid import default_column_names, save_labelled_grid
from .summary import RunSummary

SUMMARY = "summary.json"
REPORT = "report.md"
GRID = "grid.png"


def save_grid(path: str, rows: Sequence[torch.Tensor], row_names: Sequence[str] | None = None,
              column_names: Sequence[str] | None = None) -> str:
    """A PNG with one row per tensor [k, 3, H, W] in [-1, 1] (rows are cut to the shortest ``k``), each row captioned
    with ``row_names`` (default "row 1", ...) and each column with ``column_names`` (default "image 1", ...) in the
    image itself (:func:`~lora_patch_adapters.evaluation.grid.labelled_grid`); written atomically. Returns ``path``."""
    if not rows:
        raise ValueError("save_grid needs at least one row of images.")
    for i, row in enumerate(rows):
        check_images(row, f"grid row {i + 1}", allow_empty=False)
    k = min(r.shape[0] for r in rows)
    row_names = [f"row {i + 1}" for i in range(len(rows))] if row_names is None else row_names
    column_names = default_column_names(k) if column_names is None else column_names
    if isinstance(column_names, Sequence) and not isinstance(column_names, str) and len(column_names) != k:
        raise ValueError(f"column_names has {len(column_names)} name(s) but the grid has {k} column(s) (rows are cut "
                         "to the shortest row): give one name per column.")
    return save_labelled_grid(path, [r[:k] for r in rows], row_names, column_names)


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
