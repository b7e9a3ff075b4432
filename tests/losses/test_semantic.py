"""Semantic term encoder: BLIP vision CLS features, cosine distance, and ``load_blip_vision``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_patch_adapters.losses import BlipVisionFeatures, EncoderUnavailableError, cosine_distance, load_blip_vision
from tests.helpers import images


def hand_pixel_values(x: torch.Tensor, size: int) -> torch.Tensor:
    x = (x + 1) / 2
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (x - mean) / std


def hand_cls(model, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=hand_pixel_values(x, model.config.image_size)).last_hidden_state[:, 0]


@pytest.mark.parametrize("size", [32, 16, 48])
def test_cls_features_match_the_model(blip_vision, size):
    enc = BlipVisionFeatures(blip_vision)
    assert enc.input_size == 32
    x = images(2, size)
    with torch.no_grad():
        feats = enc(x)
        assert feats.shape == (2, 32)
        torch.testing.assert_close(feats, hand_cls(blip_vision, x))


def test_cosine_distance_zero_for_identical_and_matches_hand_value(semantic_encoder, blip_vision):
    a, b = images(3), images(3)
    with torch.no_grad():
        fa, fb = semantic_encoder(a), semantic_encoder(b)
        assert cosine_distance(fa, semantic_encoder(a.clone())).abs().item() < 1e-6
        value = cosine_distance(fa, fb)
        ha, hb = hand_cls(blip_vision, a), hand_cls(blip_vision, b)
    hand = 1 - ((ha * hb).sum(1) / (ha.norm(dim=1) * hb.norm(dim=1)))
    assert value.item() > 0
    torch.testing.assert_close(value, hand.mean())
    with pytest.raises(ValueError, match="same shape"):
        cosine_distance(fa, fb[:2])


@pytest.mark.parametrize("size", [16, 48])
def test_gradients_reach_images(semantic_encoder, size):
    semantic_encoder.requires_grad_(False)
    x = images(2, size).requires_grad_(True)
    with torch.no_grad():
        target = semantic_encoder(images(2, size))
    cosine_distance(semantic_encoder(x), target).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in semantic_encoder.parameters())


def test_explicit_image_size_and_bad_arguments(blip_vision):
    assert BlipVisionFeatures(blip_vision, image_size=64)(images(1, 16)).shape == (1, 32)
    with pytest.raises(TypeError, match="BlipVisionModel"):
        BlipVisionFeatures(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="image_size"):
        BlipVisionFeatures(blip_vision, image_size=-1)


def assert_vision_weights_equal(encoder: BlipVisionFeatures, expected: dict) -> None:
    loaded = encoder.vision_model.state_dict()
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k


def test_load_from_full_blip_checkpoint(tmp_path, tiny_blip_config):
    from transformers import BlipForConditionalGeneration

    full = BlipForConditionalGeneration(tiny_blip_config)
    full.save_pretrained(tmp_path / "blip")
    enc = load_blip_vision(tmp_path / "blip", local_files_only=True)
    assert_vision_weights_equal(enc, full.vision_model.state_dict())
    assert enc.input_size == 32 and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())
    assert all(p.dtype == torch.float32 for p in enc.parameters())


def test_load_from_full_blip_checkpoint_via_fallback(tmp_path, tiny_blip_config, monkeypatch):
    """Where the prefix mapping is unavailable, the full BLIP model is loaded and its vision tower kept."""
    from transformers import BlipForConditionalGeneration, BlipVisionModel

    full = BlipForConditionalGeneration(tiny_blip_config)
    full.save_pretrained(tmp_path / "blip")
    original = BlipVisionModel.from_pretrained.__func__

    def without_key_mapping(cls, *args, **kwargs):
        if "key_mapping" in kwargs:
            raise TypeError("unexpected keyword argument 'key_mapping'")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(BlipVisionModel, "from_pretrained", classmethod(without_key_mapping))
    enc = load_blip_vision(str(tmp_path / "blip"), local_files_only=True)
    assert_vision_weights_equal(enc, full.vision_model.state_dict())


def test_load_from_bare_vision_checkpoint(tmp_path, blip_vision):
    blip_vision.save_pretrained(tmp_path / "vision")
    enc = load_blip_vision(str(tmp_path / "vision"), local_files_only=True)
    assert_vision_weights_equal(enc, blip_vision.state_dict())


@pytest.mark.parametrize("name", ["missing", "someone/not-cached-model"])
def test_unavailable_models_raise_with_advice(tmp_path, name):
    name = str(tmp_path / name) if name == "missing" else name
    with pytest.raises(EncoderUnavailableError) as info:
        load_blip_vision(name, local_files_only=True)
    message = str(info.value)
    assert name in message
    assert "huggingface-cli download" in message and "HF_HOME" in message and "weight to 0" in message


def test_directory_without_checkpoint_is_unavailable(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderUnavailableError, match="local directory") as info:
        load_blip_vision(tmp_path / "empty", local_files_only=True)
    assert isinstance(info.value.__cause__, (OSError, ValueError))
