"""megengine.module.init.uniform_ keeps its values in [a, b) in the tensor's own dtype (the
random fuzz family found b itself in float16 tensors)."""
import numpy as np

import megengine as mge
import megengine.module.init as init
from megengine.core import _rng


class _Constant:
    """A generator whose uniform draws are all ``value``."""

    def __init__(self, value):
        self.value = value

    def uniform(self, a, b, size):
        return np.full(size, self.value)


def test_uniform_never_writes_b_into_a_float16_tensor(monkeypatch):
    # a float64 draw within half a float16 step below 1 rounded to 1.0 (about one draw in
    # 2**12 of U(0, 1)); rounded down it is the largest float16 below 1
    just_below = 1 - 2.0 ** -13
    monkeypatch.setattr(_rng, "generator", _Constant(just_below))
    t = mge.tensor(np.zeros((3,), np.float16))
    init.uniform_(t, 0.0, 1.0)
    v = t.numpy()
    assert v.dtype == np.float16
    np.testing.assert_array_equal(v, np.full(3, np.nextafter(np.float16(1), np.float16(0))))


def test_uniform_bounds_and_mean_in_float16_and_float32():
    mge.random.seed(7)
    for dtype in ("float16", "float32"):
        t = mge.tensor(np.zeros((200, 100), dtype))
        init.uniform_(t, -2.0, 0.5)
        v = t.numpy().astype(np.float64)
        assert t.dtype == np.dtype(dtype) and v.min() >= -2.0 and v.max() < 0.5
        # mean of U(-2, 0.5): within 6 standard errors (plus float16's step of 2**-10)
        assert abs(v.mean() + 0.75) < 6 * 2.5 / np.sqrt(12 * v.size) + 2.0 ** -10


def test_uniform_of_an_integer_tensor_still_truncates():
    mge.random.seed(0)
    t = mge.tensor(np.zeros((50,), np.int32))
    init.uniform_(t, 0, 5)
    v = t.numpy()
    assert v.dtype == np.int32 and v.min() >= 0 and v.max() <= 4
