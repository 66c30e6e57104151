"""Tests of megengine/module/quantized/batch_matmul_activation.py against the QAT layer."""
import numpy as np
import pytest

from megengine.module import qat as QAT
from megengine.module import quantized as Q
from quantized_oracle import check_against_qat, fixed_qat, quantized_input


@pytest.mark.parametrize("mode", ["identity", "relu"])
def test_quantized_batch_matmul_matches_the_qat_layer(mode):
    qat = QAT.BatchMatMulActivation(3, 4, 5, bias=True, nonlinear_mode=mode)
    qat.bias._reset(np.random.RandomState(7).randn(5).astype(np.float32))
    qat = fixed_qat(qat)
    q = Q.BatchMatMulActivation.from_qat_module(qat)
    q.eval()
    out = check_against_qat(qat, q, quantized_input((3, 4, 6)))
    assert out.shape == (3, 5, 6)
