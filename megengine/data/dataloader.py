"""DataLoader: turns a dataset into batches of numpy arrays, in the main process or in
worker processes that keep the batch order."""
import atexit
import collections
import collections.abc
import multiprocessing
import os
import pickle
import queue
import random
import signal
import sys
import threading
import time
import traceback
import weakref
from typing import Callable

import numpy as np

from .. import device as _device
from ..core import _rng as _core_rng
from ..core.dtype_rules import ArgumentKindError, ArgumentTypeError
from ..logger import get_logger
from .collator import Collator
from .dataset import Dataset, StreamDataset
from .sampler import Sampler, SequentialSampler, StreamSampler
from .transform import PseudoTransform, Transform

__all__ = ["DataLoader", "get_worker_info", "WorkerInfo", "raise_timeout_error"]

logger = get_logger(__name__)

_POLL_S = 0.1  # how often a waiting main process checks that its workers are alive
_WORKER_POLL_S = 1.0  # how often an idle worker checks that the main process is alive
_SHUTDOWN_GRACE_S = 0.5  # how long busy workers get to finish before they are terminated


class SamplerKindError(AssertionError, TypeError):
    """A stream dataset given a map sampler, or the reverse. Upstream asserts
    (AssertionError); a TypeError is what the mistake is, so this is both."""


def raise_timeout_error():
    """The default ``timeout_event``: give up with a RuntimeError."""
    raise RuntimeError("DataLoader timeout: no data arrived within `timeout` seconds")


class DataLoader:
    r"""Iterates over a dataset in mini-batches.

    For a map-style dataset, the sampler yields lists of indices; the samples at those
    indices go through ``transform.apply_batch`` and ``collator.apply`` into a batch.
    For a :class:`~.StreamDataset`, consecutive samples of the stream are grouped into
    batches of ``sampler.batch_size`` (a :class:`~.StreamSampler`); a finite stream ends
    with a possibly smaller last batch. As upstream's, each stream sample goes through
    ``transform.apply`` as it is read (a stream drawing from ``np.random`` and a random
    transform take turns on it), and the batch through ``collator.apply``.

    Args:
        dataset: a :class:`~.Dataset` (or any object with ``__getitem__`` and ``__len__``)
            or a :class:`~.StreamDataset`.
        sampler: which indices form each batch; default ``SequentialSampler(dataset,
            batch_size=1)`` (``StreamSampler(batch_size=1)`` for a stream).
        transform: applied to each batch's samples before collation; default none.
        collator: merges samples into a batch; default :class:`~.Collator`.
        num_workers: worker processes that load, transform and collate batches; ``0``
            loads in the main process. Batches come back in sampler order either way.
        timeout: if positive, the longest wait in seconds for a batch from the workers
            or for the next item of a stream; then ``timeout_event`` is called.
        preload: give batches as ``megengine.Tensor`` instead of numpy arrays.
        parallel_stream: for a StreamDataset with workers, let every worker iterate the
            dataset itself (``get_worker_info().idx`` tells them apart, e.g. to read
            different shards) and take batches from the workers in turn; the iteration ends
            when all of their streams have. Without it the main process reads the one
            stream and hands its samples to the workers.
        timeout_event: called on a timeout. Its return value is used in place of what
            was waited for (a batch from the workers, or the stream's next item). The
            default raises ``RuntimeError``.
        divide: with several workers, split each batch among all workers (collating in
            the main process) instead of giving each batch to one worker.

    A worker's exception is raised again in the main process with the worker's traceback
    in its message. Workers are shut down when the iteration ends, fails, or its iterator
    is deleted (e.g. after ``break``), and at interpreter exit. Inside a worker,
    :func:`get_worker_info` describes the worker.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: Sampler = None,
        transform: Transform = None,
        collator: Collator = None,
        num_workers: int = 0,
        timeout: float = 0,
        preload: bool = False,
        parallel_stream: bool = False,
        timeout_event: Callable = raise_timeout_error,
        divide: bool = False,
    ):
        # (of another type: also a TypeError, upstream's; negative: a ValueError, as upstream)
        if not isinstance(num_workers, (int, np.integer)) or isinstance(num_workers, bool) \
                or num_workers < 0:
            raise (ValueError if isinstance(num_workers, (int, np.integer)) else
                   ArgumentTypeError)(
                "num_workers should be a non-negative integer (0 loads in the main process), "
                "but got num_workers={!r}".format(num_workers)
            )
        if not isinstance(timeout, (int, float, np.number)) or isinstance(timeout, bool) \
                or timeout < 0:
            raise (ValueError if isinstance(timeout, (int, float, np.number)) else
                   ArgumentTypeError)(
                "timeout should be a non-negative number of seconds (0 waits forever), "
                "but got timeout={!r}".format(timeout)
            )
        if not callable(timeout_event):
            raise TypeError("timeout_event should be a callable, but got {!r}".format(timeout_event))
        if divide and num_workers <= 1:
            raise ValueError(
                "divide=True splits each batch among several workers; it needs num_workers > 1, "
                "but got num_workers={}".format(num_workers)
            )

        if isinstance(dataset, StreamDataset):
            self.datakind = "stream"
            if sampler is None:
                sampler = StreamSampler(batch_size=1)
            elif not isinstance(sampler, StreamSampler):
                raise SamplerKindError(
                    "a StreamDataset is read in stream order, so its sampler must be a "
                    "StreamSampler, e.g. sampler=StreamSampler(batch_size=32); got {}".format(type(sampler).__name__)
                )
        elif hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
            self.datakind = "map"
            if sampler is None:
                sampler = SequentialSampler(dataset, batch_size=1, drop_last=False)
            elif isinstance(sampler, StreamSampler):
                raise SamplerKindError(
                    "StreamSampler is for a StreamDataset; for a map-style dataset use a "
                    "MapSampler such as SequentialSampler(dataset, batch_size=...) or RandomSampler"
                )
            elif not isinstance(sampler, collections.abc.Iterable):
                raise SamplerKindError(  # (upstream asserts a Sampler)
                    "sampler should be a Sampler yielding lists of indices, but got {!r}".format(sampler)
                )
        else:
            raise ArgumentKindError(  # (upstream asserts a Dataset: the error is both)
                "dataset should be a Dataset with __getitem__ and __len__, or a StreamDataset "
                "with __iter__, but got {}".format(type(dataset).__name__)
            )
        if divide and getattr(sampler, "batch_size", num_workers) < num_workers:
            raise ValueError(
                "divide=True needs batch_size >= num_workers so that every worker gets a sample, "
                "but got batch_size={} and num_workers={}".format(sampler.batch_size, num_workers)
            )

        if transform is None:
            transform = PseudoTransform()
        elif not hasattr(transform, "apply_batch"):
            raise TypeError(
                "transform should be a Transform (with apply and apply_batch), but got {!r}".format(transform)
            )
        if collator is None:
            collator = Collator()
        elif not hasattr(collator, "apply"):
            raise TypeError("collator should be a Collator (with apply), but got {!r}".format(collator))

        self.dataset = dataset
        self.sampler = sampler
        self.transform = transform
        self.collator = collator
        self.num_workers = int(num_workers)
        self.timeout = timeout
        self.timeout_event = timeout_event
        self.divide = divide
        self.preload = preload
        # Stream + workers: each worker reads its own iterator of the dataset (telling them
        # apart by get_worker_info().idx) instead of the main process reading one stream.
        self.parallel_stream = bool(parallel_stream)
        if self.datakind == "stream" and self.num_workers > 1 and not self.parallel_stream:
            # upstream logs this too; programs' logs look the same
            logger.warning(
                "the main process reads the whole stream for %d workers, which may slow "
                "loading; set parallel_stream=True to let every worker read its own stream",
                self.num_workers,
            )

    def __iter__(self):
        # as upstream's, every iteration (with workers or not) takes the next seed of
        # megengine.random's data stream: its workers are seeded with it plus their index
        seed = int(_core_rng.data_seeds.random_raw())
        if self.datakind == "stream":
            if self.num_workers == 0:
                return _SerialStreamIter(self)
            if self.parallel_stream:
                return _ParallelStreamIter(self, seed)
            return _ParallelIter(self, _stream_batches(_StreamReader(self), self.sampler.batch_size), seed)
        if self.num_workers == 0:
            return _SerialMapIter(self)
        return _ParallelIter(self, iter(self.sampler), seed)

    def __len__(self):
        if self.datakind == "stream":
            raise TypeError("a DataLoader over a StreamDataset has no length: a stream may be endless")
        return len(self.sampler)

    def _on_timeout(self, what):
        if self.timeout_event is raise_timeout_error:
            raise RuntimeError(
                "DataLoader timeout: waited {} s for {}. Raise `timeout` (0 waits forever) if the "
                "data is just slow, or look for a hang in the dataset or transform".format(self.timeout, what)
            )
        return self.timeout_event()

    def _finish(self, batch):
        return _to_tensors(batch) if self.preload else batch


def _to_tensors(batch):
    """Turn the numpy arrays in a batch into megengine Tensors (``preload=True``)."""
    from .. import Tensor  # only here: megengine.data itself runs on numpy alone

    if isinstance(batch, np.ndarray):
        # (a batch of names, an array of str, stays on the host: a Tensor holds numbers)
        return batch if batch.dtype.kind in "SU" else Tensor(batch)
    if isinstance(batch, collections.abc.Mapping):
        return {k: _to_tensors(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_tensors(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return [_to_tensors(v) for v in batch]
    return batch


class _SerialMapIter:
    """Loads each batch in the main process."""

    def __init__(self, loader):
        self._loader = loader
        self._indices = iter(loader.sampler)

    def __iter__(self):
        return self

    def __len__(self):
        return len(self._loader.sampler)

    def __next__(self):
        loader = self._loader
        items = [loader.dataset[i] for i in next(self._indices)]
        return loader._finish(loader.collator.apply(loader.transform.apply_batch(items)))


class _StreamReader:
    """Reads the samples of a StreamDataset one by one, waiting at most ``timeout`` for
    each item of the stream (a helper thread reads the stream when a timeout is set)."""

    def __init__(self, loader):
        self._loader = loader
        self._timeout = loader.timeout
        self._pending = collections.deque()  # samples unpacked from a batched item
        self._ended = False
        stream = iter(loader.dataset)
        if self._timeout > 0:
            self._queue = queue.Queue(maxsize=1)
            self._stop = threading.Event()
            threading.Thread(
                target=_pump_stream, args=(stream, self._queue, self._stop), daemon=True, name="DataLoaderStream"
            ).start()
        else:
            self._stream = stream

    def _next_item(self):
        if self._ended:
            raise StopIteration
        if self._timeout <= 0:
            return next(self._stream)
        try:
            kind, value = self._queue.get(timeout=self._timeout)
        except queue.Empty:
            return self._loader._on_timeout("the next item of the StreamDataset")
        if kind == "item":
            return value
        self._ended = True
        if kind == "error":
            raise value
        raise StopIteration

    def next_sample(self):
        while not self._pending:
            self._pending.extend(_unpack_stream_item(self._next_item()))
        return self._pending.popleft()

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


def _pump_stream(stream, out, stop):
    """Helper thread: move the stream's items into ``out`` until told to stop."""

    def put(message):
        while not stop.is_set():
            try:
                out.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    try:
        for item in stream:
            if not put(("item", item)):
                return
        put(("end", None))
    except BaseException as exc:  # handed to the main thread
        put(("error", exc))


def _unpack_stream_item(item):
    """Samples in one stream item: the item itself, or, in the older ``(is_batched, data)``
    form, ``data`` as one sample or split along axis 0 into several."""
    if (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], (bool, np.bool_))
        and isinstance(item[1], (tuple, list))
    ):
        is_batched, data = item
        if not is_batched:
            return [tuple(data)]
        sizes = {len(column) for column in data}
        if len(sizes) != 1:
            raise ValueError(
                "a batched stream item (True, data) needs equally long columns in data, got lengths {}".format(
                    sorted(sizes)
                )
            )
        return [tuple(column[i] for column in data) for i in range(sizes.pop())]
    return [item]


def _stream_batches(reader, batch_size, apply=None):
    """Lists of ``batch_size`` consecutive samples of the stream, each through ``apply`` as
    it is read where given; the last may be shorter."""
    while True:
        samples = []
        try:
            while len(samples) < batch_size:
                sample = reader.next_sample()
                samples.append(sample if apply is None else apply(sample))
        except StopIteration:
            if samples:
                yield samples
            return
        yield samples


class _SerialStreamIter:
    """Reads, transforms and collates a stream in the main process."""

    def __init__(self, loader):
        self._loader = loader
        self._batches = _stream_batches(_StreamReader(loader), loader.sampler.batch_size,
                                        loader.transform.apply)

    def __iter__(self):
        return self

    def __next__(self):
        loader = self._loader
        return loader._finish(loader.collator.apply(next(self._batches)))


# --------------------------------------------------------------------------- workers

_worker_info = None


class WorkerInfo:
    r"""What :func:`get_worker_info` returns inside a worker process.

    Attributes:
        idx: this worker's id, in ``[0, worker)`` (also ``id``).
        worker: the number of workers (also ``num_workers``).
        seed: the seed of this worker's ``random``, ``numpy.random`` and ``megengine.random``
            generators.
        dataset: this worker's copy of the dataset.
    """

    __slots__ = ("idx", "worker", "seed", "dataset")

    def __init__(self, idx, worker, seed, dataset):
        self.idx, self.worker, self.seed, self.dataset = idx, worker, seed, dataset

    @property
    def id(self):
        return self.idx

    @property
    def num_workers(self):
        return self.worker

    def __repr__(self):
        return "WorkerInfo(idx={}, worker={}, seed={})".format(self.idx, self.worker, self.seed)


def get_worker_info():
    r"""In a DataLoader worker process, its :class:`WorkerInfo`; ``None`` in the main process."""
    return _worker_info


class _KeyErrorMessage(str):
    """KeyError shows repr() of its message; this keeps the traceback text readable."""

    def __repr__(self):
        return self


class _WorkerError:
    """An exception caught in a worker, carried to the main process as text."""

    def __init__(self, worker_id):
        exc_type, exc, tb = sys.exc_info()
        self.worker_id = worker_id
        self.type_name = exc_type.__name__
        self.text = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            self.exc_type = pickle.loads(pickle.dumps(exc_type))
        except Exception:  # e.g. a class defined inside a function
            self.exc_type = None

    def to_exception(self):
        # upstream 1.13 raises RuntimeError("Caught <type> in DataLoader worker process <i>.
        # Original Traceback ..."), older upstreams said the worker "exited unexpectedly", torch
        # raises the worker's own type: the error is the worker's type and a RuntimeError too,
        # and keeps those words, so that code and searches written for any of them find it
        message = (
            "Caught {} in DataLoader worker process {}; the loader stopped its workers (on "
            "older upstream MegEngine the worker exits and the error reads: DataLoader worker "
            "exited unexpectedly).\nOriginal traceback (in the worker):\n{}".format(
                self.type_name, self.worker_id, self.text
            )
        )
        if self.exc_type is KeyError:
            message = _KeyErrorMessage(message)
        exc_type = self.exc_type
        if exc_type is None or issubclass(exc_type, StopIteration):
            # (a StopIteration raised from __next__ would end the loop without a word)
            return RuntimeError(message)
        try:
            if not issubclass(exc_type, RuntimeError):
                exc_type = type(exc_type.__name__, (exc_type, RuntimeError),
                                {"__module__": exc_type.__module__, "__qualname__": exc_type.__qualname__})
            return exc_type(message)
        except Exception:  # an exception type that needs other arguments
            return RuntimeError(message)


def _worker_loop(dataset, transform, collator, tasks, results, done, worker_id, num_workers, seed, datakind):
    """A worker process: load, transform and (unless divided) collate the batches it is sent."""
    global _worker_info
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    results.cancel_join_thread()  # at shutdown, exit even if the main process stopped reading
    _worker_info = WorkerInfo(worker_id, num_workers, seed, dataset)
    if _device._cuda_touched():  # forked from a process that used CUDA, which a child cannot:
        _device._forget_cuda()  # Tensors a dataset makes here live on the CPU (the collator
        # sends host arrays anyway) instead of failing in CuPy's first allocation
    torch = sys.modules.get("torch")
    if torch is not None:  # its CPU thread pool does not survive fork: a dataset that runs a
        torch.set_num_threads(1)  # parallel torch op here would hang (torch's workers do this)
        os.environ["MGE_NUM_THREADS"] = "1"  # (what the engine's ATen kernels set at load)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # megengine.random too (torch's workers seed torch): the fork copied the parent's
    # generator, so every worker drew the same numbers, every epoch
    _core_rng.generator = np.random.default_rng(seed)
    parent = os.getppid()
    while True:
        try:
            task = tasks.get(timeout=_WORKER_POLL_S)
        except queue.Empty:
            if done.is_set() or os.getppid() != parent:
                return
            continue
        if task is None or done.is_set():
            return
        batch_id, piece, payload, collate = task
        try:
            if isinstance(payload, int):  # parallel_stream: up to `payload` samples of our own
                out = _own_stream_samples(dataset, payload, transform.apply)
                if not out:  # this worker's stream has ended
                    results.put(pickle.dumps((batch_id, piece, None, worker_id)))
                    continue
            elif datakind == "stream":  # (stream samples one by one, as upstream's)
                out = [transform.apply(sample) for sample in payload]
            else:
                out = transform.apply_batch([dataset[i] for i in payload])
            if collate:
                out = collator.apply(out)
            message = pickle.dumps((batch_id, piece, True, out), pickle.HIGHEST_PROTOCOL)
        except Exception:
            message = pickle.dumps((batch_id, piece, False, _WorkerError(worker_id)), pickle.HIGHEST_PROTOCOL)
        results.put(message)


_own_stream = None  # a worker's iterator over the dataset and the samples it has unpacked


def _own_stream_samples(dataset, count, apply):
    """The next ``count`` samples (fewer at the end) of this worker's own stream, each
    through ``apply`` as it is read."""
    global _own_stream
    if _own_stream is None:
        _own_stream = (iter(dataset), collections.deque())
    items, pending = _own_stream
    samples = []
    while len(samples) < count:
        if not pending:
            try:
                pending.extend(_unpack_stream_item(next(items)))
            except StopIteration:
                break
            continue
        samples.append(apply(pending.popleft()))
    return samples


def _mp_context():
    # fork (where there is one) lets workers use datasets and transforms that cannot be
    # pickled, such as classes defined inside a function, as upstream MegEngine allows.
    # Asked for by name, so Python 3.14's new default (forkserver on Linux) changes nothing here
    # (test_worker_exception_of_unpicklable_type_becomes_runtime_error would catch it). Python
    # 3.12+ emits a DeprecationWarning (hidden unless warnings are shown, as pytest does) when
    # the process forking has other threads: torch's intra-op pool once a kernel ran, or the
    # stream reader of an earlier loader still waiting on its stream.
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


_live_pools = weakref.WeakSet()


@atexit.register
def _shutdown_live_pools():
    for pool in list(_live_pools):
        pool.close()


class _WorkerPool:
    """Worker processes, one task queue each and one shared result queue."""

    def __init__(self, loader, base_seed):
        ctx = _mp_context()
        n = loader.num_workers
        self.closed = False
        self._owner = os.getpid()
        self._done = ctx.Event()
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(n)]
        self.workers = []
        _live_pools.add(self)
        for worker_id in range(n):
            worker = ctx.Process(
                target=_worker_loop,
                args=(
                    loader.dataset,
                    loader.transform,
                    loader.collator,
                    self._tasks[worker_id],
                    self._results,
                    self._done,
                    worker_id,
                    n,
                    base_seed + worker_id,
                    loader.datakind,
                ),
                daemon=True,
                name="DataLoaderWorker-{}".format(worker_id),
            )
            worker.start()
            self.workers.append(worker)

    def put(self, worker_id, task):
        self._tasks[worker_id].put(task)

    def get(self, timeout):
        """The next result, or None if none came within ``timeout`` (workers checked alive)."""
        try:
            return pickle.loads(self._results.get(timeout=timeout))
        except queue.Empty:
            pass
        for worker_id, worker in enumerate(self.workers):
            if not worker.is_alive():
                code = worker.exitcode
                why = ""
                if code is not None and code < 0:
                    why = " (killed by signal {}{})".format(-code, "; often out of memory" if code == -9 else "")
                raise RuntimeError(
                    "DataLoader worker {} (pid {}) exited unexpectedly with exit code {}{}".format(
                        worker_id, worker.pid, code, why
                    )
                )
        return None

    def close(self):
        if self.closed:
            return
        self.closed = True
        _live_pools.discard(self)
        if os.getpid() != self._owner:
            # a copy in a process forked from the owner (another loader's worker collecting
            # it as garbage): the workers, queues and event are the owner's to stop
            return
        self._done.set()
        for tasks in self._tasks:
            try:
                tasks.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + _SHUTDOWN_GRACE_S
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(1.0)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for q in self._tasks + [self._results]:
            q.cancel_join_thread()
            q.close()


def _split(payload, parts):
    """Split a list into up to ``parts`` consecutive, nearly equal, non-empty pieces."""
    size, extra = divmod(len(payload), parts)
    pieces, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        if stop > start:
            pieces.append(payload[start:stop])
        start = stop
    return pieces


class _ParallelIter:
    """Hands batches (lists of indices, or of stream samples) to workers and yields the
    results in order, keeping up to two batches per worker in flight."""

    def __init__(self, loader, payloads, base_seed):
        self._loader = loader
        self._payloads = payloads
        self._pool = None
        self._sent = 0  # batches handed out
        self._received = 0  # batches yielded (or replaced by timeout_event)
        self._pending = {}  # batch id -> list of result pieces, None while missing
        self._abandoned = set()  # batch ids replaced by timeout_event; late results are dropped
        self._exhausted = False
        self._pool = _WorkerPool(loader, base_seed)
        try:
            for _ in range(2 * loader.num_workers):
                self._dispatch()
        except BaseException:
            self._close()
            raise

    def __iter__(self):
        return self

    def __len__(self):
        return len(self._loader)

    def _dispatch(self):
        if self._exhausted:
            return
        try:
            payload = list(next(self._payloads))
        except StopIteration:
            self._exhausted = True
            return
        batch_id = self._sent
        self._sent += 1
        n = self._loader.num_workers
        if self._loader.divide:
            pieces = _split(payload, n)
            workers = range(len(pieces))
        else:
            pieces, workers = [payload], [batch_id % n]
        self._pending[batch_id] = [None] * len(pieces)
        for piece, (worker_id, part) in enumerate(zip(workers, pieces)):
            self._pool.put(worker_id, (batch_id, piece, part, not self._loader.divide))

    def __next__(self):
        if self._pool is None or self._pool.closed:  # ended, failed or shut down
            raise StopIteration
        try:
            return self._loader._finish(self._next_batch())
        except BaseException:  # StopIteration, a worker's error, a timeout, Ctrl-C ...
            self._close()
            raise

    def _next_batch(self):
        if self._received == self._sent:
            raise StopIteration
        batch_id = self._received
        pieces = self._pending[batch_id]
        if not self._wait(batch_id, lambda: all(p is not None for p in pieces)):
            return self._timed_out(batch_id)
        errors = [p for p in pieces if isinstance(p, _WorkerError)]
        if errors:
            raise errors[0].to_exception()
        self._advance(batch_id)
        if self._loader.divide:
            return self._loader.collator.apply([sample for part in pieces for sample in part])
        return pieces[0]

    def _wait(self, batch_id, ready):
        """Store the workers' results until ``ready()``; False when the loader's timeout
        (counted from now) ran out first."""
        timeout = self._loader.timeout
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while not ready():
            wait = _POLL_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, left)
            result = self._pool.get(wait)
            if result is None:
                continue
            got_id, piece, ok, value = result
            if got_id not in self._abandoned:
                self._store(batch_id, got_id, piece, ok, value)
        return True

    def _store(self, batch_id, got_id, piece, ok, value):
        if not ok and got_id == batch_id:
            raise value.to_exception()
        self._pending[got_id][piece] = value  # a later batch's error waits for its turn

    def _timed_out(self, batch_id):
        replacement = self._loader._on_timeout("batch {} from the worker processes".format(batch_id))
        self._abandoned.add(batch_id)
        self._advance(batch_id)
        return replacement

    def _advance(self, batch_id):
        del self._pending[batch_id]
        self._received += 1
        self._dispatch()

    def _close(self):
        if self._pool is not None:
            self._pool.close()

    def __del__(self):
        self._close()


class _ParallelStreamIter(_ParallelIter):
    """parallel_stream: asks live workers in turn for a batch read from their own streams
    and yields the answers in asking order; a worker whose stream ended is asked no more,
    and the iteration ends when every worker's stream has."""

    def __init__(self, loader, base_seed):
        self._live = list(range(loader.num_workers))
        self._asked = -1  # the worker asked last
        super().__init__(loader, iter(()), base_seed)

    def _dispatch(self):
        if not self._live:
            return
        # the next live worker after the one asked last, cyclically (upstream's cycle over the
        # workers, skipping those that ended): a worker's end leaves the others' turns as they
        # were. (An index into the shrinking list of live workers moved the turns by one when
        # a worker ended, so one worker came twice in a row, or not, as the end's answer came.)
        later = [w for w in self._live if w > self._asked]
        worker_id = self._asked = later[0] if later else self._live[0]
        batch_id = self._sent
        self._sent += 1
        self._pending[batch_id] = [None]
        self._pool.put(worker_id, (batch_id, 0, self._loader.sampler.batch_size, True))

    def _next_batch(self):
        while self._received < self._sent:
            batch_id = self._received
            pieces = self._pending[batch_id]
            if not self._wait(batch_id, lambda: pieces[0] is not None):
                return self._timed_out(batch_id)
            value = pieces[0]
            self._advance(batch_id)
            if value is _ENDED:
                continue
            if isinstance(value, _WorkerError):
                raise value.to_exception()
            return value
        raise StopIteration

    def _store(self, batch_id, got_id, piece, ok, value):
        if ok is None:  # that worker's stream has ended
            if value in self._live:
                self._live.remove(value)
            value = _ENDED
        self._pending[got_id][piece] = value  # errors wait for their batch's turn


_ENDED = object()  # the answer of a worker whose stream had ended
