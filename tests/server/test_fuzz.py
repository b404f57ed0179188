"""Schemathesis fuzzes the HTTP API of a real `tnn serve` from its own OpenAPI schema (valid and invalid
bodies): no 5xx, and every answer's status code, content type, headers and body conform to the schema.

Bounded for CI (TNN_FUZZ_EXAMPLES per operation, default 40: a few hundred cases); `make fuzz` runs it longer and
writes the tally to benchmarks/results/fuzz.json (TNN_FUZZ_REPORT).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.fuzzing import fuzz_settings
from tests.support import ServerProcess
from tnn.server.app import create_app
from tnn.server.settings import Settings

pytestmark = pytest.mark.timeout(900)

EXAMPLES = int(os.environ.get("TNN_FUZZ_EXAMPLES", "40"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]  # fmt: skip
TALLY: Counter[str] = Counter()  # "POST /v1/completions 400" -> cases


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """Small limits keep each generated request cheap: at most 8 tokens, 2 choices, prompts of 64 tokens."""
    args = ["--max-tokens", "8", "--max-n", "2", "--max-prompt-tokens", "64", "--max-num-seqs", "8",
            "--served-model-name", "tiny", "--request-timeout", "30"]  # fmt: skip
    with ServerProcess(tiny_model_dir, args=args) as process:
        yield process
    report = os.environ.get("TNN_FUZZ_REPORT")
    if report:
        summary = {"examples_per_operation": EXAMPLES, "cases": sum(TALLY.values()),
                   "server_errors": sum(n for key, n in TALLY.items() if key.rsplit(" ", 1)[1].startswith("5")),
                   "by_operation_and_status": dict(sorted(TALLY.items()))}  # fmt: skip
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(summary, indent=2) + "\n")


# The schema the server publishes, built without loading a model (the fuzz test checks the served one is the same)
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
schema.config.generation.update(max_examples=EXAMPLES)


def test_the_served_schema_is_the_fuzzed_one(fuzz_server: ServerProcess) -> None:
    assert httpx.get(fuzz_server.url + "/openapi.json").json() == schema.raw_schema


@schema.parametrize()
@fuzz_settings(ci_examples=EXAMPLES)
def test_the_api_conforms_to_its_schema(fuzz_server: ServerProcess, case: schemathesis.Case) -> None:
    response = case.call_and_validate(base_url=fuzz_server.url, checks=CHECKS, timeout=60)
    TALLY[f"{case.method} {case.path} {response.status_code}"] += 1
    assert response.status_code < 500
