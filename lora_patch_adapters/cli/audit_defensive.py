"""``lora-patch audit-defensive PATCH``: how cheaply is a defensive patch's warning erased? (``audit.defensive``)

``add_audit_defensive_command(subparsers)`` registers the subcommand::

    lora-patch audit-defensive PATCH [--budgets 8,32,128,512] [--attacks inpaint,full,...] [--generator NAME
                                     --checkpoint PATH] [--data DIR --attr-file FILE] [--out DIR] ...

PATCH is a defensive patch directory (``lora-patch train-defensive`` writes one to OUT/patch). Writes
``summary.json``, ``report.md``, ``report.html``, ``visibility_vs_budget.png`` and ``grids/`` into ``--out``.
Building the parser imports no torch.
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Any

from ._args import CLIError, add_inputs, non_negative_int, positive_int, settings_from
from .audit import _budgets

DEFAULT_BUDGETS = "8,32,128,512"  # kept literal (no torch import); tests check it matches audit.defensive
ATTACKS = ("inpaint", "inpaint_fill", "full", "unseen", "inpaint_shared", "unseen_shared")  # kept literal; tests check it matches removal.ATTACKS


def _attacks(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown removal attack(s) {unknown or [text]}; choose among "
                                         f"{','.join(ATTACKS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"repeated removal attack in {text!r}")
    return names


def add_audit_defensive_command(subparsers: Any) -> None:
    """Register ``audit-defensive`` on the ``lora-patch`` subparsers."""
    p = subparsers.add_parser(
        "audit-defensive", help="removal audit of a defensive patch: how cheaply is its warning erased",
        description="Merge the defensive patch into the generator (what a platform ships), then for each removal "
                    "attack and budget (attacker photos x epochs) fine-tune the defended generator so that the "
                    "warning's region, estimated from its outputs alone, is filled in; measure the warning's "
                    "visibility and the PSNR outside the mark against the un-warned base on held-out faces, and "
                    "the attacker's cost. The break point is the cheapest budget that hides the warning (< 50%) "
                    "with PSNR outside the mark >= 30 dB.")
    p.add_argument("patch", metavar="PATCH", help="a defensive patch directory (train-defensive's OUT/patch)")
    p.add_argument("--budgets", type=_budgets, default=None, metavar="N[xE][,...]",
                   help=f"attacker photos x epochs, comma-separated (default: {DEFAULT_BUDGETS})")
    p.add_argument("--attacks", type=_attacks, default=list(ATTACKS), metavar="NAME[,NAME]",
                   help=f"removal attacks (default: all of {','.join(ATTACKS)})")
    add_inputs(p, out_required=False)
    for action in p._actions:
        if action.dest == "out":
            action.default = os.path.join("runs", "audit-defensive")
            action.help = "output folder (default: runs/audit-defensive)"
    p.add_argument("--eval-images", type=positive_int, default=16, metavar="N", help="held-out faces (default: 16)")
    p.add_argument("--eval-batch-size", type=positive_int, default=16, metavar="N", help="(default: 16)")
    p.add_argument("--outside-margin", type=non_negative_int, metavar="PX",
                   help="pixels around the mark's footprint left out of 'outside the mark' (default: width / 32)")
    p.add_argument("--lpips-weights", metavar="FILE",
                   help="LPIPS backbone weights (torchvision alexnet state dict); default: torchvision's cache when "
                        "it exists, else no LPIPS column. Nothing is downloaded")
    p.set_defaults(func=cmd_audit_defensive)


def cmd_audit_defensive(args: argparse.Namespace) -> int:
    from ..audit.data import defensive_audit_data
    from ..audit.defensive import DefensiveAuditConfig, defended_editor, run_defensive_audit
    from ..audit.defensive_report import write_defensive_report
    from ..runs.inputs import Inputs

    if args.lpips_weights is not None and not os.path.isfile(args.lpips_weights):
        raise CLIError(f"--lpips-weights {args.lpips_weights}: no such file", code=2)
    if not os.path.isdir(args.patch):
        raise CLIError(f"PATCH {args.patch!r}: no such directory (a defensive patch folder, e.g. train-defensive's "
                       "OUT/patch)", code=2)
    inputs = settings_from(args, Inputs)
    inputs.check()
    config = DefensiveAuditConfig(
        budgets=args.budgets or _budgets(DEFAULT_BUDGETS), attacks=args.attacks, eval_images=args.eval_images,
        eval_batch_size=args.eval_batch_size, outside_margin=args.outside_margin, lpips_weights=args.lpips_weights,
        seed=args.seed, device=args.device)
    base = inputs.editor()
    defended, watermark = defended_editor(inputs.editor(), args.patch)
    data = defensive_audit_data(inputs, base, max(b.images for b in config.budgets), args.eval_images)
    print(f"removal audit of {args.patch} on {args.generator}: budgets {', '.join(b.key for b in config.budgets)}; "
          f"attacks {', '.join(config.attacks)}; {data['description']}")
    results = run_defensive_audit(config, base, defended, watermark, data["attacker"], data["eval"], args.out)
    results.update({"patch": args.patch, "generator": args.generator, "checkpoint": args.checkpoint,
                    "data": data["description"], "command": shlex.join(["lora-patch", *args.argv])})
    paths = write_defensive_report(results, args.out)
    point = results["break_point"]
    print(f"\nbefore: warning visible on {100 * results['visible_before']:.1f}%, PSNR outside the mark "
          f"{results['psnr_outside_db']:.2f} dB")
    print("break point: " + ("not reached within the largest budget" if point is None else
                             f"{point['attack']} at {point['budget']} ({point['attacker_flops']:.3g} FLOPs)"))
    for name in ("html", "markdown", "summary", "curves", "grid"):
        print(f"{name + ':':10s}{paths[name]}")
    return 0
