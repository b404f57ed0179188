"""The browser playground: a static page at / and /playground, its files shipped in the wheel (tnn/server/playground).

The page holds no secret and talks to the same OpenAI routes as every other client, so the page and its assets are
served without the API key; every API call the page makes carries the key the user typed, which the page keeps in
the tab's sessionStorage only. A Content-Security-Policy keeps the page on this origin (no CDN, no other host).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(str(files("tnn.server") / "playground"))
PAGE_PATHS = frozenset({"/", "/playground"})
ASSETS_PREFIX = "/playground/assets"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_public(path: str) -> bool:
    """The page and its assets: open without the API key (the API calls they make are not)."""
    return path in PAGE_PATHS or path.startswith(ASSETS_PREFIX + "/")


def page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


def mount(app: FastAPI) -> None:
    """GET / and /playground serve the page; /playground/assets/* its script and style sheet."""
    for path in sorted(PAGE_PATHS):
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_PREFIX, StaticFiles(directory=PAGE_DIR), name="playground-assets")
