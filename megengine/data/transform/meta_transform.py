"""The transform base classes: a Transform maps one sample (or a batch of samples) to another."""
from abc import ABC, abstractmethod
from typing import Sequence, Tuple

__all__ = ["Transform", "PseudoTransform"]


class Transform(ABC):
    r"""Base class of all transforms: override :meth:`apply` (one sample);
    :meth:`apply_batch` applies it to every sample of a batch."""

    def apply_batch(self, inputs: Sequence[Tuple]):
        return tuple(self.apply(input) for input in inputs)

    @abstractmethod
    def apply(self, input: Tuple):
        pass

    def __repr__(self):
        return self.__class__.__name__


class PseudoTransform(Transform):
    r"""The identity transform, used when a DataLoader is given none."""

    def apply(self, input: Tuple):
        return input
