"""``lora-patch forensics``: has this generator been patched?

``add_forensics_command(subparsers)`` registers the subcommand on the ``lora-patch`` parser (``cli.build_parser``)::

    lora-patch forensics --model CKPT --reference CKPT_OR_FINGERPRINT [--json] [--rtol X]

It prints a table of the changed layers and the verdict line (``--json``: one JSON object on stdout) and exits 0
whatever the verdict. Errors become ``CLIError`` (``lora-patch forensics: error: <one line>``, exit 1) through
``cli.main``. Building the parser imports no torch.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

DEFAULT_RTOL = 1e-5  # forensics.DEFAULT_RTOL, kept literal so that the parser imports no torch


def _rtol(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), e.g. 1e-5, got {text!r}")
    return value


def add_forensics_command(subparsers: Any) -> None:
    """Register ``forensics`` on ``subparsers`` (the ``add_subparsers()`` action of the ``lora-patch`` parser)."""
    parser = subparsers.add_parser(
        "forensics", help="tell whether a generator carries a patch (merged low-rank, unmerged) or another change",
        description="Compare a generator checkpoint with its reference weights, layer by layer: the numerical "
                    "rank of each weight difference tells a merged low-rank patch (W + B A: every changed layer "
                    "has a small rank) from a fine-tune (dense, full-rank changes); adapter tensors in the file mean "
                    "an unmerged patch. With a fingerprint (or a patch directory) as reference, only match / "
                    "mismatch can be told. Files are read with safetensors or torch.load(weights_only=True). Exits 0 "
                    "whatever the verdict.")
    parser.add_argument("--model", required=True, metavar="CKPT",
                        help="the generator to examine: .safetensors, or .pt/.pth/.ckpt (a state dict, or an official "
                             "checkpoint with the generator under 'G', 'gen_test' or 'gen')")
    parser.add_argument("--reference", required=True, metavar="CKPT_OR_FINGERPRINT",
                        help="the original weights (same formats), a fingerprint 'sha256:<64 hex>' "
                             "(lora_patch_adapters.tuner.fingerprint.base_fingerprint), or a patch directory / its "
                             "lora_patch.json (its recorded base fingerprint)")
    parser.add_argument("--json", action="store_true", help="print the full report as one JSON object")
    parser.add_argument("--rtol", type=_rtol, default=DEFAULT_RTOL, metavar="X",
                        help="singular values below X times the largest are not counted in a layer's rank; a "
                             f"round-off floor from the weights' dtype applies too (default: {DEFAULT_RTOL:g})")
    parser.set_defaults(func=cmd_forensics)


def _cli_error(exc: BaseException) -> Exception:
    # imported here: building this command's parser must import nothing of the package (tested by loading it alone)
    from .._checks import one_line
    from ._args import CLIError

    return CLIError(one_line(exc) or type(exc).__name__, 1)


def cmd_forensics(args: argparse.Namespace) -> int:
    import torch

    from ..forensics import analyse

    # The work is a few hundred small SVDs, which a second OpenMP thread barely speeds up; on a 2-core machine with
    # a core busy elsewhere it slowed a StarGAN-sized analysis from 0.8 s to 3-22 s (threads waiting for each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = analyse(args.model, args.reference, rtol=args.rtol)
    except (ValueError, OSError, TypeError) as exc:
        raise _cli_error(exc) from exc
    finally:
        torch.set_num_threads(threads)
    if args.json:
        data = report.to_dict()
        data["model"], data["reference"] = args.model, args.reference
        print(json.dumps(data, indent=2, allow_nan=False))
    else:
        print(render(report))
    return 0


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def render(report: Any) -> str:
    """The human-readable report: changed layers as a table, adapters, fingerprints, notes, the verdict line."""
    lines = [f"model:     {report.model}", f"reference: {report.reference} ({report.reference_kind})"]
    changed = [layer for layer in report.layers if layer.changed]
    if changed:
        rows = [("layer", "shape", "changed", "rank", "rel. change", "verdict")]
        for layer in changed:
            rank = "-" if layer.rank is None else f"{layer.rank}/{layer.full_rank}"
            shape = "x".join(str(d) for d in layer.shape) or "scalar"
            rows.append((layer.name, shape, "yes", rank, _number(layer.relative_change), layer.verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.append("")
    elif report.reference_kind == "weights":
        lines.append(f"no tensor differs beyond float round-off ({len(report.layers)} compared)")
    for what, names in (("added", report.added), ("removed", report.removed)):
        if names:
            lines.append(f"{what} ({len(names)}): {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    if report.fingerprint:
        fp = report.fingerprint
        lines.append(f"fingerprint over {fp['layers']} layers: {'match' if fp['match'] else 'mismatch'}")
        lines.append(f"  expected {fp['expected']}")
        lines.append(f"  actual   {fp['actual']}")
    patch = report.unmerged_patch
    if patch:
        lines.append(f"adapter tensors: {patch['tensors']} ({patch['kind']}), adapters {', '.join(patch['adapters'])}, "
                     f"{patch['layers']} layers, rank {patch['rank']} (numerical rank of B A: "
                     f"{patch['numerical_rank']})")
    lines += [f"note: {note}" for note in report.notes]
    lines.append(f"verdict: {report.summary()}")
    return "\n".join(lines)
