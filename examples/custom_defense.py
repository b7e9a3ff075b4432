"""Bring your own proactive defense to ``lora-patch audit`` — no change to the package needed.

A defense follows the protocol ``protect(x, editor, condition) -> x_protected`` (images [N, 3, H, W] in [-1, 1];
``editor.edit(x, condition)`` runs the face editor). This file shows the two ways to write one:

* ``MomentumPGD``: a :class:`~lora_patch_adapters.defenses.Defense` subclass (momentum iterative FGSM, Dong et al.
  2018, as a disruption), built by the audit with ``eps`` and ``seed``;
* ``random_noise``: a plain function with an ``eps`` attribute (a sanity baseline that should not disrupt anything).

Audit them (testbed editor, CPU, a few minutes)::

    lora-patch audit --defense examples/custom_defense.py:MomentumPGD,examples/custom_defense.py:random_noise \\
        --budgets 16,32 --eval-images 8 --out runs/audit_custom

or, with this folder on PYTHONPATH, ``--defense custom_defense:MomentumPGD``. Running this file checks both on a few
testbed faces.
"""

from __future__ import annotations

import torch

from lora_patch_adapters.defenses import Defense
from lora_patch_adapters.defenses.base import clean_edits, disruption_loss, project


class MomentumPGD(Defense):
    """Iterative signed-gradient ascent on the editor's output change, with an L1-normalised gradient momentum."""

    name = "momentum_pgd"

    def __init__(self, eps: float = 0.05, steps: int = 10, decay: float = 1.0, seed: int = 0) -> None:
        self.eps, self.steps, self.decay, self.seed = eps, steps, decay, seed

    def _protect(self, x: torch.Tensor, editor, conditions: list) -> torch.Tensor:
        references = clean_edits(editor, x, conditions)
        step = self.eps / self.steps * 2
        # a random start: at x itself the output change is zero and so is its gradient
        x_adv, velocity = project(x + self.start_noise(x, self.eps), x, self.eps), torch.zeros_like(x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(disruption_loss(editor, x_adv, conditions, references), x_adv)
            velocity = self.decay * velocity + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
            x_adv = project(x_adv.detach() + step * velocity.sign(), x, self.eps)
        return x_adv


def random_noise(x: torch.Tensor, editor, condition) -> torch.Tensor:
    """Uniform noise in the budget, the same for every call (seeded): what a defense must beat to mean anything."""
    generator = torch.Generator().manual_seed(0)
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * random_noise.eps
    return (x + noise.to(x.device, x.dtype)).clamp(-1, 1)


random_noise.eps = 0.05


if __name__ == "__main__":
    from lora_patch_adapters import load_editor, testbed_faces
    from lora_patch_adapters.defenses.plugins import load_defense
    from lora_patch_adapters.evaluation import evaluate_defense

    editor = load_editor("testbed")
    images, labels = testbed_faces(4, seed=0, split="test")
    for spec in (f"{__file__}:MomentumPGD", f"{__file__}:random_noise"):
        defense = load_defense(spec)
        result = evaluate_defense(defense, editor, images, labels)
        print(f"{defense.name}: disrupts {100 * result.success_rate_base:.1f}% of the edits "
              f"(MSE to the clean edit {result.metrics['base_protected']['mse']:.4f}, "
              f"L-inf {result.perturbation['linf_max']:.4f})")
