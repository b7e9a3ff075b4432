"""Anti-Forgery (Wang et al., IJCAI 2022): a perceptual-aware perturbation on the a and b channels of CIE Lab; see
:class:`AntiForgery` (and :func:`to_normalised_lab`, :func:`ab_perturb` for its colour maths).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..generators.base import Editor
from .base import Defense, clean_edits, edit_mse
from .checks import check_eot, check_eps, check_lab_eps, check_lr, check_positive_int, check_seed
from .color import denormalise_lab, lab_to_rgb, normalise_lab, rgb_to_lab

__all__ = ["AntiForgery", "ab_perturb", "to_normalised_lab"]

# protect() projects onto the L-inf ball of this radius when no rgb_eps is given: the diameter of [-1, 1].
_UNBOUNDED_RGB_EPS = 2.0


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """Colour maths runs in at least float32 (half precision loses several Lab units)."""
    return torch.promote_types(x.dtype, torch.float32)


def to_normalised_lab(x: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] -> normalised Lab [N, 3, H, W] ((L - 50) / 100, a / 110, b / 110), computed
    in at least float32."""
    rgb = (x.to(_work_dtype(x)) + 1.0) / 2.0
    return normalise_lab(rgb_to_lab(rgb))


def ab_perturb(lab_normalised: torch.Tensor, delta_ab: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] sRGB [N, 3, H, W] from normalised Lab with ``delta_ab`` [N, 2, H, W] (or broadcastable)
    added to its a and b channels; L is kept. Clamped to [0, 1] (out-of-gamut colours are clipped). Differentiable
    in ``delta_ab``."""
    if delta_ab.dim() != lab_normalised.dim() or delta_ab.shape[-3] != 2:
        raise ValueError(f"delta_ab must be shaped [N, 2, H, W] (a and b channels), got {tuple(delta_ab.shape)}.")
    lightness = lab_normalised[:, :1]
    ab = lab_normalised[:, 1:] + delta_ab
    return lab_to_rgb(denormalise_lab(torch.cat((lightness, ab), dim=1))).clamp(0.0, 1.0)


class AntiForgery(Defense):
    """Anti-Forgery: Adam on an a/b-channel perturbation in normalised Lab, within ``+-eps`` there.

    Paper: Wang et al., "Anti-Forgery: Towards a Stealthy and Robust DeepFake Disruption Attack via Adversarial
    Perceptual-aware Perturbations", IJCAI 2022.

    Objective: maximise MSE(G(x_adv, c), G(x, c)) where ``x_adv`` is ``x`` converted to CIE Lab, normalised
    (L -> (L - 50) / 100, a -> a / 110, b -> b / 110), with a perturbation ``delta`` added to the **a and b channels
    only** (lightness untouched) and clamped to ``+-eps`` in those units, converted back to sRGB, clamped to [0, 1]
    and mapped to [-1, 1]. ``delta`` is optimised with Adam (lr 1e-4, 100 iterations in the paper), taking one target
    condition per iteration in turn (iteration ``i`` uses condition ``i % len(conditions)``).

    EOT: with ``eot=[t_1, ..., t_T]`` each iteration's MSE is the mean over the listed differentiable
    transformations of the RGB image ``x_adv`` (after the Lab round trip), mean_t MSE(G(t(x_adv), c), G(x, c)),
    see :func:`~.base.edit_mse` and :mod:`.transforms`; ``"identity"`` is not implied. Default None: the paper's.

    The budget is a Lab budget, not an RGB one: 0.05 normalised units is 5.5 a/b units, which can move an RGB channel
    far more than the usual RGB budget of 0.05 (benchmarks/README.md, "Measurements behind defaults", has the
    numbers). ``protect``'s final RGB L-inf
    projection (``self.eps``) is only an optional extra constraint (``rgb_eps``); without it ``self.eps`` is 2.0, the
    diameter of [-1, 1], so the projection only clamps to [-1, 1] and never binds. With the paper's settings Adam
    moves each element by at most about ``lr`` per iteration, so 100 iterations at lr 1e-4 reach roughly +-0.01 of
    the +-0.05 budget; the clamp only binds with larger learning rates or more iterations.

    Args (keyword-only):
        eps: budget on the a and b channels in normalised Lab units (a / 110, b / 110), in (0, 1]; stored as
            ``ab_eps``. Default 0.05 (the paper's; 5.5 a/b units).
        steps: Adam iterations, >= 1. Default 100 (the paper's).
        lr: Adam learning rate (betas 0.9, 0.999), > 0. Default 1e-4 (the paper's).
        seed: seeds the random start (only used when ``random_start`` is true; a call's ``protect(..., seed=)``
            overrides it). Default 0.
        rgb_eps: optional extra L-inf budget in RGB on the [-1, 1] scale, in (0, 1], enforced by ``protect``'s final
            projection. Default ``None``: no RGB budget, ``self.eps`` is 2.0 and never binds; the Lab budget is the
            real constraint. Note that ``self.eps`` is this RGB radius (as for every :class:`Defense`), not the Lab
            budget ``eps``.
        random_start: start from U(-eps, eps) noise drawn from the seed instead of zeros. Default ``False``: the
            perturbation starts at zero, as in the paper's formulation. At exactly zero the loss and its gradient
            are only the round-off of the Lab round trip, but Adam normalises the gradient, so the first step already
            leaves zero and the loss grows from the second iteration on (see benchmarks/README.md). A random
            start spends most of the budget on noise when lr is as small as the paper's.
        eot: None (default) or a list of transformation names (``"identity"``, ``"jpeg<Q>"``, ``"blur<S>"``), see
            above; stored as a tuple of canonical names.

    Shapes: ``protect(x, editor, condition)``: ``x`` [N, 3, H, W] in [-1, 1] -> [N, 3, H, W] in [-1, 1] whose
    normalised Lab a/b channels differ from those of ``x`` by at most ``eps`` and whose lightness is unchanged, up to
    the round trip's round-off and to the clamping of out-of-gamut colours into [0, 1] RGB. Deterministic given the
    arguments; the input is never modified. The editor's parameters receive no gradients (only the perturbation is
    differentiated).

    Example::

        defense = AntiForgery(eps=0.05, steps=100, lr=1e-4)
        x_protected = defense.protect(x, editor, editor.conditions(labels))
    """

    name = "anti_forgery"

    def __init__(
        self,
        *,
        eps: float = 0.05,
        steps: int = 100,
        lr: float = 1e-4,
        seed: int = 0,
        rgb_eps: float | None = None,
        random_start: bool = False,
        eot: Sequence[str] | None = None,
    ) -> None:
        self.ab_eps = check_lab_eps(eps)
        self.steps = check_positive_int(steps, "steps")
        self.lr = check_lr(lr)
        self.seed = check_seed(seed)
        self.rgb_eps = None if rgb_eps is None else check_eps(rgb_eps, "rgb_eps")
        if not isinstance(random_start, bool):
            raise TypeError(f"random_start must be True or False, got {random_start!r}.")
        self.random_start = random_start
        self.eps = _UNBOUNDED_RGB_EPS if self.rgb_eps is None else self.rgb_eps
        self.eot = check_eot(eot)

    def initial_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The starting a/b perturbation [N, 2, H, W] for images ``x`` [N, 3, H, W]: zeros, or (``random_start``)
        U(-eps, eps) noise from this call's seed and noise rows (see :meth:`Defense.start_noise`)."""
        shape = (x.shape[0], 2, x.shape[2], x.shape[3])
        like = torch.empty(shape, device=x.device, dtype=_work_dtype(x))
        if self.random_start:
            return self.start_noise(like, self.ab_eps)
        return torch.zeros_like(like)

    def _protect(self, x: torch.Tensor, editor: Editor, conditions: list) -> torch.Tensor:
        references = clean_edits(editor, x, conditions)
        lab = to_normalised_lab(x).detach()
        delta = self.initial_delta(x).requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.lr, betas=(0.9, 0.999))
        for step in range(self.steps):
            index = step % len(conditions)
            x_adv = (ab_perturb(lab, delta) * 2.0 - 1.0).to(x.dtype)
            # Adam minimises: descend on -MSE. Differentiate w.r.t. delta only, so the editor's .grad stay untouched.
            loss = -edit_mse(editor, x_adv, conditions[index], references[index], self.eot)
            (grad,) = torch.autograd.grad(loss, delta)
            delta.grad = grad
            optimizer.step()
            with torch.no_grad():
                delta.clamp_(-self.ab_eps, self.ab_eps)
        with torch.no_grad():
            return (ab_perturb(lab, delta) * 2.0 - 1.0).to(x.dtype)
