"""Does the learnable gate keep the patch's gradient norms bounded? Gate "basic" vs "none", side by side.

Trains two bypass patches on the shipped testbed editor with identical settings (the paper's patch: rank 8,
alpha 2, Kaiming-initialised A and B; inner PGD eps 0.05; Adam 1e-3) except the gate, and prints statistics of the
global L2 norm of the patch gradient (logged by the trainer before any clipping) and the final losses.

    python benchmarks/gate_grad_norms.py --steps 20 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import BypassTrainer, TrainingConfig


def run(gate: str, args: argparse.Namespace) -> dict:
    editor = lpa.load_editor("testbed")
    images, labels = lpa.testbed_faces(args.steps * args.batch_size, seed=args.seed, split="train")
    trainer = BypassTrainer(
        editor,
        patch=lpa.LoraPatchConfig.from_preset("paper", gate=gate),
        attack=PGD(eps=0.05, steps=args.pgd_steps, step_size=2 * 0.05 / args.pgd_steps),
        loss=MMFALoss.pixel_only(),
        config=TrainingConfig(batch_size=args.batch_size, seed=args.seed, progress=False),
    )
    start = time.perf_counter()
    result = trainer.train((images, labels))
    norms = [h["grad_norm"] for h in result.history]
    return {
        "gate": gate,
        "grad_norm_max": max(norms),
        "grad_norm_mean": statistics.fmean(norms),
        "grad_norm_median": statistics.median(norms),
        "grad_norm_first": norms[0],
        "grad_norm_last": norms[-1],
        "loss_first": result.history[0]["loss"],
        "loss_last": result.history[-1]["loss"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rows = [run(gate, args) for gate in ("basic", "none")]
    ratio = rows[1]["grad_norm_max"] / rows[0]["grad_norm_max"]
    if args.json:
        print(json.dumps({"rows": rows, "max_norm_ratio_none_over_basic": ratio, "torch": torch.__version__}))
        return
    keys = ["grad_norm_max", "grad_norm_mean", "grad_norm_median", "grad_norm_first", "grad_norm_last", "loss_first",
            "loss_last", "seconds"]
    print(f"{'gate':8s}" + "".join(f"{k:>18s}" for k in keys))
    for row in rows:
        print(f"{row['gate']:8s}" + "".join(f"{row[k]:18.4f}" for k in keys))
    print(f"max gradient norm, gate none / gate basic: {ratio:.2f}x")


if __name__ == "__main__":
    main()
