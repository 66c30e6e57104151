"""`Linear`: y = x W^T + b; `LinearRelu`: relu of it (what a Linear, BatchNorm1d, ReLU triple
becomes once eval-mode BN is folded into the weights)."""
import numpy as np

from .. import functional as F
from ..core.tensor import Parameter
from . import init
from .module import Module

__all__ = ["Linear", "LinearRelu"]


def _reset_linear(layer):
    """Upstream 1.x's initialization of a linear map (also BatchMatMulActivation's): weight ~
    N(0, 1 / in_features), not PyTorch's kaiming-uniform; bias = 0."""
    init.normal_(layer.weight, 0.0, float(np.sqrt(1.0 / layer.in_features)))
    if layer.bias is not None:
        init.zeros_(layer.bias)


class Linear(Module):
    """Fully connected layer: ``weight`` (out_features, in_features), ``bias`` (out_features,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 compute_mode: str = "default", **kwargs):
        super().__init__(**kwargs)
        self.in_features = in_features
        self.out_features = out_features
        self.compute_mode = compute_mode
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=np.float32))
        self.bias = Parameter(np.zeros((out_features,), dtype=np.float32)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_linear(self)

    def calc_linear(self, x, weight, bias):
        """This layer's map with the given ``weight`` and ``bias`` in place of its own
        (upstream's hook: QAT layers pass fake-quantized ones, user code transformed ones)."""
        return F.linear(x, weight, bias, compute_mode=self.compute_mode)

    def forward(self, x):
        return self.calc_linear(x, self.weight, self.bias)

    def _module_info_string(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class LinearRelu(Linear):
    """``relu(x W^T + b)``: upstream's fused target of ``fuse_linear_bn_relu_module`` in eval
    mode (the batch norm folded away)."""

    def forward(self, inp):  # upstream's argument name
        return F.relu(self.calc_linear(inp, self.weight, self.bias))
