"""The paper authors' saved patches (Qu et al., arXiv 2510.03747, official code): read them into lora-patch patches
and write lora-patch patches back in their layout.

The official code wraps every Conv2d, ConvTranspose2d and Linear layer ``L`` of a generator and saves the whole
patched generator with ``torch.save(model.state_dict())``. Per patched layer the file holds:

* ``L.orig_conv.weight`` / ``.bias`` (Conv2d, ConvTranspose2d) or ``L.orig_linear.*`` (Linear): the frozen base;
* ``L.lora_A``: Conv2d [r, in, kh, kw] (a conv weight, base geometry), ConvTranspose2d [in, r, kh, kw] (a
  conv_transpose2d weight, base geometry), Linear [r, in];  ``L.lora_B`` [out, r];
* the gate: ``L.gate`` (0-d logit, ``basic``), ``L.gate_conv`` / ``L.gate_fc`` = Conv2d(1, 1, 1) / Linear(1, 1) on the
  mean of the update (``input_ada``), Conv2d(out, out, 1) / Linear(out, out) on the update itself
  (``input_ada_channel``, per pixel), or nothing (ungated);

and every other key is the base generator's. The update is ``g * s * B(A x)`` with ``s = alpha / sqrt(r)`` on
convolutions and ``s = alpha`` on Linear layers; the official gates read ``B(A x)`` before the scale. Neither ``r``
nor ``alpha`` is stored: ``r`` is read off the shapes, ``alpha`` is an argument (2.0 in the official scripts).

Gate mapping (official -> ``LoraPatchConfig.gate``): ``basic`` -> ``basic``, ``input_ada`` -> ``input_adaptive``
(its weight divided by the layer's scale, since ours reads the scaled update), ``input_ada_channel`` ->
``input_adaptive_pixel`` (copied as is: it reads the unscaled update like the official one), none -> ``none``; the
scaling rule is ``"official"``. Our ``input_adaptive_channel`` (a gate on the spatially pooled update) has no
official counterpart and is refused by the export.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import peft
import torch
from torch import nn

from .._checks import one_line
from .._io import fsync_path
from ..generators.attgan import AttGANGenerator
from ..generators.checkpoints import load_into, pick_state_dict, read_checkpoint
from ..generators.hisd import HiSDGenerator
from ..generators.stargan import StarGANGenerator
from ..tuner.config import LoraPatchConfig
from ..tuner.fingerprint import rank_bound
from ..tuner.layer import GatedLoraLayer
from .errors import NonFinitePatchError, PatchFileError, PatchLoadError, UnsafePatchFileError
from .load import load_patch
from .save import save_patch

OFFICIAL_GENERATORS = ("stargan", "attgan", "attgan_inject1", "hisd")
"""Generator names the official code patches (``attgan_inject1``: AttGAN with inject_layers=1)."""

GATE_MAP = {
    "basic": "basic",
    "input_ada": "input_adaptive",
    "input_ada_channel": "input_adaptive_pixel",
    "none": "none",
}
"""Official ``gated_type`` (``"none"``: ungated) -> ``LoraPatchConfig.gate``."""
_EXPORT_GATE = {ours: official for official, ours in GATE_MAP.items()}

_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "stargan": StarGANGenerator,
    "attgan": lambda: AttGANGenerator(inject_layers=0),
    "attgan_inject1": lambda: AttGANGenerator(inject_layers=1),
    "hisd": HiSDGenerator,
}
"""The official-size generator of each name (the networks the authors patched)."""

_PARTS = ("orig_conv.weight", "orig_conv.bias", "orig_linear.weight", "orig_linear.bias", "lora_A", "lora_B", "gate",
          "gate_conv.weight", "gate_conv.bias", "gate_fc.weight", "gate_fc.bias")
_PATCHABLE = (nn.ConvTranspose2d, nn.Conv2d, nn.Linear)


class OfficialPatchError(PatchLoadError):
    """An official-format file cannot be converted (or a patch cannot be written in that format); the message names
    the file, the key and why."""


@dataclass
class _Layer:
    """One patched layer of an official file: its module, kind (conv / convT / linear) and tensors by part name."""

    name: str
    module: nn.Module
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    rank: int = 0
    gates: frozenset = frozenset()

    @property
    def kind(self) -> str:
        if isinstance(self.module, nn.ConvTranspose2d):
            return "convT"
        return "linear" if isinstance(self.module, nn.Linear) else "conv"

    @property
    def orig(self) -> str:
        return "orig_linear" if self.kind == "linear" else "orig_conv"


def official_scale(kind: str, alpha: float, rank: int) -> float:
    """The official code's scale: ``alpha / sqrt(rank)`` for convolutions (``kind`` "conv"/"convT"), ``alpha`` for
    Linear layers (``kind`` "linear")."""
    return float(alpha) if kind == "linear" else float(alpha) / math.sqrt(rank)


# --------------------------------------------------------------------------------------------------------- helpers
def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0 (the official scripts use 2.0), got {alpha!r}.")
    return float(alpha)


def _generator(generator: Any, meta: bool) -> tuple[str, nn.Module]:
    """``(name, module)`` for a generator name (a fresh official-size network; on the meta device when ``meta``, so
    checking costs no memory) or an Editor / nn.Module (the module itself, not copied here)."""
    if isinstance(generator, str):
        if generator not in _FACTORIES:
            raise ValueError(f"generator={generator!r} is not one the official code patches; choose one of "
                             f"{list(OFFICIAL_GENERATORS)} (or pass an Editor / nn.Module of that layout).")
        if meta:
            with torch.device("meta"):
                return generator, _FACTORIES[generator]()
        return generator, _FACTORIES[generator]()
    module = getattr(generator, "generator", generator)
    if isinstance(module, peft.PeftModel) or any(isinstance(m, GatedLoraLayer) for m in module.modules()):
        raise ValueError("generator already carries a lora-patch; pass the unpatched generator (or its name).")
    if not isinstance(module, nn.Module):
        raise TypeError(f"generator must be one of {list(OFFICIAL_GENERATORS)}, an Editor or an nn.Module, "
                        f"got {type(generator).__name__}.")
    return str(getattr(generator, "name", "") or type(module).__name__), module


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # nn.DataParallel saves every key under "module."
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_official(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The file's ``{key: tensor}`` (read with ``torch.load(weights_only=True)``) and its sha256 (of the bytes read)."""
    if not os.path.isfile(path):
        raise PatchFileError(f"{path}: no such file (an official patch is the .pth written by torch.save).")
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    try:  # the exact bytes that were hashed
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePatchFileError(
            f"{path}: torch.load(weights_only=True) refused it: it references code or objects other than tensors "
            f"({one_line(exc, 160)}); it is not a plain state dict, do not load it."
        ) from exc
    except Exception as exc:
        raise PatchFileError(f"{path}: is not a readable torch.save file ({one_line(exc, 200)}); truncated or "
                             "another format?") from exc
    if not isinstance(obj, Mapping) or not obj:
        raise OfficialPatchError(f"{path}: holds a {type(obj).__name__}, not a state dict; the official code saves "
                                 "torch.save(model.state_dict()).")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise OfficialPatchError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor; the file is "
                                     "not a state dict saved by the official code.")
    return _strip_prefix(dict(obj)), digest


def _fail(path: str, key: str, why: str) -> OfficialPatchError:
    return OfficialPatchError(f"{path}: key {key!r} {why}")


def _gate_candidates(path: str, layer: _Layer) -> frozenset:
    """The official gate types this layer's tensors fit (one, or two when out == 1 makes them look alike)."""
    p, name, out = layer.parts, layer.name, layer.module.weight.shape[1 if layer.kind == "convT" else 0]
    sub = "gate_fc" if layer.kind == "linear" else "gate_conv"
    other = "gate_conv" if sub == "gate_fc" else "gate_fc"
    for part in (f"{other}.weight", f"{other}.bias"):
        if part in p:
            raise _fail(path, f"{name}.{part}", f"is a {other} gate on a {type(layer.module).__name__} layer; the "
                                                 f"official code gives it {sub}: an edited file or another format.")
    has_modules = [part for part in (f"{sub}.weight", f"{sub}.bias") if part in p]
    if "gate" in p:
        if has_modules:
            raise _fail(path, f"{name}.gate", f"and {name}.{has_modules[0]} are both present: one layer has one gate.")
        if p["gate"].numel() != 1 or p["gate"].dim() > 1:
            raise _fail(path, f"{name}.gate", f"has shape {list(p['gate'].shape)}; the basic gate is one logit (0-d).")
        return frozenset({"basic"})
    if not has_modules:
        return frozenset({"none"})
    if len(has_modules) == 1:
        missing = ({f"{sub}.weight", f"{sub}.bias"} - set(has_modules)).pop()
        raise _fail(path, f"{name}.{missing}", f"is missing (its {has_modules[0]} is present).")
    weight, bias = p[f"{sub}.weight"], p[f"{sub}.bias"]
    tail = (1, 1) if sub == "gate_conv" else ()
    found = set()
    if tuple(weight.shape) == (1, 1, *tail) and tuple(bias.shape) == (1,):
        found.add("input_ada")
    if tuple(weight.shape) == (out, out, *tail) and tuple(bias.shape) == (out,):
        found.add("input_ada_channel")
    if not found:
        raise _fail(path, f"{name}.{sub}.weight", f"has shape {list(weight.shape)} (bias {list(bias.shape)}); a gate "
                                                  f"this layer can hold is {[1, 1, *tail]} (input_ada) or "
                                                  f"{[out, out, *tail]} (input_ada_channel).")
    return frozenset(found)


def _check_layer(path: str, layer: _Layer) -> None:
    """Shapes of the base, A and B of one layer; sets ``layer.rank`` and ``layer.gates``."""
    p, name, module = layer.parts, layer.name, layer.module
    for part in p:
        if part.startswith("orig_") and not part.startswith(layer.orig + "."):
            raise _fail(path, f"{name}.{part}", f"is for another layer type: {name} is a {type(module).__name__}, "
                                                f"whose base the official code stores as {layer.orig}.*.")
    for part in ("lora_A", "lora_B", f"{layer.orig}.weight") + ((f"{layer.orig}.bias",) if module.bias is not None
                                                                   else ()):
        if part not in p:
            raise _fail(path, f"{name}.{part}", "is missing: every patched layer stores its base, lora_A and lora_B.")
    if module.bias is None and f"{layer.orig}.bias" in p:
        raise _fail(path, f"{name}.{layer.orig}.bias", f"is present but {name} has no bias in this generator.")
    for part in (f"{layer.orig}.weight", f"{layer.orig}.bias"):
        if part in p:
            want = tuple(getattr(module, part.split(".")[1]).shape)
            if tuple(p[part].shape) != want:
                raise _fail(path, f"{name}.{part}", f"has shape {list(p[part].shape)}, expected {list(want)} for "
                                                    "this generator: a patch of another network or size?")
    a, b = p["lora_A"], p["lora_B"]
    weight = module.weight
    if layer.kind == "linear":
        n_in, n_out, kernel = weight.shape[1], weight.shape[0], ()
    elif layer.kind == "conv":
        n_in, n_out, kernel = weight.shape[1], weight.shape[0], tuple(weight.shape[2:])
    else:
        n_in, n_out, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    rank = a.shape[1] if layer.kind == "convT" and a.dim() == 4 else (a.shape[0] if a.dim() >= 1 else 0)
    want_a = (n_in, rank, *kernel) if layer.kind == "convT" else (rank, n_in, *kernel)
    layout = "[in, r, kh, kw]" if layer.kind == "convT" else ("[r, in]" if layer.kind == "linear" else
                                                              "[r, in, kh, kw]")
    if rank < 1 or tuple(a.shape) != want_a:
        raise _fail(path, f"{name}.lora_A", f"has shape {list(a.shape)}; a {type(module).__name__} patch stores A as "
                                            f"{layout} = {list(want_a) if rank else layout} here.")
    if tuple(b.shape) != (n_out, rank):
        raise _fail(path, f"{name}.lora_B", f"has shape {list(b.shape)}, expected [out, r] = {[n_out, rank]} (r from "
                                            f"{name}.lora_A).")
    layer.rank = rank
    layer.gates = _gate_candidates(path, layer)


def _check_values(path: str, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> None:
    """Every tensor of the file but the generator's non-float buffers (``num_batches_tracked``): floating point and
    finite."""
    for key in sorted(state):
        value, expected = state[key], own.get(key)
        if expected is not None and not expected.is_floating_point():
            continue
        if not value.is_floating_point():
            raise _fail(path, key, f"holds {value.dtype} values; weights must be floating point.")
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            raise NonFinitePatchError(f"{path}: key {key!r} holds {int((~finite).sum())} NaN or infinite value(s) of "
                                      f"{value.numel()}; the patch is broken and cannot be converted.")


@dataclass
class _Parsed:
    base: dict[str, torch.Tensor]
    layers: dict[str, _Layer]
    rank: int
    gate: str


def _parse(path: str, state: dict[str, torch.Tensor], module: nn.Module, gen_name: str, gate: str | None) -> _Parsed:
    """Split the file into base weights (under our names) and patched layers, checking everything against
    ``module`` (possibly on the meta device) before anything is allocated."""
    own = module.state_dict()
    modules = dict(module.named_modules())
    base: dict[str, torch.Tensor] = {}
    layers: dict[str, _Layer] = {}
    for key in sorted(state):
        if key in own:
            base[key] = state[key]
            continue
        part = next((p for p in _PARTS if key.endswith("." + p)), None)
        if part is None:
            raise _fail(path, key, f"is neither a tensor of the {gen_name} generator nor a part of a patched layer "
                                   f"({', '.join(_PARTS)}): not a {gen_name} patch in the official format.")
        name = key[: -len(part) - 1]
        target = modules.get(name)
        if not isinstance(target, _PATCHABLE):
            what = f"a {type(target).__name__}" if target is not None else "no such layer"
            raise _fail(path, key, f"patches layer {name!r}, which is {what} in the {gen_name} generator (patched "
                                   "layers are Conv2d, ConvTranspose2d and Linear): a patch of another network?")
        layers.setdefault(name, _Layer(name, target)).parts[part] = state[key]
    if not layers:
        raise OfficialPatchError(f"{path}: no patched layer (no key ending in '.lora_A'): this is a plain checkpoint, "
                                 "not a patch saved by the official code.")
    for layer in layers.values():
        _check_layer(path, layer)
        for param in ("weight", "bias"):
            if f"{layer.name}.{param}" in base:
                raise _fail(path, f"{layer.name}.{param}", f"is present although {layer.name} is patched (its base is "
                                                           f"{layer.name}.{layer.orig}.{param}).")
            if f"{layer.orig}.{param}" in layer.parts:
                base[f"{layer.name}.{param}"] = layer.parts[f"{layer.orig}.{param}"]
    missing = [k for k in own if k not in base and not k.endswith("num_batches_tracked")]
    if missing:
        raise _fail(path, missing[0], f"is missing ({len(missing)} tensor(s) of the {gen_name} generator are): a "
                                      "truncated file, or a patch of another network?")
    for key in base:
        if tuple(base[key].shape) != tuple(own[key].shape):
            raise _fail(path, key, f"has shape {list(base[key].shape)}, expected {list(own[key].shape)} for the "
                                   f"{gen_name} generator: a patch of another network or size?")

    ordered = sorted(layers.values(), key=lambda item: item.name)
    first = ordered[0]
    for layer in ordered:
        if layer.rank != first.rank:
            raise _fail(path, f"{layer.name}.lora_A", f"has rank {layer.rank} but {first.name}.lora_A has rank "
                                                      f"{first.rank}: the file mixes ranks "
                                                      f"({sorted({item.rank for item in ordered})}), and a patch has "
                                                      "one rank; it cannot be converted.")
    if gate is not None:
        if gate not in GATE_MAP:
            raise ValueError(f"gate={gate!r} is not an official gate type; choose one of {list(GATE_MAP)}.")
        for layer in ordered:
            if gate not in layer.gates:
                raise _fail(path, f"{layer.name}.lora_A",
                            f"belongs to a layer gated {sorted(layer.gates)}, not {gate!r}.")
        chosen = gate
    else:
        common = frozenset(GATE_MAP)
        for layer in ordered:
            if not common & layer.gates:
                raise _fail(path, f"{layer.name}.lora_A",
                            f"belongs to a layer gated {sorted(layer.gates)}, but {first.name} is gated "
                            f"{sorted(first.gates)}: the file mixes gate types, which one patch cannot express.")
            common &= layer.gates
        if len(common) != 1:
            raise OfficialPatchError(f"{path}: the gate tensors fit {sorted(common)} alike (every layer has one output "
                                     "channel); pass gate= to say which the file was trained with.")
        (chosen,) = common
    bound, widest = rank_bound(module, [layer.name for layer in ordered])
    if first.rank > bound:
        raise _fail(path, f"{first.name}.lora_A", f"has rank {first.rank}, above what any patched layer can use "
                                                  f"(at most {bound}, layer {widest!r}); load_patch would refuse it.")
    _check_values(path, state, own)
    return _Parsed(base, layers, first.rank, chosen)


def _target_spec(module: nn.Module, names: list[str]) -> list[str] | str:
    """``names`` as target_modules: a list, or a full-match regex when peft's dotted-suffix matching of a list would
    also pick another layer of ``module``."""
    suffixes = tuple("." + n for n in names)
    chosen = set(names)
    if any(other.endswith(suffixes) for other, _ in module.named_modules() if other and other not in chosen):
        return "(?:" + "|".join(re.escape(n) for n in names) + ")"
    return names


# --------------------------------------------------------------------------------------------------------- import
def import_official_patch(path: str | os.PathLike, generator: Any, out_dir: str | os.PathLike, alpha: float = 2.0,
                          gate: str | None = None, adapter_name: str = "default") -> str:
    """Convert a patch saved by the paper's official code (``torch.save(model.state_dict())`` after ``inject_lora``)
    into a lora-patch patch directory; returns its absolute path.

    ``generator``: ``"stargan"``, ``"attgan"``, ``"attgan_inject1"`` or ``"hisd"`` (the official-size network), or
    an Editor / nn.Module of the same layout (e.g. a small one; it is copied, not modified). ``alpha``: the official
    ``alpha`` the file was trained with (2.0 in the official scripts; not stored in the file). ``gate``: the official
    gate type, only needed when the tensors cannot tell (every layer with one output channel).

    The file is read with ``torch.load(weights_only=True)`` (a pickle referencing code is refused), checked entirely
    (one rank, one gate type, every key known, shapes, finite values) before anything is built, and its base
    weights (``orig_*`` and every other key) become the patch's base: :func:`load_patch` then needs an editor holding
    these weights (fingerprint). Written atomically with :func:`save_patch`; the provenance (``source``, ``file``,
    ``sha256``, ``generator``, ``gate``, ``alpha``) is recorded as the patch's ``training`` metadata. Raises
    :class:`OfficialPatchError` (or another :class:`PatchLoadError`) naming the file, the key and why.
    """
    alpha = _check_alpha(alpha)
    path = os.fspath(path)
    gen_name, structure = _generator(generator, meta=True)
    state, digest = _read_official(path)
    parsed = _parse(path, state, structure, gen_name, gate)

    module = _FACTORIES[gen_name]() if isinstance(generator, str) else copy.deepcopy(structure)
    load_into(module, parsed.base, f"the {gen_name} generator", path)
    names = sorted(parsed.layers)
    linear = any(layer.kind == "linear" for layer in parsed.layers.values())
    config = LoraPatchConfig(r=parsed.rank, lora_alpha=alpha, scaling="official", gate=GATE_MAP[parsed.gate],
                             gate_init=-1.0, init_weights="kaiming", target_modules=_target_spec(module, names),
                             include_linear=linear)
    model = peft.get_peft_model(module, config, adapter_name=adapter_name)
    wrappers = {name: model.base_model.model.get_submodule(name) for name in names}
    patched = sorted(n for n, m in model.base_model.model.named_modules() if isinstance(m, GatedLoraLayer))
    if patched != names:
        raise OfficialPatchError(f"{path}: the patch attached to {len(patched)} layer(s), not the file's {len(names)}; "
                                 "report this as a bug.")
    with torch.no_grad():
        for name, layer in parsed.layers.items():
            _copy_into(wrappers[name], layer, parsed.gate, adapter_name)
    info = {"source": "official", "file": os.path.basename(path), "sha256": digest, "generator": gen_name,
            "gate": parsed.gate, "alpha": alpha}
    return save_patch(model, out_dir, adapter_name=adapter_name, metadata=info)


def _copy_into(wrapper: GatedLoraLayer, layer: _Layer, gate: str, adapter_name: str) -> None:
    """Official tensors of one layer -> our adapter parameters (layouts converted, values exact except the
    ``input_ada`` weight, divided by the layer's scale)."""
    p = layer.parts
    a, b = wrapper.lora_patch_A[adapter_name].weight, wrapper.lora_patch_B[adapter_name].weight
    a.copy_(p["lora_A"])  # Conv2d [r, in, kh, kw], ConvTranspose2d [in, r, kh, kw], Linear [r, in]: our layouts too
    b.copy_(p["lora_B"].reshape(b.shape))  # [out, r] -> [out, r, 1, 1] (convolutions) or as is (Linear)
    module = wrapper.lora_patch_gate[adapter_name]
    sub = "gate_fc" if layer.kind == "linear" else "gate_conv"
    if gate == "basic":
        module.logit.copy_(p["gate"].reshape(1))
    elif gate == "input_ada":
        scale = wrapper.scaling[adapter_name]
        module.weight.copy_((p[f"{sub}.weight"].double() / scale).reshape(1))
        module.bias.copy_(p[f"{sub}.bias"].reshape(1))
    elif gate == "input_ada_channel":
        module.weight.copy_(p[f"{sub}.weight"].reshape(module.weight.shape))  # [C, C, 1, 1] -> [C, C]
        module.bias.copy_(p[f"{sub}.bias"])


# --------------------------------------------------------------------------------------------------------- export
def _load_base(generator: Any, base_checkpoint: str | os.PathLike | None) -> tuple[str, nn.Module]:
    if isinstance(generator, str):
        if base_checkpoint is None:
            raise ValueError("export_official_patch needs base_checkpoint (the official generator weights) when "
                             "generator is a name.")
        from ..generators import load_editor

        _generator(generator, meta=True)  # an unknown name: the error naming the choices
        return generator, load_editor(generator, base_checkpoint).generator
    name, module = _generator(generator, meta=False)
    module = copy.deepcopy(module)
    if base_checkpoint is not None:
        state = _strip_prefix(pick_state_dict(read_checkpoint(base_checkpoint), None, name, base_checkpoint))
        load_into(module, state, name, base_checkpoint)
    return name, module


def export_official_patch(patch_dir: str | os.PathLike, base_checkpoint: str | os.PathLike | None, generator: Any,
                          out_file: str | os.PathLike, alpha: float = 2.0, adapter_name: str = "default",
                          overwrite: bool = False) -> str:
    """Write the lora-patch patch at ``patch_dir`` as a state dict of the official code's patched generator
    (``orig_*`` base weights, ``lora_A`` / ``lora_B`` / gate per layer), loadable with ``model.load_state_dict``
    after the official ``inject_lora(rank=r, alpha=alpha, gated_type=...)``; returns the absolute path.

    ``base_checkpoint``: the generator weights the patch was made for (official checkpoint formats, read with
    ``weights_only=True``; the patch's fingerprint is checked against it); with an Editor / nn.Module as
    ``generator`` it may be None (its own weights). ``alpha``: the ``alpha`` the official code will run with; B (and
    the gates that read the update) are rescaled when the patch's own scale differs. Layers the patch does not cover
    are written as zero patches (B = 0, no change), since the official code wraps every Conv2d, ConvTranspose2d
    and Linear layer and loads strictly. Gate ``input_adaptive_channel`` has no official form and is refused. The
    file is written to a temporary sibling and renamed into place; an existing ``out_file`` is replaced only with
    ``overwrite=True``.
    """
    alpha = _check_alpha(alpha)
    out_file = os.path.abspath(os.fspath(out_file))
    if os.path.isdir(out_file):
        raise ValueError(f"{out_file}: is a directory; export_official_patch writes one .pth file.")
    if os.path.lexists(out_file) and not overwrite:
        raise FileExistsError(f"{out_file}: exists; choose a new file name or pass overwrite=True (--overwrite).")
    name, module = _load_base(generator, base_checkpoint)
    base_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    layers = {n: m for n, m in module.named_modules() if isinstance(m, _PATCHABLE)}
    model = load_patch(module, patch_dir, adapter_name=adapter_name)
    config: LoraPatchConfig = model.peft_config[adapter_name]
    if config.gate not in _EXPORT_GATE:
        raise OfficialPatchError(
            f"{os.fspath(patch_dir)}: gate={config.gate!r} has no form in the official code (its input_ada_channel is "
            "per pixel, our 'input_adaptive_pixel'; 'input_adaptive_channel' pools the update over H, W first); "
            "it cannot be exported."
        )
    official_gate = _EXPORT_GATE[config.gate]
    wrappers = {n: m for n, m in model.base_model.model.named_modules() if isinstance(m, GatedLoraLayer)}
    out: dict[str, torch.Tensor] = {}
    patched = set()
    for key, value in base_state.items():
        owner, _, param = key.rpartition(".")
        if owner not in layers:
            out[key] = value
            continue
        if owner not in patched:
            patched.add(owner)
            out.update(_official_layer(owner, layers[owner], wrappers.get(owner), config, official_gate, alpha,
                                       adapter_name))
        out[f"{owner}.{'orig_linear' if isinstance(layers[owner], nn.Linear) else 'orig_conv'}.{param}"] = value
    _write_atomic(out, out_file)
    return out_file


def _official_layer(name: str, base: nn.Module, wrapper: GatedLoraLayer | None, config: LoraPatchConfig, gate: str,
                    alpha: float, adapter_name: str) -> dict[str, torch.Tensor]:
    """``lora_A``, ``lora_B`` and the gate tensors of one layer in the official layout (a zero patch when
    ``wrapper`` is None: the patch does not cover the layer)."""
    kind = "linear" if isinstance(base, nn.Linear) else ("convT" if isinstance(base, nn.ConvTranspose2d) else "conv")
    weight, r = base.weight, config.r
    n_out = weight.shape[1] if kind == "convT" else weight.shape[0]
    out: dict[str, torch.Tensor] = {}
    sub = "gate_fc" if kind == "linear" else "gate_conv"
    tail = () if kind == "linear" else (1, 1)
    if wrapper is None or adapter_name not in wrapper.lora_patch_A:
        shape_a = (weight.shape[0], r, *weight.shape[2:]) if kind == "convT" else (r, *weight.shape[1:])
        out[f"{name}.lora_A"] = torch.zeros(shape_a, dtype=weight.dtype)
        out[f"{name}.lora_B"] = torch.zeros(n_out, r, dtype=weight.dtype)
        width = 1 if gate == "input_ada" else n_out
        if gate == "basic":
            out[f"{name}.gate"] = torch.tensor(-1.0, dtype=weight.dtype)
        elif gate != "none":
            out[f"{name}.{sub}.weight"] = torch.zeros(width, width, *tail, dtype=weight.dtype)
            out[f"{name}.{sub}.bias"] = torch.zeros(width, dtype=weight.dtype)
        return out
    ours = wrapper.scaling[adapter_name]
    theirs = official_scale(kind, alpha, r)
    a = wrapper.lora_patch_A[adapter_name].weight.detach()
    b = wrapper.lora_patch_B[adapter_name].weight.detach().reshape(n_out, r)
    out[f"{name}.lora_A"] = a.clone()
    out[f"{name}.lora_B"] = b.clone() if ours == theirs else (b.double() * (ours / theirs)).to(b.dtype)
    module = wrapper.lora_patch_gate[adapter_name]
    if gate == "basic":
        out[f"{name}.gate"] = module.logit.detach().reshape(()).clone()
    elif gate == "input_ada":  # ours reads the scaled update, theirs B_off(A x): w_off = w * s_official
        out[f"{name}.{sub}.weight"] = (module.weight.detach().double() * theirs).to(a.dtype).reshape(1, 1, *tail)
        out[f"{name}.{sub}.bias"] = module.bias.detach().reshape(1).clone()
    elif gate == "input_ada_channel":  # both read the unscaled update; B_off = B * ours / theirs
        w = module.weight.detach()
        w = w.clone() if ours == theirs else (w.double() * (theirs / ours)).to(w.dtype)
        out[f"{name}.{sub}.weight"] = w.reshape(n_out, n_out, *tail)
        out[f"{name}.{sub}.bias"] = module.bias.detach().clone()
    return out


def _write_atomic(state: dict[str, torch.Tensor], out_file: str) -> None:
    parent, base = os.path.split(out_file)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=base + ".", suffix=".partial", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({k: v.contiguous() for k, v in state.items()}, f)
        fsync_path(tmp)
        os.replace(tmp, out_file)
        fsync_path(parent)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


__all__ = ["GATE_MAP", "OFFICIAL_GENERATORS", "OfficialPatchError", "export_official_patch", "import_official_patch",
           "official_scale"]
