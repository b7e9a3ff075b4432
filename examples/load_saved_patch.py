"""Load a saved patch onto a generator, edit with it, switch it off, and merge it into the weights.

A patch directory is what ``save_pretrained`` / ``lora_patch_adapters.save_patch`` writes (``adapter_config.json`` +
``adapter_model.safetensors``, plus ``lora_patch.json`` with the training record), e.g. the ``patch/`` folder of
``examples/bypass_official_stargan.py`` or ``examples/defensive_patch.py``. Loading it is plain PEFT:

    import lora_patch_adapters              # registers the lora-patch method with peft
    editor = lora_patch_adapters.load_editor("testbed")
    model = peft.PeftModel.from_pretrained(editor.generator, "runs/bypass_testbed/patch")  # patches in place
    editor.edit(x, condition)               # now runs the patched generator
    with model.disable_adapter():           # ... and here the original one
        editor.edit(x, condition)
    editor.generator = model.merge_and_unload()  # fold the patch into the weights: a plain nn.Module again

Usage (a patch trained on the testbed, edits of synthetic test faces):

    python examples/load_saved_patch.py runs/bypass_testbed/patch --out runs/before_after.png

A patch trained on the official StarGAN, applied to your own photo (a face cropped roughly like CelebA; list the
attributes the person has so that StarGAN's target labels are built correctly):

    python examples/load_saved_patch.py runs/bypass_stargan/patch --generator stargan \\
        --checkpoint stargan_celeba_256/models/200000-G.ckpt --image me.jpg --attributes Black_Hair Young \\
        --condition 1 --out me_blond.png

The patch must have been trained on the same generator architecture. Gates that depend on the input
(``input_adaptive*``) cannot be merged; the script says so and keeps the patch unmerged. ``--out`` saves a PNG with
rows: input, edit with the patch switched off, edit with the patch.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import peft
import torch
from PIL import Image, UnidentifiedImageError

import lora_patch_adapters as lpa  # importing the package registers the lora-patch PEFT method
from lora_patch_adapters.data import PRESETS, make_transform
from lora_patch_adapters.generators import EDITOR_NAMES, CheckpointError
from lora_patch_adapters.patches import read_patch_info
from lora_patch_adapters.runs import reporting

# Which preprocessing (crop, size) each generator was trained with.
PREPROCESSING = {"stargan": "stargan", "attgan": "attgan", "attgan_inject1": "attgan", "hisd": "hisd",
                 "testbed": "testbed"}


def fail(message: object) -> NoReturn:
    """Stop with a one-line error on stderr (exit status 1) instead of a traceback."""
    sys.exit(f"{os.path.basename(sys.argv[0])}: error: {' '.join(str(message).split())}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patch_dir", metavar="PATCH_DIR", help="a saved patch (adapter_config.json, "
                                                               "adapter_model.safetensors)")
    parser.add_argument("--generator", choices=EDITOR_NAMES, default="testbed",
                        help="the generator the patch was trained on (default testbed)")
    parser.add_argument("--checkpoint", help="its official weights (e.g. StarGAN's 200000-G.ckpt); not needed for "
                                             "the testbed")
    parser.add_argument("--image", help="an image file to edit (default: synthetic testbed faces)")
    parser.add_argument("--attributes", nargs="*", default=[], metavar="NAME",
                        help="with --image: the attributes the person has, from the generator's list (default none)")
    parser.add_argument("--faces", type=int, default=4, help="without --image: testbed test faces (default 4)")
    parser.add_argument("--condition", type=int, default=0,
                        help="which target edit to show: an index into editor.conditions(labels) (default 0; "
                             "StarGAN/testbed: one per attribute, in the order of the generator's attributes)")
    parser.add_argument("--no-merge", action="store_true", help="skip merging the patch into the weights")
    parser.add_argument("--out", help="save a PNG: input / patch off / patch on")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the testbed faces (default 0)")
    args = parser.parse_args()
    if args.faces <= 0:
        parser.error("--faces must be positive")
    if args.generator != "testbed" and args.image is None:
        parser.error(f"--generator {args.generator} needs --image (the synthetic faces suit only the testbed)")
    return args


def load_inputs(args: argparse.Namespace, editor: lpa.Editor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, H, W] in [-1, 1] and their source attribute labels [N, A] (0/1)."""
    if args.image is None:
        return lpa.testbed_faces(args.faces, seed=args.seed, split="test")
    # The generator's own preprocessing (e.g. StarGAN: CenterCrop 178 -> Resize 256), forced to a square.
    size = PRESETS[PREPROCESSING[args.generator]].size
    transform = make_transform(PREPROCESSING[args.generator], size=(size, size))
    try:
        with Image.open(args.image) as handle:
            image = transform(handle.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError) as exc:
        fail(f"cannot read --image {args.image}: {exc}")
    names = list(editor.attribute_names)
    unknown = [a for a in args.attributes if a not in names]
    if unknown:
        fail(f"unknown attribute(s) {unknown} for the {args.generator} generator; it knows {names}")
    labels = torch.tensor([[float(name in args.attributes) for name in names]])
    return image[None], labels


def main() -> None:
    args = parse_args()
    if not os.path.isfile(os.path.join(args.patch_dir, "adapter_config.json")):
        fail(f"{args.patch_dir} is not a saved patch (no adapter_config.json in it)")

    # ---- 1. the generator and the patch. PeftModel.from_pretrained injects the patch layers into
    # editor.generator itself (in place), so editor.edit runs the patched network from now on. Loaded for
    # inference: the patch parameters are frozen (is_trainable=True would make them trainable for fine-tuning).
    try:
        editor = lpa.load_editor(args.generator, checkpoint=args.checkpoint, device=args.device)
        n_generator = sum(p.numel() for p in editor.generator.parameters())
        model = peft.PeftModel.from_pretrained(editor.generator, args.patch_dir)
    except (CheckpointError, FileNotFoundError) as exc:
        fail(exc)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:  # trained on another architecture
        first = " ".join(str(exc).split())
        first = first if len(first) <= 240 else first[:240] + " ..."
        fail(f"the patch in {args.patch_dir} does not fit the {args.generator} generator (was it trained on "
             f"another one?): {first}")

    # ---- 2. what was loaded: the config, the size of the patch, its gates, how it was trained.
    config = model.peft_config["default"]
    n_patch = sum(t.numel() for t in peft.get_peft_model_state_dict(model).values())
    n_trainable, _ = model.get_nb_trainable_parameters()
    print(f"loaded {args.patch_dir} onto the {args.generator} generator ({type(config).__name__}, "
          f"peft type {config.peft_type.value})")
    details = {k: getattr(config, k) for k in ("r", "lora_alpha", "scaling", "gate", "init_weights")
               if hasattr(config, k)}
    print("config: " + ", ".join(f"{k}={v}" for k, v in details.items())
          + f", {len(config.target_modules)} target layers")
    print(f"patch parameters: {n_patch:,} ({100 * n_patch / n_generator:.2f}% of the generator's {n_generator:,}); "
          f"trainable now: {n_trainable:,} (loaded for inference)")
    gates = [torch.sigmoid(p).item() for n, p in model.named_parameters() if n.endswith("gate.default.logit")]
    if gates:
        print(f"gates (sigmoid of the learned logits): {min(gates):.3f} .. {max(gates):.3f}")
    record = read_patch_info(args.patch_dir).get("training")  # the provenance save_patch recorded
    if record:
        print(f"lora_patch.json: a {record.get('kind', '?')} patch, {record.get('steps', '?')} steps, "
              f"loss {record.get('loss', '?')}")

    # ---- 3. edit with the patch on and off.
    x, labels = load_inputs(args, editor)
    x, labels = x.to(editor.device), labels.to(editor.device)
    conditions = editor.conditions(labels)
    if not 0 <= args.condition < len(conditions):
        fail(f"--condition must be in 0..{len(conditions) - 1} for the {args.generator} generator")
    condition = conditions[args.condition]
    with torch.no_grad():
        patched = editor.edit(x, condition)
        with model.disable_adapter():  # the original generator, without unloading anything
            original = editor.edit(x, condition)
    print(f"edited {x.shape[0]} image(s) {tuple(x.shape[1:])} with target {args.condition} of {len(conditions)}: "
          f"mean |patched - original| = {(patched - original).abs().mean().item():.4f}")

    # ---- 4. merge: W' = W + gate * scale * dW folded into every patched layer; the result is the plain generator
    # module (no PEFT wrapper, no extra cost at inference). Only input-independent gates can be merged.
    if not args.no_merge:
        try:
            editor.generator = model.merge_and_unload()
        except ValueError as exc:
            print(f"not merged: {' '.join(str(exc).split())}")
        else:
            with torch.no_grad():
                merged = editor.edit(x, condition)
            print(f"merged into the weights ({type(editor.generator).__name__}, no adapter left): "
                  f"max |merged - unmerged| = {(merged - patched).abs().max().item():.2e}")

    if args.out:
        path = reporting.save_grid(args.out, [x, original, patched], ["input", "patch off", "patch on"])
        print(f"saved {path} (rows: input, patch off, patch on)")


if __name__ == "__main__":
    main()
