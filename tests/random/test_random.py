"""megengine.random: reproducibility after seed, moments of the distributions, permutations, RNG."""
import numpy as np
import pytest

import megengine as mge
import megengine.device as mge_device
import megengine.random as rand
from devices import address, host, requires_cuda


def test_seed_makes_draws_reproducible_and_leaves_numpy_alone():
    # as upstream's seed, which sets megengine's own generator only (earlier versions of this
    # fork also reseeded np.random)
    np.random.seed(1)
    rand.seed(42)
    a = [rand.normal(size=(3,)), rand.uniform(size=(2, 2)), rand.permutation(6)]
    np_a = np.random.rand(3)
    rand.seed(42)
    b = [rand.normal(size=(3,)), rand.uniform(size=(2, 2)), rand.permutation(6)]
    np_b = np.random.rand(3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    np.random.seed(1)
    np.testing.assert_array_equal(np.concatenate([np_a, np_b]), np.random.rand(6))
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


def test_uniform_never_returns_high_after_rounding_to_float32(monkeypatch):
    # numpy's float64 draws just below 1 round to 1.0 in float32; upstream's U[low, high)
    # excludes high (an Exponential sample -log1p(-u) was inf about once in 33M draws, which
    # failed upstream's test_exponential about one run in 30)
    r = rand.RNG(seed=0)
    gen = r._gen()
    just_below = {1.0: np.nextafter(1.0, 0.0), 3.0: np.nextafter(3.0, 0.0)}

    class Edge:  # the generator, whose uniform draws the largest float64 below high
        bit_generator = gen.bit_generator

        def uniform(self, low, high, size):
            return np.full(size, just_below[high])

    monkeypatch.setattr(r, "_gen", lambda: Edge())
    for high in (1.0, 3.0):
        v = r.uniform(low=0.0, high=high, size=(4,)).numpy()
        assert v.dtype == np.float32 and (v < high).all()
        np.testing.assert_array_equal(v, np.nextafter(np.float32(high), np.float32(0)))
    from megengine.distributions.exponential import Exponential

    monkeypatch.setattr(rand.rng._core_rng, "generator", Edge())
    assert np.isfinite(Exponential(2.0).sample((3,)).numpy()).all()


def test_size_none_gives_one_element_as_upstream():
    assert rand.normal().shape == (1,) and rand.uniform().shape == (1,)
    assert rand.normal(size=4).shape == (4,)


def test_scalar_parameters_without_size_give_one_element_as_upstream():
    # upstream 1.13 measured: gamma(2.0), beta(2, 3), poisson(2.0), gamma(mge.tensor(2.0)) and
    # gamma(2.0, size=()) are all shaped (1,), as normal() and uniform() are (earlier versions
    # of this fork gave 0-d draws)
    assert rand.gamma(2.0).shape == (1,) and rand.beta(2.0, 3.0).shape == (1,)
    assert rand.poisson(2.0).shape == (1,) and rand.exponential(2.0).shape == (1,)
    assert rand.gamma(mge.tensor(2.0), mge.tensor(1.0)).shape == (1,)
    assert rand.gamma(2.0, size=()).shape == (1,) and rand.poisson(3.0, size=0).shape == (1,)
    assert rand.gamma(2.0, size=(2, 3)).shape == (2, 3)


def test_whole_float_sizes_are_read_as_ints_as_upstream():
    # upstream 1.13 measured: size=(2.0, 3) draws (2, 3) for uniform, normal, gamma, beta and
    # poisson (a size computed as n / 2); earlier versions of this fork refused it. A fraction
    # is refused (upstream truncated it silently)
    assert rand.uniform(size=(2.0, 3)).shape == (2, 3)
    assert rand.normal(size=[np.float32(2), 3]).shape == (2, 3)
    assert rand.gamma(2.0, size=(2.0, 3)).shape == (2, 3)
    assert rand.beta(2.0, 3.0, size=(2.0, 3)).shape == (2, 3)
    assert rand.poisson(2.0, size=(2.0, 3)).shape == (2, 3)
    with pytest.raises(TypeError, match="size"):
        rand.uniform(size=(2.5, 3))


def test_numpy_array_sizes_are_read_as_upstream():
    # upstream 1.13 measured: size=np.array(2) draws (2,), np.array([2, 3]) (2, 3); a 2-d array
    # is refused (upstream: ValueError "ndim != 1 or 0")
    assert rand.uniform(size=np.array(2)).shape == (2,)
    assert rand.normal(size=np.array(3, np.int64)).shape == (3,)
    assert rand.uniform(size=np.array([2, 3])).shape == (2, 3)
    with pytest.raises(TypeError, match="size"):
        rand.uniform(size=np.array([[2, 3]]))


def test_seeds_beyond_32_bits_are_accepted_as_upstream():
    # upstream's seed is a uint64: programs seed with int(time.time() * 1000) (upstream 1.13
    # measured: seed(2**32) and seed(2**40) draw; earlier versions of this fork refused them)
    for big in (2**32, 2**40, 2**64 - 1):
        rand.seed(big)
        a = rand.uniform(size=(4,)).numpy()
        rand.seed(big)
        np.testing.assert_array_equal(rand.uniform(size=(4,)).numpy(), a)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        rand.seed(2**64)
    # upstream 1.13 measured: TypeError for 2**64 and 1.5, ValueError for -1; AssertionError for
    # a negative permutation size
    for bad in (2**64, 1.5, -1):
        with pytest.raises(TypeError, match="seed: expected an int"):
            rand.seed(bad)
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match="permutation: n must be an int >= 0"):
            rand.permutation(-1)


def test_permutation_and_shuffle_pass_gradients_back_to_the_rows_they_took():
    # upstream 1.13 measured: x = 10 * [[0, 1], [2, 3], [4, 5]], y = permutation(x) = [[0, 10],
    # [40, 50], [20, 30]], loss (y * w).sum() with w = [[1, 2], [3, 4], [5, 6]] gives x.grad
    # [[1, 2], [5, 6], [3, 4]]: row i of w goes back to the row y took; shuffle of y = x * 1
    # alike (earlier versions of this fork gave no gradient)
    from megengine.autodiff import GradManager

    x = mge.Parameter(np.arange(6, dtype="float32").reshape(3, 2) * 10)
    w = np.arange(6, dtype="float32").reshape(3, 2) + 1
    gm = GradManager().attach([x])
    for draw in ("permutation", "shuffle"):
        x.grad = None
        with gm:
            if draw == "permutation":
                y = rand.permutation(x * 1)
            else:
                y = x * 1
                rand.shuffle(y)
            gm.backward((y * mge.tensor(w)).sum())
        rows = (y.numpy()[:, 0] / 20).astype(int)  # the row of x each row of y took
        expected = np.empty_like(w)
        expected[rows] = w
        np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_size_given_as_a_tensor():
    # the detection programs' sample_labels draw `uniform(size=mask.sum())`: a 0-d count
    mask = mge.tensor(np.array([1, 0, 1, 1, 0], dtype=bool))
    assert rand.uniform(size=mask.sum()).shape == (3,)
    assert rand.normal(size=mge.tensor([2, 3])).shape == (2, 3)
    with pytest.raises(TypeError, match="integers"):
        rand.uniform(size=mge.tensor(2.0))


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
    before = address(x)
    rand.seed(5)
    rand.shuffle(x)
    assert sorted(x.tolist()) == list(range(20)) and x.tolist() != list(range(20))
    assert address(x) == before


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
    for bad in (-1, 1.5, "x"):  # upstream 1.13: pybind's TypeError for each (measured)
        with pytest.raises(TypeError, match="RNG: seed must be a non-negative int or None"):
            rand.RNG(seed=bad)


@pytest.mark.parametrize("call, error, match", [
    (lambda: rand.seed(-1), ValueError, "seed"),
    (lambda: rand.seed(2**64), ValueError, "seed"),
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


# ----- exponential and multinomial (upstream 1.13), checked against hand-computed moments -----
def test_exponential_moments_shapes_and_seed():
    rand.seed(3)
    x = rand.exponential(rate=4.0, size=(200000,))
    assert x.dtype == np.float32 and x.shape == (200000,)
    v = x.numpy().astype(np.float64)
    assert v.min() >= 0
    # mean 1/rate = 0.25, variance 1/rate^2: the standard error of the mean is 0.25/sqrt(2e5)
    # = 5.6e-4, so 3e-3 is over 5 sigma; a rate-as-scale mix-up would give mean 4
    assert abs(v.mean() - 0.25) < 3e-3 and abs(v.std() - 0.25) < 3e-3
    # P(X > 1/rate) = e^-1 for an exponential (not for e.g. a half-normal of that mean)
    assert abs((v > 0.25).mean() - np.exp(-1)) < 5e-3
    rates = mge.tensor([[1.0], [10.0]])
    y = rand.exponential(rate=rates, size=(3000, 2))
    assert y.shape == (3000, 2, 2, 1)
    means = y.numpy().reshape(-1, 2).mean(axis=0)
    np.testing.assert_allclose(means, [1.0, 0.1], rtol=0.05)
    assert rand.exponential(size=5).shape == (5,)
    rand.seed(11)
    a = rand.exponential(2.0, size=(4,)).numpy()
    rand.seed(11)
    np.testing.assert_array_equal(a, rand.exponential(2.0, size=(4,)).numpy())
    with pytest.raises(ValueError, match="rate must be > 0"):
        rand.exponential(rate=0.0)


def test_multinomial_with_replacement_frequencies():
    rand.seed(5)
    w = np.array([[1.0, 0.0, 3.0, 4.0], [5.0, 1.0, 1.0, 1.0]], np.float32)
    out = rand.multinomial(mge.tensor(w), 40000, replacement=True)
    assert out.dtype == np.int32 and out.shape == (2, 40000)
    idx = out.numpy()
    assert not np.any(idx[0] == 1)  # a zero weight is never drawn
    for row in range(2):
        freq = np.bincount(idx[row], minlength=4) / idx.shape[1]
        # standard error <= 0.0025 at 40000 draws; 0.012 is ~5 sigma
        np.testing.assert_allclose(freq, w[row] / w[row].sum(), atol=0.012)
    one_d = rand.multinomial(mge.tensor([0.0, 2.0]), 7, replacement=True)
    assert one_d.shape == (7,) and one_d.numpy().tolist() == [1] * 7


def test_multinomial_without_replacement_follows_sequential_draws():
    rand.seed(6)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    rows = 20000
    idx = rand.multinomial(mge.tensor(np.tile(p * 10, (rows, 1))), 2).numpy()
    assert idx.shape == (rows, 2) and np.all(idx[:, 0] != idx[:, 1])
    first = np.bincount(idx[:, 0], minlength=4) / rows
    # second draw: P(j) = sum_{i != j} p_i * p_j / (1 - p_i), computed by hand
    second_expected = np.array([sum(p[i] * p[j] / (1 - p[i]) for i in range(4) if i != j)
                                for j in range(4)])
    second = np.bincount(idx[:, 1], minlength=4) / rows
    np.testing.assert_allclose(first, p, atol=0.015)
    np.testing.assert_allclose(second, second_expected, atol=0.015)
    # drawing every category is a permutation of them
    full = rand.multinomial(mge.tensor([1.0, 1.0, 1.0]), 3).numpy()
    assert sorted(full.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("call, error, match", [
    (lambda: rand.multinomial(mge.tensor([1.0, 0.0]), 2), ValueError, "distinct"),
    (lambda: rand.multinomial(mge.tensor([1.0, -1.0]), 1), ValueError, ">= 0"),
    (lambda: rand.multinomial(mge.tensor([0.0, 0.0]), 1, True), ValueError, "weight > 0"),
    (lambda: rand.multinomial(mge.tensor(np.ones((2, 2, 2))), 1), ValueError, "1-d or 2-d"),
    (lambda: rand.multinomial(mge.tensor([1.0]), 0), ValueError, "num_samples"),
    (lambda: rand.multinomial([0.5, 0.5], 1), TypeError, "Tensor"),
])
def test_multinomial_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_rng_seed_governs_every_method_and_global_seed_governs_rng_without_seed():
    def draws(rng):
        return [rng.uniform(size=(3,)), rng.normal(size=(3,)), rng.gamma(2.0, size=(3,)),
                rng.beta(2.0, 3.0, size=(3,)), rng.poisson(3.0, size=(3,)),
                rng.exponential(2.0, size=(3,)), rng.permutation(5),
                rng.multinomial(mge.tensor([1.0, 2.0, 3.0]), 2)]

    a, b = draws(rand.RNG(seed=123)), draws(rand.RNG(seed=123))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    c = draws(rand.RNG(seed=124))
    assert not all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, c))
    rand.seed(77)
    d = draws(rand.RNG())  # no seed: the global generator that seed() sets
    rand.seed(77)
    e = [rand.uniform(size=(3,)), rand.normal(size=(3,)), rand.gamma(2.0, size=(3,)),
         rand.beta(2.0, 3.0, size=(3,)), rand.poisson(3.0, size=(3,)),
         rand.exponential(2.0, size=(3,)), rand.permutation(5),
         rand.multinomial(mge.tensor([1.0, 2.0, 3.0]), 2)]
    for x, y in zip(d, e):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_empty_draws_as_upstream():
    rand.seed(1024)
    for shape in [(0,), (0, 0, 0), (10, 0, 10)]:
        outs = [rand.uniform(0, 1, shape), rand.normal(0, 1, shape), rand.gamma(2, 1, shape),
                rand.beta(2, 1, shape), rand.poisson(2, shape), rand.exponential(1.5, shape)]
        assert all(o.shape == shape for o in outs)
    assert rand.permutation(n=0).shape == (0,)
    for shape, expected in [((0,), (0,)), ((0, 0), (0, 0)), ((0, 10), (0, 2))]:
        out = rand.multinomial(input=rand.normal(0, 1, shape), num_samples=2, replacement=True)
        assert out.shape == expected and out.dtype == np.int32


def test_permutation_of_a_0d_tensor_is_one_element():
    out = rand.permutation(mge.tensor(7.0))
    assert out.shape == (1,) and out.numpy().tolist() == [7.0]


def test_seed_reseeds_cupys_generator_on_every_gpu(monkeypatch):
    """The rule (upstream's): one seed governs every device; CuPy's per-GPU generators too."""
    seeded = []

    class FakeDevice:  # records which GPU is current while cupy.random.seed runs
        current = None

        def __init__(self, index):
            self.index = index

        def __enter__(self):
            FakeDevice.current = self.index

        def __exit__(self, *exc):
            FakeDevice.current = None

    class FakeCupy:
        class cuda:
            Device = FakeDevice

        class random:
            @staticmethod
            def seed(value):
                seeded.append((FakeDevice.current, value))

    monkeypatch.setattr(mge_device, "is_cuda_available", lambda: True)
    monkeypatch.setattr(mge_device, "_cupy", lambda: FakeCupy)
    monkeypatch.setattr(mge_device, "get_device_count", lambda kind="gpu": 2)
    rand.seed(1234)
    assert seeded == [(0, 1234), (1, 1234)]


@requires_cuda
def test_seed_governs_draws_on_the_gpu_and_they_match_the_cpus():
    import cupy

    rand.seed(9)
    on_gpu = rand.RNG(device="gpu0").normal(size=(5,))
    cupy_first = cupy.random.random(4)
    rand.seed(9)
    on_cpu = rand.RNG(device="cpu0").normal(size=(5,))
    np.testing.assert_array_equal(host(cupy.random.random(4)), host(cupy_first))
    assert on_gpu.device == "gpu0" and on_cpu.device == "cpu0"
    np.testing.assert_array_equal(host(on_gpu), host(on_cpu))  # drawn on the host, then moved
    rand.seed(10)
    assert not np.array_equal(host(cupy.random.random(4)), host(cupy_first))


@requires_cuda
def test_dropout_on_the_gpu_follows_the_seed():
    import megengine.functional as F

    x = mge.tensor(np.ones((64, 64), np.float32), device="gpu0")
    rand.seed(3)
    a = host(F.dropout(x, 0.5, training=True))
    rand.seed(3)
    b = host(F.dropout(x, 0.5, training=True))
    np.testing.assert_array_equal(a, b)
    assert 0.3 < (a == 0).mean() < 0.7


def test_rng_on_logical_device_names_reports_a_device_equal_to_them():
    # Upstream compares devices by what they resolve to: an RNG built on "xpu0" (or "xpu1")
    # on a machine without CUDA draws on the CPU, and its output's device equals "xpu0".
    here = "gpu0" if mge_device.is_cuda_available() else "cpu0"
    out0 = rand.RNG(seed=7, device="xpu0").uniform(size=(5,))
    out1 = rand.RNG(seed=7, device="xpux").uniform(size=(5,))
    np.testing.assert_array_equal(out0.numpy(), out1.numpy())  # same seed, same stream
    assert out0.device == "xpu0" and out0.device == "xpux" and out0.device == here
    assert not (out0.device != "xpu0")
    assert out0.device != "cpu0" if here == "gpu0" else out0.device != "gpu0"
    assert out0.device != "not-a-device" and out0.device != 0
    assert hash(out0.device) == hash(here)  # still usable as a dict key under its own name


def test_0x_gaussian_and_manual_seed():
    # 0.x spelling (MegEngine/Models' GAN generators: ``R.gaussian(shape=[n, nz])``): shape
    # first, the same draw as 1.x normal(mean, std, size=shape) after the same seed
    rand.manual_seed(3)
    got = rand.gaussian(shape=[2, 5], mean=1.0, std=2.0)
    rand.seed(3)
    want = rand.normal(mean=1.0, std=2.0, size=(2, 5))
    assert got.shape == (2, 5) and got.dtype == np.float32
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    rand.seed(0)
    v = rand.gaussian((200000,), 3.0, 0.5).numpy()
    assert abs(v.mean() - 3.0) < 0.01 and abs(v.std() - 0.5) < 0.01
    assert rand.gaussian((3,), comp_node="cpu0").device == "cpu0"
    with pytest.raises(ValueError, match="comp_graph"):
        rand.gaussian((3,), comp_graph=object())
    with pytest.raises(ValueError, match="std"):
        rand.gaussian((3,), std=-1.0)
