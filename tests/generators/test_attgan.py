"""AttGAN: official state-dict layout (both released variants), checkpoint loading, the official test-time
conditions, eval-mode editing and patch attachment."""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import lora_patch_adapters as lpa
from lora_patch_adapters.generators.attgan import (
    ATTGAN_ATTRIBUTES,
    AttGANEditor,
    AttGANGenerator,
    attgan_conditions,
    build_editor,
    conflicting_attributes,
)
from lora_patch_adapters.generators.checkpoints import CheckpointError, identify_layout
from lora_patch_adapters.tuner.layer import GatedLoraLayer

DATA = Path(__file__).parents[1] / "fixtures"
MANIFESTS = {
    0: json.loads((DATA / "attgan_manifest.json").read_text()),
    1: json.loads((DATA / "attgan_inject1_manifest.json").read_text()),
}
SMALL = dict(enc_dim=8, dec_dim=8, img_size=64)
IDX = {name: i for i, name in enumerate(ATTGAN_ATTRIBUTES)}


def _labels(*present: str) -> torch.Tensor:
    row = torch.zeros(1, len(ATTGAN_ATTRIBUTES))
    for name in present:
        row[0, IDX[name]] = 1
    return row


def _randomise(generator: AttGANGenerator, seed: int) -> AttGANGenerator:
    """Non-default BatchNorm affine parameters and running statistics (so eval mode visibly matters)."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(c, generator=rng))
                module.bias.copy_(0.1 * torch.randn(c, generator=rng))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=rng))
                module.running_var.copy_(0.5 + torch.rand(c, generator=rng))
                module.num_batches_tracked.fill_(1234)
    return generator


def _images(n: int = 1, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size) * 2 - 1


def _small_editor(**kwargs) -> AttGANEditor:
    return AttGANEditor(_randomise(AttGANGenerator(**SMALL, **kwargs), seed=1))


# ---------------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("inject", [0, 1])
def test_state_dict_keys_order_shapes_and_counts_match_the_official_release(inject):
    manifest = MANIFESTS[inject]
    with torch.device("meta"):
        generator = AttGANGenerator(**manifest["constructor"]["args"])
    state = generator.state_dict()
    assert list(state) == list(manifest["state_dict"])
    for key, shape in manifest["state_dict"].items():
        assert list(state[key].shape) == shape, key
    assert len(state) == manifest["num_state_dict_tensors"]
    assert sum(p.numel() for p in generator.parameters()) == manifest["num_params"]
    kinds = Counter(type(m) for m in generator.modules())
    assert kinds[nn.Conv2d] == manifest["conv2d_count"]
    assert kinds[nn.ConvTranspose2d] == manifest["convtranspose2d_count"]
    assert kinds[nn.Linear] == manifest["linear_count"]
    for qualified, count in manifest["other_module_counts"].items():
        assert kinds[getattr(nn, qualified.rsplit(".", 1)[1])] == count, qualified


def test_defaults_are_the_released_inject0_model_and_both_layouts_are_registered():
    with torch.device("meta"):
        default, inject1 = AttGANGenerator(), AttGANGenerator(inject_layers=1)
    assert list(default.state_dict()) == list(MANIFESTS[0]["state_dict"])
    assert identify_layout(default.state_dict()) == "attgan"
    assert identify_layout(inject1.state_dict()) == "attgan_inject1"


# ----------------------------------------------------------------------------------------- official files
@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """Random weights in the official formats: inject0 as AttGAN.save() writes it, inject1 as saveG() writes it, and
    inject0 as a plain DataParallel state dict without num_batches_tracked buffers."""
    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    g0 = _randomise(AttGANGenerator(), seed=10).state_dict()
    g1 = _randomise(AttGANGenerator(inject_layers=1), seed=11).state_dict()
    paths = {name: folder / f"{name}.pth" for name in ("inject0", "inject1", "plain")}
    discriminator = {"conv.0.layers.0.weight": torch.randn(64, 3, 4, 4), "fc_adv.1.layers.0.bias": torch.randn(1)}
    adam = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "eps": 1e-8, "params": [0, 1]}]}
    torch.save({"G": g0, "D": discriminator, "optim_G": adam, "optim_D": adam}, paths["inject0"])
    torch.save({"G": g1}, paths["inject1"])
    torch.save({f"module.{k}": v for k, v in g0.items() if not k.endswith("num_batches_tracked")}, paths["plain"])
    return paths, g0, g1


def _assert_weights_equal(module: nn.Module, state: dict, skip_counters: bool = False) -> None:
    own = module.state_dict()
    assert list(own) == list(state) or skip_counters
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_official_training_checkpoint_loads_strictly_and_edits(official_files):
    paths, g0, _ = official_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a given checkpoint must not trigger the random-weights warning
        editor = build_editor(paths["inject0"], device="cpu")
    assert isinstance(editor, AttGANEditor) and editor.name == "attgan"
    assert isinstance(editor.generator, AttGANGenerator) and editor.generator.inject_layers == 0
    _assert_weights_equal(editor.generator, g0)
    assert not editor.generator.training
    labels = _labels("Black_Hair", "Male", "No_Beard", "Young")
    condition = editor.conditions(labels)[IDX["Blond_Hair"]]
    with torch.no_grad():
        out = editor.edit(_images(1, 256), condition)
    assert out.shape == (1, 3, 256, 256)
    assert torch.isfinite(out).all() and out.abs().max() <= 1
    assert out.std() > 0


def test_generator_only_file_loads_into_the_inject1_network(official_files):
    paths, _, g1 = official_files
    editor = build_editor(paths["inject1"], inject_layers=1)
    assert editor.name == "attgan_inject1"
    _assert_weights_equal(editor.generator, g1)
    assert editor.generator.state_dict()["dec_layers.1.layers.0.weight"].shape == (1549, 512, 4, 4)


def test_plain_state_dict_without_num_batches_tracked_loads(official_files):
    paths, g0, _ = official_files
    raw = torch.load(paths["plain"], weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in raw) and all(k.startswith("module.") for k in raw)
    editor = build_editor(paths["plain"])
    expected = {k: v for k, v in g0.items() if not k.endswith("num_batches_tracked")}
    _assert_weights_equal(editor.generator, expected, skip_counters=True)
    assert any(k.endswith("num_batches_tracked") for k in editor.generator.state_dict())


def test_inject0_file_into_inject1_network_names_both_models(official_files):
    paths, _, _ = official_files
    with pytest.raises(CheckpointError) as info:
        build_editor(paths["inject0"], inject_layers=1)
    message = str(info.value)
    assert "attgan_inject1" in message  # the model that was asked for
    assert re.search(r"attgan(?!_inject1)", message)  # the file's actual model, found through the layout registry


def test_inject1_file_into_inject0_network_names_both_models(official_files):
    paths, _, _ = official_files
    with pytest.raises(CheckpointError) as info:
        build_editor(paths["inject1"], inject_layers=0)
    message = str(info.value)
    assert re.search(r"attgan(?!_inject1)", message)
    assert "attgan_inject1" in message


def test_truncated_missing_and_foreign_files_give_checkpoint_errors(official_files, tmp_path):
    paths, _, _ = official_files
    truncated = tmp_path / "truncated.pth"
    with open(paths["inject1"], "rb") as source:
        truncated.write_bytes(source.read(1 << 16))
    with pytest.raises(CheckpointError, match="truncated.pth"):
        build_editor(truncated, inject_layers=1)
    with pytest.raises(CheckpointError, match="not found"):
        build_editor(tmp_path / "absent.pth")
    hisd_like = tmp_path / "hisd.pt"
    torch.save({"gen": {"w": torch.zeros(2)}, "gen_test": {"w": torch.zeros(2)}}, hisd_like)
    with pytest.raises(CheckpointError, match="attgan"):
        build_editor(hisd_like)
    bad_g = tmp_path / "bad_g.pth"
    torch.save({"G": torch.zeros(3)}, bad_g)
    with pytest.raises(CheckpointError, match="'G'"):
        build_editor(bad_g)


def test_without_checkpoint_warns_about_random_weights():
    with pytest.warns(UserWarning, match="random weights"):
        editor = build_editor(None)
    assert editor.name == "attgan" and not editor.generator.training


# ---------------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("inject", [0, 1])
def test_decoder_concatenates_condition_shortcut_and_injection(inject):
    generator = _randomise(AttGANGenerator(**SMALL, inject_layers=inject), seed=2).eval()
    x = _images(2)
    a = attgan_conditions(torch.tensor([_labels("Bangs")[0].tolist(), _labels("Male")[0].tolist()]))[IDX["Young"]]
    inputs = {}
    hooks = [
        generator.dec_layers[k].register_forward_pre_hook(lambda m, args, k=k: inputs.__setitem__(k, args[0]))
        for k in (0, 1)
    ]
    with torch.no_grad():
        zs = generator(x, mode="enc")
        out = generator(x, a)
    for hook in hooks:
        hook.remove()
    assert [tuple(z.shape) for z in zs] == [(2, 8 * 2**i, 32 // 2**i, 32 // 2**i) for i in range(5)]
    assert out.shape == x.shape and out.abs().max() <= 1
    # Bottleneck input: encoder bottleneck (128 ch, 2x2) then a tiled.
    first = inputs[0]
    assert first.shape == (2, 128 + 13, 2, 2)
    assert torch.equal(first[:, :128], zs[-1])
    assert torch.equal(first[:, 128:], a[:, :, None, None].expand(-1, -1, 2, 2))
    # After dec_layers.0: 128-ch decoder output, the 64-ch encoder feature at 4x4 (shortcut), then a again if inject.
    second = inputs[1]
    assert second.shape == (2, 128 + 64 + 13 * inject, 4, 4)
    assert torch.equal(second[:, 128:192], zs[-2])
    if inject:
        assert torch.equal(second[:, 192:], a[:, :, None, None].expand(-1, -1, 4, 4))
    with torch.no_grad():
        assert torch.equal(generator(zs, a, mode="dec"), out)
        assert torch.equal(generator.decode(generator.encode(x), a), out)
        assert not torch.allclose(generator(x, -a), out)


def test_other_norms_and_activations_build_and_run():
    generator = AttGANGenerator(**SMALL, enc_norm_fn="instancenorm", dec_norm_fn="none", dec_acti_fn="lrelu")
    assert generator.enc_layers[0].layers[0].bias is None  # conv followed by a norm layer: no bias
    assert generator.dec_layers[0].layers[0].bias is not None
    assert isinstance(generator.dec_layers[0].layers[1], nn.LeakyReLU)
    with torch.no_grad():
        assert generator(_images(1), torch.zeros(1, 13)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="enc_norm_fn must be one of"):
        AttGANGenerator(**SMALL, enc_norm_fn="layernorm")
    with pytest.raises(ValueError, match="multiple of 2\\*\\*enc_layers = 32"):
        AttGANGenerator(enc_dim=8, dec_dim=8, img_size=48)
    with pytest.raises(ValueError, match="dec_layers"):
        AttGANGenerator(**SMALL, dec_layers=4)


def test_bad_inputs_are_explained():
    generator = AttGANGenerator(**SMALL).eval()
    with pytest.raises(ValueError, match=r"expects images shaped \[N, 3, 64, 64\], got \(1, 3, 32, 32\)"):
        generator(_images(1, 32), torch.zeros(1, 13))
    with pytest.raises(ValueError, match=r"condition must be \[N, 13\] for N=2 images, got \(2, 5\)"):
        generator(_images(2), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"condition must be \[N, 13\] for N=2 images, got \(1, 13\)"):
        generator(_images(2), torch.zeros(1, 13))
    with pytest.raises(ValueError, match="needs a target attribute vector"):
        generator(_images(1))
    with pytest.raises(ValueError, match="mode must be"):
        generator(_images(1), torch.zeros(1, 13), mode="decode")
    with pytest.raises(ValueError, match="list of 5 encoder features"):
        generator.decode(generator.encode(_images(1))[:4], torch.zeros(1, 13))


# ------------------------------------------------------------------------------------------------- conditions
def test_every_condition_flips_one_attribute_and_scales_exactly_that_one():
    labels = (torch.rand(6, 13) > 0.5).float()
    conditions = attgan_conditions(labels)
    assert len(conditions) == 13
    for i, condition in enumerate(conditions):
        assert condition.shape == (6, 13) and condition.dtype == torch.float32
        assert torch.equal(condition[:, i], (1 - labels[:, i]) * 2 - 1)  # flipped, ±1.0 (test_int / thres_int)
        others = torch.cat([condition[:, :i], condition[:, i + 1 :]], dim=1)
        assert torch.all(others.abs() == 0.5)


def test_blond_edit_of_a_black_haired_sample_turns_black_hair_off():
    condition = attgan_conditions(_labels("Black_Hair", "Male", "No_Beard", "Young"))[IDX["Blond_Hair"]]
    #                          Bald  Bangs Black Blond Brown Bushy Glass Male Mouth Must NoBrd Pale Young
    expected = torch.tensor([[-0.5, -0.5, -0.5, 1.0, -0.5, -0.5, -0.5, 0.5, -0.5, -0.5, 0.5, -0.5, 0.5]])
    assert torch.equal(condition, expected)


def test_switching_an_attribute_off_resolves_nothing():
    condition = attgan_conditions(_labels("Black_Hair", "Bangs"))[IDX["Black_Hair"]]
    expected = torch.full((1, 13), -0.5)
    expected[0, IDX["Black_Hair"]] = -1.0
    expected[0, IDX["Bangs"]] = 0.5
    assert torch.equal(condition, expected)


def test_bald_and_bangs_exclude_each_other():
    bald = attgan_conditions(_labels("Bangs", "Male"))[IDX["Bald"]]
    assert bald[0, IDX["Bald"]] == 1.0 and bald[0, IDX["Bangs"]] == -0.5 and bald[0, IDX["Male"]] == 0.5
    bangs = attgan_conditions(_labels("Bald", "Eyeglasses"))[IDX["Bangs"]]
    assert bangs[0, IDX["Bangs"]] == 1.0 and bangs[0, IDX["Bald"]] == -0.5 and bangs[0, IDX["Eyeglasses"]] == 0.5


def test_mustache_turns_no_beard_off_and_vice_versa():
    mustache = attgan_conditions(_labels("No_Beard"))[IDX["Mustache"]]
    assert mustache[0, IDX["Mustache"]] == 1.0 and mustache[0, IDX["No_Beard"]] == -0.5
    no_beard = attgan_conditions(_labels("Mustache"))[IDX["No_Beard"]]
    assert no_beard[0, IDX["No_Beard"]] == 1.0 and no_beard[0, IDX["Mustache"]] == -0.5


def test_conflicts_are_resolved_per_sample():
    labels = torch.cat([_labels("Black_Hair"), _labels("Black_Hair", "Blond_Hair")])
    condition = attgan_conditions(labels)[IDX["Blond_Hair"]]
    assert condition[0, IDX["Blond_Hair"]] == 1.0 and condition[0, IDX["Black_Hair"]] == -0.5
    assert condition[1, IDX["Blond_Hair"]] == -1.0 and condition[1, IDX["Black_Hair"]] == 0.5


def test_intensities_and_attribute_subsets():
    condition = attgan_conditions(_labels("Young"), thres_int=0.25, test_int=1.5)[IDX["Male"]]
    assert condition[0, IDX["Male"]] == 1.5 and condition[0, IDX["Young"]] == 0.25 and condition[0, 0] == -0.25
    # Only the names in use take part in the rules: Gray_Hair counts here, Bald (absent) is skipped.
    names = ("Bangs", "Black_Hair", "Gray_Hair")
    gray = attgan_conditions(torch.tensor([[1.0, 1.0, 0.0]]), attribute_names=names)[2]
    assert gray.tolist() == [[0.5, -0.5, 1.0]]
    assert set(conflicting_attributes("Bangs")) == {"Bald", "Receding_Hairline"}
    assert set(conflicting_attributes("Brown_Hair")) == {"Black_Hair", "Blond_Hair", "Gray_Hair"}
    assert conflicting_attributes("Young") == ()


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match=r"\[N, 13\]"):
        attgan_conditions(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="0/1"):
        attgan_conditions(-torch.ones(1, 13))
    with pytest.raises(ValueError, match="thres_int"):
        attgan_conditions(torch.zeros(1, 13), thres_int=0)


# ----------------------------------------------------------------------------------------------------- editor
def test_editor_contract():
    editor = _small_editor()
    assert editor.name == "attgan" and editor.generator_mode == "eval"
    assert editor.attribute_names == ATTGAN_ATTRIBUTES and len(ATTGAN_ATTRIBUTES) == 13
    assert ATTGAN_ATTRIBUTES == tuple(re.findall(r"'(\w+)'", MANIFESTS[0]["input"]["condition"]))
    labels = _labels("Bangs", "Young")
    for ours, reference in zip(editor.conditions(labels), attgan_conditions(labels), strict=True):
        assert torch.equal(ours, reference)
    assert _small_editor(inject_layers=1).name == "attgan_inject1"
    with pytest.raises(ValueError, match="13 attributes but 5"):
        AttGANEditor(AttGANGenerator(**SMALL), attribute_names=ATTGAN_ATTRIBUTES[:5])


def test_editor_runs_in_eval_mode_even_after_train():
    editor = _small_editor()
    x, a = _images(2), attgan_conditions(_labels("Male").repeat(2, 1))[IDX["Eyeglasses"]]
    editor.generator.eval()
    with torch.no_grad():
        expected = editor.generator(x, a)
        in_train_mode = copy.deepcopy(editor.generator).train()(x, a)
    assert not torch.allclose(in_train_mode, expected, atol=1e-3)  # batch statistics really differ here
    editor.generator.train()
    with torch.no_grad():
        out = editor.edit(x, a)
    assert not any(m.training for m in editor.generator.modules())
    torch.testing.assert_close(out, expected)


def test_zero_initialised_patch_keeps_the_edit_and_kaiming_patch_changes_it():
    editor = _small_editor()
    unpatched = copy.deepcopy(editor.generator)
    x, a = _images(2), attgan_conditions(_labels("Black_Hair").repeat(2, 1))[IDX["Brown_Hair"]]
    with torch.no_grad():
        before = editor.edit(x, a)
    lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig())
    patched_layers = [m for m in editor.generator.modules() if isinstance(m, GatedLoraLayer)]
    assert len(patched_layers) == 10  # 5 convs + 5 transposed convs, injected in place
    with torch.no_grad():
        after = editor.edit(x, a)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)

    kaiming = AttGANEditor(unpatched)
    lpa.get_peft_model(kaiming.generator, lpa.LoraPatchConfig(init_weights="kaiming"))
    with torch.no_grad():
        changed = kaiming.edit(x, a)
    assert changed.shape == before.shape
    assert (changed - before).abs().max() > 1e-3
