"""Merge / unmerge / merge_and_unload / unload over a sweep of layer geometries."""

from __future__ import annotations

import itertools

import peft
import pytest
import torch
from torch import nn

from lora_patch_adapters import LoraPatchConfig, get_peft_model
from tests.helpers import MixedNet, images, labels


class Wrap(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _randomise_patch(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_patch_" in name:
                p.normal_(0, 0.2)


def _assert_merge_exact(model_factory, x, gate):
    """merge -> same outputs; unmerge -> base weights back; merge_and_unload -> plain module, same outputs."""
    model = model_factory()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    patched = get_peft_model(model, LoraPatchConfig(r=3, gate=gate, init_weights="kaiming", include_linear=True))
    _randomise_patch(patched)
    with torch.no_grad():
        unmerged = patched(x)
        tol = 1e-5 * unmerged.abs().max().item()
        patched.base_model.merge_adapter()
        merged = patched(x)
        assert (merged - unmerged).abs().max().item() <= tol
        patched.base_model.unmerge_adapter()
        again = patched(x)
        assert (again - unmerged).abs().max().item() <= tol
        plain = patched.merge_and_unload()
    assert not any("lora_patch" in n for n, _ in plain.named_modules())
    assert set(plain.state_dict()) == set(base_state)
    with torch.no_grad():
        assert (plain(x) - unmerged).abs().max().item() <= tol


KERNELS = range(1, 8)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("gate", ["none", "basic"])
def test_conv2d_merge_sweep(kernel, gate):
    x = torch.randn(2, 3, 13, 13)
    for stride, dilation, bias in itertools.product([1, 2], [1, 2], [True, False]):
        for padding in sorted({0, kernel // 2, (kernel - 1) * dilation // 2}):
            factory = lambda: Wrap(nn.Conv2d(3, 5, kernel, stride, padding, dilation, bias=bias))  # noqa: E731
            _assert_merge_exact(factory, x, gate)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("gate", ["none", "basic"])
def test_conv_transpose2d_merge_sweep(kernel, gate):
    x = torch.randn(2, 4, 7, 7)
    for stride, dilation, bias in itertools.product([1, 2], [1, 2], [True, False]):
        for padding in sorted({0, kernel // 2}):
            for output_padding in range(stride):  # must be < stride (or < dilation)
                factory = lambda: Wrap(  # noqa: E731
                    nn.ConvTranspose2d(4, 3, kernel, stride, padding, output_padding, bias=bias, dilation=dilation)
                )
                _assert_merge_exact(factory, x, gate)


@pytest.mark.parametrize("gate", ["none", "basic"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_merge(gate, bias):
    _assert_merge_exact(lambda: Wrap(nn.Linear(9, 4, bias=bias)), torch.randn(5, 9), gate)


def test_mixed_model_merge():
    _assert_merge_exact(MixedNet, images(2, 32), "basic")


def test_unload_returns_bitwise_base_weights(toy_editor):
    before = {k: v.clone() for k, v in toy_editor.state_dict().items()}
    patched = get_peft_model(toy_editor, LoraPatchConfig(init_weights="kaiming"))
    plain = patched.unload()
    after = plain.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("gate", ["input_adaptive", "input_adaptive_channel"])
def test_input_adaptive_gates_refuse_to_merge_and_leave_model_untouched(gate):
    model = MixedNet()
    patched = get_peft_model(model, LoraPatchConfig(gate=gate, init_weights="kaiming"))
    x = images(2, 32)
    with torch.no_grad():
        y = patched(x)
    weights = {k: v.clone() for k, v in patched.state_dict().items()}
    with pytest.raises(ValueError, match="depends on the input.*cannot be merged"):
        patched.merge_and_unload()
    with pytest.raises(ValueError, match="cannot be merged"):
        patched.base_model.merge_adapter()
    with pytest.raises(ValueError, match="cannot be merged"):
        patched.base_model.model.conv.merge()
    state = patched.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    assert not patched.base_model.model.conv.merged
    with torch.no_grad():
        assert torch.equal(patched(x), y)


def test_mixed_adapters_refuse_before_merging_anything():
    model = MixedNet()
    patched = get_peft_model(model, LoraPatchConfig(gate="basic", init_weights="kaiming"))
    patched.add_adapter("adaptive", LoraPatchConfig(gate="input_adaptive", init_weights="kaiming"))
    weights = {k: v.clone() for k, v in patched.state_dict().items()}
    with pytest.raises(ValueError, match="'adaptive'"):
        patched.base_model.merge_adapter(["default", "adaptive"])
    state = patched.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)


def test_disable_adapter_on_merged_model_gives_base_output(toy_editor):
    x, c = images(2, 32), labels(2)
    with torch.no_grad():
        base = toy_editor(x, c)
    patched = get_peft_model(toy_editor, LoraPatchConfig(init_weights="kaiming"))
    patched.base_model.merge_adapter()
    with torch.no_grad(), patched.disable_adapter():
        torch.testing.assert_close(patched(x, c), base, rtol=0, atol=1e-5)


def test_safe_merge_rejects_non_finite_patch():
    patched = get_peft_model(Wrap(nn.Conv2d(3, 4, 3)), LoraPatchConfig(init_weights="kaiming"))
    with torch.no_grad():
        patched.base_model.model.layer.lora_patch_B["default"].weight[0, 0] = float("nan")
    before = patched.base_model.model.layer.base_layer.weight.clone()
    with pytest.raises(ValueError, match="non-finite"):
        patched.base_model.merge_adapter(safe_merge=True)
    assert torch.equal(patched.base_model.model.layer.base_layer.weight, before)


def test_peft_merge_and_unload_through_peft_api(mixed_net):
    patched = peft.get_peft_model(mixed_net, LoraPatchConfig(init_weights="kaiming", include_linear=True))
    x = images(1, 32)
    with torch.no_grad():
        y = patched(x)
        plain = patched.merge_and_unload()
        assert isinstance(plain, MixedNet)
        torch.testing.assert_close(plain(x), y, rtol=1e-5, atol=1e-5)
