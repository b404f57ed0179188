"""FD-TNN and SKI-TNN operators against the original code's outputs (../shared/golden, jonathanmei/ski-tnn)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tnn.model.fd_tno import FdTno
from tnn.model.ski_tno import SkiTno

from .helpers import relative_error

FLOAT64_TOLERANCE = 1e-9
FD_GRID_TOLERANCE = 1e-10  # golden/README: against the output made with the same grid precision
FLOAT32_TOLERANCE = 1e-4


def _case(golden, name):
    folder = golden / name
    case = json.loads((folder / "case.json").read_text())
    return (
        case["constructor_args"],
        load_file(folder / "module.safetensors"),
        load_file(folder / "inputs.safetensors")["x"],
        load_file(folder / "expected.safetensors"),
    )


@pytest.mark.parametrize(("grid_dtype", "expected_key"), [(torch.float64, "y_grid_fp64"), (torch.float32, "y")])
def test_fd_causal_golden_float64(golden, grid_dtype, expected_key):
    args, state, x, expected = _case(golden, "fd_tno_causal")
    fd = FdTno.from_original(args, state, grid_dtype=grid_dtype)
    y = fd(x, dim=-2)  # (B, h, n, e), as the original is called
    assert y.shape == x.shape and y.dtype == torch.float64
    assert relative_error(y, expected[expected_key]) <= FD_GRID_TOLERANCE
    assert relative_error(y, expected["y"]) <= FLOAT64_TOLERANCE or grid_dtype == torch.float64


def test_fd_causal_golden_intermediates(golden):
    args, state, x, expected = _case(golden, "fd_tno_causal")
    fd = FdTno.from_original(args, state, grid_dtype=torch.float32)  # the intermediates come from the default run
    response = fd.frequency_response(64, torch.float64)  # (33, h*e), heads channel-major
    per_head = response.T.reshape(2, 8, 33).permute(0, 2, 1)  # -> (h, 33, e) as stored
    assert relative_error(per_head.real, expected["freq_response.real"]) <= FD_GRID_TOLERANCE
    assert relative_error(per_head.imag, expected["freq_response.imag"]) <= FD_GRID_TOLERANCE
    kernel = fd.time_kernel(64, torch.float64).T.reshape(2, 8, 64).permute(0, 2, 1)
    assert relative_error(kernel, expected["time_kernel"]) <= FD_GRID_TOLERANCE
    coef, _ = fd.coefficients(29, torch.float64)  # (n, h*e)
    dense = expected["operator_dense"]  # (h, e, n, n), M[i, 0] = a_i
    assert relative_error(coef.T.reshape(2, 8, 29), dense[..., :, 0]) <= FD_GRID_TOLERANCE


def test_fd_causal_golden_float32(golden):
    args, state, x, expected = _case(golden, "fd_tno_causal")
    fd = FdTno.from_original(args, state).float()
    y = fd(x.float(), dim=-2)
    assert y.dtype == torch.float32
    assert relative_error(y, expected["y"]) <= FLOAT32_TOLERANCE


def test_ski_bidirectional_golden_float64(golden):
    args, state, x, expected = _case(golden, "ski_tno_bidirectional")
    ski = SkiTno.from_original(args, state)
    y = ski(x)  # (B, n, h*e)
    assert relative_error(y, expected["y"]) <= FLOAT64_TOLERANCE
    column, w_lo, w_hi = ski.interpolation(101, torch.float64)
    w = torch.zeros(101, 32, dtype=torch.float64)
    w[torch.arange(101), column] = w_lo
    w[torch.arange(101), column + 1] += w_hi
    assert relative_error(w, expected["W"]) <= FLOAT64_TOLERANCE
    lags = torch.arange(32, dtype=torch.float64) * 100 / 31
    assert relative_error(ski.warped_kernel(lags), expected["inducing_kernel_nonneg"]) <= FLOAT64_TOLERANCE
    assert relative_error(ski.warped_kernel(-lags[1:].flip(0)), expected["inducing_kernel_neg"]) <= FLOAT64_TOLERANCE


def test_ski_bidirectional_golden_float32(golden):
    args, state, x, expected = _case(golden, "ski_tno_bidirectional")
    ski = SkiTno.from_original(args, state).float()
    y = ski(x.float())
    assert y.dtype == torch.float32
    assert relative_error(y, expected["y"]) <= FLOAT32_TOLERANCE


def test_fd_grid_precision_matters(golden):
    """The two grids differ by ~5e-9: the tolerance above can tell them apart (the test is not vacuous)."""
    args, state, x, expected = _case(golden, "fd_tno_causal")
    y = FdTno.from_original(args, state)(x, dim=-2)
    assert relative_error(y, expected["y"]) > FD_GRID_TOLERANCE


def test_from_original_refuses_unknown_keys(golden):
    args, state, _, _ = _case(golden, "fd_tno_causal")
    with pytest.raises(ValueError, match="unexpected key 'extra'"):
        FdTno.from_original(args, {**state, "extra": torch.zeros(1)})
