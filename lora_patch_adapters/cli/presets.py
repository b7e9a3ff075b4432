"""``lora-patch presets [NAME]``: the named LoraPatchConfig presets as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_presets_command(sub: Any) -> None:
    presets = sub.add_parser("presets", help="print the named LoraPatchConfig presets as JSON")
    presets.add_argument("name", nargs="?", help="one preset (default: all)")
    presets.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    from ..tuner.config import PRESETS, LoraPatchConfig

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
