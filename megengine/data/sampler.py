"""Samplers: they decide which sample indices form each batch (or, for streams, the batch size)."""
import collections.abc
import itertools
import math
from abc import ABC, abstractmethod
from typing import Iterator, List

import numpy as np

__all__ = [
    "Sampler",
    "MapSampler",
    "StreamSampler",
    "SequentialSampler",
    "RandomSampler",
    "ReplacementSampler",
    "Infinite",
]


def _check_positive_int(name, value, hint=""):
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value <= 0:
        raise ValueError(
            "{} should be a positive integer, but got {}={!r}{}".format(name, name, value, hint)
        )
    return int(value)


class Sampler(ABC):
    r"""Base class of all samplers. A sampler yields, batch after batch, what the
    :class:`~.DataLoader` should load next."""

    @abstractmethod
    def __iter__(self):
        pass


class MapSampler(Sampler):
    r"""Base class of samplers for map-style datasets: iterating it yields lists of indices.

    Args:
        dataset: the dataset to sample from (only ``len(dataset)`` is used).
        batch_size: number of indices in each batch, at most a rank's share of the epoch
            (``ceil(num_samples / world_size)``; more raises ``ValueError``, as upstream).
            Default: 1
        drop_last: drop the last batch if it is smaller than ``batch_size``. Default: False
        num_samples: number of samples drawn in one epoch over all ranks; default ``len(dataset)``.
        world_size: number of ranks (distributed processes) sharing the epoch; default the
            process group's (``megengine.distributed.get_world_size()``, 1 when not distributed).
        rank: this process's rank, in ``[0, world_size)``; default the process group's.
        seed: seed of this sampler's own random generator (ranks must share it).
    """

    def __init__(
        self,
        dataset,
        batch_size=1,
        drop_last=False,
        num_samples=None,
        world_size=None,
        rank=None,
        seed=None,
    ):
        self.batch_size = _check_positive_int("batch_size", batch_size)
        if not isinstance(drop_last, (bool, np.bool_)):
            raise ValueError("drop_last should be True or False, but got drop_last={!r}".format(drop_last))
        if num_samples is not None:
            num_samples = _check_positive_int("num_samples", num_samples)
        if world_size is None or rank is None:
            # as upstream: inside a process group every rank takes its own share by default
            from ..distributed.group import get_rank, get_world_size

            world_size = get_world_size() if world_size is None else world_size
            rank = get_rank() if rank is None else rank
        world_size = _check_positive_int("world_size", world_size)
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise ValueError(
                "rank should be an integer in [0, world_size={}), but got rank={!r}".format(world_size, rank)
            )
        if seed is None and world_size > 1:
            seed = 0  # every rank must draw the same permutation before scattering it
        self.dataset = dataset
        self.drop_last = bool(drop_last)
        self.world_size = world_size
        self.rank = int(rank)
        try:
            rng = np.random.RandomState(seed)
        except (TypeError, ValueError) as e:  # (numpy's type, as upstream raises)
            raise type(e)(
                "seed should be None or an integer in [0, 2**32), but got seed={!r}".format(seed)
            ) from None
        self.seed = seed
        self.rng = rng
        self._total_samples = num_samples  # None: decided by sample_count()
        self._check_share(len(dataset) if num_samples is None else num_samples)

    def _check_share(self, count):
        """Refuse, as upstream, an epoch of ``count`` samples whose share per rank is smaller
        than one batch (with ``drop_last`` the loader would yield no batch at all). Upstream
        counts ``len(dataset)`` (or ``num_samples``), also where ``indices`` are given."""
        share = int(math.ceil(count / self.world_size))
        if share < self.batch_size:
            split = "" if self.world_size == 1 else ", {} per rank over world_size={}".format(
                share, self.world_size)
            fixes = (["batch_size <= {}".format(share)] if share else []) + (
                ["fewer ranks"] if self.world_size > 1 else []) + [
                "more samples (a larger dataset or num_samples)"]
            raise ValueError(
                "{}: batch_size={} is more than an epoch gives a rank ({} samples{}); with "
                "drop_last=True no batch would be yielded, and upstream refuses it either way: "
                "use {}".format(type(self).__name__, self.batch_size, count, split,
                                 " or ".join(fixes)))

    def sample_count(self) -> int:
        """How many indices :meth:`sample` returns per epoch, over all ranks."""
        if self._total_samples is not None:
            return self._total_samples
        return len(self.dataset)

    _rank_samples = None  # num_samples as a subclass set it

    @property
    def num_samples(self) -> int:
        """Number of indices this rank gets per epoch. A subclass may set it (upstream's is
        a plain attribute): ``len()`` and `scatter` then use the value set."""
        if self._rank_samples is not None:
            return self._rank_samples
        return int(math.ceil(self.sample_count() / self.world_size))

    @num_samples.setter
    def num_samples(self, value):
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
                or value < 0:
            raise ValueError(f"num_samples should be a non-negative integer, got {value!r}")
        self._rank_samples = int(value)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return int(math.ceil(self.num_samples / self.batch_size))

    def __iter__(self) -> Iterator[List]:
        return self.batch()

    def sample(self):
        """Return all indices of one epoch (over all ranks), in order.

        Subclasses define it, or override `batch` instead (as upstream, a sampler that
        overrides `batch`, like basedet's InferenceSampler, needs no ``sample``)."""
        raise NotImplementedError(
            f"{type(self).__name__}.sample: a MapSampler subclass defines sample() (the "
            "indices of one epoch) or overrides batch()")

    def scatter(self, indices: List) -> List:
        r"""Give this rank its share: indices ``rank, rank + world_size, ...``, after
        repeating the first indices so that every rank gets ``num_samples`` of them."""
        total = self.num_samples * self.world_size
        if indices:
            while len(indices) < total:
                indices = indices + indices[: total - len(indices)]
        return indices[self.rank : total : self.world_size]

    def _epoch_indices(self):
        """The indices of one epoch for `batch`: ``sample()``'s, or an equal array where a
        sampler can give one (a Python list of a whole epoch costs seconds and gigabytes at
        tens of millions of samples, and batch only slices it)."""
        return self.sample()

    def batch(self) -> Iterator[List]:
        """Yield the lists of indices of one epoch."""
        indices = self._epoch_indices()
        lazy = isinstance(indices, (np.ndarray, range))
        if not lazy:
            indices = list(indices)
        if self.world_size > 1:
            if lazy and type(self).scatter is MapSampler.scatter:
                # scatter's rule on an array: repeat from the start up to world_size * num_samples
                # indices, then every world_size-th one from this rank's position
                total = self.num_samples * self.world_size
                indices = np.asarray(indices)
                if len(indices):
                    indices = np.resize(indices, total)
                indices = indices[self.rank: total: self.world_size]
            else:
                indices = self.scatter(list(indices))
        step = self.batch_size
        for start in range(0, len(indices), step):
            chunk = indices[start: start + step]
            if self.drop_last and len(chunk) < step:
                break
            yield chunk.tolist() if isinstance(chunk, np.ndarray) else list(chunk)


def _check_indices(indices):
    if indices is not None and not isinstance(indices, (collections.abc.Sequence, np.ndarray)):
        raise ValueError(
            "indices should be None or a sequence of dataset indices, but got indices={!r}".format(indices)
        )
    return indices


class SequentialSampler(MapSampler):
    r"""Yield indices ``0, 1, 2, ...`` (or the given ``indices``) in order.

    Args:
        indices: if given, the indices to visit instead of ``range(len(dataset))``.
        other args: see :class:`MapSampler`.
    """

    def __init__(self, dataset, batch_size=1, drop_last=False, indices=None, world_size=None, rank=None):
        super().__init__(dataset, batch_size, drop_last, None, world_size, rank)
        self.indices = _check_indices(indices)

    def sample_count(self):
        return len(self.dataset) if self.indices is None else len(self.indices)

    def sample(self):
        if self.indices is None:
            return range(len(self.dataset))
        return list(self.indices)


class RandomSampler(MapSampler):
    r"""Yield the indices (or the given ``indices``) in a new random order each epoch,
    without replacement.

    Args:
        indices: if given, the indices to shuffle instead of ``range(len(dataset))``.
        seed: seed of the sampler's generator; equal seeds give equal orders.
        other args: see :class:`MapSampler`.
    """

    def __init__(
        self, dataset, batch_size=1, drop_last=False, indices=None, world_size=None, rank=None, seed=None
    ):
        super().__init__(dataset, batch_size, drop_last, None, world_size, rank, seed)
        self.indices = _check_indices(indices)

    def sample_count(self):
        return len(self.dataset) if self.indices is None else len(self.indices)

    def sample(self) -> List:
        return self._permutation().tolist()

    def _permutation(self):
        if self.indices is None:
            return self.rng.permutation(len(self.dataset))
        return self.rng.permutation(np.asarray(self.indices))

    def _epoch_indices(self):
        if type(self).sample is not RandomSampler.sample:  # a subclass's own sample() decides
            return self.sample()
        return self._permutation()  # the same draw as sample(), left as an array


class ReplacementSampler(MapSampler):
    r"""Draw ``num_samples`` indices at random with replacement, optionally weighted.

    Args:
        num_samples: indices drawn per epoch; default ``len(dataset)``.
        weights: one non-negative weight per sample (need not sum to 1).
        other args: see :class:`MapSampler`.
    """

    def __init__(
        self,
        dataset,
        batch_size=1,
        drop_last=False,
        num_samples=None,
        weights=None,
        world_size=None,
        rank=None,
        seed=None,
    ):
        super().__init__(dataset, batch_size, drop_last, num_samples, world_size, rank, seed)
        if weights is not None:
            if not isinstance(weights, (collections.abc.Sequence, np.ndarray)):
                raise ValueError("weights should be None or a sequence, but got weights={!r}".format(weights))
            if len(weights) != len(dataset):
                raise ValueError(
                    "weights needs one weight per sample: len(dataset)={} but len(weights)={}".format(
                        len(dataset), len(weights)
                    )
                )
            weights = np.asarray(weights, dtype=np.float64)
            if (weights < 0).any() or weights.sum() <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
            weights = weights / weights.sum()
        self.weights = weights

    def sample(self) -> List:
        n = len(self.dataset)
        # every rank's share is drawn (as upstream), none repeated to fill the last rank's
        count = self.num_samples * self.world_size
        if self.weights is None:
            return self.rng.randint(n, size=count).tolist()
        return self.rng.choice(n, size=count, replace=True, p=self.weights).tolist()


class Infinite(MapSampler):
    r"""Wrap a :class:`MapSampler` (or any iterable of batches of indices, as upstream) so that
    it never ends: when the wrapped sampler's epoch is over, a new epoch starts."""

    def __init__(self, sampler):
        if not isinstance(sampler, collections.abc.Iterable):
            raise TypeError("Infinite wraps a sampler (an iterable of batches of indices), e.g. "
                            "Infinite(RandomSampler(dataset, batch_size=8)), but got {!r}".format(sampler))
        self.sampler = sampler
        self.sampler_iter = iter(sampler)

    def sample(self):
        raise NotImplementedError("Infinite has no epoch to sample; iterate it instead")

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.sampler_iter)
        except StopIteration:
            self.sampler_iter = iter(self.sampler)
            return next(self.sampler_iter)  # an empty wrapped sampler ends the iteration

    def __len__(self):
        return np.iinfo(np.int64).max

    def __getattr__(self, name):
        # what Infinite does not have is the wrapped sampler's (its world_size, rank,
        # num_samples, indices, ...), as upstream's
        if name.startswith("__") or name == "sampler":  # (copy/pickle probe before __init__)
            raise AttributeError(name)
        return getattr(self.sampler, name)


class StreamSampler(Sampler):
    r"""Sampler for a :class:`~.StreamDataset`: it only sets how many consecutive
    samples of the stream form one batch.

    It has no ``drop_last`` (nor has upstream's: only the map-style samplers take one). A
    :class:`~.DataLoader` reading a finite stream ends after a last, short batch of what is
    left, as a map-style sampler with ``drop_last=False``, with workers or without.

    Args:
        batch_size: samples per batch. Default: 1
    """

    def __init__(self, batch_size=1):
        self.batch_size = _check_positive_int("batch_size", batch_size)

    def __iter__(self):
        return self.batch()

    def sample(self):
        """The positions in the stream: 0, 1, 2, ... without end."""
        return itertools.count()

    def batch(self):
        """Yield the positions of each batch: ``[0, ..., batch_size - 1]``, then the next
        ``batch_size`` positions, and so on, as upstream's."""
        positions = self.sample()
        while True:
            yield list(itertools.islice(positions, self.batch_size))
