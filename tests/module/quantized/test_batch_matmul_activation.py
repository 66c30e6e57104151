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
    x = quantized_input((3, 4, 6))
    out = check_against_qat(qat, q, x)
    assert out.shape == (3, 5, 6)
    np.testing.assert_array_equal(q.calc_bmm_quantized(x[1]).astype("float32").numpy(),
                                  out.astype("float32").numpy())  # (upstream's name for it)


@pytest.mark.parametrize("bias", [True, False])
def test_quantized_batch_matmul_keeps_upstreams_shapes(bias):
    # upstream 1.13's from_qat_module (measured): the integer weight (batch, out, in, 1, 1), the
    # bias (1, out, 1, 1), zeros where the QAT layer has none; this fork kept the float shapes
    # (batch, out, in) and (out,), so state dicts of quantized networks did not load across
    qat = QAT.BatchMatMulActivation(2, 3, 4, bias=bias, nonlinear_mode="relu")
    if bias:
        qat.bias._reset(np.random.RandomState(3).randn(4).astype(np.float32))
    qat = fixed_qat(qat)
    q = Q.BatchMatMulActivation.from_qat_module(qat)
    q.eval()
    assert q.weight.shape == (2, 4, 3, 1, 1) and q.bias.shape == (1, 4, 1, 1)
    assert q.weight.dtype == qat.get_weight_dtype()
    want = qat.bias.numpy() if bias else np.zeros(4, np.float32)
    np.testing.assert_array_equal(q.bias.numpy().reshape(-1), want)
    x = quantized_input((2, 3, 5))
    out = check_against_qat(qat, q, x)
    # the state dict loads into another converted layer (strict) and gives the same outputs
    other = Q.BatchMatMulActivation.from_qat_module(fixed_qat(QAT.BatchMatMulActivation(
        2, 3, 4, bias=bias, nonlinear_mode="relu")))
    other.eval()
    other.load_state_dict(q.state_dict(), strict=True)
    np.testing.assert_array_equal(other(x[1]).numpy(), out.numpy())
    # and into a layer made directly (the float shapes), and back
    made = Q.BatchMatMulActivation(2, 3, 4, nonlinear_mode="relu", dtype=q.output_dtype)
    made.eval()
    made.load_state_dict(q.state_dict(), strict=True)
    np.testing.assert_array_equal(made(x[1]).numpy(), out.numpy())
    other.load_state_dict(made.state_dict(), strict=True)
    np.testing.assert_array_equal(other(x[1]).numpy(), out.numpy())
