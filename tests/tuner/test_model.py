"""LoraPatchModel through the peft API: targets, trainability, adapters, errors, a StarGAN-shaped toy end to end."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

import lora_patch_adapters as lpa
from lora_patch_adapters import LoraPatchConfig, get_peft_model
from lora_patch_adapters.tuner.layer import GatedLoraLayer
from tests.helpers import MixedNet, ToyEditor, images, labels


def _patched_names(model):
    names = (n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, GatedLoraLayer))
    return sorted(names)


def test_both_entry_points_return_peft_model(mixed_net):
    a = lpa.get_peft_model(MixedNet(), LoraPatchConfig())
    b = peft.get_peft_model(mixed_net, LoraPatchConfig())
    assert isinstance(a, peft.PeftModel) and isinstance(b, peft.PeftModel)
    assert isinstance(a.base_model, lpa.LoraPatchModel) and isinstance(b.base_model, lpa.LoraPatchModel)


def test_default_targets_are_every_conv_and_transposed_conv(toy_editor):
    convs = sorted(n for n, m in toy_editor.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    config = LoraPatchConfig()
    patched = get_peft_model(toy_editor, config)
    assert _patched_names(patched) == convs
    assert patched.peft_config["default"].target_modules == convs
    # the discovered names are written into the config object the user passed (peft's convention)
    assert config.target_modules == convs and patched.peft_config["default"] is config


def test_include_linear_and_exclude_modules(mixed_net):
    assert _patched_names(get_peft_model(MixedNet(), LoraPatchConfig())) == ["conv", "up"]
    assert _patched_names(get_peft_model(MixedNet(), LoraPatchConfig(include_linear=True))) == ["conv", "head", "up"]
    excluded = get_peft_model(mixed_net, LoraPatchConfig(include_linear=True, exclude_modules=["up"]))
    assert _patched_names(excluded) == ["conv", "head"]


def test_target_modules_list_and_regex():
    assert _patched_names(get_peft_model(MixedNet(), LoraPatchConfig(target_modules=["head"]))) == ["head"]
    assert _patched_names(get_peft_model(MixedNet(), LoraPatchConfig(target_modules="(conv|up)"))) == ["conv", "up"]


def test_suffix_collision_is_resolved_exactly():
    # A top-level conv named "0" must not drag in the Linear "head.0" through PEFT's suffix matching.
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Sequential(nn.Linear(12, 2)))
    model.add_module("head", nn.Sequential(nn.Linear(2, 2)))
    patched = get_peft_model(model, LoraPatchConfig())
    assert _patched_names(patched) == ["0"]


def test_unsupported_and_grouped_layers_get_clear_errors():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.depthwise = nn.Conv2d(4, 4, 3, groups=4)

    with pytest.raises(ValueError, match=r"'depthwise'.*groups=4.*exclude_modules"):
        get_peft_model(Grouped(), LoraPatchConfig())
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.InstanceNorm2d(3, affine=True))
    with pytest.raises(TypeError, match=r"'1' is a InstanceNorm2d.*Conv2d"):
        get_peft_model(model, LoraPatchConfig(target_modules=["1"]))
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.ConvTranspose2d.*include_linear"):
        get_peft_model(nn.Sequential(nn.Linear(2, 2)), LoraPatchConfig())
    with pytest.raises(TypeError, match="expects a LoraPatchConfig"):
        get_peft_model(MixedNet(), peft.LoraConfig(target_modules=["conv"]))


def test_only_patch_parameters_are_trainable_and_base_is_bitwise_unchanged(toy_editor):
    base_params = {k: v.clone() for k, v in toy_editor.named_parameters()}
    patched = get_peft_model(toy_editor, LoraPatchConfig(init_weights="kaiming"))
    trainable = {n for n, p in patched.named_parameters() if p.requires_grad}
    assert trainable and all("lora_patch_" in n for n in trainable)
    # Give the optimiser every parameter: frozen ones must still not move.
    optimiser = torch.optim.Adam(patched.parameters(), lr=1e-2, weight_decay=0.1)
    x, c = images(2, 32), labels(2)
    before_patch = {n: p.clone() for n, p in patched.named_parameters() if p.requires_grad}
    for _ in range(3):
        optimiser.zero_grad()
        patched(x, c).square().mean().backward()
        optimiser.step()
    assert any(not torch.equal(p, before_patch[n]) for n, p in patched.named_parameters() if p.requires_grad)
    plain = patched.unload()
    for name, value in plain.named_parameters():
        assert torch.equal(value, base_params[name]), name


def test_print_trainable_parameters(capsys, toy_editor):
    patched = get_peft_model(toy_editor, LoraPatchConfig(r=2))
    patched.print_trainable_parameters()
    out = capsys.readouterr().out
    expected = sum(p.numel() for n, p in patched.named_parameters() if "lora_patch_" in n)
    assert f"trainable params: {expected:,}" in out
    assert patched.get_nb_trainable_parameters()[0] == expected


def test_disable_adapter_gives_base_outputs_exactly(toy_editor):
    x, c = images(2, 32), labels(2)
    with torch.no_grad():
        base = toy_editor(x, c)
        patched = get_peft_model(toy_editor, LoraPatchConfig(init_weights="kaiming"))
        assert not torch.allclose(patched(x, c), base)
        with patched.disable_adapter():
            assert torch.equal(patched(x, c), base)
        assert not torch.allclose(patched(x, c), base)


def test_several_named_adapters(mixed_net):
    x = images(2, 32)
    patched = get_peft_model(mixed_net, LoraPatchConfig(init_weights="kaiming"), adapter_name="first")
    patched.add_adapter("second", LoraPatchConfig(init_weights="kaiming", r=2, gate="none"))
    conv = patched.base_model.model.conv
    with torch.no_grad():
        base_conv = conv.base_layer(x)
        out_first, conv_first = patched(x), conv(x)
        patched.set_adapter("second")
        out_second, conv_second = patched(x), conv(x)
    assert patched.active_adapter == "second"
    assert not torch.allclose(out_first, out_second)
    trainable = [n for n, p in patched.named_parameters() if p.requires_grad]
    assert trainable and all(".second." in n for n in trainable)
    # both adapters active at once: their updates add up in each layer
    patched.base_model.set_adapter(["first", "second"])
    with torch.no_grad():
        conv_both = conv(x)
    torch.testing.assert_close(conv_both - base_conv, (conv_first - base_conv) + (conv_second - base_conv))
    patched.delete_adapter("second")
    assert set(patched.peft_config) == {"first"}
    assert not any(".second" in n for n, _ in patched.named_parameters())
    patched.set_adapter("first")
    with torch.no_grad():
        torch.testing.assert_close(patched(x), out_first)


def test_modules_to_save_are_trained_and_saved(tmp_path, mixed_net):
    patched = get_peft_model(mixed_net, LoraPatchConfig(modules_to_save=["head"]))
    trainable = [n for n, p in patched.named_parameters() if p.requires_grad]
    assert any("head" in n for n in trainable)
    patched.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert any(k.startswith("base_model.model.head.") for k in keys)


def test_stargan_shaped_toy_end_to_end(tmp_path):
    """Patch, train a few steps, merge, save, reload: the toy StarGAN (convs, 2 transposed convs, instance norm)."""
    torch.manual_seed(0)
    generator = ToyEditor()
    x, c = images(4, 32), labels(4)
    target = -generator(x, c).detach()  # something the patch has to move towards
    patched = get_peft_model(generator, LoraPatchConfig.from_preset("paper"))
    optimiser = torch.optim.Adam([p for p in patched.parameters() if p.requires_grad], lr=1e-2, betas=(0.5, 0.999))
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = (patched(x, c) - target).square().mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    patched.save_pretrained(tmp_path)
    with torch.no_grad():
        trained = patched(x, c)
    fresh = ToyEditor()
    fresh.load_state_dict(patched.unload().state_dict())
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path)
    assert not reloaded.training  # peft loads for inference in eval mode ...
    reloaded.train()  # ... but StarGAN runs train-mode instance norm (per-image statistics), as trained above
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, c), trained, rtol=0, atol=1e-6)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(x, c), trained, rtol=1e-4, atol=1e-5)
