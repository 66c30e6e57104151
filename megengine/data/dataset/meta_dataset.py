"""The dataset base classes: map-style (indexable) and stream-style (iterable) datasets."""
from abc import ABC, abstractmethod
from typing import Tuple

__all__ = ["Dataset", "MapDataset", "StreamDataset", "ArrayDataset"]


class Dataset(ABC):
    r"""Base class of all datasets.

    A map-style dataset defines ``__getitem__`` and ``__len__``; a stream-style one
    subclasses :class:`StreamDataset` and defines ``__iter__``.
    """


class MapDataset(Dataset):
    r"""A dataset indexed by integers ``0 .. len(self) - 1``."""

    @abstractmethod
    def __getitem__(self, index):
        pass

    @abstractmethod
    def __len__(self):
        pass


class StreamDataset(Dataset):
    r"""A dataset read as a (possibly endless) stream of samples by ``__iter__``.

    Each item of the stream is one sample, e.g. ``(image, label)``. The older
    MegEngine form ``(is_batched, data)`` is understood too: ``(False, (image, label))``
    is one sample and ``(True, (images, labels))`` holds several samples along axis 0.
    """

    @abstractmethod
    def __iter__(self):
        pass


class ArrayDataset(MapDataset):
    r"""A dataset over one or more arrays of equal length; item ``i`` is
    ``tuple(array[i] for array in arrays)``.

    Args:
        arrays: numpy arrays (or sequences) whose first dimension indexes the samples.
    """

    def __init__(self, *arrays):
        super().__init__()
        if not arrays:
            raise ValueError("ArrayDataset needs at least one array, e.g. ArrayDataset(images, labels)")
        lengths = [len(array) for array in arrays]
        if any(n != lengths[0] for n in lengths):
            raise ValueError(
                "lengths of input arrays are inconsistent: got lengths {}; every array "
                "must hold one entry per sample along its first dimension".format(lengths)
            )
        self.arrays = arrays

    def __getitem__(self, index: int) -> Tuple:
        return tuple(array[index] for array in self.arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])
