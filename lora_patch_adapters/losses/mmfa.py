"""MMFA (multi-modal feature alignment) loss: pixel MSE + ResNet-50 feature MSE + BLIP semantic cosine distance.

``total = pixel_weight * MSE(output, target)
        + feature_weight * MSE(resnet(output), resnet(target))
        + semantic_weight * mean(1 - cos(blip(output), blip(target)))``

Gradients flow through both frozen encoders back to ``output`` (the encoders are in eval mode with frozen parameters,
but the output's forward pass is not under ``no_grad``). Target features are computed under ``no_grad``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet

from .._checks import check_number
from .feature import ResNetFeatures, ResNetWeights, load_resnet50
from .pixel import check_image_pair, check_images, pixel_loss
from .semantic import DEFAULT_BLIP_MODEL, BlipVisionFeatures, cosine_distance, load_blip_vision

TERMS = ("pixel", "feature", "semantic")


def _check_weight(value, name: str) -> float:
    return check_number(value, name, strict=False, hint=" (0 disables the term)")


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode and stop gradients to its parameters (in place); returns it."""
    module.eval()
    module.requires_grad_(False)
    return module


def _as_feature_encoder(encoder: nn.Module) -> nn.Module:
    return ResNetFeatures(encoder) if isinstance(encoder, ResNet) else encoder


def _as_semantic_encoder(encoder: nn.Module) -> nn.Module:
    if isinstance(encoder, BlipVisionFeatures):
        return encoder
    from transformers import BlipVisionModel  # here: importing transformers is slow and only BLIP needs it

    return BlipVisionFeatures(encoder) if isinstance(encoder, BlipVisionModel) else encoder


class MMFALoss(nn.Module):
    """Weighted sum of the pixel, feature and semantic terms between ``output`` and ``target`` [N, 3, H, W] in [-1, 1].

    A weight of 0 switches its term off, and its encoder is then neither built nor loaded (a passed one is ignored).
    For a term with weight > 0 the encoder is ``feature_encoder`` / ``semantic_encoder`` when given (any module mapping
    images in [-1, 1] to [N, D]; a bare torchvision ``ResNet`` or ``BlipVisionModel`` is wrapped), else it is loaded at
    construction with :func:`load_resnet50` (``resnet_weights``; ``local_files_only`` forbids downloading) and
    :func:`load_blip_vision` (``blip_model``, ``local_files_only``). Encoders are frozen in place (eval mode,
    ``requires_grad_(False)``) and stay in eval mode under ``.train()``.

    Encoders are registered submodules, so ``.to(device)`` moves them, and ``state_dict()`` contains their (frozen)
    weights: the loss has no trainable state of its own and need not be saved.
    """

    def __init__(
        self,
        pixel_weight: float = 1.0,
        feature_weight: float = 0.1,
        semantic_weight: float = 0.1,
        feature_encoder: nn.Module | None = None,
        semantic_encoder: nn.Module | None = None,
        resnet_weights: ResNetWeights = "IMAGENET1K_V1",
        blip_model: str | os.PathLike = DEFAULT_BLIP_MODEL,
        local_files_only: bool = False,
    ):
        super().__init__()
        self.pixel_weight = _check_weight(pixel_weight, "pixel_weight")
        self.feature_weight = _check_weight(feature_weight, "feature_weight")
        self.semantic_weight = _check_weight(semantic_weight, "semantic_weight")
        if not self.active_terms:
            raise ValueError("MMFALoss needs at least one of pixel_weight, feature_weight, semantic_weight > 0.")
        for name, enc in (("feature_encoder", feature_encoder), ("semantic_encoder", semantic_encoder)):
            if enc is not None and not isinstance(enc, nn.Module):
                raise TypeError(f"{name} must be an nn.Module or None, got {type(enc).__name__}.")

        self.feature_encoder: nn.Module | None = None
        self.semantic_encoder: nn.Module | None = None
        if self.feature_weight > 0:
            if feature_encoder is None:
                feature_encoder = load_resnet50(resnet_weights, download=not local_files_only)
            self.feature_encoder = freeze(_as_feature_encoder(feature_encoder))
        if self.semantic_weight > 0:
            if semantic_encoder is None:
                semantic_encoder = load_blip_vision(blip_model, local_files_only=local_files_only)
            self.semantic_encoder = freeze(_as_semantic_encoder(semantic_encoder))

    @classmethod
    def pixel_only(cls, pixel_weight: float = 1.0) -> MMFALoss:
        """The pixel term alone (no encoder is built)."""
        return cls(pixel_weight=pixel_weight, feature_weight=0.0, semantic_weight=0.0)

    @property
    def weights(self) -> dict[str, float]:
        return {"pixel": self.pixel_weight, "feature": self.feature_weight, "semantic": self.semantic_weight}

    @property
    def active_terms(self) -> tuple[str, ...]:
        """Names of the terms with weight > 0, in the order ("pixel", "feature", "semantic")."""
        return tuple(name for name, w in self.weights.items() if w > 0)

    def _encoders(self) -> dict[str, nn.Module]:
        return {
            name: enc for name, enc in (("feature", self.feature_encoder), ("semantic", self.semantic_encoder))
            if enc is not None
        }

    def train(self, mode: bool = True) -> MMFALoss:
        super().train(mode)
        for enc in self._encoders().values():
            enc.eval()  # frozen encoders never switch BatchNorm/dropout to training behaviour
        return self

    @torch.no_grad()
    def encode_targets(self, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder features of ``target`` [N, 3, H, W] in [-1, 1], computed without grad: {"feature": [N, C],
        "semantic": [N, D]} for the active encoder terms (empty for pixel only). Pass to :meth:`forward` to reuse."""
        check_images(target, "target")
        return {name: enc(target).detach() for name, enc in self._encoders().items()}

    def forward(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        target_features: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``output`` (differentiable) and ``target`` (a constant; detached), both [N, 3, H, W] in [-1, 1] of the same
        shape -> (total weighted loss, scalar with grad; {term: unweighted detached scalar} for the active terms).
        ``target_features`` from :meth:`encode_targets` on the same ``target`` skips re-encoding it."""
        check_image_pair(output, target)
        target = target.detach()
        encoders = self._encoders()
        if target_features is None:
            target_features = self.encode_targets(target)
        else:
            if not isinstance(target_features, dict):
                raise TypeError(f"target_features must be the dict from encode_targets, got {type(target_features)}.")
            for name in encoders:
                feats = target_features.get(name)
                if feats is None:
                    raise ValueError(f"target_features lacks the {name!r} term; use loss.encode_targets(target).")
                if not isinstance(feats, torch.Tensor):
                    raise TypeError(f"target_features[{name!r}] must be a tensor, got {type(feats).__name__}.")
                if feats.shape[0] != output.shape[0]:
                    raise ValueError(
                        f"target_features[{name!r}] has batch {feats.shape[0]} but output has {output.shape[0]}."
                    )

        terms: dict[str, torch.Tensor] = {}
        if self.pixel_weight > 0:
            terms["pixel"] = pixel_loss(output, target)
        if "feature" in encoders:
            terms["feature"] = F.mse_loss(encoders["feature"](output), target_features["feature"].detach())
        if "semantic" in encoders:
            terms["semantic"] = cosine_distance(encoders["semantic"](output), target_features["semantic"].detach())
        weights = self.weights
        total = sum(weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}_weight={w:g}" for name, w in self.weights.items())
