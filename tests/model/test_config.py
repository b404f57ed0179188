import json

import pytest

from tnn.model.config import SsmConfig, TnnConfig


def test_round_trip_through_json(tmp_path):
    config = TnnConfig(vocab_size=100, d_model=64, ssm=SsmConfig(method="etsc", length=16, modes=8))
    config.save(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "tnn" and data["format_version"] == 1
    assert TnnConfig.load(tmp_path / "config.json") == config


def test_defaults_are_the_papers_main_lm():
    config = TnnConfig(vocab_size=50264)
    assert (config.d_model, config.n_layers, config.d_inner, config.d_rpe, config.n_rpe_layers) == (512, 7, 1536, 64, 6)
    assert (config.decay, config.gamma, config.norm_position, config.causal) == ("fixed", 0.99, "pre", True)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"d_model": 0}, "d_model"),
        ({"decay": "sometimes"}, "decay"),
        ({"gamma": 1.5}, "gamma"),
        ({"rpe_act": "swish"}, "rpe_act"),
        ({"norm_position": "middle"}, "norm_position"),
        ({"padding_idx": 500}, "padding_idx"),
        ({"n_layers": 2.5}, "n_layers"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        TnnConfig(vocab_size=100, **changes)


def test_unknown_and_missing_keys_are_rejected():
    data = TnnConfig(vocab_size=10).to_dict()
    with pytest.raises(ValueError, match="unknown keys.*hidden_size"):
        TnnConfig.from_dict({**data, "hidden_size": 3})
    del data["vocab_size"]
    with pytest.raises(ValueError, match="vocab_size"):
        TnnConfig.from_dict(data)
    with pytest.raises(ValueError, match="model_type"):
        TnnConfig.from_dict({**TnnConfig(vocab_size=10).to_dict(), "model_type": "gpt2"})


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        TnnConfig.load(tmp_path / "config.json")
