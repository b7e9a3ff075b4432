"""Data: the embedded procedural testbed, the CelebA reader, face datasets of the Hugging Face ``datasets`` library
(Hub or local), and safe image reading."""

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
from .hub import (
    HELD_OUT_SPLITS,
    HF_PREFIX,
    DatasetsNotInstalledError,
    HubDataError,
    HubFaces,
    hub_faces,
    hub_splits,
    is_hf_data,
    parse_hf_data,
)
from .images import ALPHA_BACKGROUND, MAX_IMAGE_PIXELS, ImageReadError, read_image, to_rgb
from .testbed import TESTBED_ATTRIBUTES, FaceIdentity, render_faces, sample_faces, testbed_edits, testbed_faces

__all__ = [
    "ALPHA_BACKGROUND",
    "CELEBA_ATTRIBUTES",
    "HELD_OUT_SPLITS",
    "HF_PREFIX",
    "MAX_IMAGE_PIXELS",
    "PRESETS",
    "SPLITS",
    "TESTBED_ATTRIBUTES",
    "CelebA",
    "CelebAAttributes",
    "DatasetsNotInstalledError",
    "FaceIdentity",
    "HubDataError",
    "HubFaces",
    "ImageReadError",
    "Preprocessing",
    "hub_faces",
    "hub_splits",
    "is_hf_data",
    "make_transform",
    "parse_hf_data",
    "read_attr_file",
    "read_image",
    "render_faces",
    "sample_faces",
    "testbed_edits",
    "testbed_faces",
    "to_rgb",
]
