"""Fairseq checkpoints with their dict.txt: the remapped tokenizer speaks the checkpoint's ids (checked against the
explicit text -> GPT-2 ids -> fairseq ids mapping), `tnn convert` warns without a tokenizer, a tokenizer can be
attached afterwards, and `tnn serve` serves the result with the right ids (or token ids only, --skip-tokenizer)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer

from tests.support import CORPUS, ServerProcess, make_fairseq_checkpoint
from tnn.model.fairseq_dict import (
    FAIRSEQ_SPECIALS,
    UNK_ID,
    FairseqDictionary,
    padded_symbols,
    read_fairseq_dict,
    remap_tokenizer,
    unk_beyond_vocab,
)
from tnn.model.tokenizer import save_tokenizer, train_tokenizer

TEXTS = [*CORPUS, "Zebras quaff jinxed vodka: ¿qué? — 🙂🙂", "<|endoftext|>After the end."]
DROPPED = 23  # the rarest GPT-2 ids get no dict line (-> <unk>); 4 + lines is then not a multiple of 8


def tnn_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tnn.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style tokenizer (byte-level BPE, <|endoftext|> = id 0) standing in for GPT-2's 50257 tokens."""
    directory = tmp_path_factory.mktemp("gpt2")
    save_tokenizer(train_tokenizer(CORPUS * 4, vocab_size=384), directory, chat_template=None)
    return directory


@pytest.fixture(scope="module")
def gpt2(gpt2_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def dict_txt(gpt2: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dict.txt as fairseq-preprocess writes it: "GPT2_ID COUNT" lines, most frequent first. (Id 1, the stand-in's
    <pad>, which GPT-2 does not have, is left out: fairseq has its own <pad>.)"""
    counts = Counter(t for text in CORPUS for t in gpt2.encode(text).ids)
    ranked = sorted(set(range(gpt2.get_vocab_size())) - {1}, key=lambda i: (-counts[i], i))[: -DROPPED + 1]
    path = tmp_path_factory.mktemp("dict") / "dict.txt"
    path.write_text("".join(f"{i} {counts[i]}\n" for i in ranked))
    return path


def fairseq_ids(gpt2: Tokenizer, dictionary: FairseqDictionary, text: str) -> list[int]:
    """The slow twin: what fairseq's preprocessing does, step by step."""
    lines = {symbol: 4 + k for k, symbol in enumerate(dictionary.symbols)}
    return [lines.get(str(i), UNK_ID) for i in gpt2.encode(text).ids]


def test_dictionary_is_parsed_as_fairseq_numbers_it(dict_txt: Path, gpt2: Tokenizer) -> None:
    dictionary = read_fairseq_dict(dict_txt)
    assert dictionary.size == 4 + gpt2.get_vocab_size() - DROPPED
    first = dict_txt.read_text().splitlines()[0].split()[0]
    assert dictionary.fairseq_id(int(first)) == 4
    padded = padded_symbols(dictionary, 368)
    assert len(padded) + 4 == 368 and padded[-1] == "madeupword0002"
    with pytest.raises(ValueError, match="embedding has 400 rows"):
        padded_symbols(dictionary, 400)


@pytest.mark.parametrize(
    ("content", "message"),
    [("5 10\n5 3\n", r":2: symbol '5' is already"), ("5 10\nseven\n", r":2: expected 'TOKEN COUNT'"),
     ("</s> 1\n", "already"), ("", "empty")],
)  # fmt: skip
def test_bad_dictionaries_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "dict.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_fairseq_dict(path)


def test_remapped_tokenizer_encodes_to_fairseq_ids_and_decodes_back(gpt2: Tokenizer, dict_txt: Path) -> None:
    dictionary = read_fairseq_dict(dict_txt)
    remapped = remap_tokenizer(gpt2, dictionary, vocab_size=368)
    unknown = 0
    for text in TEXTS:
        expected = fairseq_ids(gpt2, dictionary, text)
        assert unk_beyond_vocab(remapped.encode(text).ids, 368) == expected, text
        unknown += expected.count(UNK_ID)
        if UNK_ID not in expected:
            assert remapped.decode(expected, skip_special_tokens=False) == text
    assert unknown > 0  # the dropped ids were exercised
    assert [remapped.id_to_token(i) for i in range(4)] == list(FAIRSEQ_SPECIALS)
    assert remapped.token_to_id("madeupword0002") == 367
    assert remapped.encode("<|endoftext|>").ids == [dictionary.fairseq_id(0)]  # still one special token


def test_non_bpe_tokenizer_is_refused(dict_txt: Path) -> None:
    from tokenizers import models

    with pytest.raises(ValueError, match="GPT-2-style BPE"):
        remap_tokenizer(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")), read_fairseq_dict(dict_txt), 368)


@pytest.mark.slow
def test_fairseq_checkpoint_with_dict_converts_attaches_and_serves_the_right_ids(
    tmp_path: Path, gpt2_dir: Path, gpt2: Tokenizer, dict_txt: Path
) -> None:
    checkpoint = make_fairseq_checkpoint(tmp_path / "checkpoint.pt", vocab_size=368)
    bare = tmp_path / "bare"
    converted = tnn_cli("convert", str(checkpoint), str(bare), "--length", "16", "--no-past-n")
    assert converted.returncode == 0, converted.stderr
    assert "WARNING" in converted.stdout and "has no tokenizer" in converted.stderr  # loud: report and log
    report = json.loads((bare / "conversion.json").read_text())
    assert report["tokenizer"] is None and "no tokenizer" in report["warnings"][0]

    refused = tnn_cli("serve", str(bare))
    assert refused.returncode == 2 and "has no tokenizer" in refused.stderr and "Traceback" not in refused.stderr
    assert len([line for line in refused.stderr.splitlines() if "ERROR" in line]) == 1

    with (
        ServerProcess(bare, args=["--skip-tokenizer", "--no-warmup"]) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        body = {"prompt": [2, 40, 41, 42], "max_tokens": 5, "logprobs": 0, "temperature": 0}
        answer = http.post("/v1/completions", json=body).json()["choices"][0]
        assert answer["text"] == "" and len(answer["logprobs"]["tokens"]) == 5
        assert all(t.startswith("token_id:") and 0 <= int(t[9:]) < 368 for t in answer["logprobs"]["tokens"])
        for route, request, param in [("/v1/completions", {"prompt": "text", "max_tokens": 1}, "prompt"),
                                      ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "messages"),
                                      ("/tokenize", {"prompt": "text"}, "prompt"), ("/detokenize", {"tokens": [5]}, "tokens")]:  # fmt: skip
            refusal = http.post(route, json=request)
            assert refusal.status_code == 400, route
            error = refusal.json()["error"]
            assert "--skip-tokenizer" in error["message"], (route, refusal.text)
            assert (error["code"], error["param"]) == ("tokenizer_skipped", param), (route, refusal.text)
        skipped_ids = [int(t[9:]) for t in answer["logprobs"]["tokens"]]

    attached = tnn_cli("attach-tokenizer", str(bare), str(gpt2_dir), "--fairseq-dict", str(dict_txt))
    assert attached.returncode == 0, attached.stderr
    report = json.loads((bare / "conversion.json").read_text())
    assert report["fairseq_dict"] == str(dict_txt) and report["warnings"] == []
    assert report["fairseq_dict_lines"] == 384 - DROPPED and len(report["fairseq_dict_sha256"]) == 64

    dictionary = read_fairseq_dict(dict_txt)
    with ServerProcess(bare, args=["--no-warmup"]) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for text in TEXTS[:4] + TEXTS[-2:]:
            tokens = http.post("/tokenize", json={"prompt": text}).json()["tokens"]
            assert tokens == [2, *fairseq_ids(gpt2, dictionary, text)], text  # </s> first, as OPT/fairseq
        prompt = "To be, or not to be"
        ids = http.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
        assert http.post("/detokenize", json={"tokens": ids}).json()["prompt"] == prompt
        sampling = {"max_tokens": 8, "temperature": 1.0, "seed": 5, "logprobs": 0}
        from_text = http.post("/v1/completions", json={"prompt": prompt, **sampling}).json()["choices"][0]
        from_ids = http.post("/v1/completions", json={"prompt": ids, **sampling}).json()["choices"][0]
        assert from_text["text"] == from_ids["text"] and from_text["logprobs"] == from_ids["logprobs"]
        greedy = http.post("/v1/completions", json={"prompt": [2, 40, 41, 42], "max_tokens": 5, "temperature": 0,
                                                    "ignore_eos": True}).json()["choices"][0]  # fmt: skip
        generated = http.post("/detokenize", json={"tokens": skipped_ids}).json()["prompt"]
        assert greedy["text"] == generated  # the same model: the ids of --skip-tokenizer, now as text
