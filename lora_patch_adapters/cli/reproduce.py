"""``lora-patch reproduce``: the paper's protocol end to end (:mod:`lora_patch_adapters.runs.reproduce`)."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import (
    PGD_EPS,
    PGD_STEP_SIZE,
    PGD_STEPS,
    add_inputs,
    eps_value,
    non_negative_float,
    positive_float,
    positive_int,
    settings_from,
)


def add_reproduce_command(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce", help="the paper's protocol end to end: train with its recipe and/or evaluate the authors' patch",
        description="Train a bypass patch and a defensive patch with the paper's recipe (training preset 'paper', "
                    "patch presets 'paper' / 'paper-defensive') on the paper-train rows, convert the authors' own "
                    "patch (--patch), evaluate every bypass patch with PGD on the same paper-test rows in the "
                    "default and leakage scenarios, and write one report comparing them.")
    add_inputs(p)
    p.set_defaults(out=None)
    for action in p._actions:
        if action.dest == "out":
            action.required = True
            action.help = "output folder: ours-bypass/, ours-defensive/, authors-bypass/, evaluation/, report.md"
    p.add_argument("--patch", metavar="OFFICIAL.pth",
                   help="the authors' saved bypass patch (e.g. lora_patch4stargan.pth), converted and evaluated "
                        "beside ours")
    p.add_argument("--alpha", type=positive_float, default=2.0,
                   help="the alpha the authors' patch was trained with (not stored in it; default: 2.0)")
    p.add_argument("--no-train", dest="train", action="store_false",
                   help="only convert and evaluate the authors' patch")
    p.add_argument("--no-defensive", dest="defensive", action="store_false", help="skip the defensive patch")
    p.add_argument("--images", type=positive_int, metavar="N",
                   help="training images (default: 1000, the paper's; the first rows of paper-train)")
    p.add_argument("--eval-images", type=positive_int, metavar="N", default=100,
                   help="held-out paper-test images every patch is evaluated on (default: 100)")
    p.add_argument("--max-steps", type=positive_int, metavar="N",
                   help="cap each training run at N batches (smoke tests; default: the full recipe)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="images per batch (default: the recipe's 4)")
    p.add_argument("--eps", type=eps_value, default=PGD_EPS, help=f"PGD budget (default: {PGD_EPS:g})")
    p.add_argument("--pgd-steps", type=positive_int, metavar="N", default=PGD_STEPS,
                   help=f"PGD steps, training and evaluation (default: {PGD_STEPS})")
    p.add_argument("--pgd-step-size", type=positive_float, metavar="X", default=PGD_STEP_SIZE,
                   help=f"PGD step size (default: {PGD_STEP_SIZE:g} = 2 * eps / steps)")
    p.add_argument("--feature-weight", type=non_negative_float, metavar="W", default=0.1,
                   help="MMFA ResNet-50 feature term of the bypass patch (default: 0.1, the paper's)")
    p.add_argument("--semantic-weight", type=non_negative_float, metavar="W", default=0.1,
                   help="MMFA BLIP vision term of the bypass patch (default: 0.1, the paper's)")
    p.add_argument("--resnet-weights", default="IMAGENET1K_V1", help="torchvision ResNet-50 weights or a file")
    p.add_argument("--blip-model", default="Salesforce/blip-image-captioning-base",
                   help="BLIP checkpoint (Hub id or local directory)")
    p.add_argument("--offline", action="store_true", help="encoders from local files / caches only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..runs import reporting
    from ..runs.reproduce import ReproduceSettings, run_reproduce

    settings = settings_from(args, ReproduceSettings)
    summary = run_reproduce(settings)
    reporting.print_outputs(reporting.write_run(args.out, summary))
    return 0
