"""Attacker compute: the paper's inner maximisation (PGD-10) against cheaper ones, on the embedded testbed editor.

Every strategy trains a bypass patch (paper preset, rank 8, per-condition schedule, pixel loss, lr 3e-3 cosine: the
CPU-sized recipe of the demo) from the same base editor on the same training faces for one epoch, then PGD-10 (eps
0.05, 10 x 0.01) is evaluated on the same held-out faces x 5 targets, in the default scenario (perturbation computed
on the base editor) and the leakage one (on the patched editor); ``clean_psnr_db`` compares the patched and the base
clean edits. ``train_seconds`` is the training wall time, measured in this process one strategy after the other (run
it alone on the machine). ``train_flops`` is counted with torch's FLOP counter
(``lora_patch_adapters.training.flops``) over one extra training batch run on a copy of the trainer (every batch runs
the same operations on same-shaped tensors), times the number of batches, so the timed runs carry no counting
overhead.

    python benchmarks/bench_attack_compute.py            # 64 training faces (batches of 2), 16 held-out, ~7 min
    python benchmarks/bench_attack_compute.py --json     # one JSON object (see the issue's schema)
    python benchmarks/bench_attack_compute.py --train-images 8 --eval-images 2 --strategies paper,fgsm_rs  # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.data.testbed import testbed_faces
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.evaluation import evaluate_defense
from lora_patch_adapters.generators import load_editor
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import BypassTrainer, TrainingConfig
from lora_patch_adapters.training.flops import count_flops

EPS = 0.05
BASELINE = "paper"
STRATEGIES = {
    # name: (inner, inner PGD steps, replays, share of the epoch's batches trained on); PGD step size 2.5 eps / k
    # below 10 steps (Madry et al.), 0.01 at 10
    "paper": ("pgd", 10, 1, 1.0),
    "pgd-3": ("pgd", 3, 1, 1.0),
    "pgd-3-warm": ("pgd-warm", 3, 1, 1.0),  # each condition's attack starts where the image's previous one ended
    "fgsm_rs": ("fgsm_rs", 1, 1, 1.0),
    "free-2": ("free", None, 2, 1.0),
    "free-4": ("free", None, 4, 1.0),
    # not the same data budget: the first half of the epoch's batches (what fewer outer updates buy), for both
    "paper-half": ("pgd", 10, 1, 0.5),
    "fgsm_rs-half": ("fgsm_rs", 1, 1, 0.5),
}


def _attack(steps: int | None, seed: int) -> PGD:
    steps = steps or 10
    step_size = 0.01 if steps == 10 else 2.5 * EPS / steps
    return PGD(eps=EPS, steps=steps, step_size=step_size, seed=seed)


def _trainer(name: str, args: argparse.Namespace, batches: int) -> BypassTrainer:
    inner, steps, replays, share = STRATEGIES[name]
    config = TrainingConfig.from_preset("paper", batch_size=args.batch, lr=args.lr, lr_schedule="cosine",
                                        seed=args.seed, progress=False, inner=inner.removesuffix("-warm"),
                                        replays=replays, inner_warm_start=inner.endswith("-warm"),
                                        max_steps=max(1, round(share * batches)))
    return BypassTrainer(load_editor("testbed"), patch=lpa.LoraPatchConfig.from_preset("paper", r=8),
                         attack=_attack(steps, args.seed), loss=MMFALoss.pixel_only(), config=config)


def _flops_per_batch(trainer: BypassTrainer, x: torch.Tensor, labels: torch.Tensor) -> int:
    counted = copy.deepcopy(trainer)
    return count_flops(lambda: counted.train_step(x, labels))


def _evaluate(base, patched, test_x, test_labels, seed: int) -> dict[str, float]:
    out = {}
    for scenario in ("default", "leakage"):
        result = evaluate_defense(PGD(eps=EPS, steps=10, step_size=0.01, seed=seed), base, test_x, test_labels,
                                  patched=patched, scenario=scenario)
        suffix = "" if scenario == "default" else "_leakage"
        out["success_before" + suffix] = result.success_rate_base
        out["success_after" + suffix] = result.success_rate_patched
        if scenario == "default":
            out["clean_psnr_db"] = result.metrics["patched_clean"]["psnr"]
    out.pop("success_before_leakage")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"from {', '.join(STRATEGIES)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.strategies.split(",") if n]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")

    train_x, train_labels = testbed_faces(args.train_images, seed=args.seed, split="train")
    test_x, test_labels = testbed_faces(args.eval_images, seed=args.seed, split="test")
    base = load_editor("testbed")
    batches = -(-args.train_images // args.batch)
    strategies = {}
    for name in names:
        trainer = _trainer(name, args, batches)
        per_batch = _flops_per_batch(trainer, train_x[: args.batch], train_labels[: args.batch])
        start = time.perf_counter()
        result = trainer.train((train_x, train_labels))
        seconds = time.perf_counter() - start
        inner, steps, replays, share = STRATEGIES[name]
        strategies[name] = {"inner": inner.removesuffix("-warm"), "warm_start": inner.endswith("-warm"),
                            "inner_steps": trainer.attack.steps if inner != "free" else None,
                            "replays": replays if inner == "free" else None, "batches": result.steps,
                            "train_seconds": seconds, "train_flops": per_batch * result.steps,
                            **_evaluate(base, trainer.editor, test_x, test_labels, args.seed)}
    out = {"device": "cpu", "baseline": BASELINE, "strategies": strategies,
           "settings": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    ref = strategies.get(BASELINE)
    print(f"testbed, {args.train_images} training faces x 5 targets, batch {args.batch}, one epoch, lr {args.lr:g} "
          f"cosine; PGD-10 evaluated on {args.eval_images} held-out faces x 5 targets")
    print(f"{'strategy':13s} {'train s':>8s} {'TFLOP':>7s} {'x fewer FLOP':>12s} {'x faster':>8s} {'before':>7s} "
          f"{'after':>6s} {'leakage':>8s} {'PSNR dB':>8s}")
    for name, r in strategies.items():
        fewer = ref["train_flops"] / r["train_flops"] if ref else float("nan")
        faster = ref["train_seconds"] / r["train_seconds"] if ref else float("nan")
        print(f"{name:13s} {r['train_seconds']:8.1f} {r['train_flops'] / 1e12:7.3f} {fewer:12.2f} {faster:8.2f} "
              f"{100 * r['success_before']:6.1f}% {100 * r['success_after']:5.1f}% "
              f"{100 * r['success_after_leakage']:7.1f}% {r['clean_psnr_db']:8.2f}")


if __name__ == "__main__":
    main()
