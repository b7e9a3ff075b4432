"""The warning mark of defensive patches: rendering, placement (per target condition with ``vary``) and the training
target. Both ``training`` (the defensive trainer) and ``evaluation`` (is the warning visible?) import it."""

from .watermark import POSITIONS, VARIATIONS, Watermark, load_warning_image, render_warning, save_preview

__all__ = ["POSITIONS", "VARIATIONS", "Watermark", "load_warning_image", "render_warning", "save_preview"]
