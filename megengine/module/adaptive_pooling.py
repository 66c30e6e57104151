"""Adaptive pooling layers: pool an NCHW input down to a given output size (OH, OW)."""
from .. import functional as F
from .module import Module

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d"]


class _AdaptivePoolNd(Module):
    def __init__(self, oshp, **kwargs):
        super().__init__(**kwargs)
        self.oshp = oshp


class AdaptiveMaxPool2d(_AdaptivePoolNd):
    """Max pooling whose window and stride are chosen so the output is ``oshp`` (an int or (OH, OW))."""

    def forward(self, inp):
        return F.adaptive_max_pool2d(inp, self.oshp)


class AdaptiveAvgPool2d(_AdaptivePoolNd):
    """Average pooling whose window and stride are chosen so the output is ``oshp``."""

    def forward(self, inp):
        return F.adaptive_avg_pool2d(inp, self.oshp)
