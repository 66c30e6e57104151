"""ConvBn2d and ConvBnRelu2d: a Conv2d followed by BatchNorm2d (and relu), as one module."""
from typing import Tuple, Union

from .. import functional as F
from .batchnorm import BatchNorm2d
from .conv import Conv2d
from .module import Module

__all__ = ["ConvBn2d", "ConvBnRelu2d"]


class _ConvBnActivation2d(Module):
    """Holds ``conv`` (a Conv2d, ``padding_mode`` included) and ``bn`` (a BatchNorm2d over its
    output channels); the children's names are upstream's, so state dicts carry over
    (``conv.weight``, ``bn.running_mean``)."""

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1, bias: bool = True,
                 conv_mode: str = "cross_correlation", compute_mode: str = "default",
                 eps=1e-5, momentum=0.9, affine=True, track_running_stats=True,
                 padding_mode: str = "zeros", **kwargs):
        super().__init__(**kwargs)
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                           groups, bias, conv_mode, compute_mode, padding_mode)
        self.bn = BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats)


class ConvBn2d(_ConvBnActivation2d):
    """``bn(conv(x))``: the float form of a layer that quantization-aware training fuses."""

    def forward(self, inp):
        return self.bn(self.conv(inp))


class ConvBnRelu2d(_ConvBnActivation2d):
    """``relu(bn(conv(x)))``."""

    def forward(self, inp):
        return F.relu(self.bn(self.conv(inp)))
