"""`megengine.distributed`: upstream's data-parallel API on torch.distributed (gloo on CPUs, NCCL on GPUs).

Importing it does not import torch; ``init_process_group`` (or a launched worker) does. The
collectives themselves are in ``megengine.functional.distributed`` (``megengine.distributed.functional``
re-exports them under upstream's older module name).
"""
import sys
from ..core._config import PropertyModule

from . import group, helper  # noqa: F401
from .group import (
    WORLD,
    Group,
    destroy_process_group,
    get_backend,
    get_client,
    get_mm_server_addr,
    get_py_server_addr,
    get_rank,
    get_world_size,
    group_barrier,
    group_end,
    group_start,
    init_process_group,
    is_distributed,
    new_group,
    override_backend,
)
from .helper import AllreduceCallback, bcast_list_, make_allreduce_cb, synchronized
from .launcher import WorkerError, launcher
from .legacy import (  # noqa: F401  (0.x: dist.all_reduce_sum(tensor, key), ...)
    all_gather, all_reduce_max, all_reduce_min, all_reduce_sum, bcast_param, broadcast,
    reduce_scatter_sum,
)
from .server import Client, Server, get_free_ports

__all__ = [
    "WORLD", "Group", "init_process_group", "destroy_process_group", "is_distributed", "get_rank",
    "get_world_size", "get_backend", "new_group", "group_barrier", "override_backend",
    "bcast_list_", "synchronized", "make_allreduce_cb", "AllreduceCallback", "launcher",
    "WorkerError", "Server", "Client", "get_client", "get_free_ports", "get_py_server_addr",
    "get_mm_server_addr", "group_start", "group_end",
]


def __getattr__(name):
    # dist.functional.all_reduce_sum works without a separate import, as upstream's package
    # (whose helper imported it) offered; loaded on first use, since megengine.functional.
    # distributed imports this package, and an eager import here broke a program whose first
    # import was `import megengine.functional.distributed` (a circular import)
    if name == "functional":
        import importlib

        return importlib.import_module(".functional", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"functional"})


class _Package(PropertyModule):
    """This package's module type: gives it upstream's ``dist.backend`` property."""

    @property
    def backend(self):
        """The collectives' backend, ``"gloo"`` or ``"nccl"`` (as `get_backend`); only after
        init_process_group, as upstream. Setting it to the backend in use (or ``"auto"``) is
        accepted; another one raises ValueError: one torch backend serves the process group."""
        return group._state("backend").backend

    @backend.setter
    def backend(self, value):
        group._check_same_backend(value, "backend")


sys.modules[__name__].__class__ = _Package
