"""The default model shipped inside the package: a TNN trained on Shakespeare by `tnn train` (see README)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "default_model"


def default_model_dir() -> Path:
    """The model directory of the shipped default model (config.json, model.safetensors, tokenizer, training.json)."""
    path = Path(str(resources.files("tnn.model") / DEFAULT_MODEL))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: the default model is missing from this installation")
    return path
