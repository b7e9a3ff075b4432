"""The reference-style training loop the fast path is measured against (benchmarks only, not part of the package).

It is written the way adversarial patch training is usually written, and the way the paper describes its schedule:

* a Python loop over the target conditions, one Adam step per (batch, condition);
* fp32, the patch unmerged and applied as a separate branch (``forward_mode="two_branch"``: base conv + A conv + B
  conv per layer);
* the frozen base edit recomputed for every condition, the inner PGD against the current patched model with
  ``loss.backward()`` and ``x_adv.grad`` (which also fills the patch's gradients, thrown away before the outer step);
* clean and protected outputs in two forwards; ``loss.item()`` after every step.

The maths is the package's min-max loop: ``L(G_p(x), y_ref) + L(G_p(x_adv), y_ref)`` with ``y_ref`` the base clean edit
and ``x_adv`` PGD (eps, steps x step_size, uniform random start) maximising ``MSE(G_p(x_adv), G_p(x))``.
"""

from __future__ import annotations

import copy
import math

import peft
import torch
import torch.nn.functional as F

from lora_patch_adapters.generators.base import Editor
from lora_patch_adapters.tuner.config import LoraPatchConfig


class ReferenceStyleLoop:
    """Trains a patch on ``editor.generator`` (patched in place) with the reference-style loop."""

    def __init__(self, editor: Editor, patch: LoraPatchConfig, lr: float = 1e-3, betas: tuple = (0.5, 0.999),
                 eps: float = 0.05, steps: int = 10, step_size: float = 0.01, lr_schedule: str = "constant",
                 seed: int = 0) -> None:
        torch.manual_seed(seed)
        patch = copy.deepcopy(patch)
        patch.forward_mode = "two_branch"
        self.editor = editor
        self.model = peft.get_peft_model(editor.generator, patch)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr, betas=betas)
        self.lr, self.lr_schedule = lr, lr_schedule
        self.eps, self.steps, self.step_size = eps, steps, step_size
        self.generator = torch.Generator(device=editor.device).manual_seed(seed)
        self.updates = 0
        self.total_updates: int | None = None
        self.history: list[float] = []

    def pgd(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self.editor.edit(x, condition)
        noise = torch.rand(x.shape, generator=self.generator, device=x.device) * 2 - 1
        x_adv = (x + self.eps * noise).clamp(-1, 1)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            loss = F.mse_loss(self.editor.edit(x_adv, condition), y)
            loss.backward()
            step = x_adv + self.step_size * x_adv.grad.sign()
            x_adv = (x + (step - x).clamp(-self.eps, self.eps)).clamp(-1, 1)
        return x_adv.detach()

    def _set_lr(self) -> None:
        if self.lr_schedule == "cosine" and self.total_updates and self.total_updates > 1:
            progress = min(self.updates, self.total_updates - 1) / (self.total_updates - 1)
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """One batch: one optimiser step per target condition; returns the mean loss."""
        losses = []
        for condition in self.editor.conditions(labels):
            with torch.no_grad(), self.model.disable_adapter():
                y_ref = self.editor.edit(x, condition)
            x_adv = self.pgd(x, condition)
            self._set_lr()
            self.optimizer.zero_grad()
            loss = F.mse_loss(self.editor.edit(x, condition), y_ref) + F.mse_loss(self.editor.edit(x_adv, condition),
                                                                                 y_ref)
            loss.backward()
            self.optimizer.step()
            self.updates += 1
            losses.append(loss.item())
        self.history.append(sum(losses) / len(losses))
        return self.history[-1]

    def train(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, epochs: int = 1,
              seed: int = 0) -> None:
        n = images.shape[0]
        batches = math.ceil(n / batch_size)
        self.total_updates = batches * epochs * len(self.editor.conditions(labels[:1]))
        for epoch in range(epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
            for i in range(0, n, batch_size):
                index = order[i : i + batch_size]
                self.train_step(images[index].to(self.editor.device), labels[index].to(self.editor.device))
