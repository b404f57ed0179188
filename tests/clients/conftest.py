"""Fixtures for the client tests: one real `tnn serve` on a tiny random model, shared by the whole folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support import ServerProcess, make_tiny_model_dir

from tests.clients.helpers import API_KEY


@pytest.fixture(scope="session")
def tnn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real `tnn serve` on a tiny random model, requiring API_KEY, shared by every client test."""
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("clients") / "tiny")
    with ServerProcess(model_dir, env={"TNN_API_KEY": API_KEY}) as server:
        yield server
