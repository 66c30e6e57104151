"""Dropout's random mask (F.nn.dropout, M.Dropout): keep rate, 1/(1-p) scaling and gradient,
including a drop probability whose scale overflows float16."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.random as rand
from megengine.autodiff import GradManager


def test_float16_dropout_with_an_overflowing_scale_drops_to_zero_not_nan():
    # 1 / (1 - p) = 1e5 is beyond float16 (max 65504): kept values overflow to inf as their
    # float16 product does, but dropped ones are 0 (0 * inf made them NaN, and their gradient)
    rand.seed(1)
    x = mge.tensor(np.ones(2000, np.float16))
    gm = GradManager().attach([x])
    with gm:
        y = F.nn.dropout(x, 0.99999)
        gm.backward(y.sum())
    v, g = y.numpy(), x.grad.numpy()
    assert not np.isnan(v).any() and not np.isnan(g).any()
    dropped = v == 0
    assert dropped.sum() >= 1990  # ~1999.98 expected
    assert np.isinf(v[~dropped]).all() and (g[dropped] == 0).all()


def test_keep_rate_and_scaling_over_many_elements():
    # Bernstein-style bound at a false-alarm rate ~1e-9 for the kept count (seeded, so fixed)
    rand.seed(3)
    for p in (0.1, 0.5, 0.9):
        x = mge.tensor(np.full((400, 250), 2.0, np.float32))
        m = M.Dropout(p)
        y = m(x).numpy()
        kept = y != 0
        n = kept.size
        t = 7 + np.sqrt(49 + 2 * n * p * (1 - p) * 21)
        assert abs(kept.sum() - n * (1 - p)) < t
        np.testing.assert_allclose(y[kept], 2.0 / np.float32(1 - p), rtol=1e-6)
        m.eval()
        np.testing.assert_array_equal(m(x).numpy(), x.numpy())
