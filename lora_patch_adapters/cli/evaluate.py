"""``lora-patch evaluate``: load a saved patch and run the evaluation protocol
(:mod:`lora_patch_adapters.runs.evaluate`)."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import DEFENSES, SCENARIOS, SPLITS, add_inputs, defense_list, eps_value, positive_int, settings_from


def add_evaluate_command(sub: Any) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="load a saved patch and run the evaluation protocol",
        description="Load a saved patch directory onto its generator and measure how often each defense still "
                    "disrupts the edits, on the base and on the patched generator. Watermark patches also get "
                    "the visibility of the warning.")
    evaluate.add_argument("patch", metavar="PATCH", help="a patch directory (adapter_config.json, lora_patch.json)")
    add_inputs(evaluate, out_required=False)
    evaluate.set_defaults(generator=None)
    for action in evaluate._actions:
        if action.dest == "generator":
            action.help = "the editor the patch belongs to (default: from the patch's lora_patch.json, else testbed)"
        if action.dest == "out":
            action.help = "output folder (default: evaluation/ next to PATCH)"
    evaluate.add_argument("--split", choices=SPLITS, default="paper-test", help="CelebA rows (default: paper-test)")
    evaluate.add_argument("--images", type=positive_int, metavar="N",
                          help="images: testbed test faces (default 50) or a cap on the CelebA split (default: all)")
    evaluate.add_argument("--defense", type=defense_list, action="append", metavar="NAME[,NAME]",
                          help=f"{', '.join(DEFENSES)}; repeatable or comma-separated (default: pgd)")
    evaluate.add_argument("--scenario", choices=SCENARIOS, default="both",
                          help="default: perturbation computed on the base generator; leakage: on the patched one "
                               "(default: both)")
    evaluate.add_argument("--eps", type=eps_value, default=0.05,
                          help="defense budget: L-inf on the [-1, 1] scale; anti_forgery: normalised Lab a/b units "
                               "(default: 0.05)")
    evaluate.add_argument("--steps", type=positive_int, metavar="N",
                          help="iterations of the iterative defenses, step size 2 * eps / N (default: 10; "
                               "anti_forgery: 100 Adam steps)")
    evaluate.add_argument("--batch-size", type=positive_int, metavar="N", default=16,
                          help="images per batch (default: 16)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--allow-missing-fingerprint", action="store_true",
                          help="load a patch that records no base fingerprint (saved by plain peft or an older "
                               "version) without checking it belongs to this generator")
    evaluate.add_argument("--criterion", choices=("mse", "masked_l2"), default="mse",
                          help="what counts as a disrupted edit: MSE to the clean edit > 0.05, or CMUA-Watermark's "
                               "masked L2 (only the pixels the clean edit changed) > 0.05 (default: mse)")
    evaluate.add_argument("--cmua-editor", action="append", metavar="NAME[=CHECKPOINT]",
                          help="with --defense cmua: also fit the universal watermark on this editor (repeatable; "
                               "the published CMUA is fitted across StarGAN, AttGAN, HiSD, ...); without a "
                               "checkpoint the editor has random weights drawn from the seed")
    evaluate.add_argument("--lpips-weights", metavar="FILE",
                          help="LPIPS backbone weights (a .safetensors / .pth state dict of torchvision's alexnet); "
                               "default: torchvision's cache file when it exists, else no LPIPS column. Nothing is "
                               "downloaded")
    evaluate.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..runs import reporting
    from ..runs.evaluate import EvaluateSettings, run_evaluate

    args.defense = [name for group in (args.defense or [["pgd"]]) for name in group]
    settings = settings_from(args, EvaluateSettings)
    summary = run_evaluate(settings)
    reporting.print_outputs(reporting.write_run(settings.out, summary))
    return 0
