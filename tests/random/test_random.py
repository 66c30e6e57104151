"""megengine.random: reproducibility after seed, moments of the distributions, permutations, RNG."""
import numpy as np
import pytest

import megengine as mge
import megengine.random as rand


def test_seed_makes_draws_reproducible_and_seeds_numpy():
    rand.seed(42)
    a = [rand.normal(size=(3,)), rand.uniform(size=(2, 2)), rand.permutation(6)]
    np_a = np.random.rand(3)
    rand.seed(42)
    b = [rand.normal(size=(3,)), rand.uniform(size=(2, 2)), rand.permutation(6)]
    np_b = np.random.rand(3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    np.testing.assert_array_equal(np_a, np_b)
    rand.seed(43)
    assert not np.array_equal(rand.normal(size=(3,)).numpy(), a[0].numpy())


def test_normal_moments_dtype_and_device():
    rand.seed(0)
    x = rand.normal(mean=2.0, std=3.0, size=(100000,))
    assert isinstance(x, mge.Tensor) and x.dtype == np.float32 and x.shape == (100000,)
    assert x.device == mge.Tensor([0.0]).device
    v = x.numpy()
    assert abs(v.mean() - 2.0) < 0.05 and abs(v.std() - 3.0) < 0.05


def test_uniform_moments_and_range():
    rand.seed(0)
    v = rand.uniform(low=-1.0, high=3.0, size=(100, 1000)).numpy()
    assert v.shape == (100, 1000) and v.dtype == np.float32
    assert v.min() >= -1.0 and v.max() < 3.0
    assert abs(v.mean() - 1.0) < 0.03 and abs(v.std() - 4 / np.sqrt(12)) < 0.03


def test_size_none_gives_one_element_as_upstream():
    assert rand.normal().shape == (1,) and rand.uniform().shape == (1,)
    assert rand.normal(size=4).shape == (4,)


def test_permutation_of_an_int_and_of_a_tensor():
    rand.seed(1)
    perm = rand.permutation(10)
    assert perm.dtype == np.int32 and sorted(perm.tolist()) == list(range(10))
    assert rand.permutation(5, dtype="float32").dtype == np.float32
    x = mge.tensor(np.arange(18).reshape(6, 3))
    y = rand.permutation(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert sorted(map(tuple, y.numpy())) == sorted(map(tuple, x.numpy()))  # rows kept whole
    np.testing.assert_array_equal(x.numpy(), np.arange(18).reshape(6, 3))  # x untouched
    rand.seed(1)
    first = [rand.permutation(10).tolist() for _ in range(5)]
    assert any(p != list(range(10)) for p in first)


def test_shuffle_in_place():
    x = mge.tensor(np.arange(20))
    address = x._data.__array_interface__["data"][0]
    rand.seed(5)
    rand.shuffle(x)
    assert sorted(x.tolist()) == list(range(20)) and x.tolist() != list(range(20))
    assert x._data.__array_interface__["data"][0] == address


def test_gamma_beta_poisson_moments_and_shapes():
    rand.seed(0)
    g = rand.gamma(shape=2.0, scale=3.0, size=(100000,)).numpy()
    assert abs(g.mean() - 6.0) < 0.1 and abs(g.var() - 18.0) < 0.6
    b = rand.beta(alpha=2.0, beta=3.0, size=(100000,)).numpy()
    assert abs(b.mean() - 0.4) < 0.01
    p = rand.poisson(lam=4.0, size=(100000,)).numpy()
    assert p.dtype == np.float32 and abs(p.mean() - 4.0) < 0.05
    shape = mge.Tensor([[1.0], [10.0]])
    scale = mge.Tensor([1.0, 5.0])
    assert rand.gamma(shape, scale).shape == (2, 2)
    assert rand.gamma(shape, scale, size=(3,)).shape == (3, 2, 2)


def test_rng_objects_have_their_own_stream():
    r1, r2 = rand.RNG(seed=7), rand.RNG(seed=7)
    np.testing.assert_array_equal(r1.uniform(size=(4,)).numpy(), r2.uniform(size=(4,)).numpy())
    rand.seed(0)
    before = rand.normal(size=(3,)).numpy()
    rand.seed(0)
    rand.RNG(seed=9).normal(size=(3,))  # does not consume the global stream
    np.testing.assert_array_equal(rand.normal(size=(3,)).numpy(), before)
    assert rand.RNG(seed=1, device="cpu0").normal(size=(2,)).device == "cpu0"


@pytest.mark.parametrize("call, error, match", [
    (lambda: rand.seed(-1), ValueError, "seed"),
    (lambda: rand.seed(1.5), ValueError, "seed"),
    (lambda: rand.uniform(low=1.0, high=0.0), ValueError, "low < high"),
    (lambda: rand.normal(std=-1.0), ValueError, "std"),
    (lambda: rand.permutation(-3), ValueError, "permutation"),
    (lambda: rand.permutation(3, dtype="int64"), TypeError, "dtype"),
    (lambda: rand.gamma(shape=0.0), ValueError, "shape"),
    (lambda: rand.normal(size="ab"), TypeError, "size"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
