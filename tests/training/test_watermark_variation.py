"""Per-output variation of the warning (``Watermark(vary=...)``): placement per target condition, targets and
visibility per row, the trainer's rows, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from lora_patch_adapters.evaluation import watermark_visibility
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import TrainingConfig, Watermark, WatermarkTrainer
from lora_patch_adapters.training.watermark import VARIED_OPACITIES, VARIED_POSITIONS
from lora_patch_adapters.tuner.config import LoraPatchConfig
from tests.removal.conftest import faces, stamp_editor
from tests.training.conftest import PatternAttack

MOVING = Watermark(text="", size=0.3, vary=("position",))


def test_the_mark_moves_to_another_corner_with_the_target_condition():
    masks = [MOVING.pattern(32, 32, slot=t)[1] for t in range(5)]
    for t in range(4):
        assert MOVING.placement(t) == (VARIED_POSITIONS[t], 1.0)
        for u in range(t):
            assert float((masks[t] * masks[u]).sum()) == 0  # four corners, no overlap
    assert torch.equal(masks[4], masks[0])  # the cycle of four corners starts again
    top_left = masks[1][..., :16, :16].sum()
    assert top_left == masks[1].sum() > 0


def test_opacity_scales_the_pattern_with_the_condition():
    faded = Watermark(text="", vary=("opacity",))
    assert faded.placement(1) == ("bottom-right", VARIED_OPACITIES[1])
    assert torch.allclose(faded.pattern(32, 32, slot=1)[0], VARIED_OPACITIES[1] * faded.pattern(32, 32, slot=0)[0])
    both = Watermark(text="", vary=("position", "opacity"))
    assert both.placement(4) == ("bottom-right", VARIED_OPACITIES[1]) and both.placement(3)[1] == 1.0


def test_targets_and_visibility_follow_each_rows_condition():
    y_ref = torch.zeros(3, 3, 32, 32)
    slots = [0, 1, 2]
    target = MOVING.target(y_ref, slots)
    for row, slot in enumerate(slots):
        assert torch.equal(target[row : row + 1], MOVING.target(y_ref[:1], [slot]))
    assert torch.equal(MOVING.target(y_ref), MOVING.target(y_ref, [0, 0, 0]))
    seen = watermark_visibility(target, y_ref, MOVING, slots)["visible"]
    assert seen.all()
    assert not watermark_visibility(target, y_ref, MOVING, 0)["visible"][1:].any()  # looked for in the wrong corner
    with pytest.raises(ValueError, match="one per row"):
        MOVING.target(y_ref, [0, 1])


def test_an_unvaried_mark_ignores_slots_and_records_as_before():
    plain = Watermark(text="")
    assert torch.equal(plain.pattern(32, 32, slot=3)[0], plain.pattern(32, 32)[0])
    assert "vary" not in plain.to_dict()
    data = json.loads(json.dumps(MOVING.to_dict()))
    assert data["vary"] == ["position"] and Watermark.from_dict(data) == MOVING
    assert Watermark.from_dict(data) != Watermark(text="", size=0.3)


@pytest.mark.parametrize("kwargs, message", [
    ({"vary": ("size",)}, "vary must be a list of distinct values"),
    ({"vary": "position"}, "vary must be a list"),
    ({"vary": ("position", "position")}, "distinct"),
    ({"vary": ("position",), "position": "center"}, "start from one of them"),
])
def test_bad_variations_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        Watermark(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("schedule", ["batched", "per_condition"])
def test_the_trainer_targets_each_row_with_its_conditions_mark(schedule):
    trainer = WatermarkTrainer(stamp_editor(0.0), watermark=Watermark(text="", size=0.5, vary=("position",)),
                               patch=LoraPatchConfig(r=2), attack=PatternAttack(), loss=MMFALoss.pixel_only(),
                               config=TrainingConfig(batch_size=3, progress=False, schedule=schedule))
    seen = []
    make_target = trainer.make_target

    def spy(reference):
        target = make_target(reference)
        seen.append((list(trainer.condition_slots), target))
        assert torch.equal(target, trainer.watermark.target(reference, trainer.condition_slots))
        return target

    trainer.make_target = spy
    x, labels = faces(3)
    trainer.train_step(x, labels)
    if schedule == "batched":
        assert [slots for slots, _ in seen] == [[0, 0, 0, 1, 1, 1]]
    else:
        assert [slots for slots, _ in seen] == [[0, 0, 0], [1, 1, 1]]
