"""HiSD generator and editor: official state-dict layout, checkpoint loading, conditions, semantics, patching."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lora_patch_adapters as lpa
from lora_patch_adapters.generators.base import Editor
from lora_patch_adapters.generators.checkpoints import CheckpointError, identify_layout
from lora_patch_adapters.generators.hisd import (
    HISD_ATTRIBUTE_NAMES,
    HISD_TAGS,
    HiSDCondition,
    HiSDEditor,
    HiSDGenerator,
    InstanceNorm,
    build_editor,
    small_hyperparameters,
)

MANIFEST = json.loads((Path(__file__).parents[1] / "fixtures" / "hisd_manifest.json").read_text())


def small_editor(seed: int = 0, size: int = 32) -> HiSDEditor:
    torch.manual_seed(seed)
    return HiSDEditor(HiSDGenerator(small_hyperparameters(size)))


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size) * 2 - 1


# ------------------------------------------------------------------------------------------------------------ layout
@pytest.fixture(scope="module")
def full_generator() -> HiSDGenerator:
    torch.manual_seed(1)
    return HiSDGenerator()


def test_state_dict_matches_the_official_release_exactly(full_generator):
    state = full_generator.state_dict()
    assert list(state) == list(MANIFEST["state_dict"])  # names and order
    for key, shape in MANIFEST["state_dict"].items():
        assert list(state[key].shape) == shape, key
    assert len(state) == MANIFEST["num_state_dict_tensors"] == 263
    assert all(state[k].dtype == getattr(torch, d) for k, d in MANIFEST["state_dict_dtypes_official"].items())
    assert sum(p.numel() for p in full_generator.parameters()) == MANIFEST["num_params"]
    for name, count in MANIFEST["submodule_params"].items():
        assert sum(p.numel() for p in getattr(full_generator, name).parameters()) == count, name
    assert list(full_generator.buffers()) == []
    kinds = Counter(type(m) for m in full_generator.modules())
    assert kinds[nn.Conv2d] == MANIFEST["conv2d_count"]
    assert kinds[nn.ConvTranspose2d] == MANIFEST["convtranspose2d_count"]
    assert kinds[nn.Linear] == MANIFEST["linear_count"]
    names = Counter(type(m).__name__ for m in full_generator.modules())
    other = MANIFEST["other_module_counts"]
    assert names["InstanceNorm"] == other["networks.InstanceNorm2d"]
    assert names["AdaptiveInstanceNorm"] == other["networks.AdaptiveInstanceNorm2d"]
    assert kinds[nn.LeakyReLU] == other["torch.nn.modules.activation.LeakyReLU"]
    assert kinds[nn.ReLU] == other["torch.nn.modules.activation.ReLU"]
    assert kinds[nn.Sigmoid] == other["torch.nn.modules.activation.Sigmoid"]


def test_the_full_official_config_dict_builds_the_same_network(full_generator):
    hyperparameters = MANIFEST["constructor"]["args"]["hyperparameters"]
    with torch.device("meta"):
        generator = HiSDGenerator(hyperparameters)
    assert {k: v.shape for k, v in generator.state_dict().items()} == {
        k: v.shape for k, v in full_generator.state_dict().items()
    }
    assert generator.tags == HISD_TAGS == tuple(
        (t["name"], tuple(t["attributes"])) for t in MANIFEST["constructor"]["tags"]
    )
    assert (generator.style_dim, generator.noise_dim, generator.num_attributes) == (256, 32, (2, 2, 3))


def test_layout_is_registered_for_identification(full_generator):
    assert identify_layout(full_generator.state_dict()) == "hisd"
    assert identify_layout(HiSDGenerator(small_hyperparameters(32)).state_dict()) is None


def test_inconsistent_hyperparameters_are_explained():
    config = small_hyperparameters(32)
    config["decoder"] = {"channels": [16, 8]}
    with pytest.raises(ValueError, match=r"decoder channels\[0\] \(16\) must equal encoder channels\[-1\] \(32\)"):
        HiSDGenerator(config)


# ------------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def official_file(tmp_path_factory, full_generator):
    """A file in the official format: {'gen': weights, 'gen_test': different (EMA) weights}, random values."""
    gen_test = {k: v.clone() for k, v in full_generator.state_dict().items()}
    # Perturb the norms too, so that loading them is observable.
    for key in gen_test:
        if ".in1." in key or ".in2." in key:
            gen_test[key] = gen_test[key] + 0.1 * torch.randn_like(gen_test[key])
    gen = {k: v + 1.0 for k, v in gen_test.items()}
    path = tmp_path_factory.mktemp("hisd") / "checkpoint_256_celeba-hq.pt"
    torch.save({"gen": gen, "gen_test": gen_test}, path)
    return path, gen_test


def test_official_checkpoint_loads_the_ema_weights_and_edits_at_256(official_file):
    path, gen_test = official_file
    editor = build_editor(path)
    assert isinstance(editor, HiSDEditor) and isinstance(editor, Editor)
    loaded = editor.generator.state_dict()
    assert list(loaded) == list(gen_test)
    assert all(torch.equal(loaded[k], gen_test[k]) for k in gen_test)  # 'gen_test', not 'gen' (which is +1)

    torch.manual_seed(0)
    x = images(1, 256)
    reference = HiSDCondition(tag=1, reference=images(1, 256))
    latent = HiSDCondition(tag=2, attribute=1, z=torch.randn(1, 32))
    with torch.no_grad():
        y = editor.edit(x, [reference, latent])  # one forward: reference-guided, then latent-guided step
    assert y.shape == (1, 3, 256, 256)
    assert torch.isfinite(y).all()
    assert not editor.generator.training


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="random weights"):
        editor = build_editor()
    assert editor.generator.noise_dim == 32


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_file_without_gen_test_is_refused(tmp_path):
    state = HiSDGenerator(small_hyperparameters(32)).state_dict()
    with pytest.raises(CheckpointError, match=r"expected the generator weights under key 'gen_test'.*\['gen'\]"):
        build_editor(_save({"gen": state}, tmp_path / "gen_only.pt"))
    with pytest.raises(CheckpointError, match="'gen_test'.*plain state dict"):
        build_editor(_save(state, tmp_path / "plain.pt"))


def test_truncated_file_is_refused(tmp_path):
    state = HiSDGenerator(small_hyperparameters(32)).state_dict()
    path = _save({"gen": state, "gen_test": state}, tmp_path / "gen_00600000.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        build_editor(path)
    with pytest.raises(CheckpointError, match="not found"):
        build_editor(tmp_path / "missing.pt")


def test_checkpoint_of_another_size_is_refused(tmp_path):
    state = HiSDGenerator(small_hyperparameters(32)).state_dict()
    path = _save({"gen": state, "gen_test": state}, tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match=r"does not fit HiSD \(celeba-hq 256\).*shape mismatches"):
        build_editor(path)


# -------------------------------------------------------------------------------------------------------- conditions
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(tag=0), ValueError, "needs a style source"),
        (dict(tag=0, reference=torch.zeros(1, 3, 32, 32), attribute=0, z=torch.zeros(1, 8)), ValueError, "not both"),
        (dict(tag=0, reference=torch.zeros(1, 3, 32, 32), z=torch.zeros(1, 8)), ValueError, "not both"),
        (dict(tag=-1, reference=torch.zeros(1, 3, 32, 32)), ValueError, "tag must be >= 0"),
        (dict(tag=1.0, reference=torch.zeros(1, 3, 32, 32)), TypeError, "tag must be an int"),
        (dict(tag=True, reference=torch.zeros(1, 3, 32, 32)), TypeError, "tag must be an int"),
        (dict(tag=0, reference=torch.zeros(3, 32, 32)), ValueError, r"reference must be images \[N, 3, H, W\]"),
        (dict(tag=0, reference=torch.zeros(1, 1, 32, 32)), ValueError, r"got \(1, 1, 32, 32\)"),
        (dict(tag=0, reference=torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), TypeError, "floating point"),
        (dict(tag=0, attribute=0), ValueError, "z is missing"),
        (dict(tag=0, z=torch.zeros(1, 8)), ValueError, "attribute is missing"),
        (dict(tag=0, attribute=0, z=torch.zeros(8)), ValueError, r"z must be a float tensor \[N, noise_dim\]"),
        (dict(tag=0, attribute=-1, z=torch.zeros(1, 8)), ValueError, "attribute must be >= 0"),
        (dict(tag=0, attribute=0.5, z=torch.zeros(1, 8)), TypeError, "attribute must be an int"),
        (dict(tag=0, attribute=torch.zeros(2), z=torch.zeros(2, 8)), ValueError, "integer indices"),
        (dict(tag=0, attribute=torch.zeros(3, dtype=torch.long), z=torch.zeros(2, 8)), ValueError, "3 entries"),
    ],
)
def test_condition_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        HiSDCondition(**kwargs)


def test_conditions_that_do_not_fit_the_network_are_explained():
    editor = small_editor()
    x = images(2)
    z = torch.randn(2, 8)
    cases = [
        (HiSDCondition(tag=3, attribute=0, z=z), r"tag 3 is out of range: this network has 3 tags"),
        (HiSDCondition(tag=3, reference=images(2)), "tag 3 is out of range"),
        (HiSDCondition(tag=0, attribute=2, z=z), r"attribute 2 is out of range for tag 0 \(Bangs"),
        (HiSDCondition(tag=0, attribute=0, z=torch.randn(2, 32)), r"z must be \[N, 8\]"),
        (HiSDCondition(tag=0, attribute=0, z=torch.randn(3, 8)), "3 rows for 2 images"),
        (HiSDCondition(tag=0, reference=images(3)), "3 rows for 2 images"),
        (HiSDCondition(tag=2, attribute=torch.tensor([0, 3]), z=z), r"indices for tag 2 must lie in 0..2"),
    ]
    for condition, message in cases:
        with pytest.raises(ValueError, match=message):
            editor.edit(x, condition)
    with pytest.raises(TypeError, match="HiSDCondition"):
        editor.edit(x, {"tag": 0})
    with pytest.raises(ValueError, match="divisible by 4"):
        editor.edit(images(1, 30), HiSDCondition(tag=0, attribute=0, z=torch.randn(1, 8)))


def test_editor_identity():
    editor = small_editor()
    assert editor.name == "hisd"
    assert editor.generator_mode == "eval"
    assert editor.attribute_names == HISD_ATTRIBUTE_NAMES == (
        "Bangs",
        "Eyeglasses",
        "Black_Hair",
        "Blond_Hair",
        "Brown_Hair",
    )


def test_conditions_follow_the_official_latent_protocol_and_are_seeded():
    editor = small_editor()
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]])
    conditions = editor.conditions(labels)
    assert [(c.tag, c.attribute) for c in conditions] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert all(c.reference is None and c.z.shape == (3, 8) and c.guided_by == "latent" for c in conditions)
    again = editor.conditions(labels, seed=0)
    other = editor.conditions(labels, seed=1)
    assert all(torch.equal(a.z, b.z) for a, b in zip(conditions, again))
    assert not any(torch.equal(a.z, b.z) for a, b in zip(conditions, other))
    assert len({tuple(c.z[0].tolist()) for c in conditions}) == 7  # fresh noise per condition
    state = torch.random.get_rng_state()
    editor.conditions(labels, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    with pytest.raises(ValueError, match=r"Labels must be shaped \[N, 5\]"):
        editor.conditions(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="0/1"):
        editor.conditions(torch.full((2, 5), -1.0))
    with torch.no_grad():
        y = editor.edit(images(3), conditions[5])
    assert y.shape == (3, 3, 32, 32) and torch.isfinite(y).all()


# --------------------------------------------------------------------------------------------------------- semantics
def test_instance_norm_uses_unbiased_std_plus_eps():
    norm = InstanceNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]).view(1, 4, 1))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]).view(1, 4, 1))
    x = torch.randn(2, 4, 3, 5) * 3 + 1
    flat = x.flatten(2)
    expected = (flat - flat.mean(-1, keepdim=True)) / (flat.std(-1, unbiased=True, keepdim=True) + 1e-5)
    expected = (expected * norm.weight + norm.bias).view_as(x)
    assert torch.allclose(norm(x), expected, atol=1e-6)
    torch_style = F.instance_norm(x, weight=norm.weight.view(-1), bias=norm.bias.view(-1), eps=1e-5)
    assert not torch.allclose(norm(x), torch_style, atol=1e-3)  # biased variance would be a different network


def test_translator_adain_parameter_layout_and_attention_blend():
    generator = small_editor().generator
    translator = generator.translators[1]
    style = torch.randn(2, 16)
    p = translator.style_to_params(style)
    params = translator.adain_params(style)
    c = translator.adain_sizes[0]
    assert len(params) == len(translator.adain_sizes) == 4 and 2 * sum(translator.adain_sizes) == p.shape[1]
    # per AdaIN layer: C shifts, then C scales stored as (scale - 1)
    assert torch.equal(params[0][1].squeeze(-1), p[:, :c])
    assert torch.allclose(params[0][0].squeeze(-1), p[:, c : 2 * c] + 1)
    assert torch.equal(params[1][1].squeeze(-1), p[:, 2 * c : 3 * c])

    e = generator.encode(images(2))
    with torch.no_grad():
        translator.masks[0].bias.fill_(-1e4)  # mask 0: the features pass unchanged
        assert torch.allclose(generator.translate(e, style, 1), e)
        translator.masks[0].bias.fill_(1e4)  # mask 1: the translated features replace them
        out = generator.translate(e, style, 1)
        assert not torch.allclose(out, e, atol=1e-3)
        translator.masks[0].bias.zero_()
        mid_changed = generator.translate(e, style + 1, 1)
    assert not torch.allclose(out, mid_changed)


def test_extract_gives_each_tag_its_slice_of_one_style_vector():
    generator = small_editor().generator
    reference = images(2)
    with torch.no_grad():
        everything = generator.extractors(reference)
        styles = [generator.extract(reference, tag) for tag in range(3)]
    assert everything.shape == (2, 3, 16)
    for tag, style in enumerate(styles):
        assert style.shape == (2, 16)
        assert torch.equal(style, everything[:, tag])
    assert not torch.allclose(styles[0], styles[1])


def test_map_with_per_sample_attributes_equals_per_sample_int_calls():
    generator = small_editor().generator
    z = torch.randn(4, 8)
    attributes = torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        batched = generator.map(z, 2, attributes)
        singles = torch.cat([generator.map(z[i : i + 1], 2, int(a)) for i, a in enumerate(attributes)])
        shared = generator.map(z[:1], 2, attributes)  # one z for every sample
    assert batched.shape == (4, 16)
    assert torch.allclose(batched, singles, atol=1e-6)
    assert torch.allclose(shared[0], singles[0], atol=1e-6)
    assert not torch.allclose(shared[1], shared[0])  # a different attribute gives a different style
    with pytest.raises(ValueError, match="out of range"):
        generator.map(z, 0, 2)


# A functional re-statement of the official Gen (core/networks.py) computed straight from the state dict, to check
# the module wiring: where the norms, activations, pooling and up-sampling sit, and how AdaIN/mappers are fed.
def _lrelu(t):
    return F.leaky_relu(t, 0.2)


def _norm(t, weight, bias):
    flat = t.flatten(2)
    return ((flat - flat.mean(-1, keepdim=True)) / (flat.std(-1, keepdim=True) + 1e-5) * weight + bias).view_as(t)


def _conv(sd, name, t):
    weight = sd[name + ".weight"]
    return F.conv2d(t, weight, sd.get(name + ".bias"), padding=weight.shape[-1] // 2)


def _reference_edit(sd, hp, x, tag, reference=None, z=None, attribute=None):
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    h = _conv(sd, "encoder.0", x)
    for i in range(1, len(hp["encoder"]["channels"])):
        b = f"encoder.{i}."
        skip = F.avg_pool2d(_conv(sd, b + "sc", h), 2)
        r = F.avg_pool2d(_conv(sd, b + "conv1", _lrelu(_norm(h, sd[b + "in1.weight"], sd[b + "in1.bias"]))), 2)
        r = _conv(sd, b + "conv2", _lrelu(_norm(r, sd[b + "in2.weight"], sd[b + "in2.bias"])))
        h = (skip + r) / 2**0.5
    e = h
    if reference is not None:
        blocks = len(hp["extractors"]["channels"]) - 1
        s = _conv(sd, "extractors.model.0", reference)
        for i in range(1, blocks + 1):
            b = f"extractors.model.{i}."
            r = _conv(sd, b + "conv2", _lrelu(F.avg_pool2d(_conv(sd, b + "conv1", _lrelu(s)), 2)))
            s = (F.avg_pool2d(_conv(sd, b + "sc", s), 2) + r) / 2**0.5
        s = _conv(sd, f"extractors.model.{blocks + 2}", s.mean((2, 3), keepdim=True))
        style = s.view(x.shape[0], len(hp["tags"]), -1)[:, tag]
    else:
        m = f"mappers.{tag}."
        s = F.linear(z, sd[m + "pre_model.0.weight"], sd[m + "pre_model.0.bias"])
        for i in range(1, len(hp["mappers"]["pre_channels"])):
            s = F.linear(F.relu(s), sd[m + f"pre_model.{i}.linear.weight"], sd[m + f"pre_model.{i}.linear.bias"])
        last = len(hp["mappers"]["post_channels"]) - 1
        for i in range(last):
            p = m + f"post_models.{attribute}.{i}.linear."
            s = F.linear(F.relu(s), sd[p + "weight"], sd[p + "bias"])
        p = m + f"post_models.{attribute}.{last}."
        style = F.linear(s, sd[p + "weight"], sd[p + "bias"])
    t = f"translators.{tag}."
    params = F.linear(style, sd[t + "style_to_params.weight"], sd[t + "style_to_params.bias"])
    h, offset = _conv(sd, t + "model.0", e), 0
    for i in range(1, len(hp["translators"]["channels"])):
        b = t + f"model.{i}."
        c_in, c_out = sd[b + "conv1.weight"].shape[1], sd[b + "conv1.weight"].shape[0]
        w1, b1 = params[:, offset + c_in : offset + 2 * c_in, None] + 1, params[:, offset : offset + c_in, None]
        offset += 2 * c_in
        w2, b2 = params[:, offset + c_out : offset + 2 * c_out, None] + 1, params[:, offset : offset + c_out, None]
        offset += 2 * c_out
        r = _conv(sd, b + "conv1", _lrelu(_norm(h, w1, b1)))
        r = _conv(sd, b + "conv2", _lrelu(_norm(r, w2, b2)))
        h = (_conv(sd, b + "sc", h) + r) / 2**0.5
    mask = torch.sigmoid(_conv(sd, t + "masks.0", h))
    h = _conv(sd, t + "features.0", h) * mask + e * (1 - mask)
    for i in range(len(hp["decoder"]["channels"]) - 1):
        b = f"decoder.{i}."
        skip = up(_conv(sd, b + "sc", h))
        r = _conv(sd, b + "conv1", up(_lrelu(_norm(h, sd[b + "in1.weight"], sd[b + "in1.bias"]))))
        r = _conv(sd, b + "conv2", _lrelu(_norm(r, sd[b + "in2.weight"], sd[b + "in2.bias"])))
        h = (skip + r) / 2**0.5
    return _conv(sd, f"decoder.{len(hp['decoder']['channels']) - 1}", h)


def test_edits_match_a_functional_restatement_of_the_official_network():
    hp = small_hyperparameters(32)
    hp["translators"] = {"channels": [16, 12, 16]}  # unequal AdaIN sizes exercise the parameter slicing
    torch.manual_seed(4)
    generator = HiSDGenerator(hp)
    with torch.no_grad():
        for name, tensor in generator.named_parameters():
            if ".in1." in name or ".in2." in name:
                tensor.add_(0.3 * torch.randn_like(tensor))
    editor = HiSDEditor(generator)
    sd = generator.state_dict()
    x, reference, z = images(2), images(2), torch.randn(2, 8)
    with torch.no_grad():
        for tag in range(3):
            got = editor.edit(x, HiSDCondition(tag=tag, reference=reference))
            assert torch.allclose(got, _reference_edit(sd, hp, x, tag, reference=reference), atol=1e-5), tag
        for tag, attribute in [(0, 1), (2, 2)]:
            got = editor.edit(x, HiSDCondition(tag=tag, attribute=attribute, z=z))
            want = _reference_edit(sd, hp, x, tag, z=z, attribute=attribute)
            assert torch.allclose(got, want, atol=1e-5), (tag, attribute)


def test_edit_paths_match_the_official_calls_and_chain():
    editor = small_editor()
    g = editor.generator
    x = images(2)
    reference = images(1)  # shared reference
    z = torch.randn(2, 8)
    by_reference = HiSDCondition(tag=0, reference=reference)
    by_latent = HiSDCondition(tag=2, attribute=torch.tensor([1, 2]), z=z)
    with torch.no_grad():
        e = g.encode(x)
        expected_ref = g.decode(g.translate(e, g.extract(reference, 0), 0))
        expected_lat = g.decode(g.translate(e, g.map(z, 2, torch.tensor([1, 2])), 2))
        e_bangs = g.translate(e, g.extract(reference, 0), 0)
        expected_chain = g.decode(g.translate(e_bangs, g.map(z, 2, torch.tensor([1, 2])), 2))
        y_ref = editor.edit(x, by_reference)
        y_lat = editor.edit(x, by_latent)
        y_chain = editor.edit(x, [by_reference, by_latent])
        y_forward = g(x, g.extract(reference, 0), 0)
    assert e.shape == (2, 32, 8, 8)
    assert y_ref.shape == y_lat.shape == y_chain.shape == x.shape
    assert torch.allclose(y_ref, expected_ref, atol=1e-6)
    assert torch.allclose(y_forward, expected_ref, atol=1e-6)
    assert torch.allclose(y_lat, expected_lat, atol=1e-6)
    assert torch.allclose(y_chain, expected_chain, atol=1e-6)
    assert not torch.allclose(y_chain, y_ref, atol=1e-4) and not torch.allclose(y_chain, y_lat, atol=1e-4)
    assert not torch.allclose(y_ref, y_lat, atol=1e-4)


def test_train_and_eval_modes_give_identical_results():
    editor = small_editor()
    x = images(2)
    condition = editor.conditions(torch.zeros(2, 5))[3]
    with torch.no_grad():
        editor.generator.train()
        y_train = editor._run(x, condition)
        y_edit = editor.edit(x, condition)  # switches to eval
    assert not editor.generator.training
    assert torch.equal(y_train, y_edit)


def test_editor_can_be_differentiated_wrt_the_input():
    editor = small_editor()
    x = images(1).requires_grad_()
    y = editor.edit(x, HiSDCondition(tag=1, attribute=0, z=torch.randn(1, 8)))
    (grad,) = torch.autograd.grad(y.square().mean(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------- patches
def test_patch_attaches_to_every_conv_and_linear_and_zero_init_keeps_the_edit():
    x = images(2)
    reference = HiSDCondition(tag=1, reference=images(2))
    latent = HiSDCondition(tag=2, attribute=torch.tensor([0, 2]), z=torch.randn(2, 8))
    results = {}
    for init in ("zero", "kaiming"):
        editor = small_editor(seed=3)
        layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in editor.generator.modules())
        with torch.no_grad():
            before = [editor.edit(x, reference), editor.edit(x, latent)]
        model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(include_linear=True, init_weights=init))
        patched = [m for m in editor.generator.modules() if isinstance(m, lpa.GatedLoraLayer)]
        assert len(patched) == layers  # all convs and linears of encoder/decoder/extractor/translators/mappers
        assert model.base_model.model is editor.generator
        with torch.no_grad():
            after = [editor.edit(x, reference), editor.edit(x, latent)]
        results[init] = (before, after)
    for b, a in zip(*results["zero"]):
        assert torch.allclose(a, b, atol=1e-6)
    for b, a in zip(*results["kaiming"]):
        assert not torch.allclose(a, b, atol=1e-3)
