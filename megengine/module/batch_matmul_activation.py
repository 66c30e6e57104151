"""`BatchMatMulActivation`: per-batch weight matrices times the input, plus bias, then an activation."""
import numpy as np

from .. import functional as F
from ..core.ops import ShapeError
from ..core.tensor import Parameter
from .linear import _reset_linear
from .module import Module

__all__ = ["BatchMatMulActivation"]


class BatchMatMulActivation(Module):
    """``activation(weight @ x + bias)`` with ``weight`` of shape (batch, out_features,
    in_features) and ``x`` of shape (batch, in_features, n); no transposes anywhere.

    Args:
        batch, in_features, out_features: the weight's shape.
        bias: add a learned ``bias`` of shape (out_features,), one value per output row.
        nonlinear_mode: "identity" or "relu".
    """

    def __init__(self, batch: int, in_features: int, out_features: int, bias: bool = True,
                 nonlinear_mode: str = "identity", **kwargs):
        super().__init__(**kwargs)
        mode = str(nonlinear_mode).lower()
        if mode not in ("identity", "relu"):
            raise ValueError(f"BatchMatMulActivation: nonlinear_mode must be 'identity' or "
                             f"'relu', got {nonlinear_mode!r}")
        self.batch = batch
        self.in_features = in_features
        self.out_features = out_features
        self.nonlinear_mode = mode
        self.weight = Parameter(np.zeros((batch, out_features, in_features), np.float32))
        self.bias = Parameter(np.zeros((out_features,), np.float32)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_linear(self)  # as upstream: N(0, 1 / fan_in) weights, zero bias

    def forward(self, x):
        if x.ndim != 3 or x.shape[0] != self.batch or x.shape[1] != self.in_features:
            raise ShapeError(  # (upstream's RuntimeError too)
                f"BatchMatMulActivation: input must be (batch={self.batch}, "
                f"in_features={self.in_features}, n), got shape {x.shape}"
            )
        out = F.matmul(self.weight, x)
        if self.bias is not None:
            # one bias per output row; upstream adds along the last axis, which lines up
            # only when n == out_features
            out = out + self.bias.reshape(1, self.out_features, 1)
        return F.relu(out) if self.nonlinear_mode == "relu" else out

    def _module_info_string(self) -> str:
        return (f"batch={self.batch}, in_features={self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")
