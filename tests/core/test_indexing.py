"""Tensor indexing edge cases (empty index lists, empty tensors) against numpy, values and grads."""
import warnings

import numpy as np
import pytest
import torch

import megengine as mge
from megengine.autodiff import GradManager
from megengine.core import ops
from megengine.functional import _aten

from devices import pool_threads


@pytest.mark.parametrize("shape,index", [
    ((10, 10, 0), ([],)),
    ((10, 10, 0), ([], [], [])),
    ((4, 5), ([],)),
    ((4, 5), ([], [])),
    ((4, 5), (slice(None), [])),
    ((4, 5), ([[]],)),
    ((10, 10, 0), ([1, 2, 3], [4, 5, 6])),
], ids=str)
def test_empty_index_list_selects_nothing_like_numpy(shape, index):
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    # numpy needs the explicit integer dtype that our [] must imply
    ref = a[tuple(np.asarray(i, dtype=np.intp) if isinstance(i, list) else i for i in index)]
    out = mge.tensor(a)[index]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    np.testing.assert_array_equal(out.numpy(), ref)


def test_set_with_empty_index_list_changes_nothing_and_grad_is_zero():
    a = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    x = mge.tensor(a)
    gm = GradManager().attach([x])
    with gm:
        y = x * 1
        y[[]] = y[[]]
        y[[], []] = 5.0
        gm.backward(y.sum() + x[[]].sum())
    np.testing.assert_array_equal(y.numpy(), a)
    np.testing.assert_array_equal(x.grad.numpy(), np.ones_like(a))


def test_float_index_list_is_still_an_error():
    with pytest.raises(IndexError):
        mge.tensor(np.zeros((3, 3), np.float32))[[0.5, 1.0]]


def test_a_1d_bool_index_of_another_length_selects_its_true_positions_as_upstream():
    # upstream turns a 1-d bool index into the positions of its True entries without
    # checking its length against the axis; MegEngine/End-to-end-ASR-Transformer's loss
    # writes `kl[..., pad_mask] = 0` with a mask as long as the rows, not the columns
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.array([True, False, True, False, False, False])
    positions = np.nonzero(mask)[0]  # [0, 2]
    x = mge.Parameter(a)
    gm = GradManager().attach(x)
    with gm:
        y = x[..., mge.tensor(mask)]
        gm.backward((y * 2).sum())
    np.testing.assert_array_equal(y.numpy(), a[:, positions])
    expected = np.zeros_like(a)
    expected[:, positions] = 2
    np.testing.assert_array_equal(x.grad.numpy(), expected)

    t = mge.tensor(a)
    t[..., mge.tensor(mask)] = 0
    written = a.copy()
    written[:, positions] = 0
    np.testing.assert_array_equal(t.numpy(), written)
    # a mask of the axis' own length keeps numpy's meaning; a True past the axis still fails
    np.testing.assert_array_equal(t[mge.tensor(np.array([True, False, True]))].numpy(),
                                  written[[0, 2]])
    with pytest.raises(IndexError, match="out of bounds for axis 1 with size 4"):
        t[..., mge.tensor(np.array([False] * 5 + [True]))]


def test_an_integer_index_out_of_range_raises_index_error_as_torch():
    # upstream 1.13 reads past the end on the first axis (x[2] of a (2, 3) tensor gives
    # garbage) and reports an AsyncError at a later sync for other axes (measured)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for index, axis, size in (((2,), 0, 2), ((Ellipsis, 3), 1, 3), ((slice(None), -4), 1, 3)):
        with pytest.raises(IndexError):
            torch.tensor(a)[index]
        with pytest.raises(IndexError, match=f"out of bounds for axis {axis} with size {size}"):
            mge.tensor(a)[index]


@pytest.mark.parametrize("index", [2, (0, 5), (Ellipsis, 3), 1.5, "a", {}, (0, 0, 0),
                                   [0.5, 1], np.float32(1), mge.tensor([0.0, 1.0]),
                                   np.array([True, False, True])], ids=repr)
@pytest.mark.parametrize("write", [False, True], ids=["get", "set"])
def test_a_bad_index_is_an_index_error_and_upstreams_runtime_error(index, write):
    # numpy and torch raise IndexError for each of these (the oracle); upstream 1.13 raises
    # RuntimeError (pybind's "Unable to cast" for a float or a string, its kernel's assertion)
    # or reads past the end (x[2]), so the error here is both, and names the tensor's shape
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(IndexError):
        a[np.asarray(index.numpy()) if isinstance(index, mge.Tensor) else index]
    x = mge.tensor(a)
    with pytest.raises(ops.IndexingError) as info:
        if write:
            x[index] = 1.0
        else:
            x[index]
    assert isinstance(info.value, IndexError) and isinstance(info.value, RuntimeError)
    assert "shape (2, 3)" in str(info.value) or "integer or bool" in str(info.value) or \
        "out of bounds for axis 0 with size 2" in str(info.value)


@pytest.mark.parametrize("index", [[[0, 1], [1, 0]], [[0, 2]], [[0], [3]], [[True, False, True]],
                                   [np.array([0, 2]), np.array([3, 1])], [slice(0, 2), 1],
                                   [[0, 1], Ellipsis], [None, [0, 1]], [mge.tensor([1, 2]), 0]],
                         ids=repr)
def test_a_list_index_holding_sequences_is_the_tuple_of_them(index):
    # upstream 1.13 reads x[[rows, cols]] as x[rows, cols] (measured: x[[[0, 1], [1, 0]]] is
    # [x[0, 1], x[1, 0]]), as torch's indexing does (the oracle); numpy 2 reads it as one index
    # array, which this engine did (a (2, 2, 4) result)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    as_torch = [torch.tensor(i.numpy()) if isinstance(i, mge.Tensor) else i for i in index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's deprecation of the reading it still gives)
        want = torch.tensor(a)[as_torch].numpy()
    got = mge.tensor(a)[index]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.numpy(), want)


def test_a_list_index_of_ints_or_bools_stays_one_index():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for index in ([0, 2], [True, False, True], [2]):
        np.testing.assert_array_equal(mge.tensor(a)[index].numpy(), a[index])
    t = mge.tensor(a)
    t[[[0, 1], [1, 0]]] = -1  # a write keeps numpy's reading, as upstream's: rows 0 and 1
    written = a.copy()
    written[np.array([[0, 1], [1, 0]])] = -1
    np.testing.assert_array_equal(t.numpy(), written)


def test_a_tensor_slice_bound_is_read_where_a_trace_sees_it():
    import io

    from megengine.jit import trace
    from megengine.jit.dump import DumpError

    x = np.arange(12, dtype="float32").reshape(4, 3)
    f = trace(lambda a, n: a[1:n], symbolic=True, capture_as_const=True)
    # each bound gives its own rows (numpy's x[1:n]); a bound read to the host selects the
    # program, so calls with other values are not replayed with a stale one
    for n in (2, 3, 2, 4):
        np.testing.assert_array_equal(f(mge.tensor(x), mge.tensor(n)).numpy(), x[1:n])
    with pytest.raises(DumpError, match="read the value of the tensor argument"):
        f.dump(io.BytesIO())
    t = mge.tensor(x)
    t[mge.tensor(1):mge.tensor(3)] = 0
    expect = x.copy()
    expect[1:3] = 0
    np.testing.assert_array_equal(t.numpy(), expect)


@pytest.mark.parametrize("shape,index,value_shape", [
    ((3,), 1, (1,)),
    ((2, 3), (0, 1), (1,)),
    ((2, 3), (0, 1), (1, 1)),
    ((2, 3), ([0, 1], [1, 2]), (1,)),
    ((2, 3), 0, (1, 3)),
], ids=str)
def test_a_one_element_value_goes_into_a_single_element_as_torch(shape, index, value_shape):
    # upstream broadcasts the value to the indexed part; numpy 2 refuses a (1,) value for a
    # single element ("setting an array element with a sequence"); torch takes it
    import torch

    a = np.arange(6, dtype=np.float32)[:int(np.prod(shape))].reshape(shape)
    v = np.full(value_shape, 7, np.float32)
    w = np.arange(1, 7, dtype=np.float32)[:a.size].reshape(shape)  # a weighted loss
    x, y = mge.Parameter(a), mge.Parameter(v)
    gm = GradManager().attach([x, y])
    with gm:
        out = x * 1
        out[index] = y
        gm.backward((out * mge.tensor(w)).sum())
    tx, ty = torch.tensor(a, requires_grad=True), torch.tensor(v, requires_grad=True)
    tout = tx * 1
    tout[index] = ty
    (tout * torch.tensor(w)).sum().backward()
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
    assert y.grad.shape == value_shape
    np.testing.assert_array_equal(y.grad.numpy(), ty.grad.numpy())


def test_a_value_of_several_elements_for_a_single_element_is_still_refused():
    x = mge.tensor(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 3\) at an index with a value of shape \(2,\)"):
        x[0, 1] = mge.tensor([1.0, 2.0])
    # upstream 1.13 raises RuntimeError (its broadcast's assertion; measured): the error is one
    with pytest.raises(RuntimeError, match="at an index with a value of shape"):
        x[:, 0] = mge.tensor([1.0, 2.0, 3.0])
    assert not x.numpy().any()



def _as_numpy_index(index):
    """``index`` with tensor bounds read and a mask as its True positions (upstream's reading
    of a mask shorter than its axis), for numpy and torch."""
    def item(i):
        if isinstance(i, slice):
            return slice(*(int(b) if isinstance(b, mge.Tensor) else b
                           for b in (i.start, i.stop, i.step)))
        return np.flatnonzero(i) if isinstance(i, np.ndarray) else i
    return tuple(item(i) for i in index)


@pytest.mark.parametrize("index", [
    (slice(None), 3), (3, slice(None, 8)), (-1,), (slice(1, None, 2), Ellipsis), (None, 2),
    (Ellipsis, None, slice(-3, -1)),
    # next to the plain index: items that are turned or read (a bool, a numpy int, a tensor
    # bound, a list, a mask) in an otherwise plain tuple
    (True, 1), (np.int64(2), slice(None)), (slice(mge.tensor(1), 3), 0), ([0, 2], slice(4)),
    (slice(None), np.array([True, False, True])),
], ids=str)
def test_plain_and_mixed_indices_give_torchs_values_and_gradients(index):
    import torch

    a = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    x = mge.Parameter(a)
    with GradManager().attach(x) as gm:
        y = x[index]
        gm.backward((y * y).sum())
    t = torch.tensor(a, requires_grad=True)
    want = t[tuple(torch.tensor(i) if isinstance(i, np.ndarray) else i
                   for i in _as_numpy_index(index))]
    (want * want).sum().backward()
    np.testing.assert_array_equal(y.numpy(), want.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())
    # written into: the same positions change
    u, w = mge.tensor(a), a.copy()
    u[index] = -1.0
    w[_as_numpy_index(index)] = -1.0
    np.testing.assert_array_equal(u.numpy(), w)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("shape,index,on_aten", [
    ((300, 16), lambda r: (r.randint(-300, 300, 1000),), True),  # repeats, negative positions
    ((300, 16), lambda r: (r.randint(0, 300, (20, 50)).astype("int32"),), True),
    ((4, 300, 8), lambda r: (slice(None), r.randint(0, 300, 500)), True),
    ((300, 16), lambda r: (slice(None), r.randint(0, 16, 600)), True),
    ((10, 4), lambda r: (r.randint(0, 10, 8),), False),  # 32 values: numpy's add.at
    ((6, 300), lambda r: (r.randint(0, 6, 40), slice(2, 9)), False),  # (not whole axes first)
], ids=lambda v: str(v) if isinstance(v, (tuple, bool)) else "")
def test_the_gradient_of_an_integer_index_sums_repeats_as_torch(
        monkeypatch, dtype, shape, index, on_aten, threads):
    # a large gradient of x[idx] (one integer array after whole axes) takes ATen's index_add_,
    # which adds the slices in the index's order as numpy's add.at: the same bits on both
    # paths, and torch's gradient of x[idx] (which sums in another order) within rounding;
    # float16 takes index_put_'s accumulation, torch's own: its gradient bit for bit (each
    # sum rounded to float16 in the index's order, as numpy's add.at)
    rng = np.random.RandomState(1)
    idx = index(rng)
    a = rng.randn(*shape).astype(dtype)
    out_shape = np.zeros(shape)[idx].shape
    g = (rng.randn(*out_shape) * rng.choice([1e-3, 1.0, 1e3], out_shape)).astype(dtype)
    taken, real = [], ops._index_add_on_aten

    def spy(*args):  # whether each gradient took ATen's path
        taken.append(real(*args))
        return taken[-1]

    monkeypatch.setattr(ops, "_index_add_on_aten", spy)
    grads = []
    for avoid in ([], ["index_add"]):
        with _aten.avoided(*avoid), pool_threads(threads):
            x = mge.Parameter(a, dtype=dtype, device="cpu0")  # (numpy arrays: the CPU's path)
            gm = GradManager().attach([x])
            with gm:
                y = x[tuple(mge.tensor(i, device="cpu0") if isinstance(i, np.ndarray) else i
                            for i in idx)]
                gm.backward(y, mge.tensor(g, dtype=dtype, device="cpu0"))
            grads.append(x.grad.numpy())
    assert taken == [on_aten, False]
    assert grads[0].dtype == dtype and grads[0].tobytes() == grads[1].tobytes()
    t = torch.tensor(a, requires_grad=True)
    t[tuple(torch.from_numpy(i.astype("int64")) if isinstance(i, np.ndarray) else i
            for i in idx)].backward(torch.from_numpy(g))
    if dtype == "float16":
        assert grads[0].tobytes() == t.grad.numpy().tobytes()
        return
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(grads[0], t.grad.numpy(), rtol=tol, atol=tol * 1e3)
