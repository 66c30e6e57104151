"""Upstream's `megengine.core.tensor.utils`: the helpers programs import from there (`isscalar`,
`astensor1d`, `make_shape_tuple`, `dtype_promotion`, ..., and `subgraph_fn`, which builds an
op out of descriptor applications)."""
import collections.abc
import functools
import inspect
import sys

import numpy as np

from ._imperative_rt.opdef import OpDef
from ._trace_option import is_dim, is_int
from .tensor import Tensor, promote_types

__all__ = ["isscalar", "astensor1d", "make_shape_tuple", "dtype_promotion", "get_device",
           "convert_single_value", "convert_inputs", "result_type", "astype", "concatenate",
           "subgraph", "subgraph_fn"]


def isscalar(x):
    """Whether ``x`` is a 0-d Tensor or array, or a Python/numpy scalar."""
    ndim = getattr(x, "ndim", None)
    if ndim is not None:
        return ndim == 0
    return bool(np.isscalar(x))


def _scalar_dtype(x):
    if isinstance(x, (bool, np.bool_)):
        return np.dtype(bool)
    if isinstance(x, (int, np.integer)):
        return np.dtype(np.int32)
    return np.dtype(np.float32)


def dtype_promotion(inputs):
    """The dtype of an arithmetic op on ``inputs`` (Tensors and Python scalars), upstream's
    rules: a scalar of a higher kind (float over int over bool) decides, else the tensors do."""
    rank = {"b": 1, "u": 2, "i": 2, "f": 3}
    tensors = [np.dtype(i.dtype) for i in inputs if hasattr(i, "dtype")]
    scalars = [_scalar_dtype(i) for i in inputs
               if not hasattr(i, "dtype") and isinstance(i, (bool, int, float))]
    if not tensors and not scalars:
        raise TypeError("dtype_promotion: no tensors or numbers among the inputs")
    top_t = max((rank.get(d.kind, 0) for d in tensors), default=0)
    top_s = max((rank.get(d.kind, 0) for d in scalars), default=0)
    pool, top = (scalars, top_s) if top_s > top_t else (tensors, top_t)
    result = None
    for d in pool:
        if rank.get(d.kind, 0) == top:
            result = d if result is None else promote_types(result, d)
    return result


def get_device(inputs):
    """The device the Tensors among ``inputs`` share (ValueError when they differ)."""
    device = None
    for i in inputs:
        if isinstance(i, Tensor):
            if device is None:
                device = i.device
            elif device != i.device:
                raise ValueError(f"ambiguous device: {device} vs {i.device}")
    if device is None:
        raise ValueError("get_device: none of the inputs is a Tensor")
    return device


def astype(x, dtype):
    """``x`` as ``dtype`` (the same Tensor when it has it already)."""
    dtype = np.dtype(dtype)
    return x if x.dtype == dtype else x.astype(dtype)


def convert_single_value(v, *, dtype=None, device=None):
    """A Tensor of ``v`` with ``dtype`` on ``device`` (a Tensor is cast, not moved)."""
    if isinstance(v, Tensor):
        return v if dtype is None else astype(v, dtype)
    return Tensor(v, dtype=dtype, device=device)


def convert_inputs(*args, device=None):
    """Tensors of the promoted dtype for ``args`` (None stays None)."""
    dtype = dtype_promotion(args)
    if device is None:
        device = get_device(args)
    return tuple(None if a is None else convert_single_value(a, dtype=dtype, device=device)
                 for a in args)


def result_type(*args):
    """numpy's result dtype of the dtypes of ``args`` (Tensors, arrays, dtypes)."""
    dtypes = []
    for a in args:
        if isinstance(a, Tensor):
            dtypes.append(a.dtype)
            continue
        try:
            dtypes.append(np.dtype(a))
        except TypeError:
            pass
    return np.result_type(*dtypes)


def concatenate(inputs, axis=0, *, device=None):
    """Join Tensors and numbers along ``axis`` in their promoted dtype."""
    from .. import functional as F  # functional sits above core: loaded on use

    dtype = dtype_promotion(inputs)
    if device is None:
        device = get_device(inputs)
    return F.concat([convert_single_value(i, dtype=dtype, device=device) for i in inputs],
                    axis=axis, device=device)


def astensor1d(x, *reference, dtype=None, device=None):
    """A 1-d Tensor of ``x``: a sequence of numbers and/or scalar Tensors, a 1-d array, or a
    1-d Tensor (returned as it is). ``reference`` tensors give the device when none is given."""
    if device is None:
        for r in reference:
            if isinstance(r, Tensor):
                device = r.device
                break
    ndim = getattr(x, "ndim", None)
    if ndim is not None:
        if ndim != 1:
            raise ValueError(f"astensor1d: expected 1 dimension, got {ndim}")
        if isinstance(x, Tensor):
            return x
        return _const_like(Tensor(x, dtype=dtype, device=device), reference)
    if not isinstance(x, collections.abc.Sequence):
        raise TypeError(f"astensor1d: expected a sequence, an array or a Tensor, got "
                        f"{type(x).__name__}")
    if any(isinstance(i, Tensor) for i in x):
        parts = [i.reshape(1) if isinstance(i, Tensor) else i for i in x]
        out = concatenate([p if isinstance(p, Tensor) else Tensor([p], device=device)
                           for p in parts], device=device)
        return out if dtype is None else astype(out, dtype)
    return _const_like(Tensor(x, dtype=dtype, device=device), reference)


def _const_like(value, reference):
    """``value`` as a constant of the graph of a `VarNode` among ``reference`` (upstream's
    ``Const(x, dtype, device, reference)`` makes a graph var there), else ``value`` itself.
    VarNodes exist only once `megengine.utils.network_node` is loaded, so it is looked up, not
    imported (it sits above core)."""
    network_node = sys.modules.get("megengine.utils.network_node")
    if network_node is None:
        return value
    for r in reference:
        if type(r) is network_node.VarNode:
            node = network_node.ImmutableTensor(value.numpy(), None, value.device)
            node._graph = r.graph
            return node.outputs[0]
    return value


def _expand_int(s, i):
    if isinstance(i, Tensor):
        s.extend(int(v) for v in np.asarray(i.numpy()).ravel())
    elif isinstance(i, collections.abc.Iterable) and not isinstance(i, (str, bytes)):
        for ii in i:
            _expand_int(s, ii)
    elif is_int(i) and not isinstance(i, bool):
        s.append(i if is_dim(i) else int(i))  # (a size of a dumpable trace stays one)
    else:
        raise TypeError(f"make_shape_tuple: a shape entry must be an int or an int Tensor, "
                        f"got {i!r}")


def make_shape_tuple(shape):
    """A tuple of ints from a nested mix of ints, sequences and int Tensors."""
    s = []
    _expand_int(s, shape)
    return tuple(s)


# ---------------------------------------------------------------- subgraphs
# the symbols subgraph bodies write for upstream's elementwise modes
_SYMBOLS = {"+": "ADD", "*": "MUL", "/": "TRUE_DIV", "//": "FLOOR_DIV", "**": "POW",
            "%": "MOD", "<": "LT", "<=": "LEQ", "==": "EQ", "!=": "NEQ", "&": "AND",
            "|": "OR", "^": "XOR", "~": "NOT", "fma3": "FUSE_MUL_ADD3",
            "fma4": "FUSE_MUL_ADD4"}


def _apply_in_subgraph(op, *args):
    """``f(op, *args)`` of a subgraph body: one output Tensor (a tuple for multi-output ops)."""
    from ._imperative_rt.core2 import apply
    from ._imperative_rt.ops import Elemwise

    if isinstance(op, str):
        if op == "-":
            op = "NEGATE" if len(args) == 1 else "SUB"
        elif op in (">", ">="):  # upstream spells these by swapping LT / LEQ
            op, args = ("LT" if op == ">" else "LEQ"), args[::-1]
        op = Elemwise(mode=_SYMBOLS.get(op, op))
    for a in args:
        if not isinstance(a, Tensor):
            raise TypeError(f"subgraph: f({op!r}, ...) takes Tensors (make constants with c(...)),"
                            f" got {type(a).__name__}")
    for a in args[1:] if isinstance(op, Elemwise) else ():
        # upstream's subgraph keeps a constant on the subgraph's device, and its Elemwise
        # asserts that the inputs share one device: nothing is copied on its own. (Operators
        # that read an input as a host value, a Reshape's shape or a Subtensor's bounds, are
        # left to the op, as upstream reads those values from any device.)
        if a._device != args[0]._device:
            raise ValueError(
                f"subgraph: f({op!r}, ...) reads tensors on {args[0].device} and {a.device}; a "
                "subgraph's operators take inputs on one device and its constants c(...) are "
                "made on the subgraph's device: make the subgraph with device= the device of "
                "its inputs, or give c(value, device=...)")
    out = apply(op, *args)
    return out[0] if len(out) == 1 else out


def subgraph(name, dtype, device, nr_inputs, gopt_level=None, jit_fusion=False,
             custom_grad=False):
    """Upstream's ``subgraph``: the decorated body becomes a function of no arguments that
    returns an op descriptor, which ``apply(op, *inputs)`` runs, returning a tuple of outputs:

    .. code-block:: python

        @subgraph("Scale", "float32", "cpu0", 1)
        def scale(inputs, f, c):
            return [f("*", inputs[0], c(2.0))], [True]

        (y,) = apply(scale(), x)

    (upstream's `subgraph_fn` is ``lambda *args: apply(op(), *args)``). The body runs as in
    `subgraph_fn`, which says how."""
    make = subgraph_fn(name, dtype, device, nr_inputs, gopt_level=gopt_level,
                       jit_fusion=jit_fusion, custom_grad=custom_grad)

    def decorator(body):
        op = _SubgraphOp(name, make(body))
        return lambda: op

    return decorator


class _SubgraphOp(OpDef):
    """The op `subgraph` makes: applying it runs the subgraph's body on the inputs."""

    def __init__(self, name, run):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_run", run)

    def _key(self):  # one op per subgraph (its body), not per parameter values
        return (type(self), self._run)

    def __repr__(self):
        return f"SubgraphOp({self.name!r})"

    def _lower(self, *inputs):
        return tuple(self._run(*inputs))


def subgraph_fn(name, dtype, device, nr_inputs, gopt_level=None, jit_fusion=False,
                custom_grad=False, *, interpret=False):
    """Make a function out of a body written with op descriptors (upstream's ``subgraph_fn``).

    The body ``body(inputs, f, c)`` gets the input Tensors, ``f(op, *tensors)`` (an op
    descriptor, or an elementwise mode by name or symbol: ``"+"``, ``"fma3"``,
    ``"switch_gt0"``) and ``c(value, dtype=, device=)`` for constants (default: the subgraph's
    dtype and device). It returns ``(outputs, output_has_grad)``, or only the outputs.
    With ``custom_grad`` the body is a generator: it yields the outputs, receives their
    gradients (zeros for unused outputs) and yields the input gradients (None for none).

    Upstream compiles the body into one fused op (``gopt_level``, ``jit_fusion``); this engine
    runs it op by op, eagerly, so autodiff (or the custom gradient), tracing and devices work
    as for any computation, and ``interpret`` changes nothing. The made function takes
    ``nr_inputs`` Tensors and returns a list of output Tensors.
    """
    default_dtype = None if dtype is None else np.dtype(dtype)
    default_device = None if device is None else str(device)

    def c(value, dtype=default_dtype, device=default_device):
        return Tensor(value, dtype=dtype, device=device)

    def decorator(body):
        if custom_grad and not inspect.isgeneratorfunction(body):
            raise TypeError(f"subgraph_fn({name!r}, custom_grad=True): the body must be a "
                            "generator (yield the outputs, then the input gradients)")

        @functools.wraps(body)
        def run(*inputs):
            if len(inputs) != nr_inputs:
                raise TypeError(f"subgraph {name!r} takes {nr_inputs} inputs, got {len(inputs)}")
            inputs = [i if isinstance(i, Tensor) else c(i) for i in inputs]
            if custom_grad:
                return _run_custom_grad(name, body, inputs, c)
            out = body(inputs, _apply_in_subgraph, c)
            return list(_outputs_of(out, name))

        return run

    return decorator


def _outputs_of(out, name):
    """The output Tensors of a body's return value ``(outputs, output_has_grad)`` or
    ``outputs``."""
    if (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], (tuple, list))
            and isinstance(out[1], (tuple, list))
            and all(isinstance(b, (bool, np.bool_)) for b in out[1])):
        out = out[0]
    if isinstance(out, Tensor):
        out = (out,)
    for o in out:
        if not isinstance(o, Tensor):
            raise TypeError(f"subgraph {name!r}: outputs must be Tensors, got {type(o).__name__}")
    return out


def _run_custom_grad(name, body, inputs, c):
    from ..autodiff.function import Function  # autodiff sits above core: loaded on use

    class _Subgraph(Function):
        def forward(self, *xs):
            self.gen = body(list(xs), _apply_in_subgraph, c)
            outs = list(_outputs_of(next(self.gen), name))
            self.outs = outs
            return tuple(outs)

        def backward(self, *grads):
            from .. import functional as F

            grads = tuple(F.zeros_like(o) if g is None else g for g, o in zip(grads, self.outs))
            try:
                in_grads = self.gen.send(grads)
            except StopIteration:
                raise RuntimeError(f"subgraph {name!r}: the body yielded no input gradients "
                                   "after the outputs") from None
            in_grads = (in_grads,) if isinstance(in_grads, Tensor) else tuple(in_grads)
            return in_grads

    out = _Subgraph()(*inputs)
    return list(out) if isinstance(out, tuple) else [out]
