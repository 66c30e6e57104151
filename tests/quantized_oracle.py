"""The QAT layer as the oracle of a quantized layer (shared by tests/module/quantized/): a QAT
layer with fixed observer ranges, run in evaluation on a fake-quantized input, against the
quantized layer `from_qat_module` makes, run on the same input as integers."""
import numpy as np

import megengine as mge
from megengine.core.tensor import dtype
from megengine.quantization import min_max_fakequant_qconfig
from megengine.quantization.quantize import disable_observer
from megengine.quantization.utils import QuantMode, create_qparams

IN_SCALE = np.float32(0.04)


def fixed_qat(qat_module, weight_range=(-1.5, 1.2), act_range=(-3.0, 4.0)):
    """``qat_module`` with min/max observers fixed at the given ranges, in evaluation."""
    qat_module.set_qconfig(min_max_fakequant_qconfig)
    for observer, (lo, hi) in ((qat_module.weight_observer, weight_range),
                               (qat_module.act_observer, act_range)):
        if observer is not None:
            observer.min_val._reset(np.float32(lo))
            observer.max_val._reset(np.float32(hi))
    qat_module.eval()
    disable_observer(qat_module)
    return qat_module


def quantized_input(shape, seed=0, scale=IN_SCALE):
    """(float tensor on the qint8 grid, carrying its qparams as a QAT layer's input does; the
    same values as a qint8 tensor)."""
    rng = np.random.RandomState(seed)
    ints = rng.randint(-100, 100, shape).astype(np.int8)
    x = mge.tensor(ints.astype(np.float32) * scale)
    x.qparams.update(create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(scale)))
    return x, mge.tensor(ints, dtype=dtype.qint8(scale))


class ConcatAlong:
    """A (QAT or quantized) Concat layer called as :func:`check_against_qat` calls layers: the
    inputs as arguments, concatenated along ``axis``."""

    def __init__(self, layer, axis):
        self.layer, self.axis = layer, axis

    def __call__(self, *inps):
        return self.layer(list(inps), axis=self.axis)

    def get_activation_dtype(self):
        return self.layer.get_activation_dtype()


def check_against_qat(qat_module, q_module, *inputs):
    """The quantized layer's output, dequantized, equals the QAT layer's (fake-quantized) output
    within one step of the output scale, and mostly exactly; returns the quantized output."""
    floats = [f for f, _ in inputs]
    ints = [q for _, q in inputs]
    expected = qat_module(*floats).numpy()
    out = q_module(*ints)
    assert dtype.is_dtype_equal(out.dtype, qat_module.get_activation_dtype())
    step = dtype.get_scale(out.dtype)
    got = out.astype("float32").numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=step * 1.001)
    assert np.mean(np.abs(got - expected) > step * 1e-3) < 0.05
    return out
