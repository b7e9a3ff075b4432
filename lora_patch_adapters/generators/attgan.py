"""AttGAN generator (He et al., IEEE TIP 2019) with the module layout of the official PyTorch release.

Parameter and buffer names, their order and their shapes match elvisyjlin/AttGAN-PyTorch
(``enc_layers.0.layers.0.weight`` ... ``dec_layers.4.layers.0.bias``), so the generator part (``'G'``) of an official
``weights.<epoch>.pth`` loads with ``strict=True``. Two released layouts are registered: ``"attgan"``
(``256_shortcut1_inject0_none``) and ``"attgan_inject1"`` (``256_shortcut1_inject1_none``).

Layout: an encoder of ``enc_layers`` 4x4 stride-2 convs (channels ``enc_dim * 2**i``, capped at 1024), each followed by
a norm layer and an activation; a decoder of as many 4x4 stride-2 transposed convs back to RGB with tanh. The target
attribute vector ``a`` [N, n_attrs] is tiled over the bottleneck and concatenated to it; the first ``shortcut_layers``
decoder outputs are concatenated with the encoder feature of the same resolution, and the first ``inject_layers``
decoder outputs get ``a`` tiled and concatenated once more. Convs are bias-free unless no norm layer follows them.

Official inference (``test.py``) calls ``eval()``: BatchNorm normalises with the running statistics stored in the
checkpoint, not with per-batch statistics. :class:`AttGANEditor` therefore runs the generator in eval mode (StarGAN's
editor does the opposite, because its official test never leaves train mode).

Target sets (:data:`ATTGAN_TARGET_SETS`): ``"all"`` edits each of the 13 attributes in turn; ``"paper"`` edits only
the five of the LoRA-Patching paper (Qu et al. 2025), :data:`ATTGAN_PAPER_TARGETS`. The paper's release
(``deepfake.py``, ``DeepfakeHandler.process_input``) keeps the edits of columns 1, 2, 3, 4 and 7 but then multiplies
column ``k - 1`` of the ``k``-th kept edit by ``test_int / thres_int`` -- an index left over from AttGAN's own test
script, whose list starts with the unedited labels. The edited attribute therefore stays at ``±thres_int`` there,
while Young (for the Bangs edit), Bald, Bangs, Black_Hair (for Blond_Hair, Brown_Hair, Male) are pushed to
``±test_int`` instead. This module scales the edited attribute itself, as AttGAN defines the test intensity.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..attributes import ATTGAN_ATTRIBUTES  # noqa: F401  (re-exported: the old import path)
from .base import Editor, check_labels
from .checkpoints import CheckpointError, load_into, pick_state_dict, read_checkpoint, register_layout

MAX_CHANNELS = 1024
"""Channel cap of every encoder/decoder block in the official network."""

ATTGAN_PAPER_TARGETS: tuple[str, ...] = ("Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Male")
"""The attributes the LoRA-Patching paper edits with AttGAN, in the order of its edits (``targets="paper"``)."""

ATTGAN_TARGET_SETS: tuple[str, ...] = ("all", "paper")
"""Values of :class:`AttGANEditor`'s ``targets``: ``"all"`` (one edit per attribute, the default) or ``"paper"``."""

NORMS = ("batchnorm", "instancenorm", "none")
ACTIVATIONS = ("relu", "lrelu", "sigmoid", "tanh", "none")

# Attribute pairs that cannot both be present (the official test-time rules). Turning one of them ON turns the other
# OFF; turning one OFF changes nothing else. Only pairs whose two names are both in use matter.
_HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
_CONFLICTING_PAIRS: tuple[tuple[str, str], ...] = (
    ("Bald", "Bangs"),
    ("Receding_Hairline", "Bangs"),
    *((a, b) for k, a in enumerate(_HAIR_COLOURS) for b in _HAIR_COLOURS[k + 1 :]),
    ("Straight_Hair", "Wavy_Hair"),
    ("Mustache", "No_Beard"),
)


def conflicting_attributes(name: str) -> tuple[str, ...]:
    """Attributes switched off when ``name`` is switched on (e.g. ``"Bangs"`` -> ``("Bald", "Receding_Hairline")``)."""
    return tuple(b if a == name else a for a, b in _CONFLICTING_PAIRS if name in (a, b))


# ------------------------------------------------------------------------------------------------------- network
def _norm_layer(kind: str, channels: int) -> nn.Module | None:
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "instancenorm":
        return nn.InstanceNorm2d(channels, affine=True)
    return None


def _activation(kind: str) -> nn.Module | None:
    return {
        "relu": nn.ReLU,
        "lrelu": nn.LeakyReLU,  # default slope 0.01, as in the official code
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "none": lambda: None,
    }[kind]()


def _check_choice(arg: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{arg} must be one of {list(choices)}, got {value!r}.")


class ConvBlock(nn.Module):
    """4x4 stride-2 conv (or transposed conv), optional norm, optional activation, held in ``self.layers`` (the
    official sub-module name). Halves (conv) or doubles (transposed) H and W."""

    def __init__(self, in_channels: int, out_channels: int, transposed: bool, norm: str, activation: str) -> None:
        super().__init__()
        conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
        modules: list[nn.Module] = [conv_cls(in_channels, out_channels, 4, stride=2, padding=1, bias=norm == "none")]
        for extra in (_norm_layer(norm, out_channels), _activation(activation)):
            if extra is not None:
                modules.append(extra)
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AttGANGenerator(nn.Module):
    """AttGAN generator with the official constructor arguments and defaults (except ``img_size``, 256 here as in
    the released 256 px models; the official default is 128).

    ``G(x, a)``: images x [N, 3, img_size, img_size] in [-1, 1] and a scaled attribute vector a [N, n_attrs]
    (about ±0.5, ±1 on the edited attribute; see :func:`attgan_conditions`) -> edited images [N, 3, img_size,
    img_size] in [-1, 1]. ``G(x, mode="enc")`` returns the encoder features and ``G(zs, a, mode="dec")`` decodes them.

    ``enc_layers`` must equal ``dec_layers`` (the output must have the input's size). The width of a shortcut is the
    width of the encoder feature it brings in; this equals the official ``n // 2`` whenever the official network runs.
    """

    def __init__(
        self,
        enc_dim: int = 64,
        enc_layers: int = 5,
        enc_norm_fn: str = "batchnorm",
        enc_acti_fn: str = "lrelu",
        dec_dim: int = 64,
        dec_layers: int = 5,
        dec_norm_fn: str = "batchnorm",
        dec_acti_fn: str = "relu",
        n_attrs: int = 13,
        shortcut_layers: int = 1,
        inject_layers: int = 0,
        img_size: int = 256,
    ) -> None:
        super().__init__()
        _check_choice("enc_norm_fn", enc_norm_fn, NORMS)
        _check_choice("dec_norm_fn", dec_norm_fn, NORMS)
        _check_choice("enc_acti_fn", enc_acti_fn, ACTIVATIONS)
        _check_choice("dec_acti_fn", dec_acti_fn, ACTIVATIONS)
        sizes = {"enc_dim": enc_dim, "dec_dim": dec_dim, "enc_layers": enc_layers, "n_attrs": n_attrs}
        for arg, value in sizes.items():
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}.")
        if shortcut_layers < 0 or inject_layers < 0:
            raise ValueError(
                f"shortcut_layers and inject_layers must be >= 0, got {shortcut_layers} and {inject_layers}."
            )
        if dec_layers != enc_layers:
            raise ValueError(
                f"dec_layers ({dec_layers}) must equal enc_layers ({enc_layers}) so that the output has the "
                "input's size."
            )
        if img_size < 2**enc_layers or img_size % 2**enc_layers:
            raise ValueError(
                f"img_size must be a positive multiple of 2**enc_layers = {2**enc_layers}, got {img_size}."
            )

        self.n_attrs = n_attrs
        self.img_size = img_size
        self.shortcut_layers = min(shortcut_layers, dec_layers - 1)
        self.inject_layers = min(inject_layers, dec_layers - 1)
        self.f_size = img_size // 2**enc_layers  # bottleneck side: 8 for 256 px and 5 layers

        self.enc_channels = [min(enc_dim * 2**i, MAX_CHANNELS) for i in range(enc_layers)]
        self.enc_layers = nn.ModuleList(
            ConvBlock(c_in, c_out, False, enc_norm_fn, enc_acti_fn)
            for c_in, c_out in zip([3, *self.enc_channels[:-1]], self.enc_channels)
        )

        blocks = []
        c_in = self.enc_channels[-1] + n_attrs
        for i in range(dec_layers - 1):
            c_out = min(dec_dim * 2 ** (dec_layers - 1 - i), MAX_CHANNELS)
            blocks.append(ConvBlock(c_in, c_out, True, dec_norm_fn, dec_acti_fn))
            c_in = c_out
            if i < self.shortcut_layers:
                c_in += self.enc_channels[-2 - i]
            if i < self.inject_layers:
                c_in += n_attrs
        blocks.append(ConvBlock(c_in, 3, True, "none", "tanh"))
        self.dec_layers = nn.ModuleList(blocks)

    # ------------------------------------------------------------------------------------------------- checks
    def _check_images(self, x: Any) -> None:
        size = self.img_size
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"AttGAN (img_size={size}) expects images shaped [N, 3, {size}, {size}], got {got}; "
                f"resize the input or build the generator with another img_size."
            )

    def _check_condition(self, a: Any, batch: int) -> None:
        if a is None:
            raise ValueError(f"AttGAN needs a target attribute vector a [N, {self.n_attrs}] in this mode.")
        if not isinstance(a, torch.Tensor) or a.dim() != 2 or tuple(a.shape) != (batch, self.n_attrs):
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(
                f"AttGAN condition must be [N, {self.n_attrs}] for N={batch} images, got {got} "
                "(build it with attgan_conditions)."
            )

    @staticmethod
    def _tile(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return a.to(like.dtype)[:, :, None, None].expand(-1, -1, like.shape[2], like.shape[3])

    # ------------------------------------------------------------------------------------------------ forward
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of x [N, 3, S, S], one per encoder block, finest first; the last is the bottleneck
        [N, enc_channels[-1], f_size, f_size]."""
        self._check_images(x)
        features = []
        z = x
        for block in self.enc_layers:
            z = block(z)
            features.append(z)
        return features

    def decode(self, zs: Sequence[torch.Tensor], a: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, S, S] in [-1, 1] from the encoder features ``zs`` (as returned by :meth:`encode`) and the
        attribute vector a [N, n_attrs]."""
        if not isinstance(zs, (list, tuple)) or len(zs) != len(self.enc_layers):
            raise ValueError(
                f"decode expects the list of {len(self.enc_layers)} encoder features returned by encode(x), "
                f"got {type(zs).__name__}" + (f" of length {len(zs)}." if isinstance(zs, (list, tuple)) else ".")
            )
        bottleneck = zs[-1]
        expected = (self.enc_channels[-1], self.f_size, self.f_size)
        if bottleneck.dim() != 4 or tuple(bottleneck.shape[1:]) != expected:
            raise ValueError(
                f"The bottleneck feature must be [N, {', '.join(map(str, expected))}], got {tuple(bottleneck.shape)}."
            )
        self._check_condition(a, bottleneck.shape[0])

        z = torch.cat([bottleneck, self._tile(a, bottleneck)], dim=1)
        for i, block in enumerate(self.dec_layers):
            z = block(z)
            if i < self.shortcut_layers:
                z = torch.cat([z, zs[-2 - i]], dim=1)
            if i < self.inject_layers:
                z = torch.cat([z, self._tile(a, z)], dim=1)
        return z

    def forward(
        self, x: torch.Tensor | Sequence[torch.Tensor], a: torch.Tensor | None = None, mode: str = "enc-dec"
    ) -> torch.Tensor | list[torch.Tensor]:
        """``mode="enc-dec"``: edited images ``decode(encode(x), a)``; ``"enc"``: ``encode(x)``; ``"dec"``:
        ``decode(x, a)`` with x the feature list."""
        if mode == "enc-dec":
            if not isinstance(x, torch.Tensor):
                raise ValueError("mode='enc-dec' expects an image tensor x [N, 3, S, S].")
            self._check_images(x)
            self._check_condition(a, x.shape[0])
            return self.decode(self.encode(x), a)
        if mode == "enc":
            return self.encode(x)
        if mode == "dec":
            return self.decode(x, a)
        raise ValueError(f"mode must be 'enc-dec', 'enc' or 'dec', got {mode!r}.")


# ---------------------------------------------------------------------------------------------------- conditions
def attgan_conditions(
    labels: Any,
    thres_int: float = 0.5,
    test_int: float = 1.0,
    attribute_names: Sequence[str] = ATTGAN_ATTRIBUTES,
    edited: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """Target attribute vectors for the official single-attribute edits of images with source ``labels``.

    Args:
        labels: [N, A] 0/1 flags over ``attribute_names``.
        thres_int: training intensity; present/absent attributes map to ``+thres_int`` / ``-thres_int``.
        test_int: intensity of the edited attribute (``±test_int``).
        attribute_names: the attributes of the label columns (conflict rules only apply to names present here).
        edited: the attributes to edit, one condition each, in this order (default: every attribute, in column
            order); e.g. :data:`ATTGAN_PAPER_TARGETS`.

    Returns:
        A list of float tensors [N, A], one per edited attribute ``i``: attribute ``i`` flipped, attributes that
        conflict with a newly present attribute switched off (one hair colour at a time; Bald or Receding_Hairline
        vs Bangs; Mustache vs No_Beard; Straight_Hair vs Wavy_Hair), then mapped to ``(att * 2 - 1) * thres_int``
        with column ``i`` (the edited one) multiplied by ``test_int / thres_int``. The official test script
        additionally runs the unedited labels (reconstruction), which is not an edit and is not returned.
    """
    names = tuple(attribute_names)
    labels = check_labels(labels, names)
    if thres_int <= 0:
        raise ValueError(f"thres_int must be > 0, got {thres_int}.")
    columns = range(len(names)) if edited is None else [names.index(name) for name in _check_edited(edited, names)]
    conditions = []
    for i in columns:
        name = names[i]
        target = labels.clone()
        target[:, i] = 1 - target[:, i]
        switched_on = target[:, i] == 1
        for other in conflicting_attributes(name):
            if other in names:
                target[switched_on, names.index(other)] = 0
        condition = (target * 2 - 1) * thres_int
        condition[:, i] = condition[:, i] * (test_int / thres_int)
        conditions.append(condition)
    return conditions


def _check_edited(edited: Sequence[str], names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(edited, str):
        raise TypeError(f"edited must be a sequence of attribute names, got the string {edited!r}.")
    edited = tuple(edited)
    if not edited:
        raise ValueError("edited must name at least one attribute (None edits them all).")
    unknown = [name for name in edited if name not in names]
    if unknown:
        raise ValueError(f"edited names attributes {unknown} that are not among the label columns {list(names)}.")
    if len(set(edited)) != len(edited):
        raise ValueError(f"edited lists an attribute more than once: {list(edited)}.")
    return edited


# -------------------------------------------------------------------------------------------------------- editor
class AttGANEditor(Editor):
    """AttGAN as an :class:`~lora_patch_adapters.generators.base.Editor`.

    Condition: the already-scaled float tensor a [N, 13] built by :meth:`conditions` / :func:`attgan_conditions`.
    The generator runs in eval mode (BatchNorm running statistics), as the official test script does.

    ``targets`` picks the edits :meth:`conditions` returns: ``"all"`` (default: one per attribute, 13) or
    ``"paper"`` (the LoRA-Patching paper's 5, :data:`ATTGAN_PAPER_TARGETS`, with the edited attribute scaled to
    ``±test_int``; see the module docstring for how the paper's release scales them). It can be changed later
    (``editor.targets = "paper"``); :meth:`describe` records it.
    """

    name = "attgan"
    attribute_names = ATTGAN_ATTRIBUTES
    generator_mode = "eval"

    def __init__(
        self,
        generator: nn.Module,
        name: str | None = None,
        thres_int: float = 0.5,
        test_int: float = 1.0,
        attribute_names: Sequence[str] = ATTGAN_ATTRIBUTES,
        targets: str = "all",
    ) -> None:
        super().__init__(generator)
        n_attrs = getattr(generator, "n_attrs", len(attribute_names))
        if n_attrs != len(attribute_names):
            raise ValueError(
                f"The generator takes {n_attrs} attributes but {len(attribute_names)} attribute names were given."
            )
        if thres_int <= 0:
            raise ValueError(f"thres_int must be > 0, got {thres_int}.")
        self.attribute_names = tuple(attribute_names)
        inject = getattr(generator, "inject_layers", 0)
        self.name = name if name is not None else ("attgan" if inject == 0 else f"attgan_inject{inject}")
        self.thres_int = thres_int
        self.test_int = test_int
        self.targets = targets

    @property
    def targets(self) -> str:
        """``"all"`` or ``"paper"``: which edits :meth:`conditions` returns."""
        return self._targets

    @targets.setter
    def targets(self, value: str) -> None:
        if value not in ATTGAN_TARGET_SETS:
            raise ValueError(f"AttGAN targets must be one of {list(ATTGAN_TARGET_SETS)}, got {value!r}.")
        if value == "paper":
            missing = [n for n in ATTGAN_PAPER_TARGETS if n not in self.attribute_names]
            if missing:
                raise ValueError(
                    f"AttGAN targets='paper' edits {list(ATTGAN_PAPER_TARGETS)}, but this editor's attributes lack "
                    f"{missing}; use targets='all'."
                )
        self._targets = value

    @property
    def edited_attributes(self) -> tuple[str, ...]:
        """The attributes :meth:`conditions` edits, one condition each, in order."""
        return ATTGAN_PAPER_TARGETS if self._targets == "paper" else self.attribute_names

    def _run(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        condition = torch.as_tensor(condition, device=x.device, dtype=x.dtype)
        return self.generator(x, condition)

    def conditions(self, labels: torch.Tensor) -> list[torch.Tensor]:
        """One [N, 13] condition per edited attribute (:attr:`edited_attributes`; see :func:`attgan_conditions`)."""
        edited = None if self._targets == "all" else self.edited_attributes
        return attgan_conditions(labels, self.thres_int, self.test_int, self.attribute_names, edited)

    def describe(self) -> dict[str, Any]:
        """The editor's settings as plain values (what a run records): name, targets, edited attributes,
        intensities."""
        return {"name": self.name, "targets": self._targets, "edited": list(self.edited_attributes),
                "thres_int": self.thres_int, "test_int": self.test_int}

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, targets={self._targets!r})"


def _strip_data_parallel_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Official training with --multi_gpu saves G wrapped in nn.DataParallel ("module." in front of every key).
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def build_editor(
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    inject_layers: int = 0,
    targets: str = "all",
) -> AttGANEditor:
    """The released 256 px AttGAN (shortcut_layers=1) as an editor, in eval mode.

    Args:
        checkpoint: an official ``weights.<epoch>.pth`` (dict with the generator under ``'G'``; ``'D'`` and the
            optimiser states are ignored) or a file holding the generator state dict alone (``.pth`` or
            ``.safetensors``). ``None`` gives random weights, with a warning.
        device: where to put the generator (default: CPU).
        inject_layers: 0 for ``256_shortcut1_inject0_none`` (``"attgan"``), 1 for ``256_shortcut1_inject1_none``
            (``"attgan_inject1"``).
        targets: ``"all"`` (the 13 edits) or ``"paper"`` (the paper's 5); see :class:`AttGANEditor`.

    Raises:
        CheckpointError: the file is missing, unreadable, or not this variant (the message names the file's model
            when it is a known layout).
    """
    model_name = "attgan" if inject_layers == 0 else f"attgan_inject{inject_layers}"
    if targets not in ATTGAN_TARGET_SETS:  # before reading or building anything
        raise ValueError(f"AttGAN targets must be one of {list(ATTGAN_TARGET_SETS)}, got {targets!r}.")
    state = None
    if checkpoint is None:
        warnings.warn(
            f"build_editor(checkpoint=None): {model_name} has random weights; pass the path of an official "
            "weights.<epoch>.pth to edit faces.",
            UserWarning,
            stacklevel=2,
        )
    else:  # read and check the file before building the 43M-parameter network
        obj = read_checkpoint(checkpoint, map_location=device or "cpu")
        key = "G" if isinstance(obj, Mapping) and "G" in obj else None
        if key is not None and not isinstance(obj[key], Mapping):
            raise CheckpointError(
                f"{os.fspath(checkpoint)!r}: key 'G' holds a {type(obj[key]).__name__}, not a generator state dict."
            )
        state = _strip_data_parallel_prefix(pick_state_dict(obj, key, model_name, checkpoint))
    generator = AttGANGenerator(inject_layers=inject_layers)
    if state is not None:
        load_into(generator, state, model_name, checkpoint)
    editor = AttGANEditor(generator, name=model_name, targets=targets)
    if device is not None:
        editor.to(device)
    generator.eval()
    return editor


register_layout("attgan", lambda: AttGANGenerator())
register_layout("attgan_inject1", lambda: AttGANGenerator(inject_layers=1))

__all__ = [
    "ATTGAN_ATTRIBUTES",
    "ATTGAN_PAPER_TARGETS",
    "ATTGAN_TARGET_SETS",
    "AttGANEditor",
    "AttGANGenerator",
    "ConvBlock",
    "attgan_conditions",
    "build_editor",
    "conflicting_attributes",
]
