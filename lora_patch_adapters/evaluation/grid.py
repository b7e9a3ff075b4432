"""Labelled image grids: the tiles of :func:`torchvision.utils.make_grid` with each row's caption in a left margin and
each column's caption in a top band, drawn into the PNG itself with Pillow's built-in font (nothing to download).

Layout, for tiles ``H`` x ``W``, make_grid's ``padding`` p and font size ``s`` (default
:func:`default_font_size`): text margin ``m = max(2, s // 4)``, line height ``ceil(1.25 s)``. The top band is
``2 m + lines * line height`` high (``lines``: the most lines any column caption wraps to, 1 or 2); the left margin is
``2 m +`` the widest row caption (its rounded-up advance width), at most ``max(2 W, 10 s)``. Column captions wrap
within ``W - m``, row captions within the left margin less ``2 m``, in as many lines as the row pitch ``H + p``
holds; what still does not fit ends in ``...``. Each caption is drawn into its own cell of the margin, so text never
covers a tile. The tiles sit in the bottom-right corner, pixel for pixel what
``make_grid(..., normalize=True, value_range=(-1, 1))`` and ``save_image`` give.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFont

from .._checks import check_images, check_int
from .._io import fsync_path

BACKGROUND = (255, 255, 255)
"""The colour of the caption margins."""
TEXT = (0, 0, 0)
"""The colour of the captions."""
ELLIPSIS = "..."
COLUMN_LINES = 2
"""The most lines a column caption may wrap to."""


def default_font_size(tile_height: int, tile_width: int) -> int:
    """The caption font size for tiles ``tile_height`` x ``tile_width`` px: ``min(H, W) // 8 + 6`` within [10, 28]
    (10 px for 32 px tiles, 14 for 64, 22 for 128, 28 for 256)."""
    return max(10, min(28, min(tile_height, tile_width) // 8 + 6))


def default_column_names(count: int) -> list[str]:
    """``["image 1", ..., "image <count>"]``: column captions where nothing better names the columns."""
    return [f"image {j + 1}" for j in range(count)]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` px, or its fixed bitmap font where FreeType is unavailable."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 has no size; no FreeType: the bitmap font
        return ImageFont.load_default()


def _width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> int:
    return math.ceil(font.getlength(text))


def _prefix(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str, width: int, least: int) -> int:
    """The length of the longest prefix of ``text`` at most ``width`` px wide, but at least ``least``."""
    low, high = least, len(text)  # binary search: the width grows with the prefix
    while low < high:
        middle = (low + high + 1) // 2
        if _width(font, text[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return low


def _fit(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str, width: int) -> str:
    """``text`` if it fits ``width`` px, else its longest prefix that fits followed by ``...``."""
    if _width(font, text) <= width:
        return text
    return text[: _prefix(font, text, width - _width(font, ELLIPSIS), 0)].rstrip() + ELLIPSIS


def _wrap(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str, width: int, max_lines: int) -> list[str]:
    """``text`` in lines of at most ``width`` px (words kept whole where they fit, longer words broken), at most
    ``max_lines`` of them; the last one ends in ``...`` when text was left out."""
    words, lines, current, i = text.split(), [], "", 0
    while i < len(words) and len(lines) < max_lines:
        candidate = f"{current} {words[i]}" if current else words[i]
        if _width(font, candidate) <= width:
            current, i = candidate, i + 1
        elif current:
            lines.append(current)
            current = ""
        else:  # one word wider than a line: break it
            cut = _prefix(font, words[i], width, 1)
            lines.append(words[i][:cut])
            words[i] = words[i][cut:]
    rest = " ".join([current, *words[i:]]).strip()
    if len(lines) < max_lines:
        return [*lines, rest] if rest or not lines else lines
    return lines[:-1] + [_fit(font, f"{lines[-1]} {rest}", width)] if rest else lines


def _names(names: Sequence[str], what: str, unit: str) -> list[str]:
    """``names`` as a list of one-line strings (newlines and tabs become spaces), or a clear error."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{what} must be a list of strings (one per {unit}), got {type(names).__name__}.")
    bad = [type(n).__name__ for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{what} must all be strings, got {bad[0]}.")
    return [" ".join(n.split()) for n in names]


def _check_count(names: list[str], count: int, what: str, unit: str) -> None:
    if len(names) != count:
        raise ValueError(f"{what} has {len(names)} name(s) but the grid has {count} {unit}(s): give one name per "
                         f"{unit}.")


def labelled_grid(
    rows: Sequence[torch.Tensor],
    row_names: Sequence[str],
    column_names: Sequence[str],
    *,
    padding: int = 2,
    font_size: int | None = None,
    pad: bool = False,
) -> Image.Image:
    """An RGB image: ``rows`` (each a batch [K, 3, H, W] in [-1, 1], values outside are clamped) laid out one row per
    batch by :func:`torchvision.utils.make_grid` (``padding`` px of black between tiles), with ``row_names[i]`` left
    of row i and ``column_names[j]`` above column j (layout in the module docstring). Every row must hold K =
    ``len(column_names)`` images of one size; ``pad=True`` fills shorter rows with black tiles instead of refusing
    them. ``font_size``: the caption size in px (default :func:`default_font_size` of the tile size)."""
    if isinstance(rows, torch.Tensor) or not isinstance(rows, Sequence) or not rows:
        raise ValueError("rows must be a non-empty list of image batches [K, 3, H, W] (one batch per grid row).")
    for i, row in enumerate(rows):
        check_images(row, f"grid row {i + 1}", allow_empty=False)
    tile = tuple(rows[0].shape[2:])
    for i, row in enumerate(rows):
        if tuple(row.shape[2:]) != tile:
            raise ValueError(f"grid row {i + 1} has {tuple(row.shape[2:])} px images but row 1 has {tile}: every "
                             "image of a grid must have one size.")
    row_names, column_names = _names(row_names, "row_names", "row"), _names(column_names, "column_names", "column")
    _check_count(row_names, len(rows), "row_names", "row")
    columns = max(row.shape[0] for row in rows) if pad else len(column_names)
    _check_count(column_names, columns, "column_names", "column")
    if not pad:
        for i, row in enumerate(rows):
            if row.shape[0] != columns:
                raise ValueError(f"grid row {i + 1} ({row_names[i]!r}) has {row.shape[0]} images but there are "
                                 f"{columns} column names: give one image per column, or pad=True to fill short "
                                 "rows with blank tiles.")
    check_int(padding, "padding", minimum=0)
    font_size = check_int(font_size, "font_size", minimum=6, allow_none=True)
    height, width = tile
    size = default_font_size(height, width) if font_size is None else font_size

    batches = []
    for row in rows:
        row = row.detach().float().clamp(-1, 1).cpu()
        if row.shape[0] < columns:
            row = torch.cat([row, row.new_full((columns - row.shape[0], *row.shape[1:]), -1.0)])
        batches.append(row)
    grid = torchvision.utils.make_grid(torch.cat(batches), nrow=columns, normalize=True, value_range=(-1, 1),
                                       padding=padding)
    tiles = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()  # as save_image

    font = _font(size)
    margin, line = max(2, size // 4), math.ceil(1.25 * size)
    left_limit = max(2 * width, 10 * size)
    left = min(left_limit, 2 * margin + max(_width(font, name) for name in row_names))
    pitch_y, pitch_x = height + padding, width + padding
    row_lines = max(1, pitch_y // line)
    row_text = [_wrap(font, name, left - 2 * margin, row_lines) for name in row_names]
    column_text = [_wrap(font, name, max(1, width - margin), COLUMN_LINES) for name in column_names]
    top = 2 * margin + line * max(len(lines) for lines in column_text)

    canvas = Image.new("RGB", (left + tiles.shape[1], top + tiles.shape[0]), BACKGROUND)
    canvas.paste(Image.fromarray(np.ascontiguousarray(tiles), "RGB"), (left, top))
    for i, lines in enumerate(row_text):  # cell: the whole left margin over the row's pitch
        _draw_cell(canvas, (0, top + padding // 2 + i * pitch_y, left, pitch_y), lines, font, line)
    for j, lines in enumerate(column_text):  # cell: the whole top band over the column's pitch
        _draw_cell(canvas, (left + padding // 2 + j * pitch_x, 0, pitch_x, top), lines, font, line)
    return canvas


def _draw_cell(canvas: Image.Image, box: tuple[int, int, int, int], lines: list[str],
               font: ImageFont.FreeTypeFont | ImageFont.ImageFont, line: int) -> None:
    """``lines`` centred in a cell (x, y, width, height) of ``canvas``, drawn on their own image so nothing spills."""
    x, y, width, height = box
    cell = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(cell)
    first = (height - line * len(lines)) // 2
    for k, text in enumerate(lines):  # the default anchor: the left end of the ascender line
        draw.text(((width - font.getlength(text)) / 2, first + k * line), text, fill=TEXT, font=font)
    canvas.paste(cell, (x, y))


def save_labelled_grid(
    path: str | os.PathLike[str],
    rows: Sequence[torch.Tensor],
    row_names: Sequence[str],
    column_names: Sequence[str],
    **options,
) -> str:
    """Write :func:`labelled_grid` (``options``: its keyword arguments) to ``path`` as a PNG, atomically (a temporary
    file beside it, fsynced, then renamed over ``path``; nothing else in the folder is touched). Creates the parent
    folder; returns ``path`` as a string."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"The grid path {path} is a folder: give a file name such as "
                                f"{os.path.join(path, 'grid.png')}.")
    image = labelled_grid(rows, row_names, column_names, **options)  # validated before anything is written
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{os.path.basename(path)}.{secrets.token_hex(6)}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    fsync_path(folder)
    return path
