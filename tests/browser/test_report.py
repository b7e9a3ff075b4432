"""The audit's report.html opened in the system Chromium: every image decodes, the tables are there, and the page
logs no console error and makes no request off the machine (it is one self-contained file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lora_patch_adapters as lpa
from lora_patch_adapters.audit import AuditConfig, parse_budgets, run_audit, write_report

TOY = dict(eval_images=2, batch_size=2, shadow_patches=1, inner_steps=1, defense_steps=1, jpeg_qualities=(75,),
           blur_sigmas=(1.0,), init="zero", lr=3e-3, seed=3)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("audit")
    config = AuditConfig(budgets=parse_budgets("2"), defenses=["pgd", "cmua"], **TOY)
    results = run_audit(config, lambda: lpa.load_editor("testbed"), lpa.testbed_faces(4, seed=3, split="train"),
                        lpa.testbed_faces(2, seed=3, split="test"), str(out), echo=lambda line: None)
    paths = write_report(results, str(out))
    return Path(paths["html"]), json.loads(Path(paths["results"]).read_text())


def test_every_image_of_the_report_decodes_without_console_errors(report, browser_page):
    html, results = report
    page = browser_page.page
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all(
        "img", "els => els.map(e => ({alt: e.alt, done: e.complete, w: e.naturalWidth, h: e.naturalHeight}))")
    # the success curves and one labelled grid per defense
    assert len(images) == 1 + len(results["defenses"])
    undecoded = [i["alt"] for i in images if not (i["done"] and i["w"] > 0 and i["h"] > 0)]
    assert not undecoded, f"images that did not decode: {undecoded}"
    # what the browser shows is the results file's content
    cells = page.eval_on_selector_all("td:first-child", "els => els.map(e => e.textContent.trim())")
    for defense in results["defenses"]:
        assert defense["name"] in cells
    browser_page.assert_clean()


def test_a_broken_image_is_detected(report, browser_page, tmp_path):
    """The check above can fail: a report whose image data is cut short has an image that does not decode."""
    html, _ = report
    page_text = html.read_text()
    start = page_text.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = tmp_path / "report.html"
    broken.write_text(page_text[:start] + "iVBORw0KGgoAAAA" + page_text[page_text.index('"', start):])
    page = browser_page.page
    page.goto(broken.as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert 0 in widths
