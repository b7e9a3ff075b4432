"""Train the testbed editor: a reduced StarGAN on the procedural faces, supervised by rendered ground truth.

Phase 1 (``steps``): each step draws fresh training identities, renders them under their own attributes (the input)
and under a target (one of the StarGAN-style flips, or the source attributes for reconstruction), and regresses the
generator output onto the rendered target with an L1 + MSE loss.

Phase 2 (``fragility_steps``): a regression-trained editor is far more robust to small input perturbations than
GAN-trained face editors are (benchmarks/README.md has the measurement; the literature reports ~100% PGD disruption on
StarGAN). The testbed exists to show defenses and patches at work,
so phase 2 keeps the edit loss and adds ``fragility_weight * relu(fragility_margin - MSE(G(x'), G(x)))`` for a
one-step FGSM ``x'`` (budget ``fragility_eps``) against the current model: it raises the editor's sensitivity to
small perturbations to the level of a GAN generator while keeping its edits.

The result is shipped as ``assets/testbed_editor.safetensors`` with its configuration, training command, seed,
held-out edit PSNR and PGD disruption rate in the file's metadata.

    python -m lora_patch_adapters.training.testbed_editor \
        --out lora_patch_adapters/assets/testbed_editor.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.testbed import render_faces, sample_faces
from ..defenses import PGD
from ..generators.stargan import StarGANEditor, StarGANGenerator, stargan_conditions
from ..generators.testbed import TESTBED_ATTRIBUTES
from ..version import __version__

DEFAULT_ARCH = {"conv_dim": 24, "c_dim": len(TESTBED_ATTRIBUTES), "repeat_num": 3}


def psnr_01(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in [-1, 1], computed by torchmetrics on [0, 1] over the whole batch (data
    range 1), capped at 120 dB (identical batches)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # imported on use: it takes ~2 s to import

    value = peak_signal_noise_ratio((a.clamp(-1, 1) + 1) / 2, (b.clamp(-1, 1) + 1) / 2, data_range=1.0).item()
    return min(value, 120.0)


def pgd_disruption(generator: StarGANGenerator, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Disrupting Deepfakes' PGD (eps 0.05, 10 steps of 0.01, random start) against the editor, per condition:
    mean MSE between the edits of protected and clean images, and the fraction above 0.05."""
    editor = StarGANEditor(generator, attribute_names=TESTBED_ATTRIBUTES, name="testbed")
    requires = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    values = []
    for condition in editor.conditions(labels):
        x_adv = PGD().protect(x, editor, condition)
        with torch.no_grad():
            values.append((editor.edit(x_adv, condition) - editor.edit(x, condition)).square().mean(dim=(1, 2, 3)))
    for p, flag in zip(generator.parameters(), requires):
        p.requires_grad_(flag)
    mse = torch.cat(values)
    return {"pgd_mse": mse.mean().item(), "pgd_success_rate": (mse > 0.05).float().mean().item()}


@torch.no_grad()
def evaluate(generator: StarGANGenerator, n: int = 200, size: int = 64, seed: int = 0, pgd_faces: int = 50
             ) -> dict[str, float]:
    """PSNR (dB) of the editor's edits vs the rendered ground truth on ``n`` held-out (test split) faces, per
    target attribute and overall, the identity baseline (output = input), and the PGD disruption rate on the first
    ``pgd_faces`` of them."""
    generator.train()  # StarGAN-style inference: instance norm with per-image statistics
    identity, labels = sample_faces(n, seed=seed, split="test")
    x = render_faces(identity, labels, size)
    report: dict[str, float] = {}
    edits, truths = [], []
    for name, target in zip(TESTBED_ATTRIBUTES, stargan_conditions(labels, TESTBED_ATTRIBUTES)):
        changed = (target != labels).any(1)  # a no-op hair flip is not an edit
        truth = render_faces(identity, target, size)[changed]
        edit = torch.cat([generator(x[i : i + 50], target[i : i + 50]) for i in range(0, n, 50)])[changed]
        report[f"psnr_{name}"] = psnr_01(edit, truth)
        edits.append(edit)
        truths.append(truth)
    edit_all, truth_all = torch.cat(edits), torch.cat(truths)
    x_all = torch.cat([x[(t != labels).any(1)] for t in stargan_conditions(labels, TESTBED_ATTRIBUTES)])
    report["psnr_edits"] = psnr_01(edit_all, truth_all)
    report.update(pgd_disruption(generator, x[:pgd_faces], labels[:pgd_faces]))
    report["psnr_identity_baseline"] = psnr_01(x_all, truth_all)
    report["psnr_reconstruction"] = psnr_01(generator(x, labels), x)
    return report


def _sample_batch(batch: int, seed: int, size: int, pick: torch.Generator):
    """Fresh training faces, a random target per face (a flip, or the source labels), input and rendered target."""
    identity, labels = sample_faces(batch, seed=seed, split="train")
    targets = torch.stack(stargan_conditions(labels, TESTBED_ATTRIBUTES) + [labels])  # the last one reconstructs
    choice = torch.randint(0, targets.shape[0], (batch,), generator=pick)
    target = targets[choice, torch.arange(batch)]
    return render_faces(identity, labels, size), target, render_faces(identity, target, size)


def train(
    steps: int = 2500,
    batch: int = 16,
    size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    arch: dict | None = None,
    log_every: int = 250,
    fragility_steps: int = 600,
    fragility_weight: float = 10.0,
    fragility_margin: float = 0.15,
    fragility_eps: float = 0.05,
    fragility_lr: float = 1e-3,
) -> tuple[StarGANGenerator, dict]:
    """Train a testbed editor from scratch (phase 1, then phase 2); returns the generator and a record of the run."""
    torch.manual_seed(seed)
    arch = dict(DEFAULT_ARCH, **(arch or {}))
    generator = StarGANGenerator(**arch).train()
    optimiser = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)
    pick = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    for step in range(steps):
        x, target, y = _sample_batch(batch, seed * 1_000_000 + step, size, pick)
        out = generator(x, target)
        loss = F.l1_loss(out, y) + F.mse_loss(out, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.0f} s", flush=True)
    phase1_seconds = time.perf_counter() - start
    optimiser = torch.optim.Adam(generator.parameters(), lr=fragility_lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(fragility_steps, 1))
    noise = torch.Generator().manual_seed(seed + 2)
    for step in range(fragility_steps):
        x, target, y = _sample_batch(batch, seed * 1_000_000 + steps + step, size, pick)
        out = generator(x, target)
        edit_loss = F.l1_loss(out, y) + F.mse_loss(out, y)
        start_noise = (torch.rand(x.shape, generator=noise) * 2 - 1) * fragility_eps
        x_adv = (x + start_noise).clamp(-1, 1).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.mse_loss(generator(x_adv, target), out.detach()), x_adv)
        x_adv = (x + fragility_eps * grad.sign()).clamp(-1, 1).detach()
        sensitivity = (generator(x_adv, target) - out.detach()).square().mean(dim=(1, 2, 3))
        loss = edit_loss + fragility_weight * F.relu(fragility_margin - sensitivity).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if log_every and (step % log_every == 0 or step == fragility_steps - 1):
            print(f"fragility step {step:4d}  edit loss {edit_loss.item():.4f}  sensitivity "
                  f"{sensitivity.mean().item():.4f}  {time.perf_counter() - start:6.0f} s", flush=True)
    record = {
        "arch": arch,
        "steps": steps,
        "batch": batch,
        "size": size,
        "lr": lr,
        "seed": seed,
        "fragility": {"steps": fragility_steps, "weight": fragility_weight, "margin": fragility_margin,
                      "eps": fragility_eps, "lr": fragility_lr},
        "train_seconds": round(time.perf_counter() - start, 1),
        "phase1_seconds": round(phase1_seconds, 1),
        "torch": torch.__version__,
        "package_version": __version__,
    }
    return generator, record


def save_editor(generator: StarGANGenerator, record: dict, path: str, half: bool = True) -> None:
    """Write the weights (fp16 by default, to keep the shipped file small) and the record as safetensors metadata."""
    from safetensors.torch import save_file

    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in generator.state_dict().items()
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(state, tmp, metadata={"lora_patch_testbed": json.dumps(record, sort_keys=True)})
    os.replace(tmp, path)
    os.chmod(path, 0o644)  # a package data file, readable by everyone


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conv-dim", type=int, default=DEFAULT_ARCH["conv_dim"])
    parser.add_argument("--repeat-num", type=int, default=DEFAULT_ARCH["repeat_num"])
    parser.add_argument("--fragility-steps", type=int, default=600)
    parser.add_argument("--fragility-weight", type=float, default=10.0)
    parser.add_argument("--eval-faces", type=int, default=200)
    args = parser.parse_args(argv)
    generator, record = train(
        steps=args.steps,
        batch=args.batch,
        size=args.size,
        lr=args.lr,
        seed=args.seed,
        arch={"conv_dim": args.conv_dim, "repeat_num": args.repeat_num},
        fragility_steps=args.fragility_steps,
        fragility_weight=args.fragility_weight,
    )
    record["command"] = "python -m lora_patch_adapters.training.testbed_editor " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    record["held_out"] = evaluate(generator, n=args.eval_faces, size=args.size)
    save_editor(generator, record, args.out)
    print(json.dumps(record["held_out"], indent=2))


if __name__ == "__main__":
    main()
