"""Generator checkpoints whose values are unfit (NaN, Inf, integer or bool where float weights belong, values beyond
the model's float type) are refused with the key named, before anything reaches the model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lora_patch_adapters.generators import CheckpointError, StarGANGenerator, load_editor, read_checkpoint
from lora_patch_adapters.generators.checkpoints import load_into, pick_state_dict

NAME = "the tiny StarGAN"


def tiny() -> StarGANGenerator:
    torch.manual_seed(0)
    return StarGANGenerator(conv_dim=4, c_dim=5, repeat_num=1)  # main.0.weight [4, 8, 7, 7]: 1568 values


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def source() -> dict[str, torch.Tensor]:
    """A good state dict for :func:`tiny`, different from the model's own weights (seed 1)."""
    torch.manual_seed(1)
    return {k: v.detach().clone() for k, v in StarGANGenerator(conv_dim=4, c_dim=5, repeat_num=1).state_dict().items()}


def with_nan(state):
    state["main.0.weight"][0, 0, 0, 0] = float("nan")
    return state


def with_inf(state):
    state["main.0.weight"][1, 2, 3, 4] = float("-inf")
    state["main.0.weight"][2, 2, 3, 4] = float("inf")
    return state


def with_both(state):
    return with_inf(with_nan(state))


def as_integers(state):
    state["main.0.weight"] = (state["main.0.weight"] * 100).round().long()
    return state


def as_bools(state):
    state["main.0.weight"] = state["main.0.weight"] > 0
    return state


def nan_running_var(state):
    state["main.1.running_var"][2] = float("nan")
    return state


@pytest.mark.parametrize(
    "corrupt, pattern",
    [
        (with_nan, r'"main\.0\.weight": holds NaN \(1 of 1568 values\)'),
        (with_inf, r'"main\.0\.weight": holds Inf \(2 of 1568 values\)'),
        (with_both, r'"main\.0\.weight": holds NaN \(1 of 1568 values\) and Inf \(2 of 1568 values\)'),
        (as_integers, r'"main\.0\.weight": integer values \(torch\.int64\) where float weights are expected'),
        (as_bools, r'"main\.0\.weight": bool values \(torch\.bool\) where float weights are expected'),
        (nan_running_var, r'"main\.1\.running_var": holds NaN \(1 of 4 values\)'),
    ],
    ids=["nan", "inf", "nan-and-inf", "int64", "bool", "nan-buffer"],
)
def test_unfit_values_are_refused_with_the_key_and_the_model_is_unchanged(corrupt, pattern):
    model = tiny()
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=pattern) as caught:
        load_into(model, corrupt(source()), NAME, "G.ckpt")
    message = str(caught.value)
    assert message.startswith(f"'G.ckpt' cannot be loaded into {NAME}: ") and "the model is unchanged" in message
    assert "\n" not in message
    assert_unchanged(model, before)
    load_into(model, source(), NAME, "G.ckpt")  # a good file still loads afterwards
    assert torch.equal(model.state_dict()["main.0.weight"], source()["main.0.weight"])


def test_many_bad_keys_are_summarised():
    state = source()
    floats = [k for k, v in state.items() if v.is_floating_point()]
    for key in floats:
        state[key] = state[key].long()
    with pytest.raises(CheckpointError, match=rf"; and {len(floats) - 3} more\. Nothing was loaded"):
        load_into(tiny(), state, NAME, "G.ckpt")


def test_values_beyond_a_half_precision_model_are_refused():
    model = tiny().half()
    before = snapshot(model)
    state = source()
    state["main.3.weight"][0, 0, 0, 0] = 1e6  # float16 tops out at 65504: it would load as Inf
    with pytest.raises(CheckpointError, match=r'"main\.3\.weight": holds 1e\+06, beyond torch\.float16'):
        load_into(model, state, NAME, "G.ckpt")
    assert_unchanged(model, before)
    state["main.3.weight"][0, 0, 0, 0] = 60000.0  # representable: fine
    load_into(model, state, NAME, "G.ckpt")
    assert model.state_dict()["main.3.weight"][0, 0, 0, 0].item() == 60000.0


def test_fit_files_load_integer_counters_and_half_precision_included():
    state = source()
    assert state["main.1.num_batches_tracked"].dtype == torch.int64  # an integer buffer is not a weight
    state["main.1.num_batches_tracked"] = torch.tensor(7)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    model = tiny()
    load_into(model, half, NAME, "G.ckpt")
    loaded = model.state_dict()
    assert loaded["main.0.weight"].dtype == torch.float32
    assert torch.equal(loaded["main.0.weight"], state["main.0.weight"].half().float())
    assert loaded["main.1.num_batches_tracked"].item() == 7
    without = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_into(model, without, NAME, "G.ckpt")
    assert torch.equal(model.state_dict()["main.0.weight"], state["main.0.weight"])


def test_files_read_with_torch_load_and_safetensors_are_checked(tmp_path):
    ckpt = tmp_path / "200000-G.ckpt"
    torch.save(with_nan(source()), ckpt)
    model = tiny()
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r'200000-G\.ckpt.*"main\.0\.weight": holds NaN'):
        load_into(model, pick_state_dict(read_checkpoint(ckpt), None, NAME, ckpt), NAME, ckpt)
    st = tmp_path / "weights.safetensors"
    save_file(as_integers(source()), str(st))
    with pytest.raises(CheckpointError, match=r'weights\.safetensors.*"main\.0\.weight": integer values'):
        load_into(model, pick_state_dict(read_checkpoint(st), None, NAME, st), NAME, st)
    assert_unchanged(model, before)


def test_an_editor_file_with_nan_is_refused_through_load_editor(tmp_path):
    arch = {"conv_dim": 4, "c_dim": 5, "repeat_num": 1}
    metadata = {"lora_patch_testbed": json.dumps({"arch": arch})}
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_file(source(), str(good), metadata=metadata)
    save_file(with_nan(source()), str(bad), metadata=metadata)
    editor = load_editor("testbed", checkpoint=good)
    assert torch.equal(editor.generator.state_dict()["main.0.weight"], source()["main.0.weight"])
    with pytest.raises(CheckpointError, match=r'bad\.safetensors.*"main\.0\.weight": holds NaN \(1 of 1568'):
        load_editor("testbed", checkpoint=bad)
