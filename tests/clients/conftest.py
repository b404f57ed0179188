"""Fixtures for the client tests: one real `tnn serve` on a tiny random model, shared by the whole folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.helpers import API_KEY, REQUEST_TIMEOUT
from tests.support import ServerProcess


@pytest.fixture(scope="session")
def tnn_server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """One real `tnn serve` on the session's tiny random model, shared by every client test.

    It requires API_KEY, and cuts requests off after REQUEST_TIMEOUT seconds (504, or an error event once streaming),
    which the tests use to get a real mid-stream error; every other request finishes far sooner.
    """
    env = {"TNN_API_KEY": API_KEY, "TNN_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT), "TNN_MAX_TOKENS": "1000000"}
    with ServerProcess(tiny_model_dir, env=env) as server:
        yield server
