"""Probability distributions (upstream's ``megengine.distributions``): sampling, densities, moments."""
from .distribution import Distribution
from .exponential import Exponential

__all__ = ["Distribution", "Exponential"]
