"""`megengine.module` (M): the Module base class, the standard layers and `init`.

The PyTorch bridge lives in `megengine.module.pytorch` and is not imported here: importing
megengine must never import torch.
"""
from . import init
from .activation import GELU, LeakyReLU, PReLU, ReLU, Sigmoid, SiLU, Softmax
from .adaptive_pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d
from .batch_matmul_activation import BatchMatMulActivation
from .batchnorm import BatchNorm1d, BatchNorm2d, SyncBatchNorm
from .concat import Concat
from .conv import (Conv1d, Conv2d, Conv3d, ConvRelu2d, ConvTranspose2d, ConvTranspose3d,
                   ConvTransposeRelu2d, DeformableConv2d, LocalConv2d, RegionRestrictedConv)
from .conv_bn import ConvBn2d, ConvBnRelu2d
from .conv_transpose_bn import ConvTransposeBn2d, ConvTransposeBnRelu2d
from .deformable_psroi_pooling import DeformablePSROIPooling
from .dropout import Dropout
from .elemwise import Elemwise
from .embedding import Embedding
from .identity import Identity
from .linear import Linear, LinearRelu
from .linear_bn import LinearBn1d, LinearBnRelu1d
from .lrn import LocalResponseNorm
from .module import Module
from .multiheadattn import MultiHeadAttention
from .normalization import GeneralNorm, GroupNorm, InstanceNorm, LayerNorm
from .padding import Pad
from .pixel_shuffle import PixelShuffle
from .pooling import AvgPool2d, MaxPool2d
from .quant_dequant import DequantStub, QuantStub
from .rnn import LSTM, RNN, LSTMCell, RNNCell
from .sequential import Sequential
from .sliding_window import SlidingWindow, SlidingWindowTranspose
from .vision import (
    AdditiveGaussianNoise,
    AdditiveLaplaceNoise,
    AdditivePoissonNoise,
    Emboss,
    LinearContrast,
    Sharpen,
)

__all__ = [
    "Module", "init", "Sequential", "Identity", "Linear", "LinearRelu", "Conv1d", "Conv2d",
    "Conv3d",
    "ConvTranspose2d", "ConvTranspose3d", "LocalConv2d", "DeformableConv2d",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "BatchNorm1d",
    "BatchNorm2d", "LayerNorm", "GroupNorm", "InstanceNorm", "Dropout", "Embedding", "ReLU",
    "LeakyReLU", "PReLU", "Sigmoid", "SiLU", "GELU", "Softmax",
    "BatchMatMulActivation", "Concat", "Elemwise", "LocalResponseNorm", "Pad", "PixelShuffle",
    "RNNCell", "LSTMCell", "RNN", "LSTM",
    "AdditiveGaussianNoise", "AdditiveLaplaceNoise", "AdditivePoissonNoise", "Emboss", "Sharpen",
    "LinearContrast", "SyncBatchNorm",
    "ConvRelu2d", "ConvTransposeRelu2d", "ConvBn2d", "ConvBnRelu2d", "ConvTransposeBn2d",
    "ConvTransposeBnRelu2d", "LinearBn1d", "LinearBnRelu1d", "QuantStub", "DequantStub",
    "SlidingWindow", "SlidingWindowTranspose", "DeformablePSROIPooling", "RegionRestrictedConv",
    "GeneralNorm", "MultiHeadAttention",
]


def __getattr__(name):
    # M.qat / M.quantized load on first use: upstream's `import megengine` imports them (so
    # `M.qat.Conv2d` works there without importing the package); here they stay out of
    # `import megengine` to keep it fast.
    if name in ("qat", "quantized"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'megengine.module' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"qat", "quantized"})
