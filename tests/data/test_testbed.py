"""The procedural testbed faces: determinism, splits, paired ground truth, locality of each attribute."""

from __future__ import annotations

import pytest
import torch

from lora_patch_adapters import data
from lora_patch_adapters.data import TESTBED_ATTRIBUTES, render_faces, sample_faces
from lora_patch_adapters.generators import stargan_conditions


def test_shapes_ranges_and_labels():
    images, labels = data.testbed_faces(12, seed=3, size=64, split="train")
    assert images.shape == (12, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.2
    assert labels.shape == (12, len(TESTBED_ATTRIBUTES))
    assert torch.all(labels[:, :3].sum(1) == 1)  # exactly one hair colour
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    big, _ = data.testbed_faces(2, seed=3, size=128, split="train")
    assert big.shape == (2, 3, 128, 128)
    # the 128 px rendering is the same picture as the 64 px one
    down = torch.nn.functional.avg_pool2d(big, 2)
    assert (down - images[:2]).abs().mean() < 0.03


def test_deterministic_and_prefix_stable():
    a, la = data.testbed_faces(8, seed=5)
    b, lb = data.testbed_faces(8, seed=5)
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, lc = data.testbed_faces(20, seed=5)
    assert torch.equal(c[:8], a) and torch.equal(lc[:8], la)
    d, _ = data.testbed_faces(8, seed=6)
    assert not torch.allclose(a, d)


def test_train_and_test_never_share_faces():
    train_id, _ = sample_faces(400, seed=0, split="train")
    test_id, _ = sample_faces(400, seed=0, split="test")
    train_keys = set(zip(train_id.center_x.tolist(), train_id.face_w.tolist()))
    test_keys = set(zip(test_id.center_x.tolist(), test_id.face_w.tolist()))
    assert not train_keys & test_keys
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.testbed_faces(2, split="validation")


def _changed_fraction(a, b):
    return ((a - b).abs().amax(1) > 0.05).float().mean().item()


def test_each_attribute_changes_its_own_region():
    identity, labels = sample_faces(16, seed=1, split="test")
    labels[:, :3] = torch.tensor([1.0, 0, 0])  # everyone black-haired, no glasses, not smiling
    labels[:, 3:] = 0
    base = render_faces(identity, labels)
    size = base.shape[-1]
    rows = torch.arange(size)[:, None].expand(size, size)
    for index, name in enumerate(TESTBED_ATTRIBUTES):
        if index == 0:
            continue
        target = labels.clone()
        if index < 3:
            target[:, :3] = 0
        target[:, index] = 1
        edited = render_faces(identity, target)
        diff = (edited - base).abs().amax(1) > 0.05  # [N, H, W]
        frac = diff.float().mean().item()
        assert 0.005 < frac < 0.4, (name, frac)  # a visible but local change
        mean_row = (rows[None] * diff).sum() / diff.sum()
        if name == "Smiling":
            assert mean_row > size * 0.55, name  # the mouth is in the lower half
        elif name == "Eyeglasses":
            assert size * 0.3 < mean_row < size * 0.6, name  # around the eyes
        else:
            assert mean_row < size * 0.55, name  # hair is mostly in the upper part
        # the background corners never change
        assert not diff[:, :3, :3].any() and not diff[:, :3, -3:].any()


def test_edits_are_the_same_faces_under_the_target_labels():
    images, labels = data.testbed_faces(6, seed=2, split="test")
    targets = stargan_conditions(labels, TESTBED_ATTRIBUTES)
    truths = data.testbed_edits(6, targets, seed=2, split="test")
    assert len(truths) == 5
    for target, truth in zip(targets, truths):
        same = (target == labels).all(1)
        assert torch.equal(truth[same], images[same])  # a no-op target renders the input exactly
        if (~same).any():
            assert not torch.allclose(truth[~same], images[~same])


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive integer"):
        data.testbed_faces(0)
    with pytest.raises(ValueError, match="non-negative integer"):
        data.testbed_faces(2, seed=-1)
    identity, _ = sample_faces(2)
    with pytest.raises(ValueError, match=r"labels must be \[2, 5\]"):
        render_faces(identity, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="size must be an integer >= 16"):
        render_faces(identity, torch.zeros(2, 5), size=8)


def test_a_request_too_large_to_render_is_refused_before_allocating(monkeypatch):
    import lora_patch_adapters.data.testbed as testbed

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the size check")

    monkeypatch.setattr(testbed, "sample_faces", no_sampling)
    with pytest.raises(ValueError, match=r"10000000 testbed faces of 64x64 px would take 457\.8 GiB; draw at most "
                                         r"87381 per call"):
        testbed.testbed_faces(10_000_000)
    with pytest.raises(ValueError, match="draw at most"):
        testbed.testbed_edits(10_000_000, [])
