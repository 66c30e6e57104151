"""Large element-wise sums, differences, products, gradient sums, joins and reshape gradients'
copies of float32/float64 numpy arrays run on ATen (torch's thread pool) while that pool has more
than one thread (`megengine/functional/_aten.py` "pool"); with one thread, below
``dispatch.POOL_MIN`` elements and for other dtypes, shapes or layouts numpy computes them
(float16 arithmetic takes ATen at any thread count: tests/core/test_ops.py). The
values are checked bit for bit against numpy's own operators (IEEE operations and copies: both
pools give the same bits), the gradients against hand-derived ones; which path ran is counted
through `_aten.op` (the reshape's copy through `_aten.pooled_reshape`)."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.core.dispatch import POOL_MIN
from megengine.functional import _aten
from devices import host_default_device, pool_threads  # noqa: F401  (a fixture)

# the CPU's paths (numpy arrays), also on a machine whose default device is a GPU
pytestmark = pytest.mark.usefixtures("host_default_device")

LARGE = (4, 16, 64, 64)  # 262144 elements: POOL_MIN exactly
SMALL = (4, 16, 64, 63)


@pytest.fixture
def kernels(monkeypatch):
    """The names of the ATen ops the pool's helpers ran from here on."""
    used, real = [], _aten.op

    def recording(name):
        used.append(name)
        return real(name)

    monkeypatch.setattr(_aten, "op", recording)
    return used


def _arrays(shape, dtype, n=2, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randn(*shape).astype(dtype) for _ in range(n)]


def test_the_threshold_is_the_large_shape():
    assert np.prod(LARGE) == POOL_MIN > np.prod(SMALL)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,fn", [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b),
                                     ("mul", lambda a, b: a * b)])
def test_large_binary_ops_run_on_the_pool_with_numpys_bits(kernels, name, fn, dtype):
    a, b = _arrays(LARGE, dtype)
    with pool_threads(2):
        y = fn(mge.tensor(a, dtype=dtype), mge.tensor(b, dtype=dtype))
    assert kernels == [name]
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y.numpy(), fn(a, b))


@pytest.mark.parametrize("threads,shape,dtype,layout", [
    (1, LARGE, "float32", "plain"),  # one thread: numpy's pass is faster
    (2, SMALL, "float32", "plain"),  # below POOL_MIN
    (2, LARGE, "int32", "plain"),
    (2, LARGE, "float32", "broadcast"),  # shapes that differ
    (2, LARGE, "float32", "transposed"),  # not C-contiguous
])
def test_other_binary_ops_stay_on_numpy(kernels, threads, shape, dtype, layout):
    a, b = _arrays(shape, dtype)
    if layout == "broadcast":
        b = b[:1]
    elif layout == "transposed":
        a = a.transpose(0, 1, 3, 2)
        b = np.ascontiguousarray(b.transpose(0, 1, 3, 2))
    with pool_threads(threads):
        y = mge.tensor(a, dtype=a.dtype) * mge.tensor(b, dtype=b.dtype)
    assert kernels == []
    np.testing.assert_array_equal(y.numpy(), a * b)


def test_a_large_gradient_sum_runs_on_the_pool(kernels):
    # x feeds two ops: backward sums their gradients (dispatch's _add_arrays)
    a, g = _arrays(LARGE, "float32")
    x = mge.Parameter(a)
    gm = GradManager().attach(x)
    with pool_threads(2):
        with gm:
            y = F.cos(x) + F.sin(x)  # (numpy's kernels: F.exp of this size runs on ATen)
            gm.backward(y, mge.tensor(g))
    assert kernels == ["add", "add"]  # the forward's sum, then the gradients'
    np.testing.assert_array_equal(x.grad.numpy(), -g * np.sin(a) + g * np.cos(a))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_large_joins_run_on_the_pool_with_numpys_bits_and_split_their_gradient(
        kernels, dtype, axis):
    parts = _arrays((4, 16, 64, 32), dtype, n=3)
    xs = [mge.Parameter(p, dtype=dtype) for p in parts]
    g = _arrays(np.concatenate(parts, axis).shape, dtype, n=1, seed=1)[0]
    gm = GradManager().attach(xs)
    with pool_threads(2):
        with gm:
            y = F.concat(xs, axis)
            gm.backward(y, mge.tensor(g, dtype=dtype))
    assert kernels == ["cat"]
    np.testing.assert_array_equal(y.numpy(), np.concatenate(parts, axis))
    bounds = np.cumsum([p.shape[axis] for p in parts])[:-1]
    for x, gx in zip(xs, np.split(g, bounds, axis)):
        np.testing.assert_array_equal(x.grad.numpy(), gx)


@pytest.mark.parametrize("threads,case", [(1, "plain"), (2, "int32"), (2, "dtypes"),
                                          (2, "small")])
def test_other_joins_stay_on_numpy(kernels, threads, case):
    a, b = _arrays((4, 16, 64, 32), "float32")
    if case == "int32":
        a, b = a.astype("int32"), b.astype("int32")
    elif case == "dtypes":  # promoted to float64 first, then joined: numpy's arrays either way
        b = b.astype("float64")
    elif case == "small":
        a, b = a[:, :, :31], b[:, :, :31]
    with pool_threads(threads):
        y = F.concat([mge.tensor(a, dtype=a.dtype), mge.tensor(b, dtype=b.dtype)], 1)
    assert kernels == ([] if case != "dtypes" else ["cat"])
    np.testing.assert_array_equal(y.numpy(), np.concatenate([a, b], 1))


def test_a_join_of_mismatched_shapes_says_so_on_either_path(kernels):
    a, b = _arrays((4, 16, 64, 32), "float32")
    for threads in (1, 2):
        with pool_threads(threads):
            with pytest.raises(ValueError, match=r"concat: shapes .* differ outside axis 1"):
                F.concat([mge.tensor(a), mge.tensor(b[:, :, :40])], 1)
    assert kernels == []


@pytest.mark.parametrize("threads", [1, 2])
def test_a_reshapes_strided_gradient_is_copied_on_the_pool(monkeypatch, threads):
    # a channel shuffle, x.reshape(...).transpose(...).reshape(...): backward hands the first
    # reshape a transposed gradient whose dims it merges, which numpy would copy on one thread
    copies, real = [], _aten.pooled_reshape

    def spy(a, shape):
        out = real(a, shape)
        copies.append(out is not None and not np.shares_memory(out, a))
        return out

    monkeypatch.setattr(_aten, "pooled_reshape", spy)
    a, g = _arrays(LARGE, "float32")
    x = mge.Parameter(a)
    gm = GradManager().attach(x)
    with pool_threads(threads):
        with gm:
            y = x.reshape(4, 2, 8, 64, 64).transpose(0, 2, 1, 3, 4).reshape(LARGE)
            gm.backward(y, mge.tensor(g))
    # the last reshape's gradient is a view (contiguous); the first one's is the copy (numpy
    # 2.0's reshape cannot say whether it would copy, having no ``copy`` argument: numpy's then)
    assert copies == [threads > 1 and np.lib.NumpyVersion(np.__version__) >= "2.1.0"]
    expected = g.reshape(4, 8, 2, 64, 64).transpose(0, 2, 1, 3, 4).reshape(LARGE)
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_a_strided_gradient_that_reshapes_as_a_view_is_not_copied(monkeypatch):
    # x.reshape(4, 16, 4096).transpose(0, 2, 1): the reshape's gradient is strided, but giving
    # it x's shape splits its last dim, which numpy does as a view
    seen, real = [], _aten.pooled_reshape

    def spy(a, shape):
        out = real(a, shape)
        seen.append((a, out))
        return out

    monkeypatch.setattr(_aten, "pooled_reshape", spy)
    a, g = _arrays(LARGE, "float32")
    x = mge.Parameter(a)
    gm = GradManager().attach(x)
    gt = np.ascontiguousarray(g.reshape(4, 16, 4096).transpose(0, 2, 1))
    with pool_threads(2):
        with gm:
            gm.backward(x.reshape(4, 16, 4096).transpose(0, 2, 1), mge.tensor(gt))
    assert len(seen) == 1
    (given, out), = seen
    if np.lib.NumpyVersion(np.__version__) >= "2.1.0":  # the view, from the one reshape made
        assert out.shape == a.shape and np.shares_memory(out, given)
    else:  # (numpy 2.0 cannot tell a view from a copy: numpy's reshape then)
        assert out is None
    np.testing.assert_array_equal(x.grad.numpy(), g)
