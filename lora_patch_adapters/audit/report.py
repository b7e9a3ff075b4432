"""The audit report: ``results.json`` (every number, the configuration, seed and versions), ``report.md`` (tables,
linked images), ``report.html`` (the same content, images embedded: one file to share) and
``success_vs_budget.png``. Markdown and HTML are rendered from one list of blocks, so they always agree."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..runs.reporting import markdown_table
from .plots import plot_success_curves

RESULTS = "results.json"
MARKDOWN = "report.md"
HTML = "report.html"
CURVES = "success_vs_budget.png"


@dataclass
class Block:
    """A heading (``level`` 1-3), a paragraph, a table (``header`` + ``rows``) or an image (``path`` relative to the
    report)."""

    kind: str
    text: str = ""
    level: int = 2
    header: Sequence[str] = ()
    rows: Sequence[Sequence[Any]] = ()
    path: str = ""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def _flops(value: int | None) -> str:
    """``1234567`` -> ``"1.23 MFLOP"``; ``"n/a"`` when not counted (results written before FLOPs were)."""
    if value is None:
        return "n/a"
    for power, prefix in ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if value >= 10 ** power:
            return f"{value / 10 ** power:.2f} {prefix}FLOP"
    return f"{value} FLOP"


def _inner(c: dict[str, Any]) -> str:
    """The attacker's inner maximisation in words (results before ``inner`` existed: PGD)."""
    inner = c.get("inner", "pgd")
    if inner == "fgsm_rs":
        return f"FGSM-RS (one step of 1.25 eps from a random start) eps {c['eps']:g}"
    if inner == "free":
        return f"free adversarial training ({c['replays']} replays per batch and target) eps {c['eps']:g}"
    return f"PGD-{c['inner_steps']} eps {c['eps']:g}"


def _cost(results: dict[str, Any], attack: str, key: str) -> dict[str, Any]:
    return results["attacker"][attack][key]


def _attack_of(results: dict[str, Any], defense: dict[str, Any]) -> str:
    return "pgd" if results["config"]["attack_with"] == "pgd" else defense["name"]


def build_blocks(results: dict[str, Any]) -> list[Block]:
    """The report's content, in order."""
    c = results["config"]
    ev = results["evaluation"]
    head = results["headline_budget"]
    keys = [b["key"] for b in results["budgets"]]
    k = len(results["defender"]["shadow_patches"])
    attack_desc = ("one bypass patch per budget, trained against PGD (the paper's attacker)"
                   if c["attack_with"] == "pgd" else "one bypass patch per defense and budget, trained against "
                   "that defense itself")
    if c.get("inner", "pgd") != "pgd":
        attack_desc = "one bypass patch per budget, trained with the cheaper inner maximisation named below"
    loss = "pixel MSE" if c["feature_weight"] == 0 and c["semantic_weight"] == 0 else (
        f"MMFA (pixel 1, ResNet-50 {c['feature_weight']:g}, BLIP {c['semantic_weight']:g})")
    blocks = [
        Block("heading", f"Adaptive-attack audit: {results.get('generator', 'generator')}", level=1),
        Block("paragraph", (
            f"Data: {results.get('data', '')}. Evaluation on {ev['images']} held-out images x {ev['conditions']} "
            f"target edits; a defense *succeeds* on a sample when the edit of the protected image differs from the "
            f"clean edit by MSE > {ev['threshold']:g} (images in [-1, 1]).")),
        Block("paragraph", (
            f"Attacker: {attack_desc}; rank-{c['rank']} gated LoRA patch ({c['init']} init), Adam lr {c['lr']:g} "
            f"({c['lr_schedule']}), batch {c['batch_size']}, schedule {c['schedule']}, inner {_inner(c)}, "
            f"loss {loss}; budgets {', '.join(keys)} (images x epochs), seed {results['seed']}, "
            f"device {results['device']}.")),
        Block("paragraph", (
            "Rows: *before* = base generator; *default* = protection computed on the public base generator, edited "
            "by the patched one; *leakage* = protection recomputed on the attacker's patched generator; "
            f"*patch-aware* = the same defense computed against the base generator and {k} bypass patch(es) the "
            "defender trained itself (other seeds and images), edited by the attacker's patch." if k else
            "Rows: *before* = base generator; *default* = protection computed on the public base generator, edited "
            "by the patched one; *leakage* = protection recomputed on the attacker's patched generator.")),
    ]
    lpips = ev.get("lpips_weights")  # None (or absent in older results): LPIPS was not computed
    if lpips:
        blocks.append(Block("paragraph", (
            "LPIPS: AlexNet LPIPS (Zhang et al. 2018; 0 = identical, higher = more different) with torchvision's "
            f"ImageNet weights `{os.path.basename(lpips)}`.")))
    blocks.append(Block("heading", f"Headline: attacker budget {head}"))
    rows = []
    for d in results["defenses"]:
        r = d["success_rates"]
        cost = _cost(results, _attack_of(results, d), head)
        rows.append([d["name"], _pct(r["before"]), _pct(r["default"][head]), _pct(r["leakage"][head]),
                     _pct(r["patch_aware"][head]) if r["patch_aware"] else "n/a",
                     f"{d['clean_psnr_db'][head]:.2f}",
                     *([f"{d['clean_lpips'][head]:.4f}"] if lpips else []),
                     f"{cost['images']} img x {cost['epochs']} ep, {_seconds(cost['seconds'])}, "
                     f"{_flops(cost.get('flops'))}"])
    blocks.append(Block("table", header=["defense", "before patching", "after (default)", "after (leakage)",
                                         "patch-aware defender", "clean PSNR (dB)",
                                         *(["clean LPIPS"] if lpips else []), "attacker cost"], rows=rows))
    blocks += [Block("heading", "Defense success rate vs attacker budget"), Block("image", path=CURVES)]
    for d in results["defenses"]:
        r = d["success_rates"]
        attack = _attack_of(results, d)
        blocks.append(Block("heading", f"{d['name']}", level=3))
        perturbation = d["before"]["perturbation"]
        lpips_text = f", LPIPS protected vs clean {perturbation['lpips_protected_vs_clean']:.4f}" if lpips else ""
        blocks.append(Block("paragraph", f"`{d['spec']}`: {d['repr']}. Perturbation L-inf (max) "
                                         f"{perturbation['linf_max']:.4f}, PSNR protected vs clean "
                                         f"{perturbation['psnr_protected_vs_clean']:.2f} dB{lpips_text}."))
        table = [
            ["attacker cost (wall clock)", *[_seconds(_cost(results, attack, key)["seconds"]) for key in keys]],
            ["attacker cost (FLOPs)", *[_flops(_cost(results, attack, key).get("flops")) for key in keys]],
            ["before patching", *[_pct(r["before"])] * len(keys)],
            ["after patching (default)", *[_pct(r["default"][key]) for key in keys]],
            ["after patching (leakage)", *[_pct(r["leakage"][key]) for key in keys]],
        ]
        if r["patch_aware"]:
            table.append(["patch-aware defender", *[_pct(r["patch_aware"][key]) for key in keys]])
        table.append(["clean edit PSNR, patched vs base (dB)", *[f"{d['clean_psnr_db'][key]:.2f}" for key in keys]])
        if lpips:
            table.append(["clean edit LPIPS, patched vs base", *[f"{d['clean_lpips'][key]:.4f}" for key in keys]])
        blocks.append(Block("table", header=["budget (images x epochs)", *keys], rows=table))
        if d.get("patch_aware_error"):
            blocks.append(Block("paragraph", f"The patch-aware row failed: {d['patch_aware_error']}"))
        if r["patch_aware"]:
            blocks.append(Block("paragraph", "Patch-aware protection on the base generator itself: "
                                             f"{_pct(r['patch_aware_on_base'])}."))
        if d["robustness"]:
            blocks.append(Block("paragraph", "Robustness of the protection before patching (base generator): the "
                                             "protected image is transformed before editing; the last column is the "
                                             "transformation applied to the clean image alone."))
            blocks.append(Block("table", header=["transformation", "success on protected", "MSE",
                                                 "success on clean (transformation alone)"],
                                rows=[["none", _pct(r["before"]), d["before"]["metrics"]["mse"], "0.0%"]] + [
                                    [name, _pct(t["success_rate"]), t["mse"], _pct(t["success_rate_clean"])]
                                    for name, t in d["robustness"].items()]))
        blocks.append(Block("paragraph", f"Rows: input, protected, base clean edit, base edit of protected, "
                                         f"patched ({head}) clean edit, patched edit of protected (first target)."))
        blocks.append(Block("image", path=d["grid"]))
    blocks.append(Block("heading", "Cost"))
    cost_rows = []
    for attack, per in results["attacker"].items():
        for key in keys:
            cost = per[key]
            cost_rows.append([f"attacker ({attack})", key, cost["images"], cost["epochs"], cost["batches"],
                              _seconds(cost["seconds"]), _flops(cost.get("flops")), cost["device"]])
    for index, cost in enumerate(results["defender"]["shadow_patches"], 1):
        cost_rows.append([f"defender shadow patch {index}", f"{cost['images']}x{cost['epochs']}", cost["images"],
                          cost["epochs"], cost["batches"], _seconds(cost["seconds"]), _flops(cost.get("flops")),
                          cost["device"]])
    blocks.append(Block("table", header=["who", "budget", "images", "epochs", "batches", "wall clock", "FLOPs",
                                         "device"], rows=cost_rows))
    blocks.append(Block("paragraph", "FLOPs: the matmul and convolution FLOPs of training, forward and backward, inner "
                                     "attack included (torch.utils.flop_counter, one batch counted before "
                                     "training and scaled by the images passed; the timed run is not counted)."))
    t = results["timings"]
    blocks.append(Block("paragraph", (
        f"Total {_seconds(t['total_seconds'])}: attacker training {_seconds(t['attacker_training_seconds'])}, "
        f"defender training {_seconds(t['defender_training_seconds'])}, evaluation "
        f"{_seconds(t['evaluation_seconds'])}.")))
    blocks.append(Block("heading", "Reproduce"))
    command = results.get("command")
    blocks.append(Block("paragraph", (f"`{command}` — " if command else "") + (
        f"lora-patch-adapters {results['version']}, torch {results['torch']}, seed {results['seed']}; every "
        f"number and setting is in `{RESULTS}`.")))
    return blocks


def render_markdown(blocks: Sequence[Block]) -> str:
    parts = []
    for b in blocks:
        if b.kind == "heading":
            parts.append("#" * b.level + " " + b.text)
        elif b.kind == "paragraph":
            parts.append(b.text)
        elif b.kind == "table":
            parts.append(markdown_table(b.header, b.rows))
        elif b.kind == "image":
            parts.append(f"![{os.path.basename(b.path)}]({b.path})")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escape ``text`` for HTML, keeping the two Markdown marks the report uses: `code` and *emphasis*."""
    out = []
    for i, piece in enumerate(text.split("`")):
        if i % 2 == 1:
            out.append(f"<code>{html.escape(piece)}</code>")
            continue
        escaped = html.escape(piece).split("*")
        out.append("".join(p if j % 2 == 0 else f"<em>{p}</em>" for j, p in enumerate(escaped))
                   if len(escaped) % 2 == 1 else html.escape(piece))
    return "".join(out)


def _data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;image-rendering:pixelated}
code{background:#f3f3f3;padding:0 .2em}"""


def _cells(row: Sequence[Any], tag: str) -> str:
    return "".join(f"<{tag}>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</{tag}>" for v in row)


def render_html(blocks: Sequence[Block], base_dir: str) -> str:
    """A self-contained page: images are read from ``base_dir`` and embedded as data URIs."""
    body = []
    for b in blocks:
        if b.kind == "heading":
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif b.kind == "paragraph":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            rows = "".join(f"<tr>{_cells(row, 'td')}</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{_cells(b.header, 'th')}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "image":
            body.append(f'<p><img alt="{html.escape(b.path)}" src="{_data_uri(os.path.join(base_dir, b.path))}"></p>')
    title = next((b.text for b in blocks if b.kind == "heading"), "audit")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(results: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write results.json, the curves, report.md and report.html into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"results": os.path.join(out_dir, RESULTS), "curves": os.path.join(out_dir, CURVES),
             "markdown": os.path.join(out_dir, MARKDOWN), "html": os.path.join(out_dir, HTML)}
    with open(paths["results"], "w") as f:
        json.dump(results, f, indent=2, sort_keys=True, allow_nan=True)
        f.write("\n")
    plot_success_curves(results, paths["curves"])
    blocks = build_blocks(results)
    with open(paths["markdown"], "w") as f:
        f.write(render_markdown(blocks))
    with open(paths["html"], "w") as f:
        f.write(render_html(blocks, out_dir))
    return paths
