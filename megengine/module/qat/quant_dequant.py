"""QAT `QuantStub` and `DequantStub`: where the fake-quantized part of a network starts and ends."""
from .. import quant_dequant as Float
from .module import QATModule

__all__ = ["QuantStub", "DequantStub"]


class QuantStub(Float.QuantStub, QATModule):
    """Fake-quantizes the network's input with the activation observer and fake quantizer."""

    with_weight = False

    def forward(self, inp):
        return self.apply_quant_activation(inp)

    @classmethod
    def from_float_module(cls, float_module: Float.QuantStub):
        return cls(name=float_module.name)


class DequantStub(Float.DequantStub, QATModule):
    """Returns its input: in float, leaving the quantized part needs no computation."""

    with_weight = False
    with_act = False

    def forward(self, inp):
        return inp

    @classmethod
    def from_float_module(cls, float_module: Float.DequantStub):
        return cls(name=float_module.name)
