"""Curves of defense success rate vs attacker budget (matplotlib, drawn off-screen)."""

from __future__ import annotations

import math
from typing import Any

# (row key, label, style): the row keys of a defense's ``success_rates`` in results.json
CURVES = (
    ("default", "after patching (default)", {"marker": "o"}),
    ("leakage", "after patching (leakage)", {"marker": "s"}),
    ("patch_aware", "patch-aware defender", {"marker": "^"}),
)


def plot_success_curves(results: dict[str, Any], path: str) -> str:
    """One panel per defense: success rate (%) against the attacker's image passes (images x epochs), with the
    rate before patching as a dashed line. Writes a PNG to ``path`` and returns it."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # declared as a dependency; a clear message if an install lost it
        raise RuntimeError("The audit's plots need matplotlib: pip install matplotlib") from exc

    defenses = results["defenses"]
    budgets = results["budgets"]
    passes = [b["image_passes"] for b in budgets]
    columns = min(3, len(defenses))
    rows = math.ceil(len(defenses) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, defense in zip(axes.flat, defenses):
        rates = defense["success_rates"]
        ax.axhline(100 * rates["before"], color="0.4", linestyle="--", label="before patching")
        for key, label, style in CURVES:
            if rates.get(key):
                ax.plot(passes, [100 * rates[key][b["key"]] for b in budgets], label=label, **style)
        if len(passes) > 1 and max(passes) / min(passes) >= 4:
            ax.set_xscale("log")
        ax.set_xticks(passes, [b["key"] for b in budgets], rotation=30 if len(passes) > 3 else 0)
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_title(defense["name"])
        ax.set_xlabel("attacker budget (images x epochs)")
        ax.set_ylabel("defense success rate (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(defenses):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.08 if rows == 1 else 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_visibility_curves(results: dict[str, Any], path: str) -> str:
    """A removal audit's curves (``summary.json`` of :mod:`.defensive`): the warning's visibility (%) and the PSNR
    outside the mark against the attacker's FLOPs, one line per attack, with the break thresholds dashed. Writes a
    PNG to ``path`` and returns it."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    config = results["config"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, attack in results["attacks"].items():
        rows = list(attack["budgets"].values())
        flops = [max(r["attacker_flops"], 1) for r in rows]
        left.plot(flops, [100 * r["visible_after"] for r in rows], marker="o", label=name)
        right.plot(flops, [r["psnr_outside_db"] for r in rows], marker="o", label=name)
    left.axhline(100 * results["visible_before"], color="0.4", linestyle=":", label="before the attack")
    left.axhline(100 * config["break_visibility"], color="0.6", linestyle="--", label="break threshold")
    right.axhline(results["psnr_threshold_db"], color="0.6", linestyle="--", label="break threshold")
    left.set_ylim(-3, 103)
    left.set_ylabel("warning visible (%)")
    right.set_ylabel("PSNR outside the mark (dB)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("attacker FLOPs")
        ax.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
