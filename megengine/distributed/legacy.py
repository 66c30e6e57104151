"""MegEngine 0.x collectives under their 0.x names and signatures (``dist.all_reduce_sum(t, key)``).

0.x named each collective with a ``key`` so that the ranks' graphs matched it up; here, as in
1.x, collectives match by call order on the group (every rank issues them in the same order,
which 0.x programs already do), so ``key`` only names the call. ``nr_ranks`` must be the world
size (0.x's default); 1.x's groups (``dist.new_group``) cover subsets.
"""
from .group import get_rank, get_world_size, is_distributed

__all__ = ["all_reduce_sum", "all_reduce_max", "all_reduce_min", "all_gather",
           "reduce_scatter_sum", "broadcast", "bcast_param"]


def _collectives():
    from ..functional import distributed  # functional/distributed.py imports this package

    return distributed


def _check(what, nr_ranks):
    if not is_distributed():
        raise RuntimeError(f"{what}: no process group; call dist.init_process_group(...) first, "
                           "or run under dist.launcher")
    if nr_ranks is not None and nr_ranks != get_world_size():
        raise ValueError(f"{what}: nr_ranks={nr_ranks} but the world has {get_world_size()} "
                         "ranks; for a subset make a group (dist.new_group) and call "
                         f"megengine.functional.distributed.{what}(tensor, group)")


def all_reduce_sum(tensor, key=None, nr_ranks=None):
    """0.x ``dist.all_reduce_sum``: the elementwise sum over the ranks, on every rank."""
    _check("all_reduce_sum", nr_ranks)
    return _collectives().all_reduce_sum(tensor)


def all_reduce_max(tensor, key=None, nr_ranks=None):
    """0.x ``dist.all_reduce_max``: the elementwise max over the ranks, on every rank."""
    _check("all_reduce_max", nr_ranks)
    return _collectives().all_reduce_max(tensor)


def all_reduce_min(tensor, key=None, nr_ranks=None):
    """0.x ``dist.all_reduce_min``: the elementwise min over the ranks, on every rank."""
    _check("all_reduce_min", nr_ranks)
    return _collectives().all_reduce_min(tensor)


def all_gather(tensor, key=None, nr_ranks=None, rank=None):
    """0.x ``dist.all_gather``: the ranks' tensors concatenated along axis 0 in rank order."""
    _check("all_gather", nr_ranks)
    if rank is not None and rank != get_rank():
        raise ValueError(f"all_gather: rank={rank} but this process is rank {get_rank()}")
    return _collectives().all_gather(tensor)


def reduce_scatter_sum(tensor, key=None, nr_ranks=None, rank=None):
    """0.x ``dist.reduce_scatter_sum``: the sum over the ranks split along axis 0; rank i gets
    part i."""
    _check("reduce_scatter_sum", nr_ranks)
    if rank is not None and rank != get_rank():
        raise ValueError(f"reduce_scatter_sum: rank={rank} but this process is rank {get_rank()}")
    return _collectives().reduce_scatter_sum(tensor)


def broadcast(tensor, key=None, nr_ranks=None, is_root=None):
    """0.x ``dist.broadcast``: rank 0's tensor on every rank (``is_root`` must agree: 0.x's
    root was the rank that passed ``is_root=True``, rank 0 by default)."""
    _check("broadcast", nr_ranks)
    if is_root is not None and bool(is_root) != (get_rank() == 0):
        raise ValueError(f"broadcast: is_root={is_root} on rank {get_rank()}; the root is rank 0 "
                         "(for another root use megengine.functional.distributed.broadcast with "
                         "a group that lists it first)")
    return _collectives().broadcast(tensor)


def bcast_param(inp, key=None, nr_ranks=None, is_root=None):
    """0.x ``dist.bcast_param``: overwrite ``inp`` (a Parameter or buffer) in place with rank 0's
    value; nothing happens outside a process group, as in 0.x."""
    if not is_distributed():
        return
    inp._reset(broadcast(inp, key, nr_ranks, is_root).detach())
