"""Tests for megengine.quantization.utils: fake_quant_tensor against torch's fake_quantize (values
and gradients, per tensor and per channel), upstream's rounding of halves, fake_quant_bias,
tqt_forward and lsq_forward against their formulas written in torch / numpy, the dtype metas."""
import copy
import pickle

import numpy as np
import pytest
import torch

import megengine as mge
from megengine.autodiff import GradManager
from megengine.quantization import utils as utils_module
from megengine.quantization.utils import (
    LSQParams,
    QParams,
    QuantDtypeMeta,
    QuantMode,
    _builtin_quant_dtypes,
    create_qparams,
    create_quantized_dtype,
    fake_quant_bias,
    fake_quant_tensor,
    lsq_forward,
    tqt_forward,
)

from cuda_kernels import emulate
from devices import host_default_device  # noqa: F401  (the kernel-body fixture's host arrays)


def _grad_of(fn, x_np, dy_np, *extra):
    """(output, d(sum(out * dy))/dx, and the gradients of the ``extra`` tensors) in megengine."""
    x = mge.tensor(x_np)
    gm = GradManager().attach([x, *extra])
    with gm:
        y = fn(x)
        gm.backward(y, mge.tensor(dy_np))
    return (y.numpy(), x.grad.numpy(), *[e.grad.numpy() for e in extra])


@pytest.mark.parametrize("mode,zp", [(QuantMode.SYMMERTIC, 0), (QuantMode.ASYMMERTIC, 5),
                                     (QuantMode.ASYMMERTIC, -3)])
@pytest.mark.parametrize("dtype", ["qint8", "quint8", "qint4", "qint8_narrow"])
def test_fake_quant_tensor_matches_torch_per_tensor(mode, zp, dtype):
    meta = _builtin_quant_dtypes[dtype]
    if mode == QuantMode.ASYMMERTIC:
        zp = int(np.clip(zp + (meta.qmin + meta.qmax) // 2, meta.qmin, meta.qmax))
    # 1/scale is exact in float, so x / scale (ours, upstream's) and x * (1 / scale) (torch's)
    # round identically; the range covers values clipped at both ends
    scale = 0.0625 if meta.qmax > 16 else 0.5
    x = (np.random.randn(3, 4, 5) * 6).astype(np.float32)
    dy = np.random.randn(*x.shape).astype(np.float32)
    qparams = create_qparams(mode, dtype, mge.tensor(scale), mge.tensor(float(zp)))
    y, dx = _grad_of(lambda t: fake_quant_tensor(t, qparams), x, dy)

    tx = torch.tensor(x, requires_grad=True)
    tzp = zp if mode == QuantMode.ASYMMERTIC else 0
    ty = torch.fake_quantize_per_tensor_affine(tx, scale, tzp, meta.qmin, meta.qmax)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())
    assert 0 < (dx == 0).mean() < 1  # some values were clipped, some passed: both paths ran


def test_fake_quant_tensor_matches_torch_per_channel():
    meta = _builtin_quant_dtypes["quint8"]
    x = (np.random.randn(2, 3, 4, 4) * 3).astype(np.float32)
    dy = np.random.randn(*x.shape).astype(np.float32)
    scales = np.array([0.03125, 0.015625, 0.0078125], np.float32)
    zps = np.array([100, 128, 30], np.float32)
    qparams = create_qparams(QuantMode.ASYMMERTIC, meta, mge.tensor(scales.reshape(1, 3, 1, 1)),
                             mge.tensor(zps.reshape(1, 3, 1, 1)))
    y, dx = _grad_of(lambda t: fake_quant_tensor(t, qparams), x, dy)

    tx = torch.tensor(x, requires_grad=True)
    ty = torch.fake_quantize_per_channel_affine(tx, torch.tensor(scales),
                                                torch.tensor(zps, dtype=torch.int32), 1,
                                                meta.qmin, meta.qmax)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_fake_quant_tensor_with_an_arbitrary_scale_follows_upstreams_formula():
    # upstream divides by the scale; for a scale whose inverse is inexact that is the formula
    x = (np.random.randn(50) * 3).astype(np.float32)
    scale, zp = np.float32(0.0371), np.float32(7)
    qparams = create_qparams(QuantMode.ASYMMERTIC, "qint8", mge.tensor(scale), mge.tensor(zp))
    q = np.clip(np.trunc(x / scale + np.copysign(0.5, x / scale)) + zp, -128, 127)
    np.testing.assert_allclose(fake_quant_tensor(mge.tensor(x), qparams).numpy(),
                               (q - zp) * scale, rtol=0, atol=1e-6)


def test_fake_quant_rounds_halves_away_from_zero_as_upstream():
    # torch rounds 0.5 -> 0 and 2.5 -> 2 (to even); upstream's kernel uses C's round
    qparams = create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(1.0))
    x = mge.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49, 126.5, 127.5, -128.5, -129.0])
    np.testing.assert_array_equal(fake_quant_tensor(x, qparams).numpy(),
                                  [1, 2, 3, -1, -3, 0, 127, 127, -128, -128])


def test_fake_quant_gradient_edges_are_inclusive_and_nan_passes_through():
    qparams = create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(1.0))
    # rounded values 127 and -128 are inside; 128 (from 127.5) and -129 are outside
    x = np.array([127.4, 127.5, -128.4, -128.5, 3.0], np.float32)
    _, dx = _grad_of(lambda t: fake_quant_tensor(t, qparams), x, np.ones(5, np.float32))
    np.testing.assert_array_equal(dx, [1, 0, 1, 0, 1])
    y = fake_quant_tensor(mge.tensor([np.nan, 1.0]), qparams).numpy()
    assert np.isnan(y[0]) and y[1] == 1.0


def test_fake_quant_tensor_refuses_missing_parameters():
    x = mge.tensor([1.0])
    with pytest.raises(ValueError, match="scale is None"):
        fake_quant_tensor(x, create_qparams(QuantMode.SYMMERTIC, "qint8", None))
    with pytest.raises(ValueError, match="dtype_meta is None"):
        fake_quant_tensor(x, QParams(QuantMode.SYMMERTIC, None, mge.tensor(1.0), None))
    with pytest.raises(ValueError, match="zero_point is None"):
        fake_quant_tensor(x, create_qparams(QuantMode.ASYMMERTIC, "quint8", mge.tensor(1.0)))


def test_fake_quant_bias_uses_qint32_with_input_times_weight_scale():
    bias = mge.tensor([0.30001, -1.23456, 5.0])
    inp, w = mge.tensor([1.0]), mge.tensor([1.0])
    inp.qparams.update(create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(0.5)))
    w.qparams.update(create_qparams(QuantMode.SYMMERTIC, "qint8_narrow", mge.tensor(0.01)))
    b = fake_quant_bias(bias, inp, w)
    step = np.float32(0.5) * np.float32(0.01)  # 0.005
    np.testing.assert_allclose(b.numpy(), np.round(bias.numpy() / step) * step, atol=1e-7)
    assert b.qparams.dtype_meta is _builtin_quant_dtypes["qint32"]
    np.testing.assert_allclose(b.qparams.scale.numpy(), step)


def test_fake_quant_bias_with_only_the_input_scale_set():
    # upstream 1.3 code sets just x.q_dict["scale"]; the bias is then quantized in the weight's
    # mode and dtype: the same result as full qparams on the input
    bias = mge.tensor([0.30001, -1.23456, 5.0])
    w = mge.tensor([1.0])
    w.qparams.update(create_qparams(QuantMode.SYMMERTIC, "qint8_narrow", mge.tensor(0.01)))
    scale_only = mge.tensor([1.0])
    scale_only.q_dict["scale"] = mge.tensor(0.5)
    step = np.float32(0.5) * np.float32(0.01)
    b = fake_quant_bias(bias, scale_only, w)
    np.testing.assert_allclose(b.numpy(), np.round(bias.numpy() / step) * step, atol=1e-7)
    assert scale_only.qparams.mode is QuantMode.SYMMERTIC and scale_only.qparams.dtype_meta is None


def test_fake_quant_bias_leaves_the_bias_alone_when_upstream_does():
    bias = mge.tensor([0.3, -1.2])
    w = mge.tensor([1.0])
    w.qparams.update(create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(0.01)))
    assert fake_quant_bias(bias, mge.tensor([1.0]), w) is bias  # input has no scale
    asym = mge.tensor([1.0])
    asym.qparams.update(create_qparams(QuantMode.ASYMMERTIC, "quint8", mge.tensor(0.5),
                                       mge.tensor(3.0)))
    assert fake_quant_bias(bias, asym, w) is bias  # only symmetric int8 is handled
    assert fake_quant_bias(None, asym, w) is None


def _tqt_torch(x, s, qmin, qmax):
    """TQT written with torch autograd: round with a straight-through gradient, then clamp."""
    t = 2 ** s
    v = x / t
    rounded = v + (torch.where(v >= 0, torch.floor(v + 0.5), torch.ceil(v - 0.5)) - v).detach()
    return torch.clamp(rounded, qmin, qmax) * t


@pytest.mark.parametrize("log2_scale", [-0.7, -3.2])
def test_tqt_forward_matches_its_formula_in_torch_autograd(log2_scale):
    x = (np.random.randn(2, 3, 4, 5) * 60).astype(np.float32)
    dy = np.random.randn(*x.shape).astype(np.float32)
    s = mge.Parameter(np.array([log2_scale], np.float32))
    y, dx, ds = _grad_of(lambda t: tqt_forward(-127, 127, t, s), x, dy, s)

    tx = torch.tensor(x, requires_grad=True)
    ts = torch.tensor([log2_scale], requires_grad=True)
    ty = _tqt_torch(tx, ts, -127, 127)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=1e-5)
    # torch's chain (divide by t, multiply by t) differs from 1 in the last bit
    np.testing.assert_array_equal(dx == 0, tx.grad.numpy() == 0)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ds, ts.grad.numpy(), rtol=1e-4)
    assert ds.shape == (1,)
    assert 0 < (dx == 0).mean() < 1


def test_tqt_forward_small_case_by_hand():
    # t = 2**-1 = 0.5: x/t = [2.6, -300, 0.2]; rounded [3, -127 (clipped), 0]
    x = np.array([1.3, -150.0, 0.1], np.float32)
    s = mge.Parameter(np.array([-1.0], np.float32))
    y, dx, ds = _grad_of(lambda t: tqt_forward(-127, 127, t, s), x, np.ones(3, np.float32), s)
    np.testing.assert_allclose(y, [1.5, -63.5, 0.0])
    np.testing.assert_array_equal(dx, [1, 0, 1])
    expected = ((3 - 2.6) + (-127) + (0 - 0.2)) * 0.5 * np.log(2)
    np.testing.assert_allclose(ds, [expected], rtol=1e-5)


@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8"])
def test_fake_quantization_of_integers_is_float32_of_their_values(dtype):
    # a float function: integers are values (earlier versions of this fork rounded the
    # fake-quantized values back into the integer dtype: 9 at scale 4 gave 8, tqt's 7 gave 6)
    x = np.array([1, 3, 5, 7, 9, 30, 101], dtype)  # (x / 4: no halves, whose rounding differs)
    want = torch.fake_quantize_per_tensor_affine(torch.tensor(x, dtype=torch.float32), 4.0, 0,
                                                 -8, 7).numpy()
    qparams = create_qparams(QuantMode.SYMMERTIC, "qint4", mge.tensor(4.0))  # [-8, 7]
    for y in (tqt_forward(-8, 7, mge.tensor(x), mge.tensor([2.0])),
              lsq_forward(-8, 7, mge.tensor(x), mge.tensor([4.0])),
              fake_quant_tensor(mge.tensor(x), qparams)):
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y.numpy(), want)


def _lsq_numpy(x, s, zp, grad_scale, qmin, qmax, dy):
    """Upstream's LSQ formula (its unit test's reference), written out in numpy."""
    v = x / s + zp
    rounded = np.floor(np.clip(v, qmin, qmax) + 0.5)
    y = (rounded - zp) * s
    small, big = v < qmin, v > qmax
    inside = ~(small | big)
    ds = np.where(small, qmin, np.where(big, qmax, rounded - v)) * grad_scale * dy
    return y, dy * inside, ds.sum()


def test_lsq_forward_matches_upstreams_formula():
    x = (np.random.randn(2, 3, 4) * 3).astype(np.float32)
    dy = np.random.randn(*x.shape).astype(np.float32)
    step = mge.Parameter(np.array([0.029], np.float32))
    zp, gs = mge.tensor([1.0]), mge.tensor([2.0])
    y, dx, ds = _grad_of(lambda t: lsq_forward(-127, 127, t, step, zp, gs), x, dy, step)
    ry, rdx, rds = _lsq_numpy(x, np.float32(0.029), 1.0, 2.0, -127, 127, dy)
    np.testing.assert_allclose(y, ry, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_allclose(ds, [rds], rtol=1e-4)


def test_lsq_forward_matches_torch_learnable_fake_quant_for_zero_zero_point():
    # with zero point 0 torch's learnable fake quantization (LSQ) has upstream's gradients
    x = (np.random.randn(40) * 2).astype(np.float32)
    dy = np.random.randn(40).astype(np.float32)
    step = mge.Parameter(np.array([0.03125], np.float32))
    y, dx, ds = _grad_of(lambda t: lsq_forward(-128, 127, t, step), x, dy, step)
    tx = torch.tensor(x, requires_grad=True)
    ts = torch.tensor([0.03125], requires_grad=True)
    ty = torch._fake_quantize_learnable_per_tensor_affine(tx, ts, torch.tensor([0.0]), -128, 127,
                                                          1.0)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-6)
    np.testing.assert_array_equal(dx, tx.grad.numpy())
    np.testing.assert_allclose(ds, ts.grad.numpy(), rtol=1e-4)


def test_builtin_dtype_metas_have_upstreams_ranges_and_survive_copies():
    ranges = {name: (m.qmin, m.qmax) for name, m in _builtin_quant_dtypes.items()}
    assert ranges["qint8"] == (-128, 127) and ranges["quint8"] == (0, 255)
    assert ranges["qint8_narrow"] == (-127, 127) and ranges["qint4"] == (-8, 7)
    assert ranges["quint4"] == (0, 15) and ranges["qint32"] == (-2 ** 31, 2 ** 31 - 1)
    meta = _builtin_quant_dtypes["quint8"]
    assert meta.is_unsigned and not _builtin_quant_dtypes["qint8"].is_unsigned
    assert copy.deepcopy(meta) is meta and copy.copy(meta) is meta
    with pytest.raises(ValueError, match="qmin"):
        QuantDtypeMeta("bad", None, "int8", 3, 1)


def test_create_quantized_dtype_carries_scale_and_zero_point_as_upstream():
    d = create_quantized_dtype(_builtin_quant_dtypes["quint8"], 0.5, 3)
    assert d == np.uint8 and d.metadata["mgb_dtype"] == {"name": "Quantized8Asymm",
                                                         "scale": 0.5, "zero_point": 3}
    d = create_quantized_dtype(_builtin_quant_dtypes["qint8"], 0.25, None)
    assert d.metadata["mgb_dtype"] == {"name": "QuantizedS8", "scale": 0.25}
    with pytest.raises(ValueError, match="symmetric"):
        create_quantized_dtype(_builtin_quant_dtypes["qint8"], 0.25, 1)
    with pytest.raises(ValueError, match="within"):
        create_quantized_dtype(_builtin_quant_dtypes["quint4"], 0.25, 16)


def test_qparams_is_the_tensor_attribute_class_and_lsqparams_carries_grad_scale():
    t = mge.tensor([1.0])
    assert isinstance(t.qparams, QParams)
    qp = create_qparams(QuantMode.ASYMMERTIC, "quint8", mge.tensor(0.5), mge.tensor(3.0))
    t.qparams.update(qp)
    assert t.qparams == qp and t.q_dict["zero_point"] is qp.zero_point
    lsq = LSQParams(QuantMode.SYMMERTIC, _builtin_quant_dtypes["qint8"], mge.tensor(0.1), None,
                    mge.tensor(2.0))
    other = LSQParams(None, None, None, None, None)
    other.update(lsq)
    assert other == lsq and other.grad_scale is lsq.grad_scale
    back = pickle.loads(pickle.dumps(lsq))
    assert back == lsq and float(back.grad_scale.numpy()) == 2.0
    with pytest.raises(TypeError, match="QuantMode"):
        create_qparams("symmetric", "qint8")
    # a ValueError, as upstream's observers raise, and the KeyError of upstream's create_qparams
    for upstream_type in (ValueError, KeyError):
        with pytest.raises(upstream_type, match="unknown dtype") as info:
            create_qparams(QuantMode.SYMMERTIC, "qint9")
        assert str(info.value).startswith("create_qparams: unknown dtype: 'qint9'")  # (no quotes)


# On CUDA fake quantization's forward is one CuPy ElementwiseKernel. Without a GPU its body is
# compiled here as C++ (tests/cuda_kernels.py: every argument broadcast to the input's shape, as
# CuPy broadcasts), put in the kernel's place, and checked against torch and the array code.
@pytest.fixture(scope="module")
def fake_quant_kernel_on_cpu(tmp_path_factory):
    """The fake-quant kernel body compiled as C++: ``(x, scale, zp, qmin, qmax) -> (y, mask)``."""
    return emulate(utils_module._fake_quant_kernel, tmp_path_factory.mktemp("fake_quant_kernel"))


@pytest.fixture
def fake_quant_kernel_used(fake_quant_kernel_on_cpu, monkeypatch, host_default_device):
    used = []
    monkeypatch.setattr(utils_module, "_fake_quant_kernel",
                        lambda: used.append(1) or fake_quant_kernel_on_cpu)
    monkeypatch.setattr(utils_module, "_use_fake_quant_kernel", lambda x: True)
    return used


def test_fake_quant_kernel_body_matches_torch_per_channel(fake_quant_kernel_used):
    x = (np.random.randn(2, 3, 4, 4) * 3).astype(np.float32)
    dy = np.random.randn(*x.shape).astype(np.float32)
    scales = np.array([0.03125, 0.015625, 0.0078125], np.float32)
    zps = np.array([100, 128, 30], np.float32)
    qparams = create_qparams(QuantMode.ASYMMERTIC, "quint8", mge.tensor(scales.reshape(1, 3, 1, 1)),
                             mge.tensor(zps.reshape(1, 3, 1, 1)))
    y, dx = _grad_of(lambda t: fake_quant_tensor(t, qparams), x, dy)
    assert fake_quant_kernel_used, "the kernel was not used"
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.fake_quantize_per_channel_affine(tx, torch.tensor(scales),
                                                torch.tensor(zps, dtype=torch.int32), 1, 0, 255)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fake_quant_kernel_body_equals_the_array_code(fake_quant_kernel_on_cpu, dtype):
    # halves, the range edges, NaN, and an inexact scale: the same values and mask
    x = np.concatenate([np.array([0.5, 2.5, -0.5, -2.5, 127.4, 127.5, -128.5, np.nan]),
                        np.random.randn(40) * 60]).astype(dtype)
    scale, zp = np.asarray(0.37, dtype), np.asarray(3.0, dtype)
    y, mask = fake_quant_kernel_on_cpu(x, scale, zp, -128, 127)
    op = utils_module.FakeQuant(-128, 127)
    op.needs_input_grad = (True, False, False)
    ref = op.forward(x, scale, zp)
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(mask, op.mask.astype(dtype))


def test_fake_quant_gradient_can_be_differentiated_again():
    # d/dx sum(fq(x)^2) = 2 fq(x) * mask; its derivative (straight-through again) is 2 * mask
    x = mge.Parameter(np.array([0.3, 1.7, 200.0, -3.2], np.float32))
    qparams = create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(0.5))
    gm2, gm1 = GradManager().attach(x), GradManager().attach(x)
    with gm2:
        with gm1:
            gm1.backward((fake_quant_tensor(x, qparams) ** 2).sum())
        first = x.grad
        x.grad = None
        gm2.backward(first.sum())
    np.testing.assert_allclose(first.numpy(), [1.0, 3.0, 0.0, -6.0])  # fq: .5, 1.5, clipped, -3
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0, 0.0, 2.0])


def test_qparams_repr_prints_each_field_as_upstream():
    # upstream 1.13 measured: str() of each field (the mode as QuantMode.SYMMERTIC)
    qparams = create_qparams(QuantMode.ASYMMERTIC, "quint8", mge.tensor(0.5), mge.tensor(10))
    dev = mge.get_default_device() + ":0"  # ("xpux:0" unless MGE_DEFAULT_DEVICE names another)
    assert repr(qparams) == (
        "QParams(mode=QuantMode.ASYMMERTIC, dtype_meta=QuantDtypeMeta(name='quint8', "
        "cname='Quantized8Asymm', np_dtype_str='uint8', qmin=0, qmax=255, is_unsigned=True), "
        f"scale=Tensor(0.5, device={dev}), zero_point=Tensor(10, dtype=int32, device={dev}))")


def test_a_tensors_first_qparams_are_symmetric_and_empty():
    # upstream 1.13 measured: repr(mge.tensor([1.0]).qparams) is
    # QParams(mode=QuantMode.SYMMERTIC, dtype_meta=None, scale=None, zero_point=None)
    assert repr(mge.tensor([1.0]).qparams) == (
        "QParams(mode=QuantMode.SYMMERTIC, dtype_meta=None, scale=None, zero_point=None)")


def test_round_rounds_halves_away_from_zero_with_a_straight_through_gradient():
    # upstream's quantization.utils.Round; torch's straight-through round (x + (round(x) -
    # x).detach()) is the oracle off the halves, where torch rounds to even
    from megengine.quantization.utils import Round

    values = np.array([[2.4, -2.6, 0.0], [7.9, -0.2, 3.51]], np.float32)
    x = mge.tensor(values)
    with GradManager().attach(x) as gm:
        y = Round()(x)
        gm.backward((y * y).sum())
    tx = torch.tensor(values, requires_grad=True)
    ty = tx + (torch.round(tx) - tx).detach()
    (ty * ty).sum().backward()
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
    # halves away from zero, as upstream's F.round (hand-computed)
    np.testing.assert_array_equal(Round()(mge.tensor([0.5, -1.5, 2.5])).numpy(), [1, -2, 3])


def test_create_qparams_of_a_mode_that_is_no_quantmode_is_upstreams_assertion_too():
    # upstream asserts the mode (measured); the error is a TypeError and an AssertionError
    for error in (TypeError, AssertionError):
        with pytest.raises(error, match="create_qparams: mode must be a QuantMode"):
            create_qparams("bogus", "qint8", mge.tensor(1.0))
