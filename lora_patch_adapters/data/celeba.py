"""CelebA reader: the attribute file, per-model preprocessing and a ``torch.utils.data.Dataset``.

CelebA ships its labels as ``list_attr_celeba.txt``::

    202599
    5_o_Clock_Shadow Arched_Eyebrows Attractive ... Wearing_Necktie Young
    000001.jpg -1  1  1 -1 -1 ...  1
    000002.jpg -1 -1 -1  1 -1 ...  1
    ...

(line 1: the number of images; line 2: the 40 attribute names; then one row per image: the file name followed by
one value per attribute, ``1`` = present, ``-1`` = absent, separated by one or more spaces). The CelebA-HQ
annotation file (``CelebAMask-HQ-attribute-anno.txt``) has the same layout.

Images come out as float tensors ``[3, H, W]`` in [-1, 1] (the scale all three official generators expect) and
labels as float tensors of 0/1. Each supported generator was trained with its own crop and size; :data:`PRESETS`
records them and :func:`make_transform` builds the matching torchvision pipeline.

Split convention of the LoRA-patching paper: training uses the first 1000 images, testing the images from index
29000 of the 30k subset (rows 29000 up to 30000 in file order): ``CelebA(..., split="paper-train")`` and
``CelebA(..., split="paper-test")``.

Example::

    from torch.utils.data import DataLoader
    from lora_patch_adapters.data.celeba import CelebA

    train = CelebA("celeba/img_align_celeba", "celeba/list_attr_celeba.txt", preset="stargan", split="paper-train")
    images, labels = next(iter(DataLoader(train, batch_size=4)))   # [4, 3, 256, 256] in [-1, 1], [4, 5] of 0/1
"""

from __future__ import annotations

import codecs
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Union

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from ..attributes import STARGAN_ATTRIBUTES  # the default label columns
from .images import read_image, to_rgb

__all__ = [
    "CELEBA_ATTRIBUTES", "PRESETS", "SPLITS", "STARGAN_ATTRIBUTES", "CelebA", "CelebAAttributes", "Preprocessing",
    "make_transform", "read_attr_file",
]

PathLike = Union[str, os.PathLike]
SizeArg = Union[int, Sequence[int]]

#: The 40 CelebA attributes, in the column order of ``list_attr_celeba.txt``.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)


# ---------------------------------------------------------------------------------------------------- attribute file
def _unknown_names_error(unknown: str, available: Sequence[str], source: object) -> ValueError:
    close = difflib.get_close_matches(unknown, available, n=3, cutoff=0.6)
    if not close:  # case-insensitive second chance ("male" -> "Male")
        lowered = {name.lower(): name for name in available}
        close = [lowered[m] for m in difflib.get_close_matches(unknown.lower(), list(lowered), n=3, cutoff=0.6)]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"unknown attribute {unknown!r} (not a column of {source}){hint} Available: {', '.join(available)}"
    )


@dataclass(frozen=True)
class CelebAAttributes:
    """The parsed content of a CelebA attribute file.

    Attributes:
        filenames: image file names, one per row, in file order (``N`` entries).
        names: attribute names, in column order (``A`` entries; the 40 of :data:`CELEBA_ATTRIBUTES` for the
            standard file).
        values: float tensor ``[N, A]`` of 0/1 (the file's -1 becomes 0, 1 stays 1).
        path: the file the table was read from (``None`` if built by hand); used in error messages.
    """

    filenames: list[str]
    names: list[str]
    values: torch.Tensor
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.filenames)

    def column_indices(self, names: Sequence[str]) -> list[int]:
        """Column positions of ``names`` (in the given order).

        Raises:
            ValueError: a name is not a column (the message suggests the closest names and lists all of them).
        """
        position = {name: i for i, name in enumerate(self.names)}
        indices = []
        for name in names:
            if name not in position:
                raise _unknown_names_error(name, self.names, self.path or "the attribute table")
            indices.append(position[name])
        return indices


def _decode_attr_text(path: Path, data: bytes) -> str:
    """The attribute file's text: UTF-8 (with or without a byte-order mark), or UTF-16 when it starts with a UTF-16
    byte-order mark (Windows' "Unicode" text). Anything else is refused, never guessed: a Latin-1 reading would turn
    non-ASCII file names into names no image has."""
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        text = data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{path}, line {line}: byte 0x{data[exc.start]:02x} (offset {exc.start}) is not "
            f"{'UTF-16' if utf16 else 'UTF-8'}; the attribute file must be UTF-8 text (or UTF-16 with a byte-order "
            f"mark): re-save it as UTF-8, e.g. with 'iconv -f latin1 -t utf-8' for a Latin-1 file"
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ValueError(
            f"{path}, line {line}: NUL characters (UTF-16 without a byte-order mark, or not a text file?); the "
            f"attribute file must be UTF-8 text: re-save it as UTF-8"
        )
    return text


def read_attr_file(path: PathLike) -> CelebAAttributes:
    """Read a CelebA attribute file (``list_attr_celeba.txt`` or the CelebA-HQ file of the same layout).

    Args:
        path: the attribute file.

    Returns:
        A :class:`CelebAAttributes` with ``N`` file names, the ``A`` attribute names and ``values`` ``[N, A]``
        (float, 1 where the file says 1, 0 where it says -1).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: malformed content; the message names the file, the line number and what was expected
            (text neither UTF-8 nor UTF-16 with a byte-order mark, line 1 not an image count, an empty or repeated
            attribute name, a row with the wrong number of values, a value other than -1/1, a repeated file name,
            or a row count different from line 1's).
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise FileNotFoundError(f"CelebA attribute file {path} is not a regular file (a directory?)")
        raise FileNotFoundError(
            f"CelebA attribute file {path} not found (expected list_attr_celeba.txt from the CelebA 'Anno' folder)"
        )
    lines = _decode_attr_text(path, path.read_bytes()).splitlines()

    def fail(line_number: int, message: str) -> ValueError:
        return ValueError(f"{path}, line {line_number}: {message}")

    if not any(line.strip() for line in lines):
        raise fail(1, "the file is empty (expected the number of images, the attribute names, then one row per image)")
    if not lines[0].strip():
        raise fail(1, "expected the number of images, found an empty line")
    count_text = lines[0].strip()
    try:
        declared = int(count_text)
    except ValueError:
        raise fail(1, f"expected the number of images (an integer), found {count_text[:60]!r}") from None
    if declared < 0:
        raise fail(1, f"expected a non-negative number of images, found {declared}")

    if len(lines) < 2 or not lines[1].split():
        raise fail(2, "expected the attribute names (e.g. '5_o_Clock_Shadow Arched_Eyebrows ... Young')")
    names = lines[1].split()
    if names[0].lower().endswith((".jpg", ".jpeg", ".png")) or {"1", "-1"} & set(names):
        raise fail(2, f"expected the attribute names, found an image row starting with {names[0]!r}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise fail(2, f"attribute name {name!r} appears twice")
        seen.add(name)
    width = len(names)

    filenames: list[str] = []
    flags: list[bool] = []
    row_of_file: dict[str, int] = {}
    allowed = {"1", "-1"}
    for line_number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:  # blank lines (typically a trailing newline) carry nothing
            continue
        filename, values = fields[0], fields[1:]
        if len(values) != width:
            raise fail(
                line_number,
                f"expected a file name followed by {width} values (one per attribute), "
                f"found {len(values)} value(s) after {filename!r}",
            )
        if not allowed.issuperset(values):
            column = next(i for i, v in enumerate(values) if v not in allowed)
            raise fail(
                line_number,
                f"expected -1 or 1, found {values[column]!r} for attribute {names[column]!r} of {filename!r}",
            )
        if filename in row_of_file:
            raise fail(line_number, f"file name {filename!r} already listed on line {row_of_file[filename]}")
        row_of_file[filename] = line_number
        filenames.append(filename)
        flags.extend(v == "1" for v in values)

    if len(filenames) != declared:
        raise fail(1, f"declares {declared} images but the file lists {len(filenames)} image rows")
    values_tensor = torch.tensor(flags, dtype=torch.bool).reshape(len(filenames), width).float()
    return CelebAAttributes(filenames=filenames, names=names, values=values_tensor, path=path)


# ----------------------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocessing:
    """How a generator's training images were prepared.

    Attributes:
        crop: side of the centre crop taken from the original image first (``None``: no crop).
        size: the ``Resize`` argument applied after the crop (an int scales the shorter side to it).
        source: where the numbers come from.
    """

    crop: int | None
    size: int
    source: str = ""


#: Preprocessing per model, as in the official test scripts.
PRESETS: Mapping[str, Preprocessing] = MappingProxyType(
    {
        "stargan": Preprocessing(crop=178, size=256, source="yunjey/stargan: CenterCrop(178) -> Resize(256)"),
        "attgan": Preprocessing(crop=170, size=256, source="elvisyjlin/AttGAN-PyTorch: CenterCrop(170) -> Resize(256)"),
        "hisd": Preprocessing(crop=None, size=256, source="imlixinyang/HiSD (CelebA-HQ): Resize(256), no crop"),
        "testbed": Preprocessing(crop=None, size=64, source="this package's synthetic testbed: Resize(64), no crop"),
    }
)


def _check_size(value: SizeArg, what: str, allow_zero: bool) -> int | tuple[int, int]:
    def ok(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and (v > 0 or (allow_zero and v == 0))

    if ok(value):
        return int(value)  # type: ignore[arg-type]
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(ok(v) for v in value):
        if allow_zero and 0 in value:
            raise ValueError(f"{what} must be a positive int, (height, width) of positive ints, or 0; got {value!r}")
        return (int(value[0]), int(value[1]))
    raise ValueError(
        f"{what} must be a positive int or a (height, width) pair of positive ints"
        f"{' (0 = no crop)' if allow_zero else ''}; got {value!r}"
    )


def make_transform(
    preset: str | None = None, crop: SizeArg | None = None, size: SizeArg | None = None
) -> Callable[[Image.Image], torch.Tensor]:
    """Build the PIL image -> tensor pipeline of a preset (or of explicit numbers).

    The pipeline is :func:`to_rgb` -> ``CenterCrop(crop)`` (if any) -> ``Resize(size)`` -> ``ToTensor`` ->
    ``Normalize(0.5, 0.5)``, giving a float tensor ``[3, H, W]`` in [-1, 1] for an image of any common mode.
    ``Resize`` with an int scales the *shorter* side to ``size`` and keeps the aspect ratio (the official
    behaviour), so a non-square image without a crop (e.g. the 178x218 aligned CelebA under ``"hisd"``) comes out
    non-square; pass ``size=(256, 256)`` to force a square. A crop larger than the image pads it with black.

    Args:
        preset: a key of :data:`PRESETS` (``"stargan"``, ``"attgan"``, ``"hisd"``, ``"testbed"``), or ``None``.
        crop: centre-crop side (int) or ``(height, width)``; overrides the preset's crop; ``0`` removes the
            preset's crop.
        size: ``Resize`` argument (int: shorter side; ``(height, width)``: exact); overrides the preset's size.
            Required when ``preset`` is ``None``.

    Returns:
        A ``torchvision.transforms.Compose`` mapping a PIL image to a float tensor ``[3, H, W]`` in [-1, 1].

    Raises:
        ValueError: unknown preset, no size, or a malformed crop/size.
    """
    chosen_crop: SizeArg | None = None
    chosen_size: SizeArg | None = None
    if preset is not None:
        key = preset.lower() if isinstance(preset, str) else preset
        if key not in PRESETS:
            raise ValueError(f"unknown preprocessing preset {preset!r}; available: {', '.join(PRESETS)}")
        chosen_crop, chosen_size = PRESETS[key].crop, PRESETS[key].size
    if crop is not None:
        chosen_crop = _check_size(crop, "crop", allow_zero=True) or None
    if size is not None:
        chosen_size = _check_size(size, "size", allow_zero=False)
    if chosen_size is None:
        raise ValueError(
            f"make_transform needs a preset ({', '.join(PRESETS)}) or an explicit size (e.g. size=256)"
        )

    steps: list[Callable] = [to_rgb]  # 16-bit, palette and transparent images get their defined RGB
    if chosen_crop is not None:
        steps.append(transforms.CenterCrop(chosen_crop))
    steps += [
        transforms.Resize(chosen_size, antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    ]
    return transforms.Compose(steps)


# ------------------------------------------------------------------------------------------------------------ dataset
#: Named row ranges ``[start, stop)`` of the attribute file (file order).
#: "paper-train": the first 1000 images; "paper-test": the 1000 images from index 29000 of the 30k subset.
SPLITS: Mapping[str, tuple[int, int]] = MappingProxyType({"paper-train": (0, 1000), "paper-test": (29000, 30000)})

_LAYOUT_HINT = (
    "image_dir must be the folder that holds the images named in the attribute file, "
    "e.g. celeba/img_align_celeba/000001.jpg with celeba/list_attr_celeba.txt "
    "(or CelebA-HQ's CelebA-HQ-img/0.jpg with CelebAMask-HQ-attribute-anno.txt)"
)


class CelebA(Dataset):
    """CelebA images with a chosen subset of attribute labels.

    ``dataset[i]`` returns ``(image, labels)``: ``image`` a float tensor ``[3, H, W]`` in [-1, 1] (RGB; ``H = W =
    256`` under the ``"stargan"`` and ``"attgan"`` presets), ``labels`` a float tensor ``[A]`` of 0/1 over
    ``attributes`` in the given order. Images are read lazily: a missing or bad file is reported (with its row) when
    accessed (:func:`read_image`).

    Args:
        image_dir: the folder holding the images (e.g. ``celeba/img_align_celeba``).
        attr_file: the attribute file (``list_attr_celeba.txt``), or an already parsed :class:`CelebAAttributes`
            (to share one parse between several datasets).
        attributes: the label columns returned, in this order (default: StarGAN's five); ``None``: all columns.
        preset: preprocessing preset (:data:`PRESETS`); see :func:`make_transform`.
        crop: centre-crop override (``0`` = no crop).
        size: resize override.
        split: ``None`` (all rows), ``"paper-train"`` (rows 0-999, the first 1000 images) or ``"paper-test"``
            (rows 29000-29999 of the file order, i.e. from index 29000 of the 30k subset). The file must have
            enough rows.
        start, stop: an explicit row range ``[start, stop)`` in file order (either may be omitted); cannot be
            combined with ``split``.

    Attributes:
        attributes: tuple of the selected attribute names.
        transform: the PIL -> tensor pipeline (may be replaced, e.g. by one with augmentation).
        rows: ``range`` of the selected rows in the attribute file.

    Raises:
        FileNotFoundError: ``image_dir`` or ``attr_file`` does not exist.
        ValueError: malformed attribute file, unknown attribute, unknown split, bad row range, ``split`` together
            with ``start``/``stop``, or a split the file is too short for.
    """

    def __init__(
        self,
        image_dir: PathLike,
        attr_file: PathLike | CelebAAttributes,
        attributes: Sequence[str] | None = STARGAN_ATTRIBUTES,
        preset: str | None = "stargan",
        crop: SizeArg | None = None,
        size: SizeArg | None = None,
        split: str | None = None,
        start: int | None = None,
        stop: int | None = None,
    ) -> None:
        super().__init__()
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            what = "is not a directory" if self.image_dir.exists() else "not found"
            raise FileNotFoundError(f"CelebA image directory {self.image_dir} {what}. {_LAYOUT_HINT}")

        table = attr_file if isinstance(attr_file, CelebAAttributes) else read_attr_file(attr_file)
        self.attr_path = table.path
        self.transform = make_transform(preset, crop=crop, size=size)

        if attributes is None:
            attributes = tuple(table.names)
        elif isinstance(attributes, str):
            attributes = (attributes,)
        attributes = tuple(attributes)
        duplicates = sorted({a for a in attributes if attributes.count(a) > 1})
        if duplicates:
            raise ValueError(f"attributes repeated: {', '.join(duplicates)}")
        columns = table.column_indices(attributes)
        self.attributes: tuple[str, ...] = attributes

        first, last = self._row_range(len(table), split, start, stop, table.path)
        self.rows = range(first, last)
        self.split = split
        self._filenames = table.filenames[first:last]
        self._labels = table.values[first:last][:, columns].contiguous()

    @staticmethod
    def _row_range(
        total: int, split: str | None, start: int | None, stop: int | None, source: Path | None
    ) -> tuple[int, int]:
        where = source or "the attribute table"
        if split is not None:
            if start is not None or stop is not None:
                raise ValueError(
                    f"give either split={split!r} or start/stop (got start={start}, stop={stop}), not both"
                )
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; available: None (all rows), {', '.join(SPLITS)}")
            first, last = SPLITS[split]
            if total < last:
                raise ValueError(
                    f"split {split!r} needs rows {first}-{last - 1} but {where} has only {total} rows "
                    f"(the paper's convention assumes the 30k-image CelebA/CelebA-HQ ordering); "
                    f"use start/stop for a custom range"
                )
            return first, last
        for name, value in (("start", start), ("stop", stop)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int row index, got {value!r}")
        first = 0 if start is None else start
        last = total if stop is None else stop
        if last > total:
            raise ValueError(f"stop={last} is past the end: {where} has {total} rows")
        if first > last:
            raise ValueError(f"start={first} is after stop={last}")
        return first, last

    def __len__(self) -> int:
        return len(self._filenames)

    @property
    def filenames(self) -> list[str]:
        """Image file names of the selected rows, in order (a copy)."""
        return list(self._filenames)

    @property
    def labels(self) -> torch.Tensor:
        """Float tensor ``[N, A]`` of 0/1: the selected rows and attributes (no image is read; a copy)."""
        return self._labels.clone()

    def image_path(self, index: int) -> Path:
        """Path of the image of item ``index``."""
        return self.image_dir / self._filenames[self._check_index(index)]

    def _check_index(self, index: int) -> int:
        n = len(self._filenames)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a CelebA dataset of {n} images")
        return index % n if n else index

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image [3, H, W] float in [-1, 1], labels [A] float 0/1)`` for item ``index``."""
        index = self._check_index(index)
        path = self.image_dir / self._filenames[index]
        try:
            image = read_image(path, context=f"row {self.rows[index]} of {self.attr_path or 'the attribute table'}")
        except FileNotFoundError:
            nested = [
                folder
                for folder in ("img_align_celeba", "CelebA-HQ-img")
                if (self.image_dir / folder / self._filenames[index]).is_file()
            ]
            hint = (
                f"it is in {self.image_dir / nested[0]}: pass that folder as image_dir"
                if nested
                else _LAYOUT_HINT
            )
            raise FileNotFoundError(
                f"CelebA image {path} not found (row {self.rows[index]} of {self.attr_path or 'the attribute table'});"
                f" {hint}"
            ) from None
        return self.transform(image), self._labels[index].clone()

    def __repr__(self) -> str:
        selection = f"split={self.split!r}" if self.split else f"rows={self.rows.start}:{self.rows.stop}"
        return (
            f"{type(self).__name__}(image_dir={str(self.image_dir)!r}, {len(self)} images, {selection}, "
            f"attributes={list(self.attributes)})"
        )
