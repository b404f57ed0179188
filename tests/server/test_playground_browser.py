"""The playground in a real browser: Debian's chromium driven by playwright (never a downloaded browser) against a
real `tnn serve` of the shipped model on 127.0.0.1.

Each test gets a fresh browser context (a new tab with empty session storage) and fails on any script error on the
page or any request that leaves the server's origin. What the page shows is compared with what the API answers for
the very request body the page sent (seeded sampling: the same body gives the same text).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

import tnn.model
from tests.support import ServerProcess, chromium, metric_value, scrape_metrics

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

KEY = "playground-key"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


# few slots and a small prefill budget: the warm-up (at the largest shapes) stays short on a busy CPU
SERVE_ARGS = ["--max-tokens", "4096", "--max-prefill-tokens", "512"]
READY_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def shipped() -> Iterator[ServerProcess]:
    """The shipped model, open (no key)."""
    args = [*SERVE_ARGS, "--max-num-seqs", "4"]
    with ServerProcess(tnn.model.default_model_dir(), args=args, ready_timeout=READY_TIMEOUT) as process:
        yield process


@pytest.fixture(scope="module")
def keyed() -> Iterator[ServerProcess]:
    """The shipped model behind an API key, with one state slot and no queue (the second request gets 429)."""
    args = [*SERVE_ARGS, "--max-num-seqs", "1", "--max-waiting-requests", "0"]
    env = {"TNN_API_KEY": KEY}
    with ServerProcess(tnn.model.default_model_dir(), args=args, env=env, ready_timeout=READY_TIMEOUT) as process:
        yield process


class Tab:
    """A page in a fresh context; records script errors and every request URL."""

    def __init__(self, browser: Any, server: ServerProcess, viewport: dict[str, int]) -> None:
        self.server = server
        # bypass_csp: playwright's wait_for_function evaluates strings, which the page's policy forbids; the policy
        # itself is tested over HTTP, and `close` asserts that every request stayed on the server's origin
        self.context = browser.new_context(viewport=viewport, bypass_csp=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.urls.append(request.url))

    def open(self, path: str = "/") -> Tab:
        self.page.goto(self.server.url + path)
        return self

    def wait_for_model(self) -> None:
        self.page.wait_for_function("document.getElementById('srv-state-seq').textContent.includes('B')")

    def set(self, **fields: object) -> None:
        for name, value in fields.items():
            self.page.fill(f"#{name}", str(value))

    def send(self, text: str) -> tuple[dict[str, Any], Any]:
        """Type `text` and press Enter; returns the JSON body the page posted and the response (read it once
        the reply is done)."""
        self.page.fill("#input", text)
        with self.page.expect_response(lambda r: r.url.startswith(self.server.url + "/v1/")) as response:
            self.page.press("#input", "Enter")
        return json.loads(response.value.request.post_data or "{}"), response.value

    def last_reply(self) -> Any:
        return self.page.locator(".entries:not([hidden]) .entry:not(.user)").last

    def wait_done(self, timeout: float = 60_000) -> Any:
        self.page.wait_for_function(
            "document.querySelector('.entries:not([hidden]) .entry:not(.user):last-child').classList.contains('done')",
            timeout=timeout,
        )
        return self.last_reply()

    def figure(self, reply: Any, name: str) -> str:
        return reply.locator(f"[data-figure={name}]").get_attribute("data-value")

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"script errors on the page: {self.errors}"
        foreign = [url for url in self.urls if not url.startswith(self.server.url + "/")]
        assert not foreign, f"the page requested other origins: {foreign}"


@pytest.fixture
def tab(browser: Any, shipped: ServerProcess) -> Iterator[Tab]:
    tab = Tab(browser, shipped, DESKTOP).open()
    yield tab
    tab.close()


def streamed(response: Any) -> tuple[str, str | None, dict[str, Any]]:
    """Text, finish reason and usage of a streamed answer, as the server sent them to the page."""
    text, finish, usage = "", None, {}
    for line in response.text().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: ") :])
        usage = event.get("usage") or usage
        for choice in event["choices"]:
            piece = choice["delta"].get("content") if "delta" in choice else choice["text"]  # chat or completion
            text += piece or ""
            finish = choice["finish_reason"] or finish
    return text, finish, usage


def record_lengths(tab: Tab) -> None:
    """From now on, window.lengths collects the length of the newest reply's text at every DOM change."""
    tab.page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const text = document.querySelector('.entries:not([hidden]) .entry:not(.user):last-child .text');
            if (text) window.lengths.push(text.textContent.length);
        }).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true});
    }""")


def wait_metric(server: ServerProcess, predicate: Any, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape_metrics(server.url, headers={"Authorization": f"Bearer {KEY}"})
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def aborted(samples: dict) -> float:
    return metric_value(samples, "tnn_requests_total", finish_reason="abort")


def test_chat_streams_text_and_shows_the_figures(tab: Tab) -> None:
    tab.wait_for_model()
    card = httpx.get(tab.server.url + "/v1/models").json()["data"][0]
    assert tab.page.inner_text("#model") == card["id"]
    tab.set(seed=7, temperature=0.8, max_tokens=120, system="You are a player in a Shakespeare comedy.")
    record_lengths(tab)
    body, response = tab.send("Good morrow, sweet lady. What news from Verona?")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["seed"] == 7 and body["max_tokens"] == 120 and body["model"] == card["id"]
    assert body["messages"] == [
        {"role": "system", "content": "You are a player in a Shakespeare comedy."},
        {"role": "user", "content": "Good morrow, sweet lady. What news from Verona?"},
    ]
    reply = tab.wait_done()
    sent, finish, usage = streamed(response)
    text = reply.locator(".text").inner_text()
    assert text == sent and text

    lengths = tab.page.evaluate("window.lengths")
    growing = sorted(set(lengths))
    assert len(growing) >= 3, f"the text did not grow while streaming: {lengths}"
    assert lengths == sorted(lengths) and growing[-1] == len(text)

    assert 0 < float(tab.figure(reply, "ttft")) < 60_000
    assert float(tab.figure(reply, "rate")) > 0
    assert int(tab.figure(reply, "tokens")) == usage["completion_tokens"]
    assert int(tab.figure(reply, "prompt")) == usage["prompt_tokens"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    assert tab.figure(reply, "cached") == ("" if cached is None else str(cached))
    assert int(tab.figure(reply, "state")) == card["state_bytes_per_sequence"] > 0
    assert tab.figure(reply, "finish") == finish
    assert re.search(r"[KM]iB/seq", reply.locator("[data-figure=state]").inner_text())  # a unit that fits the size

    # multi-turn: the next request carries the conversation, the reply as the page showed it
    second, _ = tab.send("And what of Romeo?")
    assert second["messages"][1:] == [
        body["messages"][1],
        {"role": "assistant", "content": text},
        {"role": "user", "content": "And what of Romeo?"},
    ]
    second_reply = tab.wait_done()
    # the second turn continues the first: the prefix-state cache served part of its prompt, and the panel says so
    cached = int(tab.figure(second_reply, "cached"))
    assert 0 < cached < int(tab.figure(second_reply, "prompt"))
    samples = scrape_metrics(tab.server.url)
    hits, queried = (int(metric_value(samples, f"tnn_prefix_cache_{name}_total")) for name in ("hits", "queries"))
    assert hits >= cached
    tab.page.wait_for_function(
        f"document.getElementById('srv-cache').textContent.startsWith('{hits} / {queried} tokens')"
    )


def test_event_parser_joins_events_and_characters_split_anywhere(tab: Tab) -> None:
    """The page's SSE reader gets the same events however the network cuts the bytes (mid-event, mid-character)."""
    events = [{"text": "Café 🙂 日本語"}, {"choices": [], "usage": {"prompt_tokens": 3}}]
    stream = ": keep-alive\n\n" + "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events)
    stream += 'data: [DONE]\n\ndata: {"after": "done"}\n\n'  # nothing after [DONE] counts
    for size in (1, 2, 3, 7, len(stream.encode())):
        got = tab.page.evaluate(
            """async ([bytes, size]) => {
                const { sseEvents } = await import("/playground/assets/sse.js");
                const data = new Uint8Array(bytes);
                const body = new ReadableStream({ start(controller) {
                    for (let i = 0; i < data.length; i += size) controller.enqueue(data.slice(i, i + size));
                    controller.close();
                } });
                const out = [];
                for await (const event of sseEvents(new Response(body))) out.push(event);
                return out;
            }""",
            [list(stream.encode()), size],
        )
        assert got == events, size


def test_empty_settings_show_the_server_defaults(tab: Tab) -> None:
    """An empty field is left out of the request; its grey placeholder says what the server will use instead."""
    tab.wait_for_model()
    card = httpx.get(tab.server.url + "/v1/models").json()["data"][0]
    defaults = {"temperature": 1, "top_p": 1, "top_k": "off", "min_p": "off", "max_tokens": "server's",
                **card.get("generation_defaults", {})}  # fmt: skip
    for name in ("temperature", "top_p", "top_k", "min_p", "max_tokens"):
        assert tab.page.get_attribute(f"#{name}", "placeholder") == str(defaults[name]), name
    stops = "\n".join(stop.replace("\n", "\\n") for stop in defaults.get("stop", [])) or "none"
    assert tab.page.get_attribute("#stop", "placeholder") == stops
    tab.set(max_tokens=4)
    body, _ = tab.send("Hark!")
    assert set(body) == {"model", "messages", "max_tokens", "stream", "stream_options"}  # nothing else was typed
    tab.wait_done()


def test_completion_mode_streams_the_raw_prompt_with_stop_strings(tab: Tab) -> None:
    tab.wait_for_model()
    tab.page.click("button[data-mode=completion]")
    assert tab.page.is_hidden("#system")
    tab.set(seed=11, max_tokens=60, temperature=0.7, top_k=40, stop="\\n\\n\nEXEUNT")
    body, response = tab.send("ROMEO:\n")
    assert body["prompt"] == "ROMEO:\n" and body["stop"] == ["\n\n", "EXEUNT"] and body["top_k"] == 40
    assert "messages" not in body and "min_p" not in body  # 0 = off is not sent
    reply = tab.wait_done()
    sent, finish, usage = streamed(response)
    assert reply.locator(".prompt").inner_text() == "ROMEO:\n"
    assert reply.locator(".generated").inner_text() == sent
    assert tab.figure(reply, "finish") == finish and int(tab.figure(reply, "prompt")) == usage["prompt_tokens"]
    # the chat transcript is kept apart and comes back
    tab.page.click("button[data-mode=chat]")
    assert tab.page.locator(".entries:not([hidden]) .entry").count() == 0


def test_json_schema_mode_constrains_the_reply(tab: Tab) -> None:
    """The schema box goes out as response_format json_schema; the streamed reply parses and validates, in chat and
    completion mode; the server's 400 for a schema it cannot compile and the page's own error for text that is not
    JSON are shown, and the latter sends nothing."""
    tab.wait_for_model()
    assert tab.page.is_hidden("#schema")
    tab.page.check("#json-mode")
    assert tab.page.is_visible("#schema")
    schema = json.loads(tab.page.input_value("#schema"))  # the example the page offers
    expected_format = {"type": "json_schema", "json_schema": {"name": "playground", "schema": schema, "strict": True}}
    tab.set(seed=4, max_tokens=300)
    for mode, text_selector in (("chat", ".text"), ("completion", ".generated")):
        tab.page.click(f"button[data-mode={mode}]")
        body, response = tab.send("Describe a character of the play.")
        assert body["response_format"] == expected_format, mode
        reply = tab.wait_done()
        sent, finish, _ = streamed(response)
        text = reply.locator(text_selector).inner_text()
        assert text == sent and finish == "stop", (mode, finish, text)
        jsonschema.validate(json.loads(text), schema)
        assert tab.figure(reply, "json") == "true", mode

    tab.set(schema='{"type": "nonsense"}')  # JSON, but not a schema the server can compile
    tab.send("Again.")
    reply = tab.wait_done()
    assert reply.locator(".error b").inner_text().startswith("400")
    assert "param: response_format.json_schema.schema" in reply.locator("[data-testid=error-details]").inner_text()

    tab.set(schema="{not json")
    sent_before = [url for url in tab.urls if "/v1/completions" in url]
    tab.page.fill("#input", "Once more.")
    tab.page.press("#input", "Enter")
    reply = tab.wait_done()
    assert reply.locator("[data-testid=error-message]").inner_text().startswith("schema: not JSON")
    assert [url for url in tab.urls if "/v1/completions" in url] == sent_before  # nothing went to the server
    assert tab.page.input_value("#input") == "Once more."  # nothing lost


def test_stop_button_cancels_and_the_server_frees_the_slot(tab: Tab) -> None:
    server = tab.server
    before = wait_metric(server, lambda s: metric_value(s, "tnn_num_requests_running") == 0)
    tab.wait_for_model()
    tab.set(seed=1, max_tokens=4000, temperature=1.0, stop="@@@")  # a stop string that never comes: a long reply
    tab.send("Tell me the whole history of the kings of England.")
    assert tab.page.is_visible("[data-testid=stop]") and tab.page.is_hidden("[data-testid=send]")
    tab.page.wait_for_function("document.getElementById('srv-running').textContent === '1'")  # the page's panel
    tab.page.wait_for_function("document.querySelector('.entry.assistant:last-child .text').textContent.length > 40")
    tab.page.click("[data-testid=stop]")
    reply = tab.wait_done(timeout=10_000)
    assert tab.figure(reply, "finish") == "stopped" and reply.locator(".error").is_hidden()
    after = wait_metric(
        server, lambda s: metric_value(s, "tnn_num_requests_running") == 0 and aborted(s) > aborted(before)
    )
    assert metric_value(after, "tnn_num_requests_running") == 0 and metric_value(after, "tnn_state_slots_used") == 0
    assert aborted(after) - aborted(before) == 1  # cancelled, not finished
    tab.page.wait_for_function("document.getElementById('srv-running').textContent === '0'")
    assert tab.page.is_visible("[data-testid=send]")


def test_keyboard_enter_sends_shift_enter_breaks_the_line_escape_stops(tab: Tab) -> None:
    server = tab.server
    before = wait_metric(server, lambda s: metric_value(s, "tnn_num_requests_running") == 0)
    tab.wait_for_model()
    tab.set(seed=2, max_tokens=4000, stop="@@@")
    tab.page.click("#input")
    tab.page.keyboard.type("First line")
    tab.page.keyboard.press("Shift+Enter")
    tab.page.keyboard.type("second line")
    assert tab.page.input_value("#input") == "First line\nsecond line"
    assert tab.page.locator(".entry").count() == 0  # nothing sent yet
    with tab.page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request:
        tab.page.keyboard.press("Enter")
    assert json.loads(request.value.post_data)["messages"][-1]["content"] == "First line\nsecond line"
    assert tab.page.input_value("#input") == ""
    tab.page.wait_for_function("document.querySelector('.entry.assistant:last-child .text').textContent.length > 20")
    tab.page.keyboard.press("Escape")
    reply = tab.wait_done(timeout=10_000)
    assert tab.figure(reply, "finish") == "stopped"
    after = wait_metric(
        server, lambda s: metric_value(s, "tnn_num_requests_running") == 0 and aborted(s) > aborted(before)
    )
    assert aborted(after) - aborted(before) == 1


def test_bad_parameter_shows_the_api_error_and_keeps_the_message(tab: Tab) -> None:
    tab.wait_for_model()
    tab.set(top_p=0)
    tab.send("Hello?")
    reply = tab.wait_done()
    message = reply.locator("[data-testid=error-message]").inner_text()
    expected = httpx.post(tab.server.url + "/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "Hello?"}], "top_p": 0}).json()["error"]  # fmt: skip
    assert message == expected["message"] and "top_p" in message
    assert reply.locator(".error b").inner_text().startswith("400")
    assert "param: top_p" in reply.locator("[data-testid=error-details]").inner_text()
    assert tab.page.input_value("#input") == "Hello?"  # nothing lost: fix the setting and send again
    tab.set(top_p=0.9, max_tokens=8)
    body, _ = tab.send("Hello?")
    assert body["messages"] == [{"role": "user", "content": "Hello?"}]  # the failed turn left the conversation
    assert tab.wait_done().locator(".error").is_hidden()


def test_api_key_prompt_keeps_the_key_for_the_tab_only(browser: Any, keyed: ServerProcess) -> None:
    tab = Tab(browser, keyed, DESKTOP).open()
    try:
        dialog = tab.page.locator("[data-testid=key-dialog]")
        dialog.wait_for(state="visible")
        assert "missing API key" in tab.page.inner_text("[data-testid=key-reason]")
        tab.page.fill("[data-testid=key-input]", "wrong")
        tab.page.click("[data-testid=key-save]")
        tab.page.wait_for_function("document.getElementById('key-reason').textContent.includes('invalid API key')")
        assert dialog.is_visible()
        tab.page.fill("[data-testid=key-input]", KEY)
        tab.page.click("[data-testid=key-save]")
        tab.wait_for_model()
        assert dialog.is_hidden()
        assert tab.page.evaluate("sessionStorage.getItem('tnn-serve.api-key')") == KEY
        assert tab.page.evaluate("localStorage.length") == 0 and tab.context.cookies() == []
        tab.set(seed=5, max_tokens=16)
        with tab.page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request:
            tab.page.fill("#input", "Who goes there?")
            tab.page.press("#input", "Enter")
        assert request.value.headers["authorization"] == f"Bearer {KEY}"
        assert tab.wait_done().locator(".error").is_hidden()
    finally:
        tab.close()
    fresh = Tab(browser, keyed, DESKTOP).open()  # a new tab (context) has no key: the prompt again
    try:
        fresh.page.locator("[data-testid=key-dialog]").wait_for(state="visible")
    finally:
        fresh.close()


def test_overloaded_server_shows_the_429(browser: Any, keyed: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "To be", "max_tokens": 4000, "ignore_eos": True, "stop": [], "stream": True}  # no default stop
    release = threading.Event()

    def hold_the_only_slot() -> None:
        with httpx.stream("POST", keyed.url + "/v1/completions", json=body, headers=headers, timeout=60) as response:
            for _ in response.iter_lines():
                if release.is_set():
                    return

    holder = threading.Thread(target=hold_the_only_slot)
    holder.start()
    tab = Tab(browser, keyed, DESKTOP)
    try:
        wait_metric(keyed, lambda s: metric_value(s, "tnn_state_slots_used") == 1)
        tab.page.goto(keyed.url + "/")
        tab.page.evaluate(f"sessionStorage.setItem('tnn-serve.api-key', {json.dumps(KEY)})")
        tab.page.reload()
        tab.wait_for_model()
        tab.send("Anyone?")
        reply = tab.wait_done()
        assert reply.locator(".error b").inner_text().startswith("429")
        assert "overloaded" in reply.locator("[data-testid=error-message]").inner_text()
        assert "retry after 1 s" in reply.locator("[data-testid=error-details]").inner_text()
    finally:
        release.set()
        holder.join(timeout=30)
        tab.close()


def test_phone_width_layout(browser: Any, shipped: ServerProcess, tmp_path: Path) -> None:
    tab = Tab(browser, shipped, PHONE).open("/playground")
    try:
        tab.wait_for_model()
        page = tab.page
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling
        assert page.evaluate("document.getElementById('settings').open") is False  # folded above the chat
        for selector in ("#input", "[data-testid=send]", "button[data-mode=completion]", "#key-button", "#server"):
            box = page.locator(selector).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], selector
            assert box["y"] + box["height"] <= PHONE["height"], selector
        page.click("#settings summary")
        tab.set(seed=3, max_tokens=40)
        page.click("#settings summary")
        tab.send("Speak, friend.")
        tab.wait_done()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=str(tmp_path / "phone.png"))
    finally:
        tab.close()
