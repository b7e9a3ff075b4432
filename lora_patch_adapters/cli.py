"""The ``lora-patch`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .version import __version__


def _cmd_presets(args: argparse.Namespace) -> int:
    from .tuner.config import PRESETS, LoraPatchConfig

    if args.name is not None and args.name not in PRESETS:
        print(f"lora-patch: unknown preset {args.name!r}; choose one of {sorted(PRESETS)}", file=sys.stderr)
        return 2
    names = [args.name] if args.name else sorted(PRESETS)
    out = {}
    for name in names:
        config = LoraPatchConfig.from_preset(name)
        out[name] = {**PRESETS[name], "scale": config.scale}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-patch", description="Gated LoRA patches for face-editing generators (a PEFT method)."
    )
    parser.add_argument("--version", action="version", version=f"lora-patch-adapters {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    presets = sub.add_parser("presets", help="print the named LoraPatchConfig presets as JSON")
    presets.add_argument("name", nargs="?", help="one preset (default: all)")
    presets.set_defaults(func=_cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
