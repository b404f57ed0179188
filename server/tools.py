"""Tool calling on top of structured output: `tool_choice` "required" or a named function constrains the reply to
calls of the request's functions, with arguments that follow each function's `parameters` schema.

- named function: the reply is the arguments object itself (schema: that function's parameters);
- "required": the reply is a JSON array of 1 to MAX_PARALLEL_TOOL_CALLS calls `{"name": ..., "arguments": {...}}`
  (one call when parallel_tool_calls is false), each an `anyOf` branch per function, as vLLM does.
The finished text is parsed into OpenAI `tool_calls` (arguments as a JSON string) with finish_reason "tool_calls".
`tool_choice: "auto"` (the default when tools are given) would need the model to decide between text and a call,
which a grammar cannot decide for it: it is refused with a 400.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from tnn.server.schemas import FunctionCall, NamedToolChoice, Tool, ToolCallOut

MAX_PARALLEL_TOOL_CALLS = 8
ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolPlan:
    """How a request's reply becomes tool calls: the schema that constrains it and, for a named function, its name."""

    schema: dict[str, Any]
    named: str | None  # the reply is this function's arguments; None: a list of calls


class ToolChoiceError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def plan_tool_calls(tools: list[Tool], tool_choice: Any, parallel: bool) -> ToolPlan | None:
    """The constraint for `tools` under `tool_choice`; None when the reply is plain text ("none")."""
    if tool_choice == "none":
        return None
    functions = {tool.function.name: tool.function for tool in tools}
    if len(functions) != len(tools):
        raise ToolChoiceError("tools: function names must be unique", "tools")
    if isinstance(tool_choice, NamedToolChoice):
        name = tool_choice.function.name
        if name not in functions:
            raise ToolChoiceError(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
        return ToolPlan(schema=functions[name].parameters or ANY_OBJECT, named=name)
    if tool_choice == "required":
        call = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": function.parameters or ANY_OBJECT},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for name, function in functions.items()
            ]
        }
        most = MAX_PARALLEL_TOOL_CALLS if parallel else 1
        return ToolPlan(schema={"type": "array", "items": call, "minItems": 1, "maxItems": most}, named=None)
    raise ToolChoiceError(
        f"tool_choice {tool_choice!r} is not supported (it is the default when tools are given): send "
        '"required", a named function {"type": "function", "function": {"name": ...}}, or "none"',
        "tool_choice",
    )


def parse_tool_calls(text: str, plan: ToolPlan) -> list[ToolCallOut] | None:
    """The tool calls in a finished constrained reply; None if the text is not a complete reply (cut by length)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    calls = [(plan.named, value)] if plan.named is not None else [(c["name"], c["arguments"]) for c in value]
    return [
        ToolCallOut(
            id=f"call_{uuid.uuid4().hex[:24]}",
            function=FunctionCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False)),
        )
        for name, arguments in calls
    ]
