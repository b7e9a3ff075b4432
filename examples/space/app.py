"""The ``lora-patch app`` page as a Hugging Face Space (or any machine): ``python app.py``.

Settings come from environment variables (Space "Variables"), all optional:

* ``LORA_PATCH_BYPASS`` / ``LORA_PATCH_DEFENSIVE``: the bypass / defensive patch of the third / fourth column, a
  local patch directory or a Hub repo id (fetched with ``lora_patch_adapters.pull_patch``: safetensors only,
  verified); without them those columns say which variable fills them;
* ``LORA_PATCH_GENERATOR`` (default ``testbed``, shipped with the package) and ``LORA_PATCH_CHECKPOINT`` (the
  official weights an official generator needs).

Gradio chooses the address from ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (a Space sets them), else
127.0.0.1:7860. No share link is made and nothing else is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lora_patch_adapters import pull_patch
from lora_patch_adapters.app import AppSession, launch_app

MISSING = {"bypass": "No bypass patch: set the Space variable LORA_PATCH_BYPASS (a Hub repo id or a folder).",
           "defensive": "No defensive patch: set the Space variable LORA_PATCH_DEFENSIVE (a Hub repo id or a folder)."}


def patch_dir(value: str | None) -> str | None:
    """A local patch directory as it is; a Hub repo id pulled into the cache (its local snapshot directory)."""
    if not value:
        return None
    return value if os.path.isdir(value) else pull_patch(value)


def make_session(env: Mapping[str, str] = os.environ) -> AppSession:
    return AppSession(generator=env.get("LORA_PATCH_GENERATOR") or "testbed",
                      checkpoint=env.get("LORA_PATCH_CHECKPOINT") or None,
                      patch=patch_dir(env.get("LORA_PATCH_BYPASS")),
                      defensive=patch_dir(env.get("LORA_PATCH_DEFENSIVE")), missing=MISSING)


if __name__ == "__main__":
    launch_app(make_session(), host=None, port=None)
