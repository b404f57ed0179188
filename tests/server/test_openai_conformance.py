"""The OpenAI API as the `openai` package (sync, async, streaming) sees it, against a real `tnn serve` of the tiny
model: nulls, unknown fields, strict types, min_p, stop_token_ids, logit_bias, structured output (json_schema,
json_object, guided_*), tool calls, CORS preflight."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.timeout(300)

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "word": {"type": "string", "maxLength": 6},
    },
    "required": ["ok", "count", "word"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
}


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def complete(sdk: openai.OpenAI, **kwargs: object) -> openai.types.Completion:
    return sdk.completions.create(model="tiny", **{"prompt": "To be", "max_tokens": 6, **kwargs})  # type: ignore[call-overload]


def bad_request(call: object) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        call()  # type: ignore[operator]
    return caught.value


# ---- nulls, unknown fields, strict types -------------------------------------------------------------------------


def test_explicit_nulls_mean_the_default(sdk: openai.OpenAI, server: ServerProcess) -> None:
    nulls = dict(n=None, stream=None, logprobs=None, stop=None, temperature=None, top_p=None, seed=None, user=None,
                 presence_penalty=None, frequency_penalty=None, logit_bias=None, echo=None, best_of=None, suffix=None,
                 stream_options=None)  # fmt: skip
    reply = complete(sdk, max_tokens=3, **nulls)
    assert len(reply.choices) == 1 and reply.usage is not None and reply.usage.completion_tokens <= 3
    chat = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, n=None, stream=None, logprobs=None,
        top_logprobs=None, stop=None, temperature=None, response_format=None, tools=None, tool_choice=None,
        seed=None, max_completion_tokens=None, parallel_tool_calls=None,
    )  # fmt: skip
    assert chat.choices[0].message.role == "assistant"
    raw = httpx.post(server.url + "/v1/completions",
                     json={"prompt": "x", "max_tokens": 2, "min_p": None, "top_k": None, "stop_token_ids": None,
                           "guided_json": None, "ignore_eos": None, "repetition_penalty": None})  # fmt: skip
    assert raw.status_code == 200, raw.text


@pytest.mark.parametrize("extra", [{"foo": 1}, {"guided_grammar": "x"}, {"best_of_n": 2}])
def test_unknown_fields_are_a_400_naming_them(sdk: openai.OpenAI, extra: dict[str, object]) -> None:
    (name,) = extra
    error = bad_request(lambda: complete(sdk, extra_body=extra))
    assert error.param == name and error.code == "unknown_parameter" and name in error.message
    assert "min_p" in error.message  # the supported extensions are listed
    error = bad_request(lambda: sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                            extra_body=extra))  # fmt: skip
    assert error.param == name


def test_unknown_field_inside_a_message_is_named(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "hi", "mood": "calm"}]
    error = bad_request(lambda: sdk.chat.completions.create(model="tiny", messages=messages))  # type: ignore[arg-type]
    assert error.param == "messages.0.mood"


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", "5"), ("stream", "yes"), ("n", "1"), ("temperature", "0.5"), ("echo", 1), ("seed", 1.5),
     ("logprobs", True), ("stop", 5), ("top_k", "3"), ("ignore_eos", "true")],
)  # fmt: skip
def test_strict_types_are_a_400_naming_the_field(server: ServerProcess, field: str, value: object) -> None:
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "To be", "max_tokens": 2, field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["code"] == "invalid_type" and field in error["message"]


def test_strict_types_through_the_sdk(sdk: openai.OpenAI) -> None:
    error = bad_request(lambda: complete(sdk, max_tokens="5"))
    assert error.param == "max_tokens"
    error = bad_request(lambda: sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                            stream="yes"))  # type: ignore[call-overload]  # fmt: skip
    assert error.param == "stream"


# ---- min_p, logit_bias, stop_token_ids ------------------------------------------------------------------------------


def test_min_p_one_keeps_only_the_most_likely_token(sdk: openai.OpenAI) -> None:
    greedy = complete(sdk, temperature=0, max_tokens=8, extra_body={"ignore_eos": True}).choices[0].text
    for seed in range(3):
        sampled = complete(sdk, temperature=1.5, seed=seed, max_tokens=8, extra_body={"min_p": 1.0, "ignore_eos": True})
        assert sampled.choices[0].text == greedy
    free = {complete(sdk, temperature=1.5, seed=s, max_tokens=8, extra_body={"ignore_eos": True}).choices[0].text
            for s in range(3)}  # fmt: skip
    assert free != {greedy}  # without min_p the same seeds sample other tokens


def _single_token(server: ServerProcess, text: str) -> int:
    (token,) = httpx.post(server.url + "/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    return token


def test_logit_bias_forces_and_bans_tokens(sdk: openai.OpenAI, server: ServerProcess) -> None:
    token = _single_token(server, "ox")
    forced = complete(sdk, temperature=1.0, seed=0, max_tokens=5, logit_bias={str(token): 100},
                      extra_body={"ignore_eos": True})  # fmt: skip
    assert forced.choices[0].text == "ox" * 5
    greedy = complete(sdk, temperature=0, max_tokens=1, extra_body={"ignore_eos": True}).choices[0].text
    first = _single_token(server, greedy)
    banned = complete(sdk, temperature=0, max_tokens=1, logit_bias={str(first): -100}, extra_body={"ignore_eos": True})
    assert banned.choices[0].text != greedy


@pytest.mark.parametrize("key", ["99999", "-1", "abc"])
def test_logit_bias_ids_are_checked_against_the_vocabulary(sdk: openai.OpenAI, key: str) -> None:
    error = bad_request(lambda: complete(sdk, logit_bias={key: 1}))
    assert error.param == "logit_bias" and key.lstrip("-") in error.message


def test_stop_token_ids_end_the_choice_without_their_text(sdk: openai.OpenAI, server: ServerProcess) -> None:
    token = _single_token(server, "ox")
    reply = complete(
        sdk, max_tokens=5, logit_bias={str(token): 100}, extra_body={"stop_token_ids": [token], "ignore_eos": True}
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "stop" and choice.text == "" and reply.usage and reply.usage.completion_tokens == 1
    error = bad_request(lambda: complete(sdk, extra_body={"stop_token_ids": [10**6]}))
    assert error.param == "stop_token_ids" and str(10**6) in error.message


# ---- structured output ---------------------------------------------------------------------------------------------


def test_json_schema_on_chat_and_completions_validates(sdk: openai.OpenAI) -> None:
    for seed in range(4):
        chat = sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "JSON please"}],
                                           response_format=RESPONSE_FORMAT, seed=seed, max_tokens=60)  # type: ignore[arg-type]  # fmt: skip
        assert chat.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(chat.choices[0].message.content or ""), SCHEMA)
        text = complete(sdk, seed=seed, max_tokens=60, extra_body={"response_format": RESPONSE_FORMAT}).choices[0].text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_and_guided_json(sdk: openai.OpenAI) -> None:
    chat = sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], seed=1,
                                       response_format={"type": "json_object"}, max_tokens=200)  # fmt: skip
    if chat.choices[0].finish_reason == "stop":  # an unbounded object may run to max_tokens; then it is cut
        assert isinstance(json.loads(chat.choices[0].message.content or ""), dict)
    for guided in (SCHEMA, json.dumps(SCHEMA)):  # vLLM accepts the schema or its JSON text
        text = complete(sdk, seed=2, max_tokens=60, extra_body={"guided_json": guided}).choices[0].text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_guided_regex_and_choice(sdk: openai.OpenAI) -> None:
    for seed in range(3):
        text = (
            complete(sdk, seed=seed, max_tokens=20, extra_body={"guided_regex": r"[A-C][0-9]{2}-(yes|no)"})
            .choices[0]
            .text
        )
        assert re.fullmatch(r"[A-C][0-9]{2}-(yes|no)", text), text
        choices = ["Macbeth", "Banquo", 'the "Porter"']
        reply = complete(sdk, seed=seed, max_tokens=20, n=3, extra_body={"guided_choice": choices})
        assert len(reply.choices) == 3  # n > 1: every choice has its own matcher
        assert all(c.text in choices and c.finish_reason == "stop" for c in reply.choices)


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"guided_regex": "((("}, "guided_regex"),
     ({"guided_json": {"type": "objectx"}}, "guided_json"),
     ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
      "response_format.json_schema.schema"),
     ({"response_format": {"type": "yaml"}}, "response_format"),
     ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice")],
)  # fmt: skip
def test_bad_grammars_are_a_400_naming_the_field(sdk: openai.OpenAI, extra: dict[str, object], param: str) -> None:
    error = bad_request(lambda: complete(sdk, extra_body=extra))
    assert error.param is not None and error.param.startswith(param)


def test_constrained_and_free_requests_share_the_batch(sdk: openai.OpenAI) -> None:
    """A free request's text is the same alone and next to constrained ones (its row is not masked)."""

    def free() -> str:
        return complete(sdk, seed=11, temperature=1.0, max_tokens=24, extra_body={"ignore_eos": True}).choices[0].text

    alone = free()

    async def together() -> list[str]:
        async with openai.AsyncOpenAI(base_url=str(sdk.base_url), api_key="unused", max_retries=0) as client:

            async def constrained(seed: int) -> str:
                reply = await client.completions.create(model="tiny", prompt="To be", seed=seed, max_tokens=60,
                                                        extra_body={"response_format": RESPONSE_FORMAT})  # fmt: skip
                return reply.choices[0].text

            async def free_async() -> str:
                reply = await client.completions.create(model="tiny", prompt="To be", seed=11, temperature=1.0,
                                                        max_tokens=24, extra_body={"ignore_eos": True})  # fmt: skip
                return reply.choices[0].text

            return await asyncio.gather(free_async(), *(constrained(s) for s in range(6)))

    texts = asyncio.run(together())
    assert texts[0] == alone
    for text in texts[1:]:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_streamed_json_schema_async(server: ServerProcess) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:

            async def one(seed: int) -> str:
                stream = await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "JSON"}], response_format=RESPONSE_FORMAT,  # type: ignore[arg-type]
                    seed=seed, max_tokens=60, stream=True,
                )  # fmt: skip
                return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

            return await asyncio.gather(*(one(seed) for seed in range(4)))

    for text in asyncio.run(run()):
        jsonschema.validate(json.loads(text), SCHEMA)


# ---- tools -----------------------------------------------------------------------------------------------------------


def test_named_tool_choice_returns_a_tool_call(sdk: openai.OpenAI) -> None:
    for seed in range(3):
        reply = sdk.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Weather in Rome?"}], tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}}, seed=seed, max_tokens=80,
        )  # fmt: skip
        (choice,) = reply.choices
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_required_tool_choice_calls_one_of_the_tools(sdk: openai.OpenAI) -> None:
    parameters = {"get_weather": WEATHER["function"]["parameters"], "get_time": TIME["function"]["parameters"]}  # type: ignore[index]
    for seed in range(3):
        reply = sdk.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER, TIME], tool_choice="required",  # type: ignore[list-item]
            parallel_tool_calls=False, seed=seed, max_tokens=80,
        )  # fmt: skip
        (choice,) = reply.choices
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        jsonschema.validate(json.loads(call.function.arguments), parameters[call.function.name])


def test_streamed_tool_call(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], seed=4, max_tokens=80,  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True,
    )  # fmt: skip
    chunks = [chunk for chunk in stream if chunk.choices]
    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls if c.function] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    jsonschema.validate(json.loads(calls[0].function.arguments or ""), WEATHER["function"]["parameters"])  # type: ignore[index,union-attr]


def test_tool_choice_auto_and_bad_tools_are_refused(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "hi"}]
    for choice in ("auto", openai.NOT_GIVEN):  # "auto" is the default when tools are given
        error = bad_request(lambda c=choice: sdk.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER],  # type: ignore[arg-type,list-item]
                                                                         tool_choice=c))  # fmt: skip
        assert error.param == "tool_choice" and "auto" in error.message
    error = bad_request(lambda: sdk.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER],  # type: ignore[arg-type,list-item]
                                                            tool_choice={"type": "function", "function": {"name": "nope"}}))  # fmt: skip
    assert error.param == "tool_choice" and "nope" in error.message
    plain = sdk.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=3
    )  # type: ignore[arg-type,list-item]
    assert plain.choices[0].message.tool_calls is None


def test_a_conversation_with_tool_turns_renders(sdk: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    reply = sdk.chat.completions.create(model="tiny", messages=messages, max_tokens=3)  # type: ignore[arg-type]
    assert reply.choices[0].message.content is not None


# ---- CORS ------------------------------------------------------------------------------------------------------------


def test_cors_preflight_of_a_browser_sdk_passes(tiny_model_dir: object) -> None:
    origin = "https://app.example"
    asked = "authorization,content-type,x-stainless-os,x-stainless-lang,x-stainless-retry-count,openai-organization"
    with ServerProcess(tiny_model_dir, args=["--cors-origins", origin, "--no-warmup"]) as server:  # type: ignore[arg-type]
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked}
        preflight = httpx.options(server.url + "/v1/chat/completions", headers=headers)
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert set(asked.split(",")) <= allowed
    with ServerProcess(tiny_model_dir, args=["--cors-origins", origin, "--cors-allow-headers", "authorization,content-type",  # type: ignore[arg-type]
                                             "--no-warmup"]) as server:  # fmt: skip
        preflight = httpx.options(server.url + "/v1/chat/completions", headers=headers)
        assert preflight.status_code == 400  # x-stainless-* not allowed by the operator's list
