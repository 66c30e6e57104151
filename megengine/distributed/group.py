"""The process group: `init_process_group`, ranks, `Group`/`WORLD`, `new_group`, barriers, on torch.distributed.

Importing this module does not import torch; ``init_process_group`` does. Every collective runs
on a torch.distributed process group (gloo for CPU processes, NCCL for GPUs); rank 0 hosts the
rendezvous (torch's TCPStore) at ``master_ip:port``, so no separate server process is needed
(a `megengine.distributed.Server` started first, as upstream's hand-started jobs do, hosts it
instead).
"""
import datetime
import os
import time
from collections.abc import Iterable
from typing import List, Optional

import numpy as np

from .server import Server  # noqa: F401  (upstream 1.0's programs import it from here)

__all__ = [
    "Group", "WORLD", "init_process_group", "is_distributed", "get_rank", "get_world_size",
    "get_backend", "new_group", "group_barrier", "destroy_process_group", "override_backend",
    "DEFAULT_TIMEOUT", "get_py_server_addr", "get_mm_server_addr", "get_client", "group_start",
    "group_end",
]

DEFAULT_TIMEOUT = 300.0  # seconds a collective or the rendezvous waits for a peer before raising
_BACKENDS = ("gloo", "nccl")
_ALIASES = {None: None, "auto": None, "shm": "gloo"}  # upstream's names for "pick one" / one machine


class _State:
    """What init_process_group decided, for the life of the process group."""

    def __init__(self, master_ip, port, world_size, rank, device, backend, timeout, local,
                 device_type="xpu"):
        self.master_ip = master_ip
        # as given to init_process_group, for upstream's comp_node ("cuda" is spelt "gpu" there)
        self.device_type = "gpu" if device_type == "cuda" else device_type
        self.next_stream = 1  # upstream numbers its groups' streams: WORLD 1, then 2, 3, ...
        self.port = port
        self.world_size = world_size
        self.rank = rank
        self.device = device  # GPU index (NCCL) or the local process index (gloo)
        self.backend = backend
        self.timeout = timeout
        self.local = local  # True when started by torchrun (its agent owns the rendezvous)
        self.store = None  # the rendezvous TCPStore, when this process made or joined it
        self.client = None  # get_client()'s Client, made on first use


_sd = None  # the _State once init_process_group has run
# the keys of this process's rendezvous in its store: set by a launched worker, whose
# launcher's server outlives one call (each call meets under keys of its own)
_rendezvous_prefix = ""


class _NotInitializedError(RuntimeError, AssertionError):
    """A collective (or what needs the process group) before `init_process_group` ran. Also an
    AssertionError: upstream 1.13 asserts there ("please call init_process_group first":
    measured with ``F.distributed.all_reduce_sum``), and programs that run in one process or
    many catch that."""


def _not_initialized(what):
    return _NotInitializedError(
        f"megengine.distributed.{what}: the process group is not initialized; call "
        "dist.init_process_group(...) first (or run the function under @dist.launcher)"
    )


class Group:
    """An ordered set of ranks that run collectives together; the first rank is the root.

    ``Group([1, 0])`` has root 1: ``broadcast`` sends rank 1's tensor and ``all_gather``
    concatenates rank 1's part first. ``WORLD`` (all ranks, root 0) is the default group of every
    collective, and any order of all ranks is free to make. A group of *some* ranks is a torch
    process group that its members create together, as upstream: each member calls
    ``new_group(ranks)``, the members in the same order of such calls; a non-member may call it
    too (it gets a Group it cannot use). Every collective on a group is called by all of its
    members in the same order.
    """

    def __init__(self, proc_ranks):
        self.proc_ranks = None
        self._pg = None  # the torch ProcessGroup; None for orders of all ranks (torch's default)
        if len(proc_ranks) > 0:
            self.reset(proc_ranks)

    def reset(self, proc_ranks):
        self.check(proc_ranks)
        self.proc_ranks = [int(r) for r in proc_ranks]
        # torch orders a group's members by global rank; our order is proc_ranks' (root first).
        # _slot[i] is the position in proc_ranks of torch's group rank i.
        ordered = sorted(self.proc_ranks)
        self._slot = [self.proc_ranks.index(r) for r in ordered]
        self.stream = _sd.next_stream
        _sd.next_stream += 1
        self._pg = None
        if len(ordered) < _sd.world_size and _sd.rank in ordered:
            self._pg = _members_process_group(ordered)
        _groups[tuple(self.proc_ranks)] = self

    def check(self, proc_ranks):
        if _sd is None:
            raise _not_initialized("Group")
        _check_ranks(proc_ranks, "Group")

    def _ranks(self):
        """The ranks, for a collective: raises unless this process is a member."""
        if self.proc_ranks is None:
            raise _not_initialized("Group")
        if _sd.rank not in self.proc_ranks:
            raise ValueError(f"{self!r}: this process (rank {_sd.rank}) is not a member; only the "
                             "members call collectives on a group")
        return self.proc_ranks

    @property
    def size(self) -> int:
        if self.proc_ranks is None:
            raise _not_initialized("Group")
        return len(self.proc_ranks)

    @property
    def rank(self) -> int:
        """This process's index in the group (0 is the root)."""
        return self._ranks().index(_sd.rank)

    @property
    def root(self) -> int:
        """The global rank of the group's root."""
        return self._ranks()[0]

    @property
    def key(self) -> str:
        if self.proc_ranks is None:
            raise _not_initialized("Group")
        return ",".join(map(str, self.proc_ranks))

    @property
    def comp_node(self) -> str:
        """Upstream's name of the device stream the group communicates on,
        ``"<device_type><device>:<stream>"`` (``"xpu0:1"`` for WORLD on rank 0 by default); a
        valid device name here too."""
        self._ranks()
        return f"{_sd.device_type}{_sd.device}:{self.stream}"

    def __repr__(self):
        return f"Group({self.proc_ranks})"


def _is_int(value):
    """Whether ``value`` is a Python or numpy int (ranks from np.arange), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_ranks(ranks, what):
    """Raise unless ``ranks`` are distinct ints in [0, world_size), naming the first that is
    not (the process group is initialized)."""
    given, ranks = list(ranks), []
    n = _sd.world_size
    for r in given:
        if not _is_int(r):
            raise TypeError(f"{what}: ranks must be ints in [0, world_size={n}), got {r!r} "
                            f"({type(r).__name__}) in {given}")
        ranks.append(int(r))
    for r in ranks:
        if not 0 <= r < n:
            raise ValueError(f"{what}: rank {r} is out of range (the world has {n} "
                             f"process{'es' if n != 1 else ''}); ranks must be ints in "
                             f"[0, world_size={n}), got {ranks}")
    if len(set(ranks)) != len(ranks):
        twice = next(r for r in ranks if ranks.count(r) > 1)
        raise ValueError(f"{what}: ranks must be distinct, got rank {twice} twice in {ranks}")


_groups = {}  # tuple(proc_ranks) -> the Group made last with those ranks (for group=[...] lists)
_made = {}  # tuple(sorted ranks) -> how many torch groups of those ranks this process has made


def _members_process_group(ranks):
    """A torch process group of ``ranks`` (sorted) that only its members create.

    ``torch.distributed.new_group`` must be called by every rank; its
    ``use_local_synchronization`` lets only members call, but names the group after how many
    groups the calling process has made, which differs between members once groups overlap
    (rank 1 in [0, 1] and then [1, 2]) and the rendezvous hangs. Here the name depends only on
    the members and on how many groups of exactly these members were made before, which every
    member counts alike. torch's own helper builds the group under that name, so collectives,
    ``get_group_rank`` and destroy_process_group treat it as one of theirs.
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    helper = getattr(c10d, "_new_process_group_helper", None)
    if helper is None:  # a torch without the helper: every rank must call (torch's rule)
        return dist.new_group(ranks, timeout=_timedelta(_sd.timeout))
    key = tuple(ranks)
    count = _made.get(key, 0)
    _made[key] = count + 1
    name = "megengine_group_" + "_".join(map(str, ranks)) + f"_{count}"
    backend, store = c10d._world.pg_map[c10d._get_default_group()]
    pg, _ = helper(len(ranks), ranks.index(_sd.rank), list(ranks), backend, store, name,
                   timeout=_timedelta(_sd.timeout))
    c10d._world.pg_group_ranks[pg] = {r: i for i, r in enumerate(ranks)}
    return pg


def _group_of(ranks, what):
    """A collective's ``group=[ranks]`` (upstream also takes a list) as a Group: one made by
    new_group, or any order of all ranks (which needs no torch group)."""
    key = tuple(ranks)
    group = _groups.get(key)
    if group is None:
        if _sd is None:
            raise _not_initialized(what)
        _check_ranks(key, f"{what}: group={list(ranks)}")
        if sorted(key) != list(range(_sd.world_size)):
            raise ValueError(f"{what}: group={list(ranks)} names some of the ranks; create it first "
                             "with dist.new_group(ranks) on each of its members and pass that "
                             "Group")
        group = Group(list(key))
    return group


WORLD = Group([])


def _timedelta(seconds):
    return datetime.timedelta(seconds=float(seconds))


def _check_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"init_process_group: {name} must be an int, got {type(value).__name__} "
                        f"{value!r}")


def init_process_group(master_ip: Optional[str] = None, port: Optional[int] = None,
                       world_size: Optional[int] = None, rank: Optional[int] = None,
                       device: Optional[int] = None, backend: Optional[str] = "auto",
                       device_type: str = "xpu", timeout: float = DEFAULT_TIMEOUT, *,
                       master_port: Optional[int] = None, dev: Optional[int] = None) -> None:
    """Join the process group of ``world_size`` processes as ``rank``.

    Args:
        master_ip: address of the machine of rank 0, which hosts the rendezvous.
        port: a free TCP port on that machine, the same for every rank.
        world_size: number of processes in the job (over all machines).
        rank: this process's rank in ``[0, world_size)``.
        device: the GPU index this process uses (NCCL); on CPUs, its local index. The process's
            default device becomes ``gpu{device}`` or ``cpu{device}`` (upstream's
            ``{device_type}{device}``), the device ``group.comp_node`` names.
        backend: ``"gloo"`` (CPUs) or ``"nccl"`` (GPUs); ``None``/``"auto"`` picks NCCL when
            ``device_type`` is a GPU and CUDA is usable, else gloo. ``"shm"`` means gloo.
        device_type: ``"xpu"`` (a GPU when there is one), ``"gpu"`` or ``"cpu"``.
        timeout: seconds the rendezvous and every collective wait for the other ranks before
            raising (a peer that died or never started gives an error, not a hang).
        master_port, dev: MegEngine 0.x's names of ``port`` and ``device``.

    Called with no arguments under ``torchrun``, it reads ``MASTER_ADDR``, ``MASTER_PORT``,
    ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` from the environment.
    """
    global _sd
    for old_name, old, new_name, new in (("master_port", master_port, "port", port),
                                         ("dev", dev, "device", device)):
        if old is not None and new is not None:
            raise TypeError(f"init_process_group: give {new_name} or its 0.x name {old_name}, "
                            "not both")
    port = port if master_port is None else master_port
    device = device if dev is None else dev
    if _sd is not None:
        raise RuntimeError("init_process_group: already initialized; it is called once per process")
    from_env = master_ip is None and port is None and world_size is None and rank is None
    if from_env:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK") if v not in os.environ]
        if missing:
            raise ValueError(
                "init_process_group() without arguments reads the environment torchrun sets, "
                f"but {', '.join(missing)} is not set; run under torchrun or pass master_ip, port, "
                "world_size, rank and device")
        master_ip = os.environ["MASTER_ADDR"]
        port, world_size, rank = (int(os.environ[v]) for v in ("MASTER_PORT", "WORLD_SIZE", "RANK"))
        if device is None:
            device = int(os.environ.get("LOCAL_RANK", 0))
    elif None in (master_ip, port, world_size, rank):
        raise ValueError("init_process_group: give master_ip, port, world_size and rank (or none "
                         "of them under torchrun)")
    if device is None:
        device = 0
    if not isinstance(master_ip, str):
        raise TypeError(f"init_process_group: master_ip must be a str, got {type(master_ip).__name__}")
    for name, value in (("port", port), ("world_size", world_size), ("rank", rank), ("device", device)):
        _check_int(name, value)
    if world_size < 1:
        raise ValueError(f"init_process_group: world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"init_process_group: rank must be in [0, world_size={world_size}), "
                         f"got rank={rank}")
    if not 0 < port < 65536:
        raise ValueError(f"init_process_group: port must be in [1, 65535], got {port}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"init_process_group: timeout must be a positive number of seconds, "
                         f"got {timeout!r}")
    backend = _pick_backend(backend, device_type)

    from ..device import _cuda_lost_in_fork, _forget_cuda

    if _cuda_lost_in_fork():  # (a process of multiprocessing's "fork", after GPU work)
        if device_type != "cpu":
            raise RuntimeError(
                f"init_process_group: device_type={device_type!r}, but this process was forked "
                "from one that had already used CUDA, and CUDA cannot be used in a forked "
                "process; start the process with the 'spawn' start method "
                "(megengine.distributed.launcher(..., start_method='spawn')), or pass "
                "device_type='cpu' for a group on the CPU")
        # a CPU group: tensors and random seeds stay off CUDA here, as the launcher's forked
        # CPU workers (the cached answers would send the seed to CuPy, which fails here)
        _forget_cuda()

    import torch
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(device)
    kwargs = dict(backend=backend, world_size=world_size, rank=rank, timeout=_timedelta(timeout))
    try:
        if from_env:
            kwargs["init_method"] = "env://"
        else:
            store = _rendezvous_store(master_ip, port, world_size, rank, timeout)
            # torch's keys under the prefix; get_client's values in the store itself, where
            # a Client(master_ip, port) sees them, as upstream's
            kwargs["store"] = (dist.PrefixStore(_rendezvous_prefix, store)
                               if _rendezvous_prefix else store)
        # TORCH_DISTRIBUTED_DEBUG=DETAIL (torch's check that the ranks' collectives agree in op,
        # shapes and dtypes) as the environment says now: torch reads it once per process, and
        # a forked worker would keep its parent's first reading (unset: a level set with
        # dist.set_debug_level() stays)
        if "TORCH_DISTRIBUTED_DEBUG" in os.environ:
            dist.set_debug_level_from_env()
        dist.init_process_group(**kwargs)
    except Exception as error:  # torch's errors name neither the cause nor the fix
        raise _rendezvous_error(error, master_ip, port, world_size, rank, timeout) from error
    _sd = _State(master_ip, port, world_size, rank, device, backend, timeout, from_env,
                 device_type)
    _sd.store = None if from_env else store
    WORLD.reset(list(range(world_size)))

    from .. import random
    from ..device import is_cuda_available, set_default_device

    # as upstream ("{device_type}{device}"): rank r's default device is its own, the device
    # group.comp_node names (xpu{r} for the default device_type, which is gpu{r} with NCCL and
    # cpu{r}, one host memory, elsewhere), so tensors a rank makes by that name and by default
    # meet; on GPU machines a CPU group stays on the CPU
    own = "xpu" if _sd.device_type == "xpu" else None
    if backend == "nccl":
        set_default_device(f"{own or 'gpu'}{device}")
    elif str(device_type).lower().startswith("cpu") or not is_cuda_available():
        set_default_device(f"{own or 'cpu'}{device}")
    # as upstream: each rank draws its own megengine.random numbers (parameters are made
    # equal with bcast_list_); numpy's global RNG stays the launching process's, as upstream
    # never reseeds it, so programs that make "the same" input on every rank with np.random get it
    random.rng.seed((int(time.time()) + rank) % 2**32)


def _rendezvous_store(master_ip, port, world_size, rank, timeout):
    """The TCPStore the ranks meet in: rank 0 hosts it, unless a `Server` on rank 0's machine
    already does on ``port`` (a launcher's, or one that upstream's hand-started jobs create
    first); then rank 0 joins it too."""
    import torch.distributed as dist

    limit = _timedelta(timeout)
    if rank != 0:
        return dist.TCPStore(master_ip, port, world_size, is_master=False, timeout=limit)
    try:
        return dist.TCPStore(master_ip, port, world_size, is_master=True, timeout=limit)
    except Exception as error:
        text = str(error)
        if "address already in use" not in text.lower() and "EADDRINUSE" not in text:
            raise
        from .server import join_server

        store = join_server(master_ip, port, timeout)
        if store is None:
            raise  # a program that is not a Server of this machine holds the port
        return store


def _pick_backend(backend, device_type):
    if backend in _ALIASES:
        backend = _ALIASES[backend]
    elif backend not in _BACKENDS:
        raise ValueError(f"init_process_group: backend must be one of 'gloo', 'nccl', 'auto' "
                         f"(or 'shm' for gloo), got {backend!r}")
    if device_type not in ("xpu", "gpu", "cuda", "cpu"):
        raise ValueError(f"init_process_group: device_type must be 'xpu', 'gpu' or 'cpu', "
                         f"got {device_type!r}")
    if backend is None:
        if device_type == "cpu":
            return "gloo"
        from ..device import is_cuda_available

        if is_cuda_available():
            return "nccl"
        if device_type in ("gpu", "cuda"):
            raise RuntimeError("init_process_group: device_type='gpu' but CUDA is not usable "
                               "here (megengine needs CuPy and a GPU); use device_type='cpu'")
        return "gloo"
    return backend


def _rendezvous_error(error, master_ip, port, world_size, rank, timeout):
    text = str(error)
    where = f"rank {rank} of {world_size} at {master_ip}:{port}"
    if "address already in use" in text.lower() or "EADDRINUSE" in text:
        return RuntimeError(
            f"init_process_group ({where}): port {port} is already in use on {master_ip}; "
            "pick a free port (the launcher picks one itself with port=0)")
    if "timed out" in text.lower() or "timeout" in text.lower():
        return TimeoutError(
            f"init_process_group ({where}): not all {world_size} processes arrived within "
            f"{timeout:g} s; start every rank with the same master_ip, port and world_size "
            f"(torch said: {text.splitlines()[0] if text else type(error).__name__})")
    return RuntimeError(f"init_process_group ({where}) failed: {type(error).__name__}: {text}")


def destroy_process_group() -> None:
    """Leave the process group (a later init_process_group may join a new one)."""
    global _sd
    if _sd is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _sd = None
    _groups.clear()
    _made.clear()
    _batch.depth = 0
    _batch.sends.clear()
    WORLD.proc_ranks = None
    WORLD._pg = None


def is_distributed() -> bool:
    """True once init_process_group has run in this process."""
    return _sd is not None


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return _sd.rank if _sd is not None else 0


def get_world_size() -> int:
    """The number of processes in the job (1 when not distributed)."""
    return _sd.world_size if _sd is not None else 1


def get_backend() -> Optional[str]:
    """``"gloo"`` or ``"nccl"``; None when not distributed."""
    return _sd.backend if _sd is not None else None


def get_client():
    """The key-value `Client` of this process group's rendezvous (upstream's ``get_client``):
    ``get_client().user_set(key, value)`` on one rank, ``get_client().user_get(key)`` on
    another, as pipeline-parallel programs pass shapes and dtypes ahead of ``remote_recv``."""
    sd = _state("get_client")
    if sd.client is None:
        import torch.distributed as dist

        from .server import Client

        store = sd.store if sd.store is not None else dist.distributed_c10d._get_default_store()
        sd.client = Client._over(store, sd.timeout)
    return sd.client


def get_py_server_addr():
    """``(master_ip, port)`` of the rendezvous this process joined (upstream's Python server
    address)."""
    sd = _state("get_py_server_addr")
    return sd.master_ip, sd.port


def get_mm_server_addr():
    """``(master_ip, port)`` of the server that connects the ranks' collectives (upstream's C++
    "mm server", a second port next to the Python server's). torch.distributed's ranks meet in
    the one rendezvous store, so this is the same address as `get_py_server_addr`."""
    sd = _state("get_mm_server_addr")
    return sd.master_ip, sd.port


def _state(what):
    if _sd is None:
        raise _not_initialized(what)
    return _sd


def _check_same_backend(new_backend, what):
    """Upstream switches the collectives' backend (NCCL or RCCL) on a live process group; one
    torch backend serves every collective here, so only the one in use (or "auto") is
    accepted."""
    sd = _state(what)
    new_backend = _ALIASES.get(new_backend, new_backend)
    if new_backend not in (None, sd.backend):
        raise ValueError(f"{what}: the process group runs on {sd.backend}; {new_backend!r} "
                         "would need a second process group (the backend is chosen once, by "
                         "init_process_group's backend argument)")


class override_backend:
    """Upstream's context manager to switch the collective backend; one torch backend serves
    every collective here, so only the backend already in use is accepted."""

    def __init__(self, new_backend):
        self.new_backend = new_backend

    def __enter__(self):
        _check_same_backend(self.new_backend, "override_backend")
        return self

    def __exit__(self, *exc):
        return False


def new_group(proc_ranks: List[int]) -> Group:
    """A group of some ranks (the first is its root). Its members call ``new_group`` together
    (as upstream; the members make their groups in the same order); only the members use the
    group."""
    if isinstance(proc_ranks, (str, bytes)) or not isinstance(proc_ranks, Iterable):
        raise TypeError(f"new_group: proc_ranks must be a list of ranks (ints), got "
                        f"{type(proc_ranks).__name__} {proc_ranks!r}")
    proc_ranks = list(proc_ranks)
    if not proc_ranks:
        # (Group([]) is how WORLD is made, before the process group exists; upstream's
        # new_group([]) returns a group that fails an assertion, "invalid group", at first use)
        raise ValueError("new_group: proc_ranks is empty; a group needs at least one rank "
                         "(dist.WORLD is the group of all ranks)")
    if _sd is None:
        raise _not_initialized("new_group")
    _check_ranks(proc_ranks, "new_group")
    return Group(proc_ranks)


def waiting_failure(message, error):
    """The RuntimeError for torch.distributed's ``error`` while this rank waited on its peers
    (its text speaks of sockets and buffers): ``message`` says what and why, torch's first line
    follows."""
    text = str(error).strip().splitlines()
    return RuntimeError(f"{message} torch.distributed said: "
                        f"{text[0] if text else type(error).__name__}")


def group_barrier(group: Group = WORLD) -> None:
    """Wait until every rank of ``group`` reaches this call (nothing to wait for when not
    distributed)."""
    if _sd is None:
        return
    if not isinstance(group, Group):
        raise TypeError(f"group_barrier: expected a Group, got {type(group).__name__}")
    import torch.distributed as dist

    group._ranks()
    if _sd.backend == "nccl":
        dist.barrier(group=group._pg, device_ids=[_sd.device])
    else:
        dist.barrier(group=group._pg)


class _Batch:
    """The state of group_start/group_end: how deep the calls nest, and the sends posted
    since the outermost group_start (torch Work handles with the arrays they read from)."""

    def __init__(self):
        self.depth = 0
        self.sends = []


_batch = _Batch()


def group_start() -> None:
    """Open a batch of communication, closed by `group_end` (upstream's grouping of NCCL
    calls); batches nest. Inside a batch, ``remote_send`` returns once its tensor is posted,
    and the send completes by the outermost ``group_end``: every rank may send before it
    receives (an exchange around a ring) without waiting for its peer. Collectives run in
    the order they are called, as outside a batch: their results are the same."""
    _batch.depth += 1


def group_end() -> None:
    """Close the batch `group_start` opened; the outermost one waits until every send posted
    in the batch has completed."""
    if _batch.depth == 0:
        raise RuntimeError("group_end: no batch is open; call dist.group_start() first, once "
                           "per group_end")
    _batch.depth -= 1
    if _batch.depth:
        return
    sends, _batch.sends = _batch.sends, []
    for dest, work, _source in sends:
        try:
            work.wait()
        except RuntimeError as error:
            raise waiting_failure(
                f"group_end: a remote_send to rank {dest} posted in this batch did not "
                f"complete within the process group's timeout ({_sd.timeout:g} s): rank "
                f"{dest} died, or did not call remote_recv for it.", error) from error


def _in_batch() -> bool:
    return _batch.depth > 0


def _post_send(work, dest, source):
    """Keep an asynchronous send of ``source`` to ``dest`` until the batch ends."""
    _batch.sends.append((dest, work, source))
