"""How well do the proactive defenses disrupt the (unpatched) testbed editor?

Runs Disrupting Deepfakes' PGD (per condition), CMUA-Watermark (one universal perturbation, fitted on training
faces) and Anti-Forgery (one Lab-space perturbation per image for all conditions) on held-out testbed faces and
reports, per defense, the success rate (MSE of the disrupted vs the clean edit > 0.05) and PSNR / SSIM of disrupted
vs clean edits. Writes ``results.json`` and one image grid per defense to ``--out``. Pass ``--patch DIR`` to also
evaluate a saved patch (``patched`` numbers), and ``--scenario leakage`` to compute the defense on the patched model.

    python examples/evaluate_defenses.py --images 100 --out runs/defenses
"""

from __future__ import annotations

import argparse
import json
import os
import time

import peft
import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.defenses import CMUA, PGD, AntiForgery
from lora_patch_adapters.evaluation import compare, evaluate_defense


def frozen_testbed() -> lpa.Editor:
    editor = lpa.load_editor("testbed")
    editor.generator.requires_grad_(False)
    return editor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="held-out test faces (default 100)")
    parser.add_argument("--cmua-images", type=int, default=128, help="training faces CMUA is fitted on (default 128)")
    parser.add_argument("--defenses", nargs="+", default=["pgd", "cmua", "anti_forgery"],
                        choices=["pgd", "cmua", "anti_forgery"])
    parser.add_argument("--scenario", default="default", choices=["default", "leakage"])
    parser.add_argument("--patch", default=None, help="a saved patch directory to evaluate as the patched editor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--out", default=os.path.join("runs", "defenses"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    base = frozen_testbed()
    patched = None
    if args.patch:
        patched = frozen_testbed()
        peft.PeftModel.from_pretrained(patched.generator, args.patch)
        patched.name = f"testbed+{os.path.basename(os.path.normpath(args.patch))}"
    images, labels = lpa.testbed_faces(args.images, seed=args.seed, split="test")
    defenses = {
        "pgd": (PGD(eps=0.05, steps=10, step_size=0.01, seed=args.seed), True, None),
        "cmua": (
            CMUA(eps=0.05, steps=10, step_size=0.01, momentum=0.5, batch_size=64, seed=args.seed),
            True,
            lpa.testbed_faces(args.cmua_images, seed=args.seed, split="train"),
        ),
        "anti_forgery": (AntiForgery(eps=0.05, steps=100, lr=1e-4, seed=args.seed), False, None),
    }
    results = []
    for name in args.defenses:
        defense, per_condition, fit_data = defenses[name]
        start = time.perf_counter()
        result = evaluate_defense(
            defense, base, images, labels, patched=patched, scenario=args.scenario, per_condition=per_condition,
            batch_size=args.batch, fit_data=fit_data, grid_path=os.path.join(args.out, f"grid_{name}.png"),
        )
        result.config["seconds"] = round(time.perf_counter() - start, 1)
        results.append(result)
        print(result.summary(), f"\n({result.config['seconds']} s)\n", flush=True)
    print(compare(results))
    record = {
        "command": "python examples/evaluate_defenses.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v is not None
        ),
        "package_version": lpa.__version__,
        "torch": torch.__version__,
        "results": [r.to_dict() for r in results],
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    print(f"wrote {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    main()
