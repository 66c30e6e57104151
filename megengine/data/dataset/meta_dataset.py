"""The dataset base classes: map-style (indexable) and stream-style (iterable) datasets."""
import bisect
from abc import ABC, abstractmethod
from typing import Iterable, Tuple

__all__ = ["Dataset", "MapDataset", "StreamDataset", "ArrayDataset", "ConcatDataset"]


class Dataset(ABC):
    r"""Base class of map-style datasets (upstream 1.x): a subclass defines
    ``__getitem__(index)`` (one sample, usually a tuple of numpy arrays) and ``__len__``;
    ``Dataset`` itself cannot be instantiated. Stream datasets subclass
    :class:`StreamDataset` instead.

    ``a + b`` of two map-style datasets is their :class:`ConcatDataset`.
    """

    @abstractmethod
    def __getitem__(self, index):
        pass

    @abstractmethod
    def __len__(self):
        pass

    def __add__(self, other):
        return ConcatDataset([self, other])


class MapDataset(Dataset):
    r"""A dataset indexed by integers ``0 .. len(self) - 1`` (the name older MegEngine 1.x
    releases used for :class:`Dataset`; kept so their code runs)."""


class StreamAccessError(AssertionError, TypeError):
    """Indexing or len() of a stream. Upstream raises AssertionError; it is a TypeError too,
    which is what lets ``list(stream)`` work (Python's length hint skips TypeErrors)."""


class StreamDataset(Dataset):
    r"""A dataset read as a (possibly endless) stream of samples by ``__iter__``; it has no
    length and no indexing (as upstream, asking for either is an AssertionError).

    Each item of the stream is one sample, e.g. ``(image, label)``. The older
    MegEngine form ``(is_batched, data)`` is understood too: ``(False, (image, label))``
    is one sample and ``(True, (images, labels))`` holds several samples along axis 0.
    """

    @abstractmethod
    def __iter__(self):
        pass

    def __getitem__(self, idx):
        raise StreamAccessError(
            f"can not get item from StreamDataset by index: {type(self).__name__} is read "
            f"by iterating over it (a DataLoader with a StreamSampler does that)"
        )

    def __len__(self):
        raise StreamAccessError(
            f"StreamDataset does not have length: {type(self).__name__} may be endless"
        )

    def __add__(self, other):
        raise TypeError("streams cannot be concatenated into a ConcatDataset (it indexes)")


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


class ConcatDataset(MapDataset):
    r"""The samples of several map-style datasets one after another: index ``i`` reaches
    the dataset that holds the ``i``-th sample overall (negative indices count from the end).

    Args:
        datasets: the map-style datasets, in order (at least one; streams cannot be joined).
    """

    def __init__(self, datasets: Iterable[Dataset]):
        super().__init__()
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        for i, d in enumerate(self.datasets):
            if isinstance(d, StreamDataset):
                raise TypeError(f"ConcatDataset: datasets[{i}] is a StreamDataset, which has no "
                                f"length or indexing; only map-style datasets can be joined")
            if not (hasattr(d, "__getitem__") and hasattr(d, "__len__")):
                raise TypeError(f"ConcatDataset: datasets[{i}] ({type(d).__name__}) needs "
                                f"__getitem__ and __len__")
        self.cumulative_sizes = []
        total = 0
        for d in self.datasets:
            total += len(d)
            self.cumulative_sizes.append(total)

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index: int):
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"ConcatDataset index {index} out of range for length {n}")
        which = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][index - start]
