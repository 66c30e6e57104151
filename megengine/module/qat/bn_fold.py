"""Folding a BatchNorm into the layer before it for QAT (conv, transposed conv, linear): the
fake-quantized weight is the folded one, as an integer kernel will run it."""
import numpy as np

from ... import functional as F
from ...core.tensor import Tensor
from .module import QATModule

__all__ = ["BnFoldQATModule"]


def _vector(t, n, value, like):
    """A per-channel parameter or statistic as an (n,) tensor (a constant when absent)."""
    if t is None:
        return Tensor(np.full((n,), value, np.float32), device=like.device)
    return t.reshape(n)


class BnFoldQATModule(QATModule):
    """A layer followed by ``self.bn``, trained with the BatchNorm folded in.

    With ``istd = 1 / sqrt(var + eps)`` the deployed layer has weight ``W * gamma * istd`` (per
    output channel) and bias ``beta + gamma * (b - mean) * istd``. In training (``approx``,
    upstream's default) the layer runs with the fake-quantized weight folded with the running
    statistics, its output is divided back by ``gamma * istd`` (plus the layer's bias) and goes
    through the BatchNorm, so batch statistics normalize and the running ones update as in
    float. With ``approx=False`` the fold uses this batch's statistics (one extra float pass).
    In evaluation it is one layer with the folded weight and the folded (qint32) bias.

    Subclasses name the layer (``_layer()``), reshape a per-output-channel vector onto its
    weight (``_fold_weight``) and run it with other parameters (``_run``).
    """

    def _layer(self):
        raise NotImplementedError(f"{type(self).__name__} must name its folded layer")

    def _fold_weight(self, weight, scale):
        raise NotImplementedError(f"{type(self).__name__} must say how to fold its weight")

    def _run(self, inp, weight, bias):
        raise NotImplementedError(f"{type(self).__name__} must say how to run its layer")

    def get_batch_mean_var(self, inp):
        """Per-channel (axis 1) mean and biased variance of ``inp``, as (C,) tensors."""
        axes = (0,) + tuple(range(2, inp.ndim))
        n = inp.size / inp.shape[1]
        s1 = F.sum(inp, axis=axes)
        s2 = F.sum(inp ** 2, axis=axes)
        return s1 / n, (s2 - s1 ** 2 / n) / n

    def _folded(self, bn_mean, bn_var):
        """(gamma * istd as (C,), folded weight, folded bias in the layer's bias shape) for
        the statistics given (None: the identity, mean 0 and variance 1)."""
        layer, bn = self._layer(), self.bn
        c, like = bn.num_features, layer.weight
        gamma, beta = _vector(bn.weight, c, 1.0, like), _vector(bn.bias, c, 0.0, like)
        mean, var = _vector(bn_mean, c, 0.0, like), _vector(bn_var, c, 1.0, like)
        layer_bias = _vector(layer.bias, c, 0.0, like)
        istd = 1.0 / F.sqrt(var + bn.eps)
        scale = gamma * istd
        b_fold = beta + gamma * (layer_bias - mean) * istd
        if layer.bias is not None:
            b_fold = b_fold.reshape(layer.bias.shape)
        else:
            b_fold = b_fold.reshape(self._bias_shape())
        return scale, self._fold_weight(layer.weight, scale), b_fold

    def _bias_shape(self):
        """The folded bias's shape when the layer has no bias of its own: (1, C, 1, 1)."""
        return (1, self.bn.num_features, 1, 1)

    def fold_weight_bias(self, bn_mean, bn_var):
        """(fake-quantized folded weight, folded bias) for the statistics given."""
        _, w_fold, b_fold = self._folded(bn_mean, bn_var)
        return self.apply_quant_weight(w_fold), b_fold

    def update_running_mean_and_running_var(self, bn_mean, bn_var, num_elements_per_channel):
        """Running statistics as BatchNorm updates them (unbiased variance, no gradient)."""
        bn = self.bn
        n = num_elements_per_channel
        mean = bn_mean.detach().reshape(bn.running_mean.shape)
        var = (bn_var.detach() * n / (n - 1)).reshape(bn.running_var.shape)
        bn.running_mean._reset(bn.running_mean * bn.momentum + (1 - bn.momentum) * mean)
        bn.running_var._reset(bn.running_var * bn.momentum + (1 - bn.momentum) * var)

    def calc_bn_fold_qat(self, inp, approx=True):
        layer = self._layer()
        if self.training and not approx:
            out = self._run(inp, layer.weight, layer.bias)
            bn_mean, bn_var = self.get_batch_mean_var(out)
            if self.bn.running_mean is not None:
                self.update_running_mean_and_running_var(bn_mean, bn_var,
                                                         out.size / out.shape[1])
        else:
            # without running statistics (track_running_stats=False) the fold is the identity
            bn_mean, bn_var = self.bn.running_mean, self.bn.running_var
        scale, w_fold, b_fold = self._folded(bn_mean, bn_var)
        rescale = self.training and approx
        w_qat = self.apply_quant_weight(w_fold)
        b_qat = self.apply_quant_bias(None if rescale else b_fold, inp, w_qat)
        out = self._run(inp, w_qat, b_qat)
        if not rescale:
            return out
        # undo the folded scale to recover the layer's own output, then normalize it with
        # the batch statistics (BatchNorm also updates its running statistics)
        channel_shape = (1, -1) + (1,) * (out.ndim - 2)
        orig = out / scale.reshape(channel_shape)
        if layer.bias is not None:
            orig = orig + layer.bias.reshape(channel_shape)
        return self.bn(orig)
