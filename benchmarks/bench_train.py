"""Seconds per training batch: the reference-style loop vs the package's fast path, side by side in one process.

Both train a paper patch (rank 8, basic gate) on the same StarGAN-sized generator (random weights) with the same
random batches: inner PGD (eps 0.05, steps x 0.01) against the current patched model, pixel loss on clean and
protected outputs toward the base clean edit, every target condition of every batch. The reference-style loop
(benchmarks/reference_loop.py) loops over conditions in Python in fp32 with an unmerged two-branch patch and one Adam
step per condition; the fast path is :class:`lora_patch_adapters.training.PatchTrainer` with ``fast=True`` (all
conditions in one forward, bf16 autocast on CUDA, channels_last, no host syncs, frozen patch inside the attack).
Rounds alternate between the two so that clock drift hits both alike; medians are reported.

Peak memory is the high-water mark of one batch above what was allocated before it, plus the path's own weights and
optimiser state (CUDA: the caching allocator's counters; CPU: the process's peak resident set, reset before the batch
through /proc/self/clear_refs). FLOPs are counted on one fast-path batch with torch.utils.flop_counter.

    python benchmarks/bench_train.py                          # StarGAN 256x256, batch 4, r=8, PGD-10, 5 conditions
    python benchmarks/bench_train.py --size 64 --json         # a CPU-sized run, one JSON object on stdout
    python benchmarks/bench_train.py --compile default        # the fast path with torch.compile
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_loop import ReferenceStyleLoop

import lora_patch_adapters as lpa
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.generators import StarGANEditor, StarGANGenerator
from lora_patch_adapters.losses import MMFALoss
from lora_patch_adapters.training import PatchTrainer, TrainingConfig

# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched against the device name
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}


def bf16_peak(device_name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks do not support torch.autograd.grad
    (the inner attack's input-only gradients); the counter then reports totals only."""

    parents = ("Global",)

    def __enter__(self) -> _NoModuleTracking:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(run: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        run()
    return counter.get_total_flops()


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights, buffers and optimiser state of one path."""
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(model.parameters()) + tensor_bytes(model.buffers()) + tensor_bytes(states)


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def peak_bytes(device: torch.device, run: Callable[[], object]) -> int | None:
    """High-water mark of ``run()`` above the memory in use before it (None where it cannot be measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        before = _proc_status()["VmRSS"]
        run()
        return _proc_status()["VmHWM"] - before
    except OSError:
        return None


def timed(device: torch.device, run: Callable[[], object]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def build(args: argparse.Namespace, device: torch.device, compile_mode: str | None = None):
    """The reference-style loop and the fast-path trainer on two copies of one random generator."""
    torch.manual_seed(0)
    generator = StarGANGenerator(conv_dim=args.conv_dim, c_dim=5, repeat_num=args.repeat_num)
    patch = lpa.LoraPatchConfig.from_preset("paper", r=args.rank)
    reference = ReferenceStyleLoop(StarGANEditor(copy.deepcopy(generator)).to(device), patch,
                                   steps=args.pgd_steps, step_size=0.01, eps=0.05)
    config = TrainingConfig(batch_size=args.batch, fast=True, precision=args.precision,
                            channels_last=not args.no_channels_last, compile=compile_mode, progress=False,
                            log_every=10**9)
    fast = PatchTrainer(StarGANEditor(copy.deepcopy(generator)).to(device), patch=patch,
                        attack=PGD(eps=0.05, steps=args.pgd_steps, step_size=0.01), loss=MMFALoss.pixel_only(),
                        config=config)
    return reference, fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="images per batch (each edited under 5 conditions)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--conv-dim", type=int, default=64)
    parser.add_argument("--repeat-num", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 5 on CUDA, 3 on CPU)")
    parser.add_argument("--fast-batches", type=int, default=None,
                        help="fast-path batches per round, read back once (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="fast path (auto: bf16 on CUDA, fp32 on CPU); the reference-style loop is always fp32")
    parser.add_argument("--no-channels-last", action="store_true", help="fast path without channels_last")
    parser.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the fast path's generator")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (default: "
                        "looked up from the device name for common data-centre GPUs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    rounds = args.rounds or (5 if on_cuda else 3)
    fast_batches = args.fast_batches or (5 if on_cuda else 1)
    torch.backends.cudnn.benchmark = True
    reference, fast = build(args, device, args.compile)
    data = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=data) * 2 - 1
    labels = (torch.rand(args.batch, 5, generator=data) > 0.5).float()
    if on_cuda:
        x, labels = x.pin_memory(), labels.pin_memory()

    def reference_batch() -> None:
        reference.train_step(x.to(device), labels.to(device))

    def fast_batches_run(count: int) -> Callable[[], None]:
        def run() -> None:
            pending = [fast._step(x, labels) for _ in range(count)]
            fast._read_back(pending)
        return run

    # FLOPs of one fast batch, counted on an eager twin (the counter does not see inside compiled graphs)
    counter_fast = build(args, device)[1] if args.compile else fast
    flops = count_flops(lambda: counter_fast._read_back([counter_fast._step(x, labels)]))
    if counter_fast is not fast:
        del counter_fast

    timed(device, reference_batch)  # warm-up (cuDNN autotuning, compilation)
    for _ in range(2):
        timed(device, fast_batches_run(1))
    reference_times, fast_times = [], []
    for _ in range(rounds):
        reference_times.append(timed(device, reference_batch))
        fast_times.append(timed(device, fast_batches_run(fast_batches)) / fast_batches)
    reference_peak = peak_bytes(device, reference_batch)
    fast_peak = peak_bytes(device, fast_batches_run(1))
    if reference_peak is not None:
        reference_peak += state_bytes(reference.model, reference.optimizer)
        fast_peak += state_bytes(fast.model, fast.optimizer)

    reference_s = statistics.median(reference_times)
    fast_s = statistics.median(fast_times)
    name = torch.cuda.get_device_name(device) if on_cuda else (platform.processor() or platform.machine() or "cpu")
    peak_tflops = args.peak_tflops if args.peak_tflops is not None else (bf16_peak(name) if on_cuda else None)
    fast_tflops = flops / fast_s / 1e12
    per_epoch = 1000 / args.batch
    result = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {"size": args.size, "batch": args.batch, "rank": args.rank, "pgd_steps": args.pgd_steps,
                     "conditions": 5, "conv_dim": args.conv_dim, "repeat_num": args.repeat_num, "rounds": rounds,
                     "fast_batches_per_round": fast_batches},
        "fast_runtime": fast.runtime.describe(),
        "reference_s_per_batch": reference_s,
        "fast_s_per_batch": fast_s,
        "speedup": reference_s / fast_s,
        "reference_s_per_epoch": reference_s * per_epoch,
        "fast_s_per_epoch": fast_s * per_epoch,
        "reference_peak_bytes": reference_peak,
        "fast_peak_bytes": fast_peak,
        "memory_ratio": fast_peak / reference_peak if reference_peak else None,
        "flops_per_batch": flops,
        "fast_tflops": fast_tflops,
        "peak_bf16_tflops": peak_tflops,
        "fraction_of_bf16_peak": fast_tflops / peak_tflops if peak_tflops else None,
        "reference_times": reference_times,
        "fast_times": fast_times,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    s = result["settings"]
    print(f"{name} ({device.type}, torch {torch.__version__}, {result['threads']} threads); StarGAN conv_dim "
          f"{s['conv_dim']}, {s['repeat_num']} blocks, {args.size}x{args.size}, batch {args.batch} x 5 conditions, "
          f"rank {args.rank}, PGD-{args.pgd_steps}; fast path {result['fast_runtime']}; median of {rounds} rounds")
    print(f"{'path':24s} {'s/batch':>10s} {'s/1000-image epoch':>20s} {'peak MiB':>10s}")
    for label, sec, peak in (("reference-style loop", reference_s, reference_peak), ("fast path", fast_s, fast_peak)):
        mib = f"{peak / 2**20:10.1f}" if peak is not None else f"{'n/a':>10s}"
        print(f"{label:24s} {sec:10.4f} {sec * per_epoch:20.1f} {mib}")
    print(f"speed-up: {result['speedup']:.2f}x" + (f"; memory ratio {result['memory_ratio']:.2f}x"
                                                    if result["memory_ratio"] else ""))
    print(f"fast path: {flops / 1e12:.2f} TFLOP per batch, {fast_tflops:.2f} TFLOP/s"
          + (f" = {100 * result['fraction_of_bf16_peak']:.1f}% of the {peak_tflops:.0f} TFLOP/s bf16 peak"
             if peak_tflops else ""))


if __name__ == "__main__":
    main()
