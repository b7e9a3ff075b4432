"""Hardened defensive patches: train the warning to survive a simulated removal attack (first-order meta-learning).

The recipe follows tamper-resistant training (TAR, Tamirisa et al., ICLR 2025; SOPHON, Deng et al., IEEE S&P 2024;
IMMA, Zheng & Yeh, ECCV 2024), for a defensive patch ``theta`` on images ``x`` under condition ``c``:

1. draw an attacker setting (rank, learning rate, optimiser, fill) from :class:`HardeningConfig`, seeded per step;
2. attach a fresh gated LoRA ``phi`` of that rank on top of ``theta`` (A Kaiming-uniform, B zero, so the first
   forward is the defended one) and take ``steps`` optimiser steps on ``phi`` alone towards the removal target
   :func:`~lora_patch_adapters.removal.targets.inpaint_target` of the defended edit, with the mark's footprint
   (known to the defender) dilated by ``margin`` pixels as the attacker's mask;
3. with ``phi`` frozen at its end point, add ``weight`` times the squared error between ``G_{theta, phi}(x)`` and the
   warning target inside that mask to the defensive patch's loss: its gradient reaches ``theta`` only (first order:
   no gradient through the simulated steps).

The simulation runs in :mod:`.simulated_removal`. The defensive loss itself (the warning visible on clean and
protected inputs, the edit unchanged outside the mark) is the
:class:`~lora_patch_adapters.training.defensive.WatermarkTrainer`'s. The simulated adapter exists only inside
:meth:`~.simulated_removal.Hardener.after_attack_loss`: saved patches and the trainer's parameters never see it
(checkpoints keep a persistent attacker's weights apart, for an exact resume).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

from .._checks import check_int, check_number
from ..removal.attack import OPTIMIZERS, RemovalAttack
from ..removal.targets import FILLS


def _tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"HardeningConfig.{name} must be a list of values, got {value!r}.")
    values = tuple(value)
    if not values:
        raise ValueError(f"HardeningConfig.{name} must not be empty.")
    return values


@dataclass
class HardeningConfig:
    """The simulated removal attacks of a hardened defensive patch (``TrainingConfig(hardening=...)``).

    ``steps``: simulated attacker steps per training forward; ``ranks``, ``lrs``, ``optimizers``, ``fills``: the
    attacker settings sampled uniformly per forward (defaults leave out
    :data:`~lora_patch_adapters.removal.attack.ATTACKS` ``"unseen"`` and full fine-tuning, so the audit also measures
    settings the hardening never saw); ``weight``: weight of the after-attack loss; ``margin``: pixels by which the
    simulated attacker's mask grows around the mark's footprint; ``persist``: training forwards one simulated
    attacker keeps training before a fresh one is drawn (0: a fresh attacker every forward; a persistent attacker
    accumulates ``steps`` per forward, so the warning faces attackers that trained far longer than ``steps``). The
    defaults are the setting measured by ``benchmarks/bench_defensive_removal.py``.
    """

    steps: int = 4
    ranks: tuple[int, ...] = (8, 16)
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    optimizers: tuple[str, ...] = ("adam",)
    fills: tuple[str, ...] = ("input", "surroundings")
    weight: float = 1.0
    margin: int = 1
    persist: int = 8

    def __post_init__(self) -> None:
        check_int(self.steps, "HardeningConfig.steps")
        check_int(self.margin, "HardeningConfig.margin", minimum=0)
        check_int(self.persist, "HardeningConfig.persist", minimum=0)
        check_number(self.weight, "HardeningConfig.weight")
        self.weight = float(self.weight)
        self.ranks = _tuple(self.ranks, "ranks")
        for rank in self.ranks:
            check_int(rank, "HardeningConfig.ranks[...]")
        self.lrs = tuple(float(check_number(lr, "HardeningConfig.lrs[...]", maximum=1.0, what="in (0, 1]"))
                         for lr in _tuple(self.lrs, "lrs"))
        self.optimizers = _tuple(self.optimizers, "optimizers")
        self.fills = _tuple(self.fills, "fills")
        for name, values, known in (("optimizers", self.optimizers, OPTIMIZERS), ("fills", self.fills, FILLS)):
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ValueError(f"HardeningConfig.{name}: unknown {unknown}; choose among {list(known)}.")

    def sample(self, seed: int) -> RemovalAttack:
        """The simulated attacker of one forward, drawn from the settings with ``seed``."""
        rng = random.Random(seed)
        return RemovalAttack("simulated", rank=rng.choice(self.ranks), lr=rng.choice(self.lrs),
                             optimizer=rng.choice(self.optimizers), fill=rng.choice(self.fills))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardeningConfig:
        if not isinstance(data, dict):
            raise TypeError(f"HardeningConfig.from_dict expects a dict, got {type(data).__name__}.")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"Unknown HardeningConfig fields {unknown}; known: {[f.name for f in fields(cls)]}.")
        return cls(**data)
