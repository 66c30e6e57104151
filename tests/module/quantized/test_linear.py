"""Tests of megengine/module/quantized/linear.py and linear_bn.py: quantized Linear, LinearRelu,
LinearBn1d and LinearBnRelu1d against the QAT layers they come from."""
import numpy as np
import pytest

from megengine.module import qat as QAT
from megengine.module import quantized as Q
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
