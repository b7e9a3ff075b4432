"""``lora-patch push`` / ``pull`` / ``inspect``: share patches through the Hugging Face Hub.

``add_hub_commands(subparsers)`` registers the three subcommands on the ``lora-patch`` parser
(``cli.main.build_parser``)::

    lora-patch push PATCH_DIR REPO_ID [--token T] [--revision BRANCH] [--private] [--message TEXT]
    lora-patch pull REPO_ID [--revision REV] [--out DIR] [--offline] [--token T]
    lora-patch inspect PATCH_OR_REPO [--revision REV] [--json] [--offline]

Errors become ``CLIError`` (``lora-patch <command>: error: <one line>``, exit 1) through ``cli.main``. Building the
parser imports neither torch nor huggingface_hub.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .._checks import one_line


def add_hub_commands(subparsers: Any) -> None:
    """Register ``push``, ``pull`` and ``inspect`` on ``subparsers`` (the ``add_subparsers()`` action of the
    ``lora-patch`` parser)."""
    push = subparsers.add_parser(
        "push", help="upload a patch directory to the Hugging Face Hub (with a generated model card)",
        description="Upload a patch directory (adapter_config.json, adapter_model.safetensors and, when present, "
                    "lora_patch.json, training.json, summary.json) to a Hub model repo, with a generated model card "
                    "README.md (config, base fingerprint, training budget, evaluation, intended use and misuse). "
                    "Pickle files are never uploaded. Prints the commit sha: pull with --revision SHA to get exactly "
                    "these weights.")
    push.add_argument("patch_dir", metavar="PATCH_DIR", help="the patch directory (e.g. OUT/patch of lora-patch train)")
    push.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repo, namespace/name (created if missing)")
    push.add_argument("--token", metavar="TOKEN",
                      help="Hub token with write access (default: the HF_TOKEN variable or the stored login)")
    push.add_argument("--revision", metavar="BRANCH",
                      help="branch to commit to, created from main if missing (default: main)")
    push.add_argument("--private", action="store_true", help="create the repo private (no effect if it exists)")
    push.add_argument("--message", metavar="TEXT", help="commit message (default: a summary of the patch)")
    push.set_defaults(func=cmd_push)

    pull = subparsers.add_parser(
        "pull", help="download a patch from the Hugging Face Hub into the local cache",
        description="Download the patch files of one revision of a Hub repo (never pickle files) into the "
                    "huggingface_hub cache, verify each against the commit's sizes and hashes, and print where they "
                    "are. A commit sha pins the exact weights; a branch or tag follows it. --offline reads the cache "
                    "only (also when HF_HUB_OFFLINE=1 is set), verified against the hashes recorded when it was "
                    "pulled.")
    pull.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repo, namespace/name")
    pull.add_argument("--revision", metavar="REV", help="commit sha, branch or tag (default: main)")
    pull.add_argument("--out", metavar="DIR",
                      help="also copy the patch files into DIR, atomically (a temporary sibling folder swapped in): "
                           "DIR must be new, empty or the folder of an earlier pull (recorded in "
                           ".lora-patch-pull.json); only files an earlier pull wrote are replaced, your other files "
                           "stay")
    pull.add_argument("--offline", action="store_true", help="no network: use the local cache only")
    pull.add_argument("--token", metavar="TOKEN",
                      help="Hub token for private repos (default: the HF_TOKEN variable or the stored login)")
    pull.set_defaults(func=cmd_pull)

    inspect = subparsers.add_parser(
        "inspect", help="describe a patch directory or Hub repo (config, size, layers, fingerprint, metrics)",
        description="Describe a patch without loading its weights: its config, parameter count (from the "
                    "safetensors header), patched layers, base generator fingerprint, package version, training "
                    "budget and evaluation metrics. A Hub repo is pulled into the cache first.")
    inspect.add_argument("source", metavar="PATCH_OR_REPO", help="a patch directory or a Hub repo id (namespace/name)")
    inspect.add_argument("--revision", metavar="REV", help="commit sha, branch or tag of a Hub repo (default: main)")
    inspect.add_argument("--json", action="store_true", help="print the full description as JSON")
    inspect.add_argument("--offline", action="store_true", help="no network: use the local cache only")
    inspect.set_defaults(func=cmd_inspect)


# ----------------------------------------------------------------------------------------------------- commands
def _cli_error(exc: BaseException) -> Exception:
    from ._args import CLIError

    return CLIError(one_line(exc) or type(exc).__name__, 1)


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..patches import HubError

    return (HubError, OSError, ValueError, TypeError)


def cmd_push(args: argparse.Namespace) -> int:
    from ..patches import push_patch

    if not os.path.isdir(args.patch_dir):
        raise _cli_error(FileNotFoundError(f"patch directory {args.patch_dir!r} not found"))
    try:
        url = push_patch(args.patch_dir, args.repo_id, token=args.token, revision=args.revision,
                         private=args.private, commit_message=args.message)
    except _user_errors() as exc:
        raise _cli_error(exc) from exc
    commit = url.rstrip("/").rsplit("/", 1)[-1]
    print(f"pushed {args.patch_dir} to {args.repo_id} (branch {args.revision or 'main'})")
    print(f"commit: {commit}")
    print(f"url:    {url}")
    print(f"pull:   lora-patch pull {args.repo_id} --revision {commit}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from ..patches import pull_patch
    from ..patches.pull_out import check_pull_out, copy_pulled_patch

    try:
        if args.out is not None:
            check_pull_out(args.out)  # refused before anything is downloaded
        path = pull_patch(args.repo_id, revision=args.revision, token=args.token, local_files_only=args.offline)
        commit = os.path.basename(os.path.normpath(path))
        print(f"pulled {args.repo_id} at {args.revision or 'main'} (commit {commit})")
        print(f"cache:  {path}")
        if args.out is not None:
            print(f"copied: {copy_pulled_patch(path, args.out, repo_id=args.repo_id, revision=args.revision)}")
    except _user_errors() as exc:
        raise _cli_error(exc) from exc
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..patches import inspect_patch

    try:
        info = inspect_patch(args.source, revision=args.revision, local_files_only=args.offline)
    except _user_errors() as exc:
        raise _cli_error(exc) from exc
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    print(_describe(info))
    return 0


def _describe(info: dict[str, Any]) -> str:
    patch = info.get("patch") or {}
    where = info["source"] if not info.get("repo_id") else (
        f"{info['repo_id']} at {info.get('revision') or 'main'} (commit {info.get('commit')})")
    scale = patch.get("scale")
    lines = [
        f"patch:       {where}",
        f"path:        {info['path']}",
        f"type:        {info.get('peft_type')}" + (f", {info['kind']} patch" if info.get("kind") else ""),
        (f"config:      rank {patch.get('r')}, alpha {patch.get('lora_alpha')} ({patch.get('scaling')}"
         + (f", scale {scale:.4g}" if isinstance(scale, float) else "") + f"), gate {patch.get('gate')} "
         f"(init {patch.get('gate_init')}), init {patch.get('init_weights')}, forward {patch.get('forward_mode')}"),
        (f"parameters:  {info['trainable_parameters']:,} in {info['tensors']} tensors "
         f"({', '.join(info.get('dtypes') or [])}), {len(info['layers'])} layers"),
        f"generator:   {info.get('base_generator') or 'unknown'}",
        f"fingerprint: {_fingerprint_line(info)}",
        f"version:     lora-patch-adapters {info.get('package_version') or 'unknown'}",
    ]
    if info.get("training"):
        lines.append("training:    " + ", ".join(f"{k} {_fmt(v)}" for k, v in info["training"].items()))
    for key, value in (info.get("metrics") or {}).items():
        lines.append(f"metric:      {key} = {_fmt(value)}")
    lines.append("layers:")
    width = max((len(layer["name"]) for layer in info["layers"]), default=0)
    for layer in info["layers"]:
        lines.append(f"  {layer['name']:<{width}}  rank {layer['rank']}  {layer['parameters']:,} parameters")
    return "\n".join(lines)


def _fingerprint_line(info: dict[str, Any]) -> str:
    """The base fingerprint and whether the patch records it or a model card merely claims it."""
    value, source, claim = info.get("fingerprint"), info.get("fingerprint_source"), info.get("card_fingerprint")
    if not value:
        return "not recorded"
    if source == "card (claimed)":
        return f"{value} (claimed by the model card only: not recorded by the patch files, not checked)"
    line = f"{value} (recorded in {source}; load_patch checks it against the base model)"
    if claim and claim != value:
        line += f"; the model card claims {claim} instead (unverified)"
    return line


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
