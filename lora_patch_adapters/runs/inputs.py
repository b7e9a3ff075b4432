"""What every run starts from: the editor (official weights, or random ones drawn from the seed), the images
(procedural testbed faces, or CelebA read with the generator's preprocessing), and a description of both.

Decisions:

* Official generators (``stargan``, ``attgan``, ``attgan_inject1``, ``hisd``) need a checkpoint: a patch trained or
  evaluated on random weights means nothing. ``allow_random_weights`` runs without one (smoke tests); the random
  weights are drawn from the seed, so the same seed gives the same generator in ``train`` and ``evaluate``.
* ``targets`` (AttGAN: "paper" or "all") and ``references`` (HiSD: reference images, the paper's hair-colour
  protocol) choose the edits; each is refused for a generator it does not apply to, and the reference files are read
  (and any bad one named) before the generator is built.
* Without CelebA files the testbed editor uses the procedural testbed faces; the official generators need CelebA,
  read with the generator's preprocessing preset (HiSD and the testbed, whose presets do not crop, get a square
  resize).
* ``data="hf:ORG/NAME[@REVISION]"`` or ``"hf:PATH"`` reads a dataset of the Hugging Face ``datasets`` library
  instead (:func:`~lora_patch_adapters.data.hub_faces`: an image column plus one column per attribute; no
  ``attr_file``), with the same preprocessing. The run's CelebA splits map onto the dataset's own splits:
  ``paper-train`` reads its ``train`` split, ``paper-test`` its ``test`` split (else ``validation`` / ``valid``),
  ``None`` (all rows) its ``train`` split. ``data_split`` (``--data-split``) instead reads that one split as a table
  in CelebA file order, with the paper's row convention (``paper-train``: rows 0-999, ``paper-test``: rows
  29000-29999), as for ``list_attr_celeba.txt`` -- for Hub copies of CelebA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..data import (
    HELD_OUT_SPLITS,
    PRESETS,
    SPLITS,
    CelebA,
    DatasetsNotInstalledError,
    HubDataError,
    ImageReadError,
    hub_faces,
    hub_splits,
    is_hf_data,
    make_transform,
    parse_hf_data,
    read_image,
    testbed_faces,
)
from ..generators import EDITOR_NAMES, Editor, load_editor
from ..generators.hisd import HISD_REFERENCE_SIZE
from .errors import RunInputError

OFFICIAL_GENERATORS = tuple(name for name in EDITOR_NAMES if name != "testbed")
CELEBA_PRESETS = {"stargan": "stargan", "attgan": "attgan", "attgan_inject1": "attgan", "hisd": "hisd",
                  "testbed": "testbed"}
"""The CelebA preprocessing preset of each editor."""
EDIT_FLAGS = {"targets": ("--targets", ("attgan", "attgan_inject1")), "references": ("--references", ("hisd",))}
"""Settings that choose the edits: field -> (flag, the generators it applies to)."""


@dataclass
class Inputs:
    """Where a run's editor and images come from (the fields every run command shares)."""

    generator: str = "testbed"
    checkpoint: str | None = None
    allow_random_weights: bool = False
    data: str | None = None  # a CelebA image folder (with attr_file), or "hf:ORG/NAME[@REVISION]" / "hf:PATH"
    attr_file: str | None = None
    data_split: str | None = None  # hf: data only: read this one split with the paper's row convention
    seed: int = 42
    device: str = "cpu"
    targets: str | None = None  # AttGAN: "paper" (the paper's 5 edits) or "all" (13); None: the editor's, "all"
    references: list[str] | None = None  # HiSD: reference images -> reference-guided hair-colour edits

    def check(self) -> None:
        """Refuse combinations that cannot give a meaningful run (before anything is loaded)."""
        generator = self.generator
        if generator in OFFICIAL_GENERATORS and self.checkpoint is None and not self.allow_random_weights:
            raise RunInputError(f"--generator {generator} needs --checkpoint PATH (the official weights); pass "
                                "--allow-random-weights to run on random weights (a smoke test: results are "
                                "meaningless)", usage=True)
        if is_hf_data(self.data):
            if self.attr_file is not None:
                raise RunInputError(f"--attr-file does not apply to --data {self.data}: the labels are columns of "
                                    "the dataset; drop --attr-file", usage=True)
            try:
                parse_hf_data(self.data)
            except HubDataError as exc:
                raise RunInputError(str(exc), usage=True) from None
            if self.data_split is not None and not self.data_split.strip():
                raise RunInputError("--data-split needs a split name (e.g. train)", usage=True)
        else:
            if self.data_split is not None:
                raise RunInputError("--data-split applies to --data hf:... (a datasets dataset) only; CelebA rows "
                                    "are chosen with --split", usage=True)
            if (self.data is None) != (self.attr_file is None):
                raise RunInputError("--data and --attr-file go together (the CelebA image folder and "
                                    "list_attr_celeba.txt)", usage=True)
        if self.data is None and generator != "testbed":
            raise RunInputError(f"--generator {generator} needs CelebA: pass --data DIR --attr-file FILE, or a "
                                "datasets dataset with --data hf:ORG/NAME (the procedural testbed faces only fit the "
                                "testbed editor)", usage=True)
        self._check_edit_flags()

    def _check_edit_flags(self) -> None:
        for name, (flag, applies) in EDIT_FLAGS.items():
            if getattr(self, name) is not None and self.generator not in applies:
                raise RunInputError(f"{flag} applies to --generator {' / '.join(applies)} only, not to --generator "
                                    f"{self.generator}", usage=True)

    def editor(self) -> Editor:
        """The editor, with random weights (if any) drawn from the seed so every load gives the same network."""
        self._check_edit_flags()
        references = read_references(self.references) if self.references is not None else None
        torch.manual_seed(self.seed)
        editor = load_editor(self.generator, checkpoint=self.checkpoint, device=self.device)
        if self.targets is not None:
            editor.targets = self.targets
        if references is not None:
            editor.references = references
        return editor

    def celeba(self, editor: Editor, split: str | None, limit: int | None = None) -> Dataset:
        """The CelebA rows of ``split`` (all rows for None), read with the generator's preprocessing; the first
        ``limit`` of them when given. For ``hf:`` data: the rows of the dataset split ``split`` maps to (see the
        module's docstring)."""
        preset = CELEBA_PRESETS[self.generator]
        # presets without a crop (hisd, testbed) would turn the 178x218 aligned CelebA into non-square tensors:
        # resize to the square the generator was trained at (CelebA-HQ images are square already)
        size = (PRESETS[preset].size,) * 2 if PRESETS[preset].crop is None else None
        if is_hf_data(self.data):
            dataset: Dataset = self._hub(editor, split, preset, size)
        else:
            dataset = CelebA(self.data, self.attr_file, attributes=editor.attribute_names, preset=preset,
                             split=split, size=size)
        if limit is not None and limit < len(dataset):
            dataset = Subset(dataset, range(limit))
        return dataset

    def images_for(self, editor: Editor, testbed_split: str, celeba_split: str, n: int | None,
                   testbed_n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels): ``n`` (default ``testbed_n``) testbed faces of ``testbed_split``, or the first ``n``
        (default: all) CelebA images of ``celeba_split``."""
        if self.data is None:
            return testbed_faces(n or testbed_n, seed=self.seed, split=testbed_split)
        return stack(self.celeba(editor, celeba_split, n))

    def describe(self, n: int, testbed_split: str, celeba_split: str) -> str:
        if self.data is None:
            return f"{n} procedural testbed faces ({testbed_split} split, seed {self.seed})"
        if is_hf_data(self.data):
            hub_split, first, last = self.hub_rows(celeba_split)
            rows = f", rows from {first}" if first else ""
            return f"{n} images ({celeba_split}: split {hub_split!r}{rows}) of the dataset {self.data}"
        return f"{n} CelebA images ({celeba_split}) from {self.data}"

    def hub_rows(self, split: str | None) -> tuple[str, int | None, int | None]:
        """``hf:`` data: (dataset split, first row, stop row) that the run split ``split`` reads (rows None: all)."""
        source, revision = parse_hf_data(self.data or "")
        if self.data_split is not None:
            first, last = SPLITS[split] if split is not None else (None, None)
            return self.data_split, first, last
        wanted = "train" if split in (None, "paper-train") else "test"
        try:
            names = hub_splits(source, revision=revision)
        except DatasetsNotInstalledError as exc:
            raise RunInputError(str(exc)) from None
        except HubDataError as exc:
            raise RunInputError(f"--data {self.data}: {exc}") from None
        candidates = ("train",) if wanted == "train" else HELD_OUT_SPLITS
        found = next((name for name in candidates if name in names), None)
        if found is None:
            raise RunInputError(
                f"--data {self.data}: the {split or 'paper-train'} images come from the dataset's "
                f"{' / '.join(repr(c) for c in candidates)} split, but its splits are {', '.join(map(repr, names))}; "
                f"save the dataset with a {candidates[0]!r} split, or pass --data-split NAME to read one split with "
                f"the paper's row convention (paper-train: rows 0-999, paper-test: rows 29000-29999)")
        return found, None, None

    def _hub(self, editor: Editor, split: str | None, preset: str, size: tuple[int, int] | None) -> Dataset:
        hub_split, first, last = self.hub_rows(split)
        source, revision = parse_hf_data(self.data or "")
        try:
            return hub_faces(source, hub_split, attributes=editor.attribute_names, preset=preset, size=size,
                             start=first, stop=last, revision=revision)
        except DatasetsNotInstalledError as exc:
            raise RunInputError(str(exc)) from None
        except HubDataError as exc:
            hint = ""
            if self.data_split is not None and split is not None:
                first_row, stop_row = SPLITS[split]
                hint = (f" (--data-split reads one split with the paper's row convention: {split} is rows "
                        f"{first_row}-{stop_row - 1}; drop --data-split to use the dataset's own train/test splits)")
            raise RunInputError(f"--data {self.data}: {exc}{hint}") from None


def read_references(paths: Sequence[str | os.PathLike], size: int = HISD_REFERENCE_SIZE) -> list[torch.Tensor]:
    """HiSD reference images as the official scripts read them: RGB, shorter side resized to ``size`` (aspect kept),
    ``Normalize(0.5, 0.5)`` -> one float tensor [1, 3, H, W] in [-1, 1] per file. A missing or unreadable file is a
    :class:`RunInputError` naming it."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise RunInputError("--references needs at least one image file", usage=True)
    transform = make_transform(size=size)
    out = []
    for path in paths:
        try:
            image = read_image(path)
        except FileNotFoundError:
            raise RunInputError(f"--references: reference image {os.fspath(path)!r} not found") from None
        except ImageReadError as exc:
            raise RunInputError(f"--references: {exc}") from None
        out.append(transform(image).unsqueeze(0))
    return out


def stack(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A map-style dataset of (image, labels) pairs as two stacked tensors."""
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise RunInputError("no images to evaluate on (the selection is empty)")
    return torch.stack([x for x, _ in items]), torch.stack([labels for _, labels in items])


def other_split(split: str) -> str:
    """The held-out paper split for ``split``."""
    return "paper-test" if split == "paper-train" else "paper-train"
