"""Tests of megengine/core/tensor_array_method.py (`megengine.core.tensor.array_method`):
upstream's arithmetic helpers against numpy and torch."""
import numpy as np
import pytest
import torch

import megengine as mge
from megengine.core.ops.builtin import Elemwise
from megengine.core.tensor.array_method import (_broadcast, _elwise, _matmul, _reduce,
                                                _remove_axis, _reshape, _transpose)
from oracle import check_against_torch

rng = np.random.RandomState(0)


def test_elwise_converts_numbers_and_integers_as_upstream():
    a = np.array([1, 2, 4], np.int32)
    t = mge.tensor(a)
    got = _elwise(t, 2, mode=Elemwise.Mode.TRUE_DIV)  # int / int computes in float32
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.numpy(), a / 2)
    got = _elwise(t, 1.5, mode="add")  # a float number lifts the int tensor
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.numpy(), a + 1.5)
    assert _elwise(t, mode="floor") is t  # integers are their own floor
    np.testing.assert_allclose(_elwise(t, mode="exp").numpy(), np.exp(a), rtol=1e-6)
    x = rng.uniform(-0.9, 0.9, 5).astype(np.float32)
    check_against_torch(lambda p: _elwise(p, mode="erfinv"), torch.erfinv, x, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown mode"):
        _elwise(t, mode="frobnicate")


@pytest.mark.parametrize("mode,np_fn", [("sum", np.sum), ("product", np.prod),
                                        ("min", np.min), ("max", np.max), ("mean", np.mean)])
def test_reduce_methods_match_numpy(mode, np_fn):
    x = rng.uniform(0.5, 1.5, (2, 3, 4)).astype(np.float32)
    t = mge.tensor(x)
    f = _reduce(mode)
    np.testing.assert_allclose(f(t).numpy(), np_fn(x), rtol=1e-5)
    np.testing.assert_allclose(f(t, axis=1).numpy(), np_fn(x, axis=1), rtol=1e-5)
    np.testing.assert_allclose(f(t, axis=(0, -1), keepdims=True).numpy(),
                               np_fn(x, axis=(0, 2), keepdims=True), rtol=1e-5)
    b = np.array([[True, False], [True, True]])
    got = f(mge.tensor(b), axis=1)
    if mode in ("min", "max"):
        assert got.dtype == np.bool_
    np.testing.assert_allclose(got.numpy(), np_fn(b.astype(np.int32), axis=1))


def test_reduce_gradient_matches_torch():
    x = rng.randn(3, 4).astype(np.float32)
    check_against_torch(lambda t: _reduce("mean")(t, axis=[0, 1]), torch.mean, x)


def test_shape_helpers_and_matmul():
    x = rng.randn(2, 3).astype(np.float32)
    t = mge.tensor(x)
    np.testing.assert_array_equal(_transpose(t, (1, 0)).numpy(), x.T)
    np.testing.assert_array_equal(_reshape(t, (3, 2)).numpy(), x.reshape(3, 2))
    np.testing.assert_array_equal(_reshape(t, mge.tensor([6])).numpy(), x.ravel())
    np.testing.assert_array_equal(_broadcast(t[:1], (4, 3)).numpy(),
                                  np.broadcast_to(x[:1], (4, 3)))
    assert _remove_axis(mge.tensor(np.zeros((1, 3, 1))), None).shape == (3,)
    assert _remove_axis(mge.tensor(np.zeros((1, 3, 1))), -1).shape == (1, 3)
    y = rng.randn(3, 4).astype(np.float32)
    check_against_torch(lambda p, q: _matmul(p, q), torch.matmul, x, y)
    got = _matmul(t, mge.tensor(np.ones((3, 1), np.int32)))  # int operand promoted
    np.testing.assert_allclose(got.numpy(), x.sum(1, keepdims=True), rtol=1e-6)


class _ElwiseTensor(mge.Tensor):
    """A user's subclass whose operators are `_elwise` itself, as MegEngine/invis writes them
    (upstream's apply is C++ and never calls them back)."""

    def __add__(self, other):
        return _elwise(self, other, mode=Elemwise.Mode.ADD)

    def __mul__(self, other):
        return _elwise(self, other, mode=Elemwise.Mode.MUL)

    def __sub__(self, other):
        return _elwise(self, other, mode=Elemwise.Mode.SUB)

    def __rsub__(self, other):
        return _elwise(other, self, mode=Elemwise.Mode.SUB)

    def __gt__(self, other):
        return _elwise(other, self, mode=Elemwise.Mode.LT)


def test_elwise_on_a_subclass_whose_operators_call_elwise():
    a = rng.randn(3, 4).astype(np.float32)
    b = rng.randn(3, 4).astype(np.float32)
    x, y = _ElwiseTensor(a), _ElwiseTensor(b)
    np.testing.assert_allclose((x + y).numpy(), a + b, rtol=1e-6)
    np.testing.assert_allclose((x * 2.0).numpy(), a * 2, rtol=1e-6)
    # modes lowered onto several Tensor operators: fused ones and the backward kernels
    np.testing.assert_allclose(_elwise(x, y, 1.0, mode="fuse_mul_add3").numpy(), a * b + 1,
                               rtol=1e-6)
    np.testing.assert_allclose(_elwise(x, y, mode="sigmoid_grad").numpy(), b * a * (1 - a),
                               rtol=1e-5)
    # gradients reach subclass inputs as any tensor's (oracle: torch)
    from megengine.autodiff import GradManager

    gm = GradManager().attach([x, y])
    dz = rng.randn(3, 4).astype(np.float32)
    with gm:
        gm.backward(x * y + x, mge.tensor(dz))
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    (ta * tb + ta).backward(torch.tensor(dz))
    np.testing.assert_allclose(x.grad.numpy(), ta.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(y.grad.numpy(), tb.grad.numpy(), rtol=1e-6)
