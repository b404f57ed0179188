"""generation_config.json: request defaults (unit), and through a real `tnn serve` (auto, none, a broken file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess
from tnn.server.generation_config import GenerationDefaults, load_generation_defaults

pytestmark = pytest.mark.timeout(300)


def write(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "generation_config.json").write_text(json.dumps(config))
    return directory


def test_hugging_face_fields_become_request_defaults(tmp_path: Path) -> None:
    config = {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 0, "min_p": 0.1, "repetition_penalty": 1.1,
              "stop_strings": "\n\n", "eos_token_id": [0, 5], "do_sample": False, "transformers_version": "4.57.0"}  # fmt: skip
    defaults = load_generation_defaults(write(tmp_path, config))
    assert defaults.shown() == {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "min_p": 0.1,
                                "repetition_penalty": 1.1, "stop": ["\n\n"], "eos_token_ids": [0, 5]}  # fmt: skip
    assert load_generation_defaults(tmp_path, "none") == GenerationDefaults()
    assert load_generation_defaults(tmp_path / "absent") == GenerationDefaults()  # auto without a file
    other = write(tmp_path / "other", {"max_new_tokens": 3})
    assert load_generation_defaults(tmp_path, str(other)).max_tokens == 3  # a directory
    assert load_generation_defaults(tmp_path, str(other / "generation_config.json")).max_tokens == 3  # a file


@pytest.mark.parametrize(
    ("config", "key"),
    [({"temperature": "0.7"}, "temperature"), ({"max_new_tokens": 5.0}, "max_new_tokens"),
     ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": True}, "top_p"), ({"stop_strings": [""]}, "stop_strings"),
     ({"eos_token_id": "0"}, "eos_token_id"), ({"eos_token_id": [-1]}, "eos_token_id")],
)  # fmt: skip
def test_wrong_types_and_ranges_name_the_file_and_key(tmp_path: Path, config: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key) as caught:
        load_generation_defaults(write(tmp_path, config))
    assert "generation_config.json" in str(caught.value)
    with pytest.raises(ValueError, match="no such file"):
        load_generation_defaults(tmp_path, str(tmp_path / "missing.json"))


@pytest.fixture(scope="module")
def model_with_defaults(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("with-defaults") / "model"
    shutil.copytree(tiny_model_dir, directory)
    return write(directory, {"max_new_tokens": 5, "temperature": 0.0, "stop_strings": ["zzz-never"], "eos_token_id": 0})


def test_served_defaults_apply_when_a_request_leaves_them_out(model_with_defaults: Path) -> None:
    with ServerProcess(model_with_defaults, args=["--served-model-name", "m", "--no-warmup"]) as server:
        card = httpx.get(server.url + "/v1/models/m").json()
        assert card["generation_defaults"] == {
            "max_tokens": 5,
            "temperature": 0.0,
            "stop": ["zzz-never"],
            "eos_token_ids": [0],
        }
        body = {"prompt": "To be", "ignore_eos": True}
        default = httpx.post(server.url + "/v1/completions", json=body).json()
        assert default["usage"]["completion_tokens"] == 5  # max_new_tokens, not the legacy 16
        again = httpx.post(server.url + "/v1/completions", json={**body, "seed": 9}).json()
        assert again["choices"][0]["text"] == default["choices"][0]["text"]  # temperature 0 by default: greedy
        explicit = httpx.post(
            server.url + "/v1/completions", json={**body, "max_tokens": 2, "temperature": None}
        ).json()
        assert explicit["usage"]["completion_tokens"] == 2  # the request wins; null = the default
        chat = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                                     "ignore_eos": True}).json()  # fmt: skip
        assert chat["usage"]["completion_tokens"] == 5
    with ServerProcess(model_with_defaults, args=["--generation-config", "none", "--no-warmup"]) as server:
        assert httpx.get(server.url + "/v1/models").json()["data"][0]["generation_defaults"] == {}
        plain = httpx.post(server.url + "/v1/completions", json={"prompt": "To be", "ignore_eos": True}).json()
        assert plain["usage"]["completion_tokens"] == 16


def test_a_broken_generation_config_is_refused_at_load(model_with_defaults: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_with_defaults, broken)
    write(broken, {"temperature": "hot"})
    command = [sys.executable, "-m", "tnn.cli.main", "serve", str(broken), "--port", "0", "--no-warmup"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "TNN_THREADS": "1"}
    )
    assert result.returncode != 0
    assert "generation_config.json" in result.stderr and "temperature" in result.stderr
