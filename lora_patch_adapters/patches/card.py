"""The model card that :func:`~lora_patch_adapters.patches.push.push_patch` uploads as ``README.md``: YAML metadata
from the patch's own fields, then what it is, how to load it, training, evaluation, intended use, misuse, files."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..version import __version__
from .format import SIDECAR_NAME
from .inspect import FINGERPRINT_CLAIMED, describe_patch_dir

CARD_TAGS = ("peft", "lora-patch", "deepfake-security")
# editors of ``load_editor`` and the official weights each needs (kept literal: no torch import here)
_EDITOR_CHECKPOINTS = {"stargan": "200000-G.ckpt", "attgan": "weights.199.pth", "attgan_inject1": "weights.199.pth",
                       "hisd": "gen_00600000.pt", "testbed": None}

MISUSE_STATEMENT = (
    "Do not use bypass patches to defeat the protections that people apply to their own images: a bypass patch "
    "exists to measure how robust proactive defenses are, and using one to edit a protected photo of someone "
    "without their consent (deepfakes, harassment, impersonation, non-consensual imagery) is misuse of this "
    "software and may be unlawful."
)


def make_model_card(patch_dir: str | os.PathLike, repo_id: str | None = None, revision: str | None = None,
                    card_data: Mapping[str, Any] | Any | None = None, info: dict[str, Any] | None = None):
    """The ``huggingface_hub.ModelCard`` that :func:`push_patch` uploads as ``README.md``.

    YAML: ``library_name: peft``, ``tags`` (peft, lora-patch, deepfake-security, the patch kind, the gate, the base
    generator), ``base_model`` (only when a Hub model id is known: ``card_data={"base_model": "org/name"}`` or the
    adapter config's ``base_model_name_or_path``), ``base_generator``, ``base_fingerprint``,
    ``lora_patch_adapters_version``, ``lora_patch`` (the config summary), ``lora_patch_training`` (images, epochs,
    steps, seconds) and ``lora_patch_evaluation`` (metrics) when recorded. Sections: what it is, how to load,
    training, evaluation, intended use, misuse, files.
    """
    from huggingface_hub import ModelCard, ModelCardData

    path = os.fspath(patch_dir)
    info = info if info is not None else describe_patch_dir(path)
    extra = _card_data_dict(card_data)
    generator = info.get("base_generator")
    kind = info.get("kind")
    kind_tag = {"bypass": "bypass-patch", "watermark": "defensive-patch"}.get(str(kind)) if kind else None
    tags = list(CARD_TAGS) + [t for t in (kind_tag, f"gate-{info['patch'].get('gate')}" if info["patch"].get("gate")
                                          else None, _tag(generator)) if t]
    tags += [t for t in (extra.pop("tags", None) or []) if t not in tags]
    base_model = extra.pop("base_model", None) or info.get("base_model")
    if not (isinstance(base_model, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", base_model)):
        base_model = None  # only Hub ids go into base_model; generator names go into base_generator
    summary = {**info["patch"], "target_modules": info.get("target_modules"),
               "layers": len(info["layers"]), "trainable_parameters": info["trainable_parameters"]}
    fields: dict[str, Any] = {
        "base_generator": generator, "base_fingerprint": _recorded_fingerprint(info),
        "lora_patch_adapters_version": info.get("package_version") or __version__,
        "lora_patch_kind": kind, "lora_patch": {k: v for k, v in summary.items() if v is not None},
        "lora_patch_training": info["training"] or None, "lora_patch_evaluation": info["metrics"] or None,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    library = extra.pop("library_name", "peft")
    fields.update(extra)
    data = ModelCardData(library_name=library, tags=tags, base_model=base_model, **fields)
    body = _card_body(info, repo_id=repo_id, revision=revision)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _recorded_fingerprint(info: dict[str, Any]) -> str | None:
    """The fingerprint the patch files record; a claim copied from an earlier card is never republished as one."""
    if "fingerprint_source" not in info:  # an info dict from an older describe_patch_dir
        return info.get("fingerprint")
    return info.get("fingerprint") if info["fingerprint_source"] not in (None, FINGERPRINT_CLAIMED) else None


def _fingerprint_text(info: dict[str, Any]) -> str:
    recorded = _recorded_fingerprint(info)
    if recorded:
        where = info.get("fingerprint_source") or "the patch files"
        return f"`{recorded}` (recorded in {where}; `load_patch` checks it against your model)"
    if info.get("fingerprint"):
        return f"not recorded by the patch files (an earlier card claimed `{info['fingerprint']}`, unverified)"
    return "`not recorded`"


def _card_data_dict(card_data: Any) -> dict[str, Any]:
    if card_data is None:
        return {}
    if hasattr(card_data, "to_dict"):
        card_data = card_data.to_dict()
    if not isinstance(card_data, Mapping):
        raise TypeError(f"card_data must be a dict or a huggingface_hub.ModelCardData, got {type(card_data).__name__}")
    return {k: v for k, v in dict(card_data).items() if v is not None}


def _tag(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    tag = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return tag or None


_METRIC_NOTES = (
    ("success_rate", ("Defense success rate: the fraction of protected images whose edit the defense still disrupts "
                      "(before / after patching; lower after means the bypass works; leakage: the perturbation is "
                      "computed on the patched generator).")),
    ("psnr", "PSNR (dB): clean edits of the patched generator against the base generator's."),
    ("visible", "Visible rate: the fraction of edits on which the warning of a defensive patch is visible."),
)


def _card_body(info: dict[str, Any], repo_id: str | None, revision: str | None) -> str:
    patch = info["patch"]
    repo = repo_id or "namespace/name"
    title = repo_id.split("/")[-1] if repo_id else "lora-patch adapter"
    generator = info.get("base_generator") or "its base generator"
    kind = info.get("kind")
    kind_text = {"bypass": ("a **bypass patch**: it makes the generator ignore adversarial perturbations that "
                            "proactive defenses (PGD, I-FGSM, CMUA, Anti-Forgery, ...) add to images"),
                 "watermark": ("a **defensive patch**: the patched generator stamps a visible warning on every edit, "
                               "including edits of protected images")}.get(str(kind), "a lora-patch adapter")
    rev = f', revision="{revision}"' if revision and revision != "main" else ""
    lines = [
        f"# {title}", "",
        "## What it is", "",
        (f"A gated low-rank patch (lora-patch, a third-party [PEFT](https://github.com/huggingface/peft) method) for "
         f"the face-editing generator `{generator}`: each patched layer computes `W x + gate * scale * B(A x)`. "
         f"This is {kind_text}."), "",
        (f"- rank {patch.get('r')}, alpha {patch.get('lora_alpha')} ({patch.get('scaling')}, scale "
         f"{_fmt(patch.get('scale'))}), gate `{patch.get('gate')}` (init {patch.get('gate_init')}), init "
         f"`{patch.get('init_weights')}`"),
        (f"- {len(info['layers'])} patched layers, {info['trainable_parameters']:,} parameters "
         f"({', '.join(info['dtypes'])}); safetensors only, no pickle files"),
        f"- base generator fingerprint: {_fingerprint_text(info)}",
        f"- lora-patch-adapters {info.get('package_version') or __version__}", "",
        "## How to load", "",
        "```python",
        "from lora_patch_adapters import load_editor",
        "from lora_patch_adapters.patch_io import load_patch",
        "",
        _editor_line(info.get("base_generator")),
        f'model = load_patch(editor, "{repo}"{rev})  # pin revision=<commit sha> for exact weights',
        "```", "",
        ("`load_patch` checks the base fingerprint and the config before touching the model, and downloads only "
         "the files listed below (never pickles). From the command line: "
         f"`lora-patch pull {repo}{' --revision ' + revision if rev else ''}` (add `--offline` to use the cache) and "
         f"`lora-patch inspect {repo}`."), "",
    ]
    if info["training"]:
        lines += ["## Training", "", "| " + " | ".join(info["training"]) + " |",
                  "|" + "---|" * len(info["training"]),
                  "| " + " | ".join(_fmt(v) for v in info["training"].values()) + " |", ""]
    if info["metrics"]:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in info["metrics"].items()]
        notes = [text for key, text in _METRIC_NOTES if any(key in name for name in info["metrics"])]
        lines += ["", *notes, ""] if notes else [""]
    lines += [
        "## Intended use", "",
        ("- **Auditing proactive defenses**: measure whether image protections (adversarial perturbations against "
         "face editing) survive an adversary who can fine-tune the editor cheaply, and report it to their authors."),
        ("- **Defensive watermark patches for platforms**: operators of face-editing services can apply a defensive "
         "patch so that every edit carries a visible warning."),
        "- Research on the robustness of deepfake countermeasures.", "",
        "## Misuse", "",
        MISUSE_STATEMENT, "",
        ("Do not use this patch to create deceptive or non-consensual media, or to remove provenance marks or "
         "warnings; follow the law and the Hub's content policy. The bypass recipe is published so that defenses "
         "can be tested against it."), "",
        "## Files", "",
        "| file | contents |", "|---|---|",
        "| adapter_config.json | the LoraPatchConfig (peft_type LORA_PATCH) |",
        "| adapter_model.safetensors | the patch weights (A, B, gate of each layer) |",
        f"| {SIDECAR_NAME} | base fingerprint, package version, target modules, training metadata |",
        "| training.json / summary.json | training record and evaluation summary, when present |", "",
    ]
    return "\n".join(lines)


def _editor_line(generator: Any) -> str:
    if generator in _EDITOR_CHECKPOINTS:
        weights = _EDITOR_CHECKPOINTS[generator]
        if weights is None:
            return f'editor = load_editor("{generator}")  # the base generator the patch was trained on'
        return f'editor = load_editor("{generator}", checkpoint="{weights}")  # the official weights it was trained on'
    name = generator if isinstance(generator, str) and generator else "base"
    return f"editor = ...  # the {name} generator it was trained on (an nn.Module, or lora_patch_adapters.wrap(...))"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


