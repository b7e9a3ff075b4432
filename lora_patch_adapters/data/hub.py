"""Face datasets read with the Hugging Face ``datasets`` library: a Hub repo id, a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a local data folder (``imagefolder`` with a
``metadata.csv``, parquet files, ...).

The dataset needs one image column (a ``datasets.Image`` feature) and one column per attribute holding 0/1,
booleans, or CelebA-style -1/1 integers. :func:`hub_faces` returns a :class:`HubFaces`, the same kind of object as
:class:`~lora_patch_adapters.data.celeba.CelebA`: ``dataset[i]`` is ``(image [3, H, W] float in [-1, 1], labels [A]
float 0/1)`` over the chosen attributes in the given order, images decoded lazily with the same per-model
preprocessing presets (:func:`~lora_patch_adapters.data.celeba.make_transform`).

``datasets`` is an optional dependency (``pip install "lora-patch-adapters[datasets]"``), imported only when a
dataset is opened. No loading script is ever run (``trust_remote_code`` is never passed); ``HF_HUB_OFFLINE=1`` /
``HF_DATASETS_OFFLINE=1`` are respected: a repo id that is not in the local cache is one :class:`HubDataError`
saying so and how to fix it.

Example::

    from lora_patch_adapters.data import hub_faces

    data = hub_faces("my-org/celeba-faces", split="train", preset="stargan")
    image, labels = data[0]       # [3, 256, 256] in [-1, 1], labels over the 5 StarGAN attributes (0/1)
    data = hub_faces("/data/faces_saved", attributes={"Male": "is_male", "Young": "young"}, preset=None, size=64)
"""

from __future__ import annotations

import difflib
import io
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .._checks import one_line
from ..attributes import STARGAN_ATTRIBUTES
from .celeba import SizeArg, make_transform
from .images import MAX_IMAGE_PIXELS, ImageReadError, read_image, to_rgb

__all__ = [
    "HELD_OUT_SPLITS", "HF_PREFIX", "INSTALL_HINT", "DatasetsNotInstalledError", "HubDataError", "HubFaces",
    "hub_faces", "hub_splits", "is_hf_data", "parse_hf_data",
]

PathLike = Union[str, os.PathLike]

HF_PREFIX = "hf:"
"""``--data`` values starting with this name a ``datasets`` dataset: ``hf:ORG/NAME[@REVISION]`` or ``hf:PATH``."""
HELD_OUT_SPLITS = ("test", "validation", "valid")
"""Split names that hold held-out images, in order of preference."""
INSTALL_HINT = 'pip install "lora-patch-adapters[datasets]"'

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes (DatasetDict / Dataset)


class HubDataError(ValueError):
    """A ``datasets`` dataset cannot be used as face data: not found / not cached offline, a missing split or
    column, attribute values other than 0/1, booleans or -1/1, or an image that cannot be decoded. The message names
    the dataset, the split or column, and the fix (the available splits / columns)."""


class DatasetsNotInstalledError(ImportError):
    """The optional ``datasets`` library is not installed; the message gives the ``pip install`` line."""


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise DatasetsNotInstalledError(
            f"reading face data with the Hugging Face datasets library needs the optional dependency `datasets`, "
            f"which cannot be imported ({one_line(exc, 120)}): {INSTALL_HINT}") from None
    return datasets


# ---------------------------------------------------------------------------------------------------- --data hf:
def is_hf_data(text: object) -> bool:
    """Whether a ``--data`` value names a ``datasets`` dataset (starts with ``hf:``)."""
    return isinstance(text, str) and text.startswith(HF_PREFIX)


def _looks_local(text: str) -> bool:
    return (os.path.exists(os.path.expanduser(text)) or os.path.isabs(text) or text.startswith(("./", "../", "~"))
            or "\\" in text or text in (".", ".."))


def parse_hf_data(text: str) -> tuple[str, str | None]:
    """``"hf:ORG/NAME@REVISION"`` -> ``("ORG/NAME", "REVISION")``; ``"hf:ORG/NAME"`` -> ``("ORG/NAME", None)``;
    ``"hf:PATH"`` (an existing path, or one starting with ``/``, ``./``, ``../`` or ``~``) -> ``(PATH, None)``.

    Raises:
        HubDataError: nothing after ``hf:``, an empty revision, or neither a local path nor a Hub repo id.
    """
    body = text[len(HF_PREFIX):] if is_hf_data(text) else text
    usage = "hf:ORG/NAME (a Hub dataset repo, optionally @REVISION) or hf:PATH (a local dataset folder)"
    if not body.strip():
        raise HubDataError(f"--data {text!r}: name a dataset after 'hf:': {usage}")
    if _looks_local(body):
        return os.path.expanduser(body), None
    repo, at, revision = body.partition("@")
    if at and not revision:
        raise HubDataError(f"--data {text!r}: nothing after '@' (a branch, tag or commit of the dataset repo)")
    if not _REPO_ID.match(repo) or len(repo) > 96:
        raise HubDataError(f"--data {text!r}: {repo!r} is neither an existing folder nor a Hub repo id; use {usage}")
    return repo, revision or None


# ---------------------------------------------------------------------------------------------------- opening
@dataclass
class _Opened:
    label: str  # for messages: "dataset folder /x" or "Hub dataset 'org/name'"
    splits: list[str]  # known split names (empty: not known before loading)
    single: bool  # a saved Dataset: one split, no names of its own
    features: Any  # datasets.Features known before any data is prepared, or None
    load: Callable[[str], Any]  # split name -> datasets.Dataset


def _describe(source: object, revision: str | None) -> str:
    if not isinstance(source, (str, os.PathLike)):
        return f"the {type(source).__name__} passed in"
    path = os.path.expanduser(os.fspath(source))
    if os.path.exists(path) or _looks_local(path):
        return f"dataset folder {path}"
    return f"Hub dataset {path!r}" + (f" (revision {revision!r})" if revision else "")


def _explain(exc: BaseException, label: str, source: str, offline: bool, cache: str) -> HubDataError:
    """One clear message for whatever the datasets / huggingface_hub stack raised while opening a Hub dataset or
    preparing a local data folder."""
    name, text = type(exc).__name__, one_line(exc, 300)
    if os.path.isdir(source):
        return HubDataError(f"{label} cannot be loaded with the datasets library: {name}: {text} (expected a folder "
                            f"written by save_to_disk, or a data folder such as images with a metadata.csv, or "
                            f"parquet / csv files, optionally in one sub-folder per split)")
    cached_fix = (f"download it once with network access (python -c \"import datasets; datasets.load_dataset("
                  f"'{source}')\"), or save it with Dataset.save_to_disk on a connected machine and pass that folder "
                  f"as --data hf:PATH")
    if offline and (isinstance(exc, ConnectionError) or "Offline" in text or "LocalEntryNotFound" in text
                    or "offline" in text.lower()):
        return HubDataError(f"{label} is not in the local cache ({cache}) and offline mode is on (HF_HUB_OFFLINE / "
                            f"HF_DATASETS_OFFLINE): {cached_fix}; or unset the offline variables to download it")
    if name in ("DatasetNotFoundError", "RepositoryNotFoundError", "GatedRepoError") or "doesn't exist" in text:
        return HubDataError(f"{label} was not found on the Hub ({text}); check the repo id, or log in (hf auth "
                            f"login) for a private or gated dataset")
    if name == "RevisionNotFoundError":
        return HubDataError(f"{label}: no such revision ({text}); use a branch, tag or commit of the repo")
    if isinstance(exc, ConnectionError):
        return HubDataError(f"{label} cannot be downloaded: the Hub is unreachable ({text}); connect, or set "
                            f"HF_HUB_OFFLINE=1 to use the local cache ({cache})")
    return HubDataError(f"{label} cannot be loaded with the datasets library: {name}: {text}")


def _strip_prefix(source: Any, revision: str | None) -> tuple[Any, str | None]:
    """``"hf:ORG/NAME@REV"`` -> ``("ORG/NAME", "REV")``; anything else unchanged (a ``revision`` argument wins)."""
    if isinstance(source, str) and is_hf_data(source):
        source, parsed = parse_hf_data(source)
        revision = revision or parsed
    return source, revision


def _open(source: Any, revision: str | None, cache_dir: PathLike | None) -> _Opened:
    datasets = _datasets()
    source, revision = _strip_prefix(source, revision)
    label = _describe(source, revision)
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _open_object(source, label)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"hub_faces: expected a Hub repo id, a folder or a datasets.Dataset, got {type(source)}")
    path = os.path.expanduser(os.fspath(source))
    if os.path.isdir(path):
        if revision is not None:
            raise HubDataError(f"{label}: revision={revision!r} applies to Hub repos only, not to a local folder")
        if any(os.path.isfile(os.path.join(path, marker)) for marker in _SAVED_MARKERS):
            try:
                saved = datasets.load_from_disk(path)
            except Exception as exc:  # a damaged or foreign save: many exception types
                raise HubDataError(f"{label} looks like a save_to_disk folder but cannot be read: "
                                   f"{type(exc).__name__}: {one_line(exc, 300)}") from None
            return _open_object(saved, label)
    elif os.path.exists(path):
        raise HubDataError(f"{path} is a file; pass the folder that holds the dataset (a save_to_disk folder or a "
                           f"data folder), or a Hub repo id")
    elif _looks_local(path):
        raise HubDataError(f"{label} not found; pass an existing folder or a Hub repo id (ORG/NAME)")
    offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False)
                   or getattr(datasets.config, "HF_DATASETS_OFFLINE", False))
    cache = os.fspath(cache_dir) if cache_dir is not None else os.fspath(datasets.config.HF_DATASETS_CACHE)
    try:
        builder = datasets.load_dataset_builder(path, revision=revision, cache_dir=cache_dir)
    except Exception as exc:  # connection, offline, not found, gated, bad data files: many exception types
        raise _explain(exc, label, path, offline, cache) from None
    splits = [str(name) for name in (builder.info.splits or {})]
    splits = splits or [str(name) for name in (getattr(builder.config, "data_files", None) or {})]

    def load(split: str) -> Any:
        try:
            builder.download_and_prepare()
            return builder.as_dataset(split=split)
        except Exception as exc:
            raise _explain(exc, label, path, offline, cache) from None

    return _Opened(label, splits, False, builder.info.features, load)


def _open_object(dataset: Any, label: str) -> _Opened:
    """A ``datasets.Dataset`` (one split) or ``DatasetDict`` already in hand."""
    if hasattr(dataset, "keys"):  # DatasetDict
        return _Opened(label, [str(k) for k in dataset], False, None, lambda split: dataset[split])
    return _Opened(label, [str(dataset.split or "train")], True, dataset.features, lambda split: dataset)


def hub_splits(source: Any, *, revision: str | None = None, cache_dir: PathLike | None = None) -> list[str]:
    """The split names of a dataset (a Hub repo id, a folder, or a ``datasets`` object) without preparing its data;
    a saved single ``Dataset`` has one, its recorded split name or ``"train"``.

    Raises:
        HubDataError: the dataset cannot be opened (see :func:`hub_faces`).
        DatasetsNotInstalledError: ``datasets`` is not installed.
    """
    return list(_open(source, revision, cache_dir).splits)


def _choose_split(opened: _Opened, split: str | None) -> str:
    if opened.single:
        if split is None or split in opened.splits:
            return opened.splits[0]
        raise HubDataError(f"{opened.label} is a single Dataset ({opened.splits[0]!r}) without a split {split!r}; "
                           f"save a DatasetDict with that split, or ask for split={opened.splits[0]!r}")
    if split is None:
        if len(opened.splits) <= 1:
            return opened.splits[0] if opened.splits else "train"
        raise HubDataError(f"{opened.label} has the splits {', '.join(map(repr, opened.splits))}: choose one")
    if opened.splits and split not in opened.splits:
        raise HubDataError(f"{opened.label} has no split {split!r}; available splits: "
                           f"{', '.join(map(repr, opened.splits))}")
    return split


# ---------------------------------------------------------------------------------------------------- schema
def _column_names(features: Any) -> list[str]:
    return list(features) if features is not None else []


def _image_column(features: Any, wanted: str | None, where: str) -> str:
    from datasets import Image as ImageFeature

    columns = _column_names(features)
    image_columns = [name for name in columns if isinstance(features[name], ImageFeature)]
    if wanted is None:
        if "image" in image_columns or len(image_columns) == 1:
            return "image" if "image" in image_columns else image_columns[0]
        if not image_columns:
            raise HubDataError(f"{where} has no image column (a datasets.Image feature); its columns: "
                               f"{', '.join(columns)}; cast one with dataset.cast_column(NAME, datasets.Image())")
        raise HubDataError(f"{where} has several image columns ({', '.join(image_columns)}): pass image_column=")
    if wanted not in columns:
        hint = f"; its image columns: {', '.join(image_columns)}" if image_columns else ""
        raise HubDataError(f"{where} has no column {wanted!r} (image_column){hint}; its columns: {', '.join(columns)}")
    if not isinstance(features[wanted], ImageFeature):
        raise HubDataError(f"{where}: column {wanted!r} holds {features[wanted]}, not images; pass the image column "
                           f"as image_column= or cast it with dataset.cast_column({wanted!r}, datasets.Image())")
    return wanted


def _attribute_kind(feature: Any) -> str | None:
    """"bool", "int", "float" for columns that can hold attribute flags, else None."""
    from datasets import ClassLabel, Value

    if isinstance(feature, ClassLabel):
        return "int"
    if not isinstance(feature, Value):
        return None
    dtype = str(feature.dtype)
    if dtype == "bool":
        return "bool"
    if dtype.startswith(("int", "uint")):
        return "int"
    if dtype.startswith("float"):
        return "float"
    return None


def _resolve_attributes(attributes: Sequence[str] | Mapping[str, str] | None, features: Any, image_column: str,
                        where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(package attribute names, dataset column names), checked against the schema."""
    columns = _column_names(features)
    if attributes is None:
        names = tuple(c for c in columns if c != image_column and _attribute_kind(features[c]) is not None)
        pairs = tuple(zip(names, names))
    elif isinstance(attributes, Mapping):
        pairs = tuple((str(k), str(v)) for k, v in attributes.items())
    else:
        names = (attributes,) if isinstance(attributes, str) else tuple(attributes)
        pairs = tuple((str(n), str(n)) for n in names)
    if not pairs:
        raise HubDataError(f"{where}: no attribute columns chosen; its columns: {', '.join(columns)}")
    for position in (0, 1):
        values = [pair[position] for pair in pairs]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise HubDataError(f"{where}: {'attributes' if position == 0 else 'columns'} repeated: "
                               f"{', '.join(repeated)}")
    for name, column in pairs:
        if column not in columns:
            candidates = [c for c in columns if c != image_column and _attribute_kind(features[c]) is not None]
            close = difflib.get_close_matches(column, candidates, n=3, cutoff=0.6)
            close = close or [c for c in candidates if c.lower() == column.lower()]
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            mapping = (f"; map differently spelled columns with attributes={{{name!r}: 'column_name', ...}}"
                       if name == column else "")
            raise HubDataError(f"{where} has no attribute column {column!r}{hint}; its columns: "
                               f"{', '.join(columns)}{mapping}")
        if _attribute_kind(features[column]) is None:
            raise HubDataError(f"{where}: attribute column {column!r} holds {features[column]}; attribute columns "
                               f"must hold 0/1, booleans or CelebA-style -1/1 integers")
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _read_labels(table: Any, columns: Sequence[str], first: int, last: int, where: str) -> torch.Tensor:
    """Float ``[N, A]`` of 0/1 from the attribute columns of rows ``[first, last)`` (no image is read)."""
    arrow = table.select_columns(list(columns)).with_format("arrow")[first:last]
    raw: list[tuple[str, np.ndarray, bool]] = []
    for column in columns:
        values = arrow.column(column)
        if values.null_count:
            row = first + next(i for i, v in enumerate(values.is_null().to_pylist()) if v)
            raise HubDataError(f"{where}: attribute column {column!r} has a missing value at row {row}; every row "
                               f"needs 0/1, a boolean or -1/1")
        array = values.to_numpy(zero_copy_only=False)
        raw.append((column, array, array.dtype == np.bool_))
    numeric = [array for _, array, is_bool in raw if not is_bool and array.size]
    minus_one = any(bool((array == -1).any()) for array in numeric)
    allowed = (-1.0, 1.0) if minus_one else (0.0, 1.0)
    out = np.empty((last - first, len(columns)), dtype=np.float32)
    for j, (column, array, is_bool) in enumerate(raw):
        if is_bool:
            out[:, j] = array.astype(np.float32)
            continue
        as_float = array.astype(np.float64)
        bad = ~np.isin(as_float, allowed)
        if bad.any():
            i = int(np.argmax(bad))
            convention = "CelebA-style -1/1 (the dataset uses -1)" if minus_one else "0/1"
            raise HubDataError(f"{where}: attribute column {column!r} holds {array[i].item()!r} at row {first + i}; "
                               f"attribute values must be {convention}, or booleans (fix or drop the column, or "
                               f"map the attribute to another column)")
        out[:, j] = (as_float + 1.0) / 2.0 if minus_one else as_float
    return torch.from_numpy(out)


def _decode(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Bytes of an image file -> an 8-bit RGB PIL image, bounded before decoding (as :func:`read_image`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(io.BytesIO(data))
    except Exception as exc:  # unknown formats, bad headers, PIL's own bomb limit
        what = "is not an image PIL can read" if isinstance(exc, UnidentifiedImageError) else "cannot be read"
        raise ImageReadError(f"{label} {what}: {one_line(exc, 200)}") from None
    with handle:
        width, height = handle.size
        if width * height > max_pixels:
            raise ImageReadError(f"{label}: refused before decoding, it declares {width}x{height} = "
                                 f"{width * height} pixels, more than max_pixels={max_pixels} (a decompression bomb?)")
        try:
            handle.load()
            rgb = to_rgb(handle)
            return rgb.copy() if rgb is handle else rgb
        except ImageReadError as exc:
            raise ImageReadError(f"{label}: {exc}") from None
        except Exception as exc:
            raise ImageReadError(f"{label} cannot be decoded (truncated or corrupted?): {one_line(exc, 200)}") \
                from None


# ---------------------------------------------------------------------------------------------------- dataset
class HubFaces(Dataset):
    """Face images and attribute labels from a ``datasets`` split (build it with :func:`hub_faces`).

    ``dataset[i]`` returns ``(image, labels)``: ``image`` a float tensor ``[3, H, W]`` in [-1, 1] (RGB, through
    :attr:`transform`), ``labels`` a float tensor ``[A]`` of 0/1 over :attr:`attributes` in order. Images are
    decoded when accessed; an undecodable one is an :class:`~lora_patch_adapters.data.images.ImageReadError` naming
    the dataset, split and row.

    Attributes:
        attributes: the package's attribute names of the label columns, in order.
        columns: the dataset columns they are read from (the same names unless mapped).
        image_column: the image column.
        split: the split read; ``source``: what was opened (repo id, folder, or a description).
        rows: ``range`` of the selected rows of the split.
        transform: the PIL -> tensor pipeline (may be replaced).
    """

    def __init__(self, table: Any, *, source: str, split: str, label: str, attributes: Sequence[str],
                 columns: Sequence[str], image_column: str, rows: range, labels: torch.Tensor,
                 transform: Callable[[Image.Image], torch.Tensor], max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__()
        from datasets import Image as ImageFeature

        self._images = table.select_columns([image_column]).cast_column(image_column, ImageFeature(decode=False))
        self.source, self.split, self._label = source, split, label
        self.attributes: tuple[str, ...] = tuple(attributes)
        self.columns: tuple[str, ...] = tuple(columns)
        self.image_column = image_column
        self.rows = rows
        self.transform = transform
        self.max_pixels = max_pixels
        self._labels = labels

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> torch.Tensor:
        """Float tensor ``[N, A]`` of 0/1 over the selected rows (no image is decoded; a copy)."""
        return self._labels.clone()

    def _check_index(self, index: int) -> int:
        n = len(self.rows)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"index {index!r} out of range for a dataset of {n} images")
        return int(index) % n

    def image(self, index: int) -> Image.Image:
        """The decoded 8-bit RGB PIL image of item ``index`` (before :attr:`transform`)."""
        index = self._check_index(index)
        row = self.rows[index]
        where = f"image of row {row} of split {self.split!r} of {self._label} (column {self.image_column!r})"
        value = self._images[row][self.image_column]
        if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
            raise ImageReadError(f"{where} is empty; every row needs an image")
        if value.get("bytes"):
            return _decode(value["bytes"], where, self.max_pixels)
        try:
            return read_image(value["path"], max_pixels=self.max_pixels, context=where)
        except FileNotFoundError:
            raise ImageReadError(f"{where}: its file {value['path']} is missing") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [3, H, W] float in [-1, 1], labels [A] float 0/1)`` for item ``index``."""
        index = self._check_index(index)
        return self.transform(self.image(index)), self._labels[index].clone()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source!r}, split={self.split!r}, rows={self.rows.start}:"
                f"{self.rows.stop}, {len(self)} images, attributes={list(self.attributes)})")


def hub_faces(
    source: Any,
    split: str | None = "train",
    attributes: Sequence[str] | Mapping[str, str] | None = STARGAN_ATTRIBUTES,
    *,
    image_column: str | None = None,
    preset: str | None = "stargan",
    crop: SizeArg | None = None,
    size: SizeArg | None = None,
    start: int | None = None,
    stop: int | None = None,
    revision: str | None = None,
    cache_dir: PathLike | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> HubFaces:
    """Faces and attribute labels from a dataset of the Hugging Face ``datasets`` library.

    Args:
        source: a Hub dataset repo id (``"ORG/NAME"``, loaded with ``datasets.load_dataset_builder``), a folder
            written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``datasets.load_from_disk``), a
            local data folder (``imagefolder`` with ``metadata.csv``, parquet, ...), or a ``datasets.Dataset`` /
            ``DatasetDict``. A ``"hf:"`` prefix is accepted.
        split: the split to read (``None``: the only one). A saved single ``Dataset`` answers to its recorded split
            name, or ``"train"`` when it records none.
        attributes: the attribute columns, in label order (default: StarGAN's five CelebA names); a mapping
            ``{attribute name: column name}`` reads differently spelled columns; ``None``: every boolean / integer /
            float column. Values may be 0/1, booleans, or CelebA-style -1/1 (then -1 -> 0); once any chosen column
            holds -1, a 0 anywhere is refused as ambiguous.
        image_column: the image column (a ``datasets.Image`` feature); ``None``: ``"image"``, else the only one.
        preset, crop, size: preprocessing, as :class:`~lora_patch_adapters.data.celeba.CelebA`
            (:func:`~lora_patch_adapters.data.celeba.make_transform`).
        start, stop: a row range ``[start, stop)`` of the split (default: all rows).
        revision: a branch, tag or commit of a Hub repo.
        cache_dir: the ``datasets`` cache to use (default: ``HF_DATASETS_CACHE``).
        max_pixels: refuse images with more pixels than this (read lazily, as :func:`read_image`).

    Returns:
        A :class:`HubFaces` whose items are ``(image [3, H, W] in [-1, 1], labels [A] of 0/1)``.

    Raises:
        DatasetsNotInstalledError: ``datasets`` is not installed.
        HubDataError: not found, not cached while offline, no such split, a missing or non-attribute column, an
            attribute value other than 0/1 / boolean / -1/1 or a missing one, or a bad row range. The schema is
            checked before any label is read or image decoded.
        ValueError: a bad preset, crop or size.
    """
    transform = make_transform(preset, crop=crop, size=size)  # bad presets fail before any data is touched
    source, revision = _strip_prefix(os.fspath(source) if isinstance(source, os.PathLike) else source, revision)
    text = source if isinstance(source, str) else None
    opened = _open(source, revision, cache_dir)
    chosen = _choose_split(opened, split)
    where = f"split {chosen!r} of {opened.label}"
    if opened.features is not None:  # the schema, before anything is downloaded or prepared
        wanted_image = _image_column(opened.features, image_column, where)
        _resolve_attributes(attributes, opened.features, wanted_image, where)
    table = opened.load(chosen)
    image_col = _image_column(table.features, image_column, where)
    names, columns = _resolve_attributes(attributes, table.features, image_col, where)
    total = len(table)
    for name, value in (("start", start), ("stop", stop)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise HubDataError(f"{where}: {name} must be a non-negative int row index, got {value!r}")
    first, last = start or 0, total if stop is None else stop
    if last > total:
        raise HubDataError(f"{where} has only {total} rows; rows {first}-{last - 1} asked for (stop={last})")
    if first > last:
        raise HubDataError(f"{where}: start={first} is after stop={last}")
    labels = _read_labels(table, columns, first, last, where)
    return HubFaces(table, source=text if text is not None else opened.label, split=chosen, label=opened.label,
                    attributes=names, columns=columns, image_column=image_col, rows=range(first, last),
                    labels=labels, transform=transform, max_pixels=max_pixels)

