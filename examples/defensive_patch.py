"""Train a defensive patch: the patched face editor stamps a visible warning on every edit it makes.

The opposite use of a patch: a model owner who publishes a face-editing generator patches it so that each edit
carries a visible "AI-GENERATED" warning sign (a :class:`~lora_patch_adapters.Watermark`). The training target is
the frozen generator's clean edit with the warning added, ``clamp(y_ref + strength * W, -1, 1)``; as for a bypass
patch, the loop is min-max, so the warning also survives inputs perturbed by PGD against the patched
generator (a user trying to make the warning disappear). The loss is pixel MSE (the target is a pixel pattern).

Official StarGAN + CelebA (the paper's defensive setup; a GPU is strongly recommended):

    python examples/defensive_patch.py \\
        --checkpoint stargan_celeba_256/models/200000-G.ckpt \\
        --celeba-images celeba/img_align_celeba --attr-file celeba/list_attr_celeba.txt \\
        --out runs/defensive_stargan

Offline, on the package's testbed editor (a small StarGAN over synthetic 64x64 faces, shipped with the package;
about five minutes on 2 CPU cores; in our run the warning was visible on 100% of the outputs, clean and protected):

    python examples/defensive_patch.py --testbed --images 32 --batch-size 2 --lr 1e-2 --schedule per_condition \\
        --eval-images 4 --out runs/defensive_testbed

The testbed is never picked silently: without ``--testbed`` the official files are required, and a missing one is
reported in one line. Data splits as in the paper: training on the first ``--images`` of ``split="paper-train"``,
evaluation on the first ``--eval-images`` of ``split="paper-test"`` (testbed: separate train / test face streams).

Writes to ``--out``: the patch (``patch/``: ``adapter_config.json``, ``adapter_model.safetensors``,
``lora_patch.json``, whose training record holds the watermark settings), ``watermark_preview.png`` (the warning on
a grey image), ``grid.png`` (rows: input, base edit, patched edit, patched edit of an input protected with PGD
against the patched generator) and ``results.json`` (the visibility numbers of
:func:`~lora_patch_adapters.evaluation.evaluate_watermark`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

import torch
from torch.utils.data import Subset

import lora_patch_adapters as lpa
from lora_patch_adapters.data import SPLITS, CelebA, read_attr_file
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.evaluation import evaluate_watermark
from lora_patch_adapters.generators import CheckpointError
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.runs import reporting
from lora_patch_adapters.training import (
    SCHEDULES,
    TrainingConfig,
    WatermarkTrainer,
    latest_checkpoint,
)
from lora_patch_adapters.training.watermark import POSITIONS, Watermark, save_preview

PAPER_TRAIN_IMAGES = SPLITS["paper-train"][1] - SPLITS["paper-train"][0]  # 1000
PAPER_TEST_IMAGES = SPLITS["paper-test"][1] - SPLITS["paper-test"][0]  # 1000
GRID_IMAGES = 4  # columns of grid.png


def fail(message: object) -> NoReturn:
    """Stop with a one-line error on stderr (exit status 1) instead of a traceback."""
    sys.exit(f"{os.path.basename(sys.argv[0])}: error: {' '.join(str(message).split())}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    files = parser.add_argument_group("official files (not needed with --testbed)")
    files.add_argument("--checkpoint", help="the official StarGAN generator checkpoint, 200000-G.ckpt")
    files.add_argument("--celeba-images", metavar="DIR", help="CelebA's img_align_celeba folder")
    files.add_argument("--attr-file", metavar="FILE", help="CelebA's list_attr_celeba.txt")
    files.add_argument("--testbed", action="store_true",
                       help="use the shipped testbed editor and synthetic faces instead (offline, CPU)")

    mark = parser.add_argument_group("the warning")
    mark.add_argument("--text", default="AI-GENERATED", help="caption under the warning sign (default AI-GENERATED; "
                                                             "drawn only where it is legible)")
    mark.add_argument("--position", default="bottom-right", choices=POSITIONS)
    mark.add_argument("--mark-size", type=float, default=0.35, help="width of the mark / image width (default 0.35)")
    mark.add_argument("--strength", type=float, default=2.0,
                      help="multiplier of the warning pattern in the target (default 2: fully saturated)")
    mark.add_argument("--mark-image", metavar="PNG", help="your own mark (RGBA PNG) instead of the warning sign")

    run = parser.add_argument_group("run")
    run.add_argument("--out", default=os.path.join("runs", "defensive_patch"), help="output folder")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--images", type=int, default=PAPER_TRAIN_IMAGES,
                     help=f"training images (default {PAPER_TRAIN_IMAGES}, the paper's training set)")
    run.add_argument("--eval-images", type=int, default=50, help="held-out images to evaluate on (default 50)")
    run.add_argument("--seed", type=int, default=42, help="one seed for everything (default 42)")
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=1)
    training.add_argument("--max-steps", type=int, default=None,
                          help="stop after this many batches (default: run every epoch fully)")
    training.add_argument("--batch-size", type=int, default=4)
    training.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    training.add_argument("--schedule", choices=SCHEDULES, default="batched",
                          help="'batched': all target attributes of a batch in one optimiser step; 'per_condition': "
                               "one step per target attribute (the paper's schedule)")
    training.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    training.add_argument("--pgd-steps", type=int, default=10,
                          help="PGD steps of the inner attack and of the evaluation (default 10; eps 0.05, step 0.01)")
    args = parser.parse_args()

    for name in ("images", "eval_images", "epochs", "batch_size", "checkpoint_every", "pgd_steps"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.max_steps is not None and args.max_steps <= 0:
        parser.error("--max-steps must be positive")
    if not args.testbed:
        if args.images > PAPER_TRAIN_IMAGES:
            parser.error(f"--images: the paper's CelebA training split has {PAPER_TRAIN_IMAGES} images")
        if args.eval_images > PAPER_TEST_IMAGES:
            parser.error(f"--eval-images: the paper's CelebA test split has {PAPER_TEST_IMAGES} images")
    return args


def check_official_files(args: argparse.Namespace) -> None:
    """Fail early, in one line, when an official file is missing (before anything heavy is loaded)."""
    hint = "or pass --testbed to try the script offline"
    if args.checkpoint is None:
        fail(f"--checkpoint is required: the official StarGAN generator 200000-G.ckpt ({hint})")
    if not os.path.isfile(args.checkpoint):
        fail(f"StarGAN checkpoint not found: {args.checkpoint} (expected the official 200000-G.ckpt; {hint})")
    if args.celeba_images is None or args.attr_file is None:
        fail(f"--celeba-images and --attr-file are required: CelebA's img_align_celeba folder and "
             f"list_attr_celeba.txt ({hint})")
    if not os.path.isdir(args.celeba_images):
        fail(f"CelebA image folder not found: {args.celeba_images} ({hint})")
    if not os.path.isfile(args.attr_file):
        fail(f"CelebA attribute file not found: {args.attr_file} ({hint})")


def load_setup(args: argparse.Namespace):
    """The editor to patch, a frozen copy (the unpatched model), the training data and the test images."""
    if args.testbed:
        editor = lpa.load_editor("testbed", device=args.device)
        base = lpa.load_editor("testbed", device=args.device)
        train_data = lpa.testbed_faces(args.images, seed=args.seed, split="train")  # (images, labels) tensors
        test_images, test_labels = lpa.testbed_faces(args.eval_images, seed=args.seed, split="test")
        return editor, base, train_data, test_images, test_labels

    editor = lpa.load_editor("stargan", checkpoint=args.checkpoint, device=args.device)
    base = lpa.load_editor("stargan", checkpoint=args.checkpoint, device=args.device)
    table = read_attr_file(args.attr_file)  # parsed once, shared by both splits
    train_set = CelebA(args.celeba_images, table, preset="stargan", split="paper-train")
    if args.images < len(train_set):
        train_set = Subset(train_set, range(args.images))
    test_set = CelebA(args.celeba_images, table, preset="stargan", split="paper-test")
    pairs = [test_set[i] for i in range(args.eval_images)]
    return editor, base, train_set, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def main() -> None:
    args = parse_args()
    if not args.testbed:
        check_official_files(args)
    if args.resume and latest_checkpoint(args.out) is None:
        fail(f"--resume: no checkpoint under {os.path.join(args.out, 'checkpoints')}")

    # ---- 1. the warning, the models and the data (setup errors in one line)
    try:
        watermark = Watermark(text=args.text, position=args.position, size=args.mark_size, strength=args.strength,
                              image_path=args.mark_image)
        editor, base, train_data, test_images, test_labels = load_setup(args)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(exc)
    base.generator.requires_grad_(False)
    os.makedirs(args.out, exist_ok=True)
    preview = save_preview(os.path.join(args.out, "watermark_preview.png"), watermark)
    n_train = len(train_data[0]) if isinstance(train_data, tuple) else len(train_data)
    source = "testbed editor + synthetic faces" if args.testbed else f"StarGAN {args.checkpoint} + CelebA"
    print(f"{source}: {n_train} training images, {len(test_images)} test images, "
          f"{len(editor.attribute_names)} target attributes, device {args.device}")
    print(f"warning: {args.mark_image or repr(args.text)} at {args.position}, width {args.mark_size:.0%}, strength "
          f"{args.strength:g}; preview {preview}")

    # ---- 2. train. The "paper-defensive" preset is the bypass recipe at rank 16 (gated LoRA on every conv and
    # linear layer); the inner PGD attacks the current patched generator, so the warning learns to survive it.
    trainer = WatermarkTrainer(
        editor,  # patched in place
        watermark=watermark,
        patch=lpa.LoraPatchConfig.from_preset("paper-defensive"),
        attack=PGD(eps=0.05, steps=args.pgd_steps, step_size=0.01, seed=args.seed),
        loss=MMFALoss.pixel_only(),
        config=TrainingConfig(
            epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
            schedule=args.schedule, seed=args.seed, checkpoint_every=args.checkpoint_every,
            progress=not args.no_progress,
        ),
        output_dir=args.out,
    )
    n_trainable, n_total = trainer.model.get_nb_trainable_parameters()
    print(f"patch: rank {trainer.model.peft_config['default'].r}, {n_trainable:,} trainable parameters "
          f"({100 * n_trainable / n_total:.2f}% of {n_total:,})")
    result = trainer.train(train_data, resume_from="latest" if args.resume else None)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; final loss {result.final_loss:.5f}")
    patch_dir = lpa.save_patch(trainer, os.path.join(args.out, "patch"),
                               metadata={"source": source, "watermark": watermark.to_dict()})
    print(f"saved the patch to {patch_dir}")

    # ---- 3. is the warning visible? On clean inputs, on inputs protected with PGD against the base generator, and
    # on inputs protected with PGD against the patched generator (the perturbation then tries to remove the warning).
    defense = PGD(eps=0.05, steps=args.pgd_steps, step_size=0.01, seed=args.seed)
    visibility = evaluate_watermark(editor, base, watermark, test_images, test_labels, defense=defense)
    print(f"\nwarning visible on {100 * visibility['visible_rate']:.1f}% of {3 * visibility['samples_per_kind']} "
          f"outputs ({visibility['samples_per_kind']} per input kind: images x target attributes)")
    print(f"{'input':22s}{'visible':>9s}{'correlation':>13s}{'contrast':>10s}{'outside PSNR':>14s}")
    for kind in ("clean", "protected_vs_base", "protected_vs_patched"):
        print(f"{kind:22s}{100 * visibility[f'visible_rate_{kind}']:8.1f}%{visibility[f'{kind}_correlation']:13.3f}"
              f"{visibility[f'{kind}_contrast_ratio']:10.3f}{visibility[f'{kind}_outside_psnr']:11.2f} dB")

    # ---- 4. a picture: the first images under the first target attribute.
    x = test_images[:GRID_IMAGES].to(base.device)
    condition = base.conditions(test_labels[:GRID_IMAGES].to(base.device))[0]
    x_protected = defense.protect(x, editor, condition)  # PGD against the patched generator
    with torch.no_grad():
        rows = [x, base.edit(x, condition), editor.edit(x, condition), editor.edit(x_protected, condition)]
    grid_path = reporting.save_grid(os.path.join(args.out, "grid.png"), rows, [
        "input", "base: edit of input", "patched: edit of input", "patched: edit of protected (pgd)"])
    print(f"grid (input / base edit / patched edit / patched edit of the PGD-protected input): {grid_path}")

    results_path = os.path.join(args.out, "results.json")
    with open(results_path, "w") as f:
        json.dump({"args": vars(args), "patch": patch_dir, "watermark": watermark.to_dict(),
                   "training_steps": result.steps, "training_seconds": result.seconds,
                   "final_loss": result.final_loss, "visibility": visibility, "version": lpa.__version__},
                  f, indent=2, sort_keys=True)
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
