"""Upstream's random-number descriptors (``UniformRNG``, ``GaussianRNG``, ...) and their
handles (`new_rng_handle`), drawing from `megengine.random`'s generators."""
import numpy as np

from .opdef import OpDef, _shape_of

__all__ = ["new_rng_handle", "delete_rng_handle", "get_global_rng_seed", "set_global_rng_seed",
           "UniformRNG", "GaussianRNG", "GammaRNG", "BetaRNG", "PoissonRNG", "ExponentialRNG",
           "PermutationRNG", "ShuffleRNG"]

_rng_handles = {}  # handle -> megengine.random.RNG
_next_handle = [1]


def new_rng_handle(comp_node, seed):
    """A random-number source on ``comp_node`` seeded with ``seed``; its number is the
    ``handle`` parameter of the RNG descriptors. Handle 0 is the global source."""
    from ...random.rng import RNG

    handle = _next_handle[0]
    _next_handle[0] += 1
    _rng_handles[handle] = RNG(seed=int(seed), device=str(comp_node))
    return handle


def delete_rng_handle(handle):
    """Forget a handle made by `new_rng_handle`."""
    if _rng_handles.pop(int(handle), None) is None:
        raise ValueError(f"delete_rng_handle: no random-number handle {handle} (made by "
                         "new_rng_handle and not yet deleted)")


def get_global_rng_seed():
    """The seed last given to `megengine.random.seed` (or `set_global_rng_seed`)."""
    from ...random import rng

    return rng._global_seed


def set_global_rng_seed(seed):
    """`megengine.random.seed`, by upstream's internal name."""
    from ...random import rng

    rng.seed(seed)


class _RNGDef(OpDef):
    """Shared by the RNG descriptors: the source their ``handle`` names."""

    def _rng(self, device):
        from ...random import rng

        if int(self.handle) == 0:
            return rng.RNG(device=device) if device is not None else rng._default_rng
        source = _rng_handles.get(int(self.handle))
        if source is None:
            raise ValueError(f"{type(self).__name__}: no random-number handle {self.handle}; "
                             "make one with new_rng_handle(comp_node, seed)")
        return source


class UniformRNG(_RNGDef):
    """Samples of U(0, 1) of the shape an int tensor input holds."""

    _params = (("seed", 0), ("dtype", "float32"), ("handle", 0))

    def _lower(self, shape):
        out = self._rng(shape.device).uniform(size=_shape_of(shape))
        return (out.astype(self.dtype),)


class GaussianRNG(_RNGDef):
    """Samples of N(mean, std**2) of the shape an int tensor input holds."""

    _params = (("seed", 0), ("mean", 0.0), ("std", 1.0), ("dtype", "float32"), ("handle", 0))

    def _lower(self, shape):
        out = self._rng(shape.device).normal(float(self.mean), float(self.std),
                                             size=_shape_of(shape))
        return (out.astype(self.dtype),)


class GammaRNG(_RNGDef):
    """Samples of Gamma(shape, scale), elementwise over the two input tensors."""

    _params = (("seed", 0), ("handle", 0))

    def _lower(self, shape, scale):
        return (self._rng(shape.device).gamma(shape, scale, size=None),)


class BetaRNG(_RNGDef):
    """Samples of Beta(alpha, beta), elementwise over the two input tensors."""

    _params = (("seed", 0), ("handle", 0))

    def _lower(self, alpha, beta):
        return (self._rng(alpha.device).beta(alpha, beta, size=None),)


class PoissonRNG(_RNGDef):
    """Samples of Poisson(lam), elementwise over the input tensor."""

    _params = (("seed", 0), ("handle", 0))

    def _lower(self, lam):
        return (self._rng(lam.device).poisson(lam, size=None),)


class ExponentialRNG(_RNGDef):
    """Samples of Exp(rate), elementwise over the input tensor."""

    _params = (("seed", 0), ("handle", 0))

    def _lower(self, rate):
        return (self._rng(rate.device).exponential(rate, size=None),)


class PermutationRNG(_RNGDef):
    """A random permutation of ``range(n)``, n the size the shape input holds."""

    _params = (("seed", 0), ("dtype", "int32"), ("handle", 0))

    def _lower(self, shape):
        (n,) = _shape_of(shape)
        return (self._rng(shape.device).permutation(n, dtype=np.dtype(self.dtype).name),)


class ShuffleRNG(_RNGDef):
    """The input with its first axis in a random order, and the order (int32 indices)."""

    _params = (("seed", 0), ("handle", 0))

    def _lower(self, x):
        order = self._rng(x.device).permutation(x.shape[0], dtype="int32")
        return (x[order], order)


