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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..data import PRESETS, CelebA, ImageReadError, make_transform, read_image, testbed_faces
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
    data: str | None = None
    attr_file: str | None = None
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
        if (self.data is None) != (self.attr_file is None):
            raise RunInputError("--data and --attr-file go together (the CelebA image folder and "
                                "list_attr_celeba.txt)", usage=True)
        if self.data is None and generator != "testbed":
            raise RunInputError(f"--generator {generator} needs CelebA: pass --data DIR --attr-file FILE (the "
                                "procedural testbed faces only fit the testbed editor)", usage=True)
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
        ``limit`` of them when given."""
        preset = CELEBA_PRESETS[self.generator]
        # presets without a crop (hisd, testbed) would turn the 178x218 aligned CelebA into non-square tensors:
        # resize to the square the generator was trained at (CelebA-HQ images are square already)
        size = (PRESETS[preset].size,) * 2 if PRESETS[preset].crop is None else None
        dataset = CelebA(self.data, self.attr_file, attributes=editor.attribute_names, preset=preset, split=split,
                         size=size)
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
        return f"{n} CelebA images ({celeba_split}) from {self.data}"


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
