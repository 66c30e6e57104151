"""`megengine.module` (M): the Module base class, the standard layers and `init`.

The PyTorch bridge lives in `megengine.module.pytorch` and is not imported here: importing
megengine must never import torch.
"""
from . import init
from .activation import GELU, LeakyReLU, PReLU, ReLU, Sigmoid, SiLU, Softmax
from .adaptive_pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import (Conv1d, Conv2d, Conv3d, ConvTranspose2d, ConvTranspose3d, DeformableConv2d,
                   LocalConv2d)
from .dropout import Dropout
from .embedding import Embedding
from .identity import Identity
from .linear import Linear
from .module import Module
from .normalization import GroupNorm, InstanceNorm, LayerNorm
from .pooling import AvgPool2d, MaxPool2d
from .sequential import Sequential

__all__ = [
    "Module", "init", "Sequential", "Identity", "Linear", "Conv1d", "Conv2d", "Conv3d",
    "ConvTranspose2d", "ConvTranspose3d", "LocalConv2d", "DeformableConv2d",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "BatchNorm1d",
    "BatchNorm2d", "LayerNorm", "GroupNorm", "InstanceNorm", "Dropout", "Embedding", "ReLU",
    "LeakyReLU", "PReLU", "Sigmoid", "SiLU", "GELU", "Softmax",
]
