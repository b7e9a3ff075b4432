"""Face data read with the Hugging Face ``datasets`` library (``data.hub_faces``): tiny datasets written with
``save_to_disk`` into tmp_path; nothing is downloaded (the Hub test runs offline in a child process)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")

from lora_patch_adapters.data import (  # noqa: E402
    HubDataError,
    HubFaces,
    ImageReadError,
    hub_faces,
    hub_splits,
    is_hf_data,
    parse_hf_data,
)
from lora_patch_adapters.generators.stargan import STARGAN_ATTRIBUTES  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
SIDE = 32


def pixels(row: int, side: int = SIDE) -> np.ndarray:
    """The uint8 [side, side, 3] image of row ``row``: a gradient plus a per-row offset, distinct per channel."""
    y, x = np.mgrid[0:side, 0:side]
    return np.stack([(7 * x + 3 * y + 40 * row) % 256, (5 * y + 11 * row) % 256, (x * y + row) % 256],
                    axis=-1).astype(np.uint8)


def flag(row: int, column: int) -> int:
    """The attribute written at (row, column): 1 when (3 * row + column) % 4 == 0 or row == column, else 0."""
    return int((3 * row + column) % 4 == 0 or row == column)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def table(rows: range, names=STARGAN_ATTRIBUTES, minus_one: bool = False, bool_column: str | None = None):
    """A ``datasets.Dataset`` of PNG images ``pixels(r)`` and attribute columns ``flag(r, c)`` (as -1/1 when
    ``minus_one``; ``bool_column`` as booleans)."""
    data = {"image": [{"bytes": png(pixels(r)), "path": None} for r in rows]}
    features = {"image": datasets.Image()}
    for c, name in enumerate(names):
        if name == bool_column:
            data[name], features[name] = [bool(flag(r, c)) for r in rows], datasets.Value("bool")
        else:
            data[name] = [(2 * flag(r, c) - 1) if minus_one else flag(r, c) for r in rows]
            features[name] = datasets.Value("int64")
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def expected_image(row: int) -> torch.Tensor:
    """``pixels(row)`` as the package's image: [3, H, W] float in [-1, 1] (x / 127.5 - 1), computed here."""
    return torch.from_numpy(pixels(row).astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def expected_labels(rows: range, columns: range) -> torch.Tensor:
    return torch.tensor([[float(flag(r, c)) for c in columns] for r in rows])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A DatasetDict saved to disk: train rows 0-5 (0/1 ints, Blond_Hair as booleans), test rows 6-8 (-1/1 ints)."""
    path = tmp_path_factory.mktemp("hub") / "faces"
    datasets.DatasetDict(train=table(range(6), bool_column="Blond_Hair"),
                         test=table(range(6, 9), minus_one=True)).save_to_disk(str(path))
    return path


def test_images_and_labels_are_what_was_written(saved):
    data = hub_faces(saved, "train", preset=None, size=SIDE)
    assert isinstance(data, HubFaces) and len(data) == 6 and data.attributes == STARGAN_ATTRIBUTES
    for row in range(6):
        image, labels = data[row]
        assert image.shape == (3, SIDE, SIDE) and image.dtype == torch.float32
        torch.testing.assert_close(image, expected_image(row), atol=1e-6, rtol=0)
        assert labels.tolist() == expected_labels(range(row, row + 1), range(5))[0].tolist()
    assert torch.equal(data.labels, expected_labels(range(6), range(5)))
    assert data[-1][1].tolist() == data[5][1].tolist()
    with pytest.raises(IndexError):
        data[6]


def test_celeba_style_minus_one_becomes_zero_and_hf_prefix_is_accepted(saved):
    data = hub_faces(f"hf:{saved}", "test", preset=None, size=SIDE)
    assert data.split == "test" and len(data) == 3
    assert torch.equal(data.labels, expected_labels(range(6, 9), range(5)))
    torch.testing.assert_close(data[2][0], expected_image(8), atol=1e-6, rtol=0)


def test_crop_and_resize_follow_the_celeba_presets(saved):
    cropped = hub_faces(saved, "train", preset=None, crop=16, size=16)[1][0]
    torch.testing.assert_close(cropped, expected_image(1)[:, 8:24, 8:24], atol=1e-6, rtol=0)
    testbed = hub_faces(saved, "train", preset="testbed")[0][0]  # Resize(64), no crop
    assert testbed.shape == (3, 64, 64) and -1 <= testbed.min() and testbed.max() <= 1


def test_attribute_order_and_mapping(saved, tmp_path):
    order = ("Young", "Black_Hair")
    data = hub_faces(saved, "train", order, preset=None, size=SIDE)
    assert data.attributes == order and torch.equal(data.labels, expected_labels(range(6), range(5))[:, [4, 0]])

    renamed = table(range(4), names=("hair_black", "hair_blond", "hair_brown", "is_male", "young"))
    mapping = {"Male": "is_male", "Black_Hair": "hair_black", "Young": "young"}
    data = hub_faces(renamed, None, mapping, preset=None, size=SIDE)
    assert data.attributes == ("Male", "Black_Hair", "Young") and data.columns == ("is_male", "hair_black", "young")
    assert torch.equal(data.labels, expected_labels(range(4), range(5))[:, [3, 0, 4]])
    with pytest.raises(HubDataError, match=r"no attribute column 'Black_Hair'.*map differently spelled columns"):
        hub_faces(renamed, None, preset=None, size=SIDE)


def test_rows_and_single_dataset_folders(tmp_path):
    path = tmp_path / "single"
    table(range(5)).save_to_disk(str(path))
    assert hub_splits(path) == ["train"]
    data = hub_faces(path, "train", preset=None, size=SIDE, start=1, stop=4)
    assert data.rows == range(1, 4) and torch.equal(data.labels, expected_labels(range(1, 4), range(5)))
    torch.testing.assert_close(data[0][0], expected_image(1), atol=1e-6, rtol=0)
    with pytest.raises(HubDataError, match=r"single Dataset .* without a split 'test'"):
        hub_faces(path, "test", preset=None, size=SIDE)
    with pytest.raises(HubDataError, match=r"has only 5 rows; rows 0-9 asked for"):
        hub_faces(path, "train", preset=None, size=SIDE, stop=10)


@pytest.mark.parametrize("case, pattern", [
    ("split", r"dataset folder .*faces has no split 'validation'; available splits: 'train', 'test'"),
    ("column", r"split 'train' of dataset folder .* has no attribute column 'Smiling'; its columns: image, Black_Hair"),
    ("typo", r"no attribute column 'male' \(did you mean 'Male'\?\)"),
    ("image_column", r"has no column 'picture' \(image_column\); its image columns: image"),
])
def test_schema_errors_name_the_dataset_and_what_exists(saved, case, pattern):
    kwargs = {"split": {"split": "validation"}, "column": {"attributes": ["Black_Hair", "Smiling"]},
              "typo": {"attributes": ["male"]}, "image_column": {"image_column": "picture"}}[case]
    with pytest.raises(HubDataError, match=pattern):
        hub_faces(saved, **{"split": "train", **kwargs})


@pytest.mark.parametrize("values, pattern", [
    ([0, 1, 2, 0], r"column 'Male' holds 2 at row 2; attribute values must be 0/1"),
    ([-1, 1, 0, 1], r"column 'Male' holds 0 at row 2; attribute values must be CelebA-style -1/1"),
    ([0, 1, None, 1], r"column 'Male' has a missing value at row 2"),
    ([0.0, 1.0, 0.5, 1.0], r"column 'Male' holds 0.5 at row 2"),
])
def test_non_binary_attribute_values_are_refused(values, pattern):
    data = datasets.Dataset.from_dict({"image": [{"bytes": png(pixels(r)), "path": None} for r in range(4)],
                                       "Male": values})
    data = data.cast_column("image", datasets.Image())
    with pytest.raises(HubDataError, match=pattern):
        hub_faces(data, None, ["Male"], preset=None, size=SIDE)


def test_non_attribute_columns_are_refused():
    data = datasets.Dataset.from_dict({"image": [{"bytes": png(pixels(0)), "path": None}], "Male": ["yes"]})
    data = data.cast_column("image", datasets.Image())
    with pytest.raises(HubDataError, match=r"attribute column 'Male' holds Value\('string'\)"):
        hub_faces(data, None, ["Male"], preset=None, size=SIDE)
    no_image = datasets.Dataset.from_dict({"picture": ["a.png"], "Male": [1]})
    with pytest.raises(HubDataError, match=r"has no image column .* its columns: picture, Male"):
        hub_faces(no_image, None, ["Male"])


def test_images_are_decoded_lazily_and_a_bad_one_is_named(tmp_path):
    rows = [{"bytes": png(pixels(0)), "path": None}, {"bytes": b"not an image at all", "path": None}]
    data = datasets.Dataset.from_dict({"image": rows, "Male": [1, 0]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "Male": datasets.Value("int64")}))
    faces = hub_faces(data, None, ["Male"], preset=None, size=SIDE)  # builds: no image decoded yet
    assert faces.labels.tolist() == [[1.0], [0.0]]
    torch.testing.assert_close(faces[0][0], expected_image(0), atol=1e-6, rtol=0)
    with pytest.raises(ImageReadError, match=r"image of row 1 of split 'train' .* is not an image PIL can read"):
        faces[1]


def test_hf_data_values_are_parsed(tmp_path):
    assert is_hf_data("hf:org/name") and not is_hf_data("celeba/img") and not is_hf_data(None)
    assert parse_hf_data("hf:org/name") == ("org/name", None)
    assert parse_hf_data("hf:org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hf_data(f"hf:{tmp_path}") == (str(tmp_path), None)
    assert parse_hf_data("hf:./faces@2") == ("./faces@2", None)  # local paths keep their '@'
    for bad, pattern in (("hf:", "name a dataset"), ("hf:org/name@", "nothing after '@'"),
                         ("hf:a/b/c", "neither an existing folder nor a Hub repo id")):
        with pytest.raises(HubDataError, match=pattern):
            parse_hf_data(bad)
    with pytest.raises(HubDataError, match=r"dataset folder .*missing not found"):
        hub_faces(f"hf:{tmp_path / 'missing'}")


def test_an_uncached_repo_offline_is_one_clear_error(tmp_path):
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are read when datasets is imported: a child process, with every cache
    under tmp_path."""
    home = tmp_path / "hf-home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(home),
           "HF_DATASETS_CACHE": str(home / "datasets"), "HF_HUB_CACHE": str(home / "hub"), "OMP_NUM_THREADS": "1"}
    script = ("from lora_patch_adapters.data import HubDataError, hub_faces\n"
              "try:\n    hub_faces('lora-patch-tests/never-cached-faces')\n"
              "except HubDataError as exc:\n    print('ERROR', exc)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=REPO_ROOT, env=env, check=False)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip().splitlines()[-1]
    assert message.startswith("ERROR Hub dataset 'lora-patch-tests/never-cached-faces' is not in the local cache")
    assert str(home / "datasets") in message and "offline mode is on" in message and "download it once" in message
    assert not (home / "datasets" / "lora-patch-tests___never-cached-faces").exists()


def test_without_the_datasets_library_the_error_says_what_to_install(monkeypatch, saved):
    from lora_patch_adapters.data import DatasetsNotInstalledError

    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(DatasetsNotInstalledError, match=r'pip install "lora-patch-adapters\[datasets\]"'):
        hub_faces(saved)


def test_a_dataset_survives_pickling_for_dataloader_workers(saved):
    import pickle

    data = pickle.loads(pickle.dumps(hub_faces(saved, "train", preset=None, size=SIDE)))
    torch.testing.assert_close(data[3][0], expected_image(3), atol=1e-6, rtol=0)
    assert torch.equal(data.labels, expected_labels(range(6), range(5)))


def test_a_local_data_folder_is_read_through_its_builder(tmp_path):
    """An ``imagefolder`` (images + metadata.csv per split folder), prepared into a cache under tmp_path."""
    root = tmp_path / "folder"
    for split, rows in (("train", range(3)), ("test", range(3, 5))):
        (root / split).mkdir(parents=True)
        lines = ["file_name," + ",".join(STARGAN_ATTRIBUTES)]
        for r in rows:
            Image.fromarray(pixels(r)).save(root / split / f"{r}.png")
            lines.append(f"{r}.png," + ",".join(str(2 * flag(r, c) - 1) for c in range(5)))  # CelebA-style -1/1
        (root / split / "metadata.csv").write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    assert sorted(hub_splits(root, cache_dir=cache)) == ["test", "train"]
    data = hub_faces(f"hf:{root}", "test", preset=None, size=SIDE, cache_dir=cache)
    assert len(data) == 2 and torch.equal(data.labels, expected_labels(range(3, 5), range(5)))
    torch.testing.assert_close(data[1][0], expected_image(4), atol=1e-6, rtol=0)
    with pytest.raises(HubDataError, match=r"revision='v1' applies to Hub repos only"):
        hub_faces(root, "test", revision="v1", cache_dir=cache)
