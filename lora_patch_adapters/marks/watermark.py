"""Visible warning watermarks: the training target of a *defensive patch*, and a metric of whether it shows.

A defensive patch is trained so that the patched face-editing generator stamps a visible warning on every edit.
Images follow the package convention: float tensors [N, 3, H, W] in [-1, 1]. For a clean edit ``y_ref`` of the base
generator the training target is::

    target = clamp(y_ref + strength * W, -1, 1)

where ``W`` [1, 3, H, W] is the warning *pattern*: ``W = alpha * (2 * rgb - 1)`` inside the mark (``rgb``, ``alpha``
in [0, 1] are the mark's straight colour and opacity) and exactly 0 everywhere else, so the background of the edit is
untouched and the mark pushes its pixels towards the mark's colour (with the default ``strength=2.0`` any pixel is
driven all the way to a saturated red, whatever the face underneath).

* :func:`render_warning` draws the default mark with PIL: a filled warning triangle with a white exclamation mark and,
  when there is room for legible text, a caption (``"AI-GENERATED"``) below it. It is rendered at 4x resolution and
  box-downsampled, so it looks sensible from ~16 px wide (the 64x64 testbed) up to hundreds of pixels.
* :func:`load_warning_image` loads a user-supplied mark (a PNG with alpha, or an opaque image with alpha 1).
* :class:`Watermark` places a mark in an image (``pattern``) and builds the training target (``target``).

Whether the warning shows on a patched generator's outputs is measured by
:mod:`lora_patch_adapters.evaluation.watermark`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .._checks import check_images, one_line
from ..data.images import MAX_IMAGE_PIXELS

__all__ = [
    "POSITIONS",
    "Watermark",
    "load_warning_image",
    "render_warning",
    "save_preview",
]

#: Named positions accepted by :class:`Watermark` (an (x, y) pair of fractions is accepted too).
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")

#: What ``Watermark(vary=...)`` can vary per output, and the values it cycles through with the target condition.
VARIATIONS = ("position", "opacity")
VARIED_POSITIONS = ("bottom-right", "top-left", "top-right", "bottom-left")
VARIED_OPACITIES = (1.0, 0.6)

DEFAULT_COLOUR = (220, 20, 20)

#: The caption is drawn only when its letters would be at least this many output pixels tall.
MIN_TEXT_HEIGHT_PX = 5

_CACHE_SIZE = 16

PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _size_hw(size: object) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        h, w = size
    else:
        raise ValueError(f"size must be an int or an (h, w) pair of positive ints, got {size!r}.")
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}.")
    return int(h), int(w)


def _check_colour(colour: object) -> tuple[int, int, int]:
    ok = (
        isinstance(colour, (tuple, list))
        and len(colour) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)
    )
    if not ok:
        raise ValueError(f"colour must be an (r, g, b) triple of ints in [0, 255], got {colour!r}.")
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


def _check_font_path(font: PathLike | None) -> str | None:
    if font is None:
        return None
    path = os.fspath(font)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"font file not found: {path}")
    return path


def _load_font(font: str | None, size: int) -> Any:
    """A font at ``size`` px: the given .ttf/.otf, else Pillow's default (scalable since Pillow 10.1)."""
    if font is None:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font, scaled by resizing the rendered text
            return ImageFont.load_default()
    try:
        return ImageFont.truetype(font, size)
    except OSError as exc:
        raise ValueError(f"cannot load font {font}: {one_line(exc) or type(exc).__name__}") from None


def _render_text(text: str, font: str | None, max_w: float, max_h: float) -> Image.Image | None:
    """The text's ink as an 'L' image, scaled (aspect kept) to fit max_w x max_h; None when it has no ink."""
    if max_w < 1 or max_h < 1:
        return None
    reference = 100
    left, top, right, bottom = _load_font(font, reference).getbbox(text)
    if right <= left or bottom <= top:
        return None
    scale = min(max_w / (right - left), max_h / (bottom - top))
    sized = _load_font(font, max(4, int(reference * scale)))
    left, top, right, bottom = sized.getbbox(text)
    image = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(image).text((2 - left, 2 - top), text, fill=255, font=sized)
    box = image.getbbox()
    if box is None:
        return None
    image = image.crop(box)
    fit = min(max_w / image.width, max_h / image.height)
    new_size = (max(1, int(image.width * fit)), max(1, int(image.height * fit)))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    return image


def _draw_sign(draw: ImageDraw.ImageDraw, cx: float, top: float, tw: float, th: float, colour: tuple) -> None:
    """A filled triangle (apex up) with a white exclamation mark, in supersampled pixel coordinates."""
    bottom = top + th
    draw.polygon([(cx - tw / 2, bottom), (cx + tw / 2, bottom), (cx, top)], fill=(*colour, 255))
    white = (255, 255, 255, 255)
    bar_top, bar_bottom = top + 0.30 * th, top + 0.68 * th
    half_top, half_bottom = 0.065 * tw, 0.04 * tw
    draw.polygon(
        [
            (cx - half_top, bar_top),
            (cx + half_top, bar_top),
            (cx + half_bottom, bar_bottom),
            (cx - half_bottom, bar_bottom),
        ],
        fill=white,
    )
    radius, dot_y = 0.06 * tw, top + 0.80 * th
    draw.ellipse([cx - radius, dot_y - radius, cx + radius, dot_y + radius], fill=white)


def render_warning(
    size: int | tuple[int, int],
    text: str = "AI-GENERATED",
    sign: bool = True,
    colour: tuple[int, int, int] = DEFAULT_COLOUR,
    font: PathLike | None = None,
) -> torch.Tensor:
    """Draw a warning mark; returns a float tensor [4, h, w]: straight RGB in [0, 1] and alpha in [0, 1].

    ``size`` is an int (square) or ``(h, w)``. The mark is a filled triangle of ``colour`` with a white exclamation
    mark (``sign=True``) and, when ``text`` is non-empty and its letters would be at least ``MIN_TEXT_HEIGHT_PX``
    output pixels tall, ``text`` in ``colour`` below it, scaled to the width (at most ~22% of the height). With
    ``sign=False`` the text alone fills the canvas. ``font`` is a path to a .ttf/.otf (default: Pillow's built-in
    font). The content is centred; the background is alpha 0 (and RGB 0). Drawn at 4x resolution and box-filtered
    down, so edges are antialiased; the result is deterministic.
    """
    h, w = _size_hw(size)
    colour = _check_colour(colour)
    font_path = _check_font_path(font)
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}.")
    if not sign and not text.strip():
        raise ValueError("nothing to draw: pass sign=True or a non-empty text.")

    factor = 4 if max(h, w) <= 1024 else (2 if max(h, w) <= 2048 else 1)
    hs, ws = h * factor, w * factor
    canvas = Image.new("RGBA", (ws, hs), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    pad = 0.0  # the mark spans the full width: Watermark.size is then the visible width
    avail_w, avail_h = ws - 2 * pad, hs - 2 * pad

    caption = None
    if text.strip():
        caption = _render_text(text, font_path, avail_w, 0.22 * avail_h if sign else avail_h)
        if sign and caption is not None and caption.height < MIN_TEXT_HEIGHT_PX * factor:
            caption = None  # no room for legible text: the sign alone
    text_h = caption.height if caption is not None else 0
    gap = round(0.35 * text_h) if (sign and caption is not None) else 0

    tri_h = 0.0
    tri_w = 0.0
    if sign:
        tri_h = min(avail_h - text_h - gap, avail_w * math.sqrt(3) / 2)
        tri_w = tri_h * 2 / math.sqrt(3)
    group_h = tri_h + gap + text_h
    y = pad + (avail_h - group_h) / 2
    if sign and tri_h > 0:
        _draw_sign(draw, ws / 2, y, tri_w, tri_h, colour)
    if caption is not None:
        layer = Image.new("RGBA", caption.size, (*colour, 0))
        layer.putalpha(caption)
        canvas.alpha_composite(layer, dest=(round((ws - caption.width) / 2), round(y + tri_h + gap)))

    rgba = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    if factor > 1:  # box-filter down in premultiplied space, in float (no 8-bit rounding of the edges)
        alpha = rgba[3:]
        pooled = F.avg_pool2d(torch.cat([rgba[:3] * alpha, alpha])[None], factor)[0]
        rgba = _unpremultiply(pooled[:3], pooled[3:])
    return rgba


def _unpremultiply(rgb_p: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    rgb = torch.where(alpha > 0, rgb_p / alpha.clamp_min(1e-12), torch.zeros_like(rgb_p))
    return torch.cat([rgb.clamp(0, 1), alpha.clamp(0, 1)])


def load_warning_image(path: PathLike) -> torch.Tensor:
    """Load a user mark as a float tensor [4, h, w] in [0, 1]: RGB and alpha (alpha 1 for opaque images).

    Images with an alpha channel or a transparent palette colour keep their transparency. A missing file raises
    ``FileNotFoundError`` and an unreadable one ``ValueError``, each a one-line message naming the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"watermark image not found: {path}")
    try:
        with Image.open(path) as image:
            if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:  # from the header, before decoding any pixel
                raise ValueError(f"its header declares {image.size[0]}x{image.size[1]} pixels, more than "
                                 f"MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS} (a decompression bomb?)")
            image.load()
            has_alpha = "A" in image.getbands() or "transparency" in image.info
            converted = image.convert("RGBA" if has_alpha else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read watermark image {path}: {one_line(exc) or type(exc).__name__}") from None
    array = np.asarray(converted, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if not has_alpha:
        tensor = torch.cat([tensor, torch.ones_like(tensor[:1])])
    return tensor


# ----------------------------------------------------------------------------------------------------------------
# Placement and target


def _check_mark_tensor(image: object) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor [4, h, w] (RGBA in [0, 1]) or None, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] not in (3, 4) or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image must be shaped [4, h, w] (RGBA, channels first), got {tuple(image.shape)}.")
    if not image.dtype.is_floating_point:
        raise ValueError(f"image must be floating point in [0, 1], got {image.dtype}; use x.float() / 255.")
    image = image.detach().to("cpu", torch.float32)
    low, high = image.min().item(), image.max().item()
    if not (math.isfinite(low) and math.isfinite(high)) or low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"image values must lie in [0, 1], got [{low:.4f}, {high:.4f}].")
    image = image.clamp(0, 1)
    if image.shape[0] == 3:
        image = torch.cat([image, torch.ones_like(image[:1])])
    return image


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(eq=False)
class Watermark:
    """A warning mark placed in the generator's output, and the defensive-patch training target.

    Fields: ``image`` -- the mark as [4, h, w] RGBA in [0, 1] (None: :func:`render_warning` with ``text`` and
    ``colour``, rendered directly at the placed size); ``image_path`` -- a file to load the mark from when ``image`` is
    None (recorded by :meth:`to_dict`); ``position`` -- one of :data:`POSITIONS` or ``(x, y)`` fractions in [0, 1] of
    the mark's top-left corner (clamped so the mark stays inside the image); ``size`` -- the mark's width as a fraction
    of the image width (aspect kept; shrunk if it would be taller than the image); ``margin`` -- the gap to the image
    border for named positions, as a fraction of the width (x) and height (y); ``strength`` -- the multiplier of the
    pattern in the target; ``vary`` -- per-output variation, so that no single region holds the mark on every edit:
    ``"position"`` moves the mark to another corner (:data:`VARIED_POSITIONS`, from ``position`` on) and
    ``"opacity"`` scales it (:data:`VARIED_OPACITIES`) with the index of the edit's target condition (the *slot*:
    the generator sees the condition, so it can learn where to stamp). Methods take ``slot`` / ``slots`` for that;
    without ``vary`` every slot is placed alike.
    """

    image: torch.Tensor | None = field(default=None, repr=False)
    text: str = "AI-GENERATED"
    position: str | tuple[float, float] = "bottom-right"
    size: float = 0.35
    margin: float = 0.04
    strength: float = 2.0
    image_path: str | None = None
    colour: tuple[int, int, int] = DEFAULT_COLOUR
    vary: tuple[str, ...] = ()
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"text must be a string, got {type(self.text).__name__}.")
        if isinstance(self.position, str):
            if self.position not in POSITIONS:
                raise ValueError(
                    f"unknown position {self.position!r}; choose one of {', '.join(POSITIONS)} "
                    "or an (x, y) pair of fractions in [0, 1]."
                )
        elif (
            isinstance(self.position, (tuple, list))
            and len(self.position) == 2
            and all(_is_number(v) and 0 <= v <= 1 for v in self.position)
        ):
            self.position = (float(self.position[0]), float(self.position[1]))
        else:
            raise ValueError(
                f"position must be one of {', '.join(POSITIONS)} or an (x, y) pair of fractions in [0, 1], "
                f"got {self.position!r}."
            )
        if not _is_number(self.size) or not 0 < self.size <= 1:
            raise ValueError(f"size must be a fraction of the image width in (0, 1], got {self.size!r}.")
        if not _is_number(self.margin) or not 0 <= self.margin < 0.5:
            raise ValueError(f"margin must be a fraction in [0, 0.5), got {self.margin!r}.")
        if not _is_number(self.strength) or self.strength <= 0:
            raise ValueError(f"strength must be a finite number > 0, got {self.strength!r}.")
        self.size, self.margin, self.strength = float(self.size), float(self.margin), float(self.strength)
        self.colour = _check_colour(self.colour)
        if isinstance(self.vary, str) or not all(v in VARIATIONS for v in self.vary) or len(set(self.vary)) < len(
                tuple(self.vary)):
            raise ValueError(f"vary must be a list of distinct values among {list(VARIATIONS)}, got {self.vary!r}.")
        self.vary = tuple(v for v in VARIATIONS if v in self.vary)
        if "position" in self.vary and self.position not in VARIED_POSITIONS:
            raise ValueError(f"vary=['position'] cycles the corners {list(VARIED_POSITIONS)}: start from one of them, "
                             f"not position={self.position!r}.")
        if self.image_path is not None:
            self.image_path = os.fspath(self.image_path)
        if self.image is not None:
            self.image = _check_mark_tensor(self.image)
        elif self.image_path is not None:
            self.image = load_warning_image(self.image_path)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Watermark):
            return NotImplemented
        if (self.image is None) != (other.image is None):
            return False
        if self.image is not None and not torch.equal(self.image, other.image):
            return False
        keys = ("text", "position", "size", "margin", "strength", "image_path", "colour", "vary")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    # -- placement ------------------------------------------------------------------------------------------------

    def _mark(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mark at its placed size: premultiplied RGB [3, h, w] and alpha [1, h, w] (float32, CPU)."""
        mark_w = max(1, round(self.size * width))
        if self.image is None:
            rgba = render_warning((min(mark_w, height), mark_w), text=self.text, colour=self.colour)
            rows = torch.nonzero(rgba[3].amax(dim=1) > 0).flatten()
            if rows.numel():  # trim fully transparent rows so the mark sits against the margins
                rgba = rgba[:, rows[0] : rows[-1] + 1]
            alpha = rgba[3:]
            return rgba[:3] * alpha, alpha
        src_h, src_w = self.image.shape[1:]
        mark_h = max(1, round(mark_w * src_h / src_w))
        if mark_h > height:
            mark_w, mark_h = max(1, round(mark_w * height / mark_h)), height
        alpha = self.image[3:]
        premultiplied = torch.cat([self.image[:3] * alpha, alpha])[None]
        if (mark_h, mark_w) != (src_h, src_w):
            premultiplied = F.interpolate(
                premultiplied, size=(mark_h, mark_w), mode="bilinear", align_corners=False, antialias=True
            )
        premultiplied = premultiplied[0].clamp(0, 1)
        return premultiplied[:3].minimum(premultiplied[3:]), premultiplied[3:]

    def placement(self, slot: int = 0) -> tuple[str | tuple[float, float], float]:
        """(position, opacity) of the mark on an edit under target condition ``slot`` (see ``vary``)."""
        if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
            raise ValueError(f"slot must be an int >= 0 (a target condition's index), got {slot!r}.")
        position, opacity = self.position, 1.0
        if "position" in self.vary:
            start = VARIED_POSITIONS.index(self.position)
            position = VARIED_POSITIONS[(start + slot) % len(VARIED_POSITIONS)]
        if "opacity" in self.vary:
            period = len(VARIED_POSITIONS) if "position" in self.vary else 1
            opacity = VARIED_OPACITIES[(slot // period) % len(VARIED_OPACITIES)]
        return position, opacity

    def _origin(self, height: int, width: int, mark_h: int, mark_w: int,
                position: str | tuple[float, float]) -> tuple[int, int]:
        """Top-left corner (y, x) of the mark at ``position``, kept inside the image."""
        mx, my = round(self.margin * width), round(self.margin * height)
        if isinstance(position, tuple):
            x, y = round(position[0] * width), round(position[1] * height)
        else:
            vertical, _, horizontal = position.partition("-")
            if position == "center":
                x, y = (width - mark_w) // 2, (height - mark_h) // 2
            else:
                y = my if vertical == "top" else height - my - mark_h
                x = mx if horizontal == "left" else width - mx - mark_w
        return min(max(y, 0), height - mark_h), min(max(x, 0), width - mark_w)

    def pattern(
        self,
        height: int,
        width: int,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        slot: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The placed pattern ``W`` [1, 3, H, W] in [-1, 1] (``opacity * alpha * (2 * rgb - 1)`` in the mark, exactly
        0 elsewhere) and its ``mask`` [1, 1, H, W] in {0, 1} (mark alpha > 0.5), for an edit under target condition
        ``slot`` (:meth:`placement`). Cached per (H, W, device, dtype, placement) and settings; treat the returned
        tensors as read-only. ``dtype`` defaults to float32, ``device`` to the CPU."""
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype if dtype is not None else torch.float32
        image_key = None if self.image is None else (id(self.image), self.image._version)
        position, opacity = self.placement(slot)
        key = (
            height,
            width,
            str(device),
            dtype,
            self.text,
            position,
            opacity,
            self.size,
            self.margin,
            self.colour,
            image_key,
        )
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        rgb_p, alpha = self._mark(height, width)
        mark_h, mark_w = alpha.shape[1:]
        y0, x0 = self._origin(height, width, mark_h, mark_w, position)
        pattern = torch.zeros(1, 3, height, width)
        mask = torch.zeros(1, 1, height, width)
        pattern[0, :, y0 : y0 + mark_h, x0 : x0 + mark_w] = (2 * rgb_p - alpha).clamp(-1, 1) * opacity
        mask[0, :, y0 : y0 + mark_h, x0 : x0 + mark_w] = (alpha > 0.5).float()
        result = (pattern.to(device=device, dtype=dtype), mask.to(device=device, dtype=dtype))
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = result
        return result

    def footprint(self, height: int, width: int, margin: int = 0, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None, slot: int = 0) -> torch.Tensor:
        """Every pixel the mark changes in the target (``pattern != 0``: its soft edge included) under target
        condition ``slot``, grown by ``margin`` pixels: [1, 1, H, W] in {0, 1}. The region a removal has to repaint;
        its complement is "outside the mark"."""
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ValueError(f"margin must be an int >= 0 (pixels), got {margin!r}.")
        pattern, _ = self.pattern(height, width, device, dtype, slot)
        region = (pattern.abs().amax(dim=1, keepdim=True) > 0).to(pattern.dtype)
        if margin:
            region = F.max_pool2d(region, 2 * margin + 1, stride=1, padding=margin)
        return region

    def rows(self, height: int, width: int, slots: Sequence[int] | None, what: str = "pattern", margin: int = 0,
             device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One ``what`` ("pattern": [N, 3, H, W]; "mask" or "footprint": [N, 1, H, W]) per row of a batch whose row i
        is an edit under target condition ``slots[i]``; ``slots`` None (or a mark without ``vary``): the slot-0 tensor
        [1, ...], which broadcasts over any batch."""
        def one(slot: int) -> torch.Tensor:
            if what == "footprint":
                return self.footprint(height, width, margin, device, dtype, slot)
            return self.pattern(height, width, device, dtype, slot)[0 if what == "pattern" else 1]

        if slots is None or not self.vary:
            return one(0)
        return torch.cat([one(int(slot)) for slot in slots])

    def target(self, y_ref: torch.Tensor, slots: Sequence[int] | None = None) -> torch.Tensor:
        """The training target ``clamp(y_ref + strength * W, -1, 1)`` for clean edits ``y_ref`` [N, 3, H, W] in
        [-1, 1], row i an edit under target condition ``slots[i]`` (None: slot 0 for every row); same shape, device
        and dtype as ``y_ref``."""
        y_ref = check_images(y_ref, "y_ref")
        if slots is not None and len(slots) != y_ref.shape[0]:
            raise ValueError(f"slots names {len(slots)} target conditions for {y_ref.shape[0]} images: one per row.")
        pattern = self.rows(y_ref.shape[2], y_ref.shape[3], slots, device=y_ref.device, dtype=y_ref.dtype)
        return (y_ref + self.strength * pattern).clamp(-1, 1)

    # -- serialisation --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings. A mark given as an in-memory tensor (no ``image_path``) cannot be recorded: save it
        as a PNG and pass ``image_path`` instead (raises ``ValueError``)."""
        if self.image is not None and self.image_path is None:
            raise ValueError(
                "this Watermark's image is an in-memory tensor and cannot be serialised; save it as a PNG "
                "and construct the Watermark with image_path=... instead."
            )
        return {
            "text": self.text,
            "position": list(self.position) if isinstance(self.position, tuple) else self.position,
            "size": self.size,
            "margin": self.margin,
            "strength": self.strength,
            "image_path": self.image_path,
            "colour": list(self.colour),
            **({"vary": list(self.vary)} if self.vary else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Watermark:
        """Inverse of :meth:`to_dict` (the mark is reloaded from ``image_path`` if one is recorded)."""
        if not isinstance(data, dict):
            raise TypeError(f"Watermark.from_dict expects a dict, got {type(data).__name__}.")
        allowed = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "image"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown Watermark keys {unknown}; expected some of {sorted(allowed)}.")
        kwargs = dict(data)
        if isinstance(kwargs.get("position"), list):
            kwargs["position"] = tuple(kwargs["position"])
        if isinstance(kwargs.get("colour"), list):
            kwargs["colour"] = tuple(kwargs["colour"])
        if isinstance(kwargs.get("vary"), list):
            kwargs["vary"] = tuple(kwargs["vary"])
        return cls(**kwargs)


def save_preview(path: PathLike, watermark: Watermark, size: int = 256) -> Path:
    """Write a PNG preview, ``size`` x ``size``: the target the patch is trained towards for a flat mid-grey edit
    (the mark at its position, size and strength on grey). Creates parent folders; returns the path."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}.")
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = torch.zeros(1, 3, size, size)
    save_image((watermark.target(grey) + 1) / 2, str(path))
    return path
