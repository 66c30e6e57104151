"""Fold a batch norm into the layer before it: `fuse_conv_bn_relu_module` turns a (Conv2d or
ConvTranspose2d, BatchNorm2d, ReLU) triple, `fuse_linear_bn_relu_module` a (Linear,
BatchNorm1d, ReLU) triple, into one fused module; `fold_weight_bias` computes the folded weight
and bias.

In eval mode BN is an affine map per output channel, ``y = gamma * (x - mean) / sqrt(var +
eps) + beta``, so it folds into the convolution's weight (scaled per output channel) and bias:
the result is a plain ``Conv2d`` / ``ConvRelu2d`` (or the transposed ones, or ``Linear`` /
``LinearRelu``) computing the same outputs. In training mode BN normalises with batch
statistics and cannot be folded: the result is a ``ConvBn2d`` / ``ConvBnRelu2d`` (or the
transposed ones, or ``LinearBn1d`` / ``LinearBnRelu1d``) holding copies of both, as upstream's.
"""
from copy import deepcopy

import numpy as np

from ..core.tensor import Parameter, Tensor
from ..module import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    ConvBn2d,
    ConvBnRelu2d,
    ConvRelu2d,
    ConvTranspose2d,
    ConvTransposeBn2d,
    ConvTransposeBnRelu2d,
    ConvTransposeRelu2d,
    Linear,
    LinearBn1d,
    LinearBnRelu1d,
    LinearRelu,
    ReLU,
)

__all__ = ["fold_weight_bias", "fuse_conv_bn_relu_module", "fuse_linear_bn_relu_module"]

# (conv type, has bn, has relu, training) -> the fused module's type
_FUSED = {
    (Conv2d, True, True, False): ConvRelu2d,
    (Conv2d, True, True, True): ConvBnRelu2d,
    (Conv2d, True, False, False): Conv2d,
    (Conv2d, True, False, True): ConvBn2d,
    (ConvTranspose2d, True, True, False): ConvTransposeRelu2d,
    (ConvTranspose2d, True, True, True): ConvTransposeBnRelu2d,
    (ConvTranspose2d, True, False, False): ConvTranspose2d,
    (ConvTranspose2d, True, False, True): ConvTransposeBn2d,
    (Linear, True, True, False): LinearRelu,
    (Linear, True, True, True): LinearBnRelu1d,
    (Linear, True, False, False): Linear,
    (Linear, True, False, True): LinearBn1d,
}


def _host(t, channels, fill):
    """A per-channel parameter as a float64 host vector (``fill`` where it is None)."""
    if t is None:
        return np.full(channels, fill, np.float64)
    a = t.numpy() if isinstance(t, Tensor) else np.asarray(t)
    return a.astype(np.float64).reshape(channels)


def fold_weight_bias(weight, bias, gamma, beta, bn_mean, bn_var, eps=1e-5, transpose=False):
    """The (weight, bias) Tensors of a convolution followed by an eval-mode batch norm.

    ``weight``: a Conv2d weight ``(O, I, kh, kw)`` or grouped ``(G, O/G, I/G, kh, kw)``; with
    ``transpose`` a ConvTranspose2d weight ``(I, O, kh, kw)`` or ``(G, I/G, O/G, kh, kw)``; or a
    Linear weight ``(O, I)`` (then the bias comes back as ``(O,)``, a Linear's bias shape).
    ``bias``, ``gamma``, ``beta``, ``bn_mean``, ``bn_var``: per output channel (any shape with
    O elements); None stands for no bias, gamma 1, beta 0, mean 0, var 1. The returned bias has
    the convolution's bias shape ``(1, O, 1, 1)``. Computed in float64 on the host, returned in
    the weight's dtype.
    """
    w = weight.numpy() if isinstance(weight, Tensor) else np.asarray(weight)
    if w.ndim not in (2, 4, 5):
        raise ValueError(f"fold_weight_bias: expected a 2-d Linear weight or a 4-d (grouped: "
                         f"5-d) 2-d convolution weight, got shape {w.shape}")
    if w.ndim == 2:
        if transpose:
            raise ValueError("fold_weight_bias: transpose=True is for ConvTranspose2d weights, "
                             "not a 2-d Linear weight")
        groups, per_group = 1, w.shape[0]
    elif w.ndim == 5:
        groups, per_group = w.shape[0], (w.shape[2] if transpose else w.shape[1])
    else:
        groups, per_group = 1, (w.shape[1] if transpose else w.shape[0])
    channels = groups * per_group
    gamma_, beta_ = _host(gamma, channels, 1.0), _host(beta, channels, 0.0)
    mean, var = _host(bn_mean, channels, 0.0), _host(bn_var, channels, 1.0)
    b = _host(bias, channels, 0.0)
    scale = gamma_ / np.sqrt(var + eps)  # what BN multiplies each channel by
    # the scale broadcast over the output-channel axis of the weight's layout
    if w.ndim == 2:
        shape = (channels, 1)
    elif w.ndim == 4:
        shape = (1, channels, 1, 1) if transpose else (channels, 1, 1, 1)
    else:
        shape = ((groups, 1, per_group, 1, 1) if transpose
                 else (groups, per_group, 1, 1, 1))
    w_fold = (w.astype(np.float64) * scale.reshape(shape)).astype(w.dtype)
    b_shape = (channels,) if w.ndim == 2 else (1, channels, 1, 1)
    b_fold = (beta_ + (b - mean) * scale).reshape(b_shape).astype(w.dtype)
    device = weight._device if isinstance(weight, Tensor) else None
    return Tensor(w_fold, device=device), Tensor(b_fold, device=device)


def _check_optional(what, **args):
    """``name=(value, cls)``: each value must be None or a ``cls``, else a TypeError naming it."""
    for name, (value, cls) in args.items():
        if value is not None and not isinstance(value, cls):
            raise TypeError(f"{what}: {name} must be a {cls.__name__} or None, got "
                            f"{type(value).__name__}")


def _check_bn_follows(what, layer, layer_name, out_name, bn):
    """``bn`` must be in ``layer``'s train/eval mode and normalise its ``out_name`` outputs."""
    if layer.training != bn.training:
        raise ValueError(f"{what}: {layer_name} and bn must both be in training or both in eval "
                         "mode (call .train() or .eval() on both)")
    outputs = getattr(layer, out_name)
    if bn.num_features != outputs:
        raise ValueError(f"{what}: bn.num_features ({bn.num_features}) must equal "
                         f"{layer_name}.{out_name} ({outputs})")


def _load_fused(fused, target, layer, bn, bias_shape, transpose=False):
    """Finish ``fused``: ``target`` (``fused`` or its conv/linear child) gets copies of
    ``layer``'s weight and bias, with ``bn`` folded in when the layer is in eval mode, else
    ``fused`` keeps a copy of ``bn``; ``fused`` takes ``layer``'s mode. Returns ``fused``."""
    folding = bn is not None and not layer.training
    if folding:
        weight, bias = fold_weight_bias(layer.weight, layer.bias, bn.weight, bn.bias,
                                        bn.running_mean, bn.running_var, bn.eps,
                                        transpose=transpose)
    else:
        weight, bias = layer.weight, layer.bias
    target.weight = Parameter(weight.numpy().copy(), device=weight._device)
    if bias is not None:
        target.bias = Parameter(bias.numpy().copy().reshape(bias_shape), device=bias._device)
    if bn is not None and not folding:
        fused.bn = deepcopy(bn)
    fused.train(layer.training)
    return fused


def fuse_conv_bn_relu_module(conv, bn, relu):
    """One module computing ``relu(bn(conv(x)))`` (``bn`` or ``relu`` may be None).

    ``conv``: a Conv2d or ConvTranspose2d; ``bn``: a BatchNorm2d over its output channels, in
    the same train/eval mode; ``relu``: a ReLU or None. Eval mode folds BN into the weights
    (`fold_weight_bias`); training mode keeps a copy of ``bn`` in a ConvBn module. The inputs
    are not changed; the result has new Parameters and keeps ``conv``'s name and mode.
    """
    kind = ConvTranspose2d if isinstance(conv, ConvTranspose2d) else (
        Conv2d if isinstance(conv, Conv2d) else None)
    if kind is None or type(conv) not in (Conv2d, ConvTranspose2d):
        raise TypeError(f"fuse_conv_bn_relu_module: conv must be a Conv2d or ConvTranspose2d, "
                        f"got {type(conv).__name__}")
    _check_optional("fuse_conv_bn_relu_module", bn=(bn, BatchNorm2d), relu=(relu, ReLU))
    if bn is None:
        fused_type = (ConvTransposeRelu2d if kind is ConvTranspose2d else ConvRelu2d) if relu \
            else kind
    else:
        _check_bn_follows("fuse_conv_bn_relu_module", conv, "conv", "out_channels", bn)
        fused_type = _FUSED[(kind, True, relu is not None, conv.training)]
    options = dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                   kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                   dilation=conv.dilation, groups=conv.groups,
                   bias=conv.bias is not None or (bn is not None and not conv.training),
                   conv_mode=conv.conv_mode, compute_mode=conv.compute_mode)
    if kind is ConvTranspose2d:
        options["output_padding"] = conv.output_padding
    fused = fused_type(**options, name=conv.name)
    folding = bn is not None and not conv.training
    if bn is None or folding:
        new_conv = fused
    else:
        new_conv = fused.conv_transpose2d if kind is ConvTranspose2d else fused.conv
    if hasattr(conv, "padding_mode"):
        new_conv.padding_mode = conv.padding_mode
    return _load_fused(fused, new_conv, conv, bn, (1, conv.out_channels, 1, 1),
                       transpose=kind is ConvTranspose2d)


def fuse_linear_bn_relu_module(linear, bn, relu):
    """One module computing ``relu(bn(linear(x)))`` (``bn`` or ``relu`` may be None).

    ``linear``: a Linear; ``bn``: a BatchNorm1d over its output features, in the same
    train/eval mode; ``relu``: a ReLU or None. Eval mode folds BN into the weights (a Linear or
    LinearRelu); training mode keeps a copy of ``bn`` in a LinearBn1d / LinearBnRelu1d. The
    inputs are not changed; the result has new Parameters and keeps ``linear``'s name and mode.
    """
    if type(linear) is not Linear:
        raise TypeError(f"fuse_linear_bn_relu_module: linear must be a Linear, got "
                        f"{type(linear).__name__}")
    _check_optional("fuse_linear_bn_relu_module", bn=(bn, BatchNorm1d), relu=(relu, ReLU))
    if bn is None:
        fused_type = LinearRelu if relu is not None else Linear
    else:
        _check_bn_follows("fuse_linear_bn_relu_module", linear, "linear", "out_features", bn)
        fused_type = _FUSED[(Linear, True, relu is not None, linear.training)]
    folding = bn is not None and not linear.training
    fused = fused_type(in_features=linear.in_features, out_features=linear.out_features,
                       bias=linear.bias is not None or folding,
                       compute_mode=linear.compute_mode, name=linear.name)
    new_linear = fused if bn is None or folding else fused.linear
    return _load_fused(fused, new_linear, linear, bn, linear.out_features)
