"""The simulated removal attack of a hardened defensive patch (see :mod:`.hardening` for the recipe): a fresh
attacker adapter beside the defensive one, ``steps`` removal steps on it, the loss of the edit after them."""

from __future__ import annotations

from typing import Any

import torch

from ..removal.attack import make_optimizer
from ..removal.targets import inpaint_target
from ..tuner.config import LoraPatchConfig
from ..tuner.layer import GatedLoraLayer, kaiming_uniform_bound
from .hardening import HardeningConfig
from .runtime import frozen

SIMULATED_ADAPTER = "hardening_simulated_removal"
"""The name of the simulated attacker's adapter while it exists."""


def patch_layers(model: torch.nn.Module) -> list[GatedLoraLayer]:
    return [m for m in model.modules() if isinstance(m, GatedLoraLayer)]


def attach_simulated(layers: list[GatedLoraLayer], adapter_name: str, rank: int, generator: torch.Generator,
                     values: list[torch.Tensor] | None = None) -> list[torch.nn.Parameter]:
    """Add an adapter :data:`SIMULATED_ADAPTER` of ``rank`` to every layer, active beside ``adapter_name``: fresh (A
    Kaiming-uniform drawn from ``generator`` in layer order, B zero) or holding ``values`` (a list of parameters
    returned by an earlier call). Returns its parameters (per layer: A, B, the gate's)."""
    config = LoraPatchConfig(r=rank, init_weights="zero")
    parameters = []
    for layer in layers:
        with torch.random.fork_rng(devices=[]):  # update_layer's own draw must not move the global stream
            layer.update_layer(SIMULATED_ADAPTER, config)
        a = layer.lora_patch_A[SIMULATED_ADAPTER].weight
        bound = kaiming_uniform_bound(layer._a_fan_in())
        with torch.no_grad():
            a.copy_((torch.rand(a.shape, generator=generator) * 2 - 1).mul_(bound).to(a))
        layer.set_adapter([adapter_name, SIMULATED_ADAPTER])
        parameters += list(layer.lora_patch_A[SIMULATED_ADAPTER].parameters())
        parameters += list(layer.lora_patch_B[SIMULATED_ADAPTER].parameters())
        parameters += list(layer.lora_patch_gate[SIMULATED_ADAPTER].parameters())
    if values is not None:
        with torch.no_grad():
            for parameter, value in zip(parameters, values, strict=True):
                parameter.copy_(value)
    return parameters


def detach_simulated(layers: list[GatedLoraLayer], adapter_name: str) -> None:
    """Remove :data:`SIMULATED_ADAPTER` from every layer; ``adapter_name`` is the active adapter again."""
    for layer in layers:
        if SIMULATED_ADAPTER in layer.lora_patch_A:
            layer.delete_adapter(SIMULATED_ADAPTER)
        layer.set_adapter(adapter_name)


class Hardener:
    """Runs the simulated removal of one training forward (see the module docstring) for a
    :class:`~lora_patch_adapters.training.defensive.WatermarkTrainer`. With ``config.persist`` the attacker of one
    forward carries on in the next ones (its settings, its weights) for ``persist`` forwards before a fresh one is
    drawn; :meth:`state` / :meth:`load` carry it through checkpoints."""

    def __init__(self, config: HardeningConfig) -> None:
        if not isinstance(config, HardeningConfig):
            raise TypeError(f"hardening must be a HardeningConfig, got {type(config).__name__}.")
        self.config = config
        self.episode: dict[str, Any] | None = None  # the persistent attacker: {"seed", "age", "weights"}

    def _attacker(self, seed: int) -> tuple[int, list[torch.Tensor] | None]:
        """(the seed the attacker's settings and initialisation come from, its carried-over weights or None)."""
        episode = self.episode
        if self.config.persist and episode is not None and episode["age"] < self.config.persist:
            return episode["seed"], episode["weights"]
        self.episode = {"seed": seed, "age": 0, "weights": None} if self.config.persist else None
        return seed, None

    def simulate(self, trainer: Any, layers: list[GatedLoraLayer], x: torch.Tensor, condition: Any,
                 mask: torch.Tensor, seed: int) -> list[torch.nn.Parameter]:
        """Attach the attacker's adapter to ``layers`` and take ``config.steps`` removal steps on it (the defensive
        patch frozen); returns the attacker's parameters, now frozen, still attached."""
        editor = trainer.editor
        with torch.no_grad():  # the defended edit, before the attacker's adapter is attached
            defended = editor.edit(x, condition)
        origin, values = self._attacker(seed)
        setting = self.config.sample(origin)
        target = inpaint_target(defended, x, mask, setting.fill)
        phi = attach_simulated(layers, trainer.adapter_name, setting.rank, torch.Generator().manual_seed(origin),
                               values)
        optimizer = make_optimizer(setting.optimizer, phi, setting.lr)
        with frozen(trainer.parameters):
            for _ in range(self.config.steps):
                loss = (editor.edit(x, condition) - target).square().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        for p in phi:
            p.requires_grad_(False)
        if self.episode is not None:
            self.episode.update(age=self.episode["age"] + 1, weights=[p.detach().clone() for p in phi])
        return phi

    def after_attack_loss(self, trainer: Any, x: torch.Tensor, condition: Any, target: torch.Tensor,
                          seed: int) -> torch.Tensor:
        """The squared error between the edit after the simulated removal and the warning ``target`` inside the
        attacker's mask, averaged over every pixel (the per-pixel weight of the defensive loss's MSE; the rest of the
        edit is that loss's concern); gradient to the defensive patch only. The simulated adapter is gone when this
        returns."""
        mask = trainer.watermark.rows(x.shape[2], x.shape[3], trainer.row_slots(x.shape[0]), "footprint",
                                      self.config.margin, x.device, x.dtype)
        layers = patch_layers(trainer.model)
        try:
            self.simulate(trainer, layers, x, condition, mask, seed)
            squared = (trainer.editor.edit(x, condition) - target).square() * mask
            return squared.sum() / squared.numel()
        finally:
            detach_simulated(layers, trainer.adapter_name)

    def state(self) -> dict[str, torch.Tensor]:
        """For a checkpoint: the persistent attacker as tensors (``hardening.*`` keys; empty when there is none)."""
        if self.episode is None or self.episode["weights"] is None:
            return {}
        state = {"hardening.seed": torch.tensor(self.episode["seed"], dtype=torch.int64),
                 "hardening.age": torch.tensor(self.episode["age"], dtype=torch.int64)}
        state.update({f"hardening.weight.{i}": w.cpu() for i, w in enumerate(self.episode["weights"])})
        return state

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state` (a state without ``hardening.*`` keys: no persistent attacker yet)."""
        if "hardening.seed" not in state:
            self.episode = None
            return
        count = sum(1 for k in state if k.startswith("hardening.weight."))
        self.episode = {"seed": int(state["hardening.seed"]), "age": int(state["hardening.age"]),
                        "weights": [state[f"hardening.weight.{i}"] for i in range(count)]}
