"""EnsembleEditor: a defense computed against several generators at once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lora_patch_adapters as lpa
from lora_patch_adapters.defenses.base import clean_edits, disruption_loss
from lora_patch_adapters.generators import wrap
from lora_patch_adapters.generators.ensemble import EnsembleEditor


def _members():
    a = lpa.load_editor("testbed")
    b = lpa.load_editor("testbed")
    with torch.no_grad():
        for p in b.generator.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return a, b


def test_edit_concatenates_members_and_loss_is_their_mean():
    a, b = _members()
    ensemble = EnsembleEditor([a, b])
    x, labels = lpa.testbed_faces(2, seed=0, split="test")
    conditions = ensemble.conditions(labels)
    assert len(conditions) == len(a.conditions(labels))
    with torch.no_grad():
        out = ensemble.edit(x, conditions[0])
        assert out.shape == (2, 6, 64, 64)
        assert torch.equal(out[:, :3], a.edit(x, conditions[0])) and torch.equal(out[:, 3:], b.edit(x, conditions[0]))
        x_adv = (x + 0.05).clamp(-1, 1)
        loss = disruption_loss(ensemble, x_adv, conditions[:1], clean_edits(ensemble, x, conditions[:1]))
        mean = (F.mse_loss(a.edit(x_adv, conditions[0]), a.edit(x, conditions[0]))
                + F.mse_loss(b.edit(x_adv, conditions[0]), b.edit(x, conditions[0]))) / 2
    assert loss.item() == pytest.approx(mean.item(), rel=1e-5)


def test_members_must_share_a_condition_format():
    a = lpa.load_editor("testbed")
    other = wrap(torch.nn.Conv2d(3, 3, 1), lambda g, x, c: g(x), lambda labels: [None], attribute_names=("a",))
    with pytest.raises(ValueError, match="share one condition format"):
        EnsembleEditor([a, other])
    with pytest.raises(TypeError, match="non-empty list"):
        EnsembleEditor([])
