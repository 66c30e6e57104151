"""Random tensors (upstream's `megengine.random`): seed, distributions, permutations, RNG."""
from .rng import (
    RNG,
    beta,
    exponential,
    gaussian,
    manual_seed,
    gamma,
    multinomial,
    normal,
    permutation,
    poisson,
    seed,
    shuffle,
    uniform,
)

__all__ = ["RNG", "seed", "uniform", "normal", "gamma", "beta", "poisson", "exponential",
           "multinomial", "permutation", "shuffle",
           "gaussian", "manual_seed"]  # the last two: 0.x names
