"""The Gradio page around :class:`~lora_patch_adapters.app.session.AppSession` (``lora-patch app``).

Gradio is an optional dependency (extra ``[app]``): it is imported only by :func:`import_gradio`, which turns its
absence into :class:`AppDependencyError` naming the install command. The page works offline: analytics are off
(``GRADIO_ANALYTICS_ENABLED=False`` is set before gradio is imported), the theme uses system fonts only (Gradio's
default theme loads web fonts), the server-side renderer is off, and no share link is ever made.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from typing import Any

import numpy as np

from .._checks import one_line
from .session import COLUMN_TITLES, COLUMNS, AppSession

INSTALL_HINT = 'pip install "lora-patch-adapters[app]"'
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial",
                "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace")
TITLE = "lora-patch: does a proactive defense survive a LoRA patch?"
RUN_LABEL = "Protect and edit"
DISPLAY_SIZE = 256  # small generator outputs (the testbed's 64x64) are shown enlarged to this width


class AppDependencyError(ImportError):
    """Gradio (the ``[app]`` extra) is not installed."""


def gradio_available() -> bool:
    """Whether gradio can be imported (without importing it)."""
    return importlib.util.find_spec("gradio") is not None


def import_gradio() -> Any:
    """The ``gradio`` module, imported with analytics switched off; :class:`AppDependencyError` when missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import and at every analytics call
    if not gradio_available():
        raise AppDependencyError(f"the app needs gradio, which is not installed: {INSTALL_HINT}")
    import gradio

    return gradio


def offline_theme(gr: Any) -> Any:
    """Gradio's default theme with system fonts only (no web-font request)."""
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))


def _theme_in_launch(gr: Any) -> bool:
    """Gradio >= 6 takes ``theme`` in ``launch()``; earlier versions in ``Blocks()``."""
    return "theme" in inspect.signature(gr.Blocks.launch).parameters


def enlarge(image: np.ndarray | None, at_least: int = DISPLAY_SIZE) -> np.ndarray | None:
    """A small uint8 [H, W, 3] image repeated pixel by pixel (nearest neighbour, an integer factor) to at least
    ``at_least`` pixels wide, so the browser shows the generator's own pixels instead of a blurred upscale."""
    if image is None or image.shape[1] >= at_least:
        return image
    factor = -(-at_least // image.shape[1])
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def build_app(session: AppSession) -> Any:
    """The page (a ``gr.Blocks``): pick a testbed face or upload one, a target edit, a defense; one button; the
    protected face and the four columns (:data:`~lora_patch_adapters.app.session.COLUMNS`) with their numbers."""
    gr = import_gradio()
    face_names = [str(i + 1) for i in range(len(session.faces))]
    blocks_kwargs: dict[str, Any] = {"title": "lora-patch app", "analytics_enabled": False}
    if not _theme_in_launch(gr):
        blocks_kwargs["theme"] = offline_theme(gr)
    with gr.Blocks(**blocks_kwargs) as demo:
        gr.Markdown(f"## {TITLE}\n{session.describe()} The defense perturbs the face against the base generator; "
                    "each column shows what a generator then makes of it, with MSE and PSNR against the clean edit. "
                    "Defense success = MSE > 0.05.", elem_id="intro")
        with gr.Row():
            with gr.Column(scale=3):
                gallery = gr.Gallery(value=[(enlarge(image, 128), f"face {name}") for image, name in
                                            zip(session.face_images(), face_names)],
                                     label="testbed faces", columns=len(face_names), height=180,
                                     allow_preview=False, elem_id="faces")
                face = gr.Radio(face_names, value=face_names[0], label="testbed face", elem_id="face-choice")
                upload = gr.Image(type="filepath", sources=["upload"], label="or upload a face (used instead)",
                                  height=180, elem_id="upload")
            with gr.Column(scale=2):
                target = gr.Radio(list(session.targets), value=session.targets[0], label="target edit",
                                  elem_id="target-choice")
                defense = gr.Radio(list(session.defenses), value="pgd" if "pgd" in session.defenses else None,
                                   label="defense", elem_id="defense-choice")
                eps = gr.Slider(0.005, 0.2, value=0.05, step=0.005, label="eps (L-inf, [-1, 1] scale)",
                                elem_id="eps")
                steps = gr.Number(value=0, precision=0, minimum=0, maximum=1000,
                                  label="steps (0: the defense's default, 10; anti_forgery 100)", elem_id="steps")
                button = gr.Button(RUN_LABEL, variant="primary", elem_id="run-button")
        status = gr.Markdown("Choose a face, a target and a defense, then click the button.", elem_id="status")
        with gr.Row():
            input_image = gr.Image(label="input face", interactive=False, height=160, elem_id="out-input")
            protected_image = gr.Image(label="protected face", interactive=False, height=160,
                                       elem_id="out-protected")
            protected_note = gr.Markdown("", elem_id="note-protected")
        outputs = []
        with gr.Row():
            for key in COLUMNS:
                with gr.Column(min_width=160):
                    image = gr.Image(label=COLUMN_TITLES[key], interactive=False, height=256, elem_id=f"out-{key}")
                    note = gr.Markdown(session.missing.get(key, "") if session.editors.get(key, True) is None else "",
                                       elem_id=f"note-{key}")
                outputs += [image, note]

        def pick(event: Any) -> str:
            return face_names[event.index]

        pick.__annotations__["event"] = gr.SelectData  # gradio finds the event argument by its (evaluated) type

        def run(face_name: str, upload_path: str | None, target_name: str, defense_name: str, eps_value: float,
                steps_value: float | None) -> list:
            try:
                result = session.run(target_name, defense_name, face=face_names.index(face_name) if face_name in
                                     face_names else 0, upload=upload_path or None, eps=float(eps_value),
                                     steps=int(steps_value) if steps_value else None)
            except (ValueError, TypeError, RuntimeError, OSError) as exc:
                raise gr.Error(one_line(exc, 500))
            values = [f"**{result.description}**", enlarge(result.images["input"]),
                      enlarge(result.images["protected"]), result.notes["protected"]]
            for key in COLUMNS:
                values += [enlarge(result.images[key]), result.notes[key]]
            return values

        gallery.select(pick, None, face)
        button.click(run, [face, upload, target, defense, eps, steps],
                     [status, input_image, protected_image, protected_note, *outputs])
    return demo


def launch_kwargs(gr: Any, host: str | None, port: int | None) -> dict[str, Any]:
    """``launch()`` arguments: no share link, no browser, no server-side rendering, the offline theme (Gradio >= 6);
    ``host`` / ``port`` None leave Gradio's own choice (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, as on
    Hugging Face Spaces)."""
    accepted = inspect.signature(gr.Blocks.launch).parameters
    kwargs: dict[str, Any] = {"share": False, "inbrowser": False, "server_name": host, "server_port": port}
    if "ssr_mode" in accepted:
        kwargs["ssr_mode"] = False
    if "theme" in accepted:
        kwargs["theme"] = offline_theme(gr)
    return kwargs


def launch_app(session: AppSession, host: str | None = "127.0.0.1", port: int | None = 7860) -> None:
    """Serve the page for ``session`` on ``host:port`` until interrupted (never shared, never ``0.0.0.0`` unless
    asked)."""
    gr = import_gradio()
    build_app(session).launch(**launch_kwargs(gr, host, port))
