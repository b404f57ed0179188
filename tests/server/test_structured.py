"""Grammar masks (tnn.server.structured) against their slow twin, grammar errors, and tool-call plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tnn.server.schemas import NamedToolChoice, Tool
from tnn.server.structured import GrammarError, Grammars, GrammarSpec, allowed_rows, allowed_rows_reference
from tnn.server.tokenizer import ServerTokenizer
from tnn.server.tools import ToolChoiceError, parse_tool_calls, plan_tool_calls

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"enum": ["x", "y"]}},
    "required": ["a", "b"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> ServerTokenizer:
    return ServerTokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def grammars(tokenizer: ServerTokenizer) -> Grammars:
    assert tokenizer.eos_id is not None
    return Grammars(tokenizer.hf, tokenizer.vocab_size + 5, tokenizer.eos_id)  # a model vocabulary may be larger


def walk(grammars: Grammars, tokenizer: ServerTokenizer, spec: GrammarSpec, text: str) -> None:
    """Follow `text` token by token; at every step the fast mask equals the bit-by-bit one and allows the token."""
    matchers = [grammars.matcher(grammars.compile(spec)), None]
    tokens = tokenizer.encode(text, add_bos=False)
    for token in [*tokens, tokenizer.eos_id]:
        fast = allowed_rows(matchers, grammars.vocab_size, torch.device("cpu"))
        slow = allowed_rows_reference(matchers, grammars.vocab_size)
        assert fast[1] is None and slow[1] is None
        assert torch.equal(fast[0], slow[0])
        assert fast[0][token], f"token {token} ({tokenizer.token_text(token)!r}) not allowed"
        assert not fast[0][grammars.vocab_size - 5 :].any()  # ids past the tokenizer are never allowed
        assert matchers[0].consume(token)
    assert matchers[0].finished


def test_masks_follow_json_regex_and_choice(grammars: Grammars, tokenizer: ServerTokenizer) -> None:
    walk(
        grammars,
        tokenizer,
        GrammarSpec("json_schema", SCHEMA, "p"),
        json.dumps({"a": 3, "b": "y"}, separators=(",", ":")),
    )
    walk(grammars, tokenizer, GrammarSpec("regex", r"[0-9]{2}-[a-z]+", "p"), "42-abc")
    walk(grammars, tokenizer, GrammarSpec("choice", ["To be", 'or "not"'], "p"), 'or "not"')


def test_eos_only_where_the_grammar_accepts(grammars: Grammars, tokenizer: ServerTokenizer) -> None:
    matcher = grammars.matcher(grammars.compile(GrammarSpec("regex", r"ab+", "p")))
    eos = tokenizer.eos_id
    (mask,) = allowed_rows([matcher], grammars.vocab_size, torch.device("cpu"))
    assert mask is not None and not mask[eos]  # nothing yet: "" does not match
    for token in tokenizer.encode("ab", add_bos=False):
        assert matcher.consume(token)
    (mask,) = allowed_rows([matcher], grammars.vocab_size, torch.device("cpu"))
    assert mask is not None and mask[eos] and mask.sum() > 1  # "ab" matches; "abb..." may go on


@pytest.mark.parametrize(
    ("spec", "needle"),
    [(GrammarSpec("regex", "(((", "guided_regex"), "regex"),
     (GrammarSpec("json_schema", {"type": "objectx"}, "guided_json"), "objectx"),
     (GrammarSpec("json_schema", "{not json", "guided_json"), "")],
)  # fmt: skip
def test_bad_grammars_name_the_field(grammars: Grammars, spec: GrammarSpec, needle: str) -> None:
    with pytest.raises(GrammarError) as caught:
        grammars.compile(spec)
    assert caught.value.param == spec.param and needle in str(caught.value)


def tool(name: str, parameters: dict | None = None) -> Tool:
    return Tool.model_validate({"type": "function", "function": {"name": name, "parameters": parameters}})


def test_tool_plans() -> None:
    tools = [tool("a", SCHEMA), tool("b")]
    named = plan_tool_calls(
        tools, NamedToolChoice.model_validate({"type": "function", "function": {"name": "a"}}), True
    )
    assert named is not None and named.schema == SCHEMA and named.named == "a"
    (call,) = parse_tool_calls('{"a":1,"b":"x"}', named) or []
    assert call.function.name == "a" and json.loads(call.function.arguments) == {"a": 1, "b": "x"}
    required = plan_tool_calls(tools, "required", False)
    assert required is not None and required.schema["maxItems"] == 1
    calls = parse_tool_calls('[{"name":"b","arguments":{}}]', required)
    assert calls is not None and [c.function.name for c in calls] == ["b"]
    assert parse_tool_calls('[{"name":"b","argu', required) is None  # cut by max_tokens
    assert plan_tool_calls(tools, "none", True) is None
    with pytest.raises(ToolChoiceError, match="auto"):
        plan_tool_calls(tools, "auto", True)
    with pytest.raises(ToolChoiceError, match="unique"):
        plan_tool_calls([tool("a"), tool("a")], "required", True)
