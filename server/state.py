"""What the app keeps on `app.state.tnn`: the engine once loaded, and the serving phase (/ready derives from it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from tnn.server.embeddings import Embeddings
from tnn.server.engine import Engine
from tnn.server.metrics import Metrics
from tnn.server.serving import Serving
from tnn.server.settings import Settings

Phase = Literal["loading", "ready", "draining", "failed", "stopped"]


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    model_name: str
    phase: Phase = "loading"
    engine: Engine | None = None
    serving: Serving | None = None
    embeddings: Embeddings | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    request_shutdown: Callable[[], None] | None = None  # set by `tnn serve`: stop uvicorn (load failure)

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.engine is not None and self.engine.alive

    def begin_drain(self) -> None:
        """SIGTERM: /ready turns false and new requests get 503 while running ones finish."""
        if self.phase == "ready":
            self.phase = "draining"
        if self.engine is not None:
            self.engine.accepting = False
