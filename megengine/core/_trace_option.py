"""Upstream's symbolic-shape switch (``set_symbolic_shape``), `Shape`, what ``Tensor.shape``
gives while it is on, and `SymDim`, its items while a dumpable trace records."""
import math
import operator
import os

import numpy as np

# off outside a trace unless MEGENGINE_USE_SYMBOLIC_SHAPE is set, as upstream; a traced call
# turns it to its trace's ``symbolic_shape`` (default True, as upstream) while the function runs
_use_symbolic_shape = bool(os.environ.get("MEGENGINE_USE_SYMBOLIC_SHAPE"))


def use_symbolic_shape() -> bool:
    return _use_symbolic_shape


def set_symbolic_shape(option: bool) -> bool:
    """Turn symbolic shapes on or off and return the previous setting.

    While on, ``Tensor.shape`` of a tensor with at least one dimension is a `Shape`: the tuple
    of ints it always is, which also answers what upstream's shape Tensor answers
    (``x.shape.numpy()``). Upstream turns it on for the duration of each traced call
    (``trace(symbolic_shape=True)``, the default); outside traces it is off unless set here.
    """
    global _use_symbolic_shape
    old, _use_symbolic_shape = _use_symbolic_shape, bool(option)
    return old


# upstream 1.0-1.1 names of the same switch (programs of that time import them)
use_tensor_shape = use_symbolic_shape
set_tensor_shape = set_symbolic_shape


class Shape(tuple):
    """A tensor's shape while symbolic shapes are on: a tuple of sizes, and a shape Tensor's
    reads.

    Upstream makes ``x.shape`` an int32 Tensor there (the output of a ``GetVarShape`` op of its
    graph), so code written for its traces reads it with ``x.shape.numpy()``. Here the shape
    stays a tuple: ``x.shape == (2, 3)`` is a bool, ``x.shape[1:] + (4,)`` concatenates,
    ``np.prod(x.shape)`` multiplies, ``n, c, h, w = x.shape`` unpacks, as ordinary programs
    expect. Its items are ints, or `SymDim`s while a trace that can be dumped records (see
    "Shape values with provenance" below): sizes that remember where they came from.
    Where upstream's Tensor and a tuple disagree (``+``, ``*``, ``==``) the tuple's meaning
    wins: code that runs both eagerly (where upstream's shape is a tuple too) and traced can
    only rely on what both mean. What only a Tensor has is added: `numpy`, `tolist`, `item`,
    `astype`, ``dtype``, ``ndim``, ``size``, ``shape``.
    """

    __slots__ = ()

    def __getitem__(self, index):
        item = tuple.__getitem__(self, index)
        return Shape(item) if type(index) is slice else item  # x.shape[1:].numpy() works

    def _ints(self):
        return tuple(operator.index(d) for d in self)  # (a SymDim's value, guarded)

    # shapes of different ranks differ whatever their sizes: tuple's == would compare the
    # leading items first (a guard on each SymDim pair, ``shape == inp.shape`` in
    # broadcast_to); this method also serves ``tuple == Shape`` (Python asks the subclass)
    def __eq__(self, other):
        if isinstance(other, tuple) and len(other) != len(self):
            return False
        return tuple.__eq__(self, other)

    def __ne__(self, other):
        if isinstance(other, tuple) and len(other) != len(self):
            return True
        return tuple.__ne__(self, other)

    __hash__ = tuple.__hash__

    def __reduce__(self):
        return tuple, (self._ints(),)  # a pickled shape is a plain tuple (no megengine needed)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._ints(), dtype=dtype)

    def __array_function__(self, func, types, args, kwargs):
        # np.prod(x.shape) keeps SymDims an expression; any other numpy function reads ints
        if func is np.prod and len(args) == 1 and not kwargs and any(
                is_dim(d) or not isinstance(d, (int, np.integer)) for d in self):
            return math.prod(self)  # (of traced_module's tensor sizes: a traced product)
        args = tuple(a._ints() if isinstance(a, Shape) else a for a in args)
        return func(*args, **kwargs)

    def numpy(self):
        """The shape as an int32 array (upstream's shape Tensor's dtype); while a dumpable
        trace records and the shape holds `SymDim`s, a `ShapeArray` of them."""
        if _dim_source is not None and any(map(is_dim, self)):
            return ShapeArray(self)
        return np.array(self._ints(), dtype=np.int32).reshape(len(self))

    def tolist(self):
        return list(self._ints())

    def item(self):
        if len(self) != 1:
            raise ValueError(f"item(): the shape {tuple(self)} has {len(self)} elements, not 1")
        return self[0]

    def astype(self, dtype):
        """The shape as a Tensor of ``dtype`` (upstream's ``shape.astype`` gives a Tensor); of
        sizes that are tensors (``x.shape`` while `megengine.traced_module` traces), their
        stack, so that a traced module computes it from the input it is given."""
        from .tensor import Tensor  # core.tensor imports this module

        if self and all(isinstance(d, Tensor) for d in self):
            from ..functional.tensor import stack  # (functional imports core)

            return stack(list(self)).astype(dtype)
        return Tensor(self.numpy(), dtype=dtype)

    @property
    def dtype(self):
        return np.dtype(np.int32)

    @property
    def ndim(self):
        return 1

    @property
    def size(self):
        return len(self)

    @property
    def shape(self):
        return (len(self),)


# --------------------------------------------------------------------------------------------
# Shape values with provenance (symbolic shapes of a recording that can be dumped)
# --------------------------------------------------------------------------------------------
# While `megengine.jit.trace` records a call that can be dumped (``capture_as_const=True`` and
# ``symbolic_shape=True``), it sets ``_dim_source`` to its recorder, and the items of
# ``x.shape`` are `SymDim`s: the size, plus an expression saying where it came from (a traced
# value's slot and axis, upstream's GetVarShape) and what arithmetic made it. An op parameter
# built from them (``reshape(y.shape[0], -1)``) is stored as that expression, which a loaded
# program evaluates from its arrays' actual shapes. Any other use of the value (``int(n)``,
# ``range(n)``, ``if n > 1``, numpy, a format string) becomes a *guard* of the program: the
# expression and the value it had, checked when the program runs at other shapes.
#
# Why not an ``int`` subclass: CPython's and numpy's C code read an int subclass's value
# directly (``range(n)``, ``np.zeros((n, 3))``, ``[0] * n`` call no Python method), so a traced
# size would leak into the program unnoticed and run silently wrong at another batch size.
# A SymDim is no int: every such consumer has to call ``__index__``, ``__int__``, ``__array__``,
# ``__hash__``, ``__format__``... and each of those records a guard. (Upstream's shape items
# are Tensors, not ints, for the same reason.) The engine's shape arguments accept SymDims
# where they accept ints (`is_dim`).
_dim_source = None

# expression trees (plain tuples, so a file holds them as JSON lists):
#   ("dim", slot, axis) | int | float | (op, a, b) for op in _BINARY | (op, a) for op in _UNARY
# A value may be a float (``h * 2.0``, ``h / 2``): rounding it (``math.floor``, ``math.ceil``,
# ``round``, ``math.trunc``) gives an int size again, as `interpolate(scale_factor=...)` does.
_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "//": operator.floordiv, "%": operator.mod}  # (C functions: no Python frame)
_UNARY = {"neg": lambda a: -a, "floor": math.floor, "ceil": math.ceil, "round": round,
          "trunc": math.trunc, "abs": abs}
_COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _extreme(pick):
    """``max`` / ``min`` of two sizes, a float where either is one (as ``a + b`` would be):
    Python's own gives whichever operand comes first among equals, so ``max(0.0, n)`` was an
    int or a float depending on n, and a count rounded only where the traced value was a float
    (upstream's Linspace of MAX(CEIL(...), 0.0), `upstream_mge._op_linspace`) stayed 0.0 where
    the data made n 0 (fuzz program 3795)."""
    def extreme(a, b):
        out = pick(a, b)
        return float(out) if type(a) is float or type(b) is float else out
    return extreme


# ("bcast": two broadcast sizes, 1 or equal: the other one; `jit.arith_opt`'s rewrites use it;
# "max" / "min": the larger / smaller of two, upstream's Elemwise MAX / MIN of sizes in a
# loaded upstream file, `sym_max`)
_BINARY = {**_ARITH, **_COMPARE, "bcast": lambda a, b: b if a == 1 else a,
           "max": _extreme(max), "min": _extreme(min)}


def evaluate(tree, dim):
    """The value of expression ``tree``; ``dim(slot, axis)`` gives a leaf's size."""
    if type(tree) is not tuple:
        return tree
    op = tree[0]
    if op == "dim":
        return dim(tree[1], tree[2])
    if op in _UNARY:
        return _UNARY[op](evaluate(tree[1], dim))
    return _BINARY[op](evaluate(tree[1], dim), evaluate(tree[2], dim))


def render(tree, name):
    """``tree`` as text; ``name(slot, axis)`` names a leaf."""
    if type(tree) is not tuple:
        return repr(tree)
    op = tree[0]
    if op == "dim":
        return name(tree[1], tree[2])
    if op == "neg":
        return f"-({render(tree[1], name)})"
    if op in _UNARY:
        return f"{op}({render(tree[1], name)})"
    if op in ("bcast", "max", "min"):
        return (f"{'broadcast' if op == 'bcast' else op}({render(tree[1], name)}, "
                f"{render(tree[2], name)})")
    return f"({render(tree[1], name)} {op} {render(tree[2], name)})"


def _is_tensor(v):
    return hasattr(v, "_data") and hasattr(v, "_device")  # (core.tensor imports this module)


def _int_like(v):
    return type(v) is int or (isinstance(v, np.integer) and not isinstance(v, np.bool_))


def _number(v):
    """``v`` as a plain int or float when it is one (numpy scalars too), else None."""
    if _int_like(v):
        return int(v)
    if type(v) is float or isinstance(v, np.floating):
        return float(v)
    return None


def _arith_method(op, reverse):
    """`SymDim`'s operator ``op`` (reflected when ``reverse``): with an int or a SymDim of the
    same recording (``c // 2``, ``h * w``: the common cases, as `SymDim._operand` takes them)
    the new SymDim is made here, without further calls; the rest goes to `SymDim._arith`."""
    fn = _ARITH[op]

    def method(self, other):
        src, t = self.src, type(other)
        if src is _dim_source and (t is int or t is SymDim and other.src is src):
            if t is int:
                v, tree, nonneg = other, other, other >= 0
            else:
                v, tree, nonneg = other.value, other.tree, other.nonneg
            nonneg = nonneg and self.nonneg and op != "-"
            if reverse:
                return SymDim(fn(v, self.value), (op, tree, self.tree), src, nonneg)
            return SymDim(fn(self.value, v), (op, self.tree, tree), src, nonneg)
        return self._arith(other, op, reverse)

    name = {"+": "add", "-": "sub", "*": "mul", "/": "truediv", "//": "floordiv", "%": "mod"}[op]
    method.__name__ = f"__{'r' if reverse else ''}{name}__"
    method.__qualname__ = f"SymDim.{method.__name__}"
    return method


class SymDim:
    """One item of ``x.shape`` while a dumpable trace records: the size ``value`` and the
    expression ``tree`` it was computed by (see above). Arithmetic with ints, floats and other
    SymDims (``+ - * / // %``, ``divmod``, negation, ``abs``) gives SymDims, whose value may be a
    float (``h * 2.0``); ``math.floor``/``math.ceil``/``math.trunc``/``round`` of one give int
    SymDims; comparisons give bools and guard the comparison; every other use (``int()``
    included: it must give a real int) gives the plain value and guards it."""

    __slots__ = ("value", "tree", "src", "nonneg")

    def __init__(self, value, tree, src, nonneg=False):
        self.value, self.tree, self.src, self.nonneg = value, tree, src, nonneg

    # ----- escapes: the value leaves the expression; the program remembers it -----
    def _escape(self, kind):
        src = self.src
        if src is _dim_source and src is not None:
            src.guard(self.tree, self.value, kind)
        return self.value

    def __index__(self):
        if type(self.value) is not int:  # as a float would: h * 2.0 is no index
            raise TypeError(f"a size computed as a float ({self.value!r}) cannot be "
                            "interpreted as an integer; round it with math.floor/math.ceil")
        return self._escape("an int (int(), an index, range(), a numpy or list size)")

    def __int__(self):
        if type(self.value) is float:  # int(h * 1.5) is trunc(h * 1.5): guard that int
            t = self._rounded("trunc")
            return t._escape("int()") if type(t) is SymDim else t
        return self._escape("int()")

    def __float__(self):
        return float(self._escape("float()"))

    def __complex__(self):
        return complex(self._escape("complex()"))

    def __hash__(self):
        return hash(self._escape("a hash (a dict key, a cache)"))

    def __format__(self, spec):
        return format(self._escape("text (a format string, print)"), spec)

    def __str__(self):
        return str(self._escape("text (str(), print)"))

    def __repr__(self):
        return repr(self._escape("text (repr(), print)"))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._escape("a numpy value"), dtype=dtype)

    def __reduce__(self):
        return int, (self._escape("a pickled value"),)

    def item(self):  # upstream's shape items are Tensors: programs call .item() / .numpy()
        return self._escape("item()")

    def numpy(self):
        return np.asarray(self._escape("numpy()"), dtype=np.int32)

    # ----- arithmetic that stays an expression -----
    def _operand(self, other):
        if type(other) is SymDim:
            return other if other.src is self.src else None
        v = _number(other)
        if v is None:
            return None
        return SymDim(v, v, self.src, v >= 0)

    def _arith(self, other, op, reverse):
        if _is_tensor(other):
            return NotImplemented  # the Tensor's operator: it makes the size an op's output
        if self.src is not _dim_source:  # the recording is over: plain int arithmetic
            a, b = self.value, other.value if type(other) is SymDim else other
        else:
            o = self._operand(other)
            if o is not None:
                x, y = (o, self) if reverse else (self, o)
                nonneg = x.nonneg and y.nonneg and op != "-"
                return SymDim(_ARITH[op](x.value, y.value), (op, x.tree, y.tree), self.src,
                              nonneg)
            a = self._escape("arithmetic with a value that is no int or float")
            b = other._escape("arithmetic") if type(other) is SymDim else other
        return _ARITH[op](b, a) if reverse else _ARITH[op](a, b)

    __add__ = _arith_method("+", False)
    __radd__ = _arith_method("+", True)
    __sub__ = _arith_method("-", False)
    __rsub__ = _arith_method("-", True)
    __mul__ = _arith_method("*", False)
    __rmul__ = _arith_method("*", True)
    __truediv__ = _arith_method("/", False)
    __rtruediv__ = _arith_method("/", True)
    __floordiv__ = _arith_method("//", False)
    __rfloordiv__ = _arith_method("//", True)
    __mod__ = _arith_method("%", False)
    __rmod__ = _arith_method("%", True)

    def __divmod__(self, o):
        return self // o, self % o

    def __rdivmod__(self, o):
        return o // self, o % self

    def __neg__(self):
        if self.src is not _dim_source:
            return -self.value
        return SymDim(-self.value, ("neg", self.tree), self.src, False)

    def __pos__(self):
        return self

    def __abs__(self):
        if self.nonneg:
            return self
        if self.src is not _dim_source:
            return abs(self.value)
        return SymDim(abs(self.value), ("abs", self.tree), self.src, True)

    def _rounded(self, op):
        if type(self.value) is int:
            return self  # (an int size rounds to itself)
        value = _UNARY[op](self.value)
        if self.src is not _dim_source:
            return value
        return SymDim(value, (op, self.tree), self.src, self.nonneg)

    def __floor__(self):
        return self._rounded("floor")

    def __ceil__(self):
        return self._rounded("ceil")

    def __trunc__(self):
        return self._rounded("trunc")

    def __round__(self, ndigits=None):
        if ndigits is None:
            return self._rounded("round")
        return round(self._escape("round(value, ndigits)"), ndigits)

    # ----- everything else: the plain value, guarded -----
    def _plain(self, other, fn, reverse=False):
        if _is_tensor(other):
            return NotImplemented
        a = self._escape("arithmetic (**, bit operations)")
        if type(other) is SymDim:
            other = other._escape("arithmetic (**, bit operations)")
        return fn(other, a) if reverse else fn(a, other)

    def __pow__(self, o, mod=None):
        return self._plain(o, lambda a, b: pow(a, b, mod))

    def __rpow__(self, o):
        return self._plain(o, lambda a, b: a ** b, True)

    def __and__(self, o):
        return self._plain(o, lambda a, b: a & b)

    __rand__ = __and__

    def __or__(self, o):
        return self._plain(o, lambda a, b: a | b)

    __ror__ = __or__

    def __xor__(self, o):
        return self._plain(o, lambda a, b: a ^ b)

    __rxor__ = __xor__

    def __lshift__(self, o):
        return self._plain(o, lambda a, b: a << b)

    def __rshift__(self, o):
        return self._plain(o, lambda a, b: a >> b)

    def __invert__(self):
        return ~self._escape("~")

    # ----- comparisons: a bool, and a guard on the comparison -----
    def _compare(self, other, op):
        if _is_tensor(other):
            return NotImplemented
        if getattr(self.src, "checking", False) and self.src is _dim_source:  # megengine.jit
            # checks a call: it keeps no guards (its ops are compared with the record)
            return _COMPARE[op](self.value, other.value if type(other) is SymDim else other)
        o = self._operand(other)
        if o is None:  # a float, a Tensor, a dim of another recording: compare the value
            b = other._escape("a comparison") if type(other) is SymDim else other
            return _COMPARE[op](self._escape("a comparison"), b)
        result = _COMPARE[op](self.value, o.value)
        if self.src is not _dim_source or self.tree == o.tree:
            return result  # (the same expression: decided whatever the shapes)
        if self.nonneg and type(o.tree) is int and (o.tree < 0 or (o.tree == 0 and op in
                                                                    (">=", "<"))):
            return result  # a size is never negative: decided whatever the shapes
        if o.nonneg and type(self.tree) is int and self.tree < 0:
            return result
        self.src.guard((op, self.tree, o.tree), result, "a comparison (if, min/max, a check)")
        return result

    def __eq__(self, o):
        if not (type(o) is SymDim or _int_like(o) or isinstance(o, (float, np.floating))):
            return NotImplemented  # (a tuple, None...: not equal, no guard needed)
        return self._compare(o, "==")

    def __ne__(self, o):
        if not (type(o) is SymDim or _int_like(o) or isinstance(o, (float, np.floating))):
            return NotImplemented
        return self._compare(o, "!=")

    def __lt__(self, o):
        return self._compare(o, "<")

    def __le__(self, o):
        return self._compare(o, "<=")

    def __gt__(self, o):
        return self._compare(o, ">")

    def __ge__(self, o):
        return self._compare(o, ">=")

    def __bool__(self):
        return self._compare(0, "!=")


def is_dim(v):
    """True for an int `SymDim` (what the engine's shape arguments accept where they take
    ints; a float one is rounded by the caller, ``math.floor(h * 1.5)``)."""
    return type(v) is SymDim and type(v.value) is int


def is_int(v):
    """Whether ``v`` is what an integer argument (a size, an axis, a count, a kernel size)
    accepts: a Python or numpy int, or an int `SymDim` (a size from ``x.shape`` while a dumpable
    trace records). Functions check their int arguments with this, not ``isinstance(v, int)``,
    which refuses a SymDim; they then keep it (an op parameter that holds an expression) or
    read it with `as_int` (a guard)."""
    return isinstance(v, (int, np.integer)) or (type(v) is SymDim and type(v.value) is int)


def as_int(v):
    """``v`` (`is_int`) as a plain Python int: a `SymDim`'s value, which the recording keeps
    as a guard (the function's result is built from it)."""
    return operator.index(v)


def sym_max(a, b, op="max"):
    """``max(a, b)`` (``op`` "min": ``min``) of sizes, a `SymDim` where either is one: the
    expression, not a comparison (which would guard the program to its traced outcome)."""
    if type(a) is not SymDim and type(b) is not SymDim:
        return _BINARY[op](a, b)
    src = (a if type(a) is SymDim else b).src  # (not `a or b`: truth of a SymDim guards it)
    tree = tuple([op] + [v.tree if type(v) is SymDim else v for v in (a, b)])
    value = _BINARY[op](*(v.value if type(v) is SymDim else v for v in (a, b)))
    nonneg = (all if op == "min" else any)(
        v.nonneg if type(v) is SymDim else v >= 0 for v in (a, b))
    return SymDim(value, tree, src, nonneg)


def is_sym(v):
    """True for any `SymDim`, int or float (an operand an op can compute at run time)."""
    return type(v) is SymDim


def same_sizes(a, b):
    """Whether shapes ``a`` and ``b`` are equal at every input shape, decided without a guard:
    equal ints, or SymDims of the same expression. (Sizes equal only at the traced shapes give
    False: a shortcut such as "nothing to broadcast" is then not taken, which costs an op, where
    ``a == b`` would guard the program to the shapes that make them equal.)"""
    if _dim_source is None:  # (no recording: sizes are plain values)
        return tuple(a) == tuple(b)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        tx, ty = type(x) is SymDim, type(y) is SymDim
        if tx or ty:
            if not (tx and ty and x.tree == y.tree):
                if (x.value if tx else x) == (y.value if ty else y):  # (the SymDims decide:
                    _keep_dims(x, y)  # a checked call must hand them out too)
                return False
        elif x != y:
            return False
    return True


def _keep_dims(*dims):
    """Tell the recording (``_dim_source.keep_dims``) that these SymDims decided a branch where
    their values would not have: a checked call of the program hands out SymDims for the sizes
    they come from (it gives plain ints for the sizes no op was built from)."""
    keep = getattr(_dim_source, "keep_dims", None)
    if keep is not None:
        for d in dims:
            if type(d) is SymDim:
                keep(d.tree)


def has_dims(v):
    """Whether ``v`` (an op parameter) holds a `SymDim`, in tuples, lists and slices."""
    t = type(v)
    if t is SymDim:
        return True
    if t is tuple or t is list:
        return any(has_dims(x) for x in v)
    if t is slice:
        return has_dims(v.start) or has_dims(v.stop) or has_dims(v.step)
    return False


def concrete(v):
    """``v`` with each `SymDim` replaced by its value (no guard: the caller keeps the
    expression)."""
    t = type(v)
    if t is SymDim:
        return v.value
    if t is tuple or t is list:
        return t(concrete(x) for x in v)
    if t is slice:
        return slice(concrete(v.start), concrete(v.stop), concrete(v.step))
    return v


def symbolic_shape(tensor, shape):
    """``tensor.shape`` while a dumpable trace records (see above): SymDims when the tensor
    holds a traced value (an argument or a computed value), else the plain `Shape`."""
    src = _dim_source
    slot = src.dim_slot(tensor) if src is not None else None
    if slot is None:
        return Shape(shape)
    src.dims_made = True
    made = getattr(src, "shapes_made", None)  # (megengine.jit's checked calls: a shape is read
    if made is not None:  # several times per value; Shapes and SymDims are immutable)
        got = made.get(slot)
        if got is not None and got[0] == shape:
            sym = got[1]
            if sym[0].src is not src:  # made by an earlier call of the program: this call's
                for d in sym:  # now (what it would make: the same expressions and values)
                    d.src = src
            return sym
        sym = Shape([SymDim(n, ("dim", slot, i), src, True) for i, n in enumerate(shape)])
        made[slot] = (shape, sym)
        return sym
    return Shape(SymDim(n, ("dim", slot, i), src, True) for i, n in enumerate(shape))


def symbolic_size(tensor, size):
    """``tensor.size`` while a dumpable trace records: the product of its `symbolic_shape`
    when that holds SymDims, else ``size`` (the array's, without building a shape: batch
    norm reads ``x.size`` on every call)."""
    src = _dim_source
    if src is None or src.dim_slot(tensor) is None:
        return size
    return math.prod(tensor.shape)


# --------------------------------------------------------------------------------------------
# Shapes as values: x.shape.numpy(), Tensor(x.shape) (see megengine.jit.shape_tensors)
# --------------------------------------------------------------------------------------------

class ShapeArray:
    """``x.shape.numpy()`` while a dumpable trace records: what a 1-d int32 array gives to code
    that builds shapes (``len``, items, slices, ``tolist``, elementwise ``+ - * // %`` with ints
    and other ShapeArrays), its items `SymDim`s, so that ``F.reshape(y, x.shape.numpy())``
    follows the input. Any other use (``np.asarray``, a numpy function, a comparison, text)
    gives the int32 array and guards its sizes. (No ndarray subclass: numpy's C code reads an
    ndarray's numbers without asking, which would fix the traced sizes unnoticed.)"""

    __slots__ = ("items",)

    def __init__(self, items):
        self.items = tuple(items)

    dtype = property(lambda self: np.dtype(np.int32))
    ndim = property(lambda self: 1)
    shape = property(lambda self: (len(self.items),))
    size = property(lambda self: len(self.items))

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index):
        if type(index) is slice:
            return ShapeArray(self.items[index])
        if type(index) is tuple and len(index) == 1:
            return self[index[0]]
        if _int_like(index):
            return self.items[index]
        return np.asarray(self)[index]

    def tolist(self):
        return list(self.items)

    def item(self):
        if len(self.items) != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.items[0]

    def astype(self, dtype, copy=True):
        if np.dtype(dtype).kind in "iu":
            return ShapeArray(self.items)
        return np.asarray(self).astype(dtype)

    def copy(self):
        return ShapeArray(self.items)

    def __array__(self, dtype=None, copy=None):
        return np.array([operator.index(d) for d in self.items], np.int32).astype(
            dtype or np.int32, copy=False)

    def __array_ufunc__(self, ufunc, method, *args, **kwargs):
        args = tuple(np.asarray(a) if type(a) is ShapeArray else a for a in args)
        return getattr(ufunc, method)(*args, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if func is np.prod and len(args) == 1 and not kwargs:
            return math.prod(self.items)
        args = tuple(np.asarray(a) if type(a) is ShapeArray else a for a in args)
        return func(*args, **kwargs)

    def _elementwise(self, other, fn, reverse):
        if type(other) is ShapeArray:
            if len(other) != len(self):
                return fn(np.asarray(self), np.asarray(other))
            pairs = zip(self.items, other.items)
        elif _int_like(other) or is_dim(other):
            pairs = ((a, other) for a in self.items)
        else:  # (a float, an array...: the numbers, guarded)
            mine = np.asarray(self)
            return fn(other, mine) if reverse else fn(mine, other)
        return ShapeArray(fn(b, a) if reverse else fn(a, b) for a, b in pairs)

    __hash__ = None  # (as an ndarray)

    def __getattr__(self, name):  # every other ndarray attribute: of the numbers, guarded
        if name.startswith("_") or not hasattr(np.ndarray, name):  # (hasattr(a, "_data")
            raise AttributeError(name)  # probes must not read the numbers)
        return getattr(np.asarray(self), name)

    def __repr__(self):
        return repr(np.asarray(self))

    __str__ = __repr__


def _sizes_operator(name, reverse):
    fn = getattr(operator, f"__{name}__")
    return lambda self, other: self._elementwise(other, fn, reverse)


def _numbers_operator(name):
    fn = getattr(operator, f"__{name}__")

    def method(self, *other):
        return fn(np.asarray(self), *(np.asarray(o) if type(o) is ShapeArray else o
                                      for o in other))
    return method


def _reflected_operator(name):
    fn = getattr(operator, f"__{name}__")
    return lambda self, other: fn(other, np.asarray(self))


# + - * // % keep sizes (`ShapeArray._elementwise`); a reflected % does not (below)
for _name in ("add", "sub", "mul", "floordiv", "mod"):
    setattr(ShapeArray, f"__{_name}__", _sizes_operator(_name, False))
for _name in ("add", "sub", "mul", "floordiv"):
    setattr(ShapeArray, f"__r{_name}__", _sizes_operator(_name, True))
# what the ShapeArray does not keep as sizes computes on the numbers (guarded), as an ndarray
for _name in ("eq", "ne", "lt", "le", "gt", "ge", "truediv", "pow", "neg", "pos", "abs",
              "invert", "and", "or", "xor", "lshift", "rshift", "matmul"):
    setattr(ShapeArray, f"__{_name}__", _numbers_operator(_name))
for _name in ("truediv", "pow", "mod", "and", "or", "xor", "lshift", "rshift", "matmul"):
    setattr(ShapeArray, f"__r{_name}__", _reflected_operator(_name))


def holds_dims(data):
    """Whether ``data`` (what ``Tensor(data)`` was given) is sizes holding `SymDim`s: a shape,
    a `ShapeArray`, a SymDim, or (nested) lists and tuples of them."""
    return type(data) is ShapeArray or has_dims(tuple(data) if type(data) is Shape else data)


def sizes_tensor(data, dtype, device):
    """``Tensor(data)`` of sizes holding `SymDim`s while a dumpable trace records: a Tensor
    made by an op from the shapes a dumped program runs at (megengine.jit.shape_tensors), or
    None (no such recording, or plain data)."""
    if _dim_source is None or not holds_dims(data):
        return None
    return _dim_source.sizes_tensor(data, dtype, device)


def sizes_of(tensor):
    """The sizes ``tensor`` holds as a numpy object array of `SymDim`s and ints, when a
    dumpable trace records and the tensor was made from shapes (``Tensor(x.shape)``, a concat
    of shape pieces...); else None (read its numbers)."""
    return None if _dim_source is None else _dim_source.sizes_of(tensor)


def dumpable():
    """Whether a dumpable trace (``capture_as_const`` with ``symbolic_shape``) records or checks
    a call now. A size or bound that an op would read from a Tensor is then an input of the op,
    read when the op runs (as upstream's graph takes it: Reshape, Broadcast and Linspace have
    such inputs), instead of a value read to the host that a file would keep for every input."""
    src = _dim_source
    return src is not None and src.prog.symbolic_shape
