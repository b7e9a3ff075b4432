"""StarGAN generator: official state-dict layout and forward contract."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import lora_patch_adapters as lpa
from lora_patch_adapters.generators import (
    CheckpointError,
    StarGANEditor,
    StarGANGenerator,
    load_editor,
    stargan_conditions,
)

MANIFEST = json.loads((Path(__file__).parents[1] / "fixtures" / "stargan_manifest.json").read_text())


def test_state_dict_matches_the_official_release_exactly():
    generator = StarGANGenerator(**MANIFEST["constructor"]["args"])
    state = generator.state_dict()
    assert list(state) == list(MANIFEST["state_dict"])
    for key, shape in MANIFEST["state_dict"].items():
        assert list(state[key].shape) == shape, key
    assert sum(p.numel() for p in generator.parameters()) == MANIFEST["num_params"]
    kinds = [type(m) for m in generator.modules()]
    assert kinds.count(nn.Conv2d) == MANIFEST["conv2d_count"]
    assert kinds.count(nn.ConvTranspose2d) == MANIFEST["convtranspose2d_count"]


def test_forward_shape_range_and_condition_dependence():
    generator = StarGANGenerator(conv_dim=8, repeat_num=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c0 = torch.zeros(2, 5)
    c1 = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    with torch.no_grad():
        y0, y1 = generator(x, c0), generator(x, c1)
    assert y0.shape == x.shape and y0.abs().max() <= 1
    assert not torch.allclose(y0, y1)


def test_bad_condition_shape_is_explained():
    generator = StarGANGenerator(conv_dim=8, repeat_num=1)
    with pytest.raises(ValueError, match=r"condition must be \[N, 5\] for N=2 images, got \(2, 4\)"):
        generator(torch.zeros(2, 3, 32, 32), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------- editor and loading


def _official_file(tmp_path, with_counters=True):
    """A checkpoint in the official format: torch.save(G.state_dict(), '200000-G.ckpt'), random weights."""
    state = StarGANGenerator().state_dict()
    if not with_counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "200000-G.ckpt"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("with_counters", [True, False])
def test_official_checkpoint_loads_strict(tmp_path, with_counters):
    path, state = _official_file(tmp_path, with_counters)
    editor = load_editor("stargan", checkpoint=path)
    loaded = editor.generator.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        y = editor.edit(x, torch.tensor([[0.0, 1, 0, 1, 0]]))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_wrong_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_editor("stargan", checkpoint=tmp_path / "missing.ckpt")
    path, _ = _official_file(tmp_path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_editor("stargan", checkpoint=truncated)
    small = tmp_path / "small.ckpt"
    torch.save(StarGANGenerator(conv_dim=8).state_dict(), small)
    with pytest.raises(CheckpointError, match=r"does not fit StarGAN.*shape mismatches"):
        load_editor("stargan", checkpoint=small)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"G": StarGANGenerator().state_dict()}, wrapped)
    with pytest.raises(CheckpointError, match=r"StarGAN state dict \(under 'G' it holds a checkpoint of 'stargan'"):
        load_editor("stargan", checkpoint=wrapped)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"main.0.weight": torch.zeros(1), "payload": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_editor("stargan", checkpoint=path)


class _NotATensor:
    pass


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="random weights"):
        editor = load_editor("stargan")
    assert isinstance(editor, StarGANEditor) and isinstance(editor.generator, StarGANGenerator)


def test_conditions_follow_the_official_convention():
    labels = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 1, 0, 1]])
    targets = stargan_conditions(labels)
    assert len(targets) == 5
    expected = [
        [[1, 0, 0, 1, 0], [1, 0, 0, 0, 1]],  # black hair
        [[0, 1, 0, 1, 0], [0, 1, 0, 0, 1]],  # blond
        [[0, 0, 1, 1, 0], [0, 0, 1, 0, 1]],  # brown
        [[1, 0, 0, 0, 0], [0, 0, 1, 1, 1]],  # male flipped
        [[1, 0, 0, 1, 1], [0, 0, 1, 0, 0]],  # young flipped
    ]
    for target, want in zip(targets, expected):
        assert target.tolist() == want
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        stargan_conditions(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="0/1"):
        stargan_conditions(torch.full((1, 5), -1.0))


def test_editor_runs_train_mode_by_default_and_it_matters():
    generator = StarGANGenerator(conv_dim=8, repeat_num=1)
    with torch.no_grad():  # give the running statistics values far from per-image ones
        for m in generator.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.running_mean.fill_(0.5)
                m.running_var.fill_(4.0)
    editor = StarGANEditor(generator)
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    generator.eval()  # e.g. after peft's from_pretrained
    with torch.no_grad():
        y_train = editor.edit(x, c)
        assert generator.training
        editor.generator_mode = "eval"
        y_eval = editor.edit(x, c)
        assert not generator.training
    assert (y_train - y_eval).abs().max() > 1e-2


def test_patch_attaches_to_the_editor():
    generator = StarGANGenerator(conv_dim=8, repeat_num=1)
    state = copy.deepcopy(generator.state_dict())
    editor = StarGANEditor(generator)
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    with torch.no_grad():
        before = editor.edit(x, c)
        lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig())  # B = 0: output unchanged
        assert torch.equal(editor.edit(x, c), before)
        other = StarGANGenerator(conv_dim=8, repeat_num=1)
        other.load_state_dict(state)
        lpa.get_peft_model(other, lpa.LoraPatchConfig(init_weights="kaiming"))
        assert not torch.allclose(StarGANEditor(other).edit(x, c), before, atol=1e-3)


def test_bad_inputs_are_explained():
    editor = StarGANEditor(StarGANGenerator(conv_dim=8, repeat_num=1))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        editor.edit(torch.zeros(3, 32, 32), torch.zeros(1, 5))
    with pytest.raises(TypeError, match="floating point"):
        editor.edit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"target labels \[N=1, 5\]"):
        editor.edit(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="Unknown editor 'stylegan'"):
        load_editor("stylegan")
