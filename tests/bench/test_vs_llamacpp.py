"""Smoke test of benchmarks/vs_llamacpp.py's parts, without building llama.cpp: the matched GPT-2, the converter
patches (when llama-cpp-python's source is already in the benchmark cache), the prompts, the SSE parsing, the
roofline's cost accounting and the streaming client against a real `tnn serve`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

import tnn.model
from benchmarks import llamacpp, roofline, vs_llamacpp
from tests.support import ServerProcess

transformers = pytest.importorskip("transformers")


def test_matched_gpt2_has_the_shipped_models_shape_and_parameter_count() -> None:
    shipped = tnn.model.default_model_dir()
    training = json.loads((shipped / "training.json").read_text())["train_config"]
    config = llamacpp.matched_gpt2_config(training, n_positions=8192)
    assert (config.n_embd, config.n_layer, config.n_head, config.vocab_size) == (192, 4, 3, 4096)
    assert config.n_positions == config.n_ctx == 8192
    # MLP widened past 4 x d so that (at the TNN's 512 training positions) both models hold as many parameters
    assert config.n_inner == 865
    gpt2 = transformers.GPT2LMHeadModel(config)
    matched = sum(p.numel() for p in gpt2.parameters()) - (8192 - 512) * 192
    tnn_parameters = json.loads((shipped / "training.json").read_text())["parameters"]
    assert abs(matched - tnn_parameters) / tnn_parameters < 1e-3


def test_gpt2_pre_tokenizer_check() -> None:
    shipped = json.loads((tnn.model.default_model_dir() / "tokenizer.json").read_text())
    assert llamacpp.is_gpt2_pre_tokenizer(shipped)
    assert not llamacpp.is_gpt2_pre_tokenizer({**shipped, "pre_tokenizer": {"type": "Whitespace"}})
    assert not llamacpp.is_gpt2_pre_tokenizer(
        {**shipped, "pre_tokenizer": {**shipped["pre_tokenizer"], "use_regex": False}}
    )


def vendored_llama_source() -> Path:
    source = llamacpp.llama_source(llamacpp.CACHE, download=False)
    if source is None or not (source / "convert_hf_to_gguf.py").exists():
        pytest.skip(
            f"no llama-cpp-python source distribution in {llamacpp.CACHE} (benchmarks/vs_llamacpp.py fetches it)"
        )
    return source


def test_patched_converter_writes_the_real_mlp_width_and_gpt2_pre_tokenizer(tmp_path: Path) -> None:
    source = vendored_llama_source()
    config = transformers.GPT2Config(vocab_size=4096, n_embd=64, n_layer=1, n_head=1, n_inner=100, n_positions=64)
    config.n_ctx = 64
    hf_dir = llamacpp.write_hf_gpt2(config, tnn.model.default_model_dir(), tmp_path / "hf")
    out = llamacpp.convert_to_gguf(source, hf_dir, tmp_path / "model.gguf")

    import gguf  # the vendored gguf-py, on sys.path after convert_to_gguf

    reader = gguf.GGUFReader(out)
    assert reader.fields["gpt2.feed_forward_length"].contents() == 100  # unpatched: 4 x 64 = 256
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    assert shapes["blk.0.ffn_up.weight"] == [64, 100]
    assert shapes["blk.0.ffn_down.weight"] == [100, 64]


def test_prompts_are_unique_of_the_asked_length_and_avoid_the_specials() -> None:
    source = vs_llamacpp.PromptSource(vocab=40)
    prompts = [source.next(27) for _ in range(500)]  # 500 > 38: the count spills into the first id
    assert all(len(p) == 27 for p in prompts)
    assert len({tuple(p[:2]) for p in prompts}) == 500
    assert min(min(p) for p in prompts) >= 2 and max(max(p) for p in prompts) < 40


def test_sse_events_keep_the_unfinished_event() -> None:
    events, rest = vs_llamacpp.sse_events(b'data: {"a": 1}\n\ndata:{"b": 2}\n\ndata: [DONE]\n\ndata: {"c"')
    assert events == [{"a": 1}, {"b": 2}]
    assert rest == b'data: {"c"'
    events, rest = vs_llamacpp.sse_events(rest + b": 3}\n\n")
    assert events == [{"c": 3}] and rest == b""


def test_level_parsing_and_the_table_without_llama_cpp() -> None:
    assert vs_llamacpp.Level.parse("1800x8") == vs_llamacpp.Level(1800, 8)
    stats = {"tokens_per_s": 1234.5, "ttft_p50_ms": 15.25, "itl_p50_ms": 4.5}
    table = vs_llamacpp.markdown_table([{"prompt_tokens": 27, "clients": 4, "tnn": stats, "llama.cpp": None}])
    assert table.splitlines()[-1] == "| 27 tokens, 4 | 1,234 | - | - | 15.2 / - ms | 4.50 / - ms |"


def test_roofline_cost_grows_by_one_sequences_state_and_logits(tiny_model_dir: Path) -> None:
    model = tnn.model.load(tiny_model_dir)
    one, two = roofline.step_cost(model, 1), roofline.step_cost(model, 2)
    per_sequence_bytes = 2 * model.state_bytes_per_sequence() + 8 + 4 * model.config.vocab_size
    assert two["bytes"] - one["bytes"] == per_sequence_bytes  # the weights are read once per step, at any batch
    assert one["weight_bytes"] == two["weight_bytes"] > 0
    head_flops = 2 * model.config.d_model * model.config.vocab_size
    assert two["flops"] - one["flops"] >= head_flops  # at least the output projection per extra sequence
    assert two["flops"] < 2.2 * one["flops"]


def test_roofline_measures_the_step_it_is_given(tiny_model_dir: Path) -> None:
    model = tnn.model.load(tiny_model_dir)
    batches: list[int] = []

    def step(tokens: torch.Tensor, state: object) -> torch.Tensor:
        batches.append(tokens.shape[0])
        return model.step(tokens, state)[0]  # type: ignore[arg-type]

    result = roofline.roofline(model, [1, 3], 1, repeats=2, step=step, name="counted")
    assert result["step"] == "counted" and [row["batch"] for row in result["rows"]] == [1, 3]
    assert set(batches) == {1, 3} and all(row["measured_step_ms"] > 0 for row in result["rows"])
    assert "measured (counted)" in roofline.roofline_lines(result)[1]


@pytest.mark.slow
def test_client_streams_from_a_real_tnn_serve(tiny_model_dir: Path) -> None:
    with ServerProcess(tiny_model_dir, args=["--device", "cpu"]) as server:
        model = vs_llamacpp.model_id(server.url)
        prompts = vs_llamacpp.PromptSource(vocab=tnn.model.load(tiny_model_dir).config.vocab_size)
        round_ = asyncio.run(vs_llamacpp.closed_loop(server.url, model, [[prompts.next(5), prompts.next(5)]], 4))
    assert len(round_.samples) == 2
    for sample in round_.samples:
        assert sample.tokens == 4 and 0 < sample.ttft < round_.seconds
        assert len(sample.itls) <= 3
    stats = round_.stats()
    assert stats["tokens_per_s"] == pytest.approx(8 / round_.seconds)


def test_tnn_microbench_rows(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vs_llamacpp, "BENCH_PROMPTS", [4, 16])
    threads = torch.get_num_threads()
    model = tnn.model.load(tiny_model_dir)
    kernel = vs_llamacpp.native_kernel_step(model)
    rows = vs_llamacpp.tnn_microbench(model, kernel, threads=1, repeats=1)
    torch.set_num_threads(threads)
    paths = ["torch", "kernel"] if kernel is not None else ["torch"]
    expected = [f"{test} ({path})" for test in ("prefill4", "prefill16", "step, any depth") for path in paths]
    assert [r["test"] for r in rows] == expected
    assert all(r["tokens_per_s"] > 0 for r in rows)
