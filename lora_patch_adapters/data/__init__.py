"""Data: the embedded procedural testbed and the CelebA reader."""

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
from .testbed import TESTBED_ATTRIBUTES, FaceIdentity, render_faces, sample_faces, testbed_edits, testbed_faces

__all__ = [
    "CELEBA_ATTRIBUTES",
    "PRESETS",
    "SPLITS",
    "TESTBED_ATTRIBUTES",
    "CelebA",
    "CelebAAttributes",
    "FaceIdentity",
    "Preprocessing",
    "make_transform",
    "read_attr_file",
    "render_faces",
    "sample_faces",
    "testbed_edits",
    "testbed_faces",
]
