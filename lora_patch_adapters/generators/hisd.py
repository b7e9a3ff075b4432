"""HiSD generator (Li et al., CVPR 2021, "Image-to-image Translation via Hierarchical Style Disentanglement") with
the official module layout, and its editor.

HiSD edits one *tag* (Bangs, Eyeglasses, HairColor) at a time in a feature space:

* ``encode(x)``: images [N, 3, H, W] in [-1, 1] -> features ``e`` [N, C_e, H/4, W/4] (256 config: C_e = 256).
* ``extract(reference, tag)``: a reference image's style for that tag, [N, style_dim].
* ``map(z, tag, attribute)``: a style sampled from noise ``z`` [N, noise_dim] for one attribute of the tag
  (e.g. tag 2 HairColor, attribute 1 blond).
* ``translate(e, style, tag)``: new features; an attention mask ``m`` in (0, 1) blends the translated features ``f``
  with the input: ``f * m + e * (1 - m)``, so regions outside the tag are kept. Steps can be chained on ``e``.
* ``decode(e)``: features -> images [N, 3, H, W]; the last layer is a 1x1 convolution without tanh, so the output is
  unbounded (about [-1, 1] for a trained model).

Parameter names and order match the official ``Gen`` of imlixinyang/HiSD, config ``celeba-hq_256``, so the
``'gen_test'`` (EMA) state dict of an official checkpoint loads with ``strict=True``.

Building blocks (all convolutions are plain ``nn.Conv2d`` with bias, all dense layers ``nn.Linear``, so gated LoRA
patches can wrap every one of them):

* encoder blocks: instance norm -> LeakyReLU(0.2) -> 3x3 conv -> 2x2 average pool -> instance norm -> LeakyReLU ->
  3x3 conv, plus a pooled bias-free 1x1 shortcut; the sum is divided by sqrt(2).
* decoder blocks: the same with nearest-neighbour 2x up-sampling in place of the pooling.
* extractor blocks: as the encoder blocks without normalisation; then global average pooling and one 1x1 conv that
  outputs the styles of all tags at once.
* translator blocks: AdaIN -> LeakyReLU -> 3x3 conv -> AdaIN -> LeakyReLU -> 3x3 conv, plus a bias-free 1x1
  shortcut, at constant resolution. The AdaIN scales and shifts of all blocks come from one ``nn.Linear`` applied to
  the style (``style_to_params``); the official code writes them onto the modules as attributes, here they are
  passed as arguments (nothing is stored between calls, no state-dict entries, same numbers).
* mappers: a shared MLP on the noise, then one MLP per attribute; each hidden layer is ReLU followed by Linear.

HiSD's instance norm is its own: ``(x - mean) / (std + eps) * weight + bias`` with the *unbiased* standard deviation
over the spatial positions, ``eps = 1e-5`` added to the std (not the variance), and weight/bias shaped [1, C, 1].
The network has no BatchNorm, Dropout or running statistics, so ``train()`` and ``eval()`` give identical results;
the editor uses ``eval()``.
"""

from __future__ import annotations

import copy
import math
import operator
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_images, check_value_range
from .base import Editor, check_labels
from .checkpoints import load_into, pick_state_dict, read_checkpoint, register_layout

__all__ = [
    "CELEBA_HQ_256",
    "HISD_ATTRIBUTE_NAMES",
    "HISD_REFERENCE_SIZE",
    "HISD_REFERENCE_TAG",
    "HISD_TAGS",
    "HiSDCondition",
    "HiSDEditor",
    "HiSDGenerator",
    "build_editor",
    "small_hyperparameters",
]

#: Tags of the official celeba-hq configs, in index order: (tag name, attribute names in index order).
HISD_TAGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Bangs", ("with", "without")),
    ("Eyeglasses", ("with", "without")),
    ("HairColor", ("black", "blond", "brown")),
)

#: The editor's flat attribute list for the official tags (CelebA names; one column per label).
HISD_ATTRIBUTE_NAMES: tuple[str, ...] = ("Bangs", "Eyeglasses", "Black_Hair", "Blond_Hair", "Brown_Hair")

#: The tag the LoRA-Patching paper edits with reference images (index 2 of :data:`HISD_TAGS`).
HISD_REFERENCE_TAG = "HairColor"

#: Shorter side, in pixels, that the official scripts resize reference images to (``new_size`` of the 256 config),
#: before ``ToTensor`` and ``Normalize(0.5, 0.5)`` to [-1, 1]; the aspect ratio is kept.
HISD_REFERENCE_SIZE = 256

#: The generator-relevant hyper-parameters of the official ``configs/celeba-hq_256.yaml``.
CELEBA_HQ_256: dict[str, Any] = {
    "input_dim": 3,
    "style_dim": 256,
    "noise_dim": 32,
    "encoder": {"channels": [64, 128, 256]},
    "decoder": {"channels": [256, 128, 64]},
    "extractors": {"channels": [32, 64, 128, 256, 512, 512, 512]},
    "translators": {"channels": [64, 64, 64, 64, 64, 64, 64, 64]},
    "mappers": {"pre_channels": [256, 256, 256], "post_channels": [256, 256, 256]},
    "tags": [{"name": name, "attributes": [{"name": a} for a in attributes]} for name, attributes in HISD_TAGS],
}

_MODEL_NAME = "HiSD (celeba-hq 256)"
_CHECKPOINT_KEY = "gen_test"
_NORM_EPS = 1e-5


def small_hyperparameters(image_size: int = 32, width: int = 8, style_dim: int = 16, noise_dim: int = 8) -> dict:
    """Hyper-parameters of a small HiSD for tests and experiments: the official tags and block structure with few
    channels, and as many extractor blocks as bring ``image_size`` (a power of two, >= 8) down to 4x4.

    The encoder/decoder scale by 4 like the official network, so images must have H, W divisible by 4.
    """
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"small_hyperparameters: image_size must be a power of two >= 8, got {image_size}.")
    blocks = int(math.log2(image_size // 4))
    extractor = [width] + [width * 2 ** min(i + 1, 2) for i in range(blocks)]
    config = copy.deepcopy(CELEBA_HQ_256)
    config.update(
        style_dim=style_dim,
        noise_dim=noise_dim,
        encoder={"channels": [width, 2 * width, 4 * width]},
        decoder={"channels": [4 * width, 2 * width, width]},
        extractors={"channels": extractor},
        translators={"channels": [2 * width] * 3},
        mappers={"pre_channels": [4 * width] * 2, "post_channels": [4 * width] * 2},
    )
    return config


# ------------------------------------------------------------------------------------------------------ normalisation
def _normalise(x: torch.Tensor) -> torch.Tensor:
    """HiSD's normalisation of x [N, C, H, W] -> [N, C, H*W]: (x - mean) / (unbiased std + eps) per channel."""
    flat = x.flatten(2)
    return (flat - flat.mean(-1, keepdim=True)) / (flat.std(-1, keepdim=True) + _NORM_EPS)


class InstanceNorm(nn.Module):
    """Instance norm with learnt ``weight``/``bias`` [1, C, 1] (HiSD's formula, see the module docstring)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(1, num_features, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_normalise(x) * self.weight + self.bias).view_as(x)

    def extra_repr(self) -> str:
        return str(self.num_features)


class AdaptiveInstanceNorm(nn.Module):
    """Instance norm whose scale/shift [N or 1, C, 1] come from the style; it has no parameters of its own."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return (_normalise(x) * weight + bias).view_as(x)

    def extra_repr(self) -> str:
        return str(self.num_features)


# ------------------------------------------------------------------------------------------------------------- blocks
class _ResidualBlock(nn.Module):
    """Common parts: two 3x3 convs, one LeakyReLU(0.2) module, a bias-free 1x1 shortcut; output divided by sqrt 2."""

    def _convs(self, in_dim: int, mid_dim: int, out_dim: int) -> None:
        self.conv1 = nn.Conv2d(in_dim, mid_dim, 3, 1, 1)
        self.conv2 = nn.Conv2d(mid_dim, out_dim, 3, 1, 1)


class DownBlock(_ResidualBlock):
    """Extractor block: [N, in, H, W] -> [N, out, H/2, W/2], no normalisation."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self._convs(in_dim, in_dim, out_dim)
        self.activ = nn.LeakyReLU(0.2)
        self.sc = nn.Conv2d(in_dim, out_dim, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.avg_pool2d(self.sc(x), 2)
        h = F.avg_pool2d(self.conv1(self.activ(x)), 2)
        h = self.conv2(self.activ(h))
        return (shortcut + h) / math.sqrt(2)


class DownBlockIN(_ResidualBlock):
    """Encoder block: [N, in, H, W] -> [N, out, H/2, W/2], instance norm before each activation."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self._convs(in_dim, in_dim, out_dim)
        self.in1 = InstanceNorm(in_dim)
        self.in2 = InstanceNorm(in_dim)
        self.activ = nn.LeakyReLU(0.2)
        self.sc = nn.Conv2d(in_dim, out_dim, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.avg_pool2d(self.sc(x), 2)
        h = F.avg_pool2d(self.conv1(self.activ(self.in1(x))), 2)
        h = self.conv2(self.activ(self.in2(h)))
        return (shortcut + h) / math.sqrt(2)


class UpBlockIN(_ResidualBlock):
    """Decoder block: [N, in, H, W] -> [N, out, 2H, 2W] (nearest up-sampling), instance norm before each
    activation."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self._convs(in_dim, out_dim, out_dim)
        self.in1 = InstanceNorm(in_dim)
        self.in2 = InstanceNorm(out_dim)
        self.activ = nn.LeakyReLU(0.2)
        self.sc = nn.Conv2d(in_dim, out_dim, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.interpolate(self.sc(x), scale_factor=2, mode="nearest")
        h = F.interpolate(self.activ(self.in1(x)), scale_factor=2, mode="nearest")
        h = self.conv2(self.activ(self.in2(self.conv1(h))))
        return (shortcut + h) / math.sqrt(2)


class MiddleBlock(_ResidualBlock):
    """Translator block: [N, in, H, W] -> [N, out, H, W], AdaIN before each activation."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self._convs(in_dim, out_dim, out_dim)
        self.adain1 = AdaptiveInstanceNorm(in_dim)
        self.adain2 = AdaptiveInstanceNorm(out_dim)
        self.activ = nn.LeakyReLU(0.2)
        self.sc = nn.Conv2d(in_dim, out_dim, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor, params: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``params``: (weight, bias) for adain1 and adain2, each [N or 1, C, 1]."""
        (w1, b1), (w2, b2) = params
        h = self.conv1(self.activ(self.adain1(x, w1, b1)))
        h = self.conv2(self.activ(self.adain2(h, w2, b2)))
        return (self.sc(x) + h) / math.sqrt(2)


class LinearBlock(nn.Module):
    """ReLU then Linear (the activation comes first, as in the official mapper)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.activ = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.activ(x))


# ---------------------------------------------------------------------------------------- extractor/translator/mapper
class Extractors(nn.Module):
    """Styles of all tags from one image: [N, 3, H, W] -> [N, num_tags, style_dim] (H, W >= 2**blocks)."""

    def __init__(self, input_dim: int, channels: Sequence[int], style_dim: int, num_tags: int) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.model = nn.Sequential(
            nn.Conv2d(input_dim, channels[0], 1, 1, 0),
            *[DownBlock(channels[i], channels[i + 1]) for i in range(len(channels) - 1)],
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels[-1], style_dim * num_tags, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).view(x.shape[0], self.num_tags, -1)


class Translator(nn.Module):
    """One tag's translator: features ``e`` [N, C_e, h, w] and a style [N or 1, style_dim] -> features of the same
    shape, ``f * m + e * (1 - m)`` with the attention mask ``m = sigmoid(masks(mid))``."""

    def __init__(self, in_dim: int, channels: Sequence[int], out_dim: int, style_dim: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_dim, channels[0], 1, 1, 0),
            *[MiddleBlock(channels[i], channels[i + 1]) for i in range(len(channels) - 1)],
        )
        self.adain_sizes = [m.num_features for m in self.model.modules() if isinstance(m, AdaptiveInstanceNorm)]
        self.style_to_params = nn.Linear(style_dim, 2 * sum(self.adain_sizes))
        self.features = nn.Sequential(nn.Conv2d(channels[-1], out_dim, 1, 1, 0))
        self.masks = nn.Sequential(nn.Conv2d(channels[-1], out_dim, 1, 1, 0), nn.Sigmoid())

    def adain_params(self, style: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) [N, C, 1] for every AdaIN layer in module order. Official layout of the ``style_to_params``
        output: per layer, C shifts then C scales; the scale is ``1 + value``."""
        p = self.style_to_params(style)
        params, offset = [], 0
        for c in self.adain_sizes:
            bias = p[:, offset : offset + c].unsqueeze(-1)
            weight = p[:, offset + c : offset + 2 * c].unsqueeze(-1) + 1
            params.append((weight, bias))
            offset += 2 * c
        return params

    def forward(self, e: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        params = self.adain_params(style)
        h, used = e, 0
        for layer in self.model:
            if isinstance(layer, MiddleBlock):
                h = layer(h, params[used : used + 2])
                used += 2
            else:
                h = layer(h)
        mask = self.masks(h)
        return self.features(h) * mask + e * (1 - mask)


class Mapper(nn.Module):
    """One tag's mapper: noise [N, noise_dim] -> a style [N, style_dim] for each attribute of the tag."""

    def __init__(
        self,
        noise_dim: int,
        pre_channels: Sequence[int],
        post_channels: Sequence[int],
        style_dim: int,
        num_attributes: int,
    ) -> None:
        super().__init__()
        self.pre_model = nn.Sequential(
            nn.Linear(noise_dim, pre_channels[0]),
            *[LinearBlock(pre_channels[i], pre_channels[i + 1]) for i in range(len(pre_channels) - 1)],
        )
        self.post_models = nn.ModuleList(
            [
                nn.Sequential(
                    *[LinearBlock(post_channels[i], post_channels[i + 1]) for i in range(len(post_channels) - 1)],
                    nn.Linear(post_channels[-1], style_dim),
                )
                for _ in range(num_attributes)
            ]
        )

    def forward(self, z: torch.Tensor, attribute: int | torch.Tensor) -> torch.Tensor:
        h = self.pre_model(z)
        if not isinstance(attribute, torch.Tensor):
            return self.post_models[attribute](h)
        attribute = attribute.to(h.device).long().view(-1)
        h = h.expand(attribute.shape[0], -1)
        styles = torch.stack([post(h) for post in self.post_models], dim=1)  # [N, A, style_dim]
        index = attribute.view(-1, 1, 1).expand(-1, 1, styles.shape[-1])
        return styles.gather(1, index).squeeze(1)


# ---------------------------------------------------------------------------------------------------------- generator
def _tags_of(hyperparameters: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    tags = []
    for i, tag in enumerate(hyperparameters["tags"]):
        attributes = tag.get("attributes", [])
        names = tuple(a["name"] if isinstance(a, Mapping) else str(a) for a in attributes)
        if not names:
            raise ValueError(f"HiSD tag {i} ({tag.get('name')!r}) has no attributes.")
        tags.append((str(tag.get("name", f"tag{i}")), names))
    if not tags:
        raise ValueError("HiSD hyper-parameters need at least one tag.")
    return tuple(tags)


class HiSDGenerator(nn.Module):
    """The official HiSD ``Gen``, built from a hyper-parameter dict (default: ``configs/celeba-hq_256.yaml``).

    ``hyperparameters`` may be the full official config dict (extra keys are ignored) or one holding just
    ``input_dim, style_dim, noise_dim, encoder, decoder, extractors, translators, mappers, tags``; a tag's
    ``attributes`` may be dicts with ``"name"`` (official format) or plain strings. See :func:`small_hyperparameters`
    for a small network.

    There is no single ``forward`` in the official code; :meth:`forward` here is the one-step edit
    ``decode(translate(encode(x), style, tag))``.
    """

    def __init__(self, hyperparameters: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        hp = copy.deepcopy(dict(CELEBA_HQ_256 if hyperparameters is None else hyperparameters))
        self.hyperparameters = hp
        self.tags = _tags_of(hp)
        self.input_dim = int(hp.get("input_dim", 3))
        self.style_dim = int(hp["style_dim"])
        self.noise_dim = int(hp["noise_dim"])
        enc = list(hp["encoder"]["channels"])
        dec = list(hp["decoder"]["channels"])
        pre = list(hp["mappers"]["pre_channels"])
        post = list(hp["mappers"]["post_channels"])
        if dec[0] != enc[-1]:
            raise ValueError(
                f"HiSD decoder channels[0] ({dec[0]}) must equal encoder channels[-1] ({enc[-1]}): the translator "
                "blends its output with the encoded features."
            )
        if post[0] != pre[-1]:
            raise ValueError(f"HiSD mappers post_channels[0] ({post[0]}) must equal pre_channels[-1] ({pre[-1]}).")
        self.downsampling = 2 ** (len(enc) - 1)
        self.min_reference_size = 2 ** (len(hp["extractors"]["channels"]) - 1)

        self.encoder = nn.Sequential(
            nn.Conv2d(self.input_dim, enc[0], 1, 1, 0),
            *[DownBlockIN(enc[i], enc[i + 1]) for i in range(len(enc) - 1)],
        )
        self.decoder = nn.Sequential(
            *[UpBlockIN(dec[i], dec[i + 1]) for i in range(len(dec) - 1)],
            nn.Conv2d(dec[-1], self.input_dim, 1, 1, 0),
        )
        self.extractors = Extractors(self.input_dim, hp["extractors"]["channels"], self.style_dim, len(self.tags))
        self.translators = nn.ModuleList(
            [Translator(enc[-1], hp["translators"]["channels"], dec[0], self.style_dim) for _ in self.tags]
        )
        self.mappers = nn.ModuleList(
            [Mapper(self.noise_dim, pre, post, self.style_dim, len(attributes)) for _, attributes in self.tags]
        )

    # ------------------------------------------------------------------------------------------------------ checks
    @property
    def num_attributes(self) -> tuple[int, ...]:
        """Number of attributes of each tag (official 256 config: (2, 2, 3))."""
        return tuple(len(attributes) for _, attributes in self.tags)

    def _check_tag(self, tag: Any) -> int:
        try:
            tag = operator.index(tag)
        except TypeError:
            raise TypeError(f"HiSD tag must be an int, got {type(tag).__name__}.") from None
        if not 0 <= tag < len(self.tags):
            raise ValueError(
                f"HiSD tag {tag} is out of range: this network has {len(self.tags)} tags "
                f"{[name for name, _ in self.tags]} (indices 0..{len(self.tags) - 1})."
            )
        return tag

    # ------------------------------------------------------------------------------------------------------ steps
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] (H, W divisible by 4 for the 256 config) -> features
        [N, encoder[-1], H/4, W/4]."""
        if x.dim() != 4 or x.shape[1] != self.input_dim:
            raise ValueError(f"HiSD encode expects images [N, {self.input_dim}, H, W], got {tuple(x.shape)}.")
        if x.shape[2] % self.downsampling or x.shape[3] % self.downsampling:
            raise ValueError(
                f"HiSD image height and width must be divisible by {self.downsampling}, got {tuple(x.shape[2:])}."
            )
        return self.encoder(x)

    def decode(self, e: torch.Tensor) -> torch.Tensor:
        """Features [N, decoder[0], h, w] -> images [N, 3, 4h, 4w] (no tanh: unbounded, ~[-1, 1] when trained)."""
        return self.decoder(e)

    def extract(self, reference: torch.Tensor, tag: int) -> torch.Tensor:
        """Style of ``tag`` in ``reference`` images [N, 3, H, W] in [-1, 1] (H, W >= 2**extractor blocks, 64 for the
        256 config; the official use is 256x256) -> [N, style_dim]."""
        tag = self._check_tag(tag)
        if reference.dim() != 4 or reference.shape[1] != self.input_dim:
            raise ValueError(
                f"HiSD reference images must be [N, {self.input_dim}, H, W], got {tuple(reference.shape)}."
            )
        if min(reference.shape[2:]) < self.min_reference_size:
            raise ValueError(
                f"HiSD reference images must be at least {self.min_reference_size} pixels high and wide, "
                f"got {tuple(reference.shape[2:])}."
            )
        return self.extractors(reference)[:, tag]

    def map(self, z: torch.Tensor, tag: int, attribute: int | torch.Tensor) -> torch.Tensor:
        """Style for ``attribute`` of ``tag`` from noise ``z`` [N, noise_dim] (standard normal) -> [N, style_dim].

        ``attribute`` is an int (the same attribute for the whole batch, the official call) or an integer tensor [N]
        of per-sample attribute indices (``z`` may then be [1, noise_dim], shared by all samples).
        """
        tag = self._check_tag(tag)
        if z.dim() != 2 or z.shape[1] != self.noise_dim:
            raise ValueError(f"HiSD noise z must be [N, {self.noise_dim}], got {tuple(z.shape)}.")
        count = self.num_attributes[tag]
        if isinstance(attribute, torch.Tensor):
            if attribute.dtype.is_floating_point or attribute.dtype == torch.bool or attribute.dim() != 1:
                raise ValueError(
                    f"HiSD attribute tensor must be integer indices shaped [N], got {attribute.dtype} "
                    f"{tuple(attribute.shape)}."
                )
            if z.shape[0] not in (1, attribute.shape[0]):
                raise ValueError(
                    f"HiSD attribute tensor has {attribute.shape[0]} entries but z has {z.shape[0]} rows."
                )
            if attribute.device.type == "cpu" and attribute.numel() and not (
                0 <= int(attribute.min()) and int(attribute.max()) < count
            ):
                raise ValueError(f"HiSD attribute indices for tag {tag} must lie in 0..{count - 1}, got {attribute}.")
        else:
            attribute = _check_attribute_int(attribute)
            if not 0 <= attribute < count:
                raise ValueError(
                    f"HiSD attribute {attribute} is out of range for tag {tag} ({self.tags[tag][0]}: "
                    f"{list(self.tags[tag][1])}, indices 0..{count - 1})."
                )
        return self.mappers[tag](z, attribute)

    def translate(self, e: torch.Tensor, style: torch.Tensor, tag: int) -> torch.Tensor:
        """Translate features ``e`` [N, C_e, h, w] towards ``style`` [N or 1, style_dim] for ``tag`` -> [N, C_e, h, w].
        Calls can be chained (one per tag) before a single :meth:`decode`."""
        tag = self._check_tag(tag)
        if style.dim() != 2 or style.shape[1] != self.style_dim or style.shape[0] not in (1, e.shape[0]):
            raise ValueError(
                f"HiSD style must be [N, {self.style_dim}] (or [1, {self.style_dim}]) for N={e.shape[0]} feature "
                f"maps, got {tuple(style.shape)}."
            )
        return self.translators[tag](e, style)

    def forward(self, x: torch.Tensor, style: torch.Tensor, tag: int) -> torch.Tensor:
        """One edit step: ``decode(translate(encode(x), style, tag))``; x [N, 3, H, W] -> [N, 3, H, W]."""
        return self.decode(self.translate(self.encode(x), style, tag))


def _check_attribute_int(attribute: Any) -> int:
    if isinstance(attribute, bool):
        raise TypeError("HiSD attribute must be an int index or an integer tensor [N], got a bool.")
    try:
        return operator.index(attribute)
    except TypeError:
        raise TypeError(
            f"HiSD attribute must be an int index or an integer tensor [N], got {type(attribute).__name__}."
        ) from None


# ---------------------------------------------------------------------------------------------------------- condition
@dataclass
class HiSDCondition:
    """One HiSD edit step: a tag and where its style comes from.

    Give exactly one of:

    * ``reference`` [N or 1, 3, H, W] in [-1, 1]: reference-guided, ``style = extract(reference, tag)``;
    * ``attribute`` (int, or integer tensor [N] of per-sample indices) **and** ``z`` [N or 1, noise_dim] (standard
      normal noise): latent-guided, ``style = map(z, tag, attribute)``.

    ``tag`` indexes :data:`HISD_TAGS` (0 Bangs, 1 Eyeglasses, 2 HairColor); ``attribute`` indexes the tag's attributes
    (e.g. HairColor: 0 black, 1 blond, 2 brown). Shapes are checked here; ranges that depend on the network (number of
    tags/attributes, ``noise_dim``, batch size) are checked by :meth:`check` when the edit runs.
    """

    tag: int
    reference: torch.Tensor | None = None
    attribute: int | torch.Tensor | None = None
    z: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tag, bool):
            raise TypeError("HiSDCondition.tag must be an int, got a bool.")
        try:
            self.tag = operator.index(self.tag)
        except TypeError:
            raise TypeError(f"HiSDCondition.tag must be an int, got {type(self.tag).__name__}.") from None
        if self.tag < 0:
            raise ValueError(f"HiSDCondition.tag must be >= 0, got {self.tag}.")
        latent = self.attribute is not None or self.z is not None
        if self.reference is not None and latent:
            raise ValueError(
                "HiSDCondition takes either a reference image (reference-guided) or attribute and z (latent-guided), "
                "not both."
            )
        if self.reference is None and not latent:
            raise ValueError(
                "HiSDCondition needs a style source: reference=[N, 3, H, W] images, or attribute=<index> and "
                "z=[N, noise_dim] noise."
            )
        if self.reference is not None:
            ref = self.reference
            if not isinstance(ref, torch.Tensor) or ref.dim() != 4 or ref.shape[1] != 3:
                shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
                raise ValueError(f"HiSDCondition.reference must be images [N, 3, H, W] in [-1, 1], got {shape}.")
            if not ref.dtype.is_floating_point:
                raise TypeError(f"HiSDCondition.reference must be floating point in [-1, 1], got {ref.dtype}.")
            return
        if self.attribute is None or self.z is None:
            missing = "attribute" if self.attribute is None else "z"
            raise ValueError(f"Latent-guided HiSDCondition needs both attribute and z; {missing} is missing.")
        if not isinstance(self.z, torch.Tensor) or self.z.dim() != 2 or not self.z.dtype.is_floating_point:
            shape = tuple(self.z.shape) if isinstance(self.z, torch.Tensor) else type(self.z).__name__
            raise ValueError(f"HiSDCondition.z must be a float tensor [N, noise_dim], got {shape}.")
        if isinstance(self.attribute, torch.Tensor):
            a = self.attribute
            if a.dim() != 1 or a.dtype.is_floating_point or a.dtype == torch.bool:
                raise ValueError(
                    f"HiSDCondition.attribute tensor must be integer indices [N], got {a.dtype} {tuple(a.shape)}."
                )
            if self.z.shape[0] not in (1, a.shape[0]):
                raise ValueError(
                    f"HiSDCondition.attribute has {a.shape[0]} entries but z has {self.z.shape[0]} rows."
                )
        else:
            self.attribute = _check_attribute_int(self.attribute)
            if self.attribute < 0:
                raise ValueError(f"HiSDCondition.attribute must be >= 0, got {self.attribute}.")

    @property
    def guided_by(self) -> str:
        """``"reference"`` or ``"latent"``."""
        return "reference" if self.reference is not None else "latent"

    @property
    def batch_size(self) -> int:
        """Rows of the style source (1 means shared by every image)."""
        if self.reference is not None:
            return self.reference.shape[0]
        if isinstance(self.attribute, torch.Tensor):
            return self.attribute.shape[0]
        return self.z.shape[0]

    def check(self, generator: HiSDGenerator, batch_size: int) -> None:
        """Raise ``ValueError`` unless this condition fits ``generator`` and a batch of ``batch_size`` images."""
        generator._check_tag(self.tag)
        if self.batch_size not in (1, batch_size):
            raise ValueError(
                f"HiSDCondition has a style source of {self.batch_size} rows for {batch_size} images "
                "(use N rows, or 1 to share it)."
            )
        if self.reference is None:
            if self.z.shape[1] != generator.noise_dim:
                raise ValueError(
                    f"HiSDCondition.z must be [N, {generator.noise_dim}] for this network, got {tuple(self.z.shape)}."
                )
            if not isinstance(self.attribute, torch.Tensor):
                count = generator.num_attributes[self.tag]
                if self.attribute >= count:
                    name, attributes = generator.tags[self.tag]
                    raise ValueError(
                        f"HiSDCondition.attribute {self.attribute} is out of range for tag {self.tag} ({name}: "
                        f"{list(attributes)}, indices 0..{count - 1})."
                    )


# ------------------------------------------------------------------------------------------------------------- editor
class HiSDEditor(Editor):
    """HiSD as an :class:`Editor`. Condition: a :class:`HiSDCondition`, or a sequence of them applied in order on the
    features (chained edits, one decode).

    ``edit(x, cond)`` runs ``decode(translate(encode(x), style, tag))`` with ``style = extract(reference, tag)`` or
    ``map(z, tag, attribute)``. Output [N, 3, H, W] is unbounded (no tanh; ~[-1, 1] for trained weights).

    What :meth:`conditions` returns:

    * ``references=None`` (default): latent-guided, one edit per (tag, attribute) pair (7 for the celeba-hq tags),
      the HiSD test protocol;
    * ``references=[r_1, ..., r_k]``: reference-guided, one edit per reference image, ``style = extract(r_i, tag)``
      for ``reference_tag`` (default :data:`HISD_REFERENCE_TAG`, HairColor), the LoRA-Patching paper's protocol
      (three hair-colour references). Each reference is a float tensor [3, H, W] or [1, 3, H, W] in [-1, 1], shared
      by every image of a batch; the official scripts resize references so the shorter side is
      :data:`HISD_REFERENCE_SIZE` (``lora_patch_adapters.runs.inputs.read_references`` reads files that way).

    ``generator_mode`` is ``"eval"``; HiSD has no BatchNorm, Dropout or running statistics, so train and eval mode
    give identical results (the official scripts never switch modes).
    """

    name = "hisd"
    generator_mode = "eval"

    def __init__(
        self,
        generator: HiSDGenerator | None = None,
        references: Sequence[torch.Tensor] | None = None,
        reference_tag: int | str = HISD_REFERENCE_TAG,
    ) -> None:
        generator = HiSDGenerator() if generator is None else generator
        if not isinstance(generator, HiSDGenerator):
            raise TypeError(f"HiSDEditor needs a HiSDGenerator, got {type(generator).__name__}.")
        super().__init__(generator)
        if generator.tags == HISD_TAGS:
            self.attribute_names = HISD_ATTRIBUTE_NAMES
        else:
            names: list[str] = []
            for name, attributes in generator.tags:
                binary = attributes == ("with", "without")
                names.extend([name] if binary else [f"{name}_{attribute}" for attribute in attributes])
            self.attribute_names = tuple(names)
        self._references: tuple[torch.Tensor, ...] | None = None
        self._reference_tag: int | None = None
        if references is not None:
            self.set_references(references, reference_tag)
        elif reference_tag != HISD_REFERENCE_TAG or any(
            name.replace("_", "").lower() == HISD_REFERENCE_TAG.lower() for name, _ in generator.tags
        ):
            self._reference_tag = self._resolve_tag(reference_tag)

    # ------------------------------------------------------------------------------------------------ references
    @property
    def references(self) -> tuple[torch.Tensor, ...] | None:
        """The reference images [1, 3, H, W] of the reference-guided edits, or None (latent-guided)."""
        return self._references

    @references.setter
    def references(self, value: Sequence[torch.Tensor] | None) -> None:
        self.set_references(value, HISD_REFERENCE_TAG if self._reference_tag is None else self._reference_tag)

    @property
    def reference_tag(self) -> int | None:
        """Index of the tag the reference-guided edits change (in ``generator.tags``); None when the network has no
        HairColor tag and none was chosen."""
        return self._reference_tag

    @property
    def guidance(self) -> str:
        """``"reference"`` when :meth:`conditions` is reference-guided, else ``"latent"``."""
        return "latent" if self._references is None else "reference"

    def set_references(
        self, references: Sequence[torch.Tensor] | None, tag: int | str = HISD_REFERENCE_TAG
    ) -> None:
        """Make :meth:`conditions` reference-guided: one edit of ``tag`` (index or name, e.g. ``"HairColor"``) per
        image of ``references`` (float tensors [3, H, W] or [1, 3, H, W] in [-1, 1], at least
        ``generator.min_reference_size`` pixels high and wide). ``references=None`` returns to latent-guided edits.
        Everything is checked before anything changes."""
        if references is None:
            self._references = None
            return
        tag_index = self._resolve_tag(tag)
        if isinstance(references, torch.Tensor) or isinstance(references, (str, bytes, os.PathLike)):
            raise TypeError(
                "HiSDEditor references must be a list of image tensors [3, H, W] in [-1, 1] (one edit each), got "
                f"a single {type(references).__name__}; read image files with "
                "lora_patch_adapters.runs.inputs.read_references(paths)."
            )
        checked = tuple(self._check_reference(r, f"references[{i}]") for i, r in enumerate(references))
        if not checked:
            raise ValueError("HiSDEditor references is empty: give at least one reference image (None: latent-guided).")
        self._references, self._reference_tag = checked, tag_index

    def _resolve_tag(self, tag: int | str) -> int:
        tags = self.generator.tags
        if isinstance(tag, str):
            wanted = tag.replace("_", "").lower()
            matches = [i for i, (name, _) in enumerate(tags) if name.replace("_", "").lower() == wanted]
            if not matches:
                raise ValueError(f"HiSD reference tag {tag!r} is not a tag of this network {[n for n, _ in tags]}.")
            return matches[0]
        return self.generator._check_tag(tag)

    def _check_reference(self, reference: Any, name: str) -> torch.Tensor:
        if isinstance(reference, (str, bytes, os.PathLike)):
            raise TypeError(
                f"HiSDEditor {name} is a path ({os.fsdecode(reference)!r}); the editor takes image tensors: read the "
                "files with lora_patch_adapters.runs.inputs.read_references(paths)."
            )
        if isinstance(reference, torch.Tensor) and reference.dim() == 3:
            reference = reference.unsqueeze(0)
        if not isinstance(reference, torch.Tensor) or reference.dim() != 4 or reference.shape[:2] != (1, 3):
            got = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
            raise ValueError(f"HiSDEditor {name} must be one image [3, H, W] or [1, 3, H, W] in [-1, 1], got {got}.")
        check_images(reference, f"HiSDEditor {name}")
        check_value_range(reference, f"HiSDEditor {name}")  # also refuses NaN and Inf
        size = self.generator.min_reference_size
        if min(reference.shape[2:]) < size:
            raise ValueError(
                f"HiSDEditor {name} is {tuple(reference.shape[2:])} pixels; this network needs at least {size} high "
                f"and wide (the official scripts resize references to a shorter side of {HISD_REFERENCE_SIZE})."
            )
        return reference.detach()

    # ------------------------------------------------------------------------------------------------------ edits
    def _run(self, x: torch.Tensor, condition: HiSDCondition | Sequence[HiSDCondition]) -> torch.Tensor:
        steps = [condition] if isinstance(condition, HiSDCondition) else list(condition)
        if not steps or not all(isinstance(step, HiSDCondition) for step in steps):
            raise TypeError(
                "HiSD edits take a HiSDCondition (or a non-empty sequence of them), "
                f"got {type(condition).__name__}."
            )
        generator: HiSDGenerator = self.generator
        e = generator.encode(x)
        for step in steps:
            step.check(generator, x.shape[0])
            if step.reference is not None:
                style = generator.extract(step.reference.to(device=x.device, dtype=x.dtype), step.tag)
            else:
                style = generator.map(step.z.to(device=x.device, dtype=x.dtype), step.tag, step.attribute)
            e = generator.translate(e, style, step.tag)
        return generator.decode(e)

    def conditions(self, labels: torch.Tensor, seed: int = 0) -> list[HiSDCondition]:
        """The edits of the test protocol for a batch with source ``labels`` [N, len(attribute_names)] (0/1; they are
        validated and give the batch size N; HiSD's edits do not depend on the source attributes).

        Latent-guided (no references): one :class:`HiSDCondition` per (tag, attribute) pair, in tag then attribute
        order (7 for the celeba-hq tags), each with its own noise ``z`` [N, noise_dim] drawn from a
        ``torch.Generator`` seeded with ``seed`` (same seed, same conditions; drawn on the CPU, then moved to the
        editor's device).

        Reference-guided (:attr:`references` set): one ``HiSDCondition(tag=reference_tag, reference=r)`` per
        reference image r [1, 3, H, W] (moved to the editor's device, shared by the N images); ``seed`` is unused.
        """
        labels = check_labels(labels, self.attribute_names)
        n = labels.shape[0]
        device = self.device
        if self._references is not None:
            return [HiSDCondition(tag=self._reference_tag, reference=r.to(device)) for r in self._references]
        rng = torch.Generator().manual_seed(int(seed))
        out = []
        for tag, (_, attributes) in enumerate(self.generator.tags):
            for attribute in range(len(attributes)):
                z = torch.randn(n, self.generator.noise_dim, generator=rng).to(device)
                out.append(HiSDCondition(tag=tag, attribute=attribute, z=z))
        return out

    def describe(self) -> dict[str, Any]:
        """The editor's settings as plain values (what a run records): name, guidance, and for reference-guided
        edits the tag and the reference sizes."""
        record: dict[str, Any] = {"name": self.name, "guidance": self.guidance}
        if self._references is not None:
            record.update(reference_tag=self.generator.tags[self._reference_tag][0],
                          references=[list(r.shape[2:]) for r in self._references])
        return record

    def __repr__(self) -> str:
        extra = "" if self._references is None else f", {len(self._references)} references"
        return f"{super().__repr__()[:-1]}, guidance={self.guidance!r}{extra})"


def build_editor(
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    references: Sequence[torch.Tensor] | None = None,
) -> HiSDEditor:
    """The official 256x256 HiSD (celeba-hq) editor; ``references`` (image tensors, see :class:`HiSDEditor`) makes
    its conditions reference-guided hair-colour edits, the LoRA-Patching paper's protocol.

    ``checkpoint``: path to an official file (``checkpoint_256_celeba-hq.pt`` or ``gen_%08d.pt``), a dict
    ``{'gen': ..., 'gen_test': ...}``; the EMA weights ``'gen_test'`` are loaded strictly, as the official test does.
    Without a checkpoint the weights are random (a warning says so). Raises :class:`CheckpointError` for a missing,
    unreadable or wrong file.
    """
    generator = HiSDGenerator()
    if checkpoint is None:
        warnings.warn(
            "HiSD editor built with random weights (no checkpoint given); pass the official "
            "checkpoint_256_celeba-hq.pt for meaningful edits.",
            stacklevel=2,
        )
    else:
        obj = read_checkpoint(checkpoint, map_location=device or "cpu")
        state = pick_state_dict(obj, _CHECKPOINT_KEY, _MODEL_NAME, checkpoint)
        load_into(generator, state, _MODEL_NAME, checkpoint)
    editor = HiSDEditor(generator, references=references)
    if device is not None:
        generator.to(device)
    return editor


register_layout("hisd", lambda: HiSDGenerator())
