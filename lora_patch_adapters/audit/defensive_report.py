"""The removal audit's report: ``summary.json`` (every number), ``report.md`` and ``report.html`` (one list of blocks
rendered twice, images embedded in the HTML), ``visibility_vs_budget.png``; the captioned grid is under ``grids/``."""

from __future__ import annotations

import json
import os
from typing import Any

from ..runs.reporting import _write_atomically
from .plots import plot_visibility_curves
from .report import Block, _flops, _pct, render_html, render_markdown

SUMMARY = "summary.json"
MARKDOWN = "report.md"
HTML = "report.html"
CURVES = "visibility_vs_budget.png"


def _break_words(point: dict[str, Any] | None) -> str:
    if point is None:
        return "not broken within the largest budget"
    return (f"broken by {point['attack']} at {point['budget']} ({_flops(point['attacker_flops'])}, "
            f"{point['attacker_steps']} steps)")


def _bar_words(config: dict[str, Any]) -> str:
    if config.get("quality_slack_db") is None:
        return ""
    return (f", the lower of {config['break_psnr_db']:g} dB and {config['quality_slack_db']:g} dB below the defended "
            "generator's own")


def build_defensive_blocks(results: dict[str, Any]) -> list[Block]:
    """The report's content, in order."""
    c = results["config"]
    blocks = [
        Block("heading", "Removal audit of a defensive patch", level=1),
        Block("paragraph", f"Threat model. {results['threat_model']}"),
        Block("paragraph", (
            f"Before any attack the warning is visible on {_pct(results['visible_before'])} of "
            f"{results['evaluation']['images']} held-out faces x {results['evaluation']['conditions']} targets; PSNR "
            f"outside the mark (its footprint grown by {results['outside_margin']} px) against the un-warned base: "
            f"{results['psnr_outside_db']:.2f} dB. The attacker's estimated mask overlaps the mark with IoU "
            f"{results['mask_iou']:.2f}.")),
        Block("paragraph", (
            f"Break point (warning visible on < {_pct(c['break_visibility'])} of edits while PSNR outside the mark "
            f">= {results['psnr_threshold_db']:.2f} dB{_bar_words(c)}), worst case over the attacks: "
            f"*{_break_words(results['break_point'])}*.")),
        Block("image", path=CURVES),
    ]
    header = ["attack", "budget", "steps", "visible after", "PSNR outside (dB)", "LPIPS outside", "FLOPs", "seconds"]
    rows = []
    for name, attack in results["attacks"].items():
        for key, b in attack["budgets"].items():
            rows.append([name, key, b["attacker_steps"], _pct(b["visible_after"]), f"{b['psnr_outside_db']:.2f}",
                         "n/a" if b["lpips_outside"] is None else f"{b['lpips_outside']:.4f}",
                         _flops(b["attacker_flops"]), f"{b['attacker_seconds']:.1f}"])
    blocks += [Block("heading", "Per attack and budget"), Block("table", header=header, rows=rows)]
    blocks += [Block("table", header=["attack", "settings", "break point"],
                     rows=[[n, a["description"], _break_words(None if a["break_point"] is None else
                                                              dict(a["break_point"], attack=n))]
                           for n, a in results["attacks"].items()])]
    blocks += [Block("heading", "Edits"), Block("paragraph", (
        "Rows: the held-out input, the un-warned base's edit, the defended generator's edit, then each attack's edit "
        "at the largest budget (first target condition).")), Block("image", path=results["grid"]),
        Block("paragraph", f"lora-patch-adapters {results['version']}, torch {results['torch']}, seed "
                           f"{results['seed']}, {results['device']}; every number is in `{SUMMARY}`.")]
    return blocks


def write_defensive_report(results: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write summary.json, the curves, report.md and report.html into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, file) for name, file in
             (("summary", SUMMARY), ("curves", CURVES), ("markdown", MARKDOWN), ("html", HTML))}
    _write_atomically(paths["summary"], json.dumps(results, indent=2) + "\n")
    plot_visibility_curves(results, paths["curves"])
    blocks = build_defensive_blocks(results)
    _write_atomically(paths["markdown"], render_markdown(blocks))
    _write_atomically(paths["html"], render_html(blocks, out_dir))
    paths["grid"] = os.path.join(out_dir, results["grid"])
    return paths
