"""The model directory's Hugging Face tokenizer, as the server uses it: prompts, chat template, decoding."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from tnn.server.textstream import IncrementalDetokenizer

logger = logging.getLogger(__name__)

# Used when tokenizer_config.json has no chat_template: plain "Role: text" turns, which any base LM can continue.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class ServerTokenizer:
    """Encoding, decoding and the chat template of one model directory."""

    def __init__(self, model_dir: str | Path, *, add_bos: bool = True) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "tokenizer.json").exists():
            raise FileNotFoundError(f"{model_dir}: no tokenizer.json; the server needs the model's tokenizer")
        # PreTrainedTokenizerFast directly: AutoTokenizer would read config.json and warn about model type "tnn"
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        self.hf = tokenizer
        self._backend = tokenizer.backend_tokenizer
        self.eos_id: int | None = tokenizer.eos_token_id
        self.bos_id: int | None = tokenizer.bos_token_id if add_bos else None
        self.vocab_size = self._backend.get_vocab_size()
        self.chat_template: str = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
        if tokenizer.chat_template is None:
            logger.warning(
                "%s has no chat_template; /v1/chat/completions uses a plain 'Role: text' template", model_dir
            )

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of a text prompt, with the bos token first when the server adds one."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of generated tokens (special tokens such as eos are not text)."""
        return self._backend.decode(list(tokens), skip_special_tokens=True)

    def detokenizer(self) -> IncrementalDetokenizer:
        """A fresh incremental detokenizer for one generated sequence."""
        return IncrementalDetokenizer(self._backend)

    def token_text(self, token: int) -> str:
        """One token as text for logprobs (special tokens by name; a partial character decodes to U+FFFD)."""
        return self._backend.decode([token], skip_special_tokens=False)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for a conversation, ending where the assistant's reply starts."""
        text = self.hf.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
        assert isinstance(text, str)
        return text
