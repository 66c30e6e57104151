"""Tests of megengine/module/quantized/quant_dequant.py and module.py: the stubs, and the base
class's inference-only rule and repr."""
import numpy as np
import pytest

import megengine as mge
from megengine.core.tensor import dtype
from megengine.module import qat as QAT
from megengine.module import quantized as Q
from quantized_oracle import fixed_qat


def test_quant_stub_quantizes_like_the_qat_stub_fake_quantizes():
    qat = fixed_qat(QAT.QuantStub())
    q = Q.QuantStub.from_qat_module(qat)
    q.eval()
    x = mge.tensor(np.random.RandomState(0).randn(4, 5).astype(np.float32) * 3)
    out = q(x)
    assert dtype.is_dtype_equal(out.dtype, qat.get_activation_dtype())
    np.testing.assert_array_equal(out.astype("float32").numpy(), qat(x).numpy())


def test_dequant_stub_gives_the_real_values():
    q = Q.DequantStub.from_qat_module(QAT.DequantStub())
    q.eval()
    ints = np.array([[0, 2, 255]], np.uint8)
    out = q(mge.tensor(ints, dtype=dtype.quint8(0.5, 2)))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), (ints.astype(np.float32) - 2) * 0.5)


def test_quantized_modules_run_in_eval_only_and_say_so():
    q = Q.QuantStub(dtype.qint8(0.1))
    assert repr(q) == "Quantized.QuantStub()"
    with pytest.raises(ValueError, match="only support inference.*eval"):
        q(mge.tensor([1.0]))
    q.eval()
    np.testing.assert_array_equal(q(mge.tensor([1.0])).numpy(), [10])
