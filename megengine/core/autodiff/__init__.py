"""Upstream's `megengine.core.autodiff`: the low-level `grad.Grad` object (see `grad.py`)."""
from . import grad  # noqa: F401
