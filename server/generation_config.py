"""Generation defaults from the model directory's Hugging Face `generation_config.json`, as vLLM's
`--generation-config auto`: what a request gets for a field it leaves out (or sends as null).

Read: max_new_tokens (the default max_tokens), temperature, top_p, top_k, min_p, repetition_penalty (vLLM's set),
stop_strings (default `stop`) and eos_token_id (extra end-of-sequence ids: generation ends on any of them unless
the request sets ignore_eos). Other keys (bos/pad ids, do_sample, transformers_version, ...) are ignored, as vLLM
ignores them; `do_sample: false` in particular does not make requests greedy. `--generation-config none` ignores
the file; a path reads that file (or that directory's generation_config.json) instead of the model's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FILENAME = "generation_config.json"


@dataclass(frozen=True)
class GenerationDefaults:
    """Request defaults; None means "the server's own default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] | None = None
    eos_token_ids: tuple[int, ...] = ()
    source: str | None = None  # the file they came from

    def shown(self) -> dict[str, Any]:
        """The defaults as /v1/models shows them (only those set)."""
        fields = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "stop")
        shown: dict[str, Any] = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        if "stop" in shown:
            shown["stop"] = list(shown["stop"])
        if self.eos_token_ids:
            shown["eos_token_ids"] = list(self.eos_token_ids)
        return shown


# key in generation_config.json -> (GenerationDefaults field, JSON type, lowest value, highest value)
_NUMBERS: dict[str, tuple[str, type, float, float]] = {
    "max_new_tokens": ("max_tokens", int, 1, float("inf")),
    "temperature": ("temperature", float, 0.0, 2.0),
    "top_p": ("top_p", float, 0.0, 1.0),
    "top_k": ("top_k", int, 0, float("inf")),
    "min_p": ("min_p", float, 0.0, 1.0),
    "repetition_penalty": ("repetition_penalty", float, 0.0, 2.0),
}


def load_generation_defaults(model_dir: Path, setting: str = "auto") -> GenerationDefaults:
    """The defaults for `setting`: "auto" (the model directory's file, if any), "none", or a file or directory.

    Raises ValueError naming the file and key for a value of the wrong type or out of range."""
    if setting == "none":
        return GenerationDefaults()
    path = model_dir / FILENAME if setting == "auto" else Path(setting)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        if setting != "auto":
            raise ValueError(f"--generation-config {setting}: no such file ({path})")
        return GenerationDefaults()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    values: dict[str, Any] = {"source": str(path)}
    for key, (name, kind, low, high) in _NUMBERS.items():
        value = raw.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and not isinstance(value, int))
        ):
            raise ValueError(f"{path}: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{path}: {key} must be in [{low}, {high}], got {value!r}")
        values[name] = kind(value)
    if raw.get("top_k") == 0:
        values.pop("top_k")  # HF: 0 means off
    stop = raw.get("stop_strings")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"{path}: stop_strings must be a string or a list of non-empty strings, got {stop!r}")
        values["stop"] = tuple(stops)
    eos = raw.get("eos_token_id")
    if eos is not None:
        ids = [eos] if isinstance(eos, int) and not isinstance(eos, bool) else eos
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, got {eos!r}")
        values["eos_token_ids"] = tuple(ids)
    defaults = GenerationDefaults(**values)
    logger.info("generation defaults from %s: %s", path, defaults.shown())
    return defaults
