"""LoraPatchConfig: defaults, validation, presets."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lora_patch_adapters import PRESETS, LoraPatchConfig
from lora_patch_adapters.tuner.config import GATE_TYPES


def test_defaults():
    c = LoraPatchConfig()
    assert (c.r, c.lora_alpha, c.scaling, c.gate, c.gate_init, c.init_weights) == (
        8, 2.0, "sqrt_rank", "basic", -1.0, "zero"
    )
    assert c.target_modules is None and c.include_linear is False and c.exclude_modules is None
    assert c.modules_to_save is None and c.forward_mode == "fused"
    assert c.peft_type == "LORA_PATCH"


def test_every_field_is_documented():
    own = [f for f in dataclasses.fields(LoraPatchConfig) if f.name not in {f.name for f in dataclasses.fields(
        LoraPatchConfig.__mro__[1])}]
    assert {f.name for f in own} >= {"r", "lora_alpha", "scaling", "gate", "gate_init", "init_weights",
                                    "target_modules", "include_linear", "exclude_modules", "forward_mode"}
    for f in own:
        assert len(f.metadata.get("help", "")) > 20, f.name


@pytest.mark.parametrize("r,alpha", [(8, 2.0), (16, 2.0), (4, 1.0)])
def test_scaling_rules(r, alpha):
    assert LoraPatchConfig(r=r, lora_alpha=alpha).scale == pytest.approx(alpha / math.sqrt(r))
    assert LoraPatchConfig(r=r, lora_alpha=alpha, scaling="rank").scale == pytest.approx(alpha / r)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(r=0), "r must be a positive integer"),
        (dict(r=-3), "r must be a positive integer"),
        (dict(r=2.5), "r must be a positive integer"),
        (dict(lora_alpha=0), "lora_alpha must be > 0"),
        (dict(gate="sigmoid"), r"gate='sigmoid' is not supported; choose one of \['none', 'basic'"),
        (dict(scaling="linear"), "scaling='linear' is not supported"),
        (dict(init_weights="gaussian"), "init_weights='gaussian' is not supported"),
        (dict(forward_mode="fast"), "forward_mode='fast' is not supported"),
    ],
)
def test_invalid_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraPatchConfig(**kwargs)


def test_bad_target_modules_type():
    with pytest.raises(TypeError, match="target_modules"):
        LoraPatchConfig(target_modules=3)
    with pytest.raises(TypeError, match="module names"):
        LoraPatchConfig(target_modules=["a", 1])


def test_target_lists_are_sorted_and_deduplicated():
    assert LoraPatchConfig(target_modules={"b", "a"}).target_modules == ["a", "b"]
    assert LoraPatchConfig(exclude_modules=("z", "y", "z")).exclude_modules == ["y", "z"]
    assert LoraPatchConfig(target_modules="main\\.\\d+").target_modules == "main\\.\\d+"


def test_mergeability_follows_gate():
    assert {g for g in GATE_TYPES if LoraPatchConfig(gate=g).is_mergeable} == {"none", "basic"}


def test_paper_preset_reproduces_the_paper_settings():
    c = LoraPatchConfig.from_preset("paper")
    assert (c.r, c.lora_alpha, c.scaling, c.gate, c.gate_init, c.init_weights, c.include_linear) == (
        8, 2.0, "official", "basic", -1.0, "kaiming", True
    )
    assert c.scale == pytest.approx(2.0 / math.sqrt(8))
    assert c.layer_scale(linear=False) == pytest.approx(2.0 / math.sqrt(8))
    assert c.layer_scale(linear=True) == pytest.approx(2.0)  # the paper's code does not divide Linear patches
    assert LoraPatchConfig.from_preset("paper-defensive").r == 16
    assert LoraPatchConfig.from_preset("paper", r=4).r == 4
    assert set(PRESETS) == {"paper", "paper-defensive"}


def test_unknown_preset_or_field():
    with pytest.raises(ValueError, match="Unknown LoraPatchConfig preset 'nope'.*'paper'"):
        LoraPatchConfig.from_preset("nope")
    with pytest.raises(TypeError, match=r"no field\(s\) \['rank'\]"):
        LoraPatchConfig.from_preset("paper", rank=4)


def test_peft_boolean_init_spelling_maps_to_the_named_schemes():
    """PEFT's helpers (and users coming from LoRA) write init_lora_weights=True for an identity start and False for a
    random one; the config stores the scheme's name, so saved configs stay explicit."""
    assert LoraPatchConfig(init_weights=True).init_weights == "zero"
    assert LoraPatchConfig(init_weights=False).init_weights == "kaiming"
    assert LoraPatchConfig(init_weights=False).to_dict()["init_weights"] == "kaiming"
    with pytest.raises(ValueError, match="init_weights"):
        LoraPatchConfig(init_weights="gaussian")
