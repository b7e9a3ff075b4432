"""Reading a patch's weights file: safetensors (header parsed up front, no tensor read until asked), or -- only when
the caller trusts it -- a pickle read with ``torch.load(weights_only=True)``; then checking the tensors against what
the patch should hold on this model (names, shapes, dtypes, finite values before and after the cast to the model's
dtype)."""

from __future__ import annotations

import os
import pickle
from typing import Any

import safetensors
import torch

from .._checks import one_line
from ..tuner.config import LoraPatchConfig
from .errors import NonFinitePatchError, PatchFileError, PatchShapeError, UnsafePatchFileError
from .format import ACCEPTED_DTYPES, CONFIG_NAME, PICKLE_SUFFIXES, PICKLE_WEIGHTS, WEIGHTS_NAME, quoted_name


class WeightsReader:
    """The tensors of a patch's weights file: safetensors (header parsed up front), or a trusted pickle."""

    def __init__(self, path: str, trust_pickle: bool) -> None:
        self.metadata: dict[str, str] = {}
        self._handle: Any = None
        self._tensors: dict[str, torch.Tensor] | None = None
        file = os.path.join(path, WEIGHTS_NAME)
        if os.path.lexists(file):
            self.file = file
            self._open_safetensors(file)
            return
        pickles = sorted(name for name in os.listdir(path) if name.endswith(PICKLE_SUFFIXES))
        if not pickles:
            raise PatchFileError(f"{file}: missing; a patch directory holds {CONFIG_NAME} and {WEIGHTS_NAME}.")
        if not trust_pickle:
            raise UnsafePatchFileError(
                f"{os.path.join(path, pickles[0])}: the weights are pickle file(s) ({', '.join(pickles)}) and there is "
                f"no {WEIGHTS_NAME}; pickle can run code when loaded, so it is refused. Convert it to safetensors on "
                "a trusted machine, or pass trust_pickle=True to read it with torch.load(weights_only=True)."
            )
        chosen = next((name for name in PICKLE_WEIGHTS if name in pickles), None)
        if chosen is None:
            raise PatchFileError(
                f"{os.path.join(path, pickles[0])}: not a patch weights file; expected {WEIGHTS_NAME} (or, with "
                f"trust_pickle=True, one of {', '.join(PICKLE_WEIGHTS)})."
            )
        self.file = os.path.join(path, chosen)
        self._load_pickle(self.file)

    def _open_safetensors(self, file: str) -> None:
        if not os.path.isfile(file):
            raise PatchFileError(f"{file}: is not a regular file; re-download or re-save the patch.")
        try:
            self._handle = safetensors.safe_open(file, framework="pt").__enter__()
            self.metadata = dict(self._handle.metadata() or {})
            self._header = {}
            for key in self._handle.keys():  # noqa: SIM118 - safe_open is not a dict
                piece = self._handle.get_slice(key)
                self._header[key] = (str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
        except Exception as exc:
            raise PatchFileError(
                f"{file}: is not a valid safetensors file ({one_line(exc, 240)}); it is truncated or corrupt: "
                "re-download "                "or re-save the patch."
            ) from exc

    def _load_pickle(self, file: str) -> None:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafePatchFileError(
                f"{file}: torch.load(weights_only=True) refused it: it is not a plain tensor pickle (it references "
                "code or other objects, or is corrupt); do not use this file."
            ) from exc
        except Exception as exc:
            raise PatchFileError(f"{file}: cannot be read ({one_line(exc, 240)}); it is truncated or corrupt.") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise PatchFileError(f"{file}: does not hold a {{name: tensor}} dict; it is not a patch weights file.")
        self._tensors = loaded
        reverse = {dtype: code for code, dtype in ACCEPTED_DTYPES.items()}
        self._header = {k: (reverse.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in loaded.items()}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
            self._handle = None

    @property
    def header(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return self._header

    def tensor(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._handle.get_tensor(key)
        except Exception as exc:
            raise PatchFileError(f"{self.file}: tensor {key!r} cannot be read ({one_line(exc, 240)}).") from exc


def check_tensors(reader: WeightsReader, expected: dict[str, Any], config: LoraPatchConfig) -> dict[str, Any]:
    """``{key: tensor}`` of the file checked against ``expected`` (``{key: tensor of the right shape and dtype}``):
    names, shapes, dtypes, finite values before and after the cast. The tensors are private copies in the model's
    dtype (never views of the file), so what was checked is what gets loaded."""
    file, header = reader.file, reader.header
    extra = sorted(set(header) - set(expected))
    missing = sorted(set(expected) - set(header))
    if extra or missing:
        parts = [
            f"{what} tensor {quoted_name(names[0])}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")
            for what, names in (("unexpected", extra), ("missing", missing))
            if names
        ]
        raise PatchShapeError(
            f"{file}: {' and '.join(parts)}; the file does not match its config and this model (edited, truncated "
            "by a tool, or from another patch): re-download or re-save the patch."
        )
    for key in sorted(expected):
        dtype_code, shape = header[key]
        want = tuple(expected[key].shape)
        if dtype_code not in ACCEPTED_DTYPES:
            raise PatchShapeError(
                f"{file}: tensor {key!r} has dtype {dtype_code}; patch tensors must be float16, bfloat16, float32 or "
                "float64."
            )
        if shape != want and not (shape == () and want == (1,)):  # gates saved 0-d by earlier versions load as (1,)
            raise PatchShapeError(
                f"{file}: tensor {key!r} has shape {list(shape)}, expected {list(want)} for this model and rank "
                f"r={config.r}; the patch does not fit this model, or its files were edited."
            )
    tensors = {}
    for key in sorted(expected):
        # A copy in memory the package owns: safetensors hands out tensors backed by a memory map of the file, so a
        # file rewritten after this check would otherwise change the values that get loaded. Every check below runs
        # on the copy, which is exactly what is loaded.
        value = reader.tensor(key).to(device="cpu", copy=True)
        if not torch.isfinite(value).all():
            raise NonFinitePatchError(
                f"{file}: tensor {key!r} holds NaN or infinite values; the patch is broken (e.g. its training "
                "diverged) and would corrupt every output: retrain it or use an earlier checkpoint."
            )
        cast = value.to(expected[key].dtype).reshape(expected[key].shape).contiguous()
        if not torch.isfinite(cast).all():
            raise NonFinitePatchError(
                f"{file}: tensor {key!r} overflows when cast from {value.dtype} to the model's {cast.dtype}; the patch "
                "is broken."
            )
        tensors[key] = cast
    return tensors

