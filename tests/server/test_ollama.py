"""The Ollama-compatible routes as the official `ollama` client sees them, against a real `tnn serve` of the tiny
model: chat and generate (single replies and NDJSON streams, equal to the OpenAI routes' greedy text), list,
show, version, embed, option names, and errors in Ollama's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import ollama
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[ollama.Client]:
    yield ollama.Client(host=server.url, timeout=120)


def test_list_show_version(client: ollama.Client, server: ServerProcess) -> None:
    models = client.list().models
    assert [m.model for m in models] == ["tiny:latest"]
    assert models[0].size > 0 and models[0].details.family == "tnn"
    shown = client.show("tiny:latest")
    assert shown.modelinfo["general.architecture"] == "tnn" and "completion" in shown.capabilities
    assert "message" in shown.template  # the chat template
    assert httpx.get(server.url + "/api/version").json()["version"]


def test_chat_single_and_streamed_equal_the_openai_route(client: ollama.Client, server: ServerProcess) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    options = {"temperature": 0, "num_predict": 12, "num_ctx": 8192}  # num_ctx: a runtime option, ignored
    single = client.chat(model="tiny", messages=messages, options=options)
    pieces = list(client.chat(model="tiny:latest", messages=messages, options=options, stream=True))
    openai_text = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 12}).json()  # fmt: skip
    assert single.message.content == openai_text["choices"][0]["message"]["content"]
    assert single.done and single.done_reason == "length" and single.eval_count == 12
    assert single.prompt_eval_count == openai_text["usage"]["prompt_tokens"]
    assert all(not p.done for p in pieces[:-1]) and pieces[-1].done and pieces[-1].eval_count == 12
    assert "".join(p.message.content for p in pieces) == single.message.content
    assert pieces[-1].done_reason == "length" and pieces[-1].total_duration > 0


def test_generate_single_streamed_and_raw(client: ollama.Client, server: ServerProcess) -> None:
    options = {"temperature": 0, "num_predict": 8, "seed": 1, "repeat_penalty": 1.0}
    single = client.generate(model="tiny", prompt="To be, or not", options=options)
    pieces = list(client.generate(model="tiny", prompt="To be, or not", options=options, stream=True))
    assert "".join(p.response for p in pieces) == single.response and pieces[-1].done
    assert single.eval_count == 8
    raw = client.generate(model="tiny", prompt="To be, or not", options=options, raw=True)
    completion = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "model": "tiny", "prompt": "To be, or not", "temperature": 0, "max_tokens": 8}).json()  # fmt: skip
    assert raw.response == completion["choices"][0]["text"]
    loaded = client.generate(model="tiny", prompt="")  # Ollama's "load the model" request
    assert loaded.done and loaded.done_reason == "load"


def test_structured_format(client: ollama.Client) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    reply = client.chat(model="tiny", messages=[{"role": "user", "content": "JSON"}], format=schema,
                        options={"num_predict": 32})  # fmt: skip
    jsonschema.validate(json.loads(reply.message.content), schema)
    reply = client.generate(model="tiny", prompt="JSON", format="json", options={"num_predict": 128, "temperature": 0})
    assert reply.done_reason == "stop" and isinstance(json.loads(reply.response), dict)


def test_embed(client: ollama.Client, server: ServerProcess) -> None:
    reply = client.embed(model="tiny", input=["To be", "or not"])
    assert len(reply.embeddings) == 2 and len(reply.embeddings[0]) == 32
    openai_vector = httpx.post(server.url + "/v1/embeddings", json={"input": "To be"}).json()["data"][0]["embedding"]
    assert reply.embeddings[0] == pytest.approx(openai_vector, abs=1e-6)


@pytest.mark.parametrize(
    ("call", "status", "words"),
    [
        (lambda c: c.chat(model="llama3", messages=[{"role": "user", "content": "x"}]), 404, "llama3"),
        (lambda c: c.generate(model="tiny", prompt="x", options={"mirostat": 2}), 400, "mirostat"),
        (lambda c: c.generate(model="tiny", prompt="x", options={"temperature": "hot"}), 400, "temperature"),
        (lambda c: c.generate(model="tiny", prompt="x", images=["aGk="]), 400, "images"),
    ],
)
def test_errors_in_ollama_shape(client: ollama.Client, call: object, status: int, words: str) -> None:
    with pytest.raises(ollama.ResponseError) as error:
        call(client)  # type: ignore[operator]
    assert error.value.status_code == status and words in error.value.error


def test_think_is_refused(server: ServerProcess) -> None:
    reply = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "x", "think": True})
    assert reply.status_code == 400 and "think" in reply.json()["error"]


def test_body_is_json_whatever_its_content_type(server: ServerProcess) -> None:
    """`curl -d` (Ollama's documented calls) sends application/x-www-form-urlencoded; Ollama reads JSON anyway."""
    body = json.dumps({"model": "tiny", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}})
    reply = httpx.post(server.url + "/api/generate", content=body, timeout=60,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert reply.status_code == 200 and reply.json()["eval_count"] == 2
