"""What the trainer loops over and returns: the training data as a map-style dataset, the shuffled batches of an
epoch (a pure function of the seed, so a resumed run sees the same), and :class:`TrainingResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
from torch.utils.data import Dataset, TensorDataset

from .seeding import derive_seed

TrainingData = Union[Dataset, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainingResult:
    """What :meth:`PatchTrainer.train` did: ``history`` holds one dict per step (loss terms, grad norm, seconds)."""

    steps: int
    epochs_completed: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")

    def grad_norm_stats(self) -> dict[str, float]:
        norms = [h["grad_norm"] for h in self.history]
        if not norms:
            return {}
        return {"max": max(norms), "mean": sum(norms) / len(norms), "last": norms[-1]}


def as_dataset(data: TrainingData) -> Dataset:
    """A map-style dataset of (image [3, H, W], labels [A]) from a Dataset or an (images, labels) tensor pair."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
        if images.dim() != 4 or labels.dim() != 2 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"Training data must be images [N, 3, H, W] and labels [N, A] with the same N, got "
                f"{tuple(images.shape)} and {tuple(labels.shape)}."
            )
        return TensorDataset(images, labels)
    raise TypeError(
        "Training data must be a torch Dataset of (image, labels) pairs (e.g. lora_patch_adapters.data.CelebA) or "
        f"an (images, labels) tuple of tensors, got {type(data).__name__}."
    )


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled index batches of one epoch, a pure function of (seed, epoch) so a resumed run sees the same."""
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
