"""Quantized `LinearBn1d` and `LinearBnRelu1d`: the BatchNorm folded (running statistics) into
an integer linear weight and a bias."""
from ...core.tensor import Parameter
from ..qat import linear_bn as QAT
from .conv import quantized_weight
from .linear import Linear
from .module import output_dtype_of

__all__ = ["LinearBn1d", "LinearBnRelu1d"]


class _LinearBnActivation1d(Linear):
    @classmethod
    def from_qat_module(cls, qat_module: QAT._LinearBnActivation1d):
        what = cls.__name__
        qmod = cls(dtype=output_dtype_of(qat_module, what), name=qat_module.name)
        w_fold, b_fold = qat_module.fold_weight_bias(qat_module.bn.running_mean,
                                                     qat_module.bn.running_var)
        qmod.weight = quantized_weight(qat_module, w_fold, what)
        qmod.bias = Parameter(b_fold.numpy().reshape(-1))
        return qmod


class LinearBn1d(_LinearBnActivation1d):
    """Quantized :class:`~.qat.LinearBn1d`."""

    _nonlinear_mode = "identity"


class LinearBnRelu1d(_LinearBnActivation1d):
    """Quantized :class:`~.qat.LinearBnRelu1d` (relu fused before requantization)."""

    _nonlinear_mode = "relu"
