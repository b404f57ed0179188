"""Byte-level BPE: exact round trips, and the saved directory loads with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tnn.model.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    encode,
    eos_id,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

CORPUS = [
    "MACBETH:\nSo foul and fair a day I have not seen.\n\nBANQUO:\nHow far is't call'd to Forres?\n" * 20,
    "[Enter MACBETH and BANQUO]\n\nFirst Witch:\nAll hail, Macbeth! hail to thee, thane of Glamis!\n" * 20,
]
UNSEEN = "Ægypt — naïve «quoth» the 🐍 at 3:07\twith  two spaces\n\nand a blank line"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(CORPUS, vocab_size=300), directory)
    return directory


def test_round_trip_is_exact_even_for_unseen_characters(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    for text in [*CORPUS, UNSEEN, ""]:
        assert tokenizer.decode(encode(tokenizer, text)) == text
    assert len(encode(tokenizer, CORPUS[0])) < 0.7 * len(CORPUS[0].encode())  # merges were learned


def test_special_tokens_have_fixed_ids(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.get_vocab_size() == 300
    assert eos_id(tokenizer) == 0
    assert tokenizer.token_to_id(PAD_TOKEN) == 1


def test_auto_tokenizer_loads_the_directory_with_special_tokens_and_chat_template(tokenizer_dir: Path) -> None:
    auto = AutoTokenizer.from_pretrained(tokenizer_dir)
    fast = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    ids = encode(load_tokenizer(tokenizer_dir), UNSEEN)
    for loaded in (auto, fast):
        assert loaded.eos_token == EOS_TOKEN and loaded.eos_token_id == 0
        assert loaded.pad_token == PAD_TOKEN and loaded.pad_token_id == 1
        assert loaded(UNSEEN)["input_ids"] == ids
        assert loaded.decode(ids) == UNSEEN
    messages = [
        {"role": "system", "content": "Speak in verse."},
        {"role": "user", "content": "Who art thou? "},
    ]
    rendered = auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "System:\nSpeak in verse.\n\nUser:\nWho art thou?\n\nAssistant:\n"


def test_vocab_smaller_than_the_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=200)
