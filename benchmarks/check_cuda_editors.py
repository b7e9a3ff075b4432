"""CUDA check of the editors: official-format checkpoints (random weights) written on the CPU, loaded with
``load_editor(..., device="cuda")`` (map_location), edited on the GPU; also the shipped testbed editor, and a patch
attached to each. Prints one line per editor and exits non-zero on any failure.

    python benchmarks/check_cuda_editors.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.generators import AttGANGenerator, HiSDCondition, HiSDGenerator, StarGANGenerator


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    folder = Path(tempfile.mkdtemp())
    files = {
        "stargan": (folder / "200000-G.ckpt", lambda p: torch.save(StarGANGenerator().state_dict(), p)),
        "attgan": (folder / "weights.199.pth", lambda p: torch.save({"G": AttGANGenerator().state_dict()}, p)),
        "attgan_inject1": (
            folder / "inject1.pth",
            lambda p: torch.save({"G": AttGANGenerator(inject_layers=1).state_dict()}, p),
        ),
        "hisd": (
            folder / "gen_00600000.pt",
            lambda p: torch.save({"gen": HiSDGenerator().state_dict(), "gen_test": HiSDGenerator().state_dict()}, p),
        ),
        "testbed": (None, None),
    }
    failures = 0
    for name, (path, write) in files.items():
        if write is not None:
            write(path)
        start = time.perf_counter()
        editor = lpa.load_editor(name, checkpoint=path, device="cuda")
        size = 64 if name == "testbed" else 256
        x = torch.rand(2, 3, size, size, device="cuda") * 2 - 1
        labels = torch.zeros(2, len(editor.attribute_names), device="cuda")
        labels[:, 0] = 1
        if name == "hisd":
            condition = HiSDCondition(tag=2, attribute=1, z=torch.randn(2, 32, device="cuda"))
        else:
            condition = editor.conditions(labels)[1]
        with torch.no_grad():
            y = editor.edit(x, condition)
            lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(include_linear=True))
            y_patched = editor.edit(x, condition)
        torch.cuda.synchronize()
        ok = (
            y.is_cuda
            and y.shape == x.shape
            and bool(torch.isfinite(y).all())
            and all(p.is_cuda for p in editor.generator.parameters())
            # B = 0 leaves the maths unchanged; cuDNN's kernels are not bitwise deterministic (seen: 1.7e-5)
            and (y - y_patched).abs().max().item() < 1e-4
        )
        failures += not ok
        print(f"{name:15s} {'ok' if ok else 'FAILED'}  output {tuple(y.shape)} on {y.device}, "
              f"patched (B = 0) max |diff| {(y - y_patched).abs().max().item():.1e}, "
              f"{time.perf_counter() - start:.1f} s")
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(main())
