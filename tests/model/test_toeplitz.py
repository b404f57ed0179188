import pytest
import torch

from tnn.model.toeplitz import toeplitz_dense, toeplitz_matmul_dense, toeplitz_matmul_fft


@pytest.mark.parametrize("length", [1, 2, 37, 64])
@pytest.mark.parametrize("causal", [True, False])
def test_fft_matches_dense_in_float64(length, causal):
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(3, length, 5, generator=gen, dtype=torch.float64)
    pos = torch.randn(length, 5, generator=gen, dtype=torch.float64)
    neg = None if causal else torch.randn(length - 1, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(toeplitz_matmul_fft(x, pos, neg), toeplitz_matmul_dense(x, pos, neg), rtol=0, atol=1e-12)


def test_dense_matrix_layout():
    pos = torch.tensor([[1.0], [2.0], [3.0]])
    neg = torch.tensor([[-1.0], [-2.0]])  # lags -1, -2
    expected = torch.tensor([[1.0, -1.0, -2.0], [2.0, 1.0, -1.0], [3.0, 2.0, 1.0]])
    assert torch.equal(toeplitz_dense(pos, neg)[0], expected)
    assert torch.equal(toeplitz_dense(pos)[0], torch.tril(expected))


def test_low_precision_inputs_are_transformed_in_float32():
    # ratio rule: the bf16 path must be no worse than twice a naive bf16 dense product (+ bf16 output rounding)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 300, 4, generator=gen, dtype=torch.float64)
    pos = torch.randn(300, 4, generator=gen, dtype=torch.float64) * 0.99 ** torch.arange(300.0)[:, None]
    exact = toeplitz_matmul_dense(x, pos)
    fast = toeplitz_matmul_fft(x.bfloat16(), pos.bfloat16())
    naive = toeplitz_matmul_dense(x.bfloat16(), pos.bfloat16())
    assert fast.dtype == torch.bfloat16
    assert (fast.double() - exact).abs().max() <= 2 * (naive.double() - exact).abs().max() + 1e-2
