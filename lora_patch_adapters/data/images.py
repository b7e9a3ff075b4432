"""Reading one image file safely: bounded before decoding (decompression bombs), decoded at once (a bad file fails
where it is read, naming it), and converted to 8-bit RGB from any common mode (16-bit, grey, palette, alpha)."""

from __future__ import annotations

import os
import warnings
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._checks import one_line

__all__ = ["ALPHA_BACKGROUND", "MAX_IMAGE_PIXELS", "ImageReadError", "read_image", "to_rgb"]

PathLike = Union[str, os.PathLike]

#: Largest image accepted, in pixels (width x height), checked from the file's header before any pixel is decoded.
#: 4096 x 4096 = 16.8 M pixels (48 MiB as 8-bit RGB): 16 CelebA-HQ images (1024 x 1024), 430 aligned CelebA images
#: (178 x 218), and a fifth of PIL's own warning threshold (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 M, which only
#: warns). A file declaring more is a decompression bomb (a few KB that decode to GBs), not a face photo; every
#: preset resizes to 256 or less anyway. Raise it (``read_image(..., max_pixels=...)``) for larger sources.
MAX_IMAGE_PIXELS: int = 4096 * 4096

#: Colour (8-bit RGB) that transparent pixels are composited on: white, as viewers and browsers show transparency.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)


class ImageReadError(ValueError):
    """An image file cannot be read (a directory, no permission), is not an image, is truncated or corrupted, has a
    mode with no defined RGB meaning, or is refused (more than :data:`MAX_IMAGE_PIXELS` pixels). The message names
    the file and, from :class:`CelebA`, the row of the attribute file."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB version of a PIL image of any common mode (``image`` itself when it already is one).

    - ``RGB``; ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``: PIL's conversion (grey replicated over R, G, B).
    - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; ``I`` with values in 0..65535): ``v -> round(v / 257)``,
      so 0 -> 0 and 65535 -> 255 (PIL's own conversion clips at 255 and turns most of the image white).
    - transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, or a transparent colour of a ``P``/``L``/``RGB`` image):
      composited over :data:`ALPHA_BACKGROUND` (white), ``round(a * c + (1 - a) * 255)`` with ``a`` in [0, 1].

    Raises:
        ImageReadError: ``F`` (floating point: no defined range), ``I`` values outside 0..65535, or a mode PIL cannot
            convert.
    """
    mode, transparent = image.mode, image.info.get("transparency")
    if mode == "RGB" and transparent is None:
        return image
    if mode == "F":
        raise ImageReadError("a floating-point image (mode 'F') has no defined value range; save it as 8 or 16 bit")
    if mode.startswith("I"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(f"a 32-bit integer image (mode {mode!r}) with values {values.min()}..{values.max()} "
                                 f"outside 16-bit 0..65535 has no defined range; save it as 8 or 16 bit")
        grey = np.rint(values / 257.0).astype(np.uint8)
        if isinstance(transparent, int):  # a 16-bit grey value marked transparent
            rgba = np.stack([grey, grey, grey, np.where(values == transparent, 0, 255).astype(np.uint8)], axis=-1)
            return _composite(rgba)
        return Image.fromarray(grey).convert("RGB")
    try:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or transparent is not None:  # not "LAB": its A is a colour
            return _composite(np.asarray(image.convert("RGBA")))
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageReadError(f"cannot convert a mode {mode!r} image to RGB: {one_line(exc, 200)}") from None


def _composite(rgba: np.ndarray) -> Image.Image:
    """``[H, W, 4]`` uint8 RGBA -> RGB over :data:`ALPHA_BACKGROUND`."""
    alpha = rgba[..., 3:].astype(np.float64) / 255.0
    background = np.asarray(ALPHA_BACKGROUND, dtype=np.float64)
    rgb = alpha * rgba[..., :3].astype(np.float64) + (1.0 - alpha) * background
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc, 200) or type(exc).__name__


def read_image(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS, context: str = "") -> Image.Image:
    """Read and fully decode an image file as an 8-bit RGB PIL image (conversions: :func:`to_rgb`).

    The header's size is checked against ``max_pixels`` before any pixel is decoded, then the whole file is decoded
    here: a bad file fails at this call, not later inside a transform or a DataLoader worker.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels (width x height) than this (:data:`MAX_IMAGE_PIXELS`).
        context: where the file comes from, added to messages (e.g. ``"row 3 of list_attr_celeba.txt"``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageReadError: unreadable, not an image, truncated or corrupted (a truncated file is refused unless
            ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` was set), too many pixels, or an unconvertible mode; one line
            naming the file.
    """
    label = f"image {os.fspath(path)}" + (f" ({context})" if context else "")
    try:
        with warnings.catch_warnings():  # PIL warns above its own limit; ours is lower and refuses below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # unknown formats, bad headers, OS errors, PIL's own bomb limit: many types
        what = "is not an image PIL can read" if isinstance(exc, UnidentifiedImageError) else "cannot be read"
        what = "is refused" if isinstance(exc, Image.DecompressionBombError) else what
        raise ImageReadError(f"{label} {what}: {_reason(exc)}") from None
    with handle:
        width, height = handle.size
        if width * height > max_pixels:
            raise ImageReadError(
                f"{label}: refused before decoding, its header declares {width}x{height} = {width * height} pixels, "
                f"more than max_pixels={max_pixels} (MAX_IMAGE_PIXELS; a decompression bomb?)"
            )
        try:
            handle.load()
            rgb = to_rgb(handle)
            return rgb.copy() if rgb is handle else rgb  # closing the file frees the handle's pixels
        except ImageReadError as exc:
            raise ImageReadError(f"{label}: {exc}") from None
        except Exception as exc:
            raise ImageReadError(f"{label} cannot be decoded (truncated or corrupted?): {_reason(exc)}") from None


