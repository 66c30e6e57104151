"""QAT `Elemwise`: an element-wise operator whose output is fake-quantized."""
from .. import elemwise as Float
from .module import QATModule

__all__ = ["Elemwise"]


class Elemwise(Float.Elemwise, QATModule):
    """``act_fq(method(*inps))``; it has no weight."""

    with_weight = False

    def forward(self, *inps):
        return self.apply_quant_activation(super().forward(*inps))

    @classmethod
    def from_float_module(cls, float_module: Float.Elemwise):
        return cls(float_module.method, name=float_module.name)
