"""Automatic differentiation: `GradManager` and user-defined differentiable ops (`Function`)."""
from .function import Function
from .grad_manager import GradManager, grad

__all__ = ["GradManager", "Function", "grad"]
