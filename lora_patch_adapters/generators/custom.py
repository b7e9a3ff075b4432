"""Wrap any ``nn.Module`` as an :class:`~lora_patch_adapters.generators.base.Editor` ("attach patches to custom
generators")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .base import Editor, GeneratorMode, check_labels


class CustomEditor(Editor):
    """An editor around a user's generator; see :func:`wrap`."""

    def __init__(
        self,
        module: nn.Module,
        edit_fn: Callable[[nn.Module, torch.Tensor, Any], torch.Tensor],
        conditions_fn: Callable[[torch.Tensor], list] | None = None,
        attribute_names: Sequence[str] = (),
        mode: GeneratorMode = "eval",
        name: str = "custom",
    ) -> None:
        super().__init__(module)
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}.")
        self.edit_fn = edit_fn
        self.conditions_fn = conditions_fn
        self.attribute_names = tuple(attribute_names)
        self.generator_mode = mode
        self.name = name

    def _run(self, x: torch.Tensor, condition: Any) -> torch.Tensor:
        y = self.edit_fn(self.generator, x, condition)
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[0] != x.shape[0]:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"edit_fn of editor {self.name!r} must return images [N={x.shape[0]}, C, H, W], got {got}."
            )
        return y

    def conditions(self, labels: torch.Tensor) -> list:
        if self.conditions_fn is None:
            raise ValueError(
                f"Editor {self.name!r} was wrapped without conditions_fn, so it cannot build target conditions from "
                "labels; pass conditions_fn=... to wrap()."
            )
        if self.attribute_names:
            labels = check_labels(labels, self.attribute_names)
        return list(self.conditions_fn(labels))


def wrap(
    module: nn.Module,
    edit_fn: Callable[[nn.Module, torch.Tensor, Any], torch.Tensor] | None = None,
    conditions_fn: Callable[[torch.Tensor], list] | None = None,
    attribute_names: Sequence[str] = (),
    mode: GeneratorMode = "eval",
    name: str = "custom",
) -> CustomEditor:
    """Turn ``module`` into an Editor.

    ``edit_fn(module, x, condition) -> y`` runs an edit (default: ``module(x, condition)``); ``conditions_fn(labels)``
    builds target conditions from source labels [N, A]; ``mode`` is the train/eval mode the module runs in.
    ``editor.generator`` is ``module`` itself, so ``get_peft_model(editor.generator, config)`` patches it in place.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"wrap() needs an nn.Module, got {type(module).__name__}.")
    if edit_fn is None:
        edit_fn = _call_module
    elif not callable(edit_fn):
        raise TypeError(f"edit_fn must be callable as edit_fn(module, x, condition), got {type(edit_fn).__name__}.")
    return CustomEditor(module, edit_fn, conditions_fn, attribute_names, mode, name)


def _call_module(module: nn.Module, x: torch.Tensor, condition: Any) -> torch.Tensor:
    return module(x) if condition is None else module(x, condition)
