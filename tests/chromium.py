"""The real browser the web page's tests drive: Debian's Chromium through Playwright, kept on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("QWEN3VL_CHROMIUM", "/usr/bin/chromium"))
# No sandbox: tests run as root. The rest keeps Chromium from calling home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-extensions",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-pings",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
]
TIMEOUT_MS = 120_000  # a busy 2-core CI machine; nothing waits this long when things work


@contextlib.contextmanager
def new_tab(browser, width: int = 1280, height: int = 800, **options) -> Iterator:
    """A fresh browser tab that may only talk to 127.0.0.1; the test fails if it tried anything else."""
    context = browser.new_context(viewport={"width": width, "height": height}, locale="zh-CN", **options)
    context.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []

    def local_only(route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", local_only)
    tab = context.new_page()
    yield tab
    context.close()
    assert outside == [], f"the page tried to reach outside hosts: {outside}"


@contextlib.contextmanager
def launch() -> Iterator:
    """Debian's Chromium, headless, driven by Playwright; fails with the fix when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup-dev` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
