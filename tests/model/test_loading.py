"""The model directory round trip and the fairseq importer's refusals (each names the key, shape or file)."""

from __future__ import annotations

import argparse

import pytest
import torch

import tnn.model
from tnn.model.loading import WEIGHTS_FILE

from .helpers import tiny_model

LM = "lm_decay99_pre_tiny"


def test_directory_round_trip_preserves_logits(tmp_path):
    model = tiny_model(dtype=torch.float32)
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = tnn.model.load(tmp_path / "m")
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    assert not loaded.training and loaded.config == model.config
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    assert tnn.model.load(tmp_path / "m", dtype=torch.float64).dtype == torch.float64


def test_converted_directory_round_trip(tmp_path):
    model = tnn.model.attach_ssm(tiny_model(), length=16)
    model.save(tmp_path / "m")
    loaded = tnn.model.load(tmp_path / "m", dtype=torch.float64)
    assert loaded.is_converted and loaded.config.ssm == model.config.ssm
    tokens = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.prefill(tokens)[0], model.prefill(tokens)[0], rtol=0, atol=1e-13)


def test_missing_directory_pieces_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model"):
        tnn.model.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        tnn.model.load(tmp_path / "empty")
    tiny_model().save(tmp_path / "m")
    (tmp_path / "m" / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        tnn.model.load(tmp_path / "m")


@pytest.fixture()
def checkpoint(golden):
    return torch.load(golden / LM / "checkpoint.pt", weights_only=True)


def _write(checkpoint, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    return path


def test_missing_key_is_named(checkpoint, tmp_path):
    del checkpoint["model"]["decoder.layers.1.glu.l2.bias"]
    with pytest.raises(ValueError, match=r"checkpoint.pt.*missing key 'layers.1.glu.l2.bias'"):
        tnn.model.load(_write(checkpoint, tmp_path))


def test_unexpected_key_is_named(checkpoint, tmp_path):
    checkpoint["model"]["decoder.layers.0.self_attn.gtu.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"unexpected key 'decoder.layers.0.self_attn.gtu.extra.weight'"):
        tnn.model.load(_write(checkpoint, tmp_path))


def test_misshaped_key_names_both_shapes(checkpoint, tmp_path):
    checkpoint["model"]["decoder.layers.0.glu.l3.weight"] = torch.zeros(32, 31)
    with pytest.raises(ValueError, match=r"layers.0.glu.l3.weight.*\(32, 31\), expected \(32, 32\)"):
        tnn.model.load(_write(checkpoint, tmp_path))


def test_untied_output_projection_is_refused(checkpoint, tmp_path):
    checkpoint["model"]["decoder.output_projection.weight"] = torch.zeros(101, 32)
    with pytest.raises(ValueError, match="output_projection"):
        tnn.model.load(_write(checkpoint, tmp_path))


def test_cfg_contradicting_shapes_is_refused(checkpoint, tmp_path):
    checkpoint["cfg"]["model"]["glu_dim"] = 64
    with pytest.raises(ValueError, match="glu_dim.*64.*32"):
        tnn.model.load(_write(checkpoint, tmp_path))


def test_unsupported_arch_is_refused(checkpoint, tmp_path):
    checkpoint["cfg"]["model"]["arch"] = "tnn_v2_decay_99_pre_glu_v2_gtu_v3"
    with pytest.raises(ValueError, match="not supported"):
        tnn.model.load(_write(checkpoint, tmp_path))


def test_namespace_cfg_is_accepted(checkpoint, tmp_path):
    checkpoint["cfg"]["model"] = argparse.Namespace(**checkpoint["cfg"]["model"])
    assert tnn.model.load(_write(checkpoint, tmp_path)).config.d_model == 32


def test_old_decoder_version_drops_the_final_norm(checkpoint, tmp_path):
    checkpoint["model"]["decoder.version"] = torch.tensor([2.0])
    assert tnn.model.load(_write(checkpoint, tmp_path)).final_norm is None


class _RunsCodeOnLoad:
    def __reduce__(self):
        return (pytest.fail, ("the checkpoint's pickled code ran",))


def test_pickled_code_is_never_run(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsCodeOnLoad(), "cfg": None}, path)
    with pytest.raises(ValueError, match=r"evil.pt.*weights_only"):
        tnn.model.load(path)
