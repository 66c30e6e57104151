"""Quantized `ConvTransposeBn2d` and `ConvTransposeBnRelu2d`: the BatchNorm folded into an integer
transposed-conv weight and a bias."""
from ..qat import conv_transpose_bn as QAT
from .conv import ConvTranspose2d, load_folded_bn
from .module import output_dtype_of

__all__ = ["ConvTransposeBn2d", "ConvTransposeBnRelu2d"]


class _ConvTransposeBnActivation2d(ConvTranspose2d):
    @classmethod
    def from_qat_module(cls, qat_module: QAT._ConvTransposeBnActivation2d):
        what = cls.__name__
        conv = qat_module.conv_transpose2d
        qconv = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.output_padding, conv.dilation, conv.groups, True,
                    conv.conv_mode, conv.compute_mode, dtype=output_dtype_of(qat_module, what),
                    name=qat_module.name)
        return load_folded_bn(qconv, qat_module, what)


class ConvTransposeBn2d(_ConvTransposeBnActivation2d):
    """Quantized :class:`~.qat.ConvTransposeBn2d`."""

    _nonlinear_mode = "identity"


class ConvTransposeBnRelu2d(_ConvTransposeBnActivation2d):
    """Quantized :class:`~.qat.ConvTransposeBnRelu2d` (relu fused before requantization)."""

    _nonlinear_mode = "relu"
