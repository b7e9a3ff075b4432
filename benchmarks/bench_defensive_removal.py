"""Defensive patches under the removal attacker: how much compute erases the warning of the paper's defensive patch,
and of a hardened one?

Both patches are trained on the embedded testbed editor with the CPU-sized version of the paper's defensive loop
(rank 16, one optimiser step per batch and target, inner PGD against the current patched editor, pixel loss towards
clamp(y_ref + 2 W), lr 1e-2 cosine, batches of 4 from the same training faces; the inner PGD is shorter than the
paper's PGD-10 and the run is 2 epochs instead of 5, to fit a CPU); the hardened one adds
``TrainingConfig(hardening=...)`` (``--hardening``: a JSON object of
:class:`~lora_patch_adapters.training.hardening.HardeningConfig` fields). Each is merged into the editor (what a
platform ships) and audited by
:func:`lora_patch_adapters.audit.defensive.run_defensive_audit`: every removal attack (unseen settings included) at
every budget of attacker photos, on held-out faces x 5 targets. ``budgets`` gives, per budget, the worst case over
the attacks: the attack that breaks the warning (visible on < 50 % of edits with PSNR outside the mark >= 30 dB, or
within 1 dB of the defended generator's own when that is lower; the cheapest in FLOPs if several do), else the one
that leaves it least visible. ``break_point_flops`` is the cheapest break over all attacks and budgets (null: not
broken within the largest budget). Seconds are wall times in this process (run it alone on the machine); FLOPs are
counted with torch's FLOP counter on one step, apart from the timed runs.

    python benchmarks/bench_defensive_removal.py --json          # 256 faces x 2 epochs, budgets 8,32,128,512, ~13 min
    python benchmarks/bench_defensive_removal.py --train-images 4 --budgets 4 --attacks inpaint --eval-images 2 --json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time

import torch

from lora_patch_adapters.audit.budgets import parse_budgets
from lora_patch_adapters.audit.defensive import THREAT_MODEL, DefensiveAuditConfig, run_defensive_audit
from lora_patch_adapters.data.testbed import testbed_faces
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.generators import load_editor
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.removal import ATTACKS
from lora_patch_adapters.training import TrainingConfig, Watermark, WatermarkTrainer
from lora_patch_adapters.training.flops import count_flops
from lora_patch_adapters.training.hardening import HardeningConfig
from lora_patch_adapters.tuner.config import LoraPatchConfig

EPS = 0.05
DEFAULT_HARDENING: dict = {}  # HardeningConfig's defaults


def _watermark(args: argparse.Namespace) -> Watermark:
    return Watermark(vary=tuple(v for v in args.vary.split(",") if v))


def train_patch(args: argparse.Namespace, hardening: HardeningConfig | None) -> tuple[object, dict]:
    """A defensive patch on a fresh testbed editor; (the editor, patch merged, {train_seconds, train_flops, ...})."""
    x, labels = testbed_faces(args.train_images, seed=args.seed, split="train")
    editor = load_editor("testbed")
    trainer = WatermarkTrainer(
        editor, watermark=_watermark(args), patch=LoraPatchConfig.from_preset("paper-defensive", init_weights="zero"),
        attack=PGD(eps=EPS, steps=args.inner_steps, step_size=2 * EPS / args.inner_steps, seed=args.seed),
        loss=MMFALoss.pixel_only(),
        config=TrainingConfig(batch_size=args.batch, epochs=args.epochs, lr=args.lr, lr_schedule="cosine",
                              schedule="per_condition", seed=args.seed, progress=False, hardening=hardening))
    probe = copy.deepcopy(trainer)  # counted apart: the timed run carries no counting overhead
    per_batch = count_flops(lambda: probe.train_step(x[: args.batch], labels[: args.batch]))
    start = time.perf_counter()
    result = trainer.train((x, labels))
    seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    editor.generator = merged
    return editor, {"train_seconds": seconds, "train_flops": per_batch * result.steps, "train_steps": result.steps,
                    "train_images": args.train_images, "epochs": args.epochs,
                    "hardening": hardening.to_dict() if hardening is not None else None}


def worst_case(attacks: dict, key: str, config: DefensiveAuditConfig, bar: float) -> dict:
    """The attack worst for the defender at budget ``key`` (see the module docstring); ``bar``: the audit's quality
    threshold."""
    rows = [dict(a["budgets"][key], attack=name) for name, a in attacks.items()]
    broken = [r for r in rows if r["visible_after"] < config.break_visibility and r["psnr_outside_db"] >= bar]
    if broken:
        return min(broken, key=lambda r: r["attacker_flops"])
    return min(rows, key=lambda r: (r["visible_after"], -r["psnr_outside_db"]))


def audit(args: argparse.Namespace, name: str, defended, training: dict, log) -> dict:
    config = DefensiveAuditConfig(budgets=parse_budgets(args.budgets), attacks=args.attacks,
                                  eval_images=args.eval_images, seed=args.seed)
    attacker, _ = testbed_faces(max(b.images for b in config.budgets), seed=args.seed + 1, split="train")
    evaluation = testbed_faces(args.eval_images, seed=args.seed, split="test")
    with tempfile.TemporaryDirectory() as out:
        results = run_defensive_audit(config, load_editor("testbed"), defended, _watermark(args), attacker,
                                      evaluation, out, echo=lambda line: log(f"[{name}] {line}"))
    budgets = {}
    for budget in config.budgets:
        row = worst_case(results["attacks"], budget.key, config, results["psnr_threshold_db"])
        budgets[str(budget.images) if budget.epochs == 1 else budget.key] = {
            k: row[k] for k in ("visible_after", "psnr_outside_db", "attacker_steps", "attacker_flops",
                                "attacker_seconds", "attack")}
    return {"visible_before": results["visible_before"], "psnr_outside_db": results["psnr_outside_db"],
            "psnr_threshold_db": results["psnr_threshold_db"], **training, "budgets": budgets,
            "break_point_flops": results["break_point_flops"],
            "break_point": results["break_point"], "mask_iou": results["mask_iou"],
            "attacks": {n: {"settings": a["description"], "budgets": a["budgets"]}
                        for n, a in results["attacks"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--inner-steps", type=int, default=3)
    p.add_argument("--hardening", type=json.loads, default=DEFAULT_HARDENING, help="HardeningConfig fields (JSON)")
    p.add_argument("--budgets", default="8,32,128,512")
    p.add_argument("--attacks", type=lambda t: t.split(","), default=list(ATTACKS))
    p.add_argument("--eval-images", type=int, default=16)
    p.add_argument("--vary", default="", help="the warning's per-output variation for both patches, e.g. position")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    patches = {}
    for name, hardening in (("paper", None), ("hardened", HardeningConfig(**args.hardening))):
        log(f"training the {name} defensive patch on {args.train_images} testbed faces")
        defended, training = train_patch(args, hardening)
        log(f"  {training['train_seconds']:.1f} s, {training['train_flops']:.3g} FLOPs")
        patches[name] = audit(args, name, defended, training, log)
    paper, hardened = patches["paper"]["break_point_flops"], patches["hardened"]["break_point_flops"]
    out = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
           "watermark": _watermark(args).to_dict(),
           "threat_model": THREAT_MODEL, "patches": patches,
           "break_point_ratio": (None if paper is None else (math.inf if hardened is None else hardened / paper))}
    if args.json:
        print(json.dumps(out, indent=2, default=lambda v: None if v != v else v))
        return
    for name, patch in patches.items():
        print(f"\n{name}: visible before {100 * patch['visible_before']:.1f}%, PSNR outside "
              f"{patch['psnr_outside_db']:.2f} dB, trained in {patch['train_seconds']:.1f} s "
              f"({patch['train_flops']:.3g} FLOPs); break point {patch['break_point_flops']}")
        print(f"{'images':>7} {'attack':>13} {'visible':>8} {'PSNR out':>9} {'steps':>6} {'FLOPs':>10} {'s':>6}")
        for key, b in patch["budgets"].items():
            print(f"{key:>7} {b['attack']:>13} {100 * b['visible_after']:7.1f}% {b['psnr_outside_db']:9.2f} "
                  f"{b['attacker_steps']:6d} {b['attacker_flops']:10.3g} {b['attacker_seconds']:6.1f}")
    print(f"\nbreak point ratio (hardened / paper): {out['break_point_ratio']}")


if __name__ == "__main__":
    main()
