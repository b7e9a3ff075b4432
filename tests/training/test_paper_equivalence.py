"""One step of the "paper" recipe equals the paper's loop re-derived here from its equations.

Qu et al. (arXiv 2510.03747), with their code's settings: for every target condition c of a batch x, in turn,

1. y_now = G_patched(x, c) and y_ori = G_base(x, c) (no gradient);
2. inner PGD against the *current* patched generator: from the start X_0, K times
   X <- clip_[-1,1](x + clip_eps(X + a * sign(grad_X MSE(G_patched(X, c), y_now)) - x));
3. outer loss MSE(G_patched(x, c), y_ori) + MSE(G_patched(X_K, c), y_ori) (the pixel term; the paper's feature
   terms are weighted 0 here, as in the authors' released training loop);
4. one Adam step (lr 1e-3, betas (0.5, 0.999)) on the patch parameters only.

The trainer's random PGD start is a seeded uniform draw; the test takes the same start (``derive_seed`` and
``seeded_uniform`` are the public seeding functions) and re-derives everything else.

Both run in float64: some patch gradients are zero in exact arithmetic (e.g. taps that only see StarGAN's constant
label maps) and, in float32, pure rounding noise (~1e-8) whose value depends on the summation order (one batched
forward of clean and protected images vs two); Adam divides by sqrt(v) + 1e-8 and turns such noise into updates of
the size of the learning rate. In float64 the noise is ~1e-17 and the comparison measures the loop, not the rounding.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lora_patch_adapters import LoraPatchConfig
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.defenses.base import seeded_uniform
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import BypassTrainer, TrainingConfig, derive_seed

from .conftest import tiny_data, tiny_editor

EPS, STEPS, STEP_SIZE = 0.05, 3, 0.01


def _paper_loop(patched, base, x, labels, seed: int) -> None:
    """The paper's per-condition min-max step, written from the equations above (patched is modified)."""
    params = [p for p in patched.generator.parameters() if p.requires_grad]
    adam = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
    for k, condition in enumerate(patched.conditions(labels)):
        with torch.no_grad():
            y_now = patched.edit(x, condition)
            y_ori = base.edit(x, condition)
        start = seeded_uniform(x, EPS, derive_seed(seed, 0, k, 0)).to(x.dtype)
        adversarial = torch.clamp(x + torch.clamp(start, -EPS, EPS), -1, 1).detach()
        for _ in range(STEPS):
            adversarial.requires_grad_(True)
            gap = F.mse_loss(patched.edit(adversarial, condition), y_now)
            (grad,) = torch.autograd.grad(gap, adversarial)
            step = adversarial.detach() + STEP_SIZE * grad.sign()
            adversarial = torch.clamp(x + torch.clamp(step - x, -EPS, EPS), -1, 1).detach()
        loss = F.mse_loss(patched.edit(x, condition), y_ori) + F.mse_loss(patched.edit(adversarial, condition), y_ori)
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()


def test_one_paper_step_is_the_papers_loop():
    x, labels = tiny_data(4)
    x = x.double()
    config = TrainingConfig.from_preset("paper", max_steps=1, progress=False)
    assert config.preset_name() == "paper" and config.schedule == "per_condition" and not config.fast
    editor = tiny_editor()
    editor.generator.double()
    base = copy.deepcopy(editor)
    trainer = BypassTrainer(editor, patch=LoraPatchConfig.from_preset("paper", r=4),
                            attack=PGD(eps=EPS, steps=STEPS, step_size=STEP_SIZE),
                            loss=MMFALoss.pixel_only(), config=config)
    derived = copy.deepcopy(trainer.editor)  # the same patched generator, same initial patch

    def patch_of(editor) -> dict[str, torch.Tensor]:
        return {n: p for n, p in editor.generator.named_parameters() if p.requires_grad}

    before = {n: p.detach().clone() for n, p in patch_of(trainer.editor).items()}
    trainer.train_step(x, labels)
    _paper_loop(derived, base, x, labels, config.seed)

    ours, theirs = patch_of(trainer.editor), patch_of(derived)
    assert set(ours) == set(theirs) == set(before) and ours
    assert all(not torch.equal(ours[n], before[n]) for n in ours)  # every patch tensor moved: not a vacuous check
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=0, atol=1e-6, msg=name)
