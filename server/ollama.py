"""Ollama's API on top of the OpenAI routes' logic, for the IDE and desktop tools that speak it (VS Code's local
models, Continue, Open WebUI): /api/chat and /api/generate become chat or completion requests, their OpenAI
answers (a JSON body, or SSE chunks) become Ollama's (one JSON object, or NDJSON lines ending with `done: true`).

Ollama's option names map to ours (OPTION_NAMES); options that tune Ollama's runtime (context size, GPU layers,
threads, ...) mean nothing to a recurrent server and are ignored (RUNTIME_OPTIONS); sampling options we do not
implement (mirostat, tfs_z, typical_p, ...) are a 400 naming `options.<name>`. As in Ollama, unknown top-level
fields are ignored (clients add fields across versions); `images`, `context`, `template`, `suffix`, `think`
and `tools` (Ollama has no `tool_choice`, and "auto" cannot be served) are refused with a 400 naming them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tnn.server.errors import ApiError
from tnn.server.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    JsonSchemaFormat,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)
from tnn.server.serving import Serving

API_VERSION = "0.12.0"  # the Ollama API version whose routes and fields this module follows
NDJSON = "application/x-ndjson"
OPTION_NAMES = {  # Ollama's name -> ours
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
RUNTIME_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "use_mmap", "use_mlock", "num_thread", "numa",
     "num_keep", "vocab_only", "f16_kv", "logits_all"}
)  # fmt: skip
OFF_VALUES = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0}  # refused options that are harmless at these values


class OllamaBody(BaseModel):
    """Ollama request bodies: typed fields, unknown ones ignored (as Ollama does)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    stream: bool = True
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None  # accepted: the model is always loaded
    think: bool | str | None = None


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[Any] | None = None


class OllamaChatRequest(OllamaBody):
    messages: Annotated[list[OllamaMessage], Field(max_length=4096)] = Field(default_factory=list)
    tools: list[Any] | None = None


class OllamaGenerateRequest(OllamaBody):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None


class OllamaEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str]
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None
    dimensions: int | None = None


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def served_name(model: str, serving: Serving) -> None:
    """404 unless `model` is the served model (with or without Ollama's ":latest" tag)."""
    if model.removesuffix(":latest") != serving.model_name:
        raise ApiError(404, f"model '{model}' not found", param="model", code="model_not_found")


def sampling_fields(body: OllamaBody) -> dict[str, Any]:
    """The OpenAI request fields of `options` and `format`."""
    fields: dict[str, Any] = {}
    for name, value in (body.options or {}).items():
        if name in RUNTIME_OPTIONS or value is None:
            continue
        if name in OFF_VALUES and value == OFF_VALUES[name]:
            continue
        if name not in OPTION_NAMES:
            raise ApiError(400, f"option {name!r} is not supported; supported: {', '.join(OPTION_NAMES)}",
                           param=f"options.{name}", code="unsupported")  # fmt: skip
        if name == "num_predict" and isinstance(value, int) and value < 0:
            continue  # -1 (no limit) and -2 (fill the context): the server's longest
        fields[OPTION_NAMES[name]] = value
    if body.format == "json":
        fields["response_format"] = ResponseFormatJsonObject(type="json_object")
    elif isinstance(body.format, dict):
        spec = JsonSchemaFormat(name="format", schema=body.format)
        fields["response_format"] = ResponseFormatJsonSchema(type="json_schema", json_schema=spec)
    if body.think:
        raise ApiError(400, "think is not supported: this model does not reason before answering", param="think",
                       code="unsupported")  # fmt: skip
    if body.stream:
        fields["stream_options"] = {"include_usage": True}  # the counts of the last line
    return fields


def refuse(**given: Any) -> None:
    for name, value in given.items():
        if value:
            raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported")


def openai_body(model: type[ChatCompletionRequest | CompletionRequest], fields: dict[str, Any]) -> Any:
    """The OpenAI request, validated as one (a bad option value is a 400 naming `options.<name>`)."""
    try:
        return model.model_validate(fields, strict=False)
    except ValueError as exc:
        errors = getattr(exc, "errors", lambda: [])()
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        ollama = {ours: theirs for theirs, ours in OPTION_NAMES.items()}
        param = f"options.{ollama[where]}" if where in ollama else where or None
        message = errors[0]["msg"] if errors else str(exc)
        raise ApiError(400, f"{param}: {message}", param=param, code="invalid_value") from exc


class Ollama:
    """/api/chat, /api/generate and /api/embed on top of the app's Serving."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    async def chat(self, body: OllamaChatRequest, raw: Request) -> Response:
        served_name(body.model, self.serving)
        refuse(tools=body.tools, images=any(m.images for m in body.messages))
        if not body.messages:  # Ollama's "load the model" request
            return self._loaded(body, {"message": {"role": "assistant", "content": ""}})
        messages = [ChatMessage(role=m.role, content=m.content) for m in body.messages]
        fields = {"model": self.serving.model_name, "messages": messages, "stream": body.stream,
                  **sampling_fields(body)}  # fmt: skip
        return await self._generate(openai_body(ChatCompletionRequest, fields), raw, body, "chat")

    async def generate(self, body: OllamaGenerateRequest, raw: Request) -> Response:
        served_name(body.model, self.serving)
        refuse(images=body.images, context=body.context, template=body.template, suffix=body.suffix)
        if not body.prompt:
            return self._loaded(body, {"response": ""})
        fields = {"model": self.serving.model_name, "stream": body.stream, **sampling_fields(body)}
        if body.raw:
            return await self._generate(openai_body(CompletionRequest, {**fields, "prompt": body.prompt}), raw, body,
                                        "generate")  # fmt: skip
        system = [ChatMessage(role="system", content=body.system)] if body.system else []
        messages = [*system, ChatMessage(role="user", content=body.prompt)]
        return await self._generate(openai_body(ChatCompletionRequest, {**fields, "messages": messages}), raw, body,
                                    "generate")  # fmt: skip

    def _loaded(self, body: OllamaBody, empty: dict[str, Any]) -> Response:
        line = {"model": body.model, "created_at": now(), **empty, "done": True, "done_reason": "load"}
        return JSONResponse(line)

    async def _generate(self, request: Any, raw: Request, body: OllamaBody, kind: str) -> Response:
        start = time.monotonic_ns()
        if isinstance(request, ChatCompletionRequest):
            answer = await self.serving.chat(request, raw)
        else:
            answer = await self.serving.completions(request, raw)
        if not body.stream:
            if not isinstance(answer, JSONResponse):
                return answer  # the client went away
            data = json.loads(bytes(answer.body))
            choice = data["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            final = _final(body, kind, text or "", choice["finish_reason"], data["usage"], start, start)
            return JSONResponse(final)
        assert isinstance(answer, StreamingResponse)
        return StreamingResponse(_ndjson(answer, body, kind, start), media_type=NDJSON)


def _piece(body: OllamaBody, kind: str, text: str) -> dict[str, Any]:
    content = {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"response": text}
    return {"model": body.model, "created_at": now(), **content}


def _final(
    body: OllamaBody, kind: str, text: str, finish: str | None, usage: dict[str, Any], start: int, first: int
) -> dict[str, Any]:
    end = time.monotonic_ns()
    return {
        **_piece(body, kind, text),
        "done": True,
        "done_reason": "length" if finish == "length" else "stop",
        "total_duration": end - start,
        "load_duration": 0,
        "prompt_eval_count": usage["prompt_tokens"],
        "prompt_eval_duration": first - start,
        "eval_count": usage["completion_tokens"],
        "eval_duration": end - first,
    }


async def _ndjson(answer: StreamingResponse, body: OllamaBody, kind: str, start: int) -> AsyncIterator[str]:
    """The OpenAI SSE chunks of `answer` as Ollama's NDJSON lines."""
    pending = ""
    first = start
    finish = None
    async for part in answer.body_iterator:
        pending += part if isinstance(part, str) else bytes(part).decode()
        *events, pending = pending.split("\n\n")
        lines = []
        for event in events:
            if not event.startswith("data: ") or event == "data: [DONE]":
                continue  # keep-alive comments and the end marker
            chunk = json.loads(event.removeprefix("data: "))
            if "error" in chunk:
                lines.append(json.dumps({"error": chunk["error"]["message"]}))
                continue
            if chunk.get("usage") and not chunk["choices"]:
                lines.append(json.dumps(_final(body, kind, "", finish, chunk["usage"], start, first)))
                continue
            for choice in chunk["choices"]:
                text = choice["delta"].get("content") if "delta" in choice else choice["text"]
                finish = choice.get("finish_reason") or finish
                if text:
                    first = first if first != start else time.monotonic_ns()
                    lines.append(json.dumps({**_piece(body, kind, text), "done": False}))
        if lines:
            yield "\n".join(lines) + "\n"
