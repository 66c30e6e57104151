"""SlidingWindow and SlidingWindowTranspose: the modules over F.sliding_window and its adjoint."""
from typing import Tuple, Union

from .. import functional as F
from .module import Module

__all__ = ["SlidingWindow", "SlidingWindowTranspose"]


class SlidingWindow(Module):
    """(N, C, H, W) -> (N, C, OH, OW, KH, KW): each output location holds the zero-padded
    window of the input under it (``F.sliding_window``)."""

    def __init__(self, kernel_size: Union[int, Tuple[int, int]],
                 padding: Union[int, Tuple[int, int]] = 0,
                 stride: Union[int, Tuple[int, int]] = 1,
                 dilation: Union[int, Tuple[int, int]] = 1, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size
        self.padding = padding
        self.stride = stride
        self.dilation = dilation

    def forward(self, inp):
        return F.sliding_window(inp, self.kernel_size, self.padding, self.stride, self.dilation)


class SlidingWindowTranspose(Module):
    """(N, C, OH, OW, KH, KW) -> (N, C, *output_size): windows summed back into an image
    (``F.sliding_window_transpose``, the adjoint of :class:`SlidingWindow`)."""

    def __init__(self, output_size: Union[int, Tuple[int, int]],
                 kernel_size: Union[int, Tuple[int, int]],
                 padding: Union[int, Tuple[int, int]] = 0,
                 stride: Union[int, Tuple[int, int]] = 1,
                 dilation: Union[int, Tuple[int, int]] = 1, **kwargs):
        super().__init__(**kwargs)
        self.output_size = output_size
        self.kernel_size = kernel_size
        self.padding = padding
        self.stride = stride
        self.dilation = dilation

    def forward(self, inp):
        return F.sliding_window_transpose(inp, self.output_size, self.kernel_size, self.padding,
                                          self.stride, self.dilation)
