"""Kaiming-uniform init of A and B against the paper's bounds, computed here from the formula.

The paper's code draws A as an (r, in*kh*kw) matrix with kaiming_uniform(a=sqrt(5)) -- bound 1/sqrt(in*kh*kw) for
Conv2d *and* ConvTranspose2d (whose A it then stores as [in, r, kh, kw]) -- and B [out, r] the same way (bound
1/sqrt(r)). Linear: A [r, in] bound 1/sqrt(in), B [out, r] bound 1/sqrt(r).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_patch_adapters import LoraPatchConfig
from lora_patch_adapters.tuner.layer import Conv2d, ConvTranspose2d, Linear

# (wrapper, base layer, rank, the paper's fan-in of A)
CASES = [
    ("conv-stargan-down", Conv2d, lambda: nn.Conv2d(64, 128, 4, 2, 1, bias=False), 8, 64 * 4 * 4),
    ("conv-7x7", Conv2d, lambda: nn.Conv2d(8, 16, 7, 1, 3, bias=False), 8, 8 * 7 * 7),
    ("convT-stargan-up1", ConvTranspose2d, lambda: nn.ConvTranspose2d(256, 128, 4, 2, 1, bias=False), 8, 256 * 16),
    ("convT-stargan-up2", ConvTranspose2d, lambda: nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), 16, 128 * 16),
    ("convT-3x3", ConvTranspose2d, lambda: nn.ConvTranspose2d(40, 24, 3, 2, 1, output_padding=1), 4, 40 * 9),
    ("linear", Linear, lambda: nn.Linear(300, 200), 8, 300),
]


def _bound(fan_in: int) -> float:
    """kaiming_uniform(a=sqrt(5)): gain sqrt(2 / (1 + 5)) = 1/sqrt(3); bound = sqrt(3) * gain / sqrt(fan_in)."""
    return 1.0 / math.sqrt(fan_in)


@pytest.mark.parametrize("init", ["kaiming", "zero"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_and_b_follow_the_papers_bounds(case, init):
    _, wrapper, make_base, r, fan_in_a = case
    layer = wrapper(make_base(), "default", LoraPatchConfig(r=r, init_weights=init))
    a = layer.lora_patch_A["default"].weight.detach()
    b = layer.lora_patch_B["default"].weight.detach()

    bound_a = _bound(fan_in_a)
    assert a.abs().max().item() <= bound_a * (1 + 1e-6)
    assert a.abs().max().item() > 0.9 * bound_a  # thousands of draws: the largest lies near the bound
    assert a.min().item() < 0 < a.max().item()

    if init == "zero":
        assert torch.count_nonzero(b) == 0
        return
    bound_b = _bound(r)  # B is [out, r] (Linear) or [out, r, 1, 1]: fan-in r
    assert b.abs().max().item() <= bound_b * (1 + 1e-6)
    assert b.abs().max().item() > 0.9 * bound_b
    assert b.min().item() < 0 < b.max().item()


def test_conv_transpose_a_is_not_drawn_with_its_layout_fan_in():
    """Torch's own kaiming_uniform_ on the [in, r, kh, kw] layout would use fan-in r*kh*kw (bound 1/sqrt(128) here,
    2x the paper's 1/sqrt(512)); the patch must stay within the paper's bound."""
    layer = ConvTranspose2d(nn.ConvTranspose2d(32, 16, 4, 2, 1), "default", LoraPatchConfig(r=8))
    a = layer.lora_patch_A["default"].weight.detach()
    assert tuple(a.shape) == (32, 8, 4, 4)
    layout_bound, paper_bound = 1 / math.sqrt(8 * 16), 1 / math.sqrt(32 * 16)
    assert a.abs().max().item() <= paper_bound * (1 + 1e-6) < 0.6 * layout_bound


def test_values_are_uniform_draws():
    """A is spread over the whole interval (not, e.g., a scaled normal): about a quarter of the values beyond half
    the bound on each side."""
    layer = Conv2d(nn.Conv2d(64, 64, 3, padding=1), "default", LoraPatchConfig(r=16, init_weights="kaiming"))
    a = layer.lora_patch_A["default"].weight.detach().flatten()
    bound = _bound(64 * 9)
    share = (a > bound / 2).float().mean().item()
    assert 0.22 < share < 0.28
    assert abs(a.mean().item()) < 0.02 * bound
