"""Bugs the jit program fuzzer (`tests/fuzz/jit.py`) found, each minimised to its reproducer: a
trace, in the mode named, must equal the eager function on every call, and a dumped program at
another shape must equal it or raise ShapeGuardError."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.jit import trace
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


# program 18: a fill of a shape tensor's shape. The recording made F.zeros(Tensor(x.shape)) a
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
