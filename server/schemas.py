"""Request and response bodies of the HTTP API (OpenAI shapes) and the one error envelope.

Request bodies are strict, as the OpenAI API is: no type coercion (`"max_tokens": "5"` and `"stream": "yes"` are a
400 naming the field), an explicit `null` means "the default" wherever a field is optional, and an unknown field is
a 400 naming it. The extensions we implement beyond the OpenAI API are fields too (EXTENSIONS lists them; the README
documents each). Static ranges are validated here (a violation becomes a 400 naming the field); limits that depend
on the server's settings or the model (max_tokens ceiling, n, logprobs, stop count, token ids) are checked in
`tnn.server.serving`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1
MAX_CHOICES = 256  # guided_choice alternatives
TokenId = Annotated[int, Field(ge=0)]
StopStrings = str | Annotated[list[str], Field(max_length=64)]
JsonSchema = dict[str, Any]

# Fields beyond the OpenAI API that requests may carry (vLLM's names and meanings).
EXTENSIONS = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "stop_token_ids",
    "ignore_eos",
    "guided_json",
    "guided_regex",
    "guided_choice",
)


class StrictBody(BaseModel):
    """A request body or part of one: strict types, unknown fields refused, null = the field's default."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class StreamOptions(StrictBody):
    include_usage: bool = False


class ResponseFormatText(StrictBody):
    type: Literal["text"]


class ResponseFormatJsonObject(StrictBody):
    type: Literal["json_object"]


class JsonSchemaFormat(StrictBody):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    schema_: JsonSchema = Field(default_factory=dict, alias="schema")  # `schema` would shadow BaseModel's
    strict: bool = False


class ResponseFormatJsonSchema(StrictBody):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]


class Request(StrictBody):
    """Fields shared by completions and chat. Absent or null means "the default"."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=1_000_000)  # 0 or -1: off
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)  # 0: off
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    n: int = Field(default=1, ge=1, le=128)
    stop: StopStrings | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=64)] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # extension (vLLM): generate exactly max_tokens tokens
    cache_prompt: bool = True  # extension (llama.cpp's name): false: no prefix-state cache read or write
    user: str | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=1024)] | None = None
    response_format: ResponseFormat | None = None
    guided_json: JsonSchema | str | None = None  # a schema, or one as a JSON string (vLLM)
    guided_regex: Annotated[str, Field(min_length=1, max_length=10_000)] | None = None
    guided_choice: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_CHOICES)] | None
    ) = None


class CompletionRequest(Request):
    prompt: (
        Annotated[str, Field(max_length=10_000_000)]
        | Annotated[list[str], Field(min_length=1, max_length=64)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=64)]
    )
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=100)
    suffix: str | None = None  # refused
    best_of: int | None = Field(default=None, ge=1, le=128)  # refused when > n


class TextPart(StrictBody):
    type: Literal["text"]
    text: str


class FunctionCall(StrictBody):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(StrictBody):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def text(self) -> str:
        """The text the chat template sees (an assistant turn that called tools shows the calls as JSON)."""
        if self.tool_calls and not self.content:
            return "\n".join(call.function.model_dump_json() for call in self.tool_calls)
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(StrictBody):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: bool = False


class Tool(StrictBody):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictBody):
    name: str


class NamedToolChoice(StrictBody):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=4096)]
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=100)
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    store: bool = False  # accepted and ignored: nothing is stored
    metadata: dict[str, str] | None = None  # accepted and ignored


class TokenizeRequest(StrictBody):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True  # text prompts: prepend bos as /v1/completions does


class DetokenizeRequest(StrictBody):
    model: str | None = None
    tokens: Annotated[list[TokenId], Field(max_length=10_000_000)]


# ---- responses ---------------------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens served from the prefix-state cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None  # the stop string that ended the choice (vLLM extension)


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] = Field(default_factory=list)


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None  # present (and content null) when the reply is tool calls


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None


class EmbeddingInfo(BaseModel):
    """How /v1/embeddings builds its vectors for this model (part of the /v1/models card)."""

    pooling: Literal["mean", "last"]  # over the final hidden states of the parallel path
    dimensions: int
    normalized: bool = True  # unit L2 norm, as OpenAI's


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tnn-serve"
    root: str
    max_model_len: int
    generation_defaults: dict[str, Any] = Field(default_factory=dict)  # what a request that omits a field gets
    state_bytes_per_sequence: int | None = None  # extension: the fixed recurrent state of one sequence (once loaded)
    operator: str = "tnn"  # the token mixer: tnn, fd (FD-TNN) or ski (SKI-TNN)
    causal: bool = True  # False: a bidirectional encoder, which serves /v1/embeddings only
    embedding: EmbeddingInfo | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str]


class DetokenizeResponse(BaseModel):
    prompt: str


class HealthResponse(BaseModel):
    status: Literal["ok", "unhealthy"]


class ReadyResponse(BaseModel):
    ready: bool
    status: str


class EmbeddingRequest(StrictBody):
    """OpenAI /v1/embeddings: `input` is a string, strings, token ids or lists of token ids (strict, as the
    completions and chat bodies are: no "192" or 192.0 dimensions, no float or bool token ids)."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: the float32 little-endian bytes


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
