"""``BypassTrainer``: the paper's attack — a patch under which a proactive defense no longer disrupts the edit.

Target = the frozen base generator's clean edit: the patched generator must reproduce it on clean images *and* on
images protected by an attack run against the patched generator itself. Defaults: the ``"paper"`` patch preset
(rank 8, alpha 2, basic gate at -1, Kaiming-initialised A and B, every Conv2d / ConvTranspose2d / Linear), PGD eps
0.05 with 10 steps of 0.01, the MMFA loss with the paper's weights (pixel 1, ResNet-50 0.1, BLIP 0.1), Adam 1e-3.
"""

from __future__ import annotations

from .trainer import PatchTrainer


class BypassTrainer(PatchTrainer):
    """Trains a bypass patch (see :class:`~lora_patch_adapters.training.trainer.PatchTrainer` for the arguments)."""

    kind = "bypass"
