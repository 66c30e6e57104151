"""Data-parallel helpers: `make_allreduce_cb` (bucketed gradient all-reduce), `bcast_list_`, `synchronized`.

``make_allreduce_cb("mean")`` is a GradManager callback. Each gradient it is given is copied into
a flat bucket of its dtype (upstream's param pack, torch DDP's buckets); a bucket is all-reduced
in place, through a zero-copy view, as soon as it holds ``bucket_size`` bytes, and the rest when
the backward pass has handed over its last gradient. For ``"mean"`` each gradient is scaled by
1/size while it is packed, so the all-reduce sum is the mean. A gradient that fills a bucket on
its own is not packed: it is all-reduced where it is. Every parameter's ``.grad`` is then a view
into its bucket: one collective per bucket instead of one per parameter, and no further copy.
"""
import functools
import weakref
from collections import defaultdict
from typing import Callable


from ..autodiff.grad_manager import GradManager, get_backwarding_grad_manager
from ..core.dispatch import xp_of
from ..core.tensor import Tensor
from .group import WORLD, Group, group_barrier, is_distributed

__all__ = ["bcast_list_", "synchronized", "make_allreduce_cb", "AllreduceCallback",
           "DEFAULT_BUCKET_SIZE"]

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


def bcast_list_(inps: list, group: Group = WORLD):
    """Overwrite, in place, each tensor of ``inps`` with the root's value (e.g. make every rank
    start from rank 0's parameters). Shapes and dtypes must already agree."""
    from ..functional import distributed as fd

    tensors = list(inps)
    group = fd._prepare(tensors[0], group, "bcast_list_") if tensors else None
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"bcast_list_: expected Tensors, got {type(t).__name__}")
        data = t._data if t._data.flags.c_contiguous else xp_of(t._data).ascontiguousarray(t._data)
        # the tensor's own storage is the receive buffer: Parameters shared with torch modules
        # (PyTorchModule) stay shared
        fd._dist.broadcast(fd._to_torch(data), src=group.root, group=group._pg)
        fd._after_gpu(data)
        if data is not t._data:
            t._data[...] = data


class AllreduceCallback:
    """GradManager callback that sums (``"sum"``) or averages (``"mean"``) each gradient over
    ``group``, packing gradients into buckets of ``bucket_size`` bytes (per dtype).

    >>> gm = GradManager().attach(model.parameters(), callbacks=[dist.make_allreduce_cb("mean")])

    Every rank must compute gradients for the same parameters in the same order (the same
    model and code), as with upstream and torch DDP.
    """

    def __init__(self, reduce_method: str, group: Group = WORLD, backend: str = None,
                 bucket_size: int = DEFAULT_BUCKET_SIZE):
        if not isinstance(reduce_method, str) or reduce_method.lower() not in ("sum", "mean"):
            raise ValueError(f"make_allreduce_cb: reduce_method must be 'sum' or 'mean', got "
                             f"{reduce_method!r}")
        if not isinstance(bucket_size, int) or bucket_size < 0:
            raise ValueError(f"make_allreduce_cb: bucket_size must be a non-negative int (bytes; "
                             f"0 = one collective per gradient), got {bucket_size!r}")
        if backend not in (None, "auto") and is_distributed():
            from .group import get_backend

            if backend != get_backend():
                raise ValueError(f"make_allreduce_cb: backend {backend!r} differs from the process "
                                 f"group's {get_backend()!r}")
        self.reduce_method = reduce_method.lower()
        self.group = group
        self.bucket_size = bucket_size
        self._hooked = weakref.WeakSet()  # GradManagers whose after-backward hook calls _flush
        self._reset()

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
