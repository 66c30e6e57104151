"""Tests of megengine/traced_module/fake_quant.py: the fixed-qparams FakeQuantize against torch's
fake_quantize_per_tensor_affine (values and straight-through gradients) and in a QAT stub."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module.qat as QM
from megengine.autodiff import GradManager
from megengine.core.dtype import _builtin_quant_dtypes, is_dtype_equal, qint8
from megengine.quantization.utils import QuantMode, create_qparams
from megengine.traced_module.fake_quant import FakeQuantize

X = np.array([0.3, -20.0, 1.06, 15.9, 16.2, -0.06, 2.5], np.float32)


@pytest.mark.parametrize("name, mode, zero_point", [
    ("qint8", QuantMode.SYMMERTIC, None), ("quint8", QuantMode.ASYMMERTIC, 100)])
def test_values_and_gradients_are_torchs_fake_quantization(name, mode, zero_point):
    meta = _builtin_quant_dtypes[name]
    fq = FakeQuantize(name)
    fq.set_qparams(create_qparams(mode, None, mge.tensor(0.125),
                                  None if zero_point is None else mge.tensor(zero_point)))
    assert fq.get_qparams().dtype_meta is meta and fq.get_qparams().mode == mode
    x = mge.tensor(X)
    with GradManager().attach(x) as gm:
        y = fq(x)
        gm.backward(y, mge.tensor(np.arange(1, 8, dtype=np.float32)))
    tx = torch.tensor(X, requires_grad=True)
    ty = torch.fake_quantize_per_tensor_affine(tx, 0.125, zero_point or 0, meta.qmin, meta.qmax)
    ty.backward(torch.arange(1, 8, dtype=torch.float32))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


def test_a_qat_stub_quantizes_by_the_set_qparams():
    # what mgeconvert's tests do: a QuantStub whose activation quantizer has fixed qparams
    stub = QM.QuantStub()
    stub.act_fake_quant = FakeQuantize(_builtin_quant_dtypes["qint8"])
    stub.act_fake_quant.set_qparams(create_qparams(
        dtype_meta=_builtin_quant_dtypes["qint8"], scale=mge.tensor(0.25)))
    out = stub(mge.tensor(X))
    # round(x / 0.25) in [-128, 127], times 0.25 (hand-computed)
    np.testing.assert_array_equal(out.numpy(), [0.25, -20.0, 1.0, 16.0, 16.25, 0.0, 2.5])
    assert stub.get_activation_qparams().scale.item() == 0.25
    assert is_dtype_equal(stub.get_activation_dtype(), qint8(0.25))
    stub.act_fake_quant.disable()
    np.testing.assert_array_equal(stub(mge.tensor(X)).numpy(), X)


def test_bad_qparams_are_refused_with_the_quantizer_unchanged():
    fq = FakeQuantize("qint8")
    with pytest.raises(ValueError, match="has no qparams: call set_qparams"):
        fq(mge.tensor(X))
    with pytest.raises(ValueError, match="no scale"):
        fq.set_qparams(create_qparams(dtype_meta="qint8"))
    with pytest.raises(ValueError, match="of dtype .*quint8.*this quantizer's is .*qint8"):
        fq.set_qparams(create_qparams(dtype_meta="quint8", scale=mge.tensor(1.0)))
    assert fq.get_qparams() is None
    with pytest.raises(ValueError, match="the qparams given are of dtype"):
        fq(mge.tensor(X), create_qparams(dtype_meta="quint8", scale=mge.tensor(1.0)))
