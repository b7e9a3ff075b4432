"""The audit: does a proactive defense survive an attacker who patches the generator, and at what cost?

For every attacker budget (training images x epochs) a bypass patch is trained with the paper's min-max loop; then
every defense is measured on held-out images

* before patching (the base generator),
* after patching, *default* scenario (the protection is computed on the public base generator),
* after patching, *leakage* scenario (the protection is recomputed on the attacker's patched generator),
* against a *patch-aware defender*: the same defense computed against the base generator and ``shadow_patches``
  bypass patches the defender trained itself (other seeds, other images), averaged through an
  :class:`~lora_patch_adapters.generators.ensemble.EnsembleEditor` (universal defenses are fitted on all of them),

plus, for context, how often the protection still disrupts the base generator after JPEG re-encoding or blur.
The attacker's cost (images, epochs, batches, wall-clock seconds, FLOPs, device) is recorded with every patch. The
result is a plain dict (``results.json``); :mod:`lora_patch_adapters.audit.report` turns it into HTML and Markdown.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..defenses.base import Defense
from ..defenses.pgd import PGD
from ..defenses.plugins import load_defense
from ..evaluation import evaluate_defense, evaluate_patches, fit_universal
from ..evaluation.lpips import LpipsWeightsError, find_lpips_weights, lpips_available
from ..generators.base import Editor
from ..generators.ensemble import EnsembleEditor
from ..losses import MMFALoss
from ..patches import save_patch
from ..training import BypassTrainer, TrainingConfig
from ..training.config import INNER_STRATEGIES
from ..training.flops import count_flops
from ..training.trainer import as_dataset
from ..tuner.config import LoraPatchConfig
from ..version import __version__
from .budgets import DEFAULT_BUDGETS, Budget, parse_budgets
from .transforms import standard_transforms

FORMAT = "lora-patch-audit/1"
ATTACK_WITH = ("pgd", "defense")
PAPER_BUDGET = Budget(1000, 1)
ROWS = ("default", "leakage", "patch_aware")
PGD_INNER_STEPS, FREE_REPLAYS = 10, 4  # the defaults of AuditConfig.inner_steps (inner="pgd") and .replays ("free")

TensorPair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class AuditConfig:
    """Every setting of an audit (recorded in ``results.json``). Defaults: the paper's attacker (bypass patch rank 8,
    Adam 1e-3, batch 4, one optimiser step per batch and target, inner PGD eps 0.05 with 10 steps of 0.01) and the
    field's defenses (eps 0.05); the loss is the pixel term alone unless the MMFA weights are set (the ResNet-50 and
    BLIP encoders must then be available locally). ``inner="fgsm_rs"`` / ``"free"`` (``replays``) are the cheaper
    inner maximisations of :mod:`lora_patch_adapters.training.inner` (eps ``eps``), for attacker and defender alike;
    the field of the other strategies is recorded as None."""

    defenses: list[str] = field(default_factory=lambda: ["pgd", "cmua", "anti_forgery"])
    budgets: list[Budget] = field(default_factory=lambda: parse_budgets(DEFAULT_BUDGETS))
    eps: float = 0.05  # the defenses' budget (L-inf on [-1, 1]; Anti-Forgery: normalised Lab a/b units)
    defense_steps: int | None = None  # iterations of the built-in defenses (None: PGD-10, Anti-Forgery 100)
    eval_images: int = 16
    eval_batch_size: int = 16
    threshold: float = 0.05  # a sample is disrupted when MSE(edit of protected, clean edit) > threshold
    rank: int = 8
    init: str = "kaiming"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    batch_size: int = 4
    schedule: str = "per_condition"
    inner: str = "pgd"  # the inner maximisation (training.inner): "pgd" (the paper), "fgsm_rs", "free"
    inner_steps: int | None = PGD_INNER_STEPS  # "pgd" only (None for the others), step size 2 * eps / inner_steps
    replays: int | None = FREE_REPLAYS  # "free" only (None for the others): outer updates per batch and target
    feature_weight: float = 0.0
    semantic_weight: float = 0.0
    attack_with: str = "pgd"  # "pgd": one patch per budget (the paper); "defense": one per defense and budget
    shadow_patches: int = 2
    shadow_images: int | None = None  # default: the smallest budget's images
    jpeg_qualities: tuple[int, ...] = (90, 75, 50)
    blur_sigmas: tuple[float, ...] = (0.5, 1.0)
    grid_images: int = 4
    lpips_weights: str | None = None  # LPIPS backbone file; None: torchvision's cache when it holds the weights
    seed: int = 42
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.attack_with not in ATTACK_WITH:
            raise ValueError(f"attack_with must be one of {list(ATTACK_WITH)}, got {self.attack_with!r}.")
        if not self.defenses:
            raise ValueError("An audit needs at least one defense.")
        if not self.budgets or not all(isinstance(b, Budget) for b in self.budgets):
            raise ValueError(f"budgets must be a non-empty list of Budget, e.g. parse_budgets({DEFAULT_BUDGETS!r}).")
        if self.shadow_patches < 0:
            raise ValueError(f"shadow_patches must be >= 0, got {self.shadow_patches}.")
        if self.inner not in INNER_STRATEGIES:
            raise ValueError(f"AuditConfig.inner must be one of {list(INNER_STRATEGIES)}, got {self.inner!r}.")
        for name, owner, default in (("inner_steps", "pgd", PGD_INNER_STEPS), ("replays", "free", FREE_REPLAYS)):
            value = getattr(self, name)
            if self.inner == owner:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"AuditConfig.{name} must be a positive integer, got {value!r}.")
            elif value not in (None, default):  # the default of a field that does not apply is recorded as None
                raise ValueError(f"AuditConfig.{name} applies to inner={owner!r} only, not to inner={self.inner!r}.")
            else:
                setattr(self, name, None)
        if self.inner != "pgd" and self.attack_with == "defense":
            raise ValueError(f"AuditConfig.inner={self.inner!r} builds its own L-inf attack: attack_with='defense' "
                             "(train against each defense) needs inner='pgd'.")
        self.budgets = sorted(self.budgets, key=lambda b: (b.image_passes, b.images))

    @property
    def headline(self) -> Budget:
        """The budget of the headline table: the paper's 1000 images x 1 epoch if audited, else the largest."""
        return PAPER_BUDGET if PAPER_BUDGET in self.budgets else self.budgets[-1]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["budgets"] = [b.key for b in self.budgets]
        return data


def device_description(device: str) -> str:
    """``"cuda:0 (NVIDIA H100 80GB HBM3)"`` or ``"cpu (x86_64, 2 threads)"``: the machine the cost was paid on."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(dev)})"
    return f"{device} ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"


def _training_flops(trainer: BypassTrainer, data: Dataset | TensorPair, budget: Budget) -> int:
    """FLOPs of training on ``budget``: one batch counted on a copy of the trainer (before it trains), per image,
    times the images the budget passes (convolution and matmul FLOPs grow linearly with the batch)."""
    dataset = as_dataset(data)
    rows = min(trainer.config.batch_size, len(dataset))
    items = [dataset[i] for i in range(rows)]
    x, labels = torch.stack([item[0] for item in items]), torch.stack([torch.as_tensor(item[1]) for item in items])
    probe = copy.deepcopy(trainer)
    probe.config = dataclasses.replace(probe.config, progress=False)
    per_image = count_flops(lambda: probe.train_step(x, labels)) / rows
    return round(per_image * budget.image_passes)


def subset(data: Dataset | TensorPair, n: int) -> Dataset | TensorPair:
    """The first ``n`` items of an (images, labels) pair or a map-style dataset."""
    if isinstance(data, tuple):
        return data[0][:n], data[1][:n]
    return Subset(data, range(n))


def _size(data: Dataset | TensorPair) -> int:
    return int(data[0].shape[0]) if isinstance(data, tuple) else len(as_dataset(data))


class Audit:
    """One audit run; see :func:`run_audit`."""

    def __init__(self, config: AuditConfig, make_editor: Callable[[], Editor], train_data: Dataset | TensorPair,
                 eval_data: TensorPair, fit_data: TensorPair | None, shadow_data: Dataset | TensorPair | None,
                 out_dir: str, echo: Callable[[str], None], progress: bool,
                 defenses: Sequence[Defense] | None) -> None:
        self.config, self.make_editor, self.out_dir = config, make_editor, out_dir
        self.train_data, self.eval_data = train_data, eval_data
        self.fit_data = fit_data if fit_data is not None else eval_data
        self.shadow_data = shadow_data if shadow_data is not None else train_data
        self.echo, self.progress = echo, progress
        c = config
        self.defenses = list(defenses) if defenses is not None else [
            load_defense(spec, eps=c.eps, seed=c.seed, steps=c.defense_steps) for spec in c.defenses]
        self.specs = list(c.defenses) if defenses is None else [getattr(d, "spec", None) or d.name for d in defenses]
        names = [d.name for d in self.defenses]
        if len(set(names)) != len(names):
            raise ValueError(f"Two audited defenses share a name ({names}); give each plug-in a distinct `name`.")
        self.device = device_description(c.device)
        available = _size(train_data)
        if max(b.images for b in c.budgets) > available:
            raise ValueError(f"The largest attacker budget needs {max(b.images for b in c.budgets)} training images "
                             f"but the training data has {available}: lower --budgets or give more data.")

    # ------------------------------------------------------------------------------------------------ training
    def _loss(self) -> MMFALoss:
        c = self.config
        if c.feature_weight == 0 and c.semantic_weight == 0:
            return MMFALoss.pixel_only()
        return MMFALoss(feature_weight=c.feature_weight, semantic_weight=c.semantic_weight)

    def _inner_attack(self, defense: Defense | None) -> Defense:
        c = self.config
        if defense is None:
            steps = c.inner_steps or PGD_INNER_STEPS  # fgsm_rs / free take only its eps (training.inner)
            return PGD(eps=c.eps, steps=steps, step_size=2 * c.eps / steps, seed=c.seed)
        if callable(getattr(defense, "fit", None)):  # a universal defense: the attacker trains against its fit
            return fit_universal(defense, self.base, self.fit_data)
        return defense

    def _train(self, data: Dataset | TensorPair, budget: Budget, seed: int, attack: Defense,
               directory: str) -> tuple[Editor, dict[str, Any]]:
        c = self.config
        editor = self.make_editor()
        trainer = BypassTrainer(
            editor, patch=LoraPatchConfig.from_preset("paper", r=c.rank, init_weights=c.init), attack=attack,
            loss=self._loss(),
            config=TrainingConfig(batch_size=c.batch_size, lr=c.lr, lr_schedule=c.lr_schedule, schedule=c.schedule,
                                  epochs=budget.epochs, seed=seed, progress=self.progress, inner=c.inner,
                                  replays=c.replays or FREE_REPLAYS),
        )
        training_data = subset(data, budget.images)
        flops = _training_flops(trainer, training_data, budget)  # counted apart: the timed run has no overhead
        start = time.perf_counter()
        result = trainer.train(training_data)
        seconds = time.perf_counter() - start
        patch_dir = save_patch(trainer, directory, metadata={"audit": {"budget": budget.key, "seed": seed}})
        for p in editor.generator.parameters():
            p.requires_grad_(False)
        cost = {"images": budget.images, "epochs": budget.epochs, "image_passes": budget.image_passes,
                "batches": result.steps, "seconds": seconds, "flops": flops,
                "device": self.device, "seed": seed,
                "final_loss": result.final_loss, "patch": os.path.relpath(patch_dir, self.out_dir)}
        return editor, cost

    def train_attackers(self) -> dict[str, dict[str, tuple[Editor, dict[str, Any]]]]:
        """attack -> budget key -> (patched editor, cost); attack is "pgd" or a defense name."""
        c = self.config
        attacks: list[tuple[str, Defense | None]] = [("pgd", None)] if c.attack_with == "pgd" else [
            (d.name, d) for d in self.defenses]
        patches: dict[str, dict[str, tuple[Editor, dict[str, Any]]]] = {}
        for attack_name, defense in attacks:
            patches[attack_name] = {}
            inner = self._inner_attack(defense)
            for budget in c.budgets:
                self.echo(f"attacker: bypass patch against {attack_name} with {budget.images} images x "
                          f"{budget.epochs} epoch(s)")
                directory = os.path.join(self.out_dir, "patches", f"{attack_name}_{budget.key}")
                patches[attack_name][budget.key] = self._train(self.train_data, budget, c.seed, inner, directory)
                self.echo(f"  {patches[attack_name][budget.key][1]['seconds']:.1f} s")
        return patches

    def train_shadows(self) -> list[tuple[Editor, dict[str, Any]]]:
        """The patch-aware defender's own bypass patches (seeds ``seed + 1 + k``, the defender's images)."""
        c = self.config
        images = min(c.shadow_images or c.budgets[0].images, _size(self.shadow_data))
        shadows = []
        for k in range(c.shadow_patches):
            self.echo(f"defender: shadow patch {k + 1}/{c.shadow_patches} ({images} images, seed {c.seed + 1 + k})")
            directory = os.path.join(self.out_dir, "patches", f"shadow_{k + 1}")
            shadows.append(self._train(self.shadow_data, Budget(images, 1), c.seed + 1 + k,
                                       self._inner_attack(None), directory))
        return shadows

    # ---------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, defense: Defense, spec: str, attackers: dict[str, tuple[Editor, dict[str, Any]]],
                 shadows: list[Editor]) -> dict[str, Any]:
        c = self.config
        images, labels = self.eval_data
        universal = callable(getattr(defense, "fit", None))
        fit = self.fit_data if universal else None
        editors = {key: editor for key, (editor, _) in attackers.items()}
        common = {"batch_size": c.eval_batch_size, "threshold": c.threshold, "fit_data": fit,
                  "progress": self.progress, "lpips": self.lpips_weights is not None,
                  "lpips_weights": self.lpips_weights}
        grid = os.path.join(self.out_dir, "grids", f"{_file_name(defense.name)}.png")
        os.makedirs(os.path.dirname(grid), exist_ok=True)
        self.echo(f"{defense.name}: default scenario (protection computed on the base generator), "
                  f"{len(editors)} patched generator(s), {len(self.transforms)} transformations")
        default = evaluate_patches(defense, self.base, images, labels, editors, scenario="default", grid_path=grid,
                                   grid_patch=c.headline.key if c.headline.key in editors else None,
                                   grid_images=c.grid_images, transforms=self.transforms, **common)
        self.echo(f"{defense.name}: leakage scenario (protection recomputed on each patched generator)")
        leakage = {key: evaluate_defense(defense, self.base, images, labels, patched=editor, scenario="leakage",
                                         **common) for key, editor in editors.items()}
        aware: dict[str, Any] = {}
        error = None
        if shadows:
            self.echo(f"{defense.name}: patch-aware defender (base + {len(shadows)} shadow patches)")
            ensemble = EnsembleEditor([self.base, *shadows], name=f"base+{len(shadows)} shadow patches")
            try:
                aware = evaluate_patches(defense, self.base, images, labels, editors, protect_against=ensemble,
                                         scenario="patch-aware", **common)
            except Exception as exc:  # noqa: BLE001 -- a plug-in may not handle a 3K-channel output: record, go on
                error = f"{type(exc).__name__}: {exc}"
                self.echo(f"{defense.name}: the patch-aware row failed ({error})")
        first = next(iter(default.values()))
        per_budget = {key: {"default": default[key].to_dict(), "leakage": leakage[key].to_dict(),
                            "patch_aware": aware[key].to_dict() if key in aware else None} for key in editors}
        rates = {"before": first.success_rate_base,
                 "default": {k: r.success_rate_patched for k, r in default.items()},
                 "leakage": {k: r.success_rate_patched for k, r in leakage.items()},
                 "patch_aware": {k: r.success_rate_patched for k, r in aware.items()} if aware else None,
                 "patch_aware_on_base": next(iter(aware.values())).success_rate_base if aware else None}
        return {
            "name": defense.name, "spec": spec, "repr": repr(defense), "eps": getattr(defense, "eps", None),
            "universal": universal,
            "before": {"success_rate": first.success_rate_base, "metrics": first.metrics["base_protected"],
                       "perturbation": first.perturbation},
            "success_rates": rates,
            "clean_psnr_db": {k: r.metrics["patched_clean"]["psnr"] for k, r in default.items()},
            "clean_lpips": {k: r.metrics["patched_clean"]["lpips"] for k, r in default.items()}
            if self.lpips_weights is not None else None,
            "robustness": first.transforms,
            "budgets": per_budget,
            "grid": os.path.relpath(grid, self.out_dir),
            "patch_aware_error": error,
        }

    def run(self) -> dict[str, Any]:
        c = self.config
        start = time.perf_counter()
        self.base = self.make_editor()
        for p in self.base.generator.parameters():
            p.requires_grad_(False)
        self.transforms = standard_transforms(c.jpeg_qualities, c.blur_sigmas)
        self.lpips_weights = _lpips_weights(self.eval_data[0], c.lpips_weights)
        attackers = self.train_attackers()
        trained = time.perf_counter()
        shadows = self.train_shadows()
        shadowed = time.perf_counter()
        results = []
        for defense, spec in zip(self.defenses, self.specs):
            attack = "pgd" if c.attack_with == "pgd" else defense.name
            results.append(self.evaluate(defense, spec, attackers[attack], [e for e, _ in shadows]))
        done = time.perf_counter()
        return {
            "format": FORMAT,
            "version": __version__,
            "torch": torch.__version__,
            "seed": c.seed,
            "device": self.device,
            "config": c.to_dict(),
            "budgets": [{"key": b.key, "images": b.images, "epochs": b.epochs, "image_passes": b.image_passes}
                        for b in c.budgets],
            "headline_budget": c.headline.key,
            "attacker": {attack: {key: cost for key, (_, cost) in per.items()} for attack, per in attackers.items()},
            "defender": {"shadow_patches": [cost for _, cost in shadows]},
            "evaluation": {"images": int(self.eval_data[0].shape[0]),
                           "conditions": len(self.base.conditions(self.eval_data[1][:1].to(self.base.device))),
                           "threshold": c.threshold, "transforms": list(self.transforms),
                           "lpips_weights": self.lpips_weights},
            "defenses": results,
            "timings": {"attacker_training_seconds": trained - start, "defender_training_seconds": shadowed - trained,
                        "evaluation_seconds": done - shadowed, "total_seconds": done - start},
        }


def _lpips_weights(images: torch.Tensor, weights: str | None = None) -> str | None:
    """The AlexNet weights file LPIPS is reported with (``weights``, else torchvision's cache), or None when it is
    not cached or the images are too small: decided once per audit, so that every row has the column or none has.
    A given ``weights`` file that does not exist is an error, not a silent omission."""
    if weights is not None and find_lpips_weights(weights=weights) is None:
        raise LpipsWeightsError(f"LPIPS weights {weights!r}: no such file; pass a .safetensors / .pth state dict of "
                                "torchvision's alexnet (ImageNet weights), or leave it out to use torchvision's cache.")
    if not lpips_available(weights=weights, size=tuple(images.shape[-2:])):
        return None
    return str(find_lpips_weights(weights=weights).resolve())


def _file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "defense"


def run_audit(
    config: AuditConfig,
    make_editor: Callable[[], Editor],
    train_data: Dataset | TensorPair,
    eval_data: TensorPair,
    out_dir: str,
    fit_data: TensorPair | None = None,
    shadow_data: Dataset | TensorPair | None = None,
    defenses: Sequence[Defense] | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the audit and return its results (see the module docstring; written out by
    :func:`lora_patch_adapters.audit.report.write_report`).

    ``make_editor()`` builds a fresh copy of the generator (one per patch, plus the base). ``train_data``: the
    attacker's images — an (images, labels) pair or a dataset with at least the largest budget's images; budgets
    take its first N images. ``eval_data``: held-out (images [N, 3, H, W] in [-1, 1], labels [N, A]).
    ``fit_data``: the images universal defenses are fitted on (default: ``eval_data``). ``shadow_data``: the
    patch-aware defender's training images (default: ``train_data``; its shadow patches differ by seed).
    ``defenses``: already-built defenses instead of ``config.defenses``. Patches are saved under
    ``out_dir/patches`` and grids under ``out_dir/grids``.
    """
    os.makedirs(out_dir, exist_ok=True)
    return Audit(config, make_editor, train_data, eval_data, fit_data, shadow_data, out_dir, echo, progress,
                 defenses).run()
