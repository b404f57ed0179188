"""Screenshots of the playground for the README: the shipped model served on 127.0.0.1, driven by Debian's chromium.

    .venv/bin/python scripts/playground_screenshots.py [--out docs] [--chromium /usr/bin/chromium]

Writes playground-desktop.png (1280x800) and playground-phone.png (390x844) after a short seeded chat, so the
pictures show streamed replies with their figures and the server panel; on the desktop the last turn is in JSON-schema
mode (the settings show the schema, the reply follows it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the same ServerProcess the browser tests use

import tnn.model  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

SYSTEM = "You are a courtier in a Shakespeare play."
TURNS = ["Good morrow! What news from the court?", "And how fares the king?"]
JSON_TURN = "Who speaks next, and in what mood?"


def chat(page: Page, url: str, turns: list[str], *, seed: int, json_turn: str | None = None) -> None:
    page.goto(url + "/playground")
    page.wait_for_function("document.getElementById('srv-state-seq').textContent.includes('B')")
    if not page.evaluate("document.getElementById('settings').open"):
        page.click("#settings summary")
    page.fill("#system", SYSTEM)
    page.fill("#seed", str(seed))
    page.fill("#max_tokens", "60")
    page.fill("#stop", "\\n\\n")
    if page.viewport_size and page.viewport_size["width"] < 760:
        page.click("#settings summary")  # fold the settings again on a phone
    for index, turn in enumerate(turns):
        if index:
            page.fill("#seed", str(seed + index))  # a new seed per turn
        say(page, turn)
    if json_turn is not None:
        page.check("#json-mode")
        page.fill("#max_tokens", "200")
        say(page, json_turn)
    page.wait_for_timeout(1200)  # one more /metrics poll: the panel shows the idle server


def say(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelector('.entry.assistant:last-child')?.classList.contains('done')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ServerProcess(tnn.model.default_model_dir()) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium)
        for name, viewport, turns, json_turn in [
            ("desktop", {"width": 1280, "height": 800}, TURNS, JSON_TURN),
            ("phone", {"width": 390, "height": 844}, TURNS[:1], None),
        ]:
            context = browser.new_context(viewport=viewport, device_scale_factor=1, bypass_csp=True)
            page = context.new_page()
            chat(page, server.url, turns, seed=4, json_turn=json_turn)
            path = args.out / f"playground-{name}.png"
            page.screenshot(path=str(path))
            print(f"{path} ({path.stat().st_size // 1024} KiB)")
            context.close()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
