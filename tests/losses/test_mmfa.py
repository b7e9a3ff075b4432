"""MMFA loss: gradients through both encoders, switched-off terms build nothing, values, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_patch_adapters.losses import BlipVisionFeatures, MMFALoss, ResNetFeatures, mmfa
from tests.helpers import images


class TinyPatch(nn.Module):
    """A stand-in for a patched generator: one 3x3 conv (the trainable patch) on top of the input, tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x + 0.5 * self.conv(x))


def patch_gradient(loss_fn: MMFALoss, patch: TinyPatch, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    patch.zero_grad(set_to_none=True)
    total, _ = loss_fn(patch(x), target)
    total.backward()
    return torch.cat([p.grad.flatten() for p in patch.parameters()])


@pytest.fixture(autouse=True)
def no_real_encoders(monkeypatch):
    """No test here may load a real ResNet-50 or BLIP: the loaders as looked up by mmfa.py raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("a real encoder was requested")

    monkeypatch.setattr(mmfa, "load_resnet50", refuse)
    monkeypatch.setattr(mmfa, "load_blip_vision", refuse)


def make_loss(feature_encoder, semantic_encoder, pixel=1.0, feature=0.0, semantic=0.0) -> MMFALoss:
    return MMFALoss(
        pixel_weight=pixel,
        feature_weight=feature,
        semantic_weight=semantic,
        feature_encoder=feature_encoder,
        semantic_encoder=semantic_encoder,
    )


def test_each_term_changes_the_patch_gradient(feature_encoder, semantic_encoder):
    patch, x, target = TinyPatch(), images(2), images(2)
    encoders = (feature_encoder, semantic_encoder)
    pixel = patch_gradient(make_loss(*encoders), patch, x, target)
    with_feature = patch_gradient(make_loss(*encoders, feature=1.0), patch, x, target)
    with_semantic = patch_gradient(make_loss(*encoders, semantic=1.0), patch, x, target)
    feature_only = patch_gradient(make_loss(*encoders, pixel=0.0, feature=1.0), patch, x, target)
    semantic_only = patch_gradient(make_loss(*encoders, pixel=0.0, semantic=1.0), patch, x, target)
    # gradients flow through both frozen encoders back to the patch ...
    assert feature_only.abs().sum() > 0 and semantic_only.abs().sum() > 0
    # ... and each term changes the training signal
    for combined in (with_feature, with_semantic):
        assert (combined - pixel).norm() > 1e-3 * pixel.norm()
    torch.testing.assert_close(with_feature, pixel + feature_only)
    torch.testing.assert_close(with_semantic, pixel + semantic_only)
    # the frozen encoders themselves receive no gradient
    assert all(p.grad is None for enc in encoders for p in enc.parameters())


def test_values_match_hand_computation(feature_encoder, semantic_encoder, tiny_resnet, blip_vision):
    loss_fn = make_loss(feature_encoder, semantic_encoder, pixel=1.0, feature=0.1, semantic=0.2)
    out, target = images(3), images(3)
    total, terms = loss_fn(out, target)
    assert set(terms) == {"pixel", "feature", "semantic"} and not any(v.requires_grad for v in terms.values())

    with torch.no_grad():
        # feature: MSE of pooled features straight from torchvision's ResNet layers
        def pooled(img):
            h = ((img + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
                [0.229, 0.224, 0.225]
            ).view(1, 3, 1, 1)
            h = tiny_resnet.maxpool(tiny_resnet.relu(tiny_resnet.bn1(tiny_resnet.conv1(h))))
            h = tiny_resnet.layer4(tiny_resnet.layer3(tiny_resnet.layer2(tiny_resnet.layer1(h))))
            return h.mean(dim=(2, 3))

        feature = ((pooled(out) - pooled(target)) ** 2).mean()

        # semantic: 1 - cosine on the BLIP CLS token straight from the model
        def cls(img):
            mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
            std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
            return blip_vision(pixel_values=((img + 1) / 2 - mean) / std).last_hidden_state[:, 0]

        a, b = cls(out), cls(target)
        semantic = (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()

    torch.testing.assert_close(terms["pixel"], ((out - target) ** 2).mean())
    torch.testing.assert_close(terms["feature"], feature)
    torch.testing.assert_close(terms["semantic"], semantic)
    torch.testing.assert_close(total, terms["pixel"] + 0.1 * feature + 0.2 * semantic)


def test_identical_images_give_zero_loss(feature_encoder, semantic_encoder):
    loss_fn = make_loss(feature_encoder, semantic_encoder, feature=0.1, semantic=0.1)
    x = images(2)
    total, terms = loss_fn(x, x.clone())
    assert total.abs().item() < 1e-6 and all(v.abs().item() < 1e-6 for v in terms.values())


@pytest.mark.parametrize("size", [16, 48])
def test_resizing_inside_the_graph(feature_encoder, semantic_encoder, size):
    loss_fn = make_loss(feature_encoder, semantic_encoder, pixel=0.0, feature=1.0, semantic=1.0)
    out = images(2, size).requires_grad_(True)
    total, terms = loss_fn(out, images(2, size))
    total.backward()
    assert set(terms) == {"feature", "semantic"}
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0


def test_switched_off_terms_build_no_encoder(feature_encoder, semantic_encoder):
    loss_fn = MMFALoss(feature_weight=0, semantic_weight=0.0)  # the loaders raise: nothing may be loaded
    assert loss_fn.active_terms == ("pixel",)
    assert loss_fn.feature_encoder is None and loss_fn.semantic_encoder is None
    assert MMFALoss.pixel_only().active_terms == ("pixel",)
    assert list(MMFALoss.pixel_only().parameters()) == []

    # a passed encoder whose weight is 0 is ignored, not stored
    loss_fn = MMFALoss(feature_weight=0, semantic_weight=0.1, feature_encoder=feature_encoder,
                       semantic_encoder=semantic_encoder)
    assert loss_fn.active_terms == ("pixel", "semantic") and loss_fn.feature_encoder is None
    assert loss_fn.semantic_encoder is semantic_encoder
    loss_fn = MMFALoss(pixel_weight=0, feature_weight=0.1, semantic_weight=0, feature_encoder=feature_encoder)
    assert loss_fn.active_terms == ("feature",) and loss_fn.semantic_encoder is None
    _total, terms = loss_fn(images(1), images(1))
    assert set(terms) == {"feature"} and loss_fn.encode_targets(images(1)).keys() == {"feature"}


def test_encoders_are_loaded_when_not_passed(monkeypatch, feature_encoder, semantic_encoder):
    calls = []

    def fake_resnet(weights, download=True):
        calls.append(("resnet", weights, download))
        return feature_encoder

    def fake_blip(name, local_files_only=False):
        calls.append(("blip", name, local_files_only))
        return semantic_encoder

    monkeypatch.setattr(mmfa, "load_resnet50", fake_resnet)
    monkeypatch.setattr(mmfa, "load_blip_vision", fake_blip)
    loss_fn = MMFALoss(resnet_weights="/w/r50.safetensors", blip_model="/w/blip", local_files_only=True)
    assert calls == [("resnet", "/w/r50.safetensors", False), ("blip", "/w/blip", True)]
    assert loss_fn.active_terms == ("pixel", "feature", "semantic")
    assert loss_fn.feature_encoder is feature_encoder and loss_fn.semantic_encoder is semantic_encoder
    calls.clear()
    MMFALoss()
    assert calls == [("resnet", "IMAGENET1K_V1", True), ("blip", "Salesforce/blip-image-captioning-base", False)]


def test_encoders_are_frozen_and_stay_in_eval_mode(tiny_resnet, blip_vision):
    tiny_resnet.train()
    loss_fn = MMFALoss(feature_encoder=tiny_resnet, semantic_encoder=blip_vision)  # bare models get wrapped
    assert isinstance(loss_fn.feature_encoder, ResNetFeatures) and loss_fn.feature_encoder.input_size == 224
    assert isinstance(loss_fn.semantic_encoder, BlipVisionFeatures)
    assert not any(p.requires_grad for p in loss_fn.parameters())
    loss_fn.train()
    assert loss_fn.training and not tiny_resnet.training and not blip_vision.training
    assert "feature_encoder.backbone.conv1.weight" in loss_fn.state_dict()  # registered submodules


def test_to_moves_encoders(feature_encoder, semantic_encoder):
    loss_fn = make_loss(feature_encoder, semantic_encoder, feature=0.1, semantic=0.1).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in loss_fn.parameters())
    out = images(2).double().requires_grad_(True)
    total, _ = loss_fn(out, images(2).double())
    total.backward()
    assert total.dtype == torch.float64 and torch.isfinite(out.grad).all()


def test_target_features_are_reused(feature_encoder, semantic_encoder):
    loss_fn = make_loss(feature_encoder, semantic_encoder, feature=0.1, semantic=0.1)
    out, target = images(2), images(2)
    cached = loss_fn.encode_targets(target)
    assert set(cached) == {"feature", "semantic"} and not any(v.requires_grad for v in cached.values())
    total, _terms = loss_fn(out, target)
    total_cached, _terms_cached = loss_fn(out, target, target_features=cached)
    torch.testing.assert_close(total_cached, total)
    with pytest.raises(ValueError, match="lacks the 'semantic' term"):
        loss_fn(out, target, target_features={"feature": cached["feature"]})
    with pytest.raises(ValueError, match="batch 1"):
        loss_fn(out, target, target_features={k: v[:1] for k, v in cached.items()})
    with pytest.raises(TypeError, match="dict from encode_targets"):
        loss_fn(out, target, target_features=[cached["feature"]])


def test_target_is_a_constant():
    out, target = images(2).requires_grad_(True), images(2).requires_grad_(True)
    total, _ = MMFALoss.pixel_only()(out, target)
    total.backward()
    assert out.grad is not None and target.grad is None


@pytest.mark.parametrize("name", ["pixel_weight", "feature_weight", "semantic_weight"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "0.1", True, None])
def test_bad_weights_name_the_argument(name, value):
    kwargs = {"pixel_weight": 1.0, "feature_weight": 0.0, "semantic_weight": 0.0, name: value}
    with pytest.raises(ValueError, match=name):
        MMFALoss(**kwargs)


def test_all_weights_zero_and_bad_encoders():
    with pytest.raises(ValueError, match="at least one"):
        MMFALoss(pixel_weight=0, feature_weight=0, semantic_weight=0)
    with pytest.raises(TypeError, match="feature_encoder"):
        MMFALoss(feature_encoder=lambda x: x, semantic_weight=0)


def test_shape_mismatch_is_clear():
    loss_fn = MMFALoss.pixel_only()
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3, 32, 32\).*\(1, 3, 32, 32\)"):
        loss_fn(images(2), images(1))
    with pytest.raises(ValueError, match="3 channels"):
        loss_fn(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))


def test_pixel_term_equals_functional_mse():
    out, target = images(2), images(2)
    total, terms = MMFALoss.pixel_only(pixel_weight=2.0)(out, target)
    torch.testing.assert_close(terms["pixel"], F.mse_loss(out, target))
    torch.testing.assert_close(total, 2 * F.mse_loss(out, target))
