"""Automatic differentiation: `GradManager` and user-defined differentiable ops (`Function`)."""
from .function import Function
from .grad_manager import GradManager, GradManagerGroup, grad

__all__ = ["GradManager", "GradManagerGroup", "Function", "grad"]
