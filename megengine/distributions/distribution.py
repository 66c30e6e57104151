"""The base class of the distributions: batch/event shapes and the interface every family fills in."""
from typing import Iterable, Optional

import numpy as np

from ..core.tensor import Tensor

__all__ = ["Distribution"]


def _as_shape(shape, what):
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        return (int(shape),)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"{what} should be a tuple of ints, got {shape!r}")
    out = tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in out):
        raise TypeError(f"{what} should be a tuple of ints, got {shape!r}")
    out = tuple(int(d) for d in out)
    if any(d < 0 for d in out):
        raise ValueError(f"{what} should not have negative sizes, got {out}")
    return out


class Distribution:
    """A family of probability distributions, batched over ``batch_shape``.

    A sample of ``sample_shape`` has shape ``sample_shape + batch_shape + event_shape``.
    Subclasses define ``rsample`` (reparameterized: differentiable in the parameters),
    ``log_prob``, ``cdf``, ``icdf``, ``mean`` and ``variance``; the base class gives
    ``sample`` (``rsample`` outside autodiff), ``stddev`` and the shapes.
    """

    def __init__(self, batch_shape: Optional[Iterable[int]] = (),
                 event_shape: Optional[Iterable[int]] = ()):
        self._batch_shape = _as_shape(batch_shape, "batch_shape")
        self._event_shape = _as_shape(event_shape, "event_shape")

    @property
    def batch_shape(self):
        """The shape over which the parameters are batched."""
        return self._batch_shape

    @property
    def event_shape(self):
        """The shape of one sample of one distribution of the batch."""
        return self._event_shape

    # What a family must define. Calling one the family lacks is an error naming the family.
    def _missing(self, what):
        return NotImplementedError(f"{type(self).__name__} does not define {what}")

    @property
    def mean(self) -> Tensor:
        """The mean of each distribution of the batch."""
        raise self._missing("mean")

    @property
    def variance(self) -> Tensor:
        """The variance of each distribution of the batch."""
        raise self._missing("variance")

    @property
    def stddev(self) -> Tensor:
        """The standard deviation: the square root of ``variance``."""
        return self.variance ** 0.5

    def rsample(self, sample_shape: Iterable[int] = ()) -> Tensor:
        """A reparameterized sample of shape ``sample_shape + batch_shape + event_shape``."""
        raise self._missing("rsample")

    def sample(self, sample_shape: Iterable[int] = ()) -> Tensor:
        """A sample of shape ``sample_shape + batch_shape + event_shape``, cut from autodiff."""
        return self.rsample(sample_shape).detach()

    def log_prob(self, value) -> Tensor:
        """The log of the density (or mass) at ``value``."""
        raise self._missing("log_prob")

    def cdf(self, value) -> Tensor:
        """The cumulative distribution function at ``value``."""
        raise self._missing("cdf")

    def icdf(self, value) -> Tensor:
        """The inverse of the cumulative distribution function at probability ``value``."""
        raise self._missing("icdf")

    def entropy(self) -> Tensor:
        """The differential entropy of each distribution of the batch."""
        raise self._missing("entropy")

    def _extended_shape(self, sample_shape=()):
        """The shape of a sample: ``sample_shape + batch_shape + event_shape``."""
        return _as_shape(sample_shape, "sample_shape") + self._batch_shape + self._event_shape

    def __repr__(self):
        return f"{type(self).__name__}(batch_shape={self._batch_shape}, event_shape={self._event_shape})"
