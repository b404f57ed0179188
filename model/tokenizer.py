"""Byte-level BPE for the Shakespeare corpus, saved in the Hugging Face layout (tokenizer.json + tokenizer_config.json).

Byte-level means every UTF-8 string round-trips exactly and nothing is ever unknown. The default vocabulary is
4096: the corpus is ~4.8 MB (~1.3M tokens at this size), so a larger vocabulary leaves many rare merges seen only a
handful of times, and on a CPU the output projection (d_model x V per token) would cost more than a layer.
Special tokens: id 0 `<|endoftext|>` (bos and eos: every scored text starts with it) and id 1 `<pad>`
(TnnConfig.padding_idx = 1). A chat template renders turns like a play: "User:\\n...\\n\\nAssistant:\\n", each turn one speech.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DEFAULT_VOCAB_SIZE = 4096
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)  # ids 0 and 1, in this order
MODEL_MAX_LENGTH = 1_000_000  # a TNN has no positional limit; transformers warns above this

# Speakers' names in a play are followed by a colon and a newline; so are the chat roles. A speech ends with a
# blank line, and so does every turn: blank lines inside a message are dropped so that a turn is one speech, and
# the shipped generation_config.json stops a reply at its first blank line (the end of the speech).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}:\n"
    "{{ message['content'].strip().split('\n') | map('trim') | reject('equalto', '') | join('\n') }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE on `texts` (the training split only)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path, *, chat_template: str | None = CHAT_TEMPLATE) -> None:
    """Write tokenizer.json and tokenizer_config.json (PreTrainedTokenizerFast, special tokens, chat template;
    `chat_template=None` leaves it out, and servers fall back to their own)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The raw `tokenizers.Tokenizer` of a saved directory (what training and eval use: no transformers import)."""
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer.json in {directory}")
    return Tokenizer.from_file(str(path))


def check_tokenizer_dir(directory: str | Path, *, vocab_size: int) -> Tokenizer:
    """The directory's tokenizer, after checking that its files parse and that every token id fits the model's
    embedding (`vocab_size`, config.json); a ValueError names the file otherwise."""
    directory = Path(directory)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.exists():
        raise FileNotFoundError(f"{directory}: no tokenizer.json (expected a Hugging Face tokenizer directory)")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises its own Exception type for unparsable files
        raise ValueError(f"{tokenizer_file}: not a readable tokenizer: {exc}") from exc
    config_file = directory / "tokenizer_config.json"
    config: dict = {}
    if config_file.exists():
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{config_file}: not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise ValueError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1  # ids 0..size-1
    size = min(size, config.get("fairseq_vocab_size") or size)  # a remapped fairseq tokenizer maps the rest to <unk>
    if size > vocab_size:
        raise ValueError(
            f"{tokenizer_file}: the tokenizer has {size} tokens but the model's embedding only {vocab_size} "
            "(config.json vocab_size): ids past the embedding would fail at request time"
        )
    return tokenizer


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def eos_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id(EOS_TOKEN)
    if token_id is None:
        raise ValueError(f"tokenizer has no {EOS_TOKEN!r} token")
    return token_id
