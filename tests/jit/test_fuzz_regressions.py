"""Bugs the jit program fuzzer (`tests/fuzz/jit.py`) found, each minimised to its reproducer: a
trace, in the mode named, must equal the eager function on every call, and a dumped program at
another shape must equal it or raise ShapeGuardError."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.jit import ShapeGuardError, trace
from megengine.utils.comp_graph_tools import GraphInference

RNG = np.random.default_rng(0)


def _data(*shape):
    return RNG.standard_normal(shape).astype("float32")


def _calls(fn, shape, n=3, **mode):
    """``fn`` traced in ``mode``, called ``n`` times at ``shape`` with new values, each against
    eager; returns the trace."""
    f = trace(fn, **mode)
    for _ in range(n):
        x = _data(*shape)
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), fn(mge.tensor(x)).numpy(),
                                   rtol=1e-6, atol=1e-6)
    return f


def _dumped_run(f, x):
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])
    buf.seek(0)
    return list(GraphInference(buf).run(x).values())[0]


# program 18 of the first generator: a fill of a shape tensor's shape. The recording made F.zeros(Tensor(x.shape)) a
# Full op of expressions; checked calls read the shape tensor's numbers instead (the checker
# knew no sizes of shape tensors), made no op, and stopped at "operator mismatch".
_SHAPE_TENSOR_SHAPES = {
    "zeros": lambda x: F.zeros(mge.Tensor(x.shape)) + x,
    "ones of a concat": lambda x: x * F.ones(F.concat([mge.Tensor(x.shape)[:1],
                                                       mge.tensor([3])])),
    "full of a piece": lambda x: x + F.full(mge.Tensor(x.shape)[1:], 0.5),
}


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("name", sorted(_SHAPE_TENSOR_SHAPES))
def test_checked_calls_fill_shape_tensor_shapes_as_recorded(name, symbolic):
    fn = _SHAPE_TENSOR_SHAPES[name]
    f = _calls(fn, (2, 3), symbolic=symbolic, capture_as_const=True)
    x = _data(4, 3)
    np.testing.assert_allclose(_dumped_run(f, x), fn(mge.tensor(x)).numpy(), rtol=1e-6)


# probes of size-taking parameters: a size of a dumpable trace (a SymDim, deliberately not an
# int) given where a function checked isinstance(v, int) was refused with a TypeError ("'SymDim'
# object is not iterable", "kernel_size must be an int or a pair of ints, got 2"). Each now takes
# its value (a guard: `int(n)`), or, for clip's bounds, carries it as an operand.
_SIZE_PARAMETERS = {
    "split into N parts": lambda x: F.concat(F.split(x, x.shape[1], axis=1)[::-1], axis=1),
    "roll": lambda x: F.roll(x, x.shape[3] // 2, axis=3),
    "max_pool2d kernel": lambda x: F.max_pool2d(x, x.shape[2] // 4),
    "conv2d padding": lambda x: F.conv2d(x, mge.tensor(np.full((2, 3, 3, 3), 0.1, "float32")),
                                         padding=x.shape[1] // 2),
    "layer_norm": lambda x: F.layer_norm(x, x.shape[-1]),
    "clip": lambda x: F.clip(x, -x.shape[0], x.shape[0] * 0.5),
}


@pytest.mark.parametrize("name", sorted(_SIZE_PARAMETERS))
def test_size_parameters_accept_sizes_of_a_dumpable_trace(name):
    fn = _SIZE_PARAMETERS[name]
    f = _calls(fn, (2, 3, 8, 8), symbolic=True, capture_as_const=True)
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])
    for shape in [(2, 3, 8, 8), (3, 3, 8, 8), (1, 3, 8, 16)]:
        x = _data(*shape) * 2
        buf.seek(0)
        try:
            got = list(GraphInference(buf).run(x).values())[0]
        except ShapeGuardError:
            assert shape != (2, 3, 8, 8)
            continue
        np.testing.assert_allclose(got, fn(mge.tensor(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_a_clip_bound_from_a_size_follows_the_input():
    # carried, not guarded: a loaded program computes the bound at the batch it runs at
    fn = _SIZE_PARAMETERS["clip"]
    f = _calls(fn, (2, 3), symbolic=True, capture_as_const=True)
    x = _data(1, 3) * 3
    np.testing.assert_allclose(_dumped_run(f, x), np.clip(x, -1, 0.5), rtol=1e-6)


# Arithmetic of two items of a shape tensor (s[0] * s[1]) made numpy return the bare SymDim
# instead of a 0-d array of it; the reshape that read it stopped with "'SymDim' object has no
# attribute 'size'" at the first call.
_SHAPE_TENSOR_ITEMS = {
    "product": lambda x: x.reshape(mge.Tensor(x.shape)[0] * mge.Tensor(x.shape)[1], -1),
    "sum": lambda x: F.zeros((mge.Tensor(x.shape)[0] + mge.Tensor(x.shape)[1], 2)),
    "floor div": lambda x: x.reshape(mge.Tensor(x.shape)[1] // mge.Tensor(x.shape)[1], -1),
}


@pytest.mark.parametrize("name", sorted(_SHAPE_TENSOR_ITEMS))
def test_arithmetic_of_two_shape_tensor_items_follows_the_input(name):
    fn = _SHAPE_TENSOR_ITEMS[name]
    f = _calls(fn, (2, 3, 4), symbolic=True, capture_as_const=True)
    x = _data(5, 3, 2)
    got = _dumped_run(f, x)
    want = fn(mge.tensor(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6)


# program 30017: a mask index, then a broadcast of a value to its own shape. Without symbolic
# shapes the recording carries sizes after the mask (so that replays check them), and
# broadcast_to took that for a dumpable trace and made no op, while checked calls made one:
# every call after the first raised TraceMismatchError ("the trace applied Add, this call
# applies BroadcastTo").
@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("symbolic_shape", [False, True])
def test_broadcast_to_its_own_shape_after_a_mask_index(symbolic, symbolic_shape):
    def fn(x):
        return F.broadcast_to(x * 2, x.shape) + x[x > 0].sum()
    _calls(fn, (2, 3), symbolic=symbolic, symbolic_shape=symbolic_shape)


# program 91003: a mask index, then ``h.set_value(...)`` (or ``_reset``) of a value of the call
# and a read of h's shape. The write goes into h's own array, which the checker did not note
# as holding the written value's sizes: the recording made ``h / h.shape[0]`` divide by a Full
# of the size, checked calls by a plain int ("the trace applied Full, this call applies
# TrueDiv") from the second call on, wherever sizes were symbolic.
_WRITES_OF_A_VALUE = {"set_value": lambda h: h.set_value(h * 2),
                      "_reset": lambda h: h._reset(h + 1)}


@pytest.mark.parametrize("write", sorted(_WRITES_OF_A_VALUE))
@pytest.mark.parametrize("mode", [dict(symbolic_shape=True),
                                  dict(symbolic=True, symbolic_shape=True),
                                  dict(symbolic=True, capture_as_const=True)],
                         ids=["checked", "symbolic", "dumpable"])
def test_a_shape_read_after_a_write_into_a_value_after_a_mask(write, mode):
    def fn(x):
        h = x + x[x > 0].sum()
        _WRITES_OF_A_VALUE[write](h)
        return h / h.shape[0]
    f = _calls(fn, (4, 3), n=4, **mode)
    if mode.get("capture_as_const"):
        x = _data(6, 3)
        np.testing.assert_allclose(_dumped_run(f, x), fn(mge.tensor(x)).numpy(), rtol=1e-6)


# program 91504: ``x._reset(x + 1.0)`` of the argument (an event: the argument is the caller's
# tensor) and a size of x returned, under capture_as_const with symbolic shapes. The write gave
# x a new array, which the checker did not note as holding the argument's sizes: the recording
# returned the size as a Tensor (a Sizes op), checked calls as an int ("mismature end") from
# the second call on.
@pytest.mark.parametrize("write", sorted(_WRITES_OF_A_VALUE))
@pytest.mark.parametrize("symbolic", [False, True])
def test_a_size_of_an_argument_read_after_a_write_into_it(write, symbolic):
    def fn(x):
        a, b = F.split(x, [x.shape[1] // 2], axis=1)  # (an op built from x's sizes)
        h = F.concat([b, a], axis=1)
        _WRITES_OF_A_VALUE[write](x)
        return h, x.shape[1] * 2

    f = trace(fn, symbolic=symbolic, capture_as_const=True)
    for _ in range(3):
        x = _data(2, 4)
        a, b = mge.tensor(x), mge.tensor(x)
        got, want = f(a), fn(b)
        np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-6)
        assert int(got[1]) == int(want[1]) == 8
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)  # the argument written
