"""The shipped testbed editor and the script that trains it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import lora_patch_adapters as lpa
from lora_patch_adapters.data import TESTBED_ATTRIBUTES, testbed_edits, testbed_faces
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.generators import StarGANEditor, load_editor, stargan_conditions
from lora_patch_adapters.generators.testbed import build_editor, testbed_record
from lora_patch_adapters.training.testbed_editor import psnr_01, save_editor, train


def _psnr(a, b):
    mse = F.mse_loss((a.clamp(-1, 1) + 1) / 2, (b + 1) / 2).item()
    return 10 * math.log10(1 / mse)


def test_shipped_editor_loads_in_one_call_with_its_record():
    editor = load_editor("testbed")
    assert isinstance(editor, StarGANEditor) and editor.name == "testbed"
    assert editor.attribute_names == TESTBED_ATTRIBUTES and editor.generator_mode == "train"
    record = testbed_record()
    assert record["command"].startswith("python -m lora_patch_adapters.training.testbed_editor")
    assert isinstance(record["seed"], int) and record["held_out"]["psnr_edits"] >= 25
    assert sum(p.numel() for p in editor.generator.parameters()) < 2_000_000  # a few MB at most


def test_shipped_editor_edits_held_out_faces_well():
    editor = load_editor("testbed")
    images, labels = testbed_faces(40, seed=7, split="test")
    targets = editor.conditions(labels)
    truths = testbed_edits(40, targets, seed=7, split="test")
    edited, wanted, inputs = [], [], []
    with torch.no_grad():
        for target, truth in zip(targets, truths):
            changed = (target != labels).any(1)
            edited.append(editor.edit(images[changed], target[changed]))
            wanted.append(truth[changed])
            inputs.append(images[changed])
    edit_psnr = _psnr(torch.cat(edited), torch.cat(wanted))
    identity_psnr = _psnr(torch.cat(inputs), torch.cat(wanted))
    assert edit_psnr >= 25.0
    assert edit_psnr >= identity_psnr + 3.0  # an editor, not a copier


def test_pgd_disrupts_the_shipped_editor_like_a_gan():
    """The default testbed must be a meaningful target: PGD at eps 0.05 disrupts >= 80% of samples."""
    editor = load_editor("testbed")
    editor.generator.requires_grad_(False)
    images, labels = testbed_faces(8, seed=11, split="test")
    disrupted = []
    for condition in editor.conditions(labels):
        protected = PGD(eps=0.05, steps=10, step_size=0.01, seed=0).protect(images, editor, condition)
        with torch.no_grad():
            mse = (editor.edit(protected, condition) - editor.edit(images, condition)).square().mean(dim=(1, 2, 3))
        disrupted.append(mse > 0.05)
    assert torch.cat(disrupted).float().mean() >= 0.8
    assert testbed_record()["held_out"]["pgd_success_rate"] >= 0.8


def test_testbed_conditions_and_patch():
    editor = load_editor("testbed")
    images, labels = testbed_faces(3, seed=1)
    targets = editor.conditions(labels)
    assert [t.tolist() for t in targets] == [t.tolist() for t in stargan_conditions(labels, TESTBED_ATTRIBUTES)]
    with torch.no_grad():
        before = editor.edit(images, targets[0])
        lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig())
        assert torch.equal(editor.edit(images, targets[0]), before)


def test_training_script_is_deterministic_and_round_trips(tmp_path):
    arch = {"conv_dim": 4, "repeat_num": 1}
    first, record = train(steps=3, batch=2, size=32, seed=5, arch=arch, log_every=0, fragility_steps=2)
    second, _ = train(steps=3, batch=2, size=32, seed=5, arch=arch, log_every=0, fragility_steps=2)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    record["command"] = "test"
    path = tmp_path / "editor.safetensors"
    save_editor(first, record, str(path), half=False)
    editor = build_editor(checkpoint=path)
    assert testbed_record(path)["arch"]["conv_dim"] == 4
    x, labels = testbed_faces(2, size=32)
    with torch.no_grad():
        first.train()
        assert torch.equal(editor.edit(x, labels), first(x, labels))


def test_record_psnr_is_the_batch_psnr_on_the_unit_range():
    a = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    b = (a + 0.2).clamp(-1, 1)
    mse01 = (((a + 1) / 2 - (b + 1) / 2) ** 2).mean().item()
    assert math.isclose(psnr_01(a, b), 10 * math.log10(1 / mse01), rel_tol=1e-5)
    assert psnr_01(a, a) == 120.0  # identical batches: capped, not infinite
