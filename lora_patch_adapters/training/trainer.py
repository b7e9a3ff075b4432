"""``PatchTrainer``: the min-max loop shared by the bypass and the defensive (watermark) trainers.

For each batch of images x [N, 3, H, W] in [-1, 1] with source labels [N, A]:

1. targets: the frozen base generator's clean edit ``y_ref`` for every target condition (the patch is switched off
   with ``disable_adapter``, no copy of the generator is kept), turned into the training target by
   :meth:`PatchTrainer.make_target` (the bypass trainer keeps ``y_ref``; the watermark trainer stamps the warning);
2. inner maximisation: protected images from ``attack.protect`` run against the *current* patched generator
   (PGD eps 0.05, 10 x 0.01 by default; any :class:`~lora_patch_adapters.defenses.base.Defense` works), or a cheaper
   strategy chosen by ``TrainingConfig.inner`` (:mod:`.inner`: FGSM-RS, free replays, PGD warm starts);
3. outer minimisation: one Adam step on the patch parameters of
   ``loss(G_p(x), target) + loss(G_p(x_protected), target)``, ``loss`` an :class:`~lora_patch_adapters.losses.MMFALoss`.

Schedules: ``"batched"`` stacks all T target conditions of a batch into one forward (N x T images) and steps once;
``"per_condition"`` takes one optimiser step per condition (the paper's schedule). Hygiene: one seed for everything,
gradient norms logged, non-finite steps stopped before they apply, exactly resumable checkpoints (``checkpoint``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from typing import Any

import peft
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..defenses.base import Defense, inputs_already_checked
from ..defenses.checks import check_image_range
from ..defenses.pgd import PGD, PGD_EPS, PGD_STEP_SIZE, PGD_STEPS
from ..generators.base import Editor
from ..losses import MMFALoss
from ..tuner.config import LoraPatchConfig
from ..tuner.layer import GatedLoraLayer
from . import checkpoint as ckpt
from .batches import TrainingData, TrainingResult, as_dataset, epoch_batches
from .config import TrainingConfig
from .distributed import Shard, distributed_context, pack, unpack
from .inner import FreeReplays, WarmStarts, inner_attack
from .runtime import frozen, resolve_runtime
from .seeding import derive_seed, seed_everything, set_rng_state
from .step_records import NonFiniteLossError, Pending


def patch_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class PatchTrainer:
    """Trains a gated LoRA patch on ``editor.generator`` (see the module docstring).

    Args:
        editor: the editor whose generator is patched in place (``editor.edit`` runs the patched network).
        patch: a :class:`LoraPatchConfig` (default :attr:`default_patch_config`) to create the patch, or the
            ``peft.PeftModel`` that already wraps ``editor.generator``.
        attack: the inner maximisation, a :class:`~lora_patch_adapters.defenses.base.Defense`; default
            ``PGD(eps=0.05, steps=10, step_size=0.01)`` (the field's ``PGD_EPS``, ``PGD_STEPS``, ``PGD_STEP_SIZE``).
            It is copied and never modified: every call gets a seed derived from the run's seed
            (``protect(..., seed=)``).
        loss: an :class:`MMFALoss` (default :meth:`default_loss`).
        config: a :class:`TrainingConfig`.
        output_dir: where checkpoints go (``output_dir/checkpoints/step-N``); None keeps everything in memory.
        adapter_name: the PEFT adapter name.
    """

    kind = "patch"

    def __init__(
        self,
        editor: Editor,
        patch: LoraPatchConfig | peft.PeftModel | None = None,
        attack: Defense | None = None,
        loss: MMFALoss | None = None,
        config: TrainingConfig | None = None,
        output_dir: str | None = None,
        adapter_name: str = "default",
    ) -> None:
        if not isinstance(editor, Editor):
            raise TypeError(f"editor must be a lora_patch_adapters Editor (see load_editor / wrap), got "
                            f"{type(editor).__name__}.")
        self.config = config if config is not None else TrainingConfig()
        if not isinstance(self.config, TrainingConfig):
            raise TypeError(f"config must be a TrainingConfig, got {type(self.config).__name__}.")
        if self.config.hardening is not None and self.kind != "watermark":
            raise ValueError("TrainingConfig.hardening applies to defensive patches (WatermarkTrainer) only; a "
                             f"{type(self).__name__} has no warning to harden.")
        if attack is not None and not isinstance(attack, Defense):
            raise TypeError(f"attack must be a lora_patch_adapters.defenses Defense, got {type(attack).__name__}.")
        self.dist = distributed_context(editor.device)
        if self.dist.enabled and editor.device.type == "cuda":  # one device per process
            torch.cuda.set_device(self.dist.local_rank)
            editor.to(f"cuda:{self.dist.local_rank}")
        seed_everything(self.config.seed)  # before the patch is created: its initialisation draws from torch's RNG
        self.editor = editor
        self.adapter_name = adapter_name
        self.model = self._attach(editor, patch, adapter_name)
        self.runtime = resolve_runtime(self.config, editor.device)
        self.attack = inner_attack(self.config.inner, copy.deepcopy(attack) if attack is not None else
                                   PGD(eps=PGD_EPS, steps=PGD_STEPS, step_size=PGD_STEP_SIZE), self.config.inner_steps,
                                   self.config.inner_warm_start)
        self._free = FreeReplays(self.attack.eps) if self.config.inner == "free" else None
        self._warm = WarmStarts() if self.config.inner_warm_start else None
        self._row_images: list[int] | None = None  # dataset index of each row being attacked (warm starts)
        self.loss = (loss if loss is not None else self.default_loss()).to(editor.device)
        self.parameters = patch_parameters(self.model)
        if not self.parameters:
            raise ValueError("The patch has no trainable parameters (was it loaded without is_trainable=True?).")
        self.dist.broadcast_(self.parameters)  # every rank starts from rank 0's patch
        if self.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.runtime.compile_mode is not None:
            editor.generator.compile(mode=self.runtime.compile_mode)
        # the fast path's fused Adam can skip a step on the device (found_inf) instead of checking on the host
        self.optimizer = torch.optim.Adam(self.parameters, lr=self.config.lr, betas=self.config.betas,
                                          **({"fused": True} if self.runtime.fast else {}))
        self._slot = (0, 0)  # the (group, item) of the forward being computed: keys "free" perturbations
        self._skip: torch.Tensor | None = None  # fast path: sticky "a step was non-finite" flag on the device
        self._reference_cache: dict[tuple, torch.Tensor] = {}
        self.condition_slots: list[int] | None = None  # the target condition of each row of the current forward
        self.output_dir = output_dir
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, float]] = []
        self.checkpoints: list[str] = []
        self.total_steps: int | None = None  # set by train(); drives the learning-rate schedule
        self.run_description: dict[str, Any] | None = None  # set by train(): checkpoints record it, resumes compare

    # ---------------------------------------------------------------------------------------------------- hooks
    def default_patch_config(self) -> LoraPatchConfig:
        return LoraPatchConfig.from_preset("paper")

    def default_loss(self) -> MMFALoss:
        return MMFALoss()

    def make_target(self, reference: torch.Tensor) -> torch.Tensor:
        """The output the patched generator should produce, from the base generator's clean edit [M, 3, H, W]."""
        return reference

    def target_settings(self) -> dict[str, Any] | None:
        """What :meth:`make_target` depends on besides the base generator (None: nothing); resumes compare it."""
        return None

    # ---------------------------------------------------------------------------------------------------- setup
    def _attach(self, editor: Editor, patch: Any, adapter_name: str) -> peft.PeftModel:
        if isinstance(patch, peft.PeftModel):
            inner = patch.get_base_model()
            if patch is not editor.generator and inner is not editor.generator:
                raise ValueError("The PeftModel given as `patch` does not wrap editor.generator.")
            if adapter_name not in patch.peft_config:
                raise ValueError(f"The PeftModel has no adapter {adapter_name!r} (it has {list(patch.peft_config)}).")
            patch.set_adapter(adapter_name)  # also makes that adapter's parameters trainable
            return patch
        if any(isinstance(m, GatedLoraLayer) for m in editor.generator.modules()):
            raise ValueError(
                "editor.generator already carries a lora-patch: pass the PeftModel returned by get_peft_model / "
                "PeftModel.from_pretrained(..., is_trainable=True) as `patch=`."
            )
        config = patch if patch is not None else self.default_patch_config()
        if not isinstance(config, LoraPatchConfig):
            raise TypeError(f"patch must be a LoraPatchConfig or a peft.PeftModel, got {type(config).__name__}.")
        return peft.get_peft_model(editor.generator, config, adapter_name=adapter_name)

    # -------------------------------------------------------------------------------------------------- the step
    def _conditions(self, labels: torch.Tensor) -> list[Any]:
        """Target conditions built from CPU labels (their validation reads values) and moved to the device."""
        return self.runtime.to_device(self.editor.conditions(labels.cpu()))

    def _condition_groups(self, x: torch.Tensor, labels: torch.Tensor) -> list[list[tuple[torch.Tensor, Any]]]:
        """Optimiser steps for one batch, each a list of (images, condition) forwards whose mean loss it takes."""
        conditions = self._conditions(labels)
        if self.config.schedule == "per_condition":
            return [[(x, c)] for c in conditions]
        stacked = self.editor.concat_conditions(conditions)
        if stacked is None:  # condition objects that cannot be stacked (HiSD): same maths, one forward each
            return [[(x, c) for c in conditions]]
        return [[(x.repeat(len(conditions), 1, 1, 1), stacked)]]

    def _row_layout(self, group: int, item: int, rows: int, images: int) -> list[tuple[int, int]]:
        """(condition slot, image position) of every row of the forward ``item`` of optimiser step ``group``."""
        if rows > images:  # all conditions stacked, condition by condition
            return [(r // images, r % images) for r in range(rows)]
        slot = group if self.config.schedule == "per_condition" else item
        return [(slot, r) for r in range(rows)]

    def _edit_pair(self, x: torch.Tensor, x_protected: torch.Tensor, condition: Any) -> tuple[torch.Tensor, ...]:
        """Patched outputs on the clean and the protected images, in one forward when the condition stacks."""
        both = self.editor.concat_conditions([condition, condition])
        if both is None:
            return self.editor.edit(x, condition), self.editor.edit(x_protected, condition)
        out = self.editor.edit(torch.cat([x, x_protected]), both)
        return out[: x.shape[0]], out[x.shape[0] :]

    def protect(self, x: torch.Tensor, condition: Any, seed: int = 0,
                noise_rows: tuple[list[int], int] | None = None) -> torch.Tensor:
        """The inner maximisation: ``attack`` run against the *current* patched generator, with this call's ``seed``
        for its random start and ``noise_rows`` placing ``x`` in a larger batch (both passed to
        :meth:`~lora_patch_adapters.defenses.base.Defense.protect`; the attack object is never modified). On the
        fast path the patch is frozen meanwhile (input-only gradients; one composed kernel per layer). With
        ``inner="free"`` the perturbation of this replay (see :mod:`.inner`), a leaf collecting its input gradient."""
        if self._free is not None:
            return self._free.protect(self._slot, x, seed, noise_rows)
        warm = self._warm is not None and self._row_images is not None
        if warm:
            self.attack.start_from = self._warm.start(x, self._row_images, self.attack.eps, seed, noise_rows)
        try:
            if not self.runtime.fast:
                protected = self.attack.protect(x, self.editor, condition, seed=seed, noise_rows=noise_rows)
            else:
                with frozen(self.parameters), inputs_already_checked():
                    protected = self.attack.protect(x, self.editor, condition, seed=seed, noise_rows=noise_rows)
        finally:
            if warm:
                self.attack.start_from = None
        if warm:
            self._warm.keep(self._row_images, protected - x)
        return protected

    def _reference(self, x: torch.Tensor, condition: Any, cache_keys: list[tuple] | None) -> torch.Tensor:
        """The frozen base generator's clean edit, from the cross-epoch cache when every row is in it ("free": computed
        once per batch and slot, then reused by the replays)."""
        if self._free is not None and self._free.reference(self._slot) is not None:
            return self._free.reference(self._slot)
        if cache_keys is not None and all(k in self._reference_cache for k in cache_keys):
            return torch.stack([self._reference_cache[k] for k in cache_keys])
        with torch.no_grad(), self.model.disable_adapter():
            reference = self.editor.edit(x, condition)
        if cache_keys is not None:
            for key, row in zip(cache_keys, reference):
                self._reference_cache[key] = row.clone()
        if self._free is not None:
            self._free.keep_reference(self._slot, reference)
        return reference

    def compute_loss(self, x: torch.Tensor, condition: Any, attack_seed: int = 0,
                     noise_rows: tuple[list[int], int] | None = None,
                     cache_keys: list[tuple] | None = None) -> tuple[torch.Tensor, dict]:
        """The outer loss for images ``x`` under ``condition`` and its (detached) terms, with the inner attack."""
        with self.runtime.autocast():
            reference = self._reference(x, condition, cache_keys)
            target = self.make_target(reference)
            x_protected = self.protect(x, condition, attack_seed, noise_rows)
            out_clean, out_protected = self._edit_pair(x, x_protected, condition)
            target_features = self.loss.encode_targets(target)
            loss_clean, terms_clean = self.loss(out_clean, target, target_features)
            loss_protected, terms_protected = self.loss(out_protected, target, target_features)
        terms = {f"{k}_clean": v for k, v in terms_clean.items()}
        terms.update({f"{k}_protected": v for k, v in terms_protected.items()})
        loss = loss_clean + loss_protected
        extra = self.extra_loss(x, condition, target, attack_seed)
        if extra is not None:
            loss = loss + extra[0]
            terms.update(extra[1])
        return loss, terms

    def extra_loss(self, x: torch.Tensor, condition: Any, target: torch.Tensor,
                   attack_seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """A term a subclass adds to :meth:`compute_loss` (its weighted value, its detached terms), given the images,
        the condition, the training target and this forward's attack seed; None (the default): nothing."""
        return None

    def _backward_lean(self, x: torch.Tensor, condition: Any, attack_seed: int,
                       noise_rows: tuple[list[int], int] | None, cache_keys: list[tuple] | None,
                       scale: float) -> tuple[torch.Tensor, dict]:
        """The fast path's :meth:`compute_loss` + backward of ``scale * loss``: the clean and the protected halves
        are back-propagated one after the other (same gradient), so at most one half's activations are alive."""
        with self.runtime.autocast():
            reference = self._reference(x, condition, cache_keys)
            target = self.make_target(reference)
            x_protected = self.protect(x, condition, attack_seed, noise_rows)
            target_features = self.loss.encode_targets(target)
        total, terms = 0.0, {}
        for suffix, images in (("clean", x), ("protected", x_protected)):
            with self.runtime.autocast():
                loss, half = self.loss(self.editor.edit(images, condition), target, target_features)
            (loss * scale).backward()
            total = total + loss.detach() * scale
            terms.update({f"{k}_{suffix}": v for k, v in half.items()})
        return total, terms

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One batch (one or, per condition, several optimiser steps); returns the step's record."""
        self._check_batch(x)
        pending = self._step(x, labels)
        if isinstance(pending, Pending):
            return self._read_back([pending])[-1]
        return pending

    def _check_batch(self, x: torch.Tensor) -> None:
        """The fast path's input check, on the CPU copy (the attack skips its own: on a GPU it would stall the queue;
        off the fast path the attack checks)."""
        if self.runtime.fast and x.device.type == "cpu":
            check_image_range(x, "training images")

    def _step(self, x: torch.Tensor, labels: torch.Tensor, shard: Shard | None = None) -> dict[str, float] | Pending:
        """Run one batch. Off the fast path: checks and records on the host (a float record, appended to the
        history). On the fast path: no host synchronisation; returns a :class:`Pending` for :meth:`_read_back`."""
        start = time.perf_counter()
        fast = self.runtime.fast
        x = self.runtime.to_device(x)
        groups = self._condition_groups(x, labels)
        weight = shard.weight if shard is not None and self.dist.enabled else None
        position = (self.step, self.epoch, self.batch_in_epoch)
        lr = self.config.lr_at(self.step, self.total_steps or self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals: dict[str, Any] = {}
        norms: list[Any] = []
        flags: list[torch.Tensor] = []
        replays = self.config.replays if self._free is not None else 1  # "free": each group replayed
        if self._free is not None:
            self._free.start_batch()
        for g, replay, group in ((g, r, group) for g, group in enumerate(groups) for r in range(replays)):
            applied = g * replays + replay
            self.optimizer.zero_grad(set_to_none=True)
            group_terms: dict[str, torch.Tensor] = {}
            for k, (images, condition) in enumerate(group):
                noise_rows, cache_keys = self._rows(g, k, images.shape[0], x.shape[0], shard)
                seed = derive_seed(self.config.seed, self.step, g, k)
                self._slot = (g, k)
                self.condition_slots = [slot for slot, _ in self._row_layout(g, k, images.shape[0], x.shape[0])]
                self._row_images = None if shard is None else [
                    shard.indices[p] for _, p in self._row_layout(g, k, images.shape[0], x.shape[0])]
                def scaled(value: torch.Tensor) -> torch.Tensor:  # this forward's share of the step's mean loss
                    return value / len(group) if weight is None else value * (weight / len(group))

                if fast:
                    scale = 1 / len(group) if weight is None else weight / len(group)
                    loss, terms = self._backward_lean(images, condition, seed, noise_rows, cache_keys, scale)
                else:
                    loss, terms = self.compute_loss(images, condition, seed, noise_rows, cache_keys)
                    loss = scaled(loss)
                    if not self.dist.enabled:
                        self._check_finite("loss", loss, terms, applied=applied)
                    loss.backward()
                for name, value in {"loss": loss.detach(), **{n: scaled(v.detach()) for n, v in terms.items()}}.items():
                    group_terms[name] = group_terms[name] + value if name in group_terms else value
            if self.dist.enabled:
                group_terms = self._all_reduce(group_terms)
                if not fast:
                    self._check_finite("loss", group_terms["loss"], group_terms, applied=applied)
            max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)
            if fast:  # skip the update on the device (fused Adam's found_inf); reported by _read_back
                bad = ~(torch.isfinite(group_terms["loss"]) & torch.isfinite(norm))
                self._skip = bad if self._skip is None else self._skip | bad
                self.optimizer.found_inf = self._skip.float()
                flags.append(bad)
                norms.append(norm.detach())
            else:
                self._check_finite("gradient norm", norm, {}, applied=applied)
                norms.append(float(norm))
            self.optimizer.step()
            if self._free is not None:
                self._free.ascend()
            for name, value in group_terms.items():
                value = value if fast else float(value)
                totals[name] = totals.get(name, 0.0) + value / (len(groups) * replays)
        self.step += 1
        if fast:
            return Pending(position, lr, start, totals, torch.stack(norms).max(), torch.stack(flags))
        record = {"step": self.step, "epoch": self.epoch, **totals, "grad_norm": max(norms), "lr": lr,
                  "seconds": time.perf_counter() - start}
        self.history.append(record)
        return record

    def _rows(self, group: int, item: int, rows: int, images: int,
              shard: Shard | None) -> tuple[tuple[list[int], int] | None, list[tuple] | None]:
        """Noise rows in the global batch (data-parallel runs) and reference-cache keys of one forward."""
        if shard is None:
            return None, None
        layout = self._row_layout(group, item, rows, images)
        noise_rows = None
        if self.dist.enabled:
            stacked = rows > images
            per_row = [slot * shard.batch_size + shard.positions[p] if stacked else shard.positions[p]
                       for slot, p in layout]
            noise_rows = (per_row, shard.batch_size * (rows // images) if stacked else shard.batch_size)
        keys = [(shard.indices[p], slot) for slot, p in layout] if self.config.cache_references else None
        return noise_rows, keys

    def _all_reduce(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum the patch gradients and the (share-weighted) loss terms over ranks in one collective."""
        names = sorted(terms)
        grads = [p.grad for p in self.parameters]
        values = [terms[n].float().reshape(()) for n in names]
        flat = self.dist.all_reduce_sum(pack(grads + values, list(self.parameters) + values))
        unpacked = unpack(flat, list(self.parameters) + values)
        for p, grad in zip(self.parameters, unpacked):
            p.grad = grad
        return dict(zip(names, unpacked[len(self.parameters) :]))

    def _read_back(self, pending: list[Pending]) -> list[dict[str, float]]:
        """Copy fast-path records to the host in one transfer, append them to the history, and stop at the first
        non-finite step (it and every later one were skipped on the device, so the patch is the last good one)."""
        if not pending:
            return []
        names = sorted(pending[0].terms)
        flat = torch.cat([torch.cat([torch.stack([*(p.terms[n].float().reshape(()) for n in names),
                                                  p.grad_norm.float().reshape(())]),
                                     p.flags.float().reshape(-1)])
                          for p in pending]).tolist()  # the one host synchronisation
        elapsed = (time.perf_counter() - pending[0].start) / len(pending)
        records, offset = [], 0
        for p in pending:
            values = flat[offset : offset + len(names) + 1]
            bad_groups = flat[offset + len(names) + 1 : offset + len(names) + 1 + p.flags.numel()]
            offset += len(names) + 1 + p.flags.numel()
            if any(bad_groups):
                self._skip = None
                self.optimizer.found_inf = None
                self.step, self.epoch, self.batch_in_epoch = p.position
                terms = dict(zip(names, values))
                bad = [n for n, v in terms.items() if not math.isfinite(v)]
                what = "loss" if not math.isfinite(terms.get("loss", 0.0)) else "gradient norm"
                value = terms.get("loss") if what == "loss" else values[-1]
                self._raise_non_finite(what, value, bad, applied=bad_groups.index(1.0))
            step, epoch, _ = p.position
            record = {"step": step + 1, "epoch": epoch, **dict(zip(names, values[:-1])), "grad_norm": values[-1],
                      "lr": p.lr, "seconds": elapsed}
            self.history.append(record)
            records.append(record)
        return records

    def _check_finite(self, what: str, value: torch.Tensor, terms: dict, applied: int = 0) -> None:
        """Stop on NaN/Inf. ``applied``: optimiser steps of this batch already taken (per-condition schedule)."""
        if torch.isfinite(value).all():
            return
        bad = [n for n, v in terms.items() if not torch.isfinite(v).all()]
        self._raise_non_finite(what, float(value.detach()), bad, applied)

    def _raise_non_finite(self, what: str, value: float, bad: list[str], applied: int) -> None:
        if applied:  # the patch in memory is part-way through this batch: it is not a resumable state
            where = self.checkpoints[-1] if self.checkpoints else None
            state = (f"the optimiser had already applied {applied} of this batch's per-condition steps, so the patch "
                     "in memory is part-way through it")
        else:
            where = self._save_good_checkpoint()
            state = f"training stopped before the optimiser applied it, so the patch is still the one after step " \
                    f"{self.step}"
        raise NonFiniteLossError(
            f"The {what} became {value} at step {self.step + 1} (epoch {self.epoch}, batch "
            f"{self.batch_in_epoch})" + (f" in the terms {bad}" if bad else "") + f"; {state}. "
            + (f"Last good checkpoint: {where}. " if where else "No checkpoint was written (set output_dir). ")
            + "Lower the learning rate or enable gradient clipping (grad_clip / --grad-clip)."
        )

    def _save_good_checkpoint(self) -> str | None:
        if self.output_dir is None:
            return None
        if self.checkpoints and self.checkpoints[-1] == ckpt.checkpoint_dir(self.output_dir, self.step):
            return self.checkpoints[-1]
        if self.step == 0:
            return None
        return self.save_checkpoint()

    # ------------------------------------------------------------------------------------------------ checkpoints
    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "kind": self.kind,
                "config": self.config.to_dict(), "history": self.history, "run": self.run_description}

    def inner_state(self) -> dict[str, torch.Tensor] | None:
        """Tensors a checkpoint keeps beside the patch for an exact resume (the inner attack's warm starts), or None."""
        return self._warm.state() if self._warm is not None else None

    def save_checkpoint(self) -> str:
        if self.output_dir is None:
            raise ValueError("save_checkpoint needs the trainer's output_dir.")
        if not self.dist.is_main:  # only rank 0 writes; every rank holds the same patch and optimiser state
            path = ckpt.checkpoint_dir(self.output_dir, self.step)
            self.checkpoints = [p for p in self.checkpoints if p != path] + [path]
            self.checkpoints = self.checkpoints[-self.config.keep_checkpoints :]
            return path
        path = ckpt.save_checkpoint(self.output_dir, self.model, self.adapter_name, self.optimizer,
                                    self.trainer_state(), self.config.keep_checkpoints, inner=self.inner_state())
        self.checkpoints = [p for p in self.checkpoints if os.path.isdir(p)] + [path]
        return path

    def _read_checkpoint(self, path: str, force: bool | None) -> dict[str, Any]:
        """A checkpoint read and checked (:func:`checkpoint.load_checkpoint`, :func:`checkpoint.check_compatible`)."""
        data = ckpt.load_checkpoint(path)
        ckpt.check_compatible(data, path, self.kind, self.run_description,
                              self.config.force_resume if force is None else force, self.model, self.adapter_name,
                              self.optimizer)
        return data

    def load_checkpoint(self, path: str, force_resume: bool | None = None) -> None:
        """Restore patch weights, optimiser, RNG and loop position from a checkpoint directory, after checking it
        (intact files, finite weights, this trainer's run configuration unless ``force_resume``, this patch's
        shapes); every problem is one :class:`~lora_patch_adapters.training.checkpoint.CheckpointError`."""
        self._restore(self._read_checkpoint(path, force_resume))

    def _restore(self, data: dict[str, Any]) -> None:
        state = data["state"]
        peft.set_peft_model_state_dict(self.model, data["adapter_weights"], adapter_name=self.adapter_name)
        self.optimizer.load_state_dict(data["optimizer"])
        set_rng_state(data["rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.history = list(state.get("history", []))
        if self._warm is not None:
            self._warm.load(data.get("inner") or {})

    # ------------------------------------------------------------------------------------------------------ loop
    def train(self, data: TrainingData, resume_from: str | None = None, num_workers: int = 0,
              force_resume: bool | None = None) -> TrainingResult:
        """Train on ``data`` for ``config.epochs`` (or ``config.max_steps`` batches).

        ``resume_from``: a checkpoint directory, or ``"latest"`` for the newest intact one under ``output_dir``
        (damaged or non-finite newer ones are skipped with a warning). The checkpoint's run configuration (patch,
        schedule, batch size, seed, learning rate, attack, loss, data) must equal this one unless ``force_resume``
        (default: ``config.force_resume``).
        """
        dataset = as_dataset(data)
        n = len(dataset)
        if n == 0:
            raise ValueError("The training data is empty.")
        self.run_description = ckpt.describe_run(self.kind, self.model, self.adapter_name, self.config, self.attack,
                                                 self.loss, ckpt.describe_data(dataset), self.target_settings())
        if resume_from is not None:
            self._restore(ckpt.resume_point(resume_from, self.output_dir,
                                            lambda path: self._read_checkpoint(path, force_resume))[1])
        per_epoch = math.ceil(n / self.config.batch_size)
        total = per_epoch * self.config.epochs
        if self.config.max_steps is not None:
            total = min(total, self.config.max_steps)
        self.total_steps = total
        start = time.perf_counter()
        bar = tqdm(total=total, initial=min(self.step, total), disable=not (self.config.progress and self.dist.is_main),
                   desc=f"training {self.kind} patch", unit="step", dynamic_ncols=True)
        pending: list[Pending] = []

        def read_back() -> None:
            records = self._read_back(pending)
            pending.clear()
            if records:
                bar.set_postfix({k: f"{v:.4f}" for k, v in records[-1].items() if _is_term(k)}, refresh=False)

        pin = self.runtime.fast and self.runtime.device.type == "cuda"
        try:
            while self.step < total:
                batches = epoch_batches(n, self.config.batch_size, self.config.seed, self.epoch)
                shards = [self.dist.shard(batch) for batch in batches[self.batch_in_epoch :]]
                loader = DataLoader(dataset, batch_sampler=[s.indices for s in shards], num_workers=num_workers,
                                    pin_memory=pin)
                for shard, (x, labels) in zip(shards, loader):
                    if self.step >= total:
                        break
                    self._check_batch(x)
                    record = self._step(x, labels, shard)
                    self.batch_in_epoch += 1
                    bar.update(1)
                    if isinstance(record, Pending):
                        pending.append(record)
                        if self.step % self.config.log_every == 0 or self.step == total:
                            read_back()
                    elif self.step % self.config.log_every == 0 or self.step == total:
                        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if _is_term(k)}, refresh=False)
                    if (self.output_dir is not None and self.config.checkpoint_every is not None
                            and self.step % self.config.checkpoint_every == 0):
                        read_back()  # a checkpoint holds only verified steps
                        self.save_checkpoint()
                if self.batch_in_epoch >= len(batches):
                    self.epoch += 1
                    self.batch_in_epoch = 0
            read_back()
        finally:
            bar.close()
        if self.output_dir is not None and self.config.checkpoint_every is not None:
            self._save_good_checkpoint()
        return TrainingResult(steps=self.step, epochs_completed=self.epoch, seconds=time.perf_counter() - start,
                              history=list(self.history), checkpoints=list(self.checkpoints))

    def training_record(self, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """What :func:`lora_patch_adapters.save_patch` records as a patch's ``training`` provenance: kind, steps,
        epochs completed, config, runtime, inner attack, loss, then ``metadata`` (JSON-serialisable; other values are
        written as their ``str``)."""
        record = {"kind": self.kind, "steps": self.step, "epochs_completed": self.epoch,
                  "config": self.config.to_dict(), "runtime": {**self.runtime.describe(),
                                                               "processes": self.dist.world_size},
                  "attack": repr(self.attack),
                  "loss": self.loss.describe() if hasattr(self.loss, "describe") else repr(self.loss),
                  **(metadata or {})}
        return json.loads(json.dumps(record, default=str))


def _is_term(name: str) -> bool:
    return name not in ("step", "epoch", "seconds", "lr")

