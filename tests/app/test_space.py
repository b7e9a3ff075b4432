"""examples/space: the Hugging Face Space entry point builds the app's session from its variables; its README
carries the Spaces front matter and its requirements name the package with the [app] extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.app.test_session import save_tiny_patch

SPACE = Path(__file__).resolve().parents[2] / "examples" / "space"


def _space_module():
    spec = importlib.util.spec_from_file_location("lora_patch_space_app", SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines make_session; serves only under __main__
    return module


def test_the_space_reads_its_patches_from_variables(tmp_path):
    space = _space_module()
    bypass = save_tiny_patch(tmp_path / "bypass", "bypass")
    session = space.make_session({"LORA_PATCH_BYPASS": bypass})
    assert session.generator == "testbed" and session.patch_dirs == {"bypass": bypass, "defensive": None}
    assert session.editors["bypass"] is not None and session.editors["defensive"] is None
    assert "LORA_PATCH_DEFENSIVE" in session.run(0, "fgsm", face=0).notes["defensive"]


def test_the_space_has_its_front_matter_and_requirements():
    text = (SPACE / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front = dict(line.split(": ", 1) for line in text.split("---\n")[1].strip().splitlines())
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    requirements = [line.strip() for line in (SPACE / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == ["lora-patch-adapters[app]"]
