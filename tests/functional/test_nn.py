"""Tests of megengine/functional/nn.py: values and gradients against torch.nn.functional."""
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
from devices import (host, host_default_device, record_aten_kernels, requires_cuda,  # noqa: F401
                     requires_torch_cuda, skip_unless_aten_serves_the_default_device)
from oracle import check_against_torch


def rand(*shape, low=-2.0, high=2.0):
    return np.asarray(np.random.uniform(low, high, shape), dtype=np.float32)


check = partial(check_against_torch, atol=1e-5, check_dtype=True)


# ----- activations -----

ACTIVATIONS = [
    ("relu", lambda x: F.relu(x), TF.relu),
    ("leaky_relu", lambda x: F.leaky_relu(x), TF.leaky_relu),
    ("leaky_relu_0.2", lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2)),
    ("relu6", F.relu6, TF.relu6),
    ("sigmoid", F.sigmoid, torch.sigmoid),
    ("hsigmoid", F.hsigmoid, TF.hardsigmoid),
    ("hswish", F.hswish, TF.hardswish),
    ("gelu", F.gelu, TF.gelu),
    ("silu", F.silu, TF.silu),
    ("softplus", F.softplus, TF.softplus),
    ("logsigmoid", F.logsigmoid, TF.logsigmoid),
]


@pytest.mark.parametrize("name,fn,torch_fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_value_and_grad(name, fn, torch_fn):
    x = rand(4, 5, 6, low=-8, high=8)
    check(fn, torch_fn, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,torch_fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_extreme_inputs_stay_finite(name, fn, torch_fn):
    x = np.array([-1e4, -100, -30, -1e-3, 0.0, 1e-3, 30, 100, 1e4], np.float32)
    check(fn, torch_fn, x, rtol=1e-5, atol=1e-6)


def test_activations_are_in_F_and_F_nn():
    for name, _, _ in ACTIVATIONS:
        name = name.split("_0")[0]
        assert getattr(F, name) is getattr(F.nn, name)


def test_relu_keeps_integers():
    y = F.relu(mge.tensor(np.array([-2, 0, 3], np.int32)))
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y.numpy(), [0, 0, 3])


# ReLU's backward on CUDA is one CuPy ElementwiseKernel. Without a GPU its body is compiled here
# as C++ (tests/cuda_kernels.py), put in the kernel's place, and checked against torch and
# against the array code.
@pytest.fixture(scope="module")
def relu_kernel_on_cpu(tmp_path_factory):
    """The relu-backward kernel body compiled as C++: a callable ``(g, y) -> gx`` on numpy."""
    return emulate(nn_module._relu_grad_kernel, tmp_path_factory.mktemp("relu_kernel"))


@pytest.fixture
def relu_kernel_used(relu_kernel_on_cpu, monkeypatch, host_default_device):
    """Route F.relu's backward through the C++-compiled kernel body; returns the call count."""
    used = []

    def kernel():
        used.append(1)
        return relu_kernel_on_cpu

    monkeypatch.setattr(nn_module, "_relu_grad_kernel", kernel)
    monkeypatch.setattr(nn_module, "_use_relu_kernel", lambda y, g: True)
    from megengine.functional import _aten

    with _aten.avoided("activation"):  # (numpy arrays would take ATen's relu, not the kernel)
        yield used


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_backward_kernel_body_matches_torch(relu_kernel_used, dtype):
    x, g = rand(5, 7).astype(dtype), np.random.randn(5, 7).astype(dtype)
    x[0, :3] = 0  # relu'(0) = 0, as torch
    t = mge.tensor(x, dtype=dtype)  # float64 is kept only when asked
    with GradManager().attach(t) as gm:
        gm.backward(F.relu(t), mge.tensor(g, dtype=dtype))
    xt = torch.tensor(x, requires_grad=True)
    TF.relu(xt).backward(torch.tensor(g))
    assert relu_kernel_used, "the kernel was not used"
    assert t.grad.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(t.grad.numpy(), xt.grad.numpy())


def _nan_gradient_case():
    # upstream's ReLU gradient is a select, SWITCH_GT0(y, g) = y > 0 ? g : 0: a NaN or inf
    # gradient where y <= 0 gives 0 (torch's threshold_backward agrees); where y > 0 it passes
    x = np.array([-1.0, 0.0, 0.0, 2.0, 3.0, -4.0], np.float32)
    g = np.array([np.nan, np.nan, 1.0, np.nan, 4.0, np.inf], np.float32)
    xt = torch.tensor(x, requires_grad=True)
    TF.relu(xt).backward(torch.tensor(g))
    return x, g, xt.grad.numpy()


def test_relu_backward_kernel_body_selects_like_torch(relu_kernel_on_cpu):
    x, g, expect = _nan_gradient_case()
    np.testing.assert_array_equal(relu_kernel_on_cpu(g, np.maximum(x, 0)), expect)


def test_relu_backward_selects_like_torch():
    x, g, expect = _nan_gradient_case()
    t = mge.tensor(x)
    with GradManager().attach(t) as gm:
        gm.backward(F.relu(t), mge.tensor(g))
    np.testing.assert_array_equal(t.grad.numpy(), expect)
    assert np.isnan(expect[3]) and expect[0] == 0  # the case does hold both kinds


@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply")  # NaN * relu's 0
def test_relu_recorded_backward_selects_like_torch():
    # under an outer GradManager the backward runs as recorded ops (grad_graph): same rule, and
    # its derivative in the incoming gradient is the same select
    x, g, expect = _nan_gradient_case()
    t, v = mge.Parameter(x), mge.Parameter(g)
    gm_outer, gm_inner = GradManager().attach([v]), GradManager().attach([t])
    with gm_outer:
        with gm_inner:
            gm_inner.backward((F.relu(t) * v).sum())
        np.testing.assert_array_equal(t.grad.numpy(), expect)
        gm_outer.backward((t.grad * 2).sum())
    tx, tv = torch.tensor(x, requires_grad=True), torch.tensor(g, requires_grad=True)
    (tg,) = torch.autograd.grad((TF.relu(tx) * tv).sum(), tx, create_graph=True)
    (tg * 2).sum().backward()
    np.testing.assert_array_equal(v.grad.numpy(), tv.grad.numpy())


@requires_cuda
def test_relu_backward_uses_the_cuda_kernel_on_a_gpu(monkeypatch):
    used = []
    kernel = nn_module._relu_grad_kernel
    monkeypatch.setattr(nn_module, "_relu_grad_kernel", lambda: used.append(1) or kernel())
    x = rand(64, 256)
    t = mge.tensor(x, device="gpu0")
    g = np.random.randn(64, 256).astype(np.float32)
    with GradManager().attach(t) as gm:
        gm.backward(F.relu(t), mge.tensor(g, device="gpu0"))
    np.testing.assert_array_equal(t.grad.numpy(), g * (x > 0))
    assert used


def test_sigmoid_of_integers_is_float32():
    y = F.sigmoid(mge.tensor([0, 1]))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), torch.sigmoid(torch.tensor([0.0, 1.0])).numpy())


@pytest.mark.parametrize("wshape", [(1, 3, 1, 1), (1,)])
def test_prelu(wshape):
    x = rand(2, 3, 4, 4)
    w = rand(*wshape, low=0.05, high=0.5)
    check(F.prelu, lambda a, b: TF.prelu(a, b.reshape(-1)), x, w,
          grad_shape={1: lambda g: g.reshape(wshape)})


def test_prelu_bad_weight_shape_names_both():
    with pytest.raises(ValueError, match=r"prelu.*\(5,\).*\(2, 3, 4\)"):
        F.prelu(mge.tensor(rand(2, 3, 4)), mge.tensor(rand(5)))


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
@pytest.mark.parametrize("shape,axis,on_aten", [
    ((2, 2, 32, 32), -1, True), ((2, 2, 32, 32), 2, False), ((410, 10), -1, False),
    ((8, 32), -1, False),
], ids=str)
def test_softmax_on_cpu_takes_aten_for_long_rows_only(monkeypatch, log, shape, axis, on_aten):
    # measured (see megengine/functional/_aten.py): ATen is faster for rows of 32 or more in
    # inputs of 4096 values or more, numpy for short rows; both give torch's values
    used = record_aten_kernels(monkeypatch)
    x = rand(*shape, low=-5, high=5)
    ours, theirs = (F.logsoftmax, torch.log_softmax) if log else (F.softmax, torch.softmax)

    check(lambda t: ours(t, axis), lambda t: theirs(t, axis), x)  # on the default device
    used.clear()
    ours(mge.tensor(x, device="cpu0"), axis)  # the path a CPU array takes
    assert (("_log_softmax" if log else "_softmax") in used) == on_aten


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


def test_linear_input_without_grad():
    x, w, b = rand(3, 5), rand(4, 5), rand(4)
    check(F.linear, TF.linear, x, w, b, diff=[1, 2])


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


def _float64_value_and_grads(fn, torch_fn, *arrays, seed=3):
    """fn's output and input gradients in float64 (mge.tensor would store float64 as float32
    without a dtype), and torch's, for one random output gradient."""
    xs = [mge.tensor(a, dtype="float64") for a in arrays]
    gm = GradManager().attach(xs)
    with gm:
        y = fn(*xs)
        dy = np.random.RandomState(seed).randn(*y.shape)
        gm.backward(y, mge.tensor(dy, dtype="float64"))
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    ty = torch_fn(*ts)
    ty.backward(torch.tensor(dy))
    assert y.dtype == np.float64 and all(x.grad.dtype == np.float64 for x in xs)
    return ([host(y)] + [host(x.grad) for x in xs],
            [ty.detach().numpy()] + [t.grad.numpy() for t in ts])


def test_linear_nd_float64_matches_torch():
    got, want = _float64_value_and_grads(F.linear, TF.linear, rand(2, 3, 5).astype(np.float64),
                                         rand(4, 5).astype(np.float64), rand(4).astype(np.float64))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


# ----- gelu -----
# The exact (erf) gelu: ATen's gelu / gelu_backward on the CPU (as on CUDA), else array code
# with a polynomial erf (what CuPy arrays run when torch has no CUDA: `_aten.avoided`).

@pytest.fixture(params=["aten", "arrays"])
def gelu_path(request, monkeypatch):
    """Run the test on one path, checking that the ATen kernels ran on "aten" and not on
    "arrays"."""
    if request.param == "aten":
        skip_unless_aten_serves_the_default_device()
    used = record_aten_kernels(monkeypatch)
    if request.param == "aten":
        yield request.param
        assert {"gelu", "gelu_backward"} <= set(used)
        return
    with _aten.avoided("gelu"):
        yield request.param
    assert not {"gelu", "gelu_backward"} & set(used)


def test_gelu_float32_matches_torch_exact_gelu(gelu_path):
    # the ATen path is torch's own kernel; the polynomial erf's absolute error (< 1.5e-7) is
    # scaled by |x| in gelu and by the output gradient in backward
    x = np.concatenate([rand(4000, low=-9, high=9), np.float32([-1e4, -30, -5.5, 0, 1e-3, 30])])
    tol = dict(rtol=0, atol=0) if gelu_path == "aten" else dict(rtol=1e-6, atol=3e-6)
    check(F.gelu, lambda t: TF.gelu(t, approximate="none"), x, **tol)


def test_gelu_float64_matches_torch_exact_gelu(gelu_path):
    x = np.concatenate([np.random.uniform(-9, 9, 3000), [-40.0, -6.0, 0.0, 1e-8, 40.0]])
    got, want = _float64_value_and_grads(F.gelu, lambda t: TF.gelu(t, approximate="none"), x)
    # the polynomial erf has an absolute error below 1.5e-7: float32 rounding, not float64's
    tol = dict(rtol=1e-13, atol=1e-15) if gelu_path == "aten" else dict(rtol=0, atol=3e-6)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)


def test_gelu_float16_matches_torch():
    skip_unless_aten_serves_the_default_device()
    x = rand(300, low=-6, high=6).astype(np.float16)
    xt = mge.tensor(x, dtype="float16")
    gm = GradManager().attach([xt])
    with gm:
        y = F.gelu(xt)
        gm.backward(y.sum())
    t = torch.tensor(x, requires_grad=True)
    ty = TF.gelu(t)
    ty.sum().backward()
    assert y.dtype == np.float16 and xt.grad.dtype == np.float16
    np.testing.assert_array_equal(host(y), ty.detach().numpy())
    np.testing.assert_array_equal(host(xt.grad), t.grad.numpy())


def test_gelu_second_order_matches_torch(gelu_path):
    # _GeluGrad's first derivative comes from the same erf as the path's forward
    from oracle import check_second_order_against_torch

    x0 = rand(6, 7, low=-4, high=4)
    check_second_order_against_torch(lambda x: (F.gelu(x) ** 2).sum(),
                                     lambda t: (TF.gelu(t) ** 2).sum(), x0, rtol=1e-5, atol=1e-6)


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


def test_dropout_follows_the_megengine_seed():
    # megengine.random.seed governs the draws on every device (numpy's RNG here, CuPy's on a GPU)
    x = mge.tensor(np.ones((50,), np.float32))
    mge.random.seed(3)
    a = F.dropout(x, 0.5).numpy()
    mge.random.seed(3)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert 5 < (a == 0).sum() < 45  # it did drop, and not everything


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
    u = np.random.random_sample(x_np.shape).astype(dtype)  # the draw the op makes next
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


def test_embedding_errors():
    w = mge.tensor(rand(4, 3))
    with pytest.raises(ValueError, match=r"embedding: indices must be in \[0, 4\)"):
        F.embedding(mge.tensor([0, 4]), w)
    for dtype in ("int8", "int32", "int64"):  # negatives: one unsigned reduction catches them
        with pytest.raises(ValueError, match=r"indices must be in \[0, 4\), got values in \[-1, 3\]"):
            F.embedding(mge.tensor(np.array([3, -1], dtype)), w)
    np.testing.assert_array_equal(  # uint8 indices up to the last row are fine
        F.embedding(mge.tensor(np.array([3, 0], "uint8")), w).numpy(), w.numpy()[[3, 0]])
    with pytest.raises(TypeError, match="embedding: indices must be integers"):
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


@pytest.mark.parametrize("size", [(10, 12), (3, 4), (7, 5)])
def test_interpolate_nearest(size):
    x = rand(2, 2, 5, 6)
    check(lambda a: F.interpolate(a, size, mode="nearest"),
          lambda a: TF.interpolate(a, size, mode="nearest"), x)


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
    with pytest.raises(ValueError, match="pixel_shuffle"):
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


def test_prelu_gradient_when_weight_broadcasts_the_input():
    # upstream's prelu broadcasts x against w as numpy does: x (2, 1) meets w (3,)
    import torch

    a, w = np.array([[-1.5], [2.0]], np.float32), np.array([0.1, 0.2, 0.3], np.float32)
    x = mge.tensor(a)
    gm = GradManager().attach([x])
    with gm:
        gm.backward(F.prelu(x, mge.tensor(w)).sum())
    t = torch.tensor(a, requires_grad=True)
    torch.where(t > 0, t, t * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6)


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


# ----- activations on ATen's kernels (family "activation") and on array code -----

ATEN_ACTIVATIONS = {  # name: (megengine, torch, ATen's forward kernel)
    "relu": (F.relu, TF.relu, "relu"),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2),
                   "leaky_relu"),
    "relu6": (F.relu6, TF.relu6, "hardtanh"),
    "sigmoid": (F.sigmoid, torch.sigmoid, "sigmoid"),
    "hsigmoid": (F.hsigmoid, TF.hardsigmoid, "hardsigmoid"),
    "hswish": (F.hswish, TF.hardswish, "hardswish"),
    "silu": (F.silu, TF.silu, "silu"),
    "softplus": (F.softplus, TF.softplus, "softplus"),
}


@pytest.mark.parametrize("path", ["aten", "arrays"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ATEN_ACTIVATIONS))
def test_activation_values_and_gradients_on_both_paths(name, dtype, path, monkeypatch):
    mf, tf, kernel = ATEN_ACTIVATIONS[name]
    rs = np.random.RandomState(7)
    # every kink (0, +-3, 6) and values past softplus's threshold; a transposed (strided) view
    x = np.concatenate([rs.uniform(-8, 8, 60), [0, -3, 3, 6, -6, 21, 25, -25, 2.5, -0.5]])
    if name == "hswish":  # (at exactly +-3 the array code keeps upstream's slope: below)
        x[x == 3], x[x == -3] = 3.5, -3.5
    x = x.reshape(5, 14).astype(dtype).T
    g = rs.randn(14, 5).astype(dtype)
    if path == "aten":
        skip_unless_aten_serves_the_default_device()
    used = record_aten_kernels(monkeypatch)
    with _aten.avoided(*(() if path == "aten" else ("activation",))):
        t = mge.tensor(x, dtype=dtype)
        with GradManager().attach(t) as gm:
            y = mf(t)
            gm.backward(y, mge.tensor(g, dtype=dtype))
    # (relu takes ATen for numpy arrays only: CUDA keeps its fused backward kernel)
    on_aten = path == "aten" and (name != "relu" or type(t._data) is np.ndarray)
    assert (kernel in used) == on_aten, used
    xt = torch.tensor(x, requires_grad=True)
    ty = tf(xt)
    ty.backward(torch.tensor(g))
    assert y.dtype == t.grad.dtype == np.dtype(dtype)
    # (float64: torch's hardsigmoid scales by a float32 1/6, 3e-8 relative; softplus beyond
    # torch's threshold 20 is x there, 1e-10 off on the array code)
    tol = 1e-6 if dtype == "float32" else 1e-7
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)


def test_relu_on_aten_keeps_upstreams_select_for_nan_gradients():
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    t = mge.tensor(x)
    with GradManager().attach(t) as gm:
        gm.backward(F.relu(t), mge.tensor(np.array([np.nan, np.inf, np.nan], np.float32)))
    np.testing.assert_array_equal(t.grad.numpy(), [0, 0, np.nan])  # y <= 0: 0, not NaN


def test_hswish_slope_at_the_kinks_per_path():
    """At exactly x = -3 and 3 upstream's rule (the array code) takes the middle piece's slope
    (2x + 3) / 6; ATen's (torch's) takes 0 at -3 and 1 at 3."""
    x = mge.tensor(np.array([-3.0, 3.0], np.float32))
    for avoid, want in (((), [0.0, 1.0]), (("activation",), [-0.5, 1.5])):
        with _aten.avoided(*avoid):
            with GradManager().attach(x) as gm:
                gm.backward(F.hswish(x).sum())
        if not avoid and not _aten.use_aten(x._data, "activation"):
            continue  # (no ATen for this device's arrays)
        np.testing.assert_array_equal(x.grad.numpy(), want)
        x.grad = None
