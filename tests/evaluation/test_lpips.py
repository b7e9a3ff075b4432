"""LPIPS from local weights only: the torchvision cache in a temporary TORCH_HOME (never the real ~/.cache), explicit
weight files, offline errors, agreement with torchmetrics' own LPIPS, and the protocol's LPIPS column."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torchvision

import lora_patch_adapters as lpa
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.evaluation import LpipsWeightsError, evaluate_defense, lpips_available
from lora_patch_adapters.evaluation.lpips import find_lpips_weights, load_lpips, lpips_cache_path
from lora_patch_adapters.evaluation.metrics import lpips
from lora_patch_adapters.losses import EncoderUnavailableError

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's file name for AlexNet_Weights.IMAGENET1K_V1


def random_alexnet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like torchvision's alexnet: random ``features`` (He-scaled), and a classifier of zeros
    stored as stride-0 views (a few bytes on disk instead of 230 MB; torchvision's strict loader accepts it)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.alexnet().state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if not key.startswith("features."):
            state[key] = torch.zeros(()).expand(shape)
        elif key.endswith("weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.01
    return state


def install_alexnet(torch_home: Path, seed: int = 0) -> Path:
    """Write random AlexNet weights where torchvision caches the real ones under ``torch_home``."""
    path = torch_home / "hub" / "checkpoints" / ALEXNET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_alexnet_state(seed), path)
    return path


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME for every test of this module: nothing reads or writes the real cache."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would override TORCH_HOME
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home


def _images(n: int = 2, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------------------ the metric


def test_cache_path_is_torchvisions_file_name(torch_home):
    assert lpips_cache_path() == torch_home / "hub" / "checkpoints" / ALEXNET_FILE
    assert lpips_cache_path("vgg").name == "vgg16-397923af.pth"
    with pytest.raises(ValueError, match="alex"):
        lpips_cache_path("resnet")


def test_missing_weights_raise_an_offline_error_naming_the_file(torch_home):
    assert not lpips_available()
    assert find_lpips_weights() is None
    with pytest.raises(LpipsWeightsError) as info:
        lpips(_images(), _images(seed=1))
    message = str(info.value)
    assert str(torch_home / "hub" / "checkpoints" / ALEXNET_FILE) in message
    assert "TORCH_HOME" in message and "weights=" in message and "never downloaded" in message
    assert isinstance(info.value, EncoderUnavailableError) and isinstance(info.value, RuntimeError)
    assert not (torch_home / "hub" / "checkpoints" / ALEXNET_FILE).exists()  # nothing was fetched
    with pytest.raises(LpipsWeightsError, match="nope.pth"):
        lpips(_images(), _images(), weights=torch_home / "nope.pth")


def test_identical_zero_shape_symmetry_and_range(torch_home):
    install_alexnet(torch_home)
    assert lpips_available() and lpips_available(size=(31, 31)) and not lpips_available(size=(30, 64))
    a, b = _images(3, seed=1), _images(3, seed=2)
    same = lpips(a, a)
    assert same.shape == (3,) and same.dtype == torch.float32
    assert torch.equal(same, torch.zeros(3))
    forward, backward = lpips(a, b), lpips(b, a)
    assert forward.shape == (3,) and (forward > 0).all()
    torch.testing.assert_close(forward, backward, atol=1e-6, rtol=1e-5)
    # per sample: the batch does not mix
    torch.testing.assert_close(torch.cat([lpips(a[i : i + 1], b[i : i + 1]) for i in range(3)]), forward)
    # a small change is closer than an unrelated image
    near = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    assert (lpips(a, near) < forward).all()


def test_agrees_with_torchmetrics_own_lpips(torch_home):
    # Independent path: torchvision's loader reads the same cached file into its own alexnet, torchmetrics builds
    # its LPIPS module around it and loads its linear layers itself.
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    install_alexnet(torch_home, seed=4)
    a, b = _images(2, 48, seed=5), _images(2, 48, seed=6)
    reference = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="sum")
    want = torch.stack([reference(a[i : i + 1], b[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(lpips(a, b), want, atol=1e-6, rtol=1e-5)


def test_explicit_weights_file_safetensors_and_pth(torch_home, tmp_path):
    from safetensors.torch import save_file

    state = random_alexnet_state(seed=7)
    features = {k: v.contiguous() for k, v in state.items() if k.startswith("features.")}
    st_path = tmp_path / "alexnet.safetensors"
    save_file(features, str(st_path))
    pth_path = tmp_path / "alexnet.pth"
    torch.save(state, pth_path)
    a, b = _images(seed=8), _images(seed=9)
    assert not lpips_available()  # the cache is empty ...
    assert lpips_available(weights=st_path)  # ... but an explicit file is enough
    from_st = lpips(a, b, weights=st_path)
    torch.testing.assert_close(lpips(a, b, weights=str(pth_path)), from_st)
    install_alexnet(torch_home, seed=7)  # same weights in the cache: same numbers
    torch.testing.assert_close(lpips(a, b), from_st)
    before = lpips_cache_path().stat().st_mtime_ns
    changed = install_alexnet(torch_home, seed=10)  # the file changed: the cached network is rebuilt
    os.utime(changed, ns=(before + 10**9, before + 10**9))  # a distinct time even on coarse-mtime file systems
    assert not torch.allclose(lpips(a, b), from_st)


def test_corrupt_and_foreign_files_give_clear_errors(torch_home, tmp_path):
    cache = lpips_cache_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a checkpoint")
    assert lpips_available()  # present; its content is checked on use
    with pytest.raises(LpipsWeightsError, match=r"Could not read LPIPS backbone weights .*alexnet-owt"):
        lpips(_images(), _images())
    wrong = random_alexnet_state()
    wrong["features.3.weight"] = torch.zeros(10, 64, 5, 5)
    del wrong["features.0.bias"]
    path = tmp_path / "wrong.pth"
    torch.save(wrong, path)
    with pytest.raises(LpipsWeightsError) as info:
        lpips(_images(), _images(), weights=path)
    message = str(info.value)
    assert "not a state dict of torchvision's alexnet" in message
    assert "missing keys: features.0.bias" in message and "features.3.weight (10, 64, 5, 5)" in message
    pickled = tmp_path / "object.pth"
    torch.save({"features.0.weight": torch.zeros(1), "note": Fraction(1, 3)}, pickled)  # not a plain state dict
    with pytest.raises(LpipsWeightsError, match="weights_only|Could not read"):
        lpips(_images(), _images(), weights=pickled)
    with pytest.raises(LpipsWeightsError, match="Unsupported"):
        bad = tmp_path / "weights.npz"
        bad.write_bytes(b"x")
        lpips(_images(), _images(), weights=bad)


def test_network_is_cached_and_frozen(torch_home):
    install_alexnet(torch_home)
    first = load_lpips()
    assert load_lpips("alex") is first
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    assert all(p.dtype == torch.float32 and not p.is_meta for p in first.parameters())


def test_gradients_size_and_argument_checks(torch_home):
    install_alexnet(torch_home)
    target = _images(seed=11)
    x = _images(seed=12).clamp(-0.99, 0.99).requires_grad_(True)
    (grad,) = torch.autograd.grad(lpips(x, target).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert lpips(_images(1, 31), _images(1, 31, seed=1)).shape == (1,)
    with pytest.raises(ValueError, match="at least 31x31"):
        lpips(_images(1, 30), _images(1, 30))
    with pytest.raises(ValueError, match="net must be one of"):
        lpips(target, target, net="resnet")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        lpips(target * 3, target)
    assert lpips(target * 1.5, target, check_range=False).shape == (2,)


# ------------------------------------------------------------------------------------------------ the protocol


@pytest.fixture(scope="module")
def testbed():
    editor = lpa.load_editor("testbed")
    for p in editor.generator.parameters():
        p.requires_grad_(False)
    images, labels = lpa.testbed_faces(1, seed=0, split="test")
    return editor, images, labels


def test_protocol_reports_lpips_only_with_weights(torch_home, testbed):
    editor, images, labels = testbed
    without = evaluate_defense(PGD(steps=1), editor, images, labels)
    assert without.lpips_weights is None
    assert all("lpips" not in without.metrics[group] for group in without.metrics)
    assert "lpips_protected_vs_clean" not in without.perturbation and "lpips" not in without.summary()

    path = install_alexnet(torch_home)
    result = evaluate_defense(PGD(steps=1), editor, images, labels)
    assert result.lpips_weights == str(path.resolve())
    assert result.to_dict()["lpips_weights"] == str(path.resolve())
    for group in result.metrics:
        assert set(result.metrics[group]) == set(without.metrics[group]) | {"lpips"}
        assert {k: v for k, v in result.metrics[group].items() if k != "lpips"} == pytest.approx(
            without.metrics[group], rel=1e-5, abs=1e-7)
    assert result.metrics["patched_clean"]["lpips"] == 0  # identity patch: the clean edit is the reference
    assert 0 < result.metrics["base_protected"]["lpips"] < 1
    assert result.metrics["base_protected"]["lpips"] == result.metrics["patched_protected"]["lpips"]
    assert result.perturbation["lpips_protected_vs_clean"] > 0
    assert "lpips" in result.summary().splitlines()[1]

    off = evaluate_defense(PGD(steps=1), editor, images, labels, lpips=False)
    assert off.lpips_weights is None and "lpips" not in off.metrics["base_protected"]


def test_protocol_lpips_required_or_explicit(torch_home, testbed, tmp_path):
    editor, images, labels = testbed
    with pytest.raises(LpipsWeightsError, match=ALEXNET_FILE):
        evaluate_defense(PGD(steps=1), editor, images, labels, lpips=True)
    with pytest.raises(LpipsWeightsError, match="missing.pth"):  # an explicit file must exist
        evaluate_defense(PGD(steps=1), editor, images, labels, lpips_weights=tmp_path / "missing.pth")
    path = tmp_path / "mine.pth"
    torch.save(random_alexnet_state(seed=2), path)
    result = evaluate_defense(PGD(steps=1), editor, images, labels, lpips_weights=path)
    assert result.lpips_weights == str(path.resolve()) and result.metrics["base_protected"]["lpips"] > 0
    # images below LPIPS' minimum size: skipped by default, an error when required
    small = images[..., :24, :24]
    assert evaluate_defense(PGD(steps=1), editor, small, labels, lpips_weights=path).lpips_weights is None
    with pytest.raises(ValueError, match="at least 31x31"):
        evaluate_defense(PGD(steps=1), editor, small, labels, lpips=True, lpips_weights=path)
