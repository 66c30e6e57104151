"""`QuantizedModule`: the base of the quantized (integer) inference layers that
:func:`~.quantization.quantize` makes from QAT layers."""
from abc import abstractmethod

from ...core import dtype as _qd
from ..module import Module

__all__ = ["QuantizedModule"]


class QuantizedModule(Module):
    """An inference-only layer computing on quantized tensors (integers with a scale, see
    ``megengine.core.tensor.dtype``). Made from a QAT layer with :meth:`from_qat_module`;
    calling one in training mode is an error (there is no gradient through integers)."""

    _quantized_input = False  # a layer with integer weights: its input must be quantized

    def __call__(self, *inputs, **kwargs):
        if self.training:
            raise ValueError(f"{type(self).__name__}: quantized modules only support inference; "
                             "call .eval() on the network first")
        if self._quantized_input and inputs and hasattr(inputs[0], "dtype") \
                and not _qd.is_quantize(inputs[0].dtype):
            raise TypeError(f"{type(self).__name__}: a quantized layer takes a quantized input, "
                            f"got {_qd.dtype_name(inputs[0].dtype)}; quantize it first (a "
                            "QuantStub before the layer, which quantize() converts, or "
                            "x.astype(megengine.core.tensor.dtype.qint8(scale)))")
        return super().__call__(*inputs, **kwargs)

    def __repr__(self):
        return "Quantized." + super().__repr__()

    @classmethod
    @abstractmethod
    def from_qat_module(cls, qat_module):
        """The quantized layer computing what ``qat_module`` computes in fake quantization:
        its weight as integers of the weight observer's dtype, its output dtype from the
        activation observer."""


def output_dtype_of(qat_module, what):
    """The QAT layer's activation dtype, or an error naming the layer when it has none."""
    dtype = qat_module.get_activation_dtype()
    if dtype is None:
        raise ValueError(f"{what}.from_qat_module: {type(qat_module).__name__} has no "
                         "activation observer or fake quantizer (set a qconfig with "
                         "quantize_qat / propagate_qconfig first)")
    return dtype


def weight_dtype_of(qat_module, what):
    """The QAT layer's weight dtype, or an error naming the layer when it has none."""
    dtype = qat_module.get_weight_dtype()
    if dtype is None:
        raise ValueError(f"{what}.from_qat_module: {type(qat_module).__name__} has no weight "
                         "observer or fake quantizer (set a qconfig first)")
    return dtype
