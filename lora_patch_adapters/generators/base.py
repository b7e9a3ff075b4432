"""The ``Editor`` protocol: what trainers, defenses and metrics see of a face-editing generator.

An editor owns a generator (``editor.generator``, the ``nn.Module`` patches attach to) and its condition format.
Everything else in the package only calls ``editor.edit(x, condition)`` and ``editor.conditions(labels)``.

Images are float tensors NCHW in [-1, 1]. Patching the generator with ``get_peft_model(editor.generator, config)``
injects the patch in place, so ``editor.edit`` runs the patched network from then on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .._checks import check_images

GeneratorMode = Literal["train", "eval"]


class Editor(ABC):
    """A face editor: a generator plus the way it is conditioned.

    Attributes:
        name: short identifier (``"stargan"``, ``"attgan"``, ``"hisd"``, ``"testbed"``, or a user's name).
        generator: the ``nn.Module`` that patches attach to.
        attribute_names: the attributes ``labels`` columns refer to, in order.
        generator_mode: ``"train"`` or ``"eval"``; :meth:`edit` puts the generator in this mode before running it
            (official StarGAN inference is train-mode instance norm, so its editor uses ``"train"``).
    """

    name: str = "editor"
    attribute_names: tuple[str, ...] = ()
    generator_mode: GeneratorMode = "eval"

    def __init__(self, generator: nn.Module) -> None:
        self.generator = generator

    # ------------------------------------------------------------------------------------------------ to implement
    @abstractmethod
    def _run(self, x: torch.Tensor, condition: Any) -> torch.Tensor:
        """Run the generator on ``x`` [N, 3, H, W] for ``condition``; the mode is already set."""

    @abstractmethod
    def conditions(self, labels: torch.Tensor) -> list[Any]:
        """Target conditions for images with source attribute ``labels`` [N, A] (0/1), built the way the official
        test script does; one entry per edit."""

    # ---------------------------------------------------------------------------------------------------- provided
    def edit(self, x: torch.Tensor, condition: Any) -> torch.Tensor:
        """Edited images [N, 3, H, W] for images ``x`` [N, 3, H, W] in [-1, 1] under ``condition``."""
        check_images(x)
        set_mode(self.generator, self.generator_mode)
        return self._run(x, condition)

    __call__ = edit

    def concat_conditions(self, conditions: Sequence[Any]) -> Any | None:
        """One condition for images stacked along the batch, condition by condition (``torch.cat`` of the images
        for ``conditions[0]``, then ``conditions[1]``, ...), or None when the format cannot be stacked (callers then
        run the conditions one by one). Tensor conditions [N, ...] are concatenated."""
        tensors = bool(conditions) and all(isinstance(c, torch.Tensor) for c in conditions)
        if tensors and len({tuple(c.shape[1:]) for c in conditions}) == 1:
            return torch.cat(list(conditions))
        return None

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Editor:
        """Move the generator (in place) and return the editor."""
        self.generator.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        for tensor in self.generator.parameters():
            return tensor.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, attributes={list(self.attribute_names)}, "
            f"generator_mode={self.generator_mode!r}, generator={type(self.generator).__name__})"
        )


def set_mode(module: nn.Module, mode: GeneratorMode) -> None:
    """Put ``module`` in train or eval mode, touching it only if its mode differs."""
    want_train = mode == "train"
    if module.training != want_train or any(m.training != want_train for m in module.modules()):
        module.train(want_train)


def check_labels(labels: Any, attribute_names: Sequence[str]) -> torch.Tensor:
    """``labels`` as a float tensor [N, len(attribute_names)] of 0/1, or a clear error."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 2 or labels.shape[1] != len(attribute_names):
        raise ValueError(
            f"Labels must be shaped [N, {len(attribute_names)}] over {list(attribute_names)}, "
            f"got {tuple(labels.shape)}."
        )
    labels = labels.float()
    if not torch.all((labels == 0) | (labels == 1)):
        raise ValueError("Labels must be 0/1 attribute flags (CelebA's -1 means 0: use (labels > 0).float()).")
    return labels
