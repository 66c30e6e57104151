"""Tests of megengine/module/quantized/conv_transpose_bn.py: ConvTransposeBn2d and
ConvTransposeBnRelu2d against the QAT layers (BatchNorm folded with running statistics)."""
import numpy as np
import pytest

from megengine.module import qat as QAT
from megengine.module import quantized as Q
from quantized_oracle import check_against_qat, fixed_qat, quantized_input


@pytest.mark.parametrize("name", ["ConvTransposeBn2d", "ConvTransposeBnRelu2d"])
def test_quantized_conv_transpose_bn_matches_the_qat_layer(name):
    qat = getattr(QAT, name)(3, 4, 3, stride=2)
    rng = np.random.RandomState(4)
    qat.bn.running_mean._reset(rng.randn(1, 4, 1, 1).astype(np.float32) * 0.1)
    qat.bn.running_var._reset(rng.rand(1, 4, 1, 1).astype(np.float32) + 0.5)
    qat = fixed_qat(qat)
    q = getattr(Q, name).from_qat_module(qat)
    q.eval()
    check_against_qat(qat, q, quantized_input((2, 3, 4, 4)))
