"""Semantic term of the MMFA loss: cosine distance between BLIP vision CLS features.

Images enter in [-1, 1]; preprocessing happens inside the autograd graph: [-1, 1] -> [0, 1], bilinear resize to the
model's ``config.image_size`` (384 for ``Salesforce/blip-image-captioning-base``), CLIP normalisation.

The feature is the CLS token of ``last_hidden_state`` (``last_hidden_state[:, 0]``, after BLIP's post-layernorm): the
image embedding BLIP's caption decoder attends to. ``pooler_output`` would apply the post-layernorm a second time.
transformers is imported lazily, so pixel/feature-only use never pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int
from .errors import EncoderUnavailableError
from .feature import _stats_buffer, preprocess_images

if TYPE_CHECKING:
    from transformers import BlipVisionModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-base"


class BlipVisionFeatures(nn.Module):
    """CLS features of a (frozen) ``transformers.BlipVisionModel``: images [N, 3, H, W] in [-1, 1] -> [N, hidden].

    ``image_size`` defaults to ``vision_model.config.image_size`` (another size interpolates the position
    embeddings). The model is not frozen here;
    :class:`~lora_patch_adapters.losses.MMFALoss` and :func:`load_blip_vision` freeze it.
    """

    def __init__(self, vision_model: BlipVisionModel, image_size: int | None = None):
        super().__init__()
        if not isinstance(vision_model, nn.Module) or not hasattr(vision_model, "config"):
            raise TypeError(f"vision_model must be a transformers BlipVisionModel, got {type(vision_model).__name__}.")
        self.vision_model = vision_model
        size = image_size if image_size is not None else getattr(vision_model.config, "image_size", None)
        self.input_size = check_positive_int(size, "image_size")
        self.register_buffer("mean", _stats_buffer(CLIP_MEAN), persistent=False)
        self.register_buffer("std", _stats_buffer(CLIP_STD), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] (any H, W) -> CLS features [N, hidden_size]."""
        pixel_values = preprocess_images(images, self.input_size, self.mean, self.std)
        if self.input_size == getattr(self.vision_model.config, "image_size", None):
            out = self.vision_model(pixel_values=pixel_values)
        else:  # another resolution than the model was trained at: interpolate the position embeddings
            out = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        return out.last_hidden_state[:, 0]

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}"


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``1 - cos(a_i, b_i)`` for features [N, D] -> scalar in [0, 2]."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"Expected two feature batches [N, D] of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    return (1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()


def _advice(name: str) -> str:
    return (
        f"Pass a local directory holding the checkpoint (save_pretrained layout) as the BLIP model, or run "
        f"`huggingface-cli download {name}` on a connected machine and copy its Hugging Face cache (HF_HOME, default "
        "~/.cache/huggingface) here, or set the semantic weight to 0 to disable the semantic term."
    )


def _looks_like_path(name: str) -> bool:
    """A hub id is "name" or "owner/name"; anything absolute, relative (./, ../, ~) or deeper is a local path."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _missing(info: dict) -> list:
    return list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]


def load_blip_vision(
    name_or_path: str | os.PathLike = DEFAULT_BLIP_MODEL,
    local_files_only: bool = False,
    revision: str | None = None,
) -> BlipVisionFeatures:
    """A frozen (eval, float32, no parameter grads) :class:`BlipVisionFeatures` from a hub id or local directory.

    Works for a bare ``BlipVisionModel`` checkpoint and for a full BLIP checkpoint (``model_type`` "blip", vision
    weights under ``vision_model.``, e.g. ``Salesforce/blip-image-captioning-base``): the vision weights are loaded
    with ``from_pretrained`` (remapping the ``vision_model.`` prefix, or loading ``BlipForConditionalGeneration`` and
    taking ``.vision_model`` as a fallback), and every vision weight must be found. Missing files, no connection or a
    missing directory raise :class:`EncoderUnavailableError` with advice.
    """
    import transformers
    from transformers import BlipForConditionalGeneration, BlipVisionModel

    name = os.fspath(name_or_path)
    local = _looks_like_path(name) or Path(name).expanduser().exists()
    if local:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise EncoderUnavailableError(
                f"BLIP model directory {name!r} does not exist. " + _advice(DEFAULT_BLIP_MODEL)
            )
        name = str(path)
    kwargs = {"local_files_only": local_files_only, "revision": revision, "output_loading_info": True}
    # A full BLIP checkpoint keeps the vision weights under "vision_model."; the key mapping strips that prefix and
    # leaves a bare BlipVisionModel checkpoint unchanged.
    prefix_map = {r"^vision_model\.": ""}

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a partial attempt would log a long table of unused text weights
    try:
        try:
            model, info = BlipVisionModel.from_pretrained(name, key_mapping=prefix_map, **kwargs)
        except TypeError:  # transformers without key_mapping
            model, info = BlipVisionModel.from_pretrained(name, **kwargs)
        if _missing(info):
            full, info = BlipForConditionalGeneration.from_pretrained(name, **kwargs)
            model = full.vision_model
            info = {"missing_keys": [k for k in _missing(info) if k.startswith("vision_model.")]}
    except (OSError, ValueError) as err:
        raise EncoderUnavailableError(
            f"Could not load the BLIP vision model {name!r} (local_files_only={local_files_only}): {err}\n"
            + _advice(DEFAULT_BLIP_MODEL if local else name)
        ) from err
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = _missing(info)
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ValueError(f"{name!r} does not hold BLIP vision weights; missing: {shown}.")
    encoder = BlipVisionFeatures(model.float())
    encoder.eval().requires_grad_(False)
    return encoder
