"""``lora-patch train`` / ``train-defensive``: train a bypass or a defensive patch, then evaluate it
(:mod:`lora_patch_adapters.runs.train`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..training.config import INNER_STRATEGIES
from ..training.config import PRESETS as TRAINING_PRESETS
from ._args import (
    COMPILE_MODES,
    GATES,
    HARDEN_STEPS,
    HARDEN_WEIGHT,
    INITS,
    LR_SCHEDULES,
    PGD_EPS,
    PGD_STEP_SIZE,
    PGD_STEPS,
    POSITIONS,
    PRECISIONS,
    SCHEDULES,
    SPLITS,
    VARIATIONS,
    add_inputs,
    eps_value,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    settings_from,
)


def _add_training(p: argparse.ArgumentParser, preset: str, feature_weight: float, semantic_weight: float) -> None:
    add_inputs(p)
    p.add_argument("--split", choices=SPLITS, default="paper-train",
                   help="CelebA rows to train on (default: paper-train, the first 1000); held-out images come from "
                        "the other split")
    p.add_argument("--images", type=positive_int, metavar="N",
                   help="training images: testbed faces to draw (default 1000) or a cap on the CelebA split "
                        "(default: all of it)")
    p.add_argument("--workers", type=non_negative_int, metavar="N", default=0,
                   help="DataLoader workers for CelebA (default: 0)")
    g = p.add_argument_group("training")
    epochs = TRAINING_PRESETS[preset]["epochs"]
    g.add_argument("--epochs", type=positive_int, metavar="N", default=epochs,
                   help=f"passes over the data (default: {epochs}, the paper's)")
    g.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N batches (default: no limit)")
    g.add_argument("--batch-size", type=positive_int, metavar="N", default=4, help="images per batch (default: 4)")
    g.add_argument("--lr", type=positive_float, metavar="X", default=1e-3, help="Adam learning rate (default: 1e-3)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant", help="(default: constant)")
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="per_condition: one optimiser step per (batch, target condition), the paper's; batched: all "
                        "conditions of a batch in one step (default: per_condition, or batched with --fast)")
    g.add_argument("--grad-clip", type=positive_float, metavar="NORM", help="clip the global gradient norm")
    g.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="write a resumable checkpoint to OUT/checkpoints every N steps")
    g.add_argument("--keep-checkpoints", type=positive_int, metavar="N", default=2,
                   help="checkpoints kept on disk (default: 2)")
    g.add_argument("--resume", nargs="?", const="latest", metavar="PATH|latest",
                   help="continue from a checkpoint directory, or the newest one under OUT/checkpoints ('latest', "
                        "the value when the flag is given alone)")
    g.add_argument("--force-resume", action="store_true",
                   help="resume even when the checkpoint was written by another run configuration (patch, schedule, "
                        "batch size, seed, learning rate, attack, loss or data); refused by default")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--fast", action=argparse.BooleanOptionalAction, default=False,
                   help="opt-in throughput recipe (training preset 'fast'): batched schedule, no host syncs per step, "
                        "fused Adam, bf16 autocast and channels_last where the device has them; not the paper's "
                        "recipe (its measured quality gap: README)")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="fp32, bf16, or auto (bf16 on the fast path where the device has it) (default: fp32, or auto "
                        "with --fast)")
    g.add_argument("--compile", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile the generator ({', '.join(COMPILE_MODES)}; default: eager)")
    g.add_argument("--cache-references", action="store_true",
                   help="keep the base generator's clean edits across epochs (deterministic data only)")
    g.add_argument("--inner", choices=INNER_STRATEGIES, default="pgd",
                   help="inner maximisation: pgd (the paper: --pgd-steps signed steps from a random start), fgsm_rs "
                        "(one step of 1.25 eps from a random start), free (each batch replayed --replays times, "
                        "one backward pass per update also moving the perturbation) (default: pgd)")
    g.add_argument("--inner-steps", type=positive_int, metavar="N",
                   help="pgd: training attack steps, without changing the evaluation's --pgd-steps")
    g.add_argument("--replays", type=positive_int, metavar="M", default=4, help="free: replays per batch (default: 4)")
    g.add_argument("--inner-warm-start", action="store_true",
                   help="pgd: start each image's attack where its previous one ended (per condition and epoch)")
    g = p.add_argument_group("patch")
    g.add_argument("--preset", default=preset,
                   help=f"LoraPatchConfig preset (default: {preset}; see lora-patch presets)")
    g.add_argument("--rank", type=positive_int, metavar="N",
                   help="patch rank (default: the preset's: 8 for paper, 16 for paper-defensive)")
    g.add_argument("--init", choices=INITS, help="initialisation of the patch (default: the preset's, kaiming)")
    g.add_argument("--gate", choices=GATES, help="gate type (default: the preset's, basic)")
    g = p.add_argument_group("PGD (the inner attack the patch is trained against, and the evaluation after training)")
    g.add_argument("--eps", type=eps_value, default=PGD_EPS,
                   help=f"L-inf budget on the [-1, 1] scale (default: {PGD_EPS})")
    g.add_argument("--pgd-steps", type=positive_int, metavar="N", default=PGD_STEPS,
                   help=f"PGD steps (default: {PGD_STEPS})")
    g.add_argument("--pgd-step-size", type=positive_float, metavar="X", default=PGD_STEP_SIZE,
                   help=f"PGD step size (default: {PGD_STEP_SIZE})")
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


def _variations(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or any(n not in VARIATIONS for n in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names among {','.join(VARIATIONS)}, got {text!r}")
    return names


def add_train_commands(sub: Any) -> None:
    """Register ``train`` and ``train-defensive``."""
    train = sub.add_parser(
        "train", help="train a bypass patch and evaluate PGD before / after patching",
        description="Train a bypass patch (min-max: inner PGD against the patched generator, MMFA loss to the base "
                    "generator's clean edit), save it to OUT/patch, then evaluate PGD on held-out images (default "
                    "and leakage scenarios).")
    _add_training(train, preset="paper", feature_weight=0.1, semantic_weight=0.1)
    train.set_defaults(func=cmd_train, kind="bypass")

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
    g.add_argument("--vary", type=_variations, default=(), metavar="position[,opacity]",
                   help="vary the mark per output with the target condition: position (corner to corner; --position "
                        "must be a corner) and/or opacity (default: the same mark on every edit)")
    g = defensive.add_argument_group("hardening (not the paper's recipe; see lora-patch audit-defensive)")
    g.add_argument("--harden", action="store_true",
                   help="train the warning against simulated removal attacks (first-order meta-learning: a fresh LoRA "
                        "attacker fine-tunes the defended generator for --harden-steps steps, the warning must "
                        "survive); off the fast path only")
    g.add_argument("--harden-steps", type=positive_int, metavar="K", default=HARDEN_STEPS,
                   help=f"simulated attacker steps per training forward (default: {HARDEN_STEPS}; with --harden)")
    g.add_argument("--harden-weight", type=positive_float, metavar="W", default=HARDEN_WEIGHT,
                   help=f"weight of the loss after the simulated attack (default: {HARDEN_WEIGHT:g}; with --harden)")
    defensive.set_defaults(func=cmd_train, kind="watermark")


def cmd_train(args: argparse.Namespace) -> int:
    from ..runs import reporting
    from ..runs.train import TrainSettings, run_train

    summary = run_train(settings_from(args, TrainSettings))
    if summary.results:  # rank 0 of a data-parallel launch, or a single process
        reporting.print_outputs(reporting.write_run(args.out, summary))
    return 0
