"""``lora-patch import-official`` / ``export-official``: the paper authors' saved patches (official ``.pth`` layout)
to and from lora-patch patch directories.

``add_official_commands(subparsers)`` registers both on the ``lora-patch`` parser (``cli.build_parser``)::

    lora-patch import-official CKPT --generator stargan|attgan|attgan_inject1|hisd --out DIR [--alpha 2.0]
    lora-patch export-official PATCH --base CKPT --generator G --out FILE [--alpha 2.0] [--overwrite]

Each prints the path it wrote. Bad files (unreadable, unsafe pickle, mixed ranks, unknown keys, another base) give
one line ``lora-patch <command>: error: <message>`` and exit 1 through ``cli.main``; bad arguments exit 2. Building the
parser imports no torch.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

OFFICIAL_GENERATORS = ("stargan", "attgan", "attgan_inject1", "hisd")  # patches.official.OFFICIAL_GENERATORS
OFFICIAL_GATES = ("basic", "input_ada", "input_ada_channel", "none")  # patches.official.GATE_MAP


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (the official scripts use 2.0), got {text!r}")
    return value


def add_official_commands(subparsers: Any) -> None:
    """Register ``import-official`` and ``export-official`` on ``subparsers`` (the ``add_subparsers()`` action)."""
    imp = subparsers.add_parser(
        "import-official", help="convert a patch saved by the paper's official code into a patch directory",
        description="Read a patched generator saved by the official LoRA-Patching code (torch.save(state_dict), "
                    "read with weights_only=True), infer the rank and gate type, and save it as a lora-patch patch "
                    "directory whose base fingerprint is the file's base weights.")
    imp.add_argument("checkpoint", metavar="CKPT", help="the official .pth file (e.g. lora_patch4stargan.pth)")
    imp.add_argument("--generator", required=True, choices=OFFICIAL_GENERATORS, help="the patched generator")
    imp.add_argument("--out", required=True, metavar="DIR", help="the patch directory to write (atomically)")
    imp.add_argument("--alpha", type=_alpha, default=2.0,
                     help="the official alpha the file was trained with (not stored in it; default: 2.0)")
    imp.add_argument("--gate", choices=OFFICIAL_GATES, default=None,
                     help="the official gate type, only when the tensors cannot tell (default: detected)")
    imp.set_defaults(func=cmd_import_official)

    exp = subparsers.add_parser(
        "export-official", help="write a patch directory as the official code's patched-generator .pth",
        description="Write a lora-patch patch as the state dict of the official code's patched generator (orig_* "
                    "base weights, lora_A / lora_B / gate per layer), loadable with model.load_state_dict after the "
                    "official inject_lora. The patch is checked against the base weights first.")
    exp.add_argument("patch", metavar="PATCH", help="the patch directory")
    exp.add_argument("--base", required=True, metavar="CKPT", help="the official generator checkpoint it patches")
    exp.add_argument("--generator", required=True, choices=OFFICIAL_GENERATORS, help="the patched generator")
    exp.add_argument("--out", required=True, metavar="FILE", help="the .pth file to write (atomically)")
    exp.add_argument("--alpha", type=_alpha, default=2.0,
                     help="the alpha the official code will run with (default: 2.0, the official value)")
    exp.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    exp.set_defaults(func=cmd_export_official)


def cmd_import_official(args: argparse.Namespace) -> int:
    from ..patches.official import import_official_patch

    print(import_official_patch(args.checkpoint, args.generator, args.out, alpha=args.alpha, gate=args.gate))
    return 0


def cmd_export_official(args: argparse.Namespace) -> int:
    from ..patches.official import export_official_patch

    print(export_official_patch(args.patch, args.base, args.generator, args.out, alpha=args.alpha,
                                overwrite=args.overwrite))
    return 0
