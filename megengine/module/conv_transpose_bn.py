"""ConvTransposeBn2d and ConvTransposeBnRelu2d: a ConvTranspose2d followed by BatchNorm2d (and relu)."""
from typing import Tuple, Union

from .. import functional as F
from .batchnorm import BatchNorm2d
from .conv import ConvTranspose2d
from .module import Module

__all__ = ["ConvTransposeBn2d", "ConvTransposeBnRelu2d"]


class _ConvTransposeBnActivation2d(Module):
    """Holds ``conv_transpose2d`` and ``bn`` under upstream's child names."""

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 output_padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1, bias: bool = True,
                 conv_mode: str = "cross_correlation", compute_mode: str = "default",
                 eps=1e-5, momentum=0.9, affine=True, track_running_stats=True, **kwargs):
        super().__init__(**kwargs)
        self.conv_transpose2d = ConvTranspose2d(in_channels, out_channels, kernel_size, stride,
                                                padding, output_padding, dilation, groups, bias,
                                                conv_mode, compute_mode)
        self.bn = BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats)


class ConvTransposeBn2d(_ConvTransposeBnActivation2d):
    """``bn(conv_transpose2d(x))``."""

    def forward(self, inp):
        return self.bn(self.conv_transpose2d(inp))


class ConvTransposeBnRelu2d(_ConvTransposeBnActivation2d):
    """``relu(bn(conv_transpose2d(x)))``."""

    def forward(self, inp):
        return F.relu(self.bn(self.conv_transpose2d(inp)))
