"""Data-parallel helpers: `make_allreduce_cb` (bucketed gradient all-reduce), `bcast_list_`, `synchronized`,
parameter packing (`param_pack_split`/`param_pack_concat`, `get_offsets`, `pack_allreduce_split`)
and `get_device_count_by_fork`.

``make_allreduce_cb("mean")`` is a GradManager callback. Each gradient it is given is copied into
a flat bucket of its dtype (upstream's param pack, torch DDP's buckets); a bucket is all-reduced
in place, through a zero-copy view, as soon as it holds ``bucket_size`` bytes, and the rest when
the backward pass has handed over its last gradient. For ``"mean"`` each gradient is scaled by
1/size while it is packed, so the all-reduce sum is the mean. A gradient that fills a bucket on
its own is not packed: it is all-reduced where it is. Every parameter's ``.grad`` is then a view
into its bucket: one collective per bucket instead of one per parameter, and no further copy.
"""
import functools
import multiprocessing as mp
import warnings
import weakref
from collections import defaultdict
from typing import Callable

import numpy as np

from ..autodiff.grad_manager import GradManager, get_backwarding_grad_manager
from ..core import dispatch
from ..core.dispatch import xp_of
from ..core.ops import ArgumentError, ArgumentTypeError
from ..core.tensor import Tensor, _note_write
from .group import (WORLD, Group, _check_ranks, _group_of, _is_int, _not_initialized,
                    group_barrier, is_distributed)

__all__ = ["bcast_list_", "synchronized", "make_allreduce_cb", "AllreduceCallback",
           "DEFAULT_BUCKET_SIZE", "get_device_count_by_fork", "param_pack_split",
           "param_pack_concat", "get_offsets", "pack_allreduce_split"]

DEFAULT_BUCKET_SIZE = 10 * 1024 * 1024  # bytes, as upstream's param-pack threshold


def synchronized(func: Callable):
    """Decorator: when distributed, every rank waits at a barrier after ``func`` returns (e.g.
    rank 0 downloads a file the others then read)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        result = func(*args, **kwargs)
        if is_distributed():
            group_barrier()
        return result

    return wrapper


def _count_devices_into(queue, device_type):
    from ..device import get_device_count
    queue.put(get_device_count(device_type))


def get_device_count_by_fork(device_type: str) -> int:
    """Number of devices of ``device_type`` ("gpu", "cpu", "xpu"), counted in a forked child
    process, as upstream: asking CUDA in this process would initialise it here, and a CUDA
    context does not survive the ``fork`` that `launcher` uses to start its workers. In a
    process that has used CUDA already, it counts here (a forked child could not).
    Deprecated since 1.5 for `megengine.device.get_device_count`: each call warns, in
    upstream's words."""
    from ..device import _cuda_touched, get_device_count

    warnings.warn("Call to deprecated function get_device_count. (use "
                  "megengine.device.get_device_count instead) -- Deprecated since version 1.5.",
                  category=DeprecationWarning, stacklevel=2)

    # Windows: no fork. And a process that has used CUDA already loses nothing by counting
    # itself, while its forked child could not call CUDA at all (the count would fail).
    if "fork" not in mp.get_all_start_methods() or _cuda_touched():
        return get_device_count(device_type)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_count_devices_into, args=(queue, device_type))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"get_device_count_by_fork({device_type!r}): the counting process "
                           f"exited with code {child.exitcode}")
    return queue.get()


def _pack_ranges(offsets, what):
    """``offsets`` ([begin0, end0, begin1, end1, ...]: a list, a tuple, an integer array or
    Tensor) as [(begin, end)] pairs, each checked. The packing functions' errors are
    ArgumentError / ArgumentTypeError: also RuntimeErrors, as upstream's C++ op raises."""
    if isinstance(offsets, Tensor):
        offsets = offsets.numpy()
    if isinstance(offsets, np.ndarray):
        if offsets.ndim != 1:
            raise ArgumentError(f"{what}: offsets must be a flat list [begin0, end0, begin1, end1, "
                                f"...], got an array of shape {offsets.shape}")
        offsets = list(offsets)
    if not isinstance(offsets, (list, tuple)):
        raise ArgumentTypeError(f"{what}: offsets must be a list [begin0, end0, begin1, end1, "
                                f"...] of ints, got {type(offsets).__name__}")
    for o in offsets:
        if not _is_int(o):
            raise ArgumentTypeError(f"{what}: offsets must be ints, got {o!r} "
                                    f"({type(o).__name__}) in {list(offsets)}")
    offsets = [int(o) for o in offsets]
    if len(offsets) % 2:
        raise ArgumentError(f"{what}: offsets must be [begin0, end0, begin1, end1, ...] pairs, "
                            f"got {len(offsets)} numbers")
    ranges = list(zip(offsets[0::2], offsets[1::2]))
    last = 0
    for begin, end in ranges:
        if not last <= begin <= end:
            raise ArgumentError(f"{what}: offsets must be increasing, non-overlapping "
                                f"[begin, end) pairs from 0, got {offsets}")
        last = end
    return ranges


def _shapes(shapes, what):
    """``shapes`` (a list of shapes, one per tensor) as a list of tuples of ints, each checked
    (upstream's op refuses anything else too, in C++ words)."""
    if isinstance(shapes, Tensor) or not isinstance(shapes, (list, tuple)):
        raise ArgumentTypeError(f"{what}: shapes must be a list of shapes, one per tensor, as "
                                f"[(2, 3), (4,)]; got {type(shapes).__name__}")
    out = []
    for i, shape in enumerate(shapes):
        if _is_int(shape):
            raise ArgumentTypeError(f"{what}: shapes[{i}] is the int {shape}; shapes is a list of "
                                    f"shapes, one tuple per tensor: write ({shape},) for a 1-D "
                                    f"tensor of {shape} elements")
        if not isinstance(shape, (list, tuple)):
            raise ArgumentTypeError(f"{what}: shapes[{i}] must be a shape (a tuple or list of "
                                    f"ints), got {type(shape).__name__} {shape!r}")
        for d in shape:
            if not _is_int(d):
                raise ArgumentTypeError(f"{what}: shapes[{i}] = {tuple(shape)} must hold ints, "
                                        f"got {d!r} ({type(d).__name__})")
            if d < 0:
                raise ArgumentError(f"{what}: shapes[{i}] = {tuple(shape)} has a negative size")
        out.append(tuple(int(d) for d in shape))
    return out


def _numel(shape):
    return int(np.prod(shape, dtype=np.int64))


def param_pack_split(inp: Tensor, offsets: list, shapes: list) -> tuple:
    """Split the flat tensor ``inp`` into tensors of ``shapes``: the i-th is
    ``inp[offsets[2i]:offsets[2i+1]]`` reshaped to ``shapes[i]`` (``()`` makes a scalar),
    a tuple as upstream's. The inverse of `param_pack_concat`; gradients flow back into
    ``inp``."""
    ranges = _pack_ranges(offsets, "param_pack_split")
    shapes = _shapes(shapes, "param_pack_split")
    if len(ranges) != len(shapes):
        raise ArgumentError(f"param_pack_split: {len(ranges)} offset pairs for {len(shapes)} "
                            "shapes")
    if isinstance(inp, np.ndarray):  # (as the functional ops take one)
        inp = Tensor(inp)
    if not isinstance(inp, Tensor):
        raise ArgumentTypeError("param_pack_split: inp must be a 1-D Tensor, got "
                                f"{type(inp).__name__}")
    if inp.ndim != 1:
        raise ArgumentError(f"param_pack_split: inp must be 1-D, got shape {inp.shape}")
    if ranges and ranges[-1][1] > inp.shape[0]:
        raise ArgumentError(f"param_pack_split: offsets end at {ranges[-1][1]}, past the "
                            f"{inp.shape[0]} elements of inp")
    outputs = []
    for i, ((begin, end), shape) in enumerate(zip(ranges, shapes)):
        if end - begin != _numel(shape):
            raise ArgumentError(f"param_pack_split: range [{begin}, {end}) holds {end - begin} "
                                f"elements, shapes[{i}] = {shape} needs {_numel(shape)}")
        outputs.append(inp[begin:end].reshape(shape))
    return tuple(outputs)


def _tensor_list(tensors, what, name):
    """``tensors`` (a list, tuple or other iterable of Tensors) as a list; a single Tensor is
    refused (iterating over it would take its rows)."""
    if isinstance(tensors, (Tensor, np.ndarray)):
        raise ArgumentTypeError(f"{what}: {name} must be a list of Tensors, got a single "
                                f"{type(tensors).__name__}; pass [x] for one tensor")
    try:
        tensors = list(tensors)
    except TypeError:
        raise ArgumentTypeError(f"{what}: {name} must be a list of Tensors, got "
                                f"{type(tensors).__name__}") from None
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise ArgumentTypeError(f"{what}: {name}[{i}] must be a Tensor, got {type(t).__name__}")
    return tensors


def param_pack_concat(inps: list, offsets: Tensor, offsets_val: list) -> Tensor:
    """Pack ``inps`` into one flat tensor of ``offsets_val[-1]`` elements: the i-th input,
    flattened, fills ``[offsets_val[2i], offsets_val[2i+1])``; gaps between ranges (alignment)
    are zeros. ``offsets`` is the same list as a Tensor (upstream's op takes both); it must
    agree with ``offsets_val``. Gradients flow back into each input."""
    from .. import functional as F

    inps = _tensor_list(inps, "param_pack_concat", "inps")
    ranges = _pack_ranges(offsets_val, "param_pack_concat")
    if len(ranges) != len(inps):
        raise ArgumentError(f"param_pack_concat: {len(ranges)} offset pairs for {len(inps)} inputs")
    if offsets is not None and list(np.asarray(
            offsets.numpy() if isinstance(offsets, Tensor) else offsets).ravel()) != \
            [int(o) for o in offsets_val]:
        raise ArgumentError("param_pack_concat: offsets and offsets_val disagree")
    if not inps:
        raise ArgumentError("param_pack_concat: no inputs to pack")
    dtype, device = inps[0].dtype, inps[0].device
    pieces, last = [], 0
    for t, (begin, end) in zip(inps, ranges):
        if t.dtype != dtype:
            raise ArgumentTypeError(f"param_pack_concat: all inputs must share one dtype, got "
                                    f"{dtype} and {t.dtype}")
        if t.size != end - begin:
            raise ArgumentError(f"param_pack_concat: input of shape {t.shape} does not fill "
                                f"[{begin}, {end})")
        if begin > last:
            pieces.append(F.zeros((begin - last,), dtype=dtype, device=device))
        pieces.append(t.reshape(-1))
        last = end
    return F.concat(pieces) if len(pieces) > 1 else pieces[0]


def bcast_list_(inps: list, group: Group = WORLD):
    """Overwrite, in place, each tensor of ``inps`` with the root's value (e.g. make every rank
    start from rank 0's parameters). Shapes and dtypes must already agree."""
    from ..functional import distributed as fd

    tensors = _tensor_list(inps, "bcast_list_", "inps")
    group = fd._prepare(tensors[0], group, "bcast_list_") if tensors else None
    for t in tensors:
        if not t._pinned_storage:
            if t._aliased():  # a view, its source, an alias keep values
                t._unshare()
        elif dispatch._pinned_roots:  # torch's memory: its megengine views take copies
            dispatch.keep_values_of_views(t._data)
        data = t._data if t._data.flags.c_contiguous else xp_of(t._data).ascontiguousarray(t._data)
        # the tensor's own storage is the receive buffer: Parameters shared with torch modules
        # (PyTorchModule) stay shared
        fd._dist.broadcast(fd._to_torch(data), src=group.root, group=group._pg)
        fd._after_gpu(data)
        _note_write()  # written through torch's view (megengine.jit's captures)
        if data is not t._data:
            t._data[...] = data


def get_offsets(shapes) -> list:
    """The offsets of `param_pack_concat` and `param_pack_split` for tensors of ``shapes``
    packed one after another without gaps: ``[begin0, end0, begin1, end1, ...]``."""
    offsets, end = [], 0
    for shape in shapes:
        begin, end = end, end + int(np.prod(shape, dtype=np.int64))
        offsets += [begin, end]
    return offsets


def _reduce_method(method, what):
    if not isinstance(method, str):  # (upstream: AttributeError, from method.lower())
        raise ArgumentTypeError(f"{what}: reduce_method must be 'sum' or 'mean', got "
                                f"{type(method).__name__} {method!r}")
    if method.lower() not in ("sum", "mean"):  # (upstream asserts)
        raise ArgumentError(f"{what}: reduce_method must be 'sum' or 'mean', got {method!r}")
    return method.lower()


def pack_allreduce_split(pack_list, shapes, group, reduce_method) -> list:
    """Sum (``"sum"``) or average (``"mean"``) each tensor of ``pack_list`` over ``group`` with
    one all-reduce of them all packed together; the reduced tensors, of ``shapes``. It is
    differentiable, as the collective and the packing are."""
    from ..functional import distributed as fd

    what = "pack_allreduce_split"
    method = _reduce_method(reduce_method, what)
    pack_list = _tensor_list(pack_list, what, "pack_list")
    shapes = _shapes(shapes, what)
    if len(shapes) != len(pack_list):
        raise ArgumentError(f"{what}: {len(shapes)} shapes for {len(pack_list)} tensors; give one "
                            "shape per tensor of pack_list")
    for i, (t, shape) in enumerate(zip(pack_list, shapes)):
        if t.size != _numel(shape):
            raise ArgumentError(f"{what}: pack_list[{i}] has shape {t.shape} ({t.size} elements), "
                                f"shapes[{i}] = {shape} has {_numel(shape)}")
        if t.dtype != pack_list[0].dtype:
            raise ArgumentTypeError(f"{what}: the tensors are packed into one buffer, so they must "
                                    f"share one dtype; pack_list[0] is {pack_list[0].dtype}, "
                                    f"pack_list[{i}] {t.dtype}")
    group = fd._as_group(group, what)
    offsets = get_offsets(shapes)
    packed = fd.all_reduce_sum(param_pack_concat(pack_list, None, offsets), group)
    if method == "mean":
        packed = packed / group.size
    return param_pack_split(packed, offsets, shapes)


def _bucket_size(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"make_allreduce_cb: bucket_size must be a non-negative int (bytes; "
                         f"0 = one collective per gradient), got {value!r}")
    return value


def _check_group(group, what):
    """Raise unless ``group`` is a Group or a list of valid ranks that names a group the
    collectives can use (all ranks, or a dist.new_group made of them): a callback checks it
    when made, not at the first backward."""
    if isinstance(group, Group):
        return
    if not isinstance(group, (list, tuple)):
        raise TypeError(f"{what}: group must be a Group (dist.WORLD, dist.new_group(ranks)) or a "
                        f"list of ranks, got {type(group).__name__} {group!r}")
    _check_ranks(group, f"{what}: group={list(group)}")
    _group_of(group, what)  # (some of the ranks, with no group made of them: its error)


class AllreduceCallback:
    """GradManager callback that sums (``"sum"``) or averages (``"mean"``) each gradient over
    ``group``, packing gradients into buckets of ``bucket_size`` bytes (per dtype).

    >>> gm = GradManager().attach(model.parameters(), callbacks=[dist.make_allreduce_cb("mean")])

    Every rank must compute gradients for the same parameters in the same order (the same
    model and code), as with upstream and torch DDP. Build it after ``dist.init_process_group``
    (or inside a ``dist.launcher`` function): without a process group it raises a
    ``RuntimeError`` unless ``backend`` is given, as upstream asserts.
    """

    def __init__(self, reduce_method: str, group: Group = WORLD, backend: str = None,
                 bucket_size: int = DEFAULT_BUCKET_SIZE):
        reduce_method = _reduce_method(reduce_method, "make_allreduce_cb")
        _bucket_size(bucket_size)
        if backend is None and not is_distributed():
            # upstream asserts here too: the backend is read from the process group; a callback
            # built before it would fail only at the first backward
            raise _not_initialized("make_allreduce_cb")
        if backend not in (None, "auto") and is_distributed():
            from .group import get_backend

            if backend != get_backend():
                raise ValueError(f"make_allreduce_cb: backend {backend!r} differs from the process "
                                 f"group's {get_backend()!r}")
        if is_distributed():  # (the ranks are checked against the world, which exists then)
            _check_group(group, "make_allreduce_cb")
        self.reduce_method = reduce_method
        self.group = group
        self.bucket_size = bucket_size
        self._hooked = weakref.WeakSet()  # GradManagers whose after-backward hook calls _flush
        self._reset()

    @property
    def _param_pack_thd(self):
        """Upstream's name of ``bucket_size``, which its own tests set on a callback."""
        return self.bucket_size

    @_param_pack_thd.setter
    def _param_pack_thd(self, value):
        self.bucket_size = _bucket_size(value)

    def _reset(self):
        self._pending = defaultdict(list)  # dtype -> [(param, grad array)] not yet reduced
        self._pending_bytes = defaultdict(int)

    def __call__(self, param, grad):
        gm = get_backwarding_grad_manager()
        if not isinstance(gm, GradManager):
            raise RuntimeError("make_allreduce_cb: the callback runs inside GradManager.backward "
                               "(attach(params, callbacks=[cb]))")
        if gm not in self._hooked:
            gm._register_after_backward_callback(self._flush)
            self._hooked.add(gm)
        from ..functional import distributed as fd

        group = fd._prepare(grad, self.group, "make_allreduce_cb")
        if group.size == 1:
            return grad
        # The Tensor handed back gets its data once its bucket is reduced (before GradManager
        # accumulates it into .grad: the after-backward hook runs first).
        out = Tensor._wrap(grad._data, grad._device)
        key = grad.dtype.str
        self._pending[key].append((out, grad._data))
        self._pending_bytes[key] += grad._data.nbytes
        if self._pending_bytes[key] >= self.bucket_size:
            self._reduce(key, group)
        return out

    def _reduce(self, key, group):
        """Pack the pending gradients of one dtype into a flat buffer, all-reduce it in place,
        and point each handed-back Tensor at its slice."""
        from ..functional import distributed as fd

        entries = self._pending.pop(key, [])
        self._pending_bytes.pop(key, None)
        if not entries:
            return
        xp = xp_of(entries[0][1])
        scale = 1.0 / group.size if self.reduce_method == "mean" else None
        if len(entries) == 1 and entries[0][1].flags.c_contiguous and entries[0][1].flags.writeable:
            # A gradient that fills a bucket alone is reduced where it is: GradManager hands
            # callbacks gradients whose memory no other gradient or tensor shares.
            (out, g), = entries
            if scale is not None:
                xp.multiply(g, g.dtype.type(scale), out=g)
            fd._dist.all_reduce(fd._to_torch(g), op=fd._dist.ReduceOp.SUM, group=group._pg)
            fd._after_gpu(g)
            return
        total = sum(g.size for _, g in entries)
        bucket = xp.empty(total, entries[0][1].dtype)
        # the mean's scaling rides on the packing copy (one pass over the gradients, not two);
        # for a power-of-two group it is exact, so the result is bitwise the sum's scaled
        offset = 0
        for _, g in entries:
            part = bucket[offset: offset + g.size]
            if scale is None:
                part[...] = g.reshape(-1)
            else:
                xp.multiply(g.reshape(-1), part.dtype.type(scale), out=part)
            offset += g.size
        fd._dist.all_reduce(fd._to_torch(bucket), op=fd._dist.ReduceOp.SUM, group=group._pg)
        fd._after_gpu(bucket)
        offset = 0
        for out, g in entries:
            out._data = bucket[offset: offset + g.size].reshape(g.shape)
            offset += g.size

    def _flush(self):
        from ..functional import distributed as fd

        if not self._pending:
            return
        group = fd._as_group(self.group, "make_allreduce_cb")
        for key in sorted(self._pending):  # the same order on every rank
            self._reduce(key, group)
        self._reset()


make_allreduce_cb = AllreduceCallback
