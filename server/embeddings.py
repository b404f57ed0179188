"""OpenAI /v1/embeddings: inputs to token ids, the parallel forward on the engine thread, pooled and normalized.

Inputs are batched, sorted by length, at most `max_prefill_tokens` tokens per forward (one longer input alone);
each forward is one engine call, and the engine runs at most `max_prefill_tokens` tokens of them between two
decode steps, so generation interleaves with a large request. A client that goes away cancels the calls not yet
run (checked every DISCONNECT_POLL seconds): abandoned work stops within one call. A causal model pads on the right (exact: no position sees a later one);
a bidirectional model only batches inputs of equal length, so that it sees exactly its input.
Pooling over the final hidden states: mean (default) or last token (`embedding_pooling`); vectors have unit
L2 norm. Works for every model: causal LMs and bidirectional encoders alike.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

import numpy as np
import torch
from torch import Tensor

from tnn.model.tnn import TnnLM
from tnn.server.engine import Engine, NotAccepting
from tnn.server.errors import ApiError
from tnn.server.schemas import Embedding, EmbeddingInfo, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from tnn.server.serving import Serving
from tnn.server.settings import Settings

MAX_INPUTS = 2048  # OpenAI's limit on the number of inputs per request
DISCONNECT_POLL = 0.25  # seconds between client-disconnect checks while the engine computes


class ClientGone(Exception):
    """The client disconnected; its engine calls not yet run were cancelled."""


def embedding_info(model: TnnLM, settings: Settings) -> EmbeddingInfo:
    return EmbeddingInfo(pooling=settings.embedding_pooling, dimensions=model.config.d_model)


class Embeddings:
    """The /v1/embeddings logic on top of the engine and the completions' input checks."""

    def __init__(self, engine: Engine, serving: Serving, settings: Settings) -> None:
        self.engine = engine
        self.serving = serving
        self.settings = settings
        self.info = embedding_info(engine.model, settings)

    async def create(self, body: EmbeddingRequest, gone: Callable[[], Awaitable[bool]]) -> EmbeddingResponse:
        """The response; ClientGone (the rest of the work cancelled) once `gone()` says the client left."""
        self.serving.check_model(body.model)
        if body.dimensions is not None and body.dimensions != self.info.dimensions:
            raise ApiError(400, f"dimensions is not supported: this model's embeddings have {self.info.dimensions} "
                           "dimensions", param="dimensions", code="unsupported")  # fmt: skip
        prompts = await self._token_ids(body.input)
        vectors = await self._embed(prompts, gone)  # (n_inputs, d) float32, unit norm
        data = [Embedding(index=i, embedding=_encode(vector, body.encoding_format)) for i, vector in enumerate(vectors)]
        tokens = sum(len(p) for p in prompts)
        return EmbeddingResponse(
            data=data, model=self.serving.model_name, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        )

    async def _token_ids(self, inputs: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs:
            raise ApiError(400, "input must not be empty", param="input", code="invalid_value")
        if len(inputs) > MAX_INPUTS and not isinstance(inputs[0], int):
            raise ApiError(400, f"at most {MAX_INPUTS} inputs per request, got {len(inputs)}", param="input",
                           code="invalid_value")  # fmt: skip
        if isinstance(inputs[0], int):
            prompts = [list(inputs)]
        elif isinstance(inputs[0], str):
            texts = [str(text) for text in inputs]
            if any(not text for text in texts):
                raise ApiError(400, "input strings must not be empty", param="input", code="invalid_value")
            add_bos = self.settings.add_bos
            prompts = await asyncio.to_thread(
                lambda: [self.serving.tokenizer.encode(t, add_bos=add_bos) for t in texts]
            )
        else:
            prompts = [list(ids) for ids in inputs]  # type: ignore[arg-type]
        for ids in prompts:
            if ids and min(ids) < 0:
                raise ApiError(400, "token ids must be >= 0", param="input", code="invalid_value")
            self.serving._check_prompt(ids, "input")
        return prompts

    async def _embed(self, prompts: list[list[int]], gone: Callable[[], Awaitable[bool]]) -> Tensor:
        """Engine calls of at most `max_prefill_tokens` tokens each; (n_inputs, d) float32 in input order.
        A causal model batches inputs of any length (right padding cannot reach earlier positions); a
        bidirectional one only inputs of equal length."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        batches: list[list[int]] = []
        for index in order:
            batch = batches[-1] if batches else None
            fits = batch is not None and (len(batch) + 1) * len(prompts[index]) <= self.settings.max_prefill_tokens
            if batch is not None and fits and (self.engine.generative or len(prompts[batch[0]]) == len(prompts[index])):
                batch.append(index)
            else:
                batches.append([index])
        try:
            futures = [
                self.engine.run_in_engine(self._forward_fn([prompts[i] for i in batch]), sum(len(prompts[i]) for i in batch))
                for batch in batches
            ]  # fmt: skip
        except NotAccepting as exc:
            raise ApiError(503, str(exc), code="server_not_ready", headers={"Retry-After": "1"}) from exc
        results = await _unless_gone(futures, gone)
        out = torch.empty(len(prompts), self.info.dimensions)
        for batch, vectors in zip(batches, results, strict=True):
            out[batch] = vectors
        return out

    def _forward_fn(self, batch: list[list[int]]) -> Callable[[], Tensor]:
        model, pooling = self.engine.model, self.info.pooling
        pad = model.config.padding_idx or 0
        width = max(len(ids) for ids in batch)

        counter = self.engine.metrics.prefill_tokens.labels(kind="embedding")

        def forward() -> Tensor:
            counter.inc(sum(len(ids) for ids in batch))
            tokens = torch.tensor([ids + [pad] * (width - len(ids)) for ids in batch], device=model.device)  # (b, L)
            lengths = torch.tensor([len(ids) for ids in batch]) if model.config.causal else None
            pooled = model.pooled_features(tokens, pooling, lengths).float()  # (b, d)
            return torch.nn.functional.normalize(pooled, dim=-1).cpu()

        return forward


async def _unless_gone(futures: list[Future[Tensor]], gone: Callable[[], Awaitable[bool]]) -> list[Tensor]:
    """The futures' results; ClientGone, with every call not yet run cancelled, once the client has left."""
    waiting = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
            if done:
                return waiting.result()
            if await gone():
                raise ClientGone
    finally:
        for future in futures:
            future.cancel()  # no-op for calls that ran or are running
        waiting.cancel()


def _encode(vector: Tensor, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float64).tolist()
