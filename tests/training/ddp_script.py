"""Trains a tiny patch, in the calling process or as one rank of a ``torchrun`` launch (tests/training/
test_distributed.py runs it both ways and compares). Usage under torchrun: ``ddp_script.py OUT_DIR``."""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import PatternAttack, tiny_data, tiny_editor

from lora_patch_adapters import save_patch
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.patches import save as patch_save
from lora_patch_adapters.training import BypassTrainer, TrainingConfig
from lora_patch_adapters.training import checkpoint as ckpt

# (name, schedule, fast): 7 images in global batches of 3 -> 3, 3, 1 (the last leaves one of two ranks empty).
# The per-condition run uses a deterministic attack: PGD's sign() turns rounding differences of near-zero input
# gradients (a batch of 1-2 images vs 3 runs different kernels) into step-sized pixel changes, which the five Adam
# steps per batch then carry on; the batched runs keep PGD and show its random starts match across ranks.
RUNS = (("batched", "batched", False), ("per_condition", "per_condition", False), ("fast", "batched", True))


def train(schedule: str, fast: bool, out_dir: str | None = None) -> BypassTrainer:
    config = TrainingConfig(batch_size=3, epochs=1, seed=5, lr=1e-3, schedule=schedule, fast=fast,
                            channels_last=False, progress=False, checkpoint_every=2 if out_dir else None)
    attack = PatternAttack() if schedule == "per_condition" else PGD(steps=2, seed=0)
    trainer = BypassTrainer(tiny_editor(), loss=MMFALoss.pixel_only(), attack=attack, config=config,
                            output_dir=out_dir)
    trainer.train(tiny_data(7))
    if out_dir is not None:
        save_patch(trainer, os.path.join(out_dir, "patch"))
    return trainer


def main(out: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    writes: list[str] = []

    def recording(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            writes.append(name)
            return original(*args, **kwargs)

        setattr(module, name, wrapper)

    recording(ckpt, "save_checkpoint")
    recording(patch_save, "save_patch")
    for name, schedule, fast in RUNS:
        writes.clear()
        trainer = train(schedule, fast, os.path.join(out, name))
        record = {"history": trainer.history, "writes": list(writes), "world_size": trainer.dist.world_size,
                  "patch": {n: p.detach().flatten().tolist()[:50] for n, p in trainer.model.named_parameters()
                            if p.requires_grad}}
        with open(os.path.join(out, f"{name}-rank{rank}.json"), "w") as f:
            json.dump(record, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
