"""What the interactive app computes, without any user interface: one face, one target edit, one defense ->
the clean edit and the edit of the protected face on the base generator, on the bypass-patched generator and on the
defensive-patched generator, each with its numbers against the clean edit.

Decisions:

* The perturbation is computed on the **base** generator (the evaluation protocol's default scenario): the defender
  protects the photo against the generator they know; the columns show what each generator then makes of it.
* The numbers are those of :mod:`lora_patch_adapters.evaluation.metrics`: MSE and PSNR of each edit against the clean
  edit of the base generator, and defense success = MSE > 0.05 (:func:`~.metrics.success`). A defensive (watermark)
  patch also gets "warning visible" (:func:`~lora_patch_adapters.evaluation.watermark_visibility`).
* Universal defenses (CMUA) are fitted once per setting on a few testbed *training* faces (never the face shown),
  against the base generator, and cached.
* Columns without a patch are left empty (``None`` image) with a note saying which flag fills them; nothing is trained
  here (training a patch takes minutes, the app starts in seconds).
* An uploaded image is centre-cropped to a square and resized to the generator's input size; it has no known source
  attributes, so its labels are all 0 (the hair targets set that colour, the other targets add the attribute).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .._checks import one_line
from ..data import PRESETS, make_transform, read_image, testbed_faces
from ..defenses.base import PGD_EPS
from ..defenses.plugins import BUILTIN_DEFENSES, load_defense
from ..evaluation import metrics
from ..evaluation.watermark import watermark_visibility
from ..generators import EDITOR_NAMES, Editor, load_editor
from ..patches import load_patch
from ..runs.errors import RunInputError
from ..runs.evaluate import patch_provenance
from ..runs.inputs import CELEBA_PRESETS, OFFICIAL_GENERATORS
from ..training import Watermark

COLUMNS = ("clean", "base", "bypass", "defensive")
"""The four result columns, left to right."""
COLUMN_TITLES = {  # short: Gradio cuts long image labels
    "clean": "clean edit",
    "base": "protected: base",
    "bypass": "protected: bypass patch",
    "defensive": "protected: defensive patch",
}
MISSING = {
    "bypass": "No bypass patch loaded: start the app with --patch DIR (a patch from lora-patch train or "
              "lora-patch demo, e.g. runs/demo/bypass_patch).",
    "defensive": "No defensive patch loaded: start the app with --defensive DIR (a patch from lora-patch "
                 "train-defensive or lora-patch demo, e.g. runs/demo/watermark_patch).",
}
FIT_IMAGES = 16
"""Testbed training faces a universal defense is fitted on."""


@dataclass
class AppResult:
    """One run of the app. ``images``: uint8 [H, W, 3] arrays for ``input``, ``protected`` and each of
    :data:`COLUMNS` (None for a column without a patch); ``numbers``: per column, ``mse`` and ``psnr_db`` against
    the clean edit and ``success`` (MSE > 0.05), plus ``warning_visible`` for a watermark patch, and for
    ``protected`` the PSNR of the protected face to the input (``psnr_db``) and the L-inf size (``linf``);
    ``notes``: the text shown under each column."""

    images: dict[str, np.ndarray | None]
    numbers: dict[str, dict[str, Any]]
    notes: dict[str, str]
    description: str = ""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] or [3, H, W] in [-1, 1] -> uint8 [H, W, 3] (clamped, rounded)."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def prepare_image(image: Any, size: int) -> torch.Tensor:
    """An uploaded image -- a file path, a PIL image, or a uint8 array [H, W], [H, W, 3] or [H, W, 4] -- as
    [1, 3, size, size] in [-1, 1] (centre crop to a square, resize). Files are read with
    :func:`~lora_patch_adapters.data.read_image` (size-checked before decoding)."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image, context="uploaded to the app")
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"an uploaded image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], got "
                             f"{image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected an image file path, a PIL image or a uint8 array, got {type(image).__name__}")
    if min(image.size) < 1:
        raise ValueError(f"the uploaded image is empty ({image.size[0]}x{image.size[1]})")
    # the package's image pipeline (to_rgb -> centre crop -> resize -> [-1, 1]), the crop being the shorter side
    return make_transform(crop=min(image.size), size=size)(image).unsqueeze(0)


def _check_patch_dir(path: str, flag: str, generator: str) -> dict[str, Any]:
    """The patch's ``training`` record; refuses a missing folder, a non-patch, or a patch of another generator."""
    try:
        meta = patch_provenance(os.fspath(path))
    except RunInputError as exc:
        raise RunInputError(f"{flag}: {exc}", usage=True) from None
    trained_on = meta.get("generator")
    if trained_on in EDITOR_NAMES and trained_on != generator:
        raise RunInputError(f"{flag} {path!r} was trained on {trained_on!r} (lora_patch.json), not {generator!r}; "
                            f"pass --generator {trained_on}", usage=True)
    return meta


class AppSession:
    """The editors (base, bypass-patched, defensive-patched) and the testbed faces the app works on.

    Everything is loaded and validated here, before any server starts: a missing or foreign patch directory is a
    :class:`~lora_patch_adapters.runs.errors.RunInputError` naming the flag (``--patch`` / ``--defensive``).
    ``missing``: the text of an empty column (``"bypass"`` / ``"defensive"``), default :data:`MISSING` (the flags);
    ``n_faces`` testbed test faces are offered; universal defenses are fitted on ``fit_images`` training faces.
    """

    def __init__(self, generator: str = "testbed", checkpoint: str | None = None, patch: str | None = None,
                 defensive: str | None = None, device: str = "cpu", seed: int = 0, n_faces: int = 8,
                 fit_images: int = FIT_IMAGES, allow_random_weights: bool = False,
                 missing: dict[str, str] | None = None) -> None:
        if generator not in EDITOR_NAMES:
            raise RunInputError(f"unknown generator {generator!r}; choose one of {', '.join(EDITOR_NAMES)}",
                                usage=True)
        if generator in OFFICIAL_GENERATORS and checkpoint is None and not allow_random_weights:
            raise RunInputError(f"--generator {generator} needs --checkpoint PATH (the official weights)", usage=True)
        if checkpoint is not None and not os.path.isfile(checkpoint):
            raise RunInputError(f"--checkpoint {checkpoint!r}: no such file", usage=True)
        if not 1 <= int(n_faces) <= 64 or not 1 <= int(fit_images) <= 256:
            raise ValueError(f"n_faces must be in [1, 64] and fit_images in [1, 256], got {n_faces}, {fit_images}")
        metas = {flag: _check_patch_dir(path, flag, generator)
                 for flag, path in (("--patch", patch), ("--defensive", defensive)) if path is not None}
        for flag, kind in (("--patch", "watermark"), ("--defensive", "bypass")):
            if metas.get(flag, {}).get("kind") == kind:
                warnings.warn(f"{flag} holds a {kind} patch (lora_patch.json); is it in the right column?",
                              stacklevel=2)
        self.generator, self.checkpoint, self.device, self.seed = generator, checkpoint, torch.device(device), seed
        self.patch_dirs = {"bypass": patch, "defensive": defensive}
        self.fit_images = int(fit_images)
        self.missing = {**MISSING, **(missing or {})}
        self.size = PRESETS[CELEBA_PRESETS[generator]].size
        self.base = self._editor()
        self.editors: dict[str, Editor | None] = {"bypass": None, "defensive": None}
        for key, flag, path in (("bypass", "--patch", patch), ("defensive", "--defensive", defensive)):
            if path is not None:
                editor = self._editor()
                try:  # validated (names, shapes, values, base fingerprint) before it touches the generator
                    load_patch(editor, path)
                except (ValueError, RuntimeError, KeyError, OSError) as exc:
                    raise RunInputError(f"{flag}: cannot load the patch {path!r} onto {generator}: "
                                        f"{one_line(exc, 500)}") from exc
                self.editors[key] = editor
        meta = metas.get("--defensive", {})
        self.watermark: Watermark | None = None
        if meta.get("kind") == "watermark":
            recorded = meta.get("watermark")
            self.watermark = Watermark.from_dict(recorded) if isinstance(recorded, dict) else Watermark()
        faces, labels = testbed_faces(int(n_faces), seed=seed, split="test")
        self.faces = self._resize(faces)
        self.face_labels = self._labels(labels)
        self._fitted: dict[tuple, Any] = {}
        probe = self.base.conditions(torch.zeros(1, len(self.base.attribute_names), device=self.device))
        names = list(self.base.attribute_names)
        self.targets = names if len(probe) == len(names) else [f"edit {i + 1}" for i in range(len(probe))]

    # ------------------------------------------------------------------------------------------------- loading
    def _editor(self) -> Editor:
        torch.manual_seed(self.seed)  # random official weights (allow_random_weights) are the same in every copy
        try:
            return load_editor(self.generator, checkpoint=self.checkpoint, device=self.device)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise RunInputError(f"cannot load the {self.generator} generator: {one_line(exc, 500)}") from exc

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True,
                                   align_corners=False).clamp(-1, 1)
        return images.to(self.device)

    def _labels(self, testbed_labels: torch.Tensor) -> torch.Tensor:
        """Testbed labels over the editor's attributes (by name; attributes the testbed does not draw are 0)."""
        from ..data import TESTBED_ATTRIBUTES

        out = torch.zeros(testbed_labels.shape[0], len(self.base.attribute_names))
        for j, name in enumerate(self.base.attribute_names):
            if name in TESTBED_ATTRIBUTES:
                out[:, j] = testbed_labels[:, TESTBED_ATTRIBUTES.index(name)]
        return out.to(self.device)

    # ------------------------------------------------------------------------------------------------ describing
    @property
    def defenses(self) -> tuple[str, ...]:
        """The built-in defenses the app offers."""
        return tuple(BUILTIN_DEFENSES)

    def face_images(self) -> list[np.ndarray]:
        """The testbed faces as uint8 [H, W, 3] arrays (at the generator's size)."""
        return [to_uint8(face) for face in self.faces]

    def describe(self) -> str:
        """One paragraph (Markdown): the generator and which patches are loaded."""
        parts = [f"Generator: **{self.generator}** ({self.size}x{self.size}"
                 + (f", {os.path.basename(self.checkpoint)}" if self.checkpoint else "") + ")."]
        for key in ("bypass", "defensive"):
            path = self.patch_dirs[key]
            parts.append(f"{key.capitalize()} patch: `{path}`." if path else f"{key.capitalize()} patch: none.")
        return " ".join(parts)

    # ------------------------------------------------------------------------------------------------ computing
    def _target_index(self, target: int | str) -> int:
        if isinstance(target, str):
            if target not in self.targets:
                raise ValueError(f"unknown target {target!r}; choose one of {', '.join(self.targets)}")
            return self.targets.index(target)
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(self.targets):
            raise ValueError(f"target must be one of {self.targets} or an index in [0, {len(self.targets) - 1}]")
        return target

    def defense(self, name: str, eps: float = PGD_EPS, steps: int | None = None) -> Any:
        """The defense ``name`` (built in) with budget ``eps`` and ``steps`` iterations (None: its default), seeded;
        a universal one is fitted on :attr:`fit_images` testbed training faces against the base generator (cached)."""
        if name not in self.defenses:
            raise ValueError(f"unknown defense {name!r}; choose one of {', '.join(self.defenses)}")
        key = (name, float(eps), steps)
        if key in self._fitted:
            return self._fitted[key]
        defense = load_defense(name, eps=float(eps), seed=self.seed, steps=steps)
        if callable(getattr(defense, "fit", None)):
            faces, labels = testbed_faces(self.fit_images, seed=self.seed, split="train")
            defense.fit((self._resize(faces), self._labels(labels)), [self.base])
            self._fitted[key] = defense
        return defense

    def run(self, target: int | str, defense: str = "pgd", face: int | None = 0, upload: Any = None,
            eps: float = PGD_EPS, steps: int | None = None) -> AppResult:
        """Protect one face with ``defense`` against the base generator and edit it with every generator.

        ``upload`` (a path, PIL image or uint8 array) wins over ``face`` (an index into :attr:`faces`).
        ``target``: a name of :attr:`targets` or its index. ``eps``: L-inf budget on the [-1, 1] scale;
        ``steps``: iterations of iterative defenses (None: the defense's default)."""
        index = self._target_index(target)
        if upload is not None:
            x = prepare_image(upload, self.size).to(self.device)
            labels = torch.zeros(1, len(self.base.attribute_names), device=self.device)
            source = f"uploaded image (centre-cropped, resized to {self.size}x{self.size})"
        else:
            if face is None or isinstance(face, bool) or not isinstance(face, int) or not 0 <= face < len(self.faces):
                raise ValueError(f"face must be an index in [0, {len(self.faces) - 1}] (or upload an image)")
            x, labels = self.faces[face: face + 1], self.face_labels[face: face + 1]
            source = f"testbed face {face + 1}"
        condition = self.base.conditions(labels)[index]
        chosen = self.defense(defense, eps, steps)
        x_protected = chosen.protect(x, self.base, condition).detach()
        tensors = {"input": x, "protected": x_protected}
        with torch.no_grad():
            tensors["clean"] = self.base.edit(x, condition).clamp(-1, 1)
            tensors["base"] = self.base.edit(x_protected, condition).clamp(-1, 1)
            for key, editor in self.editors.items():
                if editor is not None:
                    tensors[key] = editor.edit(x_protected, condition).clamp(-1, 1)
        reference = tensors["clean"]
        numbers: dict[str, dict[str, Any]] = {
            "protected": {"psnr_db": float(metrics.psnr(x_protected, x)[0]),
                          "linf": float((x_protected - x).abs().max())},
        }
        notes = {"protected": f"PSNR to the input {numbers['protected']['psnr_db']:.2f} dB, "
                              f"L-inf {numbers['protected']['linf']:.4f}"}
        for key in COLUMNS:
            if key not in tensors:
                notes[key] = self.missing[key]
                continue
            mse = float(metrics.mse(tensors[key], reference)[0])
            numbers[key] = {"mse": mse, "psnr_db": float(metrics.psnr(tensors[key], reference)[0]),
                            "success": bool(metrics.success(torch.tensor([mse]))[0])}
            if key == "defensive" and self.watermark is not None:
                visible = watermark_visibility(tensors[key], reference, self.watermark, index)["visible"]
                numbers[key]["warning_visible"] = bool(visible[0])
            notes[key] = format_numbers(numbers[key], clean=key == "clean")
        images = {key: (to_uint8(tensors[key]) if key in tensors else None) for key in ("input", "protected",
                                                                                     *COLUMNS)}
        steps_text = f", {steps} steps" if steps is not None else ""
        description = (f"{source}; target {self.targets[index]}; defense {defense} (eps {eps:g}{steps_text}, "
                       "computed on the base generator)")
        return AppResult(images=images, numbers=numbers, notes=notes, description=description, tensors=tensors)


def format_numbers(numbers: dict[str, Any], clean: bool = False) -> str:
    """The text under a column: MSE and PSNR against the clean edit, defense success (and warning visibility)."""
    if clean:
        return "the reference: MSE and PSNR of the other columns are measured against this edit"
    verdict = "yes" if numbers["success"] else "no"
    text = (f"MSE {numbers['mse']:.4f} · PSNR {numbers['psnr_db']:.2f} dB · defense success "
            f"(MSE > {metrics.DISRUPTION_THRESHOLD:g}): {verdict}")
    if "warning_visible" in numbers:
        text += f" · warning visible: {'yes' if numbers['warning_visible'] else 'no'}"
    return text
