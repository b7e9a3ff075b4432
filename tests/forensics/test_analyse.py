"""Patch forensics: merged low-rank patches are found with their exact rank, fine-tunes are not mistaken for them,
unmerged adapters, fingerprints and official checkpoint formats are recognised, bad input gives clear errors.

Torch runs single-threaded here, as in test_cli.py: the SVDs are small, and on a shared 2-core machine a second
OpenMP thread waiting for a busy core made one StarGAN-sized analysis take 2-16 s instead of 0.8 s.
"""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import lora_patch_adapters as lpa
from lora_patch_adapters.forensics import (
    ForensicsError,
    analyse,
    fingerprint_weights,
    read_weights,
    split_adapters,
)
from lora_patch_adapters.generators.stargan import StarGANGenerator
from lora_patch_adapters.patches import base_fingerprint, save_patch
from tests.helpers import MixedNet

RANKS = (1, 4, 8, 16)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _trained_patch_merged(r: int, steps: int = 3) -> nn.Module:
    """The testbed editor with a rank-r patch (zero B, paper gate and scale) trained a few Adam steps, merged."""
    editor = lpa.load_editor("testbed")
    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(r=r, init_weights="zero"))
    gen = torch.Generator().manual_seed(r)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    c = (torch.rand(2, 5, generator=gen) > 0.5).float()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(steps):
        loss = F.mse_loss(editor.edit(x, c), torch.zeros_like(x))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.merge_and_unload()


def _small_patch(base: nn.Module, r: int, b_std: float = 1e-3, **config) -> peft.PeftModel:
    """A copy of ``base`` with a rank-r patch: kaiming A, small random B, gate sigmoid(-1), scale alpha/sqrt(r)."""
    model = lpa.get_peft_model(copy.deepcopy(base), lpa.LoraPatchConfig(r=r, init_weights="kaiming", **config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_patch_B" in name:
                param.normal_(0, b_std)
    return model


@pytest.fixture(scope="module")
def testbed_reference() -> dict[str, torch.Tensor]:
    return _state(lpa.load_editor("testbed").generator)


@pytest.fixture(scope="module")
def stargan() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(1234)
    generator = StarGANGenerator()
    return generator, _state(generator)


# ------------------------------------------------------------------------------------------------ the acceptance
@pytest.mark.parametrize("r", RANKS)
def test_trained_merged_patch_on_the_testbed_has_rank_r(r, testbed_reference):
    merged = _trained_patch_merged(r)
    report = analyse(merged, testbed_reference)
    assert report.verdict == "low-rank patch merged"
    assert report.rank == r
    assert report.changed_layers == report.weight_layers == 12
    for layer in report.layers:
        if layer.is_matrix:
            assert layer.verdict == "low-rank patch merged", layer
            # too small to show r: full rank (the RGB conv has 3 rows; the 8-channel input conv in one view)
            assert layer.rank == min(r, layer.full_rank), layer
        else:
            assert not layer.changed and layer.verdict == "unchanged", layer
    # the editor runs in train mode, so training moved the instance-norm statistics: listed, not counted
    assert "main.1.running_mean" in report.statistics_changed
    json.dumps(report.to_dict(), allow_nan=False)


@pytest.mark.parametrize("r", RANKS)
def test_small_merged_patch_on_a_stargan_sized_network_has_rank_r(r, stargan):
    base, reference = stargan
    merged = _small_patch(base, r).merge_and_unload()
    report = analyse(merged, reference)
    assert report.verdict == "low-rank patch merged" and report.rank == r
    assert report.changed_layers == report.weight_layers == 18
    for layer in report.layers:
        if layer.is_matrix and layer.rank < layer.full_rank:
            assert layer.rank == r, layer
            # a wide gap between the patch and the round-off: the r-th singular value far above the cut-off
            assert layer.singular_values[r - 1] > 100 * layer.threshold, layer
            assert layer.singular_values[r] < layer.threshold, layer


def test_faint_patch_is_still_found_above_the_round_off(stargan):
    base, reference = stargan
    report = analyse(_small_patch(base, 8, b_std=1e-6).merge_and_unload(), reference)
    assert report.verdict == "low-rank patch merged" and report.rank == 8


def test_untouched_model_and_reloaded_copy_are_unchanged(tmp_path, testbed_reference):
    editor = lpa.load_editor("testbed")
    report = analyse(editor, testbed_reference)
    assert report.verdict == "unchanged" and report.rank is None and report.unmerged_patch is False
    assert report.changed_layers == 0 and report.weight_layers == 12
    assert all(layer.max_abs_diff == 0 for layer in report.layers)
    path = tmp_path / "copy.safetensors"
    save_file(_state(editor.generator), str(path))
    assert analyse(str(path), editor).verdict == "unchanged"
    assert analyse(path, str(path)).verdict == "unchanged"


# ---------------------------------------------------------------------------------------------- other changes
def test_dense_noise_on_every_weight_is_other_change(stargan):
    base, reference = stargan
    model = copy.deepcopy(base)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 4:
                param.add_(torch.randn_like(param) * 1e-4 * param.abs().mean())
    report = analyse(model, reference)
    assert report.verdict == "other change" and report.rank is None
    matrices = [layer for layer in report.layers if layer.is_matrix]
    assert all(layer.rank == layer.full_rank and layer.verdict == "other change" for layer in matrices)


def test_adam_fine_tune_of_the_whole_generator_is_other_change(testbed_reference):
    editor = lpa.load_editor("testbed")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c = (torch.rand(2, 5) > 0.5).float()
    weights = [p for p in editor.generator.parameters() if p.dim() == 4]
    optimiser = torch.optim.Adam(weights, lr=1e-4)
    for _ in range(2):
        loss = F.mse_loss(editor.edit(x, c), torch.zeros_like(x))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # the convolutions alone: dense updates, full rank in every large layer
    report = analyse(editor, testbed_reference)
    assert report.verdict == "other change"
    wide = [layer for layer in report.layers if layer.is_matrix and layer.full_rank > 8]
    assert wide and all(layer.rank == layer.full_rank for layer in wide)
    # and every parameter (norm weights too)
    optimiser = torch.optim.Adam(editor.generator.parameters(), lr=1e-4)
    loss = F.mse_loss(editor.edit(x, c), torch.zeros_like(x))
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    report = analyse(editor, testbed_reference)
    assert report.verdict == "other change" and report.other_changed > 0


def test_bias_or_norm_change_is_other_change(testbed_reference):
    merged = _trained_patch_merged(4, steps=1)
    state = _state(merged)
    state["main.4.bias"] = state["main.4.bias"] + 1e-3
    report = analyse(state, testbed_reference)
    assert report.verdict == "other change"
    bias = next(layer for layer in report.layers if layer.name == "main.4.bias")
    assert bias.changed and bias.rank is None and bias.verdict == "other change"


def test_running_statistics_count_only_when_asked(testbed_reference):
    state = dict(testbed_reference)
    state["main.1.running_mean"] = state["main.1.running_mean"] + 0.5
    assert analyse(state, testbed_reference).verdict == "unchanged"
    assert analyse(state, testbed_reference).statistics_changed == ["main.1.running_mean"]
    assert analyse(state, testbed_reference, include_running_stats=True).verdict == "other change"


def test_added_and_removed_tensors_are_other_change(testbed_reference):
    state = dict(testbed_reference)
    state["extra.weight"] = torch.ones(3, 3)
    del state["main.4.bias"]
    report = analyse(state, testbed_reference)
    assert report.verdict == "other change"
    assert report.added == ["extra.weight"] and report.removed == ["main.4.bias"]


def test_round_off_from_a_dtype_round_trip_is_not_a_change(testbed_reference):
    halved = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in testbed_reference.items()}
    report = analyse(halved, testbed_reference)
    assert report.verdict == "unchanged"
    assert any("dtypes differ" in note for note in report.notes)


# --------------------------------------------------------------------------------------------------- the views
def test_merged_conv_is_rank_r_in_the_out_view_only():
    a, b = torch.randn(3, 16, 4, 4, dtype=torch.float64), torch.randn(24, 3, dtype=torch.float64)
    delta = torch.einsum("or,rikl->oikl", b, a)  # Conv2d [out=24, in=16, 4, 4]
    assert torch.linalg.matrix_rank(delta.reshape(24, -1)).item() == 3
    assert torch.linalg.matrix_rank(delta.movedim(1, 0).reshape(16, -1)).item() == 16


def test_merged_conv_transpose_is_rank_r_in_the_dim1_view_only():
    a, b = torch.randn(16, 3, 4, 4, dtype=torch.float64), torch.randn(24, 3, dtype=torch.float64)
    delta = torch.einsum("irkl,or->iokl", a, b)  # ConvTranspose2d [in=16, out=24, 4, 4]
    assert torch.linalg.matrix_rank(delta.movedim(1, 0).reshape(24, -1)).item() == 3
    assert torch.linalg.matrix_rank(delta.reshape(16, -1)).item() == 16


def test_conv_conv_transpose_and_linear_patches_use_their_view():
    torch.manual_seed(3)
    base = MixedNet()
    reference = _state(base)
    merged = _small_patch(base, 2, b_std=1e-2, include_linear=True).merge_and_unload()
    report = analyse(merged, reference)
    assert report.verdict == "low-rank patch merged" and report.rank == 2
    views = {layer.name: layer.view for layer in report.layers if layer.is_matrix}
    assert views == {"conv.weight": "[dim0, rest]", "up.weight": "[dim1, rest]", "head.weight": "[dim0, rest]"}
    assert all(layer.rank == 2 for layer in report.layers if layer.is_matrix)


# ------------------------------------------------------------------------------------------------ unmerged patch
def test_unmerged_patch_module_and_saved_state_dict(tmp_path, testbed_reference):
    editor = lpa.load_editor("testbed")
    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(r=8, init_weights="kaiming"))  # in place
    for source in (model, editor, model.state_dict()):
        report = analyse(source, testbed_reference)
        assert report.verdict == "unmerged patch" and report.rank == 8
        patch = report.unmerged_patch
        assert patch["kind"] == "lora-patch" and patch["adapters"] == ["default"] and patch["layers"] == 12
        assert patch["numerical_rank"] == 8
        assert {entry["rank"] for entry in patch["per_layer"]} == {8}
        assert report.changed_layers == 0  # the base layers are untouched
    path = tmp_path / "peft_state.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    report = analyse(str(path), testbed_reference)
    assert report.verdict == "unmerged patch" and report.unmerged_patch["numerical_rank"] == 8


def test_untrained_zero_patch_has_numerical_rank_zero(testbed_reference):
    editor = lpa.load_editor("testbed")
    lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(r=4, init_weights="zero"))
    patch = analyse(editor, testbed_reference).unmerged_patch
    assert patch["rank"] == 4 and patch["numerical_rank"] == 0


def test_stock_lora_is_an_unmerged_patch():
    base = MixedNet()
    reference = _state(base)
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=3, target_modules=["conv", "head"]))
    report = analyse(model, reference)
    assert report.verdict == "unmerged patch" and report.unmerged_patch["kind"] == "lora"
    assert report.unmerged_patch["rank"] == 3 and report.unmerged_patch["layers"] == 2


def test_split_adapters_canonical_names():
    editor = lpa.load_editor("testbed")
    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(r=2))
    base, adapters = split_adapters(read_weights(model))
    assert "main.0.weight" in base and not any("base_layer" in k or k.startswith("base_model") for k in base)
    assert "main.0.lora_patch_A.default.weight" in adapters


# ------------------------------------------------------------------------------------------------- fingerprints
def test_state_dict_fingerprint_equals_base_fingerprint():
    editor = lpa.load_editor("testbed")
    assert fingerprint_weights(read_weights(editor)) == base_fingerprint(editor)
    generator = StarGANGenerator()
    assert fingerprint_weights(read_weights(generator)) == base_fingerprint(generator)
    mixed = MixedNet()  # Linear and ConvTranspose2d layers too
    assert fingerprint_weights(read_weights(mixed)) == base_fingerprint(mixed)
    patched = lpa.get_peft_model(mixed, lpa.LoraPatchConfig(r=2, include_linear=True))
    assert fingerprint_weights(read_weights(patched)) == base_fingerprint(patched)


def test_fingerprint_reference_match_and_mismatch(testbed_reference):
    editor = lpa.load_editor("testbed")
    fingerprint = base_fingerprint(editor)
    report = analyse(editor, fingerprint)
    assert report.verdict == "unchanged" and report.fingerprint["match"] and report.reference_kind == "fingerprint"
    merged = _trained_patch_merged(4, steps=1)
    report = analyse(merged, fingerprint)
    assert report.verdict == "changed" and not report.fingerprint["match"] and report.layers == []
    assert any("reference weights" in note for note in report.notes)
    assert report.unmerged_patch is False
    unmerged = _small_patch(lpa.load_editor("testbed").generator, 4)
    report = analyse(unmerged, fingerprint)
    assert report.verdict == "unmerged patch" and report.fingerprint["match"] and report.rank == 4


def test_patch_directory_reference(tmp_path):
    editor = lpa.load_editor("testbed")
    model = _small_patch(editor.generator, 4)
    save_patch(model, tmp_path / "patch")
    original = lpa.load_editor("testbed")
    for reference in (tmp_path / "patch", str(tmp_path / "patch" / "lora_patch.json"),
                      tmp_path / "patch" / "adapter_config.json"):
        report = analyse(original, reference)
        assert report.verdict == "unchanged" and report.reference_kind == "patch"
    merged = model.merge_and_unload()
    report = analyse(merged, str(tmp_path / "patch"))
    assert report.verdict == "changed" and report.fingerprint["layers"] == 12
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "adapter_config.json").write_text(json.dumps({"base_fingerprint": None}))
    with pytest.raises(ForensicsError, match="records no base_fingerprint"):
        analyse(merged, tmp_path / "plain")


# --------------------------------------------------------------------------------------------- official formats
def test_attgan_style_file_with_the_generator_under_G(tmp_path, testbed_reference):
    path = tmp_path / "weights.199.pth"
    torch.save({"G": testbed_reference, "D": {"x.weight": torch.ones(2, 2)}, "optim_G": {"state": {}}}, path)
    assert read_weights(str(path)).keys() == testbed_reference.keys()
    assert analyse(str(path), testbed_reference).verdict == "unchanged"


def test_hisd_style_file_prefers_gen_test(tmp_path, testbed_reference):
    other = {k: v + 1 if v.is_floating_point() else v for k, v in testbed_reference.items()}
    path = tmp_path / "gen_00600000.pt"
    torch.save({"gen": other, "gen_test": testbed_reference}, path)
    assert analyse(str(path), testbed_reference).verdict == "unchanged"
    torch.save({"gen": other}, path)
    assert analyse(str(path), testbed_reference).verdict == "other change"


def test_nested_dict_of_a_known_layout_is_found(stargan):
    _, reference = stargan
    wrapped = {"weights": reference, "optimizer": {"lr": torch.tensor(1.0)}}
    assert read_weights(wrapped).keys() == reference.keys()


def test_data_parallel_prefix_is_stripped(testbed_reference):
    prefixed = {f"module.{k}": v for k, v in testbed_reference.items()}
    assert analyse(prefixed, testbed_reference).verdict == "unchanged"


class Pickled:
    """Any object that is not a tensor or a plain container."""

    def __init__(self) -> None:
        self.weight = torch.ones(2)


def test_pickled_object_file_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Pickled()}, path)
    with pytest.raises(ForensicsError, match="pickled Python objects.*not read for safety.*safetensors"):
        read_weights(str(path))


# ------------------------------------------------------------------------------------------------------- errors
def test_errors_name_the_problem(tmp_path, testbed_reference):
    with pytest.raises(ForensicsError, match="model file .* not found"):
        analyse(str(tmp_path / "missing.pt"), testbed_reference)
    with pytest.raises(ForensicsError, match="reference file .* not found.*fingerprint"):
        analyse(testbed_reference, str(tmp_path / "missing.safetensors"))
    renamed = {f"other.{k}": v for k, v in testbed_reference.items()}
    with pytest.raises(ForensicsError, match="share no weight names — is it the same architecture"):
        analyse(renamed, testbed_reference)
    with pytest.raises(ForensicsError, match="'main.0.weight' has shape .* different architectures"):
        analyse(StarGANGenerator(conv_dim=8, repeat_num=3), testbed_reference)
    for bad in ("sha256:1234", "sha256:" + "G" * 64):
        with pytest.raises(ForensicsError, match="malformed fingerprint"):
            analyse(testbed_reference, bad)
    with pytest.raises(ForensicsError, match="not a fingerprint"):
        analyse("sha256:" + "0" * 64, testbed_reference)
    with pytest.raises(ForensicsError, match="is a directory"):
        analyse(str(tmp_path), testbed_reference)
    with pytest.raises(ForensicsError, match="only adapter tensors"):
        analyse({"main.0.lora_patch_A.weight": torch.ones(2, 3)}, testbed_reference)
    with pytest.raises(ForensicsError, match="several dicts .*'a', 'b'"):
        read_weights({"a": {"x.weight": torch.ones(2, 2)}, "b": {"y.weight": torch.ones(2, 2)}})
    with pytest.raises(ForensicsError, match="rtol"):
        analyse(testbed_reference, testbed_reference, rtol=0)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        read_weights(42)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00")
    with pytest.raises(ForensicsError, match="model: .*not a readable safetensors file"):
        analyse(str(truncated), testbed_reference)


class _FewChannels(nn.Module):
    """StarGAN's first layer has 8 input channels (RGB + 5 condition maps); a patch rank above that must still show."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(8, 64, 7, padding=3)
        self.up = nn.ConvTranspose2d(8, 48, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(self.first(x)[:, :8])


@pytest.mark.parametrize("r", [12, 16])
def test_patch_rank_above_the_input_channel_count_is_found(r):
    torch.manual_seed(r)
    base = _FewChannels()
    reference = _state(base)
    merged = _small_patch(base, r, b_std=1e-2).merge_and_unload()
    report = analyse(merged, reference)
    layers = {layer.name: layer for layer in report.layers if layer.is_matrix}
    # Conv2d [64, 8, 7, 7]: the [dim1, rest] view is [8, ...], rank 8 for any change; the patch shows in [dim0, rest]
    assert layers["first.weight"].rank == r and layers["first.weight"].view == "[dim0, rest]"
    # ConvTranspose2d [8, 48, 4, 4]: the patch shows in [dim1, rest] ([48, 8*16]); [dim0, rest] is [8, ...]
    assert layers["up.weight"].rank == r and layers["up.weight"].view == "[dim1, rest]"
    assert report.verdict == "low-rank patch merged" and report.rank == r
