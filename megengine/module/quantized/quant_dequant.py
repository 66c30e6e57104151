"""Quantized `QuantStub` and `DequantStub`: where a network's values become integers, and
where they become float again."""
from ..qat import quant_dequant as QAT
from .module import QuantizedModule, output_dtype_of

__all__ = ["QuantStub", "DequantStub"]


class QuantStub(QuantizedModule):
    """Quantizes a float input to ``dtype`` (round half away from zero, saturate)."""

    def __init__(self, dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.output_dtype = dtype

    def forward(self, inp):
        return inp.astype(self.output_dtype)

    @classmethod
    def from_qat_module(cls, qat_module: QAT.QuantStub):
        return cls(output_dtype_of(qat_module, "QuantStub"), name=qat_module.name)


class DequantStub(QuantizedModule):
    """Dequantizes its input to float32 (``(q - zero_point) * scale``)."""

    def forward(self, inp):
        return inp.astype("float32")

    @classmethod
    def from_qat_module(cls, qat_module: QAT.DequantStub):
        return cls(name=qat_module.name)
