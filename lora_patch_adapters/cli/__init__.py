"""The ``lora-patch`` command line (also ``python -m lora_patch_adapters``): one module per command, each parsing its
arguments and calling :mod:`lora_patch_adapters.runs` (or the audit and forensics libraries), nothing more.

Subcommands::

    lora-patch presets [NAME]            the named LoraPatchConfig presets as JSON
    lora-patch train --out DIR ...       train a bypass patch (the paper's attack) and evaluate PGD before / after
    lora-patch train-defensive --out DIR train a defensive (visible-warning) patch and check the warning is visible
    lora-patch evaluate PATCH ...        load a saved patch onto its generator and run the evaluation protocol
    lora-patch demo [--out DIR]          the offline demo on the shipped testbed editor
    lora-patch push / pull / inspect     share patches through the Hugging Face Hub
    lora-patch audit [--defense SPEC]... adaptive-attack report (HTML, Markdown, JSON) for proactive defenses
    lora-patch forensics --model M ...   has this generator been patched? (merged low-rank, unmerged, other)

Every train / train-defensive / evaluate run writes ``summary.json`` (the arguments, seed, versions, device, timings
and results), ``report.md`` and ``grid.png`` into its output folder and prints where they are.
"""

from ._args import (
    CELEBA_PRESETS,
    COMPILE_MODES,
    DEFENSES,
    GATES,
    GENERATORS,
    INITS,
    LR_SCHEDULES,
    POSITIONS,
    PRECISIONS,
    SCENARIOS,
    SCHEDULES,
    SPLITS,
    CLIError,
)
from .demo import QUICK_DEMO
from .main import build_parser, main

__all__ = [
    "CELEBA_PRESETS",
    "COMPILE_MODES",
    "DEFENSES",
    "GATES",
    "GENERATORS",
    "INITS",
    "LR_SCHEDULES",
    "POSITIONS",
    "PRECISIONS",
    "QUICK_DEMO",
    "SCENARIOS",
    "SCHEDULES",
    "SPLITS",
    "CLIError",
    "build_parser",
    "main",
]
