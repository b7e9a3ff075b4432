"""EOT defenses: eot=None is the plain objective bit for bit, the EOT loss is the mean of the per-transformation
losses, every defense routes its editor forwards through it, options are validated, ``pgd_eot`` is a built-in."""

from __future__ import annotations

import kornia
import pytest
import torch
import torch.nn.functional as F

from lora_patch_adapters.defenses import CMUA, FGSM, IFGSM, PGD, AntiForgery
from lora_patch_adapters.defenses import base as defense_base
from lora_patch_adapters.defenses.anti_forgery import ab_perturb, to_normalised_lab
from lora_patch_adapters.defenses.base import disruption_loss, project, seeded_uniform
from lora_patch_adapters.defenses.plugins import BUILTIN_DEFENSES, PGD_EOT_TRANSFORMS, builtin_defense, load_defense
from lora_patch_adapters.generators import StarGANEditor, StarGANGenerator

EOT = ("identity", "jpeg75", "blur1")


@pytest.fixture
def editor() -> StarGANEditor:
    torch.manual_seed(0)
    generator = StarGANGenerator(conv_dim=8, repeat_num=1)
    for p in generator.parameters():
        p.requires_grad_(False)
    return StarGANEditor(generator)


class NoStackEditor(StarGANEditor):
    """An editor whose conditions cannot be stacked (as HiSD's): EOT runs one forward per view."""

    def concat_conditions(self, conditions):
        return None


def _data(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 1.6 - 0.8
    labels = torch.zeros(n, 5)
    labels[torch.arange(n), torch.arange(n) % 3] = 1
    return x, labels


def _independent_views(x):
    """The three EOT views computed here with kornia directly (not through the package)."""
    jpeg = (kornia.enhance.jpeg_codec_differentiable((x + 1) / 2, torch.tensor([75.0])) * 2 - 1).clamp(-1, 1)
    blur = kornia.filters.gaussian_blur2d(x, (5, 5), (1.0, 1.0), border_type="reflect")
    return [x, jpeg, blur]


def _old_pgd(editor, x, conditions, eps, steps, step_size, seed):
    """PGD exactly as written before the eot option (a copy of the old formula)."""
    with torch.no_grad():
        references = [editor.edit(x, c).detach() for c in conditions]
    x_adv = project(x + seeded_uniform(x, eps, seed), x, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        total = x_adv.new_zeros(())
        for c, r in zip(conditions, references):
            total = total + F.mse_loss(editor.edit(x_adv, c), r)
        (grad,) = torch.autograd.grad(total / len(conditions), x_adv)
        x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return project(x_adv.detach(), x, eps)


def test_no_eot_is_the_old_pgd_bit_for_bit(editor):
    x, labels = _data()
    conditions = editor.conditions(labels)
    new = PGD(eps=0.05, steps=3, step_size=0.02, seed=5).protect(x, editor, conditions)
    assert torch.equal(new, _old_pgd(editor, x, conditions, 0.05, 3, 0.02, 5))
    # the list is exactly what is averaged: ["identity"] alone is the plain objective
    assert torch.equal(PGD(eps=0.05, steps=3, step_size=0.02, seed=5, eot=["identity"]).protect(x, editor, conditions),
                       new)


def test_no_eot_is_the_old_anti_forgery_bit_for_bit(editor):
    x, labels = _data()
    conditions = editor.conditions(labels)[:2]
    with torch.no_grad():
        references = [editor.edit(x, c) for c in conditions]
    lab = to_normalised_lab(x)
    delta = torch.zeros(2, 2, 32, 32, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=0.02, betas=(0.9, 0.999))
    for step in range(3):
        x_adv = ab_perturb(lab, delta) * 2 - 1
        (grad,) = torch.autograd.grad(-F.mse_loss(editor.edit(x_adv, conditions[step % 2]), references[step % 2]),
                                      delta)
        delta.grad = grad
        optimizer.step()
        with torch.no_grad():
            delta.clamp_(-0.05, 0.05)
    with torch.no_grad():
        expected = (ab_perturb(lab, delta) * 2 - 1).clamp(-1, 1)
    assert torch.equal(AntiForgery(eps=0.05, steps=3, lr=0.02).protect(x, editor, conditions), expected)


@pytest.mark.parametrize("editor_class", [StarGANEditor, NoStackEditor])
def test_eot_loss_and_gradient_are_the_mean_of_the_per_transformation_ones(editor, editor_class):
    editor = editor_class(editor.generator)
    x, labels = _data()
    conditions = editor.conditions(labels)[:2]
    with torch.no_grad():
        references = [editor.edit(x, c) for c in conditions]
    x_adv = (x + seeded_uniform(x, 0.05, 1)).requires_grad_(True)
    loss = disruption_loss(editor, x_adv, conditions, references, eot=EOT)
    (grad,) = torch.autograd.grad(loss, x_adv)

    x_ind = x_adv.detach().clone().requires_grad_(True)
    terms = [F.mse_loss(editor.edit(view, c), r) for view in _independent_views(x_ind)
             for c, r in zip(conditions, references)]
    expected = sum(terms) / len(terms)
    (expected_grad,) = torch.autograd.grad(expected, x_ind)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-9)
    plain = disruption_loss(editor, x_adv, conditions, references)
    (plain_grad,) = torch.autograd.grad(plain, x_adv)
    assert (plain_grad.sign() != grad.sign()).float().mean() > 0.05  # EOT changes the ascent direction


@pytest.mark.parametrize("make", [lambda eot: PGD(steps=2, seed=1, eot=eot), lambda eot: IFGSM(steps=2, eot=eot),
                                  lambda eot: FGSM(eot=eot)])
def test_eot_attacks_stay_in_budget_and_differ_from_plain(editor, make):
    x, labels = _data()
    conditions = editor.conditions(labels)
    plain, robust = make(None), make(list(EOT))
    x_plain, x_robust = plain.protect(x, editor, conditions), robust.protect(x, editor, conditions)
    assert (x_robust - x).abs().max() <= robust.eps + 1e-6 and x_robust.abs().max() <= 1
    assert not torch.equal(x_plain, x_robust)
    assert robust.eot == EOT and "eot=('identity', 'jpeg75', 'blur1')" in repr(robust)
    assert "eot" not in repr(plain) and plain.eot is None


def _count_views(monkeypatch):
    calls = []
    original = defense_base.transform_views

    def spy(x, names):
        calls.append(tuple(names))
        return original(x, names)

    monkeypatch.setattr(defense_base, "transform_views", spy)
    return calls


def test_cmua_fits_through_the_eot_views(editor, monkeypatch):
    x, labels = _data(n=4)
    plain = CMUA(steps=2, batch_size=4, n_images=4).fit((x, labels), editor)
    calls = _count_views(monkeypatch)
    robust = CMUA(steps=2, batch_size=4, n_images=4, eot=["jpeg75", "blur1"]).fit((x, labels), editor)
    assert calls == [("jpeg75", "blur1")] * (2 * len(editor.conditions(labels)))  # every step of every condition
    assert not torch.equal(plain.perturbation, robust.perturbation)
    assert robust.perturbation.abs().max() <= robust.eps + 1e-6
    calls.clear()
    CMUA(steps=2, batch_size=4, n_images=4, update="simple", eot=["blur1"]).fit((x, labels), editor)
    assert calls == [("blur1",)] * (2 * len(editor.conditions(labels)))
    assert "eot=('jpeg75', 'blur1')" in repr(robust)


def test_anti_forgery_optimises_through_the_eot_views(editor, monkeypatch):
    x, labels = _data()
    conditions = editor.conditions(labels)[:2]
    plain = AntiForgery(eps=0.05, steps=3, lr=0.02).protect(x, editor, conditions)
    calls = _count_views(monkeypatch)
    robust = AntiForgery(eps=0.05, steps=3, lr=0.02, eot=["blur1"]).protect(x, editor, conditions)
    assert calls == [("blur1",)] * 3 and not torch.equal(plain, robust)


@pytest.mark.parametrize("make", [PGD, IFGSM, FGSM, CMUA, AntiForgery])
def test_eot_option_is_validated_in_the_constructor(make):
    with pytest.raises(ValueError, match="empty"):
        make(eot=[])
    with pytest.raises(ValueError, match=r"Unknown EOT transformation 'sharpen'.*jpeg<Q>"):
        make(eot=["identity", "sharpen"])
    with pytest.raises(ValueError, match="1..100"):
        make(eot=["jpeg0"])
    with pytest.raises(ValueError, match="more than once"):
        make(eot=["blur1", "blur1.0"])
    with pytest.raises(TypeError, match="eot must be None or a list"):
        make(eot=3)


def test_pgd_eot_is_a_builtin_spec():
    assert "pgd_eot" in BUILTIN_DEFENSES and PGD_EOT_TRANSFORMS == EOT
    defense = load_defense("pgd_eot", eps=0.04, seed=2, steps=4)
    assert isinstance(defense, PGD) and defense.name == "pgd_eot" and defense.eot == EOT
    assert (defense.eps, defense.steps, defense.seed) == (0.04, 4, 2)
    assert defense.step_size == pytest.approx(0.02)
    assert builtin_defense("pgd").eot is None and builtin_defense("pgd_eot").steps == 10


def test_the_audit_and_the_cli_accept_pgd_eot():
    import lora_patch_adapters as lpa
    from lora_patch_adapters.audit import AuditConfig, parse_budgets
    from lora_patch_adapters.audit.runner import Audit
    from lora_patch_adapters.cli import build_parser

    faces = lpa.testbed_faces(2, seed=0, split="train")
    audit = Audit(AuditConfig(defenses=["pgd", "pgd_eot"], budgets=parse_budgets("2"), eval_images=2),
                  lambda: lpa.load_editor("testbed"), faces, faces, None, None, "unused", print, False, None)
    assert [d.name for d in audit.defenses] == ["pgd", "pgd_eot"] and audit.defenses[1].eot == EOT
    parser = build_parser()
    assert parser.parse_args(["audit", "--defense", "pgd,pgd_eot"]).defense == [["pgd", "pgd_eot"]]
    assert parser.parse_args(["evaluate", "p", "--defense", "pgd_eot"]).defense == [["pgd_eot"]]
