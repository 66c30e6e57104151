"""QuantStub and DequantStub: where a model enters and leaves quantized computation; identities
in float mode, which is the only mode this engine runs."""
from .module import Module

__all__ = ["QuantStub", "DequantStub"]


class QuantStub(Module):
    """Marks the point where quantization would start; returns its input unchanged."""

    def forward(self, inp):
        return inp


class DequantStub(Module):
    """Marks the point where quantization would end; returns its input unchanged."""

    def forward(self, inp):
        return inp
