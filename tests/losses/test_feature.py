"""Feature term encoder: pooled ResNet features, in-graph preprocessing, and ``load_resnet50``."""

from __future__ import annotations

import copy
import os
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lora_patch_adapters.losses import EncoderUnavailableError, ResNetFeatures, load_resnet50, resnet50_cache_path
from tests.helpers import images

V1_FILE = "resnet50-0676ba61.pth"  # the file name of torchvision's ResNet50_Weights.IMAGENET1K_V1


def hand_preprocess(x: torch.Tensor, size: int) -> torch.Tensor:
    x = (x + 1) / 2
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def hand_pooled(resnet: nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's own ResNet.forward with the head removed."""
    headless = copy.deepcopy(resnet)
    headless.fc = nn.Identity()
    return headless(hand_preprocess(x, size))


@pytest.mark.parametrize("size", [32, 16, 48])
def test_pooled_features_match_torchvision_forward(tiny_resnet, size):
    enc = ResNetFeatures(tiny_resnet, input_size=32)
    x = images(2, size)
    feats = enc(x)
    assert feats.shape == (2, 32)
    torch.testing.assert_close(feats, hand_pooled(tiny_resnet, x, 32))


@pytest.mark.parametrize("size", [16, 48])
def test_gradients_reach_images_through_resize(feature_encoder, size):
    feature_encoder.requires_grad_(False)
    x = images(2, size).requires_grad_(True)
    feature_encoder(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in feature_encoder.parameters())


def test_generic_backbones():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = images(2, 8)
    spatial = ResNetFeatures(conv, input_size=8)
    torch.testing.assert_close(spatial(x), conv(hand_preprocess(x, 8)).mean(dim=(2, 3)))
    flat = ResNetFeatures(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), input_size=8)
    assert flat(x).shape == (2, 4)
    with pytest.raises(ValueError, match=r"\[N, C\] or \[N, C, h, w\]"):
        ResNetFeatures(nn.Flatten(2), input_size=8)(x)


def test_bad_construction_arguments(tiny_resnet):
    with pytest.raises(ValueError, match="input_size"):
        ResNetFeatures(tiny_resnet, input_size=0)
    with pytest.raises(TypeError, match="backbone"):
        ResNetFeatures(lambda x: x)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        ResNetFeatures(tiny_resnet, input_size=32)(torch.rand(2, 1, 32, 32))


def test_normalisation_buffers_stay_out_of_state_dict(feature_encoder):
    assert not any(k in ("mean", "std") for k in feature_encoder.state_dict())
    assert feature_encoder.to(torch.float64).mean.dtype == torch.float64


# ---------------------------------------------------------------------------------------------------- load_resnet50


@pytest.fixture(scope="module")
def resnet50_state() -> dict:
    """A state dict for torchvision's resnet50 (~100 MB) with random values, built once for this module (random
    tensors of the right shapes: much faster than initialising the model)."""
    from torchvision.models import resnet50

    with torch.device("meta"):
        shapes = resnet50(weights=None).state_dict()
    gen = torch.Generator().manual_seed(1)
    return {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
        for k, v in shapes.items()
    }


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """TORCH_HOME pointing at an empty folder (and no torch.hub.set_dir override); restored afterwards."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("TORCH_HUB", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert torch.hub.get_dir() == os.path.join(str(home), "hub")
    return home


def assert_same_weights(encoder: ResNetFeatures, state: dict) -> None:
    loaded = encoder.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k


def test_load_resnet50_from_safetensors_pth_and_cache(resnet50_state, tmp_path, empty_torch_home):
    path = tmp_path / "r50.safetensors"
    save_file(resnet50_state, str(path))
    enc = load_resnet50(path)
    assert_same_weights(enc, resnet50_state)
    assert isinstance(enc.backbone.fc, nn.Identity) and enc.input_size == 224
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert not any(t.is_meta for t in enc.state_dict().values())
    assert enc.backbone.layer4[-1].conv3.out_channels == 2048  # 2048-d pooled features
    del enc

    path = tmp_path / "r50.pth"
    torch.save(resnet50_state, path)
    assert_same_weights(load_resnet50(str(path)), resnet50_state)

    # a torchvision name resolves to torchvision's cache file (found there: no download)
    from torchvision.models import ResNet50_Weights

    cache = empty_torch_home / "hub" / "checkpoints" / V1_FILE
    assert resnet50_cache_path(ResNet50_Weights.IMAGENET1K_V1) == cache
    cache.parent.mkdir(parents=True)
    os.replace(path, cache)
    assert_same_weights(load_resnet50("IMAGENET1K_V1", download=False), resnet50_state)


def test_load_resnet50_wrong_keys_and_shapes(resnet50_state, tmp_path):
    bad = dict(resnet50_state)
    bad["layer1.0.convX.weight"] = bad.pop("layer1.0.conv1.weight")
    bad["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError, match="layer1.0.conv1.weight") as info:
        load_resnet50(path)
    message = str(info.value)
    assert "missing keys" in message and "unexpected keys: layer1.0.convX.weight" in message
    assert "wrong shapes: conv1.weight" in message and str(path) in message


class NotATensor:
    pass


def test_load_resnet50_never_unpickles(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": NotATensor()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_resnet50(path)


def test_load_resnet50_not_cached_without_download(empty_torch_home):
    with pytest.raises(EncoderUnavailableError) as info:
        load_resnet50("IMAGENET1K_V1", download=False)
    message = str(info.value)
    assert str(empty_torch_home / "hub" / "checkpoints" / V1_FILE) in message
    assert "https://download.pytorch.org/models/" + V1_FILE in message
    assert "TORCH_HOME" in message and "--resnet-weights PATH" in message
    assert isinstance(info.value, RuntimeError)


def test_load_resnet50_download_failure_is_wrapped(empty_torch_home, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(EncoderUnavailableError, match="Could not download") as info:
        load_resnet50("IMAGENET1K_V2", download=True, progress=False)
    assert isinstance(info.value.__cause__, URLError)
    assert "resnet50-11ad3fa6.pth" in str(info.value)


def test_load_resnet50_unreadable_cache_file(empty_torch_home):
    cache = empty_torch_home / "hub" / "checkpoints" / V1_FILE
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderUnavailableError, match="delete that file and retry"):
        load_resnet50("IMAGENET1K_V1", download=False)


def test_load_resnet50_bad_arguments(tmp_path):
    with pytest.raises(EncoderUnavailableError, match="neither an existing file nor one of"):
        load_resnet50(tmp_path / "missing.safetensors")
    with pytest.raises(EncoderUnavailableError, match="IMAGENET1K_V1"):
        load_resnet50("IMAGENET_V9")
    with pytest.raises(TypeError, match="weights must be"):
        load_resnet50(50)
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="Unsupported weight file"):
        load_resnet50(tmp_path / "weights.npz")


def test_load_resnet50_random_init_warns(monkeypatch, tiny_resnet):
    from lora_patch_adapters.losses import feature

    monkeypatch.setattr(feature, "resnet50", lambda weights: tiny_resnet)  # skip initialising a real resnet50
    with pytest.warns(UserWarning, match="randomly initialised"):
        enc = load_resnet50(None)
    assert isinstance(enc, ResNetFeatures) and enc.backbone is tiny_resnet
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
