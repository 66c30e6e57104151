"""QAT `ConvBn2d` and `ConvBnRelu2d`: conv + batch norm with the norm folded into the
fake-quantized weight, as an integer kernel will run them."""
import numpy as np

from ... import functional as F
from ...core.tensor import Tensor
from .. import conv_bn as Float
from .conv import conv2d_with
from .module import QATModule

__all__ = ["ConvBn2d", "ConvBnRelu2d"]


def _constant(value, shape, like):
    return Tensor(np.full(shape, value, np.float32), device=like.device)


class _ConvBnActivation2d(Float._ConvBnActivation2d, QATModule):
    """Folding: with ``istd = 1 / sqrt(var + eps)``, the deployed conv has weight
    ``W * gamma * istd`` and bias ``beta + gamma * (b - mean) * istd``. QAT fake-quantizes the
    folded weight (folded with the running statistics), so training sees the deployed rounding.

    Training (``approx``, upstream's default): the conv runs with the quantized folded weight,
    its output is divided back by ``gamma * istd`` (plus the conv bias) and goes through the
    BatchNorm, so batch statistics normalize and the running ones update as in float.
    Evaluation: one conv with the quantized folded weight and the folded (qint32) bias.
    """

    def get_batch_mean_var(self, inp):
        """Per-channel mean and (biased) variance of an NCHW tensor, shaped (1, C, 1, 1)."""
        n = inp.size / inp.shape[1]
        s1 = F.sum(inp, axis=(0, 2, 3), keepdims=True)
        s2 = F.sum(inp ** 2, axis=(0, 2, 3), keepdims=True)
        mean = s1 / n
        return mean, (s2 - s1 ** 2 / n) / n

    def _bn_affine(self, like):
        bn = self.bn
        shape = (1, bn.num_features, 1, 1)
        gamma = bn.weight.reshape(shape) if bn.weight is not None else _constant(1.0, shape, like)
        beta = bn.bias.reshape(shape) if bn.bias is not None else _constant(0.0, shape, like)
        return gamma, beta

    def _fold_weight(self, scale_factor):
        w = self.conv.weight
        if self.conv.groups == 1:
            return w * scale_factor.reshape(-1, 1, 1, 1)
        return w * scale_factor.reshape(self.conv.groups, -1, 1, 1, 1)

    def _folded(self, bn_mean, bn_var):
        """(gamma * istd, folded weight, folded bias) for the statistics given (None: the
        identity, mean 0 and variance 1)."""
        like = self.conv.weight
        shape = (1, self.bn.num_features, 1, 1)
        gamma, beta = self._bn_affine(like)
        bn_mean = _constant(0.0, shape, like) if bn_mean is None else bn_mean
        bn_var = _constant(1.0, shape, like) if bn_var is None else bn_var
        conv_bias = self.conv.bias if self.conv.bias is not None \
            else _constant(0.0, self.conv._infer_bias_shape(), like)
        bn_istd = 1.0 / F.sqrt(bn_var + self.bn.eps)
        scale_factor = gamma * bn_istd
        return (scale_factor, self._fold_weight(scale_factor),
                beta + gamma * (conv_bias - bn_mean) * bn_istd)

    def fold_weight_bias(self, bn_mean, bn_var):
        """(fake-quantized folded weight, folded bias) for the statistics given."""
        _, w_fold, b_fold = self._folded(bn_mean, bn_var)
        return self.apply_quant_weight(w_fold), b_fold

    def update_running_mean_and_running_var(self, bn_mean, bn_var, num_elements_per_channel):
        """Running statistics as BatchNorm updates them (unbiased variance, no gradient)."""
        bn = self.bn
        bn_mean = bn_mean.detach()
        n = num_elements_per_channel
        bn_var = bn_var.detach() * n / (n - 1)
        bn.running_mean._reset(bn.running_mean * bn.momentum + (1 - bn.momentum) * bn_mean)
        bn.running_var._reset(bn.running_var * bn.momentum + (1 - bn.momentum) * bn_var)

    def calc_conv_bn_qat(self, inp, approx=True):
        if self.training and not approx:
            # fold with this batch's statistics: one extra float conv to measure them
            conv = conv2d_with(self.conv, inp, self.conv.weight, self.conv.bias)
            bn_mean, bn_var = self.get_batch_mean_var(conv)
            if self.bn.running_mean is not None:
                self.update_running_mean_and_running_var(bn_mean, bn_var,
                                                         conv.size / conv.shape[1])
        else:
            # without running statistics (track_running_stats=False) the fold is the identity
            bn_mean, bn_var = self.bn.running_mean, self.bn.running_var
        scale_factor, w_fold, b_fold = self._folded(bn_mean, bn_var)
        rescale = self.training and approx
        w_qat = self.apply_quant_weight(w_fold)
        b_qat = self.apply_quant_bias(None if rescale else b_fold, inp, w_qat)
        conv = conv2d_with(self.conv, inp, w_qat, b_qat)
        if not rescale:
            return conv
        # undo the folded scale to recover the conv's own output, then normalize it with the
        # batch statistics (BatchNorm also updates its running statistics)
        orig_conv = conv / scale_factor.reshape(1, -1, 1, 1)
        if self.conv.bias is not None:
            orig_conv = orig_conv + self.conv.bias
        return self.bn(orig_conv)

    @classmethod
    def from_float_module(cls, float_module: Float._ConvBnActivation2d):
        conv, bn = float_module.conv, float_module.bn
        qat_module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.conv_mode, conv.compute_mode, name=float_module.name)
        qat_module.conv.padding_mode = conv.padding_mode
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
