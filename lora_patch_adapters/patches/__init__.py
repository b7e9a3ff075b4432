"""The patch as a file: its format, atomic saving, validate-then-load, the Hub (pull, push, model card) and inspect.

Reads as the life of a patch file::

    format     file names, format version, config schema, provenance reader
    errors     every refusal (PatchLoadError family) and Hub failure (HubError family)
    save       save_patch: atomic directory swap, base fingerprint and provenance written once
    weights    the weights file reader (safetensors; pickles only when trusted) and tensor checks
    validate   validate_patch: every check, nothing touched
    load       load_patch: validate, then load through peft; the model is restored if peft fails
    hub        pull_patch and the Hub error mapping
    inspect    inspect_patch: describe a directory or Hub repo without loading weights
    card       the generated model card
    push       push_patch
"""

from ..tuner.fingerprint import ALLOW_MISMATCH_ENV, base_fingerprint, verify_injection_fingerprint
from .card import CARD_TAGS, MISUSE_STATEMENT, make_model_card
from .errors import (
    FingerprintMismatchError,
    HubAuthError,
    HubConnectionError,
    HubError,
    MissingFingerprintWarning,
    NonFinitePatchError,
    PatchConfigError,
    PatchFileError,
    PatchLoadError,
    PatchNotCachedError,
    PatchNotFoundError,
    PatchShapeError,
    UnsafePatchFileError,
)
from .format import ACCEPTED_DTYPES, FORMAT_VERSION, PATCH_FILES, read_patch_info
from .hub import pull_patch
from .inspect import inspect_patch
from .load import load_patch
from .push import push_patch
from .save import save_patch
from .validate import validate_patch

__all__ = [
    "ACCEPTED_DTYPES",
    "ALLOW_MISMATCH_ENV",
    "CARD_TAGS",
    "FORMAT_VERSION",
    "MISUSE_STATEMENT",
    "PATCH_FILES",
    "FingerprintMismatchError",
    "HubAuthError",
    "HubConnectionError",
    "HubError",
    "MissingFingerprintWarning",
    "NonFinitePatchError",
    "PatchConfigError",
    "PatchFileError",
    "PatchLoadError",
    "PatchNotCachedError",
    "PatchNotFoundError",
    "PatchShapeError",
    "UnsafePatchFileError",
    "base_fingerprint",
    "inspect_patch",
    "load_patch",
    "make_model_card",
    "pull_patch",
    "push_patch",
    "read_patch_info",
    "save_patch",
    "validate_patch",
    "verify_injection_fingerprint",
]
