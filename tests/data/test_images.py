"""Reading images without surprises: bad files fail at the read with one message naming the file (and the attribute
file's row), decompression bombs are refused from the header, and every common PIL mode reaches [-1, 1] correctly.
Every expected value below is computed by hand from the pixel values written."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from lora_patch_adapters.data import (
    ALPHA_BACKGROUND,
    MAX_IMAGE_PIXELS,
    CelebA,
    ImageReadError,
    make_transform,
    read_image,
    to_rgb,
)
from tests.helpers import write_celeba_attr


def scaled(rgb8) -> torch.Tensor:
    """8-bit values [H, W, 3] -> the [-1, 1] tensor [3, H, W] the pipeline must give: v / 255 * 2 - 1."""
    return torch.tensor(rgb8, dtype=torch.float64).permute(2, 0, 1).float() / 255 * 2 - 1


def noise_jpeg(path: Path, size: int = 48) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return path.read_bytes()


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height 8-bit RGB pixels but whose data holds almost none (a bomb's shape:
    a few bytes that claim a huge image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def one_image_dataset(tmp_path: Path, writer, name: str = "000002.jpg", **kwargs) -> CelebA:
    """A two-row CelebA whose second row (row 1) is the file ``writer(path)`` creates; the first row is fine."""
    image_dir = tmp_path / "img_align_celeba"
    image_dir.mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(image_dir / "000001.jpg", format="PNG")
    writer(image_dir / name)
    attr = write_celeba_attr(tmp_path / "list_attr_celeba.txt", ["000001.jpg", name])
    return CelebA(image_dir, attr, **({"preset": "testbed"} | kwargs))


# ------------------------------------------------------------------------------------------------- bad files
def truncated_jpeg(path: Path) -> None:
    data = noise_jpeg(path)
    path.write_bytes(data[: len(data) // 2])


def corrupted_png(path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 20] = bytes(20)  # zeroed compressed data, stale CRC
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "writer, pattern",
    [
        (truncated_jpeg, r"cannot be decoded \(truncated or corrupted\?\): image file is truncated"),
        (corrupted_png, r"cannot be decoded \(truncated or corrupted\?\)"),
        (lambda path: path.write_text("000001.jpg -1 1 -1\n"), r"is not an image PIL can read"),
        (lambda path: path.write_bytes(b""), r"is not an image PIL can read"),
        (lambda path: path.mkdir(), r"cannot be read: Is a directory"),
    ],
    ids=["truncated-jpeg", "corrupted-png", "text-file", "empty-file", "directory"],
)
def test_a_bad_image_fails_at_the_read_naming_the_file_and_the_row(tmp_path, writer, pattern):
    data = one_image_dataset(tmp_path, writer)
    assert data[0][0].shape == (3, 64, 64)  # the good row still reads
    path = tmp_path / "img_align_celeba" / "000002.jpg"
    with pytest.raises(ImageReadError, match=pattern) as caught:
        data[1]
    message = str(caught.value)
    assert message.startswith(f"image {path} (row 1 of {tmp_path / 'list_attr_celeba.txt'})")
    assert "\n" not in message and caught.value.__suppress_context__  # one line, no chained PIL traceback
    with pytest.raises(ImageReadError, match=pattern):  # the plain reader says the same without a row
        read_image(path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_named(tmp_path):
    data = one_image_dataset(tmp_path, lambda path: Image.new("RGB", (4, 4)).save(path, format="PNG"))
    path = tmp_path / "img_align_celeba" / "000002.jpg"
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match=r"000002\.jpg \(row 1 of .*\) cannot be read: Permission denied"):
            data[1]
    finally:
        path.chmod(0o600)


def test_a_missing_image_is_still_a_file_not_found_error(tmp_path):
    data = one_image_dataset(tmp_path, lambda path: None)
    with pytest.raises(FileNotFoundError, match=r"000002\.jpg not found \(row 1 of "):
        data[1]
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "nowhere.png")


def test_a_truncated_file_is_refused_whatever_the_decoder_would_guess(tmp_path):
    # A JPEG cut in half: PIL fills the missing part with grey only when told to; the read must not return it.
    path = tmp_path / "cut.jpg"
    truncated_jpeg(path)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(ImageReadError, match=r"cut\.jpg cannot be decoded"):
        read_image(path)


# ---------------------------------------------------------------------------------------- decompression bombs
def test_the_pixel_bound_covers_face_datasets_and_is_below_pils_own():
    assert 1024 * 1024 <= MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS  # CelebA-HQ fits; PIL's limit only warns


def test_an_image_over_the_bound_is_refused_before_its_pixels_are_decoded(tmp_path, monkeypatch):
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original(self))
    side = 4096
    assert side * side == MAX_IMAGE_PIXELS
    bomb = png_header(tmp_path / "bomb.png", side + 1, side)  # 4096 pixels over the bound, 100 bytes on disk
    with pytest.raises(ImageReadError, match=rf"bomb\.png: refused before decoding, its header declares "
                                             rf"4097x4096 = {4097 * 4096} pixels, more than max_pixels=") as caught:
        read_image(bomb)
    assert "MAX_IMAGE_PIXELS" in str(caught.value)
    assert decoded == []  # refused from the header alone
    # exactly at the bound the header passes, the decoder runs and finds the data missing
    with pytest.raises(ImageReadError, match="cannot be decoded"):
        read_image(png_header(tmp_path / "at_bound.png", side, side))
    assert len(decoded) == 1


def test_max_pixels_is_a_parameter_and_the_dataset_refuses_bombs_with_the_row(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    assert read_image(path, max_pixels=64).size == (8, 8)
    with pytest.raises(ImageReadError, match=r"8x8 = 64 pixels, more than max_pixels=63"):
        read_image(path, max_pixels=63)
    data = one_image_dataset(tmp_path / "d", lambda p: png_header(p, 5000, 5000))
    with pytest.raises(ImageReadError, match=r"000002\.jpg \(row 1 of .*\): refused before decoding"):
        data[1]


def test_pils_own_bomb_error_becomes_a_refusal(tmp_path):
    huge = png_header(tmp_path / "huge.png", 100_000, 100_000)  # 1e10 pixels: PIL itself raises on open
    with pytest.raises(ImageReadError, match=r"huge\.png is refused: .*decompression bomb"):
        read_image(huge)


# --------------------------------------------------------------------------------------------------- conversions
def saved(tmp_path: Path, image: Image.Image, name: str = "image.png", **save_args) -> Path:
    path = tmp_path / name
    image.save(path, format="PNG", **save_args)
    return path


def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path):
    values = np.array([[0, 257, 32896, 65535], [1000, 12850, 50000, 65534]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    path = saved(tmp_path, image)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")  # PIL reads the file back as 16 bit
    # exact for multiples of 257 (0, 1, 128, 255 of 8 bit); within half an 8-bit step otherwise
    assert np.asarray(read_image(path))[0, :, 0].tolist() == [0, 1, 128, 255]
    tensor = make_transform(size=(2, 4))(read_image(path))
    expected = torch.from_numpy(values.astype(np.float64) / 65535 * 2 - 1).float()
    for channel in range(3):
        assert torch.allclose(tensor[channel], expected, atol=1 / 255 + 1e-6)
    assert tensor[0, 0, 2] == pytest.approx(128 / 255 * 2 - 1, abs=1e-6)  # mid grey, not white
    # the dataset gives the same tensor
    data = one_image_dataset(tmp_path / "d", lambda p: image.save(p, format="PNG"))
    data.transform = make_transform(size=(2, 4))
    assert torch.equal(data[1][0], tensor)


def test_32_bit_integer_images_use_the_16_bit_scale_and_refuse_other_ranges():
    image = Image.fromarray(np.array([[0, 65535, 514]], dtype=np.int32))
    assert image.mode == "I"
    assert np.asarray(to_rgb(image))[0].tolist() == [[0, 0, 0], [255, 255, 255], [2, 2, 2]]
    with pytest.raises(ImageReadError, match=r"mode 'I'.* values -1\.\.70000 outside 16-bit 0\.\.65535"):
        to_rgb(Image.fromarray(np.array([[-1, 70000]], dtype=np.int32)))
    with pytest.raises(ImageReadError, match="mode 'F'"):
        to_rgb(Image.fromarray(np.array([[0.5]], dtype=np.float32)))


def test_greyscale_is_replicated(tmp_path):
    path = saved(tmp_path, Image.fromarray(np.array([[0, 64], [200, 255]], dtype=np.uint8)))
    grey = [[0, 64], [200, 255]]
    assert torch.allclose(make_transform(size=(2, 2))(read_image(path)),
                          scaled([[[v] * 3 for v in row] for row in grey]), atol=1e-6)


def palette_image(transparent_index: int | None = None) -> Image.Image:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 0, 255, 10, 200, 30] + [0] * (768 - 9))
    for x in range(3):
        image.putpixel((x, 0), x)
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


def test_palette_images_map_through_the_palette_and_transparent_entries_become_the_background(tmp_path):
    opaque = saved(tmp_path, palette_image(), "opaque.png")
    assert np.asarray(read_image(opaque)).tolist() == [[[255, 0, 0], [0, 0, 255], [10, 200, 30]]]
    transparent = saved(tmp_path, palette_image(1), "transparent.png", transparency=1)
    with Image.open(transparent) as reopened:
        assert reopened.mode == "P" and reopened.info.get("transparency") == 1
    # the blue entry is transparent: it shows the white background, not blue
    assert ALPHA_BACKGROUND == (255, 255, 255)
    assert np.asarray(read_image(transparent)).tolist() == [[[255, 0, 0], [255, 255, 255], [10, 200, 30]]]
    tensor = make_transform(size=(1, 3))(read_image(transparent))
    assert torch.allclose(tensor[:, 0, 1], torch.ones(3))


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 128], [10, 20, 30, 255], [0, 0, 0, 0], [100, 50, 200, 51]]], dtype=np.uint8)
    path = saved(tmp_path, Image.fromarray(rgba, mode="RGBA"))
    # a * c + (1 - a) * 255 with a = alpha / 255, by hand:
    #   (255, 0, 0) at 128/255 -> (255, 127, 127); opaque stays; fully transparent -> white;
    #   (100, 50, 200) at 51/255 = 0.2 -> (0.2*100 + 204, 0.2*50 + 204, 0.2*200 + 204) = (224, 214, 244)
    expected = [[[255, 127, 127], [10, 20, 30], [255, 255, 255], [224, 214, 244]]]
    assert np.asarray(read_image(path)).tolist() == expected
    assert torch.allclose(make_transform(size=(1, 4))(read_image(path)), scaled(expected), atol=1e-6)


def test_grey_with_alpha_and_a_transparent_colour_key(tmp_path):
    la = np.array([[[100, 64], [30, 255]]], dtype=np.uint8)  # grey 100 at alpha 64, grey 30 opaque
    path = saved(tmp_path, Image.fromarray(la, mode="LA"), "la.png")
    # 100 * 64/255 + 255 * 191/255 = 25.10 + 191 = 216.10 -> 216
    assert np.asarray(read_image(path)).tolist() == [[[216, 216, 216], [30, 30, 30]]]
    keyed = Image.new("RGB", (2, 1), (1, 2, 3))
    keyed.putpixel((1, 0), (40, 50, 60))
    path = saved(tmp_path, keyed, "keyed.png", transparency=(1, 2, 3))
    assert np.asarray(read_image(path)).tolist() == [[[255, 255, 255], [40, 50, 60]]]


def test_rgb_images_are_returned_unchanged_and_usable_after_the_file_is_closed(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = saved(tmp_path, Image.fromarray(pixels))
    image = read_image(path)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels)
    assert to_rgb(image) is image
