"""Uploading patches to the Hugging Face Hub: :func:`push_patch` uploads a patch directory (or a ``peft.PeftModel``,
saved with :func:`~lora_patch_adapters.patches.save.save_patch` first) with a generated model card ``README.md``. Only
the patch files of :data:`~lora_patch_adapters.patches.format.PATCH_FILES` are uploaded; remote copies of those
names that the new patch lacks are deleted in the same commit, so that a stale ``summary.json`` never describes new
weights. Pickle files are never uploaded."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import peft

from ..version import __version__
from .card import make_model_card
from .errors import HubConnectionError
from .format import PATCH_FILES, read_patch_info
from .hub_common import LIBRARY_NAME, SHA_RE, hub_error, offline_env
from .inspect import describe_patch_dir
from .save import save_patch


def push_patch(patch_dir_or_model: Any, repo_id: str, token: str | None = None, revision: str | None = None,
               private: bool = False, commit_message: str | None = None, create_repo: bool = True,
               card_data: Mapping[str, Any] | Any | None = None) -> str:
    """Upload a patch to the Hub repo ``repo_id``; returns the URL of the commit (``.../commit/<sha>``: the sha pins
    these exact weights, e.g. ``load_patch(editor, repo_id, revision=sha)``).

    ``patch_dir_or_model``: a patch directory (``adapter_config.json`` + ``adapter_model.safetensors``, optional
    ``lora_patch.json`` / ``training.json`` / ``summary.json``) or a ``peft.PeftModel``, saved with
    ``patch_io.save_patch`` into a temporary directory first. A model card ``README.md`` is generated (see
    :func:`make_model_card`; ``card_data``: extra metadata, a dict or ``huggingface_hub.ModelCardData``, merged over
    the generated YAML) and replaces any ``README.md`` of the directory. ``revision``: the branch to commit to
    (created from ``main`` if missing; default ``main``). ``create_repo``: create the repo (``private``) if it does
    not exist. The directory is not modified.
    """
    from huggingface_hub import HfApi

    repo_id = str(repo_id)
    if revision is not None and SHA_RE.fullmatch(revision):
        raise ValueError(f"revision={revision!r} is a commit sha: push to a branch name (commits are immutable)")
    with tempfile.TemporaryDirectory(prefix="lora-patch-push-") as tmp:
        source = _patch_source(patch_dir_or_model, tmp)
        info = describe_patch_dir(source)
        if info["peft_type"] != "LORA_PATCH":
            raise ValueError(f"{source!r} holds a {info['peft_type']} adapter, not a lora-patch one (peft_type "
                             "LORA_PATCH); share other PEFT adapters with peft's push_to_hub")
        read_patch_info(source)  # a corrupt lora_patch.json is refused here, not by whoever pulls it
        if offline_env():
            raise HubConnectionError(f"cannot push to {repo_id!r}: offline mode is on (HF_HUB_OFFLINE=1)",
                                     repo_id=repo_id, revision=revision, reason="connection")
        staging = os.path.join(tmp, "upload")
        os.makedirs(staging)
        for name in PATCH_FILES:
            if name != "README.md" and os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(staging, name))
        card = make_model_card(source, repo_id=repo_id, revision=revision, card_data=card_data, info=info)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(str(card))
        message = commit_message or (f"Upload lora-patch adapter (rank {info['patch'].get('r')}, "
                                     f"{info['trainable_parameters']:,} parameters)")
        api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
        try:
            if create_repo:
                api.create_repo(repo_id, private=private, exist_ok=True)
            if revision not in (None, "main"):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision,
                                       commit_message=message, delete_patterns=list(PATCH_FILES))
        except Exception as exc:
            error = hub_error(exc, repo_id, revision, action="push")
            if error is None:
                raise
            raise error from exc
    return str(commit.commit_url)


def _patch_source(obj: Any, tmp: str) -> str:
    """The patch directory for ``obj``: a path, or a PeftModel saved into ``tmp``."""
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"patch directory {path!r} not found")
        return path
    if not isinstance(obj, peft.PeftModel):
        raise TypeError(f"push_patch expects a patch directory or a peft.PeftModel, got {type(obj).__name__}")
    adapter = obj.active_adapter if isinstance(obj.active_adapter, str) else "default"
    return os.fspath(save_patch(obj, os.path.join(tmp, "patch"), adapter_name=adapter))

