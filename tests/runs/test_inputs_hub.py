"""Runs reading ``--data hf:...``: how the run's CelebA splits map onto a ``datasets`` dataset, and the checks that
refuse what cannot work (tiny datasets saved into tmp_path; nothing is downloaded)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

datasets = pytest.importorskip("datasets")

from lora_patch_adapters.data import HubFaces  # noqa: E402
from lora_patch_adapters.generators.testbed import TESTBED_ATTRIBUTES  # noqa: E402
from lora_patch_adapters.runs.errors import RunInputError  # noqa: E402
from lora_patch_adapters.runs.inputs import Inputs  # noqa: E402
from tests.data.test_hub import expected_labels, table  # noqa: E402

COLUMNS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young", "Eyeglasses", "Smiling")
EDITOR = SimpleNamespace(attribute_names=TESTBED_ATTRIBUTES)  # all Inputs.celeba reads of an editor
TESTBED_COLUMNS = [COLUMNS.index(name) for name in TESTBED_ATTRIBUTES]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-inputs")
    paths = {name: root / name for name in ("dict", "validation", "single")}
    datasets.DatasetDict(train=table(range(5), COLUMNS), test=table(range(5, 8), COLUMNS)).save_to_disk(
        str(paths["dict"]))
    datasets.DatasetDict(train=table(range(3), COLUMNS), validation=table(range(3, 5), COLUMNS)).save_to_disk(
        str(paths["validation"]))
    table(range(4), COLUMNS).save_to_disk(str(paths["single"]))
    return paths


def test_paper_splits_read_the_datasets_own_train_and_test_splits(folders):
    inputs = Inputs(data=f"hf:{folders['dict']}")
    inputs.check()
    train = inputs.celeba(EDITOR, "paper-train")
    assert isinstance(train, HubFaces) and train.split == "train" and len(train) == 5
    assert train.attributes == TESTBED_ATTRIBUTES  # the editor's attributes, in its order
    assert torch.equal(train.labels, expected_labels(range(5), range(len(COLUMNS)))[:, TESTBED_COLUMNS])
    assert train[0][0].shape == (3, 64, 64)  # the testbed preset: a square 64 x 64 resize
    test = inputs.celeba(EDITOR, "paper-test", limit=2)
    assert len(test) == 2
    images, labels = inputs.images_for(EDITOR, "test", "paper-test", None, 50)
    assert images.shape == (3, 3, 64, 64) and torch.equal(
        labels, expected_labels(range(5, 8), range(len(COLUMNS)))[:, TESTBED_COLUMNS])
    assert inputs.describe(3, "test", "paper-test") == f"3 images (paper-test: split 'test') of the dataset hf:" \
                                                       f"{folders['dict']}"
    assert inputs.hub_rows(None) == ("train", None, None)


def test_held_out_images_fall_back_to_the_validation_split(folders):
    inputs = Inputs(data=f"hf:{folders['validation']}")
    assert inputs.hub_rows("paper-test") == ("validation", None, None)
    assert len(inputs.celeba(EDITOR, "paper-test")) == 2


def test_a_dataset_without_held_out_split_is_refused_with_the_fix(folders):
    inputs = Inputs(data=f"hf:{folders['single']}")
    assert len(inputs.celeba(EDITOR, "paper-train")) == 4
    with pytest.raises(RunInputError, match=r"paper-test images come from the dataset's 'test' / 'validation' / "
                                            r"'valid' split, but its splits are 'train'.*pass --data-split NAME"):
        inputs.celeba(EDITOR, "paper-test")


def test_data_split_uses_the_papers_row_convention(folders):
    inputs = Inputs(data=f"hf:{folders['dict']}", data_split="train")
    inputs.check()
    assert inputs.hub_rows("paper-train") == ("train", 0, 1000)
    assert inputs.hub_rows("paper-test") == ("train", 29000, 30000)
    assert inputs.hub_rows(None) == ("train", None, None)
    with pytest.raises(RunInputError, match=r"has only 5 rows; rows 0-999 asked for.*--data-split reads one split "
                                            r"with the paper's row convention: paper-train is rows 0-999"):
        inputs.celeba(EDITOR, "paper-train")
    assert len(inputs.celeba(EDITOR, None)) == 5


@pytest.mark.parametrize("inputs, usage, fragment", [
    (Inputs(data="hf:org/name", attr_file="list_attr_celeba.txt"), True, "--attr-file does not apply to --data hf:"),
    (Inputs(data="celeba/img", attr_file="a.txt", data_split="train"), True, "--data-split applies to --data hf:"),
    (Inputs(data="hf:"), True, "name a dataset after 'hf:'"),
    (Inputs(data="hf:org/name", data_split=" "), True, "--data-split needs a split name"),
])
def test_check_refuses_what_cannot_work(inputs, usage, fragment):
    with pytest.raises(RunInputError, match=None) as info:
        inputs.check()
    assert fragment in str(info.value) and info.value.usage is usage


def test_hf_data_satisfies_the_official_generators_need_for_faces():
    Inputs(generator="stargan", allow_random_weights=True, data="hf:org/name").check()  # no error


def test_dataset_errors_become_run_input_errors_naming_the_data(folders):
    inputs = Inputs(data=f"hf:{folders['dict']}")
    wrong_editor = SimpleNamespace(attribute_names=("Black_Hair", "Bald"))
    with pytest.raises(RunInputError, match=r"--data hf:.* has no attribute column 'Bald'"):
        inputs.celeba(wrong_editor, "paper-train")


def test_a_missing_datasets_library_is_a_run_input_error(folders, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(RunInputError, match=r'pip install "lora-patch-adapters\[datasets\]"'):
        Inputs(data=f"hf:{folders['dict']}").celeba(EDITOR, "paper-train")
