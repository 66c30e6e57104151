"""Activation layers: ReLU, LeakyReLU, PReLU, Sigmoid, SiLU, GELU, Softmax."""
import numpy as np

from .. import functional as F
from ..core.tensor import Parameter
from .module import Module

__all__ = ["ReLU", "LeakyReLU", "PReLU", "Sigmoid", "SiLU", "GELU", "Softmax"]


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, inputs):
        return F.sigmoid(inputs)


class SiLU(Module):
    """x * sigmoid(x)."""

    def forward(self, inputs):
        return F.silu(inputs)


class GELU(Module):
    """x * Phi(x), Phi the standard normal CDF."""

    def forward(self, inputs):
        return F.gelu(inputs)


class LeakyReLU(Module):
    """x for x >= 0, ``negative_slope * x`` otherwise."""

    def __init__(self, negative_slope: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = negative_slope

    def forward(self, inputs):
        return F.leaky_relu(inputs, self.negative_slope)


class PReLU(Module):
    """LeakyReLU with a learned slope: one shared (``weight`` shape (1,)) or one per channel
    of an NCHW input (``weight`` shape (1, C, 1, 1)), all starting at ``init``."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        if num_parameters < 1:
            raise ValueError(f"PReLU: num_parameters must be >= 1, got {num_parameters}")
        self.num_parameters = num_parameters
        shape = (1, num_parameters, 1, 1) if num_parameters > 1 else (1,)
        self.weight = Parameter(np.full(shape, init, dtype=np.float32))

    def forward(self, inputs):
        return F.prelu(inputs, self.weight)


class Softmax(Module):
    """exp(x) / sum(exp(x)) along ``axis`` (None: F.softmax's default axis for the input's ndim)."""

    def __init__(self, axis=None, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def forward(self, inputs):
        return F.softmax(inputs, self.axis)

    def _module_info_string(self) -> str:
        return f"axis={self.axis}"
