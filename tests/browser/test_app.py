"""``lora-patch app`` in a real browser: start the server in a subprocess with a tiny bypass and defensive patch,
pick a testbed face, a target and PGD, click, and check the four result images render with their numbers, with no
console error and no request leaving 127.0.0.1. ``LORA_PATCH_SCREENSHOT=1`` also saves the page to docs/app.png
(for the README; the tests write into the repository only then)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import lora_patch_adapters as lpa
from lora_patch_adapters.training import Watermark

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("input", "protected", "clean", "base", "bypass", "defensive")


def _save_tiny_patch(directory: Path, kind: str) -> str:
    editor = lpa.load_editor("testbed")
    torch.manual_seed(1)
    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(r=2, init_weights="kaiming"))
    metadata = {"generator": "testbed", "kind": kind}
    if kind == "watermark":
        metadata["watermark"] = Watermark().to_dict()
    return lpa.save_patch(model, directory, metadata=metadata)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"the app did not listen on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@dataclass
class RunningApp:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def wait(self) -> str:
        _wait_for_port(self.port, self.process, self.log)
        return self.url


@pytest.fixture
def app(tmp_path, chromium_path):
    """The app in a subprocess, starting (call ``wait()`` for its URL; the browser starts meanwhile)."""
    bypass = _save_tiny_patch(tmp_path / "bypass", "bypass")
    defensive = _save_tiny_patch(tmp_path / "defensive", "watermark")
    port = _free_port()
    log = tmp_path / "app.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lora_patch_adapters", "app", "--port", str(port), "--patch", bypass,
             "--defensive", defensive], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield RunningApp(f"http://127.0.0.1:{port}/", port, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _rendered(page, key: str) -> bool:
    return page.evaluate("(id) => { const img = document.querySelector(`#${id} img`); "
                         "return !!img && img.complete && img.naturalWidth > 0; }", f"out-{key}")


def test_the_app_protects_a_face_and_shows_every_column(app, browser_page):
    page = browser_page.page
    page.goto(app.wait(), wait_until="domcontentloaded")
    page.locator("#run-button").wait_for(timeout=20_000)
    page.locator("#face-choice").get_by_text("3", exact=True).click()
    page.locator("#target-choice").get_by_text("Eyeglasses", exact=True).click()
    page.locator("#defense-choice").get_by_text("pgd", exact=True).click()
    page.locator("#run-button").click()
    selector = ", ".join(f"#out-{key} img" for key in IMAGES)
    page.wait_for_function(f"() => document.querySelectorAll('{selector}').length === {len(IMAGES)} && "
                           "[...document.querySelectorAll('" + selector + "')].every(i => i.complete && "
                           "i.naturalWidth > 0)", timeout=30_000)
    assert all(_rendered(page, key) for key in IMAGES)
    status = page.locator("#status").inner_text()
    assert "testbed face 3" in status and "Eyeglasses" in status and "pgd" in status
    for key in ("base", "bypass", "defensive"):
        note = page.locator(f"#note-{key}").inner_text()
        assert "MSE" in note and "PSNR" in note and "defense success" in note, (key, note)
    assert "warning visible" in page.locator("#note-defensive").inner_text()
    assert "PSNR to the input" in page.locator("#note-protected").inner_text()
    browser_page.assert_clean()
    if os.environ.get("LORA_PATCH_SCREENSHOT"):
        target = REPO_ROOT / "docs" / "app.png"
        target.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(target), full_page=True)
