"""Pooling layers: MaxPool2d and AvgPool2d over NCHW inputs."""
from typing import Tuple, Union

from .. import functional as F
from ..functional.pooling import _avg_mode
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d"]


class _PoolNd(Module):
    def __init__(self, kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = None,
                 padding: Union[int, Tuple[int, int]] = 0, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size
        self.stride = stride or kernel_size  # upstream: the stride defaults to the window
        self.padding = padding

    def _module_info_string(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_PoolNd):
    """The maximum of each ``kernel_size`` window, moved by ``stride``, over a zero-padded input."""

    def forward(self, inp):
        return F.max_pool2d(inp, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_PoolNd):
    """The mean of each window; ``mode`` "average_count_exclude_padding" (default) divides by
    the number of real elements in the window, "average" by the window size."""

    def __init__(self, kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = None,
                 padding: Union[int, Tuple[int, int]] = 0,
                 mode: str = "average_count_exclude_padding", **kwargs):
        super().__init__(kernel_size, stride, padding, **kwargs)
        _avg_mode(mode, "AvgPool2d")  # (any F.avg_pool2d takes, as upstream's: "MAX", ...)
        self.mode = mode

    def forward(self, inp):
        return F.avg_pool2d(inp, self.kernel_size, self.stride, self.padding, self.mode)

    def _module_info_string(self) -> str:
        return super()._module_info_string() + f", mode={self.mode}"
