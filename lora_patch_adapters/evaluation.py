"""The evaluation protocol: does a proactive defense still disrupt the editor once the generator is patched?

For every image and target condition:

* ``reference``      = base editor on the clean image (what the defense tries to prevent),
* ``base_protected`` = base editor on the protected image (how well the defense works),
* ``patched_protected`` = patched editor on the protected image (how well the patch bypasses it),
* ``patched_clean``  = patched editor on the clean image (fidelity of the patch on benign inputs),

each compared with the reference (MSE — the field's "L2" —, L1, PSNR, SSIM on [0, 1], CMUA's masked L2). A sample is
*disrupted* when its MSE to the reference exceeds ``threshold`` (0.05). Scenarios: ``"default"`` computes the
protection on the base editor (the defender knows only the public model), ``"leakage"`` on the patched editor itself.
Outputs are clamped to [-1, 1] before scoring (HiSD's decoder has no tanh).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchvision
from tqdm.auto import tqdm

from . import metrics
from .defenses.base import Defense, check_image_range, check_positive_int
from .defenses.cmua import CMUA
from .generators.base import Editor

SCENARIOS = ("default", "leakage")
GROUPS = ("base_protected", "patched_protected", "patched_clean")
METRIC_NAMES = ("mse", "l1", "psnr", "ssim", "masked_l2")


@dataclass
class EvaluationResult:
    """Means over all (image, condition) samples; ``metrics[group][metric]`` with group in :data:`GROUPS`."""

    defense: str
    scenario: str
    n_images: int
    n_conditions: int
    threshold: float
    success_rate_base: float  # fraction of samples the defense disrupts on the base editor
    success_rate_patched: float  # ... and on the patched editor
    metrics: dict[str, dict[str, float]]
    perturbation: dict[str, float]  # L-inf size and PSNR of protected vs clean images
    grid_path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def summary(self) -> str:
        """A small text table."""
        lines = [
            f"{self.defense} ({self.scenario} scenario): {self.n_images} images x {self.n_conditions} conditions; "
            f"defense success rate {100 * self.success_rate_base:.1f}% on the base editor -> "
            f"{100 * self.success_rate_patched:.1f}% on the patched editor",
            f"{'vs clean edit':20s}" + "".join(f"{m:>11s}" for m in METRIC_NAMES),
        ]
        for group in GROUPS:
            lines.append(f"{group:20s}" + "".join(f"{self.metrics[group][m]:11.4f}" for m in METRIC_NAMES))
        return "\n".join(lines)


def _scores(output: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    output = output.clamp(-1, 1)
    reference = reference.clamp(-1, 1)
    return {
        "mse": metrics.mse(output, reference),
        "l1": metrics.l1(output, reference),
        "psnr": metrics.psnr(output, reference),
        "ssim": metrics.ssim(output, reference),
        "masked_l2": metrics.masked_l2(output, reference, mask),
    }


def evaluate_defense(
    defense: Defense,
    base: Editor,
    images: torch.Tensor,
    labels: torch.Tensor,
    patched: Editor | None = None,
    scenario: str = "default",
    per_condition: bool = True,
    batch_size: int = 16,
    threshold: float = 0.05,
    fit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    grid_path: str | None = None,
    grid_images: int = 4,
    progress: bool = False,
) -> EvaluationResult:
    """Run the protocol on ``images`` [N, 3, H, W] in [-1, 1] with source ``labels`` [N, A] (targets come from
    ``base.conditions(labels)``).

    ``patched`` defaults to ``base`` (an identity patch: before and after numbers are then equal).
    ``per_condition``: protect each image once per target condition (Disrupting Deepfakes' protocol) or once for
    all conditions jointly. Universal defenses (CMUA) are fitted on a copy with ``fit_data`` (images, labels) against
    the scenario's editor when given, otherwise their current perturbation is used. ``grid_path``: a PNG of the first
    ``grid_images`` images for the first condition, rows: input, protected, base clean, base protected, patched
    clean, patched protected. ``progress``: show a progress bar.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}.")
    if not isinstance(defense, Defense):
        raise TypeError(f"defense must be a lora_patch_adapters.defenses.Defense, got {type(defense).__name__}.")
    if images.shape[0] == 0:
        raise ValueError("No images to evaluate on (an empty batch).")
    check_image_range(images)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label rows.")
    check_positive_int(batch_size, "batch_size")
    patched = base if patched is None else patched
    attacker_view = base if scenario == "default" else patched
    if isinstance(defense, CMUA) and fit_data is not None:
        defense = copy.deepcopy(defense)
        defense.perturbation = None
        defense.fit(fit_data, attacker_view)

    device = base.device
    sums: dict[str, dict[str, float]] = {g: {m: 0.0 for m in METRIC_NAMES} for g in GROUPS}
    disrupted = {"base": 0, "patched": 0}
    linf, protected_psnr = 0.0, 0.0
    n_samples, n_conditions = 0, None
    grid_rows: list[torch.Tensor] | None = None
    bar = tqdm(total=images.shape[0], disable=not progress, unit="image", dynamic_ncols=True,
               desc=f"{getattr(defense, 'name', 'defense')} ({scenario})")
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        conditions = base.conditions(labels[start : start + batch_size].to(device))
        n_conditions = len(conditions)
        joint = None if per_condition else defense.protect(x, attacker_view, conditions)
        for index, condition in enumerate(conditions):
            x_protected = joint if joint is not None else defense.protect(x, attacker_view, condition)
            with torch.no_grad():
                reference = base.edit(x, condition)
                outputs = {
                    "base_protected": base.edit(x_protected, condition),
                    "patched_protected": patched.edit(x_protected, condition),
                    "patched_clean": patched.edit(x, condition),
                }
                mask = metrics.cmua_mask(reference.clamp(-1, 1), x)
                for group, output in outputs.items():
                    scores = _scores(output, reference, mask)
                    for name, values in scores.items():
                        sums[group][name] += values.sum().item()
                    if group != "patched_clean":
                        disrupted[group.split("_")[0]] += int(metrics.success(scores["mse"], threshold).sum())
                linf = max(linf, (x_protected - x).abs().max().item())
                protected_psnr += metrics.psnr(x_protected, x).sum().item()
                n_samples += x.shape[0]
                if grid_rows is None and grid_path is not None and index == 0:
                    k = min(grid_images, x.shape[0])
                    grid_rows = [t[:k].clamp(-1, 1).cpu() for t in (
                        x, x_protected, reference, outputs["base_protected"], outputs["patched_clean"],
                        outputs["patched_protected"],
                    )]
        bar.update(x.shape[0])
        bar.set_postfix({"disrupted base": disrupted["base"], "patched": disrupted["patched"]}, refresh=False)
    bar.close()
    if grid_rows is not None:
        grid = torchvision.utils.make_grid(torch.cat(grid_rows), nrow=grid_rows[0].shape[0], normalize=True,
                                           value_range=(-1, 1), padding=2)
        torchvision.utils.save_image(grid, grid_path)
    return EvaluationResult(
        defense=getattr(defense, "name", type(defense).__name__),
        scenario=scenario,
        n_images=int(images.shape[0]),
        n_conditions=int(n_conditions or 0),
        threshold=threshold,
        success_rate_base=disrupted["base"] / n_samples,
        success_rate_patched=disrupted["patched"] / n_samples,
        metrics={g: {m: v / n_samples for m, v in d.items()} for g, d in sums.items()},
        perturbation={"linf_max": linf, "psnr_protected_vs_clean": protected_psnr / n_samples},
        grid_path=grid_path,
        config={"per_condition": per_condition, "batch_size": batch_size, "defense": repr(defense),
                "base": base.name, "patched": patched.name, "patched_is_base": patched is base},
    )


def compare(results: Sequence[EvaluationResult]) -> str:
    """One line per result: defense, scenario, success rates and mean MSE before/after patching."""
    header = (
        f"{'defense':14s}{'scenario':10s}{'success base':>14s}{'success patched':>17s}{'MSE base':>10s}"
        f"{'MSE patched':>13s}"
    )
    rows = [header]
    for r in results:
        rows.append(
            f"{r.defense:14s}{r.scenario:10s}{100 * r.success_rate_base:13.1f}%{100 * r.success_rate_patched:16.1f}%"
            f"{r.metrics['base_protected']['mse']:10.4f}{r.metrics['patched_protected']['mse']:13.4f}"
        )
    return "\n".join(rows)
