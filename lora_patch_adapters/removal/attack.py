"""Removal attacks: erase a defensive patch's warning by fine-tuning the defended generator on the attacker's photos.

Threat model: the attacker holds the defended generator (the defensive patch merged into its weights), their own face
photos (no labels: target conditions are built from random source labels) and compute; not the un-warned base. A
:class:`RemovalAttack` names one way to spend that compute:

* ``method="lora"``: a new gated LoRA patch of this package (rank ``rank``) on the defended generator, trained alone;
* ``method="full"``: every weight of the generator fine-tuned (no LoRA);

both towards :func:`~lora_patch_adapters.removal.targets.inpaint_target` of the defended outputs, with the warning's
region estimated from those outputs alone (:func:`~lora_patch_adapters.removal.mask.estimate_mask`) and filled with
the input's pixels or from the surroundings (``fill``). One optimiser step per batch of ``batch_size`` photos, all
target conditions of the batch in one forward. :data:`ATTACKS` holds the named settings the audit uses; ``"unseen"``
is a setting that :class:`~lora_patch_adapters.training.hardening.HardeningConfig`'s defaults never sample.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import peft
import torch

from .._checks import check_int, check_number
from ..generators.base import Editor
from ..tuner.config import LoraPatchConfig
from .mask import estimate_mask
from .targets import FILLS, inpaint_target

METHODS = ("lora", "full")
OPTIMIZERS = ("adam", "adamw", "sgd")
MASKS = ("per_condition", "shared")
MASK_IMAGES = 64  # attacker photos whose defended edits the mask is estimated from


@dataclass(frozen=True)
class RemovalAttack:
    """One removal attacker's settings (see the module docstring). ``rank`` applies to ``method="lora"`` only."""

    name: str = "inpaint"
    method: str = "lora"
    rank: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    fill: str = "input"
    batch_size: int = 4
    mask: str = "per_condition"  # one estimated mask per target condition, or one "shared" by every edit

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"RemovalAttack.name must be a non-empty string, got {self.name!r}.")
        if self.method not in METHODS:
            raise ValueError(f"RemovalAttack.method must be one of {list(METHODS)}, got {self.method!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"RemovalAttack.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.mask not in MASKS:
            raise ValueError(f"RemovalAttack.mask must be one of {list(MASKS)}, got {self.mask!r}.")
        if self.fill not in FILLS:
            raise ValueError(f"RemovalAttack.fill must be one of {list(FILLS)}, got {self.fill!r}.")
        check_int(self.rank, "RemovalAttack.rank")
        check_int(self.batch_size, "RemovalAttack.batch_size")
        check_number(self.lr, "RemovalAttack.lr", maximum=1.0, what="in (0, 1]")

    def describe(self) -> str:
        """The settings in words, e.g. ``"LoRA rank 8, Adam lr 0.001, input fill"``."""
        how = f"LoRA rank {self.rank}" if self.method == "lora" else "full fine-tuning"
        optimiser = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD (momentum 0.9)"}[self.optimizer]
        mask = "one mask per target condition" if self.mask == "per_condition" else "one shared mask"
        return f"{how}, {optimiser} lr {self.lr:g}, {self.fill} fill, {mask}, batch {self.batch_size}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ATTACKS: dict[str, RemovalAttack] = {
    # the paper's attacker settings (rank 8, lr 1e-3), pointed at the warning
    "inpaint": RemovalAttack("inpaint"),
    "inpaint_fill": RemovalAttack("inpaint_fill", fill="surroundings"),
    "full": RemovalAttack("full", method="full", lr=1e-4),
    # a rank and an optimiser the hardening's defaults never sample
    "unseen": RemovalAttack("unseen", rank=4, lr=1e-2, optimizer="adamw"),
    # the same two attackers with one mask estimated over every edit (more edits per estimate; misses a moving mark)
    "inpaint_shared": RemovalAttack("inpaint_shared", mask="shared"),
    "unseen_shared": RemovalAttack("unseen_shared", rank=4, lr=1e-2, optimizer="adamw", mask="shared"),
}
"""The named removal attacks (``lora-patch audit-defensive --attacks``)."""
DEFAULT_ATTACKS = tuple(ATTACKS)


def get_attack(spec: str | RemovalAttack) -> RemovalAttack:
    """A :class:`RemovalAttack` from its name in :data:`ATTACKS` (or the attack itself)."""
    if isinstance(spec, RemovalAttack):
        return spec
    if spec not in ATTACKS:
        raise ValueError(f"unknown removal attack {spec!r}; choose among {', '.join(ATTACKS)}.")
    return ATTACKS[spec]


def make_optimizer(name: str, parameters: Sequence[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The attacker's optimiser: ``"adam"`` (torch's defaults), ``"adamw"`` (weight decay 0.01), ``"sgd"``
    (momentum 0.9)."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}.")


def attacker_labels(n: int, attributes: int, seed: int = 0) -> torch.Tensor:
    """Random 0/1 source labels [n, attributes]: the attacker's photos carry none, any labels give target
    conditions to edit with."""
    check_int(n, "n")
    check_int(attributes, "attributes")
    return (torch.rand(n, attributes, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def edit_all(editor: Editor, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every target condition of ``labels`` applied to ``x`` [N, 3, H, W]: (edits [N*T, 3, H, W], the matching
    inputs [N*T, 3, H, W]); one forward when the conditions stack, else one per condition."""
    conditions = editor.conditions(labels.to(editor.device))
    stacked = editor.concat_conditions(conditions)
    repeated = x.repeat(len(conditions), 1, 1, 1)
    if stacked is not None:
        return editor.edit(repeated, stacked), repeated
    return torch.cat([editor.edit(x, c) for c in conditions]), repeated


def warning_mask(defended: Editor, images: torch.Tensor, labels: torch.Tensor, max_images: int = MASK_IMAGES,
                 batch_size: int = 16, shared: bool = False) -> torch.Tensor:
    """The warning's masks [T, 1, H, W], one per target condition, each estimated from the defended editor's edits
    of (at most ``max_images``) attacker photos under that condition
    (:func:`~lora_patch_adapters.removal.mask.estimate_mask`): the attacker knows which condition made which edit,
    so a mark that moves with the condition is found where it is. ``shared``: one mask [1, 1, H, W] from every
    edit instead."""
    per_condition: list[list[torch.Tensor]] = []
    inputs = []
    with torch.no_grad():
        for start in range(0, min(max_images, images.shape[0]), batch_size):
            x = images[start : min(start + batch_size, max_images)].to(defended.device)
            y, _ = edit_all(defended, x, labels[start : start + x.shape[0]])
            blocks = y.split(x.shape[0])
            per_condition = per_condition or [[] for _ in blocks]
            for t, block in enumerate(blocks):
                per_condition[t].append(block)
            inputs.append(x)
    x_all = torch.cat(inputs)
    if shared:
        outputs = torch.cat([torch.cat(o) for o in per_condition])
        return estimate_mask(outputs, x_all.repeat(len(per_condition), 1, 1, 1))
    return torch.cat([estimate_mask(torch.cat(outputs), x_all) for outputs in per_condition])


def row_masks(masks: torch.Tensor, images: int) -> torch.Tensor:
    """Per-row masks for the rows of :func:`edit_all` (condition by condition, ``images`` rows each) from one mask
    per condition [T, 1, H, W] (a single mask [1, 1, H, W] is returned as it is: it broadcasts)."""
    return masks if masks.shape[0] == 1 else masks.repeat_interleave(images, dim=0)


@dataclass
class RemovalResult:
    """A trained removal attack: the attacked ``editor``, the optimiser ``steps`` taken, training ``seconds``, the
    mask it used and the loss of every step."""

    editor: Editor
    steps: int
    seconds: float
    mask: torch.Tensor
    losses: list[float] = field(default_factory=list)


class RemovalTrainer:
    """Fine-tunes a copy of ``defended`` (never modified) with ``attack`` towards inpainted targets; ``mask`` is
    the warning region the attacker estimated (:func:`warning_mask`: one [1, H, W] per target condition, or a single
    [1, 1, H, W] for every edit). ``seed`` fixes the new patch's initialisation
    (drawn without touching torch's global random state)."""

    def __init__(self, attack: RemovalAttack | str, defended: Editor, mask: torch.Tensor, seed: int = 0) -> None:
        if not isinstance(defended, Editor):
            raise TypeError(f"defended must be a lora_patch_adapters Editor, got {type(defended).__name__}.")
        self.attack = get_attack(attack)
        self.reference = defended
        for p in defended.generator.parameters():
            p.requires_grad_(False)
        self.mask = mask.to(defended.device)
        self.editor = copy.deepcopy(defended)
        generator = self.editor.generator
        if self.attack.method == "lora":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model: torch.nn.Module = peft.get_peft_model(
                    generator, LoraPatchConfig(r=self.attack.rank, init_weights="zero"))
        else:
            self.model = generator
            for p in generator.parameters():
                p.requires_grad_(True)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.attack.optimizer, self.parameters, self.attack.lr)
        self.steps = 0

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs repeated per target condition, removal targets) of a batch, from the untouched defended editor."""
        with torch.no_grad():
            defended, inputs = edit_all(self.reference, x, labels)
            return inputs, inpaint_target(defended, inputs, row_masks(self.mask, x.shape[0]), self.attack.fill)

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimiser step on a batch of photos [N, 3, H, W] (labels [N, A]: any source labels); the loss."""
        x = x.to(self.reference.device)
        _, target = self.targets(x, labels)
        output, _ = edit_all(self.editor, x, labels)
        loss = (output - target).square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    def train(self, images: torch.Tensor, labels: torch.Tensor, epochs: int = 1) -> RemovalResult:
        """``epochs`` passes over the photos in order, in batches of ``attack.batch_size``."""
        check_int(epochs, "epochs")
        losses = []
        start = time.perf_counter()
        for _ in range(epochs):
            for first in range(0, images.shape[0], self.attack.batch_size):
                rows = slice(first, first + self.attack.batch_size)
                losses.append(self.step(images[rows], labels[rows]))
        for p in self.editor.generator.parameters():
            p.requires_grad_(False)
        return RemovalResult(self.editor, self.steps, time.perf_counter() - start, self.mask, losses)
