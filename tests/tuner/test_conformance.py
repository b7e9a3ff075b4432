"""PEFT conformance: what peft's own custom-model suite (tests/test_custom_models.py, tests/testing_common.py in
huggingface/peft) checks for a tuner, run on LoraPatchConfig and, as the control, on peft's LoraConfig.

Cases: three tiny models (Conv2d, ConvTranspose2d called with ``output_size``, Linear) x every gate x every forward
mode that applies (input-adaptive gates always run two branches), plus LoraConfig on the Conv2d and Linear models
(peft's LoRA has no ConvTranspose2d layer). A check that does not apply to a case is skipped with the reason.
The last section tests the fixes this suite drove: 0-d gate files, meta-device adapters, the base fingerprint
stamped at injection, discovered targets written into the user's config, and safe merging.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from operator import attrgetter

import peft
import pytest
import torch
import torch.distributed as dist
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from lora_patch_adapters import LoraPatchConfig
from lora_patch_adapters.tuner.fingerprint import FingerprintMismatchError, base_fingerprint
from lora_patch_adapters.tuner.layer import GatedLoraLayer

NAN_MESSAGE = "NaNs detected in the merged weights. The adapter default seems to be broken"


# ------------------------------------------------------------------------------------------------------ models
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(torch.relu(self.conv0(x)))


class TransposeNet(nn.Module):
    """The transposed convolution is called with ``output_size`` (16 from 8; without it the output would be 15)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
        self.conv = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x, output_size=[2 * x.shape[-2], 2 * x.shape[-1]])
        return self.conv(torch.relu(h))


class LinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(6, 8)
        self.lin1 = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


MODELS: dict[str, tuple[type[nn.Module], Callable[[], torch.Tensor], list[str]]] = {
    "conv2d": (ConvNet, lambda: torch.randn(2, 3, 8, 8), ["conv0", "conv1"]),
    "convtranspose2d": (TransposeNet, lambda: torch.randn(2, 3, 8, 8), ["conv", "up"]),
    "linear": (LinearNet, lambda: torch.randn(4, 6), ["lin0", "lin1"]),
}
GATES = ("none", "basic", "input_adaptive", "input_adaptive_channel", "input_adaptive_pixel")


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    method: str  # "lora_patch" or "lora"
    gate: str = ""
    mode: str = ""

    @property
    def id(self) -> str:
        return "-".join(p for p in (self.model, self.method, self.gate, self.mode) if p)

    @property
    def mergeable(self) -> bool:
        return self.method == "lora" or self.gate in ("none", "basic")

    def base(self) -> nn.Module:
        """The base model, always with the same weights (a fixed seed), in eval mode."""
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            return MODELS[self.model][0]().eval()

    def inputs(self) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(99)
            return MODELS[self.model][1]()

    def config(self, **overrides):
        if self.method == "lora":
            return peft.LoraConfig(r=2, target_modules=MODELS[self.model][2], init_lora_weights=False, **overrides)
        settings = dict(r=2, gate=self.gate, forward_mode=self.mode or "fused", init_weights="kaiming",
                        include_linear=True, gate_init=0.5)
        return LoraPatchConfig(**{**settings, **overrides})

    def patched(self, seed: int = 0, adapter_name: str = "default", **kwargs) -> peft.PeftModel:
        """A PeftModel with random adapter values (gates moved off their initial value too)."""
        torch.manual_seed(seed)
        model = peft.get_peft_model(self.base(), self.config(), adapter_name=adapter_name, **kwargs)
        perturb(model, adapter_name, seed)
        return model.eval()


def perturb(model: peft.PeftModel, adapter_name: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if model.prefix in name and f".{adapter_name}." in name + ".":
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * 0.3
                param.add_(noise.to(param.dtype))


PATCH_CASES = [
    Case(model, "lora_patch", gate, mode)
    for model in MODELS
    for gate in GATES
    for mode in (("fused", "two_branch") if gate in ("none", "basic") else ("two_branch",))
]
LORA_CASES = [Case("conv2d", "lora"), Case("linear", "lora")]  # peft's LoRA does not support ConvTranspose2d
CASES = PATCH_CASES + LORA_CASES
ALL = pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
PATCH_ONLY = pytest.mark.parametrize("case", PATCH_CASES, ids=lambda c: c.id)


def adapter_params(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if prefix in n}


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def skip_unless_mergeable(case: Case) -> None:
    if not case.mergeable:
        pytest.skip(f"gate={case.gate!r} depends on the input: merging is refused (see test_merge_layers)")


# ------------------------------------------------------------------------------------------- save / load
@ALL
def test_save_pretrained_round_trip(case, tmp_path):
    model = case.patched()
    x = case.inputs()
    expected = run(model, x)
    assert not torch.allclose(expected, run(case.base(), x), atol=1e-5)
    model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path))
    assert not {"model.safetensors", "config.json"} & set(os.listdir(tmp_path))
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        torch.manual_seed(54321)  # another seed than at creation: the values must come from the file
        loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path)
    assert not any("Found missing adapter keys" in str(r.message) for r in records)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert torch.allclose(run(loaded, x), expected, atol=1e-6)


@ALL
def test_save_pretrained_pickle_round_trip(case, tmp_path):
    """``safe_serialization=False``: peft writes adapter_model.bin (a pickle of tensors) and reads it back."""
    model = case.patched()
    x = case.inputs()
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert "adapter_model.bin" in os.listdir(tmp_path) and "adapter_model.safetensors" not in os.listdir(tmp_path)
    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path)
    assert torch.allclose(run(loaded, x), run(model, x), atol=1e-6)


@ALL
def test_parameters_after_training_survive_reload(case, tmp_path):
    model = case.patched()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = case.inputs()
    before_training = {n: p.detach().clone() for n, p in adapter_params(model, model.prefix).items()}
    for _ in range(3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    trained = adapter_params(model, model.prefix)
    assert all(torch.isfinite(p).all() for p in trained.values())
    assert any(not torch.equal(before_training[n], p) for n, p in trained.items())
    # only adapter parameters changed
    base_now = {n: p for n, p in model.named_parameters() if model.prefix not in n}
    fresh = dict(case.base().named_parameters())
    for name, param in base_now.items():
        assert torch.equal(param, fresh[name.removeprefix("base_model.model.").replace(".base_layer", "")]), name
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path)
    reloaded = adapter_params(loaded, loaded.prefix)
    assert reloaded.keys() == trained.keys()
    for name, param in trained.items():
        assert torch.equal(param.detach(), reloaded[name]), name


@ALL
def test_low_cpu_mem_usage(case, tmp_path):
    """Meta-device adapter creation: PeftModel.from_pretrained, load_adapter and inject_adapter_in_model."""
    model = case.patched()
    x = case.inputs()
    expected = run(model, x)
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path, low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert torch.allclose(run(loaded, x), expected, atol=1e-6)
    result = loaded.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    assert result.missing_keys == []
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    loaded.set_adapter("other")
    assert torch.allclose(run(loaded, x), expected, atol=1e-6)

    fresh = case.base()
    peft.inject_adapter_in_model(case.config(), fresh, low_cpu_mem_usage=True)
    assert "meta" in {p.device.type for p in fresh.parameters()}
    assert {p.device.type for n, p in fresh.named_parameters() if "base_layer" in n} == {"cpu"}


@ALL
def test_load_multiple_adapters_have_no_missing_keys(case, tmp_path):
    case.patched().save_pretrained(tmp_path)
    model = peft.PeftModel.from_pretrained(case.base(), tmp_path)
    assert model.load_adapter(tmp_path, adapter_name="other").missing_keys == []
    assert model.load_adapter(tmp_path, adapter_name="yet-another").missing_keys == []


@ALL
def test_save_selected_adapter_ignores_adapters_whose_names_contain_it(case, tmp_path):
    model = case.patched()
    expected = len(peft.get_peft_model_state_dict(model))
    for name in ("default2", "other_default", "foodefault_bar", "efaul"):
        model.add_adapter(name, case.config())
    model.save_pretrained(tmp_path, selected_adapters=["default"])
    assert len(load_file(tmp_path / "adapter_model.safetensors")) == expected


@ALL
@pytest.mark.parametrize("is_trainable", [False, True])
def test_requires_grad_after_loading(case, is_trainable, tmp_path):
    """``is_trainable=False``: nothing requires grad. ``True``: exactly the adapter parameters. A second adapter
    loaded with load_adapter(..., is_trainable=True) is trainable too, as peft 0.21's LoRA does (the control; peft's
    main-branch suite expects it frozen until activated, which LoRA 0.21 does not do either)."""
    case.patched().save_pretrained(tmp_path)
    model = peft.PeftModel.from_pretrained(case.base(), tmp_path, is_trainable=is_trainable)

    def check(adapters: tuple[str, ...]) -> None:
        for name, param in model.named_parameters():
            is_adapter = any(f".{adapter}." in name for adapter in adapters)
            assert param.requires_grad == (is_trainable and is_adapter), name

    check(("default",))
    assert any(".default." in n for n, _ in model.named_parameters())
    model.load_adapter(tmp_path, adapter_name="other", is_trainable=is_trainable)  # loaded, not activated
    assert model.active_adapters == ["default"]
    check(("default", "other"))


# ----------------------------------------------------------------------------------------------- merging
@ALL
def test_merge_layers(case):
    model = case.patched()
    x = case.inputs()
    logits = run(model, x)
    if not case.mergeable:
        weights = {n: p.clone() for n, p in model.named_parameters()}
        with pytest.raises(ValueError, match="cannot be merged"):
            model.merge_adapter()
        with pytest.raises(ValueError, match="cannot be merged"):
            model.merge_and_unload()
        assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
        assert torch.equal(run(model, x), logits)
        return
    model.merge_adapter()
    merged = run(model, x)
    with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do"):
        model.merge_adapter()
    assert torch.allclose(run(model, x), merged, atol=1e-6)
    model.unmerge_adapter()
    unmerged = run(model, x)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in plain.modules())
    assert not hasattr(plain, "peft_config")
    merged_unloaded = run(plain, x)
    for other in (merged, unmerged, merged_unloaded):
        assert torch.allclose(logits, other, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged, run(case.base(), x), atol=1e-5)


@ALL
def test_safe_merge(case, tmp_path):
    skip_unless_mergeable(case)
    model = case.patched()
    x = case.inputs()
    logits = run(model, x)
    plain = model.merge_and_unload(safe_merge=True)
    assert torch.allclose(run(plain, x), logits, atol=1e-5, rtol=1e-5)
    save_file(plain.state_dict(), tmp_path / "model.safetensors")  # contiguous tensors


@ALL
def test_merge_with_nans_raises_peft_error(case):
    skip_unless_mergeable(case)
    model = case.patched()
    for _, param in adapter_params(model, model.prefix).items():
        param.data[0] = torch.nan  # needs every adapter parameter to have >= 1 dimension
    with pytest.raises(ValueError, match=NAN_MESSAGE):
        model.merge_and_unload(safe_merge=True)
    model = case.patched()
    for name, param in adapter_params(model, model.prefix).items():
        if "_A." in name or "_B." in name:
            param.data[0] = torch.inf
    with pytest.raises(ValueError, match=NAN_MESSAGE):
        model.merge_and_unload(safe_merge=True)


@ALL
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_forward_and_merge_in_half_precision(case, dtype):
    x = case.inputs().to(dtype)
    base = case.base().to(dtype)
    model = peft.get_peft_model(base, case.config())
    perturb(model, "default", 0)
    model.eval()
    assert torch.isfinite(run(model, x)).all()
    if not case.mergeable:
        return
    for safe in (False, True):
        model.merge_adapter(safe_merge=safe)
        assert torch.isfinite(run(model, x)).all()
        model.unmerge_adapter()
    assert run(model.merge_and_unload(), x).dtype == dtype


@ALL
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_adapter_dtype_autocast(case, dtype, tmp_path):
    """get_peft_model / add_adapter / from_pretrained / load_adapter, with and without autocast_adapter_dtype and
    low_cpu_mem_usage: adapters are float32 when autocast (peft's default), else the base dtype."""
    x = case.inputs().to(dtype)
    for autocast in (True, False):
        expected = torch.float32 if autocast else dtype
        model = peft.get_peft_model(case.base().to(dtype), case.config(), autocast_adapter_dtype=autocast)
        model.add_adapter("other", case.config(), autocast_adapter_dtype=autocast)
        assert {p.dtype for p in adapter_params(model, model.prefix).values()} == {expected}
        out = run(model, x)
        assert out.dtype == dtype and torch.isfinite(out).all()
        directory = tmp_path / f"autocast-{autocast}"
        model.save_pretrained(directory)
        for low_cpu_mem_usage in (False, True):
            loaded = peft.PeftModel.from_pretrained(
                case.base().to(dtype), directory, autocast_adapter_dtype=autocast, low_cpu_mem_usage=low_cpu_mem_usage
            )
            loaded.load_adapter(
                directory / "other", adapter_name="other", autocast_adapter_dtype=autocast,
                low_cpu_mem_usage=low_cpu_mem_usage,
            )
            assert {p.dtype for p in adapter_params(loaded, loaded.prefix).values()} == {expected}
            assert torch.allclose(run(loaded, x).float(), out.float(), atol=1e-6)


# ------------------------------------------------------------------------------------- adapters on and off
@ALL
def test_disable_and_enable_adapter(case):
    model = case.patched()
    x = case.inputs()
    base_out = run(case.base(), x)
    patched_out = run(model, x)
    assert not torch.allclose(base_out, patched_out, atol=1e-5)
    with model.disable_adapter():
        assert torch.allclose(run(model, x), base_out, atol=1e-6)
    assert torch.allclose(run(model, x), patched_out, atol=1e-6)


@ALL
def test_add_set_and_delete_adapters(case):
    model = case.patched()
    x = case.inputs()
    out_default = run(model, x)
    torch.manual_seed(7)
    model.add_adapter("delete_me", case.config())
    perturb(model, "delete_me", 7)
    model.set_adapter("delete_me")
    assert model.active_adapters == ["delete_me"]
    assert not torch.allclose(run(model, x), out_default, atol=1e-5)
    with pytest.warns(UserWarning, match="Adapter delete_me was active which is now deleted"):
        model.delete_adapter("delete_me")
    assert "delete_me" not in model.peft_config and model.active_adapters == ["default"]
    for module in model.modules():
        for attr in getattr(module, "adapter_layer_names", ()) + getattr(module, "other_param_names", ()):
            assert "delete_me" not in attrgetter(attr)(module)
    assert torch.allclose(run(model, x), out_default, atol=1e-6)
    with pytest.raises(ValueError, match="Adapter unknown-adapter does not exist"):
        model.delete_adapter("unknown-adapter")
    model.delete_adapter("default")
    assert model.active_adapters == [] and "default" not in model.peft_config
    assert torch.allclose(run(model.base_model, x), run(case.base(), x), atol=1e-6)


@ALL
def test_unload_gives_the_base_model_back(case):
    base = case.base()
    x = case.inputs()
    base_out = run(base, x)
    n_entries = len(base.state_dict())
    model = peft.get_peft_model(base, case.config())
    perturb(model, "default", 0)
    assert not torch.allclose(run(model, x), base_out, atol=1e-5)
    plain = model.unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in plain.modules())
    assert len(plain.state_dict()) == n_entries
    assert torch.equal(run(plain, x), base_out)


@ALL
def test_multiple_active_adapters(case):
    model = case.patched(adapter_name="adapter_1")
    x = case.inputs()
    base_out = run(case.base(), x)
    torch.manual_seed(3)
    model.add_adapter("adapter_2", case.config())
    perturb(model, "adapter_2", 3)
    out_1 = run(model, x)
    model.set_adapter("adapter_2")
    out_2 = run(model, x)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(["adapter_1", "adapter_2"])
    combined = run(model, x)
    for a, b in ((out_1, out_2), (out_1, combined), (out_2, combined)):
        assert not torch.allclose(a, b, atol=1e-5)
    if case.mergeable:
        model.merge_adapter()
        assert torch.allclose(run(model, x), combined, atol=1e-4)
        model.unmerge_adapter()
    with model.disable_adapter():
        assert torch.allclose(run(model, x), base_out, atol=1e-5)


@ALL
def test_training_reaches_only_adapter_parameters(case):
    model = case.patched()
    model.train()
    model(case.inputs()).sum().backward()
    for name, param in model.named_parameters():
        if model.prefix in name:
            assert param.requires_grad and param.grad is not None, name
        else:
            assert param.grad is None, name


# -------------------------------------------------------------------------------------------- config
@ALL
def test_config_construction_and_round_trip(case, tmp_path):
    config = case.config()
    model = peft.get_peft_model(case.base(), config)
    assert model.peft_config["default"] is config
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    data = config.to_dict()
    reread = peft.PeftConfig.from_pretrained(tmp_path)
    assert type(reread) is type(config)
    # fields peft itself rewrites on save: inference_mode (True), auto_mapping (custom models), sets -> lists
    # and weights_sha256, the digest of the weights file written beside the config
    rewritten = ("inference_mode", "auto_mapping", "peft_type", "target_modules", "exclude_modules", "weights_sha256")
    for key, value in data.items():
        if key in rewritten:
            continue
        assert getattr(reread, key) == value, key
        assert saved[key] == value, key
    assert saved["peft_type"] == config.peft_type.value
    assert sorted(reread.target_modules) == sorted(config.target_modules)
    assert reread.inference_mode  # saved for inference, as peft does
    if isinstance(config, LoraPatchConfig):
        digest = hashlib.sha256((tmp_path / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert saved["weights_sha256"] == digest
        assert config.weights_sha256 is None  # a record of the file, not of the live adapter

    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path, is_trainable=False, config=config)
    assert loaded.peft_config["default"] is config
    assert loaded.peft_config["default"].inference_mode


# --------------------------------------------------------------------------------------------- FSDP
@ALL
def test_every_adapter_parameter_has_a_dimension(case):
    """torch.distributed.fsdp (fully_shard) refuses scalar parameters; peft utilities index ``param[0]``."""
    model = case.patched()
    params = adapter_params(model, model.prefix)
    assert params
    assert all(p.dim() >= 1 for p in params.values()), {n: tuple(p.shape) for n, p in params.items()}


@pytest.fixture
def single_process_group():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@ALL
def test_fsdp_round_trip(case, single_process_group):
    """Shard every patched layer and the model with FSDP2 (fully_shard, one gloo process on CPU), train one step,
    gather the full state dict and load it into an unsharded model: same outputs."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    model = case.patched()
    x = case.inputs()
    expected = run(model, x)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            fully_shard(module)
    fully_shard(model)
    assert torch.allclose(run(model, x), expected, atol=1e-6)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x).square().mean().backward()
    optimizer.step()
    model.eval()
    trained = run(model, x)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    adapter_state = peft.get_peft_model_state_dict(model, state_dict=state)
    assert adapter_state and all(v.dim() >= 1 for v in adapter_state.values())

    fresh = peft.get_peft_model(case.base(), case.config())
    result = peft.set_peft_model_state_dict(fresh, adapter_state)
    assert not result.unexpected_keys
    assert torch.allclose(run(fresh.eval(), x), trained, atol=1e-6)


# ------------------------------------------------------------------------------- the fixes (lora-patch)
def _gate_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in tensors if ".lora_patch_gate." in k]


@pytest.mark.parametrize("gate", ["basic", "input_adaptive"])
@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_old_files_with_0d_gates_still_load(gate, low_cpu_mem_usage, tmp_path):
    case = Case("conv2d", "lora_patch", gate, "two_branch")
    model = case.patched()
    x = case.inputs()
    expected = run(model, x)
    model.save_pretrained(tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    tensors = load_file(file)
    assert _gate_keys(tensors) and all(tensors[k].shape == (1,) for k in _gate_keys(tensors))
    # rewrite the file as the package wrote it before gate scalars had a dimension
    old_style = {k: (v.reshape(()) if k in _gate_keys(tensors) else v) for k, v in tensors.items()}
    save_file(old_style, file)
    assert all(load_file(file)[k].dim() == 0 for k in _gate_keys(tensors))

    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
    assert torch.allclose(run(loaded, x), expected, atol=1e-6)
    for name, param in adapter_params(loaded, "lora_patch_gate").items():
        assert param.shape == (1,) and param.device.type == "cpu", name
    result = loaded.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=low_cpu_mem_usage)
    assert result.missing_keys == [] and not result.unexpected_keys


def test_gate_values_are_shaped_one():
    config = LoraPatchConfig(gate="basic", gate_init=-1.0)
    model = peft.get_peft_model(ConvNet(), config)
    logits = adapter_params(model, "lora_patch_gate")
    assert len(logits) == 2
    for param in logits.values():
        assert param.shape == (1,) and param.item() == -1.0
    adaptive = peft.get_peft_model(LinearNet(), LoraPatchConfig(gate="input_adaptive", include_linear=True))
    for name, param in adapter_params(adaptive, "lora_patch_gate").items():
        assert param.shape == (1,), name


@pytest.mark.parametrize("gate", ["none", "basic"])
def test_safe_merge_refuses_before_merging_any_layer(gate):
    case = Case("conv2d", "lora_patch", gate, "fused")
    model = case.patched()
    x = case.inputs()
    expected = run(model, x)
    base_weights = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.base_model.model.conv1.lora_patch_B["default"].weight.data[0, 0] = torch.inf  # only the last layer
    for merge in (lambda: model.merge_adapter(safe_merge=True), lambda: model.merge_and_unload(safe_merge=True)):
        with pytest.raises(ValueError, match=NAN_MESSAGE):
            merge()
        assert all(torch.equal(p, base_weights[n]) for n, p in model.named_parameters() if "base_layer" in n)
        assert not any(m.merged_adapters for m in model.modules() if isinstance(m, GatedLoraLayer))
    model.base_model.model.conv1.lora_patch_B["default"].weight.data[0, 0] = 0.0
    model.merge_adapter(safe_merge=True)  # a finite patch still merges
    assert torch.isfinite(run(model, x)).all() and not torch.allclose(run(model, x), expected, atol=0)


def test_discovered_targets_are_written_into_the_users_config():
    config = LoraPatchConfig(include_linear=True)
    model = peft.get_peft_model(TransposeNet(), config)
    assert model.peft_config["default"] is config
    assert config.target_modules == ["conv", "up"]
    # the same object on another architecture: that model gets its own copy; the first config stays true
    linear = LinearNet()
    linear_fingerprint = base_fingerprint(linear, ["lin0", "lin1"])  # before patching
    other = peft.get_peft_model(linear, config)
    assert config.target_modules == ["conv", "up"]
    assert other.peft_config["default"] is not config
    assert other.peft_config["default"].target_modules == ["lin0", "lin1"]
    assert other.peft_config["default"].base_fingerprint == linear_fingerprint != config.base_fingerprint


def test_failed_injection_leaves_the_users_config_unchanged():
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, groups=2)

    config = LoraPatchConfig()
    with pytest.raises(ValueError, match="grouped convolution"):
        peft.get_peft_model(Grouped(), config)
    assert config.target_modules is None and config.base_fingerprint is None


def test_fingerprint_is_stamped_at_injection_and_saved_by_plain_save_pretrained(tmp_path):
    case = Case("convtranspose2d", "lora_patch", "basic", "fused")
    base = case.base()
    expected = base_fingerprint(case.base(), ["conv", "up"])  # on an unpatched copy
    config = case.config()
    model = peft.get_peft_model(base, config)
    assert config.base_fingerprint == expected
    assert expected != base_fingerprint(case.base(), ["up"])  # it covers the targeted layers
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_fingerprint"] == expected

    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path)
    assert loaded.peft_config["default"].base_fingerprint == expected  # a loaded patch keeps its fingerprint

    other_base = case.base()
    with torch.no_grad():
        other_base.up.weight[0, 0, 0, 0] += 1.0
    with pytest.raises(FingerprintMismatchError):
        peft.PeftModel.from_pretrained(other_base, tmp_path)

    # the documented way to start a new patch on another base from a loaded config
    other_expected = base_fingerprint(other_base, ["conv", "up"])  # before patching
    reused = peft.PeftConfig.from_pretrained(tmp_path)
    reused.base_fingerprint = None
    new_model = peft.get_peft_model(other_base, reused)
    assert reused.base_fingerprint == other_expected != expected
    assert torch.isfinite(run(new_model, case.inputs())).all()


def test_reusing_a_config_object_on_another_base_copies_instead_of_lying():
    """One LoraPatchConfig passed to two bases with different weights (a common pattern: a module-level config):
    each model records its own fingerprint; the first model's config is not rewritten."""
    config = LoraPatchConfig(r=2)
    torch.manual_seed(1)
    first = peft.get_peft_model(ConvNet(), config)
    torch.manual_seed(2)
    second = peft.get_peft_model(ConvNet(), config)
    first_fp = first.peft_config["default"].base_fingerprint
    second_fp = second.peft_config["default"].base_fingerprint
    assert first.peft_config["default"] is config and first_fp == config.base_fingerprint
    assert second.peft_config["default"] is not config and second_fp != first_fp
    torch.manual_seed(2)
    assert second_fp == base_fingerprint(ConvNet(), ["conv0", "conv1"])
    # the same weights again: nothing to change, the object is shared (as peft does)
    torch.manual_seed(1)
    third = peft.get_peft_model(ConvNet(), config)
    assert third.peft_config["default"] is config


def test_no_fingerprint_for_meta_weights():
    with torch.device("meta"):
        base = ConvNet()
    config = LoraPatchConfig(r=2)
    peft.get_peft_model(base, config)
    assert config.base_fingerprint is None and config.target_modules == ["conv0", "conv1"]
