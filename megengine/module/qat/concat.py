"""QAT `Concat`: concatenation whose output is fake-quantized."""
from typing import Iterable

from ...core.tensor import Tensor
from .. import concat as Float
from .module import QATModule

__all__ = ["Concat"]


class Concat(Float.Concat, QATModule):
    """``act_fq(concat(inps, axis))``; it has no weight of its own, but upstream's QConfig
    still builds weight observers for it (``with_weight`` stays True, as upstream)."""

    def forward(self, inps: Iterable[Tensor], axis: int = 0):
        return self.apply_quant_activation(super().forward(inps, axis))

    @classmethod
    def from_float_module(cls, float_module: Float.Concat):
        return cls(name=float_module.name)
