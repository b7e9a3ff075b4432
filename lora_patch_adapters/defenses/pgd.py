"""Disrupting Deepfakes (Ruiz et al., 2020): per-image L-inf attacks that maximise the change of the edit.

All three maximise MSE(G(x', c), G(x, c)) over x' in the L-inf ball of radius ``eps`` around x (and in [-1, 1]):

* :class:`FGSM`: one signed-gradient step of size ``eps``;
* :class:`IFGSM`: ``steps`` signed steps of ``step_size`` from x, projected after each step;

(the gradient of the MSE vanishes exactly at x, whose edit *is* the reference, so these two start from x plus a tiny
seeded offset of ``eps / 100``;)

* :class:`PGD`: the same from a uniform random start in the ball (the field's default: eps 0.05, 10 steps, step 0.01).

Given a list of conditions, the objective is the mean over them, so one protected image disrupts every edit.
Gradients are taken w.r.t. the input only (``torch.autograd.grad``); the generator's parameters are not touched.
"""

from __future__ import annotations

import torch

from ..generators.base import Editor
from .base import Defense, clean_edits, disruption_loss, project, seeded_uniform
from .checks import check_eps, check_positive_int, check_step_size

PGD_EPS = 0.05
"""The field's L-inf budget on the [-1, 1] scale (Disrupting Deepfakes, CMUA-Watermark, LoRA patching)."""
PGD_STEPS = 10
PGD_STEP_SIZE = 0.01


class IFGSM(Defense):
    """Iterative FGSM: ``steps`` signed-gradient ascent steps of ``step_size`` from the clean image."""

    name = "ifgsm"
    random_start = False

    def __init__(self, eps: float = PGD_EPS, steps: int = PGD_STEPS, step_size: float = PGD_STEP_SIZE,
                 seed: int = 0) -> None:
        self.eps = check_eps(eps)
        self.steps = check_positive_int(steps, "steps")
        self.step_size = check_step_size(step_size)
        self.seed = int(seed)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        radius = self.eps if self.random_start else self.eps / 100  # see the module docstring
        return project(x + seeded_uniform(x, radius, self.seed, self.noise_rows), x, self.eps)

    def _protect(self, x: torch.Tensor, editor: Editor, conditions: list) -> torch.Tensor:
        references = clean_edits(editor, x, conditions)
        x_adv = self._start(x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = disruption_loss(editor, x_adv, conditions, references)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + self.step_size * grad.sign(), x, self.eps)
        return x_adv


class PGD(IFGSM):
    """Projected gradient descent with a uniform random start in the eps-ball (seeded)."""

    name = "pgd"
    random_start = True


class FGSM(IFGSM):
    """Fast gradient sign method: one step of size ``eps``."""

    name = "fgsm"

    def __init__(self, eps: float = PGD_EPS, seed: int = 0) -> None:
        super().__init__(eps=eps, steps=1, step_size=eps, seed=seed)
