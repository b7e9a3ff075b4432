"""Push / pull / inspect / CLI against a loopback Hub on 127.0.0.1 (no other network).

The servers run in this process; the ``huggingface_hub`` client runs in fresh interpreters
(``tests/patches/hub/scenarios.py``) because it reads ``HF_ENDPOINT`` and ``HF_HOME`` when it is imported. Each
subprocess
plays a whole scenario and writes what it saw to a JSON file; the tests below check it, and the server's own record
of requests. Importing torch + peft costs most of each subprocess's time, so the scenarios the selected tests need
start together, in threads, when the first of those tests asks for one (``jobs`` fixture).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.patches.hub.loopback_server import LoopbackHub, wait_until_closed

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKEN, READ_TOKEN = "hf_loopback_write_token", "hf_loopback_read_token"
REPO = "tester/toy-patch"
_DROP = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
         "https_proxy", "all_proxy")


def client_env(endpoint: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP)}
    env.update({
        "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_ETAG_TIMEOUT": "3",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    })
    return env


def run_scenario(name: str, endpoint: str, tmp: Path, **args) -> dict:
    home = Path(args.pop("home", tmp / "hf-home"))
    work = Path(args.setdefault("workdir", str(tmp / f"work-{name}")))
    work.mkdir(parents=True, exist_ok=True)
    out = tmp / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.patches.hub.scenarios", name, json.dumps(args), str(out)],
        cwd=REPO_ROOT, env=client_env(endpoint, home), capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, f"scenario {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:200]
    return yaml.safe_load(card.split("---\n")[1])


def assert_one_line(error: dict, cls: str) -> None:
    assert error["raised"], error
    assert cls in error["mro"], error
    assert "\n" not in error["message"] and error["message"].strip(), error


# ------------------------------------------------------------------------------------------------------- jobs
def _roundtrip_job(tmp: Path):
    with LoopbackHub(token=TOKEN, read_tokens=(READ_TOKEN,), max_requests=1500) as hub:
        return hub, run_scenario("roundtrip", hub.url, tmp, token=TOKEN, read_token=READ_TOKEN)


def _offline_job(tmp: Path, roundtrip: Future):
    """Once the roundtrip scenario is over and its server stopped: its cache, with nothing listening on the port."""
    hub, r = roundtrip.result()
    wait_until_closed(hub.port)
    roundtrip_tmp = Path(r["workdir"]).parent
    result = run_scenario("offline", hub.url, tmp, home=roundtrip_tmp / "hf-home", workdir=r["workdir"],
                          sha1=r["sha1"], sha2=r["sha2"])
    return hub.port, result


def _cli_job(tmp: Path):
    with LoopbackHub(token=TOKEN) as hub:
        return hub, run_scenario("cli_calls", hub.url, tmp, token=TOKEN)


def _cli_process_job(tmp: Path):
    """The command line as its own process, with no Hub listening."""
    return subprocess.run([sys.executable, "-m", "tests.patches.hub.scenarios", "cli", "pull", "tester/absent"],
                          cwd=REPO_ROOT, env=client_env(f"http://127.0.0.1:{closed_port()}", tmp / "home"),
                          capture_output=True, text=True, timeout=120, check=False)


def _flip_last_byte(content: bytes) -> bytes:
    return content[:-1] + bytes([content[-1] ^ 0x01])


def _integrity_job(tmp: Path):
    """Tampered downloads: the server serves other bytes than its commit metadata describes for three repos."""
    with LoopbackHub(token=TOKEN) as hub:
        hub.tamper[("tester/tampered-weights", "adapter_model.safetensors")] = _flip_last_byte  # same size, LFS
        hub.tamper[("tester/tampered-config", "adapter_config.json")] = lambda content: content + b"\n"  # regular
        hub.tamper[("tester/truncated-weights", "adapter_model.safetensors")] = lambda content: content[:-8]
        return hub, run_scenario("integrity", hub.url, tmp, token=TOKEN)


JOBS = {"roundtrip": _roundtrip_job, "offline": _offline_job, "cli": _cli_job, "cli_process": _cli_process_job,
        "integrity": _integrity_job}
NEEDS = {"offline": ("roundtrip",)}
TEST_JOBS = {  # test function -> the job it reads
    "test_round_trip_by_repo_id_sha_tag_and_branch": "roundtrip", "test_only_patch_files_travel": "roundtrip",
    "test_model_card": "roundtrip", "test_inspect": "roundtrip", "test_peft_push_to_hub_against_the_loopback_hub":
    "roundtrip", "test_errors_have_the_right_class_and_one_line": "roundtrip",
    "test_offline_after_pull_with_the_server_stopped": "offline", "test_cli_push_pull_inspect": "cli",
    "test_cli_error_in_a_real_process": "cli_process", "test_tampered_downloads_are_refused": "integrity",
    "test_corrupted_cache_is_refused_online_and_offline": "integrity",
}


@pytest.fixture(scope="module")
def jobs(request, tmp_path_factory) -> dict[str, Future]:
    """Futures of the jobs that the selected tests of this module need, all started at once."""
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    wanted = {TEST_JOBS.get(test) for test in selected}
    wanted |= {need for name in list(wanted) for need in NEEDS.get(name, ())}
    names = [name for name in JOBS if name in wanted]  # dependencies first
    pool = ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="hub-job")
    futures: dict[str, Future] = {}
    for name in names:
        deps = [futures[need] for need in NEEDS.get(name, ())]
        futures[name] = pool.submit(JOBS[name], tmp_path_factory.mktemp(f"hub-{name}"), *deps)
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture
def roundtrip(jobs):
    return jobs["roundtrip"].result()


# ------------------------------------------------------------------------------------------------------ tests
def test_round_trip_by_repo_id_sha_tag_and_branch(roundtrip):
    hub, r = roundtrip
    assert r["sha1"] != r["sha2"]
    assert r["latest_dir"] == r["sha2"] and r["pinned_dir"] == r["sha1"] and r["tagged_dir"] == r["sha1"]
    for key in ("latest_is_v2", "pinned_is_v1", "tagged_is_v1", "branch_is_v1", "repo_id_load_is_v2",
                "repo_id_pinned_load_is_v1", "weights_bytes_equal"):
        assert r[key] is True, key
    assert r["url_same"] == r["url1"]  # re-pushing identical files makes no commit
    assert [c.oid for c in hub.history(REPO)][:2] == [r["sha2"], r["sha1"]]
    assert hub.history(REPO, "experimental")[0].oid == r["url_branch"].rsplit("/", 1)[-1]
    assert r["url1"] == f"{hub.url}/{REPO}/commit/{r['sha1']}"


def test_only_patch_files_travel(roundtrip):
    hub, r = roundtrip
    v1 = hub.files(REPO, r["sha1"])
    assert set(v1) == {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
                       "training.json", "summary.json", "lora_patch.json"}
    # v2 was pushed from a model: the stale training.json / summary.json of v1 are deleted in the same commit
    assert "training.json" not in hub.files(REPO, r["sha2"]) and "summary.json" not in hub.files(REPO, r["sha2"])
    assert ".gitattributes" not in r["files_pinned"]  # pulls fetch the patch files only
    assert "adapter_model.bin" not in r["files_pinned"]
    requested = [path for _, path, _ in hub.requests]
    assert not [p for p in requested if p.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], requested
    assert hub.unhandled == [] and not hub.limit_hit and hub.rejected_peers == []


def test_model_card(roundtrip):
    _, r = roundtrip
    card = r["card_v1"]
    meta = front_matter(card)
    assert meta["library_name"] == "peft"
    assert {"peft", "lora-patch", "deepfake-security", "bypass-patch", "gate-basic", "testbed"} <= set(meta["tags"])
    assert "base_model" not in meta  # "testbed" is a generator name, not a Hub model id
    assert meta["base_generator"] == "testbed"
    assert meta["lora_patch"]["r"] == 2 and meta["lora_patch"]["gate"] == "basic"
    assert meta["lora_patch"]["trainable_parameters"] == r["v1_parameters"]
    assert meta["lora_patch_training"] == {"images": 48, "epochs": 3, "steps": 12, "seconds": 4.5}
    assert meta["lora_patch_evaluation"]["defense_success_rate_after"] == 0.125
    assert meta["lora_patch_evaluation"]["clean_psnr_db"] == 31.5
    assert meta["base_fingerprint"].startswith("sha256:")
    assert meta["base_fingerprint"] == r["inspect_repo"]["fingerprint"]
    for heading in ("## What it is", "## How to load", "## Intended use", "## Misuse", "## Evaluation",
                    "## Training"):
        assert heading in card, heading
    assert f'load_patch(editor, "{REPO}"' in card
    assert "Do not use bypass patches to defeat the protections that people apply to their own images" in card
    assert "auditing proactive defenses" in card.lower() and "watermark" in card.lower()
    meta2 = front_matter(r["card_v2"])  # pushed from a model: no records, no evaluation table
    assert "lora_patch_evaluation" not in meta2 and "## Evaluation" not in r["card_v2"]


def test_inspect(roundtrip):
    _, r = roundtrip
    remote, local = r["inspect_repo"], r["inspect_local"]
    assert remote["repo_id"] == REPO and remote["commit"] == r["sha1"]
    assert remote["trainable_parameters"] == local["trainable_parameters"] == r["v1_parameters"]
    assert remote["peft_type"] == "LORA_PATCH" and remote["patch"]["r"] == 2
    assert len(remote["layers"]) == 10 and all(layer["rank"] == 2 for layer in remote["layers"])
    assert sum(layer["parameters"] for layer in remote["layers"]) == r["v1_parameters"]
    assert remote["metrics"]["defense_success_rate_before"] == 0.95
    assert remote["training"]["steps"] == 12 and remote["kind"] == "bypass"
    assert remote["package_version"]
    assert remote["fingerprint"].startswith("sha256:") and remote["fingerprint"] == local["fingerprint"]
    # recorded by the patch files (checked by load_patch), and the generated card repeats it
    assert remote["fingerprint_source"] == local["fingerprint_source"] == "lora_patch.json"
    assert remote["card_fingerprint"] == remote["fingerprint"] and local["card_fingerprint"] is None


def test_peft_push_to_hub_against_the_loopback_hub(roundtrip):
    hub, r = roundtrip
    files = hub.files("tester/peft-native")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert json.loads(files["adapter_config.json"])["peft_type"] == "LORA_PATCH"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(r["native_files"])
    assert r["native_is_same"] is True


def test_errors_have_the_right_class_and_one_line(roundtrip):
    hub, r = roundtrip
    e = r["errors"]
    for key in ("repo_not_found", "revision_not_found", "sha_not_found", "pickle_only", "invalid_repo_id",
                "push_missing_repo", "inspect_missing"):
        assert_one_line(e[key], "PatchNotFoundError")
        assert "HubError" in e[key]["mro"] and "RuntimeError" in e[key]["mro"]
    for key in ("bad_token_pull", "bad_token_push", "no_token_push", "read_only_push"):
        assert_one_line(e[key], "HubAuthError")
    assert "tester/does-not-exist" in e["repo_not_found"]["message"]
    assert "no-such-branch" in e["revision_not_found"]["message"]
    assert "pickle" in e["pickle_only"]["message"] and "adapter_model.bin" in e["pickle_only"]["message"]
    assert "401" in e["bad_token_pull"]["message"] and "403" in e["read_only_push"]["message"]
    assert "token" in r["private_without_token"]["message"]
    assert_one_line(r["private_without_token"], "PatchNotFoundError")
    assert r["private_with_token"] is True
    assert_one_line(e["push_missing_dir"], "FileNotFoundError")
    assert_one_line(e["push_sha_revision"], "ValueError")
    assert "tester/new-repo" not in hub.repos and "tester/absent" not in hub.repos
    assert not any(path.endswith("adapter_model.bin") for _, path, _ in hub.requests)


def test_offline_after_pull_with_the_server_stopped(jobs):
    port, r = jobs["offline"].result()
    for key in ("unreachable_main_is_v2", "local_only_sha_is_v1", "load_patch_repo_id_offline",
                "env_offline_main_is_v2"):
        assert r[key] is True, key
    for key in ("no_network", "no_network_push"):
        assert_one_line(r[key], "HubConnectionError")
        assert f"127.0.0.1:{port}" in r[key]["message"] and "cannot reach the Hub" in r[key]["message"]
    assert "local_files_only" in r["no_network"]["message"]
    assert_one_line(r["not_cached"], "PatchNotCachedError")
    assert "PatchNotFoundError" in r["not_cached"]["mro"]
    assert_one_line(r["env_offline_missing"], "PatchNotCachedError")
    assert r["inspect_offline"] > 0


# --------------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    from lora_patch_adapters import cli
    from lora_patch_adapters.cli.hub import add_hub_commands

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "push" not in sub.choices:
        add_hub_commands(sub)
    return parser


@pytest.mark.parametrize("command, words", [
    ("push", ["PATCH_DIR", "REPO_ID", "--token", "--revision", "--private", "--message"]),
    ("pull", ["REPO_ID", "--revision", "--out", "--offline"]),
    ("inspect", ["PATCH_OR_REPO", "--revision", "--json"]),
])
def test_cli_help(command, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: lora-patch {command}")
    for word in words:
        assert word in text, word


def test_cli_push_pull_inspect(jobs):
    hub, r = jobs["cli"].result()
    files = hub.files("tester/cli-patch")
    history = hub.history("tester/cli-patch")
    assert "dev" in hub.repos["tester/cli-patch"].branches
    assert r["push"]["code"] == 0, r["push"]
    sha = history[0].oid
    assert f"commit: {sha}" in r["push"]["stdout"] and history[0].message == "from the CLI"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "summary.json"} <= set(files)
    assert r["push_branch"]["code"] == 0
    assert r["pull"]["code"] == 0 and sha in r["pull"]["stdout"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "training.json"} <= set(
        r["copied_files"])
    assert r["pull_offline"]["code"] == 0 and sha in r["pull_offline"]["stdout"]
    assert r["inspect_repo"]["code"] == 0
    described = json.loads(r["inspect_repo"]["stdout"])
    assert described["commit"] == sha and described["trainable_parameters"] == r["local_parameters"]
    assert r["inspect_dir"]["code"] == 0 and f"{r['local_parameters']:,}" in r["inspect_dir"]["stdout"]
    expected = {"pull_missing": ("pull", "not found"), "pull_bad_revision": ("pull", "nope"),
                "push_bad_token": ("push", "401"), "push_missing_dir": ("push", "not found"),
                "inspect_offline_missing": ("inspect", "offline")}
    for key, (command, needle) in expected.items():
        call = r[key]
        assert call["code"] == 1, (key, call)
        lines = call["stderr"].splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lora-patch {command}: error: "), (key, call["stderr"])
        assert needle in lines[0], (key, lines[0])
        assert "Traceback" not in call["stderr"]
    assert r["pull_no_args"]["code"] == 2 and len(r["pull_no_args"]["stderr"].splitlines()) == 1


def test_cli_error_in_a_real_process(jobs):
    """The command line as its own process: exit status 1, one line on stderr, nothing on stdout, no traceback."""
    proc = jobs["cli_process"].result()
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("lora-patch pull: error: cannot reach the Hub at http://127.0.0.1:"), proc.stderr


# --------------------------------------------------------------------------------------------------- integrity
def _assert_integrity(error: dict, *needles: str) -> None:
    assert_one_line(error, "PatchIntegrityError")
    assert "HubError" in error["mro"] and "RuntimeError" in error["mro"], error
    for needle in needles:
        assert needle in error["message"], (needle, error["message"])


def test_tampered_downloads_are_refused(jobs):
    hub, r = jobs["integrity"].result()
    weights = r["tester/tampered-weights"]  # same size: only the LFS sha256 tells
    _assert_integrity(weights, "adapter_model.safetensors", "sha256", r["sha256_weights"], "delete", "pull again")
    assert weights["reason"] == "integrity" and weights["path"] and "/blobs/" in weights["path"]
    config = r["tester/tampered-config"]  # a regular file, one byte longer
    _assert_integrity(config, "adapter_config.json", f"expected {r['size_config']} bytes",
                      f"got {r['size_config'] + 1}")
    _assert_integrity(r["tester/truncated-weights"], "size")  # huggingface_hub's own size check, mapped
    _assert_integrity(r["tampered_weights_load"], "adapter_model.safetensors")
    _assert_integrity(r["tampered_weights_inspect"], "adapter_model.safetensors")
    cli = r["tampered_cli"]
    assert cli["code"] == 1 and not cli["out_exists"], cli
    assert len(cli["stderr"].splitlines()) == 1 and cli["stderr"].startswith("lora-patch pull: error: "), cli
    assert "adapter_model.safetensors" in cli["stderr"] and "Traceback" not in cli["stderr"]
    # the server did serve the tampered bytes: the refusals come from verification, not from a failed download
    assert hub.paths_requested("/adapter_model.safetensors") and hub.unhandled == []


def test_corrupted_cache_is_refused_online_and_offline(jobs):
    _, r = jobs["integrity"].result()
    assert r["record_written"] is True and r["clean_bytes_equal"] is True
    for key in ("corrupt_offline", "corrupt_online", "corrupt_load"):
        _assert_integrity(r[key], "adapter_model.safetensors", "sha256", r["sha256_weights"], r["corrupt_blob"])
    assert r["corrupt_offline"]["path"] == r["corrupt_blob"]
    assert "verified when it was pulled" in r["corrupt_offline"]["message"]
    assert "on the Hub" in r["corrupt_online"]["message"]
    # deleting the named cache entry and pulling again repairs it, online and then offline
    for key in ("repulled_bytes_equal", "repulled_loads", "offline_after_repull", "tree_cache_ok"):
        assert r[key] is True, key
    _assert_integrity(r["config_grown_offline"], "adapter_config.json", f"expected {r['size_config']} bytes")
    _assert_integrity(r["tree_cache_corrupt"], "adapter_model.safetensors", "git blob id", "huggingface_hub")
    _assert_integrity(r["unverifiable"], "cannot be verified offline", "network access")
    assert r["unverifiable"]["reason"] == "unverified"
