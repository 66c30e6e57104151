"""`launcher`: run a function in N processes of one process group on this machine and collect their results.

A worker that raises is reported with its rank and traceback, one that dies (a signal, an
``os._exit``) with its rank and exit code; either way the other workers are stopped at once and
``launcher`` raises. With ``timeout`` the whole run is bounded too. Nothing here can hang.
"""
import functools
import multiprocessing
import os
import queue as _queue
import signal
import sys
import time
import traceback

from ..core.ops import ArgumentError, ArgumentTypeError
from . import group as _group
from .group import (DEFAULT_TIMEOUT, destroy_process_group, group_barrier, init_process_group,
                    waiting_failure)
from .server import Server

__all__ = ["launcher", "WorkerError"]


class WorkerError(RuntimeError, AssertionError):
    """A launched worker failed: ``rank`` says which, the message holds its traceback.

    Upstream's launcher asserts that every worker exited with code 0, so programs and tests
    written for it catch AssertionError; RuntimeError says what kind of failure it is."""

    def __init__(self, message, rank):
        super().__init__(message)
        self.rank = rank


def _gpu_count():
    """GPUs the workers can use, counted without initializing CUDA here: CUDA cannot be used in
    a process forked after its parent initialized it (torch counts through NVML; the engine's GPU
    arrays need CuPy, only looked up, not imported)."""
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return 0
    import torch

    return torch.cuda.device_count()


def _worker(func, args, kwargs, rank, local_rank, options, results, forked=False, profile=None,
            call=1, cpu_only=False):
    """One launched process: join the group, run ``func``, report (rank, ok, value/traceback).
    ``call`` counts the launcher's calls: each one meets in keys of its own in the launcher's
    long-lived rendezvous server (the keys of an earlier call would mislead this one).
    ``cpu_only``: the workers run on the CPU (device_type "cpu", or "xpu" where the launching
    process found no GPU), whatever CUDA state they inherit."""
    status = 0
    try:
        _group._rendezvous_prefix = f"megengine_launch_{call}/"
        if forked and cpu_only:
            # a CPU worker forked from a process that may have used CUDA (CuPy initialises it
            # with the first GPU array; a CUDA build of torch on a machine without a GPU marks
            # forked children once it tried): CUDA calls would fail here, so tensors stay on
            # the CPU
            from ..device import _forget_cuda

            _forget_cuda()
        if forked:
            # torch's CPU thread pool (OpenMP) does not survive fork: once the parent ran a
            # parallel op (a convolution, a PyTorchModule's forward), a worker's first one
            # would wait for pool threads that do not exist in it, forever. One thread per
            # worker, as torch's own DataLoader workers use (ranks share the cores anyway)
            import torch

            torch.set_num_threads(1)
            os.environ["MGE_NUM_THREADS"] = "1"  # (what the engine's ATen kernels set at load)
        init_process_group(rank=rank, device=local_rank, **options)
        profiler = _own_profiler(profile)
        ok = True
        try:
            value = func(*args, **kwargs)
        except SystemExit as stop:  # exit() / sys.exit(0) in the function: as upstream's, the
            if stop.code not in (None, 0):  # rank ends without a value (another code fails)
                raise
            ok, value = _EXITED, None
        finally:
            if profiler is not None:
                profiler.stop()  # writes <pid>.<format> next to the launching process's
        # rank 0 hosts the rendezvous store, which the others may still need (a new_group of
        # other ranks): nobody leaves before everybody is done. A failure here (a peer still
        # inside a collective this rank skipped) is reported like one in ``func``.
        try:
            group_barrier()
        except RuntimeError as error:
            raise waiting_failure(
                f"megengine.distributed.launcher: rank {rank} returned from the launched "
                "function, but the other ranks did not all reach its end within the process "
                f"group's timeout ({options['timeout']:g} s): a rank is waiting in a "
                "collective the others did not call (every rank must call the same collectives "
                "in the same order), or is still computing (raise collective_timeout).",
                error) from error
        destroy_process_group()
    except BaseException:  # noqa: BLE001  (KeyboardInterrupt and SystemExit are failures too)
        # report before leaving the group: the peers fail as soon as this process's sockets
        # close, and the launcher names whichever failure it hears of first
        results.put((rank, False, traceback.format_exc()))
        status = 1
    else:
        results.put((rank, ok, value))
    # flush the queue's feeder thread, then leave without running the parent's atexit handlers
    # (a forked child inherits pytest's and torch's)
    results.close()
    results.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


_EXITED = "exited"  # a worker's report: its function called exit(0), so it has no value
_NO_VALUE = object()  # (the launcher's mark of such a rank among the values, None at the end)


def _take(report, values, errors):
    """File a worker's report (rank, ok, value or traceback) by rank."""
    rank, ok, value = report
    if ok:
        values[rank] = _NO_VALUE if ok == _EXITED else value
    else:
        errors[rank] = value


def _running_profiler():
    """(directory, formats, options) of the Profiler running in the launching process, or None:
    handed to every worker, forked or spawned (GPU workers must be spawned once this process
    has used CUDA, and a spawned worker inherits nothing)."""
    from ..core import dispatch

    if dispatch._profile_hook is None:  # no profiler running: nothing to import
        return None
    from ..utils import profiler as _profiler

    running = _profiler._running
    return None if running is None else (running.directory, running.formats,
                                         dict(running._options))


def _own_profiler(spec):
    """As upstream, a rank launched inside ``with Profiler(path):`` profiles itself, into
    ``path/<its pid>.<format>`` (``spec`` from `_running_profiler`). A forked worker inherited
    the parent's running profiler, whose file it would never write: that one is dropped.
    Returns the worker's started Profiler, or None."""
    if spec is None:
        return None
    from ..core import dispatch
    from ..utils import profiler as _profiler

    _profiler._running = None
    dispatch._profile_hook = None
    directory, formats, options = spec
    return _profiler.Profiler(directory, formats=formats, **options).start()


class launcher:
    """Decorator: calling the decorated function runs it in ``n_gpus`` processes, each a rank
    of one process group, and returns the list of their return values (by local rank).

    Args:
        func: the function (``@launcher`` or ``@launcher(n_gpus=2, ...)``).
        n_gpus: processes on this machine; default the number of GPUs, or of CPU cores when
            there is no GPU.
        world_size: processes over all machines (default ``n_gpus``).
        rank_start: the global rank of this machine's first process.
        master_ip: address of the machine of rank 0.
        port: the rendezvous port. On the machine of rank 0 (``rank_start=0``) the launcher
            serves the rendezvous from when it is made, as upstream's: its ``server`` is the
            `Server`, and its ``port`` the port served on (0 picks a free one: read it from
            ``.port`` for the other machines). Other machines give that port.
        device_type: ``"xpu"`` (GPU when there is one), ``"gpu"`` or ``"cpu"``. Forked
            ``"cpu"`` workers keep their tensors on the CPU and never touch CUDA (a CUDA
            context does not survive ``fork``), so they may be launched from a process that
            has used a GPU; GPU workers may not (use ``start_method="spawn"`` there).
        backend: ``"gloo"``, ``"nccl"`` or None (picked from the device).
        timeout: seconds for the whole run (None: no limit); collectives and the rendezvous
            time out after ``collective_timeout`` seconds.
        start_method: ``"fork"`` (default where available: fast, and ``func`` may be a local
            function) or ``"spawn"`` (``func`` and its arguments must be picklable). Forked
            workers run torch's CPU kernels on one thread each (``torch.set_num_threads(1)``,
            as torch's DataLoader workers): torch's thread pool does not survive ``fork``, and
            a worker would hang in its first parallel op once the launching process has run
            one. Spawned workers start with torch's default. Forked workers cannot run torch's
            autograd (a PyTorchModule's backward) once the launching process has run a torch
            backward pass on a machine where torch sees a GPU (torch's autograd threads): call
            the launcher first, or use ``"spawn"``; a worker that fails so says this.
    """

    def __new__(cls, *args, **kwargs):
        if not args:
            return functools.partial(cls, **kwargs)
        return super().__new__(cls)

    def __init__(self, func, n_gpus=None, world_size=None, rank_start=0, master_ip="localhost",
                 port=0, device_type="xpu", backend=None, timeout=None,
                 collective_timeout=DEFAULT_TIMEOUT, start_method=None):
        if n_gpus is None:
            gpus = 0 if device_type == "cpu" else _gpu_count()
            n_gpus = gpus or (os.cpu_count() or 1)
        if not isinstance(n_gpus, int) or isinstance(n_gpus, bool):  # (upstream: TypeError)
            raise ArgumentTypeError(f"launcher: n_gpus must be a positive int, got "
                                    f"{type(n_gpus).__name__} {n_gpus!r}")
        if n_gpus < 1:  # (upstream starts no process and returns [])
            raise ValueError(f"launcher: n_gpus must be a positive int, got {n_gpus!r}")
        world_size = n_gpus if world_size is None else world_size
        if rank_start + n_gpus > world_size:
            raise ArgumentError(f"launcher: ranks {rank_start}..{rank_start + n_gpus - 1} do not "
                                f"fit in world_size={world_size}")  # (upstream: a rank asserts)
        if port == 0 and rank_start != 0:
            raise ValueError(f"launcher: ranks from rank_start={rank_start} join the "
                             "rendezvous the launcher of rank 0 serves; give its port (that "
                             "launcher's .port)")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"launcher: timeout must be positive seconds or None, got {timeout!r}")
        if start_method is None:
            start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        functools.update_wrapper(self, func)
        self.func = func
        self.n_gpus = n_gpus
        self.world_size = world_size
        self.rank_start = rank_start
        self.master_ip = master_ip
        self.device_type = device_type
        self.backend = backend
        self.timeout = timeout
        self.collective_timeout = collective_timeout
        self.context = multiprocessing.get_context(start_method)
        self.port = port
        if rank_start == 0:  # as upstream's: rank 0's machine serves from now on
            self.server = Server(port)
            self.port = self.server.py_server_port
        self._calls = 0

    def __call__(self, *args, **kwargs):
        self._calls += 1
        options = dict(master_ip=self.master_ip, port=self.port, world_size=self.world_size,
                       backend=self.backend, device_type=self.device_type,
                       timeout=self.collective_timeout)
        if self.context.get_start_method() == "fork":
            import torch

            if torch.cuda.is_initialized() and self.device_type != "cpu":
                raise RuntimeError(
                    "megengine.distributed.launcher: CUDA is already initialized in this process, "
                    "and forked workers cannot use it; launch before any GPU work, or pass "
                    "start_method='spawn' (with a picklable, module-level function)")
            # Children would each compile/load the bridge; load it once here instead.
            from ..core.torch_bridge import load_extension

            load_extension()
        # xpu is the CPU where this process finds no GPU: the workers then are CPU workers
        cpu_only = self.device_type == "cpu" or (self.device_type == "xpu" and not _gpu_count())
        results = self.context.Queue()
        profile = _running_profiler()
        procs = {}
        try:  # a rank already started is stopped even if starting the next one fails
            for local in range(self.n_gpus):
                rank = self.rank_start + local
                procs[rank] = self.context.Process(
                    target=_worker, args=(self.func, args, kwargs, rank, local, options, results,
                                          self.context.get_start_method() == "fork", profile,
                                          self._calls, cpu_only),
                    # not daemonic: a daemonic process may not start children, and a rank's
                    # DataLoader(num_workers=k) starts k worker processes (upstream's launcher
                    # allows it); so no rank may outlive this call: _stop below.
                    name=f"megengine-dist-rank{rank}", daemon=False)
                procs[rank].start()
            values = self._collect(procs, results)
        finally:
            _stop(procs.values())
        return [values[self.rank_start + i] for i in range(self.n_gpus)]

    def _collect(self, procs, results):
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        values, errors = {}, {}  # by rank, in the order the reports arrived
        while len(values) < len(procs):
            try:
                _take(results.get(timeout=0.05), values, errors)
            except _queue.Empty:
                pass
            # A worker that died without a report (a signal, os._exit) is the cause of whatever
            # its peers report afterwards (connection reset), so it is looked for first.
            self._raise_if_one_died(procs, results, values, errors)
            if errors:
                # Its peers can report the dead worker's closed connections a moment before its
                # exit shows (its sockets close first): give that a moment, on a loaded machine
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    time.sleep(0.02)
                    self._raise_if_one_died(procs, results, values, errors)
                rank = next(iter(errors))  # the first report: the others followed from it
                raise WorkerError(f"megengine.distributed.launcher: rank {rank} raised an exception "
                                  f"(the other workers were stopped):\n{errors[rank]}"
                                  f"{_known_cause(errors[rank], self.context)}", rank)
            if deadline is not None and time.monotonic() > deadline:
                waiting = sorted(r for r in procs if r not in values)
                raise TimeoutError(f"megengine.distributed.launcher: ranks {waiting} did not finish "
                                   f"within timeout={self.timeout:g} s; all workers were stopped")
        exited = sorted(rank for rank, value in values.items() if value is _NO_VALUE)
        if exited:  # (upstream logs "subprocess exited with code 0 but did not return a value")
            from ..logger import get_logger

            get_logger().warning(f"megengine.distributed.launcher: ranks {exited} exited with "
                                 "code 0 (exit() in the launched function) without returning a "
                                 "value: their results are None")
            values.update(dict.fromkeys(exited))
        return values

    def _raise_if_one_died(self, procs, results, values, errors):
        for rank, p in procs.items():
            if p.exitcode is not None and rank not in values and rank not in errors:
                self._drain(results, values, errors, rank)
                if rank not in values and rank not in errors:
                    raise WorkerError(f"megengine.distributed.launcher: rank {rank} died "
                                      f"({_describe(p.exitcode)}) without returning; the other "
                                      "workers were stopped", rank)

    @staticmethod
    def _drain(results, values, errors, rank):
        """A worker exited: its report, if it sent one, is in the queue (give it a moment)."""
        end = time.monotonic() + 0.5
        while rank not in values and rank not in errors and time.monotonic() < end:
            try:
                _take(results.get(timeout=0.05), values, errors)
            except _queue.Empty:
                pass


# torch's words when a forked process runs autograd after its parent started the autograd
# engine's device threads: the first torch backward pass (a PyTorchModule's too, even one on the
# CPU) in a process where torch sees a GPU starts them, and no forked child can then run one
_AUTOGRAD_FORK = ("Unable to handle autograd's threading in combination with fork-based "
                  "multiprocessing")


def _known_cause(report, context):
    """What to do about a worker's failure whose cause lies in how it was started, as text to
    append to its traceback ``report`` ("" for any other failure)."""
    if _AUTOGRAD_FORK in report and context.get_start_method() == "fork":
        return (
            "\nThe cause: this process ran a torch backward pass (a PyTorchModule's, or torch's "
            "own) on a machine where torch sees a GPU, which starts torch's autograd threads, "
            "and workers forked after that cannot run torch autograd. Call the launcher before "
            "any torch backward pass in this process, or launch with start_method='spawn' (the "
            "function and its arguments must then be picklable: a module-level function).")
    return ""


def _describe(code):
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _stop(procs):
    """Terminate workers still running (SIGTERM, then SIGKILL after a grace period)."""
    procs = [p for p in procs if p.is_alive()]
    for p in procs:
        p.terminate()
    end = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
