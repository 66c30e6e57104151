"""Tests of megengine/functional/indexing.py: F.gather, F.scatter, F.indexing_one_hot, F.one_hot,
F.where, F.non_zero and F.cond_take against torch, and traced replays that read each call's
indices afresh."""
from functools import partial

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from devices import host_default_device  # noqa: F401  (a fixture: the ATen path is the host's)
from devices import simulated_gpu_runtime
from oracle import check_against_torch, raises_as_upstream

check = partial(check_against_torch, atol=1e-6)


def rand(*shape):
    return np.asarray(np.random.randn(*shape), dtype=np.float32)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(axis):
    x = rand(3, 4, 5)
    shape = [2, 3, 4]
    shape[axis] = 6  # index may be longer than inp on the gathered axis, shorter elsewhere
    index = np.random.randint(0, x.shape[axis], shape).astype(np.int32)
    check(lambda t: F.gather(t, axis, mge.tensor(index)),
          lambda t: torch.gather(t, axis, torch.tensor(index, dtype=torch.int64)), x)


@pytest.mark.parametrize("shape,axis", [((5, 4), 1), ((5, 4), 0), ((2, 3, 4), 2), ((2, 3, 4), 1),
                                        ((6,), 0)], ids=str)
def test_grid_index_picks_along_the_axis(shape, axis):
    # the open grid (a shortcut for (rows, k) along axis 1, a loop otherwise) picks what torch's
    # gather picks; also with index shorter than x on the axis and on another axis
    from megengine.functional.indexing import _grid_index

    x = rand(*shape)
    rs = np.random.RandomState(3)
    for short_off_axis in (False, True):
        ishape = list(shape)
        ishape[axis] = shape[axis] + 2  # (repeats)
        if short_off_axis and len(shape) > 1:
            ishape[(axis + 1) % len(shape)] -= 1
        index = rs.randint(0, shape[axis], ishape)
        grid = _grid_index(np, index, axis)
        want = torch.gather(torch.tensor(x), axis, torch.tensor(index)).numpy()
        np.testing.assert_array_equal(x[grid], want)


def test_gather_upstream_example_and_errors():
    out = F.gather(mge.tensor([[1, 2], [3, 4], [5, 6]]), 0, mge.tensor([[0, 2], [1, 0]]))
    np.testing.assert_array_equal(out.numpy(), [[1, 6], [3, 2]])
    x = mge.tensor(rand(3, 4))
    with pytest.raises(ValueError, match="gather"):
        F.gather(x, 0, mge.tensor([0, 1]))
    with pytest.raises(IndexError, match="gather"):
        F.gather(x, 0, mge.tensor([[3]]))
    with pytest.raises(TypeError, match="gather"):
        F.gather(x, 0, mge.tensor([[0.0]]))


@pytest.mark.parametrize("axis", [0, 1])
def test_scatter(axis):
    x, src = rand(4, 5), rand(3, 4)
    # distinct targets along axis so the result does not depend on write order
    index = np.stack([np.random.permutation(x.shape[axis])[:3] for _ in range(4)], 1)
    if axis == 1:
        index = np.stack([np.random.permutation(5)[:4] for _ in range(3)], 0)
    index = index.astype(np.int32)
    # scatter updates its inp (upstream), so scatter into a copy to see the gradient reach x
    check(lambda t, s: F.scatter(t * 1, axis, mge.tensor(index), s),
          lambda t, s: torch.scatter(t, axis, torch.tensor(index, dtype=torch.int64), s), x, src)


def test_scatter_updates_inp_like_upstream():
    inp = mge.tensor(np.zeros((3, 5), np.float32))
    source = mge.tensor([[0.9935, 0.9465, 0.2256, 0.8926, 0.4396],
                         [0.7723, 0.0718, 0.5939, 0.357, 0.4576]])
    index = mge.tensor([[0, 2, 0, 2, 1], [2, 0, 1, 1, 2]])
    out = F.scatter(inp, 0, index, source)
    assert out is inp
    expect = np.zeros((3, 5), np.float32)
    np.put_along_axis(expect, index.numpy().astype(np.int64), source.numpy(), 0)
    np.testing.assert_allclose(inp.numpy(), expect)
    with pytest.raises(ValueError, match="scatter"):
        F.scatter(inp, 0, index, mge.tensor(rand(2, 4)))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_indexing_one_hot(axis, keepdims):
    x = rand(3, 4, 5)
    ishape = x.shape[:axis] + x.shape[axis + 1:]
    index = np.random.randint(0, x.shape[axis], ishape).astype(np.int32)

    def torch_fn(t):
        out = torch.gather(t, axis, torch.tensor(index, dtype=torch.int64).unsqueeze(axis))
        return out if keepdims else out.squeeze(axis)

    check(lambda t: F.indexing_one_hot(t, mge.tensor(index), axis, keepdims), torch_fn, x)
    with pytest.raises(ValueError, match="indexing_one_hot"):
        F.indexing_one_hot(mge.tensor(x), mge.tensor(np.zeros((3,), np.int32)), axis)


def test_indexing_one_hot_float_index_is_truncated_to_int32():
    # OMNet's labels are F.ones((B, N)) * mask, float32; upstream's operator converts them
    x = rand(2, 3, 4)
    index = np.array([[0.0, 2.0, 1.0, 2.0], [1.0, 0.0, 2.9, 0.0]], np.float32)
    as_int = torch.tensor(index.astype(np.int64))  # C-style truncation: 2.9 -> 2
    check(lambda t: F.indexing_one_hot(t, mge.tensor(index), 1),
          lambda t: torch.gather(t, 1, as_int.unsqueeze(1)).squeeze(1), x)
    mask = mge.tensor(np.array([[True, False, True, False]] * 2))
    out = F.indexing_one_hot(mge.tensor(x), mask, 1)
    np.testing.assert_array_equal(out.numpy(), np.where(mask.numpy(), x[:, 1], x[:, 0]))


def test_one_hot():
    labels = np.array([[0, 2], [1, 3]], np.int32)
    out = F.one_hot(mge.tensor(labels), 4)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(
        out.numpy(), torch.nn.functional.one_hot(torch.tensor(labels, dtype=torch.int64), 4))
    # a float index: upstream's op raises RuntimeError (measured); here a TypeError that is one
    for error in (TypeError, RuntimeError):
        with pytest.raises(error, match="one_hot: index must be an integer tensor"):
            F.one_hot(mge.tensor([1.0, 2.0]), 3)


def test_where():
    mask = np.random.rand(3, 4) > 0.5
    check(lambda x, y: F.where(mge.tensor(mask), x, y),
          lambda x, y: torch.where(torch.tensor(mask), x, y), rand(3, 4), rand(4))
    out = F.where(mge.tensor([True, False]), mge.tensor([1.0, 2.0]), 0.0)
    assert out.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="where"):
        F.where(mge.tensor([1, 0]), mge.tensor([1.0, 2.0]), mge.tensor([3.0, 4.0]))
    idx = F.where(mge.tensor([[True, False], [False, True]]))
    assert [i.tolist() for i in idx] == [[0, 1], [0, 1]]


def test_where_of_shapes_that_do_not_broadcast_raises_upstreams_type_naming_them():
    # torch is the oracle for which shapes do not broadcast; upstream 1.13 raises RuntimeError,
    # numpy code catches ValueError (the error was numpy's bare ValueError)
    mask, x, y = np.ones((4, 3), bool), rand(4, 3), rand(4)
    with pytest.raises(RuntimeError):
        torch.where(torch.tensor(mask), torch.tensor(x), torch.tensor(y))
    for cls in (RuntimeError, ValueError):
        with pytest.raises(cls, match=r"where: shapes \(4, 3\), \(4, 3\) and \(4,\) do not "
                                      r"broadcast"):
            F.where(mge.tensor(mask), mge.tensor(x), mge.tensor(y))


@pytest.mark.parametrize("a, b, want", [
    # upstream 1.13 measured: where promotes by its own rule, not the elementwise ops' (where
    # int32 + float16 is float32): a float operand's dtype wins, integers and bools as numpy's
    ("int32", "float16", "float16"), ("bool", "float16", "float16"), ("bool", "int32", "int32"),
    ("uint8", "int8", "int16"), ("bool", "uint8", "uint8"), ("float16", "float32", "float32"),
    ("int32", "float32", "float32")])
def test_where_of_two_dtypes_promotes_as_upstream_where(a, b, want):
    x, y = np.array([3, 0, 1], a), np.array([1, 2, 0], b)
    mask = np.array([True, False, True])
    for first, second in [(x, y), (y, x)]:
        out = F.where(mge.tensor(mask), mge.tensor(first), mge.tensor(second))
        assert out.dtype == np.dtype(want)
        np.testing.assert_array_equal(out.numpy(), np.where(mask, first, second).astype(want))


def test_where_of_two_dtypes_passes_each_gradient_in_its_dtype():
    x = mge.Parameter(np.array([1.0, 2.0, 3.0], "float16"))
    y = mge.Parameter(np.array([4.0, 5.0, 6.0], "float32"))
    gm = GradManager().attach([x, y])
    with gm:
        out = F.where(mge.tensor([True, False, True]), x, y)
        gm.backward((out * mge.tensor([1.0, 2.0, 3.0])).sum())
    assert out.dtype == np.float32 and x.grad.dtype == np.float16
    assert x.grad.numpy().tolist() == [1.0, 0.0, 3.0] and y.grad.numpy().tolist() == [0.0, 2.0, 0.0]


def test_non_zero_and_cond_take():
    c = np.array([[1, 0, 2], [0, 3, 0]], np.int32)
    nz = F.non_zero(mge.tensor(c))
    assert nz.dtype == np.int32
    np.testing.assert_array_equal(nz.numpy(), torch.nonzero(torch.tensor(c)).numpy())
    for value in (3.0, 0.0, True):  # a 0-d input: (n, 0) as torch's, on every numpy 2.x
        nz = F.non_zero(mge.tensor(value))
        assert nz.dtype == np.int32 and nz.shape == tuple(torch.nonzero(torch.tensor(value)).shape)
        assert F.non_zero(mge.tensor(value), as_tuple=True) == ()
    mask = c > 0
    x = rand(2, 3)
    check(lambda t: F.cond_take(mge.tensor(mask), t)[0], lambda t: t[torch.tensor(mask)], x)
    v, i = F.cond_take(mge.tensor(mask), mge.tensor(x))
    assert i.dtype == np.int32 and i.tolist() == [0, 2, 4]


def test_traced_indexing_replays_with_new_indices():
    from megengine.jit import trace

    def f(x, idx):
        a = F.indexing_one_hot(x, idx, 1)
        b = F.gather(x, 1, F.expand_dims(idx, 1)).reshape(-1)
        c = F.one_hot(idx, 5).astype("float32").sum(1)
        # into x * 0, not F.zeros(...): a traced constant written in place keeps the write
        # across replays (a megengine.jit issue, not scatter's)
        d = F.scatter(x * 0, 1, F.expand_dims(idx, 1), F.expand_dims(a, 1))
        return a + b + c, d

    traced = trace(f, symbolic=True)
    for _ in range(3):
        x = mge.tensor(rand(4, 5))
        idx = mge.tensor(np.random.randint(0, 5, 4).astype(np.int32))
        for got, expect in zip(traced(x, idx), f(x, idx)):
            np.testing.assert_allclose(got.numpy(), expect.numpy())


def test_traced_training_step_uses_each_calls_labels():
    from megengine.jit import trace

    w = mge.Parameter(rand(3, 5))
    gm = GradManager().attach(w)

    @trace(symbolic=True)
    def step(x, label):
        with gm:
            loss = -F.indexing_one_hot(F.matmul(x, w), label, 1).mean()
            gm.backward(loss)
        return loss

    for _ in range(3):
        x, label = rand(4, 3), np.random.randint(0, 5, 4).astype(np.int32)
        w.grad = None
        step(mge.tensor(x), mge.tensor(label))
        tw = torch.tensor(w.numpy(), requires_grad=True)
        logits = torch.tensor(x) @ tw
        (-logits[torch.arange(4), torch.tensor(label, dtype=torch.int64)].mean()).backward()
        np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)


# ----- the ATen path of gather / indexing_one_hot (float32/float64 numpy arrays) -----

def _on_aten(a):
    """Whether an output lives in torch's memory (the ATen path's zero-copy result)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a.base is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "reversed", "broadcast"])
@pytest.mark.parametrize("axis", [0, 2, -2])
def test_gather_on_aten_matches_torch_values_and_gradients(dtype, layout, axis, host_default_device):
    from megengine.functional import _aten

    rs = np.random.RandomState(11)
    base = rs.randn(7, 5, 9).astype(dtype)
    a = {"contiguous": base, "transposed": base.transpose(2, 1, 0).copy().transpose(2, 1, 0),
         "reversed": base[::-1], "broadcast": np.broadcast_to(base[:, :1], base.shape)}[layout]
    shape = [6, 4, 8]
    shape[axis] = 11  # longer than inp on the gathered axis (repeats), shorter elsewhere
    index = rs.randint(0, a.shape[axis], shape).astype(np.int32)
    x = mge.Parameter(np.ascontiguousarray(a), dtype=dtype)
    x._data = a  # the layout under test (Parameter copies its input)
    dy = rs.randn(*shape).astype(dtype)
    gm = GradManager().attach(x)
    with gm:
        y = F.gather(x, axis, mge.tensor(index))
        gm.backward(y, mge.tensor(dy, dtype=dtype))
    assert _on_aten(y._data) and y.dtype == dtype
    t = torch.tensor(np.ascontiguousarray(a), requires_grad=True)
    ty = torch.gather(t, axis, torch.from_numpy(index).long())
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-6)
    with _aten.avoided("gather"):  # the array code (CuPy's) gives the same
        z = F.gather(mge.tensor(a, dtype=dtype), axis, mge.tensor(index))
    assert not _on_aten(z._data)
    np.testing.assert_array_equal(z.numpy(), y.numpy())


@pytest.mark.parametrize("bad", [9, -1])
def test_gather_on_aten_words_out_of_bounds_indices_as_the_array_code(bad, host_default_device):
    from megengine.functional import _aten

    x = mge.tensor(rand(4, 9))
    index = mge.tensor(np.array([[0, 3], [bad, 1]], np.int32))
    lo, hi = min(bad, 0), max(bad, 3)
    message = rf"gather: index values must be in \[0, 9\), got min {lo} and max {hi}"
    with pytest.raises(IndexError, match=message):
        F.gather(x, 1, index)
    with _aten.avoided("gather"), pytest.raises(IndexError, match=message):
        F.gather(x, 1, index)
    with pytest.raises(IndexError, match="indexing_one_hot"):
        F.indexing_one_hot(x, mge.tensor(np.array([0, 1, bad, 2], np.int32)), 1)


@pytest.mark.parametrize("keepdims", [False, True])
def test_indexing_one_hot_on_aten_float64_matches_torch(keepdims, host_default_device):
    rs = np.random.RandomState(12)
    a = rs.randn(5, 7, 3)
    index = rs.randint(0, 7, (5, 3)).astype(np.int64)
    x = mge.Parameter(a, dtype="float64")
    gm = GradManager().attach(x)
    with gm:
        y = F.indexing_one_hot(x, mge.tensor(index), 1, keepdims=keepdims)
        gm.backward((y * y).sum())
    assert _on_aten(y._data) and y.dtype == np.float64
    t = torch.tensor(a, requires_grad=True)
    ty = torch.gather(t, 1, torch.from_numpy(index)[:, None])
    (ty * ty).sum().backward()
    np.testing.assert_array_equal(y.numpy(), (ty if keepdims else ty[:, 0]).detach().numpy())
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-12)


def test_gather_on_aten_second_order_matches_torch(host_default_device):
    from oracle import check_second_order_against_torch

    rs = np.random.RandomState(13)
    a = rs.uniform(-1, 1, (6, 8)).astype(np.float32)
    index = rs.randint(0, 8, (6, 5))
    check_second_order_against_torch(
        lambda x: (F.gather(x * x * x, 1, mge.tensor(index.astype(np.int32))) * 2.0).sum(),
        lambda t: (torch.gather(t * t * t, 1, torch.from_numpy(index)) * 2.0).sum(), a)


def test_gather_of_integers_stays_on_the_array_code(host_default_device):
    a = np.arange(20, dtype=np.int32).reshape(4, 5)
    out = F.gather(mge.tensor(a), 1, mge.tensor(np.array([[4], [0], [2], [1]], np.int32)))
    assert out.dtype == np.int32 and not _on_aten(out._data)
    np.testing.assert_array_equal(out.numpy(), [[4], [5], [12], [16]])


@pytest.mark.parametrize("axis", [1, -1, np.int64(1), np.int32(-1)])
def test_gather_and_indexing_one_hot_take_any_int_axis_as_torch(axis):
    # a plain in-range int axis is taken without the general normaliser; numpy ints, negative
    # axes and the general path agree with torch
    rs = np.random.RandomState(2)
    x, idx = rs.randn(4, 6).astype(np.float32), rs.randint(0, 6, 4)
    want = torch.gather(torch.tensor(x), 1, torch.tensor(idx)[:, None]).numpy()
    got = F.gather(mge.tensor(x), axis, mge.tensor(idx[:, None].astype(np.int32)))
    np.testing.assert_array_equal(got.numpy(), want)
    got = F.indexing_one_hot(mge.tensor(x), mge.tensor(idx.astype(np.int32)), axis)
    np.testing.assert_array_equal(got.numpy(), want[:, 0])


@pytest.mark.parametrize("axis, error", [(2, ValueError), (-3, ValueError), (True, TypeError),
                                         (1.0, TypeError)])
def test_gather_with_a_bad_axis_raises_naming_it(axis, error):
    x, idx = mge.tensor(np.ones((2, 3), np.float32)), mge.tensor(np.zeros((2, 1), np.int32))
    with pytest.raises(error, match="gather: axis"):
        F.gather(x, axis, idx)
    with pytest.raises(error, match="concat: axis"):
        F.concat([x, x], axis=axis)


def test_one_hot_refuses_a_class_out_of_range():
    # a negative class or one >= num_classes gave a row of zeros: a silently lost label
    # (upstream 1.13's kernel asserts on -1; torch's one_hot refuses both)
    assert F.one_hot(mge.tensor([0, 2]), 3).numpy().tolist() == [[1, 0, 0], [0, 0, 1]]
    for bad, lo, hi in [([-1, 1], -1, 1), ([0, 3], 0, 3)]:
        with pytest.raises(IndexError, match=rf"one_hot: index values must be in \[0, 3\), "
                                             rf"got min {lo} and max {hi}") as error:
            F.one_hot(mge.tensor(bad), 3)
        assert isinstance(error.value, RuntimeError)  # (upstream's kernel assertion's type)
    # scatter's kernel asserts too (upstream 1.13 measured)
    with pytest.raises(IndexError, match=r"scatter: index values must be in \[0, 3\)") as error:
        F.scatter(F.zeros((2, 3)), 1, mge.tensor([[5], [0]]), F.ones((2, 1)))
    assert isinstance(error.value, RuntimeError)


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.where(mge.tensor([True, False]), x, x),
                 RuntimeError, r"where: shapes \(2,\), \(3, 4\) and \(3, 4\) do not broadcast",
                 id="where"),
    pytest.param(lambda x: F.one_hot(mge.tensor([0, 1]), -1),
                 RuntimeError, "num_classes must be >= 0, got -1", id="one_hot"),
    pytest.param(lambda x: F.cond_take(mge.tensor([True]), x),
                 RuntimeError, r"mask shape \(1,\) must equal x shape \(3, 4\)", id="cond_take"),
    pytest.param(lambda x: F.indexing_one_hot(x, mge.tensor([0, 1]), 1),
                 RuntimeError, r"index shape \(2,\) must be src shape \(3, 4\) without axis 1",
                 id="indexing_one_hot"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: RuntimeError from its C++ checks (numpy's "operands could not be
    # broadcast" came out of where, and an IndexError "index values must be in [0, -1)" out of
    # one_hot); earlier versions of this fork raised a plain ValueError.
    # The error is also a ValueError (what the mistake is) and says what was wrong
    raises_as_upstream(call, (3, 4), upstream, match)


def test_one_hot_of_num_classes_that_is_no_int_names_it():
    # upstream 1.13 measured: ValueError (numpy's "setting an array element with a sequence");
    # int()'s "int() argument must be ... not 'list'" came out here before
    for error in (ValueError, TypeError):
        with pytest.raises(error, match=r"one_hot: num_classes must be an int, got \[3, 3\]"):
            F.one_hot(mge.tensor([0, 1]), [3, 3])


@pytest.mark.parametrize("args,arg", [((None, 1.0, 2.0), "mask"), (("m", 1.0, 2.0), "mask"),
                                      ((True, 1.0, "y"), "y")])
def test_where_of_a_string_or_none_names_the_argument(args, arg):
    # upstream 1.13 raises TypeError ("mask must be a tensor") or RuntimeError (a string
    # operand): the error is both
    mask, x, y = (mge.tensor(v) if type(v) in (bool, float) else v for v in args)
    for cls in (TypeError, RuntimeError):
        with pytest.raises(cls, match=f"^where: {arg}( is None|: cannot make a tensor)"):
            F.where(mask, x, y)


def test_index_bounds_are_one_host_read_on_a_gpu():
    # gather's, one_hot's and indexing_one_hot's range check: one reduction and one read of it
    # (the unsigned maximum, `_out_of_range`), where the minimum and the maximum were two each
    rt = simulated_gpu_runtime()
    x = mge.tensor(np.random.RandomState(0).randn(4, 6).astype(np.float32), device="gpu0")
    idx = mge.tensor(np.array([[0, 5], [1, 1], [2, 0], [3, 4]]), dtype="int32", device="gpu0")
    for f in (lambda: F.gather(x, 1, idx), lambda: F.one_hot(idx[:, 0], 6),
              lambda: F.indexing_one_hot(x, idx[:, 0], 1)):
        f()
        before = rt.syncs
        f()
        assert rt.syncs - before == 1
