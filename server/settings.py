"""Runtime settings of `tnn serve`: environment variables with the prefix TNN_, overridden by command-line flags.

Only runtime knobs live here (device, limits, port); the architecture lives in the model directory's config.json.
The `tnn serve` flags are generated from this class (pydantic-settings' CLI source, see tnn.server.cli): a field
`max_num_seqs` is the flag `--max-num-seqs` and the variable TNN_MAX_NUM_SEQS; its description is the flag's help.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, CliPositionalArg, CliSuppress, NoDecode, SettingsConfigDict

from tnn.server.capacity import parse_memory
from tnn.server.compiled_step import NativeStepMode

DType = Literal["float32", "bfloat16", "float16", "float64"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    """Every field is also an environment variable: `max_num_seqs` is TNN_MAX_NUM_SEQS, and so on."""

    model_config = SettingsConfigDict(
        env_prefix="TNN_",
        extra="ignore",
        validate_default=True,
        cli_kebab_case=True,  # --max-num-seqs
        cli_implicit_flags=True,  # bools: --warmup / --no-warmup
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_show_env_vars=True,  # help: "[env: TNN_PORT]"
    )

    model_dir: CliPositionalArg[Path | None] = Field(
        default=None, description="model directory; none: TNN_MODEL_DIR, else the shipped model"
    )
    served_model_name: str | None = Field(default=None, description="model id clients send; none: the directory name")
    host: str = Field(default="127.0.0.1", description="bind address (0.0.0.0 in containers)")
    port: int = Field(default=8000, ge=0, le=65535, description="port")
    device: str = Field(default="auto", description="auto (cuda if available), cpu, cuda, cuda:N")
    dtype: DType = Field(
        default="float32", description="weights dtype (the state is float32, float64 for float64 weights)"
    )
    threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="torch CPU threads; 0: one fewer than the CPUs this process may use (at least 1), leaving a "
        "core to the HTTP thread (the decode and prefill kernels run on one)",
    )

    # Capacity: each running sequence holds one state slot (fixed bytes), preallocated at start-up from a memory
    # budget: slots = min(max_num_seqs, state_memory // state bytes per sequence). The queue is bounded.
    state_memory: str = Field(
        default="1GiB",
        description="memory for the state slot pool: bytes (2GiB, 512MiB) or a fraction (0.25) of free memory "
        "(host RAM on CPU, device memory on CUDA)",
    )
    max_num_seqs: int = Field(default=256, ge=1, le=1_000_000, description="cap on state slots = concurrent sequences")
    switch_interval: float = Field(
        default=0.001,
        gt=0,
        le=1,
        description="seconds the interpreter lets the HTTP thread run before handing its lock to the engine thread "
        "waiting after a native call (sys.setswitchinterval; Python's default 0.005)",
    )
    decode_run_steps: int = Field(
        default=3,
        ge=1,
        le=64,
        description="decode steps the native kernel may take in one call, sampling between them, before the engine "
        "hands the tokens over (a streaming client then gets them in one chunk); only while nothing waits and every "
        "row samples plainly (tnn.server.decode_runs); 1: one step per call",
    )
    decode_run_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description="milliseconds a decode run may last at most (it starts no step that would end later); 0: no runs",
    )
    decode_run_min_rows: int = Field(
        default=8,
        ge=1,
        le=1_000_000,
        description="running sequences from which decode runs start (below, every token goes out on its own: the "
        "per-token work does not yet compete with the model for the CPUs)",
    )
    fused_step: bool = Field(
        default=False,
        description="torch.compile the SSM update of the decode step (compiles at warm-up: tens of seconds on CPU; "
        "falls back to eager)",
    )
    native_step: NativeStepMode = Field(
        default="auto",
        description="CPU: the decode step as native code (the native kernel, or AOTInductor where the kernel does not "
        "cover the model), kept in the cache folder; "
        "auto: load it, or build it in the background while the eager step serves; wait: build it before /ready; "
        "off: eager only",
    )
    native_step_max_batch: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="largest batch the compiled step runs, larger ones run eagerly; none: as far as its backend beats "
        "the eager step (the native kernel: every batch; AOTInductor: 48; docs/decode-speed.md)",
    )
    compile_cache_dir: Path | None = Field(
        default=None, description="where compiled decode steps are kept; none: $TNN_CACHE_DIR or ~/.cache/tnn-serve"
    )
    enforce_eager: bool = Field(
        default=False,
        description="run the decode step eagerly: no CUDA graphs captured at warm-up, no compiled step on a CPU",
    )
    cuda_graph_max_batch: int = Field(
        default=256, ge=1, le=4096, description="largest batch whose decode step is captured; larger ones run eagerly"
    )
    max_waiting_requests: int = Field(
        default=128, ge=0, le=100_000, description="queued sequences beyond the slots; then 429 + Retry-After"
    )
    max_prefill_tokens: int = Field(
        default=2048, ge=16, le=1_000_000, description="prompt tokens prefilled per engine iteration"
    )
    max_prompt_tokens: int = Field(default=4096, ge=1, le=10_000_000, description="longest prompt accepted, else 400")
    max_tokens: int = Field(
        default=2048, ge=1, le=10_000_000, description="ceiling on max_tokens per choice; chat's default"
    )
    default_max_tokens: int = Field(
        default=16, ge=1, description="max_tokens of completions that leave it out (OpenAI's legacy default)"
    )
    max_n: int = Field(default=4, ge=1, le=128, description="largest n (choices per prompt)")
    max_logprobs: int = Field(default=20, ge=0, le=100, description="largest logprobs / top_logprobs")
    max_stop: int = Field(default=4, ge=0, le=64, description="most stop strings per request")
    max_stop_length: int = Field(default=64, ge=1, le=1024, description="longest stop string (characters)")
    skip_tokenizer: bool = Field(
        default=False,
        description="serve without the model's tokenizer (vLLM's --skip-tokenizer-init): token-id prompts only; "
        "generated ids come back as logprobs tokens 'token_id:N', the text is empty",
    )
    add_bos: bool = Field(
        default=True,
        description="prepend the tokenizer's bos token to text prompts (how the shipped model was trained)",
    )
    generation_config: str = Field(
        default="auto",
        description="request defaults: auto (the model directory's generation_config.json), none, "
        "or a generation_config.json file or directory",
    )
    embedding_pooling: Literal["mean", "last"] = Field(
        default="mean", description="/v1/embeddings: mean of the final hidden states, or the last token's"
    )

    # Prefix-state cache (tnn.server.prefix_cache): states after exact token prefixes, so prompts that continue
    # a cached prefix (the next chat turn, a shared system prompt) prefill only their new tokens.
    state_cache_memory: str | None = Field(
        default=None,
        description="prefix-state cache budget: bytes (512MiB, 2GB) or a fraction (0.25) of free memory (host RAM, "
        "or device memory with --state-cache-on-device); 0: off; none: 5% of RAM, <= 2 GiB",
    )
    state_cache_on_device: bool = Field(
        default=False, description="keep cached prefix states on the model's device instead of host memory"
    )
    state_cache_interval: int = Field(
        default=512, ge=0, description="also cache a prompt's state every K tokens (0: only at prompt ends)"
    )
    state_cache_dir: Path | None = Field(
        default=None, description="disk tier for cached states: evicted and shutdown-time ones, reloaded on start"
    )
    state_cache_disk: str = Field(
        default="4GiB", description="bytes the disk tier may use (4GiB), or a fraction (0.25) of the free disk space"
    )
    response_store: str = Field(
        default="256MiB",
        description="bytes of stored /v1/responses records (in state_cache_dir when set, else in memory), or a "
        "fraction (0.05) of free memory",
    )

    # HTTP
    request_timeout: float = Field(default=600.0, gt=0, description="seconds from arrival to the last token")
    drain_timeout: float = Field(default=30.0, ge=0, description="seconds SIGTERM waits for running requests")
    max_body_bytes: int = Field(default=2_000_000, ge=1024, description="larger request bodies get 413")
    api_key: SecretStr | None = Field(
        default=None, description="require 'Authorization: Bearer KEY' (prefer TNN_API_KEY: flags show in ps)"
    )
    auth: bool | None = Field(
        default=None,
        description="--no-auth: serve without an API key on purpose (an empty api_key refuses to start without "
        "it); --auth: refuse to start without a key; default: on exactly when api_key is set",
    )

    # Slow clients: every connection is bounded in time and their number is capped (tnn.server.connections)
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds a connection may take to send a request's headers; then 408, closed"
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="seconds from a request's headers to the end of its body; then 408, closed"
    )
    keep_alive_timeout: float = Field(
        default=5.0, gt=0, description="seconds an idle keep-alive connection stays open between requests"
    )
    max_connections: int = Field(
        default=1024, ge=1, le=1_000_000, description="open connections beyond this are answered 503 and closed"
    )
    admin_key: SecretStr | None = Field(
        default=None, description="key for /admin/* routes; none: the API key (prefer TNN_ADMIN_KEY: flags show in ps)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins: comma-separated (or a JSON list)"
    )
    cors_allow_headers: Annotated[list[str], NoDecode] = Field(
        default=["*"],
        description="request headers CORS preflights may ask for: comma-separated; * (default): any",
    )
    log_level: CliSuppress[LogLevel] = "INFO"  # the flag is `tnn --log-level`, before the subcommand
    warmup: bool = Field(default=True, description="warm up before /ready")
    playground: bool = Field(default=True, description="serve the browser playground at / and /playground")

    @model_validator(mode="after")
    def _auth_is_explicit(self) -> Settings:
        """An empty key is a mistake (a variable set from a missing secret), not a wish to serve openly."""
        key = None if self.api_key is None else self.api_key.get_secret_value().strip()
        if key == "" and self.auth is not False:
            raise ValueError(
                "api_key is empty (--api-key '' or TNN_API_KEY=''): set a key, or pass --no-auth (TNN_AUTH=false) "
                "to serve without authentication on purpose"
            )
        if key and self.auth is False:
            raise ValueError("--no-auth contradicts the api_key that is set (--api-key or TNN_API_KEY): give one")
        if not key and self.auth:
            raise ValueError("--auth (TNN_AUTH=true) needs an api_key (--api-key or TNN_API_KEY)")
        if key == "":
            self.api_key = None
        return self

    @field_validator("state_memory", "state_cache_memory", "state_cache_disk", "response_store")
    @classmethod
    def _parseable_size(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:  # ValueError names the flag and the accepted forms
            parse_memory(value, flag="--" + str(info.field_name).replace("_", "-"),
                          allow_zero=info.field_name == "state_cache_memory")  # fmt: skip
        return value

    @field_validator("api_key", "admin_key")
    @classmethod
    def _strip_key(cls, value: SecretStr | None) -> SecretStr | None:
        """A key read from a secret file often ends in a newline: the whitespace around it is never part of it."""
        return None if value is None else SecretStr(value.get_secret_value().strip())

    @field_validator("admin_key")
    @classmethod
    def _empty_admin_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("cors_origins", "cors_allow_headers", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value
