"""jonathanmei/ski-tnn (laxtnn) fairseq checkpoints through tnn.model.load: TNN and FD-TNN causal LMs and the
SKI-TNN RoBERTa-style encoder, with the same named errors as the fairseq-evo importer."""

from __future__ import annotations

import pytest
import torch

import tnn.model

from .decoding import random_tokens
from .fairseq_format import fairseq_checkpoint, write
from .helpers import relative_error, tiny_model

ALM = {  # what each registered arch writes into cfg['model'] (language_model.py), at the tiny size
    "decoder_embed_dim": 32,
    "decoder_layers": 2,
    "decoder_attention_heads": 1,
    "decoder_normalize_before": True,
    "no_token_positional_embeddings": True,
    "act_fun": "silu",
    "causal": True,
    "expand_ratio": 3,
    "use_norm": False,
    "norm_type": "simplermsnorm",
    "rpe_embedding": 16,
    "residual": False,
    "glu_act": "silu",
    "glu_dim": 48,
    "dropout": 0.0,
}
CASES = {
    "laxtnn_alm_baseline": (
        {"n_rpe_layers": 6},
        {"use_decay": True, "gamma": 0.99, "rpe_layers": 6, "tno_type": "tno"},
    ),
    "laxtnn_alm_baseline_3lyrs": ({"n_rpe_layers": 3}, {"use_decay": True, "gamma": 0.99, "rpe_layers": 3}),
    "laxtnn_alm_tno_fd": (
        {"operator": "fd", "decay": "none", "n_rpe_layers": 6},
        {"rpe_layers": 6, "tno_type": "tno_fd"},
    ),
    "laxtnn_alm_tno_fd_3lyrs": ({"operator": "fd", "decay": "none", "n_rpe_layers": 3}, {"rpe_layers": 3}),
}
BLM_MODEL = {
    "operator": "ski",
    "causal": False,
    "ski_rank": 8,
    "ski_taps": 5,
    "norm_position": "post",
    "final_norm": False,
    "embed_norm": True,
    "mlm_head": True,
    "scale_embedding": False,
}
BLM_ARGS = {
    "arch": "ski_blm_inv_time",
    "_name": "laxtnn_blm",
    "encoder_embed_dim": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 1,
    "encoder_normalize_before": False,
    "layernorm_embedding": True,
    "no_scale_embedding": True,
    "tno_type": "skitno_inv_time",
    "rank": 8,
    "nk": 4,
    "use_decay": True,
    "gamma": 0.99,
    "glu_dim": 48,
    "glu_act": "silu",
    "dropout": 0.1,
}


@pytest.mark.parametrize("arch", sorted(CASES))
def test_laxtnn_alm_checkpoints_load_exactly(arch, tmp_path):
    model_changes, arch_args = CASES[arch]
    model = tiny_model(seed=7, **model_changes)
    path = write(fairseq_checkpoint(model, {**ALM, **arch_args, "arch": arch, "_name": "laxtnn_lm"}), tmp_path / "c.pt")
    loaded = tnn.model.load(path, dtype=torch.float64)
    assert loaded.config.operator == model.config.operator and loaded.config.decay == model.config.decay
    assert loaded.config.n_rpe_layers == model.config.n_rpe_layers
    tokens = random_tokens(2, 23)
    expected = model.float().double()(tokens)  # the checkpoint holds float32 weights
    assert relative_error(loaded(tokens), expected) <= 1e-12


def test_ski_blm_inv_time_encoder_loads_exactly(tmp_path):
    model = tiny_model(seed=8, **BLM_MODEL)
    path = write(fairseq_checkpoint(model, BLM_ARGS, encoder=True), tmp_path / "blm.pt")
    loaded = tnn.model.load(path, dtype=torch.float64)
    config = loaded.config
    assert (config.operator, config.causal, config.ski_rank, config.ski_taps) == ("ski", False, 8, 5)
    assert config.embed_norm and config.mlm_head and not config.final_norm and not config.scale_embedding
    tokens = random_tokens(2, 31)
    reference = model.float().double()
    assert relative_error(loaded(tokens), reference(tokens)) <= 1e-12
    assert relative_error(loaded.pooled_features(tokens), reference.pooled_features(tokens)) <= 1e-12


def _blm(tmp_path, **changes):
    checkpoint = fairseq_checkpoint(tiny_model(seed=8, **BLM_MODEL), BLM_ARGS, encoder=True)
    checkpoint["cfg"]["model"].update(changes.pop("args", {}))
    for key, value in changes.items():
        if value is None:
            del checkpoint["model"][key]
        else:
            checkpoint["model"][key] = value
    return write(checkpoint, tmp_path / "blm.pt")


def test_missing_ski_key_is_named(tmp_path):
    path = _blm(tmp_path, **{"encoder.sentence_encoder.layers.1.self_attn.gtu.toep.betas": None})
    with pytest.raises(ValueError, match=r"blm.pt.*missing key 'layers.1.gtu.tno.betas'"):
        tnn.model.load(path)


def test_cfg_rank_contradicting_tensors_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"rank/nk = 16/4 but the tensors give 8/5"):
        tnn.model.load(_blm(tmp_path, args={"rank": 16}))


@pytest.mark.parametrize("tno_type", ["skitno", "tno_fd_norpe"])
def test_other_ski_tnn_mixers_are_refused(tmp_path, tno_type):
    with pytest.raises(ValueError, match=rf"tno_type'\] = '{tno_type}' is not supported"):
        tnn.model.load(_blm(tmp_path, args={"tno_type": tno_type}))


def test_untied_mlm_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match="encoder.lm_head.weight"):
        tnn.model.load(_blm(tmp_path, **{"encoder.lm_head.weight": torch.zeros(97, 32)}))


def test_fd_checkpoint_with_a_decay_key_is_refused(tmp_path):
    model = tiny_model(seed=7, operator="fd", decay="none")
    checkpoint = fairseq_checkpoint(model, {**ALM, "rpe_layers": 2, "arch": "laxtnn_alm_tno_fd"})
    checkpoint["model"]["decoder.layers.0.self_attn.gtu.toep.gamma"] = torch.ones(1, 1, 96)
    with pytest.raises(ValueError, match="toep.gamma' is present"):
        tnn.model.load(write(checkpoint, tmp_path / "fd.pt"))
