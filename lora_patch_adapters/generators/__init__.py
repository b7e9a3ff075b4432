"""Face-editing generators that patches attach to, behind the :class:`Editor` protocol.

``load_editor(name, checkpoint=None, device=None)`` is the one entry point: ``name`` in :data:`EDITOR_NAMES`.
"""

from __future__ import annotations

import importlib

import torch

from .attgan import ATTGAN_ATTRIBUTES, AttGANEditor, AttGANGenerator, attgan_conditions
from .base import Editor, check_images, check_labels, set_mode
from .checkpoints import CheckpointError, PathLike, identify_layout, read_checkpoint
from .custom import CustomEditor, wrap
from .hisd import HISD_TAGS, HiSDCondition, HiSDEditor, HiSDGenerator
from .stargan import STARGAN_ATTRIBUTES, StarGANEditor, StarGANGenerator, stargan_conditions

# name -> (module, keyword arguments of its build_editor)
_BUILDERS: dict[str, tuple[str, dict]] = {
    "stargan": ("stargan", {}),
    "attgan": ("attgan", {"inject_layers": 0}),
    "attgan_inject1": ("attgan", {"inject_layers": 1}),
    "hisd": ("hisd", {}),
    "testbed": ("testbed", {}),
}
EDITOR_NAMES = tuple(_BUILDERS)


def load_editor(
    name: str, checkpoint: PathLike | None = None, device: str | torch.device | None = None
) -> Editor:
    """Build the editor ``name`` ("stargan", "attgan", "attgan_inject1", "hisd", "testbed").

    ``checkpoint``: the official weights file (StarGAN ``200000-G.ckpt``, AttGAN ``weights.199.pth``, HiSD
    ``gen_00600000.pt`` / ``checkpoint_256_celeba-hq.pt``), read with ``weights_only=True``; for "testbed" the shipped
    weights are used unless another testbed file is given. Official models without a checkpoint get random weights
    (with a warning). ``editor.generator`` is the ``nn.Module`` patches attach to.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown editor {name!r}; choose one of {list(EDITOR_NAMES)} (or wrap() your own module).")
    module_name, kwargs = _BUILDERS[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return module.build_editor(checkpoint=checkpoint, device=device, **kwargs)


# The generator modules are imported above so that every official layout is registered: a wrong checkpoint is then
# reported by what it is ("a attgan_inject1 checkpoint") whichever editor was asked for.

__all__ = [
    "ATTGAN_ATTRIBUTES",
    "EDITOR_NAMES",
    "HISD_TAGS",
    "STARGAN_ATTRIBUTES",
    "AttGANEditor",
    "AttGANGenerator",
    "CheckpointError",
    "CustomEditor",
    "Editor",
    "HiSDCondition",
    "HiSDEditor",
    "HiSDGenerator",
    "StarGANEditor",
    "StarGANGenerator",
    "attgan_conditions",
    "check_images",
    "check_labels",
    "identify_layout",
    "load_editor",
    "read_checkpoint",
    "set_mode",
    "stargan_conditions",
    "wrap",
]
