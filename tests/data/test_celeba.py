"""CelebA reader: attribute-file parsing, presets, crops, splits and every error path, on a tiny fake CelebA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from lora_patch_adapters.data.celeba import (
    CELEBA_ATTRIBUTES,
    PRESETS,
    SPLITS,
    CelebA,
    CelebAAttributes,
    make_transform,
    read_attr_file,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
STARGAN_COLUMNS = {"Black_Hair": 8, "Blond_Hair": 9, "Brown_Hair": 11, "Male": 20, "Young": 39}


# ------------------------------------------------------------------------------------------------------ fake CelebA
def rule(row: int, column: int) -> int:
    """The fake file's value at (row, column): 1 when (7 * row + column) is a multiple of 5, else -1."""
    return 1 if (7 * row + column) % 5 == 0 else -1


def row_text(row: int, filename: str) -> str:
    # " -1" / "  1": the real file's alignment, i.e. double spaces before every 1
    return filename + "".join(f" {rule(row, c):>2}" for c in range(40))


def write_attr_file(path: Path, n_rows: int, declared: int | None = None) -> Path:
    cache = {r: "".join(f" {rule(r, c):>2}" for c in range(40)) for r in range(5)}  # rule depends on row % 5
    rows = [f"{r + 1:06d}.jpg{cache[r % 5]}" for r in range(n_rows)]
    header = [str(n_rows if declared is None else declared), " ".join(CELEBA_ATTRIBUTES) + " "]
    path.write_text("\n".join(header + rows) + "\n")
    return path


def bordered(size: tuple[int, int], inner: tuple[int, int, int, int], outside=RED, inside=GREEN) -> Image.Image:
    """A ``size`` (width, height) image of colour ``outside`` with the box ``inner`` (x0, y0, x1, y1) filled."""
    image = Image.new("RGB", size, outside)
    ImageDraw.Draw(image).rectangle(inner, fill=inside)  # inclusive corners
    return image


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, Path]:
    """Six rows, five images on disk (000006.jpg is missing), CelebA's 178x218 aligned size plus odd ones.

    - 000001.jpg (a PNG file named .jpg is fine for PIL): 178x218, red 20-px bands top and bottom, green centre
      178x178 = exactly StarGAN's CenterCrop(178).
    - 000002.jpg: 178x218, green 170x170 centre (x 4..173, y 24..193) = exactly AttGAN's CenterCrop(170), red elsewhere.
    - 000003.jpg: a real JPEG, 178x218, blue with a white ellipse.
    - 000004.jpg: grayscale ("L") 100x120.
    - 000005.jpg: RGBA 64x64.
    """
    image_dir = tmp_path / "img_align_celeba"
    image_dir.mkdir()
    bordered((178, 218), (0, 20, 177, 197)).save(image_dir / "000001.jpg", format="PNG")
    bordered((178, 218), (4, 24, 173, 193)).save(image_dir / "000002.jpg", format="PNG")
    face = Image.new("RGB", (178, 218), BLUE)
    ImageDraw.Draw(face).ellipse((30, 40, 148, 180), fill=(255, 255, 255))
    face.save(image_dir / "000003.jpg", format="JPEG", quality=90)
    Image.new("L", (100, 120), 128).save(image_dir / "000004.jpg", format="PNG")
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(image_dir / "000005.jpg", format="PNG")
    attr = write_attr_file(tmp_path / "list_attr_celeba.txt", 6)
    return {"root": tmp_path, "images": image_dir, "attr": attr}


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict:
    """A 30,005-row attribute file with only three images on disk (rows never read need no file)."""
    root = tmp_path_factory.mktemp("celeba_big")
    image_dir = root / "img_align_celeba"
    image_dir.mkdir()
    for name in ("000001.jpg", "000011.jpg", "029001.jpg"):
        Image.new("RGB", (178, 218), GREEN).save(image_dir / name, format="PNG")
    attr = write_attr_file(root / "list_attr_celeba.txt", 30_005)
    return {"images": image_dir, "attr": attr, "table": read_attr_file(attr)}


def dataset(fake, **kwargs) -> CelebA:
    return CelebA(fake["images"], fake["attr"], **kwargs)


# ------------------------------------------------------------------------------------------------------ attributes
def test_attribute_names_are_the_standard_forty_in_file_order():
    assert len(CELEBA_ATTRIBUTES) == 40 == len(set(CELEBA_ATTRIBUTES))
    assert CELEBA_ATTRIBUTES[:3] == ("5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive")
    assert CELEBA_ATTRIBUTES[-1] == "Young"
    for name, column in STARGAN_COLUMNS.items():
        assert CELEBA_ATTRIBUTES[column] == name
    assert CELEBA_ATTRIBUTES.index("Eyeglasses") == 15 and CELEBA_ATTRIBUTES.index("Smiling") == 31


def test_read_attr_file_parses_header_names_and_values(fake):
    text = fake["attr"].read_text()
    assert "  1" in text and " -1" in text  # the double-space alignment of the real file is exercised
    table = read_attr_file(fake["attr"])
    assert isinstance(table, CelebAAttributes)
    assert table.names == list(CELEBA_ATTRIBUTES)
    assert table.filenames == [f"00000{i}.jpg" for i in range(1, 7)] and len(table) == 6
    assert table.values.shape == (6, 40) and table.values.dtype == torch.float32
    assert set(table.values.unique().tolist()) == {0.0, 1.0}
    # hand-checked: row 0 is 1 exactly at columns 0, 5, ..., 35; -1 elsewhere -> 0
    assert table.values[0].nonzero().flatten().tolist() == [0, 5, 10, 15, 20, 25, 30, 35]
    assert table.values[0, 1] == 0 and table.values[0, 20] == 1  # Arched_Eyebrows -1 -> 0, Male 1 -> 1
    # row 3 (7 * 3 + c = 0 mod 5 -> c = 4 mod 5): Bald, Blond_Hair, ..., Young
    assert table.values[3].nonzero().flatten().tolist() == [4, 9, 14, 19, 24, 29, 34, 39]
    assert table.values.sum().item() == 6 * 8
    assert table.path == fake["attr"]


def test_labels_follow_the_requested_subset_and_order(fake):
    # hand-derived from the rule for rows 0..5 over (Black_Hair, Blond_Hair, Brown_Hair, Male, Young)
    expected = torch.tensor(
        [
            [0, 0, 0, 1, 0],
            [1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 1, 0, 0, 1],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 1, 0],
        ],
        dtype=torch.float32,
    )
    default = dataset(fake)
    assert default.attributes == ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
    assert torch.equal(default.labels, expected)
    assert torch.equal(default[3][1], expected[3])

    reordered = dataset(fake, attributes=("Young", "Black_Hair", "Male"))
    assert torch.equal(reordered.labels, expected[:, [4, 0, 3]])
    assert torch.equal(reordered.labels[1], torch.tensor([0.0, 1, 0]))  # row 1: Black_Hair only
    assert torch.equal(dataset(fake, attributes="Male").labels, expected[:, 3:4])
    everything = dataset(fake, attributes=None)
    assert everything.attributes == CELEBA_ATTRIBUTES
    assert torch.equal(everything.labels, read_attr_file(fake["attr"]).values)


def test_labels_and_filenames_are_copies(fake):
    data = dataset(fake)
    data.labels.fill_(7)
    data.filenames.append("x.jpg")
    data[0][1].fill_(7)
    assert data.labels.max() == 1 and len(data.filenames) == 6


def test_a_parsed_table_can_be_shared(fake):
    table = read_attr_file(fake["attr"])
    data = CelebA(fake["images"], table, start=1, stop=3)
    assert data.filenames == ["000002.jpg", "000003.jpg"]
    assert torch.equal(data.labels, torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]))


# --------------------------------------------------------------------------------------------------- preprocessing
def test_presets_match_the_official_preprocessing():
    assert (PRESETS["stargan"].crop, PRESETS["stargan"].size) == (178, 256)
    assert (PRESETS["attgan"].crop, PRESETS["attgan"].size) == (170, 256)
    assert (PRESETS["hisd"].crop, PRESETS["hisd"].size) == (None, 256)
    assert (PRESETS["testbed"].crop, PRESETS["testbed"].size) == (None, 64)


@pytest.mark.parametrize(
    "preset, index, shape",
    [
        ("stargan", 0, (3, 256, 256)),
        ("attgan", 0, (3, 256, 256)),
        ("stargan", 3, (3, 256, 256)),  # 100x120 smaller than the crop: padded, then resized
        ("hisd", 4, (3, 256, 256)),  # square input, no crop
        ("hisd", 0, (3, 313, 256)),  # no crop: Resize(256) scales the shorter side, 218 * 256 / 178 -> 313
        ("testbed", 4, (3, 64, 64)),
        ("testbed", 2, (3, 78, 64)),
    ],
)
def test_each_preset_gives_its_size_in_the_minus_one_one_range(fake, preset, index, shape):
    image, labels = dataset(fake, preset=preset)[index]
    assert image.shape == shape and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert labels.shape == (5,)


def test_pure_colours_reach_both_ends_of_the_range(fake):
    image, _ = dataset(fake, preset="stargan")[0]  # the crop keeps only the pure green centre
    assert torch.equal(image[0], torch.full((256, 256), -1.0))
    assert torch.equal(image[1], torch.full((256, 256), 1.0))
    assert torch.equal(image[2], torch.full((256, 256), -1.0))


def is_pure_green(image: torch.Tensor) -> bool:
    return torch.allclose(image, torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand_as(image))


def test_center_crop_removes_the_border(fake):
    stargan, attgan, hisd = (dataset(fake, preset=p) for p in ("stargan", "attgan", "hisd"))
    # 000001: red 20-px bands top and bottom -> gone after CenterCrop(178), kept without a crop
    assert is_pure_green(stargan[0][0])
    uncropped = hisd[0][0]
    assert torch.allclose(uncropped[:, 0, :], torch.tensor([1.0, -1.0, -1.0]).view(3, 1))  # top row red
    assert is_pure_green(uncropped[:, 156:157, :])  # the middle row green
    # 000002: red frame around a 170x170 centre -> only AttGAN's CenterCrop(170) removes all of it
    assert is_pure_green(attgan[1][0])
    assert not is_pure_green(stargan[1][0])
    assert stargan[1][0][0, 128, 0] > 0.9  # red on the left edge (columns 0..3 of the original)


def test_explicit_crop_and_size_override_the_preset(fake):
    assert is_pure_green(dataset(fake, preset="hisd", crop=170, size=32)[1][0])
    assert dataset(fake, preset="hisd", crop=170, size=32)[1][0].shape == (3, 32, 32)
    no_crop = dataset(fake, preset="stargan", crop=0)[0][0]  # 0 removes the preset's crop
    assert no_crop.shape == (3, 313, 256) and not is_pure_green(no_crop)
    assert dataset(fake, preset="hisd", size=(40, 24))[0][0].shape == (3, 40, 24)
    transform = make_transform(size=16)  # no preset: explicit numbers only
    assert transform(Image.new("RGB", (32, 32), GREEN)).shape == (3, 16, 16)


def test_images_are_converted_to_rgb(fake):
    data = dataset(fake, preset="testbed")
    gray, _ = data[3]  # "L" image
    assert gray.shape[0] == 3 and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    rgba, _ = data[4]  # RGBA image: composited on white, so the red channel stays at 1
    assert rgba.shape == (3, 64, 64) and torch.allclose(rgba[0], torch.ones(64, 64))
    jpeg, _ = data[2]  # a real JPEG
    assert jpeg.shape == (3, 78, 64) and jpeg[2].mean() > 0.5  # mostly blue or white


def test_a_dataloader_stacks_batches(fake):
    images, labels = next(iter(DataLoader(dataset(fake, stop=3), batch_size=3)))
    assert images.shape == (3, 3, 256, 256) and labels.shape == (3, 5)


def test_make_transform_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown preprocessing preset 'progan'.*stargan"):
        make_transform("progan")
    with pytest.raises(ValueError, match="needs a preset"):
        make_transform()
    with pytest.raises(ValueError, match="crop must be"):
        make_transform("stargan", crop=-5)
    with pytest.raises(ValueError, match="size must be"):
        make_transform("stargan", size="big")
    with pytest.raises(ValueError, match="size must be"):
        make_transform(size=0)


# ------------------------------------------------------------------------------------------------------- row ranges
def test_paper_splits_select_the_conventional_rows(big):
    assert SPLITS == {"paper-train": (0, 1000), "paper-test": (29000, 30000)}
    train = CelebA(big["images"], big["attr"], split="paper-train")
    assert len(train) == 1000 == len(train.labels)
    assert train.filenames[0] == "000001.jpg" and train.filenames[-1] == "001000.jpg"

    test = CelebA(big["images"], big["table"], split="paper-test")
    assert len(test) == 1000 and test.rows == range(29000, 30000)
    assert test.filenames[0] == "029001.jpg" and test.filenames[-1] == "030000.jpg"
    # file row 29000: 7 * 29000 = 0 mod 5, so it equals row 0 -> only Male among StarGAN's five
    assert torch.equal(test.labels[0], torch.tensor([0.0, 0, 0, 1, 0]))
    image, labels = test[0]  # 029001.jpg exists
    assert image.shape == (3, 256, 256) and torch.equal(labels, test.labels[0])
    with pytest.raises(FileNotFoundError, match="029002.jpg"):
        test[1]


def test_start_and_stop_slice_rows(big):
    table = big["table"]
    assert len(CelebA(big["images"], table)) == 30_005
    window = CelebA(big["images"], table, start=10, stop=15)
    assert window.filenames == [f"0000{i}.jpg" for i in range(11, 16)]
    assert torch.equal(window.labels, table.values[10:15][:, list(STARGAN_COLUMNS.values())])
    assert window[0][0].shape == (3, 256, 256)  # 000011.jpg exists
    assert len(CelebA(big["images"], table, start=29_990)) == 15
    assert len(CelebA(big["images"], table, stop=7)) == 7
    assert len(CelebA(big["images"], table, start=5, stop=5)) == 0


def test_negative_and_out_of_range_indices(fake):
    data = dataset(fake, stop=3)
    assert torch.equal(data[-3][1], data[0][1])
    with pytest.raises(IndexError, match="index 3 out of range"):
        data[3]
    with pytest.raises(IndexError):
        data[-4]


# ----------------------------------------------------------------------------------------------------- error paths
def test_missing_attr_file(tmp_path):
    missing = tmp_path / "nope" / "list_attr_celeba.txt"
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt"):
        read_attr_file(missing)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(FileNotFoundError, match=str(missing).replace("\\", "\\\\")):
        CelebA(tmp_path / "imgs", missing)


def good_lines() -> list[str]:
    return ["3", " ".join(CELEBA_ATTRIBUTES)] + [row_text(r, f"00000{r + 1}.jpg") for r in range(3)]


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda lines: [], r"line 1: the file is empty"),
        (lambda lines: ["three"] + lines[1:], r"line 1: expected the number of images \(an integer\), found 'three'"),
        (lambda lines: lines[1:], r"line 1: expected the number of images .*found '5_o_Clock_Shadow"),
        (lambda lines: ["-2"] + lines[1:], r"line 1: expected a non-negative number"),
        (lambda lines: ["4"] + lines[1:], r"line 1: declares 4 images but the file lists 3 image rows"),
        (lambda lines: ["2"] + lines[1:], r"line 1: declares 2 images but the file lists 3"),
        (lambda lines: lines[:1], r"line 2: expected the attribute names"),
        (lambda lines: [lines[0]] + lines[2:], r"line 2: expected the attribute names, found an image row"),
        (lambda lines: [lines[0], lines[1] + " Young"] + lines[2:], r"line 2: attribute name 'Young' appears twice"),
        (lambda lines: lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:], r"line 4: expected a file name followed "
         r"by 40 values .*found 39 value\(s\) after '000002.jpg'"),
        (lambda lines: lines[:4] + [lines[4] + "  1"], r"line 5: .*40 values.*found 41"),
        (lambda lines: lines[:2] + [lines[2].replace(" -1", "  0", 1)] + lines[3:],
         r"line 3: expected -1 or 1, found '0' for attribute 'Arched_Eyebrows' of '000001.jpg'"),
        (lambda lines: lines[:4] + [lines[4][:-2] + " 2"],
         r"line 5: expected -1 or 1, found '2' for attribute 'Young'"),
        (lambda lines: lines[:3] + [lines[3].replace("000002", "000001")] + lines[4:],
         r"line 4: file name '000001.jpg' already listed on line 3"),
    ],
    ids=[
        "empty", "count-not-int", "count-line-missing", "negative-count", "count-too-high", "count-too-low",
        "names-missing", "names-line-missing", "names-repeated", "row-too-short", "row-too-long", "value-0",
        "value-2", "filename-repeated",
    ],
)
def test_malformed_attr_file_is_reported_with_file_and_line(tmp_path, edit, pattern):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("\n".join(good_lines()) + "\n")
    assert len(read_attr_file(path)) == 3  # the unedited file is fine
    path.write_text("\n".join(edit(good_lines())) + "\n")
    with pytest.raises(ValueError, match=pattern) as caught:
        read_attr_file(path)
    assert str(path) in str(caught.value)


def test_blank_lines_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("\r\n".join(good_lines() + ["", ""]))
    table = read_attr_file(path)
    assert len(table) == 3 and table.names[-1] == "Young"


def test_unknown_attribute_suggests_the_closest_names(fake):
    with pytest.raises(ValueError, match=r"unknown attribute 'Blond_Hiar'.*did you mean 'Blond_Hair'.*Available: "
                                         r"5_o_Clock_Shadow") as caught:
        dataset(fake, attributes=("Black_Hair", "Blond_Hiar"))
    assert "Young" in str(caught.value)
    with pytest.raises(ValueError, match="did you mean 'Male'"):
        dataset(fake, attributes=("male",))
    with pytest.raises(ValueError, match="repeated: Male"):
        dataset(fake, attributes=("Male", "Young", "Male"))


def test_missing_image_dir_names_the_path_and_the_layout(fake):
    missing = fake["root"] / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir") as caught:
        CelebA(missing, fake["attr"])
    assert "img_align_celeba/000001.jpg" in str(caught.value)
    with pytest.raises(FileNotFoundError, match=r"000001\.jpg not found.*img_align_celeba: pass that folder"):
        CelebA(fake["root"], fake["attr"])[0]  # the parent of img_align_celeba: noticed on access
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        CelebA(fake["attr"], fake["attr"])


def test_missing_image_file_is_named_on_access(fake):
    data = dataset(fake)  # construction does not touch images
    with pytest.raises(FileNotFoundError, match=r"000006\.jpg not found \(row 5 of .*list_attr_celeba.txt\)"):
        data[5]


def test_split_cannot_be_combined_with_start_or_stop(fake):
    with pytest.raises(ValueError, match="either split='paper-train' or start/stop"):
        dataset(fake, split="paper-train", start=0)
    with pytest.raises(ValueError, match="not both"):
        dataset(fake, split="paper-test", stop=10)


def test_splits_need_enough_rows(fake, tmp_path):
    with pytest.raises(ValueError, match=r"split 'paper-test' needs rows 29000-29999 but .* has only 6 rows"):
        dataset(fake, split="paper-test")
    with pytest.raises(ValueError, match="'paper-train' needs rows 0-999"):
        dataset(fake, split="paper-train")
    short = write_attr_file(tmp_path / "short.txt", 29_999)
    with pytest.raises(ValueError, match="has only 29999 rows"):
        CelebA(fake["images"], short, split="paper-test")
    with pytest.raises(ValueError, match="unknown split 'test'.*paper-train, paper-test"):
        dataset(fake, split="test")


def test_bad_start_stop(fake):
    with pytest.raises(ValueError, match="stop=7 is past the end: .* has 6 rows"):
        dataset(fake, stop=7)
    with pytest.raises(ValueError, match="start=4 is after stop=2"):
        dataset(fake, start=4, stop=2)
    with pytest.raises(ValueError, match="start must be a non-negative int"):
        dataset(fake, start=-1)
    with pytest.raises(ValueError, match="stop must be a non-negative int"):
        dataset(fake, stop=2.5)


# ------------------------------------------------------------------------------------------------------ encodings
def test_utf16_attr_file_with_a_byte_order_mark_reads_like_utf8(tmp_path):
    text = "\n".join(good_lines()) + "\n"
    reference = tmp_path / "utf8.txt"
    reference.write_text(text, encoding="utf-8")
    for encoding in ("utf-16", "utf-16-be"):  # Python's "utf-16" writes a little-endian byte-order mark
        path = tmp_path / f"{encoding}.txt"
        data = text.encode(encoding)
        path.write_bytes(data if encoding == "utf-16" else b"\xfe\xff" + data)
        table = read_attr_file(path)
        assert table.filenames == ["000001.jpg", "000002.jpg", "000003.jpg"] and table.names == list(CELEBA_ATTRIBUTES)
        assert torch.equal(table.values, read_attr_file(reference).values)
    with_bom = tmp_path / "utf8-bom.txt"
    with_bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert torch.equal(read_attr_file(with_bom).values, read_attr_file(reference).values)


def test_latin1_attr_file_names_the_file_line_and_expected_encoding(tmp_path):
    lines = good_lines()
    lines[3] = lines[3].replace("000002.jpg", "caf\u00e9.jpg")
    path = tmp_path / "list_attr_celeba.txt"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(ValueError) as caught:
        read_attr_file(path)
    message = str(caught.value)
    assert not isinstance(caught.value, UnicodeDecodeError)
    assert message.startswith(f"{path}, line 4: byte 0xe9 ") and "is not UTF-8" in message
    assert "must be UTF-8 text" in message and "re-save it as UTF-8" in message
    with pytest.raises(ValueError, match=r"line 4: byte 0xe9"):
        CelebA(tmp_path, path)


def test_utf16_without_byte_order_mark_or_binary_content_is_named(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_bytes(("\n".join(good_lines()) + "\n").encode("utf-16-le"))  # no BOM: valid UTF-8 full of NULs
    with pytest.raises(ValueError, match=r"line 1: NUL characters \(UTF-16 without a byte-order mark") as caught:
        read_attr_file(path)
    assert str(path) in str(caught.value) and "must be UTF-8 text" in str(caught.value)
    path.write_bytes(b"\xff\xfe" + "3\n".encode("utf-16-le") + b"\x00")  # a BOM, then an odd byte count
    with pytest.raises(ValueError, match=r"is not UTF-16; the attribute file must be UTF-8 text") as caught:
        read_attr_file(path)
    assert not isinstance(caught.value, UnicodeDecodeError) and str(path) in str(caught.value)
