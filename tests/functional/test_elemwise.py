"""Tests of megengine/functional/elemwise.py: values, dtypes and gradients against torch."""
import contextlib
from functools import partial

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.optimizer import SGD, Adam

from megengine.functional import _aten
from megengine.functional import elemwise as elemwise_module

from devices import host_default_device, simulated_gpu_runtime  # noqa: F401  (a fixture)
from oracle import check_against_torch, raises_as_upstream


check = partial(check_against_torch, atol=1e-5, check_dtype=True)


def rand(*shape, low=-2.0, high=2.0):
    return np.asarray(np.random.uniform(low, high, shape), dtype=np.float32)


UNARY = [
    ("exp", torch.exp, -2, 2), ("expm1", torch.expm1, -2, 2), ("log", torch.log, 0.1, 3),
    ("log1p", torch.log1p, -0.9, 3), ("sqrt", torch.sqrt, 0.1, 3), ("square", torch.square, -2, 2),
    ("sin", torch.sin, -3, 3), ("cos", torch.cos, -3, 3), ("tan", torch.tan, -1, 1),
    ("asin", torch.asin, -0.9, 0.9), ("acos", torch.acos, -0.9, 0.9),
    ("atan", torch.atan, -3, 3), ("sinh", torch.sinh, -2, 2), ("cosh", torch.cosh, -2, 2),
    ("tanh", torch.tanh, -3, 3), ("asinh", torch.asinh, -3, 3), ("acosh", torch.acosh, 1.1, 4),
    ("atanh", torch.atanh, -0.9, 0.9), ("abs", torch.abs, -2, 2), ("neg", torch.neg, -2, 2),
]


@pytest.mark.parametrize("name,torch_fn,low,high", UNARY, ids=[u[0] for u in UNARY])
def test_unary_value_and_grad(name, torch_fn, low, high):
    check(getattr(F, name), torch_fn, rand(3, 4, low=low, high=high), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name,torch_fn,low,high", UNARY, ids=[u[0] for u in UNARY])
def test_unary_of_a_unary_of_a_0d_parameter_differentiates(name, torch_fn, low, high):
    # numpy gives 0-d input a scalar (np.float32), not an array: the saved output and the
    # gradients between the two ops were scalars, which read as CuPy arrays in the tests of the
    # CUDA paths: `exp(tanh(p))` of a 0-d p imported CuPy on the CPU (autodiff fuzz program 532)
    a = np.float32((low + high) / 2 + 0.123)
    p = mge.Parameter(a)
    gm = GradManager().attach(p)
    with gm:
        y = getattr(F, name)(F.tanh(p * 0.5) * 0.01 + p)
        gm.backward(y * 3)
    t = torch.tensor(a, requires_grad=True)
    (torch_fn(torch.tanh(t * 0.5) * 0.01 + t) * 3).backward()
    assert type(p.grad._data) is not np.float32
    np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=2e-5)


def test_round_halves_go_away_from_zero():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, -2.4, 3.7], np.float32)
    expect = np.sign(x) * np.floor(np.abs(x) + np.float64(0.5))  # computed in float64: exact
    np.testing.assert_array_equal(F.round(mge.tensor(x)).numpy(), expect.astype(np.float32))
    # away from the halves it agrees with torch
    np.testing.assert_array_equal(F.round(mge.tensor(x[5:])).numpy(), torch.round(torch.tensor(x[5:])).numpy())


@pytest.mark.usefixtures("host_default_device")  # the ATen path is the one of numpy arrays
@pytest.mark.parametrize("path", ["aten", "arrays"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn,torch_fn,low,high", [
    (F.log1p, torch.log1p, -0.999, 40),
    (F.logsigmoid, torch.nn.functional.logsigmoid, -40, 40),
    # (torch's softplus is x itself above 20: 2e-9 off the formula there)
    (F.softplus, torch.nn.functional.softplus, -40, 19.5)],
    ids=["log1p", "logsigmoid", "softplus_arrays"])
def test_log1p_on_aten_and_array_code_matches_torch(monkeypatch, fn, torch_fn, low, high, dtype,
                                                    path):
    # from LOG1P_ATEN_MIN values float32/float64 log1p runs on ATen (numpy's float32 log1p is
    # not vectorised), also inside logsigmoid and softplus's array code; "arrays": numpy's
    # (what CuPy and a machine without torch run); odd sizes, a transposed input, values near
    # log1p's pole and far out, an output gradient other than one; torch in float64 the oracle
    views = []
    view = _aten.view
    monkeypatch.setattr(_aten, "view", lambda a: views.append(a.dtype) or view(a))
    rs = np.random.RandomState(4)
    x = rs.uniform(low, high, (37, 29)).astype(dtype)  # 1073 values: above LOG1P_ATEN_MIN
    x[0, :3] = (low, 0, 1e-7)
    g = rs.randn(29, 37).astype(dtype)
    w = mge.tensor(x, dtype=dtype)
    with _aten.avoided("log1p", "activation") if path == "arrays" else \
            _aten.avoided("activation"):  # (softplus's and logsigmoid's own ATen kernels: off)
        with GradManager().attach(w) as gm:
            y = fn(w.T)
            gm.backward(y, mge.tensor(g, dtype=dtype))
    assert bool(views) == (path == "aten") and x.size >= elemwise_module.LOG1P_ATEN_MIN
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    want = torch_fn(tx.T)
    want.backward(torch.tensor(g.astype(np.float64)))
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == "float32" else dict(rtol=1e-13, atol=1e-15)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y.numpy(), want.detach().numpy(), **tol)
    np.testing.assert_allclose(w.grad.numpy(), tx.grad.numpy(), **tol)


@pytest.mark.usefixtures("host_default_device")  # the ATen path is the one of numpy arrays
@pytest.mark.parametrize("path", ["aten", "arrays"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn,torch_fn,low,high", [
    (F.exp, torch.exp, -80, 80), (F.log, torch.log, 1e-30, 1e30)], ids=["exp", "log"])
def test_exp_and_log_on_aten_and_array_code_match_torch(monkeypatch, fn, torch_fn, low, high,
                                                        dtype, path):
    # from EXP_LOG_ATEN_MIN values exp and log of float32/float64 run on ATen (numpy's take
    # longer there); "arrays": numpy's (what CuPy and a machine without torch run), a size
    # below the threshold too; a transposed input, exp near its overflow and underflow, log of
    # 0 and of a negative number, an output gradient other than one; torch in float64 the
    # oracle, its results rounded to the dtype
    views = []
    view = _aten.view
    monkeypatch.setattr(_aten, "view", lambda a: views.append(a.dtype) or view(a))
    least = elemwise_module.EXP_LOG_ATEN_MIN[np.dtype(dtype)]
    rows = -(-least // 64)  # (rows, 64): the threshold's size or just above
    rs = np.random.RandomState(5)
    if fn is F.log:  # spread over the exponents
        x = np.exp(rs.uniform(np.log(low), np.log(high), (rows, 64)))
        x[0, :3] = (0, -1, 1)
    else:
        x = rs.uniform(low, high, (rows, 64))
        x[0, :3] = (-1000, 0, 700 if dtype == "float64" else 88.5)  # (float32's largest: 88.72)
    x = x.astype(dtype)
    g = rs.randn(64, rows).astype(dtype)
    for n in (rows, rows // 2):  # at or above the threshold, then below it
        views.clear()
        w = mge.tensor(x[:n], dtype=dtype)
        with _aten.avoided("exp_log") if path == "arrays" else contextlib.nullcontext():
            with GradManager().attach(w) as gm:
                y = fn(w.T)
                gm.backward(y, mge.tensor(g[:, :n], dtype=dtype))
        assert bool(views) == (path == "aten" and n == rows)
        tx = torch.tensor(x[:n].astype(np.float64), requires_grad=True)
        want = torch_fn(tx.T)
        want.backward(torch.tensor(g[:, :n].astype(np.float64)))
        tol = dict(rtol=2e-6, atol=1e-30) if dtype == "float32" else \
            dict(rtol=1e-13, atol=1e-300)
        assert y.dtype == np.dtype(dtype)
        want_y, want_g = want.detach().numpy(), tx.grad.numpy()
        if dtype == "float32":
            want_y, want_g = (a.astype(np.float32).astype(np.float64) for a in (want_y, want_g))
        np.testing.assert_allclose(y.numpy(), want_y, **tol)
        np.testing.assert_allclose(w.grad.numpy(), want_g, **tol)


ROUNDING = [("floor", torch.floor), ("ceil", torch.ceil), ("trunc", torch.trunc),
            ("round", torch.round), ("sign", torch.sign)]


@pytest.mark.parametrize("name,torch_fn", ROUNDING, ids=[r[0] for r in ROUNDING])
@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1)], ids=["sgd", "adam"])
def test_rounding_gives_no_gradient(name, torch_fn, make_opt):
    # Piecewise constant functions give no gradient (None), not zeros, as upstream 1.13's
    # (measured: p.grad None after floor, ceil, round and sign), so that weight decay and
    # momentum leave a parameter reached only through them where it is (upstream 1.13
    # measured: p unchanged after two SGD / Adam steps). Earlier versions gave zeros.
    x = np.array([[0.2, -1.7, 2.4], [9.9, -0.3, 1.1]], np.float32)
    p, q = mge.Parameter(x), mge.Parameter(np.ones((2, 3), np.float32) * 2)
    gm, opt = GradManager().attach([p, q]), make_opt([p, q])
    for _ in range(2):
        with gm:
            y = getattr(F, name)(p)
            gm.backward((y * q).sum())
        assert p.grad is None
        np.testing.assert_array_equal(q.grad.numpy(), torch_fn(torch.tensor(x)).numpy())
        opt.step().clear_grad()
    np.testing.assert_array_equal(p.numpy(), x)


@pytest.mark.parametrize("name", ["floor", "ceil", "round", "trunc", "abs", "square", "neg"])
def test_integer_input_keeps_integer_dtype(name):
    x = np.array([-3, 0, 2, 5], np.int32)
    y = getattr(F, name)(mge.tensor(x))
    assert y.dtype == np.int32
    expect = {"floor": x, "ceil": x, "round": x, "trunc": x, "abs": np.abs(x), "square": x * x,
              "neg": -x}[name]
    np.testing.assert_array_equal(y.numpy(), expect)


@pytest.mark.parametrize("name", ["exp", "log1p", "sqrt", "sin", "tanh"])
def test_float_functions_of_integers_give_float32(name):
    x = np.array([0, 1, 2, 3], np.int32)
    y = getattr(F, name)(mge.tensor(x))
    assert y.dtype == np.float32
    ref = getattr(torch, name)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6)


def test_unary_accepts_python_numbers():
    y = F.exp(0)
    assert isinstance(y, mge.Tensor) and y.dtype == np.float32 and y.item() == 1.0
    assert F.sqrt([4.0, 9.0]).tolist() == [2.0, 3.0]


BINARY = [
    ("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("div", torch.div),
    ("maximum", torch.maximum), ("minimum", torch.minimum), ("atan2", torch.atan2),
    ("logaddexp", torch.logaddexp), ("mod", torch.remainder),
]
SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3))]


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("name,torch_fn", BINARY, ids=[b[0] for b in BINARY])
def test_binary_value_and_grad_with_broadcasting(name, torch_fn, shapes):
    a, b = rand(*shapes[0]), rand(*shapes[1])
    if name in ("div", "mod", "atan2"):
        b = np.where(np.abs(b) < 0.3, 0.7, b).astype(np.float32)  # keep away from the poles
    check(getattr(F, name), torch_fn, a, b, rtol=1e-4, atol=1e-5)


def test_pow_value_and_grad():
    check(F.pow, torch.pow, rand(3, 4, low=0.2, high=2), rand(4, low=-2, high=2), rtol=1e-4)
    check(lambda x: F.pow(x, 3), lambda x: torch.pow(x, 3), rand(5))


def test_floor_div_value():
    a, b = rand(3, 4, low=-5, high=5), rand(3, 4, low=0.5, high=2)
    np.testing.assert_allclose(F.floor_div(mge.tensor(a), mge.tensor(b)).numpy(),
                               torch.floor(torch.tensor(a) / torch.tensor(b)).numpy())
    ia, ib = np.array([7, -7, 9], np.int32), np.array([2, 2, -4], np.int32)
    out = F.floor_div(mge.tensor(ia), mge.tensor(ib))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out.numpy(), ia // ib)


def test_float_floor_div_rounds_the_quotient_down_as_upstream():
    # upstream 1.13 measured (its documentation: "rounds the result of dividing"): the quotient
    # as divided, then floor; numpy and torch round the exact quotient down (9, NaN, NaN, -1)
    inf = float("inf")
    a = np.array([1.0, inf, -inf, 5.0, -5.0, 7.0, -7.5, 0.3], np.float32)
    b = np.array([0.1, 1.0, 1.0, inf, inf, 0.7, 2.0, 0.1], np.float32)
    want = [10.0, inf, -inf, 0.0, -0.0, 10.0, -4.0, 3.0]
    for dtype in ("float32", "float16"):
        x, y = mge.tensor(a, dtype=dtype), mge.tensor(b, dtype=dtype)
        for out in (x // y, F.floor_div(x, y)):
            assert out.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(out.numpy(), np.array(want, dtype))
            assert np.signbit(out.numpy()[4])  # -5 // inf is -0.0
    assert float(mge.tensor(1.0) // 0.1) == 10.0 and (mge.tensor(1.0) // 0.1).shape == ()
    assert (2.0 // mge.tensor([0.2])).numpy().tolist() == [10.0]  # (__rfloordiv__)
    np.testing.assert_array_equal((mge.tensor([7, -7]) // mge.tensor([0.7, 0.7])).numpy(),
                                  [10.0, -10.0])  # (int meeting float: float32, the same rule)


def test_scalar_operands_follow_operator_rules():
    x = mge.tensor([1, 2, 3])
    assert F.add(x, 1).dtype == np.int32
    assert F.add(x, 1.5).dtype == np.float32
    assert F.mul(2, x).dtype == np.int32
    assert F.div(x, 2).dtype == np.float32
    np.testing.assert_allclose(F.div(x, 2).numpy(), [0.5, 1.0, 1.5])
    y = F.add(1.0, 4.0)
    assert isinstance(y, mge.Tensor) and y.dtype == np.float32 and y.item() == 5.0
    np.testing.assert_array_equal(F.sub(10, x).numpy(), [9, 8, 7])
    np.testing.assert_array_equal(F.left_shift([1, 2, 3], 1).numpy(), [2, 4, 6])
    np.testing.assert_array_equal(F.right_shift(mge.tensor([10, 20, 40]), 2).numpy(), [2, 5, 10])


@pytest.mark.parametrize("name,op", [
    ("equal", np.equal), ("not_equal", np.not_equal), ("less", np.less),
    ("less_equal", np.less_equal), ("greater", np.greater), ("greater_equal", np.greater_equal),
])
def test_comparisons(name, op):
    a = np.random.randint(0, 3, (3, 4)).astype(np.float32)
    b = np.random.randint(0, 3, (4,)).astype(np.float32)
    out = getattr(F, name)(mge.tensor(a), mge.tensor(b))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out.numpy(), op(a, b))
    np.testing.assert_array_equal(getattr(F, name)(mge.tensor(a), 1).numpy(), op(a, 1))


@pytest.mark.parametrize("name", ["logical_and", "logical_or", "logical_xor"])
def test_logical_binary(name):
    a, b = np.random.rand(3, 4) > 0.5, np.random.rand(4) > 0.5
    out = getattr(F, name)(mge.tensor(a), mge.tensor(b))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out.numpy(), getattr(np, name)(a, b))


@pytest.mark.parametrize("name", ["logical_and", "logical_or", "logical_xor"])
def test_logical_binary_of_shapes_that_do_not_broadcast_raises_upstreams_type(name):
    # torch is the oracle for which shapes do not broadcast; upstream 1.13 raises RuntimeError,
    # numpy code catches ValueError (the error was numpy's bare ValueError)
    a, b = np.ones((2, 3), bool), np.ones(2, bool)
    with pytest.raises(RuntimeError):
        getattr(torch, name)(torch.tensor(a), torch.tensor(b))
    for cls in (RuntimeError, ValueError):
        with pytest.raises(cls, match=r"shapes \(2, 3\) and \(2,\) do not broadcast"):
            getattr(F, name)(mge.tensor(a), mge.tensor(b))


def test_logical_not():
    a = np.random.rand(5) > 0.5
    out = F.logical_not(mge.tensor(a))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out.numpy(), ~a)


def test_logaddexp_does_not_overflow():
    x = mge.tensor([1000.0, -1000.0])
    np.testing.assert_allclose(F.logaddexp(x, x).numpy(), [1000 + np.log(2), -1000 + np.log(2)],
                               rtol=1e-6)


def _clamp_passing_ties(x, lower=None, upper=None):
    """torch.clamp's values with the gradient rule of upstream (scalar bounds), of torch 2.8-2.13
    and of this fork: x equal to a bound keeps the gradient, and a tensor bound equal to x takes
    none (torch 2.14 gives x none at a scalar bound and halves it with a tensor one). Selections,
    so the oracle of these tests does not move with torch's version."""
    if lower is not None:
        x = torch.where(x < lower, lower, x)
    return x if upper is None else torch.where(x > upper, upper, x)


@pytest.mark.parametrize("lower,upper", [(-0.5, 0.5), (None, 0.3), (-0.2, None), (1.0, -1.0)])
def test_clip_value_and_grad(lower, upper):
    x = rand(4, 5)
    x[0, :3] = [-0.5, 0.5, 0.3]  # exactly on a bound: the gradient passes, as upstream's
    got = check(lambda t: F.clip(t, lower, upper),
                lambda t: _clamp_passing_ties(t, lower, upper), x)
    np.testing.assert_array_equal(got.numpy(), torch.clamp(torch.tensor(x), lower, upper).numpy())


def test_clip_with_tensor_bounds():
    x, lo, hi = rand(3, 4), rand(4, low=-1, high=0), rand(3, 1, low=0, high=1)
    check(F.clip, torch.clamp, x, lo, hi)


def test_clip_with_tensor_bounds_at_a_tie_gives_the_gradient_to_x_alone():
    # as torch 2.8-2.13's; upstream 1.13 measured: x [1, 2, 0], lower [0, 2, 0], upper [1, 0, 3]
    # (the tie counted twice); documented in docs/compatibility.rst
    x, lo, hi = (np.array(v, np.float32) for v in ([1.0, 0.5, 2.0], [0.0, 0.5, 0.0], [1.0, 1.0, 1.0]))
    check(F.clip, _clamp_passing_ties, x, lo, hi)
    assert torch.clamp(*map(torch.tensor, (x, lo, hi))).tolist() == [1.0, 0.5, 1.0]  # (values)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_clip_of_both_bounds_keeps_nan_infinities_and_the_dtype_like_torch(dtype):
    x0 = np.array([[np.nan, -np.inf, np.inf, -7, 0, 3, 6, 9]] * 2, "float64")
    if dtype == "int32":
        x0 = np.nan_to_num(x0, nan=1, posinf=100, neginf=-100)
    x0 = x0.astype(dtype)
    for lower, upper in ((0, 6), (-1, 4), (5, 2)):
        y = F.clip(mge.tensor(x0, dtype=dtype), lower, upper)
        assert y.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(y.numpy(), torch.clamp(torch.tensor(x0), lower,
                                                             upper).numpy())


def test_clip_dtypes_and_errors():
    a = mge.tensor(np.arange(5, dtype=np.int32))
    out = F.clip(a, 2, 4)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out.numpy(), [2, 2, 2, 3, 4])
    np.testing.assert_array_equal(F.clip(a, lower=3).numpy(), [3, 3, 3, 3, 4])
    np.testing.assert_array_equal(F.clip(a, upper=3).numpy(), [0, 1, 2, 3, 3])
    assert F.clip(a, 0.5, 2.5).dtype == np.float32
    with pytest.raises(ValueError, match="clip"):
        F.clip(a)
    with pytest.raises(TypeError, match="clip"):
        F.clip(a, "0")


_U8, _I8 = np.array([0, 3, 255], np.uint8), np.array([-128, 0, 127], np.int8)


@pytest.mark.parametrize("x,lower,upper,want", [
    (_U8, -1, None, "uint8"), (_U8, None, 300, "uint8"), (_U8, 300, None, "uint16"),
    (_U8, None, -2, "int16"), (_U8, -1, 5, "uint8"), (_U8, 300, 400, "uint16"),
    (_U8, 300, 70000, "uint16"), (_U8, -400, -300, "int16"), (_I8, 300, 400, "int16"),
    (_I8, -400, -300, "int16"), (_I8, 300, -1000, "int16"), (_I8, -1000, 1000, "int8")])
def test_clip_with_an_int_bound_out_of_the_dtypes_range(x, lower, upper, want):
    # no bound on that side, as numpy's clip of two bounds; a bound every value moves to takes
    # upstream's promotion, as x + bound (earlier versions of this fork raised numpy's
    # OverflowError "-1 out of bounds for uint8" for one bound, and with both bounds past the
    # top of the range gave the dtype's maximum: F.clip(uint8, 300, 400) was 255)
    got = F.clip(mge.tensor(x, dtype=x.dtype), lower, upper)
    assert got.dtype == np.dtype(want)
    np.testing.assert_array_equal(got.numpy(), torch.clamp(torch.tensor(x, dtype=torch.int64),
                                                           lower, upper).numpy())


@pytest.mark.parametrize("lower,upper,want", [(0, 5, "float32"), (2, None, "float32"),
                                              (None, 0.5, "float32"), (False, True, "bool")])
def test_clip_of_a_bool_tensor_takes_upstreams_promotion(lower, upper, want):
    # a Python int next to a bool tensor gives float32 (upstream 1.13 measured: F.clip(bool, 0,
    # 2) and bool + 2 are float32; earlier versions of this fork gave int64, then int32)
    x = np.array([True, False])
    got = F.clip(mge.tensor(x), lower, upper)
    assert got.dtype == np.dtype(want)
    np.testing.assert_array_equal(got.numpy(), torch.clamp(torch.tensor(x, dtype=torch.float64),
                                                           lower, upper).numpy())


@pytest.mark.parametrize("dtype,lower,upper,want", [
    ("int8", np.int16(3), None, "int16"), ("int8", None, np.uint8(3), "int16"),
    ("int8", np.int32(3), np.int32(7), "int32"), ("int16", 1, np.int32(3), "int32"),
    ("int8", 3, np.int32(70000), "int32"), ("int8", np.float32(1.5), None, "float32"),
    ("float16", np.float32(1.5), None, "float32"), ("float16", None, np.float16(1.5), "float16"),
    ("int8", np.bool_(True), None, "int8"), ("float32", None, np.bool_(True), "float32"),
    ("int8", np.int64(3), None, "int32"), ("float16", np.float64(1.5), None, "float32")])
def test_clip_with_a_numpy_scalar_bound_promotes_as_an_operand(dtype, lower, upper, want):
    # upstream's convert_inputs types a numpy scalar as a tensor: MegEngine 1.13 gives int16 for
    # clip(int8, np.int16(3), None), float32 for clip(float16, np.float32(1.5), None), as for
    # x + np.int16(3); np.int64 / np.float64 take the 32-bit dtype Tensor() stores them as (as
    # x + np.int64(3) does here; upstream refuses those dtypes). Earlier versions of this fork
    # kept x's dtype and refused np.bool_ bounds
    x = np.array([0, 1, 2, 9], dtype)
    got = F.clip(mge.tensor(x, dtype=dtype), lower, upper)
    assert got.dtype == np.dtype(want)
    lo = -np.inf if lower is None else float(lower)
    hi = np.inf if upper is None else float(upper)
    np.testing.assert_array_equal(got.numpy(), np.clip(x.astype(np.float64), lo, hi))


def test_clip_of_float16_with_numpy_float32_bounds_differentiates_like_torch():
    x = np.array([-2.0, 0.0, 0.5, 1.0, 3.0], np.float16)  # (0 and 1: on a bound)
    check_against_torch(lambda t: F.clip(t, np.float32(0), np.float32(1)),
                        lambda t: _clamp_passing_ties(t.float(), 0.0, 1.0), x, check_dtype=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # (NaN * 0)
@pytest.mark.parametrize("lower, upper", [(-1, 1), (0.1, 6), (0, None), (None, -0.0), (0.0, 0.0),
                                          (1, -1), (-70000.5, 1e-7)])
def test_float16_clip_computes_in_float32_with_numpys_float16_values(monkeypatch, lower, upper):
    # numpy's float16 clip with the same Python bounds is the oracle, bit for bit (signed zeros,
    # infinities, NaNs; a bound rounds to float16 first, so float16(0.1) is inside [0.1, 6]);
    # the gradient passes where numpy's float16 comparisons put x inside (ends included)
    from megengine.core import ops  # (its cast: the float32 path, `Op.half_in_float32`)

    rng = np.random.default_rng(7)
    x = rng.integers(0, 2 ** 16, 8192, dtype=np.uint64).astype(np.uint16).view(np.float16)
    x[:8] = [0.0, -0.0, 0.1, 6, 1, -1, 1e-7, -70000.5]
    x[8:4096] = rng.standard_normal(4088)  # (mostly finite values near the bounds)
    g = rng.standard_normal(8192).astype(np.float16)
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda a, d: taken.append(np.dtype(d)) or real(a, d))
    with np.errstate(over="ignore"):  # (numpy's float16 of -70000.5 is -inf)
        want = np.clip(x, -np.inf if lower is None else lower, np.inf if upper is None else upper)
        inside = np.ones(8192, bool)
        if lower is not None:
            inside &= x >= lower
        if upper is not None:
            inside &= x <= upper
        w = mge.Parameter(x, device="cpu0")
        with GradManager().attach(w) as gm:
            y = F.clip(w, lower, upper)
            gm.backward(y, mge.tensor(g, device="cpu0"))
        assert taken == [np.float32, np.float16, np.float32, np.float16]  # the float32 path
        same = lambda a, b: ((a.view(np.uint16) == b.view(np.uint16)) | np.isnan(a) & np.isnan(b))
        assert y.dtype == np.float16 and same(y.numpy(), want).all()
        assert same(w.grad.numpy(), g * inside).all()
        # inference (no gradient) takes the same path
        assert same(F.clip(mge.tensor(x, device="cpu0"), lower, upper).numpy(), want).all()


def test_float16_clip_keeps_xs_signed_zero_at_a_zero_bound_whatever_numpys_float32_clip_gives(
        monkeypatch):
    # numpy's float16 clip keeps x = -0.0 at a bound 0 (and x = 0.0 at -0.0); its float32 clip,
    # which the float16 op runs, gives the bound's zero there in numpy 2.0 (x's from 2.1):
    # emulated here, so the mending is tested whatever numpy runs the suite
    def bounds_zero(clip):
        return lambda *a: (lambda x, out: np.where((out == 0) & (x == 0), np.float32(0), out))(
            a[-3], clip(*a))

    monkeypatch.setattr(elemwise_module, "_clip_keeping_nan",
                        bounds_zero(elemwise_module._clip_keeping_nan))
    monkeypatch.setattr(elemwise_module, "_clip_ufunc", bounds_zero(elemwise_module._clip_ufunc))
    x = np.resize(np.array([-0.0, 0.0, -1.0, 2.0, np.nan], np.float16), 8192)  # (numpy's float16
    # arrays of a few values compute in float16: `Op.computes_half`)
    for lower, upper in [(0, None), (None, -0.0), (0.0, 0.0), (-0.0, 1), (0, 6)]:
        want = np.clip(x, -np.inf if lower is None else lower, np.inf if upper is None else upper)
        w = mge.Parameter(x, device="cpu0")
        with GradManager().attach(w) as gm:
            y = F.clip(w, lower, upper)
            gm.backward(y.sum())
        for got in (y.numpy(), F.clip(mge.tensor(x, device="cpu0"), lower, upper).numpy()):
            np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shapes", [((64, 64), (64, 64), (64, 64)), ((64, 64), (64,), (64, 1)),
                                    ((8, 64), (64,), ()), ((64, 64), (64, 64), (1, 64))])
@pytest.mark.parametrize("order", ["lower < upper", "lower > upper"])
def test_float16_clip_with_tensor_bounds_gives_torchs_values_and_gradients(shapes, order):
    # torch's float16 clamp is the oracle: its values bit for bit (a selection: signed zeros
    # and infinities included; NaN where torch's is), its gradients on x and both bounds (torch
    # 2.8-2.13's rule at ties of x with a bound, `_clamp_passing_ties`: integer values, many
    # ties), summed over the broadcast dims
    # in float32 and rounded once (torch's float16 sums add in float32 too)
    rng = np.random.default_rng(11)
    xs, ls, us = shapes
    x = rng.integers(-4, 5, xs).astype(np.float16)
    x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    lo, hi = rng.integers(-3, 1, ls), rng.integers(1, 4, us)
    if order == "lower > upper":  # upper everywhere; its gradient all of g
        lo, hi = lo + 4, hi - 4
    lo, hi = np.asarray(lo, np.float16), np.asarray(hi, np.float16)
    g = rng.standard_normal(np.broadcast_shapes(xs, ls, us)).astype(np.float16)
    # (no gradient where x is NaN: torch gives it to nobody, maximum then minimum to upper)
    g[np.broadcast_to(np.isnan(x), g.shape)] = 0
    ws = [mge.Parameter(a, device="cpu0") for a in (x, lo, hi)]
    with GradManager().attach(ws) as gm:
        y = F.clip(*ws)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    ts = [torch.tensor(a, requires_grad=True) for a in (x, lo, hi)]
    ty = torch.clamp(*ts)
    _clamp_passing_ties(*ts).backward(torch.tensor(g))  # (torch 2.14's clamp halves ties)
    same = lambda a, b: ((a.view(np.uint16) == b.view(np.uint16)) | np.isnan(a) & np.isnan(b))
    assert y.dtype == np.float16 and same(y.numpy(), ty.detach().numpy()).all()
    for w, t in zip(ws, ts):
        assert w.grad.dtype == np.float16
        np.testing.assert_array_equal(w.grad.numpy(), t.grad.numpy())
    inference = F.clip(*(mge.tensor(a, device="cpu0") for a in (x, lo, hi)))
    assert same(inference.numpy(), ty.detach().numpy()).all()


def test_clip_with_tensor_bounds_equal_above_x_gives_the_gradient_to_lower():
    # maximum(x, lower) then minimum(., upper), upstream's ties (the first operand): of
    # lower == upper above x, lower takes the gradient (torch's clamp gives it to neither);
    # float16 (one op, ClipByTensors) and float32 (the two ops) alike
    for dtype in ("float32", "float16"):
        x, lo, hi = (np.full(2048, v, dtype) for v in (0.0, 2.0, 2.0))
        ws = [mge.Parameter(a, device="cpu0") for a in (x, lo, hi)]
        with GradManager().attach(ws) as gm:
            gm.backward(F.clip(*ws).sum())
        assert [w.grad.numpy().tolist() for w in ws] == [[0.0] * 2048, [1.0] * 2048,
                                                        [0.0] * 2048]


def test_clip_with_tensor_bounds_that_do_not_broadcast_says_so():
    x, lo, hi = (mge.tensor(np.zeros(n, np.float16)) for n in (3, 4, 4))
    with pytest.raises(ValueError, match=r"clip: shapes \(3,\) \(x\), \(4,\) \(lower\) and "
                                         r"\(4,\) \(upper\) do not broadcast"):
        F.clip(x, lo, hi)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_clip_with_tensor_bounds_second_order_matches_torch(dtype):
    # the recorded gradient (an outer GradManager differentiates it): torch's double backward
    # in float64 on the same values; float16 of 4096 values: one op on ATen (ClipByTensors)
    rng = np.random.RandomState(4)
    x, lo, hi = rng.randn(64, 64), rng.uniform(-1, 0, 64), rng.uniform(0, 1, (64, 1))
    x, lo, hi = (v.astype(dtype) for v in (x, lo, hi))
    r = rng.randn(64, 64).astype(np.float32)
    v = [rng.randn(*a.shape).astype(np.float32) for a in (x, lo, hi)]

    def loss(clip, a, b, c, cast):
        return (cast(clip(a * a, b * b - 1, c)) ** 2 * r).sum()

    ps = [mge.Parameter(a) for a in (x, lo, hi)]
    outer, inner = GradManager().attach(ps), GradManager().attach(ps)
    with outer:
        with inner:
            inner.backward(loss(F.clip, *ps, lambda t: t.astype("float32")))
        firsts = [p.grad for p in ps]
        for p in ps:
            p.grad = None
        outer.backward(sum((g.astype("float32") * mge.tensor(w)).sum()
                           for g, w in zip(firsts, v)))
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, lo, hi)]
    r = torch.tensor(r, dtype=torch.float64)
    tg = torch.autograd.grad(loss(torch.clamp, *ts, lambda t: t), ts, create_graph=True)
    th = torch.autograd.grad(sum((g * torch.tensor(w, dtype=torch.float64)).sum()
                                 for g, w in zip(tg, v)), ts)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == "float16" else dict(rtol=2e-4, atol=2e-5)
    for g, p, t, h in zip(firsts, ps, tg, th):
        assert g.dtype == p.grad.dtype == dtype
        np.testing.assert_allclose(g.numpy().astype(np.float64), t.detach().numpy(), **tol)
        np.testing.assert_allclose(p.grad.numpy().astype(np.float64), h.numpy(), **tol)


def test_binary_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        F.add(mge.tensor(np.zeros(3, np.float32)), mge.tensor(np.zeros(4, np.float32)))


def test_no_activations_here():
    # the nn module owns the activations; elemwise keeps to math functions
    from megengine.functional import elemwise
    for name in ("relu", "sigmoid", "gelu", "softplus", "softmax"):
        assert name not in elemwise.__all__


# ----- error functions -----

@pytest.mark.parametrize("name,torch_fn,low,high", [
    ("erf", torch.erf, -4, 4), ("erfc", torch.erfc, -4, 4), ("erfinv", torch.erfinv, -0.99, 0.99),
])
def test_error_functions_against_torch(name, torch_fn, low, high):
    check(getattr(F, name), torch_fn, rand(200, low=low, high=high), rtol=2e-5)


def test_error_functions_precision_and_edges():
    # relative precision near 0 and in erfc's tail, where naive formulas lose it
    x = np.array([1e-8, -3e-5, 0.49, 0.51, 3.0, 5.0, 9.0], np.float32)
    for f, t in ((F.erf, torch.erf), (F.erfc, torch.erfc)):
        np.testing.assert_allclose(f(x).numpy(), t(torch.tensor(x)).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(F.erfinv(mge.tensor([1.0, -1.0])).numpy(), [np.inf, -np.inf])
    assert np.isnan(F.erfinv(mge.tensor([1.5])).numpy()).all()
    y = np.array([0.1, 1.0, 1.7], np.float32)
    np.testing.assert_allclose(F.erfc(F.elemwise.erfcinv(y)).numpy(), y, rtol=1e-6)
    assert F.erf(mge.tensor([1, 2])).dtype == np.float32  # integers compute in float32


def test_error_functions_of_float64_are_float64_precise():
    # earlier versions computed float64 with float32's 1.2e-7 (the fuzzer's --float64 mode)
    x = np.concatenate([np.linspace(-6, 6, 241), [1e-12, 0.5, 1.99, 2.0, 2.01, 9.0, 27.0]])
    for f, t in ((F.erf, torch.erf), (F.erfc, torch.erfc)):
        y = f(mge.tensor(x, dtype="float64"))
        assert y.dtype == np.float64
        np.testing.assert_allclose(y.numpy(), t(torch.tensor(x)).numpy(), rtol=1e-12, atol=0)
    p = np.linspace(-0.999, 0.999, 199)
    np.testing.assert_allclose(F.erfinv(mge.tensor(p, dtype="float64")).numpy(),
                               torch.erfinv(torch.tensor(p)).numpy(), rtol=1e-12)
    q = np.linspace(0.001, 1.999, 199)
    np.testing.assert_allclose(F.elemwise.erfcinv(mge.tensor(q, dtype="float64")).numpy(),
                               torch.erfinv(torch.tensor(1 - q)).numpy(), rtol=1e-12, atol=1e-15)


# ----- Elemwise, upstream's op named by mode -----

def test_elemwise_modes_compare_as_their_names():
    from megengine.functional.elemwise import Elemwise
    members = {k: m for k, m in vars(Elemwise.Mode).items() if isinstance(m, Elemwise.Mode)}
    assert "ADD" in members and "ERF" in members
    for key, mode in members.items():
        assert key == mode and Elemwise(mode=key) == Elemwise(mode=mode)
    assert Elemwise("add") == Elemwise(Elemwise.Mode.ADD) != Elemwise("SUB")
    with pytest.raises(ValueError, match="unknown mode"):
        Elemwise("NO_SUCH_MODE")


def test_elemwise_op_computes_and_differentiates():
    from megengine.functional.elemwise import Elemwise, _elwise
    x, y = rand(5), rand(5)
    check(lambda a, b: Elemwise("FUSE_ADD_RELU")(a, b), lambda a, b: torch.relu(a + b), x, y)
    check(lambda a, b: _elwise(a, b, mode=Elemwise.Mode.TRUE_DIV), torch.div, x, rand(5, low=1))
    np.testing.assert_allclose(
        _elwise(x, y, x, mode="FUSE_MUL_ADD3").numpy(), x * y + x, rtol=1e-6)


# ----- complex numbers -----

def test_polar_complex_real_imag_like_numpy():
    mag, ang = rand(2, 3, low=0, high=2), rand(2, 3, low=-3, high=3)
    z = F.polar(mag, ang)
    assert z.dtype == np.complex64
    np.testing.assert_allclose(z.numpy(), mag * np.cos(ang) + 1j * mag * np.sin(ang), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(F.real(z).numpy(), mag * np.cos(ang), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(F.imag(z).numpy(), mag * np.sin(ang), rtol=1e-6, atol=1e-6)
    c = F.complex(mge.tensor([1.0, 2.0]), 3.0)
    assert c.tolist() == [1 + 3j, 2 + 3j] and mge.tensor([1 + 2j]).dtype == np.complex64
    with pytest.raises(TypeError, match="complex"):
        F.real(mge.tensor([1.0]))


# ----- every public elemwise function on int32 and on empty inputs (upstream's checks) -----

def _call_every_function(make):
    import megengine.functional.elemwise as elemwise
    results = {}
    for name in elemwise.__all__:
        fn = getattr(elemwise, name)
        nargs = fn.__code__.co_argcount
        if name == "clip":
            args = (make("float32"), 0, 1)
        elif name.endswith("_shift"):
            args = (make("int32"), 1)
        elif name.startswith("logical_"):
            args = (make("bool"),) * nargs
        else:
            args = (make("float32"),) * nargs
        results[name] = fn(*args)
    return results


def test_every_elemwise_function_takes_int32():
    x = mge.tensor([1, 2, 3, 4, 5], dtype="int32")
    out = _call_every_function(lambda dtype: x if dtype != "bool" else x > 2)
    assert out["exp"].dtype == np.float32 and out["add"].dtype == np.int32
    assert all(o.shape == (5,) for o in out.values())


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)])
def test_every_elemwise_function_keeps_empty_shapes(shape):
    out = _call_every_function(lambda dtype: mge.tensor(np.zeros(shape), dtype=dtype))
    assert {o.shape for o in out.values()} == {shape}


def test_elemwise_gradient_and_check_modes():
    from megengine.functional.elemwise import Elemwise
    x, g = rand(6), rand(6)
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(Elemwise("SIGMOID_GRAD")(s, g).numpy(), s * (1 - s) * g,
                               rtol=1e-5)
    np.testing.assert_allclose(Elemwise("TANH_GRAD")(np.tanh(x), g).numpy(),
                               (1 - np.tanh(x) ** 2) * g, rtol=1e-5)
    np.testing.assert_allclose(Elemwise("ABS_GRAD")(x, g).numpy(), np.sign(x) * g)
    assert Elemwise("ISNAN")(mge.tensor([1.0, np.nan])).tolist() == [False, True]


def test_maximum_and_minimum_give_ties_to_the_first_operand_as_upstream():
    # upstream's Elemwise gradient: MAX sends g to x where x >= y and to y where x < y; MIN to
    # x where x <= y (torch would split ties half and half)
    x = mge.tensor([1.0, 2.0, 3.0])
    y = mge.tensor([2.0, 2.0, 2.0])
    gm = GradManager().attach([x, y])
    with gm:
        gm.backward(F.maximum(x, y).sum() + 10 * F.minimum(x, y).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [10, 11, 1])
    np.testing.assert_array_equal(y.grad.numpy(), [1, 0, 10])


def test_maximum_and_minimum_give_nan_where_either_operand_is_nan_as_torch():
    # upstream 1.13's keep one operand by their order where they do not compare (measured:
    # maximum(nan, 0.5) is NaN, maximum(0.5, nan) 0.5, minimum the other way round): a
    # documented difference (a NeRF's 1 / maximum(1e-10, 0 / 0) is NaN here, 1e10 there)
    a = np.array([np.nan, 1.0, -1.0, np.nan], np.float32)
    b = np.array([0.5, np.nan, 0.5, np.nan], np.float32)
    for name in ("maximum", "minimum"):
        for x, y in ((a, b), (b, a)):
            got = getattr(F, name)(mge.tensor(x), mge.tensor(y)).numpy()
            want = getattr(torch, name)(torch.tensor(x), torch.tensor(y)).numpy()
            np.testing.assert_array_equal(got, want)  # (NaNs compare equal here)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_where_a_nan_meets_a_number_neither_operand_takes_the_gradient_as_upstreams(name):
    # upstream 1.13 measured: zero gradients to both operands of maximum / minimum wherever
    # one is NaN, on either side (torch gives it to both; this fork gave it to the second)
    x = mge.tensor([np.nan, 1.0, 3.0, 2.0])
    y = mge.tensor([1.0, np.nan, 2.0, 2.0])
    gm = GradManager().attach([x, y])
    with gm:
        gm.backward(getattr(F, name)(x, y), F.ones((4,)))
    big = 1.0 if name == "maximum" else 0.0
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, big, 1])  # (a tie: the first)
    np.testing.assert_array_equal(y.grad.numpy(), [0, 0, 1 - big, 0])


def test_maximum_of_a_tensor_with_itself_has_gradient_one():
    # upstream's test_maximum_grad_consistency
    x = F.arange(10)
    gm = GradManager().attach(x)
    with gm:
        gm.backward(F.maximum(x, x))
    np.testing.assert_array_equal(x.grad.numpy(), np.ones(10))


def test_clip_with_tensor_bounds_passes_the_gradient_at_the_bounds():
    # Tensor bounds go through maximum/minimum; the gradient must pass where x equals a bound,
    # exactly as with number bounds (upstream's CLIP gradient is inclusive)
    x = mge.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    grads = []
    for lower, upper in ((-1.0, 1.0), (mge.tensor(-1.0), mge.tensor(1.0))):
        x.grad = None
        gm = GradManager().attach(x)
        with gm:
            gm.backward(F.clip(x, lower, upper).sum())
        grads.append(x.grad.numpy())
    np.testing.assert_array_equal(grads[0], [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(grads[1], grads[0])


# ----- upstream's documented dtypes (its docstring examples) -----

def test_pow_of_integer_tensors_is_float32_as_upstream_documents():
    # upstream's F.pow examples: Tensor([1..5]) ** Tensor([1, 2, 1, 2, 1]) and ** 2 print floats
    x = mge.Tensor([1, 2, 3, 4, 5])
    y = mge.Tensor([1, 2, 1, 2, 1])
    for out, want in [(F.pow(x, y), [1, 4, 3, 16, 5]), (F.pow(x, 2), [1, 4, 9, 16, 25]),
                      (x ** y, [1, 4, 3, 16, 5]), (x ** 2, [1, 4, 9, 16, 25]),
                      (2 ** x, [2, 4, 8, 16, 32]), (x ** 0.5, np.sqrt([1, 2, 3, 4, 5]))]:
        assert out.dtype == np.float32
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)
    z = mge.Tensor([2, 3])
    z **= 2
    assert z.dtype == np.float32 and z.numpy().tolist() == [4.0, 9.0]


def test_pow_keeps_float_dtypes_and_gradients():
    h = mge.Tensor([1.5, 2.0], dtype="float16")
    assert (h ** 2).dtype == np.float16 and F.pow(h, 2).dtype == np.float16
    x = mge.Tensor([1.5, 2.0])
    gm = GradManager().attach([x])
    with gm:
        gm.backward(F.pow(x, mge.Tensor([2, 3])).sum())
    np.testing.assert_allclose(x.grad.numpy(), [2 * 1.5, 3 * 2.0 ** 2], rtol=1e-6)


# ----- clip's inference path (numpy's clip ufunc for float inputs and number bounds) -----

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_of_float_inputs_matches_torch_clamp_with_nan_ends_and_views(dtype):
    rs = np.random.RandomState(0)
    a = (rs.randn(3, 5, 7) * 4).astype(dtype)
    a[0, 0, 0], a[1, 1, 1], a[2, 2, 2] = np.nan, 0.0, 6.0
    whole, t = mge.tensor(a, dtype=dtype), torch.tensor(a)
    for x, tx in ((whole, t), (whole[:, ::2, 1:], t[:, ::2, 1:])):  # odd sizes, a strided view
        for lower, upper in ((0, 6), (-1.5, 2.25), (3, 1)):  # lower > upper: upper everywhere
            out = F.clip(x, lower, upper)
            assert out.dtype == np.dtype(dtype) and out.shape == tuple(tx.shape)
            np.testing.assert_array_equal(out.numpy(), torch.clamp(tx, lower, upper).numpy())


def test_clip_gradient_when_recorded_matches_torch():
    # a recorded clip keeps the mask its backward needs (the inference path keeps none)
    a = np.random.RandomState(1).uniform(-3, 9, (4, 7)).astype(np.float32)
    check_against_torch(lambda x: F.clip(x, 0, 6), lambda x: torch.clamp(x, 0, 6), a)
    check_against_torch(lambda x: F.clip(x, -1.0, 2.5), lambda x: torch.clamp(x, -1.0, 2.5),
                        a.astype(np.float64))


def test_clip_bounds_that_need_conversion_or_checks_keep_their_rules():
    u8 = mge.tensor(np.arange(6, dtype=np.uint8))
    out = F.clip(u8, -1, 3)  # out of uint8's range: no bound there, as numpy's clip does
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.numpy(), [0, 1, 2, 3, 3, 3])
    out = F.clip(mge.tensor(np.arange(4, dtype=np.int32)), 0.5, 2)  # float bound: float32
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), [0.5, 1, 2, 2])
    x = mge.tensor(np.array([-2.0, 0.25, 9.0], np.float32))
    out = F.clip(x, np.float64(0), True)  # numpy scalar and bool bounds: numbers too
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), [0, 0.25, 1])
    with pytest.raises(TypeError, match="^clip: lower must be a number or a Tensor.*got str"):
        F.clip(x, "0", 6)
    with pytest.raises(ValueError, match="at least one of lower and upper"):
        F.clip(x)


@pytest.mark.parametrize("dtype,lower,upper,want", [
    ("float32", np.array([1, 2, 3]), 4, "float32"), ("float32", [1.5, 2, 3], (4, 4, 2), "float32"),
    ("float16", np.array([1, 2, 3]), 4, "float16"), ("int32", [2, 2, 2], np.array(4), "int32"),
    ("float32", None, np.array([[1.0], [4.0]], np.float32), "float32")], ids=str)
def test_clip_takes_numpy_arrays_and_lists_as_bounds_per_element(dtype, lower, upper, want):
    # as upstream 1.13's (measured: F.clip(x, np.array([1, 2, 3]), 4) clips each column to its
    # bound), promoting as x + bound does; numpy's clip is the oracle
    x = np.array([[0, 2, 5], [3, 1, 9]]).astype(dtype)
    got = F.clip(mge.tensor(x, dtype=dtype), lower, upper)
    assert got.dtype == np.dtype(want)
    np.testing.assert_array_equal(got.numpy(), np.clip(
        x, None if lower is None else np.asarray(lower, dtype=want),
        np.asarray(upper, dtype=want)))


# ----- float16 on the CPU: computed in float32, rounded once (functional/elemwise.py _Unary) -----

_HALF_FUNCS = {
    "exp": (F.exp, torch.exp), "tanh": (F.tanh, torch.tanh), "sin": (F.sin, torch.sin),
    "square": (F.square, torch.square), "floor": (F.floor, torch.floor),
    "sigmoid": (F.sigmoid, torch.sigmoid), "silu": (F.silu, torch.nn.functional.silu),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1),
                   lambda x: torch.nn.functional.leaky_relu(x, 0.1)),
    "softplus": (F.softplus, torch.nn.functional.softplus),
    "hswish": (F.hswish, torch.nn.functional.hardswish),
    "logsigmoid": (F.logsigmoid, torch.nn.functional.logsigmoid),
    "relu6": (F.relu6, torch.nn.functional.relu6),
}


def _float16_steps(got, exact):
    """How far ``got`` is from ``exact`` in float16 steps at the exact value's magnitude."""
    with np.errstate(over="ignore"):
        step = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / np.maximum(step, 2.0 ** -24)


@pytest.mark.parametrize("name", sorted(_HALF_FUNCS))
def test_float16_functions_on_cpu_round_once(name):
    # the oracle: torch in float64 on the same float16 values (exact to float16's eye). One
    # rounding of a float32 result is within a step of it (half a step but for float32's own
    # error); numpy's float16 passes, rounding each, were up to 2.5 steps off in value and up
    # to ~2000 in gradients (tanh's 1 - y * y of a rounded y)
    fn, torch_fn = _HALF_FUNCS[name]
    rng = np.random.default_rng(10)
    x = np.clip(rng.standard_normal((64, 64)) * 3, -8, 8).astype(np.float16)
    g = rng.standard_normal((64, 64)).astype(np.float16)
    t = mge.tensor(x, device="cpu0")
    with GradManager().attach(t) as gm:
        y = fn(t)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    torch_fn(tx).backward(torch.tensor(g.astype(np.float64)))
    assert y.dtype == np.float16
    assert _float16_steps(y.numpy(), torch_fn(tx).detach().numpy()).max() <= 1
    if name != "floor":  # (piecewise constant: no gradient)
        assert t.grad.dtype == np.float16
        assert _float16_steps(t.grad.numpy(), tx.grad.numpy()).max() <= 4


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.clip(x), AssertionError,
                 "at least one of lower and upper must be given", id="clip"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: AssertionError from its Python assert; earlier versions of this fork raised a plain ValueError.
    # The error is also a ValueError (what the mistake is) and says what was wrong
    raises_as_upstream(call, (3, 4), upstream, match)


@pytest.mark.parametrize("call,named", [
    (lambda: F.exp(None), "exp: x"), (lambda: F.relu(None), "relu: x"),
    (lambda: F.sum(None), "sum: inp"), (lambda: F.softmax(None), "softmax: inp"),
    (lambda: F.topk(None, 2), "topk: inp"), (lambda: F.mean(None, axis=0), "mean: inp"),
    (lambda: F.flatten(None), "flatten: inp"),
])
def test_a_none_input_raises_instead_of_computing_on_an_empty_tensor(call, named):
    # upstream's functions raise for None (its own words vary: "no dtype available", an
    # AttributeError); Tensor(None) is an empty tensor, which earlier versions of this fork
    # computed on: F.relu(None) an empty result, F.sum(None) 0. The message names the function
    # and the argument (earlier: "an input tensor is None"); the types are upstream's
    for cls in (TypeError, ValueError):
        with pytest.raises(cls, match=f"^{named} is None; pass a Tensor"):
            call()


@pytest.mark.parametrize("call,named", [
    (lambda x: F.exp("x"), "exp: x"), (lambda x: F.add(x, "x"), "add: y"),
    (lambda x: F.complex(x, "x"), "complex: imag"),
])
def test_a_string_for_a_tensor_names_the_function_and_the_argument(call, named):
    # (Tensor's constructor refuses it, below the function: its words named neither)
    x = mge.tensor([1.0, 2.0])
    for cls in (TypeError, ValueError, RuntimeError):  # (upstream's: ValueError for F.exp,
        with pytest.raises(cls, match=f"^{named}: cannot make a tensor from data of dtype "
                                      "<U1 \\(str\\)"):  # RuntimeError for x + "x")
            call(x)


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow", "maximum", "equal",
                                  "logaddexp", "atan2", "left_shift"])
def test_a_none_operand_of_a_binary_function_names_the_function_and_the_argument(name):
    # upstream's TypeError "the operand is None and is not supported." (x + None), its words
    # kept, after the function and the argument (F.add's y)
    x = mge.tensor([1, 2]) if name == "left_shift" else mge.tensor([1.0, 2.0])
    for args, arg in (((x, None), "y"), ((None, x), "x")):
        if name == "atan2":
            arg = {"x": "y", "y": "x"}[arg]  # (atan2(y, x))
        with pytest.raises(TypeError, match=f"^{name}: (the operand {arg} is None and is not "
                                            f"supported.|{arg} is None; pass a Tensor)"):
            getattr(F, name)(*args)


@pytest.mark.parametrize("name", ["maximum", "minimum", "add", "logical_and"])
def test_a_none_beside_a_number_raises_instead_of_giving_an_empty_tensor(name):
    # neither operand a Tensor: None became Tensor(None), an empty tensor, and F.maximum(None,
    # 0.0) returned it; upstream 1.13 raises TypeError
    other = True if name == "logical_and" else 0.0
    with pytest.raises(TypeError, match=f"^{name}: x is None"):
        getattr(F, name)(None, other)


@pytest.mark.parametrize("name,op", [("left_shift", np.left_shift), ("floor_div", np.floor_divide),
                                     ("greater_equal", np.greater_equal)])
def test_shapes_that_do_not_broadcast_name_the_function_called(name, op):
    # numpy is the oracle for which shapes do not broadcast; the message named the op inside
    # (LShift, FloorDiv, GreaterEqual), which no user called
    a, b = np.ones((2, 3), np.int32), np.ones(2, np.int32)
    with pytest.raises(ValueError):
        op(a, b)
    with pytest.raises(RuntimeError,
                       match=rf"^{name}: shapes \(2, 3\) and \(2,\) do not broadcast"):
        getattr(F, name)(mge.tensor(a), mge.tensor(b))


# (class, the operand's range, whether the body calls a transcendental function: the C library's
# may differ from numpy's own loops in the last bit)
_GRAD_KERNELS = [
    ("Tanh", -3, 3, False), ("Sqrt", 0.1, 3, False), ("Log1p", -0.9, 3, False),
    ("Square", -2, 2, False), ("Tan", -1.2, 1.2, False), ("Atan", -3, 3, False),
    ("Atanh", -0.9, 0.9, False), ("Asin", -0.9, 0.9, False), ("Acos", -0.9, 0.9, False),
    ("Asinh", -3, 3, False), ("Acosh", 1.1, 4, False), ("Sin", -3, 3, True),
    ("Cos", -3, 3, True), ("Sinh", -3, 3, True), ("Cosh", -3, 3, True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("name, low, high, transcendental", _GRAD_KERNELS,
                         ids=[k[0] for k in _GRAD_KERNELS])
def test_unary_gradient_kernel_bodies_match_the_array_code(tmp_path, name, low, high,
                                                           transcendental, dtype):
    """Each unary function's CUDA gradient kernel (one launch where the array code takes one
    per operation), its body compiled as C++: the array code's values (float16: its formula
    in float32, rounded once), to the last bit where it is arithmetic and square roots
    (correctly rounded in both), within a few ulps where it
    calls sin, cos, sinh or cosh (the C library's and numpy's differ by an ulp, which the
    product with g may round to two)."""
    from cuda_kernels import emulate

    op = getattr(elemwise_module, name)
    rng = np.random.RandomState(0)
    x = rng.uniform(low, high, 257).astype(dtype)
    g = rng.randn(257).astype(dtype)
    y = op.compute(np, x)
    operand = y if op.backward_reads == ("y",) else x
    got = emulate(op.grad_kernel, tmp_path)(g, operand)
    if dtype is np.float16:
        # CuPy's float16 converts to float in every operation and rounds once, at the end (as
        # torch's CUDA kernels): the array code's formula in float32 on the same values, rounded
        # once (the float16 array code rounds after each operation)
        f32 = [a.astype(np.float32) for a in (x, y, g)]
        expected = op.grad(np, *f32).astype(np.float16)
    else:
        expected = op.grad(np, x, y, g)
    assert got.dtype == expected.dtype == dtype
    if transcendental:
        np.testing.assert_array_max_ulp(got, expected, maxulp=3)
    else:
        np.testing.assert_array_equal(got, expected)


def test_unary_gradients_on_a_gpu_are_one_kernel():
    rt = simulated_gpu_runtime()
    x = mge.tensor(rand(4, 8), device="gpu0")
    g = mge.tensor(rand(4, 8), device="gpu0")
    gm = GradManager().attach(x)
    for fn in (F.tanh, F.sin, lambda t: F.sqrt(F.abs(t) + 1)):
        with gm:
            y = fn(x)
            before = rt.kernels
            gm.backward(y, g)
        # tanh, sin: the gradient kernel (its result is x.grad uncopied); sqrt's chain: three
        assert rt.kernels - before == (1 if fn in (F.tanh, F.sin) else 3), fn
        x.grad = None
