"""What a patch directory is: its file names, format version, accepted tensor dtypes, the schema of its config,
and the readers of its JSON files.

A patch directory holds::

    adapter_config.json         the LoraPatchConfig (peft format), with ``base_fingerprint``
    adapter_model.safetensors   the adapter tensors; the file metadata repeats the provenance below
    lora_patch.json             provenance: base_fingerprint, package_version, format_version, target_modules,
                                created (UTC ISO time), adapter_name, peft_version and ``training`` metadata if given

Tensor dtypes: float16, bfloat16, float32 and float64 are accepted (a patch saved in half precision is legitimate);
integer, bool, complex and float8 tensors are refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from typing import Any

import peft
import torch
from peft.utils import get_peft_model_state_dict

from .._checks import one_line
from ..tuner.config import CONFIG_FILE, WEIGHTS_FILE, LoraPatchConfig
from ..tuner.fingerprint import FINGERPRINT_RE
from ..tuner.registry import PEFT_TYPE_NAME
from ..version import __version__
from .errors import PatchConfigError, PatchFileError, PatchLoadError

FORMAT_VERSION = 1
"""Version of the patch directory layout written by :func:`~lora_patch_adapters.patches.save.save_patch`."""
CONFIG_NAME = CONFIG_FILE
WEIGHTS_NAME = WEIGHTS_FILE
SIDECAR_NAME = "lora_patch.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PICKLE_WEIGHTS = tuple("adapter_model" + suffix for suffix in PICKLE_SUFFIXES)
PATCH_FILES = (CONFIG_NAME, WEIGHTS_NAME, SIDECAR_NAME, "README.md", "training.json", "summary.json")
"""The files of a patch that are pushed and pulled (``allow_patterns`` of the download): nothing else, no pickles."""
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
ACCEPTED_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
"""safetensors dtype codes accepted for patch tensors."""

MAX_JSON_BYTES = 16 * 1024 * 1024
"""The largest ``adapter_config.json`` / ``lora_patch.json`` the readers accept (16 MiB): a bigger file is refused as
not a patch file, so :func:`~lora_patch_adapters.patches.save.save_patch` refuses to write one."""
SAFETENSORS_HEADER_LIMIT = 100_000_000
"""The largest safetensors header (bytes, tensor table + metadata, padded) that safetensors accepts. Measured with
safetensors 0.8: ``save_file`` writes headers up to exactly 100,000,000 bytes and ``safe_open`` reads them back; one
more 8-byte step and ``save_file`` raises "header too large" (older safetensors wrote headers that ``safe_open``
then refused), so ``save_patch`` checks the size itself before writing anything."""
MAX_SCALE = 1e3
"""Upper bound on a config's scale (``lora_alpha / sqrt(r)`` or ``lora_alpha / r``). Published patches use scales
around 0.1-4 (the paper: alpha 2 at r 8, 0.71; PEFT LoRA's common alpha 16-32 at r 8-16, 1-4), so 1e3 leaves 250x
headroom for any deliberate choice, while the scale multiplies every update: a far larger one (e.g. alpha 1e30)
loads without complaint and turns every output into NaN/Inf."""
ADAPTER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
"""Accepted adapter names: 1-64 ASCII letters, digits, '_' or '-' (not starting with '-'). The name becomes a folder
name inside the patch directory and a module key, so anything path-like ('', '.', '..', 'a/b', '/abs', 'C:x') is
refused."""


def quoted_name(key: str) -> str:
    """A tensor or module name for a message: quoted, shortened if absurdly long."""
    return repr(key) if len(key) <= 160 else repr(key[:150] + "...")


def write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, allow_nan=False))


def adapter_state(model: peft.PeftModel, adapter_name: str) -> dict[str, torch.Tensor]:
    """``get_peft_model_state_dict`` of one adapter. Older peft versions (0.18) also return the tensors of the other
    adapters of a custom method, still carrying their adapter name (``...lora_patch_A.other.weight``); a key of this
    adapter has exactly one segment after ``lora_patch_<part>``, so those are dropped."""
    # save_embedding_layers=False: with "auto" (peft's default) peft asks the Hub whether the repo named in the
    # config's base_model_name_or_path has a config.json -- a network request for a local patch. lora-patch never
    # targets embedding layers, so the answer cannot change the state dict.
    state = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    return {key: value for key, value in state.items() if key.partition(".lora_patch_")[2].count(".") <= 1}


def check_adapter_name(adapter_name: Any, error: type[ValueError]) -> str:
    """``adapter_name`` if it is a plain name (see :data:`ADAPTER_NAME_RE`); else ``error`` naming the rule."""
    if isinstance(adapter_name, str) and ADAPTER_NAME_RE.fullmatch(adapter_name):
        return adapter_name
    shown = repr(adapter_name) if len(repr(adapter_name)) <= 80 else repr(adapter_name)[:77] + "..."
    raise error(
        f"adapter_name={shown} is not a valid adapter name: use 1-64 letters, digits, '_' or '-' (not starting with "
        "'-'); the name becomes a folder and module key, so a path, '', '.' or '..' is refused before anything is "
        "read or written."
    )


def read_json_file(path: str, error: type[PatchLoadError], what: str) -> Any:
    try:
        size = os.path.getsize(path)
        if size > MAX_JSON_BYTES:
            raise error(f"{path}: {size} bytes is too large for {what}; the file is not a patch file.")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise PatchFileError(f"{path}: cannot be read ({one_line(exc, 240)}).") from exc

    def reject_constant(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(
            f"{path}: is not valid JSON ({one_line(exc, 240)}); the file is corrupt or was edited: re-download or "
            "re-save "
            "the patch."
        ) from exc


def read_patch_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``lora_patch.json`` provenance of the patch directory ``path`` (``{}`` for patches saved by plain peft).

    Raises :class:`PatchFileError` if the file is not a JSON object or was written by a newer format version.
    """
    file = os.path.join(os.fspath(path), SIDECAR_NAME)
    if not os.path.lexists(file):
        return {}
    if not os.path.isfile(file):
        raise PatchFileError(f"{file}: is not a regular file; remove it or re-save the patch.")
    info = read_json_file(file, PatchFileError, "the patch provenance")
    if not isinstance(info, dict):
        raise PatchFileError(f"{file}: must hold a JSON object, got {type(info).__name__}; re-save the patch.")
    version = info.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PatchFileError(f"{file}: format_version={version!r} is not a positive integer; re-save the patch.")
    if version > FORMAT_VERSION:
        raise PatchFileError(
            f"{file}: format_version {version} is newer than this lora-patch-adapters ({__version__}, format "
            f"{FORMAT_VERSION}); upgrade lora-patch-adapters to load this patch."
        )
    fingerprint = info.get("base_fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, str) and FINGERPRINT_RE.fullmatch(fingerprint)):
        raise PatchFileError(f"{file}: base_fingerprint={fingerprint!r} is not 'sha256:<64 hex digits>'.")
    return info


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(LoraPatchConfig)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_names(value: Any, allow_regex: bool) -> bool:
    if value is None or (allow_regex and isinstance(value, str)):
        return True
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "r": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "lora_alpha": (_is_number, "a finite number"),
    "gate_init": (_is_number, "a finite number"),
    "scaling": (lambda v: isinstance(v, str), "a string"),
    "gate": (lambda v: isinstance(v, str), "a string"),
    "init_weights": (lambda v: isinstance(v, str), "a string"),
    "forward_mode": (lambda v: isinstance(v, str), "a string"),
    "include_linear": (lambda v: isinstance(v, bool), "true or false"),
    "inference_mode": (lambda v: isinstance(v, bool), "true or false"),
    "target_modules": (lambda v: _is_names(v, True), "null, a regex string or a list of module names"),
    "exclude_modules": (lambda v: _is_names(v, True), "null, a regex string or a list of module names"),
    "modules_to_save": (lambda v: _is_names(v, False), "null or a list of module names"),
    "base_fingerprint": (
        lambda v: v is None or (isinstance(v, str) and FINGERPRINT_RE.fullmatch(v) is not None),
        "null or 'sha256:<64 hex digits>'",
    ),
    # peft picks the PeftModel class from task_type: "CAUSAL_LM" etc. would return a PeftModelForCausalLM around a
    # generator, whose forward expects input_ids; a lora-patch is always a plain PeftModel.
    "task_type": (lambda v: v is None, "null (lora-patch adapters load as a plain peft.PeftModel)"),
}


def read_config(path: str) -> tuple[LoraPatchConfig, dict[str, Any]]:
    file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(file):
        nested = [
            d for d in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, d, CONFIG_NAME))
        ] if os.path.isdir(path) else []
        hint = f" (found one in the sub-folder {nested[0]!r}: pass that directory)" if nested else ""
        raise PatchFileError(
            f"{file}: missing{hint}; a patch directory holds {CONFIG_NAME} and {WEIGHTS_NAME} (save one with "
            "lora_patch_adapters.save_patch)."
        )
    data = read_json_file(file, PatchConfigError, "an adapter config")
    if not isinstance(data, dict):
        raise PatchConfigError(f"{file}: must hold a JSON object, got {type(data).__name__}; re-save the patch.")
    peft_type = data.get("peft_type")
    if peft_type != PEFT_TYPE_NAME:
        raise PatchConfigError(
            f"{file}: peft_type={peft_type!r}, not {PEFT_TYPE_NAME!r}: this is not a lora-patch adapter (load other "
            "PEFT adapters with peft.PeftModel.from_pretrained)."
        )
    for key, (check, expected) in _FIELD_CHECKS.items():
        if key in data and not check(data[key]):
            raise PatchConfigError(f"{file}: {key}={data[key]!r} is invalid, it must be {expected}; re-save the patch.")
    for key in ("target_modules", "exclude_modules"):
        if isinstance(data.get(key), str):
            try:
                re.compile(data[key])
            except re.error as exc:
                raise PatchConfigError(f"{file}: {key}={data[key]!r} is not a valid regex ({exc}).") from exc
    unknown = sorted(set(data) - _CONFIG_FIELDS)
    if unknown:
        warnings.warn(
            f"{file}: ignoring unknown config field(s) {unknown} (written by a newer version?).", stacklevel=3
        )
    known = {key: value for key, value in data.items() if key in _CONFIG_FIELDS}
    try:
        config = LoraPatchConfig(**known)
    except (TypeError, ValueError) as exc:
        raise PatchConfigError(f"{file}: {one_line(exc, 240)}") from exc
    scale = config.max_scale
    if not (math.isfinite(scale) and abs(scale) <= MAX_SCALE):
        rule = {"sqrt_rank": "lora_alpha / sqrt(r)", "rank": "lora_alpha / r",
                "official": "lora_alpha on Linear layers, lora_alpha / sqrt(r) on convolutions"}[config.scaling]
        raise PatchConfigError(
            f"{file}: lora_alpha={config.lora_alpha!r} with r={config.r} gives a scale ({rule}) of {scale:.3g}, above "
            f"the limit {MAX_SCALE:g}; such a patch turns outputs into NaN/Inf: re-save the patch with a sane "
            "lora_alpha."
        )
    return config, known

