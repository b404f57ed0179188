"""Fixtures for the client tests: one real `tnn serve` on a tiny random model, shared by the whole folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.helpers import API_KEY
from tests.support import ServerProcess


@pytest.fixture(scope="session")
def tnn_server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """One real `tnn serve` on the session's tiny random model, requiring API_KEY, shared by every client test."""
    with ServerProcess(tiny_model_dir, env={"TNN_API_KEY": API_KEY}) as server:
        yield server
