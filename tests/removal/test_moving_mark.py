"""A mark that moves with the target condition (``Watermark(vary=...)``): one shared mask cannot be estimated, the
attacker's per-condition masks find it, and the audit scores each edit against its own mark."""

from __future__ import annotations

import torch

from lora_patch_adapters.audit.budgets import parse_budgets
from lora_patch_adapters.audit.defensive import DefensiveAuditConfig, run_defensive_audit
from lora_patch_adapters.removal import attacker_labels, edit_all, estimate_mask, mask_iou, warning_mask

from .conftest import SIZE, VARIED, faces, stamp_editor


def test_per_condition_masks_find_a_moving_mark_that_a_shared_mask_misses():
    defended = stamp_editor(3.0, moving=True)
    x, labels = faces(48, seed=2)
    masks = warning_mask(defended, x, labels)
    assert masks.shape == (2, 1, SIZE, SIZE)
    for slot in (0, 1):
        assert mask_iou(masks[slot], VARIED.footprint(SIZE, SIZE, margin=1, slot=slot)) >= 0.7
    with torch.no_grad():
        outputs, inputs = edit_all(defended, x, labels)
    shared = estimate_mask(outputs, inputs)
    assert max(mask_iou(shared, VARIED.footprint(SIZE, SIZE, margin=1, slot=t)) for t in (0, 1)) < 0.7


def test_the_audit_scores_each_edit_against_its_own_mark(tmp_path):
    config = DefensiveAuditConfig(budgets=parse_budgets("4"), attacks=["inpaint"], eval_images=4, grid_images=2)
    results = run_defensive_audit(config, stamp_editor(0.0, moving=True), stamp_editor(3.0, moving=True), VARIED,
                                  faces(8, seed=3)[0], faces(4, seed=9), str(tmp_path), echo=lambda _: None)
    assert results["visible_before"] == 1.0
    assert results["mask_iou"] >= 0.6
    assert attacker_labels(4, 2).shape == (4, 2)


def test_a_shared_mask_is_one_mask_for_every_edit():
    defended = stamp_editor(3.0)
    x, labels = faces(32, seed=2)
    shared = warning_mask(defended, x, labels, shared=True)
    assert shared.shape == (1, 1, SIZE, SIZE)
    with torch.no_grad():
        outputs, inputs = edit_all(defended, x, labels)
    assert torch.equal(shared, estimate_mask(outputs, inputs))
