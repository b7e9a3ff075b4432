"""The evaluation protocol: does a proactive defense still disrupt the editor once the generator is patched?

For every image and target condition:

* ``reference``      = base editor on the clean image (what the defense tries to prevent),
* ``base_protected`` = base editor on the protected image (how well the defense works),
* ``patched_protected`` = patched editor on the protected image (how well the patch bypasses it),
* ``patched_clean``  = patched editor on the clean image (fidelity of the patch on benign inputs),

each compared with the reference (MSE — the field's "L2" —, L1, PSNR, SSIM on [0, 1], CMUA's masked L2). A sample is
*disrupted* when its ``criterion`` score to the reference exceeds ``threshold`` (0.05): ``"mse"`` (default,
Disrupting Deepfakes) or ``"masked_l2"`` (CMUA-Watermark: MSE over the pixels the clean edit changed). Scenarios:
``"default"`` computes the protection on the base editor (the defender knows only the public model), ``"leakage"``
on the patched editor itself. Outputs are clamped to [-1, 1] before scoring (HiSD's decoder has no tanh).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .._checks import check_positive_int
from ..defenses.base import Defense
from ..defenses.checks import check_image_range
from ..generators.base import Editor
from ..generators.ensemble import EnsembleEditor
from . import metrics
from .grid import default_column_names, save_labelled_grid
from .lpips import LPIPS_MIN_SIZE, find_lpips_weights, lpips_available

SCENARIOS = ("default", "leakage")
GROUPS = ("base_protected", "patched_protected", "patched_clean")
METRIC_NAMES = ("mse", "l1", "psnr", "ssim", "masked_l2")
LPIPS_NET = "alex"
"""The LPIPS backbone the protocol reports with (when its weights are available, see ``lpips``)."""
CRITERIA = ("mse", "masked_l2")
"""The success criteria: a sample is disrupted when this score exceeds the threshold."""
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvaluationOptions:
    """How one evaluation pass runs (see :func:`evaluate_defense` for each field's meaning)."""

    scenario: str = "default"
    per_condition: bool = True
    batch_size: int = 16
    threshold: float = metrics.DISRUPTION_THRESHOLD
    fit_data: tuple[torch.Tensor, torch.Tensor] | None = None
    grid_path: str | None = None
    grid_patch: str | None = None
    grid_images: int = 4
    progress: bool = False
    transforms: Mapping[str, Transform] | None = None
    criterion: str = "mse"
    lpips: bool | None = None
    lpips_weights: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.grid_images, "grid_images")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {list(CRITERIA)} (the score a disrupted sample exceeds the "
                             f"threshold in), got {self.criterion!r}.")


@dataclass
class EvaluationResult:
    """Means over all (image, condition) samples; ``metrics[group][metric]`` with group in :data:`GROUPS`."""

    defense: str
    scenario: str
    n_images: int
    n_conditions: int
    threshold: float
    success_rate_base: float  # fraction of samples the defense disrupts on the base editor
    success_rate_patched: float  # ... and on the patched editor
    metrics: dict[str, dict[str, float]]
    perturbation: dict[str, float]  # L-inf size and PSNR of protected vs clean images
    grid_path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # transformation name -> {"success_rate", "mse", "success_rate_clean", "mse_clean"} (see evaluate_defense)
    transforms: dict[str, dict[str, float]] = field(default_factory=dict)
    criterion: str = "mse"  # the score that decides success (see CRITERIA)
    # the LPIPS backbone weights file of metrics[group]["lpips"] and perturbation["lpips_protected_vs_clean"];
    # None: LPIPS was not computed (weights not available, images too small, or lpips=False)
    lpips_weights: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def summary(self) -> str:
        """A small text table."""
        names = METRIC_NAMES + (("lpips",) if self.lpips_weights is not None else ())
        lines = [
            f"{self.defense} ({self.scenario} scenario): {self.n_images} images x {self.n_conditions} conditions; "
            f"defense success rate ({self.criterion} > {self.threshold:g}) {100 * self.success_rate_base:.1f}% on the "
            "base editor -> "
            f"{100 * self.success_rate_patched:.1f}% on the patched editor",
            f"{'vs clean edit':20s}" + "".join(f"{m:>11s}" for m in names),
        ]
        for group in GROUPS:
            lines.append(f"{group:20s}" + "".join(f"{self.metrics[group][m]:11.4f}" for m in names))
        return "\n".join(lines)


def _scores(output: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor,
            lpips_weights: str | None = None) -> dict[str, torch.Tensor]:
    output = output.clamp(-1, 1)
    reference = reference.clamp(-1, 1)
    scores = {
        "mse": metrics.mse(output, reference),
        "l1": metrics.l1(output, reference),
        "psnr": metrics.psnr(output, reference),
        "ssim": metrics.ssim(output, reference),
        "masked_l2": metrics.masked_l2(output, reference, mask),
    }
    if lpips_weights is not None:
        scores["lpips"] = metrics.lpips(output, reference, net=LPIPS_NET, weights=lpips_weights)
    return scores


def _lpips_weights(options: EvaluationOptions, images: torch.Tensor, device: torch.device) -> str | None:
    """The LPIPS weights file of this run, or None: decided once, before any defense runs. ``lpips=None`` reports
    LPIPS when torchvision's cache holds the weights (or ``lpips_weights`` is given) and the images are large
    enough; ``True`` requires it; a missing or broken file given or required fails here, with a clear message."""
    if options.lpips is False:
        return None
    if options.lpips is None:  # when possible; an explicit lpips_weights file must exist
        if options.lpips_weights is None and not lpips_available(LPIPS_NET):
            return None
        if min(images.shape[-2:]) < LPIPS_MIN_SIZE[LPIPS_NET]:
            return None
    probe = images[:1].to(device)
    metrics.lpips(probe, probe, net=LPIPS_NET, weights=options.lpips_weights)  # builds it: a broken file fails now
    return str(find_lpips_weights(LPIPS_NET, options.lpips_weights).resolve())


def evaluate_defense(
    defense: Defense,
    base: Editor,
    images: torch.Tensor,
    labels: torch.Tensor,
    patched: Editor | None = None,
    scenario: str = "default",
    per_condition: bool = True,
    batch_size: int = 16,
    threshold: float = metrics.DISRUPTION_THRESHOLD,
    fit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    grid_path: str | None = None,
    grid_images: int = 4,
    progress: bool = False,
    transforms: Mapping[str, Transform] | None = None,
    criterion: str = "mse",
    lpips: bool | None = None,
    lpips_weights: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Run the protocol on ``images`` [N, 3, H, W] in [-1, 1] with source ``labels`` [N, A] (targets come from
    ``base.conditions(labels)``).

    ``patched`` defaults to ``base`` (an identity patch: before and after numbers are then equal).
    ``per_condition``: protect each image once per target condition (Disrupting Deepfakes' protocol) or once for
    all conditions jointly. Universal defenses (CMUA) are fitted on a copy with ``fit_data`` (images, labels) against
    the scenario's editor when given, otherwise their current perturbation is used. ``grid_path``: a PNG of the first
    ``grid_images`` images for the first condition, rows: input, protected, base clean, base protected, patched
    clean, patched protected, captioned in the image (:func:`grid_row_names`; columns "image 1", ...), written
    atomically. ``progress``: show a progress bar. ``transforms``: name -> function of images in
    [-1, 1] (e.g. JPEG, blur) applied to the protected images before the base editor sees them; the result's
    ``transforms[name]`` holds the defense's success rate and MSE under it, and the same for the transformed clean
    images (``success_rate_clean``: how often the transformation alone already counts as a disruption).
    ``criterion``: the score that must exceed ``threshold`` for a sample to count as disrupted, ``"mse"`` or
    ``"masked_l2"`` (CMUA-Watermark's, with the mask of the pixels the clean edit changed by more than 0.5 summed over
    RGB); it decides every success rate, transforms included, and is recorded in the result.
    ``lpips``: also score LPIPS (AlexNet; ``metrics[group]["lpips"]``, ``perturbation["lpips_protected_vs_clean"]``):
    None (default) when its backbone weights are available offline (``lpips_weights``, else torchvision's cache; see
    :mod:`~lora_patch_adapters.evaluation.lpips`) and the images are at least 31 px, True to require it, False to
    skip it. The weights file used is recorded in ``result.lpips_weights`` (None: not computed).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}.")
    patched = base if patched is None else patched
    view = base if scenario == "default" else patched
    options = EvaluationOptions(scenario, per_condition, batch_size, threshold, fit_data, grid_path, "patched",
                                grid_images, progress, transforms, criterion, lpips, lpips_weights)
    return _evaluate(defense, base, images, labels, {"patched": patched}, view, options)["patched"]


def evaluate_patches(
    defense: Defense,
    base: Editor,
    images: torch.Tensor,
    labels: torch.Tensor,
    patched: Mapping[str, Editor],
    protect_against: Editor | None = None,
    scenario: str = "default",
    per_condition: bool = True,
    batch_size: int = 16,
    threshold: float = metrics.DISRUPTION_THRESHOLD,
    fit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    grid_path: str | None = None,
    grid_patch: str | None = None,
    grid_images: int = 4,
    progress: bool = False,
    transforms: Mapping[str, Transform] | None = None,
    criterion: str = "mse",
    lpips: bool | None = None,
    lpips_weights: str | os.PathLike | None = None,
) -> dict[str, EvaluationResult]:
    """:func:`evaluate_defense` for several patched editors at once: the protected images are computed once (against
    ``protect_against``, default ``base``) and every editor of ``patched`` (name -> editor) is scored on them.

    ``scenario`` only labels the results (``"default"`` when protecting against the base editor; e.g.
    ``"patch-aware"`` against an :class:`~lora_patch_adapters.generators.ensemble.EnsembleEditor`). Universal
    defenses are fitted on ``fit_data`` against ``protect_against`` (its members, for an ensemble). ``grid_patch``:
    the patched editor shown in the grid (default: the first). ``criterion``, ``lpips`` and ``lpips_weights`` as
    for :func:`evaluate_defense`.
    Returns name -> :class:`EvaluationResult`.
    """
    if not patched:
        raise ValueError("evaluate_patches needs at least one patched editor (a name -> Editor mapping).")
    view = base if protect_against is None else protect_against
    grid_patch = next(iter(patched)) if grid_patch is None else grid_patch
    if grid_patch not in patched:
        raise ValueError(f"grid_patch={grid_patch!r} is not one of the patched editors {list(patched)}.")
    options = EvaluationOptions(scenario, per_condition, batch_size, threshold, fit_data, grid_path, grid_patch,
                                grid_images, progress, transforms, criterion, lpips, lpips_weights)
    return _evaluate(defense, base, images, labels, dict(patched), view, options)


class _Tally:
    """Running sums of the scores of one (base, patched) pair."""

    def __init__(self, criterion: str = "mse", names: Sequence[str] = METRIC_NAMES) -> None:
        self.criterion = criterion
        self.sums: dict[str, dict[str, float]] = {g: {m: 0.0 for m in names} for g in GROUPS}
        self.disrupted = {"base": 0, "patched": 0}

    def add(self, group: str, scores: dict[str, torch.Tensor], threshold: float) -> None:
        for name, values in scores.items():
            self.sums[group][name] += values.sum().item()
        if group != "patched_clean":
            self.disrupted[group.split("_")[0]] += int(metrics.success(scores[self.criterion], threshold).sum())


def grid_row_names(defense: str, patched: str | None = "patched") -> list[str]:
    """The captions of the protocol grid's six rows: input, protected by ``defense``, base edit of the input and of the
    protected image, the same for the patched editor ``patched`` (a name of :func:`evaluate_patches`' mapping)."""
    editor = "patched" if patched in (None, "patched") else f"patch {patched}"
    return ["input", f"protected ({defense})", "base: edit of input", "base: edit of protected",
            f"{editor}: edit of input", f"{editor}: edit of protected"]


def fit_universal(defense: Defense, view: Editor, fit_data: tuple[torch.Tensor, torch.Tensor]) -> Defense:
    """A copy of a universal defense fitted against ``view`` (each member of an ensemble in turn)."""
    defense = copy.deepcopy(defense)
    if getattr(defense, "perturbation", None) is not None:
        defense.perturbation = None  # refit from scratch against this view
    defense.fit(fit_data, list(view.members) if isinstance(view, EnsembleEditor) else view)
    return defense


def _evaluate(
    defense: Defense, base: Editor, images: torch.Tensor, labels: torch.Tensor, patched: dict[str, Editor],
    view: Editor, options: EvaluationOptions,
) -> dict[str, EvaluationResult]:
    """Protect ``images`` against ``view`` once per batch (and condition), score every editor of ``patched``."""
    if not isinstance(defense, Defense):
        raise TypeError(f"defense must be a lora_patch_adapters.defenses.Defense, got {type(defense).__name__}.")
    if images.shape[0] == 0:
        raise ValueError("No images to evaluate on (an empty batch).")
    check_image_range(images)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label rows.")
    lpips_weights = _lpips_weights(options, images, base.device)
    scenario, per_condition, batch_size = options.scenario, options.per_condition, options.batch_size
    threshold, grid_path, grid_patch = options.threshold, options.grid_path, options.grid_patch
    transforms = dict(options.transforms or {})
    if options.fit_data is not None and callable(getattr(defense, "fit", None)):  # CMUA and universal plug-ins
        defense = fit_universal(defense, view, options.fit_data)

    device = base.device
    names = METRIC_NAMES + (("lpips",) if lpips_weights is not None else ())
    tallies = {name: _Tally(options.criterion, names) for name in patched}
    transformed = {name: {"disrupted": 0, "disrupted_clean": 0, "mse": 0.0, "mse_clean": 0.0} for name in transforms}
    linf, protected_psnr, protected_lpips = 0.0, 0.0, 0.0
    n_samples, n_conditions = 0, None
    grid_parts: list[list[torch.Tensor]] = []  # per batch: the six grid rows of its first grid images
    grid_count = 0
    bar = tqdm(total=images.shape[0], disable=not options.progress, unit="image", dynamic_ncols=True,
               desc=f"{getattr(defense, 'name', 'defense')} ({scenario})")
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        conditions = base.conditions(labels[start : start + batch_size].to(device))
        n_conditions = len(conditions)
        joint = None if per_condition else defense.protect(x, view, conditions)
        for index, condition in enumerate(conditions):
            x_protected = joint if joint is not None else defense.protect(x, view, condition)
            with torch.no_grad():
                reference = base.edit(x, condition)
                mask = metrics.cmua_mask(reference.clamp(-1, 1), x)
                base_output = base.edit(x_protected, condition)
                base_scores = _scores(base_output, reference, mask, lpips_weights)
                for name, editor in patched.items():
                    outputs = {"patched_protected": editor.edit(x_protected, condition),
                               "patched_clean": editor.edit(x, condition)}
                    tallies[name].add("base_protected", base_scores, threshold)
                    for group, output in outputs.items():
                        tallies[name].add(group, _scores(output, reference, mask, lpips_weights), threshold)
                    if (grid_path is not None and index == 0 and name == grid_patch
                            and grid_count < options.grid_images):  # the first images, across batches
                        k = min(options.grid_images - grid_count, x.shape[0])
                        grid_parts.append([t[:k].clamp(-1, 1).cpu() for t in (
                            x, x_protected, reference, base_output, outputs["patched_clean"],
                            outputs["patched_protected"],
                        )])
                        grid_count += k
                for name, transform in transforms.items():
                    for suffix, source in (("", x_protected), ("_clean", x)):
                        edited = base.edit(transform(source).clamp(-1, 1), condition).clamp(-1, 1)
                        mse = metrics.mse(edited, reference.clamp(-1, 1))
                        score = mse if options.criterion == "mse" else \
                            metrics.masked_l2(edited, reference.clamp(-1, 1), mask)
                        transformed[name]["mse" + suffix] += mse.sum().item()
                        transformed[name]["disrupted" + suffix] += int(metrics.success(score, threshold).sum())
                linf = max(linf, (x_protected - x).abs().max().item())
                protected_psnr += metrics.psnr(x_protected, x).sum().item()
                if lpips_weights is not None:
                    protected_lpips += metrics.lpips(x_protected.clamp(-1, 1), x.clamp(-1, 1), net=LPIPS_NET,
                                                     weights=lpips_weights).sum().item()
                n_samples += x.shape[0]
        bar.update(x.shape[0])
        first = tallies[next(iter(tallies))].disrupted
        bar.set_postfix({"disrupted base": first["base"], "patched": first["patched"]}, refresh=False)
    bar.close()
    if grid_parts:
        grid_rows = [torch.cat([part[row] for part in grid_parts]) for row in range(len(grid_parts[0]))]
        save_labelled_grid(grid_path, grid_rows, grid_row_names(getattr(defense, "name", type(defense).__name__),
                                                                 options.grid_patch), default_column_names(grid_count))
    transform_results = {
        name: {"success_rate": t["disrupted"] / n_samples, "mse": t["mse"] / n_samples,
               "success_rate_clean": t["disrupted_clean"] / n_samples, "mse_clean": t["mse_clean"] / n_samples}
        for name, t in transformed.items()
    }
    return {
        name: EvaluationResult(
            defense=getattr(defense, "name", type(defense).__name__),
            scenario=scenario,
            n_images=int(images.shape[0]),
            n_conditions=int(n_conditions or 0),
            threshold=threshold,
            success_rate_base=tally.disrupted["base"] / n_samples,
            success_rate_patched=tally.disrupted["patched"] / n_samples,
            metrics={g: {m: v / n_samples for m, v in d.items()} for g, d in tally.sums.items()},
            perturbation={"linf_max": linf, "psnr_protected_vs_clean": protected_psnr / n_samples,
                          **({"lpips_protected_vs_clean": protected_lpips / n_samples} if lpips_weights else {})},
            grid_path=grid_path if name == grid_patch else None,
            config={"per_condition": per_condition, "batch_size": batch_size, "defense": repr(defense),
                    "base": base.name, "patched": editor.name, "patched_is_base": editor is base,
                    "protected_against": view.name},
            transforms=transform_results,
            criterion=options.criterion,
            lpips_weights=lpips_weights,
        )
        for (name, tally), editor in zip(tallies.items(), patched.values())
    }


def compare(results: Sequence[EvaluationResult]) -> str:
    """One line per result: defense, scenario, success rates and mean MSE before/after patching."""
    header = (
        f"{'defense':14s}{'scenario':10s}{'success base':>14s}{'success patched':>17s}{'MSE base':>10s}"
        f"{'MSE patched':>13s}"
    )
    rows = [header]
    for r in results:
        rows.append(
            f"{r.defense:14s}{r.scenario:10s}{100 * r.success_rate_base:13.1f}%{100 * r.success_rate_patched:16.1f}%"
            f"{r.metrics['base_protected']['mse']:10.4f}{r.metrics['patched_protected']['mse']:13.4f}"
        )
    return "\n".join(rows)
