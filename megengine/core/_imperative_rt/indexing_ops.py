"""Upstream's indexing descriptors (``Subtensor``, ``IndexingMultiAxisVec``, ``MeshIndexing``,
``BatchedMeshIndexing`` and their ``Set``/``Incr`` variants), lowered onto one engine op.

Every descriptor takes ``items``: one ``(axis, has_begin, has_end, has_step, has_index)`` per
indexed axis. The inputs are ``x``, then (set and incr variants) the ``value`` written into or
added to ``x[index]``, then the index inputs: for each item in order its begin, end, step (int
scalars) or index (a scalar for Subtensor, an int tensor for the others).

The index inputs are inputs of the engine op `_IndexOp`, read inside its forward on raw
arrays, never read to the host by the program: a traced program keeps them as data, so a
dumped file takes the index from its inputs (upstream's graph does the same).

Semantics (upstream's): Subtensor and IndexingMultiAxisVec index as numpy does
(``x[b:e:s, idx]``); MeshIndexing pairs no indices, every combination of the axes' index
vectors is taken (numpy's ``ix_``); BatchedMeshIndexing meshes per entry of axis 0, each index
input holding one vector per batch entry (``(batch, k)``; a vector ``(k,)`` serves every entry). Set writes ``value`` (broadcast to
the indexed shape) into a copy of ``x``; Incr adds it, indices that repeat adding repeatedly
(upstream's scatter-add kernels). Gradients reach ``x`` and ``value``, not the indices.
"""
import numpy as np

from .. import dispatch
from ..dispatch import Op, xp_of
from .opdef import _REQUIRED, OpDef  # noqa: F401

__all__ = ["Subtensor", "SetSubtensor", "IncrSubtensor",
           "IndexingMultiAxisVec", "IndexingSetMultiAxisVec", "IndexingIncrMultiAxisVec",
           "MeshIndexing", "SetMeshIndexing", "IncrMeshIndexing",
           "BatchedMeshIndexing", "BatchedSetMeshIndexing", "BatchedIncrMeshIndexing"]

_KINDS = ("subtensor", "vec", "mesh", "batched_mesh")
_MODES = ("get", "set", "incr")


def _normalize_items(items, who):
    out = []
    for item in items:
        if len(item) != 5:
            raise ValueError(f"{who}: each item is (axis, has_begin, has_end, has_step, "
                             f"has_index), got {item!r}")
        axis, *flags = item
        out.append((int(axis),) + tuple(bool(f) for f in flags))
    return tuple(out)


def _host_int(a, what):
    a = a.reshape(-1) if a.ndim else a
    if a.size != 1:
        raise ValueError(f"{what}: expected a scalar index input, got shape {a.shape}")
    if a.dtype.kind not in "iub":
        raise TypeError(f"{what}: index inputs must be integers, got {a.dtype}")
    return int(a.reshape(()).item())


# the dtypes CuPy's scatter-add (CUDA's atomicAdd) takes when an index is an array
_CUPY_SCATTER_ADD = frozenset(("int32", "uint32", "uint64", "float16", "float32", "float64"))


def _add_at(xp, target, index, value):
    """``target[index] += value`` where repeated indices each add (numpy's ``add.at``)."""
    if xp is np:
        np.add.at(target, index, value)
        return
    import cupyx  # CuPy spells unbuffered addition cupyx.scatter_add

    name = target.dtype.name
    if name in _CUPY_SCATTER_ADD:
        cupyx.scatter_add(target, index, value)
    elif name == "int64":  # two's complement: an unsigned add gives the same bits
        cupyx.scatter_add(target.view(np.uint64), index, value.astype(np.uint64))
    else:  # int8/16, uint8/16 and bool: summed in int32, then wrapped (bool: any) as numpy's
        wide = target.astype(np.int32)
        cupyx.scatter_add(wide, index, value.astype(np.int32))
        target[...] = wide != 0 if name == "bool" else wide.astype(target.dtype)


def _sum_to(xp, g, shape):
    """Sum ``g`` down to ``shape``, the inverse of broadcasting ``shape`` to ``g.shape``."""
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class _IndexOp(Op):
    """``x[index]`` (get), a copy of ``x`` with ``x[index] = value`` (set) or ``+= value``
    (incr); the index comes from the inputs after ``x`` (and ``value``) as `items` says."""

    def __init__(self, items, kind, mode):
        self.items, self.kind, self.mode = items, kind, mode

    def __repr__(self):
        return f"_IndexOp({self.kind}, {self.mode})"

    # ---------------------------------------------------------------- index building
    def _index(self, x, values):
        xp = xp_of(x)
        who = f"{self.kind} indexing"
        values = list(values)
        need = sum(sum(item[1:]) for item in self.items)
        if len(values) != need:
            raise TypeError(f"{who}: its items take {need} index inputs, got {len(values)}")
        index = [slice(None)] * x.ndim
        for axis, has_begin, has_end, has_step, has_index in self.items:
            if not -x.ndim <= axis < x.ndim:
                raise ValueError(f"{who}: axis {axis} is out of range for a {x.ndim}-d input")
            axis %= x.ndim
            if has_index:
                idx = values.pop(0)
                if self.kind == "subtensor" or idx.ndim == 0:
                    index[axis] = _host_int(idx, who)
                else:
                    if idx.dtype.kind not in "iu":
                        raise TypeError(f"{who}: index tensors must be integers, got "
                                        f"{idx.dtype}")
                    index[axis] = idx.astype(np.int64, copy=False)
            else:
                bounds = [_host_int(values.pop(0), who) if present else None
                          for present in (has_begin, has_end, has_step)]
                index[axis] = slice(*bounds)
        if self.kind in ("subtensor", "vec"):
            return tuple(index)
        return self._mesh(xp, x.shape, index)

    def _mesh(self, xp, shape, index):
        """Index arrays that broadcast to every combination of the axes' indices."""
        batched = self.kind == "batched_mesh"
        if batched:
            if not (isinstance(index[0], slice) and index[0] == slice(None)):
                raise ValueError("batched mesh indexing: axis 0 is the batch; it cannot be "
                                 "indexed")
            index[0] = xp.arange(shape[0])
        # axes that stay in the result (an int index drops its axis, as in numpy)
        kept = [a for a, i in enumerate(index) if not isinstance(i, int)]
        m = len(kept)
        out = []
        for a, i in enumerate(index):
            if isinstance(i, int):
                out.append(i)
                continue
            if isinstance(i, slice):
                i = xp.arange(*i.indices(shape[a]))
            j = kept.index(a)
            if batched and a != 0 and i.ndim == 2:
                if i.shape[0] != shape[0]:
                    raise ValueError(f"batched mesh indexing: the index of axis {a} must "
                                     f"have one row per batch entry ({shape[0]}), got shape "
                                     f"{i.shape}")
                view = [1] * m
                view[0], view[j] = i.shape
                out.append(i.reshape(view))
                continue
            if i.ndim != 1:
                raise ValueError(f"{self.kind} indexing: the index of axis {a} must be a "
                                 f"vector, got shape {i.shape}")
            view = [1] * m
            view[j] = i.shape[0]
            out.append(i.reshape(view))
        return tuple(out)

    # ---------------------------------------------------------------- forward / backward
    def forward(self, x, *rest):
        xp = xp_of(x)
        if self.mode == "get":
            index = self._index(x, rest)
            self._saved = (x.shape, index)
            return xp.ascontiguousarray(x[index])
        value, values = rest[0], rest[1:]
        index = self._index(x, values)
        out = x.copy()
        target_shape = out[index].shape
        try:
            v = xp.broadcast_to(value.astype(x.dtype, copy=False), target_shape)
        except ValueError:
            raise ValueError(f"{self.kind} indexing ({self.mode}): value of shape "
                             f"{value.shape} does not broadcast to the indexed shape "
                             f"{target_shape}") from None
        if self.mode == "set":
            out[index] = v
        else:
            _add_at(xp, out, index, v)
        self._saved = (value.shape, index)
        return out

    def backward(self, g):
        xp = xp_of(g)
        n_index = sum(sum(item[1:]) for item in self.items)
        if self.mode == "get":
            shape, index = self._saved
            gx = xp.zeros(shape, g.dtype)
            _add_at(xp, gx, index, g)
            return (gx,) + (None,) * n_index
        value_shape, index = self._saved
        gx = None
        if self.needs_input_grad[0]:
            gx = g
            if self.mode == "set":  # the overwritten places do not reach the output
                gx = g.copy()
                gx[index] = 0
        gv = None
        if self.needs_input_grad[1]:
            gv = _sum_to(xp, g[index], value_shape)
        return (gx, gv) + (None,) * n_index

    def grad_graph(self, inputs, outputs, grads):
        """The backward through these same ops, so a higher-order gradient is recorded."""
        from ... import functional as F

        (g,) = grads
        x = inputs[0]
        n_index = sum(sum(item[1:]) for item in self.items)
        idx = inputs[len(inputs) - n_index:]
        get = _IndexOp(self.items, self.kind, "get")
        if self.mode == "get":
            gx = dispatch.apply(_IndexOp(self.items, self.kind, "incr"), F.zeros_like(x), g,
                                *idx)
            return (gx,) + (None,) * n_index
        value = inputs[1]
        gx = g
        if self.mode == "set":
            gx = dispatch.apply(_IndexOp(self.items, self.kind, "set"), g,
                                F.zeros((1,), dtype=g.dtype, device=g.device), *idx)
        gv = dispatch.apply(get, g, *idx)
        lead = gv.ndim - value.ndim
        if lead:
            gv = gv.sum(axis=tuple(range(lead)))
        axes = [i for i, s in enumerate(value.shape) if s == 1 and gv.shape[i] != 1]
        if axes:
            gv = gv.sum(axis=axes, keepdims=True)
        return (gx, gv.reshape(value.shape)) + (None,) * n_index


def _descriptor(name, kind, mode, doc):
    def _lower(self, x, *rest):
        if mode != "get" and not rest:
            raise TypeError(f"apply({name}): give x, the value, then the index inputs")
        items = _normalize_items(self.items, name)
        return (dispatch.apply(_IndexOp(items, kind, mode), x, *rest),)

    return type(name, (OpDef,), {"__doc__": doc, "_params": (("items", ()),),
                                 "_lower": _lower, "__module__": __name__})


_DOCS = {
    "subtensor": "``x[b:e:s, i, ...]`` with slice bounds and integer indices as inputs",
    "vec": "``x[..., idx, ...]`` with int tensor indices (numpy's advanced indexing)",
    "mesh": "``x`` indexed by every combination of the axes' index vectors (numpy's ``ix_``)",
    "batched_mesh": "mesh indexing per entry of axis 0, each index input ``(batch, k)``",
}
_NAMES = {
    ("subtensor", "get"): "Subtensor", ("subtensor", "set"): "SetSubtensor",
    ("subtensor", "incr"): "IncrSubtensor",
    ("vec", "get"): "IndexingMultiAxisVec", ("vec", "set"): "IndexingSetMultiAxisVec",
    ("vec", "incr"): "IndexingIncrMultiAxisVec",
    ("mesh", "get"): "MeshIndexing", ("mesh", "set"): "SetMeshIndexing",
    ("mesh", "incr"): "IncrMeshIndexing",
    ("batched_mesh", "get"): "BatchedMeshIndexing",
    ("batched_mesh", "set"): "BatchedSetMeshIndexing",
    ("batched_mesh", "incr"): "BatchedIncrMeshIndexing",
}
_VERB = {"get": "", "set": " (set: a copy of x with that part replaced by value)",
         "incr": " (incr: a copy of x with value added to that part)"}

for (_kind, _mode), _name in _NAMES.items():
    globals()[_name] = _descriptor(_name, _kind, _mode, f"Upstream's {_name}: "
                                   f"{_DOCS[_kind]}{_VERB[_mode]}.")
