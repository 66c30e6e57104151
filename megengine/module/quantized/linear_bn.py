"""Quantized `LinearBn1d` and `LinearBnRelu1d`: the BatchNorm folded (running statistics) into
an integer linear weight and a bias."""
from ..qat import linear_bn as QAT
from .conv import load_folded_bn
from .linear import Linear
from .module import output_dtype_of

__all__ = ["LinearBn1d", "LinearBnRelu1d"]


class _LinearBnActivation1d(Linear):
    @classmethod
    def from_qat_module(cls, qat_module: QAT._LinearBnActivation1d):
        what = cls.__name__
        qmod = cls(dtype=output_dtype_of(qat_module, what), name=qat_module.name)
        return load_folded_bn(qmod, qat_module, what, bias_shape=(-1,))


class LinearBn1d(_LinearBnActivation1d):
    """Quantized :class:`~.qat.LinearBn1d`."""

    _nonlinear_mode = "identity"


class LinearBnRelu1d(_LinearBnActivation1d):
    """Quantized :class:`~.qat.LinearBnRelu1d` (relu fused before requantization)."""

    _nonlinear_mode = "relu"
