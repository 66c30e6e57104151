"""Tests of megengine/functional/math.py: reductions, statistics, sorting, linear algebra."""
import contextlib
from functools import partial
import math

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F

from devices import host_default_device, requires_cuda, simulated_gpu_runtime  # noqa: F401
from oracle import (check_against_torch, check_float16_against_torch, within_a_float16_step,
                    raises_as_upstream)
from megengine.autodiff import GradManager


check = partial(check_against_torch, atol=1e-5)


def rand(*shape, low=-2.0, high=2.0):
    return np.asarray(np.random.uniform(low, high, shape), dtype=np.float32)


AXES = [None, 0, 1, -1, (0, 2)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean", "prod", "max", "min"])
def test_reductions(name, axis, keepdims):
    x = rand(2, 3, 4, low=0.5, high=1.5)

    def torch_fn(t):
        dims = tuple(range(t.ndim)) if axis is None else axis
        if name in ("max", "min"):
            dims = (dims,) if isinstance(dims, int) else dims
            fn = torch.amax if name == "max" else torch.amin
            return fn(t, dim=dims, keepdim=keepdims)
        if name == "prod":  # torch.prod takes one dim: reduce the highest first
            out = t
            dims = (dims,) if isinstance(dims, int) else dims
            for d in sorted((d % t.ndim for d in dims), reverse=True):
                out = torch.prod(out, dim=d, keepdim=keepdims)
            return out
        return getattr(torch, name)(t, dim=dims, keepdim=keepdims)

    check(lambda t: getattr(F, name)(t, axis=axis, keepdims=keepdims), torch_fn, x)


def test_reduction_dtypes():
    x = mge.tensor([[1, 2, 3], [4, 5, 6]])
    assert F.sum(x).dtype == np.int32 and F.sum(x).item() == 21
    assert F.mean(x).dtype == np.float32 and F.mean(x).item() == 3.5
    np.testing.assert_array_equal(F.prod(x, axis=1).numpy(), [6, 120])
    np.testing.assert_array_equal(F.max(x, axis=0).numpy(), [4, 5, 6])


def test_small_integer_sums_keep_their_dtype_and_wrap():
    # upstream's F.sum docstring: 128 int8 ones sum to int8 -128; bools count as int32
    s = F.sum(F.ones(128, dtype="int8"))
    assert s.dtype == np.int8 and s.item() == -128
    p = F.prod(mge.tensor(np.full(3, 40, np.int16)))  # 64000 wraps to 64000 - 65536
    assert p.dtype == np.int16 and p.item() == 64000 - 65536
    b = F.sum(mge.tensor(np.array([True, False, True])))
    assert b.dtype == np.int32 and b.item() == 2


@pytest.mark.parametrize("name", ["max", "min"])
def test_an_empty_reduced_axis_with_an_answer_of_no_values_gives_that_answer(name):
    # (0, 0) over axis 0 is (0,): upstream 1.13 gives it (upstream_calls 291321), where earlier
    # versions of this fork refused as torch does; an answer with values still raises
    x = mge.tensor(np.zeros((0, 0), np.int8))
    for axis, keepdims, shape in ((0, False, (0,)), (1, True, (0, 1)), ((0, 1), False, ())):
        if shape == ():
            with pytest.raises(ValueError, match=f"{name}: cannot reduce over axis 0"):
                getattr(F, name)(x, axis, keepdims)
            continue
        y = getattr(F, name)(x, axis, keepdims)
        assert y.shape == shape and y.dtype == np.int8
    with pytest.raises(ValueError, match=f"{name}: cannot reduce over axis 0 of an empty "):
        getattr(x.reshape(0, 3), name)(axis=0)  # ((3,): three values of no elements)
    with pytest.raises(RuntimeError, match="of an empty"):  # (upstream's, measured)
        getattr(x.reshape(0, 3), name)(axis=0)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_argmin(name):
    x = rand(3, 4, 5)
    t = torch.tensor(x)
    out = getattr(F, name)(mge.tensor(x))
    assert out.dtype == np.int32 and out.ndim == 0
    assert out.item() == getattr(torch, name)(t).item()
    for axis in (0, 1, -1):
        for keepdims in (False, True):
            out = getattr(F, name)(mge.tensor(x), axis=axis, keepdims=keepdims)
            assert out.dtype == np.int32
            np.testing.assert_array_equal(
                out.numpy(), getattr(torch, name)(t, dim=axis, keepdim=keepdims).numpy())
    with pytest.raises(ValueError, match=name):
        getattr(F, name)(mge.tensor(x), keepdims=True)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
def test_var_std(axis, keepdims):
    x = rand(2, 3, 4)
    dims = None if axis is None else axis
    check(lambda t: F.var(t, axis, keepdims),
          lambda t: torch.var(t, dim=dims, unbiased=False, keepdim=keepdims), x)
    check(lambda t: F.std(t, axis, keepdims),
          lambda t: torch.std(t, dim=dims, unbiased=False, keepdim=keepdims), x, rtol=1e-4)


@pytest.mark.parametrize("name", ["var", "std"])
def test_var_std_of_float16_take_the_deviations_in_float32(name):
    # numpy's float16 mean is rounded before the deviations are taken (1000.25 has no float16)
    # and their squares go subnormal: var was 0.375 for 0.3125, std 0.612 for 0.559
    def ours(t):
        return getattr(F, name)(t, axis=1)

    def theirs(t):
        return getattr(torch, name)(t, dim=1, correction=0)

    x = np.array([[1000.0, 1000.5, 1001.0, 999.5],  # (values of fuzz case std 51062, float16)
                  [-0.126953125, -0.127807617, -0.126953125, -0.127807617]], np.float32)
    check_float16_against_torch(ours, theirs, x)
    check_float16_against_torch(ours, theirs, 1000 + rand(3, 4096))


def test_var_of_integers_is_float32():
    out = F.var(mge.tensor([[1, 2], [3, 4]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.item(), 1.25)


@pytest.mark.parametrize("ord", [None, 1, 2, 3, 0.5])
@pytest.mark.parametrize("axis", [None, 0, 1], ids=str)
def test_norm(ord, axis):
    x = rand(3, 4)
    p = 2 if ord is None else ord
    check(lambda t: F.norm(t, ord, axis), lambda t: torch.linalg.vector_norm(t, p, dim=axis), x,
          rtol=1e-4)
    check(lambda t: F.norm(t, ord, axis, keepdims=True),
          lambda t: torch.linalg.vector_norm(t, p, dim=axis, keepdim=True), x, rtol=1e-4)


@pytest.mark.parametrize("ord", [np.int64(1), np.int32(2), np.float32(3), np.float64(np.inf),
                                 np.int64(0), mge.tensor(2), mge.tensor(3.0)], ids=repr)
def test_norm_takes_a_numpy_scalar_or_0d_tensor_order(ord):
    # upstream 1.13 takes a 0-d Tensor (measured) and refuses a numpy scalar by accident
    x = rand(3, 4)
    x[1, 2] = 0
    want = torch.linalg.vector_norm(torch.tensor(x), float(ord.item()), dim=1).numpy()
    got = F.norm(mge.tensor(x), ord, axis=1)
    assert got.dtype == F.norm(mge.tensor(x), ord.item(), axis=1).dtype  # (int32 for order 0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("ord", [None, 1, 3])
@pytest.mark.parametrize("axis", [(), []], ids=repr)
def test_norm_over_no_axis_is_each_absolute_value(ord, axis):
    # as upstream 1.13's (measured); ATen's vector norm read dim=() as every axis and the
    # result (one number) did not fit the input's shape
    x = rand(3, 4)
    check(lambda t: F.norm(t, ord, axis), lambda t: t.abs(), x, rtol=1e-5)
    assert F.norm(mge.tensor(x), ord, axis, keepdims=True).shape == x.shape
    np.testing.assert_allclose(F.normalize(mge.tensor(x), ord or 2, axis).numpy(), np.sign(x),
                               rtol=1e-6)


@pytest.mark.parametrize("ord", ["2", [2], mge.tensor([2.0, 1.0])], ids=repr)
def test_norm_of_an_order_that_is_no_number_says_what_it_takes(ord):
    with pytest.raises(TypeError, match="^norm: ord must be a number"):
        F.norm(mge.tensor(rand(3, 4)), ord, axis=1)


def test_matmul_of_vectors_of_two_lengths_names_matmul():
    # two vectors go to F.dot, whose error named dot
    with pytest.raises(ValueError, match=r"matmul: vectors must have one length, got shapes "
                                         r"\(4,\) and \(5,\)"):
        F.matmul(mge.tensor(rand(4)), mge.tensor(rand(5)))
    # a 0-d operand: upstream asserts (measured), and the error is a ValueError too
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match="operands must be at least 1-D"):
            F.matmul(mge.tensor(2.0), mge.tensor(rand(3)))


@pytest.mark.parametrize("ord", [math.inf, -math.inf, 0, 2])
def test_norm_axis_errors_name_norm(ord):
    # the special orders compute with F.max / F.min / F.sum, whose errors named those
    with pytest.raises(ValueError, match="norm: axis -3 is out of range for a tensor with 2"):
        F.norm(mge.tensor(rand(3, 4)), ord, axis=-3)


@pytest.mark.parametrize("ord", [1, 2, math.inf])
def test_normalize_errors_name_normalize_and_its_argument(ord):
    # it computes with F.norm and F.clip, whose errors named those (order 2 of float32 runs an
    # op of its own: those words were normalize's already)
    x = mge.tensor(rand(3, 4))
    with pytest.raises(ValueError, match="^normalize: axis 2 is out of range for a tensor with 2"):
        F.normalize(x, ord, axis=2)
    with pytest.raises(ValueError, match=r"^normalize: axis \(1, 1\) names the same dim twice"):
        F.normalize(x, ord, axis=(1, 1))
    # a string eps: float() took "1e-3" (and its words for "x" named nothing), F.clip named clip
    for eps in ("x", "1e-3"):
        with pytest.raises(TypeError, match="^normalize: eps must be a number"):
            F.normalize(x, ord, axis=1, eps=eps)


def test_norm_of_inf_order_over_an_empty_axis_names_norm():
    # order -inf is the min of |x|, whose error named min
    with pytest.raises(ValueError, match=r"^norm: cannot reduce over axis 0 of an empty tensor "
                                         r"\(shape \(0,\)\): the min of no elements"):
        F.norm(mge.tensor(np.zeros(0, np.float32)), -math.inf, axis=0)


@pytest.mark.parametrize("ord", [math.inf, -math.inf, 0])
def test_norm_special_orders(ord):
    x = rand(3, 4)
    x[1, 2] = 0
    if ord == 0:
        out = F.norm(mge.tensor(x), 0, axis=1)
        np.testing.assert_array_equal(out.numpy(), torch.linalg.vector_norm(
            torch.tensor(x), 0, dim=1).numpy())
        return
    check(lambda t: F.norm(t, ord, axis=1), lambda t: torch.linalg.vector_norm(t, ord, dim=1), x)


def test_norm_of_zero_vector_has_zero_gradient():
    check(lambda t: F.norm(t, axis=1), lambda t: torch.linalg.vector_norm(t, dim=1),
          np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("path", ["aten", "arrays"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("axis", [None, 1, (0, 2), -1], ids=str)
def test_two_norm_and_normalize_on_aten_and_array_code(monkeypatch, host_default_device, axis,
                                                       dtype, path):
    # the 2-norm's forward runs on ATen for numpy floats ("arrays": the numpy code CuPy also
    # runs); a transposed (3, 5, 7) input with one all-zero row (gradient 0, normalize's eps),
    # torch in float64 as the oracle; the gradient of normalize through the norm
    from megengine.functional import _aten

    ran = []
    view = _aten.view
    monkeypatch.setattr(_aten, "view", lambda a: ran.append(1) or view(a))
    rs = np.random.RandomState(6)
    stored = rs.randn(7, 5, 3).astype(dtype)
    stored[:, 2, 1] = 0  # x[1, 2, :] = 0: a zero row along the last axis
    dy = rs.randn(3, 5, 7)
    avoid = _aten.avoided("norm") if path == "arrays" else contextlib.nullcontext()
    with avoid:
        t = mge.tensor(stored, dtype=dtype)
        with GradManager().attach(t) as gm:
            y = F.normalize(F.transpose(t, (2, 1, 0)), axis=axis)
            n = F.norm(F.transpose(t, (2, 1, 0)), axis=axis)
            gm.backward([y, n], [mge.tensor(dy, dtype=dtype),
                                 mge.tensor(np.ones(n.shape), dtype=dtype)])
    assert bool(ran) == (path == "aten")
    tt = torch.tensor(stored.astype(np.float64), requires_grad=True)
    x = tt.permute(2, 1, 0)
    dims = axis if axis is not None else (0, 1, 2)
    norm = torch.linalg.vector_norm(x, 2, dim=dims, keepdim=True)
    want_y = x / norm.clamp_min(1e-12)
    want_n = torch.linalg.vector_norm(x, 2, dim=dims)
    torch.autograd.backward([want_y, want_n], [torch.tensor(dy), torch.ones(want_n.shape,
                                                                             dtype=torch.float64)])
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert y.dtype == n.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y.numpy(), want_y.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(n.numpy(), want_n.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("axis", [1, None], ids=str)
def test_normalize_second_order(host_default_device, axis):
    # a penalty on normalize's gradient (the ATen op's grad_graph). (No zero row: torch's own
    # second derivative of the norm is NaN there.)
    from oracle import check_second_order_against_torch

    x = rand(4, 5)
    dims = (0, 1) if axis is None else axis
    check_second_order_against_torch(
        lambda t: (F.normalize(t * t, axis=axis) * mge.tensor(np.arange(20.0).reshape(4, 5))
                   ).sum(),
        lambda t: (t * t / torch.linalg.vector_norm(t * t, 2, dim=dims, keepdim=True)
                   .clamp_min(1e-12) * torch.arange(20.0).reshape(4, 5)).sum(), x)


@pytest.mark.parametrize("axis", [0, 1, None], ids=str)
def test_normalize(axis):
    x = rand(3, 4)
    dims = axis if axis is not None else (0, 1)
    check(lambda t: F.normalize(t, axis=axis),
          lambda t: torch.nn.functional.normalize(t.reshape(-1) if axis is None else t,
                                                  dim=0 if axis is None else dims).reshape(3, 4),
          x, rtol=1e-4)
    check(lambda t: F.normalize(t, ord=1, axis=1),
          lambda t: torch.nn.functional.normalize(t, p=1, dim=1), x, rtol=1e-4)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum(axis):
    check(lambda t: F.cumsum(t, axis), lambda t: torch.cumsum(t, axis), rand(3, 4, 5))
    ints = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    out = F.cumsum(mge.tensor(ints), 1)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out.numpy(), [[1, 3, 6], [4, 9, 15]])


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 6), (2, 3, 5)], ids=str)  # (3-d: upstream's 2-d at most)
def test_sort_argsort(shape, descending):
    x = np.random.permutation(np.prod(shape)).reshape(shape).astype(np.float32)  # distinct
    check(lambda t: F.sort(t, descending)[0], lambda t: torch.sort(t, descending=descending)[0], x)
    vals, idx = F.sort(mge.tensor(x), descending)
    assert idx.dtype == np.int32
    expect = torch.sort(torch.tensor(x), descending=descending)[1]
    np.testing.assert_array_equal(idx.numpy(), expect.numpy())
    np.testing.assert_array_equal(F.argsort(mge.tensor(x), descending).numpy(), idx.numpy())


@pytest.mark.parametrize("no_sort", [False, True])
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("shape,k", [((8,), 3), ((3, 6), 2), ((3, 6), 6), ((2, 3, 6), 4)], ids=str)
def test_topk(shape, k, descending, no_sort):
    x = np.random.permutation(np.prod(shape)).reshape(shape).astype(np.float32)
    vals, idx = F.topk(mge.tensor(x), k, descending=descending, no_sort=no_sort)
    tv, ti = torch.topk(torch.tensor(x), k, largest=descending, sorted=True)
    assert idx.dtype == np.int32 and vals.shape == tuple(tv.shape)
    if no_sort:  # any order: compare as sets per row
        np.testing.assert_array_equal(np.sort(vals.numpy(), -1), np.sort(tv.numpy(), -1))
    else:
        np.testing.assert_array_equal(vals.numpy(), tv.numpy())
        np.testing.assert_array_equal(idx.numpy(), ti.numpy())
    picked = np.take_along_axis(x, idx.numpy().astype(np.int64), -1)
    np.testing.assert_array_equal(picked, vals.numpy())
    # the gradient goes to the picked elements
    check(lambda t: F.topk(t, k, descending=descending)[0],
          lambda t: torch.topk(t, k, largest=descending)[0], x)


def test_topk_kth_only_and_upstream_example():
    x = np.array([2, 4, 6, 8, 7, 5, 3, 1], np.float32)
    top, idx = F.topk(mge.tensor(x), 5)
    np.testing.assert_array_equal(top.numpy(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(idx.numpy(), [7, 0, 6, 1, 5])
    m = np.random.permutation(24).reshape(4, 6).astype(np.float32)
    kth, kidx = F.topk(mge.tensor(m), 3, kth_only=True)
    tv, ti = torch.kthvalue(torch.tensor(m), 3)
    np.testing.assert_array_equal(kth.numpy(), tv.numpy())
    np.testing.assert_array_equal(kidx.numpy(), ti.numpy())
    check(lambda t: F.topk(t, 3, kth_only=True)[0], lambda t: torch.kthvalue(t, 3)[0], m)
    # k = 0: upstream's kernel refuses it with a RuntimeError (its C++ check; measured), what a
    # ValueError is here too, for a plain k and a 0-d tensor k, kth_only or not
    for error in (ValueError, RuntimeError):
        for k, kth_only in ((0, False), (mge.tensor(0), False), (0, True)):
            with pytest.raises(error, match="topk: k must not be 0"):
                F.topk(mge.tensor(x), k, kth_only=kth_only)


def _kth_shared_by_ties(t, k, descending):
    """torch's k-th value of each row as a reduction whose gradient ties share equally: the
    extreme (amin / amax) of the elements not past the k-th, which are the k-th's ties."""
    kth = torch.topk(t, k, largest=descending)[0][..., -1:].detach()
    if descending:
        return torch.amin(torch.where(t < kth, torch.inf, t), dim=-1)
    return torch.amax(torch.where(t > kth, -torch.inf, t), dim=-1)


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_topk_kth_only_gradient_is_shared_by_the_tied_values(k, descending):
    # upstream 1.13 measured: kth_only's gradient goes in equal parts to every element equal
    # to the k-th value (a row of five ties gives each a fifth), as torch's amax shares its own
    x = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 2, 2, 1, 1, 7, 7, 0, 3, 3],
                  [5, 5, 5, 5, 5, 1, 1, 1, 1, 1]], np.float32)
    check(lambda t: F.topk(t, k, descending=descending, kth_only=True)[0],
          lambda t: _kth_shared_by_ties(t, k, descending), x)
    # hand-computed: the 4 smallest of row 1 end at 2, held three times
    t = mge.tensor(x)
    with GradManager().attach(t) as gm:
        gm.backward(F.topk(t, 4, kth_only=True)[0], mge.tensor([5.0, 7.0, 11.0]))
    np.testing.assert_array_equal(t.grad.numpy()[1], [np.float32(7) / np.float32(3)] * 3 + [0] * 7)


def test_topk_kth_only_gradient_is_recorded_for_a_second_order():
    x = np.array([[2.0, 1.0, 2.0, 0.0]], np.float32)
    t = mge.tensor(x)
    with GradManager().attach(t) as outer:
        with GradManager().attach(t) as inner:
            kth = F.topk(t, 2, descending=True, kth_only=True)[0]  # 2.0, tied twice
            inner.backward((kth * kth).sum())  # d/dx = 2 kth / 2 at each tie
        np.testing.assert_array_equal(t.grad.numpy(), [[2.0, 0.0, 2.0, 0.0]])
        outer.backward(t.grad.sum())  # t.grad.sum() is 2 kth: [1, 0, 1, 0] added to .grad
    np.testing.assert_array_equal(t.grad.numpy(), [[3.0, 0.0, 3.0, 0.0]])


def test_topk_negative_k_flips_the_direction_as_upstream():
    # upstream passes -k to its kernel for descending=True, so a negative k asks the other end;
    # the detection programs' sample_labels calls topk(rand, k=num_samples - num_valid) < 0
    x = np.random.permutation(10).astype(np.float32)
    for k in (3, mge.tensor(3)):
        big, big_idx = F.topk(mge.tensor(x), -k if isinstance(k, int) else -k)
        np.testing.assert_array_equal(big_idx.numpy(), np.argsort(-x)[:3])
        np.testing.assert_array_equal(big.numpy(), np.sort(x)[::-1][:3])
    small, small_idx = F.topk(mge.tensor(x), -3, descending=True)
    np.testing.assert_array_equal(small_idx.numpy(), np.argsort(x)[:3])


def _topk_reference(x, k, descending):
    """The k smallest (largest) of each row in the array code's order: stable by index."""
    order = np.argsort(-x if descending else x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, order, -1), order


@pytest.mark.parametrize("path", ["aten", "arrays"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("nan", [True, False], ids=["nan", "numbers"])
def test_topk_aten_and_array_code_agree_on_ties_nan_and_strides(monkeypatch, host_default_device,
                                                              descending, dtype, path, nan):
    # float rows with ties inside the top k (integer values) and NaNs (or none: on the CPU
    # ATen's largest first serves a descending call, NaNs send it to the smallest of -x), an
    # odd row length, a transposed input; "arrays": the numpy code CuPy also runs. Indices
    # among equal values come in index order on both paths; a NaN is never picked before a
    # number.
    from megengine.functional import _aten

    ran = []
    view = _aten.view
    monkeypatch.setattr(_aten, "view", lambda a: ran.append(1) or view(a))
    rs = np.random.RandomState(4)
    # the 6 smallest and the 6 largest of each row hold ties, but not at the 6th place (which
    # of several equal values there is picked is unspecified, as with upstream's kernel)
    row = [0, 0, 1, 1, 1, 3, 97, 98, 98, 99, 99, 99, np.nan if nan else 50] + list(range(10, 18))
    x = np.stack([rs.permutation(row) for _ in range(7)]).astype(dtype)  # (7, 21)
    stored = np.ascontiguousarray(x.T)  # used as stored.T: a transposed input
    def avoid():
        # (forced: rows this short are otherwise sorted by the array code, see TopK.short)
        return _aten.avoided("topk") if path == "arrays" else _aten.forced("topk")

    with avoid():
        t = mge.tensor(stored, dtype=dtype)
        with GradManager().attach(t) as gm:
            vals, idx = F.topk(t.T, 6, descending=descending)
            gm.backward(vals, mge.tensor(np.arange(42, dtype=dtype).reshape(7, 6), dtype=dtype))
    assert bool(ran) == (path == "aten")
    want_v, want_i = _topk_reference(x, 6, descending)
    np.testing.assert_array_equal(idx.numpy(), want_i)
    np.testing.assert_array_equal(vals.numpy(), want_v)
    grad = np.zeros_like(x)
    np.put_along_axis(grad, want_i, np.arange(42, dtype=dtype).reshape(7, 6), -1)
    np.testing.assert_array_equal(t.grad.numpy(), grad.T)
    # no_sort: the same set in any order
    with avoid():
        v2, i2 = F.topk(mge.tensor(x, dtype=dtype), 6, descending=descending, no_sort=True)
    np.testing.assert_array_equal(np.sort(i2.numpy(), -1), np.sort(want_i, -1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("shape,k", [((8, 10), 5), ((64, 10), 1), ((2, 3, 7), 7), ((4, 32), 6)],
                         ids=str)
def test_topk_of_short_rows_sorts_each_row_once(monkeypatch, host_default_device, shape, k,
                                                descending, dtype):
    # short rows on the CPU skip ATen's topk (TopK.short): the order is torch's stable sort of
    # the key (equal values by index, -0.0 equal to 0.0, NaN last), the gradient torch's
    # through the gather at that order
    from megengine.functional import _aten

    ran = []
    view = _aten.view
    monkeypatch.setattr(_aten, "view", lambda a: ran.append(1) or view(a))
    rs = np.random.RandomState(5)
    x = rs.randint(-3, 4, shape).astype(dtype)  # many ties
    x.reshape(-1)[::7] = np.nan
    x.reshape(-1)[3::11] = -0.0
    dy = rs.randn(*shape[:-1], k)
    t = mge.tensor(x, dtype=dtype)
    with GradManager().attach(t) as gm:
        vals, idx = F.topk(t, k, descending=descending)
        gm.backward(vals, mge.tensor(dy, dtype=dtype))
    assert not ran
    tx = torch.tensor(x, requires_grad=True)
    key = -tx.detach() if descending else tx.detach()
    order = torch.sort(key, dim=-1, stable=True)[1][..., :k]
    tv = torch.gather(tx, -1, order)
    tv.backward(torch.tensor(dy))
    assert idx.dtype == np.int32 and vals.dtype == dtype
    np.testing.assert_array_equal(idx.numpy(), order.numpy())
    np.testing.assert_array_equal(vals.numpy(), tv.detach().numpy())
    np.testing.assert_array_equal(np.signbit(vals.numpy()), np.signbit(tv.detach().numpy()))
    np.testing.assert_array_equal(t.grad.numpy(), tx.grad.numpy())
    v2, i2 = F.topk(t, k, descending=descending, no_sort=True)  # the same set, any order
    np.testing.assert_array_equal(np.sort(i2.numpy(), -1), np.sort(order.numpy(), -1))


@pytest.mark.parametrize("descending", [False, True])
def test_topk_k_beyond_row_length_takes_the_whole_row(descending):
    # upstream's TopK clamps k to the row length (dnn/src/common/topk.cpp): Faster R-CNN's RPN
    # asks for the top 2000 scores of feature levels that have fewer anchors
    x = np.random.permutation(12).reshape(2, 6).astype(np.float32)
    vals, idx = F.topk(mge.tensor(x), 10, descending=descending)
    order = np.argsort(-x if descending else x, axis=-1, kind="stable")
    np.testing.assert_array_equal(idx.numpy(), order)
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(x, order, -1))
    kth, kidx = F.topk(mge.tensor(x), 10, descending=descending, kth_only=True)
    np.testing.assert_array_equal(kth.numpy(), np.take_along_axis(x, order, -1)[:, -1])
    check(lambda t: F.topk(t, 10, descending=descending)[0],
          lambda t: torch.sort(t, descending=descending)[0], x)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                   ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2))], ids=str)
def test_matmul(sa, sb):
    check(F.matmul, torch.matmul, rand(*sa), rand(*sb), rtol=1e-4)


# (..., n, k) @ (k, m) runs as one (rows, k) gemm forward and backward (core/ops.py MatMul):
# leading dims of several counts, an empty batch, one operand without gradient, a strided input
@pytest.mark.parametrize("sa", [(2, 3, 4), (2, 2, 3, 4), (0, 3, 4), (3, 1, 4)], ids=str)
def test_matmul_nd_by_matrix(sa):
    check(F.matmul, torch.matmul, rand(*sa), rand(4, 5), rtol=1e-5)
    check(F.matmul, torch.matmul, rand(*sa), rand(4, 5), rtol=1e-5, diff=[0])
    check(F.matmul, torch.matmul, rand(*sa), rand(4, 5), rtol=1e-5, diff=[1])


def test_matmul_strided_nd_by_matrix_and_float64():
    check(lambda a, b: F.matmul(a.transpose(2, 0, 1), b),
          lambda a, b: torch.matmul(a.permute(2, 0, 1), b), rand(3, 4, 2), rand(4, 5), rtol=1e-5)
    a0, b0 = np.random.randn(2, 3, 4), np.random.randn(4, 5)
    a, b = mge.tensor(a0, dtype="float64"), mge.tensor(b0, dtype="float64")
    gm = GradManager().attach([a, b])
    with gm:
        y = F.matmul(a, b)
        gm.backward(y, mge.tensor(np.ones((2, 3, 5)), dtype="float64"))
    assert y.dtype == np.float64 and a.grad.dtype == b.grad.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), a0 @ b0, rtol=1e-13)
    np.testing.assert_allclose(a.grad.numpy(), np.ones((2, 3, 5)) @ b0.T, rtol=1e-13)
    np.testing.assert_allclose(b.grad.numpy(), a0.reshape(6, 4).T @ np.ones((6, 5)), rtol=1e-13)


# An inner dimension of 1 (an outer product): numpy's dot runs BLAS's gemv there, which skips
# a zero factor, so NaN or inf times 0 gave 0 instead of NaN; torch (and upstream) multiply
# every pair. Forward, the gradients, float32 and float64, a (m, 1) by (1,) product and a
# (1, 1) by (1, n) one, F.linear, F.einsum and LSTMCell of hidden size 1 (its recurrent gemm).
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("a0,b0", [
    ([[np.nan], [1.0], [2.0]], [[0.0]]), ([[np.nan], [1.0]], [0.0]), ([[np.inf], [1.0]], [[-0.0]]),
    ([[0.0]], [[np.inf, 1.0, 2.0]]), ([0.0], [[1.0, -np.inf]])], ids=str)
def test_matmul_of_an_inner_dimension_of_one_keeps_nan_of_zero_times_nan_or_inf(dtype, a0, b0):
    a0, b0 = np.array(a0, dtype), np.array(b0, dtype)
    want = torch.matmul(torch.tensor(a0), torch.tensor(b0)).numpy()
    assert np.isnan(want).any()
    np.testing.assert_array_equal(F.matmul(mge.tensor(a0), mge.tensor(b0)).numpy(), want)
    if b0.ndim == 2:
        np.testing.assert_array_equal(F.linear(mge.tensor(a0), mge.tensor(b0.T)).numpy(), want)
        ein = "ik,kj->ij" if a0.ndim == 2 else "k,kj->j"
        np.testing.assert_array_equal(F.einsum(ein, mge.tensor(a0), mge.tensor(b0)).numpy(), want)
    # gradients: dy @ b.T and a.T @ dy, one of which is an inner-dimension-1 product too
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a0, b0))
    w = np.linspace(0.5, 1.5, want.size).reshape(want.shape).astype(dtype)
    (torch.matmul(ta, tb) * torch.tensor(w)).sum().backward()
    a, b = mge.tensor(a0), mge.tensor(b0)
    gm = GradManager().attach([a, b])
    with gm:
        gm.backward((F.matmul(a, b) * mge.tensor(w)).sum())
    np.testing.assert_array_equal(a.grad.numpy(), ta.grad.numpy())
    np.testing.assert_array_equal(b.grad.numpy(), tb.grad.numpy())


def test_an_lstm_cell_of_hidden_size_one_multiplies_every_recurrent_pair():
    import megengine.module as M
    cell = M.LSTMCell(1, 1)
    for p in cell.parameters():
        p[...] = np.ones(p.shape, np.float32)
    cell.weight_hh[...] = np.array([[0.0], [np.inf], [0.0], [0.0]], np.float32)
    x, h, c = (mge.tensor(np.zeros((1, 1), np.float32)) for _ in range(3))
    tcell = torch.nn.LSTMCell(1, 1)
    with torch.no_grad():
        for name, p in tcell.named_parameters():
            p.copy_(torch.tensor(getattr(cell, name).numpy()))
        want = tcell(torch.zeros(1, 1), (torch.zeros(1, 1), torch.zeros(1, 1)))
    got = cell(x, (h, c))
    assert np.isnan(want[0].numpy()).all()  # 0 * inf in the forget gate's product
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())


def test_matmul_transpose_flags():
    a, b = rand(2, 4, 3), rand(2, 5, 4)
    check(lambda x, y: F.matmul(x, y, transpose_a=True, transpose_b=True),
          lambda x, y: torch.matmul(x.transpose(-1, -2), y.transpose(-1, -2)), a, b, rtol=1e-4)
    with pytest.raises(ValueError, match="matmul"):
        F.matmul(mge.tensor(rand(3, 4)), mge.tensor(rand(3, 4)))


def test_dot():
    check(F.dot, torch.dot, rand(6), rand(6))
    assert F.dot(mge.tensor(np.arange(6, dtype=np.float32)),
                 mge.tensor(np.arange(6, dtype=np.float32))).item() == 55.0
    np.testing.assert_allclose(F.dot(mge.tensor([1.0, 2.0]), 3.0).item(), 9.0)
    with pytest.raises(ValueError, match="dot"):
        F.dot(mge.tensor(rand(2, 2)), mge.tensor(rand(2)))


_BOOLS = np.array([[True, False, True], [True, True, False]])


# torch has no bool gemm ("addmm_impl_cpu_" not implemented for 'Bool') and upstream 1.13's
# MatrixMul refuses Bool x Bool (measured: "runtime does not support MatMul(Bool, Bool)");
# numpy would give the logical or of ands, and F.dot (mul + sum) counted the pairs of Trues
@pytest.mark.parametrize("what, call", [
    ("matmul", lambda a, b: F.matmul(a, b.T)),
    ("matmul", lambda a, b: a @ b.T),
    ("matmul", lambda a, b: F.matmul(F.expand_dims(a, 0), F.expand_dims(b.T, 0))),
    ("matmul", lambda a, b: F.matmul(a, b, transpose_b=True)),
    ("matmul", lambda a, b: F.matmul(a[0], b[1])),  # (two vectors: a dot product)
    ("matmul", lambda a, b: a[0] @ b[1]),
    ("dot", lambda a, b: F.dot(a[0], b[1])),
    ("batched_matrix_mul", lambda a, b: F.legacy.batched_matrix_mul(F.expand_dims(a, 0),
                                                                     F.expand_dims(b.T, 0))),
], ids=["matmul", "@", "batched", "transpose_b", "vectors", "@ vectors", "dot", "legacy"])
def test_matrix_products_of_bools_are_refused(what, call):
    a = b = mge.tensor(_BOOLS)
    with pytest.raises(TypeError, match=rf"^{what}: the operands are bool.*astype\('int32'\)"):
        call(a, b)
    with pytest.raises(NotImplementedError, match="Bool"):  # (the oracle refuses it too)
        torch.from_numpy(_BOOLS) @ torch.from_numpy(_BOOLS).T


@pytest.mark.parametrize("other", ["int32", "int8", "float32", "float16"])
def test_matrix_products_of_a_bool_and_another_dtype_promote(other):
    # a bool meeting an integer or float16 is float32 (upstream's dtype_promotion,
    # docs/compatibility.rst): the product of the values, as upstream computes it
    a, b = _BOOLS, np.arange(6).reshape(3, 2).astype(other)
    want = np.dtype("float32")
    for got in (F.matmul(mge.tensor(a), mge.tensor(b)), mge.tensor(a) @ mge.tensor(b),
                F.matmul(mge.tensor(b.T), mge.tensor(a.T))):
        assert got.dtype == want
    np.testing.assert_array_equal(F.matmul(mge.tensor(a), mge.tensor(b)).numpy(),
                                  a.astype(np.float32) @ b.astype(np.float32))
    d = F.dot(mge.tensor(a[0]), mge.tensor(b[:, 0]))
    assert d.dtype == want and d.item() == float(a[0].astype(np.float32) @ b[:, 0])
    assert F.matmul(mge.tensor(a).astype("int32"), mge.tensor(a.T)).dtype == np.float32


def test_dot_of_float16_multiplies_in_float32():
    # earlier versions rounded each product to float16 before adding (the fuzzer's --float16
    # mode): error against the exact result beyond torch's float16 dot's
    check_float16_against_torch(F.dot, torch.dot, rand(4096) * 8, rand(4096) * 8)
    x = np.float16([0.408203125, 2.552734375, -2.57421875])  # the rounded products: -13.49
    y = np.float16([-2.4765625, -2.87890625, 1.99609375])
    exact = float(np.dot(x.astype(np.float64), y.astype(np.float64)))  # -13.4984...
    got = F.dot(mge.tensor(x), mge.tensor(y))
    assert got.dtype == np.float16 and got.item() == np.float16(exact) == -13.5


def test_matinv():
    a = rand(2, 3, 3) + 3 * np.eye(3, dtype=np.float32)
    check(F.matinv, torch.linalg.inv, a, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="matinv"):
        F.matinv(mge.tensor(rand(2, 3)))


def _matinv_gradients(a, r, v, autocast):
    """The first- and second-order gradients of sum(matinv(a) ** 2 * r), the latter of
    sum(first * v), recorded by nested GradManagers, with autocast on or off."""
    from megengine import amp

    p = mge.Parameter(a)
    outer, inner = GradManager().attach(p), GradManager().attach(p)
    with amp.autocast(enabled=autocast):
        with outer:
            with inner:
                y = F.matinv(p)
                inner.backward((y * y * mge.tensor(r)).sum())
            first, p.grad = p.grad, None
            outer.backward((first * mge.tensor(v)).sum())
    return first.numpy(), p.grad.numpy()


def test_matinv_gradients_recorded_under_autocast_compute_in_float32():
    # upstream 1.13 measured: under autocast matinv's first- and second-order gradients (an
    # outer GradManager recording) equal float32's bit for bit: its gradient is one op that
    # autocast has no rule for. Earlier versions of this fork computed the recorded gradient's
    # products in float16 (2e-4 and 6e-4 off, relative)
    rng = np.random.RandomState(0)
    a = (rng.rand(4, 4) + 4 * np.eye(4)).astype(np.float32)
    r, v = rng.rand(4, 4).astype(np.float32), rng.rand(4, 4).astype(np.float32)
    first, second = _matinv_gradients(a, r, v, autocast=True)
    want_first, want_second = _matinv_gradients(a, r, v, autocast=False)
    assert first.dtype == second.dtype == np.float32
    np.testing.assert_array_equal(first, want_first)
    np.testing.assert_array_equal(second, want_second)
    t = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    inv = torch.linalg.inv(t)
    (tg,) = torch.autograd.grad((inv * inv * torch.tensor(r, dtype=torch.float64)).sum(), t,
                                create_graph=True)
    (th,) = torch.autograd.grad((tg * torch.tensor(v, dtype=torch.float64)).sum(), t)
    np.testing.assert_allclose(first, tg.detach().numpy(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(second, th.numpy(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("fn", [F.matinv, F.svd])
def test_linalg_of_float16_is_refused_with_megengines_error(fn):
    # earlier versions raised numpy's "array type float16 is unsupported in linalg"; torch's
    # CPU kernels refuse float16 too (the fuzzer's --float16 mode)
    a = rand(3, 3) + 3 * np.eye(3, dtype=np.float32)
    with pytest.raises(RuntimeError):
        getattr(torch.linalg, "inv" if fn is F.matinv else "svd")(torch.tensor(a).half())
    with pytest.raises(TypeError, match=r"float16 matrices are not supported.*astype\('float32'\)"):
        fn(mge.tensor(a.astype(np.float16)))


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
def test_matinv_of_a_singular_matrix_raises_as_upstream(dtype):
    # upstream raises (its CUDA kernel: "the U is exactly singular"), as torch.linalg.inv does
    singular = np.array([[1, 2], [2, 4]], dtype)
    with pytest.raises(RuntimeError):
        torch.linalg.inv(torch.tensor(singular))
    with pytest.raises(RuntimeError, match=r"^matinv: the matrix is singular .* no inverse"):
        F.matinv(mge.tensor(singular, dtype=dtype))
    batch = np.stack([np.eye(2, dtype=dtype), singular, np.zeros((2, 2), dtype)])
    with pytest.raises(RuntimeError, match="^matinv: matrix 1 of the batch is singular"):
        F.matinv(mge.tensor(batch.reshape(1, 3, 2, 2)[0], dtype=dtype))
    with pytest.raises(RuntimeError, match=r"^matinv: matrix \(0, 1\) of the batch"):
        F.matinv(mge.tensor(batch.reshape(1, 3, 2, 2), dtype=dtype))
    # a matrix holding an infinity before the singular one is not named (its rank was an SVD
    # of the infinity's: LAPACK's error printed, rank 0, matrix 0 named)
    batch[0, 0, 1] = np.inf
    with pytest.raises(RuntimeError, match="^matinv: matrix 1 of the batch is singular"):
        F.matinv(mge.tensor(batch, dtype=dtype))


@requires_cuda
def test_matinv_of_a_singular_matrix_raises_on_a_gpu_where_cupy_does_not(monkeypatch):
    # CuPy's inv does not raise (a zero pivot leaves inf / nan); a NaN input is no singular one
    from megengine.device import get_array_module

    xp = get_array_module("gpu0")
    inv = xp.linalg.inv

    def cupy_inv(a):  # CuPy's rule where numpy would raise
        try:
            return inv(a)
        except np.linalg.LinAlgError:
            return xp.full(a.shape, np.inf, a.dtype)

    monkeypatch.setattr(xp.linalg, "inv", cupy_inv)
    singular = mge.tensor([[[2.0, 0.0], [0.0, 2.0]], [[1.0, 2.0], [2.0, 4.0]]], device="gpu0")
    with pytest.raises(RuntimeError, match="^matinv: matrix 1 of the batch is singular"):
        F.matinv(singular)
    out = F.matinv(mge.tensor([[np.nan, 0.0], [0.0, 1.0]], device="gpu0"))
    assert np.isnan(out.numpy()).any()
    np.testing.assert_array_equal(F.matinv(singular[0]).numpy(), [[0.5, 0.0], [0.0, 0.5]])


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [0, 1, (0, 1)], ids=str)
def test_logsumexp(axis, keepdims):
    check(lambda t: F.logsumexp(t, axis, keepdims),
          lambda t: torch.logsumexp(t, axis, keepdim=keepdims), rand(3, 4, low=-5, high=5))
    big = mge.tensor([[1000.0, 1000.0], [-1000.0, -1000.0]])
    np.testing.assert_allclose(F.logsumexp(big, 1).numpy(), [1000 + np.log(2), -1000 + np.log(2)])


@pytest.mark.usefixtures("host_default_device")  # the ATen path is the one of numpy arrays
@pytest.mark.parametrize("path", ["aten", "arrays"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logsumexp_of_many_values_matches_torch(monkeypatch, dtype, path):
    # (256, 300) float32: its exps, forward and backward, reach EXP_LOG_ATEN_MIN and run on
    # ATen's exp; "arrays": numpy's, what CuPy runs; a row of -inf and one with an inf;
    # torch in float64 the oracle
    from megengine.functional import _aten, elemwise

    assert 256 * 300 >= elemwise.EXP_LOG_ATEN_MIN[np.dtype(dtype)]
    views = []
    view = _aten.view
    monkeypatch.setattr(_aten, "view", lambda a: views.append(a.dtype) or view(a))
    rs = np.random.RandomState(6)
    x = rs.uniform(-30, 30, (256, 300)).astype(dtype)
    x[0], x[1, 5] = -np.inf, np.inf
    g = rs.randn(256).astype(dtype)
    w = mge.tensor(x, dtype=dtype)
    with _aten.avoided("exp_log") if path == "arrays" else contextlib.nullcontext():
        with GradManager().attach(w) as gm:
            y = F.logsumexp(w, 1)
            gm.backward(y, mge.tensor(g, dtype=dtype))
    assert bool(views) == (path == "aten")
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    want = torch.logsumexp(tx, 1)
    want.backward(torch.tensor(g.astype(np.float64)))
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(y.numpy(), want.detach().numpy(), **tol)
    np.testing.assert_allclose(w.grad.numpy(), tx.grad.numpy(), **tol)


def test_isnan_isinf_sign():
    x = np.array([1.0, np.nan, -np.inf, 0.0, -2.0], np.float32)
    assert F.isnan(mge.tensor(x)).dtype == np.bool_
    np.testing.assert_array_equal(F.isnan(mge.tensor(x)).numpy(), np.isnan(x))
    np.testing.assert_array_equal(F.isinf(mge.tensor(x)).numpy(), np.isinf(x))
    np.testing.assert_array_equal(F.isnan(mge.tensor([1, 2])).numpy(), [False, False])
    s = F.sign(mge.tensor([1, -1, 0]))
    assert s.dtype == np.int32
    np.testing.assert_array_equal(s.numpy(), [1, -1, 0])
    np.testing.assert_array_equal(F.sign(mge.tensor(x[[0, 3, 4]])).numpy(), [1.0, 0.0, -1.0])


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_sign_of_nan_is_zero_as_upstreams_and_torchs(dtype):
    # numpy's sign of NaN is NaN; upstream 1.13 and torch give 0 (measured), the rest as numpy
    x = np.array([np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 2.5, -1e-30], dtype)
    got, want = F.sign(mge.tensor(x, dtype=dtype)), torch.sign(torch.tensor(x))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    for v in (np.nan, -2.0):  # 0-d (numpy's sign gives a scalar there)
        assert F.sign(mge.tensor(v, dtype=dtype)).item() == torch.sign(torch.tensor(v)).item()


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int64"])
def test_sign_of_integers_and_bools_is_torchs_in_their_dtype(dtype):
    # earlier versions of this fork raised numpy's UFuncTypeError for bools
    x = np.array([1, 0, 1, 1] if dtype in ("bool", "uint8") else [3, 0, -2, 1], dtype)
    got, want = F.sign(mge.tensor(x, dtype=dtype)), torch.sign(torch.tensor(x))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_traced_index_results_replay_with_new_values():
    from megengine.jit import trace

    def f(x):
        vals, idx = F.sort(x, descending=True)
        top, tidx = F.topk(x, 2)
        kth, kidx = F.topk(x, 3, kth_only=True)
        return (vals, idx, top, tidx, kth, kidx, F.argsort(x), F.argmax(x, 1), F.argmin(x),
                F.isnan(F.log(x)), F.isinf(x))

    traced = trace(f, symbolic=True)
    for _ in range(3):
        x = mge.tensor(rand(3, 6))
        with np.errstate(invalid="ignore"):  # log of negatives: the NaNs isnan looks for
            pairs = list(zip(traced(x), f(x)))
        for got, expect in pairs:
            np.testing.assert_array_equal(got.numpy(), expect.numpy())


# ----- cross product -----

def test_cross_against_torch_with_gradients():
    check(F.cross, lambda a, b: torch.linalg.cross(a, b), rand(4, 3), rand(4, 3))
    # broadcasting, vectors on another axis
    check(lambda a, b: F.cross(a, b, axis=1), lambda a, b: torch.linalg.cross(a, b, dim=1),
          rand(2, 3, 5), rand(1, 3, 5))
    # two plain 3-vectors: a (3,) vector, as torch's (earlier versions of this fork gave (3, 1))
    check(F.cross, lambda a, b: torch.linalg.cross(a, b), rand(3), rand(3))


def test_cross_axes_like_numpy():
    a, b = rand(3, 4, 5), rand(5, 3)
    np.testing.assert_allclose(F.cross(a, b, axisa=0, axisb=1, axisc=1).numpy(),
                               np.cross(a, b, axisa=0, axisb=1, axisc=1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="size 3"):
        F.cross(rand(4, 2), rand(4, 2))


# ----- svd -----

@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 4, 4)], ids=str)
def test_svd_against_torch_with_gradients(shape):
    # squared singular vectors do not depend on the sign each library picks for a vector
    def ours(a):
        u, s, vh = F.svd(a)
        return u * u, s, vh * vh

    def theirs(a):
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        return u * u, s, vh * vh

    check(ours, theirs, rand(*shape), rtol=1e-4, atol=1e-4)


def test_svd_reconstructs_and_its_options():
    a = rand(6, 4)
    u, s, vh = F.svd(a)
    assert u.shape == (6, 4) and s.shape == (4,) and vh.shape == (4, 4)
    np.testing.assert_allclose((u.numpy() * s.numpy()) @ vh.numpy(), a, rtol=1e-4, atol=1e-5)
    u, s, vh = F.svd(a, full_matrices=True)
    assert u.shape == (6, 6) and vh.shape == (4, 4)
    np.testing.assert_allclose(u.numpy().T @ u.numpy(), np.eye(6), atol=1e-5)
    only_s = F.svd(a, compute_uv=False)
    np.testing.assert_allclose(only_s.numpy(), np.linalg.svd(a, compute_uv=False), rtol=1e-5)
    check(lambda t: F.svd(t, compute_uv=False), lambda t: torch.linalg.svdvals(t), a, rtol=1e-4)


def test_svd_refuses_nan_and_infinity_before_lapack_hangs_on_them():
    # LAPACK's SVD fails on NaN and may never return on an infinity: numpy's svd of this
    # matrix (the special-values fuzzer's, one inf) looped for good, F.svd with it. A separate
    # process, so that a regression fails by its timeout instead of hanging the suite
    import subprocess
    import sys

    code = """if True:
        import numpy as np, megengine as mge, megengine.functional as F
        x = np.float32([[[-0.058425482362508774, np.inf, 0.7572893500328064, -2.019787311553955],
                         [0.8236948847770691, -0.025540409609675407, 2.877866506576538,
                          0.3305942118167877],
                         [-2.6258654594421387, 1.155529260635376, -2.5644168853759766,
                          0.5566294193267822]]])
        for compute_uv in (False, True):
            try:
                F.svd(mge.tensor(x), compute_uv=compute_uv)
            except np.linalg.LinAlgError as e:
                print(e)
        """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("svd: matrix 0 of the batch holds NaN or infinity") == 2, out.stdout
    nan = np.ones((2, 3, 3), np.float32)
    nan[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="matrix 1 of the batch holds NaN or infinity"):
        F.svd(mge.tensor(nan))
    np.testing.assert_allclose(F.svd(mge.tensor(nan[:1]), compute_uv=False).numpy(),
                               np.linalg.svd(nan[:1], compute_uv=False), rtol=1e-5, atol=1e-6)


def test_svd_full_matrices_gradient_through_the_unique_part():
    # the loss reads only U's first K columns: the same gradient as with reduced factors
    a = rand(5, 3)

    def ours(t):
        u, s, vh = F.svd(t, full_matrices=True)
        return (u[:, :3] * u[:, :3]) * s

    def theirs(t):
        u, s, vh = torch.linalg.svd(t, full_matrices=False)
        return (u * u) * s

    check(ours, theirs, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [0, 1, -3, 2])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_along_an_axis_matches_torch_stable_sort(axis, descending):
    # integer-valued floats with ties: the indices pin down stability
    x = np.random.RandomState(4).randint(-3, 4, (3, 4, 5)).astype(np.float32)
    out = check_against_torch(
        lambda t: F.sort(t, descending, axis),
        lambda t: torch.sort(t, dim=axis, descending=descending, stable=True), x, out_index=0)
    _, idx = F.sort(mge.tensor(x), descending=descending, axis=axis)
    _, tidx = torch.sort(torch.tensor(x), dim=axis, descending=descending, stable=True)
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    assert out[0].shape == x.shape


def test_sort_takes_its_scalar_parameters_as_tensors():
    x = np.random.RandomState(5).randn(4, 3).astype(np.float32)
    v, i = F.sort(mge.tensor(x), mge.tensor(True), mge.tensor(0))
    np.testing.assert_array_equal(v.numpy(), -np.sort(-x, axis=0))
    np.testing.assert_array_equal(i.numpy(), np.argsort(-x, axis=0, kind="stable"))



def test_sort_argsort_and_topk_put_nan_last_in_both_orders():
    # upstream 1.13's sort of NaN is no order at all (docs/compatibility.rst); this fork's is
    # numpy's: NaN after every number, ascending and descending (torch puts it first when
    # descending), ties and NaNs in their input order. Hand-computed
    x = mge.tensor(np.array([3.0, np.nan, 1.0, np.nan, 2.0, -np.inf, np.inf], np.float32))
    order = {False: [5, 2, 4, 0, 6, 1, 3], True: [6, 0, 4, 2, 5, 1, 3]}
    for descending, want in order.items():
        v, i = F.sort(x, descending=descending)
        assert i.tolist() == want and F.argsort(x, descending=descending).tolist() == want
        np.testing.assert_array_equal(v.numpy(), x.numpy()[want])
        v, i = F.topk(x, 6, descending=descending)  # the six: five numbers, then a NaN
        assert i.tolist()[:5] == want[:5] and i.tolist()[5] in (1, 3) and np.isnan(v.numpy()[5])

def test_reduction_with_a_repeated_axis_raises_valueerror_and_assertionerror():
    x = mge.tensor(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError):  # numpy's answer to the same request
        np.sum(np.ones((2, 3)), axis=(1, -1))
    for cls in (ValueError, AssertionError):
        with pytest.raises(cls, match="twice"):
            F.sum(x, axis=(-1, 1))
    np.testing.assert_array_equal(F.sum(x, axis=(-2, 1)).numpy(), 6.0)


# an integer Tensor or numpy array is the axis (0-d) or axes (1-d) it holds, as upstream 1.13
# reads F.sum(x, axis=Tensor([0, 1])) and F.softmax(x, axis=Tensor(1)) (measured; its reductions
# raise TypeError "ndim is 0" for a 0-d one, taken here as the int it holds); numpy is the oracle
@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "prod", "var", "std", "argmax",
                                  "argmin", "norm", "logsumexp"])
@pytest.mark.parametrize("axis", [mge.tensor(1), mge.tensor([0, 1]), mge.tensor(-1, "int64"),
                                  np.array(0), np.array([1, 0], np.int64)], ids=repr)
@pytest.mark.parametrize("keepdims", [False, True])
def test_an_integer_tensor_or_array_is_the_axis_it_holds(name, axis, keepdims):
    x = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    ints = np.asarray(axis.numpy() if isinstance(axis, mge.Tensor) else axis).tolist()
    ints = tuple(ints) if isinstance(ints, list) else ints
    if name in ("argmax", "argmin") and isinstance(ints, tuple):
        return  # (over several axes upstream's argmax reduces them one after another)
    if name == "norm":
        want = np.sqrt((x ** 2).sum(axis=ints, keepdims=keepdims))
    elif name == "logsumexp":
        want = np.log(np.exp(x).sum(axis=ints, keepdims=keepdims))
    else:
        want = getattr(np, name)(x, axis=ints, keepdims=keepdims)
    got = getattr(F, name)(mge.tensor(x), axis=axis, keepdims=keepdims)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("axis", [mge.tensor(1.0), mge.tensor([True, False]), np.array(1.5),
                                  mge.tensor([[0, 1]])], ids=repr)
def test_a_tensor_axis_of_floats_bools_or_two_dims_says_what_an_axis_is(axis):
    # a TypeError, and upstream 1.13's RuntimeError (pybind's "Unable to cast" for an axis of
    # another type, measured)
    for cls in (TypeError, RuntimeError):
        with pytest.raises(cls, match="sum: axis must be an int or a sequence of ints"):
            F.sum(mge.tensor(np.ones((2, 3), np.float32)), axis=axis)


def test_check_non_finite_scales_in_place_and_flags_inf_nan():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    ts = [mge.tensor(a), mge.tensor(a + 1)]
    flag = F.math._check_non_finite(ts, 0.5)
    assert flag.dtype == np.int32 and flag.shape == (1,) and flag.numpy()[0] == 0
    np.testing.assert_array_equal(ts[0].numpy(), a * 0.5)
    np.testing.assert_array_equal(ts[1].numpy(), (a + 1) * 0.5)
    for bad in (np.inf, -np.inf, np.nan):
        b = a.copy()
        b[1, 2] = bad
        assert F.math._check_non_finite([mge.tensor(a), mge.tensor(b)]).numpy()[0] == 1


# ----- regressions found by the differential fuzzer (tests/fuzz) -----

def test_max_min_argmax_of_empty_tensor_over_a_nonempty_axis():
    import torch

    x = np.zeros((0, 3), np.float32)
    assert F.max(mge.tensor(x), axis=1).shape == tuple(torch.amax(torch.tensor(x), 1).shape)
    assert F.argmin(mge.tensor(x), axis=1).shape == (0,)
    with pytest.raises(ValueError, match="axis 0 of an empty tensor"):
        F.max(mge.tensor(x), axis=0)


def test_prod_gradient_of_empty_tensor():
    x = mge.tensor(np.zeros((0, 1, 3), np.float32))
    gm = GradManager().attach([x])
    with gm:
        gm.backward(F.prod(x, axis=-1).sum())
    assert x.grad.shape == (0, 1, 3)


def test_logsumexp_and_var_of_empty_axis_match_torch():
    import torch

    x = np.zeros((2, 0), np.float32)
    np.testing.assert_array_equal(F.logsumexp(mge.tensor(x), axis=1).numpy(),
                                  torch.logsumexp(torch.tensor(x), 1).numpy())
    t = mge.tensor(x)
    gm = GradManager().attach([t])
    with gm:
        v = F.var(t, axis=1)
        gm.backward(v.sum() * 0)
    assert np.isnan(v.numpy()).all() and t.grad.shape == (2, 0)


def test_std_gradient_is_zero_where_std_is_zero():
    import torch

    a = np.array([[1.5], [2.0]], np.float32)
    x = mge.tensor(a)
    gm = GradManager().attach([x])
    with gm:
        gm.backward(F.std(x, axis=1).sum())
    t = torch.tensor(a, requires_grad=True)
    torch.std(t, dim=1, correction=0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())


def test_std_of_equal_values_whose_rounded_mean_differs_is_zero_with_a_zero_gradient():
    # the float32 mean of three 0.94708097 is not 0.94708097 (fuzz seed 70172, a broadcast
    # input): the deviations from it were an ulp, std 6e-8 with a gradient of +-1; torch's
    # std is exactly 0 there and its gradient 0
    import torch

    v = np.float32(0.94708097)
    assert np.full(3, v).mean() != v  # (the case this test is about)
    a = np.full((2, 3), v, np.float32)
    x = mge.tensor(a)
    gm = GradManager().attach([x])
    with gm:
        s = F.std(x, axis=1)
        gm.backward(s.sum())
    t = torch.tensor(a, requires_grad=True)
    ts = torch.std(t, dim=1, correction=0)
    ts.sum().backward()
    np.testing.assert_array_equal(s.numpy(), ts.detach().numpy())
    np.testing.assert_array_equal(s.numpy(), 0)
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())
    np.testing.assert_array_equal(F.var(x, axis=1).numpy(), 0)


def test_topk_tie_check_tells_a_row_boundary_from_a_tie():
    # the flattened first pass sees 2 == 2 across rows 0 and 1: not a tie within a row
    from megengine.functional.math import _has_equal_neighbours

    assert not _has_equal_neighbours(np, np.array([[1.0, 2.0], [2.0, 3.0]], np.float32))
    assert _has_equal_neighbours(np, np.array([[1.0, 2.0], [3.0, 3.0]], np.float32))
    assert not _has_equal_neighbours(np, np.array([[1.0, 2.0], [3.0, 4.0]])[:, ::-1])
    assert _has_equal_neighbours(np, np.array([[5.0, 3.0], [5.0, 4.0]]).T)  # strided: per row
    assert not _has_equal_neighbours(np, np.array([[5.0, 5.0], [3.0, 4.0]]).T)
    # through F.topk: rows whose k-th and next row's first values meet keep ATen's order,
    # which is then (value, index) order anyway; a real tie is ordered by index
    x = np.array([[4.0, 1.0, 3.0, 3.0], [3.0, 0.0, 2.0, 9.0]], np.float32)
    values, indices = F.topk(mge.tensor(x), 2, descending=True)
    np.testing.assert_array_equal(values.numpy(), [[4.0, 3.0], [9.0, 3.0]])
    np.testing.assert_array_equal(indices.numpy(), [[0, 2], [3, 0]])


@pytest.mark.parametrize("descending", [False, True])
def test_topk_one_order_test_finds_ties_and_nans_but_not_row_boundaries(descending):
    # a descending call's shortcut: true only for rows strictly in order (no tie, no NaN);
    # what straddles two rows is no tie, and a NaN anywhere (first, last, alone) is found
    from megengine.functional.math import _strictly_ordered

    def ordered(rows):
        a = np.array(rows, np.float32)
        return _strictly_ordered(a[:, ::-1].copy() if descending else a, descending)

    nan, inf = np.nan, np.inf
    assert ordered([[1, 2, 3], [3, 4, 5], [-inf, 0, inf]])  # 3, 3 across rows 0 and 1
    assert ordered([[0, 1]])
    assert not ordered([[1, 2, 3], [3, 3, 5]])
    assert not ordered([[1, 2, inf], [0, inf, inf]])  # (inf - inf is no order either)
    for row in ([nan, 1, 2], [1, 2, nan], [1, nan, 2], [nan, nan, nan]):
        assert not ordered([[1, 2, 3], row])
    assert not _strictly_ordered(np.array([[3.0, 2.0], [5.0, 4.0]]).T, descending)  # strided
    # through F.topk: a NaN among a row's largest, and a tie, each still found
    x = np.array([[1.0, np.nan, 3.0, 2.0], [5.0, 5.0, 1.0, 7.0]], np.float32)
    values, indices = F.topk(mge.tensor(x), 3, descending=True)
    np.testing.assert_array_equal(values.numpy(), [[3.0, 2.0, 1.0], [7.0, 5.0, 5.0]])
    np.testing.assert_array_equal(indices.numpy(), [[2, 3, 0], [3, 0, 1]])


# numpy adds float16 in float16: along a strided axis a sum of 100,000 values in [0, 1) stopped
# growing at 2048 (exact: ~50,000), and a mean's gradient divided by the count read as float16
# (inf from 65505) was 0; torch's and upstream's kernels add in float32 and round once
@pytest.mark.parametrize("fn, torch_fn", [
    (lambda x: F.sum(x, axis=0), lambda x: x.sum(0)),
    (lambda x: x.sum(axis=0, keepdims=True), lambda x: x.sum(0, keepdim=True)),
    (lambda x: F.mean(x), lambda x: x.mean()),
    (lambda x: F.norm(x, axis=0), lambda x: x.norm(dim=0)),
    (lambda x: F.norm(x, ord=3, axis=0), lambda x: x.norm(p=3, dim=0)),
    (lambda x: F.normalize(x, axis=0), lambda x: torch.nn.functional.normalize(x, dim=0)),
    (lambda x: F.logsumexp(x, 0), lambda x: torch.logsumexp(x, 0)),
], ids=["sum", "Tensor.sum", "mean", "norm", "norm3", "normalize", "logsumexp"])
def test_float16_reductions_add_in_float32(fn, torch_fn):
    x = np.random.RandomState(0).rand(100000, 3)
    check_float16_against_torch(fn, torch_fn, x)


def test_float16_norm_squares_in_float32():
    # torch's float16 norm of [300, 400] is 500; squared in float16 the values overflow to inf
    x = mge.tensor([300, 400], dtype="float16")
    assert F.norm(x).numpy() == 500 and F.norm(x, ord=3).dtype == np.float16


def _zero_row(x):
    x[5] = 0  # (normalize: eps is float32's, not float16's 0; a zero row gives 0, as torch's)
    return x


@pytest.mark.parametrize("fn, torch_fn, inputs", [
    (lambda x: F.norm(x, axis=1), lambda t: t.norm(dim=1), _zero_row),
    (lambda x: F.norm(x, ord=3, axis=0), lambda t: t.norm(p=3, dim=0), _zero_row),
    (lambda x: F.normalize(x, axis=1), lambda t: torch.nn.functional.normalize(t, dim=1),
     _zero_row),
    (lambda x: F.var(x, 1), lambda t: t.var(1, unbiased=False), lambda x: x * 3 + 100),
    (lambda x: F.std(x, 0), lambda t: t.std(0, unbiased=False), lambda x: x * 3 + 100),
], ids=["norm", "norm3", "normalize", "var", "std"])
def test_float16_norms_and_variances_compute_in_float32_rounded_once(monkeypatch, fn,
                                                                      torch_fn, inputs):
    # on the CPU from _aten.HALF_MIN values, as torch's CPU kernels: values and gradients
    # within a float16 step of the exact ones (torch in float64 on the same float16 values);
    # var's gradient was g * (2 / n) rounded to float16 first
    from megengine.core import ops  # (its cast: norms' float32 path, `Op.half_in_float32`)
    from megengine.functional import math  # (var's and std's)

    rng = np.random.default_rng(12)
    x = inputs(rng.standard_normal((64, 64))).astype(np.float16)
    taken, real = [], ops.cast
    for module in (ops, math):
        monkeypatch.setattr(module, "cast", lambda a, d: taken.append(np.dtype(d)) or real(a, d))
    w = mge.Parameter(x, device="cpu0")
    with GradManager().attach(w) as gm:
        y = fn(w)
        g = rng.uniform(0.5, 1, y.shape).astype(np.float16)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    want = torch_fn(t)
    want.backward(torch.tensor(g, dtype=torch.float64))
    assert taken[0] == np.float32  # the float32 path ran
    within_a_float16_step(y.numpy(), want.detach().numpy())
    within_a_float16_step(w.grad.numpy(), t.grad.numpy())


def test_float16_prod_multiplies_in_float32():
    # as torch's CUDA kernel and upstream's (torch's CPU kernel multiplies float16 in float16:
    # ~10% off here, as numpy was)
    x = np.random.RandomState(0).uniform(0.99, 1.01, (3000, 3)).astype(np.float16)
    got = F.prod(mge.tensor(x), axis=0)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.numpy(), x.astype(np.float64).prod(0), rtol=2 ** -10)



@pytest.mark.parametrize("fn", ["sum", "mean", "max", "min", "prod", "var", "std", "norm",
                                "logsumexp", "method_sum", "method_max"])
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_a_0d_tensor_reduces_over_axis_0_or_minus_1_as_shape_1(fn, axis, keepdims):
    # upstream 1.13 measured: F.sum(mge.tensor(3.0), -1) is 3.0 of shape (), and keepdims=True
    # gives shape (1,), for every reduction (earlier versions of this fork refused axis -1,
    # kept shape () with keepdims and raised IndexError in var / std)
    x = mge.tensor(3.0)
    with GradManager().attach([x]) as gm:
        if fn.startswith("method_"):
            y = getattr(x, fn[7:])(axis=axis, keepdims=keepdims)
        else:
            y = getattr(F, fn)(x, axis=axis, keepdims=keepdims)
        gm.backward(y.sum())
    t = torch.tensor([3.0], requires_grad=True)
    tfn = {"var": lambda v: v.var(0, unbiased=False), "std": lambda v: v.std(0, unbiased=False),
           "norm": lambda v: v.norm(dim=0), "logsumexp": lambda v: v.logsumexp(0),
           "max": lambda v: v.amax(0), "min": lambda v: v.amin(0)}.get(
        fn.replace("method_", ""), lambda v: getattr(v, fn.replace("method_", ""))(0))
    want = tfn(t)
    want.backward()
    assert y.shape == ((1,) if keepdims else ())
    np.testing.assert_allclose(y.numpy().reshape(()), want.detach().numpy(), rtol=1e-6)
    assert x.grad.shape == () and float(x.grad) == pytest.approx(float(t.grad[0]))


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
def test_argmax_of_a_0d_tensor_over_an_axis_says_it_has_none(fn):
    # upstream asserts "axis 0 is out of bounds for tensor of dimension 0"; earlier versions of
    # this fork raised IndexError("tuple index out of range")
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match="0-d tensor has no axis 0"):
            getattr(F, fn)(mge.tensor(3.0), 0)


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
@pytest.mark.parametrize("axis", [2, -3, (0, 5)])
def test_argmax_over_an_axis_out_of_range_is_also_upstreams_assertionerror(fn, axis):
    # upstream's argmax/argmin assert the axis in Python; other reductions' errors stay
    # ValueError and RuntimeError (their C++ check), which these are as well
    x = mge.tensor(np.zeros((2, 3), np.float32))
    for error in (ValueError, RuntimeError, AssertionError):
        with pytest.raises(error, match="out of range for a tensor with 2 dims"):
            getattr(F, fn)(x, axis)
    # and keepdims without an axis, which upstream asserts against
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match="keepdims=True needs an axis"):
            getattr(F, fn)(x, keepdims=True)


@pytest.mark.parametrize("fn", ["sum", "max", "var", "logsumexp", "norm"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_a_0d_tensor_reduced_over_no_axis_keeps_shape_0d(fn, keepdims):
    # axis=() names no axis: a 0-d tensor stays 0-d with keepdims, as torch's (x.sum(dim=()))
    got = getattr(F, fn)(mge.tensor(3.0), axis=(), keepdims=keepdims)
    assert got.shape == ()


@pytest.mark.parametrize("fn", [F.sum, F.mean, F.max, F.argmax, F.var, F.logsumexp,
                                lambda x, axis: F.softmax(x, axis), lambda x, axis: x.sum(axis)])
def test_reduction_axis_out_of_range_is_also_a_runtime_error(fn):
    # upstream raises RuntimeError (its C++ shape check) for an axis out of range; this is a
    # ValueError too, as numpy's (earlier versions of this fork raised ValueError alone)
    x = mge.tensor(np.ones((2, 3), "float32"))
    for axis in (2, -3):
        with pytest.raises(RuntimeError, match=rf"axis {axis} is out of range") as info:
            fn(x, axis=axis)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("mode", ["max", "min", "sum", "mean", "prod"])
@pytest.mark.parametrize("axis", [0, 1, None])
def test_float16_reductions_on_cpu(mode, axis):
    # reduced in float32 and rounded once: max and min are numpy's own float16 result (exact,
    # NaN propagating), sums, means and products the exact float64 result rounded (within a
    # float16 step: float32 adds 300 terms with error far below it)
    rng = np.random.default_rng(11)
    x = rng.uniform(0.9, 1.1, (300, 40)) if mode == "prod" else rng.standard_normal((300, 40))
    x = x.astype(np.float16)
    x[5, 7] = np.nan if mode in ("max", "min") else x[5, 7]
    y = getattr(F, mode)(mge.tensor(x, device="cpu0"), axis=axis)
    assert y.dtype == np.float16
    if mode in ("max", "min"):
        np.testing.assert_array_equal(y.numpy(), getattr(np, mode)(x, axis=axis))
        return
    exact = getattr(np, mode)(x.astype(np.float64), axis=axis)
    step = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    assert (np.abs(y.numpy().astype(np.float64) - exact) <= step).all()


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
def test_large_float16_argmax_argmin_compare_in_float32_with_numpys_indices(monkeypatch, fn):
    # numpy's float16 argmax / argmin is the oracle (NaNs, ties, signed zeros, infinities)
    from megengine.functional import math

    rng = np.random.default_rng(16)
    x = rng.integers(0, 2 ** 16, (64, 64), dtype=np.uint64).astype(np.uint16).view(np.float16)
    x[:32] = rng.standard_normal((32, 64)).astype(np.float16)  # (finite rows: ties of values)
    x[:8, ::3], x[8:16, 1::2] = 0.0, -0.0
    taken, real = [], math.cast
    monkeypatch.setattr(math, "cast", lambda a, d: taken.append(np.dtype(d)) or real(a, d))
    for axis in (None, 0, 1):
        got = getattr(F, fn)(mge.tensor(x, device="cpu0"), axis)
        np.testing.assert_array_equal(got.numpy(), getattr(np, fn)(x, axis))
    assert taken == [np.float32] * 3  # the float32 path ran


def test_large_float16_sign_computes_in_float32_with_numpys_values(monkeypatch):
    # numpy's float16 sign is the oracle, bit for bit (signed zeros, infinities), NaN's 0
    from megengine.core import ops  # (its cast: the float32 path, `Op.half_in_float32`)

    rng = np.random.default_rng(17)
    x = rng.standard_normal((64, 64)).astype(np.float16)
    x[0, :6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 6e-8]
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda a, d: taken.append(np.dtype(d)) or real(a, d))
    got = F.sign(mge.tensor(x, device="cpu0")).numpy()
    assert got.dtype == np.float16 and taken[0] == np.float32  # the float32 path ran
    want = np.where(np.isnan(x), np.float16(0), np.sign(x))
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("descending", [False, True])
def test_large_float16_topk_and_sort_order_by_their_float32_values(descending):
    # torch's float16 topk gives the values; the indices pick them from x (which of equal
    # values at the k-th place is taken is unspecified, as upstream's); the gradient goes to
    # the picked elements. numpy's stable float16 argsort is sort's oracle, ties included
    rng = np.random.default_rng(18)
    x = (rng.standard_normal((32, 256)) * 4).astype(np.float16)  # (float16: many ties)
    x[0, :3] = [0.0, -0.0, np.inf]  # (NaN: torch's topk takes it first, this fork's last)
    mx = mge.Parameter(x, device="cpu0")
    g = rng.standard_normal((32, 5)).astype(np.float16)
    with GradManager().attach(mx) as gm:
        values, idx = F.topk(mx, 5, descending=descending)
        gm.backward(values, mge.tensor(g, device="cpu0"))
    want = torch.topk(torch.tensor(x), 5, largest=descending, sorted=True).values.numpy()
    assert values.dtype == np.float16
    np.testing.assert_array_equal(values.numpy().view(np.uint16), want.view(np.uint16))
    idx = idx.numpy()
    np.testing.assert_array_equal(np.take_along_axis(x, idx, 1).view(np.uint16),
                                  want.view(np.uint16))
    grad = np.zeros_like(x)
    np.put_along_axis(grad, idx, g, 1)
    np.testing.assert_array_equal(mx.grad.numpy(), grad)
    x[1, :2] = np.nan
    order = np.argsort(-x if descending else x, axis=-1, kind="stable")
    got, got_idx = F.sort(mge.tensor(x, device="cpu0"), descending=descending)
    np.testing.assert_array_equal(got_idx.numpy(), order)
    np.testing.assert_array_equal(got.numpy().view(np.uint16),
                                  np.take_along_axis(x, order, 1).view(np.uint16))
    np.testing.assert_array_equal(F.argsort(mge.tensor(x, device="cpu0"), descending).numpy(),
                                  order)


def test_large_float16_cumsum_is_the_float32_scan_rounded_once():
    # the forward and the gradient (a reversed scan) as float32 scans of the float16 values,
    # each sum rounded once (hand-computed with numpy)
    rng = np.random.default_rng(19)
    x = rng.standard_normal((64, 64)).astype(np.float16)
    g = rng.standard_normal((64, 64)).astype(np.float16)
    mx = mge.Parameter(x, device="cpu0")
    with GradManager().attach(mx) as gm:
        y = F.cumsum(mx, 1)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    np.testing.assert_array_equal(y.numpy(), np.cumsum(x.astype(np.float32), 1)
                                  .astype(np.float16))
    np.testing.assert_array_equal(mx.grad.numpy(), np.cumsum(
        g[:, ::-1].astype(np.float32), 1)[:, ::-1].astype(np.float16))


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.svd(x[0]), RuntimeError, r"must be \(\.\.\., M, N\) matrices",
                 id="svd"),
    pytest.param(lambda x: F.matinv(x), RuntimeError, "must be square matrices", id="matinv"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: RuntimeError from its C++ shape checks; earlier versions of this fork raised a plain ValueError.
    # The error is also a ValueError (what the mistake is) and says what was wrong
    raises_as_upstream(call, (3, 4), upstream, match)


def test_topk_k_that_is_no_int_says_what_to_pass():
    # upstream 1.13 raises TypeError too ("bad operand type for unary -: 'list'"); ours named
    # no argument (int()'s own message)
    x = mge.tensor(np.arange(12, dtype="float32").reshape(3, 4))
    with pytest.raises(TypeError, match=r"topk: k must be an int or a one-element integer "
                                        r"tensor, got \[1, 2\]"):
        F.topk(x, [1, 2])
    # a string or a float with a fraction is no count either: int() parsed "2" and truncated
    # 2.5 to 2 here before; a whole float is the int it holds
    for k in ("2", 2.5):
        with pytest.raises(TypeError, match=rf"topk: k must be an int .*got {k!r}"):
            F.topk(x, k)
    np.testing.assert_array_equal(F.topk(x, 2.0)[0].numpy(), [[0, 1], [4, 5], [8, 9]])


def test_matmul_of_batch_dims_that_do_not_broadcast_raises_a_shape_error():
    # torch is the oracle that these do not multiply; numpy's words ("remapped shapes") named
    # neither the function nor the dims
    a, b = np.ones((3, 2, 2), np.float32), np.ones((3, 2, 2, 3), np.float32)
    with pytest.raises(RuntimeError):
        torch.matmul(torch.tensor(a), torch.tensor(b))
    with pytest.raises(RuntimeError, match=r"^matmul: shapes \(3, 2, 2\) and \(3, 2, 2, 3\) do "
                                           r"not match: their batch dims \(3,\) and \(3, 2\)"):
        F.matmul(mge.tensor(a), mge.tensor(b))


@pytest.mark.parametrize("axis,match", [(5, r"^std: axis 5 is out of range for a tensor with 2 "
                                            r"dims"),
                                        ((1, -1), r"^std: axis \(1, -1\) names the same dim")])
def test_std_of_a_bad_axis_names_std(axis, match):
    # (its errors named var, the op it shares its code with, which the user did not call)
    with pytest.raises(ValueError, match=match):
        F.std(mge.tensor(np.ones((2, 3), np.float32)), axis=axis)
    with pytest.raises(ValueError, match=match.replace("std", "var")):
        F.var(mge.tensor(np.ones((2, 3), np.float32)), axis=axis)


@pytest.mark.parametrize("name", ["var", "std"])
def test_gpu_var_and_std_are_atens_var_mean_and_one_gradient_kernel(name):
    # CUDA: ATen's var_mean forward, one kernel of x and the mean backward (the array code
    # launched six kernels forward and two back, std five more); equal values keep std 0
    # and its gradient 0, as torch's
    rt = simulated_gpu_runtime()
    a = np.random.RandomState(0).randn(3, 4, 5).astype(np.float32)
    a[:, 1] = 0.94708097  # (whose float32 mean is not itself: see the test above)
    x = mge.tensor(a, device="gpu0")
    dy = mge.tensor(np.arange(4, dtype=np.float32), device="gpu0")
    gm = GradManager().attach([x])
    kernels, syncs = rt.kernels, rt.syncs
    with gm:
        y = getattr(F, name)(x, axis=(0, 2))
        gm.backward(y, dy)
    assert rt.kernels - kernels <= (1 if name == "var" else 2) and rt.syncs == syncs
    t = torch.tensor(a, requires_grad=True)
    ty = getattr(torch, name)(t, dim=(0, 2), correction=0)
    ty.backward(torch.arange(4, dtype=torch.float32))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert y.numpy()[1] == 0 and (x.grad.numpy()[:, 1] == 0).all()
    # no axes (axis=()): each value is its own variance, 0 (ATen's dim=[] means every axis)
    none = getattr(F, name)(x, axis=())
    assert none.shape == x.shape and (none.numpy() == 0).all()


@pytest.mark.parametrize("fn", ["sum", "mean", "max", "prod"])
def test_an_axis_a_0d_tensor_lacks_is_refused_naming_its_0_dims(fn):
    # axis 0 or -1 of a 0-d tensor is taken, as upstream reduces it as one of shape (1,);
    # another axis is refused (this fork's message said "a tensor with 1 dims")
    x = mge.tensor(3.0)
    np.testing.assert_allclose(getattr(x, fn)(axis=-1).numpy(), 3.0)
    with pytest.raises(ValueError, match=f"^{fn}: axis 1 is out of range for a tensor with 0 "
                                         r"dims \(a 0-d tensor takes axis 0 or -1\)"):
        getattr(x, fn)(axis=1, keepdims=True)
