"""``lora-patch audit``: the adaptive-attack report for one or more proactive defenses.

``add_audit_command(subparsers)`` registers the subcommand on the ``lora-patch`` parser (``cli.main.build_parser``)::

    lora-patch audit [--defense SPEC[,SPEC]]... [--generator NAME --checkpoint PATH] [--data DIR --attr-file FILE]
                     [--budgets 250x1,1000x1,2000x1] [--out DIR] ...

A SPEC is a built-in defense name or the user's own defense (``module:attribute``, ``path/to/file.py[:attribute]``,
see ``defenses/plugins.py``). Writes ``results.json``, ``report.md``, ``report.html`` (self-contained),
``success_vs_budget.png``, ``grids/`` and the trained ``patches/`` into ``--out``. Building the parser imports no
torch.
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Any

from ._args import (
    INITS,
    LR_SCHEDULES,
    SCHEDULES,
    CLIError,
    add_inputs,
    eps_value,
    learning_rate,
    non_negative_float,
    non_negative_int,
    positive_int,
    settings_from,
)

DEFAULT_DEFENSES = "pgd,cmua,anti_forgery"
DEFAULT_BUDGETS = "250x1,1000x1,2000x1"  # kept literal (no torch import); tests check it matches audit.budgets
ATTACK_WITH = ("pgd", "defense")
INNER = ("pgd", "fgsm_rs", "free")  # kept literal (no torch import); tests check it matches training.INNER_STRATEGIES


def _specs(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise argparse.ArgumentTypeError(f"no defense in {text!r}; e.g. pgd,cmua or mydefenses.py:Shield")
    return specs


def _budgets(text: str) -> list[Any]:
    from ..audit.budgets import parse_budgets

    try:
        return parse_budgets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _numbers(kind: type, check: str):
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
        if check == "quality" and any(not 1 <= v <= 100 for v in values):
            raise argparse.ArgumentTypeError(f"JPEG qualities must be in 1..100, got {text!r}")
        if check == "sigma" and any(not v > 0 for v in values):
            raise argparse.ArgumentTypeError(f"blur sigmas must be > 0 pixels, got {text!r}")
        return values
    return parse


class _Given(argparse.Action):
    """Stores the value and notes that the flag was given (``args.given``), so a flag that does not apply to the
    chosen ``--inner`` can be refused while its default still documents the paper's value."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def add_audit_command(subparsers: Any) -> None:
    """Register ``audit`` on ``subparsers`` (the ``add_subparsers()`` action of the ``lora-patch`` parser)."""
    p = subparsers.add_parser(
        "audit", help="adaptive-attack report for proactive defenses (HTML, Markdown, JSON)",
        description="For each attacker budget (training images x epochs), train a bypass patch and measure each "
                    "defense before and after patching (default and leakage scenarios) and as a patch-aware "
                    "defender; record the attacker's cost and the protection's robustness to JPEG and blur. Runs on "
                    "the shipped testbed editor unless --generator/--checkpoint and CelebA (--data/--attr-file) are "
                    "given. On a CPU, small budgets (e.g. --budgets 16,32,64) take minutes.")
    p.add_argument("--defense", type=_specs, action="append", metavar="SPEC[,SPEC]",
                   help="a built-in defense (pgd, ifgsm, fgsm, cmua, anti_forgery, pgd_eot), module:attribute or "
                        f"path/to/file.py[:attribute] (repeatable or comma-separated; default: {DEFAULT_DEFENSES})")
    p.add_argument("--budgets", type=_budgets, default=None, metavar="NxE[,NxE]",
                   help=f"attacker budgets: training images x epochs, comma-separated (default: {DEFAULT_BUDGETS}: "
                        "the paper's 1000 images x 1 epoch, a smaller and a larger one)")
    add_inputs(p, out_required=False)
    for action in p._actions:
        if action.dest == "out":
            action.default = os.path.join("runs", "audit")
            action.help = "output folder (default: runs/audit)"
    g = p.add_argument_group("defenses and evaluation")
    g.add_argument("--eps", type=eps_value, default=0.05,
                   help="defense budget (L-inf on the [-1, 1] scale; anti_forgery: normalised Lab a/b units) and the "
                        "attacker's inner PGD budget (default: 0.05)")
    g.add_argument("--defense-steps", type=positive_int, metavar="N",
                   help="iterations of the built-in defenses (default: 10; anti_forgery: 100 Adam steps)")
    g.add_argument("--eval-images", type=positive_int, default=16, metavar="N",
                   help="held-out images (default: 16)")
    g.add_argument("--eval-batch-size", type=positive_int, default=16, metavar="N", help="(default: 16)")
    g.add_argument("--jpeg", type=_numbers(int, "quality"), default=[90, 75, 50], metavar="Q[,Q]",
                   help="JPEG qualities for the robustness table (default: 90,75,50)")
    g.add_argument("--blur", type=_numbers(float, "sigma"), default=[0.5, 1.0], metavar="S[,S]",
                   help="Gaussian blur sigmas in pixels (default: 0.5,1)")
    g.add_argument("--lpips-weights", metavar="FILE",
                   help="LPIPS backbone weights (a .safetensors / .pth state dict of torchvision's alexnet); default: "
                        "torchvision's cache file when it exists, else no LPIPS column. Nothing is downloaded")
    g = p.add_argument_group("attacker (defaults: the paper's)")
    g.add_argument("--attack-with", choices=ATTACK_WITH, default="pgd",
                   help="inner attack of the bypass training: pgd (one patch per budget, the paper) or defense (one "
                        "patch per defense and budget, trained against that defense) (default: pgd)")
    g.add_argument("--rank", type=positive_int, default=8, metavar="R", help="patch rank (default: 8)")
    g.add_argument("--init", choices=INITS, default="kaiming",
                   help="patch initialisation (default: kaiming, the paper's)")
    g.add_argument("--lr", type=learning_rate, default=1e-3, metavar="X", help="Adam learning rate (default: 1e-3)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant", help="(default: constant)")
    g.add_argument("--batch-size", type=positive_int, default=4, metavar="N", help="(default: 4)")
    g.add_argument("--schedule", choices=SCHEDULES, default="per_condition",
                   help="per_condition: one optimiser step per batch and target, the paper's (default)")
    g.add_argument("--inner", choices=INNER, default="pgd",
                   help="inner maximisation: pgd (the paper's), fgsm_rs (one random-start step of 1.25 eps) or free "
                        "(each batch replayed --replays times, one backward pass per update) (default: pgd)")
    g.add_argument("--inner-steps", type=positive_int, default=10, metavar="N", action=_Given,
                   help="--inner pgd: inner PGD steps, step size 2 * eps / N (default: 10, i.e. 0.01)")
    g.add_argument("--replays", type=positive_int, default=4, metavar="M", action=_Given,
                   help="--inner free: outer updates per batch and target (default: 4)")
    g.add_argument("--feature-weight", type=non_negative_float, default=0.0, metavar="W",
                   help="MMFA ResNet-50 weight (default: 0; the paper's 0.1 needs the encoder locally)")
    g.add_argument("--semantic-weight", type=non_negative_float, default=0.0, metavar="W",
                   help="MMFA BLIP weight (default: 0; the paper's 0.1 needs the encoder locally)")
    g = p.add_argument_group("patch-aware defender")
    g.add_argument("--shadow-patches", type=non_negative_int, default=2, metavar="K",
                   help="bypass patches the defender trains itself and computes the defense against, with the base "
                        "generator (default: 2; 0: no patch-aware row)")
    g.add_argument("--shadow-images", type=positive_int, metavar="N",
                   help="training images per shadow patch (default: the smallest budget's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from ..audit import AuditConfig, audit_data, parse_budgets, run_audit, write_report
    from ..defenses.plugins import DefenseLoadError, load_defense
    from ..runs.inputs import Inputs

    for flag, dest, owner in (("--inner-steps", "inner_steps", "pgd"), ("--replays", "replays", "free")):
        if dest in getattr(args, "given", ()) and args.inner != owner:
            raise CLIError(f"{flag} applies to --inner {owner} only, not to --inner {args.inner}.", code=2)
    if args.inner != "pgd" and args.attack_with == "defense":
        raise CLIError(f"--inner {args.inner} builds its own L-inf attack: --attack-with defense needs --inner pgd.",
                       code=2)
    inputs = settings_from(args, Inputs)
    inputs.check()

    specs = list(dict.fromkeys(s for group in (args.defense or [DEFAULT_DEFENSES.split(",")]) for s in group))
    budgets = args.budgets or parse_budgets(DEFAULT_BUDGETS)
    try:
        defenses = [load_defense(spec, eps=args.eps, seed=args.seed, steps=args.defense_steps) for spec in specs]
    except DefenseLoadError as exc:
        raise CLIError(str(exc))
    config = AuditConfig(
        defenses=specs, budgets=budgets, eps=args.eps, defense_steps=args.defense_steps,
        eval_images=args.eval_images, eval_batch_size=args.eval_batch_size, rank=args.rank, init=args.init,
        lr=args.lr, lr_schedule=args.lr_schedule, batch_size=args.batch_size, schedule=args.schedule,
        inner=args.inner, inner_steps=args.inner_steps if args.inner == "pgd" else None,
        replays=args.replays if args.inner == "free" else None, feature_weight=args.feature_weight,
        semantic_weight=args.semantic_weight,
        attack_with=args.attack_with, shadow_patches=args.shadow_patches, shadow_images=args.shadow_images,
        jpeg_qualities=tuple(args.jpeg), blur_sigmas=tuple(args.blur), lpips_weights=args.lpips_weights,
        seed=args.seed, device=args.device)
    shadow_images = (args.shadow_images or budgets[0].images) if args.shadow_patches else 0
    base = inputs.editor()
    data = audit_data(inputs, base, max(b.images for b in budgets), max(shadow_images, 1), args.eval_images)
    print(f"auditing {', '.join(d.name for d in defenses)} on {args.generator}: budgets "
          f"{', '.join(b.key for b in budgets)}; {data['description']}")
    results = run_audit(config, inputs.editor, data["train"], data["eval"], args.out,
                        fit_data=data["fit"], shadow_data=data["shadow"], defenses=defenses,
                        progress=not args.no_progress)
    results.update({"generator": args.generator, "checkpoint": args.checkpoint, "data": data["description"],
                    "command": shlex.join(["lora-patch", *args.argv]), "argv": list(args.argv)})
    paths = write_report(results, args.out)
    head = results["headline_budget"]
    print(f"\nheadline (attacker budget {head}): defense success rate before -> after patching "
          "(default / leakage / patch-aware)")
    for d in results["defenses"]:
        r = d["success_rates"]
        aware = f"{100 * r['patch_aware'][head]:.1f}%" if r["patch_aware"] else "n/a"
        print(f"  {d['name']:16s} {100 * r['before']:5.1f}% -> {100 * r['default'][head]:5.1f}% / "
              f"{100 * r['leakage'][head]:5.1f}% / {aware}")
    print(f"total {results['timings']['total_seconds']:.1f} s")
    for name in ("html", "markdown", "results", "curves"):
        print(f"{name + ':':10s}{paths[name]}")
    return 0
