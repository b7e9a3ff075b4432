"""The audit's attacker with the cheaper inner maximisations (``AuditConfig.inner``), and its cost in FLOPs: recorded
per budget, and in line with what each strategy computes (checked against FLOPs counted here, independently)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import lora_patch_adapters as lpa
from lora_patch_adapters.audit import AuditConfig, parse_budgets, run_audit, write_report
from lora_patch_adapters.defenses.plugins import load_defense
from lora_patch_adapters.patches import load_patch

# the smallest audit: one 2-image budget (one batch), one cheap defense, one held-out image, no shadows/transforms
TINY = dict(budgets=parse_budgets("2"), eval_images=1, batch_size=2, shadow_patches=0, defense_steps=1,
            jpeg_qualities=(), blur_sigmas=(), init="zero", lr=3e-3, seed=3)
ATTACKERS = {"pgd-1": dict(inner_steps=1), "pgd-3": dict(inner_steps=3), "fgsm_rs": dict(inner="fgsm_rs"),
             "free-1": dict(inner="free", replays=1), "free-2": dict(inner="free", replays=2)}


def _editor():
    return lpa.load_editor("testbed")


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    train = lpa.testbed_faces(2, seed=3, split="train")
    evaluation = lpa.testbed_faces(1, seed=3, split="test")
    runs = {}
    for name, fields in ATTACKERS.items():
        out = str(tmp_path_factory.mktemp(name))
        results = run_audit(AuditConfig(**TINY, **fields), _editor, train, evaluation, out,
                            defenses=[load_defense("pgd", steps=1, seed=3)], echo=lambda line: None)
        runs[name] = (results, out)
    return runs, train


def _flops(results) -> int:
    return results["attacker"]["pgd"]["2x1"]["flops"]


def test_cheaper_attackers_run_and_are_recorded(audits):
    runs, _ = audits
    for name, inner, steps, replays in (("fgsm_rs", "fgsm_rs", None, None), ("free-2", "free", None, 2),
                                        ("pgd-3", "pgd", 3, None)):
        results, out = runs[name]
        paths = write_report(results, out)
        config = json.loads(Path(paths["results"]).read_text())["config"]
        assert (config["inner"], config["inner_steps"], config["replays"]) == (inner, steps, replays)
        cost = results["attacker"]["pgd"]["2x1"]
        assert isinstance(cost["flops"], int) and cost["flops"] > 0 and cost["seconds"] > 0
        markdown = Path(paths["markdown"]).read_text()
        assert "| attacker cost (FLOPs) |" in markdown and "FLOP" in markdown.split("attacker cost (FLOPs)")[1]
    assert "inner FGSM-RS" in Path(runs["fgsm_rs"][1], "report.md").read_text()
    assert "inner free adversarial training (2 replays" in Path(runs["free-2"][1], "report.md").read_text()


def test_fgsm_rs_costs_one_pgd_step_and_free_costs_its_replays(audits):
    runs, _ = audits
    # FGSM-RS is one signed-gradient step from a random start: the FLOPs of PGD-1
    assert _flops(runs["fgsm_rs"][0]) == _flops(runs["pgd-1"][0])
    # "free" has no separate attack: every replay is one outer update (the frozen base's reference edits may be
    # computed once per batch), so two replays cost almost twice one, and one replay less than a PGD-1 update
    one, two = _flops(runs["free-1"][0]), _flops(runs["free-2"][0])
    assert 1.5 * one < two <= 2 * one
    assert one < _flops(runs["pgd-1"][0])


def test_pgd_flops_grow_by_one_forward_and_input_backward_per_extra_step(audits):
    runs, (images, labels) = audits
    low, high = _flops(runs["pgd-1"][0]), _flops(runs["pgd-3"][0])
    assert high > low
    # one PGD step = a forward of the patched generator and a backward to its input, for every (batch, target)
    results, out = runs["pgd-3"]
    patched = _editor()
    load_patch(patched, str(Path(out, results["attacker"]["pgd"]["2x1"]["patch"])))
    for name, parameter in patched.generator.named_parameters():
        parameter.requires_grad_("lora_patch" in name)  # as in training: the patch's kernel is recomposed per pass
    conditions = patched.conditions(labels)
    step = 0
    for condition in conditions:
        x = images.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            (grad,) = torch.autograd.grad(patched.edit(x * 1.0, condition).square().sum(), x)
        step += counter.get_total_flops()
    assert high - low == 2 * step  # k=3 vs k=1: two more steps (FLOPs are counted from shapes: exact)
    # the outer update itself costs several generator passes, so PGD-3 / PGD-1 stays under (3 + 1) / (1 + 1)
    assert 1.2 < high / low < 2


@pytest.mark.parametrize("fields, message", [
    (dict(inner="fgsm_rs", inner_steps=3), "inner_steps applies to inner='pgd' only"),
    (dict(inner="pgd", replays=2), "replays applies to inner='free' only"),
    (dict(inner="free", replays=0), "replays must be a positive integer"),
    (dict(inner="adam"), "inner must be one of"),
    (dict(inner="free", attack_with="defense"), "needs inner='pgd'"),
])
def test_bad_combinations_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        AuditConfig(**fields)


def test_defaults_of_other_strategies_are_recorded_as_none():
    assert (AuditConfig().inner, AuditConfig().inner_steps, AuditConfig().replays) == ("pgd", 10, None)
    assert (AuditConfig(inner="free").inner_steps, AuditConfig(inner="free").replays) == (None, 4)
    assert (AuditConfig(inner="fgsm_rs").inner_steps, AuditConfig(inner="fgsm_rs").replays) == (None, None)
