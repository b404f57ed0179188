"""`tnn convert` and convert_checkpoint: golden fairseq .pt and native directories, atomic write, refusals."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tnn.convert.convert as convert_module
import tnn.model.conversion
from tests.model.decoding import golden_lm, random_tokens
from tests.model.helpers import relative_error, tiny_model
from tnn.cli.main import main
from tnn.convert.cli import add_arguments
from tnn.convert.convert import ConversionRefused, VerificationFailed, convert_checkpoint
from tnn.convert.verify import check_kernel, kernel_reference, teacher_forced, teacher_forced_passes, twin_lags
from tnn.model import attach_ssm, load, save_model
from tnn.model.conversion import ReducedOptions


def tnn_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point in a fresh interpreter (what a user runs)."""
    command = [sys.executable, "-m", "tnn.cli.main", "--log-level", "WARNING", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def write_tokenizer(directory: Path) -> None:
    """A minimal Hugging Face tokenizer (word level over the tiny vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(97)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


@pytest.fixture()
def native_dir(tmp_path: Path) -> Path:
    """An unconverted native model directory (float32 weights) with a tokenizer."""
    directory = tmp_path / "trained"
    save_model(tiny_model(seed=0, dtype=torch.float32, train_length=32), directory)
    write_tokenizer(directory)
    return directory


def test_golden_checkpoint_converts_and_decodes_like_the_original(tmp_path: Path) -> None:
    folder = golden_lm()
    dst = tmp_path / "golden"
    report = convert_checkpoint(
        src=folder / "checkpoint.pt", dst=dst, length=16, method="etsc-tail", progress=False, compare_methods=True
    )
    assert report.method == "etsc-tail" and report.length == 16 and report.source_format == "fairseq"
    assert len(report.kernel_checks) == 2
    assert all(k.rel_error_modes <= 1e-12 and k.lag_n_rel_error <= 1e-12 for k in report.kernel_checks)
    assert report.logits_check.float64_rel_error <= 1e-12 and report.logits_check.float32_rel_error <= 1e-4
    assert (report.logits_check.split, report.logits_check.probe_length) == (1, 16)  # prefill 1, step to lag n - 1
    # the evaluation pass (1,025 random ids: no tokenizer) gives the converted method's row; compare_methods adds
    # every method on random ids to 2n and 4n
    methods = {(row.method, row.length) for row in report.past_n}
    everything = {(m, size) for m in ("reduced", "etsc", "etsc-inclusive", "etsc-tail") for size in (32, 64)}
    assert methods == everything | {("etsc-tail", 1025)}
    kernels = {k.method: k for k in report.past_n_kernels}  # no fit for a comparison: reduced is not listed
    assert set(kernels) == {"etsc", "etsc-inclusive", "etsc-tail"}
    assert kernels["etsc-tail"].past_n_rel_error == max(k.past_n_rel_error for k in report.kernel_checks)
    assert kernels["etsc"].lag_n_rel_error > 1e-3 > kernels["etsc-inclusive"].lag_n_rel_error  # the spurious tap

    on_disk = json.loads((dst / "conversion.json").read_text())
    for key in ("method", "length", "modes", "full_state", "kernel_checks", "logits_check", "past_n", "timings_s"):
        assert key in on_disk
    assert set(on_disk["versions"]) == {"tnn-serve", "torch", "python"}
    assert {"load", "convert", "verify_kernels", "verify_logits", "past_n", "write"} <= set(on_disk["timings_s"])

    model = load(dst, dtype=torch.float64)  # weights from model.safetensors, SSM from ssm.safetensors
    assert model.config.ssm is not None and model.config.ssm.method == "etsc-tail"
    tokens = load_file(folder / "inputs.safetensors")["tokens"][:, :16]
    expected = load_file(folder / "expected.safetensors")["logits"][:, :16]
    got, _ = teacher_forced(model, tokens, 8)
    assert relative_error(got, expected[:, 7:]) <= 1e-9


@pytest.mark.slow
def test_cli_end_to_end_on_the_golden_checkpoint(tmp_path: Path) -> None:
    folder = golden_lm()
    dst = tmp_path / "out"
    result = tnn_cli("convert", str(folder / "checkpoint.pt"), str(dst), "--length", "16", "--method", "etsc")
    assert result.returncode == 0, result.stderr
    assert "kernel err" in result.stdout and "etsc-inclusive" in result.stdout  # table with the past-n kernels
    assert sorted(p.name for p in dst.iterdir()) == [
        "config.json",
        "conversion.json",
        "model.safetensors",
        "ssm.safetensors",
    ]
    assert json.loads((dst / "config.json").read_text())["ssm"] == {
        "method": "etsc",
        "length": 16,
        "modes": 8,
        "full_state": False,
        "fir_length": 0,
    }
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_cli_native_directory_force_and_tokenizer(
    tmp_path: Path, native_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "served"
    (native_dir / "generation_config.json").write_text('{"max_new_tokens": 7, "stop_strings": ["\\n\\n"]}')
    result = tnn_cli("convert", str(native_dir), str(dst), "--full-state", "--method", "etsc-tail")
    assert result.returncode == 0, result.stderr
    assert (dst / "tokenizer.json").exists() and (dst / "tokenizer_config.json").exists()
    # request defaults travel with the model: a converted directory serves like its source
    assert (dst / "generation_config.json").read_bytes() == (native_dir / "generation_config.json").read_bytes()
    assert json.loads((dst / "conversion.json").read_text())["carried"] == ["generation_config.json"]
    config = json.loads((dst / "config.json").read_text())
    assert config["ssm"] == {"method": "etsc-tail", "length": 32, "modes": 33, "full_state": True, "fir_length": 0}
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700: the server may run as another user
    before = (dst / "conversion.json").read_text()

    assert main(["convert", str(native_dir), str(dst)]) == 1  # in-process: one interpreter start less
    assert "--force" in capsys.readouterr().err
    assert (dst / "conversion.json").read_text() == before

    forced = tnn_cli("convert", str(native_dir), str(dst), "--force", "--method", "etsc-inclusive", "--no-past-n")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((dst / "config.json").read_text())["ssm"]["method"] == "etsc-inclusive"
    assert leftovers(tmp_path) == []

    model = load(dst, dtype=torch.float64)
    tokens = random_tokens(1, 20)
    got, _ = model.recurrent_logits(tokens)
    assert relative_error(got, model(tokens)) <= 1e-9


def test_bidirectional_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "blm"
    save_model(tiny_model(seed=0, dtype=torch.float32, causal=False), src)
    dst = tmp_path / "out"
    with pytest.raises(ConversionRefused, match="bidirectional"):
        convert_checkpoint(src=src, dst=dst, progress=False)
    assert main(["convert", str(src), str(dst)]) == 2
    assert "refused" in capsys.readouterr().err
    assert not dst.exists() and leftovers(tmp_path) == []


def test_corrupt_inputs_name_the_file_and_key(
    tmp_path: Path, native_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["convert", str(garbage), str(tmp_path / "a")]) == 1
    assert str(garbage) in capsys.readouterr().err

    weights = native_dir / "model.safetensors"
    state = load_file(weights)
    del state["layers.1.gtu.tno.rpe.pos_proj.weight"]
    save_file(state, str(weights))
    assert main(["convert", str(native_dir), str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert str(weights) in err and "layers.1.gtu.tno.rpe.pos_proj.weight" in err

    (native_dir / "config.json").write_text("{not json")
    assert main(["convert", str(native_dir), str(tmp_path / "c")]) == 1
    assert "config.json" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "d")]) == 1
    assert not any((tmp_path / name).exists() for name in "abcd") and leftovers(tmp_path) == []


def test_failed_verification_writes_nothing(tmp_path: Path, native_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "KERNEL_TOLERANCE", 0.0)
    dst = tmp_path / "out"
    with pytest.raises(VerificationFailed, match="kernel error"):
        convert_checkpoint(src=native_dir, dst=dst, method="etsc-tail", progress=False, compare_past_n=False)
    assert not dst.exists() and leftovers(tmp_path) == []


def test_bad_arguments(tmp_path: Path, native_dir: Path) -> None:
    with pytest.raises(ValueError, match="conversion length"):
        convert_checkpoint(src=native_dir, dst=tmp_path / "x", length=1, progress=False)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        convert_checkpoint(src=native_dir, dst=tmp_path / "y", tokenizer=tmp_path, progress=False)


@pytest.mark.parametrize("problem", ["garbage", "too_large", "bad_config"])
def test_broken_tokenizers_are_refused_naming_the_file(
    tmp_path: Path, native_dir: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    tokenizer_dir = tmp_path / "tok"
    write_tokenizer(tokenizer_dir)
    if problem == "garbage":
        (tokenizer_dir / "tokenizer.json").write_text("\x00garbage{")
        broken = tokenizer_dir / "tokenizer.json"
    elif problem == "too_large":  # 200 tokens for a 97-row embedding
        from tokenizers import Tokenizer, models

        Tokenizer(models.WordLevel({f"w{i}": i for i in range(200)}, unk_token="w0")).save(
            str(tokenizer_dir / "tokenizer.json")
        )
        broken = tokenizer_dir / "tokenizer.json"
    else:
        (tokenizer_dir / "tokenizer_config.json").write_text("{")
        broken = tokenizer_dir / "tokenizer_config.json"
    dst = tmp_path / "out"
    assert main(["convert", str(native_dir), str(dst), "--tokenizer", str(tokenizer_dir), "--no-past-n"]) == 1
    err = capsys.readouterr().err
    assert str(broken) in err
    if problem == "too_large":
        assert "200 tokens" in err and "97" in err
    assert not dst.exists() and leftovers(tmp_path) == []
    (native_dir / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())  # the source's own
    (native_dir / "tokenizer_config.json").write_bytes((tokenizer_dir / "tokenizer_config.json").read_bytes())
    assert main(["convert", str(native_dir), str(dst), "--no-past-n"]) == 1
    assert str(native_dir) in capsys.readouterr().err and not dst.exists()


def test_default_reduced_conversion_writes_its_fit_and_decodes(tmp_path: Path, native_dir: Path) -> None:
    """The default method: conversion.json records the fit per layer; the state is float32 planes + FIR history;
    the written directory decodes within the kernel tolerance of the parallel model (logits within 5e-2)."""
    dst = tmp_path / "reduced"
    report = convert_checkpoint(src=native_dir, dst=dst, progress=False, compare_past_n=False)
    assert report.method == "reduced" and report.reduced is not None
    on_disk = json.loads((dst / "conversion.json").read_text())
    layers = on_disk["reduced"]["layers"]
    assert len(layers) == 2 and all(layer["max_pole_radius"] < 1 for layer in layers)
    assert on_disk["modes"] == [layer["modes"] for layer in layers]
    assert on_disk["thresholds"]["logits_rel_error_float32"] == 5e-2
    model = load(dst, dtype=torch.float32)
    ssm = model.config.ssm
    assert ssm is not None and ssm.method == "reduced" and ssm.fir_length == 8
    rows = sum(2 * modes + 8 for modes in ssm.layer_modes(2))
    assert report.state_bytes_per_sequence == rows * model.config.d_inner * 4 == model.state_bytes_per_sequence()
    tokens = random_tokens(1, 24)
    got, _ = model.recurrent_logits(tokens)
    assert relative_error(got, model(tokens)) <= 5e-2


def test_max_order_flag_and_its_deprecated_old_name(capsys: pytest.CaptureFixture[str]) -> None:
    """`--max-order` caps the fit's model order (poles, a pair counts 2); `--max-modes`, its old name, still sets it
    and says so on stderr."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["a", "b", "--max-order", "6"]).max_order == 6
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["a", "b", "--max-modes", "6"]).max_order == 6
    assert "--max-modes is deprecated, use --max-order" in capsys.readouterr().err
    assert parser.parse_args(["a", "b"]).max_order == ReducedOptions().max_order
    assert "--max-modes" not in parser.format_help()


def test_fidelity_is_measured_on_held_out_text_and_the_fit_runs_once(
    tmp_path: Path, native_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--eval-text, else SRC's held_out.txt (carried over), else random ids, said so; the reduced fit runs once
    per layer although the past-n table also reports the reduced method."""
    fits: list[int] = []
    counted = tnn.model.conversion.fit_reduced
    monkeypatch.setattr(tnn.model.conversion, "fit_reduced", lambda *a, **k: fits.append(1) or counted(*a, **k))
    text = tmp_path / "eval.txt"
    text.write_text(" ".join(f"w{(7 * i) % 97}" for i in range(151)))  # no end-of-text token: 150 predicted
    assert main(["convert", str(native_dir), str(tmp_path / "a"), "--eval-text", str(text)]) == 0
    assert len(fits) == 2  # two layers, fitted once each (not again for the past-n table)
    out = capsys.readouterr().out
    assert f"fidelity on {text} (150 tokens, float64, teacher-forced): top-1 agreement" in out and "bits/byte" in out
    report = json.loads((tmp_path / "a" / "conversion.json").read_text())
    fidelity = report["fidelity"]
    assert (
        fidelity["source"] == str(text)
        and fidelity["tokens"] == 150
        and fidelity["bytes"] == len(text.read_bytes()) - len("w0 ")
    )
    assert 0.5 <= fidelity["top1_agreement"] <= 1 and 0 < fidelity["max_abs_logprob_diff"] < 1
    assert [row["method"] for row in report["past_n"]["rows"]] == ["reduced"]  # from the evaluation pass, free
    assert report["past_n"]["rows"][0]["probe"] == str(text) and report["past_n"]["rows"][0]["length"] == 151
    assert {row["method"] for row in report["past_n"]["kernels"]} == {"reduced", "etsc", "etsc-inclusive", "etsc-tail"}

    held_out = " ".join(text.read_text().split()[:51])
    (native_dir / "held_out.txt").write_text(held_out)
    report = convert_checkpoint(src=native_dir, dst=tmp_path / "b", progress=False, compare_past_n=False)
    assert report.fidelity.source == str(native_dir / "held_out.txt") and report.fidelity.tokens == 50
    assert "held_out.txt" in report.carried and (tmp_path / "b" / "held_out.txt").read_text() == held_out

    (native_dir / "held_out.txt").unlink()
    assert main(["convert", str(native_dir), str(tmp_path / "c"), "--no-past-n"]) == 0
    assert "fidelity on random token ids, seed 1 (no --eval-text and no held_out.txt)" in capsys.readouterr().out
    assert main(["convert", str(native_dir), str(tmp_path / "d"), "--eval-text", str(tmp_path / "none.txt")]) == 1
    assert "none.txt" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_one_evaluation_pass_equals_its_twins() -> None:
    """The evaluation pass behind the logits check, the fidelity and the past-n row (prefill, steps, a prefill
    continuing from the stepped state) against the recurrent logits in one prefill and against stepping every
    token after the split: 1e-10 relative in float64."""
    model = attach_ssm(tiny_model(seed=1, train_length=32), method="reduced")
    tokens = random_tokens(1, 80)
    passes = teacher_forced_passes(model, tokens, split=24, steps=8)
    assert (passes.split, passes.stepped) == (24, 8) and passes.recurrent.shape == passes.parallel.shape
    assert torch.equal(passes.parallel, model(tokens))
    in_one_prefill, _ = model.recurrent_logits(tokens)
    assert relative_error(passes.recurrent, in_one_prefill) <= 1e-10
    stepped, _ = teacher_forced(model, tokens, 24)  # (1, 57, V): positions 23..79
    assert relative_error(passes.recurrent[:, 23:], stepped) <= 1e-10
    short = teacher_forced_passes(model, tokens[:, :20], split=24, steps=8)  # shorter than the split: no steps
    assert short.stepped == 0 and relative_error(short.recurrent, in_one_prefill[:, :20]) <= 1e-10


def test_kernel_check_takes_the_prefill_kernel_at_every_lag_and_its_twin_at_sampled_lags() -> None:
    """The kernel check compares the kept prefill kernel at every lag and the mode-by-mode twin (what the step
    sums) at `twin_lags`: the head, then lags spread to n, some in every chunk of the power table. A broken kept
    kernel fails the first and leaves the second."""
    n = 512
    lags = twin_lags(n)
    assert lags[0] == 0 and lags[-1] == n and bool((lags[:64] == torch.arange(64)).all()) and len(lags) <= 129
    assert all(bool(((lags >= start) & (lags < start + 121)).any()) for start in range(0, n, 121))
    model = attach_ssm(tiny_model(seed=1, train_length=64), method="reduced")
    tno = model.layers[0].gtu.tno
    good = check_kernel(0, tno, 64, expected=kernel_reference(tno, 64))
    assert good.rel_error_modes <= 1.01 * good.rel_error + 1e-12  # twin and fast kernel agree
    cached = tno.ssm.kernel(4 * 64)
    cached[40:50] += 1.0  # a broken prefill kernel (kept and sliced by every prefill)
    broken = check_kernel(0, tno, 64)
    assert broken.rel_error > 0.1 and broken.rel_error_modes == pytest.approx(good.rel_error_modes)
