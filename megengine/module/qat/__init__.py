"""`megengine.module.qat`: the quantization-aware-training versions of the quantizable float
layers (fake quantization of weights and activations in float), as upstream's package."""
from .concat import Concat
from .conv import Conv2d, ConvRelu2d
from .conv_bn import ConvBn2d, ConvBnRelu2d
from .elemwise import Elemwise
from .linear import Linear
from .module import QATModule
from .quant_dequant import DequantStub, QuantStub

__all__ = [
    "QATModule", "Linear", "Conv2d", "ConvRelu2d", "ConvBn2d", "ConvBnRelu2d", "Elemwise",
    "Concat", "QuantStub", "DequantStub",
]
