"""Quantized `Conv2d`, `ConvRelu2d`, `ConvTranspose2d` and `ConvTransposeRelu2d`: convolutions of
quantized inputs with integer weights, a qint32 bias and a quantized output."""
import numpy as np

from ...core import dtype as _qd
from ...core.tensor import Parameter
from ...functional.quantized import _conv_bias
from .. import conv as Float
from ..qat import conv as QAT
from .module import QuantizedModule, output_dtype_of, weight_dtype_of

__all__ = ["Conv2d", "ConvRelu2d", "ConvTranspose2d", "ConvTransposeRelu2d"]


def quantized_weight(qat_module, weight, what):
    """``weight`` (the QAT layer's float weight, already fake-quantized or not) as a Parameter
    of integers in the layer's weight dtype."""
    w = weight.astype(weight_dtype_of(qat_module, what))
    return Parameter(w.numpy(), name=getattr(weight, "name", None) or None)


def float_bias(bias, shape):
    """The float bias kept by a quantized layer (quantized to qint32 at each call, when the
    input's scale is known); zeros when the QAT layer had none."""
    if bias is None:
        return Parameter(np.zeros(shape, dtype=np.float32))
    return Parameter(bias.numpy().reshape(shape))


def load_folded_bn(qmod, qat_module, what, bias_shape=None):
    """Give ``qmod`` the weight (integers) and bias of a QAT conv-bn or linear-bn layer with its
    BatchNorm folded in from the running statistics, as the QAT layer computes in evaluation;
    the bias takes ``bias_shape`` (default: the conv layer's bias shape)."""
    w_fold, b_fold = qat_module.fold_weight_bias(qat_module.bn.running_mean,
                                                 qat_module.bn.running_var)
    qmod.weight = quantized_weight(qat_module, w_fold, what)
    qmod.bias = float_bias(b_fold, bias_shape or qmod._infer_bias_shape())
    return qmod


def bias_as_qint32(bias, inp, weight):
    """``bias`` quantized to qint32 with scale ``input scale * weight scale`` (float32 product,
    as the QAT layer's bias fake quantization computes it)."""
    scale = float(np.float32(_qd.get_scale(inp.dtype)) * np.float32(_qd.get_scale(weight.dtype)))
    return bias.astype(_qd.qint32(scale))


class Conv2d(Float.Conv2d, QuantizedModule):
    """Quantized :class:`~.qat.Conv2d`: ``conv_bias_activation`` of the quantized input with
    the integer weight and the qint32 bias, output in ``dtype``. Same arguments as
    :class:`~.module.Conv2d` plus ``dtype``, the output's quantized dtype."""

    _quantized_input = True
    _nonlinear_mode = "identity"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, conv_mode="cross_correlation", compute_mode="default", dtype=None,
                 padding_mode="zeros", **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, True, conv_mode, compute_mode, padding_mode, **kwargs)
        self.output_dtype = dtype

    def calc_conv_quantized(self, inp, nonlinear_mode="identity"):
        """The quantized convolution with ``nonlinear_mode`` fused ("identity" or "relu")."""
        bias = bias_as_qint32(self.bias, inp, self.weight)
        inp, padding = self._padded(inp)
        return _conv_bias(False, inp, self.weight, bias, self.output_dtype, self.stride,
                          padding, self.dilation, self.groups, nonlinear_mode, self.conv_mode,
                          self.compute_mode, type(self).__name__)

    def forward(self, inp):
        return self.calc_conv_quantized(inp, self._nonlinear_mode)

    @classmethod
    def from_qat_module(cls, qat_module: QAT.Conv2d):
        what = cls.__name__
        qconv = cls(qat_module.in_channels, qat_module.out_channels, qat_module.kernel_size,
                    qat_module.stride, qat_module.padding, qat_module.dilation,
                    qat_module.groups, qat_module.conv_mode, qat_module.compute_mode,
                    dtype=output_dtype_of(qat_module, what),
                    padding_mode=qat_module.padding_mode, name=qat_module.name)
        qconv.weight = quantized_weight(qat_module, qat_module.weight, what)
        qconv.bias = float_bias(qat_module.bias, qconv._infer_bias_shape())
        return qconv


class ConvRelu2d(Conv2d):
    """Quantized :class:`~.qat.ConvRelu2d`: the relu is fused before requantization."""

    _nonlinear_mode = "relu"


class ConvTranspose2d(Float.ConvTranspose2d, QuantizedModule):
    """Quantized :class:`~.qat.ConvTranspose2d`: transposed convolution of the quantized input
    with the integer weight and a qint32 bias, output in ``dtype``."""

    _quantized_input = True
    _nonlinear_mode = "identity"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, dilation=1, groups=1, bias=True,
                 conv_mode="cross_correlation", compute_mode="default", dtype=None, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         output_padding, dilation, groups, bias, conv_mode, compute_mode,
                         **kwargs)
        self.output_dtype = dtype

    def calc_conv_transpose2d_quantized(self, inp, nonlinear_mode="identity"):
        """The quantized transposed convolution with ``nonlinear_mode`` fused."""
        bias = None if self.bias is None else bias_as_qint32(self.bias, inp, self.weight)
        return _conv_bias(True, inp, self.weight, bias, self.output_dtype, self.stride,
                          self.padding, self.dilation, self.groups, nonlinear_mode,
                          self.conv_mode, self.compute_mode, type(self).__name__,
                          output_padding=self.output_padding)

    def forward(self, inp):
        return self.calc_conv_transpose2d_quantized(inp, self._nonlinear_mode)

    @classmethod
    def from_qat_module(cls, qat_module: QAT.ConvTranspose2d):
        what = cls.__name__
        qconv = cls(qat_module.in_channels, qat_module.out_channels, qat_module.kernel_size,
                    qat_module.stride, qat_module.padding, qat_module.output_padding,
                    qat_module.dilation, qat_module.groups, qat_module.bias is not None,
                    qat_module.conv_mode, qat_module.compute_mode,
                    dtype=output_dtype_of(qat_module, what), name=qat_module.name)
        qconv.weight = quantized_weight(qat_module, qat_module.weight, what)
        if qat_module.bias is not None:
            qconv.bias = float_bias(qat_module.bias, qconv._infer_bias_shape())
        return qconv


class ConvTransposeRelu2d(ConvTranspose2d):
    """Quantized :class:`~.qat.ConvTransposeRelu2d`: the relu is fused before requantization."""

    _nonlinear_mode = "relu"
