"""Headless Chromium from Debian's `chromium` package, driven by Playwright (PyPI).

Playwright's own browser download cannot work here, so it launches /usr/bin/chromium.
`ConsolePage` wraps a page of the console: it signs in with a key the way a person does and
records what should never happen (script errors, CSP violations, requests to other origins,
dialogs), for the tests to assert on. `console_page` opens one in a fresh browser context.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    Response,
    sync_playwright,
)

CHROMIUM = "/usr/bin/chromium"
# Chromium logs each error answer the page receives as a console error; those are checked
# as answers instead (`error_answers`).
ERROR_ANSWER_LOG = "Failed to load resource: the server responded with a status of"
# The key bar asks the admin API whether the key is an admin key: a plain key gets 403.
ADMIN_PROBE = "403 GET /api/admin/keys"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless; closed at the end whatever happens."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        raise RuntimeError("Chromium is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def console_page(browser: Browser, base_url: str, out_dir: Path) -> Iterator[ConsolePage]:
    """A tab on the console at `base_url`, in a context of its own (its own session storage),
    closed at the end."""
    context = browser.new_context(viewport={"width": 1360, "height": 900},
                                  accept_downloads=True)
    try:
        yield ConsolePage(context.new_page(), base_url, out_dir)
    finally:
        context.close()


@dataclass
class ConsolePage:
    """One browser tab on the console of the stack at `base_url`."""

    page: Page
    base_url: str
    out_dir: Path
    errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    error_answers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("response", self._response)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("request", self._request)
        self.page.on("dialog", self._dialog)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith(ERROR_ANSWER_LOG):
            self.errors.append(message.text)

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            path = urlsplit(response.url).path
            self.error_answers.append(f"{response.status} {response.request.method} {path}")

    def _request(self, request: Request) -> None:
        url = request.url
        if not url.startswith((self.base_url + "/", "data:", "blob:")):
            self.foreign_requests.append(url)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, section: str = "playground", key: str | None = None) -> Page:
        """Open a section; with `key`, enter it in the key box first."""
        self.page.goto(f"{self.base_url}/console/")
        if key is not None:
            self.page.fill("#api-key", key)
            self.page.click("#use-key")
            self.page.wait_for_selector("#forget-key")
        self.page.goto(f"{self.base_url}/console/#/{section}")
        self.page.wait_for_selector(f'[data-page="{section}"] h1')
        return self.page

    def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        path = self.out_dir / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def assert_clean(self, *expected_error_answers: str) -> None:
        """No script error, no CSP violation, nothing fetched from elsewhere, no dialog, and
        no error answer but those expected (`"400 POST /api/images/generations"`)."""
        assert not self.errors, self.errors
        expected = {ADMIN_PROBE, *expected_error_answers}
        unexpected = [a for a in self.error_answers if a not in expected]
        assert not unexpected, unexpected
        assert not self.foreign_requests, self.foreign_requests
        assert not self.dialogs, self.dialogs
