"""The model directory's Hugging Face tokenizer, as the server uses it: prompts, chat template, decoding."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from transformers import PreTrainedTokenizerFast

from tnn.model.fairseq_dict import unk_beyond_vocab
from tnn.server.textstream import IncrementalDetokenizer

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Used when tokenizer_config.json has no chat_template: plain "Role: text" turns, which any base LM can continue.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

TEMPLATE_CHECK_SECONDS = 5.0  # the load-time sample render: a template that loops for ever is refused, named
TEMPLATE_CHECK_CHARS = 1_000_000  # ... and so is one whose three short turns render to more than this

# Rendered once at startup: a template that fails on it would fail every chat request.
SAMPLE_CONVERSATION = [
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi, how can I help?"},
    {"role": "user", "content": "Tell me a story."},
]


class ServerTokenizer:
    """Encoding, decoding and the chat template of one model directory."""

    def __init__(self, model_dir: str | Path, *, add_bos: bool = True) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "tokenizer.json").exists():
            raise FileNotFoundError(f"{model_dir}: no tokenizer.json; the server needs the model's tokenizer")
        # PreTrainedTokenizerFast directly: AutoTokenizer would read config.json and warn about model type "tnn"
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        except Exception as exc:  # tokenizers and transformers raise assorted types for unreadable files
            raise ValueError(f"{model_dir / 'tokenizer.json'}: the tokenizer files do not load: {exc}") from exc
        self.hf = tokenizer
        self._backend = tokenizer.backend_tokenizer
        self.eos_id: int | None = tokenizer.eos_token_id
        self.bos_id: int | None = tokenizer.bos_token_id if add_bos else None
        self.vocab_size = self._backend.get_vocab_size()
        # a fairseq dict.txt without a line for some tokens: their ids (from here up) are <unk> (tnn.model.fairseq_dict)
        self._fairseq_vocab_size: int | None = tokenizer.init_kwargs.get("fairseq_vocab_size")
        if self._fairseq_vocab_size is not None:
            self.vocab_size = self._fairseq_vocab_size
        self.chat_template: str = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
        if tokenizer.chat_template is None:
            logger.warning(
                "%s has no chat_template; /v1/chat/completions uses a plain 'Role: text' template", model_dir
            )
        try:
            sample = within_seconds(lambda: self.render_chat(SAMPLE_CONVERSATION), TEMPLATE_CHECK_SECONDS)
            if len(sample) > TEMPLATE_CHECK_CHARS:
                raise ValueError(f"the sample renders to {len(sample):,} characters (at most {TEMPLATE_CHECK_CHARS:,})")
        except Exception as exc:  # jinja2 syntax and runtime errors, raise_exception() in the template, the limits
            raise ValueError(
                f"{model_dir / 'tokenizer_config.json'}: the chat_template does not render a sample conversation "
                f"(user, assistant, user): {type(exc).__name__}: {exc}"
            ) from exc

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of a text prompt, with the bos token first when the server adds one."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if self._fairseq_vocab_size is not None:
            ids = unk_beyond_vocab(ids, self._fairseq_vocab_size)
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


class TokenizerSkipped(Exception):
    """Text was asked of a server started without its tokenizer (`--skip-tokenizer`); `param` names the request
    field that carried the text. The HTTP layer answers it with a 400 (tnn.server.errors)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class NoText:
    """The detokenizer of `TokenIdTokenizer`: no text, ever."""

    def add(self, token: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


class TokenIdTokenizer:
    """`tnn serve --skip-tokenizer` (vLLM's --skip-tokenizer-init): the model directory's tokenizer is not loaded.

    Prompts must be token ids; generated text is empty and the ids come out as logprobs tokens "token_id:N" (vLLM's
    --return-tokens-as-token-ids). Text prompts, chat messages and /tokenize get a 400 saying why. No eos token is
    known, so generation ends at max_tokens (or a stop token id).
    """

    eos_id: int | None = None
    bos_id: int | None = None
    vocab_size = 0  # no ids of its own: any id below the model's vocabulary size is accepted
    chat_template = ""

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        raise TokenizerSkipped("this server runs with --skip-tokenizer: send the prompt as a list of token ids",
                               param="prompt")  # fmt: skip

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        raise TokenizerSkipped("this server runs with --skip-tokenizer (no tokenizer, no chat template): use "
                               "/v1/completions with token-id prompts", param="messages")  # fmt: skip

    def decode(self, tokens: Sequence[int]) -> str:
        return ""

    def detokenizer(self) -> NoText:
        return NoText()

    def token_text(self, token: int) -> str:
        return f"token_id:{token}"


def within_seconds(fn: Callable[[], T], seconds: float) -> T:
    """fn() in this thread, stopped with TimeoutError once `seconds` have passed (checked at every Python line:
    a Jinja template is compiled Python, so an endless loop in one stops; only for load-time checks, slow)."""
    deadline = time.monotonic() + seconds

    def tracer(frame: FrameType, event: str, arg: object) -> Callable[..., object]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"did not finish within {seconds:g} s")
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        return fn()
    finally:
        sys.settrace(previous)
