"""QAT `ConvTransposeBn2d` and `ConvTransposeBnRelu2d`: transposed conv + batch norm with the
norm folded into the fake-quantized weight (see :class:`~.bn_fold.BnFoldQATModule`)."""
from ... import functional as F
from .. import conv_transpose_bn as Float
from .bn_fold import BnFoldQATModule

__all__ = ["ConvTransposeBn2d", "ConvTransposeBnRelu2d"]


class _ConvTransposeBnActivation2d(Float._ConvTransposeBnActivation2d, BnFoldQATModule):
    def _layer(self):
        return self.conv_transpose2d

    def _fold_weight(self, weight, scale):
        groups = self.conv_transpose2d.groups
        if groups == 1:  # (in, out, kh, kw): output channels are the second axis
            return weight * scale.reshape(1, -1, 1, 1)
        return weight * scale.reshape(groups, 1, -1, 1, 1)  # (g, in/g, out/g, kh, kw)

    def _run(self, inp, weight, bias):
        return self.conv_transpose2d.calc_conv_transpose2d(inp, weight, bias)

    def calc_conv_transpose2d_bn_qat(self, inp, approx=True):
        """The folded transposed conv + bn (see :meth:`calc_bn_fold_qat`)."""
        return self.calc_bn_fold_qat(inp, approx)

    @classmethod
    def from_float_module(cls, float_module: Float._ConvTransposeBnActivation2d):
        conv, bn = float_module.conv_transpose2d, float_module.bn
        qat_module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.output_padding, conv.dilation, conv.groups,
                         conv.bias is not None, conv.conv_mode, conv.compute_mode,
                         name=float_module.name)
        qat_module.conv_transpose2d.weight = conv.weight
        qat_module.conv_transpose2d.bias = conv.bias
        qat_module.bn = bn
        return qat_module


class ConvTransposeBn2d(_ConvTransposeBnActivation2d):
    """``act_fq(bn(conv_transpose2d(x)))`` with the BatchNorm folded into the weight."""

    def forward(self, inp):
        return self.apply_quant_activation(self.calc_conv_transpose2d_bn_qat(inp))


class ConvTransposeBnRelu2d(_ConvTransposeBnActivation2d):
    """``act_fq(relu(bn(conv_transpose2d(x))))`` with the BatchNorm folded into the weight."""

    def forward(self, inp):
        return self.apply_quant_activation(F.relu(self.calc_conv_transpose2d_bn_qat(inp)))
