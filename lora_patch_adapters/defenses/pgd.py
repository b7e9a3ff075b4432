"""PGD (Disrupting Deepfakes, Ruiz et al. 2020): I-FGSM from a random start; see :class:`PGD`.

Also re-exports :class:`~.ifgsm.IFGSM`, :class:`~.fgsm.FGSM` and the field's settings ``PGD_EPS``, ``PGD_STEPS``,
``PGD_STEP_SIZE`` (defined in :mod:`.base`), which other modules import from here.
"""

from __future__ import annotations

from .base import PGD_EPS, PGD_STEP_SIZE, PGD_STEPS
from .fgsm import FGSM
from .ifgsm import IFGSM

__all__ = ["FGSM", "IFGSM", "PGD", "PGD_EPS", "PGD_STEPS", "PGD_STEP_SIZE"]


class PGD(IFGSM):
    """Projected gradient descent: :class:`~.ifgsm.IFGSM` from a seeded uniform random start in the eps-ball.

    Paper: Ruiz, Bargal and Sclaroff, "Disrupting Deepfakes: Adversarial Attacks Against Conditional Image
    Translation Networks and Facial Manipulation Systems", ECCV Workshops 2020 (after Madry et al., 2018).

    Objective: maximise MSE(G(x + delta, c), G(x, c)) over ``||delta||_inf <= eps`` with ``x + delta`` in [-1, 1]
    (mean over the conditions when given a list), by ``steps`` signed-gradient steps of ``step_size`` from
    ``x + U(-eps, eps)``, projected after each step. The field's setting: eps 0.05, 10 steps of 0.01.
    With ``eot`` the objective is averaged over differentiable transformations of ``x + delta`` (EOT, see
    :class:`~.ifgsm.IFGSM`); the built-in spec ``pgd_eot`` is ``eot=["identity", "jpeg75", "blur1"]``.

    Args:
        eps: L-inf budget on the [-1, 1] scale, in (0, 1]. Default 0.05 (:data:`PGD_EPS`).
        steps: number of steps, >= 1. Default 10 (:data:`PGD_STEPS`).
        step_size: size of each signed step on the [-1, 1] scale, > 0. Default 0.01 (:data:`PGD_STEP_SIZE`).
        seed: seed of the random start (a call's ``protect(..., seed=)`` overrides it). Default 0.
        eot: None (default: no EOT) or a list of transformation names (``"identity"``, ``"jpeg<Q>"``,
            ``"blur<S>"``) whose mean disruption each step maximises; ``"identity"`` is not implied.

    Shapes: ``protect(x, editor, condition)``: ``x`` [N, 3, H, W] in [-1, 1] -> [N, 3, H, W] in [-1, 1], within
    ``eps`` of ``x``; deterministic given the seed.

    Example::

        defense = PGD(eps=PGD_EPS, steps=PGD_STEPS, step_size=PGD_STEP_SIZE, seed=0)
        x_protected = defense.protect(x, editor, editor.conditions(labels)[0], seed=7)  # this call's start
        robust = PGD(eot=["identity", "jpeg75", "blur1"])  # survives JPEG re-encoding and blur more often
    """

    name = "pgd"
    random_start = True
