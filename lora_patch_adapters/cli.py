"""The ``lora-patch`` command line (also ``python -m lora_patch_adapters``).

Subcommands::

    lora-patch presets [NAME]            the named LoraPatchConfig presets as JSON
    lora-patch train --out DIR ...       train a bypass patch (the paper's attack) and evaluate PGD before / after
    lora-patch train-defensive --out DIR train a defensive (visible-warning) patch and check the warning is visible
    lora-patch evaluate PATCH ...        load a saved patch onto its generator and run the evaluation protocol
    lora-patch demo [--out DIR]          the offline demo on the shipped testbed editor
    lora-patch audit [--defense SPEC]... adaptive-attack report (HTML, Markdown, JSON) for proactive defenses
    lora-patch forensics --model M ...   has this generator been patched? (merged low-rank, unmerged, other)

Every train / train-defensive / evaluate run writes ``summary.json`` (the arguments, seed, versions, device, timings
and results), ``report.md`` and ``grid.png`` into its output folder and prints where they are.

Decisions:

* Official generators (``stargan``, ``attgan``, ``attgan_inject1``, ``hisd``) need ``--checkpoint``: a patch trained or
  evaluated on random weights means nothing. ``--allow-random-weights`` runs without one (smoke tests); the random
  weights are drawn from ``--seed``, so the same seed gives the same generator in ``train`` and ``evaluate``.
* Without ``--data``/``--attr-file`` the testbed editor uses the procedural testbed faces (train split for training,
  test split for evaluation); the official generators need CelebA, read with the generator's preprocessing preset
  (HiSD and the testbed, whose presets do not crop, get a square resize). ``--images`` caps the number of images
  (testbed default: 1000 for training, 50 for ``evaluate``; CelebA default: the whole split).
* After training, the held-out images come from the testbed's test split, or from the other paper split of CelebA.
  The evaluation defense is the PGD the patch was trained against (``--eps``, ``--pgd-steps``, ``--pgd-step-size``;
  the defaults are the field's eps 0.05, 10 x 0.01); ``lora-patch evaluate`` measures other defenses and strengths.
* Errors in the user's input print one line ``lora-patch <command>: error: <message>`` and exit with 2 (usage) or
  1 (bad files, unavailable encoders, invalid settings found at run time, a diverging run); warnings print one line
  ``lora-patch <command>: warning: <message>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from .cli_audit import add_audit_command
from .cli_forensics import add_forensics_command
from .cli_hub import add_hub_commands
from .version import __version__

# Kept literal so that building the parser (``--help``, ``--version``) imports no torch; tests check that they match
# the library's constants.
GENERATORS = ("stargan", "attgan", "attgan_inject1", "hisd", "testbed")
OFFICIAL_GENERATORS = ("stargan", "attgan", "attgan_inject1", "hisd")
CELEBA_PRESETS = {"stargan": "stargan", "attgan": "attgan", "attgan_inject1": "attgan", "hisd": "hisd",
                  "testbed": "testbed"}
SPLITS = ("paper-train", "paper-test")
GATES = ("none", "basic", "input_adaptive", "input_adaptive_channel")
INITS = ("zero", "kaiming")
LR_SCHEDULES = ("constant", "cosine")
SCHEDULES = ("batched", "per_condition")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
DEFENSES = ("pgd", "ifgsm", "fgsm", "cmua", "anti_forgery")
SCENARIOS = ("default", "leakage", "both")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")
ENCODER_HINT = "to train without the encoders, pass --feature-weight 0 --semantic-weight 0"
GRID_IMAGES = 4
# --quick: one optimiser step per patch and target, one evaluation image (a smoke run; the numbers mean nothing).
QUICK_DEMO = {"train_images": 4, "eval_images": 1, "watermark_train_images": 2, "watermark_eval_images": 1,
              "bypass_inner_steps": 1, "watermark_inner_steps": 1}


class CLIError(Exception):
    """A user error found by the command line itself; ``code`` 2 for usage errors, 1 otherwise."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``, exit code 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------------------------- argument types
def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 switches the term off), got {text!r}")
    return value


def eps_value(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] on the [-1, 1] image scale (0.05 is usual), got {text!r}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r}")
    return value


def device_name(text: str) -> str:
    """A torch device string that exists on this machine ("cpu", "cuda", "cuda:1", "mps")."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (e.g. cpu, cuda, cuda:0, mps)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {text!r} (cpu, cuda[:N] or mps)")
    return text


def defense_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DEFENSES]
    if unknown or not names:
        what = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown defense {what}; choose from {', '.join(DEFENSES)} (repeat the "
                                         "flag or separate names with commas)")
    return names


# ------------------------------------------------------------------------------------------------------- parser
def _add_common(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    p.add_argument("--generator", choices=GENERATORS, default="testbed",
                   help="the editor to patch (default: testbed, the small StarGAN shipped with the package)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="official generator weights (StarGAN 200000-G.ckpt, AttGAN weights.199.pth, HiSD "
                        "gen_00600000.pt); required for the official generators; testbed: another testbed file")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run an official generator without --checkpoint on random weights drawn from --seed "
                        "(a smoke test: results are meaningless)")
    p.add_argument("--data", metavar="DIR", help="CelebA image folder (e.g. celeba/img_align_celeba); with --attr-file")
    p.add_argument("--attr-file", metavar="FILE", help="CelebA attribute file (list_attr_celeba.txt); with --data")
    p.add_argument("--out", metavar="DIR", required=out_required,
                   help="output folder for summary.json, report.md, grid.png" + (" and the patch" if out_required
                                                                                 else ""))
    p.add_argument("--seed", type=non_negative_int, default=42, help="seed for everything (default: 42)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")


def _add_training(p: argparse.ArgumentParser, preset: str, feature_weight: float, semantic_weight: float) -> None:
    _add_common(p)
    p.add_argument("--split", choices=SPLITS, default="paper-train",
                   help="CelebA rows to train on (default: paper-train, the first 1000); held-out images come from "
                        "the other split")
    p.add_argument("--images", type=positive_int, metavar="N",
                   help="training images: testbed faces to draw (default 1000) or a cap on the CelebA split "
                        "(default: all of it)")
    p.add_argument("--workers", type=non_negative_int, metavar="N", default=0,
                   help="DataLoader workers for CelebA (default: 0)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, metavar="N", default=1, help="passes over the data (default: 1)")
    g.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N batches (default: no limit)")
    g.add_argument("--batch-size", type=positive_int, metavar="N", default=4, help="images per batch (default: 4)")
    g.add_argument("--lr", type=positive_float, metavar="X", default=1e-3, help="Adam learning rate (default: 1e-3)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant", help="(default: constant)")
    g.add_argument("--schedule", choices=SCHEDULES, default="batched",
                   help="batched: all target conditions of a batch in one step; per_condition: one optimiser step "
                        "per condition, the paper's schedule (default: batched)")
    g.add_argument("--grad-clip", type=positive_float, metavar="NORM", help="clip the global gradient norm")
    g.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="write a resumable checkpoint to OUT/checkpoints every N steps")
    g.add_argument("--keep-checkpoints", type=positive_int, metavar="N", default=2,
                   help="checkpoints kept on disk (default: 2)")
    g.add_argument("--resume", nargs="?", const="latest", metavar="PATH|latest",
                   help="continue from a checkpoint directory, or the newest one under OUT/checkpoints ('latest', "
                        "the value when the flag is given alone)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="the fast training path: no host syncs per step, fused Adam, bf16/channels_last by default "
                        "(default: on for CUDA devices)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on the fast path where the device has it (default: auto)")
    g.add_argument("--compile", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile the generator ({', '.join(COMPILE_MODES)}; default: eager)")
    g.add_argument("--cache-references", action="store_true",
                   help="keep the base generator's clean edits across epochs (deterministic data only)")
    g = p.add_argument_group("patch")
    g.add_argument("--preset", default=preset,
                   help=f"LoraPatchConfig preset (default: {preset}; see lora-patch presets)")
    g.add_argument("--rank", type=positive_int, metavar="N",
                   help="patch rank (default: the preset's: 8 for paper, 16 for paper-defensive)")
    g.add_argument("--init", choices=INITS, help="initialisation of the patch (default: the preset's, kaiming)")
    g.add_argument("--gate", choices=GATES, help="gate type (default: the preset's, basic)")
    g = p.add_argument_group("PGD (the inner attack the patch is trained against, and the evaluation after training)")
    g.add_argument("--eps", type=eps_value, default=0.05, help="L-inf budget on the [-1, 1] scale (default: 0.05)")
    g.add_argument("--pgd-steps", type=positive_int, metavar="N", default=10, help="PGD steps (default: 10)")
    g.add_argument("--pgd-step-size", type=positive_float, metavar="X", default=0.01,
                   help="PGD step size (default: 0.01)")
    g = p.add_argument_group("loss")
    g.add_argument("--pixel-weight", type=non_negative_float, metavar="W", default=1.0,
                   help="pixel MSE weight (default: 1)")
    g.add_argument("--feature-weight", type=non_negative_float, metavar="W", default=feature_weight,
                   help=f"ResNet-50 feature weight (default: {feature_weight:g}; 0 skips the encoder)")
    g.add_argument("--semantic-weight", type=non_negative_float, metavar="W", default=semantic_weight,
                   help=f"BLIP semantic weight (default: {semantic_weight:g}; 0 skips the encoder)")
    g.add_argument("--resnet-weights", default="IMAGENET1K_V1",
                   help="torchvision weights name or a state-dict file (default: IMAGENET1K_V1)")
    g.add_argument("--blip-model", default="Salesforce/blip-image-captioning-base",
                   help="Hub id or local directory (default: Salesforce/blip-image-captioning-base)")
    g.add_argument("--offline", action="store_true", help="encoders from local files / caches only, no download")
    p.add_argument("--eval-images", type=positive_int, default=16, metavar="N",
                   help="held-out images for the evaluation after training (default: 16)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lora-patch",
                     description="Gated LoRA patches for face-editing generators (a PEFT method).")
    parser.add_argument("--version", action="version", version=f"lora-patch-adapters {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    presets = sub.add_parser("presets", help="print the named LoraPatchConfig presets as JSON")
    presets.add_argument("name", nargs="?", help="one preset (default: all)")
    presets.set_defaults(func=_cmd_presets)

    train = sub.add_parser(
        "train", help="train a bypass patch and evaluate PGD before / after patching",
        description="Train a bypass patch (min-max: inner PGD against the patched generator, MMFA loss to the base "
                    "generator's clean edit), save it to OUT/patch, then evaluate PGD on held-out images (default "
                    "and leakage scenarios).")
    _add_training(train, preset="paper", feature_weight=0.1, semantic_weight=0.1)
    train.set_defaults(func=_cmd_train, kind="bypass")

    defensive = sub.add_parser(
        "train-defensive", help="train a defensive patch that stamps a visible warning on every edit",
        description="Train a defensive patch (the patched generator stamps a visible warning on its edits, also on "
                    "protected inputs), save it to OUT/patch and measure how often the warning is visible.")
    _add_training(defensive, preset="paper-defensive", feature_weight=0.0, semantic_weight=0.0)
    g = defensive.add_argument_group("watermark")
    g.add_argument("--text", default="AI-GENERATED", help="warning text (default: AI-GENERATED)")
    g.add_argument("--mark-image", metavar="PATH", help="a PNG (with alpha) used as the mark instead of the sign")
    g.add_argument("--position", choices=POSITIONS, default="bottom-right", help="(default: bottom-right)")
    g.add_argument("--mark-size", type=fraction, metavar="F", default=0.35,
                   help="mark width / image width (default: 0.35)")
    g.add_argument("--strength", type=positive_float, metavar="X", default=2.0, help="pattern multiplier (default: 2)")
    defensive.set_defaults(func=_cmd_train, kind="watermark")

    evaluate = sub.add_parser(
        "evaluate", help="load a saved patch and run the evaluation protocol",
        description="Load a saved patch directory onto its generator and measure how often each defense still "
                    "disrupts the edits, on the base and on the patched generator. Watermark patches also get "
                    "the visibility of the warning.")
    evaluate.add_argument("patch", metavar="PATCH", help="a patch directory (adapter_config.json, training.json)")
    _add_common(evaluate, out_required=False)
    evaluate.set_defaults(generator=None)
    for action in evaluate._actions:
        if action.dest == "generator":
            action.help = "the editor the patch belongs to (default: from the patch's training.json, else testbed)"
        if action.dest == "out":
            action.help = "output folder (default: evaluation/ next to PATCH)"
    evaluate.add_argument("--split", choices=SPLITS, default="paper-test", help="CelebA rows (default: paper-test)")
    evaluate.add_argument("--images", type=positive_int, metavar="N",
                          help="images: testbed test faces (default 50) or a cap on the CelebA split (default: all)")
    evaluate.add_argument("--defense", type=defense_list, action="append", metavar="NAME[,NAME]",
                          help=f"{', '.join(DEFENSES)}; repeatable or comma-separated (default: pgd)")
    evaluate.add_argument("--scenario", choices=SCENARIOS, default="both",
                          help="default: perturbation computed on the base generator; leakage: on the patched one "
                               "(default: both)")
    evaluate.add_argument("--eps", type=eps_value, default=0.05,
                          help="defense budget: L-inf on the [-1, 1] scale; anti_forgery: normalised Lab a/b units "
                               "(default: 0.05)")
    evaluate.add_argument("--steps", type=positive_int, metavar="N",
                          help="iterations of the iterative defenses, step size 2 * eps / N (default: 10; "
                               "anti_forgery: 100 Adam steps)")
    evaluate.add_argument("--batch-size", type=positive_int, metavar="N", default=16,
                          help="images per batch (default: 16)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=_cmd_evaluate)

    demo = sub.add_parser("demo", help="the offline demo on the testbed editor (a few minutes on a CPU)",
                          description="Train a bypass and a defensive patch on the shipped testbed editor and "
                                      "report the defense before / after, fidelity, reload and warning visibility.")
    demo.add_argument("--out", metavar="DIR", default=os.path.join("runs", "demo"), help="(default: runs/demo)")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="(default: 0)")
    demo.add_argument("--device", type=device_name, default="cpu", help="(default: cpu)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--quick", action="store_true", help="a fast smoke run (numbers meaningless)")
    demo.set_defaults(func=_cmd_demo)

    add_hub_commands(sub)  # push, pull, inspect
    add_forensics_command(sub)
    add_audit_command(sub)
    return parser


# ----------------------------------------------------------------------------------------------------- commands
def _cmd_presets(args: argparse.Namespace) -> int:
    from .tuner.config import PRESETS, LoraPatchConfig

    if args.name is not None and args.name not in PRESETS:
        print(f"lora-patch: unknown preset {args.name!r}; choose one of {sorted(PRESETS)}", file=sys.stderr)
        return 2
    names = [args.name] if args.name else sorted(PRESETS)
    out = {}
    for name in names:
        config = LoraPatchConfig.from_preset(name)
        out[name] = {**PRESETS[name], "scale": config.scale}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings(seed=args.seed, device=args.device, **(QUICK_DEMO if args.quick else {}))
    run_demo(args.out, settings, progress=not args.no_progress)
    return 0


def _check_generator_args(args: argparse.Namespace, generator: str) -> None:
    if generator in OFFICIAL_GENERATORS and args.checkpoint is None and not args.allow_random_weights:
        raise CLIError(f"--generator {generator} needs --checkpoint PATH (the official weights); pass "
                       "--allow-random-weights to run on random weights (a smoke test: results are meaningless)", 2)
    if (args.data is None) != (args.attr_file is None):
        raise CLIError("--data and --attr-file go together (the CelebA image folder and list_attr_celeba.txt)", 2)
    if args.data is None and generator != "testbed":
        raise CLIError(f"--generator {generator} needs CelebA: pass --data DIR --attr-file FILE (the procedural "
                       "testbed faces only fit the testbed editor)", 2)


def _load_editor(args: argparse.Namespace, generator: str):
    """The editor, with random weights (if any) drawn from --seed so every load gives the same network."""
    import torch

    from .generators import load_editor

    torch.manual_seed(args.seed)
    return load_editor(generator, checkpoint=args.checkpoint, device=args.device)


def _celeba(args: argparse.Namespace, editor, generator: str, split: str, limit: int | None):
    from torch.utils.data import Subset

    from .data import PRESETS, CelebA

    preset = CELEBA_PRESETS[generator]
    # presets without a crop (hisd, testbed) would turn the 178x218 aligned CelebA into non-square tensors: resize
    # to the square the generator was trained at (CelebA-HQ images are square already)
    size = (PRESETS[preset].size,) * 2 if PRESETS[preset].crop is None else None
    dataset = CelebA(args.data, args.attr_file, attributes=editor.attribute_names, preset=preset, split=split,
                     size=size)
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    return dataset


def _tensors(dataset) -> tuple[Any, Any]:
    import torch

    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise CLIError("no images to evaluate on (the selection is empty)")
    return torch.stack([x for x, _ in items]), torch.stack([labels for _, labels in items])


def _images(args: argparse.Namespace, editor, generator: str, testbed_split: str, celeba_split: str,
            n: int | None, testbed_n: int):
    """(images, labels) tensors: ``n`` (default ``testbed_n``) testbed faces of ``testbed_split``, or the first ``n``
    (default: all) CelebA images of ``celeba_split``."""
    from .data import testbed_faces

    if args.data is None:
        return testbed_faces(n or testbed_n, seed=args.seed, split=testbed_split)
    return _tensors(_celeba(args, editor, generator, celeba_split, n))


def _other_split(split: str) -> str:
    return "paper-test" if split == "paper-train" else "paper-train"


def _environment(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    import torch

    arguments = {k: v for k, v in vars(args).items() if k not in ("func", "argv")}
    return {"command": args.command, "argv": list(argv), "arguments": arguments, "seed": args.seed,
            "version": __version__, "torch": torch.__version__, "device": args.device,
            "threads": torch.get_num_threads()}


def _finish(out: str, summary: dict[str, Any], report: str, extra: dict[str, str] | None = None) -> None:
    from . import reporting

    paths = reporting.write_run(out, summary, report)
    print(f"summary: {paths['summary']}")
    print(f"report:  {paths['report']}")
    if "grid" in paths:
        print(f"grid:    {paths['grid']}")
    for name, path in (extra or {}).items():
        print(f"{name + ':':9s}{path}")


def _versions_line(args: argparse.Namespace) -> str:
    import torch

    return f"lora-patch-adapters {__version__}, torch {torch.__version__}, device {args.device}, seed {args.seed}."


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _evaluation_rows(results: list) -> tuple[list[str], list[list[Any]]]:
    header = ["defense", "scenario", "success on base", "success on patched", "MSE base", "MSE patched",
              "clean PSNR (dB)"]
    rows = [[r.defense, r.scenario, _pct(r.success_rate_base), _pct(r.success_rate_patched),
             r.metrics["base_protected"]["mse"], r.metrics["patched_protected"]["mse"],
             r.metrics["patched_clean"]["psnr"]] for r in results]
    return header, rows


def _cmd_train(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    _check_generator_args(args, args.generator)
    from . import reporting
    from .defenses import PGD
    from .evaluation import compare, evaluate_defense
    from .losses import MMFALoss
    from .training import BypassTrainer, TrainingConfig, WatermarkTrainer, evaluate_watermark
    from .tuner.config import LoraPatchConfig
    from .watermark import Watermark

    watermark = None
    if args.kind == "watermark":
        if args.mark_image is not None and not os.path.isfile(args.mark_image):
            raise CLIError(f"--mark-image {args.mark_image!r}: no such file")
        watermark = Watermark(text=args.text, image_path=args.mark_image, position=args.position,
                              size=args.mark_size, strength=args.strength)
    overrides = {k: v for k, v in (("r", args.rank), ("init_weights", args.init), ("gate", args.gate))
                 if v is not None}
    patch_config = LoraPatchConfig.from_preset(args.preset, **overrides)
    config = TrainingConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                            lr_schedule=args.lr_schedule, schedule=args.schedule, seed=args.seed,
                            grad_clip=args.grad_clip, checkpoint_every=args.checkpoint_every,
                            keep_checkpoints=args.keep_checkpoints, progress=not args.no_progress,
                            fast=args.fast, precision=args.precision, compile=args.compile,
                            cache_references=args.cache_references)
    attack = PGD(eps=args.eps, steps=args.pgd_steps, step_size=args.pgd_step_size, seed=args.seed)
    loss = MMFALoss(pixel_weight=args.pixel_weight, feature_weight=args.feature_weight,
                    semantic_weight=args.semantic_weight, resnet_weights=args.resnet_weights,
                    blip_model=args.blip_model, local_files_only=args.offline)
    editor = _load_editor(args, args.generator)
    base = _load_editor(args, args.generator)
    if args.data is None:
        from .data import testbed_faces

        train_data = testbed_faces(args.images or 1000, seed=args.seed, split="train")
        n_train = int(train_data[0].shape[0])
        data_desc = f"{n_train} procedural testbed faces (train split, seed {args.seed})"
    else:
        train_data = _celeba(args, editor, args.generator, args.split, args.images)
        n_train = len(train_data)
        data_desc = f"{n_train} CelebA images ({args.split}) from {args.data}"
    eval_x, eval_labels = _images(args, editor, args.generator, "test", _other_split(args.split), args.eval_images,
                                  args.eval_images)
    os.makedirs(args.out, exist_ok=True)
    loaded = time.perf_counter()

    trainer_cls = WatermarkTrainer if args.kind == "watermark" else BypassTrainer
    extra = {"watermark": watermark} if watermark is not None else {}
    trainer = trainer_cls(editor, patch=patch_config, attack=attack, loss=loss, config=config, output_dir=args.out,
                          **extra)
    steps = math.ceil(n_train / args.batch_size) * args.epochs
    steps = min(steps, args.max_steps) if args.max_steps else steps
    print(f"training a {args.kind} patch on {args.generator}: {data_desc}, {steps} steps of {args.batch_size} "
          f"images, inner PGD-{args.pgd_steps} (eps {args.eps:g})" +
          (f", resuming from {args.resume}" if args.resume else ""))
    result = trainer.train(train_data, resume_from=args.resume, num_workers=args.workers)
    trained = time.perf_counter()
    metadata = {"generator": args.generator, "checkpoint": args.checkpoint, "data": data_desc,
                "command": ["lora-patch", *args.argv], "version": __version__}
    if watermark is not None:
        metadata["watermark"] = watermark.to_dict()
    patch_dir = trainer.save_patch(os.path.join(args.out, "patch"), metadata=metadata)
    if not trainer.dist.is_main:  # data-parallel launch: rank 0 evaluates and writes the report
        return 0
    history = result.history
    training = {"steps": result.steps, "epochs_completed": result.epochs_completed, "seconds": result.seconds,
                "first_loss": history[0]["loss"] if history else None, "final_loss": result.final_loss if history
                else None, "grad_norm": result.grad_norm_stats(), "checkpoints": result.checkpoints,
                "resumed_from": args.resume, "history": history}
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; loss "
          f"{training['first_loss'] if history else float('nan'):.4f} -> {result.final_loss:.4f}; patch: {patch_dir}")

    defense = PGD(eps=args.eps, steps=args.pgd_steps, step_size=args.pgd_step_size, seed=args.seed)
    grid_path = os.path.join(args.out, reporting.GRID)
    summary = _environment(args, args.argv)
    summary.update({"kind": args.kind, "generator": args.generator, "data": data_desc, "patch": patch_dir,
                    "patch_config": patch_config.to_dict(), "training_config": config.to_dict(),
                    "loss": loss.weights, "inner_attack": repr(trainer.attack), "training": training,
                    "eval_images": int(eval_x.shape[0]), "eval_defense": repr(defense)})
    summary["patch_config"] = {k: v for k, v in summary["patch_config"].items() if _plain(v)}
    if args.kind == "bypass":
        results = [evaluate_defense(defense, base, eval_x, eval_labels, patched=editor, scenario=scenario,
                                    grid_path=grid_path if scenario == "default" else None,
                                    progress=not args.no_progress)
                   for scenario in ("default", "leakage")]
        default, leakage = results
        summary.update({
            "defense_success_rate_before": default.success_rate_base,
            "defense_success_rate_after": default.success_rate_patched,
            "defense_success_rate_after_leakage": leakage.success_rate_patched,
            "clean_psnr_db": default.metrics["patched_clean"]["psnr"],
            "evaluation": {"default": default.to_dict(), "leakage": leakage.to_dict()},
        })
        print(compare(results))
        print(f"clean edits, patched vs base: PSNR {summary['clean_psnr_db']:.2f} dB")
        header, rows = _evaluation_rows(results)
        body = [
            (f"PGD (eps {args.eps:g}, {args.pgd_steps} x {args.pgd_step_size:g}) on {eval_x.shape[0]} "
            f"held-out image(s) x {default.n_conditions} targets; default scenario: the perturbation is computed on "
            "the base generator, leakage: on the patched generator. Success = MSE to the clean edit > "
            f"{default.threshold:g}."), "",
            reporting.markdown_table(header, rows), "",
            (f"![input / protected / base clean / base protected / patched clean / patched protected]"
            f"({reporting.GRID})"),
        ]
    else:
        visibility = evaluate_watermark(editor, base, watermark, eval_x, eval_labels, defense=defense,
                                        progress=not args.no_progress)
        summary.update({"watermark_visible_rate": visibility["visible_rate"], "watermark": visibility,
                        "watermark_settings": watermark.to_dict()})
        _watermark_grid(grid_path, editor, base, defense, eval_x, eval_labels)
        header, rows = _visibility_rows(visibility)
        print(reporting.text_table(header, rows))
        body = [
            (f"Is the warning visible? {eval_x.shape[0]} held-out image(s) x all targets; protected inputs use PGD "
            f"(eps {args.eps:g}, {args.pgd_steps} x {args.pgd_step_size:g}) against the base or the patched "
            "generator."), "",
            reporting.markdown_table(header, rows), "",
            (f"![input / base edit / patched edit / patched edit of the input protected against the patch]"
            f"({reporting.GRID})"),
        ]
    done = time.perf_counter()
    summary["timings"] = {"loading_seconds": loaded - start, "training_seconds": trained - loaded,
                          "evaluation_seconds": done - trained, "total_seconds": done - start}
    title = "bypass patch" if args.kind == "bypass" else "defensive (watermark) patch"
    first = f"{training['first_loss']:.4f}" if history else "n/a"
    report = "\n".join([
        f"# lora-patch {args.command}: {title} on {args.generator}", "",
        f"- data: {data_desc}",
        (f"- patch: `{patch_dir}` ({args.preset}, rank {patch_config.r}, gate {patch_config.gate}, init "
        f"{patch_config.init_weights})"),
        (f"- training: {result.steps} steps, batch {args.batch_size}, lr {args.lr:g} ({args.lr_schedule}), "
        f"{args.schedule}; inner PGD-{args.pgd_steps} eps {args.eps:g}; loss "
        + " + ".join(f"{w:g} {term}" for term, w in loss.weights.items() if w > 0)),
        (f"- loss {first} -> {result.final_loss:.4f}; max gradient norm "
        f"{training['grad_norm'].get('max', float('nan')):.4g}; {result.seconds:.1f} s"), "",
        *body, "",
        f"command: `{shlex.join(['lora-patch', *args.argv])}`", "", _versions_line(args),
    ])
    _finish(args.out, summary, report, {"patch": patch_dir})
    return 0


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def _visibility_rows(visibility: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = ["input", "warning visible"]
    rows = [["clean", _pct(visibility["visible_rate_clean"])],
            ["protected against the base generator", _pct(visibility["visible_rate_protected_vs_base"])],
            ["protected against the patched generator", _pct(visibility["visible_rate_protected_vs_patched"])],
            ["all", _pct(visibility["visible_rate"])]]
    return header, rows


def _watermark_grid(path: str, patched, base, defense, images, labels) -> None:
    """Rows: input, base edit, patched edit, patched edit of the input protected against the patched editor."""
    import torch

    from . import reporting

    x = images[:GRID_IMAGES].to(base.device)
    condition = base.conditions(labels[:GRID_IMAGES].to(base.device))[0]
    protected = defense.protect(x, patched, condition)
    with torch.no_grad():
        rows = [x, base.edit(x, condition), patched.edit(x, condition), patched.edit(protected, condition)]
    reporting.save_grid(path, rows)


def _read_patch(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise CLIError(f"patch directory {path!r} not found")
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise CLIError(f"{path!r} is not a patch directory (no adapter_config.json; train one with lora-patch train)")
    meta_path = os.path.join(path, "training.json")
    if not os.path.isfile(meta_path):
        return {}
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read {meta_path!r}: {exc}")
    return meta if isinstance(meta, dict) else {}


def _make_defense(name: str, args: argparse.Namespace):
    from .defenses.plugins import builtin_defense

    return builtin_defense(name, eps=args.eps, steps=args.steps, seed=args.seed)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    meta = _read_patch(args.patch)
    trained_on = meta.get("generator")
    if args.generator is not None and trained_on in GENERATORS and args.generator != trained_on:
        raise CLIError(f"the patch {args.patch!r} was trained on {trained_on!r} (training.json), not "
                       f"{args.generator!r}; pass --generator {trained_on}")
    generator = args.generator or (trained_on if trained_on in GENERATORS else "testbed")
    args.generator = generator
    _check_generator_args(args, generator)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.patch)), "evaluation")
    args.out = out
    names = list(dict.fromkeys(name for group in (args.defense or [["pgd"]]) for name in group))
    args.defense = names
    scenarios = ["default", "leakage"] if args.scenario == "both" else [args.scenario]

    from . import reporting
    from .evaluation import compare, evaluate_defense
    from .patch_io import load_patch
    from .training import evaluate_watermark
    from .watermark import Watermark

    defenses = [_make_defense(name, args) for name in names]
    watermark = None
    if meta.get("kind") == "watermark":
        watermark = Watermark.from_dict(meta["watermark"]) if isinstance(meta.get("watermark"), dict) else Watermark()
    editor = _load_editor(args, generator)
    base = _load_editor(args, generator)
    try:
        load_patch(editor, args.patch)  # validated before it touches the generator; patches it in place
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise CLIError(f"cannot load the patch {args.patch!r} onto {generator}: {_one_line(exc)[:500]}")
    images, labels = _images(args, editor, generator, "test", args.split, args.images, 50)
    fit_data = None
    if "cmua" in names:  # fitted on as many training images, never on the evaluation images
        n = int(images.shape[0])
        fit_data = _images(args, editor, generator, "train", _other_split(args.split), n, n)
    os.makedirs(out, exist_ok=True)
    loaded = time.perf_counter()
    grid_path = os.path.join(out, reporting.GRID)
    data_desc = (f"{images.shape[0]} procedural testbed faces (test split, seed {args.seed})" if args.data is None
                 else f"{images.shape[0]} CelebA images ({args.split}) from {args.data}")
    print(f"evaluating {args.patch} on {generator}: {data_desc}; defenses {', '.join(names)}; "
          f"scenarios {', '.join(scenarios)}")
    results = []
    for defense, name in zip(defenses, names):
        for scenario in scenarios:
            results.append(evaluate_defense(
                defense, base, images, labels, patched=editor, scenario=scenario, batch_size=args.batch_size,
                fit_data=fit_data if name == "cmua" else None, grid_path=None if results else grid_path,
                progress=not args.no_progress))
    print(compare(results))
    header, rows = _evaluation_rows(results)
    summary = _environment(args, args.argv)
    summary.update({"patch": os.path.abspath(args.patch), "patch_training": meta, "generator": generator,
                    "data": data_desc, "images": int(images.shape[0]),
                    "results": [r.to_dict() for r in results],
                    "rates": [{"defense": r.defense, "scenario": r.scenario,
                               "success_rate_base": r.success_rate_base, "success_rate_patched": r.success_rate_patched,
                               "clean_psnr_db": r.metrics["patched_clean"]["psnr"]} for r in results]})
    body = [reporting.markdown_table(header, rows)]
    if watermark is not None:
        visibility = evaluate_watermark(editor, base, watermark, images, labels, defense=_make_defense("pgd", args),
                                        batch_size=args.batch_size, progress=not args.no_progress)
        summary.update({"watermark_visible_rate": visibility["visible_rate"], "watermark": visibility})
        v_header, v_rows = _visibility_rows(visibility)
        print(reporting.text_table(v_header, v_rows))
        body += ["", ("Watermark patch: is the warning visible (protected inputs: PGD against the base or the "
                      "patched generator)?"), "", reporting.markdown_table(v_header, v_rows)]
    done = time.perf_counter()
    summary["timings"] = {"loading_seconds": loaded - start, "evaluation_seconds": done - loaded,
                          "total_seconds": done - start}
    report = "\n".join([
        f"# lora-patch evaluate: {args.patch} on {generator}", "",
        (f"{data_desc}. Default scenario: the perturbation is computed on the base generator; leakage: on the "
        f"patched generator. Success = MSE to the clean edit > {results[0].threshold:g}."), "",
        *body, "",
        f"![input / protected / base clean / base protected / patched clean / patched protected]({reporting.GRID})",
        "", f"command: `{shlex.join(['lora-patch', *args.argv])}`", "", _versions_line(args),
    ])
    _finish(out, summary, report)
    return 0


# --------------------------------------------------------------------------------------------------------- main
def _runtime_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input or settings (one-line error, exit 1), not bugs."""
    from .generators.checkpoints import CheckpointError
    from .hub import HubError
    from .losses import EncoderUnavailableError
    from .training import CheckpointError as TrainingCheckpointError
    from .training import NonFiniteLossError

    return (CLIError, CheckpointError, TrainingCheckpointError, EncoderUnavailableError, NonFiniteLossError,
            HubError, OSError, ValueError, TypeError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = argv
    prog = f"lora-patch {args.command}"
    seen: set[str] = set()

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        text = _one_line(message)
        if text not in seen:
            seen.add(text)
            print(f"{prog}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if args.command == "presets" or not isinstance(exc, _runtime_errors()):
                raise
            from .losses import EncoderUnavailableError

            message = _one_line(exc) or type(exc).__name__
            if isinstance(exc, EncoderUnavailableError):
                message += f" ({ENCODER_HINT})"
            print(f"{prog}: error: {message}", file=sys.stderr)
            return getattr(exc, "code", 1) if isinstance(exc, CLIError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
