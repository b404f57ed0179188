"""Text the tokenizer cannot take: JSON may carry lone UTF-16 surrogates (`"\\ud800"`), which Python keeps in a
str but no UTF-8 encoder (the tokenizer's, the logger's, the response's) accepts. Found anywhere in a request body,
with the dotted path of the field, before any handler touches it."""

from __future__ import annotations

from typing import Any


def invalid_text_path(body: Any) -> tuple[str, int] | None:
    """The dotted path of the first string (or object key) in a parsed JSON value that is not valid Unicode, and
    the character index of the offence; None if every string is valid. Iterative: no depth limit."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            index = _first_surrogate(value)
            if index is not None:
                return path, index
        elif isinstance(value, dict):
            for key in reversed(list(value)):
                index = _first_surrogate(key)
                if index is not None:
                    return path or "body", index  # the key itself is bad: name the object that holds it
                stack.append((_join(path, key), value[key]))
        elif isinstance(value, list):
            stack.extend((_join(path, str(i)), item) for i, item in reversed(list(enumerate(value))))
    return None


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _first_surrogate(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
