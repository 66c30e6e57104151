"""Tests of megengine/functional/nn.py (softmax, linear, dropout, embedding, the F.nn namespace):
values and gradients against torch.nn.functional."""
import gc
import weakref
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.functional import _aten
from megengine.functional import nn as nn_module

from cuda_kernels import emulate
from devices import (host, host_default_device, pool_threads, record_aten_kernels,  # noqa: F401
                     requires_cuda, requires_torch_cuda, skip_unless_aten_serves_the_default_device)
from oracle import (check_against_torch, check_float16_against_torch, float64_value_and_grads,
                    raises_as_upstream)
from oracle import check_second_order_against_torch as check_second_order


def rand(*shape, low=-2.0, high=2.0):
    return np.asarray(np.random.uniform(low, high, shape), dtype=np.float32)


check = partial(check_against_torch, atol=1e-5, check_dtype=True)


# ----- softmax family -----

# Softmax and log_softmax tests run on both paths: array code (the CPU's for short rows, and
# CuPy's when torch has no CUDA: `_aten.avoided`) and ATen's kernels (what CUDA arrays and the
# CPU's long rows take), forced here onto numpy arrays.


@pytest.fixture(params=["arrays", "aten"])
def softmax_path(request, monkeypatch):
    """Run the test on one path; yields the ATen kernels called (names), checked on "aten"."""
    used = []
    if request.param == "arrays":
        with _aten.avoided("softmax"):
            yield used
        return
    skip_unless_aten_serves_the_default_device()
    used = record_aten_kernels(monkeypatch)
    with _aten.forced("softmax"):
        yield used
    assert used, "the ATen path of softmax / log_softmax did not run"


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape,axis,forward_on_aten,backward_on_aten", [
    ((2, 2, 32, 32), -1, (True, True), True), ((2, 2, 32, 32), 2, (False, False), False),
    ((410, 10), -1, (True, True), False), ((64, 32), -1, (True, True), False),
    ((64, 10), -1, (False, True), False), ((8, 32), -1, (False, True), False),
    ((8, 10), -1, (False, True), False), ((128, 32), -1, (True, True), True),
    ((1, 1), -1, (False, True), False),
], ids=str)
def test_softmax_on_cpu_takes_aten_over_the_last_axis_where_measured_faster(
        monkeypatch, log, shape, axis, forward_on_aten, backward_on_aten):
    # measured (see megengine/functional/nn.py's _aten_softmax and _aten_softmax_backward):
    # over the last axis ATen's forward kernel is faster than numpy's passes at every size
    # without a gradient, from 2048 values in a training step; its backward kernel only for
    # rows of 32 or more in inputs of 4096 values or more (numpy's formula on ATen's output
    # below); other axes stay on numpy. ``forward_on_aten``: (with a gradient, without). Every
    # mix gives torch's values and gradients.
    used = record_aten_kernels(monkeypatch)
    x = rand(*shape, low=-5, high=5)
    w = rand(*shape)
    ours, theirs = (F.logsoftmax, torch.log_softmax) if log else (F.softmax, torch.softmax)
    name = "_log_softmax" if log else "_softmax"

    check(lambda t: ours(t, axis), lambda t: theirs(t, axis), x)  # on the default device
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt, axis)
    (yt * torch.from_numpy(w)).sum().backward()
    for grad in (True, False):
        used.clear()
        t = mge.tensor(x, device="cpu0")  # the path a CPU array takes
        with GradManager().attach([t] if grad else []) as gm:
            y = ours(t, axis)
            if grad:
                gm.backward((y * mge.tensor(w, device="cpu0")).sum())
        assert (name in used) == forward_on_aten[0 if grad else 1]
        assert (name + "_backward_data" in used) == (grad and backward_on_aten)
        np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
        if grad:
            np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op_class", [nn_module._Softmax, nn_module._LogSoftmax])
def test_softmax_without_a_gradient_keeps_no_aten_output_for_a_backward(op_class):
    # (128, 32) is large enough for ATen's backward kernel (see the test above): a recorded
    # call keeps ATen's output for it, a call nobody differentiates lets it go at once
    x = mge.tensor(rand(128, 32), device="cpu0")
    with _aten.forced("softmax"):
        free = op_class((1,))
        y = mge.core.dispatch.apply(free, x)
        with GradManager().attach(x):
            kept = op_class((1,))
            mge.core.dispatch.apply(kept, x)
    assert free.ty is None and kept.ty is not None
    np.testing.assert_allclose(y.numpy(), (torch.log_softmax if op_class is nn_module._LogSoftmax
                                           else torch.softmax)(torch.from_numpy(x.numpy()), 1),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("softmax_path")
@pytest.mark.parametrize("shape,axis,torch_dim", [
    ((4, 7), None, 1), ((5,), None, 0), ((3, 4, 5), None, 0), ((2, 3, 4, 5), None, 1),
    ((3, 4, 5), -1, -1), ((3, 4, 5), 1, 1),
])
def test_softmax(shape, axis, torch_dim):
    x = rand(*shape, low=-5, high=5)
    check(lambda t: F.softmax(t, axis), lambda t: torch.softmax(t, torch_dim), x)


def test_softmax_over_several_axes():
    # ATen's softmax takes one dim: several axes stay on the array code on every device
    x = rand(2, 3, 4)
    with _aten.forced("softmax"):
        check(lambda t: F.softmax(t, (1, 2)),
              lambda t: torch.exp(t - torch.logsumexp(t, dim=(1, 2), keepdim=True)), x)


@pytest.mark.usefixtures("softmax_path")
def test_softmax_large_logits_are_stable():
    x = np.array([[1000.0, 0.0, -1000.0], [88.0, 89.0, 90.0]], np.float32)
    check(lambda t: F.softmax(t, 1), lambda t: torch.softmax(t, 1), x)


@pytest.mark.usefixtures("softmax_path")
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_logsoftmax(axis):
    x = rand(4, 6, low=-50, high=50)
    check(lambda t: F.logsoftmax(t, axis), lambda t: torch.log_softmax(t, axis), x,
          rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_keeps_float16_and_float64(softmax_path, log, dtype):
    x = rand(3, 5, 4, low=-4, high=4).astype(dtype)
    t = mge.tensor(x, dtype=dtype)
    with GradManager().attach(t) as gm:
        y = F.logsoftmax(t, 1) if log else F.softmax(t, 1)
        gm.backward(y.mean())  # the output gradient is one value broadcast: stride-0 views
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = torch.log_softmax(xt, 1) if log else torch.softmax(xt, 1)
    yt.mean().backward()
    tol = 3e-3 if dtype == "float16" else 1e-12
    assert y.dtype == np.dtype(dtype) and t.grad.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol * 0.1)
    if softmax_path:  # on ATen: forward and backward were its kernels
        name = "_log_softmax" if log else "_softmax"
        assert {name, name + "_backward_data"} <= set(softmax_path)


@pytest.mark.usefixtures("softmax_path")
def test_softmax_and_logsoftmax_second_order_match_torch():
    # the gradient graph (grad_graph) is the same on both paths: d/dx <dL/dx, v>
    x0, v, w = rand(4, 5), rand(4, 5), rand(4, 5)
    x = mge.Parameter(x0)
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            inner.backward((F.softmax(x, 1) * mge.tensor(w)).sum()
                           + (F.logsoftmax(x * x, 0) * mge.tensor(w)).sum())
        first = x.grad
        x.grad = None
        outer.backward((first * mge.tensor(v)).sum())
    xt = torch.tensor(x0, requires_grad=True)
    loss = (torch.softmax(xt, 1) * torch.tensor(w)).sum() + \
        (torch.log_softmax(xt * xt, 0) * torch.tensor(w)).sum()
    (gt,) = torch.autograd.grad(loss, xt, create_graph=True)
    (hv,) = torch.autograd.grad((gt * torch.tensor(v)).sum(), xt)
    np.testing.assert_allclose(first.numpy(), gt.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), hv.numpy(), rtol=1e-4, atol=1e-5)


@requires_torch_cuda
@pytest.mark.parametrize("log", [False, True])
def test_softmax_on_a_gpu_runs_aten_and_matches_the_cpu(monkeypatch, log):
    x, w = rand(4, 6, 5), rand(4, 6, 5)

    def run(device):
        t = mge.tensor(x, device=device)
        with GradManager().attach(t) as gm:
            y = F.logsoftmax(t, 1) if log else F.softmax(t, 1)
            gm.backward((y * mge.tensor(w, device=device)).sum())
        return host(y), host(t.grad)

    used = record_aten_kernels(monkeypatch)
    on_gpu = run("gpu0")
    name = "_log_softmax" if log else "_softmax"
    assert {name, name + "_backward_data"} <= set(used)
    for got, want in zip(on_gpu, run("cpu0")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_softmax_bad_axis():
    with pytest.raises(ValueError, match="softmax: axis 3"):
        F.softmax(mge.tensor(rand(2, 3)), 3)


# ----- linear -----

@pytest.mark.parametrize("xshape,bias", [((8, 5), True), ((8, 5), False), ((2, 3, 5), True)])
def test_linear(xshape, bias):
    x, w, b = rand(*xshape), rand(4, 5), rand(4)
    if bias:
        check(F.linear, TF.linear, x, w, b)
    else:
        check(F.linear, TF.linear, x, w)


# one bias value for every output feature (0-d or (1,)): upstream adds the bias as
# x @ W.T + b, which broadcasts it; its gradient is the sum over every output
@pytest.mark.parametrize("xshape", [(5,), (3, 5), (2, 3, 5)], ids=str)
@pytest.mark.parametrize("bshape", [(), (1,)], ids=str)
def test_linear_with_one_bias_value_adds_it_to_every_feature(xshape, bshape):
    x, w, b = rand(*xshape), rand(4, 5), rand(*bshape)
    check(F.linear, lambda x, w, b: x @ w.T + b, x, w, b)
    loss = lambda x, w, b: (F.linear(x, w, b) ** 2).sum()  # noqa: E731
    check_second_order(loss, lambda x, w, b: ((x @ w.T + b) ** 2).sum(), x, w, b)


def test_linear_with_a_bias_of_another_size_says_what_fits():
    with pytest.raises(ValueError, match=r"linear: bias of shape \(3,\) does not match 4 "
                       "out_features; give one value per output feature, or a single value"):
        F.linear(mge.tensor(rand(2, 5)), mge.tensor(rand(4, 5)), mge.tensor(rand(3)))


def test_linear_input_without_grad():
    x, w, b = rand(3, 5), rand(4, 5), rand(4)
    check(F.linear, TF.linear, x, w, b, diff=[1, 2])


@pytest.mark.parametrize("xshape", [(8, 5), (2, 4, 5), (5,)])
def test_linear_with_a_constant_weight_does_not_keep_its_input(xshape):
    # only x's gradient is asked, which reads the weight: as torch's addmm saves, x's array is
    # not held until backward (h, used by nothing else here, is dropped)
    a, w, b = rand(*xshape), rand(4, 5), rand(4)
    t = mge.tensor(a)
    gm = GradManager().attach(t)
    with gm:
        h = t * 2.0  # (whose backward reads only the 2.0)
        released = weakref.ref(h._data)
        y = F.linear(h, mge.tensor(w), mge.tensor(b))
        del h
        gc.collect()
        assert released() is None
        gm.backward((y * y).sum())
    ta = torch.tensor(a, requires_grad=True)
    (TF.linear(ta * 2.0, torch.tensor(w), torch.tensor(b)) ** 2).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), ta.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_linear_with_a_constant_input_does_not_keep_its_weight():
    # the other way round: only the weight's gradient is asked, which reads x
    a, w = rand(6, 5), rand(4, 5)
    t = mge.tensor(w)
    gm = GradManager().attach(t)
    with gm:
        h = t * 2.0
        released = weakref.ref(h._data)
        y = F.linear(mge.tensor(a), h)
        del h
        gc.collect()
        assert released() is None
        gm.backward((y * y).sum())
    tw = torch.tensor(w, requires_grad=True)
    (TF.linear(torch.tensor(a), tw * 2.0) ** 2).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", ["linear", "conv2d"])
def test_a_float32_bias_widens_float16_linear_and_conv_to_float32(fn):
    # upstream 1.13 measured: float16 input and weight with a float32 bias give float32 (its
    # matmul / convolution, then + bias); here computed in float32, torch's float32 the oracle
    rs = np.random.RandomState(0)
    if fn == "linear":
        x, w, b = rs.randn(3, 5), rs.randn(4, 5), rs.randn(4)
        torch_fn, mge_fn = TF.linear, F.linear
    else:
        x, w, b = rs.randn(2, 3, 5, 5), rs.randn(4, 3, 3, 3), rs.randn(1, 4, 1, 1)
        torch_fn, mge_fn = (lambda x, w, b: TF.conv2d(x, w, b.reshape(-1))), F.conv2d
    x, w, b = x.astype(np.float16), w.astype(np.float16), b.astype(np.float32)
    ts = [torch.tensor(a.astype(np.float32), requires_grad=True) for a in (x, w, b)]
    want = torch_fn(*ts)
    want.backward(torch.ones_like(want))
    ms = [mge.tensor(a) for a in (x, w, b)]
    gm = GradManager().attach(ms)
    with gm:
        y = mge_fn(*ms)
        gm.backward(y, F.ones_like(y))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    for m, t in zip(ms, ts):  # each gradient in its tensor's dtype
        assert m.grad.dtype == m.dtype
        np.testing.assert_allclose(m.grad.numpy().astype(np.float32), t.grad.numpy(),
                                   rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("fn", ["linear", "conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("bias_dtype", ["int32", "bool"])
def test_an_integer_bias_widens_float16_linear_and_conv_to_float32(fn, bias_dtype):
    # float16 meeting an integer or bool counts as float32 (upstream's dtype promotion; its
    # product-then-add gives float32 here, measured); torch's float32 the oracle
    rs = np.random.RandomState(1)
    b = rs.randint(0, 2, 4).astype(bias_dtype)
    if fn == "linear":
        x, w = rs.randn(3, 5), rs.randn(4, 5)
        torch_fn, mge_fn = TF.linear, F.linear
    elif fn == "conv2d":
        x, w, b = rs.randn(2, 3, 5, 5), rs.randn(4, 3, 3, 3), b.reshape(1, 4, 1, 1)
        torch_fn, mge_fn = (lambda x, w, b: TF.conv2d(x, w, b.reshape(-1))), F.conv2d
    else:
        x, w, b = rs.randn(2, 3, 5, 5), rs.randn(3, 4, 3, 3), b.reshape(1, 4, 1, 1)
        torch_fn = lambda x, w, b: TF.conv_transpose2d(x, w, b.reshape(-1))
        mge_fn = F.conv_transpose2d
    x, w = x.astype(np.float16), w.astype(np.float16)
    tx, tw = (torch.tensor(a.astype(np.float32), requires_grad=True) for a in (x, w))
    want = torch_fn(tx, tw, torch.tensor(b.astype(np.float32)))
    want.backward(torch.ones_like(want))
    mx, mw = mge.tensor(x), mge.tensor(w)
    gm = GradManager().attach([mx, mw])
    with gm:
        y = mge_fn(mx, mw, mge.tensor(b))
        gm.backward(y, F.ones_like(y))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    for m, t in ((mx, tx), (mw, tw)):  # each gradient in its tensor's dtype
        assert m.grad.dtype == np.float16
        np.testing.assert_allclose(m.grad.numpy().astype(np.float32), t.grad.numpy(),
                                   rtol=2e-3, atol=2e-3)


def test_float16_linear_adds_its_bias_before_rounding():
    # by hand: [1, 1] @ [0.25, 2**-14 + 2**-18] - 0.25 = 2**-14 + 2**-18, a float16 value; the
    # product rounded to float16 first (0.25) left 0.0 (upstream 1.13 measured: 0.0 under
    # autocast; torch's addmm rounds once, as here; float16 fuzz case 53381: 7 ulps), on every
    # device (a GPU's float16 linear is ATen's addmm, the bias in the product's epilogue)
    x = mge.tensor(np.ones((1, 2), np.float16))
    w = mge.tensor(np.array([[0.25, 2.0 ** -14 + 2.0 ** -18]], np.float16))
    b = mge.tensor(np.array([-0.25], np.float16))
    y = F.linear(x, w, b)
    assert y.dtype == np.float16 and y.item() == 2.0 ** -14 + 2.0 ** -18
    rs = np.random.RandomState(0)
    check_float16_against_torch(F.linear, TF.linear, rs.randn(64, 96).astype(np.float32),
                                rs.randn(48, 96).astype(np.float32),
                                rs.randn(48).astype(np.float32))


@pytest.mark.parametrize("bias", [None, "bool", "int64"])
def test_linear_of_bools_is_refused_and_of_a_bool_and_a_float_is_float32(bias):
    x, w = np.array([[True, False, True]]), np.array([[True, True, False], [False, True, True]])
    b = None if bias is None else mge.tensor(np.array([1, 0], dtype=bias), dtype=bias)
    # as F.matmul of bools (torch: "addmm_impl_cpu_" not implemented for 'Bool'; upstream
    # 1.13: MatMul(Bool, Bool) not supported), whatever the bias (earlier versions of this fork
    # gave the or of ands, or with a wider bias the count of pairs of Trues)
    with pytest.raises(TypeError, match=r"^linear: the operands are bool.*integer or float"):
        F.linear(mge.tensor(x), mge.tensor(w), b)
    got = F.linear(mge.tensor(x), mge.tensor(w.astype(np.float32)), b)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.numpy(), x.astype(np.float32) @ w.T.astype(np.float32)
                                  + (0 if bias is None else np.float32([1, 0])))


def test_linear_shape_mismatch_names_both():
    with pytest.raises(ValueError, match=r"linear.*\(3, 6\).*\(4, 5\)"):
        F.linear(mge.tensor(rand(3, 6)), mge.tensor(rand(4, 5)))


# N-d inputs run as one (rows, in) gemm forward and backward: checked against torch for
# leading dims of every count, for a non-contiguous input (forward copies it once) and float64
@pytest.mark.parametrize("xshape", [(5,), (2, 3, 5), (2, 3, 4, 5), (3, 0, 5)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_nd_input_matches_torch(xshape, bias):
    args = (rand(*xshape), rand(4, 5)) + ((rand(4),) if bias else ())
    check(F.linear, TF.linear, *args)


def test_linear_non_contiguous_nd_input_matches_torch():
    x0 = rand(5, 3, 2)  # used as (2, 3, 5): every leading index strided

    def ours(x, w, b):
        return F.linear(x.transpose(2, 1, 0), w, b)

    def theirs(x, w, b):
        return TF.linear(x.permute(2, 1, 0), w, b)

    check(ours, theirs, x0, rand(4, 5), rand(4))


def test_linear_nd_float64_matches_torch():
    got, want = float64_value_and_grads(F.linear, TF.linear, rand(2, 3, 5).astype(np.float64),
                                         rand(4, 5).astype(np.float64), rand(4).astype(np.float64))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtypes,want", [(("uint8", "int8", "int8"), "int32"),  # (an int32 product)
                                         (("bool", "int8", "int64"), "float32"),
                                         (("int8", "int32", "float32"), "float32")])
def test_linear_with_a_bias_of_a_wider_dtype_promotes(dtypes, want):
    # x @ w.T, then + bias, as upstream's: the sum takes the promoted dtype (earlier versions of
    # this fork added the bias in place, which numpy refused: "Cannot cast ufunc 'add' output")
    rs = np.random.RandomState(0)
    x, w = rs.randint(0, 2, (3, 4)).astype(dtypes[0]), rs.randint(0, 2, (2, 4)).astype(dtypes[1])
    b = np.array([-3.5, 100.25] if want == "float32" else [-3, 100], dtypes[2])
    got = F.linear(mge.tensor(x), mge.tensor(w), mge.tensor(b, dtype=dtypes[2]))
    tx, tw = torch.tensor(x.astype(np.float64)), torch.tensor(w.astype(np.float64))
    assert got.dtype == np.dtype(want)
    np.testing.assert_array_equal(got.numpy(), TF.linear(tx, tw, torch.tensor(b, dtype=tx.dtype)))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
def test_products_of_small_integers_are_int32(dtype):
    # upstream 1.13 measured: matmul / linear / @ of int8 give int32 ([100, 100] @ [100, 100] is
    # 20000; int8 wrapped it to 32, and a linear's int32 bias was then added to the 32); a dot
    # product of two vectors keeps int8 there. Upstream refuses uint8 and int16: here they
    # take the same int32 product rather than wrap.
    v = 100 if dtype != "int16" else 300
    a, b = mge.tensor(np.full((2, 2), v, dtype)), mge.tensor(np.full((2, 3), v, dtype))
    want = np.full((2, 3), 2 * v * v)
    for out in [F.matmul(a, b), a @ b, F.matmul(a.reshape(1, 2, 2), b).reshape(2, 3),
                F.linear(a, F.transpose(b, (1, 0)), mge.tensor(np.array([5, 5, 5], "int32"))) - 5]:
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out.numpy(), want)
    assert F.matmul(a[0], a[0]).dtype == np.dtype(dtype)  # two vectors: a dot product


def test_at_operator_refuses_quantized_operands(host_default_device):  # (quantized: host only)
    # `q @ q` multiplied the stored integers (a plain int8 [[20]] for values [[1, 2]] at scale
    # 0.5: scale and range lost); F.matmul accumulates them in qint32, as upstream's MatrixMul
    from megengine.core.tensor import dtype as qd
    q = mge.tensor(np.array([[1.0, 2.0]], "float32")).astype(qd.qint8(0.5))
    with pytest.raises(TypeError, match=r"matmul: the operands are quantized \(qint8\(0.5\)\); "
                                        r"use F.matmul"):
        q @ F.transpose(q, (1, 0))
    # values 1 * 1 + 2 * 2
    assert F.matmul(q, F.transpose(q, (1, 0))).astype("float32").numpy().tolist() == [[5.0]]


# ----- dropout -----

def test_dropout_training_scales_kept_and_grad_follows_mask():
    x = mge.tensor(rand(200, 100, low=0.5, high=1.5))
    gm = GradManager().attach([x])
    with gm:
        y = F.dropout(x, 0.3)
        gm.backward(y, mge.tensor(np.ones(y.shape, np.float32)))
    y, xv, g = y.numpy(), x.numpy(), x.grad.numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], xv[kept] / 0.7, rtol=1e-6)
    np.testing.assert_allclose(g, kept / np.float32(0.7), rtol=1e-6)


def test_dropout_off_is_identity_and_bad_prob_raises():
    x = mge.tensor(rand(3, 4))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    with pytest.raises(ValueError, match=r"dropout: drop_prob must be in \[0, 1\)"):
        F.dropout(x, 1.0)
    # upstream 1.13 asserts the range (measured): the error is an AssertionError too
    for p in (1.0, -0.1):
        with pytest.raises(AssertionError, match="drop_prob"):
            F.nn.dropout(x, p)


def test_dropout_follows_the_megengine_seed():
    # megengine.random.seed governs the draws on every device (numpy's RNG here, CuPy's on a GPU)
    x = mge.tensor(np.ones((50,), np.float32))
    mge.random.seed(3)
    a = F.dropout(x, 0.5).numpy()
    mge.random.seed(3)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert 5 < (a == 0).sum() < 45  # it did drop, and not everything


def test_float16_dropout_multiplies_on_aten_with_numpys_values(monkeypatch):
    # the same draws through numpy's float16 product (the "half" family avoided) are the
    # oracle, bit for bit: the output and the gradient (ATen's vectorised product rounds once,
    # as numpy's float16 loop)
    from megengine.functional import _aten

    rng = np.random.default_rng(13)
    x = (rng.standard_normal((64, 64)) * 300).astype(np.float16)
    g = rng.standard_normal((64, 64)).astype(np.float16)
    runs = []
    used, real = [], _aten.op
    monkeypatch.setattr(_aten, "op", lambda name: used.append(name) or real(name))
    for avoid in (("half",), ()):
        with _aten.avoided(*avoid):
            w = mge.Parameter(x, device="cpu0")
            mge.random.seed(4)
            with GradManager().attach(w) as gm:
                y = F.nn.dropout(w, 0.3)
                gm.backward(y, mge.tensor(g, device="cpu0"))
            runs.append((y.numpy(), w.grad.numpy()))
        assert used.count("mul") == (0 if avoid else 2)  # the forward and the backward
    (y0, g0), (y1, g1) = runs
    assert y1.dtype == g1.dtype == np.float16 and 0.25 < (y1 == 0).mean() < 0.35
    np.testing.assert_array_equal(y1.view(np.uint16), y0.view(np.uint16))
    np.testing.assert_array_equal(g1.view(np.uint16), g0.view(np.uint16))


@pytest.fixture
def dropout_kernel_used(tmp_path, monkeypatch, host_default_device):
    """Route dropout's forward through its CUDA kernel's body compiled as C++."""
    used, kernel = [], emulate(nn_module._dropout_kernel, tmp_path)
    monkeypatch.setattr(nn_module, "_dropout_kernel", lambda: used.append(1) or kernel)
    monkeypatch.setattr(nn_module, "_use_dropout_kernel", lambda x: True)
    return used


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_kernel_body_keeps_where_the_draw_is_at_least_p(dropout_kernel_used, dtype):
    p = 0.3
    x_np = rand(40, 30, low=0.5, high=1.5).astype(dtype)
    x = mge.tensor(x_np, dtype=dtype)
    mge.random.seed(5)
    u = np.random.default_rng(5).random(x_np.shape).astype(dtype)  # the draw the op makes next
    mge.random.seed(5)
    with GradManager().attach(x) as gm:
        y = F.dropout(x, p)
        gm.backward(y, mge.tensor(np.ones(x_np.shape, dtype), dtype=dtype))
    assert dropout_kernel_used, "the kernel was not used"
    mask = (u >= np.array(p, dtype)) * np.array(1 / (1 - p), dtype)  # by hand
    np.testing.assert_array_equal(y.numpy(), x_np * mask)
    np.testing.assert_array_equal(x.grad.numpy(), mask)
    assert y.dtype == np.dtype(dtype)


@requires_cuda
def test_dropout_uses_the_cuda_kernel_on_a_gpu(monkeypatch):
    used, kernel = [], nn_module._dropout_kernel
    monkeypatch.setattr(nn_module, "_dropout_kernel", lambda: used.append(1) or kernel())
    x = mge.tensor(rand(64, 256, low=0.5, high=1.5), device="gpu0")
    y = F.dropout(x, 0.25).numpy()
    kept = y != 0
    assert used and abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], x.numpy()[kept] / np.float32(0.75), rtol=1e-6)


# ----- embedding -----

def test_embedding_repeated_indices_accumulate():
    idx = np.array([[1, 3, 1], [0, 3, 3]], np.int32)
    w = rand(5, 4)
    check(lambda i, a: F.embedding(i, a), lambda i, a: TF.embedding(i.long(), a), idx, w)


def test_embedding_padding_idx_gets_no_gradient():
    idx = np.array([0, 2, 2, 1], np.int32)
    w = rand(4, 3)
    check(lambda i, a: F.embedding(i, a, padding_idx=2),
          lambda i, a: TF.embedding(i.long(), a, padding_idx=2), idx, w)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_large_embedding_gradients_take_aten_with_add_ats_values(dtype, threads):
    # many repeated indices, each row's sum in index order: numpy's add.at is the oracle bit
    # for bit (float16 rounded at each step, as torch's embedding backward: checked against it
    # too), with and without the padding row; on ATen (index_add_ / embedding backward) and on
    # the array code ("index_add" avoided); at one thread and two (ATen's loops may split rows)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 300, (64, 40)).astype(np.int32)
    idx[:16] = rng.integers(0, 4, (16, 40))
    w = rng.standard_normal((300, 48)).astype(dtype)
    g = (rng.standard_normal((64, 40, 48)) * 30).astype(dtype)
    for padding_idx in (None, -298):
        want = np.zeros_like(w)
        np.add.at(want, idx.reshape(-1), g.reshape(-1, 48))
        if padding_idx is not None:
            want[padding_idx] = 0
        if dtype == "float16":
            tw = torch.tensor(w, requires_grad=True)
            TF.embedding(torch.tensor(idx, dtype=torch.long), tw,
                         padding_idx=padding_idx).backward(torch.tensor(g))
            np.testing.assert_array_equal(tw.grad.numpy(), want)
        for avoid in ((), ("index_add",)):
            with _aten.avoided(*avoid), pool_threads(threads):
                p = mge.Parameter(w, dtype=dtype, device="cpu0")
                with GradManager().attach(p) as gm:
                    y = F.embedding(mge.tensor(idx, device="cpu0"), p, padding_idx=padding_idx)
                    gm.backward(y, mge.tensor(g, dtype=dtype, device="cpu0"))
            assert p.grad.dtype == dtype
            assert p.grad.numpy().tobytes() == want.tobytes()


def test_embedding_reads_a_negative_index_from_the_end_as_upstream():
    # upstream 1.13 indexes the weight: -1 is the last row (measured); this fork refused it
    idx = np.array([[-1, 2, -4], [0, -1, 3]], np.int32)
    w = rand(4, 3)
    check(lambda i, a: F.embedding(i, a), lambda i, a: TF.embedding(i.long() % 4, a), idx, w)
    check(lambda i, a: F.embedding(i, a, padding_idx=-1),
          lambda i, a: TF.embedding(i.long() % 4, a, padding_idx=3), idx, w)


def test_embedding_errors():
    w = mge.tensor(rand(4, 3))
    with pytest.raises(ValueError, match=r"embedding: indices must be in \[-4, 4\)"):
        F.embedding(mge.tensor([0, 4]), w)
    for dtype in ("int8", "int32", "int64"):
        with pytest.raises(ValueError, match=r"in \[-4, 4\), got values in \[-5, 3\]"):
            F.embedding(mge.tensor(np.array([3, -5], dtype)), w)
    np.testing.assert_array_equal(  # uint8 indices up to the last row are fine
        F.embedding(mge.tensor(np.array([3, 0], "uint8")), w).numpy(), w.numpy()[[3, 0]])
    with pytest.raises(TypeError, match="embedding: indices must be integers"):
        F.embedding(mge.tensor([0.0, 1.0]), w)
    with pytest.raises(RuntimeError, match="embedding: indices must be integers"):  # (upstream's)
        F.embedding(mge.tensor([0.0, 1.0]), w)
    with pytest.raises(ValueError, match="max_norm"):
        F.embedding(mge.tensor([0]), w, max_norm=1.0)


# ----- resizing -----

@pytest.mark.parametrize("size", [(7, 9), (3, 2), (5, 5)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolate_bilinear(size, align_corners):
    x = rand(2, 3, 5, 6)
    check(lambda a: F.interpolate(a, size, mode="bilinear", align_corners=align_corners),
          lambda a: TF.interpolate(a, size, mode="bilinear", align_corners=align_corners), x)


def test_interpolate_an_int_size_resizes_every_spatial_axis():
    # torch's reading, kept on purpose: upstream 1.13 reads size=7 of a 4-d input as (7, 1)
    # (docs/compatibility.rst)
    x = rand(2, 3, 5, 6)
    check(lambda a: F.interpolate(a, 7, mode="bilinear", align_corners=False),
          lambda a: TF.interpolate(a, 7, mode="bilinear", align_corners=False), x)


@pytest.mark.parametrize("size", [(10, 12), (3, 4), (7, 5)])
def test_interpolate_nearest(size):
    x = rand(2, 2, 5, 6)
    check(lambda a: F.interpolate(a, size, mode="nearest"),
          lambda a: TF.interpolate(a, size, mode="nearest"), x)


def test_interpolate_nearest_picks_upstreams_rows():
    # upstream 1.13 measured: the rows nearest mode takes shrinking 52, 120 and 73 rows to 32
    # (its kernel divides by the float32 scale out/in, so 8 * 52 / 32 = 13 lands on row 12;
    # torch's floor(8 * 52 / 32) takes 13)
    picked = {
        52: [0, 1, 3, 4, 6, 8, 9, 11, 12, 14, 16, 17, 19, 21, 22, 24, 25, 27, 29, 30, 32, 34,
             35, 37, 39, 40, 42, 43, 45, 47, 48, 50],
        120: [0, 3, 7, 11, 14, 18, 22, 26, 29, 33, 37, 41, 44, 48, 52, 56, 59, 63, 67, 71, 74,
              78, 82, 86, 89, 93, 97, 101, 104, 108, 112, 116],
        73: [0, 2, 4, 6, 9, 11, 13, 15, 18, 20, 22, 25, 27, 29, 31, 34, 36, 38, 41, 43, 45, 47,
             50, 52, 54, 57, 59, 61, 63, 66, 68, 70],
    }
    for n, rows in picked.items():
        x = np.arange(n * n, dtype=np.float32).reshape(1, 1, n, n)
        y = F.interpolate(mge.tensor(x), (32, 32), mode="nearest").numpy()[0, 0]
        np.testing.assert_array_equal(y, x[0, 0][np.ix_(rows, rows)])


@pytest.mark.parametrize("size", [(8, 9), (3, 4)])
def test_interpolate_bicubic(size):
    x = rand(1, 2, 5, 6)
    check(lambda a: F.interpolate(a, size, mode="bicubic"),
          lambda a: TF.interpolate(a, size, mode="bicubic", align_corners=False), x,
          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolate_linear_1d(align_corners):
    x = rand(2, 3, 7)
    check(lambda a: F.interpolate(a, 11, mode="linear", align_corners=align_corners),
          lambda a: TF.interpolate(a, 11, mode="linear", align_corners=align_corners), x)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_interpolate_scale_factor(mode):
    x = rand(1, 2, 5, 6)
    check(lambda a: F.interpolate(a, scale_factor=1.5, mode=mode),
          lambda a: TF.interpolate(a, scale_factor=1.5, mode=mode,
                                   recompute_scale_factor=True), x)


def test_interpolate_errors():
    x = mge.tensor(rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="interpolate: mode"):
        F.interpolate(x, 8, mode="area")
    with pytest.raises(ValueError, match="align_corners can only be set"):
        F.interpolate(x, 8, mode="nearest", align_corners=True)
    with pytest.raises(ValueError, match="expects a 4-d input"):
        F.interpolate(mge.tensor(rand(4, 4)), 8)


def test_pixel_shuffle():
    x = rand(2, 3, 8, 4, 5)
    check(lambda a: F.pixel_shuffle(a, 2), lambda a: TF.pixel_shuffle(a, 2), x)
    for error in (ValueError, RuntimeError):  # upstream's: megdnn's shape assertion
        with pytest.raises(error, match="pixel_shuffle"):
            F.pixel_shuffle(mge.tensor(rand(1, 6, 2, 2)), 2)


# ----- namespace -----

def test_public_names_are_exported():
    import megengine.functional.nn as nn_mod

    for name in nn_mod.__all__:
        assert getattr(F, name) is getattr(nn_mod, name), name
    for name in ("cross_entropy", "binary_cross_entropy", "l1_loss", "square_loss",
                 "hinge_loss"):
        assert getattr(F.nn, name) is getattr(F.loss, name)
    # upstream also spells these F.nn.<name>; they live in the sibling modules
    for name in ("pad", "one_hot", "indexing_one_hot", "logsumexp", "tanh", "normalize",
                 "sync_batch_norm"):
        assert getattr(F.nn, name) is getattr(F, name), name


# ----- regressions found by the differential fuzzer (tests/fuzz) -----

@pytest.mark.parametrize("fn", [lambda x: F.softmax(x, axis=0), lambda x: F.logsoftmax(x, 0)])
def test_softmax_of_empty_tensor_is_empty(fn):
    x = mge.tensor(np.zeros((0, 3), np.float32))
    gm = GradManager().attach([x])
    with gm:
        y = fn(x)
        gm.backward(y.sum())
    assert y.shape == (0, 3) and x.grad.shape == (0, 3)


@pytest.mark.parametrize("x_shape", [(0,), (4, 2, 0)])
def test_linear_gradient_with_zero_in_features(x_shape):
    x = mge.tensor(np.zeros(x_shape, np.float32))
    w = mge.tensor(np.zeros((2, 0), np.float32))
    b = mge.tensor(np.ones(2, np.float32))
    gm = GradManager().attach([x, w, b])
    with gm:
        y = F.nn.linear(x, w, b)
        gm.backward(y.sum())
    assert x.grad.shape == x_shape and w.grad.shape == (2, 0)
    np.testing.assert_array_equal(b.grad.numpy(), np.full(2, y.size // 2, np.float32))


# float16 sums over a strided axis, and a bias gradient summed over 60,000 rows, add in float32
# as torch's kernels (numpy's float16 sums stopped growing at 2048)
@pytest.mark.parametrize("fn, torch_fn", [
    (lambda x: F.softmax(x, 0), lambda x: torch.softmax(x, 0)),
    (lambda x: F.logsoftmax(x, 0), lambda x: torch.log_softmax(x, 0)),
], ids=["softmax", "logsoftmax"])
def test_float16_softmax_over_a_long_axis(fn, torch_fn):
    check_float16_against_torch(fn, torch_fn, np.random.RandomState(0).rand(100000, 3))


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape,axis", [((8, 10), -1), ((2, 3, 17, 17), -1), ((40, 6), 0)],
                         ids=str)
def test_float16_softmax_on_cpu_is_torchs_kernel(monkeypatch, log, shape, axis):
    # float16 takes ATen's kernels on the CPU at any size (numpy's float16 loops are slow and
    # round each pass): torch's values and gradients bit for bit, float32 inside
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) * 4).astype(np.float16)
    g = rng.standard_normal(shape).astype(np.float16)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.log_softmax(xt, axis) if log else torch.softmax(xt, axis)
    yt.backward(torch.from_numpy(g))
    used = record_aten_kernels(monkeypatch)
    t = mge.tensor(x, device="cpu0")
    with GradManager().attach(t) as gm:
        y = F.logsoftmax(t, axis) if log else F.softmax(t, axis)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    name = "_log_softmax" if log else "_softmax"
    assert {name, name + "_backward_data"} <= set(used)
    assert y.dtype == t.grad.dtype == np.float16
    np.testing.assert_array_equal(y.numpy(), yt.detach().numpy())
    np.testing.assert_array_equal(t.grad.numpy(), xt.grad.numpy())


def test_float16_linear_bias_gradient_adds_in_float32():
    rs = np.random.RandomState(0)
    check_float16_against_torch(F.linear, TF.linear, rs.rand(60000, 3), rs.rand(2, 3) - 0.5,
                                rs.rand(2))


def test_linear_bias_gradient_under_autocast_counts_every_row():
    x, b = mge.tensor(np.ones((60000, 3), np.float32)), mge.Parameter(np.zeros(2, np.float32))
    w = mge.tensor(np.zeros((2, 3), np.float32))
    gm = GradManager().attach([b])
    with gm, mge.amp.autocast():
        y = F.linear(x, w, b)
        assert y.dtype == np.float16
        gm.backward(y.sum())
    assert b.grad.dtype == np.float32 and (b.grad.numpy() == 60000).all()  # 2048 before


# upstream 1.13 measured: dir(megengine.functional.nn) holds these functions of F (its nn.py
# imports them for its own use), and megvii-research/zipfls's DenseNet, which imports
# megengine.functional.nn as F, calls F.concat through it; none is in upstream's F.nn.__all__
UPSTREAM_NN_IMPORTS = """broadcast_to concat exp expand_dims log log1p max maximum minimum ones
    repeat reshape squeeze sum transpose zeros zeros_like""".split()


@pytest.mark.parametrize("name", UPSTREAM_NN_IMPORTS)
def test_nn_module_holds_the_functions_upstreams_imports(name):
    assert getattr(nn_module, name) is getattr(F, name)
    assert name not in nn_module.__all__


def test_nn_module_concat_and_sum_as_an_aliased_program_calls_them():
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    b = -a
    out = nn_module.concat([mge.tensor(a), mge.tensor(b)], 1)
    np.testing.assert_array_equal(out.numpy(), np.concatenate([a, b], 1))
    np.testing.assert_array_equal(nn_module.sum(out, axis=1).numpy(), np.zeros((1, 3)))


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.linear(x, F.ones((4, 3))),
                 RuntimeError, r"input of shape \(3, 4\) does not match weight", id="linear"),
    pytest.param(lambda x: F.nn.embedding(mge.tensor([0, 1]), x[0]),
                 RuntimeError, "weight must be 2-d", id="embedding"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: RuntimeError from its C++ shape checks; earlier versions of this fork raised a plain ValueError.
    # The error is also a ValueError (what the mistake is) and says what was wrong
    raises_as_upstream(call, (3, 4), upstream, match)


def test_pixel_shuffle_of_a_factor_that_is_no_int_names_it():
    # upstream 1.13 measured: TypeError; int()'s "int() argument must be ... not 'list'" came
    # out here before
    x = mge.tensor(np.ones((1, 4, 2, 2), "float32"))
    with pytest.raises(TypeError, match=r"pixel_shuffle: upscale_factor must be an int, got "
                                        r"\[2, 2\]"):
        F.nn.pixel_shuffle(x, [2, 2])


def test_embedding_of_a_padding_idx_that_is_no_int_names_it():
    # (int()'s "int() argument must be ... not 'list'" came out here before)
    with pytest.raises(TypeError, match=r"embedding: padding_idx must be an int, got \[1\]"):
        F.embedding(mge.tensor([0, 1]), mge.tensor(np.ones((3, 2), "float32")), padding_idx=[1])


def test_dropout_of_a_drop_prob_that_is_no_number_names_it():
    # upstream 1.13 measured: TypeError, in Python's "'<=' not supported between instances of
    # 'int' and 'str'", which came out here too
    with pytest.raises(TypeError, match="dropout: drop_prob must be a number, got '0.5'"):
        F.nn.dropout(mge.tensor(np.ones((2, 3), "float32")), "0.5")


@pytest.mark.parametrize("factor", [2.5, "2"])
def test_pixel_shuffle_of_a_fractional_or_string_factor_raises(factor):
    # int() truncated 2.5 to 2 and parsed "2"; upstream 1.13 refuses both (its sizes)
    x = mge.tensor(np.ones((1, 8, 2, 2), np.float32))
    with pytest.raises(TypeError, match="^pixel_shuffle: upscale_factor must be an int"):
        F.nn.pixel_shuffle(x, factor)
