"""Quantized `Linear` and `LinearRelu`: a quantized input times an integer weight plus a qint32
bias, requantized to the output dtype."""
from ...core.tensor import Parameter
from ...functional.nn import linear, relu
from ..qat import linear as QAT
from .conv import bias_as_qint32, quantized_weight
from .module import QuantizedModule, output_dtype_of

__all__ = ["Linear", "LinearRelu"]


class Linear(QuantizedModule):
    """Quantized :class:`~.qat.Linear`: ``inp @ weight.T + bias`` with int32 accumulation,
    output in ``dtype``. ``weight`` (out, in) holds integers; ``bias`` stays float and is
    quantized to qint32 (scale input scale * weight scale) at each call. Computed as
    upstream's: ``F.linear`` of the quantized tensors (MatrixMul into the qint32 accumulator,
    ADD of the bias; exact integers), then a cast to ``dtype`` (TypeCvt: the integers times
    the float32 ratio of the scales, rounded half away from zero, saturated); ``dtype`` None
    keeps the qint32 accumulator."""

    _quantized_input = True
    _nonlinear_mode = "identity"

    def __init__(self, dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.weight = None
        self.bias = None
        self.output_dtype = dtype

    def calc_linear_quantized(self, inp, nonlinear_mode="identity"):
        """The layer's output for ``inp`` with ``nonlinear_mode`` 'identity' or 'relu'
        (upstream's name; forward passes the layer's own mode)."""
        if nonlinear_mode not in ("identity", "relu"):
            raise ValueError(f"{type(self).__name__}: nonlinear_mode must be 'identity' or "
                             f"'relu', got {nonlinear_mode!r}")
        bias = None if self.bias is None else bias_as_qint32(self.bias, inp, self.weight)
        out = linear(inp, self.weight, bias)
        if nonlinear_mode == "relu":  # (on the integers: exact, before requantization)
            out = relu(out)
        return out if self.output_dtype is None else out.astype(self.output_dtype)

    def forward(self, inp):
        return self.calc_linear_quantized(inp, self._nonlinear_mode)

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
