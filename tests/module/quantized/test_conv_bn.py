"""Tests of megengine/module/quantized/conv_bn.py: ConvBn2d and ConvBnRelu2d fold the BatchNorm's
running statistics into the integer weight and compute what the QAT layer computes in eval."""
import numpy as np
import pytest

from megengine.module import qat as QAT
from megengine.module import quantized as Q
from quantized_oracle import check_against_qat, fixed_qat, quantized_input


def _with_statistics(qat):
    rng = np.random.RandomState(3)
    c = qat.bn.num_features
    qat.bn.running_mean._reset(rng.randn(1, c, 1, 1).astype(np.float32) * 0.1)
    qat.bn.running_var._reset(rng.rand(1, c, 1, 1).astype(np.float32) + 0.5)
    qat.bn.weight._reset(rng.rand(1, c, 1, 1).astype(np.float32) + 0.5)
    qat.bn.bias._reset(rng.randn(1, c, 1, 1).astype(np.float32) * 0.1)
    return qat


@pytest.mark.parametrize("name", ["ConvBn2d", "ConvBnRelu2d"])
def test_quantized_conv_bn_matches_the_qat_layer(name):
    qat = fixed_qat(_with_statistics(getattr(QAT, name)(3, 4, 3, padding=1)))
    q = getattr(Q, name).from_qat_module(qat)
    q.eval()
    check_against_qat(qat, q, quantized_input((2, 3, 6, 6)))
    assert q.bias.dtype == np.float32 and q.bias.shape == (1, 4, 1, 1)
