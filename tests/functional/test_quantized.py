"""Tests of megengine/functional/quantized.py: quantized convolution + bias + activation (plain,
per-sample weights, transposed) against torch's convolution of the same integers in float64
(exact) and upstream's requantization; the quantized element-wise modes; the errors."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.core.tensor import dtype
from megengine.functional.elemwise import _elemwise_multi_type

from devices import host_default_device  # noqa: F401  (the fixture below)

# quantized tensors live on CPU devices only: on a CUDA machine these tests run on cpu0
pytestmark = pytest.mark.usefixtures("host_default_device")

S_IN, S_W, S_OUT = np.float32(0.05), np.float32(0.02), np.float32(0.1)
S_ACC = float(S_IN * S_W)


def _half_away(v):
    return np.trunc(v + np.copysign(0.5, v))


def _ints(rng, shape, lo=-128, hi=128):
    return rng.randint(lo, hi, shape)


def _requantize(acc, out_scale, relu=False, qmin=-128, qmax=127, bias=None):
    """Upstream's ConvBias on qint8 (measured): the accumulator's float32 value acc * acc scale
    plus the bias's, times float32 1 / output scale, rounded half away from zero, saturated."""
    v = acc.astype(np.float32) * np.float32(S_ACC)
    if bias is not None:
        v = v + bias.reshape(1, -1, 1, 1).astype(np.float32) * np.float32(S_ACC)
    if relu:
        v = np.maximum(v, 0)
    return np.clip(_half_away(v * (np.float32(1) / np.float32(out_scale))), qmin, qmax)


def _torch_acc(x, w, transposed=False, **kw):
    fn = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    acc = fn(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64), **kw)
    return acc.numpy().round().astype(np.int64)


@pytest.mark.parametrize("mode", ["identity", "relu"])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, dilation=2),
                                dict(groups=2, padding=(1, 0))])
def test_conv_bias_activation_is_the_exact_integer_convolution(mode, kw):
    rng = np.random.RandomState(0)
    groups = kw.get("groups", 1)
    x, w = _ints(rng, (2, 4, 7, 6)), _ints(rng, (6, 4 // groups, 3, 3))
    b = _ints(rng, (1, 6, 1, 1), -5000, 5000)
    out = F.quantized.conv_bias_activation(
        mge.tensor(x.astype(np.int8), dtype=dtype.qint8(S_IN)),
        mge.Parameter(w.astype(np.int8), dtype=dtype.qint8(S_W)),
        mge.Parameter(b.astype(np.int32), dtype=dtype.qint32(S_ACC)),
        dtype=dtype.qint8(S_OUT), nonlinear_mode=mode, **kw)
    assert dtype.is_dtype_equal(out.dtype, dtype.qint8(S_OUT))
    expect = _requantize(_torch_acc(x, w, **kw), S_OUT, relu=mode == "relu", bias=b)
    np.testing.assert_array_equal(out.numpy(), expect)


def test_without_an_output_dtype_the_qint32_accumulator_comes_back():
    rng = np.random.RandomState(1)
    x, w = _ints(rng, (1, 3, 5, 5)), _ints(rng, (2, 3, 3, 3))
    out = F.quantized.conv_bias_activation(
        mge.tensor(x.astype(np.int8), dtype=dtype.qint8(S_IN)),
        mge.tensor(w.astype(np.int8), dtype=dtype.qint8(S_W)), None)
    assert dtype.get_scale(out.dtype) == pytest.approx(S_ACC) and out.dtype == np.int32
    np.testing.assert_array_equal(out.numpy(), _torch_acc(x, w))


def test_zero_points_of_asymmetric_inputs_are_subtracted_before_the_products():
    rng = np.random.RandomState(2)
    x, w = _ints(rng, (1, 2, 6, 6), 0, 256), _ints(rng, (3, 2, 3, 3))
    out = F.quantized.conv_bias_activation(
        mge.tensor(x.astype(np.uint8), dtype=dtype.quint8(S_IN, 120)),
        mge.tensor(w.astype(np.int8), dtype=dtype.qint8(S_W)), None,
        dtype=dtype.quint8(S_OUT, 10), padding=1)
    # zero padding is a real 0, i.e. the zero point: pad after subtracting it
    acc = _torch_acc(x - 120, w, padding=1)
    np.testing.assert_array_equal(out.numpy(), _requantize(acc, S_OUT, qmin=-10, qmax=245) + 10)


def test_float_inputs_compute_the_same_thing_in_float():
    rng = np.random.RandomState(3)
    x, w, b = (rng.randn(2, 3, 6, 6).astype(np.float32), rng.randn(4, 3, 3, 3).astype(np.float32),
               rng.randn(1, 4, 1, 1).astype(np.float32))
    out = F.quantized.conv_bias_activation(mge.tensor(x), mge.tensor(w), mge.tensor(b),
                                           nonlinear_mode="relu", padding=1)
    expect = torch.relu(torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w),
                                                   torch.tensor(b.ravel()), padding=1))
    np.testing.assert_allclose(out.numpy(), expect.numpy(), rtol=1e-5, atol=1e-5)


def test_batch_conv_bias_activation_uses_one_weight_per_sample():
    rng = np.random.RandomState(4)
    x, w = _ints(rng, (3, 2, 5, 5)), _ints(rng, (3, 4, 2, 2, 2))
    b = _ints(rng, (1, 4, 1, 1), -3000, 3000)
    out = F.quantized.batch_conv_bias_activation(
        mge.tensor(x.astype(np.int8), dtype=dtype.qint8(S_IN)),
        mge.tensor(w.astype(np.int8), dtype=dtype.qint8(S_W)),
        mge.tensor(b.astype(np.int32), dtype=dtype.qint32(S_ACC)), dtype=dtype.qint8(S_OUT),
        stride=1, padding=1)
    for n in range(3):
        expect = _requantize(_torch_acc(x[n:n + 1], w[n], padding=1), S_OUT, bias=b)
        np.testing.assert_array_equal(out.numpy()[n:n + 1], expect)


def test_traced_batch_conv_bias_activation_runs_at_other_batch_sizes():
    # one op, as upstream's BatchConvBias: earlier versions of this fork traced it as reshapes
    # of the traced batch size, and the dumped program refused others (ShapeGuardError)
    import io

    from megengine.jit import trace
    from megengine.jit.dump import load

    def f(x, w, b):
        return F.quantized.batch_conv_bias_activation(
            x.astype(dtype.qint8(S_IN)), w.astype(dtype.qint8(S_W)),
            b.astype(dtype.qint32(S_ACC)), dtype=dtype.qint8(S_OUT), padding=1)

    rng = np.random.RandomState(7)

    def args(n):
        return [rng.randn(n, 2, 4, 4).astype(np.float32) * 0.5,
                rng.randn(n, 3, 2, 3, 3).astype(np.float32) * 0.05,
                rng.randn(1, 3, 1, 1).astype(np.float32) * 0.01]

    traced = trace(f, symbolic=True, capture_as_const=True)
    traced(*[mge.tensor(a) for a in args(2)])
    buf = io.BytesIO()
    traced.dump(buf, arg_names=["x", "w", "b"])
    buf.seek(0)
    prog = load(buf)
    for n in (2, 3, 1):
        a = args(n)
        got = list(prog.run(dict(zip("xwb", a))).values())[0].numpy()
        np.testing.assert_array_equal(got, f(*[mge.tensor(v) for v in a]).numpy())
        assert got.shape == (n, 3, 4, 4)


def test_quantized_conv_transpose2d():
    rng = np.random.RandomState(5)
    x, w = _ints(rng, (2, 4, 4, 4)), _ints(rng, (4, 3, 3, 3))
    b = _ints(rng, (1, 3, 1, 1), -3000, 3000)
    out = F.quantized.conv_transpose2d(
        mge.tensor(x.astype(np.int8), dtype=dtype.qint8(S_IN)),
        mge.tensor(w.astype(np.int8), dtype=dtype.qint8(S_W)),
        mge.tensor(b.astype(np.int32), dtype=dtype.qint32(S_ACC)), dtype=dtype.qint8(S_OUT),
        stride=2, padding=1, output_padding=1)
    acc = _torch_acc(x, w, transposed=True, stride=2, padding=1, output_padding=1)
    np.testing.assert_array_equal(out.numpy(), _requantize(acc, S_OUT, bias=b))


def test_conv_bias_takes_scales_as_upstreams_convbias_checks_them():
    # measured on upstream 1.13: its ConvBias takes a qint32 output within 2 float32 epsilons
    # of the accumulator's scale as the accumulator (this fork refused all but the float32
    # product, so dtype=qint32(sx * sw) of float64 scales failed) and a qint32 bias within
    # 1e-6 (absolute) of it: its integers added as they are to an integer result, its own
    # values to a requantized one
    sx, sw = 0.01, 0.001
    acc = np.float32(sx) * np.float32(sw)
    x = mge.tensor(np.array([[[[10, -20], [5, 30]]]], np.int8), dtype=dtype.qint8(sx))
    w = mge.tensor(np.full((1, 1, 1, 1), 7, np.int8), dtype=dtype.qint8(sw))
    conv = F.quantized.conv_bias_activation

    def bias(scale):
        return mge.tensor(np.full((1, 1, 1, 1), 1000, np.int32), dtype=dtype.qint32(scale))

    two_steps = np.nextafter(np.nextafter(acc, np.float32(1)), np.float32(1))
    for out_scale in (sx * sw, float(two_steps)):
        out = conv(x, w, bias(float(acc)), dtype=dtype.qint32(out_scale))
        np.testing.assert_array_equal(out.numpy().ravel(), [1070, 860, 1035, 1210])
    with pytest.raises(TypeError, match="qint32 output must have the accumulator's scale"):
        conv(x, w, bias(float(acc)), dtype=dtype.qint32(float(np.nextafter(two_steps, 1))))
    off = float(acc) + 9e-7  # 9% off the accumulator's scale, within 1e-6
    np.testing.assert_array_equal(conv(x, w, bias(off)).numpy().ravel(), [1070, 860, 1035, 1210])
    # (70 * 1e-5 + 1000 * 1.09e-5) / 1e-3 = 11.6 -> 12, ...
    np.testing.assert_array_equal(conv(x, w, bias(off), dtype=dtype.qint8(1e-3)).numpy().ravel(),
                                  [12, 9, 11, 13])
    with pytest.raises(TypeError, match="bias must be qint32 with scale"):
        conv(x, w, bias(float(acc) + 1.1e-6), dtype=dtype.qint8(1e-3))
    # F.linear keeps its own rule: a bias scale off by rounding only
    with pytest.raises(TypeError, match="linear: the bias must be qint32 with scale"):
        F.linear(mge.tensor(np.ones((1, 2), np.int8), dtype=dtype.qint8(sx)),
                 mge.tensor(np.ones((1, 2), np.int8), dtype=dtype.qint8(sw)),
                 mge.tensor(np.array([5], np.int32), dtype=dtype.qint32(off)))


def test_quantized_conv_errors_name_the_fix():
    x = mge.tensor(np.ones((1, 1, 3, 3), np.int8), dtype=dtype.qint8(S_IN))
    w = mge.tensor(np.ones((1, 1, 1, 1), np.int8), dtype=dtype.qint8(S_W))
    bad_bias = mge.tensor(np.ones((1, 1, 1, 1), np.int32), dtype=dtype.qint32(0.5))
    with pytest.raises(TypeError, match=r"bias must be qint32 with scale.*astype"):
        F.quantized.conv_bias_activation(x, w, bad_bias, dtype=dtype.qint8(S_OUT))
    with pytest.raises(TypeError, match="both be quantized or both float"):
        F.quantized.conv_bias_activation(x, mge.tensor(np.ones((1, 1, 1, 1), np.float32)), None)
    with pytest.raises(ValueError, match="nonlinear_mode must be one of"):
        F.quantized.conv_bias_activation(x, w, None, nonlinear_mode="tanh")
    # upstream 1.13 measured: its ConvBias refuses a qint32 output of another scale
    with pytest.raises(TypeError, match=r"qint32 output must have the accumulator's scale"):
        F.quantized.conv_bias_activation(x, w, None, dtype=dtype.qint32(S_OUT))
    # the geometry is checked as F.conv2d's, naming the function (torch's own words did not)
    for kw, message in ((dict(padding=-1), "padding .* must be non-negative"),
                        (dict(dilation=0), "dilation must be a positive int"),
                        (dict(stride=(1, 0)), "stride must be a positive int, got 0 along W"),
                        (dict(groups=0), "groups must be positive")):
        with pytest.raises(ValueError, match="conv_bias_activation: " + message):
            F.quantized.conv_bias_activation(x, w, None, dtype=dtype.qint8(S_OUT), **kw)
    with pytest.raises(TypeError, match="conv_transpose2d: groups must be an int"):
        F.quantized.conv_transpose2d(x, w, dtype=dtype.qint8(S_OUT), groups="2")


def _q(ints, qdt):
    return mge.tensor(np.array(ints).astype(qdt), dtype=qdt)


def test_conv_bias_sums_the_values_in_float32_as_upstreams_kernel():
    # upstream 1.13 measured: the accumulator's value (acc * 0.03 in float32) plus the bias's,
    # times 1 / output scale; the integer sum acc + bias gave -122 and -121 for the first two
    x = _q(np.arange(-20, -12).reshape(1, 1, 1, 8), dtype.qint8(0.1))
    w = _q(np.ones((2, 1, 1, 1)), dtype.qint8(0.3))
    s = float(np.float32(0.1) * np.float32(0.3))
    b = _q(np.array([-223, 101]).reshape(1, 2, 1, 1), dtype.qint32(s))
    out = F.quantized.conv_bias_activation(x, w, b, dtype=dtype.qint8(2 * s))
    np.testing.assert_array_equal(out.numpy()[0, :, 0], [[-121, -121, -120, -120, -120, -119,
                                                          -119, -118],
                                                         [41, 41, 42, 42, 43, 43, 44, 44]])


def test_conv_bias_rounds_blocks_of_16_of_each_plane_as_upstreams_vector_code():
    # upstream 1.13 measured: values of 0.49999997 round up to 1 in the whole blocks of 16 of
    # each output plane (trunc(v + 0.5) in float32), to 0 after them
    half = float(np.nextafter(np.float32(0.5), np.float32(0)))
    x = _q(np.ones((2, 1, 5, 5)), dtype.qint8(half))
    w = _q(np.ones((2, 1, 1, 1)), dtype.qint8(1.0))
    out = F.quantized.conv_bias_activation(x, w, None, dtype=dtype.qint8(1.0)).numpy()
    np.testing.assert_array_equal(out.reshape(4, 25), [[1] * 16 + [0] * 9] * 4)


@pytest.mark.parametrize("mode, fn", [
    ("QADD", lambda a, b: a + b), ("QMUL", lambda a, b: a * b),
    ("QFUSE_ADD_RELU", lambda a, b: np.maximum(a + b, 0)), ("QSUB", lambda a, b: a - b),
    ("QABS", lambda a, b: np.abs(a)), ("QRELU", lambda a, b: np.maximum(a, 0))])
def test_quantized_elemwise_modes_dequantize_compute_and_requantize(mode, fn):
    rng = np.random.RandomState(6)
    a, b = _ints(rng, (3, 4)), _ints(rng, (3, 4))
    qa = mge.tensor(a.astype(np.int8), dtype=dtype.qint8(0.03))
    qb = mge.tensor(b.astype(np.int8), dtype=dtype.qint8(0.07))
    args = (qa,) if mode in ("QABS", "QRELU") else (qa, qb)
    out = _elemwise_multi_type(*args, mode=mode, dtype=dtype.qint8(0.2))
    real = fn(a.astype(np.float32) * np.float32(0.03), b.astype(np.float32) * np.float32(0.07))
    # the result times the reciprocal of the output scale, as upstream's kernels (measured)
    expect = np.clip(_half_away(real.astype(np.float32) * (np.float32(1) / np.float32(0.2))),
                     -128, 127)
    assert dtype.get_scale(out.dtype) == float(np.float32(0.2))
    np.testing.assert_array_equal(out.numpy(), expect)


def test_quantized_elemwise_modes_round_as_upstreams_kernels():
    # upstream 1.13 measured: 70 at qint8(0.03) is 2.1, 10.5 steps of 0.2: QRELU and QABS
    # multiply by 1 / 0.2 (11), QNEGATE divides by 0.2 (-10); QADD multiplies (dividing gave
    # -18, -36, 28)
    a = _q([70, -70, 70], dtype.qint8(0.03))
    out = [_elemwise_multi_type(a, mode=m, dtype=dtype.qint8(0.2)).numpy().tolist()
           for m in ("QRELU", "QNEGATE", "QABS")]
    assert out == [[11, 0, 11], [-10, 10, -10], [11, 11, 11]]
    x, y = _q([-61, 49, 19], dtype.qint8(0.1)), _q([24, -122, 38], dtype.qint8(0.1))
    np.testing.assert_array_equal(
        _elemwise_multi_type(x, y, mode="QADD", dtype=dtype.qint8(0.2)).numpy(), [-19, -37, 29])
    # QTRUE_DIV: 1.8 / 0.8 is 7.5 steps of 0.3; qint8 multiplies by 1 / 0.3 (8), quint8
    # divides by 0.3 (7 from the zero point 128)
    div = [_elemwise_multi_type(_q(a, qa), _q(b, qb), mode="QTRUE_DIV", dtype=qo).numpy()
           .tolist() for a, b, qa, qb, qo in [
               ([9, 11], [8, 8], dtype.qint8(0.2), dtype.qint8(0.1), dtype.qint8(0.3)),
               ([137, 139], [136, 136], dtype.quint8(0.2, 128), dtype.quint8(0.1, 128),
                dtype.quint8(0.3, 128))]]
    assert div == [[8, 9], [135, 137]]
    # h_swish: upstream's vector code (whole blocks of 64) multiplies by float32 1/6, its
    # scalar code divides by 6: 6.29 (17 at 0.37) comes out as 8.5 steps of 0.74, or 8.4999...
    h = _elemwise_multi_type(_q(np.full(65, 17), dtype.qint8(0.37)), mode="QH_SWISH",
                             dtype=dtype.qint8(0.74))
    np.testing.assert_array_equal(h.numpy(), [9] * 64 + [8])


def test_quantized_elemwise_errors():
    q = mge.tensor(np.ones(2, np.int8), dtype=dtype.qint8(0.1))
    with pytest.raises(ValueError, match="only the quantized modes"):
        _elemwise_multi_type(q, q, mode="ADD", dtype=dtype.qint8(0.1))
    with pytest.raises(TypeError, match="output's quantized dtype"):
        _elemwise_multi_type(q, q, mode="QADD", dtype="float32")
    with pytest.raises(TypeError, match="inputs must be quantized"):
        _elemwise_multi_type(q, mge.tensor([1.0, 2.0]), mode="QADD", dtype=dtype.qint8(0.1))


def test_pooling_a_quantized_tensor_keeps_its_dtype_and_rounds_the_mean():
    rng = np.random.RandomState(7)
    ints = _ints(rng, (2, 3, 6, 6))
    q = mge.tensor(ints.astype(np.int8), dtype=dtype.qint8(0.1))
    t = torch.tensor(ints, dtype=torch.float64)
    mx = F.max_pool2d(q, 3, 2, 1)
    assert dtype.is_dtype_equal(mx.dtype, q.dtype)
    np.testing.assert_array_equal(mx.numpy(), torch.nn.functional.max_pool2d(t, 3, 2, 1))
    avg = F.avg_pool2d(q, 2)
    assert dtype.is_dtype_equal(avg.dtype, q.dtype)
    np.testing.assert_array_equal(avg.numpy(), _half_away(torch.nn.functional.avg_pool2d(t, 2)
                                                          .numpy()))


def test_average_pooling_of_quint8_rounds_the_stored_mean():
    # upstream 1.13 measured: with zero point 128 the window (127, 126, 127, 126) averages to
    # the stored 126.5 -> 127 (its distance to the zero point, -1.5, would round to 126);
    # padding is the real 0 (the zero point) in "average" mode, left out when excluded
    u = mge.tensor(np.array([[127, 126, 126, 130], [127, 126, 125, 131]], np.uint8)
                   .reshape(1, 1, 2, 4), dtype=dtype.quint8(0.1, 128))
    out = F.avg_pool2d(u, 2)
    assert dtype.is_dtype_equal(out.dtype, u.dtype)
    assert out.numpy().tolist() == [[[[127, 128]]]]
    assert F.avg_pool2d(u, 2, 2, 1, mode="average").numpy().tolist() == [
        [[[128, 127, 129], [128, 127, 129]]]]
    assert F.avg_pool2d(u, 2, 2, 1, mode="average_count_exclude_padding").numpy().tolist() == [
        [[[127, 126, 130], [127, 126, 131]]]]


def test_plain_conv_linear_and_matmul_of_quantized_tensors_give_the_qint32_accumulator():
    rng = np.random.RandomState(8)
    x, w = _ints(rng, (2, 3, 5, 5)), _ints(rng, (4, 3, 3, 3))
    qx = mge.tensor(x.astype(np.int8), dtype=dtype.qint8(S_IN))
    qw = mge.tensor(w.astype(np.int8), dtype=dtype.qint8(S_W))
    out = F.conv2d(qx, qw, padding=1)
    assert dtype.is_dtype_equal(out.dtype, dtype.qint32(S_ACC))
    np.testing.assert_array_equal(out.numpy(), _torch_acc(x, w, padding=1))
    a, b = _ints(rng, (2, 3, 6)), _ints(rng, (5, 6))
    qa = mge.tensor(a.astype(np.int8), dtype=dtype.qint8(S_IN))
    qb = mge.tensor(b.astype(np.int8), dtype=dtype.qint8(S_W))
    bias = _ints(rng, (5,), -999, 999)
    lin = F.linear(qa, qb, mge.tensor(bias.astype(np.int32), dtype=dtype.qint32(S_ACC)))
    assert dtype.is_dtype_equal(lin.dtype, dtype.qint32(S_ACC))
    np.testing.assert_array_equal(lin.numpy(), a @ b.T + bias)
    mm = F.matmul(qa, qb, transpose_b=True)
    np.testing.assert_array_equal(mm.numpy(), a @ b.T)
    with pytest.raises(TypeError, match="bias must be qint32"):
        F.linear(qa, qb, mge.tensor(bias.astype(np.float32)))
    with pytest.raises(TypeError, match="both must be quantized"):
        F.matmul(qa, mge.tensor(b.T.astype(np.float32)))
    with pytest.raises(TypeError, match="2-d convolutions"):
        F.conv1d(mge.tensor(np.ones((1, 1, 4), np.int8), dtype=dtype.qint8(1.0)),
                 mge.tensor(np.ones((1, 1, 2), np.int8), dtype=dtype.qint8(1.0)))


def test_quantized_matmul_is_upstreams_matrixmul():
    # upstream's MatrixMul: operands of one kind (qint8, quint8 or quint4), the zero points
    # subtracted, the int32 accumulator of scale a scale * b scale (float32 product)
    rng = np.random.RandomState(9)
    a, b = _ints(rng, (3, 4, 6)), _ints(rng, (3, 5, 4))
    qa = mge.tensor((a + 128).astype(np.uint8), dtype=dtype.quint8(S_IN, 128))
    qb = mge.tensor((b + 128).astype(np.uint8), dtype=dtype.quint8(S_W, 128))
    out = F.matmul(qa, qb, transpose_a=True, transpose_b=True)
    assert dtype.is_dtype_equal(out.dtype, dtype.qint32(S_ACC))
    np.testing.assert_array_equal(out.numpy(), a.transpose(0, 2, 1) @ b.transpose(0, 2, 1))
    q8 = mge.tensor(a[0].astype(np.int8), dtype=dtype.qint8(S_IN))
    with pytest.raises(TypeError, match="both qint8, both quint8 or both quint4"):
        F.matmul(q8, qb[0])
    with pytest.raises(RuntimeError, match="both qint8"):  # (upstream's MatrixMul asserts)
        F.matmul(q8, qb[0])
    q4 = mge.tensor(np.ones((2, 2), np.int8), dtype=dtype.qint4(1.0))
    with pytest.raises(TypeError, match="got qint4"):
        F.matmul(q4, q4)
    with pytest.raises(ValueError, match="compute_mode"):
        F.matmul(q8, q8, transpose_b=True, compute_mode="float32")


def test_quantized_dot_of_vectors_is_a_0d_qint32_accumulator():
    # 1-d by 1-d: the accumulator is one number, still qint32 of scale a scale * b scale (the
    # scale was dropped: a plain int32 whose real value read as the raw integer)
    rng = np.random.RandomState(11)
    a, b = _ints(rng, (6,)), _ints(rng, (6,))
    qa = mge.tensor(a.astype(np.int8), dtype=dtype.qint8(S_IN))
    qb = mge.tensor(b.astype(np.int8), dtype=dtype.qint8(S_W))
    out = F.matmul(qa, qb)
    assert out.shape == () and dtype.is_dtype_equal(out.dtype, dtype.qint32(S_ACC))
    np.testing.assert_array_equal(out.numpy(), a @ b)
    np.testing.assert_allclose(out.astype("float32").item(), (a @ b) * S_ACC, rtol=1e-6)


def test_quantized_linear_adds_a_bias_of_the_accumulators_scale_as_integers():
    # a bias scale computed in float64 (qint32(sx * sw), upstream's module) differs from the
    # float32 product by rounding only: the same integers are added
    rng = np.random.RandomState(10)
    x, w, b = _ints(rng, (4, 9)), _ints(rng, (3, 9)), _ints(rng, (3,), -10 ** 7, 10 ** 7)
    qx = mge.tensor(x.astype(np.int8), dtype=dtype.qint8(0.05))
    qw = mge.tensor(w.astype(np.int8), dtype=dtype.qint8(0.02))
    bias = mge.tensor(b.astype(np.int32), dtype=dtype.qint32(0.05 * 0.02))
    out = F.linear(qx, qw, bias)
    assert dtype.is_dtype_equal(out.dtype, dtype.qint32(float(np.float32(0.05)
                                                               * np.float32(0.02))))
    np.testing.assert_array_equal(out.numpy(), x @ w.T + b)
    with pytest.raises(TypeError, match="bias must be qint32 with scale"):
        F.linear(qx, qw, mge.tensor(b.astype(np.int32), dtype=dtype.qint32(0.002)))


@pytest.mark.parametrize("qdtype", [dtype.qint8(0.25), dtype.quint8(0.25, 128)])
def test_relu_of_a_quantized_tensor_clamps_at_the_real_zero(qdtype):
    # quint8 stores the real 0 as its zero point: relu must keep values >= zero_point, not >= 0
    x = np.array([-2.0, -0.25, 0.0, 0.5, 3.0], np.float32)
    q = mge.tensor(x).astype(qdtype)
    y = F.relu(q)
    assert dtype.is_dtype_equal(y.dtype, qdtype)
    np.testing.assert_array_equal(y.astype("float32").numpy(), np.maximum(x, 0))


def test_resize_of_a_quantized_image_keeps_its_dtype():
    # upstream 1.13 measured: Resize keeps a quantized dtype (qint8, quint8 with its zero point)
    # and nearest sampling copies the stored integers; earlier versions of this fork gave the
    # float32 values
    q = mge.tensor(np.array([[1, -2], [3, 127]], np.int8).reshape(1, 1, 2, 2),
                   dtype=dtype.qint8(0.1))
    y = F.vision.interpolate(q, scale_factor=2, mode="nearest")
    assert dtype.is_dtype_equal(y.dtype, q.dtype)
    assert y.numpy().tolist() == [[[[1, 1, -2, -2], [1, 1, -2, -2], [3, 3, 127, 127],
                                    [3, 3, 127, 127]]]]
    u = mge.tensor(np.array([[1, 200], [3, 127]], np.uint8).reshape(1, 1, 2, 2),
                   dtype=dtype.quint8(0.1, 100))
    y = F.vision.interpolate(u, size=(3, 2), mode="nearest")
    assert dtype.is_dtype_equal(y.dtype, u.dtype)
    assert y.numpy().tolist() == [[[[1, 200], [1, 200], [3, 127]]]]
    # bilinear: the blended values quantized again (upstream 1.13 measured, first row)
    q = mge.tensor(np.array([1, -2, 3, 127, 5, 6, 7, 8], np.int8).reshape(1, 1, 2, 4),
                   dtype=dtype.qint8(0.1))
    y = F.nn.interpolate(q, scale_factor=2)
    assert dtype.is_dtype_equal(y.dtype, q.dtype)
    assert y.numpy()[0, 0, 0].tolist() == [1, 0, -1, -1, 2, 34, 96, 127]
    u = mge.tensor(np.array([1, 200, 3, 127, 5, 6, 7, 8], np.uint8).reshape(1, 1, 2, 4),
                   dtype=dtype.quint8(0.1, 100))
    assert F.nn.interpolate(u, scale_factor=2).numpy()[0, 0, 0].tolist() == [
        1, 51, 150, 151, 52, 34, 96, 127]


@pytest.mark.parametrize("qdt", [dtype.qint32(0.5), dtype.qint4(0.5), dtype.quint4(0.5, 3)])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_of_a_qint32_or_4_bit_image_is_refused(qdt, mode):
    # upstream 1.13 measured: its Resize raises for QuantizedS32 ("Unsupported input DType in
    # Resize") and for 4-bit images; earlier versions of this fork resized their integers
    q = mge.tensor(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) * 0.1).astype(qdt)
    with pytest.raises(TypeError, match=r"image cannot be resized.*qint8 and quint8.*astype"):
        F.vision.interpolate(q, size=(6, 6), mode=mode)


def test_bilinear_resize_of_a_quantized_image_rounds_as_upstream():
    # upstream 1.13 measured (a ConvRelu2d output resized to (7, 5) in an upstream dump): its
    # kernel's float32 blend puts (0, 1) and (1, 1), 30.5 and 22.5 in exact arithmetic, below
    # the half: 30 and 22 (earlier versions of this fork resampled with matrices: 31 and 23)
    ints = [[48, 23, 0, 0], [27, 0, 0, 54], [0, 0, 0, 61], [36, 0, 96, 39]]
    q = mge.tensor(np.array(ints, np.int8).reshape(1, 1, 4, 4), dtype=dtype.qint8(0.048))
    y = F.nn.interpolate(q, size=(7, 5))
    assert dtype.is_dtype_equal(y.dtype, q.dtype)
    assert y.numpy()[0, 0].tolist() == [
        [48, 30, 12, 0, 0], [41, 22, 7, 6, 19], [29, 10, 1, 15, 50], [14, 4, 0, 17, 58],
        [3, 1, 3, 23, 59], [23, 7, 31, 57, 47], [36, 11, 48, 79, 39]]
