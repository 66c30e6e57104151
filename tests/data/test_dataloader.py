"""Tests of megengine/data/dataloader.py: serial and worker-process loading, streams,
errors, timeouts and worker shutdown."""
import gc
import logging
import multiprocessing
import os
import time

import numpy as np
import pytest

from megengine.data import (
    ArrayDataset,
    Collator,
    DataLoader,
    Infinite,
    RandomSampler,
    SequentialSampler,
    StreamDataset,
    StreamSampler,
    get_worker_info,
)
from megengine.data.transform import Compose, Normalize, PseudoTransform, ToMode, Transform

from devices import requires_cuda, run_python


def make_dataset(n=20):
    images = np.arange(n * 2 * 3 * 1, dtype=np.uint8).reshape(n, 2, 3, 1)
    labels = np.arange(n, dtype=np.int32)
    return ArrayDataset(images, labels)


def assert_no_children():
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert multiprocessing.active_children() == []


def assert_first_batch_times_out(loader):
    """Asking ``loader`` (whose data sleeps or blocks far longer than its timeout) for its first
    batch raises its timeout error within 5 s and leaves no worker process behind."""
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="timeout"):
        next(iter(loader))
    assert time.monotonic() - start < 5
    assert_no_children()


class AddOne(Transform):
    def apply(self, input):
        image, label = input
        return image, label + 1


class Numbers(StreamDataset):
    """0, 1, ..., n-1 as (array([i, i]), i); finite."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield np.array([i, i], dtype=np.int64), i


class Blocking(StreamDataset):
    def __iter__(self):
        while True:
            time.sleep(10)
            yield np.zeros(1), 0


def test_defaults_and_len():
    ds = make_dataset(100)
    loader = DataLoader(ds)
    assert isinstance(loader.sampler, SequentialSampler) and loader.sampler.batch_size == 1
    assert isinstance(loader.transform, PseudoTransform)
    assert isinstance(loader.collator, Collator)
    assert len(loader) == 100
    assert len(DataLoader(ds, RandomSampler(ds, batch_size=6, drop_last=False))) == 17
    assert len(DataLoader(ds, RandomSampler(ds, batch_size=6, drop_last=True))) == 16


def test_bad_arguments():
    ds = make_dataset()
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="timeout"):
        DataLoader(ds, timeout=-1)
    # of another type: upstream 1.13's TypeError (measured), and a ValueError as a bad value
    with pytest.raises(TypeError, match="num_workers should be a non-negative integer") as e:
        DataLoader(ds, num_workers="2")
    assert isinstance(e.value, ValueError)
    with pytest.raises(TypeError, match="timeout should be a non-negative number") as e:
        DataLoader(ds, timeout="1")
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="divide"):
        DataLoader(ds, num_workers=0, divide=True)
    with pytest.raises(ValueError, match="batch_size >= num_workers"):
        DataLoader(ds, num_workers=2, divide=True)  # default batch_size 1 < 2 workers
    with pytest.raises(TypeError, match="StreamSampler"):
        DataLoader(Numbers(3), SequentialSampler(ds, batch_size=2))
    with pytest.raises(TypeError, match="MapSampler"):
        DataLoader(ds, StreamSampler(batch_size=2))
    with pytest.raises(TypeError, match="dataset"):
        DataLoader(object())
    with pytest.raises(TypeError, match="timeout_event"):
        DataLoader(ds, timeout_event=3)
    with pytest.raises(TypeError, match="no length"):
        len(DataLoader(Numbers(3)))


def test_a_sampler_of_the_wrong_kind_is_upstreams_assertion_too():
    # upstream 1.13 asserts that the sampler's kind matches the dataset's (measured); the
    # error is a TypeError here and an AssertionError, so code catching either sees it
    ds = make_dataset()
    for dataset, sampler in [(Numbers(3), SequentialSampler(ds, batch_size=2)),
                             (ds, StreamSampler(batch_size=2))]:
        with pytest.raises(AssertionError):
            DataLoader(dataset, sampler)
    for error in (TypeError, AssertionError):  # and something that is no sampler at all
        with pytest.raises(error, match="sampler should be a Sampler"):
            DataLoader(ds, sampler=3)
        with pytest.raises(error, match="dataset should be a Dataset"):  # or no dataset
            DataLoader(3)


def test_a_stream_read_for_several_workers_by_the_main_process_is_logged():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("megengine.data.dataloader")
    log.addHandler(handler)
    try:
        DataLoader(Numbers(3), StreamSampler(batch_size=2), num_workers=2)
        assert len(records) == 1 and "parallel_stream=True" in records[0].getMessage()
        for quiet in [dict(num_workers=2, parallel_stream=True), dict(num_workers=1)]:
            DataLoader(Numbers(3), StreamSampler(batch_size=2), **quiet)
        DataLoader(make_dataset(), num_workers=2)
        assert len(records) == 1
    finally:
        log.removeHandler(handler)


def test_serial_batches_in_order_with_transform():
    ds = make_dataset(7)
    loader = DataLoader(ds, SequentialSampler(ds, batch_size=3), transform=AddOne())
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[1, 2, 3], [4, 5, 6], [7]]
    assert batches[0][0].shape == (3, 2, 3, 1)
    np.testing.assert_array_equal(batches[2][0][0], ds.arrays[0][6])


class SlowWorkerZeroAddOne(Transform):
    """Worker 0 is slow, so worker 1's results always arrive first."""

    def apply(self, input):
        if get_worker_info().idx == 0:
            time.sleep(0.02)
        image, label = input
        return image, label + 1


@pytest.mark.parametrize("divide", [False, True])
def test_workers_preserve_order(divide):
    ds = make_dataset(23)
    sampler = RandomSampler(ds, batch_size=4, seed=3)
    expected = [[int(i) for i in idx] for idx in RandomSampler(ds, batch_size=4, seed=3)]
    loader = DataLoader(ds, sampler, transform=SlowWorkerZeroAddOne(), num_workers=2, divide=divide)
    got = list(loader)
    assert [b[1].tolist() for b in got] == [[i + 1 for i in idx] for idx in expected]
    for batch, idx in zip(got, expected):
        np.testing.assert_array_equal(batch[0], ds.arrays[0][idx])
    assert_no_children()


def test_workers_match_serial_loading():
    ds = make_dataset(10)
    transform = Compose([Normalize(mean=1.0, std=2.0), ToMode("CHW")])
    serial = list(DataLoader(ds, SequentialSampler(ds, batch_size=3), transform))
    parallel = list(DataLoader(ds, SequentialSampler(ds, batch_size=3), transform, num_workers=2))
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        assert a[0].dtype == b[0].dtype == np.float32 and a[0].shape[1:] == (1, 2, 3)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


class FailOn(Transform):
    def __init__(self, bad_label):
        self.bad_label = bad_label

    def apply(self, input):
        if input[1] == self.bad_label:
            raise KeyError("sample {} is broken".format(self.bad_label))
        return input


def test_worker_exception_is_reraised_with_traceback():
    ds = make_dataset(12)
    loader = DataLoader(ds, SequentialSampler(ds, batch_size=2), transform=FailOn(5), num_workers=2)
    it = iter(loader)
    assert next(it)[1].tolist() == [0, 1]
    assert next(it)[1].tolist() == [2, 3]
    with pytest.raises(KeyError) as info:
        next(it)
    # upstream 1.13 measured: RuntimeError("Caught KeyError in DataLoader worker process 0.
    # Original Traceback ..."); the error is the worker's type (as torch's) and a RuntimeError
    assert isinstance(info.value, RuntimeError)
    text = str(info.value)
    assert "Caught KeyError in DataLoader worker process 0" in text
    assert "exited unexpectedly" in text  # upstream's words for it, which its users match
    assert "sample 5 is broken" in text and "in apply" in text  # the worker's traceback
    assert_no_children()


def test_worker_exception_of_unpicklable_type_becomes_runtime_error():
    class LocalError(Exception):
        pass

    class Fail(Transform):
        def apply(self, input):
            raise LocalError("boom")

    ds = make_dataset(4)
    with pytest.raises(RuntimeError, match="(?s)Caught LocalError.*boom"):
        list(DataLoader(ds, transform=Fail(), num_workers=2))
    assert_no_children()


def test_a_workers_stop_iteration_is_not_the_end_of_the_loop():
    class Stop(ArrayDataset):
        def __getitem__(self, index):
            raise StopIteration

    ds = Stop(np.zeros(4))
    # upstream 1.13 measured: RuntimeError (Caught StopIteration in DataLoader worker process 0)
    with pytest.raises(RuntimeError, match="Caught StopIteration"):
        list(DataLoader(ds, num_workers=2))
    assert_no_children()


def test_early_break_leaves_no_children():
    ds = make_dataset(40)
    loader = DataLoader(ds, SequentialSampler(ds, batch_size=2), num_workers=2)
    it = iter(loader)
    next(it)
    assert len(multiprocessing.active_children()) == 2
    del it
    gc.collect()
    assert_no_children()
    for _ in loader:
        break
    assert_no_children()


def test_dead_worker_is_reported():
    class Die(Transform):
        def apply(self, input):
            os._exit(3)

    ds = make_dataset(4)
    with pytest.raises(RuntimeError, match="exited unexpectedly with exit code 3"):
        list(DataLoader(ds, transform=Die(), num_workers=2))
    assert_no_children()


class Sleep(Transform):
    def apply(self, input):
        time.sleep(10)
        return input


def test_worker_timeout_raises():
    ds = make_dataset(8)
    loader = DataLoader(ds, SequentialSampler(ds, batch_size=2), transform=Sleep(), num_workers=2, timeout=0.5)
    assert_first_batch_times_out(loader)


def test_timeout_event_replaces_the_late_batch():
    ds = make_dataset(4)
    replacement = [np.zeros(1), np.ones(1)]
    loader = DataLoader(
        ds, transform=Sleep(), num_workers=2, timeout=0.3, timeout_event=lambda: replacement
    )
    it = iter(loader)
    assert next(it) is replacement
    del it
    gc.collect()
    assert_no_children()


class WorkerInfoTransform(Transform):
    def apply(self, input):
        info = get_worker_info()
        return np.array([info.id, info.num_workers, info.seed % 1000, len(info.dataset)]), input[1]


def test_get_worker_info():
    assert get_worker_info() is None
    ds = make_dataset(6)
    batches = list(DataLoader(ds, SequentialSampler(ds, batch_size=1), WorkerInfoTransform(), num_workers=2))
    infos = [b[0][0].tolist() for b in batches]
    assert [i[0] for i in infos] == [0, 1, 0, 1, 0, 1]  # batches go round-robin
    assert all(i[1] == 2 and i[3] == 6 for i in infos)
    assert infos[0][2] != infos[1][2]  # workers get different seeds
    assert get_worker_info() is None


class RandomLabel(Transform):
    def apply(self, input):
        return input[0], np.random.randint(1 << 30)


def test_worker_seeds_follow_megengine_random_seed_as_upstreams():
    import megengine.random as mr

    ds = make_dataset(6)
    loader = DataLoader(ds, SequentialSampler(ds, batch_size=2), RandomLabel(), num_workers=2)
    mr.seed(3)
    # upstream 1.13 measured: after megengine.random.seed(3) its workers draw these (worker w
    # seeds np.random with MT19937(3).random_raw() + w; batches go round-robin)
    assert [b[1].tolist() for b in loader] == [
        [1039755882, 989268269], [283795236, 118211056], [938206186, 338061086]]
    # the next iteration takes the stream's next seed; reseeding restarts it
    assert [b[1].tolist() for b in loader][0] != [1039755882, 989268269]
    mr.seed(3)
    assert [b[1].tolist() for b in loader][0] == [1039755882, 989268269]
    # an iteration without workers takes a seed too, as upstream's
    mr.seed(3)
    list(DataLoader(ds, SequentialSampler(ds, batch_size=2)))
    assert [b[1].tolist() for b in loader][0] != [1039755882, 989268269]
    # and the main process's np.random is left alone
    np.random.seed(7)
    expected = np.random.RandomState(7).rand()
    list(loader)
    assert np.random.rand() == expected


class MegEngineRandomLabel(Transform):
    def apply(self, input):
        import megengine.random as mr

        return input[0], int(mr.uniform(0, 1 << 30, (1,)).numpy()[0])


def test_worker_megengine_random_differs_across_workers_and_epochs():
    # each worker seeds megengine.random from its seed as it seeds numpy's and python's (a
    # forked worker kept the parent's generator: every worker, every epoch drew the same)
    import megengine.random as mr

    ds = make_dataset(8)
    loader = DataLoader(ds, SequentialSampler(ds, batch_size=2), MegEngineRandomLabel(),
                        num_workers=2)
    mr.seed(11)
    first = [b[1].tolist() for b in loader]
    second = [b[1].tolist() for b in loader]
    draws = [v for batch in first + second for v in batch]
    assert len(set(draws)) == len(draws)  # no draw repeats across workers or epochs
    mr.seed(11)  # the workers' seeds follow megengine.random's seed, as for np.random
    assert [b[1].tolist() for b in loader] == first


def test_infinite_sampler_with_workers():
    ds = make_dataset(3)
    loader = DataLoader(ds, Infinite(SequentialSampler(ds, batch_size=2)), num_workers=2)
    labels = []
    for step, (_, label) in enumerate(loader):
        labels.append(label.tolist())
        if step == 4:
            break
    assert labels == [[0, 1], [2], [0, 1], [2], [0, 1]]
    assert_no_children()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_batches(num_workers):
    loader = DataLoader(Numbers(10), StreamSampler(batch_size=4), transform=AddOne(), num_workers=num_workers)
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    np.testing.assert_array_equal(batches[0][0], [[0, 0], [1, 1], [2, 2], [3, 3]])
    assert_no_children()


class RandomStream(StreamDataset):
    """Samples drawn from numpy's global generator as they are read."""

    def __iter__(self):
        while True:
            yield np.random.rand(1), 0


class AddDraw(Transform):
    """Adds a draw of numpy's global generator to each sample; no apply_batch of its own
    that would read the batch at once (the base class's calls apply per sample)."""

    def apply(self, input):
        image, label = input
        return image + np.random.rand(), label + 1

    def apply_batch(self, inputs):
        raise AssertionError("a stream's samples go through apply one by one")


@pytest.mark.parametrize("num_workers, parallel_stream", [(0, False), (2, False), (2, True)])
def test_stream_samples_are_transformed_one_by_one_as_read(num_workers, parallel_stream):
    # upstream 1.13 reads a stream sample and applies the transform to it before reading the
    # next (never apply_batch): with both drawing from numpy's generator they take turns, so
    # a sample is read draw + transform draw = r[0] + r[1], then r[2] + r[3], ...
    np.random.seed(3)
    loader = DataLoader(RandomStream(), StreamSampler(batch_size=3), transform=AddDraw(),
                        num_workers=num_workers, parallel_stream=parallel_stream)
    first = next(iter(loader))
    assert first[1].tolist() == [1, 1, 1]
    if num_workers == 0:
        np.random.seed(3)
        r = np.random.rand(6)
        np.testing.assert_allclose(first[0][:, 0], r[0::2] + r[1::2])
    assert_no_children()


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("n, labels", [(8, [[0, 1, 2, 3], [4, 5, 6, 7]]),
                                       (9, [[0, 1, 2, 3], [4, 5, 6, 7], [8]]), (0, [])])
def test_a_finite_stream_ends_after_what_is_left(n, labels, num_workers):
    # StreamSampler has no drop_last (upstream's neither: its docs give drop_last to the map
    # samplers only): a finite stream ends its loader as a map sampler's default
    # drop_last=False does, the rest in a short batch, and never with an empty one
    loader = DataLoader(Numbers(n), StreamSampler(batch_size=4), num_workers=num_workers)
    assert [b[1].tolist() for b in loader] == labels
    assert_no_children()


class OldFormat(StreamDataset):
    """MegEngine's older stream items: (False, sample) or (True, batch of samples)."""

    def __iter__(self):
        yield False, (np.array([0.0]), 0)
        yield True, (np.array([[1.0], [2.0], [3.0]]), [1, 2, 3])
        yield False, (np.array([4.0]), 4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_old_batched_format(num_workers):
    loader = DataLoader(OldFormat(), StreamSampler(batch_size=2), num_workers=num_workers)
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    np.testing.assert_array_equal(batches[1][0], [[2.0], [3.0]])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_timeout(num_workers):
    loader = DataLoader(Blocking(), StreamSampler(batch_size=2), num_workers=num_workers, timeout=0.3)
    assert_first_batch_times_out(loader)


def test_stream_timeout_event_supplies_items():
    def substitute():
        return True, (np.full((2, 1), 7.0), [-1, -1])

    loader = DataLoader(Blocking(), StreamSampler(batch_size=4), timeout=0.2, timeout_event=substitute)
    batch = next(iter(loader))
    np.testing.assert_array_equal(batch[0], np.full((4, 1), 7.0))
    np.testing.assert_array_equal(batch[1], [-1, -1, -1, -1])


def test_preload_gives_tensors():
    import megengine

    ds = make_dataset(4)
    batch = next(iter(DataLoader(ds, SequentialSampler(ds, batch_size=2), preload=True)))
    assert isinstance(batch[0], megengine.Tensor)
    np.testing.assert_array_equal(batch[0].numpy(), ds.arrays[0][:2])
    # an array of names stays a host array (a Tensor holds numbers); upstream 1.13's preload
    # fails on strings with a RecursionError
    names = ArrayDataset(np.zeros((4, 1), np.float32), np.array([["a", "b"], ["c", "d"]] * 2))
    values, labels = next(iter(DataLoader(names, SequentialSampler(names, batch_size=2), preload=True)))
    assert isinstance(values, megengine.Tensor)
    assert isinstance(labels, np.ndarray) and labels.tolist() == [["a", "b"], ["c", "d"]]


def test_positional_arguments_in_upstreams_order():
    import megengine

    # upstream 1.13 measured: DataLoader(ds, sampler, None, None, 0, 0, True) gives Tensors (the
    # seventh argument is preload), with False numpy arrays
    ds = make_dataset(4)
    sampler = SequentialSampler(ds, batch_size=2)
    assert isinstance(next(iter(DataLoader(ds, sampler, None, None, 0, 0, True)))[0],
                      megengine.Tensor)
    assert isinstance(next(iter(DataLoader(ds, sampler, None, None, 0, 0, False)))[0],
                      np.ndarray)


class Sharded(StreamDataset):
    """Worker w of get_worker_info() streams (w * 100 + i) for i < lengths[w]; finite."""

    def __init__(self, lengths):
        self.lengths = lengths

    def __iter__(self):
        info = get_worker_info()
        shard = info.idx if info is not None else 0
        for i in range(self.lengths[shard]):
            yield np.array([shard * 100 + i], dtype=np.int64), shard


def test_parallel_stream_reads_one_stream_per_worker_in_turn():
    loader = DataLoader(Sharded([5, 2, 4]), StreamSampler(batch_size=2), num_workers=3,
                        parallel_stream=True)
    batches = [b[0][:, 0].tolist() for b in loader]
    # round robin over live workers; a short last batch, then that worker is skipped
    assert batches == [[0, 1], [100, 101], [200, 201], [2, 3], [202, 203], [4]]
    assert_no_children()


def test_parallel_stream_turns_stay_in_order_when_a_worker_ends():
    # drawn by tests/fuzz/loader.py (configuration 313): the turns were an index into the
    # shrinking list of live workers, so when worker 2 ended one worker came twice in a row,
    # or not, as that end's answer arrived (2-4 of 4 such configurations failed per run)
    rounds = [[0, 100, 200]] + [[i, 100 + i] for i in range(1, 9)] + [[9]]
    want = [v for r in rounds for v in r]
    for _ in range(4):  # (the old order depended on timing)
        loader = DataLoader(Sharded([10, 9, 1]), StreamSampler(batch_size=1), num_workers=3,
                            parallel_stream=True)
        assert [int(b[0][0, 0]) for b in loader] == want
    assert_no_children()


def test_parallel_stream_surfaces_a_worker_error():
    class Broken(StreamDataset):
        def __iter__(self):
            yield np.zeros(1), 0
            raise ValueError("shard {} is corrupt".format(get_worker_info().idx))

    loader = DataLoader(Broken(), StreamSampler(batch_size=2), num_workers=2,
                        parallel_stream=True)
    with pytest.raises(ValueError, match="(?s)Caught ValueError in DataLoader worker process 0.*corrupt"):
        list(loader)
    assert_no_children()


def test_parallel_stream_timeout():
    loader = DataLoader(Blocking(), StreamSampler(batch_size=1), num_workers=2,
                        parallel_stream=True, timeout=0.3)
    assert_first_batch_times_out(loader)


class TensorSamples:
    """A map dataset whose __getitem__ makes megengine Tensors on the default device (RIFE's
    VimeoDataset does), and says whether its process forgot CUDA."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        import megengine as mge
        from megengine import device

        return mge.tensor(np.full(3, i, np.float32)), np.int32(device._cuda_forgotten)


def test_workers_forked_from_a_cuda_process_keep_to_the_cpu(monkeypatch):
    # a CUDA context does not survive fork: a worker forked from a process that used CUDA
    # forgets it, so the Tensors its dataset makes live on the CPU (here the parent is told
    # it used CUDA; the GPU test below does it for real)
    from megengine import device

    monkeypatch.setattr(device, "_cuda_touched", lambda: True)
    ds = TensorSamples()
    batches = list(DataLoader(ds, SequentialSampler(ds, batch_size=2), num_workers=2))
    assert [b[1].tolist() for b in batches] == [[1, 1], [1, 1]]  # each worker forgot CUDA
    np.testing.assert_array_equal(batches[1][0], np.full((2, 3), [[2], [3]], np.float32))
    assert not device._cuda_forgotten  # the parent did not


@requires_cuda
def test_dataset_tensors_load_in_workers_after_the_parent_used_the_gpu():
    import megengine as mge

    assert mge.tensor([1.0], device="gpu0").numpy()[0] == 1.0  # this process uses CUDA
    ds = TensorSamples()
    batches = list(DataLoader(ds, SequentialSampler(ds, batch_size=2), num_workers=2))
    assert [type(b[0]) for b in batches] == [np.ndarray, np.ndarray]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]),
                                  np.repeat(np.arange(4, dtype=np.float32)[:, None], 3, 1))


def test_workers_run_torch_kernels_after_the_main_process_ran_one():
    # torch's CPU thread pool (OpenMP) does not survive fork: a worker forked after this process
    # ran a parallel op would wait forever in its first one (torch's own workers run one
    # thread). A fresh interpreter with a 2-thread pool (the suite runs torch on one thread)
    code = (
        "import numpy as np, torch\n"
        "from megengine.data import DataLoader, SequentialSampler\n"
        "from megengine.data.dataset import ArrayDataset\n"
        "torch.set_num_threads(2)\n"
        "x, w = torch.ones(2, 3, 64, 64), torch.ones(4, 3, 3, 3)\n"
        "want = float(torch.nn.functional.conv2d(x, w).sum())\n"
        "class Convolved(ArrayDataset):\n"
        "    def __getitem__(self, i):\n"
        "        return (np.float32(torch.nn.functional.conv2d(x, w).sum() + i),)\n"
        "ds = Convolved(np.arange(4))\n"
        "dl = DataLoader(ds, SequentialSampler(ds, batch_size=2), num_workers=2, timeout=60)\n"
        "print([b[0].tolist() for b in dl] == [[want, want + 1], [want + 2, want + 3]])\n")
    assert run_python(code, MGE_NUM_THREADS="2") == ["True"]


def test_a_worker_that_collects_another_loaders_iterator_leaves_its_workers_alone(tmp_path):
    # a loader's workers are forked copies of the main process: one whose garbage collector
    # finds an iterator of an earlier loader (a cycle not yet collected at the fork) must not
    # stop that loader's workers (it printed "Exception ignored ... can only join a child
    # process" for each, and signalled the owner's workers to stop)
    log = tmp_path / "stderr.txt"
    code = (
        "import gc, os\n"
        f"os.dup2(os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT), 2)\n"
        "import numpy as np\n"
        "from megengine.data import DataLoader, SequentialSampler\n"
        "from megengine.data.dataset import ArrayDataset\n"
        "from megengine.data.transform import Transform\n"
        "class Collect(Transform):\n"
        "    def apply(self, input):\n"
        "        gc.collect()\n"
        "        return input\n"
        "ds = ArrayDataset(np.arange(8, dtype='float32').reshape(8, 1), np.arange(8))\n"
        "gc.disable()\n"
        "it = iter(DataLoader(ds, SequentialSampler(ds, batch_size=2), num_workers=2))\n"
        "next(it)\n"
        "it.cycle = it\n"
        "del it\n"
        "second = DataLoader(ds, SequentialSampler(ds, batch_size=2), transform=Collect(),\n"
        "                    num_workers=2, timeout=60)\n"
        "print([b[1].tolist() for b in second] == [[0, 1], [2, 3], [4, 5], [6, 7]])\n")
    assert run_python(code) == ["True"]
    assert "Exception ignored" not in log.read_text(), log.read_text()
