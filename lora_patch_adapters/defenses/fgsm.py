"""FGSM (Disrupting Deepfakes, Ruiz et al. 2020): one signed-gradient step; see :class:`FGSM`."""

from __future__ import annotations

from collections.abc import Sequence

from .base import PGD_EPS
from .ifgsm import IFGSM

__all__ = ["FGSM"]


class FGSM(IFGSM):
    """Fast gradient sign method: one signed-gradient step of size ``eps`` (an :class:`~.ifgsm.IFGSM` setting).

    Paper: Ruiz, Bargal and Sclaroff, "Disrupting Deepfakes: Adversarial Attacks Against Conditional Image
    Translation Networks and Facial Manipulation Systems", ECCV Workshops 2020 (after Goodfellow et al., 2015).

    Objective: maximise MSE(G(x + delta, c), G(x, c)) over ``||delta||_inf <= eps`` with ``x + delta`` in [-1, 1]
    (mean over the conditions when given a list), with ``delta = eps * sign(grad)`` taken at ``x`` plus a tiny seeded
    offset U(-eps / 100, eps / 100) (at ``x`` itself the gradient vanishes).

    Args:
        eps: L-inf budget on the [-1, 1] scale, in (0, 1], and the step size. Default 0.05 (:data:`~.base.PGD_EPS`).
        seed: seed of the start offset (a call's ``protect(..., seed=)`` overrides it). Default 0.
        eot: None (default) or a list of transformation names to average the objective over, as for
            :class:`~.ifgsm.IFGSM`.

    Shapes: ``protect(x, editor, condition)``: ``x`` [N, 3, H, W] in [-1, 1] -> [N, 3, H, W] in [-1, 1], within
    ``eps`` of ``x``; deterministic given the seed.

    Example::

        x_protected = FGSM(eps=0.05).protect(x, editor, editor.conditions(labels)[0])
    """

    name = "fgsm"

    def __init__(self, eps: float = PGD_EPS, seed: int = 0, *, eot: Sequence[str] | None = None) -> None:
        super().__init__(eps=eps, steps=1, step_size=eps, seed=seed, eot=eot)
