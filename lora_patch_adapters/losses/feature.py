"""Feature term of the MMFA loss: a frozen ResNet's global-average-pooled features.

Images enter in [-1, 1]; preprocessing happens inside the autograd graph (so gradients reach the images):
[-1, 1] -> [0, 1], bilinear resize to ``input_size`` x ``input_size`` (align_corners=False, no antialias), ImageNet
normalisation.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from .._checks import check_positive_int, state_dict_problems
from .errors import EncoderUnavailableError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

ResNetWeights = str | os.PathLike | ResNet50_Weights | None


def preprocess_images(
    images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Differentiable encoder preprocessing: images [N, 3, H, W] in [-1, 1] -> [0, 1] -> bilinear resize to
    [N, 3, size, size] (skipped when already that size) -> ``(x - mean) / std`` with ``mean``/``std`` [1, 3, 1, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images [N, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}.")
    x = (images + 1.0) * 0.5
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (x - mean.to(dtype=x.dtype)) / std.to(dtype=x.dtype)


def _stats_buffer(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


class ResNetFeatures(nn.Module):
    """Pooled features of a (frozen) image backbone: images [N, 3, H, W] in [-1, 1] -> features [N, C].

    ``backbone`` is a torchvision ``ResNet`` of any depth (its ``fc`` head is never used; the output is the
    global-average-pooled ``layer4`` map, 2048-d for ResNet-50), or any module mapping normalised images
    [N, 3, s, s] to [N, C] or [N, C, h, w] (the latter is averaged over h, w). The backbone is not frozen here;
    :class:`~lora_patch_adapters.losses.MMFALoss` and :func:`load_resnet50` freeze it.
    """

    def __init__(self, backbone: nn.Module, input_size: int = 224):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}.")
        self.backbone = backbone
        self.input_size = check_positive_int(input_size, "input_size")
        self.register_buffer("mean", _stats_buffer(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", _stats_buffer(IMAGENET_STD), persistent=False)

    def _is_resnet(self) -> bool:
        return all(hasattr(self.backbone, part) for part in _RESNET_PARTS)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Already-preprocessed images [N, 3, s, s] -> pooled features [N, C]."""
        b = self.backbone
        if self._is_resnet():
            for part in _RESNET_PARTS:
                x = getattr(b, part)(x)
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        y = b(x)
        if isinstance(y, torch.Tensor) and y.dim() == 4:
            return y.mean(dim=(2, 3))
        if isinstance(y, torch.Tensor) and y.dim() == 2:
            return y
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"The feature backbone must return [N, C] or [N, C, h, w], got {shape}.")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] (any H, W) -> pooled features [N, C]."""
        return self.encode(preprocess_images(images, self.input_size, self.mean, self.std))

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}"


# --------------------------------------------------------------------------------------------------------- loading


def _weights_enum(weights) -> ResNet50_Weights | None:
    """The ResNet50_Weights member named by ``weights`` (enum, "IMAGENET1K_V1", "ResNet50_Weights.DEFAULT", ...), or
    None when ``weights`` does not name one."""
    if isinstance(weights, ResNet50_Weights):
        return weights
    if isinstance(weights, str):
        name = weights.split(".", 1)[1] if weights.startswith("ResNet50_Weights.") else weights
        if name in ResNet50_Weights.__members__:
            return ResNet50_Weights[name]
    return None


def resnet50_cache_path(weights: ResNet50_Weights) -> Path:
    """Where torchvision's loader caches ``weights``: ``torch.hub.get_dir()/checkpoints/<file name of the URL>``
    (``torch.hub.get_dir()`` follows ``TORCH_HOME``, default ``~/.cache/torch/hub``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _unavailable_advice(name: str, url: str, cache: Path) -> str:
    return (
        f"Place the file {url} at {cache} (torchvision's cache; set TORCH_HOME to move it), "
        f"or pass a local state-dict file of torchvision's resnet50 instead of {name!r} "
        "(load_resnet50(path), MMFALoss(resnet_weights=path), or --resnet-weights PATH on the command line), "
        "or set the feature weight to 0 to disable the feature term."
    )


def _read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (safetensors) or ``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``,
    never a full unpickle)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refuses arbitrary pickles
            raise ValueError(
                f"Could not read {path} with torch.load(weights_only=True) ({err}); it must hold a plain state dict "
                "of tensors. Re-save it as one, or convert it to .safetensors."
            ) from err
    raise ValueError(f"Unsupported weight file {path}: use a .safetensors file or a .pth/.pt state dict.")


def _unwrap_state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, or one nested under "state_dict"/"model"; strip a DataParallel "module." prefix."""
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors (got {type(obj).__name__}).")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, shown: int = 5) -> None:
    """Load ``state_dict`` into ``model`` (possibly on the meta device: tensors are assigned, cast to the model's
    dtypes) ignoring the unused ``fc`` head; any other missing, unexpected or wrongly-shaped key is a ValueError
    naming the first few."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    given = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    problems = state_dict_problems(expected, given, shown)
    if problems:
        raise ValueError(
            f"{source} is not a state dict of torchvision's resnet50: " + "; ".join(problems) + "."
        )
    given = {k: v.to(dtype=expected[k].dtype) for k, v in given.items()}  # float32 encoder whatever the file holds
    model.load_state_dict(given, strict=False, assign=True)


def load_resnet50(
    weights: ResNetWeights = "IMAGENET1K_V1", download: bool = True, progress: bool = True
) -> ResNetFeatures:
    """A frozen (eval, no parameter grads) :class:`ResNetFeatures` around torchvision's ResNet-50, input size 224,
    2048-d pooled output; the ``fc`` head is replaced by ``nn.Identity`` (unused).

    ``weights``:

    - a torchvision ``ResNet50_Weights`` member or its name ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"): fetched by
      torchvision's loader into ``torch.hub.get_dir()/checkpoints/`` (hash-checked on download) and read with
      ``weights_only=True``. With ``download=False`` a file missing from that cache raises
      :class:`EncoderUnavailableError`, as does a failed download;
    - a path to a state dict of torchvision's resnet50: ``.safetensors``, or ``.pth``/``.pt`` read with
      ``torch.load(weights_only=True)`` (never unpickled);
    - None: random initialisation (tests/debugging only; warns).
    """
    enum = _weights_enum(weights)
    state_dict: dict[str, torch.Tensor] | None = None
    source = ""
    if weights is None:
        warnings.warn("load_resnet50(weights=None): the feature encoder is randomly initialised.", stacklevel=2)
    elif enum is not None:
        cache = resnet50_cache_path(enum)
        if not cache.is_file() and not download:
            raise EncoderUnavailableError(
                f"ResNet-50 weights {enum.name} are not cached at {cache} and downloading is disabled. "
                + _unavailable_advice(enum.name, enum.url, cache)
            )
        try:
            state_dict = enum.get_state_dict(
                progress=progress, check_hash=True, weights_only=True, map_location="cpu"
            )
        except (OSError, URLError, HTTPException) as err:
            raise EncoderUnavailableError(
                f"Could not download ResNet-50 weights {enum.name} from {enum.url} ({err}). "
                + _unavailable_advice(enum.name, enum.url, cache)
            ) from err
        except (RuntimeError, pickle.UnpicklingError) as err:  # failed hash check, truncated or foreign file
            raise EncoderUnavailableError(
                f"The ResNet-50 weights {enum.name} at {cache} could not be verified or read ({err}); delete that "
                "file and retry. " + _unavailable_advice(enum.name, enum.url, cache)
            ) from err
        source = str(cache)
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            names = ", ".join(ResNet50_Weights.__members__)
            raise EncoderUnavailableError(
                f"ResNet-50 weights {str(weights)!r} are neither an existing file nor one of torchvision's names "
                f"({names}). Pass the path of a .safetensors/.pth state dict of torchvision's resnet50, or a name."
            )
        state_dict, source = _read_state_dict_file(path), str(path)
    else:
        raise TypeError(
            "weights must be None, a ResNet50_Weights member or name, or a path to a state-dict file, "
            f"got {type(weights).__name__}."
        )
    if state_dict is None:
        model = resnet50(weights=None)
    else:
        with torch.device("meta"):  # every used weight comes from the file: skip the (slow) random initialisation
            model = resnet50(weights=None)
        _load_checked(model, _unwrap_state_dict(state_dict, source), source)
    model.fc = nn.Identity()
    encoder = ResNetFeatures(model, input_size=224)
    encoder.eval().requires_grad_(False)
    return encoder
