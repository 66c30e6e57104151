"""Every public layer of torch.nn, wrapped in PyTorchModule and trained by megengine, against the
same layer used directly in torch: outputs, input and parameter gradients, one SGD step, buffers
and state_dict keys, in train and eval modes. A class a future torch adds fails the completeness
test until it gets a row in `CASES` or a reason in `NOT_SWEPT`."""
import copy
import inspect
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as tF

import megengine as mge
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.module.pytorch import PyTorchModule
from devices import CUDNN_RNN_EVAL_BACKWARD, cudnn_runs_torch_rnns, torch_device, torch_host


def _f(*shape, low=None, high=None):
    """A float32 input of ``shape``: normal, or uniform in [low, high)."""
    if low is None:
        return lambda rng: rng.randn(*shape).astype("float32")
    return lambda rng: rng.uniform(low, high, shape).astype("float32")


def _i(high, *shape):
    """An int64 input of ``shape`` with values in [0, high)."""
    return lambda rng: rng.randint(0, high, shape).astype("int64")


def _signs(*shape):
    return lambda rng: np.where(rng.rand(*shape) < 0.5, -1.0, 1.0).astype("float32")


def _constant(make):
    """An input maker whose float input gets no gradient (torch refuses one for it)."""
    make.constant = True
    return make


def _given(array):
    return lambda rng: np.array(array)


class _Pooled(nn.Module):
    """A max pool whose indices feed an unpool (MaxUnpool takes both)."""

    def __init__(self, d):
        super().__init__()
        self.pool = getattr(nn, f"MaxPool{d}d")(2, return_indices=True)
        self.unpool = getattr(nn, f"MaxUnpool{d}d")(2)

    def forward(self, x):
        return self.unpool(*self.pool(x))


class _Ctc(nn.Module):
    """CTC over log-probabilities, as the loss expects them."""

    def __init__(self):
        super().__init__()
        self.loss = nn.CTCLoss()

    def forward(self, logits, targets, input_lengths, target_lengths):
        return self.loss(logits.log_softmax(-1), targets, input_lengths, target_lengths)


class _Listed(nn.Module):
    """The containers without a forward of their own, used the way torch code uses them."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 2)])
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 2)})
        self.scales = nn.ParameterList([nn.Parameter(torch.rand(2) + 0.5)])
        self.shifts = nn.ParameterDict({"b": nn.Parameter(torch.randn(2))})

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.heads["a"](x) * self.scales[0] + self.shifts["b"]


class _WeightedBag(nn.Module):
    """A bag summing its rows with per-sample weights (a keyword argument)."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(6, 3, mode="sum")

    def forward(self, indices, weights):
        return self.bag(indices, per_sample_weights=weights)


class _NoWeights(nn.Module):
    """Self-attention asked for no weights: the second output is None."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)


def _materialised(module, *shapes):
    """A lazy module after one torch forward has given its parameters their shapes."""
    with torch.no_grad():
        module(*[torch.randn(*s) for s in shapes])
    return module


_D = dict(d_model=4, nhead=2, dim_feedforward=8)

# name -> (make the module, input makers, outputs: output_cnt of the wrapper)
CASES = {
    "AdaptiveAvgPool1d": (lambda: nn.AdaptiveAvgPool1d(3), [_f(2, 2, 7)]),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((2, 3)), [_f(2, 2, 5, 7)]),
    "AdaptiveAvgPool3d": (lambda: nn.AdaptiveAvgPool3d(2), [_f(1, 2, 5, 4, 3)]),
    "AdaptiveLogSoftmaxWithLoss": (lambda: nn.AdaptiveLogSoftmaxWithLoss(4, 6, [2, 4]),
                                   [_f(5, 4), _i(6, 5)], 2),
    "AdaptiveMaxPool1d": (lambda: nn.AdaptiveMaxPool1d(3), [_f(2, 2, 7)]),
    "AdaptiveMaxPool2d": (lambda: nn.AdaptiveMaxPool2d((2, 3)), [_f(2, 2, 5, 7)]),
    "AdaptiveMaxPool3d": (lambda: nn.AdaptiveMaxPool3d(2), [_f(1, 2, 5, 4, 3)]),
    "AlphaDropout": (lambda: nn.AlphaDropout(0.5), [_f(4, 6)]),
    "AvgPool1d": (lambda: nn.AvgPool1d(2), [_f(2, 2, 6)]),
    "AvgPool2d": (lambda: nn.AvgPool2d(2, padding=1, count_include_pad=False), [_f(2, 2, 5, 5)]),
    "AvgPool3d": (lambda: nn.AvgPool3d(2), [_f(1, 2, 4, 4, 4)]),
    "BCELoss": (lambda: nn.BCELoss(), [_f(3, 4, low=0.1, high=0.9), _f(3, 4, low=0, high=1)]),
    "BCEWithLogitsLoss": (lambda: nn.BCEWithLogitsLoss(pos_weight=torch.rand(4) + 0.5),
                          [_f(3, 4), _f(3, 4, low=0, high=1)]),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), [_f(4, 3)]),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), [_f(2, 3, 3, 3)]),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(3), [_f(2, 3, 2, 2, 2)]),
    "Bilinear": (lambda: nn.Bilinear(3, 2, 4), [_f(5, 3), _f(5, 2)]),
    "CELU": (lambda: nn.CELU(0.7), [_f(3, 4)]),
    "CTCLoss": (_Ctc, [_f(6, 2, 4), _given([[1, 2, 3], [2, 2, 0]]), _given([6, 5]),
                       _given([3, 2])]),
    "ChannelShuffle": (lambda: nn.ChannelShuffle(2), [_f(2, 4, 2, 2)]),
    "CircularPad1d": (lambda: nn.CircularPad1d((1, 2)), [_f(2, 2, 4)]),
    "CircularPad2d": (lambda: nn.CircularPad2d(1), [_f(1, 2, 3, 3)]),
    "CircularPad3d": (lambda: nn.CircularPad3d(1), [_f(1, 2, 2, 2, 2)]),
    "ConstantPad1d": (lambda: nn.ConstantPad1d((1, 2), 0.5), [_f(2, 2, 4)]),
    "ConstantPad2d": (lambda: nn.ConstantPad2d(1, -1.0), [_f(1, 2, 3, 3)]),
    "ConstantPad3d": (lambda: nn.ConstantPad3d(1, 2.0), [_f(1, 2, 2, 2, 2)]),
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3, padding=1), [_f(2, 2, 5)]),
    "Conv2d": (lambda: nn.Conv2d(2, 4, 3, stride=2, groups=2, padding_mode="reflect", padding=1),
               [_f(2, 2, 5, 5)]),
    "Conv3d": (lambda: nn.Conv3d(2, 3, 2), [_f(1, 2, 3, 3, 3)]),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(2, 3, 3, stride=2), [_f(2, 2, 4)]),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1),
                        [_f(2, 2, 3, 3)]),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2), [_f(1, 2, 2, 2, 2)]),
    "CosineEmbeddingLoss": (lambda: nn.CosineEmbeddingLoss(0.1), [_f(4, 3), _f(4, 3), _signs(4)]),
    "CosineSimilarity": (lambda: nn.CosineSimilarity(dim=1), [_f(4, 3), _f(4, 3)]),
    "CrossEntropyLoss": (lambda: nn.CrossEntropyLoss(weight=torch.rand(5) + 0.5,
                                                     label_smoothing=0.1), [_f(4, 5), _i(5, 4)]),
    "CrossMapLRN2d": (lambda: nn.CrossMapLRN2d(3), [_f(2, 4, 3, 3)]),
    "Dropout": (lambda: nn.Dropout(0.5), [_f(4, 6)]),
    "Dropout1d": (lambda: nn.Dropout1d(0.5), [_f(2, 4, 3)]),
    "Dropout2d": (lambda: nn.Dropout2d(0.5), [_f(2, 4, 3, 3)]),
    "Dropout3d": (lambda: nn.Dropout3d(0.5), [_f(2, 4, 2, 2, 2)]),
    "ELU": (lambda: nn.ELU(0.5), [_f(3, 4)]),
    "Embedding": (lambda: nn.Embedding(6, 3, padding_idx=0), [_i(6, 2, 4)]),
    "EmbeddingBag": (lambda: nn.EmbeddingBag(6, 3, mode="mean"),
                     [_i(6, 7), _given([0, 3, 3])]),
    "FeatureAlphaDropout": (lambda: nn.FeatureAlphaDropout(0.5), [_f(2, 4, 3, 3)]),
    "Flatten": (lambda: nn.Flatten(), [_f(2, 3, 2)]),
    "Fold": (lambda: nn.Fold((3, 3), 2), [_f(2, 8, 4)]),
    "FractionalMaxPool2d": (lambda: nn.FractionalMaxPool2d(2, output_size=3), [_f(2, 2, 5, 5)]),
    "FractionalMaxPool3d": (lambda: nn.FractionalMaxPool3d(2, output_ratio=0.5),
                            [_f(1, 2, 4, 4, 4)]),
    "GELU": (lambda: nn.GELU("tanh"), [_f(3, 4)]),
    "GLU": (lambda: nn.GLU(), [_f(3, 4)]),
    "GRU": (lambda: nn.GRU(3, 4, num_layers=2, bidirectional=True), [_f(5, 2, 3)], 2),
    "GRUCell": (lambda: nn.GRUCell(3, 4), [_f(2, 3), _f(2, 4)]),
    "GaussianNLLLoss": (lambda: nn.GaussianNLLLoss(),
                        [_f(4, 3), _f(4, 3), _f(4, 3, low=0.5, high=2)]),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), [_f(2, 4, 3)]),
    "Hardshrink": (lambda: nn.Hardshrink(0.3), [_f(3, 4)]),
    "Hardsigmoid": (lambda: nn.Hardsigmoid(), [_f(3, 4, low=-4, high=4)]),
    "Hardswish": (lambda: nn.Hardswish(), [_f(3, 4, low=-4, high=4)]),
    "Hardtanh": (lambda: nn.Hardtanh(-0.5, 0.5), [_f(3, 4)]),
    "HingeEmbeddingLoss": (lambda: nn.HingeEmbeddingLoss(), [_f(4, 3), _signs(4, 3)]),
    "HuberLoss": (lambda: nn.HuberLoss(delta=0.5), [_f(4, 3), _f(4, 3)]),
    "Identity": (lambda: nn.Identity(), [_f(3, 4)]),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True),
                       [_f(2, 3, 5)]),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(3, affine=True), [_f(2, 3, 3, 3)]),
    "InstanceNorm3d": (lambda: nn.InstanceNorm3d(3, track_running_stats=True),
                       [_f(2, 3, 2, 2, 2)]),
    "KLDivLoss": (lambda: nn.KLDivLoss(reduction="batchmean"), [_f(4, 3), _f(4, 3, low=0, high=1)]),
    "L1Loss": (lambda: nn.L1Loss(), [_f(4, 3), _f(4, 3)]),
    "LPPool1d": (lambda: nn.LPPool1d(2, 2), [_f(2, 2, 6)]),
    "LPPool2d": (lambda: nn.LPPool2d(3, 2), [_f(2, 2, 4, 4, low=0.5, high=2)]),
    "LPPool3d": (lambda: nn.LPPool3d(2, 2), [_f(1, 2, 4, 4, 4)]),
    "LSTM": (lambda: nn.LSTM(3, 4, batch_first=True, proj_size=2), [_f(2, 5, 3)], 3),
    "LSTMCell": (lambda: nn.LSTMCell(3, 4), [_f(2, 3)], 2),
    "LayerNorm": (lambda: nn.LayerNorm((2, 3)), [_f(4, 2, 3)]),
    "LazyBatchNorm1d": (lambda: _materialised(nn.LazyBatchNorm1d(), (4, 3)), [_f(4, 3)]),
    "LazyBatchNorm2d": (lambda: _materialised(nn.LazyBatchNorm2d(), (2, 3, 2, 2)),
                        [_f(2, 3, 2, 2)]),
    "LazyBatchNorm3d": (lambda: _materialised(nn.LazyBatchNorm3d(), (2, 3, 2, 2, 2)),
                        [_f(2, 3, 2, 2, 2)]),
    "LazyConv1d": (lambda: _materialised(nn.LazyConv1d(3, 2), (2, 2, 5)), [_f(2, 2, 5)]),
    "LazyConv2d": (lambda: _materialised(nn.LazyConv2d(3, 2), (1, 2, 4, 4)), [_f(1, 2, 4, 4)]),
    "LazyConv3d": (lambda: _materialised(nn.LazyConv3d(3, 2), (1, 2, 3, 3, 3)),
                   [_f(1, 2, 3, 3, 3)]),
    "LazyConvTranspose1d": (lambda: _materialised(nn.LazyConvTranspose1d(3, 2), (2, 2, 4)),
                            [_f(2, 2, 4)]),
    "LazyConvTranspose2d": (lambda: _materialised(nn.LazyConvTranspose2d(3, 2), (1, 2, 3, 3)),
                            [_f(1, 2, 3, 3)]),
    "LazyConvTranspose3d": (lambda: _materialised(nn.LazyConvTranspose3d(3, 2), (1, 2, 2, 2, 2)),
                            [_f(1, 2, 2, 2, 2)]),
    "LazyInstanceNorm1d": (lambda: _materialised(
        nn.LazyInstanceNorm1d(affine=True, track_running_stats=True), (2, 3, 5)), [_f(2, 3, 5)]),
    "LazyInstanceNorm2d": (lambda: _materialised(nn.LazyInstanceNorm2d(affine=True),
                                                 (2, 3, 3, 3)), [_f(2, 3, 3, 3)]),
    "LazyInstanceNorm3d": (lambda: _materialised(
        nn.LazyInstanceNorm3d(affine=True), (2, 3, 2, 2, 2)), [_f(2, 3, 2, 2, 2)]),
    "LazyLinear": (lambda: _materialised(nn.LazyLinear(2), (3, 4)), [_f(3, 4)]),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.1), [_f(3, 4)]),
    "Linear": (lambda: nn.Linear(4, 3), [_f(2, 5, 4)]),
    "LinearCrossEntropyLoss": (lambda: nn.LinearCrossEntropyLoss(4, 5, bias=True),
                               [_f(3, 4), _i(5, 3)]),
    "LocalResponseNorm": (lambda: nn.LocalResponseNorm(2), [_f(2, 4, 3)]),
    "LogSigmoid": (lambda: nn.LogSigmoid(), [_f(3, 4)]),
    "LogSoftmax": (lambda: nn.LogSoftmax(dim=1), [_f(3, 4)]),
    "MSELoss": (lambda: nn.MSELoss(reduction="sum"), [_f(4, 3), _f(4, 3)]),
    "MarginRankingLoss": (lambda: nn.MarginRankingLoss(0.2), [_f(5), _f(5), _signs(5)]),
    "MaxPool1d": (lambda: nn.MaxPool1d(3, stride=2, ceil_mode=True), [_f(2, 2, 6)]),
    "MaxPool2d": (lambda: nn.MaxPool2d(2, dilation=2), [_f(2, 2, 5, 5)]),
    "MaxPool3d": (lambda: nn.MaxPool3d(2), [_f(1, 2, 4, 4, 4)]),
    "MaxUnpool1d": (lambda: _Pooled(1), [_f(2, 2, 6)]),
    "MaxUnpool2d": (lambda: _Pooled(2), [_f(2, 2, 4, 4)]),
    "MaxUnpool3d": (lambda: _Pooled(3), [_f(1, 2, 4, 4, 4)]),
    "Mish": (lambda: nn.Mish(), [_f(3, 4)]),
    "MultiLabelMarginLoss": (lambda: nn.MultiLabelMarginLoss(),
                             [_f(2, 4), _given([[3, 0, -1, 1], [1, 2, 3, -1]])]),
    "MultiLabelSoftMarginLoss": (lambda: nn.MultiLabelSoftMarginLoss(),
                                 [_f(3, 4), _f(3, 4, low=0, high=1)]),
    "MultiMarginLoss": (lambda: nn.MultiMarginLoss(p=2, margin=0.5), [_f(4, 3), _i(3, 4)]),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(4, 2, kdim=3, vdim=5, batch_first=True),
                           [_f(2, 3, 4), _f(2, 5, 3), _f(2, 5, 5)], 2),
    "NLLLoss": (lambda: nn.NLLLoss(ignore_index=1), [_f(5, 4), _i(4, 5)]),
    "NLLLoss2d": (lambda: nn.NLLLoss2d(), [_f(2, 3, 2, 2), _i(3, 2, 2, 2)]),
    "PReLU": (lambda: nn.PReLU(3), [_f(2, 3, 4)]),
    "PairwiseDistance": (lambda: nn.PairwiseDistance(p=3), [_f(4, 3), _f(4, 3)]),
    "PixelShuffle": (lambda: nn.PixelShuffle(2), [_f(1, 8, 2, 2)]),
    "PixelUnshuffle": (lambda: nn.PixelUnshuffle(2), [_f(1, 2, 4, 4)]),
    "PoissonNLLLoss": (lambda: nn.PoissonNLLLoss(full=True), [_f(4, 3), _f(4, 3, low=0, high=3)]),
    "RMSNorm": (lambda: nn.RMSNorm(4), [_f(3, 4)]),
    "RNN": (lambda: nn.RNN(3, 4, nonlinearity="relu"), [_f(5, 2, 3), _f(1, 2, 4)], 2),
    "RNNCell": (lambda: nn.RNNCell(3, 4), [_f(2, 3)]),
    "RReLU": (lambda: nn.RReLU(), [_f(3, 4)]),
    "ReLU": (lambda: nn.ReLU(), [_f(3, 4)]),
    "ReLU6": (lambda: nn.ReLU6(), [_f(3, 4, low=-8, high=8)]),
    "ReflectionPad1d": (lambda: nn.ReflectionPad1d((1, 2)), [_f(2, 2, 4)]),
    "ReflectionPad2d": (lambda: nn.ReflectionPad2d(1), [_f(1, 2, 3, 3)]),
    "ReflectionPad3d": (lambda: nn.ReflectionPad3d(1), [_f(1, 2, 2, 2, 2)]),
    "ReplicationPad1d": (lambda: nn.ReplicationPad1d((1, 2)), [_f(2, 2, 4)]),
    "ReplicationPad2d": (lambda: nn.ReplicationPad2d(1), [_f(1, 2, 3, 3)]),
    "ReplicationPad3d": (lambda: nn.ReplicationPad3d(1), [_f(1, 2, 2, 2, 2)]),
    "SELU": (lambda: nn.SELU(), [_f(3, 4)]),
    "Sequential": (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
                   [_f(2, 3)]),
    "SiLU": (lambda: nn.SiLU(), [_f(3, 4)]),
    "Sigmoid": (lambda: nn.Sigmoid(), [_f(3, 4)]),
    "SmoothL1Loss": (lambda: nn.SmoothL1Loss(beta=0.5), [_f(4, 3), _f(4, 3)]),
    "SoftMarginLoss": (lambda: nn.SoftMarginLoss(), [_f(4, 3), _constant(_signs(4, 3))]),
    "Softmax": (lambda: nn.Softmax(dim=-1), [_f(3, 4)]),
    "Softmax2d": (lambda: nn.Softmax2d(), [_f(2, 3, 2, 2)]),
    "Softmin": (lambda: nn.Softmin(dim=0), [_f(3, 4)]),
    "Softplus": (lambda: nn.Softplus(beta=2, threshold=1), [_f(3, 4)]),
    "Softshrink": (lambda: nn.Softshrink(0.3), [_f(3, 4)]),
    "Softsign": (lambda: nn.Softsign(), [_f(3, 4)]),
    "SyncBatchNorm": (lambda: nn.SyncBatchNorm(3), [_f(2, 3, 2, 2)]),
    "Tanh": (lambda: nn.Tanh(), [_f(3, 4)]),
    "Tanhshrink": (lambda: nn.Tanhshrink(), [_f(3, 4)]),
    "Threshold": (lambda: nn.Threshold(0.1, 20.0), [_f(3, 4)]),
    "Transformer": (lambda: nn.Transformer(**_D, num_encoder_layers=1, num_decoder_layers=1,
                                           batch_first=True), [_f(2, 3, 4), _f(2, 2, 4)]),
    "TransformerDecoder": (lambda: nn.TransformerDecoder(
        nn.TransformerDecoderLayer(**_D), 1), [_f(3, 2, 4), _f(2, 2, 4)]),
    "TransformerDecoderLayer": (lambda: nn.TransformerDecoderLayer(**_D, norm_first=True),
                                [_f(3, 2, 4), _f(2, 2, 4)]),
    "TransformerEncoder": (lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(**_D, batch_first=True), 2, enable_nested_tensor=False),
        [_f(2, 3, 4)]),
    "TransformerEncoderLayer": (lambda: nn.TransformerEncoderLayer(**_D, activation="gelu"),
                                [_f(3, 2, 4)]),
    "TripletMarginLoss": (lambda: nn.TripletMarginLoss(swap=True), [_f(4, 3), _f(4, 3), _f(4, 3)]),
    "TripletMarginWithDistanceLoss": (lambda: nn.TripletMarginWithDistanceLoss(
        distance_function=nn.PairwiseDistance(p=1)), [_f(4, 3), _f(4, 3), _f(4, 3)]),
    "Unflatten": (lambda: nn.Unflatten(1, (2, 3)), [_f(2, 6)]),
    "Unfold": (lambda: nn.Unfold(2, padding=1), [_f(1, 2, 3, 3)]),
    "Upsample": (lambda: nn.Upsample(scale_factor=2, mode="bicubic"), [_f(1, 2, 3, 3)]),
    "UpsamplingBilinear2d": (lambda: nn.UpsamplingBilinear2d(scale_factor=2), [_f(1, 2, 2, 2)]),
    "UpsamplingNearest2d": (lambda: nn.UpsamplingNearest2d(size=(3, 5)), [_f(1, 2, 2, 2)]),
    "ZeroPad1d": (lambda: nn.ZeroPad1d((2, 1)), [_f(2, 2, 4)]),
    "ZeroPad2d": (lambda: nn.ZeroPad2d((1, 0, 2, 1)), [_f(1, 2, 3, 3)]),
    "ZeroPad3d": (lambda: nn.ZeroPad3d(1), [_f(1, 2, 2, 2, 2)]),
    # the containers without a forward, in a module that uses them
    "ModuleList": (_Listed, [_f(2, 3)]),
    # options that change how a layer treats its tensors ("Class: option")
    "ReLU: inplace": (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True)), [_f(2, 3)]),
    "Dropout: inplace": (lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(inplace=True)),
                         [_f(2, 3)]),
    "Hardtanh: inplace": (lambda: nn.Sequential(nn.Linear(3, 4), nn.Hardtanh(inplace=True)),
                          [_f(2, 3)]),
    "Embedding: sparse": (lambda: nn.Embedding(6, 3, sparse=True), [_i(6, 2, 4)]),
    "Embedding: max_norm": (lambda: nn.Embedding(6, 3, max_norm=1.0), [_i(6, 2, 4)]),
    "EmbeddingBag: per_sample_weights": (_WeightedBag, [_i(6, 2, 3), _f(2, 3)]),
    "BatchNorm1d: cumulative average": (lambda: nn.BatchNorm1d(3, momentum=None), [_f(4, 3)]),
    "BatchNorm2d: no running stats": (lambda: nn.BatchNorm2d(3, track_running_stats=False),
                                      [_f(2, 3, 2, 2)]),
    "MultiheadAttention: need_weights=False": (
        lambda: _NoWeights(), [_f(3, 2, 4)], None),
    "Upsample: align_corners": (lambda: nn.Upsample(size=(3, 4), mode="bilinear",
                                                    align_corners=True), [_f(1, 2, 2, 2)]),
    "Conv1d: circular": (lambda: nn.Conv1d(2, 2, 3, padding="same", padding_mode="circular",
                                           bias=False), [_f(2, 2, 5)]),
    "LSTM: batch_first bidirectional": (lambda: nn.LSTM(3, 2, 2, batch_first=True,
                                                        bidirectional=True, dropout=0.5),
                                        [_f(2, 4, 3)], 3),
}

# name -> why it has no row in CASES
NOT_SWEPT = {
    "Module": "the base class: every row is one",
    "Container": "deprecated base of the containers, with no forward",
    "RNNBase": "abstract base of RNN/LSTM/GRU (swept), with no forward of its own",
    "RNNCellBase": "abstract base of RNNCell/LSTMCell/GRUCell (swept), with no forward",
    **{name: "a container without a forward: swept in the ModuleList row (_Listed)"
       for name in ("ModuleDict", "ParameterList", "ParameterDict")},
}


# name -> the oldest torch known to have the class, for rows of classes newer than an older
# torch in use (skipped there); a row for a class missing from a torch this new or newer is stale
NEWER_THAN_SOME_TORCH = {
    "LinearCrossEntropyLoss": "2.13",
}


def _public_module_classes():
    return sorted(name for name in nn.modules.__all__
                  if inspect.isclass(getattr(nn, name, None))
                  and issubclass(getattr(nn, name), nn.Module))


def test_every_public_torch_nn_module_class_is_swept_or_has_a_reason():
    public = set(_public_module_classes())
    swept = {name.split(":")[0] for name in CASES}
    missing = public - swept - set(NOT_SWEPT)
    assert not missing, f"torch.nn classes with neither a row in CASES nor a reason: {missing}"
    absent = (swept | set(NOT_SWEPT)) - public
    stale = {name for name in absent if not torch.__version__ < NEWER_THAN_SOME_TORCH.get(
        name, "0")}
    assert not stale, f"rows for classes torch {torch.__version__} no longer has: {stale}"
    assert not swept & set(NOT_SWEPT)


def _flat(out):
    """The tensors (and Nones) of a (nested) output, in order."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def _is_float(t):
    if t is None:
        return False
    return t.is_floating_point() if isinstance(t, torch.Tensor) \
        else np.issubdtype(np.dtype(t.dtype), np.floating)


def _weights(outs, rng):
    """One fixed random weight array per float output: the loss is their weighted sum, so every
    element's gradient differs (a plain sum of a softmax has none)."""
    return [np.asarray(rng.randn(*o.shape), "float32") for o in outs if _is_float(o)]


def _check_close(got, expected, what, rtol=1e-5, atol=1e-5):
    if expected.layout is not torch.strided:  # (nn.Embedding(sparse=True)'s gradient)
        expected = expected.to_dense()
    np.testing.assert_allclose(got, torch_host(expected), rtol=rtol, atol=atol, err_msg=what)


def _made(make):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (deprecations: NLLLoss2d, UpsamplingBilinear2d, ...)
        return make()


def _assert_gradients_refused_like_torch(make, makers, output_cnt):
    """torch's gradients of the layer in eval mode raise `CUDNN_RNN_EVAL_BACKWARD` (a cuDNN
    RNN), and the wrapper's do the same."""
    tmod = _made(make)
    ref = copy.deepcopy(tmod).to(torch_device()).eval()
    wrap = PyTorchModule(tmod, output_cnt=output_cnt)
    wrap.eval()
    arrays = [m(np.random.RandomState(0)) for m in makers]
    ref_outs = _flat(ref(*[torch.tensor(a, device=torch_device()) for a in arrays]))
    with pytest.raises(RuntimeError, match=CUDNN_RNN_EVAL_BACKWARD):
        sum(o.sum() for o in ref_outs if _is_float(o)).backward()
    gm = GradManager().attach(list(wrap.parameters()))
    with gm:
        outs = _flat(wrap(*[mge.tensor(a, dtype=a.dtype) for a in arrays]))
        with pytest.raises(RuntimeError, match=CUDNN_RNN_EVAL_BACKWARD):
            gm.backward(sum(o.sum() for o in outs if _is_float(o)))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_torch_nn_layer_trains_in_megengine_like_in_torch(name, mode):
    make, makers, *rest = CASES[name]
    output_cnt = rest[0] if rest else 1
    cls = name.split(":")[0]
    if not hasattr(nn, cls):
        pytest.skip(f"torch {torch.__version__} has no nn.{cls}, which torch "
                    f"{NEWER_THAN_SOME_TORCH.get(cls, '(a newer one)')} has")
    if mode == "eval" and issubclass(getattr(nn, cls), nn.RNNBase) and cudnn_runs_torch_rnns():
        # torch on a GPU: no gradients of cuDNN's RNN kernels in eval mode, also through the
        # wrapper; with cuDNN off (what a torch user does for them) both train alike
        _assert_gradients_refused_like_torch(make, makers, output_cnt)
        enabled = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False
        try:
            _trains_like_torch(make, makers, output_cnt, mode)
        finally:
            torch.backends.cudnn.enabled = enabled
        return
    _trains_like_torch(make, makers, output_cnt, mode)


def _trains_like_torch(make, makers, output_cnt, mode):
    tmod = _made(make)
    ref = copy.deepcopy(tmod).to(torch_device())
    wrap = PyTorchModule(tmod, output_cnt=output_cnt)
    wrap.train(mode == "train")
    ref.train(mode == "train")
    # (megengine lists a module's state sorted by name, torch in registration order)
    assert sorted(wrap.state_dict()) == sorted(ref.state_dict())
    params = dict(wrap.named_parameters())
    ref_params = dict(ref.named_parameters())
    assert sorted(params) == sorted(ref_params)
    if params:  # (both optimizers refuse an empty list)
        opt = optim.SGD(list(params.values()), lr=0.1)
        ref_opt = torch.optim.SGD(list(ref_params.values()), lr=0.1)
    rng = np.random.RandomState(0)
    for step in range(2):
        arrays = [m(rng) for m in makers]
        inputs = [mge.tensor(a, dtype=a.dtype) for a in arrays]
        differentiated = [_is_float(x) and not getattr(m, "constant", False)
                          for x, m in zip(inputs, makers)]
        floats = [x for x, d in zip(inputs, differentiated) if d]
        gm = GradManager().attach(list(params.values()) + floats)
        ref_inputs = [torch.tensor(a, device=torch_device()) for a in arrays]
        for t, d in zip(ref_inputs, differentiated):
            t.requires_grad_(d)
        torch.manual_seed(10 + step)  # (dropout, RReLU, fractional pooling: the same draws)
        with gm:
            outs = _flat(wrap(*inputs))
            weights = _weights(outs, np.random.RandomState(step))
            loss = sum((o * mge.tensor(w)).sum() for o, w in zip(
                [o for o in outs if _is_float(o)], weights))
            gm.backward(loss)
        torch.manual_seed(10 + step)
        ref_outs = _flat(ref(*ref_inputs))
        assert len(outs) == len(ref_outs)
        for i, (o, r) in enumerate(zip(outs, ref_outs)):
            if r is None:
                assert o is None, f"output {i}"
                continue
            assert o.dtype == torch_host(r).dtype, f"dtype of output {i}"
            _check_close(o.numpy(), r, f"output {i} of step {step}")
        ref_loss = sum((o * torch.tensor(w, device=o.device)).sum() for o, w in zip(
            [o for o in ref_outs if _is_float(o)], weights))
        ref_loss.backward()
        for i, (x, t) in enumerate(zip(floats, [t for t in ref_inputs if t.requires_grad])):
            if t.grad is None:
                assert x.grad is None or not np.any(x.grad.numpy()), f"input {i}"
            else:
                _check_close(x.grad.numpy(), t.grad, f"gradient of input {i} of step {step}")
        for key, p in params.items():
            t = ref_params[key]
            if t.grad is None:
                assert p.grad is None or not np.any(p.grad.numpy()), key
            else:
                _check_close(p.grad.numpy(), t.grad, f"gradient of {key} of step {step}")
        if params:
            opt.step().clear_grad()
            ref_opt.step()
            ref_opt.zero_grad()
        state = wrap.state_dict()  # (megengine's view of the shared memory)
        for key, value in ref.state_dict().items():
            _check_close(state[key], value, f"{key} after step {step}")
    if mode == "eval":  # no gradient wanted: torch runs without a graph (and its fast paths)
        arrays = [m(rng) for m in makers]
        torch.manual_seed(20)  # (fractional pooling draws in eval mode too)
        outs = _flat(wrap(*[mge.tensor(a, dtype=a.dtype) for a in arrays]))
        torch.manual_seed(20)
        with torch.no_grad():
            ref_outs = _flat(ref(*[torch.tensor(a, device=torch_device()) for a in arrays]))
        for i, (o, r) in enumerate(zip(outs, ref_outs)):
            if r is not None:
                _check_close(o.numpy(), r, f"output {i} without gradients")


@pytest.mark.parametrize("name", [n for n in _public_module_classes() if n.startswith("Lazy")])
def test_a_lazy_layer_is_refused_until_a_torch_forward_materialised_it(name):
    sizes = (3, 2) if "Conv" in name else (3,) if name == "LazyLinear" else ()  # (out, kernel)
    with pytest.raises(ValueError, match=r"uninitialized \(lazy\).*one forward pass in torch"):
        PyTorchModule(getattr(nn, name)(*sizes))  # (materialised, each has a row in CASES)
