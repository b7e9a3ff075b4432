"""What every ``lora-patch`` command shares: the one-line-error parser, argument types, the choices (kept literal
so that building the parser -- ``--help``, ``--version`` -- imports no torch; tests check that they match the
library's constants), and the flags for the editor and its images."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .._checks import one_line

GENERATORS = ("stargan", "attgan", "attgan_inject1", "hisd", "testbed")
CELEBA_PRESETS = {"stargan": "stargan", "attgan": "attgan", "attgan_inject1": "attgan", "hisd": "hisd",
                  "testbed": "testbed"}
SPLITS = ("paper-train", "paper-test")
GATES = ("none", "basic", "input_adaptive", "input_adaptive_channel", "input_adaptive_pixel")
INITS = ("zero", "kaiming")
LR_SCHEDULES = ("constant", "cosine")
SCHEDULES = ("batched", "per_condition")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
DEFENSES = ("pgd", "ifgsm", "fgsm", "cmua", "anti_forgery", "pgd_eot")
SCENARIOS = ("default", "leakage", "both")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")
VARIATIONS = ("position", "opacity")  # training.watermark.VARIATIONS; tests check they match
PGD_EPS, PGD_STEPS, PGD_STEP_SIZE = 0.05, 10, 0.01  # the field's PGD (defenses.pgd); tests check they match
HARDEN_STEPS, HARDEN_WEIGHT = 4, 1.0  # training.hardening.HardeningConfig's steps / weight; tests check they match
TARGET_SETS = ("all", "paper")  # AttGAN's (generators.attgan.ATTGAN_TARGET_SETS)
ENCODER_HINT = "to train without the encoders, pass --feature-weight 0 --semantic-weight 0"


class CLIError(Exception):
    """A user error found by the command line itself; ``code`` 2 for usage errors, 1 otherwise."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``, exit code 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


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


MAX_SEED = 2**63 - 1
"""The largest seed torch.Generator.manual_seed accepts for every generator the package seeds."""


def seed_value(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1], got {text!r}")
    return value


def learning_rate(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a learning rate in (0, 1] (Adam; 1e-3 is the paper's), got {text!r}")
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


def path_list(text: str) -> list[str]:
    """Comma-separated file paths (``a.jpg,b.jpg``)."""
    paths = [path.strip() for path in text.split(",") if path.strip()]
    if not paths:
        raise argparse.ArgumentTypeError(f"expected image paths separated by commas, got {text!r}")
    return paths


def defense_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DEFENSES]
    if unknown or not names:
        what = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown defense {what}; choose from {', '.join(DEFENSES)} (repeat the "
                                         "flag or separate names with commas)")
    return names


# ------------------------------------------------------------------------------------------------------- flags
def add_inputs(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    """The editor, its images, the output folder, seed and device."""
    p.add_argument("--generator", choices=GENERATORS, default="testbed",
                   help="the editor to patch (default: testbed, the small StarGAN shipped with the package)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="official generator weights (StarGAN 200000-G.ckpt, AttGAN weights.199.pth, HiSD "
                        "gen_00600000.pt); required for the official generators; testbed: another testbed file")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run an official generator without --checkpoint on random weights drawn from --seed "
                        "(a smoke test: results are meaningless)")
    p.add_argument("--data", metavar="DIR|hf:NAME",
                   help="CelebA image folder (e.g. celeba/img_align_celeba; with --attr-file), or a Hugging Face "
                        "datasets dataset with an image column and one column per attribute: hf:ORG/NAME[@REVISION] "
                        "(Hub; HF_HUB_OFFLINE=1 reads the cache only) or hf:PATH (a save_to_disk or data folder); "
                        "its train split gives paper-train images, its test (or validation) split paper-test images; "
                        'needs pip install "lora-patch-adapters[datasets]"')
    p.add_argument("--attr-file", metavar="FILE", help="CelebA attribute file (list_attr_celeba.txt); with --data DIR")
    p.add_argument("--data-split", metavar="SPLIT",
                   help="hf: data only: read this one split as a table in CelebA file order, with the paper's rows "
                        "(paper-train: 0-999, paper-test: 29000-29999), e.g. for a Hub copy of CelebA")
    p.add_argument("--out", metavar="DIR", required=out_required,
                   help="output folder for summary.json, report.md, grid.png" + (" and the patch" if out_required
                                                                                 else ""))
    p.add_argument("--targets", choices=TARGET_SETS,
                   help="AttGAN edits: paper (the paper's 5: Bangs, Black/Blond/Brown_Hair, Male) or all (the 13 "
                        "attributes; the default)")
    p.add_argument("--references", type=path_list, metavar="A.jpg,B.jpg,...",
                   help="HiSD: reference-guided hair-colour edits, one per image (the paper's protocol uses 3); "
                        "default: the 7 latent-guided edits")
    p.add_argument("--seed", type=seed_value, default=42, help="seed for everything (default: 42)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")


def settings_from(args: argparse.Namespace, cls: type) -> Any:
    """An instance of the settings dataclass ``cls`` from the parsed arguments of the same names."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
