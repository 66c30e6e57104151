"""Offline fuzzing of ``megengine.data``'s loading: ``python -m tests.fuzz.loader --seeds 200
[--start S]`` draws a dataset (``ArrayDataset`` of one to three arrays, a map-style dataset of
dicts or of named tuples holding megengine Tensors, a finite ``StreamDataset``, one read by
each worker), a sampler (sequential, random, with replacement and weights, over given indices,
wrapped in ``Infinite``, one rank's share of two or three), a transform and a ``DataLoader``
(0-3 workers, ``divide``, ``preload``, a timeout), and checks two epochs of
batches, and ``len``, against an oracle written from the documented rules:

* an epoch's indices: ``range(len)`` or the given ones, in order; a random sampler's are
  ``np.random.RandomState(seed).permutation`` of them, one draw per epoch (upstream's
  generator); with replacement ``randint`` (``choice`` with weights) of ``ceil(num_samples /
  world_size) * world_size`` indices;
* a rank's share: the epoch repeated from its start up to a multiple of ``world_size``, then
  every ``world_size``-th index from position ``rank``; batches of ``batch_size`` in order, the
  last short one dropped with ``drop_last``;
* a batch: the transform of each sample, stacked field by field (numbers as 1-d arrays), in
  sampler order whatever the workers; ``preload`` gives Tensors of the same values;
* a stream: consecutive ``batch_size`` samples, then what is left; with ``parallel_stream``
  the workers' own streams batched so, one batch of each live worker in turn.

A failure prints the drawn configuration. Not run in CI beyond tests/fuzz/test_loader_fuzz.py's
slice. Run it from the repository root with the checkout on PYTHONPATH."""
import collections
import math
import sys

import numpy as np

import megengine as mge
from megengine.data import DataLoader
from megengine.data.dataset import ArrayDataset, Dataset, StreamDataset
from megengine.data.sampler import (Infinite, RandomSampler, ReplacementSampler,
                                    SequentialSampler, StreamSampler)
from megengine.data.transform import Transform

from .gen import run_seeds, seeds_main


class LoaderMismatch(AssertionError):
    """A DataLoader gave other batches (or another length) than the oracle."""


# ----- datasets and transforms (module level: workers may need to pickle them) -----

class DictDataset(Dataset):
    """A map-style dataset of dicts: an image-like array, an int label and a float."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, i):
        return {"img": self.images[i], "label": int(i) * 3, "w": float(i) / 4}

    def __len__(self):
        return len(self.images)


class TensorDataset(Dataset):
    """A map-style dataset whose samples hold megengine Tensors (RIFE's VimeoDataset returns
    them), named tuples ``Sample(img, label)``."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, i):
        return Sample(mge.Tensor(self.images[i]), np.int32(i))

    def __len__(self):
        return len(self.images)


Sample = collections.namedtuple("Sample", ["img", "label"])


class CountStream(StreamDataset):
    """A finite stream of ``n`` samples ``(full(shape, k), k)``."""

    def __init__(self, n, shape):
        self.n, self.shape = n, shape

    def __iter__(self):
        for k in range(self.n):
            yield np.full(self.shape, k, np.float32), k


class ShardStream(StreamDataset):
    """A stream per worker (``parallel_stream=True``): worker ``w`` reads ``lengths[w]``
    samples ``(full(shape, 100 * w + k), w)``."""

    def __init__(self, lengths, shape):
        self.lengths, self.shape = lengths, shape

    def __iter__(self):
        from megengine.data.dataloader import get_worker_info

        info = get_worker_info()
        w = info.idx if info is not None else 0
        for k in range(self.lengths[w]):
            yield np.full(self.shape, 100 * w + k, np.float32), w


class Affine(Transform):
    """``a * field + b`` on each sample's first array field (tuples) or its ``img`` (dicts)."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def apply(self, sample):
        if isinstance(sample, dict):
            return dict(sample, img=self.on(sample["img"]))
        if isinstance(sample, Sample):
            return Sample(self.on(sample.img), sample.label)
        return (self.on(sample[0]),) + tuple(sample[1:])

    def on(self, x):  # (an array, or a Tensor: a Tensor back)
        return (x * self.a + self.b).astype(x.dtype)


# ----- drawing -----

class Draw:
    """One drawn configuration: ``make()`` builds the DataLoader, ``expected()`` the oracle's
    epochs (a list of batches each; Infinite: the first batches it yields)."""

    def __init__(self, rng):
        self.rng = rng
        self.kind = rng.choice(["array", "array", "dict", "tensors", "stream", "shards"])
        n = int(rng.integers(1, 30))
        self.n = n
        if self.kind in ("stream", "shards"):
            self.shape = tuple(int(d) for d in rng.integers(1, 4, rng.integers(0, 3)))
        else:
            count = int(rng.integers(1, 4)) if self.kind == "array" else 1
            self.arrays = []
            for _ in range(count):
                shape = (n,) + tuple(int(d) for d in rng.integers(1, 4, rng.integers(0, 3)))
                dtype = rng.choice(["float32", "int32", "uint8"] if self.kind != "tensors"
                                   else ["float32", "int32"])  # (a Tensor's own dtypes)
                self.arrays.append((rng.standard_normal(shape) * 50).astype(dtype))
        self.transform = (float(rng.integers(1, 4)), float(rng.integers(-2, 3))) \
            if rng.random() < 0.4 else None
        self.batch_size = int(rng.integers(1, 7))
        self.drop_last = bool(rng.random() < 0.3)
        self.sampler = None if self.kind in ("stream", "shards") else rng.choice(
            ["sequential", "random", "random", "replacement", "indices", "infinite"])
        self.world_size = int(rng.choice([1, 1, 1, 2, 3])) if self.sampler else 1
        self.rank = int(rng.integers(0, self.world_size))
        self.seed = int(rng.integers(0, 2 ** 31))
        self.num_samples = int(rng.integers(1, 40)) if rng.random() < 0.5 else None
        self.weights = [float(w) for w in rng.uniform(0, 2, n)] if rng.random() < 0.4 else None
        self.indices = [int(i) for i in rng.integers(0, n, rng.integers(1, 2 * n + 1))]
        self.infinite_of = rng.choice(["sequential", "random"])
        self.num_workers = int(rng.choice([0, 0, 1, 2]))
        if self.kind == "shards":  # (a stream per worker: 1-3 workers, 0-12 samples each)
            self.num_workers = int(rng.integers(1, 4))
            self.lengths = [int(k) for k in rng.integers(0, 13, self.num_workers)]
        self.divide = bool(self.num_workers > 1 and rng.random() < 0.5)
        self.preload = bool(rng.random() < 0.3)
        self.timeout = float(rng.choice([0, 0, 30]))

    def __str__(self):
        skip = {"rng", "arrays"}
        parts = [f"{k}={v!r}" for k, v in vars(self).items() if k not in skip]
        if self.sampler:
            parts.append("arrays=" + ", ".join(f"{a.dtype}{a.shape}" for a in self.arrays))
        return " ".join(parts)

    # the loader under test
    def dataset(self):
        if self.kind == "stream":
            return CountStream(self.n, self.shape)
        if self.kind == "shards":
            return ShardStream(self.lengths, self.shape)
        if self.kind == "dict":
            return DictDataset(self.arrays[0])
        if self.kind == "tensors":
            return TensorDataset(self.arrays[0])
        return ArrayDataset(*self.arrays)

    def make_sampler(self, ds):
        bs, dl, ws, rank = self.batch_size, self.drop_last, self.world_size, self.rank
        if not self.sampler:
            return StreamSampler(batch_size=bs)
        kind = self.infinite_of if self.sampler == "infinite" else self.sampler
        if kind == "sequential":
            inner = SequentialSampler(ds, bs, dl, world_size=ws, rank=rank)
        elif kind == "indices":
            inner = SequentialSampler(ds, bs, dl, indices=self.indices, world_size=ws, rank=rank)
        elif kind == "random":
            inner = RandomSampler(ds, bs, dl, world_size=ws, rank=rank, seed=self.seed)
        else:
            inner = ReplacementSampler(ds, bs, dl, self.num_samples, self.weights,
                                       world_size=ws, rank=rank, seed=self.seed)
        return Infinite(inner) if self.sampler == "infinite" else inner

    def make(self):
        ds = self.dataset()
        transform = None if self.transform is None else Affine(*self.transform)
        return DataLoader(ds, self.make_sampler(ds), transform=transform,
                          num_workers=self.num_workers, timeout=self.timeout,
                          preload=self.preload, divide=self.divide,
                          parallel_stream=self.kind == "shards")

    # the oracle
    def _epoch(self, rng):
        """One epoch's indices over all ranks (drawing from ``rng`` as the sampler's own)."""
        kind = self.infinite_of if self.sampler == "infinite" else self.sampler
        if kind == "sequential":
            return list(range(self.n))
        if kind == "indices":
            return list(self.indices)
        if kind == "random":
            return [int(i) for i in rng.permutation(self.n)]
        total = self.num_samples if self.num_samples is not None else self.n
        count = math.ceil(total / self.world_size) * self.world_size
        if self.weights is None:
            return [int(i) for i in rng.randint(self.n, size=count)]
        p = np.asarray(self.weights, np.float64)
        return [int(i) for i in rng.choice(self.n, size=count, replace=True, p=p / p.sum())]

    def _share(self, epoch, per_rank):
        if self.world_size == 1:
            return epoch
        total = per_rank * self.world_size
        padded = list(epoch)
        while padded and len(padded) < total:
            padded += padded[: total - len(padded)]
        return padded[self.rank: total: self.world_size]

    def _batches(self, indices):
        bs = self.batch_size
        out = [indices[i: i + bs] for i in range(0, len(indices), bs)]
        if self.drop_last and out and len(out[-1]) < bs:
            out.pop()
        return out

    def _sample(self, i):
        if self.kind == "dict":
            sample = {"img": self.arrays[0][i], "label": i * 3, "w": i / 4}
        elif self.kind == "tensors":
            sample = (self.arrays[0][i], np.int32(i))
        else:
            sample = tuple(a[i] for a in self.arrays)
        if self.transform is not None:
            a, b = self.transform
            key = "img" if self.kind == "dict" else 0
            x = sample[key]
            x = (x * a + b).astype(x.dtype)
            sample = dict(sample, img=x) if self.kind == "dict" else (x,) + sample[1:]
        return sample

    def _collate(self, samples):
        if self.kind == "dict":
            return {"img": np.stack([s["img"] for s in samples]),
                    "label": np.array([s["label"] for s in samples]),
                    "w": np.array([s["w"] for s in samples], np.float64)}
        if self.kind == "tensors":  # (a named tuple's fields; numpy scalars as an array)
            return [np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])]
        return [np.stack([s[f] for s in samples]) for f in range(len(samples[0]))]

    def _stream_batches(self, samples):
        if self.transform is not None:
            a, b = self.transform
            samples = [((x * a + b).astype(x.dtype), k) for x, k in samples]
        bs = self.batch_size
        return [[np.stack([s[0] for s in samples[i: i + bs]]),
                 np.array([s[1] for s in samples[i: i + bs]])]
                for i in range(0, len(samples), bs)]

    def expected(self, epochs=2, infinite_batches=None):
        if self.kind == "shards":  # the workers' streams in turn, each while it lasts
            per_worker = [self._stream_batches(
                [(np.full(self.shape, 100 * w + k, np.float32), w) for k in range(length)])
                for w, length in enumerate(self.lengths)]
            one = []
            while any(per_worker):
                for batches in per_worker:
                    if batches:
                        one.append(batches.pop(0))
            return [one] * epochs
        if self.kind == "stream":
            samples = [(np.full(self.shape, k, np.float32), k) for k in range(self.n)]
            return [self._stream_batches(samples)] * epochs
        rng = np.random.RandomState(self.seed)
        kind = self.infinite_of if self.sampler == "infinite" else self.sampler
        if kind in ("sequential", "indices", "random"):
            count = len(self.indices) if kind == "indices" else self.n
            per_rank = math.ceil(count / self.world_size)
        else:
            total = self.num_samples if self.num_samples is not None else self.n
            per_rank = math.ceil(total / self.world_size)
        if self.sampler == "infinite":
            batches = []
            while len(batches) < infinite_batches:
                batches += self._batches(self._share(self._epoch(rng), per_rank))
            return [[self._collate([self._sample(i) for i in b])
                     for b in batches[:infinite_batches]]]
        out = []
        for _ in range(epochs):
            batches = self._batches(self._share(self._epoch(rng), per_rank))
            out.append([self._collate([self._sample(i) for i in b]) for b in batches])
        return out

    def expected_len(self):
        if not self.sampler or self.sampler == "infinite":
            return None
        kind = self.sampler
        count = len(self.indices) if kind == "indices" else (
            self.num_samples if kind == "replacement" and self.num_samples is not None else self.n)
        per_rank = math.ceil(count / self.world_size)
        return per_rank // self.batch_size if self.drop_last else \
            math.ceil(per_rank / self.batch_size)


def _host(value):
    if isinstance(value, mge.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_host(v) for v in value]
    return value


def _same(got, want, where):
    if isinstance(want, dict):
        if not isinstance(got, dict) or sorted(got) != sorted(want):
            raise LoaderMismatch(f"{where}: got {type(got).__name__} {got!r:.200}, expected keys "
                                 f"{sorted(want)}")
        for k in want:
            _same(got[k], want[k], f"{where}[{k!r}]")
        return
    if isinstance(want, list):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            raise LoaderMismatch(f"{where}: got {got!r:.200}, expected {len(want)} fields")
        for k, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{k}]")
        return
    got = np.asarray(got)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise LoaderMismatch(f"{where}: got {got.dtype}{got.shape} {got.ravel()[:6]}, expected "
                             f"{want.dtype}{want.shape} {want.ravel()[:6]}")
    # (preload turns float64 and int64 fields into megengine's 32-bit dtypes, as Tensor does)
    if got.dtype != want.dtype and np.dtype(mge.Tensor(want[:0]).dtype) != got.dtype:
        raise LoaderMismatch(f"{where}: dtype {got.dtype}, expected {want.dtype}")


def check(seed):
    """Check configuration ``seed``; returns "ok" or "refused" (the sampler or loader refused
    the drawn arguments with a ValueError, as documented), raises LoaderMismatch."""
    d = Draw(np.random.default_rng([seed, 61]))
    try:
        loader = d.make()
    except ValueError:
        return "refused"
    try:
        want_len = d.expected_len()
        if want_len is not None and len(loader) != want_len:
            raise LoaderMismatch(f"len(loader) {len(loader)}, expected {want_len}")
        if d.sampler == "infinite":
            take = 2 * (d.batch_size + 3)
            it = iter(loader)
            epochs = [[next(it) for _ in range(take)]]
            want = d.expected(infinite_batches=take)
        else:
            epochs = [list(loader) for _ in range(2)]
            want = d.expected()
        for e, (got, exp) in enumerate(zip(epochs, want)):
            if len(got) != len(exp):
                raise LoaderMismatch(f"epoch {e}: {len(got)} batches, expected {len(exp)}")
            for b, (g, w) in enumerate(zip(got, exp)):
                if d.preload and not any(isinstance(v, mge.Tensor) for v in (
                        g.values() if isinstance(g, dict) else g)):
                    raise LoaderMismatch(f"epoch {e} batch {b}: preload gave no Tensor")
                _same(_host(g), w, f"epoch {e} batch {b}")
    except LoaderMismatch as e:
        raise LoaderMismatch(f"configuration {seed}: {e}\n  {d}") from None
    return "ok"


def fuzz(seeds, start=0):
    """Check configurations ``start`` .. ``start + seeds - 1``; prints each failure; returns
    (number failing, outcome counts)."""
    return run_seeds(check, seeds, start, LoaderMismatch,
                     lambda seed: f"  configuration {seed}: {Draw(np.random.default_rng([seed, 61]))}")


def main(argv=None):
    return seeds_main(argv, "python -m tests.fuzz.loader", __doc__, "configurations", fuzz)


if __name__ == "__main__":
    sys.exit(main())
