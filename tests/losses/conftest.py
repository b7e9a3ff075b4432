"""Tiny frozen-encoder stand-ins for the loss tests: a narrow torchvision ResNet and a one-layer BLIP vision model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from lora_patch_adapters.losses import BlipVisionFeatures, ResNetFeatures


class TinyResNet(ResNet):
    """A real torchvision ``ResNet`` (same forward, same ``_make_layer``) with widths 8-16-16-32 instead of 64-512:
    ~40k parameters, 32x32 input -> 32-d pooled features."""

    def __init__(self, widths: tuple[int, int, int, int] = (8, 16, 16, 32), num_classes: int = 10) -> None:
        nn.Module.__init__(self)  # ResNet.__init__ hard-codes 64 input planes
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, widths[0], 1)
        self.layer2 = self._make_layer(BasicBlock, widths[1], 1, stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], 1, stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode BN is not the identity
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)


def tiny_vision_config_kwargs() -> dict:
    return {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "initializer_range": 0.02,  # BlipVisionConfig's default 1e-10 would make the CLS token ignore the image
    }


@pytest.fixture
def tiny_resnet() -> TinyResNet:
    return TinyResNet().eval()


@pytest.fixture
def feature_encoder(tiny_resnet) -> ResNetFeatures:
    return ResNetFeatures(tiny_resnet, input_size=32)


@pytest.fixture
def blip_vision():
    from transformers import BlipVisionConfig, BlipVisionModel

    return BlipVisionModel(BlipVisionConfig(**tiny_vision_config_kwargs())).eval()


@pytest.fixture
def semantic_encoder(blip_vision) -> BlipVisionFeatures:
    return BlipVisionFeatures(blip_vision)


@pytest.fixture
def tiny_blip_config():
    from transformers import BlipConfig

    return BlipConfig(
        vision_config=tiny_vision_config_kwargs(),
        text_config={
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "encoder_hidden_size": 32,
        },
        projection_dim=16,
    )



@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """The encoders here are tiny: one intra-op thread is faster than several fighting over a busy CPU (restored)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
