"""QAT `Conv2d`, `ConvRelu2d`, `ConvTranspose2d` and `ConvTransposeRelu2d`: convolutions whose weight, bias and output are fake-quantized."""
from ... import functional as F
from .. import conv as Float
from .module import QATModule

__all__ = ["Conv2d", "ConvRelu2d", "ConvTranspose2d", "ConvTransposeRelu2d"]


class Conv2d(Float.Conv2d, QATModule):
    """``act_fq(conv2d(x, weight_fq(W), bias_fq(b)))`` (see :class:`~.qat.Linear`)."""

    def calc_conv_qat(self, inp):
        w_qat = self.apply_quant_weight(self.weight)
        b_qat = self.apply_quant_bias(self.bias, inp, w_qat)
        return self.calc_conv(inp, w_qat, b_qat)

    def forward(self, inp):
        return self.apply_quant_activation(self.calc_conv_qat(inp))

    @classmethod
    def from_float_module(cls, float_module: Float.Conv2d):
        qat_module = cls(float_module.in_channels, float_module.out_channels,
                         float_module.kernel_size, float_module.stride, float_module.padding,
                         float_module.dilation, float_module.groups,
                         float_module.bias is not None, float_module.conv_mode,
                         float_module.compute_mode, float_module.padding_mode,
                         name=float_module.name)
        qat_module.weight = float_module.weight
        qat_module.bias = float_module.bias
        return qat_module


class ConvRelu2d(Conv2d):
    """``act_fq(relu(conv2d(x, weight_fq(W), bias_fq(b))))``: the relu runs before the output
    is quantized, as an integer kernel with a fused relu does."""

    def forward(self, inp):
        return self.apply_quant_activation(F.relu(self.calc_conv_qat(inp)))


class ConvTranspose2d(Float.ConvTranspose2d, QATModule):
    """``act_fq(conv_transpose2d(x, weight_fq(W), bias_fq(b)))``."""

    def calc_conv_transpose2d_qat(self, inp):
        w_qat = self.apply_quant_weight(self.weight)
        b_qat = self.apply_quant_bias(self.bias, inp, w_qat)
        return self.calc_conv_transpose2d(inp, w_qat, b_qat)

    def forward(self, inp):
        return self.apply_quant_activation(self.calc_conv_transpose2d_qat(inp))

    @classmethod
    def from_float_module(cls, float_module: Float.ConvTranspose2d):
        qat_module = cls(float_module.in_channels, float_module.out_channels,
                         float_module.kernel_size, float_module.stride, float_module.padding,
                         float_module.output_padding, float_module.dilation,
                         float_module.groups, float_module.bias is not None,
                         float_module.conv_mode, float_module.compute_mode,
                         name=float_module.name)
        qat_module.weight = float_module.weight
        qat_module.bias = float_module.bias
        return qat_module


class ConvTransposeRelu2d(ConvTranspose2d):
    """``act_fq(relu(conv_transpose2d(x, weight_fq(W), bias_fq(b))))``."""

    def forward(self, inp):
        return self.apply_quant_activation(F.relu(self.calc_conv_transpose2d_qat(inp)))
