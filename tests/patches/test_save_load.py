"""patch_io: base fingerprints, atomic save_patch (killed mid-way), validated load_patch, plain-peft refusal."""

from __future__ import annotations

import copy
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import peft
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lora_patch_adapters
from lora_patch_adapters import LoraPatchConfig, get_peft_model
from lora_patch_adapters.generators import StarGANEditor
from lora_patch_adapters.patches import (
    ALLOW_MISMATCH_ENV,
    FingerprintMismatchError,
    MissingFingerprintWarning,
    PatchFileError,
    PatchLoadError,
    UnsafePatchFileError,
    base_fingerprint,
    load_patch,
    read_patch_info,
    save_patch,
    validate_patch,
)
from lora_patch_adapters.patches.save import LEFTOVER_MARKER
from lora_patch_adapters.tuner import GatedLoraLayer
from tests.helpers import MixedNet, ToyEditor, images, labels

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["net.main.0", "net.main.3", "net.main.11"]  # first conv, a down conv, a transposed conv


def _base(seed: int = 0) -> ToyEditor:
    torch.manual_seed(seed)
    return ToyEditor()


def _patched(base: torch.nn.Module, seed: int = 1, adapter_name: str = "default", **config) -> peft.PeftModel:
    config = {"init_weights": "kaiming", "r": 4, **config}
    model = get_peft_model(base, LoraPatchConfig(**config), adapter_name=adapter_name)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_patch_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_untouched(module: torch.nn.Module, state: dict, text: str) -> None:
    now = module.state_dict()
    assert set(now) == set(state)
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert str(module) == text
    assert not any(isinstance(m, GatedLoraLayer) for m in module.modules())
    assert "peft_config" not in module.__dict__


def _outputs(model, seed: int = 5) -> torch.Tensor:
    torch.manual_seed(seed)
    x, c = images(2), labels(2)
    model.eval()
    with torch.no_grad():
        return model(x, c)


@pytest.fixture
def saved(tmp_path):
    """(pristine copy of the base, patched model, patch directory)."""
    base = _base()
    pristine = copy.deepcopy(base)
    model = _patched(base)
    path = save_patch(model, tmp_path / "patch", metadata={"steps": 12, "note": "unit test"})
    return pristine, model, path


# ----------------------------------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_before_and_after_patching_and_across_save_load(saved):
    pristine, model, path = saved
    fingerprint = base_fingerprint(pristine)
    assert fingerprint.startswith("sha256:") and len(fingerprint) == len("sha256:") + 64
    assert base_fingerprint(copy.deepcopy(pristine)) == fingerprint
    assert base_fingerprint(model) == fingerprint  # PeftModel: base layers, wrapper names removed
    assert base_fingerprint(model.get_base_model()) == fingerprint
    targets = read_patch_info(path)["target_modules"]
    recorded = read_patch_info(path)["base_fingerprint"]
    assert recorded == base_fingerprint(pristine, targets) == base_fingerprint(model, targets)
    assert json.loads((Path(path) / "adapter_config.json").read_text())["base_fingerprint"] == recorded
    assert peft.PeftConfig.from_pretrained(path).base_fingerprint == recorded  # the config field round-trips
    editor = StarGANEditor(copy.deepcopy(pristine))
    loaded = load_patch(editor, path)
    assert base_fingerprint(loaded, targets) == base_fingerprint(editor, targets) == recorded
    assert base_fingerprint(_base(seed=3)) != fingerprint


def test_fingerprint_sees_one_ulp_in_targeted_layers_only():
    model = _base()
    reference = base_fingerprint(model, TARGETS)
    assert base_fingerprint(model, list(reversed(TARGETS))) == reference  # sorted: order-independent
    assert base_fingerprint(model, r"net\.main\.(0|3|11)") == reference  # regex selection
    layers = dict(model.named_modules())
    for name, attr in [("net.main.0", "weight"), ("net.main.3", "weight"), ("net.main.11", "weight")]:
        tensor = getattr(layers[name], attr)
        with torch.no_grad():
            original = tensor.view(-1)[7].clone()
            tensor.view(-1)[7] = torch.nextafter(original, torch.tensor(float("inf")))
            changed = base_fingerprint(model, TARGETS)
            tensor.view(-1)[7] = original
        assert changed != reference, (name, attr)
        assert base_fingerprint(model, TARGETS) == reference
    with torch.no_grad():  # unrelated layers: another conv, an instance norm
        layers["net.main.6"].weight.add_(1.0)
        layers["net.main.1"].weight.add_(1.0)
    assert base_fingerprint(model, TARGETS) == reference
    assert base_fingerprint(model) != reference  # None = every conv/linear layer


def test_fingerprint_bias_dtype_and_bfloat16():
    model = MixedNet()
    reference = base_fingerprint(model)
    with torch.no_grad():
        model.head.bias[0] = torch.nextafter(model.head.bias[0], torch.tensor(-float("inf")))
    assert base_fingerprint(model) != reference
    as_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    as_half = copy.deepcopy(model).half()
    assert len({base_fingerprint(model), base_fingerprint(as_bf16), base_fingerprint(as_half)}) == 3
    assert base_fingerprint(as_bf16) == base_fingerprint(copy.deepcopy(as_bf16))


def test_fingerprint_refuses_merged_weights_and_unknown_names():
    model = _patched(_base())
    model.merge_adapter()
    with pytest.raises(ValueError, match="unmerge_adapter"):
        base_fingerprint(model)
    with pytest.raises(ValueError, match="unmerge_adapter"):
        save_patch(model, "/nonexistent/never-written")
    with pytest.raises(ValueError, match="No module named 'conv'"):
        base_fingerprint(_base(), ["conv"])


# ------------------------------------------------------------------------------------------------------ round trip
def test_round_trip_identical_outputs_and_files(saved):
    pristine, model, path = saved
    assert sorted(os.listdir(path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                        "lora_patch.json"]
    assert os.listdir(os.path.dirname(path)) == ["patch"]  # no temporary siblings left
    info = read_patch_info(path)
    assert info["format_version"] == 1 and info["package_version"] == lora_patch_adapters.__version__
    assert info["training"] == {"steps": 12, "note": "unit test"} and info["created"].endswith("Z")
    assert info["target_modules"] == sorted(
        name for name, m in model.get_base_model().named_modules() if isinstance(m, GatedLoraLayer)
    )
    with safe_open(Path(path) / "adapter_model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["base_fingerprint"] == info["base_fingerprint"] and meta["format_version"] == "1"
    assert json.loads(meta["target_modules"]) == info["target_modules"]
    assert json.loads(meta["training"]) == info["training"]

    expected = _outputs(model)
    loaded = load_patch(copy.deepcopy(pristine), path)
    assert isinstance(loaded, peft.PeftModel)
    assert torch.equal(_outputs(loaded), expected)
    plain = peft.PeftModel.from_pretrained(copy.deepcopy(pristine), path)  # plain peft reads the same files
    assert torch.equal(_outputs(plain), expected)
    trainable = load_patch(copy.deepcopy(pristine), path, is_trainable=True)
    assert all("lora_patch_" in n for n, p in trainable.named_parameters() if p.requires_grad)
    report = validate_patch(copy.deepcopy(pristine), path)
    assert report["target_modules"] == info["target_modules"] and report["tensors"] == 30


def test_editor_is_patched_in_place(saved):
    pristine, model, path = saved
    editor = StarGANEditor(copy.deepcopy(pristine))
    generator = editor.generator
    loaded = load_patch(editor, path)
    assert editor.generator is generator and loaded.get_base_model() is generator
    assert any(isinstance(m, GatedLoraLayer) for m in generator.modules())
    torch.manual_seed(5)
    x, c = images(2), labels(2)
    model.train()  # StarGAN editors run the generator in train mode
    with torch.no_grad():
        assert torch.equal(editor.edit(x, c), model(x, c))


def test_named_adapter_into_an_existing_peft_model(tmp_path):
    pristine = _base()
    model = _patched(copy.deepcopy(pristine), adapter_name="first")
    model.add_adapter("second", LoraPatchConfig(init_weights="kaiming", r=2, target_modules=TARGETS))
    model.set_adapter("second")
    expected = _outputs(model)
    path = save_patch(model, tmp_path / "second", adapter_name="second")
    assert "second" not in os.listdir(path)  # peft's sub-folder is flattened
    assert read_patch_info(path)["target_modules"] == sorted(TARGETS)

    host = _patched(copy.deepcopy(pristine), seed=9, adapter_name="resident")
    result = load_patch(host, path, adapter_name="second")
    assert result is host and set(host.peft_config) == {"resident", "second"}
    host.set_adapter("second")
    assert torch.equal(_outputs(host), expected)
    with pytest.raises(PatchLoadError, match="already has an adapter named 'second'"):
        load_patch(host, path, adapter_name="second")


def test_half_precision_tensors_are_accepted_and_cast(saved, tmp_path):
    pristine, _, path = saved
    tensors = load_file(Path(path) / "adapter_model.safetensors")
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        copied = tmp_path / str(dtype)
        copied.mkdir()
        (copied / "lora_patch.json").write_bytes((Path(path) / "lora_patch.json").read_bytes())
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        config["weights_sha256"] = None  # the weights file is rewritten on purpose (the documented opt-out)
        (copied / "adapter_config.json").write_text(json.dumps(config))
        save_file({k: v.to(dtype) for k, v in tensors.items()}, copied / "adapter_model.safetensors")
        loaded = load_patch(copy.deepcopy(pristine), copied)
        state = peft.get_peft_model_state_dict(loaded)
        assert all(torch.equal(state[k], v.to(dtype).float()) for k, v in tensors.items())


# --------------------------------------------------------------------------------------------------- refusals
def test_wrong_base_is_refused_and_left_untouched(saved, monkeypatch):
    _, model, path = saved
    other = _base(seed=42)
    state, text = _state(other), str(other)
    with pytest.raises(FingerprintMismatchError) as info:
        load_patch(other, path)
    assert "allow_fingerprint_mismatch=True" in str(info.value) and "adapter_config.json" in str(info.value)
    assert info.value.expected == read_patch_info(path)["base_fingerprint"]
    assert info.value.actual == base_fingerprint(other, read_patch_info(path)["target_modules"])
    _assert_untouched(other, state, text)

    # plain peft refuses too, before replacing any layer; the environment variable opts out
    with pytest.raises(FingerprintMismatchError, match=ALLOW_MISMATCH_ENV):
        peft.PeftModel.from_pretrained(other, path)
    _assert_untouched(other, state, text)
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    with pytest.warns(UserWarning, match="loading anyway"):
        peft.PeftModel.from_pretrained(copy.deepcopy(other), path)
    monkeypatch.delenv(ALLOW_MISMATCH_ENV)

    loaded = load_patch(other, path, allow_fingerprint_mismatch=True)
    assert torch.equal(peft.get_peft_model_state_dict(loaded)["base_model.model.net.main.0.lora_patch_A.weight"],
                       peft.get_peft_model_state_dict(model)["base_model.model.net.main.0.lora_patch_A.weight"])


def test_new_patch_from_a_saved_config_needs_the_fingerprint_cleared(saved):
    _, _, path = saved
    config = peft.PeftConfig.from_pretrained(path)
    with pytest.raises(FingerprintMismatchError, match="base_fingerprint = None"):
        get_peft_model(_base(seed=8), config)
    config.base_fingerprint = None
    get_peft_model(_base(seed=8), config)


def test_patch_without_fingerprint_warns(tmp_path):
    pristine = _base()
    model = _patched(copy.deepcopy(pristine))
    model.save_pretrained(tmp_path)  # plain peft: no fingerprint anywhere (older versions did not stamp the config)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config.pop("base_fingerprint", None)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.warns(MissingFingerprintWarning, match="no base fingerprint"):  # refused unless opted in
        loaded = load_patch(copy.deepcopy(pristine), tmp_path, allow_missing_fingerprint=True)
    assert torch.equal(_outputs(loaded), _outputs(model))


def test_pickle_weights_refused_unless_trusted(saved, tmp_path):
    pristine, model, path = saved
    tensors = load_file(Path(path) / "adapter_model.safetensors")
    os.remove(Path(path) / "adapter_model.safetensors")
    torch.save(tensors, Path(path) / "adapter_model.bin")
    target = copy.deepcopy(pristine)
    state, text = _state(target), str(target)
    with pytest.raises(UnsafePatchFileError, match=r"adapter_model\.bin.*trust_pickle=True"):
        load_patch(target, path)
    _assert_untouched(target, state, text)
    loaded = load_patch(target, path, trust_pickle=True)
    assert torch.equal(_outputs(loaded), _outputs(model))

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({**tensors, "x": Payload()}, Path(path) / "adapter_model.bin")
    with pytest.raises(UnsafePatchFileError, match="weights_only=True"):
        load_patch(copy.deepcopy(pristine), path, trust_pickle=True)
    assert not marker.exists()


def test_failure_after_touching_the_model_restores_it(saved, monkeypatch):
    pristine, _, path = saved

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure inside peft")

    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", broken)
    module = copy.deepcopy(pristine)
    state, text = _state(module), str(module)
    grads = [p.requires_grad for p in module.parameters()]
    with pytest.raises(PatchLoadError, match="restored unchanged"):
        load_patch(module, path)
    _assert_untouched(module, state, text)
    assert [p.requires_grad for p in module.parameters()] == grads

    host = _patched(copy.deepcopy(pristine), adapter_name="resident", target_modules=TARGETS[:1])
    host_state, host_text = _state(host), str(host)
    with pytest.raises(PatchLoadError, match="restored unchanged"):
        load_patch(host, path, adapter_name="extra")
    assert set(host.peft_config) == {"resident"} and host.active_adapter == "resident"
    assert str(host) == host_text and set(host.state_dict()) == set(host_state)
    assert all(torch.equal(host.state_dict()[k], v) for k, v in host_state.items())


def test_hub_ids_go_through_pull_patch(saved, monkeypatch):
    pristine, _, path = saved
    calls = []

    def pull_patch(repo_id, revision=None, token=None, local_files_only=False):
        calls.append((repo_id, revision, token, local_files_only))
        return path

    monkeypatch.setattr(lora_patch_adapters.patches.hub, "pull_patch", pull_patch)
    load_patch(copy.deepcopy(pristine), "someone/face-patch", revision="v1", token="t", local_files_only=True)
    assert calls == [("someone/face-patch", "v1", "t", True)]
    with pytest.raises(PatchFileError, match="no such patch directory"):
        load_patch(copy.deepcopy(pristine), "./does/not/exist")
    with pytest.raises(PatchFileError, match="is a file"):
        load_patch(copy.deepcopy(pristine), Path(path) / "adapter_config.json")
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------------- atomic save
def test_save_replaces_a_patch_cleans_stale_siblings_and_spares_other_directories(saved, tmp_path):
    pristine, _, path = saved
    stale = [tmp_path / "patch.tmp-dead1234", tmp_path / "patch.old-dead5678"]
    for directory in stale:  # leftovers of crashed saves: marked by save_patch as its own
        directory.mkdir()
        (directory / "adapter_model.safetensors").write_bytes(b"half")
        kind = directory.name.split(".")[1].split("-")[0]
        (directory / LEFTOVER_MARKER).write_bytes(f"lora-patch-adapters save_patch {kind}\n{directory.name}\n".encode())
    replacement = _patched(copy.deepcopy(pristine), seed=7)
    assert save_patch(replacement, path) == os.path.abspath(path)
    assert sorted(os.listdir(tmp_path)) == ["patch"]
    assert torch.equal(_outputs(load_patch(copy.deepcopy(pristine), path)), _outputs(replacement))

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a patch"):
        save_patch(replacement, other)
    assert os.listdir(other) == ["keep.txt"]
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_patch(replacement, tmp_path / "meta", metadata={"bad": object()})
    assert not (tmp_path / "meta").exists()


_CHILD = """
import json, os, signal, sys, time, traceback
import torch
torch.set_num_threads(1)  # the saves below run in forked processes
import safetensors.torch
from lora_patch_adapters import LoraPatchConfig, get_peft_model
from lora_patch_adapters.patches import save_patch
from tests.helpers import ToyEditor

torch.manual_seed(0)
model = get_peft_model(ToyEditor(), LoraPatchConfig(init_weights="kaiming", r=4))

def stall_after_write(directory):
    real = safetensors.torch.save_file
    def save_file(*args, **kwargs):  # write, then hang mid-save until killed
        real(*args, **kwargs)
        print("WROTE", directory, flush=True)
        time.sleep(60)
    safetensors.torch.save_file = save_file

def die_between_renames(directory):
    real = os.replace
    def replace(src, dst):  # the old patch is already renamed aside: crash before moving the new one in
        if os.path.abspath(dst) == directory and ".tmp-" in os.path.basename(src):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    os.replace = replace

for mode, directory in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        try:
            (stall_after_write if mode == "stall" else die_between_renames)(directory)
            save_patch(model, directory)
        except BaseException:
            traceback.print_exc()
        os._exit(3)
    print("PID", directory, pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("EXIT", directory, status, flush=True)
print("DONE", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_killed_save_never_leaves_half_a_patch(saved, tmp_path):
    """A child process saves while the test kills it with SIGKILL mid-write (after the weights file is written,
    before the swap), or it dies between the two renames of a replacement."""
    pristine, model, path = saved
    first = str(tmp_path / "first")  # no previous patch
    second = str(Path(path).resolve())  # replaces the fixture's patch
    between = str(tmp_path / "between")
    save_patch(model, between)
    before = {d: {n: (Path(d) / n).read_bytes() for n in os.listdir(d)} for d in (second, between)}

    scenarios = [("stall", first), ("stall", second), ("between", between)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_CHILD), json.dumps(scenarios)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=str(REPO_ROOT),
        )
        pids, wrote, statuses = {}, set(), {}

        def kill_everything():
            for pid in [child.pid, *pids.values()]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        watchdog = threading.Timer(120, kill_everything)
        watchdog.start()
        try:
            for line in child.stdout:
                word, directory, *rest = line.split() + [""]
                if word == "PID":
                    pids[directory] = int(rest[0])
                elif word == "WROTE":
                    wrote.add(directory)
                elif word == "EXIT":
                    statuses[directory] = int(rest[0])
                elif word == "DONE":
                    break
                if directory in pids and directory in wrote:
                    # mid-save: the temporary sibling exists, the destination is not replaced yet
                    assert glob.glob(directory + ".tmp-*")
                    os.kill(pids[directory], signal.SIGKILL)
                    wrote.discard(directory)
            child.wait(timeout=30)
        finally:
            watchdog.cancel()
            kill_everything()
        stderr.seek(0)
        log = stderr.read()
    assert child.returncode == 0, log
    for _, directory in scenarios:
        status = statuses.get(directory)
        assert status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, log

    # first save killed: nothing at the destination, only the temporary directory
    assert not os.path.exists(first) and len(glob.glob(first + ".tmp-*")) == 1
    # replacement killed mid-write: the previous patch is intact and loads
    assert {n: (Path(second) / n).read_bytes() for n in os.listdir(second)} == before[second]
    assert torch.equal(_outputs(load_patch(copy.deepcopy(pristine), second)), _outputs(model))
    # crash between the renames: no destination, the previous complete patch under .old-*
    (old,) = glob.glob(between + ".old-*")
    assert not os.path.exists(between)
    assert LEFTOVER_MARKER in os.listdir(old)  # marked as save_patch's own backup, so the next save may remove it
    assert {n: (Path(old) / n).read_bytes() for n in os.listdir(old) if n != LEFTOVER_MARKER} == before[between]
    load_patch(copy.deepcopy(pristine), old)

    # the next saves clean the leftovers up and work
    for directory in (first, second, between):
        save_patch(model, directory)
        assert not glob.glob(directory + ".tmp-*") and not glob.glob(directory + ".old-*")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(_outputs(load_patch(copy.deepcopy(pristine), directory)), _outputs(model))


def test_a_patch_saved_with_zero_dimensional_gates_still_loads(saved):
    """Earlier versions stored each basic gate's logit as a 0-d tensor; gates are (1,) now."""
    pristine, model, path = saved
    weights = os.path.join(path, "adapter_model.safetensors")
    with safe_open(weights, framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - not a dict
    gates = [key for key in tensors if "lora_patch_gate" in key]
    assert gates and all(tensors[key].shape == (1,) for key in gates)
    save_file({k: (v.reshape(()) if k in gates else v) for k, v in tensors.items()}, weights, metadata=metadata)
    config = json.loads(Path(path, "adapter_config.json").read_text())
    del config["weights_sha256"]  # those versions did not record the weights digest either
    Path(path, "adapter_config.json").write_text(json.dumps(config))
    with safe_open(weights, framework="pt") as f:
        assert all(f.get_tensor(key).dim() == 0 for key in gates)
    loaded = load_patch(copy.deepcopy(pristine), path)
    assert torch.equal(_outputs(loaded), _outputs(model))
