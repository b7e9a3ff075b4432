"""What every proactive defense shares: the :class:`Defense` base (its one ``protect`` entry point), the
:class:`UniversalDefense` base (fit, then apply), the field's PGD settings and the disruption objective.

See :class:`Defense` for the contract; the defenses themselves live one per module (``fgsm``, ``ifgsm``, ``pgd``,
``cmua``, ``anti_forgery``).
"""

from __future__ import annotations

import contextlib
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union, final

import torch
import torch.nn.functional as F

from .._checks import check_images
from ..generators.base import Editor
from .checks import check_image_range, check_noise_rows, check_seed
from .transforms import transform_views

__all__ = ["PGD_EPS", "PGD_STEPS", "PGD_STEP_SIZE", "Conditions", "Defense", "NoiseRows", "UniversalDefense",
           "as_condition_list", "clean_edits", "disruption_loss", "edit_mse", "inputs_already_checked", "project",
           "seeded_uniform"]

PGD_EPS = 0.05
"""The field's L-inf budget on the [-1, 1] scale (Disrupting Deepfakes, CMUA-Watermark, LoRA patching)."""
PGD_STEPS = 10
"""The field's number of signed-gradient steps (PGD-10)."""
PGD_STEP_SIZE = 0.01
"""The field's step size on the [-1, 1] scale."""

Conditions = Union[Any, Sequence[Any]]

_inputs_checked = contextvars.ContextVar("lora_patch_inputs_checked", default=False)


@contextlib.contextmanager
def inputs_already_checked() -> Iterator[None]:
    """Inside this context :meth:`Defense.protect` skips its [-1, 1] range check (reading the range back from a GPU
    stalls the pipeline); for callers that validated the images themselves, e.g. on the CPU before the copy."""
    token = _inputs_checked.set(True)
    try:
        yield
    finally:
        _inputs_checked.reset(token)


def as_condition_list(condition: Conditions) -> list:
    """One condition -> [condition]; a list/tuple of conditions -> list. Tensors are single conditions."""
    if isinstance(condition, (list, tuple)):
        if not condition:
            raise ValueError("The list of conditions is empty.")
        return list(condition)
    return [condition]


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x_adv`` into the L-inf ball of radius ``eps`` around ``x`` and into [-1, 1]."""
    return torch.max(torch.min(x_adv, x + eps), x - eps).clamp(-1.0, 1.0)


def edit_mse(editor: Editor, x_adv: torch.Tensor, condition: Any, reference: torch.Tensor,
             eot: Sequence[str] | None = None) -> torch.Tensor:
    """MSE(editor(x_adv, c), reference) for one condition; with ``eot`` (canonical names, see
    :func:`~.transforms.parse_eot`) the mean over the transformations t of MSE(editor(t(x_adv), c), reference),
    the reference staying the clean edit of the untransformed image.

    The views [T * N, 3, H, W] go through the editor in one forward when it can stack the condition
    (:meth:`~lora_patch_adapters.generators.base.Editor.concat_conditions`; the MSE of the concatenation is the mean
    of the T equal-size MSEs), else one forward per view. Every defense's editor forward goes through here, so EOT
    means the same in all of them. ``eot=None`` is exactly ``F.mse_loss(editor.edit(x_adv, condition), reference)``.
    """
    if eot is None:
        return F.mse_loss(editor.edit(x_adv, condition), reference)
    views = transform_views(x_adv, eot)
    count = len(eot)
    stacked = editor.concat_conditions([condition] * count) if count > 1 else condition
    if stacked is not None:
        return F.mse_loss(editor.edit(views, stacked), reference.repeat(count, *([1] * (reference.dim() - 1))))
    total = x_adv.new_zeros(())
    for view in views.chunk(count):
        total = total + F.mse_loss(editor.edit(view, condition), reference)
    return total / count


def disruption_loss(editor: Editor, x_adv: torch.Tensor, conditions: list, references: list,
                    eot: Sequence[str] | None = None) -> torch.Tensor:
    """Mean over conditions of MSE(editor(x_adv, c), reference_c): the quantity the defenses maximise; with ``eot``
    each term is averaged over the transformations of ``x_adv`` (:func:`edit_mse`)."""
    total = x_adv.new_zeros(())
    for condition, reference in zip(conditions, references):
        total = total + edit_mse(editor, x_adv, condition, reference, eot)
    return total / len(conditions)


@torch.no_grad()
def clean_edits(editor: Editor, x: torch.Tensor, conditions: list) -> list:
    """The editor's outputs on the clean images, one per condition (the references the attack moves away from)."""
    return [editor.edit(x, condition).detach() for condition in conditions]


NoiseRows = tuple[Sequence[int], int]


def seeded_uniform(like: torch.Tensor, eps: float, seed: int, rows: NoiseRows | None = None) -> torch.Tensor:
    """U(-eps, eps) noise shaped like ``like``, drawn on the CPU from ``seed`` (the same on every device).

    ``rows=(indices, total)``: ``like`` holds rows ``indices`` of a batch of ``total`` rows; the noise is drawn for
    the whole batch and those rows are returned, so a shard of a batch (one process of a data-parallel run) gets the
    same noise as the full batch in one process.
    """
    generator = torch.Generator().manual_seed(seed)
    if rows is None:
        noise = torch.rand(like.shape, generator=generator, dtype=torch.float32)
    else:
        indices, total = rows
        if len(indices) != like.shape[0] or any(not 0 <= i < total for i in indices):
            raise ValueError(f"rows must name {like.shape[0]} row indices in [0, {total}), got {list(indices)}.")
        noise = torch.rand((total, *like.shape[1:]), generator=generator, dtype=torch.float32)[list(indices)]
    noise = (noise * 2 - 1) * eps
    if like.device.type == "cuda":  # pinned + non-blocking: a pageable copy would synchronise with the GPU
        return noise.pin_memory().to(device=like.device, dtype=like.dtype, non_blocking=True)
    return noise.to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True, eq=False)
class _Call:
    """The options of one :meth:`Defense.protect` call: read by the defense it belongs to, never stored on it."""

    defense: Defense
    seed: int | None
    noise_rows: NoiseRows | None
    condition: Any  # exactly as the caller gave it (one condition or a list)


_protect_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("lora_patch_protect_call", default=None)


class Defense(ABC):
    """Base class of the proactive defenses: one final entry point, :meth:`protect`, around a subclass's
    :meth:`_protect`.

    Paper: none (the common contract of the defenses in this package, after torchattacks' ``Attack.__call__``).

    Objective: a defense turns clean images ``x`` into protected images ``x'`` with ``||x' - x||_inf <= eps`` (on the
    [-1, 1] scale: 0.05 there is 0.025 on [0, 1]) that maximise a disruption of the editor ``G``, usually
    MSE(G(x', c), G(x, c)) (:func:`disruption_loss`); given a list of conditions, one ``x'`` disrupts all of them.

    :meth:`protect` is ``typing.final`` and subclasses that override it are refused when the class is created. It
    validates the inputs, sets this call's options (``seed``, ``noise_rows``) for :meth:`start_noise`, runs
    :meth:`_protect` with gradients enabled on a detached ``x`` and finishes with :meth:`_finish` (by default the
    projection into the eps-ball and [-1, 1]). Subclasses implement :meth:`_protect` and, if needed, :meth:`_finish`.

    Class attributes (defaults): ``name = "defense"``; ``eps = 0.05`` (L-inf budget, [-1, 1] scale); ``seed = 0``
    (used when a call gives none); ``needs_editor = True`` (False: ``editor`` and ``condition`` may be None, as for
    a :class:`UniversalDefense`).

    Shapes: ``x`` [N, 3, H, W] float in [-1, 1]; output [N, 3, H, W] in [-1, 1], same dtype and device; ``x`` is
    never modified, and the result is deterministic given the seed.

    Example::

        class Shift(Defense):
            name = "shift"

            def __init__(self, eps: float = 0.05, seed: int = 0) -> None:
                self.eps, self.seed = eps, seed

            def _protect(self, x, editor, conditions):
                return x + self.start_noise(x, self.eps)

        x_protected = Shift().protect(x, editor, editor.conditions(labels)[0], seed=3)
    """

    name: str = "defense"
    eps: float = 0.05
    seed: int = 0
    needs_editor: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "protect" in vars(cls):
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} overrides Defense.protect, the one entry point every defense "
                "goes through (input checks, per-call seed and noise rows, final projection): implement "
                "_protect(x, editor, conditions) instead, and _finish(x_protected, x) to change the finishing step."
            )

    @final
    def protect(self, x: torch.Tensor, editor: Editor | None = None, condition: Conditions = None, *,
                seed: int | None = None, noise_rows: NoiseRows | None = None) -> torch.Tensor:
        """Protected images [N, 3, H, W] in [-1, 1] for images ``x`` [N, 3, H, W] in [-1, 1]; ``x`` is not modified.

        Args:
            x: the clean images.
            editor: the :class:`~lora_patch_adapters.generators.base.Editor` to disrupt (may be None for defenses
                with ``needs_editor = False``, e.g. universal ones).
            condition: one target condition, or a list of them to disrupt jointly.
            seed: this call's seed for the random start (None: the defense's own ``seed``). The defense object is
                not modified.
            noise_rows: ``(indices, total)``: ``x`` holds rows ``indices`` of a batch of ``total`` rows, and gets
                those rows of the noise drawn for the whole batch (see :func:`seeded_uniform`).
        """
        if not _inputs_checked.get():
            check_image_range(x)
        else:
            check_images(x)
        if self.needs_editor:
            if not isinstance(editor, Editor):
                raise TypeError(f"protect() needs an Editor (see lora_patch_adapters.load_editor / wrap), got "
                                f"{type(editor).__name__}.")
            conditions = as_condition_list(condition)
        else:
            conditions = list(condition) if isinstance(condition, (list, tuple)) else [condition]
        call = _Call(self, None if seed is None else check_seed(seed),
                     None if noise_rows is None else check_noise_rows(noise_rows), condition)
        x = x.detach()
        token = _protect_call.set(call)
        try:
            with torch.enable_grad():
                x_protected = self._protect(x, editor, conditions)
            return self._finish(x_protected, x)
        finally:
            _protect_call.reset(token)

    @abstractmethod
    def _protect(self, x: torch.Tensor, editor: Editor | None, conditions: list) -> torch.Tensor:
        """Protected images for ``conditions`` (a non-empty list) from the detached images ``x`` [N, 3, H, W] in
        [-1, 1]; runs with gradients enabled, and its result goes through :meth:`_finish`."""

    def _finish(self, x_protected: Any, x: torch.Tensor) -> torch.Tensor:
        """The finishing step of :meth:`protect`: what :meth:`_protect` returned -> the final images [N, 3, H, W].
        Default: detach and project into the L-inf ball of radius ``eps`` around ``x`` and into [-1, 1]. Override it
        to check outputs instead of clipping them (see ``plugins.PluginDefense``)."""
        return project(x_protected.detach(), x, self.eps)

    def _current_call(self) -> _Call | None:
        """This defense's :meth:`protect` call in progress (its options), or None outside one."""
        call = _protect_call.get()
        return call if call is not None and call.defense is self else None

    def start_noise(self, like: torch.Tensor, radius: float) -> torch.Tensor:
        """U(-radius, radius) noise shaped like ``like`` [N, ...] (its dtype and device) for the random start: drawn
        from this call's ``seed`` (else the defense's ``seed``) and cut to this call's ``noise_rows``, see
        :func:`seeded_uniform`. Outside a :meth:`protect` call, from ``self.seed`` for the whole of ``like``."""
        call = self._current_call()
        seed = self.seed if call is None or call.seed is None else call.seed
        return seeded_uniform(like, radius, seed, None if call is None else call.noise_rows)

    def __repr__(self) -> str:
        def shown(value: Any) -> str:  # a fitted tensor (e.g. CMUA's perturbation) by its shape, not its values
            return f"tensor{list(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)

        # eot=None (no EOT) is left out, so the repr of a plain defense -- recorded in checkpoints and reports --
        # is what it was before the option existed
        fields = ", ".join(f"{k}={shown(v)}" for k, v in vars(self).items()
                           if not k.startswith("_") and not (k == "eot" and v is None))
        return f"{type(self).__name__}({fields})"


class UniversalDefense(Defense):
    """Base class of the universal defenses: fit one perturbation on data, then add it to any image.

    Paper: none (the common contract; see :class:`~lora_patch_adapters.defenses.cmua.CMUA` for CMUA-Watermark).

    Objective: :meth:`fit` looks for one perturbation ``delta`` [1, 3, H, W] with ``||delta||_inf <= eps`` that
    maximises the disruption MSE(G(x + delta, c), G(x, c)) over the data and editors it is given; :meth:`protect`
    then returns ``clip(x + delta, -1, 1)`` (and within ``eps`` of ``x``), the same ``delta`` for every image,
    editor and condition: ``editor``, ``condition``, ``seed`` and ``noise_rows`` are accepted and ignored.

    Subclasses implement :meth:`fit` (setting :attr:`perturbation` and returning ``self``); before it, ``protect``
    raises a ``RuntimeError``. Images must have the fitted size.

    Shapes: ``x`` [N, 3, H, W] in [-1, 1] -> [N, 3, H, W] in [-1, 1]; :attr:`perturbation` [1, 3, H, W] or None.

    Example::

        defense = CMUA(eps=0.05).fit((images, labels), [editor_a, editor_b])
        x_protected = defense.protect(x)  # no editor needed
    """

    needs_editor: ClassVar[bool] = False
    perturbation: torch.Tensor | None = None
    """The fitted perturbation [1, 3, H, W] on the [-1, 1] scale (None until :meth:`fit`)."""

    @abstractmethod
    def fit(self, data: Any, editors: Editor | Sequence[Editor]) -> UniversalDefense:
        """Fit :attr:`perturbation` on ``data`` (e.g. an ``(images, labels)`` pair) for ``editors``; returns self."""

    def _protect(self, x: torch.Tensor, editor: Editor | None, conditions: list) -> torch.Tensor:
        """``x + perturbation`` (projected by :meth:`_finish`); ``editor`` and ``conditions`` are ignored."""
        if self.perturbation is None:
            raise RuntimeError(f"{type(self).__name__} has no perturbation yet: call fit(data, editors) first.")
        if x.shape[1:] != self.perturbation.shape[1:]:
            raise ValueError(
                f"The universal perturbation is {tuple(self.perturbation.shape[1:])}; images are {tuple(x.shape[1:])}"
                f": protect images of the size {type(self).__name__} was fitted on (or fit it again)."
            )
        return x + self.perturbation.to(device=x.device, dtype=x.dtype)
