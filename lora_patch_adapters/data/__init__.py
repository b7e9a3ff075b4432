"""Data: the embedded procedural testbed, the CelebA reader, and safe image reading."""

from .celeba import (
    CELEBA_ATTRIBUTES,
    PRESETS,
    SPLITS,
    CelebA,
    CelebAAttributes,
    Preprocessing,
    make_transform,
    read_attr_file,
)
from .images import ALPHA_BACKGROUND, MAX_IMAGE_PIXELS, ImageReadError, read_image, to_rgb
from .testbed import TESTBED_ATTRIBUTES, FaceIdentity, render_faces, sample_faces, testbed_edits, testbed_faces

__all__ = [
    "ALPHA_BACKGROUND",
    "CELEBA_ATTRIBUTES",
    "MAX_IMAGE_PIXELS",
    "PRESETS",
    "SPLITS",
    "TESTBED_ATTRIBUTES",
    "CelebA",
    "CelebAAttributes",
    "FaceIdentity",
    "ImageReadError",
    "Preprocessing",
    "make_transform",
    "read_attr_file",
    "read_image",
    "render_faces",
    "sample_faces",
    "testbed_edits",
    "testbed_faces",
    "to_rgb",
]
