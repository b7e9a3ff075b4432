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
