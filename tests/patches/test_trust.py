"""Trust in patch files: one deterministic case per class of problem, each refused before anything happens.

After every refusal the model is bitwise unchanged (state dict, structure, flags) and so is every file under the
test's folder (paths and bytes): the package touches nothing it did not create.

1. save_patch removes only its own (marked) leftovers, never folders that merely look like them;
2. path-like adapter names are refused by save_patch, load_patch and validate_patch;
3. save_patch refuses NaN/Inf adapter tensors and metadata the patch readers could not read back;
4. a config is bounded by the targeted layers (rank, scale, task type) before any adapter is built;
5. the loaded weights are the validated ones, even if the file is rewritten between validation and load;
6. a local load never touches the network;
7. a patch without a base fingerprint is refused unless allow_missing_fingerprint=True;
8. peft's own writer (``PeftModel.save_pretrained``) refuses NaN/Inf adapter tensors before writing weights or config,
   writes the config atomically, and records the weights digest that exposes an interrupted or mixed save.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import struct
import types
import warnings
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lora_patch_adapters import LoraPatchConfig, get_peft_model
from lora_patch_adapters.patches import (
    MissingFingerprintError,
    MissingFingerprintWarning,
    PatchConfigError,
    PatchLoadError,
    PatchSaveError,
    load_patch,
    save_patch,
    validate_patch,
)
from lora_patch_adapters.patches import load as load_module
from lora_patch_adapters.patches import save as save_module
from lora_patch_adapters.patches import validate as validate_module
from lora_patch_adapters.patches.errors import PatchFileError
from lora_patch_adapters.tuner import GatedLoraLayer, NonFiniteAdapterError
from lora_patch_adapters.tuner import config as config_module
from tests.helpers import ToyEditor, images, labels

CONFIG, WEIGHTS, SIDECAR = "adapter_config.json", "adapter_model.safetensors", "lora_patch.json"


def _base(seed: int = 0) -> ToyEditor:
    torch.manual_seed(seed)
    return ToyEditor()


def _patched(base: nn.Module, adapter_name: str = "default", **config) -> peft.PeftModel:
    model = get_peft_model(base, LoraPatchConfig(init_weights="kaiming", r=4, **config), adapter_name=adapter_name)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_patch_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (folders as None, files as their bytes, links as their target)."""
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                found[key] = b"link:" + os.fsencode(os.readlink(path))
            elif os.path.isdir(path):
                found[key] = None
            else:
                found[key] = Path(path).read_bytes()
    return found


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))


def _entry(path: Path):
    """A folder's content, or a link's target (never followed)."""
    return ("link", os.readlink(path)) if os.path.islink(path) else _tree(path)


class Frozen:
    """A model's full observable state, to compare after a refusal."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.text = str(module)
        self.grads = [p.requires_grad for p in module.parameters()]
        self.modes = [m.training for m in module.modules()]
        self.attributes = set(module.__dict__)
        self.configs = dict(getattr(module, "peft_config", {}))

    def assert_unchanged(self) -> None:
        now = self.module.state_dict()
        assert set(now) == set(self.state)
        assert all(_same(now[k], v) for k, v in self.state.items())
        assert str(self.module) == self.text
        assert [p.requires_grad for p in self.module.parameters()] == self.grads
        assert [m.training for m in self.module.modules()] == self.modes
        assert set(self.module.__dict__) == self.attributes
        assert dict(getattr(self.module, "peft_config", {})) == self.configs


def _refused_unchanged(call, error, root: Path, *frozen: Frozen, match: str | None = None):
    """Run ``call``, expect ``error`` (a one-line message), and check the models and the folder are unchanged."""
    before = _tree(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=match) as info:
            call()
    message = str(info.value)
    assert "\n" not in message and len(message) < 800, message
    assert _tree(root) == before
    for state in frozen:
        state.assert_unchanged()
    return message


def _edit_config(path: Path, **fields) -> None:
    data = json.loads((path / CONFIG).read_text())
    data.update(fields)
    (path / CONFIG).write_text(json.dumps(data))


@pytest.fixture
def saved(tmp_path):
    """(pristine base, patched model, patch directory under tmp_path/'work')."""
    base = _base()
    pristine = copy.deepcopy(base)
    model = _patched(base)
    path = Path(save_patch(model, tmp_path / "work" / "patch"))
    return pristine, model, path


# ------------------------------------------------------------------------------- 1. only own leftovers are removed
def test_save_removes_only_its_own_marked_leftovers(saved, monkeypatch):
    pristine, model, path = saved
    work = path.parent
    # a real leftover: a save that crashes after its temporary folder is made (its cleanup never runs)
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(save_module, "save_patch_files", crash)
    monkeypatch.setattr(save_module, "shutil", types.SimpleNamespace(rmtree=lambda *a, **k: None))
    with pytest.raises(KeyboardInterrupt):
        save_patch(model, path)
    monkeypatch.undo()
    (leftover,) = [name for name in os.listdir(work) if name.startswith("patch.tmp-")]

    # the user's own folders that only look like leftovers, and a copy of the real leftover under another name
    for name in ("patch.tmp-xyz", "patch.old-xyz", "patch.old-backup_2"):
        (work / name).mkdir()
        (work / name / "notes.txt").write_text(f"mine: {name}")
    (work / "patch.old-xyz" / "adapter_config.json").write_text("{}")
    (work / "patch.tmp-copy").mkdir()
    for entry in os.listdir(work / leftover):
        (work / "patch.tmp-copy" / entry).write_bytes((work / leftover / entry).read_bytes())
    (work / "patch.tmp-link").symlink_to(work / leftover, target_is_directory=True)
    spared = {name: _entry(work / name) for name in os.listdir(work) if name not in ("patch", leftover)}

    replacement = _patched(copy.deepcopy(pristine))
    with torch.no_grad():
        replacement.base_model.model.net.main[0].lora_patch_B["default"].weight.mul_(2)
    save_patch(replacement, path)
    assert sorted(os.listdir(work)) == sorted(["patch", *spared])  # the marked leftover is gone, nothing else
    assert {name: _entry(work / name) for name in spared} == spared
    assert sorted(os.listdir(path)) == ["README.md", CONFIG, WEIGHTS, SIDECAR]  # no marker in the patch

    # a second replacement: its backup of the previous patch is removed too, the look-alikes stay
    save_patch(model, path)
    assert sorted(os.listdir(work)) == sorted(["patch", *spared])
    assert {name: _entry(work / name) for name in spared} == spared


# ---------------------------------------------------------------------------------------- 2. path-like adapter names
BAD_NAMES = ["../escaped", "a/b", "", ".", "..", "a\\b", "x" * 65, "-flag"]


def test_path_like_adapter_names_are_refused_everywhere(saved, tmp_path):
    pristine, model, path = saved
    outside = tmp_path / "outside"  # an absolute adapter name pointing at a folder of the user's
    outside.mkdir()
    (outside / "adapter_config.json").write_text("user data")
    frozen_model = Frozen(model)
    for name in [*BAD_NAMES, str(outside)]:
        target = copy.deepcopy(pristine)
        frozen = Frozen(target)
        for call in (lambda: load_patch(target, path, adapter_name=name),
                     lambda: validate_patch(target, path, adapter_name=name)):
            message = _refused_unchanged(call, PatchLoadError, tmp_path, frozen, match="adapter_name")
            assert "not a valid adapter name" in message
        message = _refused_unchanged(lambda: save_patch(model, tmp_path / "dest", adapter_name=name), PatchSaveError,
                                     tmp_path, frozen_model, match="adapter_name")
        assert "not a valid adapter name" in message

    # a model whose adapter really is named like a path (peft accepts it) cannot be saved with that name
    host = _patched(copy.deepcopy(pristine), adapter_name=str(outside), target_modules=["net.main.0"])
    frozen_host = Frozen(host)
    _refused_unchanged(lambda: save_patch(host, tmp_path / "dest", adapter_name=str(outside)), PatchSaveError,
                       tmp_path, frozen_host, match="not a valid adapter name")
    assert (outside / "adapter_config.json").read_text() == "user data"
    sneaky = _patched(copy.deepcopy(pristine), adapter_name="a/b", target_modules=["net.main.0"])
    _refused_unchanged(lambda: save_patch(sneaky, tmp_path / "dest", adapter_name="a/b"), PatchSaveError,
                       tmp_path, Frozen(sneaky), match="not a valid adapter name")
    # plain names keep working
    assert save_patch(_patched(copy.deepcopy(pristine), adapter_name="my_patch-2"), tmp_path / "ok",
                      adapter_name="my_patch-2")


# -------------------------------------------------------------------- 3. non-finite tensors, metadata too large
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_save_refuses_non_finite_tensors_before_writing(saved, tmp_path, value):
    _, model, path = saved
    layer = model.base_model.model.net.main[3]
    with torch.no_grad():
        layer.lora_patch_A["default"].weight.view(-1)[5] = value
    frozen = Frozen(model)
    for destination in (tmp_path / "new", path):  # a new directory, and replacing the existing patch
        message = _refused_unchanged(lambda: save_patch(model, destination), PatchSaveError, tmp_path, frozen)
        assert "base_model.model.net.main.3.lora_patch_A.weight" in message and "NaN or infinite" in message
        assert "nothing was written" in message
    assert not (tmp_path / "new").exists()


def test_save_refuses_metadata_the_readers_could_not_read_back(saved, tmp_path, monkeypatch):
    _, model, path = saved
    frozen = Frozen(model)
    blob = {"log": "x" * (16 * 2**20)}  # lora_patch.json above the 16 MiB the readers accept
    message = _refused_unchanged(lambda: save_patch(model, tmp_path / "big", metadata=blob), PatchSaveError,
                                 tmp_path, frozen)
    assert "lora_patch.json" in message and str(16 * 2**20) in message and "16 MiB" in message
    # the safetensors header bound: checked from the tensor table and the metadata before anything is written
    header_bytes = struct.unpack("<Q", (path / WEIGHTS).read_bytes()[:8])[0]
    monkeypatch.setattr(save_module, "SAFETENSORS_HEADER_LIMIT", header_bytes // 2)
    message = _refused_unchanged(lambda: save_patch(model, tmp_path / "header"), PatchSaveError, tmp_path, frozen)
    assert f"{header_bytes // 2}-byte header limit" in message and WEIGHTS in message
    monkeypatch.setattr(save_module, "SAFETENSORS_HEADER_LIMIT", 100_000_000)
    save_patch(model, tmp_path / "header", metadata={"log": "x" * 1000})  # a normal save still works


# ----------------------------------------------------------------------- 4. config bounded by the target layers
def _rank_bound(module: nn.Module, names: list[str]) -> int:
    """max over the targeted layers of min(fan_in, fan_out), computed here from the layers' weights."""
    layers = dict(module.named_modules())
    best = 0
    for name in names:
        weight = layers[name].weight
        if isinstance(layers[name], nn.ConvTranspose2d):  # [in, out, kh, kw]
            fan_in, fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3], weight.shape[1]
        else:  # Conv2d [out, in, kh, kw]
            fan_in, fan_out = math.prod(weight.shape[1:]), weight.shape[0]
        best = max(best, min(fan_in, fan_out))
    return best


def test_config_is_bounded_by_the_target_layers_before_anything_is_built(saved, tmp_path, monkeypatch):
    pristine, _, path = saved
    targets = json.loads((path / CONFIG).read_text())["target_modules"]
    bound = _rank_bound(pristine, targets)
    assert bound == 32  # ToyEditor: residual blocks 32 -> 32 channels, 3x3
    built = []
    real_meta_copy = validate_module._meta_copy
    monkeypatch.setattr(validate_module, "_meta_copy", lambda m: built.append(1) or real_meta_copy(m))
    target = copy.deepcopy(pristine)
    frozen = Frozen(target)
    cases = [
        ({"r": bound + 1}, "r=33"),
        ({"r": 10**9}, "r=1000000000"),
        ({"lora_alpha": 1e30}, "lora_alpha"),
        ({"lora_alpha": 2000.5}, "lora_alpha"),  # scale 2000.5 / sqrt(4) just above 1e3
        ({"lora_alpha": 4.5e3, "scaling": "rank"}, "lora_alpha"),
        ({"task_type": "CAUSAL_LM"}, "task_type"),
        ({"task_type": "SEQ_CLS"}, "task_type"),
    ]
    for fields, mention in cases:
        _edit_config(path, **fields)
        for call in (lambda: load_patch(target, path), lambda: validate_patch(target, path)):
            message = _refused_unchanged(call, PatchConfigError, tmp_path, frozen)
            assert CONFIG in message and mention in message, message
        assert built == [], fields  # refused before any (meta) adapter was built
        _edit_config(path, r=4, lora_alpha=2.0, scaling="sqrt_rank", task_type=None)
    _edit_config(path, r=bound + 1)
    message = _refused_unchanged(lambda: load_patch(target, path), PatchConfigError, tmp_path, frozen)
    assert "min(fan_in, fan_out)" in message and "in_channels*kh*kw" in message and f"at most {bound}" in message

    # at the bounds the config itself is accepted (then the r=32 weights do not match the file: a shape error)
    _edit_config(path, r=bound)
    with pytest.raises(PatchLoadError) as info:
        load_patch(target, path)
    assert not isinstance(info.value, PatchConfigError)
    frozen.assert_unchanged()
    _edit_config(path, r=4, lora_alpha=2000.0)  # scale exactly 1e3
    loaded = load_patch(copy.deepcopy(pristine), path)
    assert isinstance(loaded, peft.PeftModel) and type(loaded) is peft.PeftModel


# ---------------------------------------------------------------- 5. the loaded tensors are the validated ones
def test_rewriting_the_file_after_validation_does_not_change_the_loaded_weights(saved, monkeypatch):
    pristine, model, path = saved
    validated = {k: v.clone() for k, v in load_file(path / WEIGHTS).items()}  # load_file's tensors map the file too
    data = bytearray((path / WEIGHTS).read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    rewritten = bytes(data[: 8 + length]) + torch.full(((len(data) - 8 - length) // 4,), 7.0).numpy().tobytes()
    real_stage = load_module._stage

    def stage_after_rewrite(checked, directory):  # the file changes in place between validation and loading
        with open(path / WEIGHTS, "r+b") as f:
            f.write(rewritten)
        real_stage(checked, directory)

    monkeypatch.setattr(load_module, "_stage", stage_after_rewrite)
    loaded = load_patch(copy.deepcopy(pristine), path)
    assert (path / WEIGHTS).read_bytes() == rewritten
    state = peft.get_peft_model_state_dict(loaded)
    assert set(state) == set(validated)
    assert all(torch.equal(state[k], v) for k, v in validated.items())
    torch.manual_seed(5)
    x, c = images(2), labels(2)
    loaded.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x, c), model(x, c))


# ------------------------------------------------------------------------------ 6. local loads stay off the network
def test_local_load_never_touches_the_network(saved, tmp_path, monkeypatch):
    pristine, model, path = saved
    _edit_config(path, base_model_name_or_path="someone/face-editor", revision="main")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. peft's "Unable to fetch remote file" warning
        validate_patch(copy.deepcopy(pristine), path)
        loaded = load_patch(copy.deepcopy(pristine), path)
        save_patch(loaded, tmp_path / "resaved")  # the loaded model carries no foreign repo id either
        load_patch(copy.deepcopy(pristine), tmp_path / "resaved")
    assert attempts == []
    assert torch.equal(peft.get_peft_model_state_dict(loaded)["base_model.model.net.main.0.lora_patch_A.weight"],
                       peft.get_peft_model_state_dict(model)["base_model.model.net.main.0.lora_patch_A.weight"])


# ------------------------------------------------------------------ 7. a patch without fingerprint is refused
def test_patch_without_fingerprint_is_refused_unless_opted_in(tmp_path):
    pristine = _base()
    model = _patched(copy.deepcopy(pristine))
    path = tmp_path / "old-style"
    model.save_pretrained(path)  # as older versions did: no fingerprint in the config, no sidecar
    _edit_config(path, base_fingerprint=None)
    assert not (path / SIDECAR).exists()
    other = _base(seed=42)  # a different base: nothing tells it apart without a fingerprint
    frozen = Frozen(other)
    host = _patched(copy.deepcopy(other), adapter_name="resident", target_modules=["net.main.0"])
    frozen_host = Frozen(host)
    for call in (lambda: load_patch(other, path), lambda: validate_patch(other, path),
                 lambda: load_patch(host, path, adapter_name="extra")):
        message = _refused_unchanged(call, MissingFingerprintError, tmp_path, frozen, frozen_host)
        assert "no base fingerprint" in message and "allow_missing_fingerprint=True" in message
        assert CONFIG in message
    with pytest.warns(MissingFingerprintWarning, match="allow_missing_fingerprint=True"):
        loaded = load_patch(other, path, allow_missing_fingerprint=True)
    assert any(isinstance(m, GatedLoraLayer) for m in loaded.modules())


def test_saving_a_model_that_names_a_hub_repo_never_touches_the_network(saved, tmp_path, monkeypatch):
    """A user's model config may name its Hub repo; saving (save_patch, trainer checkpoints) must not ask the Hub."""
    _, model, _ = saved
    model.peft_config["default"].base_model_name_or_path = "someone/face-editor"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_patch(model, tmp_path / "named")
    assert attempts == [] and (tmp_path / "named" / "adapter_model.safetensors").is_file()


def test_replacing_a_patch_never_deletes_the_users_own_files(saved, tmp_path):
    pristine, model, path = saved
    notes = os.path.join(path, "notes.txt")
    with open(notes, "w") as f:
        f.write("mine")
    before = {name: open(os.path.join(path, name), "rb").read() for name in os.listdir(path)}
    with pytest.raises(FileExistsError, match=r"also holds notes\.txt, which save_patch did not write.*move them out"):
        save_patch(_patched(copy.deepcopy(pristine)), path)
    assert {name: open(os.path.join(path, name), "rb").read() for name in os.listdir(path)} == before
    os.remove(notes)
    assert save_patch(_patched(copy.deepcopy(pristine)), path) == os.path.abspath(path)


# ------------------------------------------------------------------- 8. peft's save_pretrained, guarded where it can be
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_peft_save_pretrained_refuses_non_finite_tensors_before_writing_weights_or_config(tmp_path, value):
    model = _patched(_base())
    target = tmp_path / "work" / "peft-save"
    model.save_pretrained(target)  # a good save first: the refusal must leave it as it is
    layer = model.base_model.model.net.main[3]
    with torch.no_grad():
        layer.lora_patch_B["default"].weight.view(-1)[2] = value
    frozen = Frozen(model)
    for destination in (target, tmp_path / "work" / "fresh"):
        before = _tree(tmp_path / "work")
        with pytest.raises(NonFiniteAdapterError) as info:
            model.save_pretrained(destination)
        message = str(info.value)
        assert "base_model.model.net.main.3.lora_patch_B.weight" in message and "NaN or infinite" in message
        assert "no weights or config file was written" in message and "\n" not in message
        after = _tree(tmp_path / "work")
        # peft writes its README.md model card before gathering the weights; nothing else may change
        changed = {k for k in set(before) | set(after) if before.get(k, b"?") != after.get(k, b"?")}
        assert changed <= {os.path.relpath(destination, tmp_path / "work"),
                           os.path.relpath(destination / "README.md", tmp_path / "work")}, changed
        assert not (destination / WEIGHTS).exists() or before[os.path.relpath(destination / WEIGHTS,
                                                                              tmp_path / "work")] is not None
        frozen.assert_unchanged()
    assert load_file(target / WEIGHTS)  # the earlier good save is intact and loads


def test_a_weights_file_from_another_save_is_refused(tmp_path):
    """peft writes the weights, then the config, in place: a save killed in between (or files of two saves copied
    together) pairs one save's config with another's weights, with the same shapes. The digest exposes it."""
    base = _base()
    pristine = copy.deepcopy(base)
    model = _patched(base)
    first, second = tmp_path / "work" / "first", tmp_path / "second"
    model.save_pretrained(first)
    with torch.no_grad():
        model.base_model.model.net.main[3].lora_patch_A["default"].weight.mul_(2)
    model.save_pretrained(second)
    (first / WEIGHTS).write_bytes((second / WEIGHTS).read_bytes())  # the second save died before its config
    digest = json.loads((first / CONFIG).read_text())["weights_sha256"]
    victim = copy.deepcopy(pristine)
    message = _refused_unchanged(lambda: load_patch(victim, first), PatchFileError, tmp_path / "work", Frozen(victim))
    assert str(first / WEIGHTS) in message and str(first / CONFIG) in message and digest[:12] in message
    assert "weights_sha256 to null" in message
    # the documented opt-out for a weights file rewritten on purpose
    _edit_config(first, weights_sha256=None)
    loaded = load_patch(copy.deepcopy(pristine), first)
    assert torch.equal(peft.get_peft_model_state_dict(loaded)["base_model.model.net.main.3.lora_patch_A.weight"],
                       load_file(second / WEIGHTS)["base_model.model.net.main.3.lora_patch_A.weight"])


def test_a_malformed_weights_digest_is_refused_naming_the_field(saved):
    _, _, path = saved
    _edit_config(path, weights_sha256="not-a-digest")
    with pytest.raises(PatchConfigError, match="weights_sha256"):
        validate_patch(_base(), path)


def test_the_config_is_written_atomically(tmp_path, monkeypatch):
    model = _patched(_base())
    target = tmp_path / "work" / "patch"
    model.save_pretrained(target)
    before = _tree(tmp_path / "work")
    with torch.no_grad():
        model.base_model.model.net.main[3].lora_patch_A["default"].weight.add_(1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process is stopped while the config is being swapped in

    monkeypatch.setattr(config_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        model.peft_config["default"].save_pretrained(str(target))
    assert _tree(tmp_path / "work") == before  # the old config whole, no partial file left


def test_the_scale_bound_covers_linear_layers_under_the_official_rule(saved):
    """``scaling="official"`` leaves Linear patches undivided (alpha), so the bound applies to alpha itself."""
    _, _, path = saved
    r = json.loads((path / CONFIG).read_text())["r"]
    assert 1500.0 / r**0.5 < 1e3 < 1500.0  # within the bound on convolutions, above it on Linear layers
    _edit_config(path, scaling="official", lora_alpha=1500.0)
    with pytest.raises(PatchConfigError, match=r"lora_alpha on Linear layers.*1\.5e\+03"):
        validate_patch(_base(), path)
    from lora_patch_adapters.patches.inspect import inspect_patch

    info = inspect_patch(str(path))
    assert info["patch"]["scale"] == pytest.approx(1500.0 / r**0.5) and info["patch"]["linear_scale"] == 1500.0
