"""`megengine.module.qat`: the quantization-aware-training versions of the quantizable float
layers (fake quantization of weights and activations in float), as upstream's package."""
from .batch_matmul_activation import BatchMatMulActivation
from .concat import Concat
from .conv import Conv2d, ConvRelu2d, ConvTranspose2d, ConvTransposeRelu2d
from .conv_bn import ConvBn2d, ConvBnRelu2d
from .conv_transpose_bn import ConvTransposeBn2d, ConvTransposeBnRelu2d
from .elemwise import Elemwise
from .linear import Linear, LinearRelu
from .linear_bn import LinearBn1d, LinearBnRelu1d
from .module import QATModule
from .quant_dequant import DequantStub, QuantStub

__all__ = [
    "QATModule", "Linear", "LinearRelu", "Conv2d", "ConvRelu2d", "ConvTranspose2d",
    "ConvTransposeRelu2d", "ConvBn2d", "ConvBnRelu2d", "ConvTransposeBn2d",
    "ConvTransposeBnRelu2d", "LinearBn1d", "LinearBnRelu1d", "BatchMatMulActivation",
    "Elemwise", "Concat", "QuantStub", "DequantStub",
]
