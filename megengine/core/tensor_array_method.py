"""Upstream's `megengine.core.tensor.array_method` helpers that programs import (`_elwise`,
`_reduce`, `_matmul`, ...): Tensor arithmetic written with the op descriptors, with upstream's
conversions (Python numbers promoted with the tensors, integer inputs of float-only modes
computed in float32)."""
import numpy as np

from ._trace_option import as_int, is_int
from .tensor import Tensor
from .tensor_utils import convert_inputs

__all__ = ["_elwise", "_elwise_apply", "_reduce", "_matmul", "_transpose", "_broadcast",
           "_reshape", "_remove_axis"]

# modes upstream computes in float32 when every input is an integer
_FLOAT_ONLY = {"TRUE_DIV", "EXP", "POW", "LOG", "EXPM1", "LOG1P", "TANH", "ACOS", "ASIN",
               "ATAN2", "COS", "H_SWISH", "SIGMOID", "SIN", "ERFINV"}
# modes that leave integers unchanged
_INTEGER_IDENTITY = {"CEIL", "FLOOR", "ROUND"}


def _apply1(op, *args):
    from ._imperative_rt.core2 import apply

    (result,) = apply(op, *args)
    return result


def _elwise_apply(args, mode):
    """``Elemwise(mode)`` applied to the Tensors ``args`` as they are."""
    from ._imperative_rt.ops import Elemwise

    return _apply1(Elemwise(mode), *args)


def _elwise(*args, mode):
    """An elementwise op of ``mode`` (an ``Elemwise.Mode`` or its name) on Tensors and
    numbers, converted to one dtype and device first."""
    from ._imperative_rt.ops import Elemwise, _coerce

    name = _coerce(Elemwise.Mode, mode, "_elwise").name
    args = convert_inputs(*args)
    if name in _FLOAT_ONLY and all(np.issubdtype(a.dtype, np.integer) for a in args):
        args = tuple(a.astype("float32") for a in args)
    if name in _INTEGER_IDENTITY and np.issubdtype(args[0].dtype, np.integer):
        return args[0]
    return _elwise_apply(args, name)


def _remove_axis(inp, axis):
    """``inp`` without its size-1 axes ``axis`` (an int, a list, or None: every size-1 axis)."""
    from ._imperative_rt.ops import RemoveAxis

    if axis is None:
        axes = [i for i, s in enumerate(inp.shape) if s == 1]
    elif is_int(axis):
        axes = [as_int(axis)]
    else:
        axes = [as_int(a) for a in axis]
    axes = sorted(a % inp.ndim for a in axes)  # (removed one after another, as upstream's)
    return _apply1(RemoveAxis(axis=[a - i for i, a in enumerate(axes)]), inp)


def _reduce(mode):
    """A reduction method ``f(tensor, axis=None, keepdims=False)`` of ``mode`` ("sum",
    "product", "min", "max", "mean", "sum_sqr"): booleans count as int32 (min and max give
    booleans back), a mean is computed in float32."""
    from ._imperative_rt.ops import Reduce

    def f(self, axis=None, keepdims: bool = False):
        m = str(mode).lower()
        data = self
        if m == "mean":
            data = data.astype("float32")
        elif self.dtype == np.bool_:
            data = data.astype("int32")
        if axis is None:
            if keepdims:
                raise ValueError("_reduce: axis=None and keepdims=True cannot be combined")
            result = _apply1(Reduce(mode=m, axis=0, keepdim=False), data.reshape(-1))
        else:
            axes = [axis] if is_int(axis) else list(axis)
            axes = sorted({as_int(a) % self.ndim for a in axes}, reverse=True)
            result = data
            for a in axes:
                result = _apply1(Reduce(mode=m, axis=a, keepdim=bool(keepdims)), result)
        if self.dtype == np.bool_ and m in ("min", "max"):
            result = result.astype("bool")
        return result

    return f


def _matmul(inp1, inp2, transpose_a=False, transpose_b=False, compute_mode="default"):
    """``inp1 @ inp2`` (numpy's rules) in the promoted dtype of the two."""
    from ._imperative_rt.ops import MatrixMul

    inp1, inp2 = convert_inputs(inp1, inp2)
    return _apply1(MatrixMul(transposeA=transpose_a, transposeB=transpose_b,
                             compute_mode=compute_mode), inp1, inp2)


def _transpose(data, axes):
    from ._imperative_rt.ops import Dimshuffle

    return _apply1(Dimshuffle(tuple(axes)), data)


def _broadcast(inp, shape):
    from ._imperative_rt.ops import Broadcast

    if isinstance(shape, Tensor):
        return _apply1(Broadcast(), inp, shape)
    return _apply1(Broadcast(shape=tuple(shape)), inp)


def _reshape(x, shape):
    from ._imperative_rt.ops import Reshape

    if isinstance(shape, Tensor):
        return _apply1(Reshape(), x, shape)
    return _apply1(Reshape(shape=tuple(shape)), x)
