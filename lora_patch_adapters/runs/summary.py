"""``RunSummary``: the one record of a run (train, evaluate, demo), written once as ``summary.json`` beside the
Markdown report that renders it (:func:`~lora_patch_adapters.runs.reporting.write_run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..version import __version__


@dataclass
class RunSummary:
    """What a run did and found.

    ``command``: ``"train"``, ``"train-defensive"``, ``"evaluate"`` or ``"demo"``; ``argv`` / ``arguments``: how it
    was asked for; ``seed``, ``device``, ``data`` (what it ran on, in words); ``results``: the command's own record
    (kind, training, evaluation, rates, watermark visibility, ...), flattened into ``summary.json``; ``timings``:
    seconds per phase; ``report``: the Markdown report; ``outputs``: name -> path of what the run wrote besides
    ``summary.json`` and ``report.md`` (the patch, grids); ``staged``: file name in the output folder -> a file the
    run wrote elsewhere (a temporary folder), moved in by ``write_run`` with the rest, so a run that fails leaves
    its output folder as it was.
    """

    command: str
    seed: int
    device: str
    data: str
    argv: list[str] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    report: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    staged: dict[str, str] = field(default_factory=dict)
    version: str = __version__
    torch_version: str = torch.__version__
    threads: int = field(default_factory=torch.get_num_threads)

    def __getitem__(self, key: str) -> Any:
        """``summary["clean_psnr_db"]``: a field of the record written to ``summary.json``."""
        return self.to_dict()[key]

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` record: the run's environment, then its results, then its timings."""
        record = {"command": self.command, "argv": list(self.argv), "arguments": dict(self.arguments),
                  "seed": self.seed, "version": self.version, "torch": self.torch_version, "device": self.device,
                  "threads": self.threads, "data": self.data}
        record.update(self.results)
        record["timings"] = dict(self.timings)
        return record
