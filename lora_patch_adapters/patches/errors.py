"""Every error a patch operation raises, in one place.

Refusals to load (all :class:`PatchLoadError`, a ``ValueError``; the model is left unmodified and the message names
the file, the field or tensor, and the fix): :class:`PatchFileError`, :class:`PatchConfigError`,
:class:`PatchShapeError`, :class:`NonFinitePatchError`, :class:`FingerprintMismatchError` (and its
:class:`MissingFingerprintError`), :class:`UnsafePatchFileError`. Refusals to save: :class:`PatchSaveError` (a
``ValueError``; nothing is written). Hub failures (all :class:`HubError`, a ``RuntimeError`` with a one-line message):
:class:`PatchNotFoundError`, :class:`PatchNotCachedError`, :class:`HubConnectionError`, :class:`HubAuthError`.
"""

from __future__ import annotations

from .._checks import one_line
from ..tuner.fingerprint import FingerprintMismatchError, PatchLoadError


class PatchFileError(PatchLoadError):
    """A file of the patch is missing, truncated, corrupt or not what its name says."""


class PatchConfigError(PatchLoadError):
    """``adapter_config.json`` is not a valid lora-patch config, or does not fit the model (missing or unsupported
    target layers)."""


class PatchShapeError(PatchLoadError):
    """The weights file holds missing, extra or misnamed tensors, or tensors of the wrong shape or dtype."""


class NonFinitePatchError(PatchLoadError):
    """A patch tensor holds NaN or infinite values (or overflows when cast to the model's dtype)."""


class UnsafePatchFileError(PatchLoadError):
    """The weights are a pickle file (which can run code when loaded) and ``trust_pickle`` was not given, or
    ``torch.load(weights_only=True)`` refused its content."""


class MissingFingerprintError(FingerprintMismatchError):
    """The patch records no base fingerprint (e.g. saved with plain ``save_pretrained`` by an older version), so it
    cannot be checked against the model; refused unless ``allow_missing_fingerprint=True``."""


class MissingFingerprintWarning(UserWarning):
    """The patch records no base fingerprint and ``allow_missing_fingerprint=True`` was given, so it was not
    checked."""


class PatchSaveError(ValueError):
    """``save_patch`` refused to write: an invalid adapter name, NaN/Inf adapter tensors, or metadata too large for
    the patch files. Nothing was written or removed."""


class HubError(RuntimeError):
    """A Hub operation failed; the message is one line. ``repo_id``, ``revision`` and ``status_code`` (HTTP, or None)
    say where; ``reason`` says what (``"repo"``, ``"revision"``, ``"file"``, ``"repo_id"``, ``"cache"``,
    ``"connection"``, ``"auth"``, ``"http"``); ``__cause__`` is the original ``huggingface_hub`` / network
    exception."""

    def __init__(self, message: str, *, repo_id: str | None = None, revision: str | None = None,
                 status_code: int | None = None, reason: str | None = None) -> None:
        super().__init__(one_line(message))
        self.repo_id = repo_id
        self.revision = revision
        self.status_code = status_code
        self.reason = reason


class PatchNotFoundError(HubError):
    """The repo, the revision (commit sha, branch or tag) or a patch file does not exist, or is not visible with the
    token given (the Hub answers "not found" for private repos)."""


class PatchNotCachedError(PatchNotFoundError):
    """Offline (``local_files_only=True`` / ``HF_HUB_OFFLINE=1``) and the revision is not in the local cache."""


class HubConnectionError(HubError):
    """The Hub cannot be reached (no network, closed port, timeout)."""


class HubAuthError(HubError):
    """Missing, invalid or insufficient token (HTTP 401 / 403)."""


__all__ = [
    "FingerprintMismatchError",
    "HubAuthError",
    "HubConnectionError",
    "HubError",
    "MissingFingerprintError",
    "MissingFingerprintWarning",
    "NonFinitePatchError",
    "PatchConfigError",
    "PatchFileError",
    "PatchLoadError",
    "PatchNotCachedError",
    "PatchNotFoundError",
    "PatchSaveError",
    "PatchShapeError",
    "UnsafePatchFileError",
]
