"""Client side of the Hub tests, run in a fresh interpreter (``huggingface_hub`` reads ``HF_ENDPOINT`` / ``HF_HOME``
when it is imported, so the pytest process, which imported it already, cannot be the client).

``python -m tests.patches.hub.scenarios SCENARIO ARGS_JSON RESULT_JSON`` runs one whole scenario against the loopback
Hub named by ``HF_ENDPOINT`` and writes what it saw to RESULT_JSON; ``python -m tests.patches.hub.scenarios cli
ARGV...`` is the ``lora-patch`` command line with the hub commands wired in.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import traceback
from typing import Any

REPO = "tester/toy-patch"


# ------------------------------------------------------------------------------------------------------- helpers
def cli_main(argv: list[str]) -> int:
    """``lora_patch_adapters.cli.main`` with ``push`` / ``pull`` / ``inspect`` registered."""
    from lora_patch_adapters import cli
    from lora_patch_adapters.cli.hub import add_hub_commands

    original = getattr(cli.build_parser, "__wrapped_hub__", cli.build_parser)

    def build_parser() -> argparse.ArgumentParser:
        parser = original()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "push" not in sub.choices:
            add_hub_commands(sub)
        return parser

    build_parser.__wrapped_hub__ = original  # type: ignore[attr-defined]
    cli.build_parser = build_parser
    return cli.main(argv)


def _toy_base(seed: int = 0) -> dict[str, Any]:
    import torch

    from tests.helpers import ToyEditor

    torch.manual_seed(seed)
    return copy.deepcopy(ToyEditor().state_dict())


def _fresh_editor(base_state: dict[str, Any]):
    from tests.helpers import ToyEditor

    editor = ToyEditor()
    editor.load_state_dict(base_state)
    return editor.eval()


def _random_patch(base_state: dict[str, Any], seed: int):
    """A toy editor with a random (kaiming A and B, random gate) patch: nothing trained, all of it non-trivial."""
    import torch

    from lora_patch_adapters import LoraPatchConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(_fresh_editor(base_state), LoraPatchConfig(init_weights="kaiming", r=2))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_patch_gate" in name:
                param.copy_(torch.randn_like(param))
    return model.eval()


def _inputs():
    import torch

    from tests.helpers import images, labels

    torch.manual_seed(123)
    return images(2, 32), labels(2)


def _outputs(model) -> Any:
    import torch

    x, c = _inputs()
    with torch.no_grad():
        return model(x, c)


def _save(model, directory: str, metadata: dict[str, Any] | None = None) -> str:
    from lora_patch_adapters.patches import save_patch

    return save_patch(model, directory, metadata=metadata)


def _load(base_state: dict[str, Any], source: str, revision: str | None = None):
    """Load a patch (a directory or a repo id, pulled through patches.pull_patch) onto a fresh toy editor."""
    from lora_patch_adapters.patches import load_patch

    return load_patch(_fresh_editor(base_state), source, revision=revision).eval()


def _same(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _read(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


def _error(fn, *args, **kwargs) -> dict[str, Any]:
    """Run ``fn`` expecting an exception: its class names (MRO, up to Exception) and message."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which checks the class
        names = [cls.__name__ for cls in type(exc).__mro__ if cls not in (BaseException, object)]
        return {"raised": True, "type": type(exc).__name__, "mro": names, "message": str(exc),
                "module": type(exc).__module__, "reason": getattr(exc, "reason", None),
                "path": getattr(exc, "path", None)}
    return {"raised": False}


TRAINING_RECORD = {"kind": "bypass", "steps": 12, "epochs_completed": 3, "generator": "testbed", "images": 48,
                   "data": "48 procedural testbed faces (train split, seed 0)", "config": {"epochs": 3}}
"""The training record ``lora-patch train`` saves in lora_patch.json (budget fields)."""


def _write_records(directory: str) -> None:
    """A run's summary.json placed beside the patch (evaluation numbers, training seconds), and the training.json an
    older version wrote (transported, not read)."""
    with open(os.path.join(directory, "training.json"), "w") as f:
        json.dump({"kind": "bypass", "steps": 12, "epochs_completed": 3, "generator": "testbed",
                   "data": "48 procedural testbed faces (train split, seed 0)", "config": {"epochs": 3},
                   "version": "0.1.0"}, f)
    with open(os.path.join(directory, "summary.json"), "w") as f:
        json.dump({"defense_success_rate_before": 0.95, "defense_success_rate_after": 0.125,
                   "defense_success_rate_after_leakage": 0.25, "clean_psnr_db": 31.5,
                   "training": {"steps": 12, "seconds": 4.5}}, f)


# ----------------------------------------------------------------------------------------------------- scenarios
def scenario_roundtrip(args: dict[str, Any]) -> dict[str, Any]:
    """Push twice (a directory, then a PeftModel), pull latest / pinned sha / tag / branch, load, compare outputs;
    card, inspect, PeftModel.push_to_hub, private repos and every error class against the live server."""
    import peft
    import torch
    from huggingface_hub import HfApi

    from lora_patch_adapters import patches

    token, work = args["token"], args["workdir"]
    base = _toy_base()
    v1, v2 = _random_patch(base, seed=1), _random_patch(base, seed=2)
    out1, out2 = _outputs(v1), _outputs(v2)
    assert not _same(out1, out2)
    dir1 = _save(v1, os.path.join(work, "v1"), metadata=TRAINING_RECORD)
    _write_records(dir1)
    with open(os.path.join(dir1, "adapter_model.bin"), "wb") as f:
        f.write(b"not uploaded")  # a stray pickle next to the patch is never pushed

    url1 = patches.push_patch(dir1, REPO, token=token)
    url_same = patches.push_patch(dir1, REPO, token=token)  # unchanged files: no new commit
    url2 = patches.push_patch(v2, REPO, token=token, commit_message="second patch")
    sha1, sha2 = url1.rsplit("/", 1)[-1], url2.rsplit("/", 1)[-1]
    api = HfApi(token=token)
    api.create_tag(REPO, tag="v1", revision=sha1)
    url_branch = patches.push_patch(dir1, REPO, token=token, revision="experimental")

    latest = patches.pull_patch(REPO)
    pinned = patches.pull_patch(REPO, revision=sha1)
    tagged = patches.pull_patch(REPO, revision="v1")
    branch = patches.pull_patch(REPO, revision="experimental")
    result: dict[str, Any] = {
        "workdir": work, "sha1": sha1, "sha2": sha2, "url1": url1, "url_branch": url_branch, "url_same": url_same,
        "latest_dir": os.path.basename(latest), "pinned_dir": os.path.basename(pinned),
        "tagged_dir": os.path.basename(tagged), "files_latest": sorted(os.listdir(latest)),
        "files_pinned": sorted(os.listdir(pinned)),
        "latest_is_v2": _same(_outputs(_load(base, latest)), out2),
        "pinned_is_v1": _same(_outputs(_load(base, pinned)), out1),
        "tagged_is_v1": _same(_outputs(_load(base, tagged)), out1),
        "branch_is_v1": _same(_outputs(_load(base, branch)), out1),
        "repo_id_load_is_v2": _same(_outputs(_load(base, REPO)), out2),
        "repo_id_pinned_load_is_v1": _same(_outputs(_load(base, REPO, revision=sha1)), out1),
        "weights_bytes_equal": _read(pinned, "adapter_model.safetensors") == _read(dir1, "adapter_model.safetensors"),
        "v1_parameters": sum(p.numel() for n, p in v1.named_parameters() if "lora_patch_" in n),
    }
    with open(os.path.join(pinned, "README.md"), encoding="utf-8") as f:
        result["card_v1"] = f.read()
    with open(os.path.join(latest, "README.md"), encoding="utf-8") as f:
        result["card_v2"] = f.read()
    result["inspect_repo"] = patches.inspect_patch(REPO, revision=sha1)
    result["inspect_local"] = patches.inspect_patch(dir1)
    torch.save({"v1": out1, "v2": out2, "base": base}, os.path.join(work, "expected.pt"))  # for scenario_offline

    # peft's own path against the same server
    native = _random_patch(base, seed=3)
    native.push_to_hub("tester/peft-native", token=token)
    native_dir = patches.pull_patch("tester/peft-native")
    result["native_files"] = sorted(os.listdir(native_dir))
    editor = _fresh_editor(base)
    result["native_is_same"] = _same(_outputs(peft.PeftModel.from_pretrained(editor, native_dir).eval()),
                                     _outputs(native))

    # private repo: invisible without a token, fine with one
    patches.push_patch(dir1, "tester/private-patch", token=token, private=True)
    result["private_without_token"] = _error(patches.pull_patch, "tester/private-patch")
    result["private_with_token"] = os.path.isfile(
        os.path.join(patches.pull_patch("tester/private-patch", token=token), "adapter_model.safetensors"))

    # a repo with pickle weights only (uploaded behind the library's back)
    pickle_dir = os.path.join(work, "pickle-only")
    os.makedirs(pickle_dir)
    for name in ("adapter_config.json",):
        with open(os.path.join(dir1, name), "rb") as src, open(os.path.join(pickle_dir, name), "wb") as dst:
            dst.write(src.read())
    with open(os.path.join(pickle_dir, "adapter_model.bin"), "wb") as f:
        f.write(b"\x80\x04pickle")
    api.create_repo("tester/pickle-only")
    api.upload_folder(repo_id="tester/pickle-only", folder_path=pickle_dir)

    errors = {
        "repo_not_found": _error(patches.pull_patch, "tester/does-not-exist"),
        "revision_not_found": _error(patches.pull_patch, REPO, revision="no-such-branch"),
        "sha_not_found": _error(patches.pull_patch, REPO, revision="0" * 40),
        "pickle_only": _error(patches.pull_patch, "tester/pickle-only"),
        "invalid_repo_id": _error(patches.pull_patch, "./not a repo"),
        "bad_token_pull": _error(patches.pull_patch, REPO, token="hf_wrong"),
        "bad_token_push": _error(patches.push_patch, dir1, REPO, token="hf_wrong"),
        "no_token_push": _error(patches.push_patch, dir1, "tester/new-repo"),
        "read_only_push": _error(patches.push_patch, dir1, REPO, token=args["read_token"]),
        "push_missing_repo": _error(patches.push_patch, dir1, "tester/absent", token=token, create_repo=False),
        "push_missing_dir": _error(patches.push_patch, os.path.join(work, "nope"), REPO, token=token),
        "push_sha_revision": _error(patches.push_patch, dir1, REPO, token=token, revision=sha1),
        "inspect_missing": _error(patches.inspect_patch, "tester/does-not-exist"),
    }
    result["errors"] = errors
    return result


def scenario_offline(args: dict[str, Any]) -> dict[str, Any]:
    """After ``scenario_roundtrip``, with its server stopped: the cache serves what was pulled (v2 on main, v1 at
    ``sha1``); the rest fails with the right class."""
    import torch

    from lora_patch_adapters import patches

    expected = torch.load(os.path.join(args["workdir"], "expected.pt"), weights_only=True)
    base, sha1 = expected["base"], args["sha1"]
    result: dict[str, Any] = {}
    unreachable = patches.pull_patch(REPO)  # branch "main": resolved from the cache when the Hub cannot be reached
    result["unreachable_main_is_v2"] = _same(_outputs(_load(base, unreachable)), expected["v2"])
    result["local_only_sha_is_v1"] = _same(_outputs(_load(base, patches.pull_patch(REPO, revision=sha1,
                                                                                 local_files_only=True))),
                                           expected["v1"])
    result["load_patch_repo_id_offline"] = _same(_outputs(_load(base, REPO, revision=sha1)), expected["v1"])
    result["no_network"] = _error(patches.pull_patch, "tester/never-pulled")
    patch_dir = _save(_random_patch(base, seed=4), os.path.join(args["workdir"], "unpushed"))
    result["no_network_push"] = _error(patches.push_patch, patch_dir, "tester/never-pushed", token="hf_any")
    result["not_cached"] = _error(patches.pull_patch, REPO, revision="never-pulled-branch", local_files_only=True)
    result["inspect_offline"] = patches.inspect_patch(REPO, local_files_only=True)["trainable_parameters"]
    os.environ["HF_HUB_OFFLINE"] = "1"  # set after import: pull_patch reads it at call time
    result["env_offline_main_is_v2"] = _same(_outputs(_load(base, patches.pull_patch(REPO))), expected["v2"])
    result["env_offline_missing"] = _error(patches.pull_patch, "tester/never-pulled")
    return result


def scenario_cli(args: dict[str, Any]) -> dict[str, Any]:
    """``lora-patch push / pull / inspect`` through ``cli.main`` (in this process, one call after another)."""
    from lora_patch_adapters import patches

    work, token = args["workdir"], args["token"]
    base = _toy_base()
    patch_dir = _save(_random_patch(base, seed=5), os.path.join(work, "patch"), metadata=TRAINING_RECORD)
    _write_records(patch_dir)
    calls = {
        "push": ["push", patch_dir, "tester/cli-patch", "--token", token, "--message", "from the CLI"],
        "push_branch": ["push", patch_dir, "tester/cli-patch", "--token", token, "--revision", "dev"],
        "pull": ["pull", "tester/cli-patch", "--out", os.path.join(work, "copy")],
        "pull_offline": ["pull", "tester/cli-patch", "--offline"],
        "inspect_repo": ["inspect", "tester/cli-patch", "--json"],
        "inspect_dir": ["inspect", patch_dir],
        "pull_missing": ["pull", "tester/cli-missing"],
        "pull_bad_revision": ["pull", "tester/cli-patch", "--revision", "nope"],
        "push_bad_token": ["push", patch_dir, "tester/cli-patch", "--token", "hf_wrong"],
        "push_missing_dir": ["push", os.path.join(work, "absent"), "tester/cli-patch", "--token", token],
        "inspect_offline_missing": ["inspect", "tester/cli-missing", "--offline"],
        "pull_no_args": ["pull"],
    }
    result: dict[str, Any] = {}
    for name, argv in calls.items():
        out, err = io.StringIO(), io.StringIO()
        code: Any
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_main(argv)
            except SystemExit as exc:
                code = exc.code
            except Exception:  # noqa: BLE001 - a traceback is what the test must not see
                code = "exception"
                traceback.print_exc(file=err)
        result[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    copied = os.path.join(work, "copy")
    result["copied_files"] = sorted(os.listdir(copied)) if os.path.isdir(copied) else []
    result["local_parameters"] = patches.inspect_patch(patch_dir)["trainable_parameters"]
    return result


def _flip_byte(path: str, offset: int = -1) -> None:
    """Change one byte of a file in place (same size): a silently corrupted cache file."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


def scenario_integrity(args: dict[str, Any]) -> dict[str, Any]:
    """Downloads whose bytes differ from the commit's file metadata (the server's ``tamper`` hook, set by the test on
    ``tester/tampered-*``), then cache files corrupted after a clean pull: online and offline pulls refuse them."""
    import hashlib

    from huggingface_hub import constants

    from lora_patch_adapters import patches
    from lora_patch_adapters.patches.verify import VERIFIED_DIR

    token, work = args["token"], args["workdir"]
    base = _toy_base()
    model = _random_patch(base, seed=1)
    expected_out = _outputs(model)
    source = _save(model, os.path.join(work, "patch"), metadata=TRAINING_RECORD)
    original = {name: _read(source, name) for name in ("adapter_config.json", "adapter_model.safetensors")}
    shas = {repo: patches.push_patch(source, repo, token=token).rsplit("/", 1)[-1]
            for repo in ("tester/tampered-weights", "tester/tampered-config", "tester/truncated-weights",
                         "tester/clean")}
    result: dict[str, Any] = {"shas": shas, "sha256_weights": hashlib.sha256(original["adapter_model.safetensors"])
                              .hexdigest(), "size_config": len(original["adapter_config.json"])}
    for repo in ("tester/tampered-weights", "tester/tampered-config", "tester/truncated-weights"):
        result[repo] = _error(patches.pull_patch, repo, revision=shas[repo])
    result["tampered_weights_load"] = _error(_load, base, "tester/tampered-weights", shas["tester/tampered-weights"])
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main(["pull", "tester/tampered-weights", "--out", os.path.join(work, "out")])
    result["tampered_cli"] = {"code": code, "stderr": err.getvalue(), "out_exists": os.path.exists(
        os.path.join(work, "out"))}
    result["tampered_weights_inspect"] = _error(patches.inspect_patch, "tester/tampered-weights",
                                                revision=shas["tester/tampered-weights"])

    repo, sha = "tester/clean", shas["tester/clean"]
    clean = patches.pull_patch(repo, revision=sha)
    storage = os.path.dirname(os.path.dirname(clean))
    record = os.path.join(storage, VERIFIED_DIR, sha + ".json")
    result["record_written"] = os.path.isfile(record)
    result["clean_bytes_equal"] = all(_read(clean, n) == original[n] for n in original)
    weights = os.path.realpath(os.path.join(clean, "adapter_model.safetensors"))
    _flip_byte(weights)  # same size, one bit changed
    result["corrupt_offline"] = _error(patches.pull_patch, repo, revision=sha, local_files_only=True)
    result["corrupt_online"] = _error(patches.pull_patch, repo, revision=sha)
    result["corrupt_load"] = _error(_load, base, repo, sha)
    result["corrupt_blob"] = weights
    # the fix the message gives: delete that cache entry and pull again
    os.remove(result["corrupt_offline"].get("path") or weights)
    again = patches.pull_patch(repo, revision=sha)
    result["repulled_bytes_equal"] = _read(again, "adapter_model.safetensors") == original["adapter_model.safetensors"]
    result["repulled_loads"] = _same(_outputs(_load(base, repo, sha)), expected_out)
    result["offline_after_repull"] = _same(_outputs(_load(base, patches.pull_patch(repo, revision=sha,
                                                                                     local_files_only=True))),
                                           expected_out)
    config = os.path.realpath(os.path.join(clean, "adapter_config.json"))
    with open(config, "ab") as f:
        f.write(b" ")  # a regular (non-LFS) file grows by one byte
    result["config_grown_offline"] = _error(patches.pull_patch, repo, revision=sha, local_files_only=True)
    with open(config, "wb") as f:
        f.write(original["adapter_config.json"])

    # no record (a snapshot fetched by another tool): huggingface_hub's cached file list (git blob ids) verifies it
    if os.path.exists(record):
        os.remove(record)
    result["tree_cache_ok"] = os.path.isdir(patches.pull_patch(repo, revision=sha, local_files_only=True))
    _flip_byte(os.path.realpath(os.path.join(clean, "adapter_model.safetensors")), offset=20)
    result["tree_cache_corrupt"] = _error(patches.pull_patch, repo, revision=sha, local_files_only=True)
    if os.path.exists(os.path.join(storage, "trees", sha + ".json")):
        os.remove(os.path.join(storage, "trees", sha + ".json"))
    from huggingface_hub import _tree_cache

    _tree_cache._IN_MEMORY_TREE_CACHE.clear()  # huggingface_hub also keeps the listings it read in memory
    result["unverifiable"] = _error(patches.pull_patch, repo, revision=sha, local_files_only=True)
    result["hub_cache"] = constants.HF_HUB_CACHE
    return result


SCENARIOS = {"roundtrip": scenario_roundtrip, "offline": scenario_offline, "cli_calls": scenario_cli,
             "integrity": scenario_integrity}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "cli":
        return cli_main(argv[1:])
    name, args_json, result_path = argv
    result = SCENARIOS[name](json.loads(args_json))
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
