"""I-FGSM (Disrupting Deepfakes, Ruiz et al. 2020): the iterative signed-gradient attack that :class:`IFGSM`
implements once for the per-image defenses; :class:`~.pgd.PGD` and :class:`~.fgsm.FGSM` are settings of it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..generators.base import Editor
from .base import PGD_EPS, PGD_STEP_SIZE, PGD_STEPS, Defense, clean_edits, disruption_loss, project
from .checks import check_eot, check_eps, check_positive_int, check_step_size

__all__ = ["IFGSM"]


class IFGSM(Defense):
    """Iterative FGSM: ``steps`` signed-gradient ascent steps of ``step_size``, projected after each step.

    Paper: Ruiz, Bargal and Sclaroff, "Disrupting Deepfakes: Adversarial Attacks Against Conditional Image
    Translation Networks and Facial Manipulation Systems", ECCV Workshops 2020.

    Objective: maximise MSE(G(x + delta, c), G(x, c)) over ``||delta||_inf <= eps`` with ``x + delta`` in [-1, 1]
    (the mean over the conditions when given a list: one image disrupts every edit). Gradients are taken w.r.t. the
    input only (``torch.autograd.grad``); the editor's parameters are not touched. The gradient of this MSE vanishes
    exactly at ``x`` (whose edit *is* the reference), so I-FGSM starts from ``x`` plus a tiny seeded offset,
    U(-eps / 100, eps / 100); :class:`~.pgd.PGD` starts from U(-eps, eps) instead.

    EOT (expectation over transformation, Athalye et al. 2018): with ``eot=[t_1, ..., t_T]`` each step's loss is the
    mean over the listed transformations of MSE(G(t(x + delta), c), G(x, c)) -- the reference stays the clean edit of
    the untransformed image -- and the gradient flows through differentiable versions of the transformations
    (:mod:`.transforms`: kornia's JPEG codec and Gaussian blur), so the protection aims to survive them. The list is
    exactly what is averaged: add ``"identity"`` to keep the untransformed image in the objective. Each step costs
    T forwards (one batched forward of T * N images when the editor can stack its condition).

    Args:
        eps: L-inf budget on the [-1, 1] scale, in (0, 1]. Default 0.05 (:data:`~.base.PGD_EPS`).
        steps: number of steps, >= 1. Default 10 (:data:`~.base.PGD_STEPS`).
        step_size: size of each signed step on the [-1, 1] scale, > 0. Default 0.01 (:data:`~.base.PGD_STEP_SIZE`).
        seed: seed of the start offset (a call's ``protect(..., seed=)`` overrides it). Default 0.
        eot: None (default: no EOT; the plain objective, bit for bit) or a list of transformation names,
            ``"identity"``, ``"jpeg<Q>"`` (Q in 1..100) and ``"blur<S>"`` (sigma S pixels), e.g.
            ``["identity", "jpeg75", "blur1"]``; stored as a tuple of canonical names and shown in the repr.

    Shapes: ``protect(x, editor, condition)``: ``x`` [N, 3, H, W] in [-1, 1] -> [N, 3, H, W] in [-1, 1], within
    ``eps`` of ``x``; deterministic given the seed.

    Example::

        defense = IFGSM(eps=0.05, steps=10, step_size=0.01)
        x_protected = defense.protect(x, editor, editor.conditions(labels))
    """

    name = "ifgsm"
    random_start = False

    def __init__(self, eps: float = PGD_EPS, steps: int = PGD_STEPS, step_size: float = PGD_STEP_SIZE,
                 seed: int = 0, *, eot: Sequence[str] | None = None) -> None:
        self.eps = check_eps(eps)
        self.steps = check_positive_int(steps, "steps")
        self.step_size = check_step_size(step_size)
        self.seed = int(seed)
        self.eot = check_eot(eot)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """The first iterate: ``x`` plus seeded noise of radius ``eps`` (random start) or ``eps / 100``."""
        radius = self.eps if self.random_start else self.eps / 100  # see the class docstring
        return project(x + self.start_noise(x, radius), x, self.eps)

    def _protect(self, x: torch.Tensor, editor: Editor, conditions: list) -> torch.Tensor:
        references = clean_edits(editor, x, conditions)
        x_adv = self._start(x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = disruption_loss(editor, x_adv, conditions, references, self.eot)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + self.step_size * grad.sign(), x, self.eps)
        return x_adv
