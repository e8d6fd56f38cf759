"""The matmul kernel: exact, order-defined sums, whatever the row count, shape or threads."""
import numba
import numpy as np
import pytest

from refimpl import kernels


def sequential_matmul(x, w):
    """float32 sums in increasing input index, mul then add: the order the kernel promises."""
    out = np.zeros((x.shape[0], w.shape[0]), dtype=np.float32)
    for i in range(x.shape[1]):
        out += x[:, i:i + 1] * w[:, i][None, :]
    return out


def run_matmul(x, w):
    packed = kernels.pack_linear(w)
    out = np.empty((x.shape[0], kernels.padded_width(w.shape[0])), np.float32)
    kernels.matmul(np.ascontiguousarray(x), packed, out)
    return out[:, :w.shape[0]]


@pytest.mark.parametrize("n_out,n_in", [(200, 288), (64, 64), (172, 37), (5, 1), (130, 172)])
def test_every_row_count_gives_the_same_bits(n_out, n_in):
    rng = np.random.default_rng(n_out * 1000 + n_in)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    x = rng.standard_normal((70, n_in), dtype=np.float32)
    full = run_matmul(x, w)
    assert np.array_equal(full, sequential_matmul(x, w))
    for n in range(1, 71):
        assert np.array_equal(run_matmul(x[:n], w), full[:n]), f"n={n}"
    for r in range(0, 70, 7):  # a row alone equals the same row in a batch
        assert np.array_equal(run_matmul(x[r:r + 1], w)[0], full[r])


def test_matmul_is_the_same_with_one_and_two_threads():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3000, 96), dtype=np.float32)
    x = rng.standard_normal((9, 96), dtype=np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run_matmul(x, w)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run_matmul(x, w)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, two)


def test_sequential_reference_detects_a_reordered_sum():
    """Negative control: summing in another order gives other bits, so the test above can fail."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 288), dtype=np.float32)
    x = rng.standard_normal((4, 288), dtype=np.float32)
    assert not np.array_equal(sequential_matmul(x, w), sequential_matmul(x[:, ::-1], w[:, ::-1]))


def test_rmsnorm_matches_definition():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 33), dtype=np.float32)
    w = rng.standard_normal(33, dtype=np.float32)
    out = np.empty_like(x)
    kernels.rmsnorm(x, w, np.float32(1e-5), out)
    expected = w * x / np.sqrt((x.astype(np.float64) ** 2).mean(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
