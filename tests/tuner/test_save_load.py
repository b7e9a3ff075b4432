"""save_pretrained writes only the patch, deterministically; a fresh interpreter restores identical outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import peft
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_patch_adapters import LoraPatchConfig, get_peft_model
from tests.helpers import MixedNet, ToyEditor, images, labels

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )


def _trained_patch(gate="basic"):
    torch.manual_seed(0)
    model = MixedNet()
    patched = get_peft_model(model, LoraPatchConfig(init_weights="kaiming", include_linear=True, gate=gate, r=4))
    with torch.no_grad():
        for n, p in patched.named_parameters():
            if "lora_patch_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return patched


def test_files_hold_only_the_patch(tmp_path):
    patched = _trained_patch()
    patched.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path))
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    expected = {
        f"base_model.model.{layer}.lora_patch_{part}"
        for layer in ("conv", "up", "head")
        for part in ("A.weight", "B.weight", "gate.logit")
    }
    assert set(tensors) == expected
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA_PATCH"
    assert config["target_modules"] == ["conv", "head", "up"]
    assert config["gate"] == "basic" and config["r"] == 4


def test_key_order_and_bytes_are_deterministic(tmp_path):
    _trained_patch().save_pretrained(tmp_path / "one")
    _trained_patch().save_pretrained(tmp_path / "two")
    one = (tmp_path / "one" / "adapter_model.safetensors").read_bytes()
    two = (tmp_path / "two" / "adapter_model.safetensors").read_bytes()
    assert one == two
    with safe_open(tmp_path / "one" / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys == sorted(keys)
    assert (tmp_path / "one" / "adapter_config.json").read_bytes() == (
        tmp_path / "two" / "adapter_config.json"
    ).read_bytes()


@pytest.mark.parametrize("gate", ["basic", "input_adaptive_channel"])
def test_fresh_interpreter_round_trip(tmp_path, gate):
    patched = _trained_patch(gate)
    x = images(2, 32)
    with torch.no_grad():
        expected = patched(x)
    patched.save_pretrained(tmp_path / "patch")
    base_state = {k: v.contiguous() for k, v in patched.unload().state_dict().items()}
    save_file({**base_state, "__x": x, "__expected": expected}, tmp_path / "io.safetensors")
    result = _run_fresh(
        f"""
        import peft, torch
        from safetensors.torch import load_file
        import lora_patch_adapters
        from tests.helpers import MixedNet
        cfg = peft.PeftConfig.from_pretrained({str(tmp_path / "patch")!r})
        assert type(cfg).__name__ == "LoraPatchConfig", type(cfg)
        assert isinstance(cfg, lora_patch_adapters.LoraPatchConfig)
        assert cfg.gate == {gate!r} and cfg.r == 4 and cfg.target_modules == ["conv", "head", "up"]
        io = load_file({str(tmp_path / "io.safetensors")!r})
        base = MixedNet()
        base.load_state_dict({{k: v for k, v in io.items() if not k.startswith("__")}})
        model = peft.PeftModel.from_pretrained(base, {str(tmp_path / "patch")!r})
        assert isinstance(model.base_model, lora_patch_adapters.LoraPatchModel)
        with torch.no_grad():
            out = model(io["__x"])
        print("MAXDIFF", (out - io["__expected"]).abs().max().item())
        """
    )
    assert result.returncode == 0, result.stderr
    max_diff = float(result.stdout.split("MAXDIFF")[1])
    assert max_diff == 0.0


def test_load_rejects_other_base_architecture(tmp_path):
    _trained_patch().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\['conv', 'head', 'up'\] not found in the base model"):
        peft.PeftModel.from_pretrained(ToyEditor(), tmp_path)


def test_pretrained_toy_generator_reload_is_trainable(tmp_path):
    generator = ToyEditor()
    patched = get_peft_model(generator, LoraPatchConfig(init_weights="kaiming"))
    patched.save_pretrained(tmp_path)
    fresh = ToyEditor()
    fresh.load_state_dict(patched.unload().state_dict())
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path, is_trainable=True)
    trainable = [n for n, p in reloaded.named_parameters() if p.requires_grad]
    assert trainable and all("lora_patch_" in n for n in trainable)
    reloaded(images(1, 32), labels(1)).mean().backward()
    assert all(p.grad is not None for p in reloaded.parameters() if p.requires_grad)


@pytest.mark.parametrize("gate", ["none", "basic", "input_adaptive", "input_adaptive_channel"])
def test_every_gate_round_trips_with_flat_keys(tmp_path, gate):
    """Each adapter tensor is saved as <layer>.lora_patch_<part>.<param> (no nested module), the layout every
    supported peft version maps back to the adapter name."""
    patched = _trained_patch(gate)
    x = images(2, 32)
    with torch.no_grad():
        expected = patched(x)
    patched.save_pretrained(tmp_path)
    for key in load_file(tmp_path / "adapter_model.safetensors"):
        part = key.split(".lora_patch_")[1]
        assert part.count(".") == 1, key
    base = MixedNet()
    base.load_state_dict(patched.unload().state_dict())
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)
