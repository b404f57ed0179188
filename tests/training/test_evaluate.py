"""Bits per byte: the arithmetic on a known model, and `tnn eval` on a tiny trained directory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tnn.training.corpus import Splits
from tnn.training.eval_cli import evaluate_directory
from tnn.training.evaluate import score_tokens
from tnn.training.train import TrainConfig, train

V = 7


def uniform(tokens: torch.Tensor) -> torch.Tensor:
    return torch.zeros(*tokens.shape, V)  # (B, L) -> (B, L, V)


@pytest.mark.parametrize("context", [1, 4, 10, 50])
def test_uniform_model_scores_ln_v_per_token_at_every_context(context: int) -> None:
    ids = torch.arange(21) % V  # 20 targets: 50 is one partial block, 4 and 10 are whole blocks, 1 is all
    score = score_tokens(uniform, ids, n_bytes=40, context=context, max_batch=3)
    assert score.tokens == 20
    assert score.loss == pytest.approx(math.log(V))
    assert score.perplexity == pytest.approx(V)
    assert score.bits_per_byte == pytest.approx(20 * math.log2(V) / 40)


def test_blocks_do_not_see_each_other() -> None:
    ids = torch.arange(9)
    seen: list[torch.Tensor] = []

    def record(tokens: torch.Tensor) -> torch.Tensor:
        seen.append(tokens)
        return torch.zeros(*tokens.shape, 10)

    score_tokens(record, ids, n_bytes=8, context=3, max_batch=2)
    assert [t.tolist() for t in seen] == [[[0, 1, 2], [3, 4, 5]], [[6, 7]]]


def test_eval_directory_parallel_and_recurrent_agree_up_to_the_conversion_length(tmp_path: Path) -> None:
    text = "KING:\nWhat bloody man is that? He can report\n" * 6
    splits = Splits(train=text * 20, validation=text, test=text)
    config = TrainConfig(vocab_size=300, d_model=32, n_layers=2, seq_len=16, batch_size=2, max_steps=2)
    train(config, tmp_path, splits=splits, progress=False)
    rows = evaluate_directory(tmp_path, text, contexts=(8, 16, 64))
    assert [(r["path"], r["context"]) for r in rows] == [
        (path, context) for context in (8, 16, 64) for path in ("parallel", "recurrent")
    ]
    assert {r["conversion_length"] for r in rows} == {16}
    by_key = {(r["path"], r["context"]): r for r in rows}
    for context in (8, 16):
        assert by_key["recurrent", context]["loss"] == pytest.approx(by_key["parallel", context]["loss"], rel=1e-4)
    assert len({r["tokens"] for r in rows}) == 1
