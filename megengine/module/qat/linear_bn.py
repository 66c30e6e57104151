"""QAT `LinearBn1d` and `LinearBnRelu1d`: linear + batch norm with the norm folded into the
fake-quantized weight (see :class:`~.bn_fold.BnFoldQATModule`)."""
from ... import functional as F
from .. import linear_bn as Float
from .bn_fold import BnFoldQATModule

__all__ = ["LinearBn1d", "LinearBnRelu1d"]


class _LinearBnActivation1d(Float._LinearBnActivation1d, BnFoldQATModule):
    def _layer(self):
        return self.linear

    def _fold_weight(self, weight, scale):
        return weight * scale.reshape(-1, 1)  # (out, in): one factor per output row

    def _bias_shape(self):
        return (self.bn.num_features,)

    def _run(self, inp, weight, bias):
        return self.linear.calc_linear(inp, weight, bias)

    def calc_linear_bn_qat(self, inp, approx=True):
        """The folded linear + bn (upstream's name; see :meth:`calc_bn_fold_qat`)."""
        return self.calc_bn_fold_qat(inp, approx)

    @classmethod
    def from_float_module(cls, float_module: Float._LinearBnActivation1d):
        linear, bn = float_module.linear, float_module.bn
        qat_module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                         linear.compute_mode, name=float_module.name)
        qat_module.linear.weight = linear.weight
        qat_module.linear.bias = linear.bias
        # (the float layer's unused extra ``bias`` Parameter is not shared: the QAT layer keeps
        # the zeros its constructor made, as upstream's, also in its state dict)
        qat_module.bn = bn
        return qat_module


class LinearBn1d(_LinearBnActivation1d):
    """``act_fq(bn(linear(x)))`` with the BatchNorm folded into the fake-quantized weight."""

    def forward(self, inp):
        return self.apply_quant_activation(self.calc_linear_bn_qat(inp))


class LinearBnRelu1d(_LinearBnActivation1d):
    """``act_fq(relu(bn(linear(x))))`` with the BatchNorm folded into the fake-quantized weight."""

    def forward(self, inp):
        return self.apply_quant_activation(F.relu(self.calc_linear_bn_qat(inp)))
