"""The testbed editor: a reduced StarGAN trained on the procedural faces, shipped with the package.

``load_editor("testbed")`` returns a :class:`~lora_patch_adapters.generators.stargan.StarGANEditor` over
:data:`TESTBED_ATTRIBUTES` (64x64 images, train-mode instance norm like StarGAN).
The weights file records its architecture, training command, seed and held-out PSNR
(:func:`testbed_record`); ``python -m lora_patch_adapters.training.testbed_editor`` retrains it.
"""

from __future__ import annotations

import json
import os

import torch

from ..attributes import TESTBED_ATTRIBUTES  # noqa: F401  (re-exported: the old import path)
from .checkpoints import CheckpointError, PathLike, load_into
from .stargan import StarGANEditor, StarGANGenerator

TESTBED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                               "testbed_editor.safetensors")


def testbed_record(path: PathLike | None = None) -> dict:
    """The training record stored in a testbed weights file (architecture, command, seed, held-out PSNR)."""
    from safetensors import safe_open

    path = os.fspath(path or TESTBED_WEIGHTS)
    if not os.path.isfile(path):
        raise CheckpointError(f"Testbed editor weights not found at {path!r}; the package installation is incomplete.")
    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {}
    if "lora_patch_testbed" not in metadata:
        raise CheckpointError(f"{path!r} is not a testbed editor file (no 'lora_patch_testbed' metadata).")
    return json.loads(metadata["lora_patch_testbed"])


def build_editor(checkpoint: PathLike | None = None, device: str | torch.device | None = None) -> StarGANEditor:
    """The shipped testbed editor (or one retrained to ``checkpoint``), in float32."""
    from safetensors.torch import load_file

    path = os.fspath(checkpoint or TESTBED_WEIGHTS)
    record = testbed_record(path)
    generator = StarGANGenerator(**record["arch"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(path).items()}
    load_into(generator, state, "the testbed editor", path)
    if device is not None:
        generator.to(device)
    return StarGANEditor(generator, attribute_names=TESTBED_ATTRIBUTES, name="testbed")
