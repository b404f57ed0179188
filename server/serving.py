"""OpenAI completions and chat on top of the engine: request checks that need the settings, submission,
waiting on events (with disconnect and timeout checks) and the response / SSE chunk shapes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tnn.server import options
from tnn.server.chat_turns import AnsweredTurn, next_turn_prefix
from tnn.server.engine import Engine, NotAccepting, Overloaded
from tnn.server.errors import ApiError, sse_error
from tnn.server.generation import (
    CachedPrompt,
    ChoiceDelta,
    Event,
    GenerationRequest,
    PromptLogprobs,
    RequestError,
    RequestHandle,
    TokenLogprob,
    coalesce_deltas,
)
from tnn.server.generation_config import GenerationDefaults
from tnn.server.metrics import Metrics
from tnn.server.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from tnn.server.schemas import (
    Request as ApiRequest,
)
from tnn.server.settings import Settings
from tnn.server.structured import GrammarError
from tnn.server.tokenizer import ServerTokenizer, TokenizerSkipped
from tnn.server.tools import ToolChoiceError, ToolPlan, parse_tool_calls, plan_tool_calls

logger = logging.getLogger(__name__)

DISCONNECT_POLL = 0.25  # seconds between client-disconnect checks while waiting for tokens
KEEPALIVE = 15.0  # seconds without an SSE write (queued, long prefill) before a comment line keeps proxies open
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client disconnected; the request was cancelled."""


@dataclass
class _Choice:
    """What the HTTP side accumulates for one choice."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob | None] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | None = None
    started: bool = False  # a streaming chunk has been sent for it


class Serving:
    """The OpenAI routes' logic, shared by completions and chat."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: ServerTokenizer,
        settings: Settings,
        metrics: Metrics,
        model_name: str,
        defaults: GenerationDefaults | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = metrics
        self.model_name = model_name
        self.defaults = defaults or GenerationDefaults()

    # ---- checks -------------------------------------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ApiError(404, f"model {model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip

    def _common_checks(self, body: ApiRequest) -> None:
        s = self.settings
        self.check_model(body.model)
        if not self.engine.generative:
            raise ApiError(400, f"model {self.model_name!r} is bidirectional (an encoder): it cannot generate text; "
                           "use /v1/embeddings", param="model", code="model_not_generative")  # fmt: skip
        if body.n > s.max_n:
            raise ApiError(400, f"n must be at most {s.max_n}, got {body.n}", param="n", code="invalid_value")
        if body.stream_options is not None and not body.stream:
            raise ApiError(400, "stream_options is only allowed with stream=true", param="stream_options",
                           code="invalid_value")  # fmt: skip
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > s.max_stop:
            raise ApiError(400, f"at most {s.max_stop} stop sequences, got {len(stops)}", param="stop",
                           code="invalid_value")  # fmt: skip
        for stop in stops:
            if not 1 <= len(stop) <= s.max_stop_length:
                raise ApiError(400, f"each stop sequence must have 1 to {s.max_stop_length} characters",
                               param="stop", code="invalid_value")  # fmt: skip

    def _max_tokens(self, requested: int | None, default: int, *, allow_zero: bool, param: str) -> int:
        value = default if requested is None else requested
        if value > self.settings.max_tokens:
            raise ApiError(400, f"{param} must be at most {self.settings.max_tokens}, got {value}", param=param,
                           code="invalid_value")  # fmt: skip
        if value == 0 and not allow_zero:
            raise ApiError(400, f"{param} must be at least 1 (0 only with echo)", param=param, code="invalid_value")
        return value

    def _check_logprobs(self, value: int | None, param: str) -> None:
        if value is not None and value > self.settings.max_logprobs:
            raise ApiError(400, f"{param} must be at most {self.settings.max_logprobs}, got {value}", param=param,
                           code="invalid_value")  # fmt: skip

    def _check_prompt(self, prompt: list[int], param: str) -> None:
        if not prompt:
            raise ApiError(400, "the prompt is empty", param=param, code="invalid_value")
        limit = self.settings.max_prompt_tokens
        if len(prompt) > limit:
            raise ApiError(
                400,
                f"This model's maximum prompt length is {limit} tokens. However, your prompt has {len(prompt)} "
                f"tokens. Please shorten the prompt.",
                param=param,
                code="context_length_exceeded",
            )
        vocab = self.engine.vocab_size
        if max(prompt) >= vocab:
            raise ApiError(400, f"token ids must be below the vocabulary size {vocab}", param=param,
                           code="invalid_value")  # fmt: skip

    async def _generation_options(self, body: ApiRequest, tool_plan: ToolPlan | None = None) -> dict[str, Any]:
        """GenerationRequest fields from the body: sampling, stops, grammar (compiled off the event loop)."""
        vocab = self.engine.vocab_size
        spec = options.grammar_spec(body, tool_plan)
        grammar = None
        if spec is not None:
            grammars = self.engine.grammars
            if grammars is None:
                raise ApiError(400, "structured output needs a tokenizer with an eos token; this model has none",
                               param=spec.param.split(".")[0], code="unsupported")  # fmt: skip
            try:
                grammar = await asyncio.to_thread(grammars.compile, spec)
            except GrammarError as exc:
                raise ApiError(400, str(exc), param=exc.param, code="invalid_grammar") from exc
        stops = options.stops(body, self.defaults, self.tokenizer.eos_id, vocab, constrained=grammar is not None)
        return {
            "sampling": options.sampling_params(body, self.defaults, vocab),
            "stop": stops.strings,
            "stop_token_ids": stops.token_ids,
            "eos_token_ids": stops.eos_token_ids,
            "ignore_eos": body.ignore_eos,
            "grammar": grammar,
        }

    def _submit(self, request: GenerationRequest) -> RequestHandle:
        if request.n_sequences > self.engine.slots.total:
            raise ApiError(400, f"this request needs {request.n_sequences} sequences (prompts x n); the server "
                           f"runs at most {self.engine.slots.total}", param="n", code="invalid_value")  # fmt: skip
        try:
            return self.engine.submit(request)
        except Overloaded as exc:
            raise ApiError(429, f"server overloaded: {exc}; retry later", code="server_overloaded",
                           headers={"Retry-After": "1"}) from exc  # fmt: skip
        except NotAccepting as exc:
            raise ApiError(503, str(exc), code="not_ready", headers={"Retry-After": "1"}) from exc

    # ---- completions ------------------------------------------------------------------------------------------

    async def completions(self, body: CompletionRequest, raw: Request) -> Response:
        arrival = time.monotonic()
        self._common_checks(body)
        if body.suffix:
            raise ApiError(400, "suffix is not supported", param="suffix", code="unsupported")
        if body.best_of is not None and body.best_of != body.n:
            raise ApiError(400, "best_of is not supported (use n)", param="best_of", code="unsupported")
        self._check_logprobs(body.logprobs, "logprobs")
        if body.stream and body.echo and body.logprobs is not None:
            raise ApiError(400, "echo with logprobs is not supported when streaming", param="echo",
                           code="unsupported")  # fmt: skip
        default = min(self.defaults.max_tokens or self.settings.default_max_tokens, self.settings.max_tokens)
        max_tokens = self._max_tokens(body.max_tokens, default, allow_zero=body.echo, param="max_tokens")
        generation = await self._generation_options(body)
        texts, prompts = await self._completion_prompts(body.prompt, echo=body.echo)
        for prompt in prompts:
            self._check_prompt(prompt, "prompt")
        request = GenerationRequest(
            request_id=f"cmpl-{uuid.uuid4().hex}",
            prompts=prompts,
            max_tokens=max_tokens,
            n=body.n,
            logprobs=body.logprobs,
            prompt_logprobs=body.logprobs if body.echo else None,
            arrival=arrival,
            **generation,
            cache_prompt=body.cache_prompt,
        )
        handle = self._submit(request)
        formatter = _CompletionFormat(self, request, texts)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return self._stream(handle, raw, formatter, include_usage)
        return await self._collect(handle, raw, formatter)

    async def _completion_prompts(self, prompt: Any, *, echo: bool) -> tuple[list[str] | None, list[list[int]]]:
        """Texts (with `echo`, else None) and token ids of the prompt(s): a string, strings, token ids, or lists
        of ids."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(prompt[0], int):
            prompt = [prompt]
        if isinstance(prompt[0], str):
            ids = await asyncio.to_thread(
                lambda: [self.tokenizer.encode(p, add_bos=self.settings.add_bos) for p in prompt]
            )
            return list(prompt) if echo else None, ids
        for ids in prompt:
            self._check_prompt(ids, "prompt")  # before decoding: ids must be in the vocabulary
        texts = [self.tokenizer.decode(ids) for ids in prompt] if echo else None  # only echo shows them
        return texts, [list(ids) for ids in prompt]

    # ---- chat ---------------------------------------------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest, raw: Request) -> Response:
        arrival = time.monotonic()
        self._common_checks(body)
        tool_plan = None
        if body.tools:
            try:
                tool_plan = plan_tool_calls(body.tools, body.tool_choice or "auto", body.parallel_tool_calls)
            except ToolChoiceError as exc:
                raise ApiError(400, str(exc), param=exc.param, code="unsupported") from exc
        elif body.tool_choice not in (None, "none"):
            raise ApiError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs", code="invalid_value")
        self._check_logprobs(body.top_logprobs, "top_logprobs")
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        default = min(self.defaults.max_tokens or self.settings.max_tokens, self.settings.max_tokens)
        max_tokens = self._max_tokens(requested, default, allow_zero=False, param=param)
        generation = await self._generation_options(body, tool_plan)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = await asyncio.to_thread(self.chat_prompt, messages)
        self._check_prompt(prompt, "messages")
        system = list(itertools.takewhile(lambda m: m["role"] == "system", messages))
        boundaries: tuple[int, ...] = ()
        if body.cache_prompt and system and len(system) < len(messages):  # users sharing a system prompt
            boundaries = (len(await asyncio.to_thread(self.next_turn_prefix, system)),)
        request = GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            prompts=[prompt],
            max_tokens=max_tokens,
            n=body.n,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            arrival=arrival,
            **generation,
            cache_prompt=body.cache_prompt,
            cache_boundaries=boundaries,
            continuation=AnsweredTurn(self.tokenizer, tuple(messages), self.settings.add_bos)
            if body.cache_prompt
            else None,
        )
        handle = self._submit(request)
        formatter = _ChatFormat(self, request, tool_plan)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return self._stream(handle, raw, formatter, include_usage)
        return await self._collect(handle, raw, formatter)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.tokenizer.encode(self.chat_text(messages), add_bos=self.settings.add_bos)

    def chat_text(self, messages: list[dict[str, Any]]) -> str:
        """The chat template's rendering of a conversation (400 when it refuses this one)."""
        if not messages:
            raise ApiError(400, "messages must hold at least one message", param="messages", code="invalid_value")
        try:
            return self.tokenizer.render_chat(messages)
        except TokenizerSkipped:  # no template at all: the HTTP layer answers it
            raise
        except Exception as exc:  # a template error is the request's fault (e.g. roles it does not accept)
            raise ApiError(400, f"the chat template failed: {exc}", param="messages", code="invalid_value") from exc

    def next_turn_prefix(self, messages: list[dict[str, Any]]) -> list[int]:
        """The tokens every prompt that continues `messages` with a user message starts with (tnn.server.chat_turns);
        400 when the template refuses the conversation."""
        return next_turn_prefix(self.chat_prompt, messages)

    # ---- waiting on the engine --------------------------------------------------------------------------------

    async def _events(self, handle: RequestHandle, raw: Request) -> AsyncIterator[list[Event]]:
        """The request's events, in batches of those already queued (an empty batch after each quiet poll
        interval); cancels the request when the client disconnects (ClientGone) or the time runs out (504)."""
        deadline = handle.request.arrival + self.settings.request_timeout
        next_check = time.monotonic() + DISCONNECT_POLL
        while not handle.done:
            now = time.monotonic()
            if now >= deadline:
                handle.cancel("error")
                raise ApiError(504, f"request timed out after {self.settings.request_timeout:g}s",
                               code="request_timeout")  # fmt: skip
            if now >= next_check:  # also while tokens keep coming: a whole-completion client sends nothing
                next_check = now + DISCONNECT_POLL
                if await raw.is_disconnected():
                    handle.cancel()
                    raise ClientGone
            yield await handle.next_events(min(next_check, deadline) - now)

    async def _collect(self, handle: RequestHandle, raw: Request, formatter: _Format) -> Response:
        try:
            async for events in self._events(handle, raw):
                for event in events:
                    if isinstance(event, RequestError):
                        raise ApiError(event.status, event.message, code=event.code)
                    formatter.add(event)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        finally:
            handle.cancel()  # no-op when finished; frees the slots if this task was cancelled
        return JSONResponse(formatter.response())

    def _stream(
        self, handle: RequestHandle, raw: Request, formatter: _Format, include_usage: bool
    ) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            try:
                yield "".join(_sse(chunk) for chunk in formatter.opening_chunks())
                failed = None
                last_write = time.monotonic()
                async for events in self._events(handle, raw):
                    out = []
                    for event in coalesce_deltas(events):
                        if isinstance(event, RequestError):
                            failed = ApiError(event.status, event.message, code=event.code)
                            break
                        out.append(formatter.add_sse(event))
                    if not out and time.monotonic() - last_write > KEEPALIVE:
                        out.append(": keep-alive\n\n")  # an SSE comment: clients ignore it
                    if out:
                        last_write = time.monotonic()
                        yield "".join(out)
                if failed is not None:
                    yield sse_error(failed, self.metrics)
                elif include_usage:
                    yield _sse(formatter.usage_chunk())
                yield "data: [DONE]\n\n"
            except ApiError as exc:  # timeout after the stream began
                yield sse_error(exc, self.metrics)
                yield "data: [DONE]\n\n"
            except ClientGone:
                return
            finally:
                handle.cancel()

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


def _sse(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


PLACEHOLDER = "\x00text\x00"  # stands for a delta's text in a rendered chunk (no text the engine emits has NUL)


class _Format:
    """Accumulates events of one request and shapes them as OpenAI chunks or a final response."""

    def __init__(self, serving: Serving, request: GenerationRequest) -> None:
        self.serving = serving
        self.request = request
        self.created = int(time.time())
        self.choices = [_Choice() for _ in range(request.n_sequences)]
        self.prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}
        self.cached_tokens = 0
        self._templates: dict[int, tuple[str, str]] = {}  # choice index -> its plain delta's SSE text around the text

    def usage(self) -> Usage:
        prompt = sum(len(p) for p in self.request.prompts)
        completion = sum(len(c.tokens) for c in self.choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens))  # fmt: skip

    def _record(self, event: Event) -> _Choice | None:
        if isinstance(event, PromptLogprobs):
            self.prompt_logprobs[event.prompt_index] = event.entries
            return None
        if isinstance(event, CachedPrompt):
            self.cached_tokens += event.tokens
            return None
        assert isinstance(event, ChoiceDelta)
        choice = self.choices[event.index]
        choice.text += event.text
        choice.tokens += event.tokens
        choice.logprobs += event.logprobs
        choice.finish_reason = event.finish_reason
        choice.stop_reason = event.stop_reason
        return choice

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.request.request_id, "object": obj, "created": self.created, "model": self.serving.model_name}

    def add_sse(self, event: Event) -> str:
        """`add` as SSE text, for streaming. A plain text delta (an open choice, no logprobs: most of a stream)
        is the chunk `add` would give rendered once with a placeholder for its text, the text JSON-encoded into
        it: the same bytes without building and encoding the whole chunk per token."""
        if not (isinstance(event, ChoiceDelta) and event.finish_reason is None and self._plain(event)):
            return "".join(_sse(chunk) for chunk in self.add(event))
        template = self._templates.get(event.index)
        if template is None:
            rendered = _sse(self._plain_chunk(event.index, PLACEHOLDER))
            before, after = rendered.split(_json_string(PLACEHOLDER))
            template = self._templates[event.index] = (before, after)
        self._record(event)
        return f"{template[0]}{_json_string(event.text)}{template[1]}"

    def _plain(self, event: ChoiceDelta) -> bool:
        """Whether `add` makes of this (unfinished) delta one chunk that differs from others only by its text."""
        return False

    def _plain_chunk(self, index: int, text: str) -> dict[str, Any]:
        """The chunk `add` makes of a plain text delta of choice `index`."""
        raise NotImplementedError

    def opening_chunks(self) -> list[dict[str, Any]]:
        return []

    def add(self, event: Event) -> list[dict[str, Any]]:
        raise NotImplementedError

    def usage_chunk(self) -> dict[str, Any]:
        raise NotImplementedError

    def response(self) -> dict[str, Any]:
        raise NotImplementedError


class _CompletionFormat(_Format):
    def __init__(self, serving: Serving, request: GenerationRequest, echo_texts: list[str] | None) -> None:
        super().__init__(serving, request)
        self.echo_texts = echo_texts

    def _echo(self, index: int) -> str:
        return "" if self.echo_texts is None else self.echo_texts[index // self.request.n]

    def add(self, event: Event) -> list[dict[str, Any]]:
        choice = self._record(event)
        if choice is None:
            return []
        assert isinstance(event, ChoiceDelta)
        text = event.text if choice.started else self._echo(event.index) + event.text
        choice.started = True
        logprobs = None
        if self.request.logprobs is not None:
            logprobs = self._logprobs(list(event.logprobs), base=len(self._echo(event.index)) + event.text_offset)
        item = CompletionChoice(index=event.index, text=text, logprobs=logprobs, finish_reason=event.finish_reason,
                                stop_reason=event.stop_reason)  # fmt: skip
        return [{**self._base("text_completion"), "choices": [item.model_dump()]}]

    def _plain(self, event: ChoiceDelta) -> bool:
        return self.request.logprobs is None and self.choices[event.index].started and event.stop_reason is None

    def _plain_chunk(self, index: int, text: str) -> dict[str, Any]:
        return {**self._base("text_completion"), "choices": [CompletionChoice(index=index, text=text).model_dump()]}

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._base("text_completion"), "choices": [], "usage": self.usage().model_dump()}

    def _logprobs(
        self, entries: list[TokenLogprob | None], base: int, prompt: list[int] | None = None
    ) -> CompletionLogprobs:
        out = CompletionLogprobs()
        token_text = self.serving.tokenizer.token_text
        offset = base
        tokens = prompt if prompt is not None else [e.token for e in entries if e is not None]
        for token, entry in zip(tokens, entries, strict=True):
            text = token_text(token)
            out.tokens.append(text)
            out.text_offset.append(offset)
            offset += len(self.serving.tokenizer.decode([token]))
            if entry is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(entry.logprob)
            top = {token_text(t): lp for t, lp in entry.top}
            top.setdefault(text, entry.logprob)
            out.top_logprobs.append(top)
        return out

    def response(self) -> dict[str, Any]:
        choices = []
        for index, choice in enumerate(self.choices):
            logprobs = None
            if self.request.logprobs is not None:
                logprobs = CompletionLogprobs()
                if self.echo_texts is not None:
                    p = index // self.request.n
                    prompt = self.request.prompts[p]
                    entries = self.prompt_logprobs.get(p, [None] * len(prompt))
                    logprobs = self._logprobs(entries, base=0, prompt=prompt)
                generated = self._logprobs(choice.logprobs, base=len(self._echo(index)))
                for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    getattr(logprobs, name).extend(getattr(generated, name))
            choices.append(
                CompletionChoice(
                    index=index,
                    text=self._echo(index) + choice.text,
                    logprobs=logprobs,
                    finish_reason=choice.finish_reason,
                    stop_reason=choice.stop_reason,
                )  # fmt: skip
            )
        body = CompletionResponse(id=self.request.request_id, created=self.created,
                                  model=self.serving.model_name, choices=choices, usage=self.usage())  # fmt: skip
        return body.model_dump()


class _ChatFormat(_Format):
    def __init__(self, serving: Serving, request: GenerationRequest, tool_plan: ToolPlan | None = None) -> None:
        super().__init__(serving, request)
        self.tool_plan = tool_plan  # the reply is tool calls: sent whole when the choice ends

    def _tool_calls(self, choice: _Choice) -> tuple[list[ToolCallOut] | None, str | None]:
        """(tool calls, finish_reason) of a finished choice of a tool request; no calls if it was cut short."""
        assert self.tool_plan is not None
        calls = parse_tool_calls(choice.text, self.tool_plan) if choice.finish_reason == "stop" else None
        return calls, "tool_calls" if calls else choice.finish_reason

    def opening_chunks(self) -> list[dict[str, Any]]:
        return [self._chunk(ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")))
                for i in range(len(self.choices))]  # fmt: skip

    def _chunk(self, choice: ChatChunkChoice) -> dict[str, Any]:
        item = {**choice.model_dump(), "delta": choice.delta.model_dump(exclude_none=True)}  # OpenAI omits unset
        return {**self._base("chat.completion.chunk"), "choices": [item]}

    def _plain(self, event: ChoiceDelta) -> bool:
        return (self.request.logprobs is None and self.tool_plan is None and bool(event.text)
                and event.stop_reason is None)  # fmt: skip

    def _plain_chunk(self, index: int, text: str) -> dict[str, Any]:
        return self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=text)))

    def add(self, event: Event) -> list[dict[str, Any]]:
        if self._record(event) is None:
            return []
        assert isinstance(event, ChoiceDelta)
        logprobs = self._logprobs(event.logprobs) if self.request.logprobs is not None else None
        finish_reason = event.finish_reason
        delta = ChatDelta(content=event.text) if event.text or event.finish_reason is None else ChatDelta()
        if self.tool_plan is not None:
            if event.finish_reason is None:
                return []  # tool calls go out whole, with the finish
            calls, finish_reason = self._tool_calls(self.choices[event.index])
            if calls:
                delta = ChatDelta(
                    tool_calls=[ToolCallDelta(index=k, **call.model_dump()) for k, call in enumerate(calls)]
                )
            else:
                delta = ChatDelta(content=self.choices[event.index].text)
        choice = ChatChunkChoice(index=event.index, delta=delta, logprobs=logprobs,
                                 finish_reason=finish_reason, stop_reason=event.stop_reason)  # fmt: skip
        return [self._chunk(choice)]

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._base("chat.completion.chunk"), "choices": [], "usage": self.usage().model_dump()}

    def _logprobs(self, entries: list[TokenLogprob] | list[TokenLogprob | None]) -> ChatLogprobs:
        token_text: Callable[[int], str] = self.serving.tokenizer.token_text
        content = []
        for entry in entries:
            if entry is None:
                continue
            text = token_text(entry.token)
            top = [
                TopLogprob(token=token_text(t), logprob=lp, bytes=list(token_text(t).encode())) for t, lp in entry.top
            ]
            content.append(
                ChatTokenLogprob(token=text, logprob=entry.logprob, bytes=list(text.encode()), top_logprobs=top)
            )
        return ChatLogprobs(content=content)

    def response(self) -> dict[str, Any]:
        choices = []
        for index, choice in enumerate(self.choices):
            message, finish_reason = ChatMessageOut(content=choice.text), choice.finish_reason
            if self.tool_plan is not None:
                calls, finish_reason = self._tool_calls(choice)
                if calls:
                    message = ChatMessageOut(content=None, tool_calls=calls)
            choices.append(
                ChatChoice(
                    index=index,
                    message=message,
                    logprobs=self._logprobs(choice.logprobs) if self.request.logprobs is not None else None,
                    finish_reason=finish_reason,
                    stop_reason=choice.stop_reason,
                )
            )
        body = ChatCompletionResponse(id=self.request.request_id, created=self.created,
                                      model=self.serving.model_name, choices=choices, usage=self.usage())  # fmt: skip
        return body.model_dump()
