"""LPIPS (Zhang et al., CVPR 2018) networks, built offline: torchmetrics' LPIPS model with local backbone weights.

LPIPS compares two images through the unit-normalised activations of an ImageNet backbone (AlexNet, VGG-16 or
SqueezeNet 1.1), weighted per channel by small learned linear layers. The linear layers ship inside the torchmetrics
package; the backbone is torchvision's ImageNet model, whose weights this package **never downloads**. They come from

* ``weights=PATH``: a state dict of torchvision's model (``.safetensors``, or ``.pth``/``.pt`` read with
  ``torch.load(weights_only=True)``); only its ``features.*`` entries are used (the classifier is ignored); or
* torchvision's own cache: ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``, e.g.
  ``~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth`` (``TORCH_HOME`` moves it). Any earlier
  ``torchvision.models.alexnet(weights="DEFAULT")`` call on an online machine leaves the file there.

When neither exists, :func:`load_lpips` raises :class:`LpipsWeightsError` naming the expected file;
:func:`lpips_available` says beforehand whether LPIPS can be computed, so reports add an LPIPS column only then.
Built networks are cached per (net, weights file, device): repeated calls cost one forward pass.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .._checks import one_line, state_dict_problems
from ..losses.errors import EncoderUnavailableError

__all__ = [
    "LPIPS_MIN_SIZE",
    "LPIPS_NETS",
    "LpipsWeightsError",
    "find_lpips_weights",
    "load_lpips",
    "lpips_available",
    "lpips_cache_path",
]

#: LPIPS backbone name -> (torchvision model function, torchvision weights enum).
LPIPS_NETS = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
              "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}
#: The smallest height and width each backbone accepts (measured: smaller inputs pool down to nothing).
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}

_CACHE: dict[tuple, nn.Module] = {}
_LOCK = threading.Lock()


class LpipsWeightsError(EncoderUnavailableError):
    """LPIPS cannot be built: the backbone weights are not cached and no ``weights`` file was given, or a weights
    file is unreadable or not a state dict of the expected torchvision model. The message names the file and the
    fix."""


def _check_net(net: object) -> str:
    if net not in LPIPS_NETS:
        raise ValueError(f"net must be one of {list(LPIPS_NETS)} (LPIPS' backbones), got {net!r}.")
    return net  # type: ignore[return-value]


def _weights_url(net: str) -> str:
    import torchvision

    return getattr(torchvision.models, LPIPS_NETS[net][1]).DEFAULT.url


def lpips_cache_path(net: str = "alex") -> Path:
    """Where torchvision caches the ImageNet weights of LPIPS' ``net`` backbone:
    ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>`` (``torch.hub.get_dir()`` follows
    ``TORCH_HOME``, default ``~/.cache/torch/hub``)."""
    url = _weights_url(_check_net(net))
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def find_lpips_weights(net: str = "alex", weights: str | os.PathLike | None = None) -> Path | None:
    """The backbone weights file LPIPS would use (``weights`` when given, else torchvision's cache file), or None
    when that file does not exist. Nothing is read or downloaded."""
    _check_net(net)
    path = Path(weights).expanduser() if weights is not None else lpips_cache_path(net)
    return path if path.is_file() else None


def lpips_available(net: str = "alex", weights: str | os.PathLike | None = None,
                    size: tuple[int, int] | None = None) -> bool:
    """Whether LPIPS with ``net`` can be computed offline: its backbone weights file exists (see
    :func:`find_lpips_weights`) and, when ``size`` = (H, W) is given, images of that size are large enough
    (:data:`LPIPS_MIN_SIZE`). The file's content is checked only when :func:`load_lpips` reads it."""
    if find_lpips_weights(net, weights) is None:
        return False
    return size is None or min(size) >= LPIPS_MIN_SIZE[net]


def _missing_message(net: str, weights: str | os.PathLike | None) -> str:
    model = LPIPS_NETS[net][0]
    if weights is not None:
        return (f"LPIPS backbone weights {os.fspath(weights)!r} do not exist. Pass the path of a .safetensors or .pth "
                f"state dict of torchvision's {model} (ImageNet weights, {_weights_url(net)}).")
    return (f"LPIPS ({net}) needs torchvision's ImageNet {model} weights, which are not cached at "
            f"{lpips_cache_path(net)} and are never downloaded by this package. Place the file {_weights_url(net)} "
            "there (torchvision's cache: set TORCH_HOME to use another directory), or pass weights=PATH to a local "
            f".safetensors/.pth state dict of torchvision's {model}.")


def _read_state_dict(path: Path, net: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``)."""
    model = LPIPS_NETS[net][0]
    fix = (f"delete or replace it with a .safetensors/.pth state dict of torchvision's {model} "
           f"(ImageNet weights, {_weights_url(net)})")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise LpipsWeightsError(f"Unsupported LPIPS weights file {path}: use a .safetensors or .pth state dict "
                                    f"of torchvision's {model}.")
    except LpipsWeightsError:
        raise
    except Exception as err:  # truncated, foreign format, or a pickle that weights_only refuses
        raise LpipsWeightsError(f"Could not read LPIPS backbone weights {path} ({one_line(err, 300)}); {fix}.") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LpipsWeightsError(f"LPIPS backbone weights {path} do not hold a state dict of tensors "
                                f"(got {type(state).__name__}); {fix}.")
    return state


def _torchvision_key(lpips_key: str) -> str:
    """The torchvision ``features.<i>.<rest>`` name of an LPIPS backbone parameter: torchmetrics splits
    ``features`` into slices whose children keep their index (``slice2.3.weight``, ``slices.1.3.squeeze.weight``)."""
    parts = lpips_key.split(".")
    index, rest = (parts[2], parts[3:]) if parts[0] == "slices" else (parts[1], parts[2:])
    return ".".join(["features", index, *rest])


def _load_backbone(backbone: nn.Module, state: dict[str, torch.Tensor], path: Path, net: str, shown: int = 5) -> None:
    """Load torchvision ``features.*`` weights into torchmetrics' sliced backbone, strictly (the classifier and any
    other non-``features`` entry of a full torchvision state dict are ignored)."""
    expected = {_torchvision_key(k): (k, v) for k, v in backbone.state_dict().items()}
    given = {k: v for k, v in state.items() if k.startswith("features.")}
    problems = state_dict_problems({k: v for k, (_, v) in expected.items()}, given, shown)
    if problems:
        raise LpipsWeightsError(
            f"LPIPS backbone weights {path} are not a state dict of torchvision's {LPIPS_NETS[net][0]}: "
            + "; ".join(problems) + f". Pass the ImageNet weights of that model ({_weights_url(net)})."
        )
    backbone.load_state_dict({name: given[key].float() for key, (name, _) in expected.items()}, strict=True)


def _build(net: str, path: Path) -> nn.Module:
    """torchmetrics' LPIPS network for ``net`` with the linear layers of its package and the backbone of ``path``."""
    from torchmetrics.functional.image import lpips as tm_lpips

    with torch.device("meta"):  # every weight comes from a file: skip torchvision's (slow) random initialisation
        model = tm_lpips._NoTrainLpips(pretrained=False, net=net, pnet_rand=True)
    model = model.to_empty(device="cpu")
    model.scaling_layer = type(model.scaling_layer)()  # its constants are non-persistent buffers: build them for real
    _load_backbone(model.net, _read_state_dict(path, net), path, net)
    linear_path = Path(tm_lpips.__file__).parent / "lpips_models" / f"{net}.pth"
    try:
        linear = torch.load(str(linear_path), map_location="cpu", weights_only=True)
        for index, layer in enumerate(model.lins):
            layer.load_state_dict({"model.1.weight": linear[f"lin{index}.model.1.weight"]}, strict=True)
    except Exception as err:
        raise LpipsWeightsError(f"Could not read the LPIPS linear layers {linear_path} shipped with torchmetrics "
                                f"({one_line(err, 300)}); reinstall torchmetrics.") from err
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a torchmetrics version with state this loader does not know: refuse rather than compute garbage
        raise RuntimeError(f"LPIPS network left uninitialised by this torchmetrics version: {leftover[:5]}.")
    return model.eval().requires_grad_(False)


def load_lpips(net: str = "alex", weights: str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """The frozen (eval, no parameter gradients) LPIPS network of ``net`` ("alex", "vgg", "squeeze") on ``device``,
    float32, with backbone weights from ``weights`` or torchvision's cache (see the module docstring); cached per
    (net, weights file, device). Call it as ``model(a, b)`` on images [N, 3, H, W] in [-1, 1] -> [N, 1, 1, 1].

    Raises :class:`LpipsWeightsError` when the weights are missing, unreadable or of another model.
    """
    net = _check_net(net)
    path = find_lpips_weights(net, weights)
    if path is None:
        raise LpipsWeightsError(_missing_message(net, weights))
    path = path.resolve()
    stat = path.stat()
    key = (net, str(path), stat.st_mtime_ns, stat.st_size, str(torch.device(device)))
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = _build(net, path).to(device)
            _CACHE[key] = model
    return model
