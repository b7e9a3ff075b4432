"""CMUA-Watermark (Huang et al., AAAI 2022): one universal perturbation for all images and several editors; see
:class:`CMUA`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Union

import torch

from ..generators.base import Editor
from .base import (
    PGD_EPS,
    PGD_STEP_SIZE,
    PGD_STEPS,
    UniversalDefense,
    clean_edits,
    disruption_loss,
    project,
    seeded_uniform,
)
from .checks import check_eps, check_image_range, check_positive_int, check_step_size

__all__ = ["CMUA"]

Batches = Union[tuple[torch.Tensor, torch.Tensor], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class CMUA(UniversalDefense):
    """CMUA-Watermark: one universal perturbation, fitted for several editors, then added to every image.

    Paper: Huang et al., "CMUA-Watermark: A Cross-Model Universal Adversarial Watermark for Combating Deepfakes",
    AAAI 2022.

    Objective: one ``delta`` [1, 3, H, W] with ``||delta||_inf <= eps`` that maximises MSE(G(x + delta, c), G(x, c))
    over all images and editors. :meth:`fit` walks over batches of (images, labels); for each editor it runs
    ``steps`` signed-gradient ascent steps of ``step_size`` on that MSE (mean over the editor's target conditions for
    those labels) starting from the current ``delta``, averages the resulting per-image perturbations over the batch
    and folds the average in with momentum: ``delta <- clip(m * delta + (1 - m) * batch_mean, -eps, eps)``. It starts
    from seeded U(-eps, eps) noise (at zero the MSE gradient vanishes). :meth:`protect` is then
    ``clip(x + delta, -1, 1)``, the same ``delta`` for every image, editor and condition.

    Args:
        eps: L-inf budget on the [-1, 1] scale, in (0, 1]. Default 0.05 (:data:`~.base.PGD_EPS`).
        steps: ascent steps per editor and batch, >= 1. Default 10 (:data:`~.base.PGD_STEPS`).
        step_size: size of each signed step, > 0. Default 0.01 (:data:`~.base.PGD_STEP_SIZE`).
        momentum: weight ``m`` of the current perturbation in each update, in [0, 1). Default 0.5.
        batch_size: batch size when :meth:`fit` is given an ``(images, labels)`` pair. Default 64.
        seed: seeds the start and the shuffling of an ``(images, labels)`` pair. Default 0.

    Shapes: :meth:`fit` takes images [N, 3, H, W] in [-1, 1] with labels [N, A]; ``protect(x)``: ``x``
    [M, 3, H, W] in [-1, 1] of the same H, W -> [M, 3, H, W] in [-1, 1], within ``eps`` of ``x``;
    :attr:`perturbation` [1, 3, H, W]. ``protect`` raises a ``RuntimeError`` before :meth:`fit`.

    Example::

        cmua = CMUA(eps=0.05, steps=10, step_size=0.01).fit((images, labels), [stargan, attgan])
        x_protected = cmua.protect(x)  # editor and condition are not needed
    """

    name = "cmua"

    def __init__(
        self,
        eps: float = PGD_EPS,
        steps: int = PGD_STEPS,
        step_size: float = PGD_STEP_SIZE,
        momentum: float = 0.5,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.eps = check_eps(eps)
        self.steps = check_positive_int(steps, "steps")
        self.step_size = check_step_size(step_size)
        if not 0 <= float(momentum) < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
        self.momentum = float(momentum)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = int(seed)
        self.perturbation: torch.Tensor | None = None  # [1, 3, H, W] once fitted

    def _batches(self, data: Batches) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            images, labels = data
            if images.shape[0] != labels.shape[0]:
                raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label rows.")
            order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.seed))
            for start in range(0, images.shape[0], self.batch_size):
                index = order[start : start + self.batch_size]
                yield images[index], labels[index]
        else:
            yield from data

    def fit(self, data: Batches, editors: Editor | Sequence[Editor], epochs: int = 1) -> CMUA:
        """Fit the universal perturbation on ``data`` — an ``(images, labels)`` pair of tensors (shuffled with
        ``seed`` and cut into ``batch_size`` batches) or an iterable of such batches (e.g. a DataLoader) — for one
        or more ``editors``, each using its own ``conditions(labels)``."""
        editors = [editors] if isinstance(editors, Editor) else list(editors)
        if not editors or not all(isinstance(e, Editor) for e in editors):
            raise TypeError("CMUA.fit needs one Editor or a non-empty list of Editors.")
        check_positive_int(epochs, "epochs")
        seen = 0
        for _ in range(epochs):
            for images, labels in self._batches(data):
                check_image_range(images)
                images = images.detach()
                if self.perturbation is None:  # a seeded uniform start (at zero the MSE gradient vanishes)
                    self.perturbation = seeded_uniform(images[:1], self.eps, self.seed)
                elif self.perturbation.shape[1:] != images.shape[1:]:
                    raise ValueError(
                        f"All images must share one size for a universal perturbation: fitted on "
                        f"{tuple(self.perturbation.shape[2:])}, got {tuple(images.shape[2:])}."
                    )
                for editor in editors:
                    self._fit_batch(images, editor, editor.conditions(labels))
                seen += images.shape[0]
        if seen == 0:
            raise ValueError("CMUA.fit got no images: the data is empty.")
        return self

    def _fit_batch(self, x: torch.Tensor, editor: Editor, conditions: list) -> None:
        references = clean_edits(editor, x, conditions)
        delta = self.perturbation.to(x.device)
        x_adv = project(x + delta, x, self.eps)
        with torch.enable_grad():
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = disruption_loss(editor, x_adv, conditions, references)
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = project(x_adv.detach() + self.step_size * grad.sign(), x, self.eps)
        batch_mean = (x_adv - x).mean(dim=0, keepdim=True)
        self.perturbation = (self.momentum * delta + (1 - self.momentum) * batch_mean).clamp(-self.eps, self.eps)
