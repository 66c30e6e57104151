"""Quantized `Concat`: each input requantized to the output dtype, then joined."""
from typing import Iterable

from ... import functional as F
from ...core.tensor import Tensor
from ..qat import concat as QAT
from .module import QuantizedModule, output_dtype_of

__all__ = ["Concat"]


class Concat(QuantizedModule):
    """``concat([x.astype(dtype) for x in inps], axis)``: inputs of different scales meet in
    the output's."""

    def __init__(self, dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.output_dtype = dtype

    def forward(self, inps: Iterable[Tensor], axis: int = 0):
        return F.concat([x.astype(self.output_dtype) for x in inps], axis)

    @classmethod
    def from_qat_module(cls, qat_module: QAT.Concat):
        return cls(output_dtype_of(qat_module, "Concat"), name=qat_module.name)
