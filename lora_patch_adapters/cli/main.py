"""The ``lora-patch`` parser and entry point: parse, call the command, turn user errors into one line.

Errors in the user's input print one line ``lora-patch <command>: error: <message>`` and exit with 2 (usage) or
1 (bad files, unavailable encoders, invalid settings found at run time, a diverging run); warnings print one line
``lora-patch <command>: warning: <message>``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .._checks import one_line
from ..version import __version__
from ._args import ENCODER_HINT, CLIError, Parser
from .app import add_app_command
from .audit import add_audit_command
from .audit_defensive import add_audit_defensive_command
from .demo import add_demo_command
from .evaluate import add_evaluate_command
from .forensics import add_forensics_command
from .hub import add_hub_commands
from .official import add_official_commands
from .presets import add_presets_command
from .reproduce import add_reproduce_command
from .train import add_train_commands


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lora-patch", description="Gated LoRA patches for face-editing generators (a PEFT method).")
    parser.add_argument("--version", action="version", version=f"lora-patch-adapters {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_presets_command(sub)
    add_train_commands(sub)  # train, train-defensive
    add_evaluate_command(sub)
    add_demo_command(sub)
    add_hub_commands(sub)  # push, pull, inspect
    add_forensics_command(sub)
    add_audit_command(sub)
    add_audit_defensive_command(sub)
    add_official_commands(sub)  # import-official, export-official
    add_reproduce_command(sub)
    add_app_command(sub)
    return parser


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input or settings (one-line error, exit 1), not bugs."""
    from ..generators.checkpoints import CheckpointError
    from ..losses import EncoderUnavailableError
    from ..patches import HubError
    from ..runs.errors import RunInputError
    from ..training import CheckpointError as TrainingCheckpointError
    from ..training import NonFiniteLossError

    return (CLIError, RunInputError, CheckpointError, TrainingCheckpointError, EncoderUnavailableError,
            NonFiniteLossError, HubError, OSError, ValueError, TypeError)


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, CLIError):
        return exc.code
    return 2 if getattr(exc, "usage", False) else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = argv
    prog = f"lora-patch {args.command}"
    seen: set[str] = set()

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        text = one_line(message)
        if text not in seen:
            seen.add(text)
            print(f"{prog}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if args.command == "presets" or not isinstance(exc, _runtime_errors()):
                raise
            from ..losses import EncoderUnavailableError

            message = one_line(exc) or type(exc).__name__
            if isinstance(exc, EncoderUnavailableError):
                message += f" ({ENCODER_HINT})"
            print(f"{prog}: error: {message}", file=sys.stderr)
            return _exit_code(exc)

