"""Parts of lora_patch_adapters.patches' Hub sharing that need no Hub at all: the model card, inspect on a directory,
input checks (every case here fails or finishes before any request would be sent)."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
import yaml

from lora_patch_adapters import LoraPatchConfig, get_peft_model, patches
from lora_patch_adapters.cli.hub import add_hub_commands
from tests.helpers import ToyEditor


def _patch_dir(tmp_path, **records) -> tuple[str, int]:
    torch.manual_seed(0)
    model = get_peft_model(ToyEditor(), LoraPatchConfig(init_weights="kaiming", r=3, gate="input_adaptive"))
    path = str(tmp_path / "patch")
    model.save_pretrained(path)
    for name, data in records.items():
        with open(os.path.join(path, f"{name}.json"), "w") as f:
            json.dump(data, f)
    n = sum(p.numel() for name, p in model.named_parameters() if "lora_patch_" in name)
    return path, n


def _front_matter(card) -> dict:
    return yaml.safe_load(str(card).split("---\n")[1])


def test_error_classes():
    assert issubclass(patches.PatchNotCachedError, patches.PatchNotFoundError)
    for cls in (patches.PatchNotFoundError, patches.HubConnectionError, patches.HubAuthError):
        assert issubclass(cls, patches.HubError) and issubclass(cls, RuntimeError)
    error = patches.HubAuthError("two\nlines", repo_id="a/b", status_code=401, reason="auth")
    assert str(error) == "two lines" and error.repo_id == "a/b" and error.status_code == 401


def test_card_data_and_defensive_patch(tmp_path):
    path, n = _patch_dir(tmp_path, lora_patch={"training": {"kind": "watermark", "generator": "stargan", "steps": 5}},
                         summary={"watermark_visible_rate": 0.9})
    card = patches.make_model_card(path, repo_id="org/wm", card_data={"base_model": "org/stargan-celeba",
                                                                  "tags": ["custom", "peft"], "license": "mit"})
    meta = _front_matter(card)
    assert meta["base_model"] == "org/stargan-celeba" and meta["license"] == "mit"
    assert meta["tags"][:3] == ["peft", "lora-patch", "deepfake-security"]
    assert {"defensive-patch", "gate-input_adaptive", "stargan", "custom"} <= set(meta["tags"])
    assert meta["tags"].count("peft") == 1
    assert meta["lora_patch"]["trainable_parameters"] == n and meta["lora_patch"]["r"] == 3
    assert meta["lora_patch_evaluation"] == {"watermark_visible_rate": 0.9}
    text = str(card)
    assert "**defensive patch**" in text and "Visible rate" in text and "Defense success rate" not in text
    assert 'load_editor("stargan", checkpoint="200000-G.ckpt")' in text
    assert patches.MISUSE_STATEMENT in text
    # a generator name is never passed off as a Hub model id
    meta = _front_matter(patches.make_model_card(path, card_data={"base_model": "stargan"}))
    assert "base_model" not in meta and meta["base_generator"] == "stargan"


def test_inspect_directory(tmp_path):
    path, n = _patch_dir(tmp_path)
    info = patches.inspect_patch(path)
    assert info["trainable_parameters"] == n and info["repo_id"] is None and info["commit"] is None
    assert info["tensors"] > 0 and info["dtypes"] == ["F32"]
    # conv and transposed-conv layers alike: the rank is the dimension A and B share
    assert {layer["rank"] for layer in info["layers"]} == {3}
    assert sorted(layer["name"] for layer in info["layers"]) == sorted(info["target_modules"])
    assert info["patch"]["scale"] == pytest.approx(2.0 / 3 ** 0.5)
    json.dumps(info)  # JSON-serialisable


def test_inspect_and_push_refuse_bad_input(tmp_path, monkeypatch):
    path, _ = _patch_dir(tmp_path)
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    (pickles / "adapter_config.json").write_text("{}")
    (pickles / "adapter_model.bin").write_bytes(b"\x80")
    with pytest.raises(ValueError, match="pickle weights"):
        patches.inspect_patch(str(pickles))
    with pytest.raises(patches.PatchNotFoundError, match="no local directory") as info:
        patches.inspect_patch(str(tmp_path / "not" / "there"))
    assert info.value.reason == "repo_id"
    with pytest.raises(ValueError, match="only applies to Hub repos"):
        patches.inspect_patch(path, revision="main")
    with pytest.raises(TypeError, match="patch directory or a peft.PeftModel"):
        patches.push_patch(object(), "a/b")
    with pytest.raises(ValueError, match="commit sha"):
        patches.push_patch(path, "a/b", revision="0" * 40)
    with pytest.raises(FileNotFoundError):
        patches.push_patch(str(tmp_path / "missing"), "a/b")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with open(os.path.join(path, "adapter_model.safetensors"), "rb") as f:
        (lora / "adapter_model.safetensors").write_bytes(f.read())
    with pytest.raises(ValueError, match="not a lora-patch one"):
        patches.push_patch(str(lora), "a/b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(patches.HubConnectionError, match="offline mode"):
        patches.push_patch(path, "a/b")


def test_add_hub_commands_on_a_plain_parser():
    parser = argparse.ArgumentParser(prog="lora-patch")
    add_hub_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["push", "dir", "a/b", "--private", "--revision", "dev", "--message", "m"])
    assert (args.patch_dir, args.repo_id, args.private, args.revision, args.message) == ("dir", "a/b", True, "dev",
                                                                                          "m")
    args = parser.parse_args(["pull", "a/b", "--offline", "--out", "x"])
    assert args.offline and args.out == "x" and args.revision is None
    args = parser.parse_args(["inspect", "a/b", "--json", "--revision", "v1"])
    assert args.json and args.revision == "v1" and callable(args.func)


# ------------------------------------------------------------------------------------- fingerprint provenance
CLAIM = "sha256:" + "ab" * 32


def _card(path: str, fingerprint: str) -> None:
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write(f"---\nlibrary_name: peft\nbase_fingerprint: {fingerprint}\n---\n# a card\n")


def test_inspect_reports_a_card_fingerprint_as_claimed(tmp_path, capsys):
    from lora_patch_adapters.cli.hub import _describe

    path, _ = _patch_dir(tmp_path)
    config_file = os.path.join(path, "adapter_config.json")
    with open(config_file) as f:
        config = json.load(f)
    recorded = config.pop("base_fingerprint")
    assert recorded.startswith("sha256:") and recorded != CLAIM
    info = patches.inspect_patch(path)
    assert (info["fingerprint"], info["fingerprint_source"], info["card_fingerprint"]) == (recorded,
                                                                                        "adapter_config.json", None)
    assert "claimed" not in _describe(info)

    _card(path, CLAIM)  # the card claims another base: the patch's own record wins, the claim is reported apart
    info = patches.inspect_patch(path)
    assert (info["fingerprint"], info["fingerprint_source"], info["card_fingerprint"]) == (recorded,
                                                                                        "adapter_config.json", CLAIM)
    line = next(li for li in _describe(info).splitlines() if li.startswith("fingerprint:"))
    assert recorded in line and f"claims {CLAIM}" in line and "unverified" in line

    with open(config_file, "w") as f:
        json.dump(config, f)  # nothing in the patch files records a fingerprint: only the card's claim is left
    info = patches.inspect_patch(path)
    assert (info["fingerprint"], info["fingerprint_source"], info["card_fingerprint"]) == (CLAIM, "card (claimed)",
                                                                                        CLAIM)
    line = next(li for li in _describe(info).splitlines() if li.startswith("fingerprint:"))
    assert CLAIM in line and "claimed" in line and "not checked" in line
    # a card generated from this directory does not republish the claim as the patch's fingerprint
    card = patches.make_model_card(path)
    assert "base_fingerprint" not in _front_matter(card)
    assert f"an earlier card claimed `{CLAIM}`, unverified" in str(card)


def test_inspect_fingerprint_from_the_provenance_file(tmp_path):
    path, _ = _patch_dir(tmp_path, lora_patch={"base_fingerprint": "sha256:" + "cd" * 32})
    _card(path, CLAIM)
    info = patches.inspect_patch(path)
    assert info["fingerprint"] == "sha256:" + "cd" * 32 and info["fingerprint_source"] == "lora_patch.json"
    assert _front_matter(patches.make_model_card(path))["base_fingerprint"] == "sha256:" + "cd" * 32


# ----------------------------------------------------------------------------------------------- pull --out
def _snapshot(root, name: str, files: dict[str, bytes]) -> str:
    folder = root / "snapshots" / name
    folder.mkdir(parents=True)
    for file, content in files.items():
        (folder / file).write_bytes(content)
    return str(folder)


REV_A = {"adapter_config.json": b'{"rev": "A"}', "adapter_model.safetensors": b"weights-A" * 10,
         "summary.json": b'{"rev": "A"}'}
REV_B = {"adapter_config.json": b'{"rev": "B", "longer": true}', "adapter_model.safetensors": b"weights-B" * 12}


@pytest.fixture
def pull_cli(tmp_path, monkeypatch):
    """``lora-patch pull REPO --out DIR`` with the Hub replaced by local snapshot folders (REV_A, REV_B)."""
    from lora_patch_adapters import cli

    snapshots = {"a": _snapshot(tmp_path, "a" * 40, REV_A), "b": _snapshot(tmp_path, "b" * 40, REV_B)}

    def fake_pull(repo_id, revision=None, token=None, local_files_only=False):
        return snapshots[revision]

    monkeypatch.setattr(patches, "pull_patch", fake_pull)

    def run(revision: str, out) -> int:
        return cli.main(["pull", "tester/x", "--revision", revision, "--out", str(out)])

    return run


def _contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_pull_out_refuses_a_folder_that_is_not_a_patch(tmp_path, pull_cli, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_bytes(b"my work")
    (out / "adapter_model.safetensors").write_bytes(b"my own weights")
    assert pull_cli("a", out) == 1
    err = capsys.readouterr().err
    assert err.startswith("lora-patch pull: error: ") and "not a patch directory" in err and len(err.splitlines()) == 1
    assert _contents(out) == {"thesis.txt": b"my work", "adapter_model.safetensors": b"my own weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "snapshots"]  # no temporary folder left


def test_pull_out_never_overwrites_a_patch_it_did_not_write(tmp_path, pull_cli, capsys):
    saved, _ = _patch_dir(tmp_path)  # a patch saved by the user
    before = {name: open(os.path.join(saved, name), "rb").read() for name in os.listdir(saved)}
    assert pull_cli("a", saved) == 1
    assert "was not written by lora-patch pull" in capsys.readouterr().err
    assert {name: open(os.path.join(saved, name), "rb").read() for name in os.listdir(saved)} == before


def test_pull_out_replaces_only_what_an_earlier_pull_wrote(tmp_path, pull_cli, capsys):
    out = tmp_path / "copy"
    assert pull_cli("a", out) == 0
    assert _contents(out) == REV_A
    (out / "notes.txt").write_bytes(b"keep me")
    (out / "plots").mkdir()
    (out / "plots" / "grid.png").write_bytes(b"png")
    assert pull_cli("b", out) == 0
    assert _contents(out) == {**REV_B, "notes.txt": b"keep me"}  # A's summary.json is gone: it belonged to A
    assert (out / "plots" / "grid.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "snapshots"]
    (out / "adapter_config.json").write_bytes(b'{"edited": "by hand"}')
    capsys.readouterr()
    assert pull_cli("a", out) == 1  # an edited file is the user's now
    assert "was changed after lora-patch pull wrote it" in capsys.readouterr().err
    assert (out / "adapter_config.json").read_bytes() == b'{"edited": "by hand"}'


def test_an_interrupted_pull_leaves_the_previous_revision_whole(tmp_path, pull_cli, monkeypatch):
    import shutil

    out = tmp_path / "copy"
    assert pull_cli("a", out) == 0
    real_copyfile, calls = shutil.copyfile, []

    def copy_then_die(src, dst, *args, **kwargs):
        calls.append(src)
        if len(calls) == 2:  # killed after the new config was written, before the new weights
            raise KeyboardInterrupt
        return real_copyfile(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_then_die)
    assert pull_cli("b", out) == 130
    assert len(calls) == 2
    assert _contents(out) == REV_A  # all of revision A, nothing of B
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)
    assert pull_cli("b", out) == 0 and _contents(out) == REV_B


def test_pull_out_after_a_crash_between_the_two_renames(tmp_path, pull_cli, capsys):
    out = tmp_path / "copy"
    assert pull_cli("a", out) == 0
    out.rename(tmp_path / "copy.pull-old-x1")  # a pull killed exactly between its two renames...
    (tmp_path / "copy.pull-tmp-x2").mkdir()  # ...and another one killed while copying
    assert pull_cli("b", out) == 1
    err = capsys.readouterr().err
    assert "interrupted" in err and "copy.pull-old-x1" in err and not out.exists()
    (tmp_path / "copy.pull-old-x1").rename(out)  # what the message says to do
    assert pull_cli("b", out) == 0 and _contents(out) == REV_B
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "snapshots"]  # the stale temporary folder went
