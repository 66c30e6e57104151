"""`Concat`: F.concat as a layer (upstream's float version of the quantizable concat)."""
from typing import Iterable

from .. import functional as F
from ..core.tensor import Tensor
from .module import Module

__all__ = ["Concat"]


class Concat(Module):
    """``Concat()(inps, axis=0)`` joins the tensors ``inps`` along ``axis``."""

    def forward(self, inps: Iterable[Tensor], axis: int = 0):
        return F.concat(inps, axis)
