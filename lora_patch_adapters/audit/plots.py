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
