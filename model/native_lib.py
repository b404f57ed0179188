"""Native kernels on raw pointers (native_kernel.cpp: the decode step; sampler.c: the draw), compiled
once per machine with the system compiler and loaded with ctypes.

No torch headers: a build takes seconds (a torch C++ extension takes a minute), and ctypes releases the
interpreter lock during a call. A library is kept in the cache folder (`default_cache_dir`), named by a key of
what its machine code depends on (`library_key`: the source, the flags, the compiler and the CPU's vector
instruction set), written atomically with a digest of its bytes beside it: `open_library` refuses a library
whose bytes differ (the loader would crash the process on a truncated one, not raise). Every kernel has a torch
twin that serves where there is no compiler or the build fails.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

OFF_ENV = "TNN_NATIVE_KERNELS"  # "off": never build or load the sampler kernel (its torch twin serves)


@dataclass(frozen=True)
class NativeSource:
    """A kernel's source file, its compiler flags and its language (C++ or C)."""

    path: Path
    flags: tuple[str, ...]
    cxx: bool


SAMPLER = NativeSource(
    Path(__file__).with_name("sampler.c"),
    # portable (no ISA flags: tnn_sample clones its softmax for AVX2); no -ffast-math: the race needs IEEE floats;
    # -fno-trapping-math (no FP exception flags, the same values) lets the softmax's branch-free exp vectorise
    ("-O3", "-std=c11", "-fno-trapping-math", "-fPIC", "-shared"),
    cxx=False,
)


def default_cache_dir() -> Path:
    """Where compiled steps and kernels are kept: $TNN_CACHE_DIR, else $XDG_CACHE_HOME/tnn-serve, else
    ~/.cache/tnn-serve; they go in its `native-step` folder."""
    root = os.environ.get("TNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tnn-serve"
    )
    return Path(root) / "native-step"


@functools.cache
def compiler(cxx: bool) -> tuple[str | None, str]:
    """The C++ ($CXX, c++ or g++) or C ($CC, cc or gcc) compiler, None where there is none, and its version line."""
    found = (
        os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        if cxx
        else os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    )
    if found is None:
        return None, "no compiler"
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    return found, version.splitlines()[0] if version else found


def library_key(source: NativeSource) -> str:
    """Hex digest of what the built library depends on: source, flags, compiler, CPU vector ISA."""
    digest = hashlib.sha256(source.path.read_bytes())
    _, version = compiler(source.cxx)
    digest.update(repr((source.flags, version, torch.backends.cpu.get_cpu_capability())).encode())
    return digest.hexdigest()[:32]


def build_library(source: NativeSource, path: Path) -> Path:
    """Compile `source` into `path` (written atomically), its digest beside it (`open_library` checks it).
    Raises RuntimeError with the compiler's message."""
    found, _ = compiler(source.cxx)
    if found is None:
        language = "C++ (c++, g++ or $CXX)" if source.cxx else "C (cc, gcc or $CC)"
        raise RuntimeError(f"no {language} compiler to build {source.path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as scratch:
        partial = Path(scratch) / path.name
        command = [found, *source.flags, str(source.path), "-o", str(partial), *([] if source.cxx else ["-lm"])]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {source.path.name} failed: {result.stderr.strip()[-2000:]}")
        digest = Path(scratch) / "digest"
        digest.write_text(hashlib.sha256(partial.read_bytes()).hexdigest())
        os.replace(partial, path)
        os.replace(digest, _digest_path(path))
    return path


def open_library(path: Path) -> ctypes.CDLL:
    """Load a built library once its bytes match the digest written with it. Raises ValueError naming the file."""
    digest = _digest_path(path)
    if not digest.exists() or digest.read_text() != hashlib.sha256(path.read_bytes()).hexdigest():
        raise ValueError(f"{path}: damaged or not written by build_library (its digest {digest.name} differs)")
    return ctypes.CDLL(str(path))


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


@functools.cache
def sampler_library() -> ctypes.CDLL | None:
    """The sampler kernel (built on first use into the cache folder), or None where native kernels are off
    ($TNN_NATIVE_KERNELS=off) or cannot be built or loaded (the reason logged once)."""
    if os.environ.get(OFF_ENV, "").lower() == "off":
        logger.info("native sampler off (%s=off): its torch twin serves", OFF_ENV)
        return None
    path = default_cache_dir() / f"sampler-{library_key(SAMPLER)}.so"
    try:
        return open_library(path if path.exists() else build_library(SAMPLER, path))
    except (OSError, RuntimeError, ValueError) as exc:
        logger.warning("native sampler unavailable (%s); its torch twin serves", exc)
        return None
