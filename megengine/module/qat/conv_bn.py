"""QAT `ConvBn2d` and `ConvBnRelu2d`: conv + batch norm with the norm folded into the
fake-quantized weight (see :class:`~.bn_fold.BnFoldQATModule`)."""
from ... import functional as F
from .. import conv_bn as Float
from .bn_fold import BnFoldQATModule

__all__ = ["ConvBn2d", "ConvBnRelu2d"]


class _ConvBnActivation2d(Float._ConvBnActivation2d, BnFoldQATModule):
    def _layer(self):
        return self.conv

    def _fold_weight(self, weight, scale):
        if self.conv.groups == 1:  # (out, in, kh, kw)
            return weight * scale.reshape(-1, 1, 1, 1)
        return weight * scale.reshape(self.conv.groups, -1, 1, 1, 1)  # (g, out/g, in/g, ..)

    def _run(self, inp, weight, bias):
        return self.conv.calc_conv(inp, weight, bias)

    def calc_conv_bn_qat(self, inp, approx=True):
        """The folded conv + bn (upstream's name; see :meth:`calc_bn_fold_qat`)."""
        return self.calc_bn_fold_qat(inp, approx)

    @classmethod
    def from_float_module(cls, float_module: Float._ConvBnActivation2d):
        conv, bn = float_module.conv, float_module.bn
        qat_module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.conv_mode, conv.compute_mode, padding_mode=conv.padding_mode,
                         name=float_module.name)
        qat_module.conv.weight = conv.weight
        qat_module.conv.bias = conv.bias
        qat_module.bn = bn
        return qat_module


class ConvBn2d(_ConvBnActivation2d):
    """``act_fq(bn(conv(x)))`` with the BatchNorm folded into the fake-quantized weight."""

    def forward(self, inp):
        return self.apply_quant_activation(self.calc_conv_bn_qat(inp))


class ConvBnRelu2d(_ConvBnActivation2d):
    """``act_fq(relu(bn(conv(x))))`` with the BatchNorm folded into the fake-quantized weight."""

    def forward(self, inp):
        return self.apply_quant_activation(F.relu(self.calc_conv_bn_qat(inp)))
