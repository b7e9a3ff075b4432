"""Training losses for LoRA patches: the MMFA (multi-modal feature alignment) loss and its terms.

Images are float tensors [N, 3, H, W] in [-1, 1]. ``MMFALoss`` compares generator outputs with frozen targets through
a pixel MSE, a frozen ResNet-50's pooled features and a frozen BLIP vision model's CLS features; gradients flow through
both encoders to the output.
"""

from __future__ import annotations

from .errors import EncoderUnavailableError
from .feature import IMAGENET_MEAN, IMAGENET_STD, ResNetFeatures, load_resnet50, preprocess_images, resnet50_cache_path
from .mmfa import TERMS, MMFALoss, freeze
from .pixel import check_image_pair, check_images, pixel_loss
from .semantic import CLIP_MEAN, CLIP_STD, DEFAULT_BLIP_MODEL, BlipVisionFeatures, cosine_distance, load_blip_vision

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_BLIP_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TERMS",
    "BlipVisionFeatures",
    "EncoderUnavailableError",
    "MMFALoss",
    "ResNetFeatures",
    "check_image_pair",
    "check_images",
    "cosine_distance",
    "freeze",
    "load_blip_vision",
    "load_resnet50",
    "pixel_loss",
    "preprocess_images",
    "resnet50_cache_path",
]
