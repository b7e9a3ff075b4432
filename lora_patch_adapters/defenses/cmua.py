"""CMUA-Watermark (Huang et al., AAAI 2022): one universal perturbation for all images and several editors; see
:class:`CMUA`."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Union

import torch

from ..generators.base import Editor
from .base import (
    PGD_EPS,
    PGD_STEP_SIZE,
    PGD_STEPS,
    UniversalDefense,
    clean_edits,
    disruption_loss,
    edit_mse,
    project,
    seeded_uniform,
)
from .checks import check_eot, check_eps, check_image_range, check_positive_int, check_step_size

__all__ = ["CMUA", "CMUA_IMAGES", "CMUA_MOMENTUM", "CMUA_UPDATES"]

Batches = Union[tuple[torch.Tensor, torch.Tensor], Iterable[tuple[torch.Tensor, torch.Tensor]]]

CMUA_IMAGES = 128
"""Images the published watermark is fitted on (two batches of 64)."""
CMUA_MOMENTUM = 0.5
"""The published weight of the current watermark in each update."""
CMUA_UPDATES = ("published", "simple")
"""The update rules :class:`CMUA` knows (see its docstring)."""


class CMUA(UniversalDefense):
    """CMUA-Watermark: one universal perturbation, fitted across several editors, then added to every image.

    Paper: Huang et al., "CMUA-Watermark: A Cross-Model Universal Adversarial Watermark for Combating Deepfakes",
    AAAI 2022; the update below follows the authors' code (github.com/VDIGPKU/CMUA-Watermark, ``attacks.py``
    ``universal_perturb_*``, ``universal_attack.py`` and ``setting.json``).

    Objective: one ``delta`` [1, 3, H, W] with ``||delta||_inf <= eps`` that maximises MSE(G(x + delta, c), G(x, c))
    over all images, editors ``G`` and their target conditions ``c``.

    ``update="published"`` (default). :meth:`fit` walks over batches ``x`` [B, 3, H, W]; for each batch, each editor
    (in the order given) and each of its target conditions ``c`` (``editor.conditions(labels)``, one at a time) it
    restarts from ``X = x + U(-eps, eps)`` (fresh noise, not clamped) and runs ``steps`` iterations of::

        g    = grad_X MSE(G(X, c), G(x, c))
        eta  = mean over the batch of clip(f_G * (X + step_size * sign(g) - x), -eps, eps)     # [1, 3, H, W]
        up   = eta                              for the very first iteration of the fit,
               momentum * up + (1 - momentum) * eta   afterwards
        X    = clip(x + up, -1, 1)

    ``up`` is the universal perturbation (:attr:`perturbation`), shared by all batches, editors and conditions;
    ``f_G`` is the editor's factor (``factors[editor.name]``, default 1; the authors tune one per model with TPE).
    The restart noise comes from one CPU ``torch.Generator`` seeded with ``seed`` at the start of :meth:`fit`: one
    ``torch.rand(x.shape)`` per (batch, editor, condition), in that order, mapped to ``(2u - 1) * eps``.
    With momentum 0.5 per iteration the result favours the editors fitted last (the authors fit AttGAN last and
    balance the models with ``f_G``); each restart's first ``eta`` also carries the batch mean of its noise, which
    is small only for large batches (64 published).

    ``update="simple"`` (this package's earlier rule, kept to reproduce older audits): per batch and editor,
    ``steps`` signed-gradient PGD steps on the MSE averaged over the editor's conditions, starting from the current
    ``delta`` (first: seeded U(-eps, eps)), then ``delta <- clip(m * delta + (1 - m) * batch_mean, -eps, eps)``.

    :meth:`protect` is then ``clip(x + delta, -1, 1)``, the same ``delta`` for every image, editor and condition.

    EOT: with ``eot=[t_1, ..., t_T]`` every MSE above (both update rules) becomes its mean over the listed
    differentiable transformations of ``X`` (``mean_t MSE(G(t(X), c), G(x, c))``, see
    :func:`~.base.edit_mse` and :mod:`.transforms`); the list is exactly what is averaged (``"identity"`` is not
    implied). Default None: the published objective.

    Args:
        eps: L-inf budget on the [-1, 1] scale, in (0, 1]. Default 0.05 (published).
        steps: iterations per (batch, editor, condition), >= 1. Default 10 (published).
        step_size: size of each signed step, > 0. Default 0.01 (published).
        momentum: weight of the current perturbation in each update, in [0, 1). Default 0.5 (published).
        batch_size: batch size when :meth:`fit` is given an ``(images, labels)`` pair. Default 64 (published).
        seed: seeds the restarts and the shuffling of an ``(images, labels)`` pair. Default 0.
        n_images: fit on at most this many images (None: all). Default 128 (published).
        update: ``"published"`` or ``"simple"``, see above.
        factors: editor name -> factor ``f_G`` > 0 (published update only; unnamed editors use 1).
        editors: editors :meth:`fit` always includes, before those it is given (the same object is used once), e.g.
            the generators a CLI run names; they are shared, not copied, by ``copy.deepcopy``.
        eot: None (default) or a list of transformation names (``"identity"``, ``"jpeg<Q>"``, ``"blur<S>"``), see
            above; stored as a tuple of canonical names.

    Shapes: :meth:`fit` takes images [N, 3, H, W] in [-1, 1] with labels [N, A]; ``protect(x)``: ``x``
    [M, 3, H, W] in [-1, 1] of the same H, W -> [M, 3, H, W] in [-1, 1], within ``eps`` of ``x``;
    :attr:`perturbation` [1, 3, H, W]. ``protect`` raises a ``RuntimeError`` before :meth:`fit`.

    Example::

        cmua = CMUA().fit((images, labels), [stargan, attgan, hisd])
        x_protected = cmua.protect(x)  # editor and condition are not needed
    """

    name = "cmua"

    def __init__(
        self,
        eps: float = PGD_EPS,
        steps: int = PGD_STEPS,
        step_size: float = PGD_STEP_SIZE,
        momentum: float = CMUA_MOMENTUM,
        batch_size: int = 64,
        seed: int = 0,
        *,
        n_images: int | None = CMUA_IMAGES,
        update: str = "published",
        factors: Mapping[str, float] | None = None,
        editors: Sequence[Editor] | None = None,
        eot: Sequence[str] | None = None,
    ) -> None:
        self.eps = check_eps(eps)
        self.steps = check_positive_int(steps, "steps")
        self.step_size = check_step_size(step_size)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= float(momentum) < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
        self.momentum = float(momentum)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = int(seed)
        self.n_images = None if n_images is None else check_positive_int(n_images, "n_images")
        if update not in CMUA_UPDATES:
            raise ValueError(f"update must be one of {list(CMUA_UPDATES)} ('published': the authors' rule), "
                             f"got {update!r}.")
        self.update = update
        self.factors = _check_factors(factors)
        self._editors = _editor_list(editors, "CMUA(editors=...)", allow_empty=True)
        self.eot = check_eot(eot)
        self.perturbation: torch.Tensor | None = None  # [1, 3, H, W] once fitted

    @property
    def editors(self) -> tuple[Editor, ...]:
        """The editors every :meth:`fit` includes (from the constructor)."""
        return self._editors

    def __deepcopy__(self, memo: dict) -> CMUA:
        """A copy with its own state; the configured editors (models, not state) are shared."""
        clone = copy.copy(self)
        memo[id(self)] = clone
        for key, value in vars(self).items():
            if key != "_editors":
                setattr(clone, key, copy.deepcopy(value, memo))
        return clone

    def __repr__(self) -> str:
        names = [e.name for e in self._editors]
        return f"{super().__repr__()[:-1]}{f', editors={names!r}' if names else ''})"

    def _batches(self, data: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            images, labels = data
            if not isinstance(labels, torch.Tensor) or images.shape[0] != labels.shape[0]:
                rows = labels.shape[0] if isinstance(labels, torch.Tensor) else type(labels).__name__
                raise ValueError(f"{images.shape[0]} images but {rows} label rows.")
            order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.seed))
            if self.n_images is not None:
                order = order[: self.n_images]
            for start in range(0, order.shape[0], self.batch_size):
                index = order[start : start + self.batch_size]
                yield images[index], labels[index]
            return
        seen = 0
        for images, labels in data:
            if self.n_images is not None:
                if seen >= self.n_images:
                    return
                keep = self.n_images - seen
                images, labels = images[:keep], labels[:keep]
            seen += int(images.shape[0])
            yield images, labels

    def fit(self, data: Batches, editors: Editor | Sequence[Editor] | None = None, epochs: int = 1) -> CMUA:
        """Fit the universal perturbation on ``data`` — an ``(images, labels)`` pair of tensors (shuffled with
        ``seed``, cut to ``n_images`` and into ``batch_size`` batches) or an iterable of such batches (e.g. a
        DataLoader; the first ``n_images`` images) — across the constructor's ``editors`` and then ``editors`` (each
        object once, each using its own ``conditions(labels)``). Continues from :attr:`perturbation` when set."""
        given = [editors] if isinstance(editors, Editor) else ([] if editors is None else editors)
        chosen = list(_editor_list(given, "CMUA.fit", allow_empty=True))
        chosen = [e for e in self._editors if not any(e is c for c in chosen)] + chosen
        if not chosen:
            raise TypeError("CMUA.fit needs one Editor or a non-empty list of Editors (or CMUA(editors=[...])).")
        check_positive_int(epochs, "epochs")
        noise = torch.Generator().manual_seed(self.seed)
        seen = 0
        for _ in range(epochs):
            for images, labels in self._batches(data):
                check_image_range(images)
                images = images.detach()
                if self.perturbation is not None and self.perturbation.shape[1:] != images.shape[1:]:
                    raise ValueError(
                        f"All images must share one size for a universal perturbation: fitted on "
                        f"{tuple(self.perturbation.shape[2:])}, got {tuple(images.shape[2:])}."
                    )
                for editor in chosen:
                    conditions = editor.conditions(labels)
                    if self.update == "simple":
                        self._simple_batch(images, editor, conditions)
                    else:
                        factor = self.factors.get(editor.name, 1.0)
                        for condition in conditions:
                            self._published_batch(images, editor, condition, factor, noise)
                seen += images.shape[0]
        if seen == 0:
            raise ValueError("CMUA.fit got no images: the data is empty.")
        return self

    def _published_batch(self, x: torch.Tensor, editor: Editor, condition: Any, factor: float,
                         noise: torch.Generator) -> None:
        """``steps`` iterations of the published update for one batch, editor and condition (see the class)."""
        with torch.no_grad():
            reference = editor.edit(x, condition).detach()
        start = torch.rand(x.shape, generator=noise, dtype=torch.float32)
        x_adv = x + ((start * 2 - 1) * self.eps).to(device=x.device, dtype=x.dtype)  # the restart, not clamped
        up = None if self.perturbation is None else self.perturbation.to(device=x.device, dtype=x.dtype)
        with torch.enable_grad():
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = edit_mse(editor, x_adv, condition, reference, self.eot)
                (grad,) = torch.autograd.grad(loss, x_adv)
                stepped = x_adv.detach() + self.step_size * grad.sign()
                eta = (factor * (stepped - x)).clamp(-self.eps, self.eps).mean(dim=0, keepdim=True)
                up = eta if up is None else self.momentum * up + (1 - self.momentum) * eta
                up = up.clamp(-self.eps, self.eps)  # a no-op up to rounding: eta and up lie in the eps-ball
                x_adv = (x + up).clamp(-1.0, 1.0)
        self.perturbation = up.detach()

    def _simple_batch(self, x: torch.Tensor, editor: Editor, conditions: list) -> None:
        """The ``"simple"`` update for one batch and editor (see the class)."""
        if self.perturbation is None:  # a seeded uniform start (at zero the MSE gradient vanishes)
            self.perturbation = seeded_uniform(x[:1], self.eps, self.seed)
        references = clean_edits(editor, x, conditions)
        delta = self.perturbation.to(x.device)
        x_adv = project(x + delta, x, self.eps)
        with torch.enable_grad():
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = disruption_loss(editor, x_adv, conditions, references, self.eot)
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = project(x_adv.detach() + self.step_size * grad.sign(), x, self.eps)
        batch_mean = (x_adv - x).mean(dim=0, keepdim=True)
        self.perturbation = (self.momentum * delta + (1 - self.momentum) * batch_mean).clamp(-self.eps, self.eps)


def _editor_list(editors: Any, where: str, allow_empty: bool) -> tuple[Editor, ...]:
    """``editors`` (None, one Editor or a sequence of them) as a tuple without repeats (by identity)."""
    if editors is None:
        items: list = []
    elif isinstance(editors, Editor):
        items = [editors]
    elif isinstance(editors, Iterable) and not isinstance(editors, (str, bytes, torch.nn.Module)):
        items = list(editors)
    else:
        raise TypeError(f"{where} needs one Editor or a list of Editors, got {type(editors).__name__}.")
    bad = [type(e).__name__ for e in items if not isinstance(e, Editor)]
    if bad:
        raise TypeError(f"{where} needs Editors (see lora_patch_adapters.load_editor / wrap), got {bad[0]}.")
    if not items and not allow_empty:
        raise TypeError(f"{where} needs one Editor or a non-empty list of Editors.")
    unique: list[Editor] = []
    for editor in items:
        if not any(editor is u for u in unique):
            unique.append(editor)
    return tuple(unique)


def _check_factors(factors: Mapping[str, float] | None) -> dict[str, float]:
    """Per-editor factors as {name: float > 0}, or a clear error."""
    if factors is None:
        return {}
    if not isinstance(factors, Mapping):
        raise TypeError(f"factors must map editor names to numbers > 0 (e.g. {{'stargan': 1.0}}), got "
                        f"{type(factors).__name__}.")
    checked = {}
    for key, value in factors.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(float(value)) or float(value) <= 0:
            raise ValueError(f"factors must map editor names (str) to finite numbers > 0, got {key!r}: {value!r}.")
        checked[key] = float(value)
    return checked
