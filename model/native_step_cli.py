"""`tnn compile-step MODEL_DIR`: build a converted model's native decode step into the cache `tnn serve` reads, so
a server starts with it at once (e.g. at image build time): the native kernel's library where it covers the model
(seconds), else the model's AOTInductor package (minutes). Prints the path.

Exit codes: 0 written (or already there); 1 the model cannot be loaded or is not converted; 2 compilation failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from tnn.model.loading import load
from tnn.model.native_lib import default_cache_dir
from tnn.model.native_step import build_native_step, load_native_step, package_path

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float64", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a converted model directory (tnn convert)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype, as tnn serve --dtype")
    parser.add_argument("--max-batch", type=int, default=256, help="largest batch the compiled step takes")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads while compiling and checking")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    try:
        model = load(args.model_dir, dtype=getattr(torch, args.dtype))
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 1
    if not model.is_converted:
        logger.error("%s is not converted: run `tnn convert` first (the compiled step is of the recurrent form)",
                     args.model_dir)  # fmt: skip
        return 1
    package = package_path(model, args.cache_dir or default_cache_dir(), max_batch=args.max_batch)
    if not package.exists():
        start = time.perf_counter()
        try:
            build_native_step(model, package, max_batch=args.max_batch)
            load_native_step(model, package, max_batch=args.max_batch)
        except Exception as exc:  # export, the C++ toolchain or the check against the eager step
            package.unlink(missing_ok=True)
            logger.error("compiling the decode step of %s failed: %s: %s", args.model_dir, type(exc).__name__, exc)
            return 2
        logger.info("compiled the decode step in %.1fs", time.perf_counter() - start)
    sys.stdout.write(f"{package}\n")
    return 0
