"""A tiny "stamping" generator for the removal and hardening tests (32x32, one 1x1 convolution).

``output = tanh(W_x * x + W_p * P + 0.5 * c)`` with ``P`` the warning's pattern as a fixed input plane and ``c`` a
per-condition brightness offset. The un-warned base has ``W_x = 1.5 I`` and ``W_p = 0``; the defended generator has
``W_p = 3 I``: the warning lives in the weights, as after merging a defensive patch, and a LoRA on the convolution
(or fine-tuning it) can take it out again.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_patch_adapters.generators import wrap
from lora_patch_adapters.training import Watermark

SIZE = 32
MARK = Watermark(size=0.5, position="bottom-right", text="")


class StampNet(nn.Module):
    def __init__(self, stamp: float) -> None:
        super().__init__()
        pattern, _ = MARK.pattern(SIZE, SIZE)
        self.register_buffer("plane", pattern.clone())
        self.mix = nn.Conv2d(6, 3, 1, bias=False)
        with torch.no_grad():
            weight = torch.zeros(3, 6, 1, 1)
            for i in range(3):
                weight[i, i] = 1.5
                weight[i, 3 + i] = stamp
            self.mix.weight.copy_(weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        planes = torch.cat([x, self.plane.expand(x.shape[0], -1, -1, -1)], dim=1)
        return torch.tanh(self.mix(planes) + 0.5 * c.view(-1, 1, 1, 1))


VARIED = Watermark(size=0.5, position="bottom-right", text="", vary=("position",))


class MovingStampNet(StampNet):
    """:class:`StampNet` whose warning plane follows the target condition (slot 0 for offset -0.5, slot 1 for
    +0.5), as a defended generator trained with ``Watermark(vary=("position",))``."""

    def __init__(self, stamp: float) -> None:
        super().__init__(stamp)
        planes = torch.cat([VARIED.pattern(SIZE, SIZE, slot=t)[0] for t in (0, 1)])
        self.register_buffer("planes", planes)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        plane = self.planes[(c > 0).long()]
        return torch.tanh(self.mix(torch.cat([x, plane], dim=1)) + 0.5 * c.view(-1, 1, 1, 1))


def _conditions(labels: torch.Tensor) -> list:
    return [torch.full((labels.shape[0],), -0.5), torch.full((labels.shape[0],), 0.5)]


def stamp_editor(stamp: float = 3.0, moving: bool = False):
    """An editor around :class:`StampNet` (``moving``: :class:`MovingStampNet`); source labels [N, 2] give two
    target conditions (offsets -0.5, +0.5)."""
    net = MovingStampNet(stamp) if moving else StampNet(stamp)
    return wrap(net, conditions_fn=_conditions, attribute_names=("a", "b"), name="stamp")


def faces(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images in [-1, 1] (low-frequency noise, like faces on backgrounds) and 0/1 labels [n, 2]."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=generator) * 1.6 - 0.8
    images = nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return images, (torch.rand(n, 2, generator=generator) > 0.5).float()


@pytest.fixture
def base_editor():
    return stamp_editor(0.0)


@pytest.fixture
def defended():
    return stamp_editor(3.0)
