"""Tests of megengine/module/quantized/conv.py: quantized Conv2d, ConvRelu2d, ConvTranspose2d and
ConvTransposeRelu2d against the QAT layers they come from (tests/quantized_oracle.py)."""
import numpy as np
import pytest

from megengine.core.tensor import dtype
from megengine.module import qat as QAT
from megengine.module import quantized as Q
from quantized_oracle import check_against_qat, fixed_qat, quantized_input


@pytest.mark.parametrize("name", ["Conv2d", "ConvRelu2d"])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, groups=2, bias=False),
                                dict(padding=1, padding_mode="reflect")])
def test_quantized_conv_matches_the_qat_conv(name, kw):
    qat = fixed_qat(getattr(QAT, name)(4, 6, 3, **kw))
    if qat.bias is not None:
        qat.bias._reset(np.random.RandomState(1).randn(*qat.bias.shape).astype(np.float32))
    q = getattr(Q, name).from_qat_module(qat)
    q.eval()
    assert dtype.is_dtype_equal(q.weight.dtype, qat.get_weight_dtype())
    out = check_against_qat(qat, q, quantized_input((2, 4, 7, 7)))
    if name == "ConvRelu2d":
        assert out.numpy().min() >= 0


@pytest.mark.parametrize("name", ["ConvTranspose2d", "ConvTransposeRelu2d"])
def test_quantized_conv_transpose_matches_the_qat_layer(name):
    qat = fixed_qat(getattr(QAT, name)(4, 3, 3, stride=2, padding=1, output_padding=1))
    qat.bias._reset(np.random.RandomState(2).randn(*qat.bias.shape).astype(np.float32))
    q = getattr(Q, name).from_qat_module(qat)
    q.eval()
    check_against_qat(qat, q, quantized_input((2, 4, 4, 4)))


def test_the_repr_says_quantized_and_keeps_the_conv_settings():
    q = Q.ConvRelu2d.from_qat_module(fixed_qat(QAT.ConvRelu2d(3, 3, 3, stride=2)))
    assert repr(q) == "Quantized.ConvRelu2d(3, 3, kernel_size=(3, 3), stride=(2, 2))"


@pytest.mark.parametrize("name, hook", [("Conv2d", "calc_conv_quantized"),
                                        ("ConvTranspose2d", "calc_conv_transpose2d_quantized")])
def test_calc_quantized_hooks_take_the_nonlinearity(name, hook):
    # upstream 1.13's quantized Conv2d / ConvTranspose2d compute forward as
    # calc_*_quantized(inp, nonlinear_mode="identity") and their Relu variants with "relu":
    # the hook gives the plain layer's output, and with "relu" that output clipped at zero
    qat = fixed_qat(getattr(QAT, name)(4, 3, 3, padding=1))
    qat.bias._reset(np.random.RandomState(3).randn(*qat.bias.shape).astype(np.float32))
    q = getattr(Q, name).from_qat_module(qat)
    q.eval()
    _, x = quantized_input((2, 4, 5, 5))
    out = q(x)
    plain = getattr(q, hook)(x, nonlinear_mode="identity")
    relu = getattr(q, hook)(x, nonlinear_mode="relu")
    assert dtype.is_dtype_equal(plain.dtype, out.dtype) and dtype.is_dtype_equal(relu.dtype,
                                                                                out.dtype)
    np.testing.assert_array_equal(plain.numpy(), out.numpy())
    np.testing.assert_array_equal(relu.numpy(), np.maximum(out.numpy(), 0))
    assert (out.numpy() < 0).any()  # (the relu had something to clip)
