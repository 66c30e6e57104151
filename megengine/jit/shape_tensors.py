"""Shape tensors while a dumpable trace records: ``Tensor(x.shape)``, ``F.concat([x.shape[:1],
mge.tensor([-1])])``, ``x.shape.numpy()``, and what indexing, concat, stack, casts to ints and
integer arithmetic make of them keep their items as `SymDim`s, so that a shape argument read
from them (``F.reshape(y, shape_tensor)``) is computed at the shapes a dumped program runs at.

Upstream's ``x.shape`` is an int32 Tensor computed by its graph (``GetVarShape``), and shape
arithmetic on it runs in the graph. Here a shape is a tuple of sizes (`core._trace_option.Shape`);
making a Tensor of SymDims applies `Sizes`, an op without inputs whose values are expressions of
the traced values' shapes. The recorder keeps, for each slot whose value is such sizes, an object
array of the SymDims (`propagate` follows the few ops programs apply to shape tensors); a shape
argument that reads a Tensor asks for it (`core._trace_option.sizes_of`) instead of reading the
tensor's numbers, which would be a guard. Values no rule follows are ordinary tensors: reading
them to the host stays a recorded read.
"""
import math

import numpy as np

from ..core import _trace_option
from ..core.dispatch import Op, apply
from ..core import ops as _ops

__all__ = ["Sizes"]


class Sizes(Op):
    """``values`` (ints, nested lists of them; `SymDim`s while recording) as a new array of
    ``dtype`` on ``device``: a shape made a Tensor (``Tensor(x.shape)``) in a dumpable trace, so
    that a loaded program makes it from the shapes it runs at."""

    def __init__(self, values, dtype, device):
        self.values, self.dtype, self.device = values, dtype, device

    def forward(self):
        from ..device import array_module_on  # (loaded on use, as core.ops.Full)

        with _ops.dispatch.on_device(self.device):
            return array_module_on(self.device).asarray(self.values, dtype=self.dtype)

    def backward(self, *gs):
        return ()


def objects(values):
    """``values`` (a SymDim, ints, nested sequences of them) as a numpy object array, built item
    by item: ``np.array`` would ask each SymDim for ``__array__`` (a guard)."""
    if isinstance(values, (list, tuple)) or type(values) is _trace_option.ShapeArray:
        parts = [objects(v) for v in values]
        if not parts:
            return np.empty((0,), object)
        if any(p.shape != parts[0].shape for p in parts):
            raise ValueError(f"Tensor: sizes of ragged shapes {[p.shape for p in parts]}")
        out = np.empty((len(parts),) + parts[0].shape, object)
        for i, p in enumerate(parts):
            if p.ndim:
                out[i] = p
            else:
                out[i] = p[()]  # (out[i] = p would store the 0-d array itself)
        return out
    out = np.empty((), object)
    out[()] = values
    return out


def sizes_tensor(rec, values, dtype, device):
    """The Tensor ``Tensor(values, dtype, device)`` of sizes that hold SymDims: a `Sizes` op,
    whose symbolic value ``rec`` keeps."""
    obj = objects(values)
    kinds = {type(v.value if type(v) is _trace_option.SymDim else v) for v in obj.flat}
    if not kinds <= {int, float}:
        raise TypeError(f"Tensor: sizes must be ints or floats, got items of types {kinds}")
    if dtype is None:  # as a tuple of Python numbers would be: int32, or float32 with a float
        dtype = np.float32 if float in kinds else np.int32
    dtype = np.dtype(dtype)
    out = apply(Sizes(obj.tolist(), dtype, device))
    if dtype.kind in "iu" and kinds == {int}:
        rec.note_sizes(out, obj)
    return out


def int_const(info):
    """A captured constant small int array as an object array (a shape piece such as
    ``mge.tensor([-1])``), or None."""
    a = getattr(info, "const", None)
    if info.kind != "const" or a is None or a.dtype.kind not in "iu" or a.size > 64:
        return None
    return objects(a.tolist())  # (numpy's and CuPy's tolist: plain ints)


_ELEMWISE = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
             "FloorDiv": lambda a, b: a // b, "Mod": lambda a, b: a % b}


def _plain_index(index):
    return all(i is None or i is Ellipsis or type(i) is int or (
        type(i) is slice and all(v is None or type(v) is int for v in (i.start, i.stop, i.step)))
        for i in index)


def propagate(op, values):
    """The sizes ``op`` makes of input sizes ``values`` (object arrays), or None when no rule
    applies (the output is then an ordinary tensor)."""
    name = type(op).__name__
    if name == "GetItem" and len(values) == 1 and _plain_index(op.index):
        got = values[0][op.index]
        return got if isinstance(got, np.ndarray) else objects(got)
    if name == "AsType" and np.dtype(op.dtype).kind in "iu":
        return values[0]
    if name in ("Copy", "Identity") and len(values) == 1:  # (Tensor(shape_tensor), F.copy)
        return values[0]
    if name in _ELEMWISE and len(values) == 2:
        got = _ELEMWISE[name](values[0], values[1])
        # (numpy's arithmetic on two 0-d object arrays, s[0] * s[1], gives the bare item)
        return got if isinstance(got, np.ndarray) else objects(got)
    if name == "Concat":
        return np.concatenate(values, axis=op.axis)
    if name == "Stack":
        return np.stack(values, axis=op.axis)
    if name == "Reshape" and values[0].size == math.prod(op.shape) and \
            all(type(s) is int for s in op.shape):
        return values[0].reshape(op.shape)
    if name in ("AddAxis", "RemoveAxis"):  # (F.expand_dims(n, 0) of a size: [n])
        return values[0].reshape(op.out_shape(values[0].shape))
    if name == "Reduce" and op.axis is None and not op.keepdims and len(values) == 1 and \
            op.mode in ("sum", "prod"):
        fold = math.prod if op.mode == "prod" else sum
        return objects(fold(values[0].flat))
    return None
