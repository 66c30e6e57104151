"""Random tensors (upstream's `megengine.random`): seed, distributions, permutations, RNG."""
from .rng import RNG, beta, gamma, normal, permutation, poisson, seed, shuffle, uniform

__all__ = ["RNG", "seed", "uniform", "normal", "gamma", "beta", "poisson", "permutation",
           "shuffle"]
