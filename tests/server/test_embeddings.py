"""/v1/embeddings through real `tnn serve` processes and the real `openai` client: a bidirectional SKI-TNN
encoder (embeddings only), and causal FD-TNN / SKI-TNN LMs that convert on load, stream text and embed."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch

import tnn.model
from tests.clients.helpers import run_tnn
from tests.support import ServerProcess, make_tiny_model_dir
from tnn.server.tokenizer import ServerTokenizer

SKI = {"operator": "ski", "ski_rank": 8, "ski_taps": 5}
FD = {"operator": "fd", "decay": "none"}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("ski-encoder"), causal=False, **SKI)


@pytest.fixture(scope="module")
def encoder(encoder_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(encoder_dir, args=["--served-model-name", "enc"]) as process:
        yield process


@pytest.fixture(scope="module")
def sdk(encoder: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=encoder.url + "/v1", api_key="unused", max_retries=0)


def expected_vectors(model_dir: Path, texts: list[str], pooling: str = "mean") -> np.ndarray:
    """The same embeddings computed here, in float64, from the model directory (unit norm)."""
    model = tnn.model.load(model_dir, dtype=torch.float64)
    tokenizer = ServerTokenizer(model_dir)
    rows = [model.pooled_features(torch.tensor([tokenizer.encode(t)]), pooling)[0] for t in texts]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1).numpy()


def test_encoder_embeddings_with_the_openai_client(sdk: openai.OpenAI, encoder_dir: Path) -> None:
    texts = ["To be, or not to be", "that is the question", "To be, or not to be"]
    result = sdk.embeddings.create(model="enc", input=texts)  # the SDK asks for base64 and decodes it
    vectors = np.array([item.embedding for item in result.data])
    assert [item.index for item in result.data] == [0, 1, 2]
    assert np.abs(vectors - expected_vectors(encoder_dir, texts)).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0
    as_float = sdk.embeddings.create(model="enc", input=texts[0], encoding_format="float")
    assert np.abs(np.array(as_float.data[0].embedding) - vectors[0]).max() < 1e-6


def test_token_id_inputs_and_base64(encoder: ServerProcess, encoder_dir: Path) -> None:
    ids = ServerTokenizer(encoder_dir).encode("Café, naïve")
    with httpx.Client(base_url=encoder.url, timeout=60) as http:
        one = http.post("/v1/embeddings", json={"input": ids, "encoding_format": "base64"}).json()
        many = http.post("/v1/embeddings", json={"input": [ids, ids[:3]]}).json()
    decoded = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    assert np.abs(decoded - np.array(many["data"][0]["embedding"])).max() < 1e-6
    assert one["usage"]["prompt_tokens"] == len(ids) and many["usage"]["prompt_tokens"] == len(ids) + 3
    assert one["object"] == "list" and one["data"][0]["object"] == "embedding" and one["model"] == "enc"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hello", "dimensions": 8}, "dimensions"),
        ({"input": []}, "input"),
        ({"input": [""]}, "input"),
        ({"input": [[1, 2], [100000]]}, "input"),
        ({"input": "x", "model": "other"}, "model"),
        ({"input": "hello", "dimensions": "192"}, "dimensions"),
        ({"input": "hello", "dimensions": 192.0}, "dimensions"),
        ({"input": [1.0, 2.0]}, "input"),
        ({"input": [True, False]}, "input"),
        ({"input": [[2.0]]}, "input"),
        ({"input": "hello", "unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_embedding_requests_get_4xx(encoder: ServerProcess, body: dict, param: str) -> None:
    response = httpx.post(encoder.url + "/v1/embeddings", json=body, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param


def test_encoder_refuses_generation_with_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="bidirectional"):
        sdk.completions.create(model="enc", prompt="hello", max_tokens=3)
    with pytest.raises(openai.BadRequestError, match="bidirectional"):
        sdk.chat.completions.create(model="enc", messages=[{"role": "user", "content": "hi"}])


def test_models_card_states_pooling_and_direction(sdk: openai.OpenAI) -> None:
    card = sdk.models.retrieve("enc").model_dump()
    assert card["operator"] == "ski" and card["causal"] is False
    assert card["embedding"] == {"pooling": "mean", "dimensions": 32, "normalized": True}


@pytest.mark.parametrize("variant", [FD, SKI], ids=["fd", "ski"])
def test_causal_variant_converts_streams_text_and_embeds(tmp_path: Path, variant: dict) -> None:
    """An unconverted causal FD-TNN / SKI-TNN directory: converted on load, streams, and embeds (last token)."""
    model_dir = make_tiny_model_dir(tmp_path / "lm", converted=False, **variant)
    with ServerProcess(model_dir, args=["--embedding-pooling", "last"]) as server:
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        stream = sdk.completions.create(model="lm", prompt="To be", max_tokens=8, stream=True, temperature=0)
        pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
        assert len(pieces) >= 1 and "".join(pieces)
        result = sdk.embeddings.create(model="lm", input=["To be", "or not"], encoding_format="float")
        card = sdk.models.retrieve("lm").model_dump()
    vectors = np.array([item.embedding for item in result.data])
    assert np.abs(vectors - expected_vectors(model_dir, ["To be", "or not"], "last")).max() < 1e-5
    assert card["operator"] == variant["operator"] and card["embedding"]["pooling"] == "last"


def test_tnn_embed_cli(encoder: ServerProcess, encoder_dir: Path) -> None:
    plain = run_tnn("embed", "To be, or not to be", "Café", "--url", encoder.url)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("0\tdim=32\tnorm=1.0000") and "prompt_tokens=" in plain.stderr
    as_json = run_tnn("embed", "To be, or not to be", "--json", "--url", encoder.url)
    vector = np.array(json.loads(as_json.stdout)["data"][0]["embedding"])
    assert np.abs(vector - expected_vectors(encoder_dir, ["To be, or not to be"])[0]).max() < 1e-5
    refused = run_tnn("embed", "x", "--url", encoder.url, "--model", "other")
    assert refused.returncode == 1 and "tnn embed: error: 404" in refused.stderr


def test_embed_cli_never_imports_torch() -> None:
    code = "import sys, tnn.clients.cli_embed; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_null_encoding_format_is_the_default(encoder: ServerProcess) -> None:
    with httpx.Client(base_url=encoder.url, timeout=60) as http:
        null = http.post("/v1/embeddings", json={"input": "hello", "encoding_format": None})
        default = http.post("/v1/embeddings", json={"input": "hello"})
    assert null.status_code == 200, null.text
    assert null.json()["data"] == default.json()["data"]
