"""TnnLM behaviour: an independent dense float64 reference for every supported variant, causality, batch
independence, single-token inputs and the full-size parameter count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tnn.model import TnnConfig, TnnLM

from .helpers import relative_error, tiny_model

ACTS = {
    "none": lambda x: x,
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "elu": F.elu,
    "sigmoid": torch.sigmoid,
    "1+elu": lambda x: 1 + F.elu(x),
    "exp": lambda x: torch.exp(x - x.max()),  # one head: the max runs over all channels of a lag
}


def reference_logits(model: TnnLM, tokens: torch.Tensor) -> torch.Tensor:
    """The maths of spec §2 written out with explicit matrices, one lag at a time. Shares only weights."""
    c = model.config
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    act = ACTS

    def srms(x):
        return x / (x.norm(dim=-1, keepdim=True) * x.shape[-1] ** -0.5 + 1e-8)

    def linear(x, name):
        return x @ p[name + ".weight"].T + p[name + ".bias"]

    def rpe(prefix, lag):
        z = linear(torch.tensor([[float(lag)]], dtype=torch.float64), prefix + "pos_proj")
        for j in range(c.n_rpe_layers):
            h = linear(act[c.rpe_act](srms(z)), f"{prefix}layers.{j}.linear")
            z = h + z if c.rpe_residual else h
        return linear(act[c.rpe_act](srms(z)), prefix + "out.linear")[0]  # (D,)

    def decay(prefix):
        if c.decay == "fixed":
            return p[prefix + "gamma"]
        if c.decay == "learned":
            return c.gamma + (1 - c.gamma) * torch.sigmoid(p[prefix + "gamma"])
        return torch.ones(c.d_inner, dtype=torch.float64)

    length = tokens.shape[1]
    x = p["embed.weight"][tokens] * (math.sqrt(c.d_model) if c.scale_embedding else 1.0)
    for i in range(c.n_layers):
        prefix = f"layers.{i}.gtu.tno.rpe."
        gamma = decay(f"layers.{i}.gtu.tno.")
        dense = torch.zeros(c.d_inner, length, length, dtype=torch.float64)
        for row in range(length):
            for col in range(length):
                lag = row - col
                if lag < 0 and c.causal:
                    continue
                dense[:, row, col] = act[c.kernel_act](gamma ** abs(lag) * rpe(prefix, lag))

        def gtu(h, i=i, dense=dense):
            u = act[c.gtu_act](linear(h, f"layers.{i}.gtu.u_proj"))
            v = act[c.gtu_act](linear(h, f"layers.{i}.gtu.v_proj"))
            o = torch.einsum("cij,bjc->bic", dense, v)
            if c.normalize:
                o = o / dense.sum(-1).T
            y = u * o
            return linear(srms(y) if c.gtu_norm else y, f"layers.{i}.gtu.out_proj")

        def glu(h, i=i):
            return linear(
                act[c.glu_act](linear(h, f"layers.{i}.glu.l1")) * linear(h, f"layers.{i}.glu.l2"), f"layers.{i}.glu.l3"
            )

        if c.norm_position == "pre":
            x = x + gtu(srms(x))
            x = x + glu(srms(x))
        else:
            x = srms(x + gtu(x))
            x = srms(x + glu(x))
    if c.final_norm:
        x = F.layer_norm(x, (c.d_model,), p["final_norm.weight"], p["final_norm.bias"], 1e-5)
    return x @ p["embed.weight"].T


VARIANTS = {
    "main (pre, fixed decay)": {},
    "post-norm (tnn_v2_decay_99_post)": {"norm_position": "post", "final_norm": False},
    "no decay (tnn_v2_no_decay)": {"decay": "none"},
    "learned decay (use_multi_decay)": {"decay": "learned", "gamma": 0.9},
    "rpe_layers 1 (tnn_v2_decay_99_pre_l1)": {"n_rpe_layers": 1},
    "12 layers (tnn_v2_decay_99_pre_l12)": {"n_layers": 12, "n_rpe_layers": 1},
    "use_norm (tnn_v2_decay_99_pre_usenorm)": {"gtu_norm": True},
    "kernel act silu": {"kernel_act": "silu"},
    "kernel act exp": {"kernel_act": "exp"},
    "rpe residual, silu rpe": {"rpe_residual": True, "rpe_act": "silu"},
    "bidirectional": {"causal": False},
    "normalize": {"normalize": True},
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_fft_model_matches_dense_reference(overrides):
    model = tiny_model(seed=3, **overrides)
    tokens = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))
    assert relative_error(model(tokens), reference_logits(model, tokens)) <= 1e-12


@pytest.mark.parametrize("length", [1, 2])
def test_short_sequences_work(length):
    # the original crashes at length 1 (no lags to encode); only a_0 is used there
    model = tiny_model()
    tokens = torch.randint(0, 97, (3, length), generator=torch.Generator().manual_seed(2))
    assert relative_error(model(tokens), reference_logits(model, tokens)) <= 1e-12


def test_causality_perturbing_a_token_leaves_earlier_outputs_unchanged():
    model = tiny_model(dtype=torch.float32)
    tokens = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(4))
    changed = tokens.clone()
    changed[0, 25] = (tokens[0, 25] + 1) % 97
    before, after = model(tokens), model(changed)
    # FFT convolution in float32 is not bit-causal (spec pitfall 8): earlier logits move by round-off only
    assert (before[:, :25] - after[:, :25]).abs().max() <= 1e-5 * before.abs().max()
    assert (before[:, 25:] - after[:, 25:]).abs().max() > 1e-2


def test_batch_rows_are_independent():
    model = tiny_model(dtype=torch.float32)
    tokens = torch.randint(0, 97, (4, 23), generator=torch.Generator().manual_seed(5))
    batched = model(tokens)
    for row in range(4):
        torch.testing.assert_close(batched[row : row + 1], model(tokens[row : row + 1]), rtol=1e-5, atol=1e-5)


def test_bf16_weights_give_close_logits():
    model64 = tiny_model()
    tokens = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(6))
    reference = model64(tokens)
    logits = tiny_model(dtype=torch.bfloat16)(tokens)
    assert logits.dtype == torch.bfloat16
    assert relative_error(logits, reference) < 5e-2  # bf16 has 8 mantissa bits


def test_bad_tokens_get_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(TypeError, match="int64"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="2 dims"):
        model(torch.tensor([1, 2]))


def test_full_size_parameter_count_matches_the_paper():
    # spec §4.2: tnn_v2_decay_99_pre with V = 50264 has 48,677,376 parameters, 48,666,624 trainable
    with torch.device("meta"):
        model = TnnLM(TnnConfig(vocab_size=50264))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == (48_677_376, 48_666_624)
