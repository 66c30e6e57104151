"""Quantized `Linear` and `LinearRelu`: a quantized input times an integer weight plus a qint32
bias, requantized to the output dtype."""
from ...core.tensor import Parameter
from ...functional.quantized import _linear
from ..qat import linear as QAT
from .conv import bias_as_qint32, quantized_weight
from .module import QuantizedModule, output_dtype_of

__all__ = ["Linear", "LinearRelu"]


class Linear(QuantizedModule):
    """Quantized :class:`~.qat.Linear`: ``inp @ weight.T + bias`` with int32 accumulation,
    output in ``dtype``. ``weight`` (out, in) holds integers; ``bias`` stays float and is
    quantized to qint32 (scale input scale * weight scale) at each call."""

    _nonlinear_mode = "identity"

    def __init__(self, dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.weight = None
        self.bias = None
        self.output_dtype = dtype

    def forward(self, inp):
        bias = None if self.bias is None else bias_as_qint32(self.bias, inp, self.weight)
        return _linear(inp, self.weight, bias, self.output_dtype, self._nonlinear_mode)

    @classmethod
    def from_qat_module(cls, qat_module: QAT.Linear):
        what = cls.__name__
        qmod = cls(dtype=output_dtype_of(qat_module, what), name=qat_module.name)
        qmod.weight = quantized_weight(qat_module, qat_module.weight, what)
        if qat_module.bias is not None:
            qmod.bias = Parameter(qat_module.bias.numpy())
        return qmod


class LinearRelu(Linear):
    """Quantized :class:`~.qat.LinearRelu` (relu fused before requantization)."""

    _nonlinear_mode = "relu"
