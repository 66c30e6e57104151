"""Tests for megengine/module/lrn.py: LocalResponseNorm against upstream's documented values and
torch.nn.LocalResponseNorm (whose alpha is divided by the window size, so it gets alpha * size)."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from tests.oracle import check_against_torch


def test_upstream_documented_example():
    inp = mge.tensor(np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5))
    expected = np.array([[0., 0.999925, 1.9994003, 2.9979765, 3.9952066],
                         [4.9906454, 5.983851, 6.974385, 7.961814, 8.945709],
                         [9.925651, 10.90122, 11.872011, 12.837625, 13.7976675],
                         [14.751757, 15.699524, 16.640602, 17.574642, 18.501305],
                         [19.420258, 20.331186, 21.233786, 22.127764, 23.012836]], np.float32)
    out = M.LocalResponseNorm(kernel_size=3, k=1.0, alpha=1e-4, beta=0.75)(inp)
    np.testing.assert_allclose(out.numpy()[0, 0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size, k, alpha, beta, shape", [
    (5, 2.0, 1e-2, 0.75, (2, 7, 3, 3)),
    (3, 1.0, 0.5, 0.5, (1, 4, 5)),
    (1, 0.5, 0.3, 1.0, (2, 3, 2, 2)),
])
def test_matches_torch_values_and_gradients(size, k, alpha, beta, shape):
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    check_against_torch(
        M.LocalResponseNorm(kernel_size=size, k=k, alpha=alpha, beta=beta),
        torch.nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k),
        x, rtol=1e-5, atol=1e-6,
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        M.LocalResponseNorm(kernel_size=0)
    with pytest.raises(ValueError, match="odd"):  # upstream asserts an odd window
        M.LocalResponseNorm(kernel_size=2)
    with pytest.raises(ValueError, match=r"\(N, C, \.\.\.\)"):
        M.LocalResponseNorm()(mge.tensor([1.0, 2.0]))
