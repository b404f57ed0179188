"""Runtime settings of `tnn serve`: environment variables with the prefix TNN_, overridden by command-line flags.

Only runtime knobs live here (device, limits, port); the architecture lives in the model directory's config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DType = Literal["float32", "bfloat16", "float16", "float64"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    """Every field is also an environment variable: `max_num_seqs` is TNN_MAX_NUM_SEQS, and so on."""

    model_config = SettingsConfigDict(env_prefix="TNN_", extra="ignore", validate_default=True)

    model_dir: Path | None = None  # None: the shipped default model
    served_model_name: str | None = None  # the `model` id clients send and /v1/models lists; default: dir name
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    device: str = "auto"  # auto: cuda if available, else cpu; or "cpu", "cuda", "cuda:1", ...
    dtype: DType = "float32"
    threads: int = Field(default=0, ge=0, le=1024)  # torch intra-op threads on CPU; 0: torch's default

    # Capacity: each running sequence holds one state slot (fixed bytes); the queue is bounded.
    max_num_seqs: int = Field(default=32, ge=1, le=4096)  # state slots
    max_waiting_requests: int = Field(default=128, ge=0, le=100_000)  # queued sequences beyond the slots
    max_prefill_tokens: int = Field(default=2048, ge=16, le=1_000_000)  # prompt tokens prefilled per iteration
    max_prompt_tokens: int = Field(default=4096, ge=1, le=10_000_000)
    max_tokens: int = Field(default=2048, ge=1, le=10_000_000)  # ceiling on generated tokens per choice
    default_max_tokens: int = Field(default=16, ge=1)  # completions without max_tokens (OpenAI's legacy default)
    max_n: int = Field(default=4, ge=1, le=128)
    max_logprobs: int = Field(default=20, ge=0, le=100)
    max_stop: int = Field(default=4, ge=0, le=64)
    max_stop_length: int = Field(default=64, ge=1, le=1024)
    add_bos: bool = True  # prepend the tokenizer's bos token to text prompts (how the shipped model was trained)
    embedding_pooling: Literal["mean", "last"] = "mean"  # /v1/embeddings: mean of the final hidden states, or last

    # HTTP
    request_timeout: float = Field(default=600.0, gt=0)  # seconds from arrival to the last token
    drain_timeout: float = Field(default=30.0, ge=0)  # seconds SIGTERM waits for running requests
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    api_key: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)  # env: comma list or JSON
    log_level: LogLevel = "INFO"
    warmup: bool = True

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value
