"""``lora-patch app``: the interactive page (:mod:`lora_patch_adapters.app`) on a local port.

Everything is checked before the server starts: the port (a number in 1..65535, free on the host), gradio (the
``[app]`` extra), the generator and the patch directories (loaded and validated onto the generator).
"""

from __future__ import annotations

import argparse
import errno
import socket
from typing import Any

from ._args import GENERATORS, CLIError, device_name

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {text!r}")
    return value


def add_app_command(sub: Any) -> None:
    app = sub.add_parser(
        "app", help="an interactive page: protect a face, see base / bypass-patched / defensive-patched edits",
        description="Serve a local web page (Gradio, the [app] extra) where you pick a testbed face or upload one, "
                    "a target edit and a defense, and see side by side the clean edit and the edits of the "
                    "protected face on the base generator, the bypass-patched generator (--patch) and the "
                    "defensive-patched generator (--defensive), with MSE, PSNR and defense success (MSE > 0.05). "
                    "Nothing is downloaded and no share link is made.")
    app.add_argument("--generator", choices=GENERATORS, default="testbed",
                     help="the editor (default: testbed, the small StarGAN shipped with the package)")
    app.add_argument("--checkpoint", metavar="PATH",
                     help="official generator weights (required for stargan, attgan, attgan_inject1, hisd)")
    app.add_argument("--patch", metavar="DIR",
                     help="a bypass patch directory for the third column (e.g. runs/demo/bypass_patch)")
    app.add_argument("--defensive", metavar="DIR",
                     help="a defensive patch directory for the fourth column (e.g. runs/demo/watermark_patch)")
    app.add_argument("--host", default=DEFAULT_HOST,
                     help=f"address to serve on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 exposes the "
                          "page to your network)")
    app.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"(default: {DEFAULT_PORT})")
    app.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    app.set_defaults(func=cmd_app)


def check_port(host: str, port: int) -> None:
    """:class:`CLIError` unless ``port`` can be bound on ``host`` now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CLIError(f"--host {host!r}: not an address of this machine ({exc.strerror})", code=2) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CLIError(f"--port {port}: the port is in use on {host}; pick another with --port N") from None
            raise CLIError(f"--host {host} --port {port}: cannot serve there ({exc.strerror or exc})") from None


def cmd_app(args: argparse.Namespace) -> int:
    from ..app import INSTALL_HINT, AppDependencyError, AppSession, gradio_available, launch_app

    if not gradio_available():
        raise CLIError(f"the app needs gradio, which is not installed: {INSTALL_HINT}")
    check_port(args.host, args.port)
    session = AppSession(generator=args.generator, checkpoint=args.checkpoint, patch=args.patch,
                         defensive=args.defensive, device=args.device)
    if args.host not in LOOPBACK:
        print(f"lora-patch app: serving on {args.host}: the page is reachable from other machines", flush=True)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"lora-patch app: starting on http://{shown}:{args.port} (Ctrl+C to stop)", flush=True)
    try:
        launch_app(session, host=args.host, port=args.port)
    except AppDependencyError as exc:
        raise CLIError(str(exc)) from None
    return 0
