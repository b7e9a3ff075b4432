"""Each gated layer against the formula written out with F.conv2d / F.conv_transpose2d / matmul."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_patch_adapters import LoraPatchConfig
from lora_patch_adapters.tuner.layer import Conv2d, ConvTranspose2d, Linear

GATES = ["none", "basic", "input_adaptive", "input_adaptive_channel", "input_adaptive_pixel"]


def _randomise(layer, name="default"):
    """Give every patch parameter (B and the gate included) non-trivial values."""
    with torch.no_grad():
        for p in layer.lora_patch_A[name].parameters():
            p.normal_(0, 0.3)
        for p in layer.lora_patch_B[name].parameters():
            p.normal_(0, 0.3)
        for p in layer.lora_patch_gate[name].parameters():
            p.normal_(0, 0.5)


def _expected_gate(gate_kind, gate_module, update, spatial, scale=None):
    if gate_kind == "input_adaptive_pixel":  # the paper's channel gate: on the unscaled update, at every pixel
        v = update / scale
        if spatial:
            return torch.sigmoid(torch.einsum("oc,nchw->nohw", gate_module.weight, v)
                                 + gate_module.bias[None, :, None, None])
        return torch.sigmoid(v @ gate_module.weight.T + gate_module.bias)
    if gate_kind == "none":
        return 1.0
    if gate_kind == "basic":
        return torch.sigmoid(gate_module.logit)
    if gate_kind == "input_adaptive":
        w, b = gate_module.weight.item(), gate_module.bias.item()
        dims = (1, 2, 3) if spatial else (-1,)
        return torch.sigmoid(w * update.mean(dim=dims, keepdim=True) + b)
    # channel gate
    if spatial:
        pooled = update.mean(dim=(2, 3))  # [N, C]
        g = torch.sigmoid(pooled @ gate_module.weight.T + gate_module.bias)
        return g[:, :, None, None]
    return torch.sigmoid(update @ gate_module.weight.T + gate_module.bias)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("mode", ["fused", "two_branch"])
@pytest.mark.parametrize("scaling", ["sqrt_rank", "rank"])
def test_conv2d_matches_formula(gate, mode, scaling):
    base = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=True)
    cfg = LoraPatchConfig(r=3, lora_alpha=1.5, scaling=scaling, gate=gate, forward_mode=mode)
    layer = Conv2d(base, "default", cfg)
    _randomise(layer)
    x = torch.randn(2, 4, 11, 11)
    A = layer.lora_patch_A["default"].weight
    B = layer.lora_patch_B["default"].weight
    geometry = dict(stride=2, padding=2, dilation=2)
    scale = 1.5 / (math.sqrt(3) if scaling == "sqrt_rank" else 3)
    update = scale * F.conv2d(F.conv2d(x, A, None, **geometry), B)
    g = _expected_gate(gate, layer.lora_patch_gate["default"], update, spatial=True, scale=scale)
    expected = F.conv2d(x, base.weight, base.bias, **geometry) + g * update
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("mode", ["fused", "two_branch"])
def test_conv_transpose2d_matches_formula(gate, mode):
    base = nn.ConvTranspose2d(5, 3, 4, stride=2, padding=1, output_padding=1, dilation=1, bias=True)
    cfg = LoraPatchConfig(r=2, gate=gate, forward_mode=mode)
    layer = ConvTranspose2d(base, "default", cfg)
    _randomise(layer)
    x = torch.randn(2, 5, 7, 7)
    A = layer.lora_patch_A["default"].weight  # [in, r, kh, kw]
    B = layer.lora_patch_B["default"].weight  # [out, r, 1, 1]
    geometry = dict(stride=2, padding=1, output_padding=1)
    update = cfg.scale * F.conv2d(F.conv_transpose2d(x, A, None, **geometry), B)
    g = _expected_gate(gate, layer.lora_patch_gate["default"], update, spatial=True, scale=cfg.scale)
    expected = F.conv_transpose2d(x, base.weight, base.bias, **geometry) + g * update
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["fused", "two_branch"])
def test_conv_transpose2d_honours_output_size(mode):
    base = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    layer = ConvTranspose2d(base, "default", LoraPatchConfig(r=2, forward_mode=mode, init_weights="kaiming"))
    x = torch.randn(1, 3, 5, 5)
    for size in [(9, 9), (10, 10)]:
        y = layer(x, output_size=size)
        assert y.shape[-2:] == size
        delta = layer.get_delta_weight("default")
        expected = base(x, output_size=size) + F.conv_transpose2d(
            x, delta, None, stride=2, padding=1, output_padding=size[0] - 9
        )
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("mode", ["fused", "two_branch"])
def test_linear_matches_formula(gate, mode):
    base = nn.Linear(7, 5)
    cfg = LoraPatchConfig(r=4, gate=gate, forward_mode=mode)
    layer = Linear(base, "default", cfg)
    _randomise(layer)
    x = torch.randn(3, 2, 7)
    A = layer.lora_patch_A["default"].weight
    B = layer.lora_patch_B["default"].weight
    update = cfg.scale * (x @ A.T @ B.T)
    g = _expected_gate(gate, layer.lora_patch_gate["default"], update, spatial=False, scale=cfg.scale)
    expected = x @ base.weight.T + base.bias + g * update
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_zero_init_equals_base_and_kaiming_does_not():
    base = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 8, 8)
    zero = Conv2d(base, "default", LoraPatchConfig(init_weights="zero"))
    assert torch.equal(zero(x), base(x))
    assert torch.count_nonzero(zero.lora_patch_A["default"].weight) > 0
    kaiming = Conv2d(nn.Conv2d(3, 4, 3, padding=1), "default", LoraPatchConfig(init_weights="kaiming"))
    assert torch.count_nonzero(kaiming.lora_patch_B["default"].weight) > 0
    assert not torch.allclose(kaiming(x), kaiming.base_layer(x))


@pytest.mark.parametrize("gate", GATES)
def test_gates_start_at_sigmoid_of_gate_init(gate):
    layer = Linear(nn.Linear(6, 4), "default", LoraPatchConfig(gate=gate, gate_init=-1.0, init_weights="kaiming"))
    update = torch.randn(5, 4)
    value = layer.lora_patch_gate["default"](update)
    expected = 1.0 if gate == "none" else torch.sigmoid(torch.tensor(-1.0)).item()
    assert torch.allclose(torch.as_tensor(value), torch.tensor(expected))


def test_circular_padding_mode_is_respected():
    base = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    x = torch.randn(1, 2, 6, 6)
    for mode in ["fused", "two_branch"]:
        layer = Conv2d(base, "default", LoraPatchConfig(forward_mode=mode, init_weights="kaiming", gate="none"))
        A = layer.lora_patch_A["default"].weight
        B = layer.lora_patch_B["default"].weight
        xp = F.pad(x, (1, 1, 1, 1), mode="circular")
        expected = F.conv2d(xp, base.weight, base.bias) + layer.scaling["default"] * F.conv2d(F.conv2d(xp, A), B)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("mode", ["fused", "two_branch"])
def test_gradients_reach_only_patch_parameters(gate, mode):
    base = nn.Conv2d(3, 4, 3, padding=1)
    base.requires_grad_(False)
    layer = Conv2d(base, "default", LoraPatchConfig(gate=gate, forward_mode=mode, init_weights="kaiming"))
    x = torch.randn(2, 3, 8, 8)
    layer(x).square().mean().backward()
    assert base.weight.grad is None and base.bias.grad is None
    patch_params = [p for n, p in layer.named_parameters() if "lora_patch_" in n]
    assert patch_params
    for p in patch_params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert layer.lora_patch_A["default"].weight.grad.abs().sum() > 0


def test_fused_and_two_branch_agree_in_value_and_gradient():
    torch.manual_seed(1)
    base = nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)
    fused = ConvTranspose2d(base, "default", LoraPatchConfig(init_weights="kaiming", forward_mode="fused"))
    branch = ConvTranspose2d(base, "default", LoraPatchConfig(init_weights="kaiming", forward_mode="two_branch"))
    branch.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    y1, y2 = fused(x), branch(x)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    (gx1,) = torch.autograd.grad(y1.sum(), x)
    (gx2,) = torch.autograd.grad(y2.sum(), x)
    torch.testing.assert_close(gx1, gx2, rtol=1e-5, atol=1e-5)


def test_inference_cache_follows_every_change():
    """The cached fused kernel (no-grad forward) must never serve stale weights."""
    base = nn.Conv2d(3, 4, 3, padding=1)
    layer = Conv2d(base, "default", LoraPatchConfig(init_weights="kaiming"))
    x = torch.randn(1, 3, 6, 6)

    def expected():
        return F.conv2d(x, base.weight + layer.get_delta_weight("default"), base.bias, padding=1)

    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected())
        cached = layer._fused_cache[1]
        layer(x)
        assert layer._fused_cache[1] is cached  # reused while nothing changed
    # an optimiser step on the patch
    optimiser = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).sum().backward()
    optimiser.step()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected())
    # new base weights through load_state_dict
    base.load_state_dict({k: torch.randn_like(v) for k, v in base.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected())
    # merge / unmerge
    with torch.no_grad():
        before = layer(x)
        layer.merge()
        torch.testing.assert_close(layer(x), before)
        layer.unmerge()
        torch.testing.assert_close(layer(x), before)
    # a second adapter switched on and off
    layer.update_layer("other", LoraPatchConfig(init_weights="kaiming", r=2))
    layer.set_adapter(["default", "other"])
    with torch.no_grad():
        both = layer(x)
        assert not torch.allclose(both, before)
        layer.set_adapter("default")
        torch.testing.assert_close(layer(x), before)


def test_grad_enabled_forward_does_not_use_the_cache():
    layer = Conv2d(nn.Conv2d(3, 4, 3, padding=1), "default", LoraPatchConfig(init_weights="kaiming"))
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        layer(x)
    layer(x).sum().backward()
    assert layer.lora_patch_A["default"].weight.grad is not None
    assert layer.lora_patch_gate["default"].logit.grad is not None
