"""Quantized `Elemwise`: an element-wise operator on quantized tensors (upstream's "Q" modes)."""
from ...functional.quantized import _elemwise_multi_type
from ..qat import elemwise as QAT
from .module import QuantizedModule, output_dtype_of

__all__ = ["Elemwise"]


class Elemwise(QuantizedModule):
    """``method`` ("ADD", "FUSE_ADD_RELU", "MUL", ...) on the dequantized inputs, quantized
    to ``dtype`` (see :func:`~.functional.quantized._elemwise_multi_type`)."""

    def __init__(self, method, dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.method = "Q" + str(getattr(method, "name", method)).upper()
        self.output_dtype = dtype

    def forward(self, *inps):
        return _elemwise_multi_type(*inps, mode=self.method, dtype=self.output_dtype)

    @classmethod
    def from_qat_module(cls, qat_module: QAT.Elemwise):
        return cls(qat_module.method, output_dtype_of(qat_module, "Elemwise"),
                   name=qat_module.name)
