"""Data-parallel training across processes (``torchrun`` / ``accelerate launch``): one process per device.

Every process builds the same trainer; ``TrainingConfig.batch_size`` stays the *global* batch. Each global batch (the
same shuffled order on every rank, a pure function of seed and epoch) is split into contiguous per-rank shards; each
rank weights its mean loss by its share of the batch and the patch gradients plus the loss terms are summed over
ranks with one all-reduce of a flat buffer, so every rank takes the same optimiser step as a single process on the
whole batch would. Only rank 0 writes checkpoints, patches and reports.

The all-reduce is done here rather than by wrapping the generator in ``DistributedDataParallel``: editors call
their generator directly, and the inner attack runs many forward/backward passes that must *not* synchronise
(input-only gradients); DDP's reducer expects every forward under grad mode to be followed by a parameter backward.
The patch is small (kilobytes to a few megabytes), so one flat all-reduce per optimiser step costs little.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """One rank's part of a global batch: dataset ``indices`` at ``positions`` in the batch; ``weight`` is its share
    of the batch (0 for a placeholder image on a rank the batch is too small to reach)."""

    indices: list[int]
    positions: list[int]
    batch_size: int
    weight: float


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process (``world_size == 1``: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Sequence[int]) -> Shard:
        """This rank's contiguous slice of ``batch`` (sizes differ by at most one). A rank left without images gets
        the batch's first image with weight 0, so every rank runs the same collective operations."""
        n = len(batch)
        if not self.enabled:
            return Shard(list(batch), list(range(n)), n, 1.0)
        start = self.rank * n // self.world_size
        stop = (self.rank + 1) * n // self.world_size
        if stop == start:
            return Shard([batch[0]], [0], n, 0.0)
        return Shard(list(batch[start:stop]), list(range(start, stop)), n, (stop - start) / n)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (no-op in a single process)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` to every rank (what DDP does with the parameters at start-up)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} must be an integer (set by torchrun).") from None


def distributed_context(device: torch.device) -> DistributedContext:
    """The context of this process: from an initialised default process group, or from torchrun's environment
    (``WORLD_SIZE`` > 1: the group is initialised here, NCCL for CUDA devices, gloo otherwise)."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support.")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set: launch with torchrun "
                               "(torchrun --nproc_per_node N script.py) or accelerate launch.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialised process group or of a torchrun launch."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def pack(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat fp32 buffer of ``tensors`` (None: zeros shaped like the matching entry of ``like``)."""
    parts = [(t if t is not None else torch.zeros_like(ref)).reshape(-1).float() for t, ref in zip(tensors, like)]
    return torch.cat(parts)


def unpack(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split :func:`pack`'s buffer back into tensors shaped and typed like ``like``."""
    out, offset = [], 0
    for ref in like:
        out.append(flat[offset : offset + ref.numel()].view(ref.shape).to(ref.dtype))
        offset += ref.numel()
    return out
