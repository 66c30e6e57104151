"""Ops on quantized tensors compute what the values give, or refuse (docs/api/quantization.rst).

A quantized tensor stores integers ``q``; its values are ``(q - zero_point) * scale``. Each op
below is run on a quantized tensor and checked against torch on those values, computed here by
hand from the stored integers: float functions give the float result of the values (upstream
casts their integer inputs to float32, which dequantizes); order and sum ops keep the quantized
dtype and give the values' result (saturated); ops whose result on the stored integers is not
the values' result raise a TypeError that says what to do, and leave the input as it was.
"""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.core.tensor import dtype
from megengine.quantization.utils import (QuantMode, create_qparams, fake_quant_tensor,
                                         lsq_forward, tqt_forward)

from devices import host_default_device  # noqa: F401  (the fixture below)

# quantized tensors live on CPU devices only: on a CUDA machine these tests run on cpu0
pytestmark = pytest.mark.usefixtures("host_default_device")

_STORED = np.array([[-7, -2, 0, 3], [5, 12, -1, 9]])
_DTYPES = {  # (dtype, zero point, raw integers)
    "qint8": (dtype.qint8(0.25), 0, _STORED),
    "quint8": (dtype.quint8(0.5, 100), 100, _STORED + 100),
    "qint32": (dtype.qint32(0.125), 0, _STORED * 1000),
}


def _quantized(name):
    qd, zp, raw = _DTYPES[name]
    q = mge.tensor(raw, dtype=qd)  # the integers as they are
    values = (raw - zp) * np.float64(dtype.get_scale(qd))
    return q, torch.tensor(values, dtype=torch.float32)


def _round_half_away(t):
    return torch.sign(t) * torch.floor(torch.abs(t) + 0.5)


def _values(t):
    """A result's values: dequantized by hand when it is quantized."""
    a = t.numpy()
    if dtype.is_quantize(t.dtype):
        zp = dtype.get_zero_point(t.dtype) if "zero_point" in t.dtype.metadata["mgb_dtype"] else 0
        return (a.astype(np.float64) - zp) * dtype.get_scale(t.dtype)
    return a


def _idiv_number(q):
    q /= 2  # (rebinds q to its values' quotient, as q = q / 2)
    return q


def _ipow_number(q):
    q **= 2
    return q


# float functions: the float32 result of the values
FLOAT_FUNCTIONS = {
    "truediv": (lambda q: q / q[0], lambda v: v / v[0]),
    "div_number": (lambda q: q / 2, lambda v: v / 2),
    "div_numpy_number": (lambda q: q / np.float32(2), lambda v: v / 2),
    "rdiv_number": (lambda q: 3.0 / q[1], lambda v: 3.0 / v[1]),
    "pow_number": (lambda q: q ** 2, lambda v: v ** 2),
    "idiv_number": (_idiv_number, lambda v: v / 2),
    "ipow_number": (_ipow_number, lambda v: v ** 2),
    "F.pow": (lambda q: F.pow(q, 3), lambda v: v ** 3),
    "exp": (F.exp, torch.exp),
    "log_of_exp": (lambda q: F.log(F.exp(q)), lambda v: torch.log(torch.exp(v))),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
    "sin": (F.sin, torch.sin),
    "erf": (F.erf, torch.erf),
    "atan2": (lambda q: F.atan2(q, q[1]), lambda v: torch.atan2(v, v[1])),
    "atan2_number": (lambda q: F.atan2(q, 2), lambda v: torch.atan2(v, torch.tensor(2.0))),
    "mean": (F.mean, torch.mean),
    "mean_axis": (lambda q: F.mean(q, axis=1), lambda v: v.mean(1)),
    "var": (F.var, lambda v: v.var(unbiased=False)),
    "norm": (F.norm, torch.linalg.vector_norm),
    "logsumexp": (lambda q: F.logsumexp(q, axis=1), lambda v: torch.logsumexp(v, 1)),
    "softmax": (lambda q: F.softmax(q, axis=1), lambda v: torch.softmax(v, 1)),
    "leaky_relu": (F.leaky_relu, torch.nn.functional.leaky_relu),
    "gelu": (F.gelu, torch.nn.functional.gelu),
    "silu": (F.silu, torch.nn.functional.silu),
    "relu6": (F.relu6, torch.nn.functional.relu6),
    "hsigmoid": (F.hsigmoid, torch.nn.functional.hardsigmoid),
    "cross_entropy": (lambda q: F.nn.cross_entropy(q, mge.tensor([0, 3])),
                      lambda v: torch.nn.functional.cross_entropy(v, torch.tensor([0, 3]))),
    # losses of two inputs of one quantized dtype (they computed on the stored integers)
    "l1_loss": (lambda q: F.nn.l1_loss(q, q[::-1]),
                lambda v: torch.nn.functional.l1_loss(v, v.flip(0))),
    "square_loss": (lambda q: F.nn.square_loss(q, q[::-1]),
                    lambda v: torch.nn.functional.mse_loss(v, v.flip(0))),
    "smooth_l1_loss": (lambda q: F.nn.smooth_l1_loss(q, q[::-1], reduction="none"),
                       lambda v: torch.nn.functional.smooth_l1_loss(v, v.flip(0),
                                                                    reduction="none")),
    "bce_with_logits": (lambda q: F.nn.binary_cross_entropy(q, q[::-1]),
                        lambda v: torch.nn.functional.binary_cross_entropy_with_logits(
                            v, v.flip(0))),
    "prelu": (lambda q: F.prelu(q, q[1]), lambda v: torch.where(v > 0, v, v * v[1])),
    # fake quantization of a quantized input (it gave integers taken for values)
    "fake_quant": (lambda q: fake_quant_tensor(q, create_qparams(QuantMode.SYMMERTIC, "qint8",
                                                                 0.35)),
                   lambda v: torch.fake_quantize_per_tensor_affine(v, 0.35, 0, -128, 127)),
    "tqt": (lambda q: tqt_forward(-128, 127, q, mge.tensor([-2.0])),
            lambda v: torch.clamp(_round_half_away(v / 0.25), -128, 127) * 0.25),
    "lsq": (lambda q: lsq_forward(-128, 127, q, mge.tensor([0.3])),
            lambda v: torch.floor(torch.clamp(v / 0.3, -128, 127) + 0.5) * 0.3),
    # (these refused: a quantized tensor met a float one, or its square)
    "normalize": (F.normalize, lambda v: v / torch.linalg.vector_norm(v)),
    "hinge_loss": (lambda q: F.nn.hinge_loss(q, q[::-1]),
                   lambda v: torch.relu(1 - v * v.flip(0)).sum(1).mean()),
    "local_response_norm": (lambda q: F.local_response_norm(q.reshape(1, 2, 4), 3),
                            lambda v: torch.nn.functional.local_response_norm(
                                v.reshape(1, 2, 4), 3, alpha=3e-4, beta=0.75, k=2.0)),
    # quantized affine parameters: their values (they scaled by the stored integers)
    "layer_norm_params": (lambda q: F.nn.layer_norm(q, (4,), weight=q[0], bias=q[1]),
                          lambda v: torch.nn.functional.layer_norm(v, (4,), v[0], v[1])),
    "batch_norm_params": (lambda q: F.nn.batch_norm(q, weight=q[0], bias=q[1], training=True),
                          lambda v: torch.nn.functional.batch_norm(v, None, None, v[0], v[1],
                                                                   training=True)),
}


@pytest.mark.parametrize("name", sorted(_DTYPES))
@pytest.mark.parametrize("case", sorted(FLOAT_FUNCTIONS))
def test_float_functions_compute_on_the_values(name, case):
    fn, oracle = FLOAT_FUNCTIONS[case]
    q, v = _quantized(name)
    out = fn(q)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), oracle(v).numpy(), rtol=2e-6, atol=1e-6)


# ops the stored integers give exactly: the result keeps the quantized dtype

def _assert_keeps_the_dtype_and_the_values(fn, oracle, name):
    """``fn`` of a quantized tensor of dtype ``name`` keeps its dtype, and its values are exactly
    ``oracle`` of the values in torch."""
    q, v = _quantized(name)
    out = fn(q)
    assert dtype.is_dtype_equal(out.dtype, q.dtype)
    np.testing.assert_array_equal(_values(out), oracle(v).double().numpy())


ORDER_OPS = {
    "maximum": (lambda q: F.maximum(q, q[1]), lambda v: torch.maximum(v, v[1])),
    "minimum": (lambda q: F.minimum(q, q[1]), lambda v: torch.minimum(v, v[1])),
    "max": (lambda q: F.max(q, axis=1), lambda v: v.amax(1)),
    "min": (F.min, torch.amin),
    "relu": (F.relu, torch.relu),
    "where": (lambda q: F.where(q > q[1], q, q[1]), lambda v: torch.where(v > v[1], v, v[1])),
    "sort": (lambda q: F.sort(q, descending=True)[0], lambda v: v.sort(descending=True)[0]),
    "topk": (lambda q: F.topk(q, 2)[0], lambda v: v.topk(2, largest=False)[0]),
    "max_pool": (lambda q: F.max_pool2d(q.reshape(1, 1, 2, 4), 2),
                 lambda v: torch.nn.functional.max_pool2d(v.reshape(1, 1, 2, 4), 2)),
    "pad": (lambda q: F.nn.pad(q, ((1, 0), (0, 1)), constant_value=1.5),
            lambda v: torch.nn.functional.pad(v, (0, 1, 1, 0), value=1.5)),
    "concat": (lambda q: F.concat([q, q[::-1]]), lambda v: torch.cat([v, v.flip(0)])),
    # (these dropped the scale, or filled with stored zeros: value -zero_point * scale)
    "stack": (lambda q: F.stack([q, q[::-1]], axis=1), lambda v: torch.stack([v, v.flip(0)], 1)),
    # (F.stack counts 0-d items as shape (1,), as upstream)
    "stack_0d": (lambda q: F.stack([q[0, 0], q[1, 1]]),
                 lambda v: torch.stack([v[0, 0], v[1, 1]])[:, None]),
    "diag": (lambda q: F.diag(q[0], k=1), lambda v: torch.diag(v[0], 1)),
    "sliding_window": (lambda q: F.sliding_window(q.reshape(1, 1, 2, 4), 3, padding=1),
                       lambda v: torch.nn.functional.unfold(v.reshape(1, 1, 2, 4), 3, padding=1)
                       .view(1, 1, 3, 3, 2, 4).permute(0, 1, 4, 5, 2, 3)),
}


@pytest.mark.parametrize("name", sorted(_DTYPES))
@pytest.mark.parametrize("case", sorted(ORDER_OPS))
def test_order_and_data_ops_keep_the_dtype_and_the_values(name, case):
    _assert_keeps_the_dtype_and_the_values(*ORDER_OPS[case], name)


def test_comparisons_of_one_dtype_compare_the_values():
    for name in _DTYPES:
        q, v = _quantized(name)
        for mge_op, torch_op in ((F.less, torch.lt), (F.equal, torch.eq),
                                 (F.greater_equal, torch.ge)):
            np.testing.assert_array_equal(mge_op(q, q[1]).numpy(), torch_op(v, v[1]).numpy())


SUM_OPS = {
    "add": (lambda q: q + q[1], lambda v: v + v[1]),
    "sub": (lambda q: q - q[1], lambda v: v - v[1]),
    "F.add": (lambda q: F.add(q, q), lambda v: v + v),
    "neg": (lambda q: -q, torch.neg),
    "abs": (abs, torch.abs),
    "sum": (F.sum, torch.sum),
    "sum_axis": (lambda q: q.sum(axis=0), lambda v: v.sum(0)),
}


@pytest.mark.parametrize("name", ["qint8", "qint32"])
@pytest.mark.parametrize("case", sorted(SUM_OPS))
def test_sums_of_one_scale_without_a_zero_point_keep_the_dtype_and_the_values(name, case):
    _assert_keeps_the_dtype_and_the_values(*SUM_OPS[case], name)


def test_quantized_sums_saturate_to_the_dtype_range():
    # hand values: qint8 stores -128..127; 100 + 100 would wrap to -56 in int8
    q = mge.tensor([100, -100, -128], dtype=dtype.qint8(0.5))
    np.testing.assert_array_equal((q + q).numpy(), [127, -128, -128])
    np.testing.assert_array_equal((q - (-q)).numpy(), [127, -128, -128])
    np.testing.assert_array_equal((-q).numpy(), [-100, 100, 127])
    np.testing.assert_array_equal(abs(q).numpy(), [100, 100, 127])
    assert F.sum(q).numpy() == -128 and dtype.is_dtype_equal(F.sum(q).dtype, q.dtype)


REFUSED = {
    "mul": lambda q: q * q,
    "F.mul": lambda q: F.mul(q, q),
    "floor_div": lambda q: q // q,
    "mod": lambda q: q % q,
    "square": F.square,
    "floor": F.floor,
    "round": F.round,
    "sign": F.sign,
    "prod": F.prod,
    "cumsum": lambda q: F.cumsum(q, 1),
    # (these computed on the stored integers: a product has the scale squared; a quint8 image
    # passed for a uint8 one)
    "einsum": lambda q: F.einsum("ij,kj->ik", q, q),
    "local_conv2d": lambda q: F.local_conv2d(q.reshape(1, 1, 2, 4), q.reshape(2, 4, 1, 1, 1, 1)),
    "deformable_conv2d": lambda q: F.deformable_conv2d(
        q.reshape(1, 1, 2, 4), q[0, :1].reshape(1, 1, 1, 1), F.zeros((1, 2, 2, 4)),
        F.ones((1, 1, 2, 4))),
    "cvt_color": lambda q: F.vision.cvt_color(q.reshape(1, 2, 4, 1), "GRAY2RGB"),
}


@pytest.mark.parametrize("name", sorted(_DTYPES))
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_ops_whose_stored_result_is_not_the_values_result_refuse(name, case):
    q, _ = _quantized(name)
    before = q.numpy().copy()
    with pytest.raises(TypeError, match=r"is quantized \(q.*no quantized form.*astype\('float32'\)"):
        REFUSED[case](q)
    np.testing.assert_array_equal(q.numpy(), before)


@pytest.mark.parametrize("case", ["add", "sub", "neg", "abs"])
def test_sums_with_a_zero_point_refuse(case):
    q, _ = _quantized("quint8")
    fn = {"add": lambda q: q + q, "sub": lambda q: q - q, "neg": lambda q: -q, "abs": abs}[case]
    with pytest.raises(TypeError, match="quint8.*no quantized form"):
        fn(q)


def test_sum_with_a_zero_point_sums_the_values():
    # upstream 1.13 measured: quint8(0.5, 10) values [[1, 2, 3], [100, 100, 100]] (stored
    # [[12, 14, 16], [210, 210, 210]]) sum to stored 255 (saturated), over axis 0 to
    # [212, 214, 216], over axis 1 to [22, 255]; values [-4, 1, 2] (stored [2, 12, 14]) to 8
    qd = dtype.quint8(0.5, 10)
    q = mge.tensor(np.array([[1.0, 2, 3], [100, 100, 100]], "float32")).astype(qd)
    assert q.numpy().tolist() == [[12, 14, 16], [210, 210, 210]]
    for out, want in [(F.sum(q), 255), (F.sum(q, 0), [212, 214, 216]), (q.sum(1), [22, 255]),
                      (F.sum(mge.tensor(np.array([-4.0, 1, 2], "float32")).astype(qd)), 8)]:
        assert dtype.is_dtype_equal(out.dtype, qd)
        assert out.numpy().tolist() == want
    np.testing.assert_array_equal(F.sum(q, 1).astype("float32").numpy(), [6.0, 122.5])


@pytest.mark.parametrize("op", [lambda q: q + 1, lambda q: 2 * q, lambda q: q > 1,
                                lambda q: q + np.int64(1), lambda q: np.float32(2) * q,
                                lambda q: F.maximum(q, 0), lambda q: F.clip(q, 0, 1),
                                lambda q: F.where(q > q, q, 0), lambda q: q.__iadd__(1)])
def test_a_python_number_next_to_a_quantized_tensor_refuses(op):
    # the number is a value; taken as a stored integer, q > 1 compared with 0.25 at scale 0.25
    q, _ = _quantized("qint8")
    with pytest.raises(TypeError, match=r"Python number .* quantized tensor \(qint8\(0.25\)\)"):
        op(q)


@pytest.mark.parametrize("name", sorted(_DTYPES))
def test_a_quantized_parameter_updated_in_place_keeps_the_values(name):
    # a Parameter keeps its storage and dtype: p /= 2 writes the quantized quotient (the float
    # quotient's cast stored it as the integers: 1.5 as stored 1)
    q, values = _quantized(name)
    qd = q.dtype
    p = mge.Parameter(q)
    p /= 2
    assert dtype.is_dtype_equal(p.dtype, qd)
    step = dtype.get_scale(qd)
    want = _round_half_away(values / 2 / step) * step
    np.testing.assert_allclose(_values(p), want.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(8, 4), (2, 4, 8, 8)])  # ATen's forward; numpy's
@pytest.mark.parametrize("name", sorted(_DTYPES))
def test_batch_norm_training_updates_quantized_running_stats_by_value(name, shape):
    # the update is computed on the stats' values and quantized again (it took their stored
    # integers for values, and cast the updated values to stored integers)
    q, v = _quantized(name)
    step = dtype.get_scale(q.dtype)
    rm, rv = q[0], q[1]
    trm, trv = v[0].clone(), v[1].clone()
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    y = F.nn.batch_norm(mge.tensor(x), rm, rv, training=True, momentum=0.9)
    ty = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, training=True,
                                        momentum=0.1)  # (torch's momentum is 1 - upstream's)
    np.testing.assert_allclose(y.numpy(), ty.numpy(), rtol=1e-5, atol=1e-6)
    for got, want in ((rm, trm), (rv, trv)):
        assert dtype.is_dtype_equal(got.dtype, q.dtype)
        np.testing.assert_allclose(_values(got), want.numpy(), rtol=0, atol=step / 2 + 1e-6)


def test_a_number_written_into_a_quantized_tensor_is_quantized_as_a_value():
    q, _ = _quantized("quint8")  # scale 0.5, zero point 100
    q[0, 0] = 1.5
    q[1] = 0
    assert q.numpy()[0, 0] == 103
    np.testing.assert_array_equal(q.numpy()[1], [100] * 4)
    assert dtype.is_dtype_equal(q.dtype, dtype.quint8(0.5, 100))


@pytest.mark.parametrize("name", sorted(_DTYPES))
def test_likes_and_non_zero_see_the_values(name):
    q, v = _quantized(name)
    # zeros_like holds value 0 (quint8: the zero point), ones_like value 1; an integer taken
    # for a value gave 0 * scale - zero_point * scale and 1 * scale before
    for fn, value in ((F.zeros_like, 0.0), (F.ones_like, 1.0), (lambda t: F.full_like(t, 2.5), 2.5)):
        out = fn(q)
        assert dtype.is_dtype_equal(out.dtype, q.dtype)
        np.testing.assert_array_equal(_values(out), np.full(v.shape, value))
    np.testing.assert_array_equal(F.non_zero(q).numpy(), torch.nonzero(v).numpy())
    np.testing.assert_allclose(F.matinv(q[:, :2]).numpy(), torch.linalg.inv(v[:, :2]).numpy(),
                               rtol=1e-5)
    with pytest.raises(TypeError, match="logical_not.*no quantized form"):
        F.logical_not(q)


@pytest.mark.parametrize("name", sorted(_DTYPES))
def test_resampled_quantized_images_are_the_values_samples_quantized_again(name):
    # (the float samplers are checked against OpenCV's and torch's in tests/functional; here
    # the property: a quantized image samples its values, then quantizes, within half a step;
    # it sampled the stored integers and took the samples for integers before)
    q, v = _quantized(name)
    img_q, img_v = q.reshape(1, 1, 2, 4), mge.tensor(v.numpy().reshape(1, 1, 2, 4))
    mat = mge.tensor([[[1, 0, 0.5], [0, 1, 0.25], [0, 0, 1]]], dtype="float32")
    grid = mge.tensor(np.full((1, 2, 4, 2), 1.25, np.float32))
    step = dtype.get_scale(q.dtype)
    for fn in (lambda t: F.vision.warp_perspective(t, mat, (2, 4)),
               lambda t: F.vision.remap(t, grid)):
        out, want = fn(img_q), fn(img_v).numpy()
        assert dtype.is_dtype_equal(out.dtype, q.dtype)
        assert np.abs(want).max() > 1  # (not all zero)
        np.testing.assert_allclose(_values(out), want, rtol=0, atol=step / 2 + 1e-6)


def test_triplet_margin_loss_takes_the_values_not_saturated_differences():
    # hand values: |a - p| = 100 and |a - n| = 10 at qint8(0.5), stored 200 and 20 steps apart;
    # on the stored integers a - p saturated at 127 steps (63.5) before
    q = dtype.qint8(0.5)
    a, p, n = (mge.tensor(np.array([[s]]), dtype=q) for s in (100, -100, 80))
    out = F.triplet_margin_loss(a, p, n, margin=1.0, p=2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), 100 - 10 + 1.0)


def test_ctc_loss_of_quantized_probabilities_takes_the_values():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(5, 2)).astype(np.float32)  # (T, N, C)
    qprobs = mge.tensor(probs).astype(dtype.quint8(1 / 128, 0))
    values = torch.tensor(_values(qprobs), dtype=torch.float32)
    labels, lengths = np.array([[1, 2], [3, 3]], np.int32), np.array([2, 2], np.int32)
    out = F.nn.ctc_loss(qprobs, np.array([5, 4], np.int32), labels, lengths)
    want = torch.nn.functional.ctc_loss(values.log(), torch.tensor(labels), torch.tensor([5, 4]),
                                        torch.tensor(lengths), reduction="mean")
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-5)


def test_scatter_writes_the_sources_values():
    # hand values: a qint8(0.5) source of values 0.5 and 1 lands in a qint8(0.25) tensor as
    # stored 2 and 4 (its stored 1 and 2 were copied before: values 0.25 and 0.5)
    inp = mge.tensor(np.zeros((1, 3)), dtype=dtype.qint8(0.25))
    src = mge.tensor(np.array([[1, 2]]), dtype=dtype.qint8(0.5))
    out = F.scatter(inp, 1, mge.tensor([[2, 0]]), src)
    assert dtype.is_dtype_equal(out.dtype, dtype.qint8(0.25))
    np.testing.assert_array_equal(out.numpy(), [[4, 0, 2]])


def test_sliding_window_transpose_sums_saturate_or_refuse():
    # hand values: two 1x2 windows of stored 100 overlap on the middle pixel of a 1x3 image:
    # 200 saturates at 127 in qint8 (it wrapped to -56); with a zero point a sum of stored
    # integers is no value's sum
    cols = np.full((1, 1, 1, 2, 1, 2), 100)
    out = F.sliding_window_transpose(mge.tensor(cols, dtype=dtype.qint8(0.5)), (1, 3), (1, 2))
    assert dtype.is_dtype_equal(out.dtype, dtype.qint8(0.5))
    np.testing.assert_array_equal(out.numpy(), [[[[100, 127, 100]]]])
    with pytest.raises(TypeError, match="quint8.*no quantized form"):
        F.sliding_window_transpose(mge.tensor(cols, dtype=dtype.quint8(0.5, 3)), (1, 3), (1, 2))


def test_a_quantized_nhwc_image_warps_on_the_float_images_grid():
    # upstream's CPU warp of an NHWC float32 image samples on OpenCV's 1/32-pixel grid; a
    # quantized image is its values: the same samples, quantized again (a qint8 image took the
    # exact grid before, off by up to a 1/32 pixel's interpolation)
    rng = np.random.default_rng(0)
    img = (rng.integers(-100, 100, (1, 5, 6, 1)) * 0.125).astype(np.float32)
    q = mge.tensor(img).astype(dtype.qint8(0.125))
    mat = mge.tensor([[[0.9, 0.13, 0.31], [-0.07, 1.1, 0.47], [0, 0, 1]]], dtype="float32")
    out = F.vision.warp_perspective(q, mat, (4, 5), format="NHWC")
    want = F.vision.warp_perspective(mge.tensor(img), mat, (4, 5), format="NHWC").numpy()
    np.testing.assert_allclose(_values(out), want, rtol=0, atol=0.125 / 2 + 1e-6)


def test_a_quantized_bias_next_to_float_input_refuses():
    # as x + b: the bias was added as its stored integers (x @ w.T + 4 for a value of 1)
    x = mge.tensor([[1.0, 2.0]])
    b = mge.tensor([4], dtype=dtype.qint8(0.25))
    with pytest.raises(TypeError, match=r"mixes a quantized tensor \(qint8\(0.25\)\)"):
        F.linear(x, x, b)


@pytest.mark.parametrize("name", sorted(_DTYPES))
def test_roi_ops_read_quantized_rois_and_images_as_values(name):
    # (the float roi ops are checked against their references in tests/functional; here the
    # property: quantized rois and images give the float ones' result. The rois' stored
    # integers were read as coordinates and batch indices before, and deformable_psroi_pooling
    # refused a quantized image with a ValueError)
    qd, zp, _ = _DTYPES[name]
    scale = dtype.get_scale(qd)
    img_q = mge.tensor(np.arange(2 * 16).reshape(2, 1, 4, 4) % 11 + zp, dtype=qd)
    rois_v = np.array([[1, 0.5, 0.25, 3, 2.5], [0, 1, 1, 2.5, 3]], np.float32) * 4 * scale
    rois_v[:, 0] = [1, 0]
    rois_q = mge.tensor(np.round(rois_v / scale) + zp, dtype=qd)
    img_v = img_q.astype("float32")
    for fn in (lambda x, r: F.vision.roi_align(x, r, (2, 2), spatial_scale=1 / (4 * scale)),
               lambda x, r: F.vision.roi_pooling(x, r, (2, 2), scale=1 / (4 * scale)),
               lambda x, r: F.vision.deformable_psroi_pooling(
                   x, r, F.zeros((2, 2, 1, 1)), True, 1, 2, 2, 2, 1 / (4 * scale))):
        want = fn(img_v, mge.tensor(rois_v)).numpy()
        assert np.abs(want).max() > 0  # (not all zero)
        np.testing.assert_allclose(fn(img_q, rois_q).numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("fn", [F.sigmoid, F.gelu, F.silu, F.softplus, F.relu6, F.leaky_relu,
                                F.hsigmoid, F.hswish])
def test_float_functions_of_a_0d_quantized_tensor(fn):
    # its values were a numpy scalar, which the ATen kernels (CUDA's; the simulated GPU's in
    # the suite, MGE_SIM_CUDA=1) refuse
    q = mge.tensor(np.array(131, np.uint8), dtype=dtype.quint8(0.125, 129))
    out = fn(q)
    assert out.dtype == np.float32 and out.shape == ()
    np.testing.assert_allclose(out.numpy(), fn(mge.tensor(0.25)).numpy(), rtol=1e-6)


def test_dropout_of_a_quantized_tensor_names_its_dtype():
    q, _ = _quantized("quint8")
    with pytest.raises(TypeError, match=r"dropout: expected a float tensor, got dtype "
                                        r"quint8\(0.5, 100\).*astype\('float32'\)"):
        F.nn.dropout(q, 0.5)
