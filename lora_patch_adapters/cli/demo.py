"""``lora-patch demo``: the offline demo on the shipped testbed editor (:mod:`lora_patch_adapters.runs.demo`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._args import device_name, seed_value

# --quick: one optimiser step per patch and target, one evaluation image (a smoke run; the numbers mean nothing).
QUICK_DEMO = {"train_images": 4, "eval_images": 1, "watermark_train_images": 2, "watermark_eval_images": 1,
              "bypass_inner_steps": 1, "watermark_inner_steps": 1}


def add_demo_command(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the offline demo on the testbed editor (a few minutes on a CPU)",
                          description="Train a bypass and a defensive patch on the shipped testbed editor and "
                                      "report the defense before / after, fidelity, reload and warning visibility.")
    demo.add_argument("--out", metavar="DIR", default=os.path.join("runs", "demo"), help="(default: runs/demo)")
    demo.add_argument("--seed", type=seed_value, default=0, help="(default: 0)")
    demo.add_argument("--device", type=device_name, default="cpu", help="(default: cpu)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--quick", action="store_true", help="a fast smoke run (numbers meaningless)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..runs.demo import DemoSettings, run_demo

    settings = DemoSettings(seed=args.seed, device=args.device, **(QUICK_DEMO if args.quick else {}))
    run_demo(args.out, settings, progress=not args.no_progress)
    return 0
