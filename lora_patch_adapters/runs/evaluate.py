"""The evaluate pipeline (``lora-patch evaluate``): load a saved patch onto its generator and measure how often each
defense still disrupts the edits, on the base and on the patched generator; for a defensive patch, also whether its
warning shows. The patch's recorded provenance (``lora_patch.json``) names its generator and, for a defensive patch,
its warning."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import one_line
from ..defenses.plugins import builtin_defense
from ..evaluation import compare, evaluate_defense, evaluate_watermark
from ..evaluation.protocol import CRITERIA
from ..generators import EDITOR_NAMES, load_editor
from ..patches import load_patch, read_patch_info
from ..patches.format import CONFIG_NAME
from ..training import Watermark
from . import reporting
from .errors import RunInputError
from .inputs import Inputs, other_split
from .summary import RunSummary
from .train import evaluation_rows, versions_line, visibility_rows

SCENARIOS = ("default", "leakage", "both")
_CRITERION_WORDS = {"mse": "MSE to the clean edit",
                    "masked_l2": "masked L2 to the clean edit (CMUA-Watermark: pixels the clean edit changed)"}


@dataclass
class EvaluateSettings(Inputs):
    """Every setting of an evaluation run (the ``lora-patch evaluate`` flags of the same names). ``generator`` None:
    the one the patch records, else the testbed."""

    patch: str = ""
    generator: str | None = None  # type: ignore[assignment]
    out: str | None = None  # default: evaluation/ next to the patch
    split: str = "paper-test"
    images: int | None = None
    defense: list[str] = field(default_factory=lambda: ["pgd"])
    scenario: str = "both"
    eps: float = 0.05
    steps: int | None = None
    batch_size: int = 16
    no_progress: bool = False
    allow_missing_fingerprint: bool = False  # a patch recording no base fingerprint (older saves) loads unchecked
    criterion: str = "mse"  # "masked_l2": CMUA-Watermark's masked criterion decides what counts as disrupted
    cmua_editor: list[str] | None = None  # "NAME" or "NAME=CHECKPOINT": more editors CMUA is fitted across
    lpips_weights: str | None = None  # LPIPS backbone file (None: torchvision's cache when it holds the weights)
    command: str = "evaluate"
    argv: list[str] = field(default_factory=list)


def patch_provenance(path: str) -> dict[str, Any]:
    """The ``training`` record a patch directory carries (``{}`` when it has none); refuses what is not a patch."""
    if not os.path.isdir(path):
        raise RunInputError(f"patch directory {path!r} not found")
    if not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise RunInputError(f"{path!r} is not a patch directory (no {CONFIG_NAME}; train one with lora-patch train)")
    training = read_patch_info(path).get("training")
    return training if isinstance(training, dict) else {}


def _cmua_editor(spec: str, s: EvaluateSettings) -> Any:
    """``NAME`` or ``NAME=CHECKPOINT`` of ``--cmua-editor``: an editor CMUA is fitted across (random weights, drawn
    from the seed, when no checkpoint is given)."""
    name, _, checkpoint = spec.partition("=")
    if name not in EDITOR_NAMES:
        raise RunInputError(f"--cmua-editor {spec!r}: unknown generator {name!r}; choose from "
                            f"{', '.join(EDITOR_NAMES)} (NAME or NAME=CHECKPOINT)")
    if checkpoint and not os.path.isfile(checkpoint):
        raise RunInputError(f"--cmua-editor {spec!r}: no such checkpoint file {checkpoint!r}")
    torch.manual_seed(s.seed)
    try:
        return load_editor(name, checkpoint=checkpoint or None, device=s.device)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise RunInputError(f"--cmua-editor {spec!r}: {one_line(exc, 400)}") from exc


def run_evaluate(settings: EvaluateSettings, echo: Callable[[str], None] = print) -> RunSummary:
    """Evaluate ``settings.patch``. Writes nothing into ``settings.out``: the grid is staged in a temporary folder
    (``summary.staged``) that :func:`~lora_patch_adapters.runs.reporting.write_run` moves in with the rest, so a
    failed evaluation leaves ``--out`` as it was."""
    s = settings
    start = time.perf_counter()
    meta = patch_provenance(s.patch)
    trained_on = meta.get("generator")
    if s.generator is not None and trained_on in EDITOR_NAMES and s.generator != trained_on:
        raise RunInputError(f"the patch {s.patch!r} was trained on {trained_on!r} (lora_patch.json), not "
                            f"{s.generator!r}; pass --generator {trained_on}")
    s.generator = s.generator or (trained_on if trained_on in EDITOR_NAMES else "testbed")
    s.check()
    s.out = s.out or os.path.join(os.path.dirname(os.path.abspath(s.patch)), "evaluation")
    names = list(dict.fromkeys(s.defense))
    s.defense = names
    scenarios = ["default", "leakage"] if s.scenario == "both" else [s.scenario]

    if s.criterion not in CRITERIA:
        raise RunInputError(f"--criterion {s.criterion!r}: choose one of {', '.join(CRITERIA)}")
    if s.lpips_weights is not None and not os.path.isfile(s.lpips_weights):
        raise RunInputError(f"--lpips-weights {s.lpips_weights!r}: no such file; pass a .safetensors / .pth state "
                            "dict of torchvision's alexnet (ImageNet weights)")
    if s.cmua_editor and "cmua" not in names:
        raise RunInputError("--cmua-editor applies to --defense cmua only; add it, or drop --cmua-editor")
    watermark = None
    if meta.get("kind") == "watermark":
        watermark = Watermark.from_dict(meta["watermark"]) if isinstance(meta.get("watermark"), dict) else Watermark()
    cmua_across = [_cmua_editor(spec, s) for spec in s.cmua_editor or []]
    editor, base = s.editor(), s.editor()
    defenses = [builtin_defense(name, eps=s.eps, steps=s.steps, seed=s.seed,
                                editors=[base, *cmua_across] if name == "cmua" and cmua_across else None)
                for name in names]
    try:
        # validated before it touches the generator; patches it in place
        load_patch(editor, s.patch, allow_missing_fingerprint=s.allow_missing_fingerprint)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        hint = (" (lora-patch evaluate: --allow-missing-fingerprint)" if "allow_missing_fingerprint" in str(exc)
                else "")
        raise RunInputError(f"cannot load the patch {s.patch!r} onto {s.generator}: {one_line(exc, 500)}{hint}") \
            from exc
    images, labels = s.images_for(editor, "test", s.split, s.images, 50)
    fit_data = None
    if "cmua" in names:  # fitted on as many training images, never on the evaluation images
        n = int(images.shape[0])
        fit_data = s.images_for(editor, "train", other_split(s.split), n, n)
    staging = tempfile.mkdtemp(prefix="lora-patch-evaluate-")  # moved into --out by write_run on success
    try:
        loaded = time.perf_counter()
        grid_path = os.path.join(staging, reporting.GRID)
        data_desc = s.describe(int(images.shape[0]), "test", s.split)
        echo(f"evaluating {s.patch} on {s.generator}: {data_desc}; defenses {', '.join(names)}; "
             f"scenarios {', '.join(scenarios)}")
        results = []
        for defense, name in zip(defenses, names):
            for scenario in scenarios:
                results.append(evaluate_defense(
                    defense, base, images, labels, patched=editor, scenario=scenario, batch_size=s.batch_size,
                    fit_data=fit_data if name == "cmua" else None, grid_path=None if results else grid_path,
                    progress=not s.no_progress, criterion=s.criterion,
                    lpips=True if s.lpips_weights is not None else None, lpips_weights=s.lpips_weights))
        echo(compare(results))
        header, rows = evaluation_rows(results)
        summary = RunSummary(command=s.command, seed=s.seed, device=s.device, data=data_desc, argv=list(s.argv),
                             arguments={k: v for k, v in vars(s).items() if k not in ("command", "argv")})
        summary.results = {
            "patch": os.path.abspath(s.patch), "patch_training": meta, "generator": s.generator,
            "images": int(images.shape[0]), "results": [r.to_dict() for r in results],
            "rates": [{"defense": r.defense, "scenario": r.scenario, "success_rate_base": r.success_rate_base,
                       "success_rate_patched": r.success_rate_patched,
                       "clean_psnr_db": r.metrics["patched_clean"]["psnr"]} for r in results]}
        body = [reporting.markdown_table(header, rows)]
        if watermark is not None:
            pgd = builtin_defense("pgd", eps=s.eps, steps=s.steps, seed=s.seed)
            visibility = evaluate_watermark(editor, base, watermark, images, labels, defense=pgd,
                                            batch_size=s.batch_size, progress=not s.no_progress)
            summary.results.update({"watermark_visible_rate": visibility["visible_rate"], "watermark": visibility})
            v_header, v_rows = visibility_rows(visibility)
            echo(reporting.text_table(v_header, v_rows))
            body += ["", ("Watermark patch: is the warning visible (protected inputs: PGD against the base or the "
                          "patched generator)?"), "", reporting.markdown_table(v_header, v_rows)]
        done = time.perf_counter()
        summary.timings = {"loading_seconds": loaded - start, "evaluation_seconds": done - loaded,
                           "total_seconds": done - start}
        if os.path.isfile(grid_path):
            summary.staged[reporting.GRID] = grid_path
        summary.report = "\n".join([
            f"# lora-patch evaluate: {s.patch} on {s.generator}", "",
            (f"{data_desc}. Default scenario: the perturbation is computed on the base generator; leakage: on the "
             f"patched generator. Success = {_CRITERION_WORDS[s.criterion]} > {results[0].threshold:g}."), "",
            *body, "",
            f"![input / protected / base clean / base protected / patched clean / patched protected]({reporting.GRID})",
            "", f"command: `{shlex.join(['lora-patch', *s.argv])}`", "", versions_line(s),
        ])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary
