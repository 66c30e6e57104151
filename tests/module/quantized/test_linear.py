"""Tests of megengine/module/quantized/linear.py and linear_bn.py: quantized Linear, LinearRelu,
LinearBn1d and LinearBnRelu1d against the QAT layers they come from, against upstream's integer
computation, and traced and dumped as upstream's operators."""
import io
import json

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.utils.comp_graph_tools as cgtools
from megengine.core.tensor import dtype
from megengine.core.tensor import megbrain_graph as G
from megengine.jit import trace
from megengine.module import qat as QAT
from megengine.module import quantized as Q
from megengine.quantization.quantize import quantize, quantize_qat
from megengine.utils.comp_graph_tools import GraphInference
from quantized_oracle import check_against_qat, fixed_qat, quantized_input


@pytest.mark.parametrize("name", ["Linear", "LinearRelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_quantized_linear_matches_the_qat_linear(name, bias):
    qat = fixed_qat(getattr(QAT, name)(12, 5, bias=bias))
    if bias:
        qat.bias._reset(np.random.RandomState(5).randn(5).astype(np.float32))
    q = getattr(Q, name).from_qat_module(qat)
    q.eval()
    check_against_qat(qat, q, quantized_input((4, 12)))
    assert repr(q) == f"Quantized.{name}()"  # upstream's: not a float Linear underneath


def test_calc_linear_quantized_takes_the_nonlinear_mode_as_upstreams():
    qat = fixed_qat(QAT.Linear(12, 5))
    qat.bias._reset(np.random.RandomState(5).randn(5).astype(np.float32))
    plain, fused = Q.Linear.from_qat_module(qat), Q.LinearRelu.from_qat_module(qat)
    plain.eval()
    fused.eval()
    _, x = quantized_input((4, 12))
    relu = fused(x).astype("float32").numpy()
    assert (relu == 0).any() and (relu > 0).any()
    def floats(t):
        return t.astype("float32").numpy()

    np.testing.assert_array_equal(floats(plain.calc_linear_quantized(x, "relu")), relu)
    np.testing.assert_array_equal(floats(plain.calc_linear_quantized(x)), floats(plain(x)))
    with pytest.raises(ValueError, match="'identity' or 'relu', got 'sigmoid'"):
        plain.calc_linear_quantized(x, "sigmoid")


@pytest.mark.parametrize("name", ["LinearBn1d", "LinearBnRelu1d"])
def test_quantized_linear_bn_matches_the_qat_layer(name):
    qat = getattr(QAT, name)(6, 4)
    rng = np.random.RandomState(6)
    qat.bn.running_mean._reset(rng.randn(*qat.bn.running_mean.shape).astype(np.float32) * 0.1)
    qat.bn.running_var._reset(rng.rand(*qat.bn.running_var.shape).astype(np.float32) + 0.5)
    qat = fixed_qat(qat)
    q = getattr(Q, name).from_qat_module(qat)
    q.eval()
    check_against_qat(qat, q, quantized_input((5, 6)))


def test_a_weight_below_its_range_is_minus_127_in_qat_but_minus_128_quantized():
    # as upstream 1.13 (docs/api/quantization.rst): the QAT layer fake-quantizes the weight to
    # qint8_narrow, [-127, 127], while from_qat_module casts it to qint8, which saturates at
    # -128; above the range both give 127
    qat = fixed_qat(QAT.Linear(3, 2, bias=False), weight_range=(-0.2, 0.5))
    qat.weight._reset(np.array([[-1.0, 0.3, 0.8], [0.1, -0.1, 0.0]], np.float32))
    scale = 0.5 / 127  # symmetric: max(|min|, |max|) / 127
    assert dtype.get_scale(qat.get_weight_dtype()) == pytest.approx(scale, rel=1e-6)
    # in steps: -1.0 / scale = -254 (clipped), 0.3 / scale = 76.2, 0.8 / scale = 203.2 (clipped)
    fake = qat.apply_quant_weight(qat.weight).numpy() / scale
    np.testing.assert_allclose(fake, [[-127, 76, 127], [25, -25, 0]], rtol=0, atol=1e-4)
    q = Q.Linear.from_qat_module(qat)
    np.testing.assert_array_equal(q.weight.numpy(), [[-128, 76, 127], [25, -25, 0]])


def _half_away(v):
    return np.trunc(v + np.copysign(0.5, v))


def _quantized_linear(name, rng, n_in=300, n_out=7):
    """A quantized ``name`` layer (from a QAT layer with fixed ranges) with a random bias."""
    qat = fixed_qat(getattr(QAT, name)(n_in, n_out))
    qat.bias._reset(rng.randn(n_out).astype(np.float32))
    q = getattr(Q, name).from_qat_module(qat)
    q.eval()
    return q


@pytest.mark.parametrize("name", ["Linear", "LinearRelu"])
def test_quantized_linear_is_upstreams_integer_linear_then_typecvt(name):
    # upstream: F.linear of the qint8 tensors (the int32 accumulator of scale sx * sw, plus the
    # bias quantized to it), then astype(qint8): acc * scale in float32 / output scale,
    # rounded half away from zero, saturated; LinearRelu clamps the accumulator at 0 first
    rng = np.random.RandomState(3)
    q = _quantized_linear(name, rng)
    _, qx = quantized_input((5, 300), seed=4)
    sx, sw = dtype.get_scale(qx.dtype), dtype.get_scale(q.weight.dtype)
    s_acc = np.float32(sx) * np.float32(sw)
    bias = _half_away(q.bias.numpy() / s_acc).astype(np.int64)
    acc = qx.numpy().astype(np.int64) @ q.weight.numpy().astype(np.int64).T + bias
    if name == "LinearRelu":
        acc = np.maximum(acc, 0)
    s_out = np.float32(dtype.get_scale(q.output_dtype))
    want = np.clip(_half_away((acc.astype(np.float32) * s_acc) / s_out), -128, 127)
    out = q(qx)
    assert dtype.is_dtype_equal(out.dtype, q.output_dtype)
    np.testing.assert_array_equal(out.numpy(), want)
    # the same integers as the exact ConvBias kernel (a 1x1 convolution)
    conv = F.quantized.conv_bias_activation(
        qx.reshape(5, 300, 1, 1), q.weight.reshape(7, 300, 1, 1),
        q.bias.astype(dtype.qint32(float(s_acc))).reshape(1, 7, 1, 1), dtype=q.output_dtype,
        nonlinear_mode="relu" if name == "LinearRelu" else "identity")
    np.testing.assert_array_equal(conv.numpy().reshape(5, 7), want)


@pytest.mark.parametrize("user_name", [None, "user-linear"])
def test_traced_quantized_linear_dumps_upstreams_matrixmul_add_typecvt(user_name):
    # upstream's test_dump_naming (test_quantized_module_auto_naming / _user_naming / _param):
    # the quantized Linear is a MatrixMul (qint8 x qint8 -> qint32, the weight transposed by
    # its parameter), the bias ADD and a TypeCvt, named after the module; its bias cast to
    # qint32 is a constant of the graph (upstream folds it)
    class Simple(M.Module):
        def __init__(self):
            super().__init__(name="simple")
            self.quant = M.QuantStub()
            self.linear = M.Linear(3, 3, bias=True, name=user_name)
            self.linear.weight.name = "user-weight"
            self.dequant = M.DequantStub()

        def forward(self, x):
            return self.dequant(self.linear(self.quant(x)))

    m = Simple()
    quantize_qat(m)
    quantize(m)
    m.eval()
    x = mge.tensor(np.random.RandomState(0).randn(2, 3).astype(np.float32))
    traced = trace(m, symbolic=True, capture_as_const=True)
    eager = traced(x).numpy()
    file = io.BytesIO()
    traced.dump(file, optimize_for_inference=False, arg_names=("x",), keep_opr_name=True,
                keep_var_name=2)
    file.seek(0)
    ops = cgtools.get_oprs_seq(G.load_graph(file).output_vars_list)
    lin = "simple." + (user_name or "linear")
    assert [(op.name, op.type) for op in ops] == [
        ("x", "Host2DeviceCopy"), ("simple.quant.TypeCvt", "TypeCvt"),
        (f"{lin}.MatrixMul", "MatrixMul"), (f"{lin}.ADD", "Elemwise"),
        (f"{lin}.TypeCvt", "TypeCvt"), ("simple.dequant.TypeCvt", "TypeCvt")]
    matmul = ops[2]
    if user_name is None:  # (upstream's test names the weight of an unnamed layer)
        assert [v.name for v in matmul.inputs] == ["simple.quant.TypeCvt",
                                                   "simple.linear.user-weight"]
    assert json.loads(matmul.params)["transposeB"] is True
    assert dtype.is_dtype_equal(matmul.outputs[0].dtype, dtype.qint32(
        float(np.float32(dtype.get_scale(matmul.inputs[0].dtype))
              * np.float32(dtype.get_scale(matmul.inputs[1].dtype)))))
    file.seek(0)
    got = list(GraphInference(file).run(x.numpy()).values())[0]
    np.testing.assert_array_equal(got, eager)
    np.testing.assert_array_equal(eager, m(x).numpy())


@pytest.mark.parametrize("make, shape", [
    (lambda: QAT.Linear(4, 3), (2, 4)), (lambda: QAT.Conv2d(1, 2, 1), (1, 1, 2, 2)),
    (lambda: QAT.ConvTranspose2d(1, 2, 1), (1, 1, 2, 2)),
    (lambda: QAT.BatchMatMulActivation(2, 4, 3), (2, 4, 5))])
def test_a_float_input_to_a_quantized_layer_is_refused_with_the_fix(make, shape):
    # it failed deep inside with "get_scale: dtype float32 is not a quantized dtype", naming
    # neither the layer nor a QuantStub
    qat = make()
    q = getattr(Q, type(qat).__name__).from_qat_module(fixed_qat(qat))
    q.eval()
    x = np.random.RandomState(0).rand(*shape).astype(np.float32)
    with pytest.raises(TypeError, match=rf"^{type(q).__name__}: a quantized layer takes a "
                                        r"quantized input, got float32; .*QuantStub"):
        q(mge.tensor(x))
