"""The train pipeline (``lora-patch train`` / ``train-defensive``): train a bypass or defensive patch, save it, and
evaluate it on held-out images.

After training, the held-out images come from the testbed's test split, or from the other paper split of CelebA.
The evaluation defense is the PGD the patch was trained against (``eps``, ``pgd_steps``, ``pgd_step_size``; the
defaults are the field's eps 0.05, 10 x 0.01); the evaluate pipeline measures other defenses and strengths.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..defenses.base import Defense
from ..defenses.pgd import PGD, PGD_EPS, PGD_STEP_SIZE, PGD_STEPS
from ..evaluation import EvaluationResult, compare, evaluate_defense, evaluate_watermark
from ..generators import Editor
from ..losses import MMFALoss
from ..patches import save_patch
from ..patches.format import SIDECAR_NAME
from ..training import BypassTrainer, NonFiniteLossError, TrainingConfig, Watermark, WatermarkTrainer
from ..training.config import PRESETS as TRAINING_PRESETS
from ..training.hardening import HardeningConfig
from ..tuner.config import LoraPatchConfig
from ..tuner.fingerprint import RANK_RULE, discover_target_modules, rank_bound, resolve_targets
from ..version import __version__
from . import reporting
from .errors import RunInputError
from .inputs import Inputs, other_split, stack
from .summary import RunSummary

KINDS = ("bypass", "watermark")
GRID_IMAGES = 4


@dataclass
class TrainSettings(Inputs):
    """Every setting of a training run (the ``lora-patch train`` flags of the same names)."""

    out: str = "runs/train"
    kind: str = "bypass"  # "bypass" or "watermark" (a defensive patch)
    split: str = "paper-train"
    images: int | None = None
    workers: int = 0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    lr: float = 1e-3
    lr_schedule: str = "constant"
    schedule: str | None = None  # None: the recipe's (per_condition; batched with fast)
    grad_clip: float | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    resume: str | None = None
    force_resume: bool = False
    no_progress: bool = False
    fast: bool = False  # the opt-in "fast" training preset instead of the paper's
    precision: str | None = None  # None: the recipe's (fp32; auto with fast)
    compile: str | None = None
    cache_references: bool = False
    inner: str = "pgd"  # the inner maximisation: "pgd" (the paper), "fgsm_rs", "free"
    inner_steps: int | None = None  # pgd: the training attack's steps (None: --pgd-steps)
    replays: int = 4  # free: replays per batch
    inner_warm_start: bool = False  # pgd: each image's attack starts where its previous one ended
    preset: str = "paper"
    rank: int | None = None
    init: str | None = None
    gate: str | None = None
    eps: float = PGD_EPS
    pgd_steps: int = PGD_STEPS
    pgd_step_size: float = PGD_STEP_SIZE
    pixel_weight: float = 1.0
    feature_weight: float = 0.1
    semantic_weight: float = 0.1
    resnet_weights: str = "IMAGENET1K_V1"
    blip_model: str = "Salesforce/blip-image-captioning-base"
    offline: bool = False
    eval_images: int = 16
    # the defensive patch's warning
    text: str = "AI-GENERATED"
    mark_image: str | None = None
    position: str = "bottom-right"
    mark_size: float = 0.35
    strength: float = 2.0
    vary: tuple[str, ...] = ()  # the warning's per-output variation (Watermark.vary)
    harden: bool = False  # defensive patches: train against simulated removal attacks (training.hardening)
    harden_steps: int = 4
    harden_weight: float = 1.0
    command: str = "train"
    argv: list[str] = field(default_factory=list)


def _inner_words(config: TrainingConfig, attack: Any) -> str:
    if config.inner == "free":
        return f"free ({config.replays} replays)"
    if config.inner == "fgsm_rs":
        return "FGSM-RS"
    return f"PGD-{getattr(attack, 'steps', '?')}" + (" (warm starts)" if config.inner_warm_start else "")


def _recipe_words(config: TrainingConfig) -> str:
    name = config.preset_name()
    words = f"the {name!r} recipe" if name else "a custom recipe: not one of the training presets"
    h = config.hardening
    if h is not None:
        words += (f"; hardened against simulated removal ({h.steps} attacker steps per forward, ranks "
                  f"{list(h.ranks)}, lrs {list(h.lrs)}, weight {h.weight:g})")
    return words


def _hardening(s: TrainSettings) -> HardeningConfig | None:
    """``--harden``'s settings; refused before anything is loaded where they cannot apply."""
    if not s.harden:
        return None
    if s.kind != "watermark":
        raise RunInputError("--harden applies to defensive patches (train-defensive) only", usage=True)
    if s.fast:
        raise RunInputError("--harden runs off the fast path: drop --fast", usage=True)
    return HardeningConfig(steps=s.harden_steps, weight=s.harden_weight)


def run_train(settings: TrainSettings, echo: Callable[[str], None] = print) -> RunSummary:
    """Train, save ``out/patch``, evaluate, write ``summary.json`` / ``report.md`` / ``grid.png`` into ``out``.

    In a data-parallel launch only rank 0 evaluates and writes the report; the other ranks return a summary without
    results.
    """
    s = settings
    start = time.perf_counter()
    s.check()
    watermark = None
    if s.kind == "watermark":
        if s.mark_image is not None and not os.path.isfile(s.mark_image):
            raise RunInputError(f"--mark-image {s.mark_image!r}: no such file")
        watermark = Watermark(text=s.text, image_path=s.mark_image, position=s.position, size=s.mark_size,
                              strength=s.strength, vary=tuple(s.vary))
    overrides = {k: v for k, v in (("r", s.rank), ("init_weights", s.init), ("gate", s.gate)) if v is not None}
    patch_config = LoraPatchConfig.from_preset(s.preset, **overrides)
    recipe = "fast" if s.fast else ("paper-defensive" if s.kind == "watermark" else "paper")
    s.schedule = s.schedule or TRAINING_PRESETS[recipe]["schedule"]
    s.precision = s.precision or TRAINING_PRESETS[recipe]["precision"]
    for flag, given in (("--inner-steps", s.inner_steps is not None), ("--inner-warm-start", s.inner_warm_start)):
        if given and s.inner != "pgd":
            raise RunInputError(f"{flag} applies to --inner pgd only, not to --inner {s.inner}", usage=True)
    config = TrainingConfig.from_preset(
        recipe, epochs=s.epochs, max_steps=s.max_steps, batch_size=s.batch_size, lr=s.lr, lr_schedule=s.lr_schedule,
        schedule=s.schedule, seed=s.seed, grad_clip=s.grad_clip, checkpoint_every=s.checkpoint_every,
        keep_checkpoints=s.keep_checkpoints, progress=not s.no_progress, precision=s.precision, compile=s.compile,
        cache_references=s.cache_references, force_resume=s.force_resume, inner=s.inner, inner_steps=s.inner_steps,
        replays=s.replays, inner_warm_start=s.inner_warm_start, hardening=_hardening(s))
    attack = PGD(eps=s.eps, steps=s.pgd_steps, step_size=s.pgd_step_size, seed=s.seed)
    loss = MMFALoss(pixel_weight=s.pixel_weight, feature_weight=s.feature_weight, semantic_weight=s.semantic_weight,
                    resnet_weights=s.resnet_weights, blip_model=s.blip_model, local_files_only=s.offline)
    editor, base = s.editor(), s.editor()
    _check_rank(editor, patch_config, s)
    if s.data is None:
        from ..data import testbed_faces

        train_data: Any = testbed_faces(s.images or 1000, seed=s.seed, split="train")
        n_train = int(train_data[0].shape[0])
        eval_x, eval_labels = s.images_for(editor, "test", other_split(s.split), s.eval_images, s.eval_images)
    else:  # counts checked against the files before anything is read, trained or written
        train_data = _first(s.celeba(editor, s.split), s.images, "--images", s)
        held_out = _first(s.celeba(editor, other_split(s.split)), s.eval_images, "--eval-images", s)
        n_train = len(train_data)
        eval_x, eval_labels = stack(held_out)
    data_desc = s.describe(n_train, "train", s.split)
    loaded = time.perf_counter()

    trainer_cls = WatermarkTrainer if s.kind == "watermark" else BypassTrainer
    extra = {"watermark": watermark} if watermark is not None else {}
    trainer = trainer_cls(editor, patch=patch_config, attack=attack, loss=loss, config=config, output_dir=s.out,
                          **extra)
    steps = math.ceil(n_train / s.batch_size) * s.epochs
    steps = min(steps, s.max_steps) if s.max_steps else steps
    echo(f"training a {s.kind} patch on {s.generator}: {data_desc}, {steps} steps of {s.batch_size} images, inner "
         f"PGD-{s.pgd_steps} (eps {s.eps:g})" + (f", resuming from {s.resume}" if s.resume else ""))
    result = trainer.train(train_data, resume_from=s.resume, num_workers=s.workers)
    trained = time.perf_counter()
    _check_replacement(trainer, os.path.join(s.out, "patch"), s.resume)
    os.makedirs(s.out, exist_ok=True)
    provenance = {"generator": s.generator, "checkpoint": s.checkpoint, "data": data_desc, "images": n_train,
                  "command": ["lora-patch", *s.argv], "version": __version__}
    if watermark is not None:
        provenance["watermark"] = watermark.to_dict()
    if callable(getattr(editor, "describe", None)):  # AttGAN targets, HiSD guidance: which edits it was trained on
        provenance["edits"] = editor.describe()
    patch_dir = save_patch(trainer, os.path.join(s.out, "patch"), metadata=provenance)
    summary = RunSummary(command=s.command, seed=s.seed, device=s.device, data=data_desc, argv=list(s.argv),
                         arguments=_arguments(s), outputs={"patch": patch_dir})
    if not trainer.dist.is_main:  # data-parallel launch: rank 0 evaluates and writes the report
        return summary
    history = result.history
    training = {"steps": result.steps, "epochs_completed": result.epochs_completed, "seconds": result.seconds,
                "first_loss": history[0]["loss"] if history else None,
                "final_loss": result.final_loss if history else None, "grad_norm": result.grad_norm_stats(),
                "checkpoints": result.checkpoints, "resumed_from": s.resume, "history": history}
    echo(f"trained {result.steps} steps in {result.seconds:.1f} s; loss "
         f"{training['first_loss'] if history else float('nan'):.4f} -> {result.final_loss:.4f}; patch: {patch_dir}")

    defense = PGD(eps=s.eps, steps=s.pgd_steps, step_size=s.pgd_step_size, seed=s.seed)
    grid_path = os.path.join(s.out, reporting.GRID)
    summary.results = {"kind": s.kind, "generator": s.generator, "patch": patch_dir,
                       "patch_config": {k: v for k, v in patch_config.to_dict().items() if _plain(v)},
                       "training_config": config.to_dict(), "training_preset": config.preset_name(),
                       "loss": loss.weights,
                       "inner_attack": repr(trainer.attack), "training": training,
                       "eval_images": int(eval_x.shape[0]), "eval_defense": repr(defense)}
    protocol = (f"PGD (eps {s.eps:g}, {s.pgd_steps} x {s.pgd_step_size:g})")
    if s.kind == "bypass":
        body = _evaluate_bypass(summary, defense, base, editor, eval_x, eval_labels, grid_path, protocol,
                                not s.no_progress, echo)
    else:
        body = _evaluate_watermark(summary, defense, base, editor, watermark, eval_x, eval_labels, grid_path,
                                   protocol, not s.no_progress, echo)
    done = time.perf_counter()
    summary.timings = {"loading_seconds": loaded - start, "training_seconds": trained - loaded,
                       "evaluation_seconds": done - trained, "total_seconds": done - start}
    title = "bypass patch" if s.kind == "bypass" else "defensive (watermark) patch"
    first = f"{training['first_loss']:.4f}" if history else "n/a"
    summary.report = "\n".join([
        f"# lora-patch {s.command}: {title} on {s.generator}", "",
        f"- data: {data_desc}",
        (f"- patch: `{patch_dir}` ({s.preset}, rank {patch_config.r}, gate {patch_config.gate}, init "
         f"{patch_config.init_weights})"),
        (f"- training ({_recipe_words(config)}): {result.steps} steps, batch {s.batch_size}, lr {s.lr:g} "
         f"({s.lr_schedule}), {s.schedule}, {s.precision}; "
         f"inner {_inner_words(config, trainer.attack)} eps {s.eps:g}; loss "
         + " + ".join(f"{w:g} {term}" for term, w in loss.weights.items() if w > 0)),
        (f"- loss {first} -> {result.final_loss:.4f}; max gradient norm "
         f"{training['grad_norm'].get('max', float('nan')):.4g}; {result.seconds:.1f} s"), "",
        *body, "",
        f"command: `{shlex.join(['lora-patch', *s.argv])}`", "", versions_line(s),
    ])
    return summary


def before_and_after(defense: Defense, base: Editor, patched: Editor, images: torch.Tensor, labels: torch.Tensor,
                     grid_path: str | None, progress: bool) -> tuple[list[EvaluationResult], dict[str, Any]]:
    """A bypass patch's headline: the defense before patching and after it, in the default scenario (protection
    computed on the base editor, grid written) and the leakage scenario (computed on the patched editor). Returns
    the two results and the record every run writes (``defense_success_rate_before`` / ``_after`` /
    ``_after_leakage``, ``clean_psnr_db``, ``evaluation``)."""
    results = [evaluate_defense(defense, base, images, labels, patched=patched, scenario=scenario,
                                grid_path=grid_path if scenario == "default" else None, progress=progress)
               for scenario in ("default", "leakage")]
    default, leakage = results
    record = {
        "defense_success_rate_before": default.success_rate_base,
        "defense_success_rate_after": default.success_rate_patched,
        "defense_success_rate_after_leakage": leakage.success_rate_patched,
        "clean_psnr_db": default.metrics["patched_clean"]["psnr"],
        "evaluation": {"default": default.to_dict(), "leakage": leakage.to_dict()},
    }
    return results, record


def _evaluate_bypass(summary: RunSummary, defense: PGD, base: Editor, editor: Editor, images: torch.Tensor,
                     labels: torch.Tensor, grid_path: str, protocol: str, progress: bool,
                     echo: Callable[[str], None]) -> list[str]:
    results, record = before_and_after(defense, base, editor, images, labels, grid_path, progress)
    default = results[0]
    summary.results.update(record)
    echo(compare(results))
    echo(f"clean edits, patched vs base: PSNR {summary.results['clean_psnr_db']:.2f} dB")
    header, rows = evaluation_rows(results)
    return [
        (f"{protocol} on {images.shape[0]} held-out image(s) x {default.n_conditions} targets; default scenario: the "
         "perturbation is computed on the base generator, leakage: on the patched generator. Success = MSE to the "
         f"clean edit > {default.threshold:g}."), "",
        reporting.markdown_table(header, rows), "",
        f"![input / protected / base clean / base protected / patched clean / patched protected]({reporting.GRID})",
    ]


def _evaluate_watermark(summary: RunSummary, defense: PGD, base: Editor, editor: Editor, watermark: Watermark,
                        images: torch.Tensor, labels: torch.Tensor, grid_path: str, protocol: str, progress: bool,
                        echo: Callable[[str], None]) -> list[str]:
    visibility = evaluate_watermark(editor, base, watermark, images, labels, defense=defense, progress=progress)
    summary.results.update({"watermark_visible_rate": visibility["visible_rate"], "watermark": visibility,
                            "watermark_settings": watermark.to_dict()})
    watermark_grid(grid_path, editor, base, defense, images, labels)
    header, rows = visibility_rows(visibility)
    echo(reporting.text_table(header, rows))
    return [
        (f"Is the warning visible? {images.shape[0]} held-out image(s) x all targets; protected inputs use "
         f"{protocol} against the base or the patched generator."), "",
        reporting.markdown_table(header, rows), "",
        ("![input / base edit / patched edit / patched edit of the input protected against the patch]"
         f"({reporting.GRID})"),
    ]


def _first(dataset: Any, n: int | None, flag: str, s: TrainSettings) -> Dataset:
    """The first ``n`` items of a CelebA split (all for None), refused with one line when the split has fewer rows
    or fewer of their image files exist."""
    wanted = len(dataset) if n is None else n
    asked = f"{flag} {n}" if n is not None else f"{flag} (default: the whole split, {wanted})"
    hub = not hasattr(dataset, "image_path")  # --data hf:...: every row holds its image (decoded when read)
    where = (f"the {dataset.split!r} split of {s.data}" if hub else f"the CelebA {dataset.split} split of "
             f"{s.attr_file}")
    if wanted > len(dataset):
        raise RunInputError(f"{asked}: {where} has {len(dataset)} images; pass {flag} between 1 and {len(dataset)}")
    if hub:
        return dataset if wanted == len(dataset) else Subset(dataset, range(wanted))
    present = next((i for i in range(wanted) if not dataset.image_path(i).is_file()), wanted)
    if present == 0 < wanted:
        raise RunInputError(f"{asked}: no image of the CelebA {dataset.split} split is under {s.data} "
                            f"({dataset.image_path(0)} is missing)")
    if present < wanted:
        raise RunInputError(f"{asked}: only the first {present} image(s) of the CelebA {dataset.split} split exist "
                            f"({dataset.image_path(present)} is missing); pass {flag} {present} or fewer")
    return dataset if wanted == len(dataset) else Subset(dataset, range(wanted))


def _check_replacement(trainer: Any, patch_dir: str, resume: str | None) -> None:
    """Never save NaN/Inf weights, and never let a resumed run replace ``patch_dir`` with an earlier state."""
    bad = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    kept = " (the patch there is left as it was)" if os.path.isdir(patch_dir) else ""
    if bad:
        raise NonFiniteLossError(f"The trained patch holds NaN/Inf in {len(bad)} tensor(s) (e.g. {bad[0]}); not "
                                 f"saving it to {patch_dir}{kept}. Resume from an earlier checkpoint (--resume PATH)")
    sidecar = os.path.join(patch_dir, SIDECAR_NAME)
    if resume is None or not os.path.isfile(sidecar):
        return
    try:
        with open(sidecar, encoding="utf-8") as f:
            steps = json.load(f)["training"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a readable trained patch: nothing good to protect
    if isinstance(steps, int) and trainer.step < steps:
        raise RunInputError(f"not replacing {patch_dir} (trained for {steps} steps) with the patch of this resumed "
                            f"run ({trainer.step} steps){kept}; resume from a later checkpoint, raise --max-steps / "
                            "--epochs, or choose another --out")


def _check_rank(editor: Editor, patch_config: LoraPatchConfig, s: TrainSettings) -> None:
    """Refuse, before the patch is allocated (its memory grows with the rank), a rank no layer of the generator can
    use: a layer's update has rank at most min(fan_in, fan_out)."""
    targets = discover_target_modules(editor.generator, patch_config.include_linear)
    names = targets if isinstance(targets, list) else resolve_targets(editor.generator, patch_config)
    if not names:
        return
    bound, widest = rank_bound(editor.generator, names)
    if patch_config.r > bound:
        raise RunInputError(f"--rank {patch_config.r} is larger than any layer of {s.generator} can use: a layer's "
                            f"update has rank at most min(fan_in, fan_out) ({RANK_RULE}), at most {bound} here "
                            f"(layer {widest!r}); pass --rank {bound} or less", usage=True)


def _arguments(settings: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(settings).items() if k not in ("command", "argv")}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def versions_line(settings: Inputs) -> str:
    return (f"lora-patch-adapters {__version__}, torch {torch.__version__}, device {settings.device}, "
            f"seed {settings.seed}.")


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def evaluation_rows(results: list) -> tuple[list[str], list[list[Any]]]:
    header = ["defense", "scenario", "success on base", "success on patched", "MSE base", "MSE patched",
              "clean PSNR (dB)"]
    rows = [[r.defense, r.scenario, pct(r.success_rate_base), pct(r.success_rate_patched),
             r.metrics["base_protected"]["mse"], r.metrics["patched_protected"]["mse"],
             r.metrics["patched_clean"]["psnr"]] for r in results]
    return header, rows


def visibility_rows(visibility: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = ["input", "warning visible"]
    rows = [["clean", pct(visibility["visible_rate_clean"])],
            ["protected against the base generator", pct(visibility["visible_rate_protected_vs_base"])],
            ["protected against the patched generator", pct(visibility["visible_rate_protected_vs_patched"])],
            ["all", pct(visibility["visible_rate"])]]
    return header, rows


def watermark_grid(path: str, patched: Editor, base: Editor, defense: Any, images: torch.Tensor,
                   labels: torch.Tensor) -> None:
    """Rows: input, base edit, patched edit, patched edit of the input protected against the patched editor."""
    x = images[:GRID_IMAGES].to(base.device)
    condition = base.conditions(labels[:GRID_IMAGES].to(base.device))[0]
    protected = defense.protect(x, patched, condition)
    with torch.no_grad():
        rows = [x, base.edit(x, condition), patched.edit(x, condition), patched.edit(protected, condition)]
    defense_name = getattr(defense, "name", type(defense).__name__)
    reporting.save_grid(path, rows, ["input", "base: edit of input", "defensive patch: edit of input",
                                     f"defensive patch: edit of protected ({defense_name})"])
