"""Tests of megengine/core/ops.py: the elemwise op classes behind the Tensor operators."""
import re
import warnings

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.core import ops

from oracle import within_a_float16_step


def test_mul_and_div_compute_only_the_gradients_asked_for():
    # a masked logit (-inf) scaled by a constant: its gradient is 0, and the constant's
    # gradient, which nobody asked for, used to be computed as 0 * -inf (NaN warnings).
    # Found by MegEngine/Models big_sleep (softmax(x / temperature) after a -inf scatter).
    a = np.array([[0.5, -np.inf, 1.0], [2.0, 0.1, -np.inf]], np.float32)
    w = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]], np.float32)
    x = mge.Parameter(a)
    gm = GradManager().attach(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        with gm:
            y = F.softmax(x / 2.0, axis=-1) + F.softmax(x * 0.5, axis=-1)
            gm.backward((y * mge.tensor(w)).sum())
    t = torch.tensor(a, requires_grad=True)
    ((torch.softmax(t / 2.0, -1) + torch.softmax(t * 0.5, -1)) * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert np.isfinite(x.grad.numpy()).all()


def test_mul_and_div_still_give_both_gradients_when_both_are_attached():
    a = np.array([1.0, -2.0, 3.0], np.float32)
    b = np.array([0.5, 4.0, -1.5], np.float32)
    x, y = mge.Parameter(a), mge.Parameter(b)
    gm = GradManager().attach([x, y])
    with gm:
        gm.backward((x * y + x / y).sum())
    tx, ty = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (tx * ty + tx / ty).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(y.grad.numpy(), ty.grad.numpy(), rtol=1e-6)


def test_bit_operations_refuse_floats_with_their_own_error():
    # the op fuzzer drew F.left_shift of a float32 tensor: numpy's "ufunc 'left_shift' not
    # supported for the input types" came out; torch refuses too, with a message naming dtypes
    x = mge.tensor([1.5, 2.0])
    for call in (lambda: F.left_shift(x, 1), lambda: F.right_shift(x, x), lambda: x & x,
                 lambda: mge.tensor([1, 2]) << mge.tensor([1.0, 2.0])):
        with pytest.raises(TypeError, match="operands must be integers"):
            call()
    # the message names the operands' own dtypes, not the float both promote to (the fuzzer's
    # right_shift of float32 by uint8 said "got float32 and float32")
    with pytest.raises(TypeError, match="got float32 and uint8;"):
        F.right_shift(x, mge.tensor([1, 2], dtype="uint8"))
    with pytest.raises(TypeError, match="got bool and bool;"):
        F.left_shift(mge.tensor([True]), mge.tensor([True]))
    # integers and (for and/or/xor) bools still work; numpy is the oracle
    a, b = np.array([5, -3, 7], np.int8), np.array([1, 2, 0], np.int8)
    np.testing.assert_array_equal(F.left_shift(mge.tensor(a), mge.tensor(b)).numpy(), a << b)
    np.testing.assert_array_equal(F.right_shift(mge.tensor(a), mge.tensor(b)).numpy(), a >> b)
    t = np.array([True, False])
    np.testing.assert_array_equal(F.left_shift(mge.tensor(a[:2]), mge.tensor(t)).numpy(),
                                  a[:2] << t)  # (an int and a bool promote to the int)
    np.testing.assert_array_equal((mge.tensor(t) & mge.tensor(t[::-1])).numpy(), t & t[::-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("exponent", [2, 2.0, 0.5, -1.0])
def test_power_by_a_common_exponent_keeps_the_bits_of_numpys_power(dtype, exponent):
    # x ** 2, x ** 0.5, x ** -1 take square, sqrt and reciprocal (numpy's general power loop is
    # 3-20x slower): the bits must stay those of numpy's power, specials included, and the
    # values torch's
    rs = np.random.RandomState(3)
    a = (rs.randn(500) * np.exp(rs.uniform(-6, 6, 500))).astype(dtype)
    a[:7] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0]
    with np.errstate(all="ignore"):
        want = a ** np.asarray(exponent, dtype)
        got = (mge.tensor(a, dtype=dtype) ** exponent).numpy()
        by_f = F.pow(mge.tensor(a, dtype=dtype), exponent).numpy()
    assert got.dtype == by_f.dtype == dtype
    number = ~np.isnan(want)  # (a NaN's sign means nothing: x86's sqrt(-1) sets it, CUDA's not)
    for out in (got, by_f):
        assert np.array_equal(out, want, equal_nan=True)
        assert np.array_equal(np.signbit(out[number]), np.signbit(want[number]))  # -0.0 stays
    finite = np.isfinite(want)
    t = torch.tensor(a) ** exponent
    np.testing.assert_allclose(got[finite], t.numpy()[finite], rtol=2e-3 if dtype == np.float16
                               else 1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gpu_power_kernel_gives_numpys_bits_for_one_exponent(dtype, tmp_path):
    # on CuPy the exponent is a 0-d device array: one kernel (its body compiled here as C++)
    # picks square, sqrt or reciprocal per element, where CUDA's pow gives pow(-0.0, 0.5) = +0
    # and pow(-inf, 0.5) = +inf; other exponents are pow's (numpy's loop: within a few ulps)
    from cuda_kernels import emulate

    kernel = emulate(ops._POW_KERNEL, tmp_path)
    rs = np.random.RandomState(5)
    a = (rs.randn(300) * np.exp(rs.uniform(-6, 6, 300))).astype(dtype)
    a[:7] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0]
    for exponent in (2.0, 0.5, -1.0, 3.0, 1.5, -2.0):
        e = np.asarray(exponent, dtype)
        with np.errstate(all="ignore"):
            want = a ** e
            got = kernel(a, e)
        assert got.dtype == dtype
        if exponent not in (2.0, 0.5, -1.0):
            np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0)
            continue
        assert np.array_equal(got, want, equal_nan=True), exponent
        finite = ~np.isnan(want)
        assert np.array_equal(np.signbit(got[finite]), np.signbit(want[finite])), exponent


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("exponent", [3, 1.5, -2.0, 4.0])
def test_power_of_a_large_array_has_torchs_bits_and_gradient(dtype, exponent):
    # from 1024 values other exponents run on ATen's pow: torch's bits (x ** 3 is its
    # x * x * x), and 30-150x numpy's general loop for integer exponents of negative values;
    # the array code (what CuPy runs) stays close to it
    from megengine.functional import _aten

    rs = np.random.RandomState(5)
    a = (rs.randn(64, 64) * 3).astype(dtype)
    a[0, :5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    g = rs.randn(64, 64).astype(dtype)
    x = mge.Parameter(a, dtype=dtype, device="cpu0")  # (numpy arrays: CuPy's are its own)
    with GradManager().attach(x) as gm:
        y = x ** exponent
        gm.backward(y * mge.tensor(g, dtype=dtype, device="cpu0"))
    t = torch.tensor(a, requires_grad=True)
    ty = t ** exponent
    ty.backward(torch.tensor(g))
    assert y.dtype == dtype
    assert np.array_equal(y.numpy(), ty.detach().numpy(), equal_nan=True)
    if exponent == 1.5:  # (its gradient takes x ** 0.5: numpy's sqrt, 1 ulp from torch's)
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6)
    else:
        assert np.array_equal(x.grad.numpy(), t.grad.numpy(), equal_nan=True)
    with _aten.avoided("pow"), np.errstate(all="ignore"):
        plain = (mge.tensor(a, dtype=dtype, device="cpu0") ** exponent).numpy()
    np.testing.assert_allclose(plain, y.numpy(), rtol=1e-6)


def test_square_by_power_has_torchs_gradient_and_a_second_order():
    a = np.array([[1.5, -2.0, 0.0], [3.0, -0.25, 7.0]], np.float32)
    g = np.array([[1.0, -1.0, 2.0], [0.5, 3.0, -2.0]], np.float32)
    x = mge.Parameter(a)
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            y = x ** 2
            inner.backward((y * mge.tensor(g)).sum())
        first = x.grad
        x.grad = None
        outer.backward((first * first).sum())
    t = torch.tensor(a, requires_grad=True)
    (dt,) = torch.autograd.grad(((t ** 2) * torch.tensor(g)).sum(), t, create_graph=True)
    np.testing.assert_array_equal(first.numpy(), dt.detach().numpy())
    (ddt,) = torch.autograd.grad((dt * dt).sum(), t)
    np.testing.assert_allclose(x.grad.numpy(), ddt.numpy(), rtol=1e-6)


def test_power_gradient_in_the_exponent_is_nan_for_a_negative_base():
    # torch's and upstream 1.13's (measured): d(a ** b)/db = a ** b * log(a) is NaN where a < 0
    # (no real derivative), 0 where a == 0 and b >= 0; earlier versions of this fork gave 0
    # for every a <= 0, silently stopping a learned exponent
    av, bv = [-2.0, -1.0, 0.0, 0.0, 2.0], [2.0, 3.0, 0.0, 2.0, 0.5]
    a, b = mge.Parameter(av), mge.Parameter(bv)
    gm = GradManager().attach([a, b])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with gm:
            gm.backward((a ** b).sum())
    ta = torch.tensor(av, requires_grad=True)
    tb = torch.tensor(bv, requires_grad=True)
    (ta ** tb).sum().backward()
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-6)
    assert np.isnan(b.grad.numpy()[:2]).all() and b.grad.numpy()[2:4].tolist() == [0.0, 0.0]


def test_floating_point_special_cases_give_inf_and_nan_without_numpy_warnings():
    # Upstream's C++ kernels and torch's give inf / NaN for these without a word; numpy warns.
    # Under -W error::RuntimeWarning (a test suite's common setting) the engine must not stop,
    # while the program's own numpy call still does.
    import subprocess
    import sys

    code = """if True:
        import numpy as np, megengine as mge, megengine.functional as F
        from megengine.autodiff import GradManager
        x = mge.Parameter(np.array([0.0, -1.0, 1.0], np.float32))
        gm = GradManager().attach(x)
        with gm:
            ys = [F.log(x), F.sqrt(x), x / 0, F.exp(x * 1000), F.log1p(x - 1), x ** -1,
                  F.logsumexp(mge.tensor(np.full((2, 2), -np.inf, np.float32)), axis=1),
                  mge.tensor(np.full(3, 6e4, np.float16)) * 2,
                  F.mean(F.zeros((0, 3)), axis=0)]
            gm.backward(F.log(x).sum())
        print([y.numpy().tolist() for y in ys] + [x.grad.numpy().tolist()])
        try:
            np.log(np.zeros(1, np.float32))
        except RuntimeWarning as e:
            print("program's own:", e)
    """
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    values, own = out.stdout.strip().splitlines()
    nan, inf = float("nan"), float("inf")
    assert values == str([[-inf, nan, 0.0], [0.0, nan, 1.0], [nan, -inf, inf],
                          [1.0, 0.0, inf], [-inf, nan, 0.0], [inf, -1.0, 1.0], [-inf, -inf],
                          [inf, inf, inf], [nan, nan, nan]] + [[inf, -1.0, 1.0]])
    assert own == "program's own: divide by zero encountered in log"


# ----- axis arguments: one rule (core.ops._norm_axes) for reductions, softmax, flip, squeeze -----

_X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)


@pytest.mark.parametrize("call", [
    lambda x: F.sum(x, axis=(1, 1)),
    lambda x: F.softmax(x, axis=(1, -2)),
    lambda x: F.logsoftmax(x, (1, 1)),
    lambda x: F.flip(x, (2, -1)),
    lambda x: F.squeeze(F.expand_dims(x, 0), (0, 0)),
], ids=["sum", "softmax", "logsoftmax", "flip", "squeeze"])
def test_an_axis_named_twice_is_refused_everywhere(call):
    # upstream 1.13 measured: sum and logsoftmax assert "axis (1, 1) contains duplicated
    # indices"; softmax took the repeat as one axis here before, flip/squeeze a plain ValueError
    with pytest.raises(ops.ArgumentError, match="names the same dim twice"):
        call(mge.tensor(_X))
    assert issubclass(ops.ArgumentError, ValueError)
    assert issubclass(ops.ArgumentError, AssertionError)
    assert issubclass(ops.ArgumentError, RuntimeError)  # (upstream's C++ parameter checks)


@pytest.mark.parametrize("axis", [(1.5,), 1.5, "1", [0, None]])
def test_an_axis_that_is_no_int_is_refused_with_what_to_pass(axis):
    # (1.5,) summed axis 1 here before (the float was truncated), 1.5 raised "'float' object
    # is not iterable"; upstream 1.13 measured: "Unable to cast Python instance to C++ type"
    with pytest.raises(TypeError, match="axis must be an int or a sequence of ints"):
        F.sum(mge.tensor(_X), axis=axis)


@pytest.mark.parametrize("ndim", [0, 1, 3])
def test_a_plain_int_axis_is_normalized_as_any_other_int(ndim):
    # a Python int takes a shortcut; numpy ints and one-element sequences take the general
    # path: every axis gives the same tuple, and an axis out of range the same error
    for axis in range(-ndim - 2, ndim + 2):
        try:
            expected = ops._norm_axes((np.int64(axis),), ndim, "f")
        except ops.AxisError as exc:
            with pytest.raises(ops.AxisError, match=re.escape(str(exc))):
                ops._norm_axes(axis, ndim, "f")
        else:
            assert ops._norm_axes(axis, ndim, "f") == expected
            assert expected == ((axis % max(ndim, 1)),)  # (0-d: axis 0 or -1 as axis 0)


def test_axis_sequences_of_any_kind_keep_working():
    x = mge.tensor(_X)
    for axis in ([0, 2], range(0, 3, 2), np.array([0, 2]), (np.int64(0), -1)):
        np.testing.assert_array_equal(F.sum(x, axis=axis).numpy(), _X.sum(axis=(0, 2)))


@pytest.mark.parametrize("log", [False, True])
def test_softmax_of_a_0d_tensor_is_one_of_shape_1_as_upstream(log):
    # upstream 1.13 measured: F.softmax(tensor(2.0)) -> [1.] and F.logsoftmax(tensor(2.0), 0)
    # -> [0.], shape (1,); here both raised AxisError before
    s = mge.tensor(np.float32(2.0))
    y = F.logsoftmax(s, 0) if log else F.softmax(s)
    assert y.shape == (1,)
    np.testing.assert_array_equal(y.numpy(), [0.0 if log else 1.0])
    with pytest.raises(ops.AxisError, match="axis 1 is out of range"):
        F.softmax(s, axis=1)
    # (a nested list is a 2-d input: the default axis is 1, as for a 2-d Tensor)
    np.testing.assert_allclose(F.softmax([[0.0, 0.0], [1.0, 1.0]]).numpy(), np.full((2, 2), 0.5))


# ----- float16 <-> float32 conversions (core.ops.cast: ATen's vectorised loop from CAST_MIN) -----

def _same_values(a, b):
    """Bit for bit, a NaN matching any NaN (ATen's conversion quiets a signalling NaN)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    both_nan = np.isnan(a) & np.isnan(b)
    bits = {2: np.uint16, 4: np.uint32}[a.dtype.itemsize]
    assert ((a.view(bits) == b.view(bits)) | both_nan).all()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # (numpy's)
def test_large_half_casts_take_aten_and_give_numpys_values(monkeypatch):
    from megengine.functional import _aten

    taken, real = [], _aten.half_cast
    monkeypatch.setattr(_aten, "half_cast", lambda a, d: taken.append(real(a, d)) or taken[-1])
    every_half = np.arange(65536, dtype=np.uint16).view(np.float16)  # all of them, NaNs too
    _same_values(ops.cast(every_half, np.float32), every_half.astype(np.float32))
    rng = np.random.default_rng(0)
    singles = rng.integers(0, 2 ** 32, 1 << 18, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([65504, 65519.99, 65520, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, -0.0, np.inf],
                     np.float32)  # largest, the overflow boundary, subnormals, ties to even
    singles = np.concatenate([singles, edges, rng.standard_normal(4096).astype(np.float32)])
    _same_values(ops.cast(singles, np.float16), singles.astype(np.float16))
    # (a matmul backward's operand): a transposed block converts in memory order
    transposed = singles[: 16 * 32 * 64].reshape(16, 32, 64).transpose(2, 0, 1)
    out = ops.cast(transposed, np.float16)
    _same_values(out, transposed.astype(np.float16))
    assert out.strides == transposed.astype(np.float16).strides  # numpy's layout, kept
    assert len(taken) == 3 and all(t is not None for t in taken)
    small = np.ones(ops.CAST_MIN - 1, np.float32)  # below the size: numpy's, no ATen call
    _same_values(ops.cast(small, np.float16), small.astype(np.float16))
    for view in (singles[:8192][::-1], singles[:16384:2]):  # not a contiguous block: numpy's
        _same_values(ops.cast(view, np.float16), view.astype(np.float16))
    assert len(taken) == 5 and taken[-2:] == [None, None]
    for shape, part in (((64, 128), every_half[:1]), ((64, 128), every_half[:64, None]),
                        ((4, 64, 32), every_half[None, :64, None])):
        spread = np.broadcast_to(part, shape)  # a broadcast (a sum's gradient): ATen's copy
        _same_values(ops.cast(spread, np.float32), spread.astype(np.float32))
    assert len(taken) == 8 and all(t is not None for t in taken[-3:])
    with _aten.avoided("cast"):
        _same_values(ops.cast(singles[:8192], np.float16), singles[:8192].astype(np.float16))


# ----- float16 sums, differences and products (ATen's vectorised loops from _aten.HALF_MIN) -----

@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # (numpy's oracle)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_float16_arithmetic_takes_aten_and_gives_numpys_values(monkeypatch):
    # numpy's float16 ufuncs are the oracle: each element in float32, rounded once (IEEE's
    # correctly rounded result); ATen's loops must give the same bits, NaN payloads aside
    from megengine.functional import _aten

    rng = np.random.default_rng(4)
    a, b = (rng.integers(0, 2 ** 16, 1 << 18, dtype=np.uint64).astype(np.uint16).view(np.float16)
            for _ in range(2))  # every kind of value: subnormals, infinities, NaNs, overflow
    normal = rng.standard_normal((64, 256)).astype(np.float16)
    row = rng.standard_normal(256).astype(np.float16)
    cases = [(a, b), (normal, row), (row, normal), (normal.T, normal.T[::-1]),
             (normal, np.float16(0.1) * np.ones((), np.float16))]
    used, real = [], _aten.op
    monkeypatch.setattr(_aten, "op", lambda name: used.append(name) or real(name))
    for x, y in cases:
        tx, ty = mge.tensor(x, device="cpu0"), mge.tensor(y, device="cpu0")
        for got, want in ((tx + ty, x + y), (tx - ty, x - y), (tx * ty, x * y)):
            assert got.dtype == np.float16
            _same_values(got.numpy(), want)
    assert used.count("add") == used.count("sub") == used.count("mul") == len(cases)
    used.clear()
    small = normal[0, :_aten.HALF_MIN // 2 - 1]  # below the size (both operands): numpy's
    ts = mge.tensor(small, device="cpu0")
    _same_values((ts * ts).numpy(), small * small)
    assert used == []
    # the product's gradients (g * the other operand) and gradient sums take the same loops
    wa, wb = mge.Parameter(normal, device="cpu0"), mge.Parameter(row, device="cpu0")
    g = rng.standard_normal((64, 256)).astype(np.float16)
    with GradManager().attach([wa, wb]) as gm:
        gm.backward(wa * wb + wa * wa, mge.tensor(g, device="cpu0"))
    torch_a = torch.tensor(normal, requires_grad=True)
    torch_b = torch.tensor(row, requires_grad=True)
    (torch_a * torch_b + torch_a * torch_a).backward(torch.from_numpy(g))
    _same_values(wa.grad.numpy(), torch_a.grad.numpy())
    assert wb.grad.dtype == np.float16
    np.testing.assert_allclose(wb.grad.numpy(), torch_b.grad.numpy(), rtol=2e-3, atol=2e-3)
    # forward: two products and a sum; backward: four products (two per product) and two sums
    # adding wa's three gradients
    assert used.count("mul") == 6 and used.count("add") == 3


def test_float16_sums_add_in_float32_and_round_once():
    # 4099 values of 1 in float16 (numpy's own float16 sum stops growing at 2048, its float32
    # accumulation converts one value at a time): exactly 4100 after rounding to float16
    ones = np.ones((3, 4099), np.float16)
    np.testing.assert_array_equal(ops.acc_sum(ones, 1), np.full(3, 4100, np.float16))
    assert ops.acc_sum(ones, (0, 1)).dtype == np.float16
    x = np.random.default_rng(5).standard_normal((394, 768)).astype(np.float16)
    want = torch.from_numpy(x).double().sum(0).half().numpy()  # exact sum, rounded once
    got = ops.acc_sum(x, 0, keepdims=True)
    assert got.shape == (1, 768)
    np.testing.assert_allclose(got[0], want, rtol=2 ** -10, atol=2 ** -14)


def test_astype_to_float16_and_its_gradient_match_torch():
    a = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    x = mge.Parameter(a)
    gm = GradManager().attach(x)
    g = np.random.default_rng(2).standard_normal((64, 128)).astype(np.float16)
    with gm:
        y = x.astype("float16")
        gm.backward(y, mge.tensor(g))
    tx = torch.tensor(a, requires_grad=True)
    ty = tx.to(torch.float16)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


# ----- float16 maximum and minimum (computed in float32 from _aten.HALF_MIN values) -----

@pytest.mark.parametrize("fn, pick", [(F.maximum, np.maximum), (F.minimum, np.minimum)])
def test_float16_maximum_minimum_compute_in_float32_with_numpys_values(monkeypatch, fn, pick):
    # numpy's float16 ufunc is the oracle, bit for bit (signed zeros, infinities, NaNs); the
    # gradients are upstream's rule (ties to the first operand) written with numpy's masks
    rng = np.random.default_rng(6)
    a, b = (rng.integers(0, 2 ** 16, 4096, dtype=np.uint64).astype(np.uint16).view(np.float16)
            for _ in range(2))
    a[:64], b[:64] = -0.0, 0.0  # (numpy keeps the first of two equal zeros)
    b[64:128] = a[64:128]  # ties: the first operand takes the gradient
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda x, d: taken.append(np.dtype(d)) or real(x, d))
    g = rng.standard_normal(4096).astype(np.float16)
    for x, y in ((a, b), (a, np.zeros((), np.float16)), (a.reshape(64, 64), b[:64])):
        wa, wb = mge.Parameter(x, device="cpu0"), mge.Parameter(y, device="cpu0")
        with GradManager().attach([wa, wb]) as gm:
            out = fn(wa, wb)
            gm.backward(out, mge.tensor(g.reshape(out.shape), device="cpu0"))
        _same_values(out.numpy(), pick(x, y))
        first = (x >= y) if pick is np.maximum else (x <= y)
        first = np.broadcast_to(first, out.shape)
        # (the second only where strictly beyond: where a NaN meets a number, neither)
        second = np.broadcast_to((y > x) if pick is np.maximum else (y < x), out.shape)
        gx = g.reshape(out.shape) * first
        gy = g.reshape(out.shape) * second
        if y.shape != out.shape:  # a broadcast operand's gradient: summed in float32
            gy = gy.astype(np.float32).reshape(-1, *y.shape).sum(0).astype(np.float16)
        _same_values(wa.grad.numpy(), gx)
        _same_values(wb.grad.numpy(), gy)
        assert taken and taken[-1] == np.float16  # the float32 path ran
        taken.clear()
    small = mge.tensor(a[:100], device="cpu0")  # below the size: numpy's float16 loop
    _same_values(fn(small, small * 0.5).numpy(), pick(a[:100], a[:100] * np.float16(0.5)))
    assert np.dtype(np.float32) not in taken


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # (NaN * 0)
def test_float16_abs_gradient_computes_in_float32_with_numpys_values(monkeypatch):
    # numpy's float16 g * sign(x) is the oracle, bit for bit (signed zeros where x is 0, NaN
    # where x is); below _aten.HALF_MIN values numpy's float16 loop runs
    rng = np.random.default_rng(8)
    x = rng.integers(0, 2 ** 16, 4096, dtype=np.uint64).astype(np.uint16).view(np.float16)
    x[:4] = [0.0, -0.0, np.inf, -np.inf]
    g = rng.standard_normal(4096).astype(np.float16)
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda a, d: taken.append(np.dtype(d)) or real(a, d))
    for n, path in ((4096, [np.float32, np.float32, np.float16]), (1000, [])):
        w = mge.Parameter(x[:n], device="cpu0")
        with GradManager().attach(w) as gm:
            y = F.abs(w)
            gm.backward(y, mge.tensor(g[:n], device="cpu0"))
        _same_values(y.numpy(), np.abs(x[:n]))
        _same_values(w.grad.numpy(), g[:n] * np.sign(x[:n]))
        assert taken == path
        taken.clear()


@pytest.mark.parametrize("op", ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"])
def test_float16_comparisons_compute_in_float32_with_numpys_answers(monkeypatch, op):
    # numpy's float16 comparisons are the oracle (NaNs, signed zeros, infinities included)
    rng = np.random.default_rng(9)
    a, b = (rng.integers(0, 2 ** 16, 4096, dtype=np.uint64).astype(np.uint16).view(np.float16)
            for _ in range(2))
    a[:3], b[:3] = [0.0, -0.0, np.nan], [-0.0, 0.0, np.nan]
    b[3:100] = a[3:100]
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda x, d: taken.append(np.dtype(d)) or real(x, d))
    for x, y in ((a, b), (a.reshape(64, 64), b[:64]), (a, np.float16(0)), (a[:1000], b[:1000])):
        got = getattr(mge.tensor(x, device="cpu0"), op)(
            y if np.ndim(y) == 0 else mge.tensor(y, device="cpu0"))
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got.numpy(), getattr(x, op)(y))
        assert taken == ([np.float32] * 2 if x.size >= 1024 else [])  # the float32 path
        taken.clear()


@pytest.mark.parametrize("name", ["div", "square", "cube", "sqrt", "pow1.5"])
def test_float16_division_and_powers_compute_in_float32_rounded_once(monkeypatch, name):
    # quotients, squares and square roots: numpy's float16 values bit for bit (each computed in
    # float32 and rounded once is IEEE's float16 result); other powers and every gradient
    # within a float16 step of the exact value (torch in float64 on the same float16 values;
    # numpy's float16 passes rounded each step of a gradient)
    rng = np.random.default_rng(10)
    a = rng.standard_normal((64, 64)).astype(np.float16)
    b = (rng.uniform(0.5, 2, (64, 64)) * rng.choice([-1, 1], (64, 64))).astype(np.float16)
    g = rng.standard_normal((64, 64)).astype(np.float16)
    if name != "div":
        a = np.abs(a)
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda x, d: taken.append(np.dtype(d)) or real(x, d))
    wa, wb = mge.Parameter(a, device="cpu0"), mge.Parameter(b, device="cpu0")
    ta, tb = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (a, b))
    exponent = {"square": 2, "cube": 3, "sqrt": 0.5, "pow1.5": 1.5}.get(name)
    with GradManager().attach([wa, wb]) as gm:
        y = wa / wb if exponent is None else wa ** exponent
        gm.backward(y, mge.tensor(g, device="cpu0"))
    ty = ta / tb if exponent is None else ta ** exponent
    ty.backward(torch.tensor(g, dtype=torch.float64))
    assert np.dtype(np.float32) in taken  # the float32 path ran
    want = {"div": a / b, "square": np.square(a), "sqrt": np.sqrt(a)}.get(name)
    if want is not None:
        _same_values(y.numpy(), want)
    within_a_float16_step(y.numpy(), ty.detach().numpy())
    within_a_float16_step(wa.grad.numpy(), ta.grad.numpy())
    if exponent is None:
        within_a_float16_step(wb.grad.numpy(), tb.grad.numpy())


def _float16_div_pow_cases(a, b, g):
    """name -> (the function, its gradients computed by hand in float32 from the float16
    values and rounded once: what forward's float32 copies of the operands gave backward)."""
    a32, b32, g32 = a.astype(np.float32), b.astype(np.float32), g.astype(np.float32)
    f16 = lambda v: np.asarray(v, np.float32).astype(np.float16)

    def quotient(b32):
        ga = g32 / b32
        return f16(ga), f16(-ga * a32 / b32)

    return {
        "x / y": (lambda x, y: x / y, quotient(b32)),
        "x / y[0]": (lambda x, y: x / y[0], quotient(b32[0])),
        "x / 3": (lambda x, y: x / 3, (quotient(np.float32(3))[0], None)),
        "x ** 2": (lambda x, y: x ** 2, (f16(g32 * np.float32(2) * a32), None)),
        "x ** 3": (lambda x, y: x ** 3, (f16(g32 * (np.float32(3) * np.square(a32))), None)),
        "x ** y": (lambda x, y: x ** y, (f16(g32 * (b32 * a32 ** (b32 - 1))),
                                         f16(g32 * (a32 ** b32 * np.log(a32))))),
    }


@pytest.mark.parametrize("name", ["x / y", "x / y[0]", "x / 3", "x ** 2", "x ** 3", "x ** y"])
def test_float16_division_and_powers_keep_float16_operands_for_backward(name):
    # a recorded float16 division or power holds its float16 operands from forward to
    # backward, not float32 copies of them (2 bytes more per value each), and the float32
    # power only for x ** y (the exponent's gradient reads it); backward converts them again,
    # so the gradients are the float32 formulas' bit for bit (and within a float16 step of
    # torch's float64 ones on the same values)
    rng = np.random.default_rng(21)
    a = rng.uniform(0.5, 2, (64, 128)).astype(np.float16)
    b = (rng.uniform(0.5, 2, (64, 128)) * rng.choice([-1, 1], (64, 128))).astype(np.float16)
    g = rng.standard_normal((64, 128)).astype(np.float16)
    fn, (want_a, want_b) = _float16_div_pow_cases(a, b, g)[name]
    if name == "x / y[0]":  # (a broadcast divisor, its gradient summed over the rows)
        want_b = (-g.astype(np.float32) * a / b[0].astype(np.float32) ** 2).sum(0)
    wa, wb = mge.Parameter(a, device="cpu0"), mge.Parameter(b, device="cpu0")
    with GradManager().attach([wa, wb]) as gm:
        y = fn(wa, wb)
        op = y._node[0].op
        assert op.half_dtypes is not None  # (the float32 path ran)
        held = [v for v in vars(op).values() if isinstance(v, np.ndarray) and v.size > 1
                and v is not wa._data and v is not wb._data]
        if name == "x ** y":
            assert [v.dtype for v in held] == [np.float32]  # (the power; half the output's)
        elif name == "x / y[0]":
            assert [v.dtype for v in held] == [np.float16]  # (the row, an operand itself)
        else:
            assert held == []
        gm.backward(y, mge.tensor(g, device="cpu0"))
    _same_values(wa.grad.numpy(), want_a)
    if want_b is None:
        assert wb.grad is None
    elif name == "x / y[0]":  # (summed in float32, rounded once: within a float16 step)
        within_a_float16_step(wb.grad.numpy()[0], want_b)
        assert not wb.grad.numpy()[1:].any()
    else:
        _same_values(wb.grad.numpy(), want_b)
    ta, tb = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (a, b))
    ty = fn(ta, tb)
    ty.backward(torch.tensor(g, dtype=torch.float64))
    within_a_float16_step(y.numpy(), ty.detach().numpy())
    for w, t in ((wa, ta), (wb, tb)):
        if t.grad is not None:
            within_a_float16_step(w.grad.numpy(), t.grad.numpy())


@pytest.mark.parametrize("mode", ["max", "min"])
def test_float16_max_min_gradients_find_ties_in_float32(monkeypatch, mode):
    # upstream's rule (every element equal to the result takes all of g), with the ties found
    # by numpy's float16 comparison as the oracle; bit for bit
    rng = np.random.default_rng(19)
    x = rng.integers(-3, 4, (64, 64)).astype(np.float16)  # (many ties per row)
    x[3, :] = -0.0
    x[3, 5] = 0.0  # (equal zeros of two signs: both tied)
    g = rng.standard_normal(64).astype(np.float16)
    taken, real = [], ops.cast
    w = mge.Parameter(x, device="cpu0")
    with GradManager().attach(w) as gm:
        y = getattr(F, mode)(w, axis=1)
        monkeypatch.setattr(ops, "cast", lambda a, d: taken.append(a.shape) or real(a, d))
        gm.backward(y, mge.tensor(g, device="cpu0"))
    tied = x == getattr(np, mode)(x, axis=1, keepdims=True)
    _same_values(w.grad.numpy(), (g[:, None].astype(np.float32) * tied).astype(np.float16))
    assert (64, 64) in taken[:2] and (64, 1) in taken[:2]  # x and the result in float32


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # (numpy's)
@pytest.mark.parametrize("dtype", ["bool", "uint8", "int16", "int32", "int64"])
def test_bools_and_integers_to_float16_convert_by_way_of_float32(monkeypatch, dtype):
    # numpy's own conversion is the oracle, bit for bit (integers past float16's range: inf)
    from megengine.functional import _aten

    rng = np.random.default_rng(20)
    a = rng.integers(0, 2, 8192) if dtype == "bool" else rng.integers(
        -70000 if dtype != "uint8" else 0, 70000, 8192)
    a = a.astype(dtype) if dtype in ("bool", "int32", "int64") else \
        rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, 8192, endpoint=True).astype(dtype)
    taken, real = [], _aten.half_cast
    monkeypatch.setattr(_aten, "half_cast", lambda x, d: taken.append(x.dtype) or real(x, d))
    got = mge.tensor(a, dtype=dtype, device="cpu0").astype("float16").numpy()
    _same_values(got, a.astype(np.float16))
    assert taken == [np.float32]  # ATen's conversion from float32 ran
