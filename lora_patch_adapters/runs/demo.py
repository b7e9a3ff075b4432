"""The offline demo (``lora-patch demo``): the whole story on the shipped testbed editor, on a CPU, in minutes.

1. a PGD defense (eps 0.05, 10 x 0.01) on the base editor: how many held-out edits it disrupts;
2. a bypass patch trained with the min-max loop (inner PGD against the current patched editor);
3. the defense again: default scenario (perturbation computed on the base editor) and leakage scenario (computed on
   the patched editor); fidelity of the patched clean edits (PSNR to the base clean edits);
4. the patch saved, reloaded onto a fresh editor from disk, outputs compared;
5. a short defensive (watermark) patch: is the warning visible on clean and protected inputs.

Writes ``summary.json``, ``report.md``, ``grid.png`` (and the two patches) into the output folder.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..data.testbed import testbed_faces
from ..defenses.pgd import PGD, PGD_EPS, PGD_STEP_SIZE, PGD_STEPS
from ..evaluation import evaluate_watermark
from ..generators import load_editor
from ..losses import MMFALoss
from ..patches import load_patch, save_patch
from ..training import BypassTrainer, TrainingConfig, Watermark, WatermarkTrainer
from ..tuner.config import LoraPatchConfig
from ..version import __version__
from . import reporting
from .summary import RunSummary
from .train import before_and_after

WATERMARK_GRID_ROWS = ("input", "base: edit of input", "defensive patch: edit of input",
                       "protected (PGD vs defensive patch)", "defensive patch: edit of protected")
"""The captions of ``watermark_grid.png``'s rows."""


@dataclass
class DemoSettings:
    """Sizes of the demo, chosen to fit a couple of minutes on a 2-core CPU.

    Both patches use the paper's one-step-per-condition schedule (on a CPU, more and smaller optimiser steps beat
    one step over all conditions for the same compute), a cosine learning-rate decay, and a shorter inner PGD than
    the evaluation's PGD-10 (same eps 0.05). The measurements behind these choices are in benchmarks/README.md.
    """

    seed: int = 0
    train_images: int = 128
    batch_size: int = 4
    bypass_lr: float = 3e-3
    bypass_inner_steps: int = 5
    rank: int = 8
    eval_images: int = 12
    watermark_train_images: int = 72
    watermark_batch_size: int = 2
    watermark_lr: float = 1e-2
    watermark_inner_steps: int = 3
    watermark_eval_images: int = 4
    device: str = "cpu"


def run_demo(out_dir: str, settings: DemoSettings | None = None, echo: Callable[[str], None] = print,
             progress: bool = True) -> RunSummary:
    """Run the demo, write its outputs into ``out_dir`` and return its summary (see the module docstring)."""
    s = settings or DemoSettings()
    start = time.perf_counter()
    device = torch.device(s.device)
    os.makedirs(out_dir, exist_ok=True)
    pixel_only = MMFALoss.pixel_only()
    defense = PGD(eps=PGD_EPS, steps=PGD_STEPS, step_size=PGD_STEP_SIZE, seed=s.seed)  # the defender's (evaluation)
    train_x, train_labels = testbed_faces(s.train_images, seed=s.seed, split="train")
    test_x, test_labels = testbed_faces(s.eval_images, seed=s.seed, split="test")

    # 1-3: bypass patch, the defense before / after
    base = load_editor("testbed", device=device)
    editor = load_editor("testbed", device=device)
    targets = len(editor.attribute_names)
    steps = math.ceil(s.train_images / s.batch_size)
    echo(f"[1/5] bypass patch on the testbed editor: {s.train_images} training faces x {targets} targets, "
         f"{steps * targets} optimiser steps of {s.batch_size} images, inner PGD-{s.bypass_inner_steps} against the "
         "current patched editor")
    bypass = BypassTrainer(
        editor, patch=LoraPatchConfig.from_preset("paper", r=s.rank, init_weights="zero"),
        attack=PGD(eps=PGD_EPS, steps=s.bypass_inner_steps, step_size=2 * PGD_EPS / s.bypass_inner_steps,
                   seed=s.seed),
        loss=pixel_only,
        config=TrainingConfig(batch_size=s.batch_size, lr=s.bypass_lr, lr_schedule="cosine",
                              schedule="per_condition", seed=s.seed, progress=progress),
    )
    bypass_run = bypass.train((train_x, train_labels))
    defense_text = f"PGD (eps {PGD_EPS:g}, {PGD_STEPS} x {PGD_STEP_SIZE:g})"
    echo(f"[2/5] {defense_text} on {s.eval_images} held-out faces x {targets} targets, before and after "
         "patching (default scenario), and recomputed on the patched editor (leakage scenario)")
    grid_path = os.path.join(out_dir, reporting.GRID)
    (default, leakage), headline = before_and_after(defense, base, editor, test_x, test_labels, grid_path, progress)

    # 4: save, reload, compare
    patch_dir = save_patch(bypass, os.path.join(out_dir, "bypass_patch"), metadata={"demo": asdict(s)})
    fresh = load_editor("testbed", device=device)
    load_patch(fresh, patch_dir)  # validated (names, shapes, values, base fingerprint), then patches fresh in place
    with torch.no_grad():
        x = test_x.to(device)
        reload_diff = max((fresh.edit(x, c) - editor.edit(x, c)).abs().max().item()
                          for c in fresh.conditions(test_labels.to(device)))
    echo(f"[3/5] saved the bypass patch to {patch_dir}; reloaded from disk: max |difference| {reload_diff:.2e}")

    # 5: defensive patch
    watermark = Watermark()
    shield = load_editor("testbed", device=device)
    echo(f"[4/5] defensive patch (warning sign, strength {watermark.strength}): {s.watermark_train_images} faces x "
         f"{targets} targets, batches of {s.watermark_batch_size}, inner PGD-{s.watermark_inner_steps}")
    defensive = WatermarkTrainer(
        shield, watermark=watermark, patch=LoraPatchConfig.from_preset("paper-defensive", init_weights="zero"),
        attack=PGD(eps=PGD_EPS, steps=s.watermark_inner_steps, step_size=2 * PGD_EPS / s.watermark_inner_steps,
                   seed=s.seed),
        loss=pixel_only,
        config=TrainingConfig(batch_size=s.watermark_batch_size, lr=s.watermark_lr, lr_schedule="cosine",
                              schedule="per_condition", seed=s.seed, progress=progress),
    )
    watermark_run = defensive.train((train_x[: s.watermark_train_images], train_labels[: s.watermark_train_images]))
    echo(f"[5/5] is the warning visible? {s.watermark_eval_images} held-out faces x {targets} targets: clean, PGD "
         "against the base editor, PGD against the defensive patch")
    visibility = evaluate_watermark(shield, base, watermark, test_x[: s.watermark_eval_images],
                                    test_labels[: s.watermark_eval_images], defense=defense, progress=progress)
    x, condition = test_x[:4].to(device), shield.conditions(test_labels[:4].to(device))[0]
    x_protected = defense.protect(x, shield, condition)
    with torch.no_grad():
        watermark_grid = reporting.save_grid(
            os.path.join(out_dir, "watermark_grid.png"),
            [x, base.edit(x, condition), shield.edit(x, condition), x_protected, shield.edit(x_protected, condition)],
            WATERMARK_GRID_ROWS,
        )
    watermark_dir = save_patch(defensive, os.path.join(out_dir, "watermark_patch"), metadata={"demo": asdict(s)})

    seconds = time.perf_counter() - start
    results = {
        **{k: v for k, v in headline.items() if k != "evaluation"},
        "watermark_visible_rate": visibility["visible_rate"],
        "reload_max_abs_diff": reload_diff,
        "seconds": seconds,
        "bypass_training_seconds": bypass_run.seconds,
        "watermark_training_seconds": watermark_run.seconds,
        "bypass_grad_norm": bypass_run.grad_norm_stats(),
        "watermark": visibility,
        "evaluation": headline["evaluation"],
        "settings": asdict(s),
        "paths": {"bypass_patch": patch_dir, "watermark_patch": watermark_dir, "grid": grid_path,
                  "watermark_grid": watermark_grid},
    }
    header = ["", "defense success (MSE > 0.05)", "MSE to clean edit"]
    rows = [
        ["base editor (before patching)", f"{100 * default.success_rate_base:.1f}%",
         default.metrics["base_protected"]["mse"]],
        ["patched, default scenario", f"{100 * default.success_rate_patched:.1f}%",
         default.metrics["patched_protected"]["mse"]],
        ["patched, leakage scenario", f"{100 * leakage.success_rate_patched:.1f}%",
         leakage.metrics["patched_protected"]["mse"]],
    ]
    facts = [
        f"clean edits, patched vs base: PSNR {results['clean_psnr_db']:.2f} dB",
        f"patch reloaded from disk: max |difference| {reload_diff:.2e}",
        (f"defensive patch: warning visible on {100 * visibility['visible_rate']:.1f}% of outputs "
        f"(clean {100 * visibility['visible_rate_clean']:.0f}%, PGD vs base "
        f"{100 * visibility['visible_rate_protected_vs_base']:.0f}%, PGD vs patched "
        f"{100 * visibility['visible_rate_protected_vs_patched']:.0f}%)"),
        f"total {seconds:.0f} s (bypass training {bypass_run.seconds:.0f} s, defensive {watermark_run.seconds:.0f} s)",
    ]
    report = "\n".join([
        "# lora-patch demo (testbed editor, offline)", "",
        f"{defense_text} on {s.eval_images} held-out faces x {default.n_conditions} targets.", "",
        reporting.markdown_table(header, rows), "",
        *[f"- {fact}" for fact in facts], "",
        f"![input / protected / base clean / base protected / patched clean / patched protected]({reporting.GRID})",
        "", ("Defensive patch (rows: input, base edit, patched edit, input protected by PGD against the patched "
        "editor, patched edit of it):"), "", "![defensive patch](watermark_grid.png)",
        "", f"lora-patch-adapters {__version__}, torch {torch.__version__}, seed {s.seed}.",
    ])
    summary = RunSummary(command="demo", seed=s.seed, device=s.device, data=(
        f"{s.train_images} testbed training faces, {s.eval_images} held-out faces (seed {s.seed})"),
        arguments=asdict(s), results=results, timings={"total_seconds": seconds}, report=report,
        outputs={"grid": grid_path, "watermark_grid": watermark_grid})
    paths = reporting.write_run(out_dir, summary)
    echo("")
    echo(reporting.text_table(header, rows))
    for fact in facts:
        echo(fact)
    echo(f"report:  {paths['report']}\ngrids:   {grid_path}, {watermark_grid}\nsummary: {paths['summary']}")
    return summary
