"""megengine.random's edge cases the random fuzz family found: uniform's float32 rounding at
both bounds, and a shape Tensor as the size of a draw with Tensor parameters."""
import numpy as np
import pytest

import megengine as mge
import megengine.random as rand


class _Fixed:
    """A generator whose uniform draws are given float64 values (the bit generator is the real
    one's, for jit's bookkeeping)."""

    def __init__(self, gen, values):
        self.bit_generator, self.values = gen.bit_generator, values

    def uniform(self, low, high, size):
        return np.broadcast_to(np.asarray(self.values, np.float64), size).copy()


def _draw(monkeypatch, low, high, values):
    r = rand.RNG(seed=0)
    monkeypatch.setattr(r, "_gen", lambda gen=r._gen(): _Fixed(gen, values))
    return r.uniform(low=low, high=high, size=(len(values),)).numpy()


def test_uniform_rounds_each_draw_down_to_float32(monkeypatch):
    # a float32 value v must stand for the draws in [v, next(v)), so each step of the range
    # gets its exact share: 1 + 0.75 ulp is 1 (rounding to nearest gave 1 + ulp, and the top
    # step of U[0, high) got half a step more than its share)
    ulp = float(np.spacing(np.float32(1)))
    v = _draw(monkeypatch, 0.0, 2.0, [1 + 0.75 * ulp, 1 + 0.25 * ulp, 1 + ulp])
    np.testing.assert_array_equal(v, np.float32([1, 1, 1 + ulp]))


def test_uniform_never_falls_below_low(monkeypatch):
    # low = 0.7 is not a float32: float32(0.7) is below 0.7, so a draw at low rounded to it
    # fell out of [low, high); the smallest float32 >= low is the value there
    first = np.nextafter(np.float32(0.7), np.float32(1))
    assert float(np.float32(0.7)) < 0.7 <= float(first)
    v = _draw(monkeypatch, 0.7, 0.8, [0.7, 0.7 + 1e-12])
    assert (v.astype(np.float64) >= 0.7).all()
    np.testing.assert_array_equal(v, [first, first])


def test_uniform_with_bounds_closer_than_a_float32_step():
    # 1 and 1 + 1e-8 are the same float32: the old clamp to "the float32 below high" gave
    # 1 - 2**-24, below low; the only float32 value there is is low's
    v = rand.RNG(seed=3).uniform(low=1.0, high=1.0 + 1e-8, size=(50,)).numpy()
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v, np.ones(50, np.float32))


def test_uniform_statistics_unchanged_by_the_rounding():
    # the mean of U(-3, 5) over 200000 draws: within 6 standard errors (a seeded draw)
    v = rand.RNG(seed=11).uniform(low=-3.0, high=5.0, size=(200000,)).numpy()
    assert v.min() >= -3 and v.max() < 5
    assert abs(v.mean() - 1.0) < 6 * 8 / np.sqrt(12 * 200000)


@pytest.mark.parametrize("name, params", [
    ("gamma", (mge.tensor([1.0, 2.0]), mge.tensor([1.0, 3.0]))),
    ("beta", (mge.tensor([1.0, 2.0]), mge.tensor([1.0, 3.0]))),
    ("poisson", (mge.tensor([1.0, 2.0]),)),
    ("exponential", (mge.tensor([1.0, 2.0]),)),
])
def test_size_as_a_shape_tensor_with_tensor_parameters(name, params):
    # upstream: output shape = size + broadcast(parameters).shape; a shape Tensor as size used
    # to raise "the truth value of a tensor with 2 elements is ambiguous"
    out = getattr(rand.RNG(seed=0), name)(*params, size=mge.tensor([3, 4], dtype="int32"))
    assert out.shape == (3, 4, 2)
    out = getattr(rand.RNG(seed=0), name)(*params, size=0)  # int 0: no size, as upstream
    assert out.shape == (2,)
