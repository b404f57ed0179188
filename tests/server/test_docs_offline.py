"""/docs (Swagger UI) and /redoc work offline: their pages and assets come from this server. Over HTTP: every
src/href of the pages is a path on this server and the assets are served. In Debian's chromium (playwright, skipped
cleanly when either is absent): every request that would leave the machine is aborted and recorded, none may
happen, and the pages render the API's operations."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.support import ServerProcess, chromium

pytestmark = pytest.mark.timeout(300)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_reference_only_this_server(server: ServerProcess, page: str) -> None:
    html = httpx.get(server.url + page).text
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert links and all(link.startswith("/") and not link.startswith("//") for link in links), links
    assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html
    assert "default-src 'none'" in httpx.get(server.url + page).headers["content-security-policy"]
    for link in links:
        assert httpx.get(server.url + link).status_code == 200, link


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.mark.browser
@pytest.mark.parametrize(
    ("page", "rendered"),
    [("/docs", ".opblock-summary-path"), ("/redoc", "[role=menuitem]")],
)
def test_renders_offline_in_chromium(browser: Any, server: ServerProcess, page: str, rendered: str) -> None:
    context = browser.new_context()
    left: list[str] = []
    errors: list[str] = []

    def keep_local(route: Any) -> None:
        if urlparse(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    context.route("**/*", keep_local)
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        tab.goto(server.url + page, wait_until="networkidle")
        tab.locator(rendered).first.wait_for(timeout=60_000)  # the operations are on the page
        assert tab.locator(rendered).count() > 10
        assert tab.get_by_text("/v1/responses").count() > 0 and tab.get_by_text("/api/chat").count() > 0
    finally:
        context.close()
    assert left == [], f"requests that would have left the machine: {left}"
    assert errors == []
