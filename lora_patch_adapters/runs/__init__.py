"""Runs: the pipelines behind ``lora-patch train`` / ``train-defensive``, ``evaluate`` and ``demo``, each returning one
typed :class:`RunSummary` that :func:`~lora_patch_adapters.runs.reporting.write_run` writes once.

    inputs     the editor and images a run starts from (checks, CelebA / testbed selection)
    train      train a patch, save it, evaluate it
    evaluate   evaluate a saved patch against defenses
    demo       the offline demo on the testbed editor
    summary    RunSummary: the one record of a run
    reporting  summary.json, report.md, grids and tables
"""

from .demo import DemoSettings, run_demo
from .errors import RunInputError
from .evaluate import EvaluateSettings, run_evaluate
from .inputs import Inputs
from .summary import RunSummary
from .train import TrainSettings, run_train

__all__ = ["DemoSettings", "EvaluateSettings", "Inputs", "RunInputError", "RunSummary", "TrainSettings", "run_demo",
           "run_evaluate", "run_train"]
