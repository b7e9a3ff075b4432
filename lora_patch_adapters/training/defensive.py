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
from tqdm.auto import tqdm

from ..defenses.base import Defense
from ..defenses.pgd import PGD
from ..generators.base import Editor
from ..losses import MMFALoss
from ..tuner.config import LoraPatchConfig
from ..watermark import Watermark, watermark_visibility
from .config import TrainingConfig
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

    def default_patch_config(self) -> LoraPatchConfig:
        return LoraPatchConfig.from_preset("paper-defensive")

    def default_loss(self) -> MMFALoss:
        return MMFALoss(pixel_weight=1.0, feature_weight=0.0, semantic_weight=0.0)

    def make_target(self, reference: torch.Tensor) -> torch.Tensor:
        return self.watermark.target(reference)

    def trainer_state(self) -> dict[str, Any]:
        return {**super().trainer_state(), "watermark": self.watermark.to_dict()}


def evaluate_watermark(
    patched: Editor,
    base: Editor,
    watermark: Watermark,
    images: torch.Tensor,
    labels: torch.Tensor,
    defense: Defense | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Is the warning visible on the patched editor's outputs, for clean and for protected inputs?

    ``defense`` (default PGD eps 0.05) protects every image against the *patched* editor (the strongest case: the
    perturbation tries to move the output away from the warned edit) and against the base editor. Returns the
    visible fractions per input kind and overall (``visible_rate``), and mean visibility scores. ``progress``: show
    a progress bar.
    """
    defense = defense if defense is not None else PGD()
    device = base.device
    counts = {"clean": 0, "protected_vs_base": 0, "protected_vs_patched": 0}
    scores: dict[str, float] = {}
    n = 0
    bar = tqdm(total=images.shape[0], disable=not progress, unit="image", desc="watermark visibility",
               dynamic_ncols=True)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        conditions = base.conditions(labels[start : start + batch_size].to(device))
        for condition in conditions:
            inputs = {
                "clean": x,
                "protected_vs_base": defense.protect(x, base, condition),
                "protected_vs_patched": defense.protect(x, patched, condition),
            }
            with torch.no_grad():
                reference = base.edit(x, condition)
                for kind, x_in in inputs.items():
                    result = watermark_visibility(patched.edit(x_in, condition), reference, watermark)
                    counts[kind] += int(result["visible"].sum())
                    for name, values in result.items():
                        if name != "visible":
                            key = f"{kind}_{name}"
                            scores[key] = scores.get(key, 0.0) + float(values.float().sum())
            n += x.shape[0]
        bar.update(x.shape[0])
    bar.close()
    rates = {f"visible_rate_{k}": v / n for k, v in counts.items()}
    return {"visible_rate": sum(counts.values()) / (3 * n), **rates, "samples_per_kind": n,
            **{k: v / n for k, v in scores.items()}}
