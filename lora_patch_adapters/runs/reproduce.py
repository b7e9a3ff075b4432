"""``lora-patch reproduce``: the paper's protocol end to end, in one output folder with one report.

Qu et al. (arXiv 2510.03747): a bypass patch trained with the paper's recipe on the first 1000 CelebA images
(training preset ``"paper"``, patch preset ``"paper"``), a defensive (warning) patch (``"paper-defensive"``: rank 16,
5 epochs), and the Disrupting-Deepfakes PGD defense evaluated on held-out rows (``paper-test``: rows from 29000) in
the default scenario (perturbation computed on the base generator) and the leakage one (on the patched generator).
``--patch`` adds the authors' own saved patch (their ``.pth``), converted with
:func:`~lora_patch_adapters.patches.official.import_official_patch` and evaluated on the same images, side by side.

Layout of ``out``::

    ours-bypass/        lora-patch train output (patch/, summary.json, report.md, grid.png)
    ours-defensive/     lora-patch train-defensive output
    authors-bypass/     patch/ (the converted authors' patch)
    evaluation/<name>/  lora-patch evaluate output of each bypass patch, on the same images
    summary.json, report.md   the comparison
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .._checks import one_line
from ..defenses.base import PGD_EPS, PGD_STEP_SIZE, PGD_STEPS
from ..patches import validate_patch
from ..patches.official import import_official_patch
from . import reporting
from .errors import RunInputError
from .evaluate import EvaluateSettings, run_evaluate
from .inputs import Inputs
from .summary import RunSummary
from .train import TrainSettings, pct, run_train, versions_line

PAPER_TRAIN_IMAGES = 1000
"""The paper trains on 1000 images (one epoch)."""


@dataclass
class ReproduceSettings(Inputs):
    """Every setting of ``lora-patch reproduce`` (the flags of the same names)."""

    out: str = "runs/reproduce"
    patch: str | None = None  # the authors' bypass patch (.pth), converted and evaluated beside ours
    alpha: float = 2.0  # the authors' lora alpha (not stored in their files; 2.0 in their scripts)
    train: bool = True  # False (--no-train): evaluate the authors' patch only
    defensive: bool = True  # False (--no-defensive): no defensive patch
    images: int | None = None  # training images; None: the paper's 1000 (testbed: 1000 procedural faces)
    eval_images: int = 100  # held-out images the patches are evaluated on (paper-test rows)
    eps: float = PGD_EPS
    pgd_steps: int = PGD_STEPS
    pgd_step_size: float = PGD_STEP_SIZE
    feature_weight: float = 0.1
    semantic_weight: float = 0.1
    resnet_weights: str = "IMAGENET1K_V1"
    blip_model: str = "Salesforce/blip-image-captioning-base"
    offline: bool = False
    max_steps: int | None = None  # a cap on each training run (smoke tests); None: the full recipe
    batch_size: int | None = None  # None: the recipe's (4)
    no_progress: bool = False
    command: str = "reproduce"
    argv: list[str] = field(default_factory=list)

    def check(self) -> None:
        super().check()
        if not self.train and self.patch is None:
            raise RunInputError("--no-train leaves nothing to reproduce: pass --patch OFFICIAL.pth (the authors' "
                                "patch) or drop --no-train", usage=True)
        if self.patch is not None and not os.path.isfile(self.patch):
            raise RunInputError(f"--patch {self.patch!r}: no such file (the authors' .pth patch)", usage=True)


def _inputs(s: ReproduceSettings) -> dict[str, Any]:
    return {f.name: getattr(s, f.name) for f in fields(Inputs)}


def _train(s: ReproduceSettings, kind: str, echo: Callable[[str], None]) -> str:
    out = os.path.join(s.out, "ours-bypass" if kind == "bypass" else "ours-defensive")
    extra: dict[str, Any] = {}
    if s.max_steps is not None:
        extra["max_steps"] = s.max_steps
    if s.batch_size is not None:
        extra["batch_size"] = s.batch_size
    if kind == "watermark":
        extra.update(epochs=5, preset="paper-defensive", feature_weight=0.0, semantic_weight=0.0)
    else:
        extra.update(feature_weight=s.feature_weight, semantic_weight=s.semantic_weight)
    settings = TrainSettings(
        **_inputs(s), out=out, kind=kind, split="paper-train", images=s.images or PAPER_TRAIN_IMAGES,
        eval_images=s.eval_images, eps=s.eps, pgd_steps=s.pgd_steps, pgd_step_size=s.pgd_step_size,
        resnet_weights=s.resnet_weights, blip_model=s.blip_model, offline=s.offline, no_progress=s.no_progress,
        command="train" if kind == "bypass" else "train-defensive", argv=list(s.argv), **extra)
    summary = run_train(settings, echo)
    reporting.write_run(out, summary)
    return os.path.join(out, "patch")


def _evaluate(s: ReproduceSettings, name: str, patch: str, echo: Callable[[str], None]) -> RunSummary:
    out = os.path.join(s.out, "evaluation", name)
    steps = s.pgd_steps if abs(2 * s.eps / s.pgd_steps - s.pgd_step_size) < 1e-12 else None
    if steps is None:
        raise RunInputError(f"--pgd-step-size {s.pgd_step_size:g}: the evaluation uses PGD steps of 2 * eps / "
                            f"steps ({2 * s.eps / s.pgd_steps:g} here); leave --pgd-step-size at its default",
                            usage=True)
    settings = EvaluateSettings(**_inputs(s), patch=patch, out=out, split="paper-test", images=s.eval_images,
                                defense=["pgd"], scenario="both", eps=s.eps, steps=steps,
                                no_progress=s.no_progress, argv=list(s.argv))
    summary = run_evaluate(settings, echo)
    reporting.write_run(out, summary)
    return summary


def run_reproduce(settings: ReproduceSettings, echo: Callable[[str], None] = print) -> RunSummary:
    """Train our patches with the paper's recipe and/or convert the authors' patch, evaluate every bypass patch on
    the same held-out images, and return the comparison (written by :func:`reporting.write_run` into ``out``)."""
    s = settings
    start = time.perf_counter()
    s.check()
    if s.generator in ("attgan", "attgan_inject1") and s.targets is None:
        s.targets = "paper"  # the paper's 5 AttGAN edits
    notes = []
    if s.generator == "hisd" and s.references is None:
        notes.append("HiSD: no --references given, so the 7 latent-guided edits were used; the paper's protocol is "
                     "reference-guided hair colour from 3 reference images (--references a.jpg,b.jpg,c.jpg).")
    bypass: dict[str, str] = {}
    if s.patch is not None:  # converted first: a file that cannot be converted stops the run before any training
        editor = s.editor()
        bypass["authors"] = import_official_patch(s.patch, editor, os.path.join(s.out, "authors-bypass", "patch"),
                                                  alpha=s.alpha)
        try:  # the authors' base must be this generator: refused here, before hours of training
            validate_patch(editor, bypass["authors"])
        except (ValueError, RuntimeError) as exc:
            raise RunInputError(f"--patch {s.patch!r} does not patch this {s.generator} generator: "
                                f"{one_line(exc, 400)}") from exc
        echo(f"converted the authors' patch {s.patch} -> {bypass['authors']}")
    if s.train:
        bypass = {"ours": _train(s, "bypass", echo), **bypass}
    defensive = _train(s, "watermark", echo) if s.train and s.defensive else None
    evaluations = {name: _evaluate(s, name, patch, echo) for name, patch in bypass.items()}

    header = ["patch", "scenario", "PGD success on base", "PGD success on patched", "clean PSNR (dB)"]
    rows = [[name, rate["scenario"], pct(rate["success_rate_base"]), pct(rate["success_rate_patched"]),
             rate["clean_psnr_db"]] for name, summary in evaluations.items() for rate in summary["rates"]]
    summary = RunSummary(command=s.command, seed=s.seed, device=s.device,
                         data=next(iter(evaluations.values())).data, argv=list(s.argv),
                         arguments={k: v for k, v in vars(s).items() if k not in ("command", "argv")})
    summary.results = {"generator": s.generator, "patches": bypass, "defensive_patch": defensive,
                       "evaluations": {name: e.results for name, e in evaluations.items()},
                       "comparison": [dict(zip(header, row)) for row in rows], "notes": notes}
    body = ["## Bypass patches: PGD (Disrupting Deepfakes) before and after patching", "",
            reporting.markdown_table(header, rows)]
    if defensive is not None:
        with open(os.path.join(s.out, "ours-defensive", reporting.SUMMARY), encoding="utf-8") as f:
            visible = json.load(f).get("watermark_visible_rate")
        summary.results["watermark_visible_rate"] = visible
        body += ["", "## Defensive patch", "",
                 f"The warning is visible on {pct(visible) if isinstance(visible, float) else visible} of the "
                 f"patched edits (see `ours-defensive/report.md`)."]
    summary.timings = {"total_seconds": time.perf_counter() - start}
    summary.report = "\n".join([
        f"# lora-patch reproduce: {s.generator}", "",
        ("The protocol of Qu et al. (arXiv 2510.03747): patches trained with the paper's recipe (training preset "
         "`paper`: per-condition Adam steps, lr 1e-3, betas (0.5, 0.999), batch 4, one epoch, fp32) on the "
         "`paper-train` rows, evaluated with PGD (eps "
         f"{s.eps:g}, {s.pgd_steps} steps) on {s.eval_images} `paper-test` rows, default and leakage scenarios."),
        "", *body, "", *(f"- {note}" for note in notes), "",
        f"command: `{shlex.join(['lora-patch', *s.argv])}`", "", versions_line(s),
    ])
    return summary
