"""The patch as a file: its format, atomic saving, validate-then-load, the Hub (pull, push, model card) and inspect.

Reads as the life of a patch file::

    format     file names, format version, config schema, provenance reader
    errors     every refusal (PatchLoadError family) and Hub failure (HubError family)
    save       save_patch: atomic directory swap, base fingerprint and provenance written once
    weights    the weights file reader (safetensors; pickles only when trusted) and tensor checks
    validate   validate_patch: every check, nothing touched
    load       load_patch: validate, then load through peft; the model is restored if peft fails
    hub_common what every Hub call shares: client name, offline switch, error mapping (PatchIntegrityError)
    verify     every pulled file checked against its commit's metadata (size, SHA-256 / git blob id)
    hub        pull_patch
    pull_out   copy_pulled_patch: the atomic ``lora-patch pull --out``
    inspect    inspect_patch: describe a directory or Hub repo without loading weights
    card       the generated model card
    push       push_patch
    official   import_official_patch / export_official_patch: the paper authors' saved patches (official layout)
"""

from ..tuner.fingerprint import ALLOW_MISMATCH_ENV, base_fingerprint, verify_injection_fingerprint
from .card import CARD_TAGS, MISUSE_STATEMENT, make_model_card
from .errors import (
    FingerprintMismatchError,
    HubAuthError,
    HubConnectionError,
    HubError,
    MissingFingerprintError,
    MissingFingerprintWarning,
    NonFinitePatchError,
    PatchConfigError,
    PatchFileError,
    PatchLoadError,
    PatchNotCachedError,
    PatchNotFoundError,
    PatchSaveError,
    PatchShapeError,
    UnsafePatchFileError,
)
from .format import ACCEPTED_DTYPES, FORMAT_VERSION, MAX_SCALE, PATCH_FILES, read_patch_info
from .hub import pull_patch
from .hub_common import PatchIntegrityError
from .inspect import inspect_patch
from .load import load_patch
from .official import OfficialPatchError, export_official_patch, import_official_patch
from .pull_out import copy_pulled_patch
from .push import push_patch
from .save import save_patch
from .validate import validate_patch

__all__ = [
    "ACCEPTED_DTYPES",
    "ALLOW_MISMATCH_ENV",
    "CARD_TAGS",
    "FORMAT_VERSION",
    "MAX_SCALE",
    "MISUSE_STATEMENT",
    "PATCH_FILES",
    "FingerprintMismatchError",
    "HubAuthError",
    "HubConnectionError",
    "HubError",
    "MissingFingerprintError",
    "MissingFingerprintWarning",
    "NonFinitePatchError",
    "OfficialPatchError",
    "PatchConfigError",
    "PatchIntegrityError",
    "PatchFileError",
    "PatchLoadError",
    "PatchNotCachedError",
    "PatchNotFoundError",
    "PatchSaveError",
    "PatchShapeError",
    "UnsafePatchFileError",
    "base_fingerprint",
    "copy_pulled_patch",
    "export_official_patch",
    "import_official_patch",
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
