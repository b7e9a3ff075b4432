"""Labelled grids: make_grid's tiles untouched in the bottom-right corner, captions in a left margin and a top band
whose sizes follow the documented rule, clear errors, atomic writes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageFont

from lora_patch_adapters.evaluation import default_column_names, labelled_grid, save_labelled_grid
from lora_patch_adapters.evaluation import grid as grid_module

DARK = 96  # a caption pixel: every channel at most this (text is black on white, anti-aliased)


def _rows(count: int = 3, k: int = 4, h: int = 16, w: int = 24, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(k, 3, h, w, generator=g) * 2 - 1) * scale for _ in range(count)]


def _make_grid_pixels(rows, padding: int = 2) -> np.ndarray:
    """torchvision's grid of the clamped rows as uint8 [H, W, 3], converted the way save_image does."""
    images = torch.cat([r.clamp(-1, 1) for r in rows])
    grid = torchvision.utils.make_grid(images, nrow=rows[0].shape[0], normalize=True, value_range=(-1, 1),
                                       padding=padding)
    return (grid.double() * 255 + 0.5).floor().clamp(0, 255).permute(1, 2, 0).numpy().astype(np.uint8)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _has_text(region: np.ndarray) -> bool:
    return bool((region.max(axis=-1) <= DARK).any())


def assert_captioned(path, rows: int, columns: int, height: int, width: int, padding: int = 2) -> np.ndarray:
    """The PNG at ``path`` is a make_grid of ``rows`` x ``columns`` tiles (``height`` x ``width`` px) in its
    bottom-right corner, with text in every row's part of the left margin and every column's part of the top band.
    Returns the pixels."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    grid_h, grid_w = padding + rows * (height + padding), padding + columns * (width + padding)
    top, left = pixels.shape[0] - grid_h, pixels.shape[1] - grid_w
    assert top > 0 and left > 0, (pixels.shape, grid_h, grid_w)
    band, margin = pixels[:top, left:], pixels[top:, :left]
    assert band.min() != band.max() and margin.min() != margin.max()  # not uniform
    assert (pixels[:top, :left] == 255).all()  # the corner stays blank
    for r in range(rows):
        y = top + padding + r * (height + padding)
        assert _has_text(pixels[y : y + height, :left]), f"row {r + 1} has no caption"
    for j in range(columns):
        x = left + padding + j * (width + padding)
        assert _has_text(pixels[:top, x : x + width]), f"column {j + 1} has no caption"
    return pixels


# ------------------------------------------------------------------------------------------------------- layout


def test_size_is_make_grid_plus_the_documented_margins():
    rows = _rows(3, 4, 16, 24)
    names, columns = ["x", "yy", "a longer name"], ["a", "b", "c", "d"]
    image = labelled_grid(rows, names, columns, font_size=12)
    font = ImageFont.load_default(size=12)
    margin, line = 3, 15  # max(2, 12 // 4), ceil(1.25 * 12)
    left = 2 * margin + max(math.ceil(font.getlength(n)) for n in names)
    top = 2 * margin + line  # every column caption fits one line of 24 px
    assert image.size == (left + 2 + 4 * 26, top + 2 + 3 * 18)
    assert image.mode == "RGB"


def test_tiles_are_make_grids_pixels_even_for_values_outside_the_range():
    rows = _rows(3, 4, 16, 24, scale=1.5)  # clamped like make_grid's callers did
    expected = _make_grid_pixels(rows)
    pixels = _pixels(labelled_grid(rows, ["input", "protected", "edit"], default_column_names(4)))
    tiles = pixels[pixels.shape[0] - expected.shape[0] :, pixels.shape[1] - expected.shape[1] :]
    assert np.abs(tiles.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("size", [32, 64, 256])
def test_captions_are_drawn_in_every_row_and_column_cell(tmp_path, size):
    rows = _rows(2, 3, size, size)
    path = save_labelled_grid(tmp_path / "g.png", rows, ["clean", "protected"], ["image 1", "image 2", "image 3"])
    assert path == str(tmp_path / "g.png")
    assert_captioned(path, 2, 3, size, size)


def test_the_font_grows_with_the_tile_size():
    assert [grid_module.default_font_size(s, s) for s in (8, 32, 64, 128, 256, 1024)] == [10, 10, 14, 22, 28, 28]
    assert grid_module.default_font_size(256, 32) == 10  # the smaller side decides
    small = labelled_grid(_rows(1, 1, 32, 32), ["input"], ["image 1"])
    large = labelled_grid(_rows(1, 1, 256, 256), ["input"], ["image 1"])
    assert large.size[1] - 258 > small.size[1] - 34  # a taller top band
    assert large.size[0] - 258 > small.size[0] - 34  # a wider left margin


def test_different_captions_give_different_bands_and_the_same_tiles():
    rows = _rows(2, 2, 32, 32)
    a = _pixels(labelled_grid(rows, ["protected", "clean"], ["one", "two"]))  # row 1 sets the margin's width
    b = _pixels(labelled_grid(rows, ["protected", "edit"], ["one", "six"]))
    assert a.shape == b.shape
    top, left = a.shape[0] - (2 + 2 * 34), a.shape[1] - (2 + 2 * 34)
    assert (a[top:, left:] == b[top:, left:]).all()
    # row 1 and column 1 captions are the same, row 2 and column 2 differ
    assert (a[top + 2 : top + 34, :left] == b[top + 2 : top + 34, :left]).all()
    assert (a[top + 36 :, :left] != b[top + 36 :, :left]).any()
    assert (a[:top, left + 2 : left + 34] == b[:top, left + 2 : left + 34]).all()
    assert (a[:top, left + 36 :] != b[:top, left + 36 :]).any()


def test_long_captions_wrap_or_end_in_an_ellipsis_and_never_cover_tiles():
    rows = _rows(2, 2, 32, 32)
    long = "a caption far too long for any margin " * 8
    image = labelled_grid(rows, [long, "x" * 300], [long, "y" * 300])
    size, margin, line = 10, 2, 13  # the default font for 32 px tiles
    assert image.size == (max(2 * 32, 10 * size) + 2 + 2 * 34, 2 * margin + 2 * line + 2 + 2 * 34)
    pixels = _pixels(image)
    expected = _make_grid_pixels(rows)
    assert (pixels[-expected.shape[0] :, -expected.shape[1] :] == expected).all()
    assert _has_text(pixels[: pixels.shape[0] - expected.shape[0], pixels.shape[1] - expected.shape[1] :])
    assert _has_text(pixels[pixels.shape[0] - expected.shape[0] :, : pixels.shape[1] - expected.shape[1]])


def test_wrap_keeps_words_breaks_long_ones_and_ellipsizes():
    font = ImageFont.load_default(size=12)
    assert grid_module._wrap(font, "base: edit of protected", 1000, 3) == ["base: edit of protected"]
    lines = grid_module._wrap(font, "base: edit of protected", 60, 3)
    assert len(lines) > 1 and " ".join(lines) == "base: edit of protected"
    assert all(font.getlength(line) <= 60 for line in lines)
    broken = grid_module._wrap(font, "x" * 40, 30, 10)
    assert "".join(broken) == "x" * 40 and all(font.getlength(line) <= 30 for line in broken)
    cut = grid_module._wrap(font, "one two three four five six seven", 40, 2)
    assert len(cut) == 2 and cut[-1].endswith("...") and font.getlength(cut[-1]) <= 40


def test_pad_fills_short_rows_with_black_tiles():
    rows = [_rows(1, 3, 16, 16)[0], _rows(1, 2, 16, 16, seed=1)[0]]
    pixels = _pixels(labelled_grid(rows, ["three", "two"], ["a", "b", "c"], pad=True))
    filled = [rows[0], torch.cat([rows[1], torch.full((1, 3, 16, 16), -1.0)])]
    expected = _make_grid_pixels(filled)
    assert (pixels[-expected.shape[0] :, -expected.shape[1] :] == expected).all()
    assert (expected[20:36, 38:54] == 0).all()  # the padded tile: row 2, column 3


def test_the_bitmap_font_is_the_fallback(monkeypatch):
    original = ImageFont.load_default

    def no_sizes(size=None):
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return original()

    monkeypatch.setattr(ImageFont, "load_default", no_sizes)
    rows = _rows(2, 2, 32, 32)
    pixels = _pixels(labelled_grid(rows, ["clean", "protected"], ["one", "two"]))
    expected = _make_grid_pixels(rows)
    assert (pixels[-expected.shape[0] :, -expected.shape[1] :] == expected).all()
    assert _has_text(pixels[: pixels.shape[0] - expected.shape[0]])


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"row_names": ["a", "b"]}, ValueError, "row_names has 2 name(s) but the grid has 3 row(s)"),
    ({"column_names": ["a", "b", "c"]}, ValueError, "grid row 1 ('r1') has 4 images but there are 3 column names"),
    ({"column_names": ["a", "b", "c", "d", "e"]}, ValueError, "has 4 images but there are 5 column names"),
    ({"column_names": ["a", "b", "c"], "pad": True}, ValueError, "column_names has 3 name(s) but the grid has 4"),
    ({"row_names": "r1 r2 r3"}, TypeError, "row_names must be a list of strings"),
    ({"column_names": ["a", "b", 3, "d"]}, TypeError, "column_names must all be strings, got int"),
    ({"font_size": 2}, ValueError, "font_size"),
])
def test_count_and_type_errors_are_clear(kwargs, error, fragment):
    arguments = {"rows": _rows(3, 4), "row_names": ["r1", "r2", "r3"], "column_names": ["a", "b", "c", "d"]}
    with pytest.raises(error) as info:
        labelled_grid(**{**arguments, **kwargs})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_ragged_rows_and_mixed_sizes_are_refused():
    with pytest.raises(ValueError, match="grid row 2 .* has 3 images but there are 4 column names.*pad=True"):
        labelled_grid([_rows(1, 4)[0], _rows(1, 3)[0]], ["a", "b"], default_column_names(4))
    with pytest.raises(ValueError, match=r"grid row 2 has \(16, 16\) px images but row 1 has \(16, 24\)"):
        labelled_grid([_rows(1, 2)[0], _rows(1, 2, 16, 16)[0]], ["a", "b"], default_column_names(2))
    with pytest.raises(ValueError, match="non-empty list"):
        labelled_grid([], [], [])
    with pytest.raises(ValueError, match="grid row 1 must have 3 channels.*channels-last"):
        labelled_grid([torch.zeros(2, 16, 16, 3)], ["a"], default_column_names(2))


# ------------------------------------------------------------------------------------------------------ writing


def test_save_is_atomic_and_touches_nothing_else(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "grid.png").write_bytes(b"old")
    path = save_labelled_grid(str(tmp_path / "grid.png"), _rows(), ["a", "b", "c"], default_column_names(4))
    assert sorted(os.listdir(tmp_path)) == ["grid.png", "keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "mine"
    (tmp_path / "fresh.txt").write_text("")  # the grid gets the permissions of any new file (umask), not 0600
    assert os.stat(path).st_mode == os.stat(tmp_path / "fresh.txt").st_mode
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    (tmp_path / "grid.png").write_bytes(b"old")

    def broken(self, fp, format=None, **params):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_labelled_grid(tmp_path / "grid.png", _rows(), ["a", "b", "c"], default_column_names(4))
    assert os.listdir(tmp_path) == ["grid.png"] and (tmp_path / "grid.png").read_bytes() == b"old"


def test_invalid_arguments_write_nothing_and_a_folder_path_is_refused(tmp_path):
    target = tmp_path / "new" / "grid.png"
    with pytest.raises(ValueError, match="row_names"):
        save_labelled_grid(target, _rows(), ["a"], default_column_names(4))
    assert list(tmp_path.iterdir()) == []  # not even the folder
    with pytest.raises(IsADirectoryError, match="give a file name such as"):
        save_labelled_grid(tmp_path, _rows(), ["a", "b", "c"], default_column_names(4))
    save_labelled_grid(target, _rows(), ["a", "b", "c"], default_column_names(4))  # creates the folder
    assert os.listdir(tmp_path / "new") == ["grid.png"]


def test_default_column_names():
    assert default_column_names(3) == ["image 1", "image 2", "image 3"]
    assert default_column_names(0) == []
