"""A fairseq dictionary (dict.txt) over GPT-2 BPE ids, turned into a tokenizer that speaks the checkpoint's ids.

fairseq's `Dictionary` numbers `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then one id per dict.txt line
("TOKEN COUNT", in file order, from 4). With `--bpe gpt2` each TOKEN is a GPT-2 token id written as a decimal
string, so training saw text -> GPT-2 BPE ids -> fairseq ids (a GPT-2 id absent from the dict -> `<unk>`). fairseq
pads the dictionary to a multiple of 8 with `madeupwordNNNN` symbols when it loads it (spec §3: V = 50264 =
4 + 50260 lines), so a checkpoint's vocabulary may exceed 4 + lines by fewer than 8.

`remap_tokenizer` writes that mapping into the BPE model itself: the GPT-2 tokenizer's vocabulary keeps its token
strings and merges, each string gets its fairseq id, and the four fairseq specials are the added tokens. The
result encodes text straight to fairseq ids and decodes them back, in the ordinary tokenizer.json format the
server and transformers load. GPT-2's dict.txt has a line for every GPT-2 token, so that is all it takes.

A dict.txt without a line for some GPT-2 token is the one case that needs a mapping layer: BPE merges look tokens
up by id, so those strings cannot share `<unk>`'s id; they get ids from `vocab_size` up, tokenizer_config.json
records `fairseq_vocab_size`, and `unk_beyond_vocab` (what the server's tokenizer applies after encoding) turns
them into `<unk>` = 3, as fairseq does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3
BOS, PAD, EOS, UNK = FAIRSEQ_SPECIALS
UNK_ID = 3
PAD_MULTIPLE = 8  # fairseq's Dictionary.pad_to_multiple_(8)
OVERWRITE_FLAG = "#fairseq:overwrite"


@dataclass(frozen=True)
class FairseqDictionary:
    """The symbols of dict.txt in file order: symbol i has fairseq id 4 + i."""

    symbols: tuple[str, ...]
    path: Path

    @property
    def size(self) -> int:
        """fairseq's len(dictionary) before padding: the 4 specials and one id per line."""
        return len(FAIRSEQ_SPECIALS) + len(self.symbols)

    def fairseq_id(self, gpt2_id: int) -> int:
        """The fairseq id of a GPT-2 id (`<unk>` when dict.txt has no line for it)."""
        return self._ids.get(str(gpt2_id), UNK_ID)

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {symbol: len(FAIRSEQ_SPECIALS) + i for i, symbol in enumerate(self.symbols)}


def read_fairseq_dict(path: str | Path) -> FairseqDictionary:
    """Parse dict.txt ("TOKEN COUNT [#fairseq:overwrite]" per line), naming the file and line of any error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the fairseq dictionary: {exc}") from exc
    symbols: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        symbol, _, count = line.rstrip().rpartition(" ")
        if count == OVERWRITE_FLAG:  # fairseq's marker for a deliberate duplicate; we refuse duplicates anyway
            symbol, _, count = symbol.rpartition(" ")
        if not symbol or not count.lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected 'TOKEN COUNT', got {line!r}")
        if symbol in FAIRSEQ_SPECIALS or symbol in seen:
            first = f"line {seen[symbol]}" if symbol in seen else "the built-in specials"
            raise ValueError(f"{path}:{number}: symbol {symbol!r} is already in the dictionary ({first})")
        seen[symbol] = number
        symbols.append(symbol)
    if not symbols:
        raise ValueError(f"{path}: the fairseq dictionary is empty")
    return FairseqDictionary(tuple(symbols), path)


def padded_symbols(dictionary: FairseqDictionary, vocab_size: int) -> tuple[str, ...]:
    """The dictionary's symbols padded as fairseq pads them to the checkpoint's `vocab_size`, or a ValueError."""
    missing = vocab_size - dictionary.size
    if missing < 0 or missing >= PAD_MULTIPLE or (missing and vocab_size % PAD_MULTIPLE):
        raise ValueError(
            f"{dictionary.path}: {len(dictionary.symbols)} lines give a fairseq vocabulary of {dictionary.size} "
            f"(4 specials + lines), but the checkpoint's embedding has {vocab_size} rows; is this the dict.txt the "
            "model was trained with?"
        )
    return dictionary.symbols + tuple(f"madeupword{i:04d}" for i in range(missing))


def remap_tokenizer(gpt2: Tokenizer, dictionary: FairseqDictionary, vocab_size: int) -> Tokenizer:
    """A copy of the GPT-2-style (byte-level BPE) `gpt2` tokenizer whose ids are the fairseq ids of `dictionary`."""
    spec: dict[str, Any] = json.loads(gpt2.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"--fairseq-dict needs a GPT-2-style BPE tokenizer; this one is {model.get('type')!r}")
    symbols = padded_symbols(dictionary, vocab_size)
    gpt2_strings = {token_id: string for string, token_id in model["vocab"].items()}
    for added in spec.get("added_tokens") or []:
        gpt2_strings[added["id"]] = added["content"]
    vocab: dict[str, int] = {}
    added_tokens = [_added(token_id, string) for token_id, string in enumerate(FAIRSEQ_SPECIALS)]
    gpt2_added = {added["content"] for added in spec.get("added_tokens") or []}
    for fairseq_id, symbol in enumerate(symbols, len(FAIRSEQ_SPECIALS)):
        string = gpt2_strings.get(int(symbol)) if symbol.isdigit() else None
        if string is None:  # madeupword padding, or an id the tokenizer does not have: never produced
            string = symbol
        elif string in gpt2_added:  # e.g. GPT-2's <|endoftext|>: stays a special token, at its fairseq id
            added_tokens.append(_added(fairseq_id, string))
        if string in FAIRSEQ_SPECIALS or string in vocab:
            raise ValueError(f"{dictionary.path}: symbol {symbol!r} ({string!r}) appears twice in the vocabulary")
        vocab[string] = fairseq_id
    vocab.update({string: token_id for token_id, string in enumerate(FAIRSEQ_SPECIALS)})
    unlisted = [string for string in model["vocab"] if string not in vocab]  # no dict line: <unk> once encoded
    vocab.update({string: vocab_size + k for k, string in enumerate(unlisted)})
    spec["model"] = {**model, "vocab": vocab, "unk_token": UNK}
    spec["added_tokens"] = added_tokens
    spec["post_processor"] = None  # fairseq's LM adds no specials when encoding
    return Tokenizer.from_str(json.dumps(spec))


def _added(token_id: int, content: str) -> dict[str, Any]:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}  # fmt: skip


def unk_beyond_vocab(ids: list[int], vocab_size: int) -> list[int]:
    """Ids of tokens without a dict line (from `vocab_size` up) -> `<unk>`, as fairseq's dictionary maps them."""
    return [UNK_ID if token >= vocab_size else token for token in ids]


def fairseq_tokenizer_config(tokenizer: Tokenizer, vocab_size: int) -> dict[str, Any]:
    """tokenizer_config.json for a remapped tokenizer: `</s>` ends a document and, as in OPT (also trained with
    fairseq on documents separated by `</s>`), is prepended as bos; `<pad>` is fairseq's padding_idx 1.
    `fairseq_vocab_size` is set when some tokens need `unk_beyond_vocab`."""
    unlisted = max(tokenizer.get_vocab(with_added_tokens=True).values()) >= vocab_size
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
        **({"fairseq_vocab_size": vocab_size} if unlisted else {}),
    }
