"""The edits an editor's ``conditions`` returns: AttGAN's target sets ("all": the 13 attributes, "paper": the
LoRA-Patching paper's 5) and HiSD's reference-guided hair colour (the paper's protocol) next to the latent-guided
default. Expected vectors and outputs are computed here from the rules, not by the code under test."""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image

from lora_patch_adapters.generators.attgan import (
    ATTGAN_ATTRIBUTES,
    ATTGAN_PAPER_TARGETS,
    AttGANEditor,
    AttGANGenerator,
    build_editor,
)
from lora_patch_adapters.generators.hisd import HiSDCondition, HiSDEditor, HiSDGenerator, small_hyperparameters
from lora_patch_adapters.runs.errors import RunInputError
from lora_patch_adapters.runs.inputs import read_references

NAMES = list(ATTGAN_ATTRIBUTES)
HAIR = ["Black_Hair", "Blond_Hair", "Brown_Hair"]
# switched ON -> these go OFF (the official check_attribute_conflict, restricted to the 13 attributes)
OFF_WHEN_ON = {"Bald": ["Bangs"], "Bangs": ["Bald"], "Mustache": ["No_Beard"], "No_Beard": ["Mustache"],
               **{h: [o for o in HAIR if o != h] for h in HAIR}}


def expected_vector(row: list[int], edited: str, thres_int: float = 0.5, test_int: float = 1.0) -> list[float]:
    """The rule, written out: flip ``edited``; if it is now on, switch its conflicting attributes off; present ->
    +thres_int, absent -> -thres_int; the edited attribute -> +-test_int."""
    target = dict(zip(NAMES, row))
    target[edited] = 1 - target[edited]
    if target[edited] == 1:
        for other in OFF_WHEN_ON.get(edited, []):
            target[other] = 0
    out = []
    for name in NAMES:
        scale = test_int if name == edited else thres_int
        out.append(scale if target[name] == 1 else -scale)
    return out


def label_rows() -> torch.Tensor:
    """Rows that exercise every rule: all off, all on, each hair colour alone, Bald/Bangs and Mustache/No_Beard on,
    and random rows."""
    rows = [[0] * 13, [1] * 13]
    for name in HAIR + ["Bald", "Bangs", "Mustache", "No_Beard", "Male", "Young"]:
        rows.append([1 if n == name else 0 for n in NAMES])
    rows.append([1 if n in ("Bald", "Bangs", "Mustache", "No_Beard", "Black_Hair", "Blond_Hair") else 0 for n in NAMES])
    g = torch.Generator().manual_seed(3)
    rows += torch.randint(0, 2, (8, 13), generator=g).tolist()
    return torch.tensor(rows, dtype=torch.float32)


def small_attgan(**kwargs) -> AttGANEditor:
    torch.manual_seed(0)
    return AttGANEditor(AttGANGenerator(enc_dim=4, dec_dim=4, enc_layers=3, dec_layers=3, img_size=32), **kwargs)


# ---------------------------------------------------------------------------------------------------------- AttGAN
def test_paper_targets_are_the_papers_five_attributes():
    assert ATTGAN_PAPER_TARGETS == ("Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Male")
    editor = small_attgan(targets="paper")
    assert editor.targets == "paper" and editor.edited_attributes == ATTGAN_PAPER_TARGETS
    assert editor.describe()["targets"] == "paper" and editor.describe()["edited"] == list(ATTGAN_PAPER_TARGETS)
    assert "targets='paper'" in repr(editor)


@pytest.mark.parametrize("thres_int, test_int", [(0.5, 1.0), (0.3, 0.8)])
def test_paper_conditions_follow_the_rule(thres_int, test_int):
    labels = label_rows()
    editor = small_attgan(targets="paper", thres_int=thres_int, test_int=test_int)
    conditions = editor.conditions(labels)
    assert len(conditions) == 5
    for edited, condition in zip(["Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Male"], conditions):
        expected = torch.tensor([expected_vector(row, edited, thres_int, test_int) for row in labels.int().tolist()])
        torch.testing.assert_close(condition, expected, rtol=0, atol=1e-6, msg=edited)


def test_paper_scales_the_edited_attribute_not_its_neighbour():
    """The paper's release scales column k-1 of its k-th edit (Young for Bangs, Bald for Black_Hair, ...); here the
    edited column is the one at +-test_int and every other column stays at +-thres_int."""
    labels = torch.zeros(1, 13)
    for edited, condition in zip(ATTGAN_PAPER_TARGETS, small_attgan(targets="paper").conditions(labels)):
        magnitudes = condition.abs()[0].tolist()
        assert [NAMES[i] for i, m in enumerate(magnitudes) if m == 1.0] == [edited]
        assert sorted(set(magnitudes)) == [0.5, 1.0]


def test_all_targets_are_unchanged_and_the_default():
    labels = label_rows()
    for editor in (small_attgan(), small_attgan(targets="all")):
        assert editor.targets == "all" and editor.edited_attributes == ATTGAN_ATTRIBUTES
        conditions = editor.conditions(labels)
        assert len(conditions) == 13
        for edited, condition in zip(NAMES, conditions):
            expected = torch.tensor([expected_vector(row, edited) for row in labels.int().tolist()])
            torch.testing.assert_close(condition, expected, rtol=0, atol=1e-6, msg=edited)


def test_paper_conditions_are_a_subset_of_all_and_edit_the_generator():
    labels = label_rows()[:4]
    editor = small_attgan()
    every = dict(zip(NAMES, editor.conditions(labels)))
    editor.targets = "paper"
    paper = editor.conditions(labels)
    for name, condition in zip(ATTGAN_PAPER_TARGETS, paper):
        assert torch.equal(condition, every[name])
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert editor.edit(x, paper[0]).shape == (4, 3, 32, 32)


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match=r"targets must be one of \['all', 'paper'\], got 'some'"):
        small_attgan(targets="some")
    editor = small_attgan()
    with pytest.raises(ValueError, match="got 'Paper'"):
        editor.targets = "Paper"
    assert editor.targets == "all"
    with pytest.raises(ValueError, match=r"lack \['Male'\]"):
        AttGANEditor(AttGANGenerator(enc_dim=4, dec_dim=4, enc_layers=3, dec_layers=3, img_size=32, n_attrs=4),
                     attribute_names=["Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair"], targets="paper")
    with pytest.raises(ValueError, match="targets must be one of"):  # before the 256 px network is built
        build_editor(targets="five")


# ------------------------------------------------------------------------------------------------------------ HiSD
HAIR_TAG = 2  # the official deepfake.py passes tag 2 (HairColor) with each reference image


def small_hisd(**kwargs) -> HiSDEditor:
    torch.manual_seed(0)
    return HiSDEditor(HiSDGenerator(small_hyperparameters(32)), **kwargs)


def references(sizes=((32, 32), (32, 40), (48, 32))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.rand(1, 3, h, w, generator=g) * 2 - 1 for h, w in sizes]


def test_latent_guided_stays_the_default():
    editor = small_hisd()
    assert editor.guidance == "latent" and editor.references is None and editor.reference_tag == HAIR_TAG
    conditions = editor.conditions(torch.zeros(2, 5))
    assert len(conditions) == 7 and all(c.guided_by == "latent" for c in conditions)
    assert [(c.tag, c.attribute) for c in conditions] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert editor.describe() == {"name": "hisd", "guidance": "latent"}


def test_reference_guided_gives_one_hair_colour_edit_per_reference():
    refs = references()
    editor = small_hisd(references=refs)
    assert editor.guidance == "reference" and len(editor.references) == 3
    conditions = editor.conditions(torch.zeros(2, 5), seed=7)
    assert len(conditions) == 3
    assert all(isinstance(c, HiSDCondition) and c.guided_by == "reference" and c.tag == HAIR_TAG for c in conditions)
    for condition, ref in zip(conditions, refs):
        assert torch.equal(condition.reference, ref)
    assert editor.describe() == {"name": "hisd", "guidance": "reference", "reference_tag": "HairColor",
                                 "references": [[32, 32], [32, 40], [48, 32]]}

    g = editor.generator
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for condition, ref in zip(conditions, refs):
            expected = g.decode(g.translate(g.encode(x), g.extract(ref, HAIR_TAG), HAIR_TAG))
            torch.testing.assert_close(editor.edit(x, condition), expected, rtol=0, atol=0)
        # the three references give three different edits
        outs = [editor.edit(x, c) for c in conditions]
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(outs, 2))


def test_references_can_be_set_later_by_tag_name_and_removed():
    editor = small_hisd()
    refs = references()[:2]
    editor.set_references([r[0] for r in refs], tag="Hair_Color")  # [3, H, W] accepted, name matched loosely
    assert editor.reference_tag == HAIR_TAG
    assert [c.reference.shape for c in editor.conditions(torch.zeros(1, 5))] == [r.shape for r in refs]
    editor.set_references(refs[:1], tag=1)
    assert [c.tag for c in editor.conditions(torch.zeros(1, 5))] == [1]
    editor.references = None
    assert editor.guidance == "latent" and len(editor.conditions(torch.zeros(1, 5))) == 7


@pytest.mark.parametrize("bad, error, fragment", [
    ([], ValueError, "empty"),
    ("ref.jpg", TypeError, "read_references"),
    (["ref.jpg"], TypeError, "references[0] is a path ('ref.jpg')"),
    ([torch.zeros(2, 3, 32, 32)], ValueError, "references[0] must be one image"),
    ([torch.zeros(1, 3, 32, 32), torch.full((1, 3, 32, 32), 200.0)], ValueError, "references[1] must lie in [-1, 1]"),
    ([torch.zeros(1, 3, 4, 32)], ValueError, "needs at least 8"),
    ([torch.zeros(1, 3, 32, 32, dtype=torch.uint8)], TypeError, "floating point"),
])
def test_bad_references_are_refused_and_nothing_changes(bad, error, fragment):
    editor = small_hisd()
    with pytest.raises(error) as info:
        editor.set_references(bad)
    assert fragment in str(info.value)
    assert editor.guidance == "latent"


def test_unknown_reference_tag_is_refused():
    with pytest.raises(ValueError, match="'Beard' is not a tag"):
        small_hisd(references=references()[:1], reference_tag="Beard")
    with pytest.raises(ValueError, match="tag 5 is out of range"):
        small_hisd(references=references()[:1], reference_tag=5)


# ------------------------------------------------------------------------------------------- reading reference files
def test_reference_files_are_read_as_the_official_transform(tmp_path):
    path = tmp_path / "hair.png"
    Image.new("RGB", (48, 36), (200, 100, 50)).save(path)  # width 48, height 36
    (ref,) = read_references([str(path)], size=32)
    assert ref.shape == (1, 3, 32, int(32 * 48 / 36))  # shorter side to 32, aspect kept
    expected = torch.tensor([200, 100, 50]) / 127.5 - 1
    torch.testing.assert_close(ref[0].mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
    assert read_references(path, size=32)[0].shape == ref.shape  # one path on its own
    editor = small_hisd(references=read_references([path, path], size=32))
    assert len(editor.conditions(torch.zeros(1, 5))) == 2


def test_a_bad_reference_file_is_named(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(RunInputError, match=r"--references: image .*broken\.jpg is not an image"):
        read_references([str(good), str(broken)])
    with pytest.raises(RunInputError, match=r"--references: reference image '.*missing\.jpg' not found"):
        read_references([str(good), str(tmp_path / "missing.jpg")])
