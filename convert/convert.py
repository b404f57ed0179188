"""`convert_checkpoint`: a trained TNN (model directory or fairseq .pt) -> a servable, converted model directory.

Steps: load in float64; refuse models without a causal recurrent form; convert every layer (tnn.model.conversion:
the reduced-order fit by default, or an exact ETSC method; the fit runs once); verify the kernels (lags 0..n-1 and
past n); run held-out text (--eval-text, else the source directory's held_out.txt, else random ids, said so) once
through the parallel forward and once through the recurrent model (prefill, steps, continued prefill): that pass
verifies the recurrent logits against the parallel ones, measures the fidelity and the converted method's logits
past n; compare every method's kernel past n (and, with compare_methods, every method's logits on random ids);
then write config.json, model.safetensors, ssm.safetensors, tokenizer files and conversion.json into a temporary
directory beside DST and rename it into place. Nothing is written if a check fails.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, get_args

import torch
from torch import Tensor
from tqdm import tqdm

from tnn.convert.fidelity import DEFAULT_EVAL_TOKENS, TextFidelity, fidelity_from_logits, text_tokens
from tnn.convert.tokenizer import NO_TOKENIZER_WARNING, REPORT_FILE, install_tokenizer, require_tokenizer_dir
from tnn.convert.verify import (
    KernelCheck,
    LogitsCheck,
    PastNKernel,
    PastNRow,
    check_kernel,
    check_logits,
    exact_kernels_past_n,
    kernel_reference,
    past_n_comparison,
    past_n_kernels,
    past_n_row,
    probe_tokens,
    teacher_forced_passes,
)
from tnn.model.config import SsmMethod
from tnn.model.conversion import (
    DEFAULT_METHOD,
    ReducedOptions,
    conversion_length,
    conversion_refusal,
    convert_layers,
)
from tnn.model.loading import HELD_OUT_FILE, copy_companions, copy_tokenizer, load, save_model
from tnn.model.ssm import state_rows
from tnn.model.tnn import TnnLM
from tnn.model.tokenizer import check_tokenizer_dir

logger = logging.getLogger(__name__)

# float64 conversion reconstructs the kernel to ~1e-13 relative; 1e-9 leaves room for long n and large D
KERNEL_TOLERANCE = 1e-9
LOGITS_TOLERANCE_FLOAT64 = 1e-8
# float32 state with a float64 conversion: ~1e-5 relative on the LM (spec §6.7); 1e-3 flags a broken conversion
LOGITS_TOLERANCE_FLOAT32 = 1e-3
# the reduced method approximates the kernel to its tolerance (max error / max |a_k| per channel): the kernel
# check allows that plus round-off; its logits follow the kernel error, so a broken fit is one far above it
REDUCED_KERNEL_SLACK = 1.01
REDUCED_LOGITS_TOLERANCE = 5e-2
STEPPED_TOKENS = 32  # the logits probe prefills n - 32 tokens and steps the last 32 (covers lags up to n-1)


class ConversionRefused(ValueError):
    """The model has no exact recurrent form (bidirectional, normalized Toeplitz operator)."""


class VerificationFailed(RuntimeError):
    """A conversion check exceeded its threshold; nothing was written."""


@dataclass
class ConversionReport:
    """What convert did and measured; written as conversion.json."""

    source: str
    source_format: str  # "fairseq" or "native"
    destination: str
    method: str
    length: int
    modes: int | tuple[int, ...]  # state slots per channel (per layer for the reduced method)
    full_state: bool
    weights_dtype: str
    state_bytes_per_sequence: int  # float32 state, what a float32/bf16 server holds per sequence
    kernel_checks: list[KernelCheck]
    logits_check: LogitsCheck
    past_n: list[PastNRow]
    fidelity: TextFidelity
    tokenizer: str | None
    reduced: dict[str, Any] | None = None  # reduced method: options, fallbacks, per-layer kernel errors
    past_n_kernels: list[PastNKernel] = field(default_factory=list)  # every method's kernel at and past n
    fairseq_dict: str | None = None
    warnings: list[str] = field(default_factory=list)
    tokenizer_details: dict[str, Any] = field(default_factory=dict)  # dict.txt lines and sha256
    carried: list[str] = field(default_factory=list)  # companion files copied from the source directory
    timings_s: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_format": self.source_format,
            "destination": self.destination,
            "method": self.method,
            "length": self.length,
            "modes": list(self.modes) if isinstance(self.modes, tuple) else self.modes,
            "full_state": self.full_state,
            "weights_dtype": self.weights_dtype,
            "state_bytes_per_sequence": self.state_bytes_per_sequence,
            "reduced": self.reduced,
            "thresholds": _thresholds(self.method, self.reduced),
            "kernel_checks": [k.to_dict() for k in self.kernel_checks],
            "logits_check": self.logits_check.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "past_n": {
                "rows": [r.to_dict() for r in self.past_n],  # teacher-forced recurrent logits vs forward, batch 1
                "kernels": [k.to_dict() for k in self.past_n_kernels],
            },
            "tokenizer": self.tokenizer,
            "fairseq_dict": self.fairseq_dict,
            **self.tokenizer_details,
            "carried": self.carried,
            "warnings": self.warnings,
            "timings_s": self.timings_s,
            "versions": self.versions,
            "created": self.created,
        }


def versions() -> dict[str, str]:
    try:
        ours = version("tnn-serve")
    except PackageNotFoundError:  # running from a source tree without installing
        ours = "unknown"
    return {"tnn-serve": ours, "torch": torch.__version__, "python": platform.python_version()}


def convert_checkpoint(
    *,
    src: str | Path,
    dst: str | Path,
    method: SsmMethod = DEFAULT_METHOD,
    length: int | None = None,
    full_state: bool = False,
    tokenizer: str | Path | None = None,
    fairseq_dict: str | Path | None = None,
    force: bool = False,
    dtype: torch.dtype = torch.float32,
    compare_past_n: bool = True,
    compare_methods: bool = False,
    progress: bool = True,
    reduced: ReducedOptions | None = None,
    eval_text: str | Path | None = None,
) -> ConversionReport:
    """Convert `src` into the model directory `dst` and return the report (also written as conversion.json).

    length: conversion length n (default: the config's train_length, else 512). dtype: the stored weights
    (ssm.safetensors is always float64). reduced: the fit's options for method "reduced". tokenizer: a Hugging
    Face tokenizer directory to attach; with fairseq_dict (the dict.txt of a fairseq checkpoint) it is a GPT-2 BPE
    whose ids are remapped to fairseq's. eval_text: a UTF-8 text file to measure fidelity on (default: SRC's
    held_out.txt; random ids when neither exists). compare_past_n: every method's kernel past n, and the
    converted method's logits past n on the evaluation text; compare_methods: also every method's logits on
    random ids to 2n and 4n (a conversion and a pass per method: slow). Raises FileExistsError (dst exists, no
    force), ConversionRefused, VerificationFailed, and ValueError/FileNotFoundError naming the file for
    unreadable input.
    """
    src, dst = Path(src), Path(dst)
    if method not in get_args(SsmMethod):
        raise ValueError(f"unknown method {method!r}; expected one of {get_args(SsmMethod)}")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} already exists; pass --force to overwrite it")
    if eval_text is not None and not Path(eval_text).is_file():
        raise FileNotFoundError(f"--eval-text {eval_text}: no such file")
    if tokenizer is not None:
        require_tokenizer_dir(tokenizer)
    elif fairseq_dict is not None:
        raise ValueError("--fairseq-dict needs --tokenizer: the GPT-2 BPE tokenizer the dict.txt ids refer to")
    timings: dict[str, float] = {}
    stages = tqdm(total=7, desc="tnn convert", unit="stage", disable=not progress, leave=False)

    stages.set_postfix_str("load")
    start = time.perf_counter()
    model = load(src, dtype=torch.float64)  # conversion and checks in float64; weights are cast on save
    timings["load"] = time.perf_counter() - start
    tokenizer_source = Path(tokenizer) if tokenizer is not None else src if (src / "tokenizer.json").exists() else None
    if tokenizer_source is not None and fairseq_dict is None:  # early: a tokenizer that cannot serve this model
        # stops the conversion (with a dict.txt the GPT-2 ids are remapped to fit, later)
        check_tokenizer_dir(tokenizer_source, vocab_size=model.config.vocab_size)
    stages.update()
    refusal = conversion_refusal(model)
    if refusal is not None:
        raise ConversionRefused(f"{src}: cannot convert: {refusal}")
    n = conversion_length(model, length)

    stages.set_postfix_str("convert")
    start = time.perf_counter()
    options = reduced or ReducedOptions()
    fits = convert_layers(model, length=n, method=method, full_state=full_state, reduced=options)
    timings["convert"] = time.perf_counter() - start
    stages.update()
    stages.set_postfix_str("kernel check")
    logger.info("converted %d layers with %s, n=%d (%.2fs)", len(model.layers), method, n, timings["convert"])

    start = time.perf_counter()
    layers = tqdm(
        enumerate(model.layers),
        total=len(model.layers),
        desc="kernel check",
        unit="layer",
        disable=not progress or len(model.layers) < 2,
    )
    fallbacks = [int(f.fallback.sum()) for f in fits] or [0] * len(model.layers)
    others = tuple(m for m in get_args(SsmMethod) if m not in (method, "reduced")) if compare_past_n else ()
    kernel_checks: list[KernelCheck] = []
    exact_kernels: list[dict[str, tuple[int, float, float]]] = []  # per layer, the other exact methods past n
    past_n_seconds = 0.0
    for i, layer in layers:
        expected = kernel_reference(layer.gtu.tno, n)  # (4n, D): one RPE evaluation for both
        kernel_checks.append(check_kernel(i, layer.gtu.tno, n, fallback_channels=fallbacks[i], expected=expected))
        past_n_start = time.perf_counter()
        if others:
            exact_kernels.append(
                exact_kernels_past_n(layer.gtu.tno, n, methods=others, full_state=full_state, expected=expected)
            )
        past_n_seconds += time.perf_counter() - past_n_start
    timings["verify_kernels"] = time.perf_counter() - start - past_n_seconds
    stages.update()

    stages.set_postfix_str("logits check")
    start = time.perf_counter()
    text_source = Path(eval_text) if eval_text is not None else src / HELD_OUT_FILE if src.is_dir() else None
    tokens, n_bytes, eval_source = _eval_tokens(model, tokenizer_source if fairseq_dict is None else None, text_source)
    split = max(1, n - STEPPED_TOKENS)
    steps = n - split  # the check's steps end at position n - 1: every lag the exact methods are exact for
    passes = teacher_forced_passes(model, tokens, split=split, steps=steps)
    if tokens.shape[1] < n:  # too short to step up to lag n - 1: the check gets a probe of n random ids
        probe = probe_tokens(model.config.vocab_size, n)
        logits_check = check_logits(model, teacher_forced_passes(model, probe, split=split, steps=steps))
    else:
        logits_check = check_logits(model, passes)
    timings["verify_logits"] = time.perf_counter() - start
    stages.update()
    reduced_summary = _reduced_summary(options, fits) if method == "reduced" else None
    _require_passed(kernel_checks, logits_check, _thresholds(method, reduced_summary))

    stages.set_postfix_str("fidelity")
    start = time.perf_counter()
    fidelity = fidelity_from_logits(passes.parallel, passes.recurrent, tokens, n_bytes, source=eval_source)
    timings["fidelity"] = time.perf_counter() - start
    stages.update()

    past_n: list[PastNRow] = []
    kernels_past_n: list[PastNKernel] = []
    stages.set_postfix_str("past-n comparison")
    if compare_past_n:
        start = time.perf_counter()
        if tokens.shape[1] > n + 1:  # the evaluation pass reaches past n: the converted method's row is free
            past_n.append(past_n_row(method, passes.recurrent, passes.parallel, tokens, n, probe=eval_source))
        kernels_past_n = past_n_kernels(method, kernel_checks, exact_kernels)
        if compare_methods:
            past_n += past_n_comparison(model, methods=get_args(SsmMethod), length=n, full_state=full_state,
                                        reduced=options, converted=model)  # fmt: skip
        timings["past_n"] = time.perf_counter() - start + past_n_seconds
    stages.update()
    stages.set_postfix_str("write")

    report = ConversionReport(
        source=str(src),
        source_format="native" if src.is_dir() else "fairseq",
        destination=str(dst),
        method=method,
        length=n,
        modes=model.config.ssm.modes if model.config.ssm else 0,
        full_state=full_state,
        weights_dtype=str(dtype).removeprefix("torch."),
        state_bytes_per_sequence=served_state_bytes(model),
        kernel_checks=kernel_checks,
        logits_check=logits_check,
        past_n=past_n,
        fidelity=fidelity,
        past_n_kernels=kernels_past_n,
        tokenizer=str(tokenizer) if tokenizer is not None else None,
        reduced=reduced_summary,
        timings_s=timings,
        versions=versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    fill = partial(_fill_directory, model=model, src=src, tokenizer=tokenizer, fairseq_dict=fairseq_dict,
                   dtype=dtype, report=report)  # fmt: skip
    _write_atomically(dst, force=force, fill=fill)
    stages.update()
    stages.close()
    for warning in report.warnings:
        logger.warning("%s\n%s\n%s", "!" * 100, warning, "!" * 100)
    logger.info("wrote %s", dst)
    return report


def _eval_tokens(model: TnnLM, tokenizer_dir: Path | None, text: Path | None) -> tuple[Tensor, int, str]:
    """The evaluation probe (1, L): `text` encoded with `tokenizer_dir`, else seeded random ids, saying why; the
    UTF-8 bytes the text's predicted tokens cover (0 for random ids) and where the tokens came from."""
    if text is not None and text.is_file() and tokenizer_dir is not None:
        tokens, n_bytes = text_tokens(tokenizer_dir, text.read_text(encoding="utf-8"))
        return tokens, n_bytes, str(text)
    why = "no tokenizer to encode text" if text is not None and text.is_file() else "no --eval-text and no held_out.txt"
    logger.warning("fidelity measured on random token ids (%s): it says little about real text", why)
    tokens = probe_tokens(model.config.vocab_size, DEFAULT_EVAL_TOKENS + 1, seed=1)
    return tokens, 0, f"random token ids, seed 1 ({why})"


def _reduced_summary(options: ReducedOptions, fits: list[Any]) -> dict[str, Any]:
    """What the reduced fit chose and achieved, per layer (conversion.json "reduced")."""
    return {
        "tolerance": options.tolerance,
        "max_order": options.max_order,
        "fir_length": options.fir_length,
        "fit_multiple": options.fit_multiple,
        "exact_fallback": options.exact_fallback,
        "layers": [
            {
                "modes": f.n_modes,
                "missed_channels": int(f.missed.sum()),
                "fallback_channels": int(f.fallback.sum()),
                "mean_order": float(f.orders[~f.fallback].double().mean()) if bool((~f.fallback).any()) else 0.0,
                "kernel_error_inside_n_max": float(f.error_inside.max()),
                "kernel_error_inside_n_median": float(f.error_inside.median()),
                "kernel_error_past_n_max": float(f.error_past.max()),
                "kernel_error_past_n_median": float(f.error_past.median()),
                "max_pole_radius": float(f.params.poles.abs().max()),
            }
            for f in fits
        ],
    }


def _thresholds(method: str, reduced: dict[str, Any] | None) -> dict[str, float]:
    """The verification thresholds of `method` (exact ETSC: round-off; reduced: its fit tolerance)."""
    if method != "reduced" or reduced is None:
        return {
            "kernel_rel_error": KERNEL_TOLERANCE,
            "logits_rel_error_float64": LOGITS_TOLERANCE_FLOAT64,
            "logits_rel_error_float32": LOGITS_TOLERANCE_FLOAT32,
        }
    # a channel that misses the tolerance keeps its best fit: the check then holds the recurrence to what the
    # fit reported (a broken save, step or prefill shows up far above it)
    fitted = max((layer["kernel_error_inside_n_max"] for layer in reduced["layers"]), default=0.0)
    return {
        "kernel_rel_error": REDUCED_KERNEL_SLACK * max(reduced["tolerance"], fitted) + KERNEL_TOLERANCE,
        "logits_rel_error_float64": REDUCED_LOGITS_TOLERANCE,
        "logits_rel_error_float32": REDUCED_LOGITS_TOLERANCE,
    }


def _require_passed(kernel_checks: list[KernelCheck], logits_check: LogitsCheck, limits: dict[str, float]) -> None:
    kernel_limit = limits["kernel_rel_error"]
    failures = [
        f"layer {k.layer} kernel error {max(k.rel_error, k.rel_error_modes):.3e} > {kernel_limit:.0e}"
        for k in kernel_checks
        if not max(k.rel_error, k.rel_error_modes) <= kernel_limit  # NaN fails too
    ]
    for name, got in (("float64", logits_check.float64_rel_error), ("float32", logits_check.float32_rel_error)):
        limit = limits[f"logits_rel_error_{name}"]
        if not got <= limit:
            failures.append(f"{name} logits error {got:.3e} > {limit:.0e}")
    if failures:
        raise VerificationFailed("conversion failed verification, nothing written: " + "; ".join(failures))


def served_state_bytes(model: TnnLM) -> int:
    """Per-sequence state when served in float32/bf16: per layer (2N + h) x d_inner float32 numbers."""
    rows = sum(state_rows(layer.gtu.tno.ssm) for layer in model.layers if layer.gtu.tno.ssm is not None)
    return int(rows * model.config.d_inner * 4)


def _fill_directory(
    directory: Path,
    *,
    model: TnnLM,
    src: Path,
    tokenizer: str | Path | None,
    fairseq_dict: str | Path | None,
    dtype: torch.dtype,
    report: ConversionReport,
) -> None:
    start = time.perf_counter()
    save_model(model.to(dtype), directory)  # ssm.safetensors stays float64 whatever the weights' dtype
    if tokenizer is not None:
        record = install_tokenizer(directory, tokenizer, vocab_size=model.config.vocab_size, fairseq_dict=fairseq_dict)
        report.tokenizer, report.fairseq_dict = record.pop("tokenizer"), record.pop("fairseq_dict")
        report.tokenizer_details = record
    elif src.is_dir() and copy_tokenizer(src, directory):
        report.tokenizer = str(src)
    else:
        report.warnings.append(NO_TOKENIZER_WARNING.format(dst=report.destination))
    if src.is_dir():
        report.carried = copy_companions(src, directory)
    report.timings_s["write"] = time.perf_counter() - start
    (directory / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def _make_readable(directory: Path) -> None:
    """mkdtemp makes a 0700 directory; a model directory is read by other users (the server's container user)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _write_atomically(dst: Path, *, force: bool, fill: Callable[[Path], None]) -> None:
    """Fill a temporary directory beside `dst`, then rename it into place (replacing `dst` only with force)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        fill(tmp)
        _make_readable(tmp)
        if dst.exists():
            if not force:  # appeared while we were converting
                raise FileExistsError(f"{dst} already exists; pass --force to overwrite it")
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            dst.rename(old / dst.name)
            tmp.rename(dst)
            shutil.rmtree(old)
        else:
            tmp.rename(dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
