"""`megengine.module.quantized`: the inference layers on quantized (integer) tensors that
:func:`~.quantization.quantize` makes from QAT layers, as upstream's package."""
from .batch_matmul_activation import BatchMatMulActivation
from .concat import Concat
from .conv import Conv2d, ConvRelu2d, ConvTranspose2d, ConvTransposeRelu2d
from .conv_bn import ConvBn2d, ConvBnRelu2d
from .conv_transpose_bn import ConvTransposeBn2d, ConvTransposeBnRelu2d
from .elemwise import Elemwise
from .linear import Linear, LinearRelu
from .linear_bn import LinearBn1d, LinearBnRelu1d
from .module import QuantizedModule
from .quant_dequant import DequantStub, QuantStub

__all__ = [
    "QuantizedModule", "Linear", "LinearRelu", "Conv2d", "ConvRelu2d", "ConvTranspose2d",
    "ConvTransposeRelu2d", "ConvBn2d", "ConvBnRelu2d", "ConvTransposeBn2d",
    "ConvTransposeBnRelu2d", "LinearBn1d", "LinearBnRelu1d", "BatchMatMulActivation",
    "Elemwise", "Concat", "QuantStub", "DequantStub",
]
