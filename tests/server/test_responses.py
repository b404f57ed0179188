"""The Responses API as the `openai` package sees it, against a real `tnn serve` of the tiny model: plain, streamed
(typed events), json_schema, function tools, stored responses (get, delete, per-key scope, 404s), conversations
through previous_response_id whose cached_tokens cover the history (also across a restart), and the re-prefill of
an evicted conversation state (same output, counted)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.support import ServerProcess, metric_value, scrape_metrics

pytestmark = pytest.mark.timeout(600)

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "word": {"type": "string", "maxLength": 6}},
    "required": ["ok", "word"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
CALLS_ROOM = 1024  # tokens: up to 8 tool calls of the tiny model's tokens, never cut by max_output_tokens
STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    # response.output_text.delta ...
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def connect(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with connect(server.url) as client:
        yield client


def test_plain_response_is_stored_retrieved_and_deleted(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model="tiny", input="To be, or not", max_output_tokens=8, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].type == "message" and response.output_text
    assert response.usage.output_tokens == 8 and response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + 8
    assert response.usage.input_tokens_details.cached_tokens >= 0
    again = sdk.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.usage == response.usage
    sdk.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as error:
        sdk.responses.retrieve(response.id)
    assert response.id in error.value.message


def test_greedy_response_equals_chat_completion(sdk: openai.OpenAI) -> None:
    """The same conversation through /v1/responses and /v1/chat/completions: the same text (both greedy)."""
    response = sdk.responses.create(model="tiny", instructions="Be brief.", input="Hello there",
                                    max_output_tokens=12, temperature=0, store=False)  # fmt: skip
    chat = sdk.chat.completions.create(
        model="tiny", max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
    )  # fmt: skip
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)  # store=False


def test_streamed_events_in_order_and_equal_to_the_result(sdk: openai.OpenAI) -> None:
    stream = sdk.responses.create(model="tiny", input="Hello", max_output_tokens=10, temperature=0, stream=True)
    events = list(stream)
    kinds = [event.type for event in events]
    assert [k for k in kinds if k != "response.output_text.delta"][:-1] == STREAM_ORDER
    assert kinds[-1] == "response.incomplete"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == final.output_text and text
    assert final.usage.output_tokens == 10
    assert sdk.responses.retrieve(final.id).output_text == text
    plain = sdk.responses.create(model="tiny", input="Hello", max_output_tokens=10, temperature=0)
    assert plain.output_text == text


def test_stream_helper_of_the_sdk(sdk: openai.OpenAI) -> None:
    """`responses.stream` accumulates the events (it needs response.completed: a reply the grammar ends)."""
    text_format = {"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}}
    with sdk.responses.stream(model="tiny", input="Hello", max_output_tokens=64, text=text_format) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_schema_output(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model="tiny", input="A JSON answer", max_output_tokens=64,
        text={"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}},
    )  # fmt: skip
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), SCHEMA)
    assert response.text.format.type == "json_schema"


def test_bad_schema_names_the_field(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        sdk.responses.create(model="tiny", input="x", text={"format": {"type": "json_schema", "name": "a",
                             "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}})  # fmt: skip
    assert error.value.body["param"] == "text.format.schema"


@pytest.mark.parametrize("choice", [{"type": "function", "name": "get_weather"}, "required"])
def test_function_tool_call(sdk: openai.OpenAI, choice: object) -> None:
    # "required" allows 1 to 8 calls, as many as the (unseeded) draws make: room for all 8 (64 tokens cut some short)
    response = sdk.responses.create(model="tiny", input="Weather in Verona?", tools=[WEATHER], tool_choice=choice,
                                    max_output_tokens=CALLS_ROOM)  # type: ignore[arg-type]  # fmt: skip
    assert response.status == "completed"
    call = response.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    # the tool's answer continues the conversation
    follow = sdk.responses.create(
        model="tiny", previous_response_id=response.id, max_output_tokens=4,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}],
    )  # fmt: skip
    assert follow.output[0].type == "message"
    assert follow.usage.input_tokens > response.usage.input_tokens


def test_streamed_function_call(sdk: openai.OpenAI) -> None:
    events = list(sdk.responses.create(model="tiny", input="Weather?", tools=[WEATHER], tool_choice="required",
                                       max_output_tokens=CALLS_ROOM, stream=True))  # type: ignore[arg-type]  # fmt: skip
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    call = events[-1].response.output[0]
    assert call.type == "function_call"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": [WEATHER]}, "tool_choice"),  # "auto" (the default) is refused, as in chat
        ({"extra_body": {"reasoning": {"effort": "low"}}}, "reasoning"),
        ({"extra_body": {"include": ["message.output_text.logprobs"]}}, "include"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"extra_body": {"truncation": "auto"}}, "truncation"),
        ({"model": "gpt-9"}, "model"),
    ],
)
def test_unsupported_or_bad_parameters_are_a_400(sdk: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as error:
        sdk.responses.create(**{"model": "tiny", "input": "x", **kwargs})
    assert error.value.body["param"] == param


def test_unknown_previous_response_and_other_keys_are_404(server: ServerProcess) -> None:
    with connect(server.url, "alice") as alice, connect(server.url, "bob") as bob:
        with pytest.raises(openai.NotFoundError) as error:
            alice.responses.create(model="tiny", input="x", previous_response_id="resp_nope")
        assert error.value.body["param"] == "previous_response_id"
        mine = alice.responses.create(model="tiny", input="Hi", max_output_tokens=2)
        assert alice.responses.retrieve(mine.id).id == mine.id
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(mine.id)  # scoped to the key that made it
        with pytest.raises(openai.NotFoundError):
            bob.responses.create(model="tiny", input="x", previous_response_id=mine.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(mine.id)
        alice.responses.delete(mine.id)


def turn(sdk: openai.OpenAI, previous: str | None, text: str) -> openai.types.responses.Response:
    return sdk.responses.create(model="tiny", instructions="Answer briefly.", input=text, previous_response_id=previous,
                                max_output_tokens=6, temperature=0)  # fmt: skip


def new_turn_tokens(url: str, text: str) -> int:
    """Tokens a follow-up adds beyond the conversation so far: its text and the template around it."""
    return int(httpx.post(url + "/tokenize", json={"prompt": f"{text}\n\nAssistant:\n",
                                                   "add_special_tokens": False}).json()["count"])  # fmt: skip


def test_twenty_turns_cached_tokens_cover_the_history_also_after_a_restart(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    args = ["--state-cache-dir", str(tmp_path / "states"), "--max-prompt-tokens", "4096", "--served-model-name", "tiny"]
    server = ServerProcess(tiny_model_dir, args=args).start()
    previous, last = None, None
    try:
        with connect(server.url) as sdk:
            for k in range(20):
                text = f"Turn {k}: go on"
                response = turn(sdk, previous, text)
                if last is not None:
                    usage = response.usage
                    assert usage.input_tokens_details.cached_tokens > last.usage.input_tokens, k
                    assert usage.input_tokens - usage.input_tokens_details.cached_tokens <= new_turn_tokens(
                        server.url, text) + 2, k  # fmt: skip
                previous, last = response.id, response
        samples = scrape_metrics(server.url)
        assert metric_value(samples, "tnn_response_history_prefills_total") == 0
    finally:
        server.stop()
    restarted = ServerProcess(tiny_model_dir, args=args, port=server.port).start()
    try:
        with connect(restarted.url) as sdk:
            assert previous is not None and last is not None
            assert sdk.responses.retrieve(previous).output_text == last.output_text
            response = turn(sdk, previous, "After the restart")
            usage = response.usage
            assert usage.input_tokens_details.cached_tokens > last.usage.input_tokens
            assert usage.input_tokens - usage.input_tokens_details.cached_tokens <= new_turn_tokens(
                restarted.url, "After the restart") + 2  # fmt: skip
        assert metric_value(scrape_metrics(restarted.url), "tnn_response_history_prefills_total") == 0
    finally:
        restarted.stop()


def test_evicted_state_is_prefilled_again_with_the_same_output(tiny_model_dir: Path) -> None:
    args = ["--served-model-name", "tiny", "--admin-key", "admin"]
    with ServerProcess(tiny_model_dir, args=args) as server, connect(server.url) as sdk:
        first = turn(sdk, None, "Hello")
        cached = turn(sdk, first.id, "And then?")
        assert cached.usage.input_tokens_details.cached_tokens > first.usage.input_tokens
        reset = httpx.post(server.url + "/admin/reset_prefix_cache", headers={"Authorization": "Bearer admin"})
        assert reset.status_code == 200 and reset.json()["memory_entries"] > 0
        again = turn(sdk, first.id, "And then?")
        assert again.usage.input_tokens_details.cached_tokens < first.usage.input_tokens
        assert again.output_text == cached.output_text
        assert metric_value(scrape_metrics(server.url), "tnn_response_history_prefills_total") == 1
