"""Quantized `ConvBn2d` and `ConvBnRelu2d`: the BatchNorm folded (with its running statistics)
into an integer conv weight and a bias, as the QAT layer computes in evaluation."""
from ..qat import conv_bn as QAT
from .conv import Conv2d, load_folded_bn
from .module import output_dtype_of

__all__ = ["ConvBn2d", "ConvBnRelu2d"]


class _ConvBnActivation2d(Conv2d):
    @classmethod
    def from_qat_module(cls, qat_module: QAT._ConvBnActivation2d):
        what = cls.__name__
        conv = qat_module.conv
        qconv = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.conv_mode, conv.compute_mode,
                    dtype=output_dtype_of(qat_module, what), padding_mode=conv.padding_mode,
                    name=qat_module.name)
        return load_folded_bn(qconv, qat_module, what)


class ConvBn2d(_ConvBnActivation2d):
    """Quantized :class:`~.qat.ConvBn2d`."""

    _nonlinear_mode = "identity"


class ConvBnRelu2d(_ConvBnActivation2d):
    """Quantized :class:`~.qat.ConvBnRelu2d` (relu fused before requantization)."""

    _nonlinear_mode = "relu"
