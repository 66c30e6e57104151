"""`LocalResponseNorm`: each value divided by a power of the squares summed over nearby channels."""
from .. import functional as F
from ..core._trace_option import as_int, is_dim
from .module import Module

__all__ = ["LocalResponseNorm"]


class LocalResponseNorm(Module):
    """Local response normalization across channels (upstream 1.x).

    Args:
        kernel_size: how many neighbouring channels (centred on each channel) are summed.
        k: the additive constant. Default: 2.0
        alpha: the scale of the sum of squares. Default: 1e-4
        beta: the exponent. Default: 0.75
    """

    def __init__(self, kernel_size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                 beta: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        kernel_size = as_int(kernel_size) if is_dim(kernel_size) else kernel_size  # (a guard)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LocalResponseNorm: kernel_size must be an odd int >= 1 (a "
                             f"centred window, as upstream's), got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.k = k
        self.alpha = alpha
        self.beta = beta

    def forward(self, inp):
        return F.local_response_norm(inp, self.kernel_size, self.k, self.alpha, self.beta)
