"""Forward latency of a StarGAN-sized generator: base vs patched (unmerged, fused and two-branch) vs merged.

All variants run side by side in one process on the same device, interleaved round by round so that drift in clock
speed or load hits them alike; the report gives the median time per forward and its ratio to the base.

    python benchmarks/bench_inference.py                      # 64 channels, 6 blocks, 256x256, batch 4, CPU or CUDA
    python benchmarks/bench_inference.py --size 128 --json    # smaller images, one JSON object on stdout
    python benchmarks/bench_inference.py --amp                # bf16 autocast (CUDA)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import time
from typing import Callable

import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.generators import StarGANGenerator


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0
        start_s = time.perf_counter()
        fn()
        return time.perf_counter() - start_s

    return run


def build_variants(args: argparse.Namespace, device: torch.device) -> dict[str, torch.nn.Module]:
    """name -> model; every patched variant shares the same base weights and the same patch values."""
    torch.manual_seed(0)
    base = StarGANGenerator(conv_dim=args.conv_dim, c_dim=5, repeat_num=args.repeat_num).to(device).train()
    base.requires_grad_(False)  # frozen, as under a patch: with --grad only the patch parameters need gradients
    variants: dict[str, torch.nn.Module] = {"base": base}
    for gate in args.gates:
        for mode in ("fused", "two_branch"):
            if mode == "fused" and gate not in ("none", "basic"):
                continue  # input-adaptive gates always run two branches
            config = lpa.LoraPatchConfig(r=args.rank, gate=gate, init_weights="kaiming", forward_mode=mode)
            torch.manual_seed(1)
            patched = lpa.get_peft_model(copy.deepcopy(base), config).to(device)
            patched.train()
            variants[f"{gate}/unmerged-{mode}"] = patched
            if mode == "fused":
                merged = copy.deepcopy(patched).merge_and_unload()
                variants[f"{gate}/merged"] = merged
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--conv-dim", type=int, default=64)
    parser.add_argument("--repeat-num", type=int, default=6)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--gates", nargs="+", default=["basic", "none", "input_adaptive", "input_adaptive_channel"])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 30 on CUDA, 5 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--no-tf32", action="store_true", help="full-fp32 convolutions on CUDA (cuDNN uses TF32 by default)"
    )
    parser.add_argument(
        "--grad", action="store_true", help="time the forward with autograd on and the patch trainable (training)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    device = torch.device(args.device)
    rounds = args.rounds or (30 if device.type == "cuda" else 5)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = not args.no_tf32
    variants = build_variants(args, device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    c = (torch.rand(args.batch, 5, device=device) > 0.5).float()
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        for model in variants.values():
            model.to(memory_format=torch.channels_last)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    timer = _timer(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    grad_mode = torch.enable_grad() if args.grad else torch.no_grad()
    with grad_mode, amp:
        for name, model in variants.items():  # warm-up (and cudnn autotuning)
            for _ in range(2 if device.type == "cpu" else 5):
                model(x, c)
        for _ in range(rounds):
            for name, model in variants.items():
                times[name].append(timer(lambda: model(x, c)))
    with torch.no_grad(), amp:
        errors = {}
        for gate in args.gates:
            if f"{gate}/merged" in variants:
                out_unmerged = variants[f"{gate}/unmerged-fused"](x, c).float()
                out_merged = variants[f"{gate}/merged"](x, c).float()
                out_branch = variants[f"{gate}/unmerged-two_branch"](x, c).float()
                errors[gate] = {
                    "merged_vs_two_branch_max_abs": (out_merged - out_branch).abs().max().item(),
                    "fused_vs_two_branch_max_abs": (out_unmerged - out_branch).abs().max().item(),
                }
    median = {name: statistics.median(t) for name, t in times.items()}
    base_s = median["base"]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": [args.batch, 3, args.size, args.size],
        "conv_dim": args.conv_dim,
        "repeat_num": args.repeat_num,
        "rank": args.rank,
        "amp_bf16": args.amp,
        "channels_last": args.channels_last,
        "autograd": args.grad,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None,
        "rounds": rounds,
        "seconds": median,
        "ratio_to_base": {name: s / base_s for name, s in median.items()},
        "max_abs_error": errors,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    precision = "bf16 autocast" if args.amp else ("fp32" if args.no_tf32 or device.type != "cuda" else "fp32/TF32")
    print(
        f"{result['device']} ({device.type}, torch {torch.__version__}, {result['threads']} threads); input "
        f"{result['shape']}, conv_dim {args.conv_dim}, {args.repeat_num} blocks, rank {args.rank}, "
        f"{precision}, {'autograd on' if args.grad else 'no_grad'}, median of {rounds} interleaved rounds"
    )
    print(f"{'variant':40s} {'ms/forward':>12s} {'x base':>8s}")
    for name, seconds in median.items():
        print(f"{name:40s} {seconds * 1e3:12.2f} {seconds / base_s:8.3f}")
    for gate, err in errors.items():
        print(f"{gate}: merged vs two-branch max |diff| {err['merged_vs_two_branch_max_abs']:.2e}, "
              f"fused vs two-branch {err['fused_vs_two_branch_max_abs']:.2e} (outputs in [-1, 1])")


if __name__ == "__main__":
    main()
