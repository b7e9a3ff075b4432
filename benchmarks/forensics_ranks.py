"""Does ``lora-patch forensics`` find merged patches with their exact rank? Runs the command end to end on files.

For the testbed editor and a StarGAN-sized generator with random weights (conv_dim 64, 6 residual blocks): the
untouched model, merged rank-r patches (Kaiming A, B ~ N(0, b_std), the paper's gate sigmoid(-1) and scale
alpha/sqrt(r)) for r in {1, 4, 8, 16}, and a dense fine-tune (every weight moved by N(0, 1e-4) noise). Prints one
row per case: expected and reported verdict and rank, and the command's wall time.

    python benchmarks/forensics_ranks.py [--b-std 1e-3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file

import lora_patch_adapters as lpa
from lora_patch_adapters import cli
from lora_patch_adapters.generators.stargan import StarGANGenerator


def _save(module: torch.nn.Module, path: str) -> str:
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, path)
    return path


def _merged(base: torch.nn.Module, r: int, b_std: float) -> torch.nn.Module:
    model = lpa.get_peft_model(copy.deepcopy(base), lpa.LoraPatchConfig(r=r, init_weights="kaiming"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_patch_B" in name:
                param.normal_(0, b_std)
    return model.merge_and_unload()


def _fine_tuned(base: torch.nn.Module) -> torch.nn.Module:
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if param.dim() > 1:
                param.add_(1e-4 * torch.randn_like(param))
    return tuned


def _forensics(model_path: str, reference_path: str) -> tuple[dict, float]:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli.main(["forensics", "--model", model_path, "--reference", reference_path, "--json"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"lora-patch forensics exited with {code}")
    return json.loads(out.getvalue()), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--b-std", type=float, default=1e-3, help="std of the patch's B entries (default: 1e-3)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    networks = {"testbed": lpa.load_editor("testbed").generator, "stargan-sized (random)": StarGANGenerator()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, base in networks.items():
            reference = _save(base, os.path.join(tmp, "reference.safetensors"))
            cases = [("untouched", copy.deepcopy(base), "unchanged", None)]
            cases += [(f"merged r={r}", _merged(base, r, args.b_std), "low-rank patch merged", r) for r in (1, 4, 8, 16)]
            cases.append(("dense fine-tune", _fine_tuned(base), "other change", None))
            for case, module, verdict, rank in cases:
                report, seconds = _forensics(_save(module, os.path.join(tmp, "model.safetensors")), reference)
                rows.append({"network": label, "case": case, "expected_verdict": verdict, "expected_rank": rank,
                             "verdict": report["verdict"], "rank": report["rank"], "seconds": seconds,
                             "ok": report["verdict"] == verdict and report["rank"] == rank})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'network':24s}{'case':18s}{'verdict (expected)':44s}{'rank (exp.)':>13s}{'seconds':>9s}  ok")
        for row in rows:
            expected = "-" if row["expected_rank"] is None else row["expected_rank"]
            got = "-" if row["rank"] is None else row["rank"]
            print(f"{row['network']:24s}{row['case']:18s}{row['verdict'] + ' (' + row['expected_verdict'] + ')':44s}"
                  f"{f'{got} ({expected})':>13s}{row['seconds']:9.2f}  {'yes' if row['ok'] else 'NO'}")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
