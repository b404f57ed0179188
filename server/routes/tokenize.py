"""/tokenize and /detokenize (vLLM shapes): the exact ids the completion routes would use."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from tnn.server.deps import ServingDep
from tnn.server.errors import ApiError
from tnn.server.schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["tokenize"])


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, serving: ServingDep) -> TokenizeResponse:
    serving.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give exactly one of prompt and messages", param="prompt", code="invalid_value")
    tokenizer = serving.tokenizer
    if body.messages is not None:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        text = await asyncio.to_thread(tokenizer.render_chat, messages)
    else:
        assert body.prompt is not None
        text = body.prompt
    add_bos = body.add_special_tokens and serving.settings.add_bos
    tokens = await asyncio.to_thread(tokenizer.encode, text, add_bos=add_bos)
    return TokenizeResponse(
        count=len(tokens),
        max_model_len=serving.settings.max_prompt_tokens,
        tokens=tokens,
        token_strs=[tokenizer.token_text(t) for t in tokens],
    )


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, serving: ServingDep) -> DetokenizeResponse:
    serving.check_model(body.model)
    if serving.settings.skip_tokenizer:
        raise ApiError(400, "this server runs with --skip-tokenizer: it has no tokenizer to detokenize with",
                       param="tokens", code="tokenizer_skipped")  # fmt: skip
    if body.tokens and max(body.tokens) >= serving.engine.vocab_size:
        raise ApiError(400, f"token ids must be below the vocabulary size {serving.engine.vocab_size}",
                       param="tokens", code="invalid_value")  # fmt: skip
    return DetokenizeResponse(prompt=serving.tokenizer.decode(body.tokens))
