"""Tokenizer files of a model directory: copied from a Hugging Face tokenizer directory, or, with a fairseq
dict.txt, rebuilt so that its ids are the checkpoint's fairseq ids (tnn.model.fairseq_dict).

`attach_tokenizer` adds them to an already converted directory without converting or verifying again
(`tnn attach-tokenizer`); `install_tokenizer` is the step `tnn convert` runs while it writes the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from tnn.model.fairseq_dict import fairseq_tokenizer_config, read_fairseq_dict, remap_tokenizer
from tnn.model.loading import TOKENIZER_FILES, copy_tokenizer

REPORT_FILE = "conversion.json"
NO_TOKENIZER_WARNING = (
    "{dst} has no tokenizer: `tnn serve` will refuse it unless given --skip-tokenizer (token ids in and out). "
    "Attach one with `tnn attach-tokenizer {dst} TOKENIZER_DIR` (for a fairseq checkpoint trained with GPT-2 BPE: "
    "TOKENIZER_DIR = a GPT-2 tokenizer and --fairseq-dict = the dict.txt it was trained with)"
)


def require_tokenizer_dir(tokenizer_dir: str | Path) -> Path:
    path = Path(tokenizer_dir)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (expected a Hugging Face tokenizer directory)")
    return path


def install_tokenizer(
    directory: Path, tokenizer_dir: str | Path, *, vocab_size: int, fairseq_dict: str | Path | None = None
) -> dict[str, Any]:
    """Write the tokenizer files into `directory`; return what conversion.json records about them.

    Raises ValueError when the tokenizer has ids the model (`vocab_size` rows) does not.
    """
    source = require_tokenizer_dir(tokenizer_dir)
    record: dict[str, Any] = {"tokenizer": str(source), "fairseq_dict": None}
    if fairseq_dict is None:
        tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        check_ids_fit(tokenizer, vocab_size, source)
        copy_tokenizer(source, directory)
        return record
    dictionary = read_fairseq_dict(fairseq_dict)
    remapped = remap_tokenizer(Tokenizer.from_file(str(source / "tokenizer.json")), dictionary, vocab_size)
    remapped.save(str(directory / "tokenizer.json"))
    config = fairseq_tokenizer_config(remapped, vocab_size)
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    record.update(
        fairseq_dict=str(dictionary.path),
        fairseq_dict_lines=len(dictionary.symbols),
        fairseq_dict_sha256=hashlib.sha256(dictionary.path.read_bytes()).hexdigest(),
    )
    return record


def check_ids_fit(tokenizer: Tokenizer, vocab_size: int, source: Path) -> None:
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values())
    if largest >= vocab_size:
        raise ValueError(
            f"{source}: the tokenizer has ids up to {largest} but the model's vocabulary has {vocab_size} entries"
            " (a fairseq checkpoint needs --fairseq-dict with its dict.txt)"
        )


def attach_tokenizer(
    model_dir: str | Path, tokenizer_dir: str | Path, *, fairseq_dict: str | Path | None = None
) -> dict[str, Any]:
    """Add (or replace) the tokenizer of a model directory; conversion.json, if there is one, records it.

    The files are written beside the directory's and renamed into place one by one; the model is not touched.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
    vocab_size = int(json.loads(config_path.read_text())["vocab_size"])
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer.tmp-", dir=model_dir))
    try:
        record = install_tokenizer(staging, tokenizer_dir, vocab_size=vocab_size, fairseq_dict=fairseq_dict)
        for name in TOKENIZER_FILES:  # files of a previous tokenizer that the new one does not have
            if not (staging / name).exists():
                (model_dir / name).unlink(missing_ok=True)
        for path in staging.iterdir():
            path.chmod(0o644)
            os.replace(path, model_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report_path = model_dir / REPORT_FILE
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        report.update(record)
        report["warnings"] = [w for w in report.get("warnings", []) if "no tokenizer" not in w]
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    return record
