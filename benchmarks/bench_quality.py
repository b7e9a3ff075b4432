"""Bypass quality: the fast training path vs the reference-style loop, on the embedded testbed editor (CPU-sized).

Both train a bypass patch (paper preset, rank 8) from the same base editor on the same testbed faces for one epoch,
then PGD (eps 0.05, 10 x 0.01) is evaluated on held-out faces x 5 target conditions, before and after patching
(default scenario), and the patched clean edits are compared with the base clean edits (PSNR). The reference-style
loop (benchmarks/reference_loop.py) takes one Adam step per condition in fp32 with a two-branch patch; the fast path
is ``PatchTrainer`` with ``fast=True`` and the batched schedule (one step per batch over all conditions).

    python benchmarks/bench_quality.py                       # 128 training faces (batches of 2), 24 held-out
    python benchmarks/bench_quality.py --precision bf16      # the fast path under bf16 autocast
    python benchmarks/bench_quality.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_loop import ReferenceStyleLoop

import lora_patch_adapters as lpa
from lora_patch_adapters.data.testbed import testbed_faces
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.evaluation import evaluate_defense
from lora_patch_adapters.generators import load_editor
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import PatchTrainer, TrainingConfig


def evaluate(base, patched, test_x, test_labels, seed: int) -> dict[str, float]:
    result = evaluate_defense(PGD(eps=0.05, steps=10, step_size=0.01, seed=seed), base, test_x, test_labels,
                              patched=patched, scenario="default")
    return {"success_rate_base": result.success_rate_base, "success_rate_patched": result.success_rate_patched,
            "clean_psnr_db": result.metrics["patched_clean"]["psnr"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=128)
    parser.add_argument("--eval-images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--inner-steps", type=int, default=5, help="inner PGD steps while training (eps 0.05)")
    parser.add_argument("--reference-lr", type=float, default=3e-3)
    parser.add_argument("--fast-lr", type=float, default=2e-2,
                        help="the batched schedule takes 5x fewer optimiser steps and needs a larger step")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the fast path's precision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    train_x, train_labels = testbed_faces(args.train_images, seed=args.seed, split="train")
    test_x, test_labels = testbed_faces(args.eval_images, seed=args.seed, split="test")
    base = load_editor("testbed")
    patch = lpa.LoraPatchConfig.from_preset("paper", r=8, init_weights="zero")
    step_size = 2 * 0.05 / args.inner_steps
    results = {}

    start = time.perf_counter()
    reference_editor = load_editor("testbed")
    reference = ReferenceStyleLoop(reference_editor, patch, lr=args.reference_lr, eps=0.05, steps=args.inner_steps,
                                   step_size=step_size, lr_schedule="cosine", seed=args.seed)
    reference.train(train_x, train_labels, args.batch, seed=args.seed)
    results["reference"] = {"train_seconds": time.perf_counter() - start,
                            **evaluate(base, reference_editor, test_x, test_labels, args.seed)}

    start = time.perf_counter()
    fast_editor = load_editor("testbed")
    fast = PatchTrainer(fast_editor, patch=patch, loss=MMFALoss.pixel_only(),
                        attack=PGD(eps=0.05, steps=args.inner_steps, step_size=step_size, seed=args.seed),
                        config=TrainingConfig(batch_size=args.batch, lr=args.fast_lr,
                                              lr_schedule="cosine", schedule="batched", fast=True,
                                              precision=args.precision, seed=args.seed, progress=False))
    fast.train((train_x, train_labels))
    results["fast"] = {"train_seconds": time.perf_counter() - start,
                       **evaluate(base, fast_editor, test_x, test_labels, args.seed)}

    gap = {"success_rate_points": 100 * abs(results["fast"]["success_rate_patched"]
                                            - results["reference"]["success_rate_patched"]),
           "clean_psnr_db": abs(results["fast"]["clean_psnr_db"] - results["reference"]["clean_psnr_db"])}
    out = {"settings": vars(args), "fast_runtime": fast.runtime.describe(), "results": results, "gap": gap,
           "within_targets": gap["success_rate_points"] <= 5 and gap["clean_psnr_db"] <= 0.5,
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    samples = args.eval_images * 5
    print(f"testbed, {args.train_images} training faces x 5 targets, batch {args.batch}, inner PGD-{args.inner_steps}; "
          f"PGD-10 evaluated on {args.eval_images} held-out faces x 5 targets ({samples} edits)")
    print(f"{'path':24s} {'train s':>8s} {'success before':>15s} {'success after':>14s} {'clean PSNR':>11s}")
    for name, r in results.items():
        print(f"{name:24s} {r['train_seconds']:8.1f} {100 * r['success_rate_base']:14.1f}% "
              f"{100 * r['success_rate_patched']:13.1f}% {r['clean_psnr_db']:9.2f} dB")
    print(f"gap: {gap['success_rate_points']:.1f} points success rate (target <= 5), {gap['clean_psnr_db']:.2f} dB "
          f"clean PSNR (target <= 0.5): {'within' if out['within_targets'] else 'OUTSIDE'} the targets")


if __name__ == "__main__":
    main()
