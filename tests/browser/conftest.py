"""Browser fixtures: the system Chromium driven by playwright's sync API, offline.

* ``chromium_path``: the Chromium binary; the test is skipped when it or playwright is missing, except under CI
  (env ``CI`` set), where a missing browser FAILS: CI must not pass by skipping.
* ``browser_page``: a :class:`BrowserPage` -- a fresh page in its own context, with the console errors, uncaught page
  errors, failed requests (a loopback request the page cancelled itself does not count) and requests that leave the
  machine (not loopback, file, data, blob or about) collected as the page runs; ``assert_clean()`` checks that there
  are none. Everything is closed after the test.

No ``playwright install``: there is no network; the browser is Debian's ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome", "chrome-extension", "devtools"}


def is_local(url: str) -> bool:
    """Whether ``url`` stays on this machine (loopback host, or a scheme that makes no network request)."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return (parts.hostname or "") in LOOPBACK_HOSTS


def _cancelled_locally(request: Any) -> bool:
    """A loopback request the page cancelled itself (``net::ERR_ABORTED``: e.g. Gradio closing its event stream once
    a result has arrived), which is not a failure of the server."""
    return is_local(request.url) and "ERR_ABORTED" in str(request.failure or "")


@dataclass
class BrowserPage:
    """A playwright page and what it did: ``console_errors`` (console messages of type error and uncaught page
    errors), ``failed_requests`` ("URL: reason"), ``external_requests`` (URLs that leave the machine)."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """No console error, no failed request, no request that leaves the machine."""
        assert not self.external_requests, f"requests that left 127.0.0.1: {self.external_requests}"
        assert not self.failed_requests, f"failed requests: {self.failed_requests}"
        assert not self.console_errors, f"console errors: {self.console_errors}"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: browser tests must run there, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system Chromium's path (skip when unavailable; fail under CI)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing('playwright is not installed (pip install -e ".[dev]")')
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which("chromium"):
        _missing(f"no Chromium at {CHROMIUM}")
    return CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")


@pytest.fixture(scope="session")
def _browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(_browser: Any) -> Iterator[BrowserPage]:
    """A fresh page (own context, 1400x1000) recording console errors, failed and non-loopback requests."""
    context = _browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    record = BrowserPage(page)
    page.on("console", lambda message: record.console_errors.append(message.text) if message.type == "error"
            else None)
    page.on("pageerror", lambda error: record.console_errors.append(f"uncaught: {error}"))
    page.on("requestfailed", lambda request: None if _cancelled_locally(request) else record.failed_requests.append(
        f"{request.url}: {request.failure}"))
    page.on("request", lambda request: None if is_local(request.url) else record.external_requests.append(request.url))
    try:
        yield record
    finally:
        context.close()
