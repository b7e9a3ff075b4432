"""The inner maximisation of patch training, by strategy (``TrainingConfig.inner``).

* ``"pgd"`` (the paper): the trainer's attack, ``k`` signed-gradient steps from a seeded uniform start in the eps-ball
  (``inner_steps`` overrides ``k``), run against the current patched generator before every outer update.
  With ``inner_warm_start`` each training image's attack starts where its previous one ended (its last
  perturbation, kept in float16 on the CPU and saved with every checkpoint), instead of from a fresh random draw:
  accumulated perturbations (Zheng et al., "Efficient adversarial training with transferable adversarial
  examples", CVPR 2020). In the paper's one-epoch recipe an image comes back once per target condition.
* ``"fgsm_rs"`` (Wong, Rice & Kolter, "Fast is better than free", ICLR 2020): one signed step of 1.25 eps from a
  seeded uniform start, projected back into the eps-ball and [-1, 1]; the patch only provides the input gradient.
* ``"free"`` (Shafahi et al., "Adversarial training for free!", NeurIPS 2019): each batch is replayed ``replays``
  times; every replay is one outer update whose single backward pass also gives the input gradient, and the
  perturbation takes an eps-sized signed step along it for the next replay. The perturbation starts from a seeded
  uniform draw at every batch (it is not carried to the next batch, so checkpoints between batches stay exact), and
  the base generator's clean edit is computed once per batch and reused by the replays.

Costs per target condition and batch, counting a forward pass as F (input-only backward ~F, full backward ~2F): ``pgd``
~(2k + 8)F, ``fgsm_rs`` ~10F, ``free`` ~(6m + 1)F for m replays, i.e. m outer updates instead of one
(``benchmarks/bench_attack_compute.py`` measures them).
"""

from __future__ import annotations

import torch

from ..defenses.base import Defense, NoiseRows, project, seeded_uniform
from ..defenses.pgd import PGD
from .config import INNER_STRATEGIES

FGSM_RS_STEP = 1.25
"""FGSM-RS step size, in units of eps (Wong et al.)."""


class WarmStartPGD(PGD):
    """PGD whose first iterate can be given (``start_from``, set by the trainer for one call; otherwise PGD's seeded
    random start)."""

    start_from: torch.Tensor | None = None

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if self.start_from is None:
            return super()._start(x)
        return project(self.start_from.to(device=x.device, dtype=x.dtype), x, self.eps)


class WarmStarts:
    """The perturbation each training image's last inner attack ended at (float16, CPU), by dataset index."""

    def __init__(self) -> None:
        self.deltas: dict[int, torch.Tensor] = {}

    def start(self, x: torch.Tensor, images: list[int], eps: float, seed: int,
              noise_rows: NoiseRows | None) -> torch.Tensor:
        """First iterates [N, 3, H, W]: x + the stored perturbation, or PGD's seeded random start for new images."""
        fresh = seeded_uniform(x, eps, seed, noise_rows).to(device=x.device, dtype=x.dtype)
        stored = [self.deltas.get(i) for i in images]
        delta = torch.stack([fresh[row] if d is None else d.to(device=x.device, dtype=x.dtype)
                             for row, d in enumerate(stored)])
        return x + delta

    def keep(self, images: list[int], delta: torch.Tensor) -> None:
        for row, index in enumerate(images):
            self.deltas[index] = delta[row].detach().to("cpu", torch.float16)

    def state(self) -> dict[str, torch.Tensor]:
        """For a checkpoint: ``{"index": [M] int64, "delta": [M, 3, H, W] float16}`` (empty when nothing is kept)."""
        if not self.deltas:
            return {}
        order = sorted(self.deltas)
        return {"index": torch.tensor(order, dtype=torch.int64), "delta": torch.stack([self.deltas[i] for i in order])}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.deltas = {int(i): d.clone() for i, d in zip(state.get("index", []), state.get("delta", []))}


def inner_attack(strategy: str, attack: Defense, inner_steps: int | None, warm_start: bool = False) -> Defense:
    """The attack the trainer's inner maximisation runs for ``strategy`` (``"free"`` uses ``attack``'s eps only)."""
    if strategy not in INNER_STRATEGIES:
        raise ValueError(f"Unknown inner maximisation {strategy!r}; choose one of {', '.join(INNER_STRATEGIES)}.")
    if strategy == "pgd" and inner_steps is None and not warm_start:
        return attack
    eps = getattr(attack, "eps", None)
    if not isinstance(eps, float) or not hasattr(attack, "step_size"):
        raise ValueError(f"inner={strategy!r}{' with inner_steps / inner_warm_start' if strategy == 'pgd' else ''} "
                         "builds its own "
                         f"L-inf attack from the trainer's attack eps, but {type(attack).__name__} has no eps / "
                         "step_size: pass a PGD / IFGSM attack, or inner='pgd' without inner_steps.")
    seed = getattr(attack, "seed", 0)
    if strategy == "pgd":
        kind = WarmStartPGD if warm_start else PGD
        return kind(eps=eps, steps=inner_steps or attack.steps, step_size=attack.step_size, seed=seed,
                    eot=getattr(attack, "eot", None))  # an EOT attack keeps its transformations
    return PGD(eps=eps, steps=1, step_size=FGSM_RS_STEP * eps, seed=seed,
               eot=getattr(attack, "eot", None))  # fgsm_rs; free: eps only


class FreeReplays:
    """The perturbations of "free" adversarial training within one batch: one per (group, item) slot of the step,
    started from a seeded uniform draw, moved by ``eps * sign(grad)`` after each replay's backward pass."""

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self._delta: dict[tuple[int, int], torch.Tensor] = {}
        self._leaves: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._references: dict[tuple[int, int], torch.Tensor] = {}

    def start_batch(self) -> None:
        self._delta.clear()
        self._leaves.clear()
        self._references.clear()

    def reference(self, slot: tuple[int, int]) -> torch.Tensor | None:
        """The base generator's clean edit of this slot, computed by the batch's first replay (None before)."""
        return self._references.get(slot)

    def keep_reference(self, slot: tuple[int, int], reference: torch.Tensor) -> None:
        self._references[slot] = reference

    def protect(self, slot: tuple[int, int], x: torch.Tensor, seed: int, noise_rows: NoiseRows | None) -> torch.Tensor:
        """The protected images [N, 3, H, W] in [-1, 1] for this replay: a leaf that collects its input gradient."""
        delta = self._delta.get(slot)
        if delta is None:
            delta = seeded_uniform(x, self.eps, seed, noise_rows).to(device=x.device, dtype=x.dtype)
        protected = project(x + delta, x, self.eps).detach().requires_grad_(True)
        self._leaves[slot] = (x.detach(), protected)
        return protected

    def ascend(self) -> None:
        """After a replay's backward pass: step every perturbation along the sign of its input gradient."""
        for slot, (x, protected) in self._leaves.items():
            if protected.grad is not None:
                stepped = protected.detach() + self.eps * protected.grad.sign()
                self._delta[slot] = project(stepped, x, self.eps) - x
        self._leaves.clear()

