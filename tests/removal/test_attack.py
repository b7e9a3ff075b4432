"""Removal attacks: each lowers the warning's visibility on an un-hardened defended generator, trains only itself,
is deterministic, and refuses bad settings with one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lora_patch_adapters.evaluation.watermark import watermark_visibility
from lora_patch_adapters.removal import (
    ATTACKS,
    RemovalAttack,
    RemovalTrainer,
    attacker_labels,
    get_attack,
    make_optimizer,
    warning_mask,
)

from .conftest import MARK, faces


def visible_rate(editor, base, x, labels) -> float:
    rates = []
    with torch.no_grad():
        for condition in base.conditions(labels):
            result = watermark_visibility(editor.edit(x, condition), base.edit(x, condition), MARK)
            rates.append(result["visible"].float())
    return torch.cat(rates).mean().item()


def _train(name, defended, epochs=6, lr=0.05):
    x, _ = faces(32, seed=5)
    labels = attacker_labels(32, 2, seed=0)
    mask = warning_mask(defended, x, labels)
    attack = dataclasses.replace(get_attack(name), lr=lr)  # the tiny generator needs larger steps than a real one
    return RemovalTrainer(attack, defended, mask, seed=0).train(x, labels, epochs=epochs)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_attack_lowers_the_visibility_of_an_unhardened_warning(name, base_editor, defended):
    x, labels = faces(16, seed=9)
    before = visible_rate(defended, base_editor, x, labels)
    assert before == 1.0
    result = _train(name, defended)
    assert result.steps == 6 * 8
    after = visible_rate(result.editor, base_editor, x, labels)
    assert after < 0.5
    assert result.losses[-1] < result.losses[0]


@pytest.mark.parametrize("name", ["inpaint", "full"])
def test_a_removal_trains_only_itself(name, defended):
    before = {k: v.clone() for k, v in defended.generator.state_dict().items()}
    result = _train(name, defended, epochs=1)
    after = defended.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the defended generator is never modified
    attacked = result.editor.generator
    if name == "inpaint":  # a new patch: the defended weights under it are untouched, the patch moved
        state = attacked.state_dict()
        base_keys = [k for k in state if "lora_patch" not in k]
        assert base_keys
        for key in base_keys:
            original = key.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(state[key], before[original]), key
        assert any(k.endswith("lora_patch_B.default.weight") and state[k].abs().sum() > 0 for k in state)
    else:
        assert not torch.equal(attacked.mix.weight, before["mix.weight"])
    assert not any(p.requires_grad for p in attacked.parameters())


def test_removal_is_deterministic(defended):
    first = _train("unseen", defended, epochs=1)
    second = _train("unseen", defended, epochs=1)
    assert first.losses == second.losses
    a, b = first.editor.generator.state_dict(), second.editor.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_global_random_stream_is_left_alone(defended):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    _train("inpaint", defended, epochs=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("field, value, message", [
    ("method", "prune", "method must be one of"),
    ("optimizer", "lion", "optimizer must be one of"),
    ("fill", "magic", "fill must be one of"),
    ("rank", 0, "rank must be a positive integer"),
    ("lr", 2.0, "lr must be"),
    ("name", " ", "name must be a non-empty string"),
    ("mask", "global", "mask must be one of"),
])
def test_bad_settings_are_one_line_errors(field, value, message):
    with pytest.raises(ValueError, match=message) as info:
        RemovalAttack(**{field: value})
    assert "\n" not in str(info.value)


def test_unknown_attack_names_the_known_ones():
    with pytest.raises(ValueError, match="inpaint, inpaint_fill, full, unseen, inpaint_shared, unseen_shared"):
        get_attack("erase")


def test_optimisers():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer("adam", p, 1e-3), torch.optim.Adam)
    assert make_optimizer("adamw", p, 1e-3).defaults["weight_decay"] == 0.01
    assert make_optimizer("sgd", p, 1e-3).defaults["momentum"] == 0.9


def test_the_unseen_attack_is_outside_the_hardening_defaults():
    from lora_patch_adapters.training.hardening import HardeningConfig

    unseen, sampled = ATTACKS["unseen"], HardeningConfig()
    assert unseen.rank not in sampled.ranks
    assert unseen.optimizer not in sampled.optimizers
    assert ATTACKS["full"].method == "full"  # the hardening simulates LoRA attackers only
