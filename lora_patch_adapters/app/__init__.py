"""The interactive app (``lora-patch app``): one face, one defense, and what the base, the bypass-patched and the
defensive-patched generators make of the protected face, side by side.

:mod:`~lora_patch_adapters.app.session` computes (no user interface, unit-tested); :mod:`~lora_patch_adapters.app.ui`
is the Gradio page around it (gradio is the optional extra ``[app]``, imported only when the page is built).
"""

from .session import COLUMNS, AppResult, AppSession, prepare_image, to_uint8
from .ui import INSTALL_HINT, AppDependencyError, build_app, gradio_available, launch_app

__all__ = ["COLUMNS", "INSTALL_HINT", "AppDependencyError", "AppResult", "AppSession", "build_app",
           "gradio_available", "launch_app", "prepare_image", "to_uint8"]
