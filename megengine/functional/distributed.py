"""Collective communication as differentiable ops (`F.distributed`), carried by torch.distributed in place on engine memory.

Each collective is an op of the one dispatcher: ``forward`` allocates the output array and lets
torch.distributed (gloo on CPUs, NCCL on GPUs) write into it through the bridge's zero-copy views
(``to_torch``), so no megengine array is copied to or from torch; ``backward`` is the adjoint
collective, as upstream's: all_reduce_sum <-> all_reduce_sum, all_gather <-> reduce_scatter_sum,
broadcast <-> reduce_sum, gather <-> scatter, all_to_all <-> all_to_all (axes swapped),
remote_send <-> remote_recv.

Rules every rank must follow (as upstream): all members of a group call the same collectives in
the same order with the same shapes (``broadcast``/``scatter``/``remote_recv`` learn the shape
and dtype from the sender), and, when gradients are recorded, all of them record and run
``backward``. Ops whose result exists on the root only (``reduce_sum``, ``gather``) return None
elsewhere; their backward still runs there, because the recording GradManager keeps the op's
output (a ``remote_send`` likewise; call ``gm.backward()`` with no loss on a rank that only sends).
A peer that never calls raises after the process group's timeout.

Importing this module does not import torch; the first collective does (through the bridge).
"""
import functools
from typing import Optional

import numpy as np

from ..autodiff import grad_manager as _grad_manager
from ..core import dispatch
from ..core._trace_option import as_int, is_dim
from ..core.dispatch import Node, Op, apply, xp_of
from ..core.tensor import Tensor
from ..distributed import group as _group
from ..distributed.group import WORLD, Group, get_rank

__all__ = [
    "all_reduce_sum", "all_reduce_max", "all_reduce_min", "all_gather", "reduce_scatter_sum",
    "broadcast", "reduce_sum", "gather", "scatter", "all_to_all", "remote_send", "remote_recv",
]

# dtypes that cross the wire (torch.distributed has no int16), by code (shape/dtype messages
# carry the code)
_DTYPES = [np.dtype(t) for t in ("float32", "float16", "float64", "int32", "int64", "int8",
                                 "uint8", "bool")]
_REFUSED = -1  # a message's dtype code when its sender could not send (and raised there)
_MAX_NDIM = 16
_torch = _dist = _to_torch = None  # imported on first use: megengine stays torch-free until then


def _load():
    global _torch, _dist, _to_torch
    if _dist is None:
        import torch
        import torch.distributed as dist

        from ..core.torch_bridge import load_extension

        _to_torch = load_extension().to_torch  # the C++ entry point itself: no Python frame
        _torch, _dist = torch, dist


# --------------------------------------------------------------------------------------------------
# raw-array collectives: torch.distributed writes into engine arrays through zero-copy views

def _as_group(group, what):
    if isinstance(group, Group):
        group._ranks()  # raises a clear error before init_process_group, or for a non-member
        return group
    if isinstance(group, (list, tuple)):
        group = _group._group_of(group, what)
        group._ranks()
        return group
    raise TypeError(f"{what}: group must be a Group or a list of ranks, got {type(group).__name__}")


def _after_gpu(array):
    """CuPy work that follows must see what torch's stream wrote. Both libraries default to the
    legacy stream, which orders everything; a user-chosen CuPy stream needs a wait."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        if cupy.cuda.get_current_stream().ptr != 0:
            _torch.cuda.current_stream().synchronize()


def _peers(func):
    """Name what went wrong when torch.distributed raises inside a collective (its messages speak
    of sockets and buffers): which collective, which group, and the likely causes."""
    name = func.__name__.lstrip("_")

    @functools.wraps(func)
    def wrapper(x, group, *args):
        if isinstance(x, np.generic):  # a 0-d output's gradient may come as a numpy scalar
            x = np.asarray(x)
        try:
            return func(x, group, *args)
        except RuntimeError as error:
            why = ("the ranks called collectives that differ in op, shapes or dtypes (the check "
                   "of TORCH_DISTRIBUTED_DEBUG=DETAIL)" if "mismatch between collectives" in
                   str(error) else "a peer process died, or did not call the same collective "
                   f"within the process group's timeout ({_group._sd.timeout:g} s)")
            raise _group.waiting_failure(
                f"megengine.distributed: {name} on {group!r} failed on rank {get_rank()}: "
                f"{why}.", error) from error

    return wrapper


def _reduce_op(mode):
    return {"sum": _dist.ReduceOp.SUM, "max": _dist.ReduceOp.MAX, "min": _dist.ReduceOp.MIN}[mode]


@_peers
def _all_reduce(x, group, mode):
    out = x.copy()  # C-contiguous; the collective reduces it in place
    _dist.all_reduce(_to_torch(out), op=_reduce_op(mode), group=group._pg)
    _after_gpu(out)
    return out


def _chunks(x, n, axis, what):
    if x.ndim == 0 or x.shape[axis] % n:
        raise ValueError(f"{what}: axis {axis} of the input (shape {x.shape}) must split into "
                         f"{n} equal parts, one per rank of the group")
    parts = xp_of(x).split(x, n, axis=axis)
    return [p if p.flags.c_contiguous else xp_of(x).ascontiguousarray(p) for p in parts]


def _by_torch_rank(items, group):
    """Reorder per-member items from group order (root first) to torch's (sorted ranks)."""
    return [items[s] for s in group._slot]


@_peers
def _all_gather(x, group, axis):
    xp = xp_of(x)
    n = group.size
    buf = xp.empty((n,) + x.shape, x.dtype)
    _dist.all_gather(_by_torch_rank([_to_torch(buf[i]) for i in range(n)], group),
                     _to_torch(xp.ascontiguousarray(x)), group=group._pg)
    _after_gpu(buf)
    return _join(buf, axis)


def _join(buf, axis):
    """(n, *shape) parts -> one array, concatenated along ``axis`` (free for axis 0)."""
    n, shape = buf.shape[0], buf.shape[1:]
    if axis == 0:
        return buf.reshape((n * shape[0],) + shape[1:])
    return xp_of(buf).concatenate(list(buf), axis=axis)


@_peers
def _reduce_scatter(x, group, axis, what="reduce_scatter_sum"):
    parts = _chunks(x, group.size, axis, what)
    out = xp_of(x).empty(parts[0].shape, x.dtype)
    _dist.reduce_scatter(_to_torch(out), _by_torch_rank([_to_torch(p) for p in parts], group),
                         op=_dist.ReduceOp.SUM, group=group._pg)
    _after_gpu(out)
    return out


@_peers
def _broadcast(x, group):
    """Root's ``x`` on every member; elsewhere ``x`` is the (uninitialized) receiving buffer."""
    out = x.copy() if group.rank == 0 else x
    _dist.broadcast(_to_torch(out), src=group.root, group=group._pg)
    _after_gpu(out)
    return out


@_peers
def _reduce(x, group):
    out = x.copy()
    _dist.reduce(_to_torch(out), dst=group.root, op=_dist.ReduceOp.SUM, group=group._pg)
    _after_gpu(out)
    return out  # meaningful on the root only


@_peers
def _gather(x, group, axis):
    x = xp_of(x).ascontiguousarray(x)
    if group.rank == 0:
        buf = xp_of(x).empty((group.size,) + x.shape, x.dtype)
        targets = _by_torch_rank([_to_torch(buf[i]) for i in range(group.size)], group)
    else:
        buf, targets = None, None
    _dist.gather(_to_torch(x), gather_list=targets, dst=group.root, group=group._pg)
    if buf is None:
        return None
    _after_gpu(buf)
    return _join(buf, axis)


@_peers
def _scatter(x, group, axis, part_shape, dtype, xp, what="scatter"):
    """Root's ``x`` split along ``axis``, one part per member; the others pass ``x=None`` and
    receive a ``part_shape`` array of ``dtype`` (array module ``xp``)."""
    if group.rank == 0:
        sources = _by_torch_rank([_to_torch(p) for p in _chunks(x, group.size, axis, what)], group)
    else:
        sources = None
    out = xp.empty(part_shape, dtype)
    _dist.scatter(_to_torch(out), scatter_list=sources, src=group.root, group=group._pg)
    _after_gpu(out)
    return out


@_peers
def _all_to_all(x, group, split_axis, concat_axis, what="all_to_all"):
    parts = _chunks(x, group.size, split_axis, what)
    xp = xp_of(x)
    # all_to_all_single on one stacked buffer, not the list form: gloo has only the former
    # before torch 2.12 ("Backend gloo does not support alltoall" on 2.8 to 2.11). Its parts
    # are in torch's rank order: sent as such, and the received ones put back in group order.
    send = xp.stack(_by_torch_rank(parts, group))
    received = xp.empty_like(send)
    _dist.all_to_all_single(_to_torch(received), _to_torch(send), group=group._pg)
    _after_gpu(received)
    order = sorted(range(group.size), key=group._slot.__getitem__)
    return _join(received if order == list(range(group.size)) else received[order], concat_axis)


def _send(tensor, dest):
    """Send ``tensor`` to rank ``dest``. Between group_start and group_end the send is only
    posted (group_end waits for it), so that ranks may all send before they receive."""
    if _group._in_batch():
        _group._post_send(_dist.isend(tensor, dst=dest), dest, tensor)
        return
    try:
        _dist.send(tensor, dst=dest)
    except RuntimeError as error:  # torch speaks of buffers: say who and what to do
        raise _group.waiting_failure(
            f"megengine.distributed: sending to rank {dest} failed on rank {get_rank()}: rank "
            f"{dest} died, or did not receive (remote_recv) within the process group's timeout "
            f"({_group._sd.timeout:g} s). Ranks that all send before they receive put those "
            "sends and receives between dist.group_start() and dist.group_end().",
            error) from error


def _recv(tensor, src):
    """Receive into ``tensor`` from rank ``src``."""
    try:
        _dist.recv(tensor, src=src)
    except RuntimeError as error:
        raise _group.waiting_failure(
            f"megengine.distributed: receiving from rank {src} failed on rank {get_rank()}: "
            f"rank {src} died, or did not send (remote_send) within the process group's "
            f"timeout ({_group._sd.timeout:g} s).", error) from error


# shape/dtype messages: [dtype code, ndim, flag, shape...] as one small int64 tensor

def _meta_tensor(values=None):
    device = f"cuda:{_group._sd.device}" if _group._sd.backend == "nccl" else "cpu"
    t = _torch.zeros(3 + _MAX_NDIM, dtype=_torch.int64, device=device)
    if values is not None:
        t[: len(values)] = _torch.tensor(values, dtype=_torch.int64)
    return t


def _check_dtype(dtype, what):
    if np.dtype(dtype) not in _DTYPES:
        raise TypeError(f"{what}: dtype {np.dtype(dtype)} cannot be communicated (torch."
                        f"distributed lacks it); supported: {', '.join(map(str, _DTYPES))}; cast "
                        "the tensor first, e.g. x.astype('int32')")


def _encode(x, flag, what):
    """The shape message of ``x`` and None, or, when ``x`` cannot be sent, a refusal and the
    error to raise once the peers that wait for the message have it (they raise too)."""
    try:
        _check_dtype(x.dtype, what)
        if x.ndim > _MAX_NDIM:
            raise ValueError(f"{what}: at most {_MAX_NDIM} dims can be communicated, got a "
                             f"{x.ndim}-d tensor")
    except (TypeError, ValueError) as error:
        return [_REFUSED, 0, 0], error
    return [_DTYPES.index(x.dtype), x.ndim, flag, *x.shape], None


def _decode(t, sender, what):
    values = t.cpu().tolist()
    code, ndim, flag = values[:3]
    if code == _REFUSED:
        raise ValueError(f"{what}: rank {sender} could not send its tensor (its own error says "
                         "why: a dtype or number of dims that cannot be communicated)")
    return tuple(values[3: 3 + ndim]), _DTYPES[code], flag


def _bcast_meta(x, group, flag, what):
    """The root's (shape, dtype, flag) on every member of ``group``."""
    message, refusal = _encode(x, flag, what) if group.rank == 0 else (None, None)
    t = _meta_tensor(message)
    _dist.broadcast(t, src=group.root, group=group._pg)
    if refusal is not None:
        raise refusal
    return _decode(t, group.root, what)


def _placeholder(device, tracked):
    """A stand-in input (a non-root's broadcast/scatter input, remote_recv's): tracked, it is a
    live leaf of the recorded graph, so the op is recorded and its backward runs here too."""
    from ..device import get_array_module

    t = Tensor._wrap(get_array_module(device).zeros((0,), np.float32), device)
    if tracked and dispatch.is_recording():
        # a leaf of every live recording, as if attached to each recording GradManager
        live = tuple(k for k in dispatch._active if k.alive)
        t._node = (Node(None, (), (((0,), np.dtype(np.float32)),), keys=live), 0)
    return t


# --------------------------------------------------------------------------------------------------
# the ops

class _Collective(Op):
    def __init__(self, group, **options):
        self.group = group
        self.__dict__.update(options)

    def __repr__(self):
        return f"{type(self).__name__}({self.group!r})"


class AllReduce(_Collective):
    """mode "sum" | "max" | "min". The gradient of a max/min reaches the ranks whose value is
    the result (every tied rank gets it), summed over the ranks' output gradients."""

    def forward(self, x):
        out = _all_reduce(x, self.group, self.mode)
        if self.mode != "sum" and any(self.needs_input_grad):
            self.hit = x == out
        return out

    def backward(self, g):
        total = _all_reduce(g, self.group, "sum")
        return total if self.mode == "sum" else total * self.hit


class AllGather(_Collective):
    def forward(self, x):
        return _all_gather(x, self.group, self.axis)

    def backward(self, g):
        return _reduce_scatter(g, self.group, self.axis)


class ReduceScatterSum(_Collective):
    def forward(self, x):
        return _reduce_scatter(x, self.group, self.axis)

    def backward(self, g):
        return _all_gather(g, self.group, self.axis)


class Broadcast(_Collective):
    def forward(self, x):
        if self.group.rank != 0:
            x = xp_of(x).empty(self.shape, self.dtype)  # x is a placeholder: receive here
        return _broadcast(x, self.group)

    def backward(self, g):
        total = _reduce(g, self.group)
        return total if self.group.rank == 0 else None  # other inputs only said the shape


class ReduceSum(_Collective):
    def forward(self, x):
        return _reduce(x, self.group)

    def backward(self, g):
        return _broadcast(g, self.group)  # the root's output gradient; others' are unused


class Gather(_Collective):
    def forward(self, x):
        self.part = x.shape
        out = _gather(x, self.group, self.axis)
        return out if out is not None else xp_of(x).empty((0,), x.dtype)  # non-root: no result

    def backward(self, g):
        return _scatter(g if self.group.rank == 0 else None, self.group, self.axis,
                        self.part, g.dtype, xp_of(g))


class Scatter(_Collective):
    def forward(self, x):
        return _scatter(x if self.group.rank == 0 else None, self.group, self.axis,
                        self.part, self.dtype, xp_of(x))

    def backward(self, g):
        full = _gather(g, self.group, self.axis)
        return full if self.group.rank == 0 else None


class AllToAll(_Collective):
    def forward(self, x):
        return _all_to_all(x, self.group, self.split_axis, self.concat_axis)

    def backward(self, g):
        return _all_to_all(g, self.group, self.concat_axis, self.split_axis)


class RemoteSend(Op):
    """Sends its input to ``dest``; its output is a placeholder whose backward receives the
    input's gradient from ``dest``."""

    def __init__(self, dest):
        self.dest = dest

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        _send(_to_torch(xp_of(x).ascontiguousarray(x)), self.dest)
        return xp_of(x).zeros((), np.float32)

    def backward(self, g):
        grad = xp_of(g).empty(self.shape, self.dtype)
        _recv(_to_torch(grad), self.dest)
        _after_gpu(grad)
        return grad


class RemoteRecv(Op):
    """Receives a tensor from ``src`` (its input is a placeholder that ties the op into the
    recorded graph); its backward sends the output gradient back when the sender records."""

    def __init__(self, src, shape, dtype, xp, send_grad):
        self.src, self.shape, self.dtype, self.xp, self.send_grad = src, shape, dtype, xp, send_grad

    def forward(self, placeholder):
        out = self.xp.empty(self.shape, self.dtype)
        _recv(_to_torch(out), self.src)
        _after_gpu(out)
        return out

    def backward(self, g):
        if self.send_grad:
            _send(_to_torch(xp_of(g).ascontiguousarray(g)), self.src)
        return None


# --------------------------------------------------------------------------------------------------
# public functions (upstream's signatures)

def _prepare(inp, group, what, sent=True):
    """The Group of a collective on ``inp``; ``sent``: every member's ``inp`` goes over the wire
    (broadcast's and scatter's non-roots only say the device: the root's is checked when sent)."""
    if not isinstance(inp, Tensor):
        raise TypeError(f"{what}: expected a megengine Tensor, got {type(inp).__name__}")
    if sent:
        _check_dtype(inp.dtype, what)
    _load()
    return _as_group(group, what)


def _place(out, device):
    return out if device is None or out is None else out._to(device)


def _axis_of(axis, ndim, what):
    axis = as_int(axis) if is_dim(axis) else axis  # (an axis from a dumpable trace: a guard)
    if not isinstance(axis, (int, np.integer)) or not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"{what}: axis {axis!r} is out of range for a {ndim}-d input")
    return int(axis) % max(ndim, 1)


def _tracked(t):
    return dispatch.is_recording() and t._node is not None and t._node[0].live


def _recorded(out):
    """Keep a recorded collective's output for backward even if no loss uses it here: its
    backward is a collective too, and the peers wait for this rank to join it."""
    if out._node is not None:
        _grad_manager._keep_for_backward(out)
    return out


def all_reduce_sum(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None) -> Tensor:
    """Elementwise sum of ``inp`` over the group's ranks, on every rank (same shape everywhere)."""
    group = _prepare(inp, group, "all_reduce_sum")
    return _place(_recorded(apply(AllReduce(group, mode="sum"), inp)), device)


def all_reduce_max(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None) -> Tensor:
    """Elementwise max of ``inp`` over the group's ranks, on every rank."""
    group = _prepare(inp, group, "all_reduce_max")
    return _place(_recorded(apply(AllReduce(group, mode="max"), inp)), device)


def all_reduce_min(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None) -> Tensor:
    """Elementwise min of ``inp`` over the group's ranks, on every rank."""
    group = _prepare(inp, group, "all_reduce_min")
    return _place(_recorded(apply(AllReduce(group, mode="min"), inp)), device)


def all_gather(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None,
               axis: int = 0) -> Tensor:
    """The ranks' ``inp`` concatenated along ``axis`` in group order, on every rank."""
    group = _prepare(inp, group, "all_gather")
    if inp.ndim == 0:
        raise ValueError("all_gather: the input must have at least one dim (reshape a scalar to (1,))")
    axis = _axis_of(axis, inp.ndim, "all_gather")
    return _place(_recorded(apply(AllGather(group, axis=axis), inp)), device)


def reduce_scatter_sum(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None,
                       axis: int = 0) -> Tensor:
    """Sum ``inp`` over the ranks, split the sum along ``axis`` into group-size parts; rank i
    of the group gets part i."""
    group = _prepare(inp, group, "reduce_scatter_sum")
    axis = _axis_of(axis, inp.ndim, "reduce_scatter_sum")
    return _place(_recorded(apply(ReduceScatterSum(group, axis=axis), inp)), device)


def broadcast(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None) -> Tensor:
    """The root's ``inp`` on every rank. Other ranks' ``inp`` only say the device (the shape and
    dtype come from the root; the gradient of the broadcast reaches the root's ``inp``)."""
    group = _prepare(inp, group, "broadcast", sent=False)
    shape, dtype, root_records = _bcast_meta(inp._data, group, int(_tracked(inp)), "broadcast")
    if group.rank != 0:
        inp = _placeholder(inp._device, root_records)
    return _place(_recorded(apply(Broadcast(group, shape=shape, dtype=dtype), inp)), device)


def reduce_sum(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None):
    """Elementwise sum over the ranks, on the root; None on the other ranks."""
    group = _prepare(inp, group, "reduce_sum")
    out = _recorded(apply(ReduceSum(group), inp))
    if group.rank == 0:
        return _place(out, device)
    _recorded(out)
    return None


def gather(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None,
           axis: int = 0):
    """The ranks' ``inp`` concatenated along ``axis`` in group order, on the root; None elsewhere."""
    group = _prepare(inp, group, "gather")
    if inp.ndim == 0:
        raise ValueError("gather: the input must have at least one dim (reshape a scalar to (1,))")
    axis = _axis_of(axis, inp.ndim, "gather")
    out = _recorded(apply(Gather(group, axis=axis), inp))
    if group.rank == 0:
        return _place(out, device)
    _recorded(out)
    return None


def scatter(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None,
            axis: int = 0) -> Tensor:
    """Split the root's ``inp`` along ``axis`` into group-size parts; rank i gets part i.
    Other ranks' ``inp`` only say the device (shape and dtype come from the root)."""
    group = _prepare(inp, group, "scatter", sent=False)
    shape, dtype, root_records = _bcast_meta(inp._data, group, int(_tracked(inp)), "scatter")
    axis = _axis_of(axis, len(shape), "scatter")
    if not shape or shape[axis] % group.size:
        if group.rank == 0:
            _chunks(inp._data, group.size, axis, "scatter")  # raises the clear error
        raise ValueError(f"scatter: the root's input (shape {shape}) does not split along axis "
                         f"{axis} into {group.size} parts")
    part = shape[:axis] + (shape[axis] // group.size,) + shape[axis + 1:]
    if group.rank != 0:
        inp = _placeholder(inp._device, root_records)
    return _place(_recorded(apply(Scatter(group, axis=axis, part=part, dtype=dtype), inp)), device)


def all_to_all(inp: Tensor, group: Optional[Group] = WORLD, device: Optional[str] = None,
               split_axis: int = 0, concat_axis: int = 0) -> Tensor:
    """Split ``inp`` along ``split_axis`` into group-size parts and send part j to rank j; return
    the parts received, concatenated along ``concat_axis`` in group order."""
    group = _prepare(inp, group, "all_to_all")
    split_axis = _axis_of(split_axis, inp.ndim, "all_to_all")
    concat_axis = _axis_of(concat_axis, inp.ndim, "all_to_all")
    return _place(_recorded(apply(AllToAll(group, split_axis=split_axis, concat_axis=concat_axis), inp)), device)


def collective_comm(inp: Tensor, mode, group: Optional[Group], device: Optional[str]):
    """Upstream's common entry of the collectives above: the one ``mode`` names (a
    ``CollectiveComm.Mode`` member of ``megengine.core.ops.builtin``, or its name in any case,
    such as ``"all_reduce_sum"``) on ``inp`` over ``group``, its result placed on ``device``
    (None: where the collective leaves it)."""
    from ..core._imperative_rt.opdef import _coerce
    from ..core._imperative_rt.ops import CollectiveComm

    mode = _coerce(CollectiveComm.Mode, mode, "collective_comm")
    if mode is CollectiveComm.Mode.ALL_REDUCE_PROD:
        raise NotImplementedError(
            "collective_comm: mode ALL_REDUCE_PROD is not provided (torch.distributed's gloo "
            "has no product all-reduce for every dtype); use all_reduce_sum on logs")
    return globals()[mode.name.lower()](inp, group, device)


def _check_peer(rank, what):
    world = _group._state(what).world_size
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world or rank == get_rank():
        raise ValueError(f"{what}: the peer must be another rank in [0, {world}), got {rank!r} "
                         f"(this is rank {get_rank()})")
    return int(rank)


def remote_send(inp: Tensor, dest_rank: int) -> None:
    """Send ``inp`` to rank ``dest_rank`` (which calls ``remote_recv``). When ``inp`` is being
    differentiated, the recording GradManager's ``backward`` receives its gradient back from
    ``dest_rank``; a rank whose loss is elsewhere calls ``gm.backward()`` with no arguments."""
    if not isinstance(inp, Tensor):
        raise TypeError(f"remote_send: expected a megengine Tensor, got {type(inp).__name__}")
    _load()
    dest = _check_peer(dest_rank, "remote_send")
    tracked = _tracked(inp) and inp.dtype.kind == "f"
    message, refusal = _encode(inp._data, int(tracked), "remote_send")
    _send(_meta_tensor(message), dest)
    if refusal is not None:
        raise refusal
    _recorded(apply(RemoteSend(dest), inp))


def _unexpected(shape, dtype, sent_shape, sent_dtype, src):
    """Why what rank ``src`` sent is not what ``remote_recv``'s caller said to expect (None:
    it is)."""
    if shape is not None and tuple(int(d) for d in shape) != tuple(sent_shape):
        return (f"remote_recv: expected shape {tuple(shape)}, but rank {src} sent a tensor of "
                f"shape {tuple(sent_shape)}")
    if dtype is not None and np.dtype(dtype) != np.dtype(sent_dtype):
        return (f"remote_recv: expected dtype {np.dtype(dtype)}, but rank {src} sent "
                f"{np.dtype(sent_dtype)}")
    return None


def remote_recv(src_rank: int, device: Optional[str] = None, inp=None, *older, shape=None,
                dtype=None) -> Tensor:
    """Receive the tensor rank ``src_rank`` sends with ``remote_send`` (shape and dtype come
    with it). ``inp`` (optional) says the device, as upstream's dummy input does.

    Upstream before 1.8 had the receiver name them: ``remote_recv(src_rank, shape, dtype,
    device=None, inp=None)``; that form is accepted too, and the given shape and dtype are
    checked against what the sender sent."""
    if isinstance(device, (tuple, list)):  # the older positional form: (src, shape, dtype, ...)
        shape, dtype = device, inp
        device = older[0] if len(older) > 0 else None
        inp = older[1] if len(older) > 1 else None
    elif older:
        raise TypeError("remote_recv(src_rank, device=None, inp=None): too many positional "
                        "arguments (the older form is remote_recv(src_rank, shape, dtype, ...))")
    _load()
    src = _check_peer(src_rank, "remote_recv")
    meta = _meta_tensor()
    _recv(meta, src)
    sent_shape, sent_dtype, sender_records = _decode(meta, src, "remote_recv")
    problem = _unexpected(shape, dtype, sent_shape, sent_dtype, src)
    shape, dtype = sent_shape, sent_dtype
    if device is None:
        device = inp._device if isinstance(inp, Tensor) else None
    from ..device import canonical_device, get_array_module, get_default_device

    device = canonical_device(device or get_default_device())
    # tie the receive into the recorded graph only when the sender waits for the gradient
    send_grad = bool(sender_records) and dispatch.is_recording()
    placeholder = _placeholder(device, send_grad)
    op = RemoteRecv(src, shape, dtype, get_array_module(device), send_grad)
    received = _recorded(apply(op, placeholder))
    if problem is not None:  # raised after the payload is read: the channel stays in step
        raise ValueError(problem)
    return received
