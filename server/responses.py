"""The OpenAI Responses API on top of the chat path: `POST /v1/responses`, stored responses and conversations.

A request becomes chat messages (`instructions` as the system message, then the stored conversation of
`previous_response_id`, then the new input items), rendered by the chat template and generated like a chat
completion: the same sampling, grammar (`text.format`), tool plan (`tools`, `tool_choice`) and checks. The engine
stores the recurrent state at the boundary where the next turn continues (the chat continuation), so a follow-up
through `previous_response_id` prefills only its new input: `usage.input_tokens_details.cached_tokens` covers the
history. When that state was evicted, the follow-up prefills the stored history again (same output), counted in
tnn_response_history_prefills_total.

Streaming sends the typed server-sent events the openai SDK parses (`event: <type>` + `data: <json>`, each with a
`sequence_number`): response.created, response.in_progress, output_item.added, content_part.added,
output_text.delta..., output_text.done, content_part.done, output_item.done, then response.completed (or
response.incomplete when max_output_tokens cut it, response.failed on an error).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter

from tnn.server.chat_turns import AnsweredTurn
from tnn.server.conversations import ResponseStore, StoredResponse
from tnn.server.errors import ApiError
from tnn.server.generation import CachedPrompt, ChoiceDelta, GenerationRequest, RequestError
from tnn.server.response_schemas import (
    FormatJsonObject,
    FormatJsonSchema,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputItem,
    ResponseRequest,
)
from tnn.server.schemas import (
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    Tool,
)
from tnn.server.schemas import Request as OptionsBody
from tnn.server.serving import KEEPALIVE, SSE_HEADERS, ClientGone, Serving
from tnn.server.tools import ToolChoiceError, ToolPlan, parse_tool_calls, plan_tool_calls

logger = logging.getLogger(__name__)


def not_found(response_id: str, param: str | None = None) -> ApiError:
    """OpenAI's 404 for an id that is unknown, deleted, evicted or another API key's."""
    what = "Previous response" if param else "Response"
    return ApiError(404, f"{what} with id {response_id!r} not found.", param=param, code="response_not_found")


def history_message(item: InputItem) -> dict[str, Any]:
    """One input item as the chat message the template renders (a call shows as JSON, as in chat)."""
    if isinstance(item, FunctionCallItem):
        return {
            "role": "assistant",
            "content": FunctionCall(name=item.name, arguments=item.arguments).model_dump_json(),
        }
    if isinstance(item, FunctionCallOutputItem):
        return {"role": "tool", "content": item.output}
    return {"role": item.role, "content": item.text()}


@dataclass
class _Plan:
    """What one request generates, and what its record says about it."""

    request: GenerationRequest
    body: ResponseRequest
    messages: list[dict[str, Any]]  # the conversation without the instructions, through the new input
    history_prefix: int  # tokens of the stored conversation's state (0: no previous response)
    tool_plan: ToolPlan | None
    owner: str


@dataclass
class _Result:
    text: str = ""
    tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    failed: ApiError | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))


class Responses:
    """The Responses API of one app: the Serving it generates with and the store of its responses."""

    def __init__(self, serving: Serving, store: ResponseStore) -> None:
        self.serving = serving
        self.store = store
        registry = serving.metrics.registry
        name = serving.model_name
        self.history_prefills = Counter(
            "tnn_response_history_prefills",
            "Follow-ups (previous_response_id) whose conversation state was not cached and was prefilled again.",
            ["model_name"], registry=registry,
        ).labels(name)  # fmt: skip
        self.stored_evictions = Counter(
            "tnn_response_store_evictions", "Stored responses evicted to keep the store within its byte budget.",
            ["model_name"], registry=registry,
        ).labels(name)  # fmt: skip
        self.store_errors = Counter(
            "tnn_response_store_errors", "Responses that could not be stored (the store failed; the reply was sent).",
            ["model_name"], registry=registry,
        ).labels(name)  # fmt: skip

    # ---- the routes ----------------------------------------------------------------------------------------------

    async def create(self, body: ResponseRequest, raw: Request, owner: str) -> Response:
        plan = await self._plan(body, owner)
        handle = self.serving._submit(plan.request)
        if body.stream:
            return StreamingResponse(self._stream(plan, handle, raw), media_type="text/event-stream",
                                     headers=SSE_HEADERS)  # fmt: skip
        result = _Result()
        try:
            async for events in self.serving._events(handle, raw):
                for event in events:
                    if isinstance(event, RequestError):
                        raise ApiError(event.status, event.message, code=event.code)
                    self._record(result, event)
        except ClientGone:
            return Response(status_code=499)
        finally:
            handle.cancel()
        record = await self._finish(plan, result)
        return JSONResponse(record)

    async def retrieve(self, response_id: str, owner: str) -> dict[str, Any]:
        stored = await asyncio.to_thread(self.store.get, response_id, owner)
        if stored is None:
            raise not_found(response_id)
        return stored.record

    async def delete(self, response_id: str, owner: str) -> dict[str, Any]:
        if not await asyncio.to_thread(self.store.delete, response_id, owner):
            raise not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    # ---- request -> generation -----------------------------------------------------------------------------------

    async def _plan(self, body: ResponseRequest, owner: str) -> _Plan:
        arrival = time.monotonic()
        serving = self.serving
        options = _options_body(body)
        serving._common_checks(options)
        tool_plan = None
        if body.tools:
            tools = [Tool(type="function", function=FunctionDefinition(name=t.name, description=t.description,
                          parameters=t.parameters, strict=t.strict)) for t in body.tools]  # fmt: skip
            choice: Any = body.tool_choice or "auto"
            if isinstance(choice, FunctionToolChoice):
                choice = NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
            try:
                tool_plan = plan_tool_calls(tools, choice, body.parallel_tool_calls)
            except ToolChoiceError as exc:
                raise ApiError(400, str(exc), param=exc.param, code="unsupported") from exc
        elif body.tool_choice not in (None, "none"):
            raise ApiError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        default = min(serving.defaults.max_tokens or serving.settings.max_tokens, serving.settings.max_tokens)
        max_tokens = serving._max_tokens(body.max_output_tokens, default, allow_zero=False, param="max_output_tokens")
        history: list[dict[str, Any]] = []
        if body.previous_response_id is not None:
            stored = await asyncio.to_thread(self.store.get, body.previous_response_id, owner)
            if stored is None:
                raise not_found(body.previous_response_id, "previous_response_id")
            history = stored.messages
        system = [{"role": "system", "content": body.instructions}] if body.instructions else []
        messages = [*history, *(history_message(item) for item in body.items())]
        try:
            generation = await serving._generation_options(options, tool_plan)
        except ApiError as exc:  # the chat field names the grammar came from are not this body's
            if exc.param is not None and exc.param.startswith("response_format"):
                exc.param = "text.format.schema"
                exc.message = exc.message.replace("response_format.json_schema.schema", exc.param)
            raise
        prompt = await asyncio.to_thread(serving.chat_prompt, [*system, *messages])
        serving._check_prompt(prompt, "input")
        history_prefix = 0
        if history:
            history_prefix = len(await asyncio.to_thread(serving.next_turn_prefix, [*system, *history]))
        request = GenerationRequest(
            request_id=f"resp_{uuid.uuid4().hex}",
            prompts=[prompt],
            max_tokens=max_tokens,
            arrival=arrival,
            **generation,
            continuation=AnsweredTurn(serving.tokenizer, (*system, *messages), serving.settings.add_bos),
        )
        return _Plan(request, body, messages, history_prefix, tool_plan, owner)

    @staticmethod
    def _record(result: _Result, event: Any) -> str:
        """Add an event to the result; returns the new text."""
        if isinstance(event, CachedPrompt):
            result.cached_tokens += event.tokens
            return ""
        if isinstance(event, ChoiceDelta):
            result.text += event.text
            result.tokens += len(event.tokens)
            result.finish_reason = event.finish_reason or result.finish_reason
            return event.text
        return ""

    # ---- generation -> response ----------------------------------------------------------------------------------

    def _output(self, plan: _Plan, result: _Result, message_id: str) -> list[dict[str, Any]]:
        if plan.tool_plan is not None and result.finish_reason == "stop":
            calls = parse_tool_calls(result.text, plan.tool_plan) or []
            return [{"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": call.id,
                     "name": call.function.name, "arguments": call.function.arguments, "status": "completed"}
                    for call in calls]  # fmt: skip
        return [_message(message_id, result.text, "completed")]

    def _response(self, plan: _Plan, result: _Result, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        body = plan.body
        sampling = plan.request.sampling
        fmt = body.text.format if body.text is not None and body.text.format is not None else None
        prompt_tokens = len(plan.request.prompts[0])
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        error = None
        if result.failed is not None:
            error = {"code": result.failed.code or "server_error", "message": result.failed.message}
        return {
            "id": plan.request.request_id,
            "object": "response",
            "created_at": result.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.serving.model_name,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "tool_choice": _dump(body.tool_choice) if body.tool_choice is not None else "auto",
            "tools": [_dump(tool) for tool in body.tools or []],
            "text": {"format": _dump(fmt) if fmt is not None else {"type": "text"}},
            "truncation": "disabled",
            "store": body.store,
            "metadata": body.metadata or {},
            "user": body.user,
            "usage": None
            if status == "in_progress"
            else {
                "input_tokens": prompt_tokens,
                "input_tokens_details": {"cached_tokens": result.cached_tokens},
                "output_tokens": result.tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt_tokens + result.tokens,
            },
        }

    async def _finish(self, plan: _Plan, result: _Result, message_id: str | None = None) -> dict[str, Any]:
        """The final Response object; stored (with the conversation through its answer) when `store` is on."""
        status = "incomplete" if result.finish_reason == "length" else "completed"
        output = self._output(plan, result, message_id or f"msg_{uuid.uuid4().hex}")
        record = self._response(plan, result, status, output)
        if plan.history_prefix and result.cached_tokens < plan.history_prefix:
            self.history_prefills.inc()
        if plan.body.store:
            conversation = [*plan.messages, {"role": "assistant", "content": result.text}]  # what the engine cached
            stored = StoredResponse(record=record, messages=conversation)
            try:
                evicted = await asyncio.to_thread(self.store.put, plan.request.request_id, plan.owner, stored)
            except sqlite3.Error:  # a fault of the store fails storing, not the request (DESIGN: faults)
                logger.exception("responses: could not store %s", plan.request.request_id)
                self.store_errors.inc()
            else:
                self.stored_evictions.inc(evicted)
        return record

    # ---- streaming -----------------------------------------------------------------------------------------------

    async def _stream(self, plan: _Plan, handle: Any, raw: Request) -> AsyncIterator[str]:
        events = _EventWriter()
        result = _Result()
        message_id = f"msg_{uuid.uuid4().hex}"
        text_streamed = plan.tool_plan is None  # a tool reply goes out whole at the end
        try:
            opening = self._response(plan, result, "in_progress", [])
            out = [events.event("response.created", response=opening),
                   events.event("response.in_progress", response=opening)]  # fmt: skip
            if text_streamed:
                out += _message_opening(events, message_id)
            yield "".join(out)
            last_write = time.monotonic()
            async for batch in self.serving._events(handle, raw):
                out = []
                for event in batch:
                    if isinstance(event, RequestError):
                        raise ApiError(event.status, event.message, code=event.code)
                    delta = self._record(result, event)
                    if delta and text_streamed:
                        out.append(events.event("response.output_text.delta", item_id=message_id, output_index=0,
                                                content_index=0, delta=delta, logprobs=[]))  # fmt: skip
                if not out and time.monotonic() - last_write > KEEPALIVE:
                    out.append(": keep-alive\n\n")
                if out:
                    last_write = time.monotonic()
                    yield "".join(out)
            record = await self._finish(plan, result, message_id)
            out = []
            for index, item in enumerate(record["output"]):
                if item["type"] == "message":
                    if not text_streamed:
                        out += _message_opening(events, message_id)
                    out += _message_closing(events, item)
                else:
                    out.append(events.event("response.output_item.added", output_index=index,
                                            item={**item, "arguments": "", "status": "in_progress"}))  # fmt: skip
                    out.append(events.event("response.function_call_arguments.done", item_id=item["id"],
                                            output_index=index, name=item["name"],
                                            arguments=item["arguments"]))  # fmt: skip
                    out.append(events.event("response.output_item.done", output_index=index, item=item))
            final = "response.incomplete" if record["status"] == "incomplete" else "response.completed"
            out.append(events.event(final, response=record))
            yield "".join(out)
        except ApiError as exc:  # the engine failed the request, or it timed out
            self.serving.metrics.errors.labels(code=str(exc.status)).inc()
            result.failed = exc
            record = self._response(plan, result, "failed", [])
            yield events.event("response.failed", response=record)
        except ClientGone:
            return
        finally:
            handle.cancel()


class _EventWriter:
    """Server-sent events of the Responses API, numbered in order."""

    def __init__(self) -> None:
        self.sequence = 0

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _message(message_id: str, text: str, status: str) -> dict[str, Any]:
    content = (
        [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
    )
    return {"type": "message", "id": message_id, "status": status, "role": "assistant", "content": content}


def _message_opening(events: _EventWriter, message_id: str) -> list[str]:
    return [
        events.event("response.output_item.added", output_index=0, item=_message(message_id, "", "in_progress")),
        events.event("response.content_part.added", item_id=message_id, output_index=0, content_index=0,
                     part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
    ]  # fmt: skip


def _message_closing(events: _EventWriter, item: dict[str, Any]) -> list[str]:
    part = item["content"][0]
    where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    return [
        events.event("response.output_text.done", **where, text=part["text"], logprobs=[]),
        events.event("response.content_part.done", **where, part=part),
        events.event("response.output_item.done", output_index=0, item=item),
    ]


def _dump(value: Any) -> Any:
    return value.model_dump(by_alias=True, exclude_none=True) if hasattr(value, "model_dump") else value


def _options_body(body: ResponseRequest) -> OptionsBody:
    """The chat request fields that decide sampling, checks and the grammar."""
    fmt = body.text.format if body.text is not None else None
    response_format: Any = None
    if isinstance(fmt, FormatJsonObject):
        response_format = ResponseFormatJsonObject(type="json_object")
    elif isinstance(fmt, FormatJsonSchema):
        spec = JsonSchemaFormat(name=fmt.name, description=fmt.description, schema=fmt.schema_, strict=fmt.strict)
        response_format = ResponseFormatJsonSchema(type="json_schema", json_schema=spec)
    return OptionsBody(model=body.model, temperature=body.temperature, top_p=body.top_p, stream=body.stream,
                       user=body.user, response_format=response_format)  # fmt: skip
