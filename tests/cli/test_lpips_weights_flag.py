"""``--lpips-weights FILE`` on ``evaluate`` and ``audit``: a user's backbone file turns the LPIPS column on (nothing
is downloaded), a missing file is one clear error, and without it the audit reports LPIPS only from the cache."""

from __future__ import annotations

import json

import pytest
import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.audit import AuditConfig
from lora_patch_adapters.audit.runner import _lpips_weights
from lora_patch_adapters.cli import main
from lora_patch_adapters.evaluation.lpips import LpipsWeightsError
from tests.cli.test_commands import _one_line_error
from tests.evaluation.test_lpips import install_alexnet, random_alexnet_state, torch_home  # noqa: F401 (fixture)


@pytest.fixture
def patch_dir(tmp_path) -> str:
    editor = lpa.load_editor("testbed")
    torch.manual_seed(0)
    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(r=2, init_weights="kaiming"))
    return lpa.save_patch(model, tmp_path / "patch", metadata={"generator": "testbed", "kind": "bypass"})


def test_evaluate_reports_lpips_with_the_given_weights(patch_dir, tmp_path, torch_home):  # noqa: F811
    weights = tmp_path / "alexnet.pth"
    torch.save(random_alexnet_state(seed=1), weights)
    out = tmp_path / "evaluation"
    argv = ["evaluate", patch_dir, "--out", str(out), "--defense", "pgd", "--scenario", "default", "--images", "2",
            "--steps", "1", "--no-progress"]
    assert main([*argv, "--lpips-weights", str(weights)]) == 0
    result = json.loads((out / "summary.json").read_text())["results"][0]
    assert result["lpips_weights"] == str(weights.resolve())
    assert result["metrics"]["patched_protected"]["lpips"] > 0
    # the cache is empty: without the flag there is no LPIPS, and a missing file is refused before anything runs
    assert main([*argv[:3], str(tmp_path / "plain"), *argv[4:]]) == 0
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())["results"][0]
    assert plain["lpips_weights"] is None and "lpips" not in plain["metrics"]["patched_protected"]


def test_evaluate_refuses_a_missing_weights_file(patch_dir, tmp_path, capsys, torch_home):  # noqa: F811
    out = tmp_path / "evaluation"
    err = _one_line_error(capsys, ["evaluate", patch_dir, "--out", str(out), "--lpips-weights",
                                   str(tmp_path / "nope.pth")], 1)
    assert "--lpips-weights" in err and "nope.pth" in err and "alexnet" in err
    assert not out.exists()


def test_audit_lpips_weights_explicit_cached_or_absent(tmp_path, torch_home):  # noqa: F811
    images = torch.zeros(1, 3, 64, 64)
    assert _lpips_weights(images) is None  # empty cache: no column
    with pytest.raises(LpipsWeightsError, match="nope.pth"):
        _lpips_weights(images, str(tmp_path / "nope.pth"))
    mine = tmp_path / "mine.pth"
    torch.save(random_alexnet_state(seed=2), mine)
    assert _lpips_weights(images, str(mine)) == str(mine.resolve())
    cached = install_alexnet(torch_home)
    assert _lpips_weights(images) == str(cached.resolve())
    assert _lpips_weights(images[..., :24, :24], str(mine)) is None  # too small for LPIPS
    assert AuditConfig(lpips_weights=str(mine)).to_dict()["lpips_weights"] == str(mine)
