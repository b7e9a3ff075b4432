"""The Gradio page without a browser: gradio is optional and imported lazily, the theme loads no web font, launch()
never shares and binds where it is told, small outputs are enlarged pixel by pixel."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

from lora_patch_adapters.app import ui

PACKAGE = Path(__file__).resolve().parents[2] / "lora_patch_adapters"


def _gradio_imports() -> list[str]:
    """"file:function" of every import of gradio in the package ("<module>" at module level)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        scopes = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for child in ast.walk(node):
                    scopes.setdefault(child, node.name)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "gradio" for name in names):
                found.append(f"{path.relative_to(PACKAGE).as_posix()}:{scopes.get(node, '<module>')}")
    return found


def test_gradio_is_imported_in_one_function_only():
    """Importing the package or building the CLI parser never imports gradio (an optional extra)."""
    assert _gradio_imports() == ["app/ui.py:import_gradio"]


def test_a_missing_gradio_names_the_extra(monkeypatch):
    monkeypatch.setattr(ui, "gradio_available", lambda: False)
    with pytest.raises(ui.AppDependencyError, match=r'pip install "lora-patch-adapters\[app\]"'):
        ui.import_gradio()


def test_enlarge_repeats_pixels_by_an_integer_factor():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = ui.enlarge(image, at_least=7)  # factor ceil(7 / 3) = 3
    assert big.shape == (6, 9, 3)
    assert np.array_equal(big[::3, ::3], image) and np.array_equal(big[2::3, 2::3], image)
    assert ui.enlarge(None) is None
    assert ui.enlarge(image, at_least=3) is image


@pytest.fixture
def gradio():
    return pytest.importorskip("gradio")


def test_the_theme_uses_system_fonts_only(monkeypatch, gradio):
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    gr = ui.import_gradio()
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    theme = ui.offline_theme(gr)
    assert all(isinstance(font, str) or type(font) is gr.themes.Font for font in [*theme._font, *theme._font_mono])
    assert not theme._font_css and not theme._stylesheets  # no @font-face, no stylesheet link
    assert "googleapis" not in theme._get_theme_css()


def test_launch_never_shares_and_binds_where_told(gradio):
    kwargs = ui.launch_kwargs(gradio, "127.0.0.1", 7999)
    assert kwargs["share"] is False and kwargs["inbrowser"] is False
    assert (kwargs["server_name"], kwargs["server_port"]) == ("127.0.0.1", 7999)
    assert kwargs.get("ssr_mode", False) is False
    assert ui.launch_kwargs(gradio, None, None)["server_name"] is None  # Spaces: GRADIO_SERVER_NAME decides


def test_the_page_builds_with_every_column(gradio):
    from lora_patch_adapters.app import AppSession

    demo = ui.build_app(AppSession(n_faces=2))
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"face-choice", "target-choice", "defense-choice", "run-button", "upload", "status",
            "out-clean", "out-base", "out-bypass", "out-defensive", "note-bypass", "note-defensive"} <= ids
    notes = {block.elem_id: block.value for block in demo.blocks.values() if getattr(block, "elem_id", "") and
             block.elem_id.startswith("note-")}
    assert "--patch DIR" in str(notes["note-bypass"]) and "--defensive DIR" in str(notes["note-defensive"])
