"""Tests of megengine/data/sampler.py: batching, shuffling, replacement, ranks and Infinite."""
import numpy as np
import pytest

from megengine.data.dataset import ArrayDataset
from megengine.data.sampler import (
    Infinite,
    MapSampler,
    RandomSampler,
    ReplacementSampler,
    SequentialSampler,
    StreamSampler,
)


def dataset(n):
    return ArrayDataset(np.arange(n))


def test_sequential_batches_and_len():
    ds = dataset(10)
    assert list(SequentialSampler(ds, batch_size=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(SequentialSampler(ds, batch_size=4)) == 3
    assert list(SequentialSampler(ds, batch_size=4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(SequentialSampler(ds, batch_size=4, drop_last=True)) == 2
    assert list(SequentialSampler(ds, batch_size=5, drop_last=True)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert list(SequentialSampler(ds)) == [[i] for i in range(10)]


def test_sequential_with_indices():
    sampler = SequentialSampler(dataset(10), batch_size=2, indices=[9, 3, 5])
    assert list(sampler) == [[9, 3], [5]]
    assert len(sampler) == 2


def test_random_is_a_seeded_permutation():
    ds = dataset(10)
    sampler = RandomSampler(ds, batch_size=3, seed=42)
    epoch1 = [i for batch in sampler for i in batch]
    epoch2 = [i for batch in sampler for i in batch]
    assert sorted(epoch1) == list(range(10)) and sorted(epoch2) == list(range(10))
    rng = np.random.RandomState(42)  # the same generator, drawn independently
    assert epoch1 == rng.permutation(10).tolist()
    assert epoch2 == rng.permutation(10).tolist()
    assert epoch1 != epoch2
    assert [len(b) for b in RandomSampler(ds, batch_size=3, seed=42)] == [3, 3, 3, 1]
    assert [len(b) for b in RandomSampler(ds, batch_size=3, drop_last=True)] == [3, 3, 3]
    other = [i for batch in RandomSampler(ds, batch_size=3, seed=42) for i in batch]
    assert other == epoch1


def test_random_with_indices():
    sampler = RandomSampler(dataset(100), batch_size=10, indices=[5, 6, 7], seed=0)
    (batch,) = list(sampler)
    assert sorted(batch) == [5, 6, 7]
    assert len(sampler) == 1


def test_replacement_sampler():
    ds = dataset(5)
    sampler = ReplacementSampler(ds, batch_size=4, num_samples=10, seed=1)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] and len(sampler) == 3
    flat = [i for b in batches for i in b]
    assert flat == np.random.RandomState(1).randint(5, size=10).tolist()
    assert len([i for b in ReplacementSampler(ds) for i in b]) == 5


def test_replacement_sampler_draws_every_ranks_share():
    # upstream 1.13 measured: 5 samples over 2 ranks draw 2 * 3 indices per epoch
    # (RandomState(7).randint(5, size=6) is [4, 1, 3, 3, 4, 1], then [0, 1, 2, 2, 0, 4]);
    # rank 1 takes every second one: no index is repeated from the start to fill its share
    sampler = ReplacementSampler(dataset(5), batch_size=2, seed=7, world_size=2, rank=1)
    assert list(sampler) == [[1, 3], [1]]
    assert list(sampler) == [[1, 2], [4]]
    weighted = ReplacementSampler(dataset(5), batch_size=2, num_samples=7, weights=[1, 2, 3, 1, 2],
                                  seed=7, world_size=3, rank=0)
    p = np.array([1, 2, 3, 1, 2]) / 9
    draws = np.random.RandomState(7).choice(5, size=9, p=p)
    assert [i for b in weighted for i in b] == draws[0::3].tolist()


def test_replacement_sampler_weights():
    ds = dataset(4)
    sampler = ReplacementSampler(ds, batch_size=1000, num_samples=4000, weights=[0, 1, 0, 3], seed=0)
    flat = np.array([i for b in sampler for i in b])
    assert set(flat.tolist()) <= {1, 3}
    assert 0.7 < (flat == 3).mean() < 0.8  # 3 / 4 expected
    with pytest.raises(ValueError, match="one weight per sample"):
        ReplacementSampler(ds, weights=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        ReplacementSampler(ds, weights=[1, -1, 1, 1])


def test_ranks_split_the_epoch():
    ds = dataset(10)
    shares = [list(SequentialSampler(ds, batch_size=2, world_size=3, rank=r)) for r in range(3)]
    # 10 indices padded to 12 by repeating the first ones, then dealt out round-robin
    assert shares[0] == [[0, 3], [6, 9]]
    assert shares[1] == [[1, 4], [7, 0]]
    assert shares[2] == [[2, 5], [8, 1]]
    assert len(SequentialSampler(ds, batch_size=2, world_size=3, rank=0)) == 2
    # ranks shuffle with a shared default seed, so together they cover the dataset
    flat = [i for r in range(3) for b in RandomSampler(ds, batch_size=2, world_size=3, rank=r) for i in b]
    assert set(flat) == set(range(10)) and len(flat) == 12


def test_infinite_restarts_epochs():
    ds = dataset(3)
    sampler = Infinite(SequentialSampler(ds, batch_size=2))
    assert [next(sampler) for _ in range(5)] == [[0, 1], [2], [0, 1], [2], [0, 1]]
    assert len(sampler) == np.iinfo(np.int64).max
    assert sampler.batch_size == 2


def test_infinite_wraps_any_iterable_of_batches():
    # upstream 1.13 measured: Infinite([[1, 2], [3]]) gives [1, 2], [3], [1, 2], ...
    batches = iter(Infinite([[1, 2], [3]]))
    assert [next(batches) for _ in range(3)] == [[1, 2], [3], [1, 2]]
    with pytest.raises(TypeError, match="iterable of batches"):
        Infinite(5)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size should be a positive integer"):
        SequentialSampler(dataset(3), batch_size=bad)
    with pytest.raises(ValueError, match="batch_size"):
        StreamSampler(batch_size=bad)


def test_other_bad_arguments():
    ds = dataset(3)
    with pytest.raises(ValueError, match="drop_last"):
        SequentialSampler(ds, drop_last="yes")
    with pytest.raises(ValueError, match="rank"):
        SequentialSampler(ds, world_size=2, rank=2)
    with pytest.raises(ValueError, match="world_size"):
        SequentialSampler(ds, world_size=0)
    with pytest.raises(ValueError, match="num_samples"):
        ReplacementSampler(ds, num_samples=0)
    with pytest.raises(ValueError, match="indices"):
        RandomSampler(ds, indices=5)
    # upstream 1.13 raises numpy's errors, of these types ("Cannot cast scalar from
    # dtype('<U1') to dtype('int64')", "Seed must be between 0 and 2**32 - 1")
    for seed, error in (("x", TypeError), (-1, ValueError), (2**32, ValueError)):
        with pytest.raises(error, match=r"seed should be None or an integer in \[0, 2\*\*32\)"):
            RandomSampler(ds, seed=seed)


@pytest.mark.parametrize("make, share", [
    (lambda ds: SequentialSampler(ds, batch_size=8), 7),
    (lambda ds: SequentialSampler(ds, batch_size=8, drop_last=True), 7),
    (lambda ds: RandomSampler(ds, batch_size=4, world_size=3, rank=0), 3),
    (lambda ds: SequentialSampler(ds, batch_size=5, drop_last=True, world_size=2, rank=1), 4),
    (lambda ds: ReplacementSampler(ds, batch_size=4, num_samples=3), 3),
    (lambda ds: ReplacementSampler(ds, batch_size=5, num_samples=8, world_size=2, rank=0), 4),
])
def test_a_ranks_share_smaller_than_a_batch_is_refused(make, share):
    # upstream 1.13 measured: with 7 samples each of these raised ValueError ("num_samples
    # should be greater than batch_size, but got num_samples=<share> ..."), drop_last or not;
    # earlier versions of this fork accepted them, and with drop_last=True yielded no batch
    with pytest.raises(ValueError, match=r"batch_size=\d is more than an epoch gives a rank"
                       r".*use batch_size <= {}".format(share)):
        make(dataset(7))


def test_a_share_of_exactly_one_batch_and_indices_are_accepted_as_upstream():
    # upstream 1.13 measured: a share equal to batch_size gives one batch; with indices its
    # check counts len(dataset), so 3 indices in batches of 4 give one short batch
    assert list(SequentialSampler(dataset(7), batch_size=4, world_size=2, rank=1)) == [[1, 3, 5, 0]]
    assert len(RandomSampler(dataset(7), batch_size=3, world_size=3, rank=0)) == 1
    assert list(SequentialSampler(dataset(7), batch_size=4, indices=[0, 1, 2])) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="use more samples"):  # (upstream: ValueError too)
        SequentialSampler(dataset(0))


def test_stream_sampler():
    sampler = StreamSampler(batch_size=3)
    assert sampler.batch_size == 3
    assert list(next(iter(sampler))) == [0, 1, 2]
    # upstream 1.13 measured: the positions go on from batch to batch; a new iteration restarts
    batches = iter(sampler)
    assert [next(batches) for _ in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert next(iter(sampler)) == [0, 1, 2]


def _epochs_seen_by_this_rank():
    """Two epochs of samplers built without world_size/rank inside a process group."""
    import megengine.distributed as dist

    ds = dataset(12)
    random_sampler = RandomSampler(ds, batch_size=2)
    return (dist.get_rank(), random_sampler.world_size, len(random_sampler),
            [[i for b in random_sampler for i in b] for _ in range(2)],
            [i for b in SequentialSampler(ds, batch_size=4) for i in b],
            [len(b) for b in ReplacementSampler(ds, batch_size=2, num_samples=9)])


def test_samplers_take_the_process_groups_ranks_by_default():
    pytest.importorskip("torch")
    import megengine.distributed as dist

    results = dist.launcher(_epochs_seen_by_this_rank, n_gpus=3, device_type="cpu", timeout=60)()
    for rank, (got_rank, world, length, _, _, _) in enumerate(results):
        assert (got_rank, world, length) == (rank, 3, 2)  # 12 samples / 3 ranks / batch 2
    for epoch in range(2):
        shares = [r[3][epoch] for r in results]
        # each rank sees a disjoint part of the epoch, together the whole dataset
        assert sorted(i for share in shares for i in share) == list(range(12))
    assert [r[3][0] for r in results] != [r[3][1] for r in results]  # a new order each epoch
    assert [r[4] for r in results] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert all(r[5] == [2, 1] for r in results)  # 9 draws -> 3 per rank
    assert SequentialSampler(dataset(4)).world_size == 1  # not distributed: one rank


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_random_sampler_batches_are_its_sample_batched_without_listing_the_epoch():
    # MegEngine/swin-transformer's loader samples a 60M-long dataset: a Python list of the whole
    # permutation took 8 s and gigabytes before the first batch; batch() now slices the array
    import tracemalloc

    n = 2_000_000
    expected = RandomSampler(_Sized(n), batch_size=3, seed=7).sample()
    sampler = RandomSampler(_Sized(n), batch_size=3, seed=7)
    tracemalloc.start()
    first = next(iter(sampler.batch()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert first == expected[:3] and all(type(i) is int for i in first)
    assert peak < 40e6  # the 16 MB permutation array, not ~72 MB of Python ints
    # sharded and with drop_last, batches equal scatter(sample()) cut by batch_size
    for rank in (0, 1):
        a = RandomSampler(_Sized(11), batch_size=2, drop_last=True, world_size=2, rank=rank, seed=3)
        b = RandomSampler(_Sized(11), batch_size=2, drop_last=True, world_size=2, rank=rank, seed=3)
        shard = b.scatter(b.sample())
        assert list(a.batch()) == [shard[i:i + 2] for i in range(0, len(shard) - 1, 2)]


def test_a_sampler_that_overrides_batch_needs_no_sample():
    # upstream's MapSampler.sample raises NotImplementedError rather than being abstract:
    # basedet's InferenceSampler overrides batch() only (earlier versions of this fork refused
    # to make it: "Can't instantiate abstract class InferenceSampler")
    class InferenceSampler(MapSampler):
        def __init__(self, ds, batch_size=1, world_size=None, rank=None):
            super().__init__(ds, batch_size, False, None, world_size, rank)
            begin = self.num_samples * self.rank
            self.indices = list(range(begin, min(begin + self.num_samples, len(ds))))

        def batch(self):
            step = self.batch_size
            return iter([self.indices[i:i + step] for i in range(0, len(self.indices), step)])

    assert list(InferenceSampler(dataset(5), batch_size=2)) == [[0, 1], [2, 3], [4]]
    assert list(InferenceSampler(dataset(5), 2, world_size=2, rank=1)) == [[3, 4]]

    class NoEpoch(MapSampler):
        pass

    with pytest.raises(NotImplementedError, match=r"NoEpoch.sample: .*defines sample\(\)"):
        list(NoEpoch(dataset(3)))


def test_a_subclass_sets_num_samples_as_upstreams_attribute():
    # upstream's num_samples is a plain attribute (this rank's count) that len() and scatter()
    # read; a subclass giving each rank its own share sets it (earlier versions of this fork
    # raised AttributeError: the property had no setter)
    class Shard(SequentialSampler):
        def __init__(self, ds, rank):
            super().__init__(ds, batch_size=2, world_size=2, rank=rank)
            self.num_samples = 3 if rank == 0 else 2

    assert len(Shard(dataset(5), 0)) == 2 and len(Shard(dataset(5), 1)) == 1
    # scatter pads the epoch to num_samples * world_size and deals it out
    assert Shard(dataset(5), 0).scatter(list(range(5))) == [0, 2, 4]
    with pytest.raises(ValueError, match="num_samples should be a non-negative integer"):
        Shard(dataset(5), 0).num_samples = -1


def test_infinite_passes_other_attributes_to_the_wrapped_sampler():
    # as upstream's Infinite.__getattr__ (a training loop reads world_size or num_samples
    # through it)
    inner = RandomSampler(dataset(6), batch_size=2, world_size=2, rank=1, seed=3)
    sampler = Infinite(inner)
    assert (sampler.world_size, sampler.rank, sampler.num_samples) == (2, 1, 3)
    assert sampler.sample_count() == 6
    with pytest.raises(AttributeError, match="no_such"):
        sampler.no_such
    # before __init__ (as copy and pickle make it) it has no sampler: no endless recursion
    assert not hasattr(Infinite.__new__(Infinite), "world_size")


def test_the_abstract_sampler_is_the_base_of_a_hand_written_one():
    from megengine.data import DataLoader, Sampler

    with pytest.raises(TypeError, match="abstract"):
        Sampler()

    class Pairs(Sampler):  # (no MapSampler: upstream 1.13 asserts "types of dataset and
        def __init__(self, n):  # sampler do not match" here; the fork takes its batches)
            self.n = n

        def __iter__(self):
            return iter([i, i + 1] for i in range(0, self.n, 2))

        def __len__(self):
            return self.n // 2

    ds = ArrayDataset(np.arange(6, dtype=np.float32).reshape(6, 1) * 10, np.arange(6))
    for workers in (0, 2):
        loader = DataLoader(ds, Pairs(6), num_workers=workers)
        assert len(loader) == 3
        assert [b[1].tolist() for b in loader] == [[0, 1], [2, 3], [4, 5]]
