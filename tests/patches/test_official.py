"""The paper authors' saved patches (official layout) against an independent re-implementation of their forward.

The reference below is written from the official equations, not from the converter: every Conv2d, ConvTranspose2d
and Linear layer L becomes ``L.orig_conv`` / ``L.orig_linear`` (the base) plus ``lora_A``, ``lora_B`` and a gate, and
computes ``base(x) + g * s * v`` with ``v = B(A x)`` (A with the base geometry, B a 1x1 mix), ``s = alpha/sqrt(r)``
on convolutions and ``alpha`` on Linear layers, and ``g`` = sigmoid(gate) (basic), sigmoid(w * mean(v) + b)
(input_ada), sigmoid(1x1 CxC map of v at every pixel + b) (input_ada_channel) or 1 (ungated).
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

import lora_patch_adapters as lpa
from lora_patch_adapters.cli.main import main
from lora_patch_adapters.generators import AttGANGenerator, HiSDGenerator, StarGANGenerator
from lora_patch_adapters.generators.hisd import small_hyperparameters
from lora_patch_adapters.patches import (
    FingerprintMismatchError,
    NonFinitePatchError,
    OfficialPatchError,
    UnsafePatchFileError,
    load_patch,
    save_patch,
)
from lora_patch_adapters.patches.official import export_official_patch, import_official_patch
from tests.helpers import MixedNet

ALPHA = 2.0
GATES = ("basic", "input_ada", "input_ada_channel", "none")


# ------------------------------------------------------------------------------------------- reference (official)
class _Affine(nn.Module):
    """Holds ``weight`` / ``bias`` under the names the official gate_conv / gate_fc modules give them."""

    def __init__(self, weight_shape: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(weight_shape) * 0.5)
        self.bias = nn.Parameter(torch.randn(channels) * 0.5)


class RefPatched(nn.Module):
    """One official patched layer, from the equations."""

    def __init__(self, base: nn.Module, r: int, gate: str, alpha: float = ALPHA) -> None:
        super().__init__()
        transposed = isinstance(base, nn.ConvTranspose2d)
        self.kind = "linear" if isinstance(base, nn.Linear) else "convT" if transposed else "conv"
        if self.kind == "linear":
            self.orig_linear = base
            n_in, n_out, kernel = base.in_features, base.out_features, ()
        else:
            self.orig_conv = base
            n_in, n_out, kernel = base.in_channels, base.out_channels, tuple(base.kernel_size)
        fan_a = n_in * math.prod(kernel)
        shape_a = (n_in, r, *kernel) if self.kind == "convT" else (r, n_in, *kernel)
        self.lora_A = nn.Parameter((torch.rand(shape_a) * 2 - 1) / math.sqrt(fan_a))
        self.lora_B = nn.Parameter((torch.rand(n_out, r) * 2 - 1) / math.sqrt(r))
        self.gate_type, self.r, self.alpha = gate, r, alpha
        tail = () if self.kind == "linear" else (1, 1)
        holder = "gate_fc" if self.kind == "linear" else "gate_conv"
        if gate == "basic":
            self.gate = nn.Parameter(torch.tensor(-1.0) + torch.randn(()) * 0.5)
        elif gate == "input_ada":
            setattr(self, holder, _Affine((1, 1, *tail), 1))
        elif gate == "input_ada_channel":
            setattr(self, holder, _Affine((n_out, n_out, *tail), n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            base = self.orig_linear
            out = F.linear(x, base.weight, base.bias)
            v = (x @ self.lora_A.T) @ self.lora_B.T
            scale = self.alpha
        else:
            base = self.orig_conv
            if self.kind == "conv":
                out = F.conv2d(x, base.weight, base.bias, base.stride, base.padding, base.dilation)
                low = F.conv2d(x, self.lora_A, None, base.stride, base.padding, base.dilation)
            else:
                geometry = (base.stride, base.padding, base.output_padding, 1, base.dilation)
                out = F.conv_transpose2d(x, base.weight, base.bias, *geometry)
                low = F.conv_transpose2d(x, self.lora_A, None, *geometry)
            v = torch.einsum("nrhw,or->nohw", low, self.lora_B)
            scale = self.alpha / math.sqrt(self.r)
        if self.gate_type == "basic":
            g = torch.sigmoid(self.gate)
        elif self.gate_type == "input_ada":
            aff = self.gate_fc if self.kind == "linear" else self.gate_conv
            dims = tuple(range(1, v.dim()))
            g = torch.sigmoid(aff.weight.reshape(()) * v.mean(dim=dims, keepdim=True) + aff.bias.reshape(()))
        elif self.gate_type == "input_ada_channel":
            if self.kind == "linear":
                g = torch.sigmoid(v @ self.gate_fc.weight.T + self.gate_fc.bias)
            else:
                w = self.gate_conv.weight[:, :, 0, 0]
                g = torch.sigmoid(torch.einsum("oc,nchw->nohw", w, v) + self.gate_conv.bias[None, :, None, None])
        else:
            g = 1.0
        return out + g * scale * v


def inject_reference(module: nn.Module, r: int, gate: str, alpha: float = ALPHA) -> nn.Module:
    """Replace every Conv2d / ConvTranspose2d / Linear (recursively, not inside new layers) by RefPatched."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            setattr(module, name, RefPatched(child, r, gate, alpha))
        else:
            inject_reference(child, r, gate, alpha)
    return module


# --------------------------------------------------------------------------------------------------- tiny models
def _stargan():
    return StarGANGenerator(conv_dim=4, c_dim=5, repeat_num=1)


def _attgan():
    return AttGANGenerator(enc_dim=4, dec_dim=4, enc_layers=3, dec_layers=3, img_size=16, inject_layers=1)


def _hisd():
    return HiSDGenerator(small_hyperparameters(16, width=4, style_dim=8, noise_dim=4))


def _run_stargan(g):
    g.train()  # official StarGAN inference: instance norm with per-image statistics
    gen = torch.Generator().manual_seed(1)
    return g(torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1, (torch.rand(2, 5, generator=gen) > 0.5).float())


def _run_attgan(g):
    g.eval()
    gen = torch.Generator().manual_seed(1)
    return g(torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1, torch.rand(2, 13, generator=gen) - 0.5)


def _run_hisd(g):
    g.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    z = torch.randn(2, 4, generator=gen)
    latent = g.decode(g.translate(g.encode(x), g.map(z, 2, 1), 2))  # mappers and style_to_params: Linear layers
    reference = g.decode(g.translate(g.encode(x), g.extract(x.flip(0), 2), 2))
    return torch.cat([latent, reference])


def _run_mixed(g):
    return g(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1)


MODELS = {
    "stargan": (_stargan, _run_stargan),
    "attgan": (_attgan, _run_attgan),
    "hisd": (_hisd, _run_hisd),
    "mixed": (MixedNet, _run_mixed),
}


def _official_file(tmp_path, model: str, gate: str, r: int = 5, seed: int = 0):
    """(base generator, reference patched model, path of its torch.save(state_dict()))."""
    torch.manual_seed(seed)
    base = MODELS[model][0]()
    reference = inject_reference(copy.deepcopy(base), r, gate)
    path = tmp_path / f"lora_patch4{model}_{gate}.pth"
    torch.save(reference.state_dict(), path)
    return base, reference, path


def _max_error(model, a, b):
    run = MODELS[model][1]
    with torch.no_grad():
        return (run(a) - run(b)).abs().max().item()


# ---------------------------------------------------------------------------------------------------------- import
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("gate", GATES)
def test_imported_patch_reproduces_the_official_forward(tmp_path, model, gate):
    base, reference, path = _official_file(tmp_path, model, gate)
    out = import_official_patch(path, copy.deepcopy(base), tmp_path / "patch", alpha=ALPHA)
    patched = load_patch(copy.deepcopy(base), out)
    error = _max_error(model, patched, reference)
    assert error <= 1e-5, f"{model}/{gate}: max abs error {error:.3g}"
    # the patch is not a no-op: the reference differs from the base model
    assert _max_error(model, base, reference) > 1e-3

    config = patched.peft_config["default"]
    expected_gate = {"basic": "basic", "input_ada": "input_adaptive", "input_ada_channel": "input_adaptive_pixel",
                     "none": "none"}[gate]
    assert (config.r, config.lora_alpha, config.scaling, config.gate) == (5, ALPHA, "official", expected_gate)
    official_layers = sorted(k[: -len(".lora_A")] for k in reference.state_dict() if k.endswith(".lora_A"))
    assert sorted(lpa.patches.read_patch_info(out)["target_modules"]) == official_layers
    info = lpa.patches.read_patch_info(out)["training"]
    assert info["source"] == "official" and info["file"] == path.name and info["gate"] == gate
    assert info["alpha"] == ALPHA and len(info["sha256"]) == 64


def test_wrong_base_is_refused(tmp_path):
    base, _, path = _official_file(tmp_path, "stargan", "basic")
    out = import_official_patch(path, copy.deepcopy(base), tmp_path / "patch")
    torch.manual_seed(123)
    with pytest.raises(FingerprintMismatchError):
        load_patch(_stargan(), out)


class Payload:
    """Pickled by reference: torch.load(weights_only=True) must refuse it."""


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"main.0.lora_A": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(UnsafePatchFileError, match="evil.pth.*weights_only"):
        import_official_patch(path, _stargan(), tmp_path / "patch")
    assert not (tmp_path / "patch").exists()


def _mutated(tmp_path, mutate):
    base, reference, path = _official_file(tmp_path, "mixed", "basic")
    state = reference.state_dict()
    mutate(state)
    torch.save(state, path)
    return base, path


@pytest.mark.parametrize(
    "mutate, error, pattern",
    [
        (lambda s: s.update({"up.lora_A": torch.zeros(6, 3, 4, 4), "up.lora_B": torch.zeros(4, 3)}),
         OfficialPatchError, r"'up.lora_A' has rank 3 but 'conv.lora_A'|up.lora_A.*rank 3.*mixes ranks"),
        (lambda s: s.update({"head.extra": torch.zeros(2)}), OfficialPatchError, r"'head.extra'.*neither"),
        (lambda s: s.update({"conv.lora_B": torch.zeros(5, 4)}), OfficialPatchError, r"'conv.lora_B' has shape"),
        (lambda s: s.update({"conv.orig_conv.weight": torch.zeros(6, 3, 5, 5)}), OfficialPatchError,
         r"'conv.orig_conv.weight' has shape"),
        (lambda s: s.pop("head.lora_B"), OfficialPatchError, r"'head.lora_B' is missing"),
        (lambda s: s["up.lora_A"].view(-1)[0].fill_(float("nan")), NonFinitePatchError, r"'up.lora_A'.*NaN"),
        (lambda s: s.update({"up.gate_conv.weight": torch.zeros(1, 1, 3, 3), "up.gate_conv.bias": torch.zeros(1)}),
         OfficialPatchError, r"'up.gate"),
        (lambda s: s.update({"conv.gate_conv.weight": torch.zeros(2, 2, 1, 1), "conv.gate_conv.bias": torch.zeros(2)}),
         OfficialPatchError, r"'conv.gate"),
    ],
    ids=["mixed-ranks", "unknown-key", "wrong-B", "wrong-base", "missing-B", "nan", "two-gates", "bad-gate-shape"],
)
def test_unconvertible_files_name_file_and_key(tmp_path, mutate, error, pattern):
    base, path = _mutated(tmp_path, mutate)
    with pytest.raises(error, match=pattern) as info:
        import_official_patch(path, base, tmp_path / "patch")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "patch").exists()


def test_mixed_gate_types_are_refused(tmp_path):
    torch.manual_seed(0)
    base = MixedNet()
    reference = copy.deepcopy(base)
    reference.conv = RefPatched(reference.conv, 4, "basic")
    reference.up = RefPatched(reference.up, 4, "input_ada")
    reference.head = RefPatched(reference.head, 4, "basic")
    torch.save(reference.state_dict(), tmp_path / "mixed.pth")
    with pytest.raises(OfficialPatchError, match="mixes gate types"):
        import_official_patch(tmp_path / "mixed.pth", base, tmp_path / "patch")


# ---------------------------------------------------------------------------------------------------------- export
def _tensors(directory):
    return safetensors.torch.load_file(os.path.join(directory, "adapter_model.safetensors"))


@pytest.mark.parametrize("model, gate", [("mixed", g) for g in GATES] + [("stargan", "input_ada_channel")])
def test_round_trips_are_bit_identical(tmp_path, model, gate):
    """official file -> import -> export gives the file's tensors back; patch -> export -> import the patch's."""
    base, reference, path = _official_file(tmp_path, model, gate, r=4)  # scales 1 (conv) and 2 (Linear)
    first = import_official_patch(path, copy.deepcopy(base), tmp_path / "first")
    torch.save(base.state_dict(), tmp_path / "base.pth")
    exported = export_official_patch(first, tmp_path / "base.pth", copy.deepcopy(base), tmp_path / "out.pth")
    original, written = torch.load(path, weights_only=True), torch.load(exported, weights_only=True)
    assert sorted(original) == sorted(written)
    for key in original:
        assert original[key].shape == written[key].shape and torch.equal(original[key], written[key]), key
    second = import_official_patch(exported, copy.deepcopy(base), tmp_path / "second")
    a, b = _tensors(first), _tensors(second)
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_input_ada_weight_at_rank_8_round_trips_within_one_ulp(tmp_path):
    """At r=8 the conv scale is 1/sqrt(2): the input_ada weight is divided by it on import, multiplied on export."""
    base, _, path = _official_file(tmp_path, "stargan", "input_ada", r=8)
    first = import_official_patch(path, copy.deepcopy(base), tmp_path / "first")
    torch.save(base.state_dict(), tmp_path / "base.pth")
    exported = export_official_patch(first, tmp_path / "base.pth", copy.deepcopy(base), tmp_path / "out.pth")
    original, written = torch.load(path, weights_only=True), torch.load(exported, weights_only=True)
    for key in original:
        if key.endswith("gate_conv.weight"):
            ulp = torch.finfo(torch.float32).eps * original[key].abs().max()
            assert (original[key] - written[key]).abs().max() <= ulp
        else:
            assert torch.equal(original[key], written[key]), key


@pytest.mark.parametrize("gate, official", [("basic", "basic"), ("input_adaptive", "input_ada"),
                                            ("input_adaptive_pixel", "input_ada_channel"), ("none", "none")])
def test_export_of_our_patch_loads_into_the_official_structure(tmp_path, gate, official):
    """A patch of ours (alpha/sqrt(r) on every layer, Linear included; only two layers patched) exported for the
    official alpha 2: B and the gates are rescaled, the rest written as zero patches; the official structure loads
    it strictly and computes what our patch computes."""
    torch.manual_seed(0)
    base = MixedNet()
    config = lpa.LoraPatchConfig(r=3, lora_alpha=1.5, scaling="sqrt_rank", gate=gate, init_weights="kaiming",
                                 target_modules=["conv", "head"])
    ours = lpa.get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_patch_gate" in name:
                p.normal_(0, 0.5)
    save_patch(ours, tmp_path / "patch")
    exported = export_official_patch(tmp_path / "patch", None, copy.deepcopy(base), tmp_path / "out.pth")
    reference = inject_reference(copy.deepcopy(base), 3, official)
    reference.load_state_dict(torch.load(exported, weights_only=True), strict=True)
    assert torch.count_nonzero(reference.up.lora_B) == 0  # not in the patch: a zero patch
    assert _max_error("mixed", ours, reference) <= 1e-5


def test_export_refuses_pooled_channel_gate_and_existing_file(tmp_path):
    base = MixedNet()
    ours = lpa.get_peft_model(copy.deepcopy(base), lpa.LoraPatchConfig(r=4, gate="input_adaptive_channel"))
    save_patch(ours, tmp_path / "patch")
    with pytest.raises(OfficialPatchError, match="input_adaptive_channel"):
        export_official_patch(tmp_path / "patch", None, copy.deepcopy(base), tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
    (tmp_path / "out.pth").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        export_official_patch(tmp_path / "patch", None, copy.deepcopy(base), tmp_path / "out.pth")
    assert (tmp_path / "out.pth").read_bytes() == b"mine"


# ------------------------------------------------------------------------------------------------------------- CLI
def test_cli_import_and_export_end_to_end(tmp_path, capsys):
    torch.manual_seed(0)
    base = StarGANGenerator()  # the official size: the CLI takes generator names
    reference = inject_reference(copy.deepcopy(base), 8, "basic")
    torch.save(reference.state_dict(), tmp_path / "lora_patch4stargan.pth")
    torch.save(base.state_dict(), tmp_path / "200000-G.ckpt")

    assert main(["import-official", str(tmp_path / "lora_patch4stargan.pth"), "--generator", "stargan",
                 "--out", str(tmp_path / "patch")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "patch")
    assert main(["export-official", str(tmp_path / "patch"), "--base", str(tmp_path / "200000-G.ckpt"),
                 "--generator", "stargan", "--out", str(tmp_path / "back.pth")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "back.pth")
    original = torch.load(tmp_path / "lora_patch4stargan.pth", weights_only=True)
    written = torch.load(tmp_path / "back.pth", weights_only=True)
    assert sorted(original) == sorted(written) and all(torch.equal(original[k], written[k]) for k in original)

    # bad file: one line, exit 1
    (tmp_path / "broken.pth").write_bytes(b"not a torch file")
    assert main(["import-official", str(tmp_path / "broken.pth"), "--generator", "stargan",
                 "--out", str(tmp_path / "p2")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lora-patch import-official: error:") and "broken.pth" in err and "\n" not in err
    # another base: refused, exit 1
    torch.save(StarGANGenerator().state_dict(), tmp_path / "other-G.ckpt")
    assert main(["export-official", str(tmp_path / "patch"), "--base", str(tmp_path / "other-G.ckpt"),
                 "--generator", "stargan", "--out", str(tmp_path / "x.pth")]) == 1
    assert "fingerprint" in capsys.readouterr().err.lower()
    # bad arguments: exit 2
    for argv in (["import-official", "f.pth", "--generator", "biggan", "--out", "d"],
                 ["import-official", "f.pth", "--generator", "stargan", "--out", "d", "--alpha", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2


def test_partially_patched_file_patches_exactly_its_layers(tmp_path):
    """Only main.0 patched: a plain list would also pick main.<block>.main.0 (peft matches dotted suffixes)."""
    torch.manual_seed(0)
    base = _stargan()
    reference = copy.deepcopy(base)
    reference.main[0] = RefPatched(reference.main[0], 4, "basic")
    torch.save(reference.state_dict(), tmp_path / "partial.pth")
    out = import_official_patch(tmp_path / "partial.pth", copy.deepcopy(base), tmp_path / "patch")
    patched = load_patch(copy.deepcopy(base), out)
    layers = [n for n, m in patched.base_model.model.named_modules() if isinstance(m, lpa.GatedLoraLayer)]
    assert layers == ["main.0"]
    assert _max_error("stargan", patched, reference) <= 1e-5


def test_cli_choices_and_top_level_names_match_the_library():
    from lora_patch_adapters.cli import official as cli_official
    from lora_patch_adapters.patches.official import GATE_MAP, OFFICIAL_GENERATORS

    assert cli_official.OFFICIAL_GENERATORS == OFFICIAL_GENERATORS
    assert set(cli_official.OFFICIAL_GATES) == set(GATE_MAP)
    assert lpa.import_official_patch is import_official_patch and lpa.export_official_patch is export_official_patch
    assert "input_adaptive_pixel" in lpa.GATE_TYPES
