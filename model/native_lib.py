"""Small C kernels (model/csrc/*.c) compiled once per machine with the system C compiler and loaded with ctypes.

A kernel here is plain C on raw pointers: no torch headers, so it builds in well under a second (a torch C++
extension takes a minute) and the loaded library is called straight from Python. The shared library is kept in
the cache directory (`cache_root()/native-lib`), named by a hash of the source, the compiler's version, the flags
and the machine, written atomically (concurrent first builds do not clash). Where there is no compiler or the
build fails, `load_kernels` returns None and says why once; every kernel has a torch twin that then serves.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parent / "csrc"
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c11")  # no -ffast-math: the kernels rely on IEEE floats
BUILD_TIMEOUT_S = 120.0
OFF_ENV = "TNN_NATIVE_KERNELS"  # "off": never build or load (the torch twins serve)


def cache_root() -> Path:
    """$TNN_CACHE_DIR, else $XDG_CACHE_HOME/tnn-serve, else ~/.cache/tnn-serve."""
    root = os.environ.get("TNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tnn-serve"
    )
    return Path(root)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _library_key(source: bytes, compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(source)
    for part in (version, " ".join(FLAGS), platform.machine(), torch.backends.cpu.get_cpu_capability()):
        digest.update(part.encode())
    return digest.hexdigest()[:24]


def build_library(name: str, cache_dir: Path | None = None) -> Path:
    """Compile csrc/NAME.c into the cache (once) and return the shared library's path. Raises RuntimeError with
    the compiler's message when there is no compiler or the build fails."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) on PATH")
    source_path = SOURCES / f"{name}.c"
    source = source_path.read_bytes()
    directory = (cache_dir or cache_root()) / "native-lib"
    library = directory / f"{name}-{_library_key(source, compiler)}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as scratch:
        partial = Path(scratch) / library.name
        result = subprocess.run(
            [compiler, *FLAGS, str(source_path), "-o", str(partial), "-lm"],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {source_path}: {result.stderr.strip()[-2000:]}")
        os.replace(partial, library)
    return library


@functools.cache
def load_kernels(name: str) -> ctypes.CDLL | None:
    """The loaded library of csrc/NAME.c (built on first use), or None where native kernels are off
    ($TNN_NATIVE_KERNELS=off) or cannot be built (the reason logged once)."""
    if os.environ.get(OFF_ENV, "").lower() == "off":
        logger.info("native kernels off (%s=off): the torch twins serve", OFF_ENV)
        return None
    try:
        return ctypes.CDLL(str(build_library(name)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        logger.warning("native %s kernel unavailable (%s); its torch twin serves", name, exc)
        return None
