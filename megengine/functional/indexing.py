"""Indexing functions (F.gather, F.scatter, F.indexing_one_hot, F.one_hot, F.where, F.non_zero,
F.cond_take) and their ops: upstream's `megengine.functional.tensor` names, re-exported there."""
import numpy as np

from ..core import dtype as _qd
from ..core import ops as _ops
from ..core.dispatch import KERNEL_FLOATS, Op, apply, on_device
from ..core.ops import (ArgumentError, ArgumentTypeError, ShapeError, raise_unbroadcastable,
                        unbroadcast, xp_of)
from ..core.tensor import Tensor, _operand, promote_types
from . import _aten
from ._args import _int, _out_of_range
from .elemwise import _tensor
from .tensor import _axis  # (this file's names are re-exported at the end of that one)


# Index arrays enter ops as inputs (never as op parameters), so that megengine.jit.trace replays
# them with each call's values.

def _grid_index(xp, index, axis, shape=None):
    """Index tuple that picks ``x[..., index[...], ...]`` along ``axis`` for every position of
    ``index``: open (broadcasting) aranges on the other dims, so nothing big is materialised.

    ``index`` has x's ndim; or, given x's ``shape``, x's ndim - 1 (no dim for ``axis``).
    """
    if shape is None and axis == 1 and index.ndim == 2:  # (rows, k) along the last axis, the
        return xp.arange(index.shape[0]).reshape(-1, 1), index  # usual call, without the loop
    nd = index.ndim
    dims = range(nd) if shape is None else range(nd + 1)
    out = []
    for d in dims:
        if d == axis:
            out.append(index)
        else:
            p = d if shape is None or d < axis else d - 1  # where dim d sits in index
            n = index.shape[p] if shape is None else shape[d]
            out.append(xp.arange(n).reshape((-1,) + (1,) * (nd - p - 1)))
    return tuple(out)


def put_back(xp, shape, dtype, index, g, unique):
    """The gradient of ``x[index]``: ``g`` put into zeros of x's shape at ``index``.

    ``unique``: no position is picked twice, so plain assignment does (much faster than add.at).
    """
    gx = xp.zeros(shape, dtype)
    if unique:
        gx[index] = g
    else:
        _ops.add_at(gx, index, g)
    return gx


class TakeAlongAxis(Op):
    """``x`` picked at ``index`` along ``axis`` (see `_grid_index`; ``dropped``: index has no dim
    for ``axis``, as in indexing_one_hot, so every position is picked at most once).

    ``aten``: the forward runs ATen's gather on zero-copy views (`_takes_aten`), which checks
    the bounds itself; the caller then leaves out `_check_bounds` (two reductions of the index,
    ~2.5 us a call), which runs here only to word torch's error as ours.
    """
    holomorphic = True  # complex gradients (core/dispatch.py): a linear map, real coefficients

    def __init__(self, axis, dropped, aten=False):
        self.axis, self.dropped, self.aten = axis, dropped, aten
        self.index = None

    def forward(self, x, index):
        self.in_shape = x.shape
        if self.aten:
            self.raw_index = index
            return _aten_gather(x, index, self.axis, self.dropped, self.what)
        self.index = _grid_index(xp_of(x), index, self.axis, x.shape if self.dropped else None)
        return x[self.index]

    @property
    def what(self):
        return "indexing_one_hot" if self.dropped else "gather"

    def _grid(self, xp):
        if self.index is None:  # the ATen forward made none: the backward's, made once
            self.index = _grid_index(xp, self.raw_index, self.axis,
                                     self.in_shape if self.dropped else None)
        return self.index

    def backward(self, g):
        xp = xp_of(g)
        return put_back(xp, self.in_shape, g.dtype, self._grid(xp), g, self.dropped), None

    def grad_graph(self, inputs, outputs, grads):  # higher-order gradients (core/dispatch.py)
        g = grads[0]
        index = self._grid(xp_of(g._data))
        return apply(_ops.IndexAdd(index, self.in_shape, g.dtype), g), None


# F.gather and F.indexing_one_hot of float32/float64 numpy arrays take ATen's gather (family
# "gather"): with one thread, (256, 1000) at one index per row 3.8 us for the views, the int64
# index and the kernel against 6.2 us for numpy's bounds check (2.8), open grid (1.3) and fancy
# indexing (2.1); the bounds check is what the ATen path saves, so it is taken at every size.


def _takes_aten(x, index):
    """Whether gathering from engine array ``x`` at ``index`` runs on ATen (see above)."""
    return (type(x) is np.ndarray and type(index) is np.ndarray
            and x.dtype in KERNEL_FLOATS and _aten.use_aten(x, "gather"))


def _aten_gather(x, index, axis, dropped, what):
    """``x`` gathered at ``index`` along ``axis`` by ATen (``dropped``: index lacks the axis)."""
    idx = index.astype(np.int64, copy=False)
    if dropped:  # (reshape: np.expand_dims costs ~1.5 us of Python)
        idx = idx.reshape(idx.shape[:axis] + (1,) + idx.shape[axis:])
    try:
        out = _aten.op("gather")(_aten.view(x), axis, _aten.view(idx))
    except (RuntimeError, IndexError):
        _check_bounds(index, x.shape[axis], what)  # out of bounds: raises our IndexError
        raise
    out = _aten.array(out)
    return out.reshape(index.shape) if dropped else out


def _int_index(index, what):
    index = _tensor(index)
    if index.dtype.kind not in "iu":
        # (also upstream's RuntimeError, its C++ op's dtype check)
        raise ArgumentTypeError(f"{what}: index must be an integer tensor, got dtype "
                                f"{index.dtype}")
    return index


def _check_bounds(index, size, what):
    """Refuse index values outside [0, size): one reduction and, on a GPU, one host read
    (`_out_of_range`; the minimum and the maximum, two of each, only for the error's words)."""
    with on_device(None if type(index) is np.ndarray else f"gpu{index.device.id}"):
        if _out_of_range(index, size):  # (CuPy reduces on the current GPU)
            lo, hi = int(index.min()), int(index.max())
            raise _ops.IndexingError(  # (upstream: its kernel's assertion, a RuntimeError)
                f"{what}: index values must be in [0, {size}), got min {lo} and max {hi}"
            )


def gather(inp, axis, index):
    """``out[i][j][k] = inp[index[i][j][k]][j][k]`` for axis 0 (and likewise for other axes).

    ``index`` has inp's ndim; its size on every other axis is at most inp's.
    """
    inp, index = _tensor(inp), _int_index(index, "gather")
    shape, index_shape = inp.shape, index.shape  # (a property call each: read once)
    if len(index_shape) != len(shape):
        raise ValueError(
            f"gather: index must have the same ndim as inp ({len(shape)}), got shape "
            f"{index_shape}")
    axis = _axis(axis, len(shape), "gather")
    for d in range(len(shape)):
        if d != axis and index_shape[d] > shape[d]:
            raise ValueError(
                f"gather: index shape {index_shape} exceeds inp shape {shape} off axis {axis}")
    data, index_data = inp._data, index._data
    aten = _takes_aten(data, index_data)
    if not aten:  # (ATen's gather checks the bounds itself)
        _check_bounds(index_data, shape[axis], "gather")
    return apply(TakeAlongAxis(axis, False, aten), inp, index)


class Scatter(Op):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x, index, src):
        self.index = _grid_index(xp_of(x), index, self.axis)
        out = x.copy()
        out[self.index] = src
        return out

    def backward(self, g):
        gx = gs = None
        if self.needs_input_grad[0]:
            gx = g.copy()
            gx[self.index] = 0
        if self.needs_input_grad[2]:
            gs = g[self.index]
        return gx, None, gs


def scatter(inp, axis, index, source):
    """Write ``source`` into ``inp`` at ``index`` along ``axis``:
    ``inp[index[i][j][k]][j][k] = source[i][j][k]`` for axis 0. Like upstream, ``inp`` itself is
    updated and returned. Where several sources hit one place, which one wins is unspecified."""
    inp, index, source = _tensor(inp), _int_index(index, "scatter"), _tensor(source)
    if not inp.ndim == index.ndim == source.ndim:
        raise ValueError(
            f"scatter: inp, index and source must have the same ndim, got shapes {inp.shape}, "
            f"{index.shape} and {source.shape}"
        )
    axis = _axis(axis, inp.ndim, "scatter")
    if index.shape != source.shape:
        raise ValueError(
            f"scatter: index shape {index.shape} must equal source shape {source.shape}"
        )
    if any(i > n for d, (i, n) in enumerate(zip(index.shape, inp.shape)) if d != axis):
        raise ValueError(
            f"scatter: index shape {index.shape} exceeds inp shape {inp.shape} off axis {axis}"
        )
    _check_bounds(index._data, inp.shape[axis], "scatter")
    if source.dtype != inp.dtype or source.dtype.metadata != inp.dtype.metadata:
        source = source.astype(inp.dtype)  # (metadata: a quantized dtype's scale, which ==
    return inp._inplace(apply(Scatter(axis), inp, index, source))  # ignores: the values)


def indexing_one_hot(src, index, axis=1, keepdims=False):
    """Pick one element along ``axis`` per position: ``out[i, ...] = src[i, index[i, ...], ...]``.

    ``index`` has src's shape without ``axis``. A float or bool ``index`` is converted to int32
    first (truncating, as upstream's operator does with a warning): labels built as
    ``F.ones(shape) * mask`` are float32, and OMNet's loss indexes with them.
    """
    src, index = _tensor(src), _tensor(index)
    if index.dtype.kind in "fb":
        index = index.astype("int32")
    index = _int_index(index, "indexing_one_hot")
    axis = _axis(axis, src.ndim, "indexing_one_hot")
    if index.shape != src.shape[:axis] + src.shape[axis + 1:]:
        raise ShapeError(
            f"indexing_one_hot: index shape {index.shape} must be src shape {src.shape} without "
            f"axis {axis}"
        )
    aten = _takes_aten(src._data, index._data)
    if not aten:  # (ATen's gather checks the bounds itself)
        _check_bounds(index._data, src.shape[axis], "indexing_one_hot")
    out = apply(TakeAlongAxis(axis, True, aten), src, index)
    return out.reshape(index.shape[:axis] + (1,) + index.shape[axis:]) if keepdims else out


class Compute(Op):
    """A computation without gradient (indices, masks, counts) that still goes through
    ``apply``, so that tracing sees it: ``fn(xp, *arrays, *args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __repr__(self):
        return self.fn.__name__

    @property
    def data_shaped(self):  # (a function whose output size is data's marks itself)
        return getattr(self.fn, "data_shaped", False)

    def forward(self, *arrays):
        return self.fn(xp_of(arrays[0]), *arrays, *self.args)

    def backward(self, *grads):
        return (None,) * len(self.needs_input_grad)


def _one_hot(xp, x, num_classes):
    # a class out of range would give a row of zeros: a silently wrong label (upstream's
    # kernel asserts on a negative one, torch refuses both)
    _check_bounds(x, num_classes, "one_hot")
    return (x[..., None] == xp.arange(num_classes, dtype=x.dtype)).astype(x.dtype)


def one_hot(inp, num_classes):
    """One-hot encoding of an integer tensor: a new last dim of size ``num_classes``."""
    # (a count from x.shape in a dumpable trace, or a TracedModule's size tensor, stays an
    # expression: Compute keeps it as an op parameter, which a dumped program computes at the
    # shapes it runs at)
    num_classes = _int(num_classes, "num_classes", "one_hot")
    if type(num_classes) is int and num_classes < 0:
        raise ArgumentError(f"one_hot: num_classes must be >= 0, got {num_classes}")
    return apply(Compute(_one_hot, num_classes), _int_index(inp, "one_hot"))


class Where(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients (core/dispatch.py): a linear map, real coefficients
    def forward(self, mask, x, y):
        self.mask, self.x_shape, self.y_shape = mask, x.shape, y.shape
        dtype = promote_types(x.dtype, y.dtype)
        try:
            out = xp_of(x).where(mask, x.astype(dtype, copy=False), y.astype(dtype, copy=False))
        except ValueError as e:
            raise_unbroadcastable("Where", (mask, x, y), e)
        # (numpy's where drops the metadata a quantized dtype keeps its scale in)
        return out if dtype.metadata is None else out.view(dtype)

    def backward(self, g):
        xp = xp_of(g)
        _, nx, ny = self.needs_input_grad
        gx = unbroadcast(xp.where(self.mask, g, 0), self.x_shape) if nx else None
        gy = unbroadcast(xp.where(self.mask, 0, g), self.y_shape) if ny else None
        return None, gx, gy

    def grad_graph(self, inputs, outputs, grads):  # higher-order gradients (core/dispatch.py)
        g = grads[0]
        _, nx, ny = self.needs_input_grad
        pick = Tensor._wrap(xp_of(g._data).asarray(self.mask, g.dtype), g._device)
        gx = _ops.t_unbroadcast(g * pick, self.x_shape) if nx else None
        gy = _ops.t_unbroadcast(g * (1 - pick), self.y_shape) if ny else None
        return None, gx, gy


def where(mask, x=None, y=None):
    """``x`` where the bool ``mask`` is True, else ``y`` (broadcast). With only ``mask``:
    the tuple of its non-zero indices, like ``non_zero(mask, as_tuple=True)``."""
    mask = _tensor(mask)
    if x is None and y is None:
        return non_zero(mask, as_tuple=True)
    if x is None or y is None:
        raise ValueError("where: give both x and y, or neither")
    if mask.dtype != np.bool_:
        raise ValueError(f"where: mask must be bool, got dtype {mask.dtype}")
    if isinstance(x, Tensor) and isinstance(y, Tensor) and x.dtype != y.dtype:
        dtype = _where_dtype(x.dtype, y.dtype)
        x, y = x.astype(dtype), y.astype(dtype)
    elif not isinstance(x, Tensor) and not isinstance(y, Tensor):
        x = Tensor(x, device=mask._device)
    x, y = (x, _operand(y, x)) if isinstance(x, Tensor) else (_operand(x, y), y)
    return apply(Where(), mask, x, y)


def _where_dtype(a, b):
    """The dtype of ``where`` of two tensors, as upstream's where promotes them (its Python
    ``dtype_promotion``, not the elementwise ops' rule): a float operand's dtype wins (int32 with
    float16 is float16), integers and bools meet as numpy's (bool with int32 is int32, uint8
    with int8 int16). Quantized and complex operands keep `Where`'s own rule."""
    if a.metadata is not None or b.metadata is not None or "c" in (a.kind, b.kind):
        return promote_types(a, b)
    if (a.kind == "f") != (b.kind == "f"):
        return a if a.kind == "f" else b
    return np.promote_types(a, b)


def _non_zero(xp, x):
    if x.dtype.metadata is not None:  # a quantized tensor: non-zero values (not integers)
        x = _qd.stored(x) != _qd._zero_point(x.dtype)
    if x.ndim == 0:  # (n, 0), as torch's: n is 1 for a non-zero scalar (numpy 2.1+ refuses it)
        return xp.zeros((int(x != 0), 0), np.int32)
    return xp.stack(xp.nonzero(x), axis=1).astype(np.int32)


_non_zero.data_shaped = True


def non_zero(condition, as_tuple=False):
    """Indices (int32) of the non-zero elements: an ``(n, ndim)`` tensor, or a tuple of ``ndim``
    1-D tensors with ``as_tuple`` (a 0-d input gives ``(1, 0)`` or ``(0, 0)``, as torch's)."""
    condition = _tensor(condition)
    idx = apply(Compute(_non_zero), condition)
    return tuple(idx[:, d] for d in range(condition.ndim)) if as_tuple else idx


class CondTake(Op):
    """The elements of x where mask is True (flattened), and their flat indices."""

    data_shaped = True
    holomorphic = True  # complex gradients (core/dispatch.py): a linear map, real coefficients

    def forward(self, mask, x):
        self.in_shape = x.shape
        self.flat = xp_of(mask).flatnonzero(mask)
        return x.reshape(-1)[self.flat], self.flat.astype(np.int32)

    def backward(self, g, _):
        gx = put_back(xp_of(g), (int(np.prod(self.in_shape, dtype=np.int64)),), g.dtype,
                      self.flat, g, True)
        return None, gx.reshape(self.in_shape)


def cond_take(mask, x):
    """The elements of ``x`` where the bool ``mask`` is True, and their flat indices (int32)."""
    mask, x = _tensor(mask), _tensor(x)
    if mask.dtype != np.bool_:
        raise ValueError(f"cond_take: mask must be bool, got dtype {mask.dtype}")
    if mask.shape != x.shape:
        raise ShapeError(f"cond_take: mask shape {mask.shape} must equal x shape {x.shape}")
    return apply(CondTake(), mask, x)


# Upstream's home for these is `megengine.functional.tensor` (it re-exports them), and they keep
# reporting it: traced modules print `tensor.<name>` and dumped programs name ops by module path,
# as they did before this file was split off from that one.
for _value in list(globals().values()):
    if getattr(_value, "__module__", None) == __name__:
        _value.__module__ = "megengine.functional.tensor"
del _value
