"""Tests of megengine/functional/activation.py (F.relu, F.gelu, F.prelu, ...): values and gradients
against torch.nn.functional, on ATen's kernels and on array code."""
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
from megengine.functional import activation as act_module

from cuda_kernels import emulate
from devices import (aten_torch_device, host, host_default_device, on_aten_or_arrays,  # noqa: F401
                     record_aten_kernels, requires_cuda,
                     skip_unless_aten_serves_the_default_device)
from oracle import check_against_torch, float64_value_and_grads, within_a_float16_step


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


# the activations whose gradients read x (not y, as torch's save x alone: gelu, silu, ...)
X_READERS = [a for a in ACTIVATIONS if a[0] not in ("relu", "sigmoid")]


@pytest.mark.parametrize("path", ["aten", "arrays"])
@pytest.mark.parametrize("name,fn,torch_fn", X_READERS, ids=[a[0] for a in X_READERS])
def test_activations_whose_gradient_reads_x_do_not_keep_their_output(name, fn, torch_fn, path):
    # y is used only by ``y * 2.0`` (whose backward reads the 2.0): once the program drops it,
    # nothing holds y's array until backward (the activation's op kept it, and ATen's view)
    if path == "aten":
        skip_unless_aten_serves_the_default_device()
    x = rand(3, 40, low=-5, high=5)
    w = mge.tensor(x)
    gm = GradManager().attach(w)
    with _aten.avoided("activation", "gelu") if path == "arrays" else _aten.avoided():
        with gm:
            y = fn(w)
            released = weakref.ref(y._data)
            z = y * 2.0
            del y
            gc.collect()
            assert released() is None
            gm.backward(z.sum())
    tx = torch.tensor(x, requires_grad=True)
    (torch_fn(tx) * 2.0).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_silu_and_gelu_array_code_keep_one_array_for_backward(name):
    # a recorded call on the array code (what CuPy runs when torch has no CUDA) keeps f'(x)
    # alone, computed in forward (x and sigmoid(x) / Phi(x) were kept before: two arrays,
    # where torch keeps x alone); its gradient is g * f'(x) as before, against torch's
    x = rand(3, 40, low=-5, high=5)
    g = rand(3, 40, low=-1, high=1)
    fn, torch_fn = {"silu": (F.silu, TF.silu), "gelu": (F.gelu, TF.gelu)}[name]
    w = mge.tensor(x)
    gm = GradManager().attach(w)
    with _aten.avoided("activation", "gelu"):
        with gm:
            y = fn(w)
            op = y._node[0].op
            kept = [v for v in vars(op).values()  # (arrays of either device; not ShapeOnly)
                    if hasattr(v, "dtype") and hasattr(v, "size") and v.size > 1]
            assert [v.shape for v in kept] == [x.shape] and op.tx is None  # (array code)
            assert kept[0] is op.derivative and w._data is not op.x  # (not x: its shape)
            gm.backward(y, mge.tensor(g))
    tx = torch.tensor(x, requires_grad=True)
    torch_fn(tx).backward(torch.from_numpy(g))
    tol = dict(rtol=1e-5, atol=1e-6) if name == "silu" else dict(rtol=1e-6, atol=3e-6)
    np.testing.assert_allclose(w.grad.numpy(), tx.grad.numpy(), **tol)


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
    return emulate(act_module._relu_grad_kernel, tmp_path_factory.mktemp("relu_kernel"))


@pytest.fixture
def relu_kernel_used(relu_kernel_on_cpu, monkeypatch, host_default_device):
    """Route F.relu's backward through the C++-compiled kernel body; returns the call count."""
    used = []

    def kernel():
        used.append(1)
        return relu_kernel_on_cpu

    monkeypatch.setattr(act_module, "_relu_grad_kernel", kernel)
    monkeypatch.setattr(act_module, "_use_relu_kernel", lambda y, g: True)
    from megengine.functional import _aten

    with _aten.avoided("activation"):  # (numpy arrays would take ATen's relu, not the kernel)
        yield used


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
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


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_relu_backward_kernel_body_selects_like_torch(relu_kernel_on_cpu, dtype):
    # (float16: autocast's ReLUs on a GPU take the kernel too)
    x, g, expect = _nan_gradient_case()
    got = relu_kernel_on_cpu(g.astype(dtype), np.maximum(x, 0).astype(dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expect.astype(dtype))


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
    kernel = act_module._relu_grad_kernel
    monkeypatch.setattr(act_module, "_relu_grad_kernel", lambda: used.append(1) or kernel())
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


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("wshape", [(1, 3, 1, 1), (1,), (3, 1, 1)])
def test_prelu_kernel_bodies_give_the_array_codes_values(tmp_path, monkeypatch,
                                                         host_default_device, wshape, dtype):
    """PReLU on CUDA: the forward and both gradients' elements in one kernel each, their
    bodies compiled as C++ in the kernels' place: the array code's values bit for bit, zeros,
    NaN and the slope's broadcasting included."""
    x = rand(2, 3, 4, 4).astype(dtype)
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan]
    w = rand(*wshape, low=-0.5, high=0.5).astype(dtype)
    g = rand(2, 3, 4, 4).astype(dtype)

    def run():
        tx, tw = mge.tensor(x, dtype=dtype), mge.tensor(w, dtype=dtype)
        with GradManager().attach([tx, tw]) as gm:
            y = F.prelu(tx, tw)
            gm.backward(y, mge.tensor(g, dtype=dtype))
        return y.numpy(), tx.grad.numpy(), tw.grad.numpy()

    expected = run()
    used = []
    for name in ("_prelu_kernel", "_prelu_grad_kernel"):
        (tmp_path / name).mkdir()
        kernel = emulate(getattr(act_module, name), tmp_path / name)
        monkeypatch.setattr(act_module, name, lambda k=kernel, n=name: (used.append(n), k)[1])
    monkeypatch.setattr(act_module, "_use_prelu_kernels", lambda *arrays: True)
    got = run()
    assert used == ["_prelu_kernel", "_prelu_grad_kernel"]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kinks_at_zero_follow_torch(dtype):
    # at exactly 0: leaky_relu and prelu take the negative slope, abs 0, as torch's (upstream
    # 1.13 measured: slope 1 and -1 there); documented in docs/compatibility.rst
    x = np.array([0.0, -0.0, -1.5, 2.0], dtype)
    w = np.array([0.25], dtype)
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == "float16" else {}
    check(lambda t, v: F.leaky_relu(t, 0.1) + F.prelu(t, v) + F.abs(t),
          lambda t, v: TF.leaky_relu(t, 0.1) + TF.prelu(t, v) + torch.abs(t), x, w, **tol)


def test_prelu_takes_upstreams_names_and_the_older_ones():
    x, w = mge.tensor([-2.0, -0.5, 0.0, 1.5]), mge.tensor([0.25])
    # upstream 1.13 measured: prelu(x=x, y=w) and prelu(x, w) give [-0.5, -0.125, 0, 1.5]
    expected = [-0.5, -0.125, 0.0, 1.5]
    np.testing.assert_array_equal(F.prelu(x=x, y=w).numpy(), expected)
    np.testing.assert_array_equal(F.prelu(x, w).numpy(), expected)
    # upstream 1.13 refuses inp= (its earlier releases' name); kept here for older code
    np.testing.assert_array_equal(F.prelu(inp=x, weight=w).numpy(), expected)
    with pytest.raises(TypeError, match="'x' and its older name 'inp'"):
        F.prelu(x, w, inp=x)
    with pytest.raises(TypeError, match="missing argument 'y'"):
        F.prelu(x)
    with pytest.raises(TypeError, match="unexpected keyword argument 'slope'"):
        F.prelu(x, slope=w)


def test_prelu_traces_as_upstreams():
    import megengine.module as M
    import megengine.traced_module as tm

    class Net(M.Module):
        def forward(self, x, w):
            return F.prelu(x, w)

    traced = tm.trace_module(Net(), mge.tensor(rand(1, 3, 2, 2)), mge.tensor([0.1]))
    expr, = [e for e in traced.graph.exprs() if "prelu" in str(e)]
    # upstream 1.13 measured: "%3:\tprelu_out = nn.prelu(x, w, )", two args, kwargs {}
    assert (str(expr), len(expr.args), expr.kwargs) == ("%3:\tprelu_out = nn.prelu(x, w, )", 2, {})


def test_prelu_bad_weight_shape_names_both():
    with pytest.raises(ValueError, match=r"prelu.*\(5,\).*\(2, 3, 4\)"):
        F.prelu(mge.tensor(rand(2, 3, 4)), mge.tensor(rand(5)))
    with pytest.raises(RuntimeError, match="does not broadcast"):  # (upstream's broadcast's)
        F.prelu(mge.tensor(rand(2, 3, 4)), mge.tensor(rand(5)))



# ----- gelu -----
# The exact (erf) gelu: ATen's gelu / gelu_backward on the CPU (as on CUDA), else array code
# with a polynomial erf (what CuPy arrays run when torch has no CUDA: `_aten.avoided`).

@pytest.fixture(params=["aten", "arrays"])
def gelu_path(request, monkeypatch):
    yield from on_aten_or_arrays(request.param, monkeypatch, "gelu", ["gelu", "gelu_backward"])


def test_gelu_float32_matches_torch_exact_gelu(gelu_path):
    # the ATen path is torch's own kernel (torch's on the engine's device: CUDA's erf is not the
    # CPU's, bit for bit); the polynomial erf's absolute error (< 1.5e-7) is scaled by |x| in
    # gelu and by the output gradient in backward
    x = np.concatenate([rand(4000, low=-9, high=9), np.float32([-1e4, -30, -5.5, 0, 1e-3, 30])])
    tol = dict(rtol=0, atol=0) if gelu_path == "aten" else dict(rtol=1e-6, atol=3e-6)
    dev = aten_torch_device()
    check(F.gelu, lambda t: TF.gelu(t.to(dev), approximate="none").cpu(), x, **tol)


def test_gelu_float64_matches_torch_exact_gelu(gelu_path):
    x = np.concatenate([np.random.uniform(-9, 9, 3000), [-40.0, -6.0, 0.0, 1e-8, 40.0]])
    got, want = float64_value_and_grads(F.gelu, lambda t: TF.gelu(t, approximate="none"), x)
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
    t = torch.tensor(x, requires_grad=True, device=aten_torch_device())  # (the same kernels)
    ty = TF.gelu(t)
    ty.sum().backward()
    assert y.dtype == np.float16 and xt.grad.dtype == np.float16
    np.testing.assert_array_equal(host(y), host(ty))
    np.testing.assert_array_equal(host(xt.grad), host(t.grad))


def test_gelu_second_order_matches_torch(gelu_path):
    # _GeluGrad's first derivative comes from the same erf as the path's forward
    from oracle import check_second_order_against_torch

    x0 = rand(6, 7, low=-4, high=4)
    check_second_order_against_torch(lambda x: (F.gelu(x) ** 2).sum(),
                                     lambda t: (TF.gelu(t) ** 2).sum(), x0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_gelu_at_the_infinities_is_its_limit(gelu_path, dtype):
    # upstream 1.13 measured (float32): gelu(inf) = inf; gelu(-inf) is its limit -0 here
    # (upstream's inf * 0 gives NaN, as torch 2.13 gives at both); NaN stays NaN, and the
    # gradient there is NaN as upstream's and torch's. Finite inputs keep the path's results.
    if gelu_path == "arrays" and dtype == "float16":
        pytest.skip("float16 runs on ATen only")
    finite = np.array([-40.0, -5.5, 0.0, 1e-3, 5.0, 40.0], dtype)
    x = np.concatenate([np.array([np.inf, -np.inf, np.nan], dtype), finite])
    xt = mge.tensor(x, dtype=dtype)
    gm = GradManager().attach([xt])
    with gm:
        y = F.gelu(xt)
        gm.backward(y.sum())
    got = host(y)
    assert got.dtype == np.dtype(dtype)
    assert got[0] == np.inf and got[1] == 0 and np.signbit(got[1]) and np.isnan(got[2])
    np.testing.assert_array_equal(got[3:], host(F.gelu(mge.tensor(finite, dtype=dtype))))
    assert np.isnan(host(xt.grad)[:3]).all()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])  # (float16: autocast's)
def test_gelu_limits_kernel_body_matches_the_array_code(dtype, tmp_path):
    # the one-kernel fix-up a GPU runs after ATen's gelu, its CUDA body compiled here as C++:
    # +inf stays inf, -inf gives -0, everything else (NaN included) keeps ATen's value
    kernel = emulate(act_module._gelu_limits_kernel, tmp_path)
    x = np.array([np.inf, -np.inf, np.nan, -3.0, 0.0, 2.5], dtype)
    y = np.array([np.nan, np.nan, np.nan, -0.004, 0.0, 2.48], dtype)  # ATen's values stand-in
    got = kernel(x, y)
    expect = np.where(np.isinf(x), np.where(x > 0, x, x.dtype.type(-0.0)), y)
    np.testing.assert_array_equal(got, expect)
    assert got[0] == np.inf and got[1] == 0 and np.signbit(got[1]) and not np.signbit(got[4])


def test_large_float16_gelu_finds_its_infinities_without_numpys_float16_min(monkeypatch):
    # the NaN test before the fix-up at the infinities takes ATen's min for float16 (numpy's
    # float16 min converts one element at a time: 1.8 ms for (512, 512)); the limits as above
    skip_unless_aten_serves_the_default_device()
    mins, real = [], np.minimum

    class RecordingMinimum:  # np.minimum, its reduce noting the dtypes it reduced
        def __call__(self, *args, **kw):
            return real(*args, **kw)

        def reduce(self, a, *args, **kw):
            mins.append(a.dtype)
            return real.reduce(a, *args, **kw)

    monkeypatch.setattr(np, "minimum", RecordingMinimum())
    F.gelu(mge.tensor(np.ones(8, np.float32), device="cpu0"))
    assert mins == [np.dtype(np.float32)], "the NaN test no longer takes np.minimum.reduce"
    mins.clear()
    x = np.random.default_rng(18).uniform(-6, 6, 4096).astype(np.float16)
    want = host(TF.gelu(torch.tensor(x, device=aten_torch_device())))  # (the same kernel)
    for where in (None, 7, 4000):
        if where is not None:
            x[where], x[where + 1], x[where + 2] = np.inf, -np.inf, np.nan
        got = host(F.gelu(mge.tensor(x, dtype="float16")))
        assert got.dtype == np.float16
        finite = np.isfinite(x)
        np.testing.assert_array_equal(got[finite], want[finite])
        if where is not None:
            assert got[where] == np.inf and got[where + 1] == 0 and np.signbit(got[where + 1])
            assert np.isnan(got[where + 2])
    assert np.dtype(np.float16) not in mins


def test_large_float16_prelu_computes_in_float32_rounded_once(monkeypatch):
    # the output is numpy's float16 where(x > 0, x, x * w), bit for bit; x's gradient too
    # (where(x > 0, g, g * w)); w's, summed over the rows, within a float16 step of the exact
    # sum (torch in float64 on the same values)
    from megengine.core import ops  # (its cast: the float32 path, `Op.half_in_float32`)

    rng = np.random.default_rng(21)
    x = rng.standard_normal((64, 64)).astype(np.float16)
    w = rng.uniform(0.1, 0.4, 64).astype(np.float16)
    g = rng.standard_normal((64, 64)).astype(np.float16)
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda a, d: taken.append(np.dtype(d)) or real(a, d))
    mx, mw = mge.Parameter(x, device="cpu0"), mge.Parameter(w, device="cpu0")
    with GradManager().attach([mx, mw]) as gm:
        y = F.prelu(mx, mw)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    assert taken[:2] == [np.float32, np.float32]  # the float32 path ran
    np.testing.assert_array_equal(y.numpy().view(np.uint16),
                                  np.where(x > 0, x, x * w).view(np.uint16))
    np.testing.assert_array_equal(mx.grad.numpy().view(np.uint16),
                                  np.where(x > 0, g, g * w).view(np.uint16))
    tx = torch.tensor(x, dtype=torch.float64)
    exact = torch.where(tx > 0, 0, torch.tensor(g, dtype=torch.float64) * tx).sum(0).numpy()
    within_a_float16_step(mw.grad.numpy(), exact)


# ----- regressions found by the differential fuzzer (tests/fuzz) -----

def test_prelu_gradient_when_weight_broadcasts_the_input():
    # upstream's prelu broadcasts x against w as numpy does: x (2, 1) meets w (3,)
    a, w = np.array([[-1.5], [2.0]], np.float32), np.array([0.1, 0.2, 0.3], np.float32)
    x = mge.tensor(a)
    gm = GradManager().attach([x])
    with gm:
        gm.backward(F.prelu(x, mge.tensor(w)).sum())
    t = torch.tensor(a, requires_grad=True)
    torch.where(t > 0, t, t * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6)



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
    "logsigmoid": (F.logsigmoid, TF.logsigmoid, "log_sigmoid_forward"),
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
    # (relu takes ATen for numpy arrays only: CUDA keeps its fused backward kernel; nor do
    # float64 hsigmoid and hswish on CUDA, whose ATen kernels take 1/6 as a float32)
    on_aten = path == "aten" and (type(t._data) is np.ndarray or not (
        name == "relu" or name in ("hsigmoid", "hswish") and dtype == "float64"))
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


def test_float16_relu_matches_torch_exactly_on_both_paths(monkeypatch):
    # float16 takes ATen's relu and threshold_backward on the CPU too (numpy computes float16
    # element by element, 35-80x slower); a select is exact, so both paths give torch's values
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 256)).astype(np.float16)
    x[0, :4] = [0.0, -0.0, np.inf, -np.inf]
    g = rng.standard_normal((64, 256)).astype(np.float16)
    g[0, 4:7] = [np.nan, np.inf, np.nan]
    x[0, 4:7] = [-1.0, 0.0, 2.0]  # a NaN / inf gradient where y <= 0 gives 0, as upstream's
    xt = torch.tensor(x, requires_grad=True)
    TF.relu(xt).backward(torch.from_numpy(g))
    want_y = TF.relu(torch.from_numpy(x)).numpy()
    want_g = np.where(x > 0, g, np.float16(0))  # torch's threshold_backward: the same select
    np.testing.assert_array_equal(xt.grad.numpy(), want_g)
    used = record_aten_kernels(monkeypatch)
    for avoid in ((), ("activation",)):
        used.clear()
        with _aten.avoided(*avoid):
            t = mge.tensor(x, device="cpu0")
            with GradManager().attach(t) as gm:
                y = F.relu(t)
                gm.backward(y, mge.tensor(g, device="cpu0"))
        assert y.dtype == t.grad.dtype == np.float16
        assert set(used) == (set() if avoid else {"relu", "threshold_backward"})
        np.testing.assert_array_equal(y.numpy(), want_y)
        np.testing.assert_array_equal(t.grad.numpy(), want_g)


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


# ----- the split from nn.py: upstream's paths and the names dumps and pickles look up -----

def test_activations_keep_nn_as_their_home():
    """activation.py was split off nn.py; F.nn stays the path every moved name is found by and
    reports, so traced modules print ``nn.relu`` and dumped programs / pickles that name
    "megengine.functional.nn:_Relu" (written before the split or after) read back."""
    import pickle

    from megengine.functional import nn as nn_module

    moved = [v for v in vars(act_module).values()
             if isinstance(v, type) or callable(v) and hasattr(v, "__code__")]
    moved = [v for v in moved if v.__module__ == "megengine.functional.nn"]
    assert {"relu", "prelu", "_Relu", "_GeluGrad", "_Activation", "_mask"} <= {
        v.__name__ for v in moved}
    for v in moved:
        assert getattr(nn_module, v.__qualname__) is v, v.__qualname__
    for name in act_module.__all__:
        assert name in nn_module.__all__ and getattr(F, name) is getattr(act_module, name)
    op = pickle.loads(pickle.dumps(act_module._LeakyRelu(0.25)))
    assert type(op) is act_module._LeakyRelu and op.slope == 0.25
    assert b"megengine.functional.nn" in pickle.dumps(act_module._LeakyRelu(0.25))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32"])
def test_relu6_of_integers_keeps_their_dtype(dtype):
    # upstream 1.13 measured: F.relu6 of an int8 tensor is int8 (earlier versions of this fork
    # gave float32); the values are torch's hardtanh(x, 0, 6)
    x = np.array([-3, 0, 2, 6, 7, 100]).astype(dtype)
    got = F.relu6(mge.tensor(x, dtype=dtype))
    assert got.dtype == np.dtype(dtype)
    want = torch.nn.functional.hardtanh(torch.tensor(x.astype(np.float64)), 0.0, 6.0)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
