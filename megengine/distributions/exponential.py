"""The exponential distribution with rate ``rate``: density ``rate * exp(-rate * x)`` for x >= 0."""
from numbers import Number
from typing import Iterable, Union

import numpy as np

from .. import functional as F
from ..core.tensor import Tensor
from ..random import uniform
from .distribution import Distribution

__all__ = ["Exponential"]


class Exponential(Distribution):
    """Exponential distributions parameterized by ``rate`` (``1 / scale``), batched over
    ``rate``'s shape.

    Examples:
        >>> import megengine as mge
        >>> from megengine.distributions import Exponential
        >>> m = Exponential(mge.tensor([1.0, 4.0]))
        >>> m.sample((3,)).shape
        (3, 2)
    """

    def __init__(self, rate: Union[Tensor, Number, np.ndarray]):
        self.rate = rate if isinstance(rate, Tensor) else Tensor(rate, dtype="float32")
        if not np.issubdtype(self.rate.dtype, np.floating):
            self.rate = self.rate.astype("float32")
        if (self.rate._peek() <= 0).any():  # a check only: unseen by jit.trace
            raise ValueError("Exponential: rate should be positive (it is 1 / scale), got "
                             f"{self.rate.numpy()!r}")
        super().__init__(batch_shape=self.rate.shape)

    @property
    def mean(self) -> Tensor:
        return 1.0 / self.rate

    @property
    def stddev(self) -> Tensor:
        return 1.0 / self.rate

    @property
    def variance(self) -> Tensor:
        return F.pow(self.rate, -2)

    def rsample(self, sample_shape: Iterable[int] = ()) -> Tensor:
        # Inverse-CDF sampling: u ~ U[0, 1) gives -log(1 - u) / rate, finite because u < 1,
        # and differentiable in `rate` (the reparameterization gradient is -sample / rate).
        shape = self._extended_shape(sample_shape)
        u = uniform(size=shape)._to(self.rate.device)
        return -F.log1p(-u) / F.broadcast_to(self.rate, shape)

    def log_prob(self, value) -> Tensor:
        return F.log(self.rate) - self.rate * value

    def cdf(self, value) -> Tensor:
        return 1.0 - F.exp(-self.rate * value)

    def icdf(self, value) -> Tensor:
        return -F.log1p(-value) / self.rate

    def entropy(self) -> Tensor:
        return 1.0 - F.log(self.rate)
