"""LinearBn1d and LinearBnRelu1d: a Linear followed by BatchNorm1d (and relu), as one module."""
import numpy as np

from .. import functional as F
from ..core.tensor import Parameter
from .batchnorm import BatchNorm1d
from .linear import Linear
from .module import Module

__all__ = ["LinearBn1d", "LinearBnRelu1d"]


class _LinearBnActivation1d(Module):
    """Holds ``linear`` and ``bn`` under upstream's child names.

    Upstream also gives the fused module a ``bias`` Parameter of its own (zeros, shape
    ``(out_features,)``) that its float forward does not use; it is kept so that state dicts
    saved by upstream load here with ``strict=True`` and ours load there.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 compute_mode: str = "default", eps=1e-5, momentum=0.9, affine=True,
                 track_running_stats=True, **kwargs):
        super().__init__(**kwargs)
        self.in_features = in_features
        self.out_features = out_features
        self.bias = Parameter(np.zeros((out_features,), np.float32)) if bias else None
        self.linear = Linear(in_features, out_features, bias, compute_mode)
        self.bn = BatchNorm1d(out_features, eps, momentum, affine, track_running_stats)


class LinearBn1d(_LinearBnActivation1d):
    """``bn(linear(x))`` for (N, in_features) inputs."""

    def forward(self, inp):
        return self.bn(self.linear(inp))


class LinearBnRelu1d(_LinearBnActivation1d):
    """``relu(bn(linear(x)))``."""

    def forward(self, inp):
        return F.relu(self.bn(self.linear(inp)))
