"""PGD vs PGD-EOT on the testbed: does optimising through differentiable JPEG and blur make the protection survive
a real re-encoding, and does it change anything against a bypass patch?

One audit (``lora_patch_adapters.audit.run_audit``, as ``lora-patch audit`` runs it) on the procedural testbed:
a bypass patch is trained once, as the audit does (the paper's min-max loop against PGD eps 0.05, here with the
CPU-sized attacker of the README: ``--budget`` images x 1 epoch, zero init, lr 3e-3 cosine, inner PGD-5; no shadow
patches), then ``pgd`` and ``pgd_eot`` (PGD-10 averaged over identity, differentiable JPEG-75 and blur sigma 1) are
evaluated at each ``--eps`` on ``--eval-images`` held-out faces x 5 targets. Printed (Markdown): success rates on
the base editor with no transformation, after Pillow's real JPEG at quality 75 and after blur sigma 1 (the audit's
transformations: the measurement never uses the differentiable codec), after the bypass patch (default scenario:
protection computed on the base generator; leakage: recomputed on the patched one), and the mean disruption MSE
(the success threshold is 0.05) with no transformation, after JPEG-75 and after blur.

    python benchmarks/eot_robustness.py                     # 64 attacker images, 8 held-out faces, eps 0.05 and 0.01
    python benchmarks/eot_robustness.py --eps 0.05 --json   # one JSON object instead of the table

The eps-0.05 rows are also what ``lora-patch audit --defense pgd,pgd_eot --budgets 64 --eval-images 8 --init zero
--lr 3e-3 --lr-schedule cosine --inner-steps 5 --shadow-patches 0 --jpeg 75 --blur 1`` reports.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.audit import AuditConfig, parse_budgets, run_audit
from lora_patch_adapters.defenses.plugins import load_defense


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=64, help="attacker training images (default: 64)")
    p.add_argument("--eval-images", type=int, default=8, help="held-out faces (default: 8)")
    p.add_argument("--eps", default="0.05,0.01", help="defense budgets, comma-separated (default: 0.05,0.01)")
    p.add_argument("--seed", type=int, default=42, help="(default: 42, the CLI's)")
    p.add_argument("--out", help="audit folder (default: a temporary folder, removed afterwards)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the Markdown table")
    return p.parse_args()


def _rows(results: dict, budget: str) -> list[dict]:
    rows = []
    for d in results["defenses"]:
        robust, rates = d["robustness"], d["success_rates"]
        rows.append({"defense": d["spec"], "eps": d["eps"], "before": rates["before"],
                     "jpeg75": robust["jpeg75"]["success_rate"], "blur1": robust["blur1"]["success_rate"],
                     "default": rates["default"][budget], "leakage": rates["leakage"][budget],
                     "mse": d["before"]["metrics"]["mse"], "mse_jpeg75": robust["jpeg75"]["mse"],
                     "mse_blur1": robust["blur1"]["mse"]})
    return rows


def _table(rows: list[dict], budget: str) -> str:
    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    lines = ["| defense | eps | no transformation | JPEG-75 (Pillow) | blur sigma 1 | after bypass patch "
             f"({budget}, default) | leakage | disruption MSE: none / JPEG-75 / blur |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['defense']} | {r['eps']:g} | {pct(r['before'])} | {pct(r['jpeg75'])} | {pct(r['blur1'])}"
                     f" | {pct(r['default'])} | {pct(r['leakage'])} | {r['mse']:.3f} / {r['mse_jpeg75']:.3f} / "
                     f"{r['mse_blur1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    args = _args()
    eps_values = [float(e) for e in args.eps.split(",") if e.strip()]
    defenses = []
    for eps in eps_values:
        for spec in ("pgd", "pgd_eot"):
            defense = load_defense(spec, eps=eps, seed=args.seed)
            defense.name = spec if eps == 0.05 else f"{spec}_eps{eps:g}"  # the audit needs distinct names
            defense.spec = spec
            defenses.append(defense)
    config = AuditConfig(defenses=[d.name for d in defenses], budgets=parse_budgets(str(args.budget)), eps=0.05,
                         eval_images=args.eval_images, init="zero", lr=3e-3, lr_schedule="cosine", inner_steps=5,
                         shadow_patches=0, jpeg_qualities=(75,), blur_sigmas=(1.0,), seed=args.seed)
    train = lpa.testbed_faces(args.budget, seed=args.seed, split="train")
    evaluation = lpa.testbed_faces(args.eval_images, seed=args.seed, split="test")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or scratch
        results = run_audit(config, lambda: lpa.load_editor("testbed"), train, evaluation, out,
                            fit_data=lpa.testbed_faces(args.eval_images, seed=args.seed + 1, split="test"),
                            defenses=defenses, echo=lambda line: None)
    budget = results["headline_budget"]
    rows = _rows(results, budget)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"rows": rows, "budget": budget, "seconds": seconds, "device": results["device"],
                          "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=2))
        return
    print(_table(rows, budget))
    print(f"\n{args.eval_images} held-out testbed faces x 5 targets; bypass patch: {budget} (trained against PGD eps "
          f"0.05); {seconds:.0f} s on {results['device']}, torch {torch.__version__}; "
          f"command: python {os.path.relpath(__file__)} --budget {args.budget} --eval-images {args.eval_images} "
          f"--eps {args.eps} --seed {args.seed}")


if __name__ == "__main__":
    main()
