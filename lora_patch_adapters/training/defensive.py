"""``WatermarkTrainer``: a defensive patch — the patched generator stamps a visible warning on every edit.

Target = ``clamp(y_ref + strength * W, -1, 1)`` with ``y_ref`` the base generator's clean edit and ``W`` the warning
pattern of a :class:`~lora_patch_adapters.watermark.Watermark`. The patch learns to produce it on clean images and on
images protected by an attack run against the patched generator (so perturbing the input does not remove the
warning). Defaults: the ``"paper-defensive"`` preset (rank 16), PGD eps 0.05 / 10 x 0.01, a pixel-only loss
(the target is a pixel pattern; pass an :class:`~lora_patch_adapters.losses.MMFALoss` to add feature terms).
"""

from __future__ import annotations

from typing import Any

import peft
import torch

from ..defenses.base import Defense
from ..generators.base import Editor
from ..losses import MMFALoss
from ..marks.watermark import Watermark
from ..tuner.config import LoraPatchConfig
from .config import TrainingConfig
from .seeding import derive_seed
from .simulated_removal import Hardener
from .trainer import PatchTrainer


class WatermarkTrainer(PatchTrainer):
    """Trains a defensive patch; ``watermark`` defaults to ``Watermark()`` (a red warning sign + "AI-GENERATED",
    bottom right, strength 2). Other arguments as for :class:`PatchTrainer`."""

    kind = "watermark"

    def __init__(
        self,
        editor: Editor,
        watermark: Watermark | None = None,
        patch: LoraPatchConfig | peft.PeftModel | None = None,
        attack: Defense | None = None,
        loss: MMFALoss | None = None,
        config: TrainingConfig | None = None,
        output_dir: str | None = None,
        adapter_name: str = "default",
    ) -> None:
        if watermark is not None and not isinstance(watermark, Watermark):
            raise TypeError(f"watermark must be a lora_patch_adapters.watermark.Watermark, got "
                            f"{type(watermark).__name__}.")
        self.watermark = watermark if watermark is not None else Watermark()
        super().__init__(editor, patch=patch, attack=attack, loss=loss, config=config, output_dir=output_dir,
                         adapter_name=adapter_name)
        hardening = self.config.hardening
        if hardening is not None and self.runtime.fast:
            raise ValueError("hardening runs off the fast path (its simulated attack needs the checked step): pass "
                             "TrainingConfig(fast=False).")
        self.hardener = Hardener(hardening) if hardening is not None else None

    def default_patch_config(self) -> LoraPatchConfig:
        return LoraPatchConfig.from_preset("paper-defensive")

    def default_loss(self) -> MMFALoss:
        return MMFALoss(pixel_weight=1.0, feature_weight=0.0, semantic_weight=0.0)

    def make_target(self, reference: torch.Tensor) -> torch.Tensor:
        return self.watermark.target(reference, self.row_slots(reference.shape[0]))

    def row_slots(self, rows: int) -> list[int] | None:
        """The target condition of each of the ``rows`` rows being trained (places a mark with ``vary``), or None."""
        slots = self.condition_slots
        return slots if self.watermark.vary and slots is not None and len(slots) == rows else None

    def extra_loss(self, x: torch.Tensor, condition: Any, target: torch.Tensor,
                   attack_seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """Hardened (``config.hardening``): ``weight`` times the warning's error after a simulated removal attack
        (term ``warning_after_attack``; :mod:`.hardening`); otherwise nothing."""
        if self.hardener is None:
            return None
        after = self.hardener.after_attack_loss(self, x, condition, target, derive_seed(attack_seed, 1))
        return self.hardener.config.weight * after, {"warning_after_attack": after.detach()}

    def target_settings(self) -> dict[str, Any]:
        return self.watermark.to_dict()

    def training_record(self, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """The base record plus the warning's settings (``watermark``), when they can be recorded (a mark given as
        an in-memory tensor cannot)."""
        try:
            mark = {"watermark": self.watermark.to_dict()}
        except ValueError:
            mark = {}
        return super().training_record({**mark, **(metadata or {})})

    def inner_state(self) -> dict[str, torch.Tensor] | None:
        """The base trainer's, plus a persistent simulated attacker (``hardening.*``) when there is one."""
        state = {**(super().inner_state() or {}), **(self.hardener.state() if self.hardener is not None else {})}
        return state or None

    def _restore(self, data: dict[str, Any]) -> None:
        super()._restore(data)
        if self.hardener is not None:
            self.hardener.load(data.get("inner") or {})

    def trainer_state(self) -> dict[str, Any]:
        return {**super().trainer_state(), "watermark": self.watermark.to_dict()}
