"""StarGAN generator: official state-dict layout and forward contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lora_patch_adapters.generators import StarGANGenerator

MANIFEST = json.loads((Path(__file__).parents[1] / "data" / "stargan_manifest.json").read_text())


def test_state_dict_matches_the_official_release_exactly():
    generator = StarGANGenerator(**MANIFEST["constructor"]["args"])
    state = generator.state_dict()
    assert list(state) == list(MANIFEST["state_dict"])
    for key, shape in MANIFEST["state_dict"].items():
        assert list(state[key].shape) == shape, key
    assert sum(p.numel() for p in generator.parameters()) == MANIFEST["num_params"]
    kinds = [type(m) for m in generator.modules()]
    assert kinds.count(nn.Conv2d) == MANIFEST["conv2d_count"]
    assert kinds.count(nn.ConvTranspose2d) == MANIFEST["convtranspose2d_count"]


def test_forward_shape_range_and_condition_dependence():
    generator = StarGANGenerator(conv_dim=8, repeat_num=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c0 = torch.zeros(2, 5)
    c1 = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    with torch.no_grad():
        y0, y1 = generator(x, c0), generator(x, c1)
    assert y0.shape == x.shape and y0.abs().max() <= 1
    assert not torch.allclose(y0, y1)


def test_bad_condition_shape_is_explained():
    generator = StarGANGenerator(conv_dim=8, repeat_num=1)
    with pytest.raises(ValueError, match=r"condition must be \[N, 5\] for N=2 images, got \(2, 4\)"):
        generator(torch.zeros(2, 3, 32, 32), torch.zeros(2, 4))
