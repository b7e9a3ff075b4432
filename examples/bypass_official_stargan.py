"""Train a bypass patch on the official StarGAN with CelebA, the paper's setup, and evaluate it against PGD.

A *bypass patch* is a gated LoRA patch trained so that the patched StarGAN keeps producing its normal edit even when
the input photo carries a proactive "protection" perturbation (here PGD from Disrupting Deepfakes, eps 0.05). The
training loop is the paper's min-max: for every batch, PGD attacks the *current* patched generator (inner
maximisation), then one Adam step pulls the patched outputs on the clean and the protected images towards the frozen
generator's clean edit under the MMFA loss (pixel MSE + 0.1 x ResNet-50 features + 0.1 x BLIP semantics).

Paper setup (needs the official files; a GPU is strongly recommended):

    python examples/bypass_official_stargan.py \\
        --checkpoint stargan_celeba_256/models/200000-G.ckpt \\
        --celeba-images celeba/img_align_celeba --attr-file celeba/list_attr_celeba.txt \\
        --out runs/bypass_stargan

* ``--checkpoint``: the official generator ``200000-G.ckpt`` of yunjey/stargan (CelebA, 256x256, 5 attributes);
* ``--celeba-images`` / ``--attr-file``: CelebA's ``img_align_celeba`` folder and ``list_attr_celeba.txt``; training
  uses the paper's first 1000 images (``split="paper-train"``), evaluation the first ``--eval-images`` of the
  held-out rows from index 29000 (``split="paper-test"``);
* the ResNet-50 (``--resnet-weights``, torchvision's ImageNet weights by default) and BLIP vision model
  (``--blip-model``, a Hugging Face id or a local directory) of the MMFA loss are downloaded on first use unless
  ``--offline`` is given; ``--feature-weight 0 --semantic-weight 0`` trains with the pixel term alone.

Trying it offline: ``--testbed`` swaps in the package's small testbed editor (a StarGAN trained on procedural
64x64 faces, shipped with the package) and its synthetic faces, so the whole flow runs on a CPU without the official
files or any download (the numbers then say nothing about the paper's setting). A smoke run, a minute or two:

    python examples/bypass_official_stargan.py --testbed --images 4 --eval-images 2 --max-steps 2 --pgd-steps 2 \\
        --feature-weight 0 --semantic-weight 0 --out runs/bypass_testbed

A patch that actually bypasses PGD on the testbed takes about ten minutes on 2 CPU cores (in our run the defense's
success rate went from 100% on the base editor to 0% on the patched one, with clean edits at 30 dB PSNR):

    python examples/bypass_official_stargan.py --testbed --images 32 --eval-images 8 --schedule per_condition \\
        --lr 2e-3 --feature-weight 0 --semantic-weight 0 --out runs/bypass_testbed

Writes to ``--out``: the patch (``patch/``: ``adapter_config.json``, ``adapter_model.safetensors``,
``lora_patch.json``; load it with ``examples/load_saved_patch.py``), training checkpoints (``checkpoints/step-N``,
resumable with ``--resume``), ``results.json``, and one image grid per evaluation scenario (``grid_default.png``,
``grid_leakage.png``; rows: input, protected input, base clean edit, base edit of the protected input, patched clean
edit, patched edit of the protected input).
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
from lora_patch_adapters.evaluation import compare, evaluate_defense
from lora_patch_adapters.generators import CheckpointError
from lora_patch_adapters.losses import DEFAULT_BLIP_MODEL, EncoderUnavailableError, MMFALoss
from lora_patch_adapters.training import SCHEDULES, BypassTrainer, TrainingConfig, latest_checkpoint

PAPER_TRAIN_IMAGES = SPLITS["paper-train"][1] - SPLITS["paper-train"][0]  # 1000
PAPER_TEST_IMAGES = SPLITS["paper-test"][1] - SPLITS["paper-test"][0]  # 1000


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
                       help="use the shipped testbed editor and synthetic faces instead (offline, CPU, seconds)")

    run = parser.add_argument_group("run")
    run.add_argument("--out", default=os.path.join("runs", "bypass_stargan"), help="output folder")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--images", type=int, default=PAPER_TRAIN_IMAGES,
                     help=f"training images (default {PAPER_TRAIN_IMAGES}: the paper's training set, at most that "
                          "many with CelebA)")
    run.add_argument("--eval-images", type=int, default=50,
                     help="held-out images to evaluate on (default 50, the first of the paper's test rows)")
    run.add_argument("--seed", type=int, default=42, help="one seed for everything (default 42)")
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    training = parser.add_argument_group("training (defaults: the paper's)")
    training.add_argument("--epochs", type=int, default=1)
    training.add_argument("--max-steps", type=int, default=None,
                          help="stop after this many batches (default: run every epoch fully)")
    training.add_argument("--batch-size", type=int, default=4)
    training.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (betas 0.5, 0.999)")
    training.add_argument("--schedule", choices=SCHEDULES, default="batched",
                          help="'batched': all target attributes of a batch in one optimiser step; 'per_condition': "
                               "one step per target attribute (the paper's exact schedule, 5x the steps)")
    training.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    training.add_argument("--pgd-steps", type=int, default=10,
                          help="PGD steps of the inner attack and of the evaluated defense (default 10; eps 0.05, "
                               "step size 0.01 as in the paper)")

    loss = parser.add_argument_group("MMFA loss: pixel MSE (weight 1) + ResNet-50 features + BLIP semantics")
    loss.add_argument("--feature-weight", type=float, default=0.1, help="ResNet-50 feature term (default 0.1; 0: off)")
    loss.add_argument("--semantic-weight", type=float, default=0.1, help="BLIP semantic term (default 0.1; 0: off)")
    loss.add_argument("--resnet-weights", default="IMAGENET1K_V1",
                      help="torchvision ResNet50_Weights name or a local state-dict file (default IMAGENET1K_V1)")
    loss.add_argument("--blip-model", default=DEFAULT_BLIP_MODEL,
                      help=f"Hugging Face id or local directory of a BLIP model (default {DEFAULT_BLIP_MODEL})")
    loss.add_argument("--offline", action="store_true",
                      help="never download encoder weights: use the local caches or paths only")
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
    """The editor to patch, a frozen copy for evaluation, the training data and the test images."""
    if args.testbed:
        # The shipped testbed: a small StarGAN over 5 attributes of synthetic 64x64 faces. Train and test faces
        # come from separate random streams, so the evaluation faces are never seen in training.
        editor = lpa.load_editor("testbed", device=args.device)
        base = lpa.load_editor("testbed", device=args.device)
        train_data = lpa.testbed_faces(args.images, seed=args.seed, split="train")  # (images, labels) tensors
        test_images, test_labels = lpa.testbed_faces(args.eval_images, seed=args.seed, split="test")
        return editor, base, train_data, test_images, test_labels

    # Two copies of the official generator: `editor` gets the patch (in place), `base` stays untouched and is the
    # public model the defender protects against. Checkpoints are read with weights_only=True.
    editor = lpa.load_editor("stargan", checkpoint=args.checkpoint, device=args.device)
    base = lpa.load_editor("stargan", checkpoint=args.checkpoint, device=args.device)
    # CelebA with StarGAN's preprocessing (CenterCrop 178 -> Resize 256, [-1, 1]) and its five label columns.
    # Parse the 200k-row attribute file once and share it between the two splits.
    table = read_attr_file(args.attr_file)
    train_set = CelebA(args.celeba_images, table, preset="stargan", split="paper-train")
    if args.images < len(train_set):
        train_set = Subset(train_set, range(args.images))  # the first N of the paper's training images
    test_set = CelebA(args.celeba_images, table, preset="stargan", split="paper-test")
    pairs = [test_set[i] for i in range(args.eval_images)]  # reads the images now: a missing file fails here
    test_images = torch.stack([image for image, _ in pairs])
    test_labels = torch.stack([labels for _, labels in pairs])
    return editor, base, train_set, test_images, test_labels


def main() -> None:
    args = parse_args()
    if not args.testbed:
        check_official_files(args)
    if args.resume and latest_checkpoint(args.out) is None:
        fail(f"--resume: no checkpoint under {os.path.join(args.out, 'checkpoints')}")

    # ---- 1. models, data and loss. Setup errors (a wrong checkpoint, a broken attribute file, encoder weights that
    # cannot be found offline) are reported in one line; errors during training keep their traceback.
    try:
        editor, base, train_data, test_images, test_labels = load_setup(args)
        base.generator.requires_grad_(False)
        loss = MMFALoss(
            pixel_weight=1.0, feature_weight=args.feature_weight, semantic_weight=args.semantic_weight,
            resnet_weights=args.resnet_weights, blip_model=args.blip_model, local_files_only=args.offline,
        )
    except EncoderUnavailableError as exc:
        fail(f"{exc} (--feature-weight 0 --semantic-weight 0 trains with the pixel term alone)")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(exc)
    os.makedirs(args.out, exist_ok=True)
    source = "testbed editor + synthetic faces" if args.testbed else f"StarGAN {args.checkpoint} + CelebA"
    n_train = len(train_data[0]) if isinstance(train_data, tuple) else len(train_data)
    print(f"{source}: {n_train} training images, {len(test_images)} test images, "
          f"{len(editor.attribute_names)} target attributes {list(editor.attribute_names)}, device {args.device}")

    # ---- 2. the patch and the trainer. The "paper" preset: rank 8, alpha 2 (scale alpha / sqrt(r)), a learned
    # scalar gate per layer starting at sigmoid(-1), A and B Kaiming-initialised, on every Conv2d, ConvTranspose2d
    # and Linear layer. The inner attack is the paper's PGD (eps 0.05, step 0.01) run against the current patch.
    attack = PGD(eps=0.05, steps=args.pgd_steps, step_size=0.01, seed=args.seed)
    trainer = BypassTrainer(
        editor,  # patched in place: editor.edit now runs the patched StarGAN
        patch=lpa.LoraPatchConfig.from_preset("paper"),
        attack=attack,
        loss=loss,
        config=TrainingConfig(
            epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
            schedule=args.schedule, seed=args.seed, checkpoint_every=args.checkpoint_every,
            progress=not args.no_progress,
        ),
        output_dir=args.out,  # checkpoints go to <out>/checkpoints/step-N
    )
    n_trainable, n_total = trainer.model.get_nb_trainable_parameters()
    print(f"patch: {len(trainer.model.peft_config['default'].target_modules)} layers, {n_trainable:,} trainable "
          f"parameters ({100 * n_trainable / n_total:.2f}% of {n_total:,}); loss {loss.extra_repr()}")

    # ---- 3. train (the min-max loop), then save the patch: save_pretrained files + lora_patch.json.
    result = trainer.train(train_data, resume_from="latest" if args.resume else None)
    patch_dir = lpa.save_patch(trainer, os.path.join(args.out, "patch"), metadata={"source": source})
    grads = result.grad_norm_stats()
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; final loss {result.final_loss:.5f}, "
          f"gradient norm max {grads.get('max', float('nan')):.4f}")
    print(f"saved the patch to {patch_dir}")

    # ---- 4. evaluation: does PGD still disrupt the edit once the generator is patched?
    # default scenario: the defender computes the protection on the public (base) StarGAN;
    # leakage scenario: the protection is computed on the patched StarGAN itself (the patch leaked).
    defense = PGD(eps=0.05, steps=args.pgd_steps, step_size=0.01, seed=args.seed)
    results = []
    for scenario in ("default", "leakage"):
        grid_path = os.path.join(args.out, f"grid_{scenario}.png")
        evaluation = evaluate_defense(defense, base, test_images, test_labels, patched=editor, scenario=scenario,
                                      grid_path=grid_path)
        results.append(evaluation)
        print(f"\n{evaluation.summary()}\ngrid: {grid_path}")
    print("\n" + compare(results))
    clean_psnr = results[0].metrics["patched_clean"]["psnr"]
    print(f"clean edits, patched vs base: PSNR {clean_psnr:.2f} dB")

    record = {"args": vars(args), "patch": patch_dir, "training_steps": result.steps,
              "training_seconds": result.seconds, "final_loss": result.final_loss,
              "results": [r.to_dict() for r in results], "version": lpa.__version__}
    results_path = os.path.join(args.out, "results.json")
    with open(results_path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
