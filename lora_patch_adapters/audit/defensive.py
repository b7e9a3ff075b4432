"""The removal audit of a defensive patch: how cheaply does an attacker erase its warning?

Threat model: the platform ships the defended generator (the defensive patch merged into its weights); the attacker
has those weights, their own face photos (no labels) and compute, but not the un-warned base; the evaluator has the
base, to score the attacker's edits. For every attack of :mod:`lora_patch_adapters.removal` and every budget
(attacker photos x epochs) a removal is trained on a copy of the defended editor, then measured on held-out faces x
target conditions:

* ``visible_after``: the fraction of edits on which the warning is still visible
  (:func:`~lora_patch_adapters.evaluation.watermark.watermark_visibility`);
* ``psnr_outside_db`` (and ``lpips_outside`` with LPIPS weights): the edit outside the mark against the un-warned
  base's edit, the mark being its footprint grown by ``outside_margin`` pixels (its soft edge and the few pixels
  around it a generator cannot keep exactly);
* the attacker's steps, seconds and FLOPs (counted on one step, apart from the timed run).

The *break point* of an attack is the cheapest budget at which ``visible_after < break_visibility`` (0.5) while
``psnr_outside_db >= break_psnr_db`` (30 dB): the warning is gone and the edit is still good. A defended generator
whose own edits are already worse cannot make itself unbreakable that way: the quality bar is
``min(break_psnr_db, psnr_before - quality_slack_db)`` (recorded as ``psnr_threshold_db``), so an edit as good as
the defended generator's own (within 1 dB) counts. The patch's break point is the cheapest over the attacks
(``break_point_flops``; None: not broken within the largest budget).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import check_number
from ..evaluation.lpips import lpips_available
from ..evaluation.metrics import lpips
from ..evaluation.watermark import _masked_psnr, watermark_visibility
from ..generators.base import Editor
from ..marks.watermark import Watermark
from ..patches import load_patch
from ..patches.format import read_patch_info
from ..removal import DEFAULT_ATTACKS, RemovalTrainer, attacker_labels, get_attack, mask_iou, warning_mask
from ..runs.reporting import save_grid
from ..training.flops import count_flops
from ..version import __version__
from .budgets import Budget, parse_budgets
from .runner import device_description

FORMAT = "lora-patch-defensive-audit/1"
DEFAULT_DEFENSIVE_BUDGETS = "8,32,128,512"
THREAT_MODEL = (
    "The defender ships the defended generator with the defensive patch merged into its weights. The attacker has "
    "those weights, their own face photos (no labels) and compute, not the un-warned base: a removal is a new LoRA "
    "patch (or full fine-tuning) trained on the defended generator towards its own outputs with the warning's "
    "region, estimated from those outputs alone, filled in. The evaluator has the un-warned base to score the "
    "attacker's edits. If the base is public, subtracting it from the defended weights recovers the patch exactly "
    "(lora-patch forensics --model DEFENDED --reference BASE): no patch protects a public base.")


@dataclass
class DefensiveAuditConfig:
    """Every setting of a removal audit (recorded in ``summary.json``); see the module docstring."""

    budgets: list[Budget] = field(default_factory=lambda: parse_budgets(DEFAULT_DEFENSIVE_BUDGETS))
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    eval_images: int = 16
    eval_batch_size: int = 16
    outside_margin: int | None = None  # pixels around the mark's footprint; None: 1/32 of the image width
    break_visibility: float = 0.5
    break_psnr_db: float = 30.0
    quality_slack_db: float | None = 1.0  # None: the absolute break_psnr_db only
    grid_images: int = 4
    lpips_weights: str | None = None
    seed: int = 42
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.budgets or not all(isinstance(b, Budget) for b in self.budgets):
            raise ValueError(f"budgets must be a non-empty list of Budget, e.g. "
                             f"parse_budgets({DEFAULT_DEFENSIVE_BUDGETS!r}).")
        if not self.attacks:
            raise ValueError("A removal audit needs at least one attack.")
        for spec in self.attacks:
            get_attack(spec)
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"Repeated removal attack in {self.attacks}.")
        check_number(self.break_visibility, "break_visibility", maximum=1.0, what="in (0, 1]")
        check_number(self.break_psnr_db, "break_psnr_db", what="a finite number > 0")
        check_number(self.quality_slack_db, "quality_slack_db", minimum=0.0, strict=False, allow_none=True)
        self.budgets = sorted(self.budgets, key=lambda b: (b.image_passes, b.images))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["budgets"] = [b.key for b in self.budgets]
        return data


class _Scorer:
    """Scores editors on the held-out faces x target conditions (conditions built per batch, so any editor's
    condition format works); the base's clean edits are computed once."""

    def __init__(self, base: Editor, watermark: Watermark, images: torch.Tensor, labels: torch.Tensor,
                 margin: int, batch_size: int, lpips_weights: str | None) -> None:
        self.watermark, self.lpips_weights = watermark, lpips_weights
        self.images, self.labels = images.to(base.device), labels.to(base.device)
        self.batches = [(self.images[s : s + batch_size], base.conditions(self.labels[s : s + batch_size]))
                        for s in range(0, self.images.shape[0], batch_size)]
        self.conditions = len(self.batches[0][1])
        self.references = self.outputs(base)
        height, width = images.shape[-2:]
        self.marks = [watermark.footprint(height, width, margin, base.device, slot=t) for t in range(self.conditions)]

    def outputs(self, editor: Editor) -> list[torch.Tensor]:
        """Edits [N, 3, H, W] of every held-out face, one tensor per target condition."""
        with torch.no_grad():
            return [torch.cat([editor.edit(x, conditions[t]) for x, conditions in self.batches])
                    for t in range(self.conditions)]

    def score(self, editor: Editor) -> dict[str, Any]:
        """visible rate, mean PSNR outside the mark (dB) and, with LPIPS weights, mean LPIPS outside the mark."""
        visible, psnr, distance = [], [], []
        for slot, (output, reference) in enumerate(zip(self.outputs(editor), self.references)):
            mark = self.marks[slot]
            visible.append(watermark_visibility(output, reference, self.watermark, slot)["visible"].float())
            psnr.append(_masked_psnr(output.clamp(-1, 1), reference, 1 - mark))
            if self.lpips_weights is not None:  # the mark's region taken from the reference in both images
                kept = output.clamp(-1, 1) * (1 - mark) + reference * mark
                distance.append(lpips(kept, reference, weights=self.lpips_weights))
        return {"visible": torch.cat(visible).mean().item(), "psnr_outside_db": torch.cat(psnr).mean().item(),
                "lpips_outside": torch.cat(distance).mean().item() if distance else None}


def psnr_threshold(config: DefensiveAuditConfig, psnr_before: float) -> float:
    """The quality an attacked edit must keep to count as a break (see the module docstring)."""
    if config.quality_slack_db is None:
        return config.break_psnr_db
    return min(config.break_psnr_db, psnr_before - config.quality_slack_db)


def break_point(budgets: dict[str, dict[str, Any]], config: DefensiveAuditConfig,
                psnr_threshold_db: float | None = None) -> dict[str, Any] | None:
    """The cheapest budget record (by attacker FLOPs) that breaks the warning (``psnr_threshold_db``: the quality
    bar, default ``config.break_psnr_db``), or None."""
    bar = config.break_psnr_db if psnr_threshold_db is None else psnr_threshold_db
    broken = [dict(b, budget=key) for key, b in budgets.items()
              if b["visible_after"] < config.break_visibility and b["psnr_outside_db"] >= bar]
    return min(broken, key=lambda b: b["attacker_flops"]) if broken else None


class DefensiveAudit:
    """One removal audit run; see :func:`run_defensive_audit`."""

    def __init__(self, config: DefensiveAuditConfig, base: Editor, defended: Editor, watermark: Watermark,
                 attacker_images: torch.Tensor, eval_data: tuple[torch.Tensor, torch.Tensor], out_dir: str,
                 echo: Callable[[str], None]) -> None:
        self.config, self.base, self.defended, self.watermark = config, base, defended, watermark
        self.out_dir, self.echo = out_dir, echo
        needed = max(b.images for b in config.budgets)
        if attacker_images.shape[0] < needed:
            raise ValueError(f"The largest budget needs {needed} attacker photos but {attacker_images.shape[0]} were "
                             "given: lower the budgets or give more photos.")
        self.attacker_images = attacker_images
        self.attacker_labels = attacker_labels(attacker_images.shape[0], len(base.attribute_names), config.seed)
        images, labels = eval_data
        width = images.shape[-1]
        self.margin = config.outside_margin if config.outside_margin is not None else max(1, width // 32)
        weights = config.lpips_weights
        self.lpips_weights = weights if lpips_available(weights=weights, size=tuple(images.shape[-2:])) else None
        self.scorer = _Scorer(base, watermark, images, labels, self.margin, config.eval_batch_size,
                              self.lpips_weights)

    def _flops_per_step(self, trainer: RemovalTrainer) -> int:
        probe = copy.deepcopy(trainer)
        n = trainer.attack.batch_size
        return count_flops(lambda: probe.step(self.attacker_images[:n], self.attacker_labels[:n]))

    def attack(self, name: str, mask: torch.Tensor, bar: float) -> tuple[dict[str, Any], Editor]:
        """Train ``name`` at every budget; (per-attack record with its break point at quality ``bar``, the editor
        attacked with the largest budget)."""
        c = self.config
        spec = get_attack(name)
        budgets: dict[str, dict[str, Any]] = {}
        editor = self.defended
        for budget in c.budgets:
            trainer = RemovalTrainer(spec, self.defended, mask, seed=c.seed)
            per_step = self._flops_per_step(trainer)
            result = trainer.train(self.attacker_images[: budget.images], self.attacker_labels[: budget.images],
                                   epochs=budget.epochs)
            scores = self.scorer.score(result.editor)
            budgets[budget.key] = {
                "images": budget.images, "epochs": budget.epochs, "visible_after": scores["visible"],
                "psnr_outside_db": scores["psnr_outside_db"], "lpips_outside": scores["lpips_outside"],
                "attacker_steps": result.steps, "attacker_flops": per_step * result.steps,
                "attacker_seconds": result.seconds, "attack": spec.name, "final_loss": result.losses[-1]}
            self.echo(f"  {spec.name} {budget.key}: warning visible on {100 * scores['visible']:.1f}%, PSNR outside "
                      f"{scores['psnr_outside_db']:.2f} dB, {result.steps} steps, {result.seconds:.1f} s")
            editor = result.editor
        record = {"attack": spec.to_dict(), "description": spec.describe(), "budgets": budgets,
                  "break_point": break_point(budgets, c, bar)}
        return record, editor

    def run(self) -> dict[str, Any]:
        c = self.config
        start = time.perf_counter()
        before = self.scorer.score(self.defended)
        self.echo(f"defended generator: warning visible on {100 * before['visible']:.1f}% of held-out edits, PSNR "
                  f"outside the mark {before['psnr_outside_db']:.2f} dB")
        masks = {shared: warning_mask(self.defended, self.attacker_images, self.attacker_labels, shared=shared)
                 for shared in sorted({get_attack(name).mask == "shared" for name in c.attacks})}
        height, width = self.attacker_images.shape[-2:]
        mask = masks.get(False, masks.get(True))
        iou = sum(mask_iou(m, self.watermark.footprint(height, width, device=mask.device, slot=t))
                  for t, m in enumerate(mask)) / mask.shape[0]
        bar = psnr_threshold(c, before["psnr_outside_db"])
        attacks, editors = {}, {}
        for name in c.attacks:
            self.echo(f"attack {name}: {get_attack(name).describe()}")
            attacks[name], editors[name] = self.attack(name, masks[get_attack(name).mask == "shared"], bar)
        broken = [dict(a["break_point"], attack=n) for n, a in attacks.items() if a["break_point"] is not None]
        worst = min(broken, key=lambda b: b["attacker_flops"]) if broken else None
        grid = self._grid(editors)
        return {
            "format": FORMAT, "version": __version__, "torch": torch.__version__, "seed": c.seed,
            "device": device_description(c.device), "threat_model": THREAT_MODEL, "config": c.to_dict(),
            "watermark": self.watermark.to_dict(), "outside_margin": self.margin,
            "lpips_weights": self.lpips_weights, "mask_iou": iou,
            "evaluation": {"images": int(self.scorer.images.shape[0]), "conditions": self.scorer.conditions},
            "visible_before": before["visible"], "psnr_outside_db": before["psnr_outside_db"],
            "lpips_outside": before["lpips_outside"], "psnr_threshold_db": bar, "attacks": attacks,
            "break_point": worst, "break_point_flops": worst["attacker_flops"] if worst else None,
            "grid": os.path.relpath(grid, self.out_dir), "seconds": time.perf_counter() - start,
        }

    def _grid(self, editors: dict[str, Editor]) -> str:
        """Captioned grid: input, base edit, defended edit, then each attack's edit at the largest budget (first
        target condition, first ``grid_images`` held-out faces)."""
        k = min(self.config.grid_images, self.scorer.images.shape[0])
        x = self.scorer.images[:k]
        condition = self.base.conditions(self.scorer.labels[:k])[0]
        with torch.no_grad():
            rows = [x, *(e.edit(x, condition) for e in (self.base, self.defended, *editors.values()))]
        largest = self.config.budgets[-1].key
        names = ["input", "un-warned base", "defended", *(f"{n} ({largest})" for n in editors)]
        path = os.path.join(self.out_dir, "grids", "removal.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return save_grid(path, [r.clamp(-1, 1) for r in rows], names, [f"face {i + 1}" for i in range(k)])


def defended_editor(editor: Editor, patch: str) -> tuple[Editor, Watermark]:
    """``editor`` with the defensive patch directory ``patch`` validated, loaded and merged into its weights (what a
    platform ships), and the patch's warning (its recorded settings, else the default :class:`Watermark`). A patch
    recorded as another kind of training (e.g. a bypass patch) is refused before it is loaded."""
    training = read_patch_info(patch).get("training") or {}
    kind = training.get("kind")
    if kind not in (None, "watermark"):
        raise ValueError(f"{patch} is a {kind} patch, not a defensive one (its training record says kind={kind!r}): "
                         "audit-defensive audits the warning of a defensive patch (lora-patch train-defensive).")
    settings = training.get("watermark")
    watermark = Watermark.from_dict(settings) if isinstance(settings, dict) else Watermark()
    model = load_patch(editor, patch)
    merged = model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    editor.generator = merged
    return editor, watermark


def run_defensive_audit(config: DefensiveAuditConfig, base: Editor, defended: Editor, watermark: Watermark,
                        attacker_images: torch.Tensor, eval_data: tuple[torch.Tensor, torch.Tensor], out_dir: str,
                        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the removal audit (see the module docstring) and return its results (written out by
    :func:`lora_patch_adapters.audit.defensive_report.write_defensive_report`).

    ``base``: the un-warned editor (the evaluator's); ``defended``: the editor with the defensive patch merged (the
    attacker's starting point; never modified); ``watermark``: the patch's warning; ``attacker_images``: the
    attacker's photos [N, 3, H, W] in [-1, 1], at least the largest budget's; ``eval_data``: held-out (images,
    labels)."""
    os.makedirs(out_dir, exist_ok=True)
    return DefensiveAudit(config, base, defended, watermark, attacker_images, eval_data, out_dir, echo).run()
