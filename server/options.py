"""From a request body to what the engine needs: sampling parameters, stops and the grammar, with the model's
generation defaults filling the fields a request leaves out. Each check that fails is a 400 naming the field."""

from __future__ import annotations

from dataclasses import dataclass

from tnn.model.sampling import SamplingParams
from tnn.server.errors import ApiError
from tnn.server.generation_config import GenerationDefaults
from tnn.server.schemas import Request, ResponseFormatJsonObject, ResponseFormatJsonSchema
from tnn.server.structured import GrammarSpec
from tnn.server.tools import ToolPlan

JSON_OBJECT_SCHEMA = {"type": "object"}


@dataclass(frozen=True)
class Stops:
    strings: tuple[str, ...]
    token_ids: frozenset[int]  # stop_token_ids: end the choice even with ignore_eos (vLLM)
    eos_token_ids: frozenset[int]  # the tokenizer's and generation_config's eos: ignored with ignore_eos


def sampling_params(body: Request, defaults: GenerationDefaults, vocab_size: int) -> SamplingParams:
    """The request's sampling, each omitted field from the generation defaults, then SamplingParams' own."""

    def pick(name: str, fallback: float) -> float:
        value = getattr(body, name)
        if value is None:
            value = getattr(defaults, name)
        return fallback if value is None else value

    try:
        return SamplingParams(
            temperature=pick("temperature", 1.0),
            top_k=max(0, int(pick("top_k", 0))),
            top_p=pick("top_p", 1.0),
            min_p=pick("min_p", 0.0),
            repetition_penalty=pick("repetition_penalty", 1.0),
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=logit_bias(body, vocab_size),
            seed=body.seed,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_value") from exc


def logit_bias(body: Request, vocab_size: int) -> dict[int, float] | None:
    """OpenAI's {"token id as a string": bias}; every id must be in the vocabulary."""
    if not body.logit_bias:
        return None
    biases = {}
    for key, bias in body.logit_bias.items():
        if not key.isascii() or not key.isdigit():
            raise ApiError(400, f"logit_bias keys must be token ids (strings of digits), got {key!r}",
                           param="logit_bias", code="invalid_value")  # fmt: skip
        token = int(key)
        if token >= vocab_size:
            raise ApiError(400, f"logit_bias: token id {token} is outside the vocabulary (ids 0..{vocab_size - 1})",
                           param="logit_bias", code="invalid_value")  # fmt: skip
        biases[token] = bias
    return biases


def stops(
    body: Request, defaults: GenerationDefaults, eos_id: int | None, vocab_size: int, *, constrained: bool
) -> Stops:
    """Stop strings (the request's, else the generation defaults' unless a grammar decides the end), stop token ids
    and the end-of-sequence ids."""
    if body.stop is not None:
        strings = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)
    else:
        strings = () if constrained else defaults.stop or ()
    for token in body.stop_token_ids or ():
        if token >= vocab_size:
            raise ApiError(400, f"stop_token_ids: token id {token} is outside the vocabulary (ids 0..{vocab_size - 1})",
                           param="stop_token_ids", code="invalid_value")  # fmt: skip
    eos = set(defaults.eos_token_ids)
    if eos_id is not None:
        eos.add(eos_id)
    return Stops(strings=strings, token_ids=frozenset(body.stop_token_ids or ()), eos_token_ids=frozenset(eos))


def grammar_spec(body: Request, tool_plan: ToolPlan | None) -> GrammarSpec | None:
    """The one constraint a request asks for (response_format, guided_*, tools), or None; two are a 400."""
    specs: list[GrammarSpec] = []
    if isinstance(body.response_format, ResponseFormatJsonObject):
        specs.append(GrammarSpec("json_schema", JSON_OBJECT_SCHEMA, "response_format"))
    elif isinstance(body.response_format, ResponseFormatJsonSchema):
        schema = body.response_format.json_schema.schema_ or JSON_OBJECT_SCHEMA
        specs.append(GrammarSpec("json_schema", schema, "response_format.json_schema.schema"))
    if body.guided_json is not None:
        specs.append(GrammarSpec("json_schema", body.guided_json, "guided_json"))
    if body.guided_regex is not None:
        specs.append(GrammarSpec("regex", body.guided_regex, "guided_regex"))
    if body.guided_choice is not None:
        specs.append(GrammarSpec("choice", body.guided_choice, "guided_choice"))
    if tool_plan is not None:
        specs.append(GrammarSpec("json_schema", tool_plan.schema, "tools"))
    if len(specs) > 1:
        names = ", ".join(spec.param.split(".")[0] for spec in specs)
        raise ApiError(400, f"at most one output constraint per request, got {names}", param=specs[1].param.split(".")[0],
                       code="invalid_value")  # fmt: skip
    return specs[0] if specs else None
