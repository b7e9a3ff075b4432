"""Naming defenses: built-ins, module:attribute, file paths; the protocol wrapper and its output checks."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.defenses import CMUA, PGD, AntiForgery, Defense
from lora_patch_adapters.defenses.plugins import (
    BUILTIN_DEFENSES,
    DefenseLoadError,
    DefenseOutputError,
    PluginDefense,
    UniversalPluginDefense,
    builtin_defense,
    load_defense,
)
from lora_patch_adapters.evaluation import evaluate_defense

PLUGIN_SOURCE = textwrap.dedent('''
    import torch
    from lora_patch_adapters.defenses import Defense

    class Shift(Defense):
        name = "shift"
        def __init__(self, eps=0.05, seed=0):
            self.eps, self.seed = eps, seed
        def _protect(self, x, editor, conditions):
            return x + self.eps

    class Duck:
        """Not a Defense subclass, but follows the protocol."""
        def __init__(self, eps=0.05):
            self.eps = eps
        def protect(self, x, editor, condition):
            return x - self.eps

    def halfway(x, editor, condition):
        return x + 0.01

    halfway.eps = 0.02

    def too_far(x, editor, condition):
        return x + 0.2

    def wrong_shape(x, editor, condition):
        return x[:, :1]

    def nan(x, editor, condition):
        return x * float("nan")

    def not_a_tensor(x, editor, condition):
        return x.tolist()

    def make():
        return Duck(eps=0.03)

    def needs_two(a, b):
        return a

    seen = []

    def spy(x, editor, condition):
        seen.append((x.shape, type(editor).__name__, condition))
        return x

    class Universal:
        eps = 0.05
        def __init__(self):
            self.delta = None
            self.fitted_on = None
        def fit(self, data, editors):
            images, _ = data
            self.delta = torch.full_like(images[:1], 0.04)
            self.fitted_on = editors
        def protect(self, x, editor, condition):
            return x + self.delta
''')


@pytest.fixture(scope="module")
def testbed():
    editor = lpa.load_editor("testbed")
    for p in editor.generator.parameters():
        p.requires_grad_(False)
    images, labels = lpa.testbed_faces(2, seed=0, split="test")
    return editor, images, labels


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_defenses.py"
    path.write_text(PLUGIN_SOURCE)
    return path


def test_builtins_by_name_with_field_settings():
    assert BUILTIN_DEFENSES == ("pgd", "ifgsm", "fgsm", "cmua", "anti_forgery", "pgd_eot")
    pgd = load_defense("pgd", eps=0.04, seed=3)
    assert isinstance(pgd, PGD) and (pgd.eps, pgd.steps, pgd.seed) == (0.04, 10, 3)
    assert pgd.step_size == pytest.approx(0.008)
    assert isinstance(load_defense("cmua"), CMUA)
    forgery = builtin_defense("anti_forgery")
    assert isinstance(forgery, AntiForgery) and forgery.steps == 100
    assert builtin_defense("anti_forgery", steps=7).steps == 7
    with pytest.raises(DefenseLoadError, match="module:attribute"):
        builtin_defense("nope")


def test_file_attribute_defense_subclass_built_with_eps_and_seed(plugin_file, testbed):
    editor, images, labels = testbed
    shift = load_defense(f"{plugin_file}:Shift", eps=0.03, seed=5)
    assert isinstance(shift, Defense) and type(shift).__name__ == "Shift" and (shift.eps, shift.seed) == (0.03, 5)
    out = shift.protect(images, editor, editor.conditions(labels)[0])
    assert torch.allclose(out, (images + 0.03).clamp(-1, 1))


def test_protocol_class_function_factory_and_declared_eps(plugin_file, testbed):
    editor, images, labels = testbed
    condition = editor.conditions(labels)[0]
    duck = load_defense(f"{plugin_file}:Duck", eps=0.04)
    assert isinstance(duck, PluginDefense) and duck.eps == 0.04 and duck.name == "Duck"
    assert torch.allclose(duck.protect(images, editor, condition), (images - 0.04).clamp(-1, 1))
    halfway = load_defense(f"{plugin_file}:halfway")
    assert halfway.eps == 0.02 and halfway.name == "halfway"  # the function's own eps wins over the default
    assert torch.allclose(halfway.protect(images, editor, condition), (images + 0.01).clamp(-1, 1))
    made = load_defense(f"{plugin_file}:make")
    assert isinstance(made, PluginDefense) and made.eps == 0.03


def test_module_attribute_from_python_path(plugin_file, monkeypatch, testbed):
    monkeypatch.syspath_prepend(str(plugin_file.parent))
    editor, images, labels = testbed
    spy = load_defense("my_defenses:spy")
    conditions = editor.conditions(labels)
    out = spy.protect(images, editor, conditions)
    import my_defenses

    assert torch.equal(out, images)
    shape, editor_type, condition = my_defenses.seen[-1]
    assert shape == images.shape and editor_type == type(editor).__name__ and condition is conditions


def test_file_without_attribute_picks_the_single_defense_class(tmp_path):
    path = tmp_path / "one.py"
    path.write_text("from lora_patch_adapters.defenses.pgd import PGD\n"
                    "class Mine(PGD):\n    name = 'mine'\n")
    defense = load_defense(str(path))
    assert type(defense).__name__ == "Mine" and defense.name == "mine"  # the imported PGD does not count
    function_only = tmp_path / "fn.py"
    function_only.write_text("def protect(x, editor, condition):\n    return x\n")
    assert isinstance(load_defense(str(function_only)), PluginDefense)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(DefenseLoadError, match="name the attribute"):
        load_defense(str(empty))


@pytest.mark.parametrize("spec, message", [
    ("missing.py:thing", "not found"),
    ("no_such_module_xyz:thing", "Cannot import"),
    ("pgdd", "Unknown defense"),
    ("", "non-empty"),
])
def test_load_errors_name_the_problem(spec, message):
    with pytest.raises(DefenseLoadError, match=message):
        load_defense(spec)


def test_attribute_errors(plugin_file, tmp_path):
    with pytest.raises(DefenseLoadError, match="has no attribute 'Nope'"):
        load_defense(f"{plugin_file}:Nope")
    with pytest.raises(DefenseLoadError, match="does not follow the defense protocol"):
        load_defense(f"{plugin_file}:needs_two")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(DefenseLoadError, match="RuntimeError: boom"):
        load_defense(f"{broken}:x")


@pytest.mark.parametrize("attribute, message", [
    ("too_far", "over its budget eps=0.05"), ("wrong_shape", "same shape"), ("nan", "NaN"),
    ("not_a_tensor", "not a tensor"),
])
def test_bad_outputs_are_errors_not_clipped(plugin_file, testbed, attribute, message):
    editor, images, labels = testbed
    defense = load_defense(f"{plugin_file}:{attribute}")
    with pytest.raises(DefenseOutputError, match=message):
        defense.protect(images, editor, editor.conditions(labels)[0])


def test_universal_plugin_is_fitted_by_the_evaluation_on_a_copy(plugin_file, testbed):
    editor, images, labels = testbed
    universal = load_defense(f"{plugin_file}:Universal")
    assert isinstance(universal, UniversalPluginDefense)
    result = evaluate_defense(universal, editor, images, labels, fit_data=(images, labels))
    assert result.perturbation["linf_max"] == pytest.approx(0.04, abs=1e-6)
    assert universal._source.delta is None  # the audited object itself is untouched
    clone = copy.deepcopy(universal)
    clone.fit((images, labels), editor)
    assert clone._source.fitted_on is editor and universal._source.fitted_on is None


def test_example_file_defenses_load_and_protect(testbed):
    from pathlib import Path

    editor, images, labels = testbed
    example = Path(__file__).resolve().parents[2] / "examples" / "custom_defense.py"
    momentum = load_defense(f"{example}:MomentumPGD", eps=0.05)
    assert momentum.name == "momentum_pgd"
    condition = editor.conditions(labels)[0]
    protected = momentum.protect(images, editor, condition)
    assert (protected - images).abs().max() <= 0.05 + 1e-6
    with torch.no_grad():
        change = (editor.edit(protected, condition) - editor.edit(images, condition)).pow(2).mean()
    noise = load_defense(f"{example}:random_noise")
    with torch.no_grad():
        noise_change = (editor.edit(noise.protect(images, editor, condition), condition)
                        - editor.edit(images, condition)).pow(2).mean()
    assert change > 10 * noise_change
