"""Getting the compiled decode step (tnn.model.native_step: the native kernel, or AOTInductor for models the kernel
does not cover) into a running server without delaying its start.

At start-up a package kept for this model (the cache folder, keyed by `package_key`) is loaded and checked against
the eager step at once (milliseconds). Without one, `--native-step auto` builds it in a child process
(`tnn compile-step`, at low priority, one compiler thread) while the server answers with the eager step; the engine
thread swaps the compiled step in between two iterations once it is built and checked. `--native-step wait` builds
before /ready instead; `off` keeps the eager step. Every outcome is logged: which step runs, and why.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from tnn.model.native_kernel import unsupported_reason
from tnn.model.native_lib import default_cache_dir
from tnn.model.native_step import NativeStep, load_native_step, package_path
from tnn.model.tnn import TnnLM

logger = logging.getLogger(__name__)

NativeStepMode = Literal["auto", "wait", "off"]
BUILD_TIMEOUT = 3600.0  # seconds: a build that takes longer on a starved machine is abandoned (the eager step serves)


class CompiledStepSource:
    """Loads or builds a model's compiled decode step; `take()` hands it over once, on the engine thread."""

    def __init__(self, model: TnnLM, *, mode: NativeStepMode, max_batch: int, cache_dir: Path | None) -> None:
        self.model = model
        self.mode = mode
        self.max_batch = max_batch
        self.cache_dir = cache_dir or default_cache_dir()
        self._built: Path | None = None  # a package the child wrote, not yet loaded
        self._loaded: NativeStep | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        """Load the kept package, or start (auto) or run (wait) its build. Never raises: the eager step serves."""
        if self.mode == "off" or self.model.device.type != "cpu":
            return  # CUDA has its graphs (tnn.server.decode_graphs)
        refusal = unsupported_reason(self.model)
        if refusal is not None:
            logger.info("%s: the decode step is compiled with AOTInductor instead", refusal)
        package = package_path(self.model, self.cache_dir, max_batch=self.max_batch)
        if package.exists():
            self._loaded = self._load(package)
            if self._loaded is not None:
                return
            package.unlink(missing_ok=True)  # refused by the check: rebuild it
        if self.mode == "wait":
            self._build(package)
            self._loaded = self._load(package) if self._built is not None else None
            self._built = None
            return
        logger.info("no compiled decode step kept for this model in %s: building it in the background "
                    "(the eager step serves meanwhile)", self.cache_dir)  # fmt: skip
        self._thread = threading.Thread(target=self._build, args=(package,), name="tnn-compile-step", daemon=True)
        self._thread.start()

    def take(self) -> NativeStep | None:
        """On the engine thread, between iterations: the compiled step once it is ready (then None again)."""
        if self._loaded is None and self._built is not None:
            package, self._built = self._built, None
            self._loaded = self._load(package)
        step, self._loaded = self._loaded, None
        return step

    def close(self) -> None:
        """Stop a build in progress (server shutdown)."""
        self._closed = True
        if self._child is not None and self._child.poll() is None:
            self._child.kill()

    def _load(self, package: Path) -> NativeStep | None:
        try:
            step = load_native_step(self.model, package, max_batch=self.max_batch)
        except Exception as exc:  # a stale, foreign or damaged package: never served
            logger.warning("compiled decode step %s not used (%s: %s); the eager step serves", package,
                           type(exc).__name__, exc)  # fmt: skip
            return None
        logger.info("compiled decode step loaded from %s (batch 1..%d)", package, step.max_batch)
        return step

    def _build(self, package: Path) -> None:
        """Write the model to a scratch directory and compile it in a child process into `package`."""
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="tnn-compile-step-") as scratch:
            self.model.save(scratch)
            command = [
                sys.executable, "-m", "tnn.cli.main", "--log-level", "WARNING", "compile-step", scratch,
                "--dtype", str(self.model.dtype).removeprefix("torch."), "--max-batch", str(self.max_batch),
                "--cache-dir", str(self.cache_dir),
            ]  # fmt: skip
            env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1", "OMP_NUM_THREADS": "1"}
            try:
                self._child = subprocess.Popen(
                    command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_lower_priority
                )
                out, err = self._child.communicate(timeout=BUILD_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                if self._child is not None:
                    self._child.kill()
                logger.warning("building the compiled decode step failed (%s); the eager step serves", exc)
                return
        if self._closed:
            return
        if self._child.returncode != 0 or not package.exists():
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {self._child.returncode}"]
            logger.warning("building the compiled decode step failed (%s); the eager step serves", reason[0])
            return
        logger.info("compiled decode step built in %.0fs: %s", time.perf_counter() - start, out.decode().strip())
        self._built = package


def _lower_priority() -> None:
    os.nice(10)  # the build must not slow the server it is built for
