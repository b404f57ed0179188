"""Request bodies of the OpenAI Responses API (`POST /v1/responses`), strict as the other routes' bodies: an unknown
field (`reasoning`, `include`, `background`, ...) is a 400 naming it, a wrong JSON type a 400 naming the field.

Input items: messages (`role` + text content, a string or `input_text` / `output_text` parts), and a conversation's
`function_call` / `function_call_output` items. Images, files and built-in tools are not served by a text model:
their item or part types are refused as unknown.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from tnn.server.schemas import JsonSchema, StrictBody


class InputText(StrictBody):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # an output_text part sent back as history carries it


class MessageItem(StrictBody):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | Annotated[list[InputText], Field(max_length=4096)]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class FunctionCallItem(StrictBody):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(StrictBody):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class FormatText(StrictBody):
    type: Literal["text"]


class FormatJsonObject(StrictBody):
    type: Literal["json_object"]


class FormatJsonSchema(StrictBody):
    type: Literal["json_schema"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    schema_: JsonSchema = Field(alias="schema")  # `schema` would shadow BaseModel's
    description: str | None = None
    strict: bool = False


class TextConfig(StrictBody):
    format: Annotated[FormatText | FormatJsonObject | FormatJsonSchema, Field(discriminator="type")] | None = None


class FunctionTool(StrictBody):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: bool = False


class FunctionToolChoice(StrictBody):
    type: Literal["function"]
    name: str


class ResponseRequest(StrictBody):
    model: str | None = None
    input: (
        Annotated[str, Field(max_length=10_000_000)] | Annotated[list[InputItem], Field(min_length=1, max_length=4096)]
    )
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    text: TextConfig | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool = True
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    user: str | None = None
    truncation: Literal["disabled"] | None = None  # "auto" (drop history to fit) is not implemented

    def items(self) -> list[InputItem]:
        """`input` as items (a string is one user message)."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)
