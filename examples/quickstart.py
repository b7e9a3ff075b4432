"""Quickstart: patch the shipped testbed face editor, train the patch a few steps, save it, reload it.

The testbed editor is a small StarGAN trained on the package's procedural faces (``load_editor("testbed")``). The
patch is trained the way a bypass patch is (a one-step version of the paper's min-max loop): each step builds an
FGSM perturbation against the *current* patched generator, then pulls the patched outputs on the clean and on the
perturbed images toward the frozen generator's clean edit. Runs on CPU in seconds; nothing is downloaded.

    python examples/quickstart.py --steps 30 --out runs/quickstart
"""

from __future__ import annotations

import argparse
import os
import time

import peft
import torch
import torch.nn.functional as F

import lora_patch_adapters as lpa


def fgsm(editor: lpa.Editor, x: torch.Tensor, c: torch.Tensor, eps: float) -> torch.Tensor:
    """One-step L-inf attack maximising MSE(edit(x'), edit(x)), clamped to [-1, 1]."""
    with torch.no_grad():
        clean = editor.edit(x, c)
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(-1, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.mse_loss(editor.edit(x_adv, c), clean), x_adv)
    return (x + eps * grad.sign()).clamp(-1, 1).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps (default 30)")
    parser.add_argument("--batch", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--eps", type=float, default=0.05, help="perturbation budget in [-1, 1] units (default 0.05)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=os.path.join("runs", "quickstart"), help="where the patch is saved")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    editor = lpa.load_editor("testbed")
    x, labels = lpa.testbed_faces(args.batch, seed=args.seed, split="train")
    c = editor.conditions(labels)[1]  # make everyone blond
    with torch.no_grad():
        y_ref = editor.edit(x, c)  # the frozen generator's clean edit
    x_attack = fgsm(editor, x, c, args.eps)
    with torch.no_grad():
        disruption_before = F.mse_loss(editor.edit(x_attack, c), y_ref).item()

    config = lpa.LoraPatchConfig.from_preset("paper", init_weights="zero")
    model = lpa.get_peft_model(editor.generator, config)  # in place: editor.edit now runs the patched network
    n_trainable, n_total = model.get_nb_trainable_parameters()
    layers = model.peft_config["default"].target_modules
    print(f"patched {len(layers)} layers of the testbed editor ({config.r=}, {config.gate=}, "
          f"scale={config.scale:.3f}); trainable {n_trainable:,} of {n_total:,} parameters")

    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.5, 0.999))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x_adv = fgsm(editor, x, c, args.eps)  # attack the current patched model
        loss = F.mse_loss(editor.edit(x, c), y_ref) + F.mse_loss(editor.edit(x_adv, c), y_ref)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step:3d}  loss {loss.item():.5f}")
    elapsed = time.perf_counter() - start

    with torch.no_grad():
        trained = editor.edit(x, c)
        disruption_after = F.mse_loss(editor.edit(x_attack, c), y_ref).item()
    gates = [torch.sigmoid(p).item() for n, p in model.named_parameters() if n.endswith("gate.default.logit")]
    print(f"trained {args.steps} steps in {elapsed:.1f} s; gates now {min(gates):.3f}..{max(gates):.3f}")
    print(f"MSE(G(x_attack), clean edit): base {disruption_before:.5f} -> patched {disruption_after:.5f}")

    model.save_pretrained(args.out)
    files = {name: os.path.getsize(os.path.join(args.out, name)) for name in sorted(os.listdir(args.out))}
    print(f"saved to {args.out}: " + ", ".join(f"{k} ({v:,} B)" for k, v in files.items()))

    fresh = lpa.load_editor("testbed")
    peft.PeftModel.from_pretrained(fresh.generator, args.out)  # patches fresh.generator in place
    with torch.no_grad():
        reload_diff = (fresh.edit(x, c) - trained).abs().max().item()  # edit() restores StarGAN's train mode
        plain = lpa.load_editor("testbed")
        plain.generator = peft.PeftModel.from_pretrained(plain.generator, args.out).merge_and_unload()
        merged = plain.generator
        merge_diff = (plain.edit(x, c) - trained).abs().max().item()
    print(f"reloaded onto a fresh generator: max |difference| = {reload_diff:.2e}")
    print(f"merged into the weights ({type(merged).__name__}, no adapter left): max |difference| = {merge_diff:.2e}")


if __name__ == "__main__":
    main()
