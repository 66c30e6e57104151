"""Single API calls drawn at random and run on this checkout and on upstream MegEngine 1.13:
``python -m tests.fuzz.upstream_calls --upstream PYTHON [--seeds N] [--start S] [--record F]``.

Each seed draws one call: an element-wise function, an operator with Tensor or Python-number
operands (or its augmented assignment, ``x += y``, with what a second name for ``x`` sees), a
reduction, a shape or indexing operation (``x[idx]``, ``x[idx] = v``), a creation function, a
layer function or a loss, a Tensor method or property, ``mge.tensor`` of Python values, a layer
of ``megengine.module`` built with drawn arguments and loaded with drawn weights, a small
network through ``quantize_qat`` (a preset QConfig), training and eval passes and ``quantize``,
an optimizer stepped a few times on drawn gradients (with gradient clipping, ``MultiStepLR``
and a ``state_dict`` round trip now and then: the parameters after each step and the final
state dict), a ``megengine.data.transform`` (or a ``Compose`` of some) applied to a drawn image
with a mask, boxes or keypoints (NumPy's global generator seeded alike on both sides for the
random ones), a seeded sampler's ``DataLoader`` batches, a call under ``amp.autocast()`` or by
``jit.trace`` (the second, checked call), or a few training steps of a small network (a loss, a
GradManager, an optimizer: each step's loss and the final state, compared to 10x the
tolerance); in one seed of seven a call of the differentiable kinds runs under a GradManager
attached to its float32 inputs (and, for a layer, its parameters), and each one's gradient of a
weighted sum of the outputs joins the result (compared to 10x the tolerance), over the dtypes
upstream programs use (float32 mostly, float16, int8/16/32, uint8, bool), shapes 0-d to 4-d
(empty ones now and then) and values that include zeros, NaN and infinities. The call runs here
and under ``PYTHON``, an interpreter with upstream installed (docs/measurements.rst), and the
results must agree: the same dtype, shape and values (NaN where NaN; float32 to 1e-5 and
float16 to 1e-2 of the larger of 1 and the result's largest magnitude), or an error on both
sides. Upstream is the oracle: what a MegEngine program computes with these calls. A call that
only upstream refuses is counted, not failed (no upstream program makes it); a difference that
docs/compatibility.rst documents is named by `known` and counted; what upstream computes in
ways this fork does not draw on purpose is listed above `FLOAT16_KEPT`.

``--record FILE`` also writes the calls and upstream's answers (JSON); CI compares this
checkout with such a record (tests/fuzz/test_upstream_calls.py). Without ``--upstream`` the
calls run here only, which checks that each drawn call runs.

This file imports only numpy at its top: the upstream side runs it by path (``--serve``)."""
import contextlib
import operator
import pickle
import struct
import subprocess
import sys

import numpy as np

FLOATS = ("float32", "float16")
INTS = ("int32", "int16", "int8", "uint8")
DTYPES = ("float32",) * 5 + ("float16", "int32", "int32", "int16", "int8", "uint8", "bool")

# Not drawn, on purpose: a Python int outside the tensor's dtype (promotes here, wraps upstream:
# docs/compatibility.rst), integer division by zero and negative integer powers (upstream's
# value is what its kernel leaves), NaN or infinite divisors of ``//`` and ``%``, float64
# (upstream stores it as float32), None in the index of ``x[idx] = v`` (upstream's x gains that
# axis: measured), argmax / argmin of bools (upstream's answers are addresses: measured).
# Drawn, and told apart by `known` when the results differ as docs/compatibility.rst says:
FLOAT16_KEPT = {"F.mean", "T.mean", "F.var", "F.std", "F.atan", "F.nn.l1_loss",
                "F.nn.square_loss", "F.nn.interpolate", "F.nn.binary_cross_entropy",
                "F.nn.cross_entropy", "F.nn.hinge_loss"}
ZERO_D_KEPT = {"F.equal", "F.not_equal", "F.less", "F.less_equal", "F.greater",
               "F.greater_equal", "F.full_like", "F.ones_like", "F.zeros_like", "op.lt",
               "op.le", "op.eq", "op.ne", "op.gt", "op.ge", "F.isnan", "F.isinf"}


# ----- values crossing between the two interpreters (no numpy pickles: numpy 2 / numpy 1) -----

def enc_array(a):
    a = np.array(a, order="C")  # (not ascontiguousarray, which makes a 0-d array 1-d)
    return ("t", a.dtype.name, tuple(int(n) for n in a.shape), a.tobytes())


def dec_array(e):
    _, dtype, shape, raw = e
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


# ----- drawing a call -----

class Draw:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    def r(self):
        return float(self.rng.random())

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def int(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def shape(self, lo=0, hi=3, empty=True):
        nd = self.int(lo, hi)
        low = 0 if empty and self.r() < 0.05 else 1
        return tuple(self.int(low, 4) for _ in range(nd))

    def values(self, shape, dtype, lo=-3.0, hi=3.0, special=True, ties=True):
        """Random values of ``dtype``; floats include NaN, infinities and signed zeros now and
        then (``special``), and are rounded to halves in 3 draws of 10 (``ties``: the inputs of
        a normalisation are not, since a group of equal values has no scale to divide by and
        both engines' results there are rounding)."""
        rng = self.rng
        if dtype == "bool":
            return rng.random(shape) < 0.5
        if dtype in INTS:
            lo_i, hi_i = (0, 9) if dtype == "uint8" else (int(lo) - 2, int(hi) + 2)
            return rng.integers(lo_i, hi_i + 1, size=shape).astype(dtype)
        a = rng.uniform(lo, hi, size=shape)
        if rng.random() < 0.3 and ties:  # ties and exact values: halves, integers, zeros
            a = np.round(a * 2) / 2
        if special and a.size and rng.random() < 0.1:
            flat = a.reshape(-1)
            for _ in range(self.int(1, 2)):
                flat[self.int(0, a.size - 1)] = self.pick([np.nan, np.inf, -np.inf, 0.0, -0.0])
        return a.astype(dtype)

    def tensor(self, shape=None, dtype=None, **kw):
        shape = self.shape() if shape is None else shape
        dtype = self.pick(DTYPES) if dtype is None else dtype
        return enc_array(self.values(shape, dtype, **kw))

    def broadcastable(self, shape):
        """A shape that broadcasts with ``shape``: trailing dims, some of them 1."""
        keep = shape[self.int(0, len(shape)):] if shape else ()
        return tuple(1 if self.r() < 0.3 else n for n in keep)

    def axis(self, ndim, none=True, tuples=True):
        choices = ([None] if none else []) + (list(range(-ndim, ndim)) if ndim else [])
        if tuples and ndim >= 2 and self.r() < 0.2:
            return tuple(sorted({self.int(0, ndim - 1) for _ in range(2)}))
        return self.pick(choices) if choices else None

    def scalar(self, dtype):
        """A Python scalar that the tensor's dtype holds (upstream wraps one it does not)."""
        if dtype == "bool":
            return self.pick([True, False, 1, 2.5])
        if dtype == "uint8":
            return self.pick([0, 1, 2, 3, 0.5, 2.0])
        if dtype in INTS:
            return self.pick([-2, -1, 0, 1, 3, 0.5, -1.5, 2.0, True])
        return self.pick([-2, 0, 1, 3, 0.5, -1.5, 2.0, 1e-3, True])


UNARY = ("abs neg exp expm1 log log1p sqrt square floor ceil round sin cos tan asin acos atan "
         "sinh cosh tanh asinh acosh atanh sigmoid relu relu6 silu gelu hsigmoid hswish "
         "softplus logsigmoid sign isnan isinf logical_not").split()
BINARY = ("add sub mul div floor_div mod pow maximum minimum equal not_equal less less_equal "
          "greater greater_equal logical_and logical_or logical_xor atan2 left_shift "
          "right_shift logaddexp").split()
OPERATORS = "add sub mul truediv floordiv mod pow lt le eq ne gt ge and_ or_ xor".split()
REDUCTIONS = "sum mean max min prod argmax argmin norm var std logsumexp".split()
INT_ONLY = {"left_shift", "right_shift", "and_", "or_", "xor"}
LOGICAL = {"logical_and", "logical_or", "logical_xor", "logical_not"}
DIVISIONS = {"floor_div", "mod", "floordiv", "div", "truediv"}


def _unary(d):
    name = d.pick(UNARY)
    dtype = "bool" if name in LOGICAL else d.pick(DTYPES)
    return ("F." + name, [d.tensor(dtype=dtype)], {})


def _operand_pair(d, name):
    shape = d.shape()
    if name in INT_ONLY:
        dtypes = [d.pick(INTS[:3])] * 2 if name in ("left_shift", "right_shift") else \
            [d.pick(INTS + ("bool",))] * 2
    elif name in LOGICAL:
        dtypes = ["bool", "bool"]
    else:
        first = d.pick(DTYPES)
        dtypes = [first, first if d.r() < 0.6 else d.pick(DTYPES)]
    a = d.values(shape, dtypes[0])
    b_shape = d.broadcastable(shape)
    if d.r() < 0.3:
        shape, b_shape = b_shape, shape
        a = d.values(shape, dtypes[0])
    b = d.values(b_shape, dtypes[1], special=name not in DIVISIONS)
    if name in ("left_shift", "right_shift"):
        b = np.abs(b) % 4
        a = np.abs(a)
    if name in DIVISIONS or name == "pow":
        if b.dtype.kind in "iub":  # integer divisions by zero, negative integer powers: KNOWN
            b = np.where(b == 0, 1, np.abs(b) if name == "pow" else b).astype(b.dtype)
            if name == "pow":
                b = np.minimum(b, 3).astype(b.dtype)
    return a, b


def _binary(d):
    name = d.pick(BINARY)
    a, b = _operand_pair(d, name)
    if d.r() < 0.3 and name not in INT_ONLY | LOGICAL | {"atan2", "logaddexp"}:
        s = d.scalar(a.dtype.name)
        if name in DIVISIONS and a.dtype.kind in "iub" and s in (0, 0.0, False):
            s = 2
        if name == "pow" and a.dtype.kind in "iub" and (type(s) is not int or s < 0):
            s = 2
        return ("F." + name, [enc_array(a), ("v", s)] if d.r() < 0.7 else
                [("v", s), enc_array(a)], {})
    return ("F." + name, [enc_array(a), enc_array(b)], {})


def _operator(d):
    name = d.pick(OPERATORS)
    a, b = _operand_pair(d, {"truediv": "div", "floordiv": "floor_div"}.get(name, name))
    if d.r() < 0.4 and name not in INT_ONLY:
        s = d.scalar(a.dtype.name)
        if name in DIVISIONS and a.dtype.kind in "iub" and s in (0, 0.0, False):
            s = 2
        if name == "pow" and (type(s) is not int or s < 0):
            s = 2
        args = [enc_array(a), ("v", s)] if d.r() < 0.6 else [("v", s), enc_array(a)]
        if name in DIVISIONS and args[0][0] == "v" and a.dtype.kind in "iub":
            args = args[::-1]  # (a Python number divided by an int tensor holding 0: KNOWN)
        if name == "pow" and args[0][0] == "v":
            args = args[::-1]
        return (_augmented(d, name, args), args, {})
    args = [enc_array(a), enc_array(b)]
    return (_augmented(d, name, args), args, {})


AUGMENTED = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and_", "or_", "xor"}
AUGMENTED_NAMES = {"op.i" + name.rstrip("_") for name in AUGMENTED}


def _plain(name):
    """The operator of an augmented assignment's name (``op.imod``: ``op.mod``), else name."""
    if name not in AUGMENTED_NAMES:
        return name
    op = name[4:]
    return "op." + (op + "_" if op in ("and", "or") else op)


def _augmented(d, name, args):
    """``op.NAME``, or now and then (a Tensor on the left) the augmented assignment
    ``op.iNAME`` (``x += y``), whose result also holds what a second name for ``x`` sees."""
    if name in AUGMENTED and args[0][0] == "t" and d.r() < 0.5:
        return "op.i" + name.rstrip("_")  # (one of AUGMENTED_NAMES)
    return "op." + name


def _reduction(d):
    name = d.pick(REDUCTIONS)
    shape = d.shape(0, 3, empty=False)
    dtype = d.pick(FLOATS[:1] * 3 + FLOATS + ("int32", "int8") +
                   (() if name in ("argmax", "argmin") else ("bool",)) if name not in
                   ("norm", "var", "std", "logsumexp") else FLOATS)
    x = d.tensor(shape, dtype, lo=0.5 if name == "prod" else -3.0, hi=1.5 if name == "prod"
                 else 3.0)
    kw = {}
    if name in ("argmax", "argmin"):
        axis = d.axis(len(shape), tuples=False)
    else:
        axis = d.axis(len(shape))
    if axis is not None or d.r() < 0.5:
        kw["axis"] = axis
    if d.r() < 0.5:
        kw["keepdims"] = bool(d.r() < 0.5)
    if name == "norm" and d.r() < 0.5:
        kw["ord"] = d.pick([1, 2, 3, float("inf")])
    if name == "logsumexp" and kw.get("axis") is None:  # (upstream's axis has no default)
        kw["axis"] = d.int(0, len(shape) - 1) if shape else 0
    if d.r() < 0.3 and name in ("sum", "mean", "max", "min", "prod"):
        return ("T." + name, [x], kw)
    return ("F." + name, [x], kw)


def _factor(d, n):
    """A shape with ``n`` elements (-1 in one place now and then)."""
    dims = []
    while n > 1 and len(dims) < 3:
        divs = [k for k in range(2, n + 1) if n % k == 0]
        k = d.pick(divs)
        dims.append(k)
        n //= k
    dims.append(n)
    dims = [int(v) for v in d.rng.permutation(dims)]
    if len(dims) > 1 and d.r() < 0.3:
        dims[d.int(0, len(dims) - 1)] = -1
    return tuple(dims)


def _shape_op(d):
    kind = d.pick(["reshape", "transpose", "flatten", "expand_dims", "squeeze", "broadcast_to",
                   "concat", "stack", "split", "tile", "repeat", "roll", "copy", "astype",
                   "clip", "where", "cumsum", "sort", "argsort", "topk", "gather", "cond_take",
                   "one_hot", "zeros_like", "ones_like", "full_like", "swapaxes", "diag",
                   "flip_T"])
    dtype = d.pick(DTYPES)
    shape = d.shape(1, 3)
    x = d.tensor(shape, dtype)
    nd = len(shape)
    if kind == "reshape":
        return ("F.reshape", [x, ("v", _factor(d, int(np.prod(shape))))], {}) if np.prod(shape) \
            else ("F.reshape", [x, ("v", (0, -1) if d.r() < 0.5 else shape[::-1])], {})
    if kind == "transpose":
        return ("F.transpose", [x, ("v", tuple(int(i) for i in d.rng.permutation(nd)))], {})
    if kind == "flatten":
        start = d.int(0, nd - 1)
        return ("F.flatten", [x], {"start_axis": start, "end_axis": d.pick([-1, start])})
    if kind == "expand_dims":
        return ("F.expand_dims", [x, ("v", d.int(-nd - 1, nd))], {})
    if kind == "squeeze":
        shape = tuple(1 if d.r() < 0.5 else n for n in shape)
        ones = [i for i, n in enumerate(shape) if n == 1]
        axis = d.pick(ones) if ones and d.r() < 0.6 else None
        return ("F.squeeze", [d.tensor(shape, dtype)], {} if axis is None else {"axis": axis})
    if kind == "broadcast_to":
        shape = tuple(1 if d.r() < 0.5 else n for n in shape)
        target = tuple(d.int(2, 3) if n == 1 and d.r() < 0.7 else n for n in shape)
        if d.r() < 0.3:
            target = (2,) + target
        return ("F.broadcast_to", [d.tensor(shape, dtype), ("v", target)], {})
    if kind in ("concat", "stack"):
        axis = d.int(0, nd - 1) if kind == "concat" else d.int(0, nd)
        parts = []
        for _ in range(d.int(1, 3)):
            s = list(shape)
            if kind == "concat":
                s[axis] = d.int(0 if d.r() < 0.1 else 1, 3)
            parts.append(d.tensor(tuple(s), dtype if d.r() < 0.8 else d.pick(DTYPES)))
        return ("F." + kind, [("L", parts)], {"axis": axis})
    if kind == "split":
        axis = d.int(0, nd - 1)
        n = shape[axis]
        if d.r() < 0.5 and n:
            sections = d.pick([k for k in range(1, n + 1) if n % k == 0])
        else:
            sections = sorted({d.int(0, n) for _ in range(d.int(1, 2))})
        return ("F.split", [x, ("v", sections)], {"axis": axis})
    if kind == "tile":
        return ("F.tile", [x, ("v", tuple(d.int(1, 2) for _ in range(d.int(nd, nd + 1))))], {})
    if kind == "repeat":
        kw = {"axis": d.int(0, nd - 1)} if d.r() < 0.7 else {}
        return ("F.repeat", [x, ("v", d.int(1, 3))], kw)
    if kind == "roll":
        if d.r() < 0.5:
            return ("F.roll", [x, ("v", d.int(-3, 3))], {})
        return ("F.roll", [x, ("v", d.int(-3, 3))], {"axis": d.int(-nd, nd - 1)})
    if kind == "copy":
        return ("F.copy", [x], {})
    if kind == "astype":
        return ("T.astype", [x, ("v", d.pick(DTYPES))], {})
    if kind == "clip":
        lo, hi = sorted([d.scalar(dtype), d.scalar(dtype)])
        kw = {"lower": lo, "upper": hi} if d.r() < 0.6 else d.pick([{"lower": lo}, {"upper": hi}])
        if dtype == "bool":
            x = d.tensor(shape, "float32")
        return ("F.clip", [x], kw)
    if kind == "where":
        other = d.pick(DTYPES[:6])
        return ("F.where", [d.tensor(shape, "bool"), d.tensor(shape, other),
                            d.tensor(d.broadcastable(shape), other)], {})
    if kind == "cumsum":
        return ("F.cumsum", [d.tensor(shape, d.pick(("float32", "int32")))],
                {"axis": d.int(0, nd - 1)})
    if kind in ("sort", "argsort"):
        sh = shape[:2]
        return ("F." + kind, [d.tensor(sh, d.pick(("float32", "int32")), special=False)],
                {"descending": bool(d.r() < 0.5)})
    if kind == "topk":
        sh = shape[:2]
        k = d.int(1, sh[-1]) if sh[-1] else 1
        kw = {"descending": bool(d.r() < 0.5)}
        if d.r() < 0.3:
            kw["kth_only"] = True
        return ("F.topk", [d.tensor(sh, "float32", special=False), ("v", k)], kw)
    if kind == "gather":
        axis = d.int(0, nd - 1)
        if not shape[axis]:
            return ("F.copy", [x], {})
        # index sizes outside `axis` as the input's: upstream 1.13 reads wrong elements for
        # a smaller index there (measured: axis 0 of (1, 4, 4) by (1, 4, 1) zeros gave 0s)
        idx_shape = tuple(d.int(1, n) if i == axis else n for i, n in enumerate(shape))
        idx = d.rng.integers(0, shape[axis], size=idx_shape).astype("int32")
        return ("F.gather", [x, ("v", axis), enc_array(idx)], {})
    if kind == "cond_take":
        return ("F.cond_take", [d.tensor(shape, "bool"), x], {})
    if kind == "one_hot":
        n = d.int(1, 5)
        return ("F.one_hot", [enc_array(d.rng.integers(0, n, size=shape[:2]).astype("int32")),
                              ("v", n)], {})
    if kind in ("zeros_like", "ones_like"):
        return ("F." + kind, [x], {})
    if kind == "full_like":
        return ("F.full_like", [x, ("v", d.scalar(dtype))], {})
    if kind == "swapaxes":
        return ("F.swapaxes", [x, ("v", d.int(-nd, nd - 1)), ("v", d.int(-nd, nd - 1))], {})
    if kind == "diag":
        sh = shape[:2] if d.r() < 0.6 else shape[:1]
        return ("F.diag", [d.tensor(sh, dtype)], {"k": d.int(-1, 1)})
    return ("T.T", [d.tensor(shape[:2], dtype)], {})  # flip_T: the .T property


def _creation(d):
    kind = d.pick(["arange", "linspace", "eye", "full", "zeros", "ones"])
    dtype = d.pick(("float32", "int32", "float16"))
    if kind == "arange":
        start = d.pick([0, 1, -2, 0.5])
        stop = start + d.pick([3, 5, 2.5, -2])
        step = d.pick([1, 0.5, 2]) * (1 if stop >= start else -1)
        args = [("v", start), ("v", stop), ("v", step)][: d.int(2, 3)]
        if len(args) == 2 and stop < start:
            args = [("v", stop), ("v", start)]
        return ("F.arange", args, {"dtype": dtype} if d.r() < 0.5 else {})
    if kind == "linspace":
        return ("F.linspace", [("v", d.pick([0, -1, 0.5])), ("v", d.pick([1, 3, 2.5])),
                               ("v", d.int(1, 6))], {"dtype": dtype} if d.r() < 0.5 else {})
    if kind == "eye":
        args = [("v", d.int(1, 4))] + ([("v", d.int(1, 4))] if d.r() < 0.5 else [])
        return ("F.eye", args, {"dtype": dtype} if d.r() < 0.5 else {})
    shape = d.shape(0, 3)
    shape_arg = shape if d.r() < 0.8 or len(shape) != 1 else shape[0]
    if kind == "full":
        kw = {"dtype": dtype} if d.r() < 0.5 else {}
        return ("F.full", [("v", shape_arg), ("v", d.scalar("float32"))], kw)
    return ("F." + kind, [("v", shape_arg)], {"dtype": dtype} if d.r() < 0.5 else {})


def _nn(d):
    kind = d.pick(["softmax", "logsoftmax", "leaky_relu", "normalize", "pad", "linear",
                   "matmul", "dot", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                   "adaptive_max_pool2d", "conv2d", "layer_norm", "l1_loss", "square_loss",
                   "binary_cross_entropy", "cross_entropy", "hinge_loss", "pixel_shuffle",
                   "interpolate", "prelu", "embedding"])
    dt = "float32" if d.r() < 0.85 else "float16"
    if kind in ("softmax", "logsoftmax"):
        shape = d.shape(1, 3, empty=False)
        kw = {"axis": d.int(-len(shape), len(shape) - 1)} if d.r() < 0.7 or \
            kind == "logsoftmax" else {}  # (logsoftmax's axis has no default)
        return ("F.nn." + kind, [d.tensor(shape, dt)], kw)
    if kind == "leaky_relu":
        return ("F.nn.leaky_relu", [d.tensor(None, dt)], {"negative_slope": d.pick([0.01, 0.2])})
    if kind == "normalize":
        shape = d.shape(1, 3, empty=False)
        kw = {"axis": d.int(0, len(shape) - 1)} if d.r() < 0.7 else {}
        if d.r() < 0.4:
            kw["ord"] = d.pick([1, 2, 3])
        return ("F.normalize", [d.tensor(shape, "float32", special=False)], kw)
    if kind == "pad":
        shape = d.shape(1, 3, empty=False)
        width = tuple((d.int(0, 2), d.int(0, 2)) for _ in shape)
        mode = d.pick(["constant", "constant", "edge", "reflect"])
        kw = {"mode": mode}
        if mode == "constant" and d.r() < 0.5:
            kw["constant_value"] = d.pick([0.0, 1.5, -1.0])
        if mode == "reflect":
            width = tuple((min(a, n - 1), min(b, n - 1)) for (a, b), n in zip(width, shape))
        return ("F.nn.pad", [d.tensor(shape, dt), ("v", width)], kw)
    if kind == "linear":
        n, i, o = d.int(1, 3), d.int(1, 4), d.int(1, 4)
        args = [d.tensor((n, i), dt, special=False), d.tensor((o, i), dt, special=False)]
        if d.r() < 0.6:
            args.append(d.tensor((o,), dt, special=False))
        return ("F.nn.linear", args, {})
    if kind == "matmul":
        a = d.shape(1, 3, empty=False)
        k = a[-1]
        b = (k,) if d.r() < 0.2 else a[:-2][-1:] + (k, d.int(1, 3)) if len(a) >= 2 else \
            (k, d.int(1, 3))
        kw = {}
        if d.r() < 0.3 and len(a) >= 2 and len(b) >= 2:
            kw["transpose_b"] = True
            b = b[:-2] + (b[-1], b[-2])
        return ("F.matmul", [d.tensor(a, d.pick(("float32", dt, "int32"))),
                             d.tensor(b, "float32")], kw)
    if kind == "dot":
        n = d.int(1, 5)
        return ("F.dot", [d.tensor((n,), dt), d.tensor((n,), dt)], {})
    if kind in ("max_pool2d", "avg_pool2d"):
        shape = (d.int(1, 2), d.int(1, 2), d.int(2, 6), d.int(2, 6))
        k = d.int(1, 3)
        kw = {"stride": d.int(1, 2), "padding": d.int(0, k // 2)}
        if kind == "avg_pool2d" and d.r() < 0.5:
            kw["mode"] = d.pick(["average", "average_count_exclude_padding"])
        # float32: upstream 1.13's CPU pooling of float16 gives wrong values (measured:
        # max_pool2d of arange(16) as (1, 1, 4, 4) float16 by 2 gives zeros)
        return ("F.nn." + kind, [d.tensor(shape, "float32", special=False), ("v", k)], kw)
    if kind.startswith("adaptive"):
        shape = (d.int(1, 2), d.int(1, 2), d.int(1, 7), d.int(1, 7))
        oshp = d.pick([(1, 1), (2, 2), (2, 3), 3])
        return ("F.nn." + kind, [d.tensor(shape, "float32", special=False), ("v", oshp)], {})
    if kind == "conv2d":
        n, c, o, g = d.int(1, 2), 2, d.int(1, 2) * 2, d.pick([1, 1, 2])
        k = d.int(1, 3)
        x = d.tensor((n, c, d.int(k, 6), d.int(k, 6)), "float32", special=False)
        w = d.tensor((o, c // g, k, k), "float32", special=False)
        args = [x, w] + ([d.tensor((1, o, 1, 1), "float32")] if d.r() < 0.5 else [])
        return ("F.nn.conv2d", args, {"stride": d.int(1, 2), "padding": d.int(0, 1),
                                       "dilation": d.int(1, 2) if k > 1 else 1, "groups": g})
    if kind == "layer_norm":
        shape = d.shape(2, 3, empty=False)
        norm = shape[-1:] if d.r() < 0.6 else shape[-2:]
        affine = d.r() < 0.5
        args = [d.tensor(shape, "float32", special=False, ties=False), ("v", norm),
                ("v", affine)]
        if affine:
            args += [d.tensor(norm, "float32"), d.tensor(norm, "float32")]
        return ("F.nn.layer_norm", args, {})
    if kind in ("l1_loss", "square_loss"):
        shape = d.shape(1, 3, empty=False)
        return ("F.nn." + kind, [d.tensor(shape, dt), d.tensor(d.broadcastable(shape) or
                                                               shape, dt)], {})
    if kind == "binary_cross_entropy":
        shape = d.shape(1, 3, empty=False)
        logits = d.r() < 0.6
        pred = d.tensor(shape, "float32", special=False, lo=-3 if logits else 0.05,
                        hi=3 if logits else 0.95)
        label = enc_array(d.rng.integers(0, 2, size=shape).astype("float32"))
        return ("F.nn.binary_cross_entropy", [pred, label], {"with_logits": logits})
    if kind == "cross_entropy":
        n, c = d.int(1, 4), d.int(2, 5)
        extra = (d.int(1, 3),) if d.r() < 0.2 else ()
        logits = d.r() < 0.7
        pred = d.values((n, c) + extra, "float32", special=False)
        if not logits:
            pred = np.exp(pred) / np.exp(pred).sum(1, keepdims=True)
        label = d.rng.integers(0, c, size=(n,) + extra).astype("int32")
        kw = {"with_logits": logits}
        if d.r() < 0.3:
            kw["label_smooth"] = d.pick([0.1, 0.3])
        return ("F.nn.cross_entropy", [enc_array(pred.astype("float32")), enc_array(label)], kw)
    if kind == "hinge_loss":
        shape = (d.int(1, 3), d.int(1, 4))
        label = enc_array(np.where(d.rng.random(shape) < 0.5, -1.0, 1.0).astype("float32"))
        return ("F.nn.hinge_loss", [d.tensor(shape, "float32", special=False), label],
                {"norm": d.pick(["L1", "L2"])})
    if kind == "pixel_shuffle":
        r = d.int(1, 2)
        shape = (d.int(1, 2), r * r * d.int(1, 2), d.int(1, 3), d.int(1, 3))
        return ("F.nn.pixel_shuffle", [d.tensor(shape, dt), ("v", r)], {})
    if kind == "interpolate":
        mode = d.pick(["nearest", "bilinear", "linear"])
        shape = (1, 2, d.int(1, 5)) if mode == "linear" else (1, 2, d.int(1, 5), d.int(1, 5))
        kw = {"mode": mode}
        if d.r() < 0.5:
            kw["size"] = tuple(d.int(1, 7) for _ in shape[2:])
        else:
            kw["scale_factor"] = d.pick([2.0, 0.5, 3.0]) if mode == "nearest" else 2.0
        if mode != "nearest" and d.r() < 0.5:
            kw["align_corners"] = bool(d.r() < 0.5)
        return ("F.nn.interpolate", [d.tensor(shape, "float32", special=False)], kw)
    if kind == "prelu":
        shape = (d.int(1, 2), d.int(1, 3), d.int(1, 3))
        w = d.tensor((shape[1],) if d.r() < 0.6 else (1,), "float32")
        return ("F.nn.prelu", [d.tensor(shape, "float32"), w], {})
    n = d.int(2, 5)
    idx = enc_array(d.rng.integers(0, n, size=d.shape(1, 2, empty=False)).astype("int32"))
    return ("F.nn.embedding", [idx, d.tensor((n, d.int(1, 3)), "float32")], {})


def _index(d, shape, new_axes=True):
    """An index for an array of ``shape``: ints, slices, None (``new_axes``), Ellipsis, an int
    or bool array."""
    items, dim = [], 0
    while dim < len(shape) and len(items) < 4 and d.r() < 0.8:
        n = shape[dim]
        k = d.r()
        if k < 0.25 and n:
            items.append(("i", d.int(-n, n - 1)))
        elif k < 0.55:
            a, b = d.pick([None, 0, 1, -1, 2]), d.pick([None, -1, 3, 2, 10])
            items.append(("s", a, b, d.pick([None, None, 1, 2, -1])))
        elif k < 0.65:
            if new_axes:
                items.append(("n",))
            continue
        elif k < 0.72 and not any(it[0] == "e" for it in items):
            items.append(("e",))
            dim = len(shape) - sum(1 for it in items if it[0] in "isab") + dim
            continue
        elif k < 0.88 and n:
            items.append(("a", enc_array(d.rng.integers(-n, n, size=d.int(1, 3)))))
        else:
            items.append(("b", enc_array(d.rng.random(n) < 0.5)))
        dim += 1
    return items


def _indexing(d):
    shape = d.shape(1, 3, empty=False)
    dtype = d.pick(DTYPES)
    x = d.tensor(shape, dtype)
    if d.r() < 0.6:
        return ("getitem", [x, ("I", _index(d, shape))], {})
    idx = _index(d, shape, new_axes=False)
    return ("setitem", [x, ("I", idx), ("v", d.scalar(dtype)) if d.r() < 0.6
                        else d.tensor((), dtype)], {})


def _methods(d):
    """Tensor methods and properties, and Python's protocols on a Tensor."""
    kind = d.pick(["reshape", "transpose", "flatten", "squeeze", "shape", "ndim", "size",
                   "dtype", "item", "tolist", "numpy", "len", "neg", "pos", "abs", "invert",
                   "int", "float", "bool", "round", "sum", "max", "min", "mean", "prod"])
    dtype = d.pick(DTYPES)
    shape = d.shape(0, 3)
    x = d.tensor(shape, dtype)
    n = int(np.prod(shape))
    if kind == "reshape":
        target = _factor(d, n) if n else (0,)
        return ("T.reshape", [x] + [("v", k) for k in target] if d.r() < 0.5 else
                [x, ("v", target)], {})
    if kind == "transpose":
        perm = tuple(int(i) for i in d.rng.permutation(len(shape)))
        return ("T.transpose", [x] + [("v", k) for k in perm], {})
    if kind == "squeeze":
        shape = tuple(1 if d.r() < 0.5 else k for k in shape)
        return ("T.squeeze", [d.tensor(shape, dtype)], {})
    if kind in ("item", "int", "float", "bool"):
        x = d.tensor(d.pick([(), (1,), (1, 1), (2,)]), dtype)
    if kind in ("shape", "ndim", "size", "dtype"):
        return ("A." + kind, [x], {})
    if kind in ("item", "tolist", "numpy", "flatten"):
        return ("T." + kind, [x], {})
    if kind in ("len", "int", "float", "bool", "abs", "round"):
        return ("B." + kind, [x], {})
    if kind in ("neg", "pos", "invert"):
        if kind == "invert":
            x = d.tensor(shape, d.pick(("bool", "int32", "int8", "uint8")))
        return ("op." + kind, [x], {})
    kw = {}
    if shape and d.r() < 0.6:
        kw["axis"] = d.int(-len(shape), len(shape) - 1)
        if d.r() < 0.4:
            kw["keepdims"] = True
    return ("T." + kind, [x], kw)


def _construct(d):
    """``mge.tensor`` / ``mge.Tensor`` of Python values: the dtype it infers or is given."""
    shape = d.shape(0, 2)
    kind = d.pick(["int", "float", "bool", "mixed", "numpy"])
    rng = d.rng
    if kind == "numpy":
        src = d.pick(["float64", "int64", "float32", "int16", "uint8", "bool", "float16"])
        value = ("np", enc_array(d.values(shape, src if src != "float64" else "float32",
                                          special=False).astype(src)))
    else:
        pool = {"int": [0, 1, -3, 7], "float": [0.5, -1.25, 3.0, 0.0], "bool": [True, False],
                "mixed": [1, 2.5, True, -2]}[kind]
        flat = [pool[int(i)] for i in rng.integers(len(pool), size=int(np.prod(shape)))]
        value = ("v", np.array(flat, dtype=object).reshape(shape).tolist() if shape
                 else flat[0])
    kw = {"dtype": d.pick(DTYPES)} if d.r() < 0.3 else {}
    return (d.pick(["M.tensor", "M.Tensor"]), [value], kw)


def _more_nn(d):
    kind = d.pick(["conv_transpose2d", "conv1d", "batch_norm", "group_norm", "instance_norm",
                   "local_response_norm", "indexing_one_hot", "topk_accuracy",
                   "sliding_window", "matinv", "meshgrid", "dropout", "nms"])
    if kind == "conv_transpose2d":
        n, c, o, k = d.int(1, 2), d.int(1, 3), d.int(1, 3), d.int(1, 3)
        x = d.tensor((n, c, d.int(1, 4), d.int(1, 4)), "float32", special=False)
        w = d.tensor((c, o, k, k), "float32", special=False)
        stride = d.int(1, 2)
        return ("F.conv_transpose2d", [x, w], {"stride": stride, "padding": d.int(0, k - 1)})
    if kind == "conv1d":
        n, c, o, k = d.int(1, 2), d.int(1, 3), d.int(1, 3), d.int(1, 3)
        x = d.tensor((n, c, d.int(k, 6)), "float32", special=False)
        return ("F.conv1d", [x, d.tensor((o, c, k), "float32", special=False)],
                {"stride": d.int(1, 2), "padding": d.int(0, 1)})
    if kind == "batch_norm":
        c = d.int(1, 3)
        x = d.tensor((d.int(1, 3), c, d.int(1, 3), d.int(1, 3)), "float32", special=False)
        mean = d.tensor((1, c, 1, 1), "float32", special=False)
        var = d.tensor((1, c, 1, 1), "float32", special=False, lo=0.5, hi=2.0)
        w, b = (d.tensor((1, c, 1, 1), "float32", special=False) for _ in range(2))
        return ("F.batch_norm", [x, mean, var, w, b], {"training": False})
    if kind in ("group_norm", "instance_norm"):
        g = d.int(1, 2)
        c = g * d.int(1, 2)
        x = d.tensor((d.int(1, 2), c, d.int(1, 3), d.int(2, 3)), "float32", special=False,
                     ties=False)
        affine = d.r() < 0.5
        args = [x] + ([("v", g)] if kind == "group_norm" else []) + [("v", affine)]
        if affine:
            args += [d.tensor((c,), "float32"), d.tensor((c,), "float32")]
        return ("F." + kind, args, {})
    if kind == "local_response_norm":
        x = d.tensor((1, d.int(1, 6), d.int(1, 3), d.int(1, 3)), "float32", special=False)
        return ("F.local_response_norm", [x], {"kernel_size": d.pick([1, 3, 5]),
                                               "alpha": d.pick([1e-4, 0.5])})
    if kind == "indexing_one_hot":
        n, c = d.int(1, 4), d.int(1, 4)
        idx = enc_array(d.rng.integers(0, c, size=(n,)).astype("int32"))
        return ("F.indexing_one_hot", [d.tensor((n, c), "float32"), idx],
                {"keepdims": bool(d.r() < 0.5)})
    if kind == "topk_accuracy":
        n, c = d.int(1, 5), d.int(2, 6)
        target = enc_array(d.rng.integers(0, c, size=(n,)).astype("int32"))
        return ("F.topk_accuracy", [d.tensor((n, c), "float32", special=False), target],
                {"topk": d.pick([1, 2, (1, 2)])})
    if kind == "sliding_window":
        x = d.tensor((1, d.int(1, 2), d.int(2, 5), d.int(2, 5)), "float32")
        return ("F.sliding_window", [x, ("v", d.int(1, 2))], {"stride": d.int(1, 2),
                                                              "padding": d.int(0, 1)})
    if kind == "matinv":
        n = d.int(1, 3)
        # (diagonally dominant: well conditioned, so float32 rounding stays small)
        a = d.values((d.int(1, 2), n, n), "float32", lo=-1, hi=1, special=False) + \
            4 * np.eye(n, dtype="f4")
        return ("F.matinv", [enc_array(a.astype("float32"))], {})
    if kind == "meshgrid":
        parts = [d.tensor((d.int(1, 3),), "float32") for _ in range(d.int(2, 3))]
        return ("F.meshgrid", parts, {"indexing": d.pick(["xy", "ij"])})
    if kind == "dropout":
        return ("F.nn.dropout", [d.tensor(None, "float32"), ("v", 0.5)], {"training": False})
    n = d.int(1, 6)
    xy = d.rng.uniform(0, 8, size=(n, 2))
    boxes = np.concatenate([xy, xy + d.rng.uniform(1, 6, size=(n, 2))], 1).astype("float32")
    scores = d.rng.permutation(n).astype("float32") / n  # distinct: no order among ties
    kw = {"max_output": d.int(1, n)} if d.r() < 0.5 else {}
    return ("F.vision.nms", [enc_array(boxes), enc_array(scores), ("v", d.pick([0.3, 0.5,
                                                                                  0.7]))], kw)


def _more_nn2(d):
    """The rarer layer functions: 3-d convolutions, CTC loss, deformable and local
    convolutions, ``scatter``, ``sliding_window_transpose``, ``svd``'s singular values,
    ``general_norm``, ``deformable_psroi_pooling`` and ``region_restricted_conv``."""
    kind = d.pick(["conv3d", "conv_transpose3d", "ctc_loss", "deformable_conv2d",
                   "local_conv2d", "scatter", "sliding_window_transpose", "svd",
                   "general_norm"])
    # the functions drawn since, in a tenth of the calls, by a stream of their own (the calls
    # of the seeds that draw none are those drawn before they were added)
    if np.random.default_rng((d.seed, 2)).random() < 0.1:
        kind = "deformable_psroi_pooling"
    elif np.random.default_rng((d.seed, 3)).random() < 0.1:
        kind = "region_restricted_conv"
    n, c, o, k = d.int(1, 2), d.int(1, 2), d.int(1, 2), d.int(1, 2)
    if kind == "conv3d":
        g = d.pick([1, 1, 2])
        x = d.tensor((n, c * g) + (d.int(k, 4),) * 3, "float32", special=False)
        # (a grouped weight has the groups first, (groups, out, in, k, k, k), as upstream's)
        wshape = (o * g, c) if g == 1 else (g, o, c)
        args = [x, d.tensor(wshape + (k, k, k), "float32", special=False)]
        if d.r() < 0.5:
            args.append(d.tensor((1, o * g, 1, 1, 1), "float32", special=False))
        return ("F.conv3d", args, {"stride": d.int(1, 2), "padding": d.int(0, k - 1),
                                   "groups": g})
    if kind == "conv_transpose3d":
        stride = d.int(1, 2)
        x = d.tensor((n, c) + (d.int(1, 3),) * 3, "float32", special=False)
        args = [x, d.tensor((c, o, k, k, k), "float32", special=False)]
        if d.r() < 0.5:
            args.append(d.tensor((1, o, 1, 1, 1), "float32", special=False))
        return ("F.conv_transpose3d", args, {"stride": stride, "padding": d.int(0, k - 1)})
    if kind == "ctc_loss":
        t, classes, s = d.int(2, 6), d.int(2, 4), d.int(1, 3)
        logits = d.rng.normal(size=(t, n, classes))
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # (upstream: probabilities)
        lengths = [d.int(1, t) for _ in range(n)]
        label_lengths = [d.int(1, min(s, length)) for length in lengths]
        labels = d.rng.integers(1, classes, size=(n, s))  # (0 is the blank)
        return ("F.nn.ctc_loss", [enc_array(probs.astype("float32")),
                                  enc_array(np.array(lengths, "int32")),
                                  enc_array(labels.astype("int32")),
                                  enc_array(np.array(label_lengths, "int32"))],
                {"reduction": d.pick(["mean", "sum", "none"])})
    if kind == "deformable_conv2d":
        h, w = d.int(k, 4), d.int(k, 4)
        oh, ow = h - k + 1, w - k + 1
        args = [d.tensor((n, c, h, w), "float32", special=False),
                d.tensor((o, c, k, k), "float32", special=False),
                d.tensor((n, 2 * k * k, oh, ow), "float32", special=False, lo=-1.5, hi=1.5),
                d.tensor((n, k * k, oh, ow), "float32", special=False, lo=0.0, hi=1.0)]
        if d.r() < 0.5:
            args.append(d.tensor((1, o, 1, 1), "float32", special=False))
        return ("F.deformable_conv2d", args, {})
    if kind == "local_conv2d":
        h, w, stride, g = d.int(k, 4), d.int(k, 4), d.int(1, 2), d.pick([1, 1, 2])
        oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
        # (upstream's weight: (groups, out_h, out_w, in / groups, k, k, out / groups))
        return ("F.local_conv2d",
                [d.tensor((n, c * g, h, w), "float32", special=False),
                 d.tensor((g, oh, ow, c, k, k, o), "float32", special=False)],
                {"stride": stride})
    if kind == "scatter":
        shape = d.shape(1, 3, empty=False)
        axis = d.int(0, len(shape) - 1)
        m = d.int(1, shape[axis])
        # distinct positions along the axis (a repeated one: which write lands is the kernel's)
        index = np.argsort(d.rng.random(shape), axis=axis).take(range(m), axis=axis)
        source = d.tensor(index.shape, "float32")
        return ("F.scatter", [d.tensor(shape, "float32"), ("v", axis),
                              enc_array(index.astype("int32")), source], {})
    if kind == "sliding_window_transpose":
        h, w, stride, pad = d.int(k, 5), d.int(k, 5), d.int(1, 2), d.int(0, 1)
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        return ("F.sliding_window_transpose",
                [d.tensor((n, c, oh, ow, k, k), "float32", special=False), ("v", (h, w)),
                 ("v", k)], {"padding": pad, "stride": stride})
    if kind == "deformable_psroi_pooling":
        h, w, k = d.int(2, 6), d.int(2, 6), d.int(1, 3)
        ph, pw, no_trans = d.int(1, 3), d.int(1, 3), bool(d.r() < 0.3)
        scale = d.pick([1.0, 0.5])
        # upstream's trans is (K or more, 2, ph, pw), read as (K, 2, part, part) rows in memory:
        # a part larger than that reads past its end there (and crashes it now and then)
        part = d.int(1, min(ph, pw))
        lo = d.rng.uniform(-1, np.array([w, h]) / scale, size=(k, 2))
        box = np.concatenate([lo, lo + d.rng.uniform(0, 1.5 * np.array([w, h]) / scale,
                                                      size=(k, 2))], 1)
        box = np.where(np.abs(box - np.round(box)) > 0.45, box + 0.2, box)  # (C's round)
        rois = np.concatenate([d.rng.integers(0, n, size=(k, 1)), box], 1)
        return ("F.nn.deformable_psroi_pooling",
                [d.tensor((n, c, h, w), "float32", special=False),
                 enc_array(rois.astype("float32")),
                 d.tensor((k + d.int(0, 1), 2, ph, pw), "float32", special=False)],
                {"no_trans": no_trans, "part_size": part, "pooled_h": ph, "pooled_w": pw,
                 "sample_per_part": d.int(1, 3), "spatial_scale": scale,
                 "trans_std": d.pick([0.1, 0.3])})
    if kind == "region_restricted_conv":
        # (a grouped weight, groups first; region ids of one dtype; stride 1: upstream's kernels)
        g, dil, pad = d.int(1, 2), d.pick([1, 1, 2]), d.int(0, k - 1)
        h, w = d.int(dil * (k - 1) + 1, 5), d.int(dil * (k - 1) + 1, 5)
        oh, ow = h + 2 * pad - dil * (k - 1), w + 2 * pad - dil * (k - 1)
        ids, regions = d.pick(["int32", "int32", "uint8"]), d.int(1, 3)
        args = [d.tensor((n, g * c, h, w), "float32", special=False),
                d.tensor((g, o, c, k, k), "float32", special=False),
                enc_array(d.rng.integers(0, regions, (n, h, w)).astype(ids)),
                enc_array(d.rng.integers(0, regions, (n, oh, ow)).astype(ids))]
        if d.r() < 0.5:
            args.append(d.tensor((1, g * o, 1, 1), "float32", special=False))
        return ("F.region_restricted_conv", args, {"padding": pad, "dilation": dil,
                                                   "groups": g})
    if kind == "svd":
        shape = d.pick([(), (d.int(1, 2),)]) + (d.int(1, 4), d.int(1, 4))
        # (upstream 1.13's compute_uv=False fails to unpack its own result: measured)
        return ("F.svd", [d.tensor(shape, "float32", special=False, ties=False)], {})
    shape = (n, c + 1, d.int(1, 3))
    axes = d.pick([(-1,), (1, 2), (1,), (0, 2)])
    args = [d.tensor(shape, "float32", special=False, ties=False), ("v", axes)]
    if d.r() < 0.6:  # affine, its weight and bias shaped as the normalised axes
        norm_shape = tuple(shape[a] for a in axes)
        args += [("v", True), d.tensor(norm_shape, "float32", special=False),
                 d.tensor(norm_shape, "float32", special=False)]
    else:
        args.append(("v", False))
    return ("F.nn.general_norm", args, {})


QCONFIGS = ("min_max_fakequant_qconfig", "ema_fakequant_qconfig",
            "ema_lowbit_fakequant_qconfig", "calibration_qconfig", "tqt_qconfig")
QLAYERS = ("Conv2d", "ConvBn2d", "ConvBnRelu2d", "ConvRelu2d", "Linear", "LinearBn1d",
           "LinearBnRelu1d", "LinearRelu")


def _quantized(d):
    """A small network (``QuantStub``, one or two quantizable layers, ``DequantStub``) built with
    drawn weights, converted by ``quantize_qat`` with a drawn preset ``QConfig``, run in
    training mode on 1-3 batches (the observers and TQT scales start from them), then in eval
    mode, then converted by ``quantize`` and run on a batch: the result is every output, each
    a dequantized float32 tensor."""
    import megengine.module as M  # (drawing runs on this side only)

    qconfig = d.pick(QCONFIGS)
    first = d.pick(QLAYERS)
    conv = first.startswith("Conv")
    c, o = d.int(1, 3), d.int(1, 3)
    layers = []
    if conv:
        k = d.int(1, 3)
        layers.append((first, (c, o, k), {"padding": d.int(0, k - 1), "stride": d.int(1, 2)}))
        if d.r() < 0.4:
            layers.append((d.pick(["Conv2d", "ConvRelu2d"]), (o, d.int(1, 2), 1), {}))
        shape = (d.int(1, 2) + (1 if "Bn" in first else 0), c, d.int(k, 4), d.int(k, 4))
    else:
        layers.append((first, (c, o), {}))
        if d.r() < 0.4:
            layers.append((d.pick(["Linear", "LinearRelu"]), (o, d.int(1, 2)), {}))
        shape = (d.int(2, 3), c)
    net = _quantizable(M, layers)
    # (no ties in weights: an all-zero weight has a scale at its 1e-5 floor, and a bias over
    # the product of two such scales overflows upstream's int32: documented, not drawn; no
    # BatchNorm scale of 0, which folds to 0 / 0: NaN on both sides)
    state = _drawn_state(d, net, ties=lambda key: "weight" not in key, signed_bn_scales=True)
    # (and no weight of a layer before a batch norm within 0.1 of 0: beside the layer's bias
    # it leaves a channel of nearly equal values, which the norm divides by their spread, so
    # each side's float32 rounding of their mean grows by |mean| / std. Seed 149,363: weight
    # -1.25e-3 and bias 1.5 gave the norm the same bits on both sides, [1.49812, 1.5025066,
    # 1.5012534], std 1.8e-3; their exact batch norm is 1.60150931, 0.54887994, 0.84961075,
    # this side's each 1.28e-5 above, upstream's 1.9e-5 below: 3.2e-5 apart, neither wrong)
    for key in state:
        if key.endswith(("conv.weight", "linear.weight")):
            w = dec_array(state[key])
            state[key] = enc_array(np.where(np.abs(w) < 0.1, w + np.copysign(
                np.float32(0.1), w), w).astype(w.dtype))
    batches = [d.tensor(shape, "float32", special=False) for _ in range(d.int(2, 4))]
    return ("Q." + qconfig, [("v", layers), ("S", state)] + batches, {})


def _quantizable(M, layers):
    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.quant = M.QuantStub()
            self.body = M.Sequential(*[getattr(M, name)(*args, **kw) for name, args, kw in layers])
            self.dequant = M.DequantStub()

        def forward(self, x):
            return self.dequant(self.body(self.quant(x)))
    return Net()


def _run_quantized(qconfig):
    def run(layers, state, *batches):
        import megengine.module as M
        import megengine.quantization as Q

        net = _quantizable(M, layers)
        net.load_state_dict(state, strict=True)
        qat = Q.quantize_qat(net, qconfig=getattr(Q, qconfig))
        qat.train()
        outs = [qat(x) for x in batches[:-1]]
        qat.eval()
        outs.append(qat(batches[-1]))
        quantized = Q.quantize(qat, inplace=False)
        quantized.eval()  # (upstream's quantized modules refuse to run in training mode)
        outs.append(quantized(batches[-1]))
        return outs
    return run


def _training(d):
    """A few training steps of a small network (convolution or linear layers, batch norm,
    activations, dropout of 0, pooling) with drawn weights: a loss (cross entropy, square,
    binary cross entropy), a GradManager and an optimizer; the result is each step's loss and
    every parameter and buffer after the last step."""
    import megengine.module as M  # (drawing runs on this side only)

    conv = d.r() < 0.5
    c, n = d.int(1, 3), d.int(2, 4)
    layers = []
    if conv:
        # (a bias right before a batch norm has a gradient of rounding noise, which Adam and
        # Adagrad scale to a full step: no bias there, as networks are built)
        width, bn = d.int(1, 3), d.r() < 0.5
        layers.append(("Conv2d", (c, width, d.pick([1, 3])), {"padding": "same_1",
                                                               "bias": not bn}))
        if bn:
            layers.append(("BatchNorm2d", (width,), {"momentum": d.pick([0.9, 0.5])}))
        layers.append((d.pick(["ReLU", "Sigmoid", "LeakyReLU", "GELU"]), (), {}))
        layers.append((d.pick(["AvgPool2d", "MaxPool2d"]), (2,), {}))
        layers.append(("Flatten", (), {}))
        feat, shape = width * 2 * 2, (n, c, 4, 4)
    else:
        width, bn = d.int(2, 4), d.r() < 0.5
        layers.append(("Linear", (c, width), {"bias": not bn and d.r() < 0.8}))
        if bn:
            layers.append(("BatchNorm1d", (width,), {}))
        layers.append((d.pick(["ReLU", "SiLU", "Sigmoid", "PReLU"]), (), {}))
        feat, shape = width, (n, c)
    if d.r() < 0.3:
        layers.append(("Dropout", (0.0,), {}))
    classes = d.int(2, 3)
    layers.append(("Linear", (feat, classes), {}))
    loss = d.pick(["cross_entropy", "square_loss", "binary_cross_entropy"])
    # (Adam's and Adagrad's eps raised from 1e-8 and 1e-10: a gradient element near eps is
    # normalised to a step that its rounding decides, each engine's own, which parts the
    # two sides by up to the learning rate; seeds 39,835 (a loss within rounding of 0, so
    # every gradient that small) and 68,119 (one conv weight). With eps 1e-4 (Adagrad's under a
    # square root: 1e-3) a rounding-size error moves a step by 1e-3 of it at most)
    optimizer = d.pick([("SGD", {"lr": 0.1, "momentum": d.pick([0.0, 0.9])}),
                        ("Adam", {"lr": 0.01, "eps": 1e-4}), ("AdamW", {"lr": 0.01, "eps": 1e-4}),
                        ("Adagrad", {"lr": 0.1, "eps": 1e-6})])
    if bn:  # (batch norm makes the weights before it scale-free: their gradients are nearly 0
        # along each row, rounding noise that Adam and Adagrad scale up to a step; SGD does not)
        optimizer = ("SGD", {"lr": 0.1, "momentum": d.pick([0.0, 0.9])})
    net = _network(M, layers)
    state = _drawn_state(d, net, ties=lambda key: False)
    steps = []
    for _ in range(d.int(1, 3)):
        x = d.tensor(shape, "float32", special=False, ties=False)
        if loss == "cross_entropy":
            y = enc_array(d.rng.integers(0, classes, size=n).astype("int32"))
        else:
            y = d.tensor((n, classes), "float32", lo=0.0, hi=1.0, special=False)
        steps.append(("L", [x, y]))
    return ("Train." + loss, [("v", (layers, optimizer)), ("S", state), ("L", steps)], {})


def _network(M, layers):
    built = []
    for name, args, kw in layers:
        if name == "Flatten":
            built.append(_flatten_layer(M))
            continue
        if kw.get("padding") == "same_1":
            kw = dict(kw, padding=args[2] // 2)
        built.append(getattr(M, name)(*args, **kw))
    return M.Sequential(*built)


def _flatten_layer(M):
    class Flatten(M.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], -1)
    return Flatten()


def _run_training(loss_name):
    def run(spec, state, steps):
        import megengine.functional as F
        import megengine.module as M
        import megengine.optimizer as optim
        from megengine.autodiff import GradManager

        layers, (opt_name, opt_kw) = spec
        net = _network(M, layers)
        net.load_state_dict(state, strict=True)
        net.train()
        gm = GradManager().attach(net.parameters())
        opt = getattr(optim, opt_name)(net.parameters(), **opt_kw)
        losses = []
        for x, y in steps:
            with gm:
                out = net(x)
                if loss_name == "cross_entropy":
                    loss = F.nn.cross_entropy(out, y)
                elif loss_name == "square_loss":
                    loss = F.nn.square_loss(out, y)
                else:
                    loss = F.nn.binary_cross_entropy(out, y)
                gm.backward(loss)
            opt.step().clear_grad()
            losses.append(loss)
        return [losses, [v for _, v in sorted(net.state_dict().items())]]
    return run


def _module(d):
    """A layer (``megengine.module``) built with drawn arguments, every parameter and buffer
    loaded from drawn values (``load_state_dict``, strict: the names must be upstream's), called
    in train or eval mode; the result holds the outputs and the running statistics after."""
    import megengine.module as M  # (drawing runs on this side only)

    kind = d.pick(["Linear", "Conv1d", "Conv2d", "ConvTranspose2d", "BatchNorm1d", "BatchNorm2d",
                   "LayerNorm", "GroupNorm", "InstanceNorm", "Embedding", "PReLU", "LSTM",
                   "RNN", "LSTMCell", "RNNCell", "MultiHeadAttention", "AvgPool2d",
                   "MaxPool2d", "AdaptiveAvgPool2d", "Dropout", "PixelShuffle", "Softmax"])
    # the layers drawn since, in a third of the calls, by a stream of their own (the calls of
    # the seeds that draw none are those drawn before they were added)
    more = np.random.default_rng((d.seed, 1))
    if more.random() < 0.35:
        kind = str(more.choice(MORE_MODULES))
        (args, kw, inputs), forward = _more_module(d, kind), None
    else:
        args, kw, inputs, forward = _first_module(d, kind)
    training = bool(d.r() < 0.5) and kind != "Dropout"
    module = getattr(M, kind)(*args, **kw)
    state = _drawn_state(d, module)
    init = (args, kw) if forward is None else (args, kw, forward)
    return ("Mod." + kind, [("v", init), ("S", state), ("v", training)] + inputs, {})


MORE_MODULES = ("Conv3d", "ConvTranspose3d", "AdaptiveMaxPool2d", "LocalResponseNorm",
                "GeneralNorm", "SlidingWindow", "SlidingWindowTranspose", "LocalConv2d",
                "DeformableConv2d", "RegionRestrictedConv", "Identity", "Elemwise",
                "BatchMatMulActivation", "ConvBn2d", "ConvBnRelu2d", "ConvRelu2d",
                "ConvTransposeBn2d", "ConvTransposeBnRelu2d", "ConvTransposeRelu2d",
                "LinearBn1d", "LinearBnRelu1d", "LinearRelu")


def _more_module(d, kind):
    """(args, kwargs, inputs) of a layer of `MORE_MODULES`."""
    n, c = d.int(1, 3), d.int(1, 3)
    args, kw = (), {}

    def image(ch, size=(3, 5), nd=2):
        return d.tensor((n, ch) + tuple(d.int(*size) for _ in range(nd)), "float32",
                        special=False)

    def conv_kw(k, transpose=False, dilate=True):
        kw = {"stride": d.int(1, 2), "padding": d.int(0, k - 1)}
        if transpose and kw["stride"] > 1 and d.r() < 0.5:
            kw["output_padding"] = 1
        elif dilate and k > 1 and d.r() < 0.3:
            kw["dilation"] = 2
        return kw

    if kind in ("Conv3d", "ConvTranspose3d"):
        g, k = d.pick([1, 1, 2]), d.int(1, 2)
        args = (c * g, d.int(1, 2) * g, k)
        kw = dict(conv_kw(k, kind == "ConvTranspose3d"), groups=g, bias=bool(d.r() < 0.7))
        inputs = [image(c * g, (2, 3), 3)]
    elif kind.startswith(("ConvBn", "ConvRelu", "ConvTranspose")):
        transpose = kind.startswith("ConvTranspose")
        k = d.int(1, 3)
        args = (c, d.int(1, 3), k)
        kw = dict(conv_kw(k, transpose, dilate=not transpose), bias=bool(d.r() < 0.7))
        if "Bn" in kind:
            kw["momentum"] = d.pick([0.9, 0.5])
            n += 1  # (a batch norm in training takes more than one value per channel)
        inputs = [image(c, (5, 6) if kw.get("dilation") else (3, 5))]
    elif kind.startswith("Linear"):
        args = (c, d.int(1, 3))
        kw = {"bias": bool(d.r() < 0.7)}
        inputs = [d.tensor((n + 1, c), "float32", special=False, ties=False)]
    elif kind == "AdaptiveMaxPool2d":
        args = (d.pick([1, 2, (2, 1), (3, 2)]),)
        inputs = [image(c, (3, 5))]
    elif kind == "LocalResponseNorm":
        kw = {"kernel_size": d.pick([3, 5]), "k": d.pick([1.0, 2.0]),
              "alpha": d.pick([1e-4, 0.1]), "beta": d.pick([0.75, 0.5])}
        inputs = [image(c + 2, (1, 3))]
    elif kind == "GeneralNorm":
        x = d.tensor((n + 1, c + 1, d.int(1, 3)), "float32", special=False, ties=False)
        axes = d.pick([(1,), (2,), (1, 2), (0, 2)])
        kw = {"normalized_shape": tuple(x[2][a] for a in axes),
              "normalized_axis": axes[0] if len(axes) == 1 else axes,
              "affine": bool(d.r() < 0.7)}
        inputs = [x]
    elif kind in ("SlidingWindow", "SlidingWindowTranspose"):
        k = d.int(1, 3)
        kw = {"kernel_size": k, "padding": d.int(0, k - 1), "stride": d.int(1, 2),
              "dilation": d.pick([1, 1, 2])}
        span = kw["dilation"] * (k - 1) + 1
        h, w = d.int(span, span + 2), d.int(span, span + 2)
        if kind == "SlidingWindow":
            inputs = [d.tensor((n, c, h, w), "float32", special=False)]
        else:
            oh, ow = ((size + 2 * kw["padding"] - kw["dilation"] * (k - 1) - 1) // kw["stride"]
                      + 1 for size in (h, w))
            args = ((h, w),)
            inputs = [d.tensor((n, c, oh, ow, k, k), "float32", special=False)]
    elif kind == "LocalConv2d":
        k, h, w = d.int(1, 3), d.int(3, 4), d.int(3, 4)
        args = (c, d.int(1, 2), h, w, k)
        kw = {"stride": d.int(1, 2), "padding": d.int(0, k - 1)}
        inputs = [d.tensor((n, c, h, w), "float32", special=False)]
    elif kind in ("DeformableConv2d", "RegionRestrictedConv"):
        k, h, w = d.int(1, 3), d.int(3, 4), d.int(3, 4)
        args = (c, d.int(1, 2), k)
        pad = d.int(0, k - 1)
        kw = {"padding": pad, "bias": bool(d.r() < 0.7)}
        oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
        inputs = [d.tensor((n, c, h, w), "float32", special=False)]
        if kind == "DeformableConv2d":
            inputs += [d.tensor((n, 2 * k * k, oh, ow), "float32", lo=-1.0, hi=1.0,
                                special=False),
                       d.tensor((n, k * k, oh, ow), "float32", lo=0.0, hi=1.0, special=False)]
        else:
            inputs += [enc_array(d.rng.integers(0, 3, size=shape).astype("int32"))
                       for shape in ((n, h, w), (n, oh, ow))]
    elif kind == "Identity":
        inputs = [d.tensor(d.shape(1, 3), d.pick(DTYPES))]
    elif kind == "Elemwise":
        method, arity = d.pick([("add", 2), ("sub", 2), ("mul", 2), ("true_div", 2),
                                ("max", 2), ("min", 2), ("fuse_add_relu", 2),
                                ("fuse_add_sigmoid", 2), ("fuse_add_tanh", 2), ("relu", 1),
                                ("sigmoid", 1), ("tanh", 1), ("abs", 1), ("exp", 1),
                                ("negate", 1), ("h_swish", 1), ("fuse_mul_add3", 3)])
        args = (method,)
        shape = d.shape(1, 3)
        inputs = [d.tensor(shape, "float32") for _ in range(arity)]
    else:  # BatchMatMulActivation
        b = d.int(1, 3)
        args = (b, c, d.int(1, 3))
        kw = {"bias": bool(d.r() < 0.7), "nonlinear_mode": d.pick(["identity", "relu"])}
        inputs = [d.tensor((b, c, n), "float32", special=False)]  # (batch, in_features, n)
    return args, kw, inputs


def _first_module(d, kind):
    """(args, kwargs, inputs, forward's keyword arguments or None) of a layer of the first
    kinds `_module` draws."""
    n, c = d.int(1, 3), d.int(1, 3)
    args, kw, inputs, forward = (), {}, None, None
    if kind == "Linear":
        args, kw = (c, d.int(1, 3)), {"bias": bool(d.r() < 0.7)}
        inputs = [d.tensor((n, c), "float32", special=False)]
    elif kind in ("Conv1d", "Conv2d", "ConvTranspose2d"):
        g = d.pick([1, 1, 2])
        k = d.int(1, 3)
        args = (c * g, d.int(1, 2) * g, k)
        kw = {"stride": d.int(1, 2), "padding": d.int(0, k - 1), "groups": g,
              "bias": bool(d.r() < 0.7)}
        if kind != "ConvTranspose2d" and k > 1 and d.r() < 0.3:
            kw["dilation"] = 2
        spatial = (d.int(4, 6),) * (1 if kind == "Conv1d" else 2)
        inputs = [d.tensor((n, c * g) + spatial, "float32", special=False)]
    elif kind.startswith("BatchNorm"):
        args = (c,)
        kw = {"momentum": d.pick([0.9, 0.5]), "affine": bool(d.r() < 0.8)}
        if d.r() < 0.2:
            kw["track_running_stats"] = False
        shape = (n + 1, c) if kind == "BatchNorm1d" else (n + 1, c, d.int(1, 3), d.int(1, 3))
        inputs = [d.tensor(shape, "float32", special=False, ties=False)]
    elif kind == "LayerNorm":
        shape = (n, c, d.int(1, 4))
        args, kw = (shape[-1:] if d.r() < 0.6 else shape[-2:],), {"affine": bool(d.r() < 0.7)}
        inputs = [d.tensor(shape, "float32", special=False, ties=False)]
    elif kind in ("GroupNorm", "InstanceNorm"):
        g = d.int(1, 2)
        ch = g * d.int(1, 2)
        args = (g, ch) if kind == "GroupNorm" else (ch,)
        kw = {"affine": bool(d.r() < 0.7)}
        inputs = [d.tensor((n, ch, d.int(1, 3), d.int(2, 3)), "float32", special=False,
                           ties=False)]
    elif kind == "Embedding":
        args = (d.int(2, 5), c)
        inputs = [enc_array(d.rng.integers(0, args[0], size=(n, d.int(1, 3))).astype("int32"))]
    elif kind == "PReLU":
        args = (d.pick([1, c]),)
        inputs = [d.tensor((n, c, d.int(1, 3), d.int(1, 2)), "float32")]
    elif kind in ("LSTM", "RNN"):
        args = (c, d.int(1, 3))
        kw = {"num_layers": d.int(1, 2), "bidirectional": bool(d.r() < 0.4),
              "batch_first": bool(d.r() < 0.4), "bias": bool(d.r() < 0.8)}
        if kind == "RNN" and d.r() < 0.4:
            kw["nonlinearity"] = "relu"
        inputs = [d.tensor((d.int(1, 3), n, c), "float32", special=False)]
    elif kind in ("LSTMCell", "RNNCell"):
        args, kw = (c, d.int(1, 3)), {"bias": bool(d.r() < 0.8)}
        inputs = [d.tensor((n, c), "float32", special=False)]
    elif kind == "MultiHeadAttention":
        heads = d.int(1, 2)
        e = heads * d.int(1, 2)
        args, kw = (e, heads), {"bias": bool(d.r() < 0.7)}
        lq = d.int(1, 3)
        q = d.tensor((n, lq, e), "float32", special=False)  # (batch, length, embed)
        lk = d.int(1, 3)
        kv = d.tensor((n, lk, e), "float32", special=False)
        inputs = [q, kv, kv]
        inputs, forward = _attention_extras(d, kw, heads, n, lq, lk, inputs)
    elif kind in ("AvgPool2d", "MaxPool2d"):
        k = d.int(1, 3)
        args, kw = (k,), {"stride": d.int(1, 2), "padding": d.int(0, k // 2)}
        inputs = [d.tensor((n, c, d.int(3, 5), d.int(3, 5)), "float32", special=False)]
    elif kind == "AdaptiveAvgPool2d":
        args = (d.pick([1, 2, (2, 1)]),)
        inputs = [d.tensor((n, c, d.int(2, 5), d.int(2, 5)), "float32", special=False)]
    elif kind == "Dropout":
        args = (0.5,)
        inputs = [d.tensor((n, c), "float32")]
    elif kind == "PixelShuffle":
        r = d.int(1, 2)
        args = (r,)
        inputs = [d.tensor((n, c * r * r, d.int(1, 3), d.int(1, 3)), "float32")]
    else:
        kw = {"axis": d.int(-2, 1)} if d.r() < 0.7 else {}
        inputs = [d.tensor((n, c + 1), "float32", special=False)]
    return args, kw, inputs, forward


def _attention_extras(d, kw, heads, n, lq, lk, inputs):
    """MultiHeadAttention's other arguments, by a stream of their own (a seed that draws none
    calls the layer as before they were added): ``kdim`` / ``vdim`` (into ``kw``), a 2-d or
    3-d ``attn_mask`` of 0 and -inf (a row all -inf now and then), with ``is_causal`` now and
    then (a hint that the mask is causal: the mask is applied), and the attention weights
    (``need_weights``, ``average_attn_weights``). Returns the inputs and forward's keyword
    arguments ([plain ones, names of the trailing tensor inputs]). Neither a
    ``key_padding_mask`` (upstream 1.13's CPU kernel applies an earlier call's) nor
    ``is_causal`` without a mask (its CPU kernel corrupts the heap: an AsyncError, then later
    calls crash; docs/compatibility.rst): upstream's answers would depend on earlier calls."""
    extra = np.random.default_rng((d.seed, 3))
    if extra.random() >= 0.6:
        return inputs, None
    if extra.random() < 0.4:
        kw["kdim"], kw["vdim"] = (int(extra.integers(1, 4)) for _ in range(2))
        inputs = inputs[:1] + [d.tensor((n, lk, kw[k]), "float32", special=False)
                               for k in ("kdim", "vdim")]
    plain, names = {}, []
    if extra.random() < 0.6:
        shape = (lq, lk) if extra.random() < 0.6 else (n * heads, lq, lk)
        mask = np.where(extra.random(shape) < 0.3, -np.inf, 0).astype("float32")
        inputs, names = inputs + [enc_array(mask)], ["attn_mask"]
        if extra.random() < 0.3:
            plain["is_causal"] = True
    if extra.random() < 0.5:
        plain["need_weights"] = True
        plain["average_attn_weights"] = bool(extra.random() < 0.5)
    return inputs, [plain, names]


def _drawn_state(d, module, ties=lambda key: True, signed_bn_scales=False):
    """Drawn values for every float parameter and buffer of ``module`` under its names (other
    dtypes as they are), for a strict ``load_state_dict``: in [-1, 1.5), variances in
    [0.5, 1.5); ``ties(key)`` says whether that one may hold halves and integers
    (`Draw.values`); ``signed_bn_scales``: batch-norm scales in +-[0.5, 1.5), never 0."""
    state = {}
    for key, value in module.state_dict().items():
        value = np.asarray(value)
        if value.dtype.kind != "f":
            state[key] = value
            continue
        bn_scale = signed_bn_scales and "bn.weight" in key
        lo = 0.5 if "var" in key or bn_scale else -1.0
        drawn = d.values(value.shape, value.dtype.name, lo=lo, hi=1.5, special=False,
                         ties=ties(key))
        if bn_scale:
            drawn = drawn * d.rng.choice([-1, 1], size=drawn.shape).astype(drawn.dtype)
        state[key] = enc_array(drawn)
    return state


def _run_module(name, gradients=False, dtype=np.float32, first=False):
    """A `_module` call; with ``gradients``, run under a GradManager attached to the layer's
    float32 inputs and its parameters: [the result, [each input's gradient, then each
    parameter's by name]] of `_weighted_loss` of the outputs (as `_with_gradients`; ``dtype``
    float64: the layer's tensors cast to it, for float64 inputs; ``first``: of the first output
    only)."""
    def run(init, state, training, *inputs):
        import megengine as mge
        import megengine.module as M
        from megengine.autodiff import GradManager

        forward = {}
        if len(init) == 3:  # (args, kwargs, [forward's plain keywords, its tensor keywords])
            plain, names = init[2]
            cut = len(inputs) - len(names)
            forward = dict(plain, **dict(zip(names, inputs[cut:])))
            inputs = inputs[:cut]
        module = getattr(M, name)(*init[0], **init[1])
        module.load_state_dict(state, strict=True)
        for _, t in module.named_tensors() if dtype != np.float32 else ():
            t._reset(t.astype(dtype))
        module.train(training)
        if not gradients:
            out = module(*inputs, **forward)
        else:
            leaves = [v for v in inputs if isinstance(v, mge.Tensor) and v.dtype == dtype]
            leaves += [p for _, p in sorted(module.named_parameters())]
            gm = GradManager().attach(leaves)
            with gm:
                out = module(*inputs, **forward)
                loss = _weighted_loss(mge, out[0] if first else out, dtype=dtype)
                if loss is not None:
                    gm.backward(loss)
        after = [np.asarray(v) for k, v in sorted(module.state_dict().items()) if "running" in k]
        out = [out, after] if after else out
        return [out, [v.grad for v in leaves]] if gradients else out
    return run


OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "LAMB")


def _optimizer(d):
    """An optimizer (``megengine.optimizer``) with drawn hyper-parameters over 1-3 Parameters,
    in one group or two (the second overriding the learning rate now and then), stepped 1-4
    times on drawn gradients (a parameter without one now and then), each step's gradients
    clipped now and then (``clip_grad_norm``, ``clip_grad_value``) and a ``MultiStepLR``
    stepping after the optimizer now and then, with a ``state_dict`` / ``load_state_dict``
    round trip mid-run now and then; the result is the parameters after each step, the
    clipping's answers and the final ``state_dict`` (its names and values)."""
    name = d.pick(OPTIMIZERS)
    hyper = {"lr": d.pick([0.1, 0.01, 0.5])}
    if name == "SGD":
        hyper["momentum"] = d.pick([0.0, 0.5, 0.9])
        if hyper["momentum"] and d.r() < 0.4:
            hyper["nesterov"] = True
    elif name == "Adagrad":
        if d.r() < 0.4:
            hyper["lr_decay"] = d.pick([0.1, 0.5])
        if d.r() < 0.3:
            hyper["eps"] = d.pick([1e-10, 1e-3])
    elif name == "Adadelta":
        if d.r() < 0.5:
            hyper["rho"] = d.pick([0.9, 0.5, 0.0])
        if d.r() < 0.3:
            hyper["eps"] = d.pick([1e-6, 1e-3])
    else:
        if d.r() < 0.5:
            hyper["betas"] = (d.pick([0.9, 0.5, 0.0]), d.pick([0.999, 0.9]))
        if d.r() < 0.3:
            hyper["eps"] = d.pick([1e-8, 1e-3])
        if name == "LAMB":
            if d.r() < 0.3:
                hyper["bias_correction"] = False
            if d.r() < 0.3:
                hyper["always_adapt"] = True
    if d.r() < 0.5:
        hyper["weight_decay"] = d.pick([0.0, 0.01, 0.1])
    n = d.int(1, 3)
    shapes = [d.shape(0, 2, empty=False) for _ in range(n)]
    params = [d.tensor(s, "float32", special=False) for s in shapes]
    split = d.int(1, n - 1) if n > 1 and d.r() < 0.4 else None
    override = {"lr": d.pick([0.05, 0.2])} if split and d.r() < 0.7 else {}
    plan = []
    for _ in range(d.int(1, 4)):
        grads = [("v", None) if d.r() < 0.1 else d.tensor(s, "float32", special=False)
                 for s in shapes]
        clip = None
        if d.r() < 0.2:
            clip = ("norm", d.pick([0.5, 1.0, 10.0]), d.pick([2.0, 1.0, float("inf")]))
        elif d.r() < 0.1:
            clip = ("value", -d.pick([0.1, 1.0]), d.pick([0.1, 1.0]))
        plan.append(("L", [("v", clip), ("L", grads)]))
    schedule = (sorted({d.int(1, 3) for _ in range(2)}), d.pick([0.1, 0.5])) \
        if d.r() < 0.3 else None
    reload = d.int(1, len(plan)) if d.r() < 0.2 else None
    setup = {"hyper": hyper, "split": split, "override": override, "schedule": schedule,
             "reload": reload}
    return ("Opt." + name, [("v", setup), ("L", params), ("L", plan)], {})


def _run_optimizer(name):
    def run(setup, params, plan):
        import megengine as mge
        import megengine.optimizer as optim

        params = [mge.Parameter(p) for p in params]
        split = setup["split"]
        groups = params if split is None else \
            [{"params": params[:split]}, dict(setup["override"], params=params[split:])]
        opt = getattr(optim, name)(groups, **setup["hyper"])
        schedule = setup["schedule"]
        scheduler = optim.MultiStepLR(opt, *schedule) if schedule else None
        out = []
        for i, (clip, grads) in enumerate(plan):
            for p, g in zip(params, grads):
                p.grad = g
            told = None
            if clip and clip[0] == "norm":
                told = optim.clip_grad_norm(params, clip[1], ord=clip[2])
            elif clip:
                told = optim.clip_grad_value(params, clip[1], clip[2])
            opt.step()
            opt.clear_grad()
            if scheduler is not None:
                scheduler.step()
            if i + 1 == setup["reload"]:
                opt.load_state_dict(opt.state_dict())
            out.append([told, [p.numpy() for p in params],
                        [g["lr"] for g in opt.param_groups]])
        return [out, opt.state_dict()]
    return run


TRANSFORMS = ("Normalize", "Pad", "Resize", "ShortestEdgeResize", "CenterCrop", "ToMode",
              "RandomHorizontalFlip", "RandomVerticalFlip", "RandomCrop", "RandomResizedCrop",
              "RandomResize", "BrightnessTransform", "ContrastTransform",
              "SaturationTransform", "HueTransform", "ColorJitter", "GaussianNoise", "Lighting")


def _one_transform(d, channels):
    """(name, args, kwargs) of one ``megengine.data.transform`` for images of ``channels``."""
    name = d.pick(TRANSFORMS)
    interp = {"interpolation": d.int(0, 4)} if d.r() < 0.6 else {}
    size = (d.int(1, 6), d.int(1, 6))
    if name == "Normalize":
        return name, (), {"mean": d.pick([0.0, [0.5] * channels, 127.5]),
                          "std": d.pick([1.0, [2.0] * channels, 58.0])}
    if name == "Pad":
        return name, (d.pick([1, (1, 2), (0, 1, 2, 1)]),), {
            "value": d.pick([0, 7, [1] * channels]), "mask_value": d.pick([0, 3])}
    if name == "Resize":
        return name, (size,), interp
    if name == "ShortestEdgeResize":
        return name, (d.pick([(2, 4), 3]), d.int(4, 8)), dict(
            interp, sample_style=d.pick(["range", "choice"]))
    if name == "CenterCrop":
        return name, (d.pick([size, d.int(1, 4)]),), {}
    if name == "ToMode":
        return name, (), {}
    if name in ("RandomHorizontalFlip", "RandomVerticalFlip"):
        return name, (d.pick([0.0, 0.5, 1.0]),), {}
    if name == "RandomCrop":
        return name, (size,), {"padding_size": d.int(0, 2),
                               "padding_value": [d.int(0, 9)] * channels}
    if name == "RandomResizedCrop":
        return name, (size,), interp
    if name == "RandomResize":
        return name, ((0.5, 2.0),), interp
    if name == "HueTransform":
        return name, (d.pick([0.0, 0.1, 0.5]),), {}
    if name == "ColorJitter":
        return name, (), {k: d.pick([0.0, 0.3]) for k in
                          ("brightness", "contrast", "saturation", "hue")}
    if name == "GaussianNoise":
        return name, (), {"mean": 0.0, "std": d.pick([0.5, 1.0])}
    if name == "Lighting":
        return name, (d.pick([0.0, 0.1]),), {}
    return name, (d.pick([0.0, 0.2, 0.5]),), {}  # brightness, contrast, saturation


def _transform(d):
    """A transform of ``megengine.data.transform`` (or a ``Compose`` of two or three) applied to
    a drawn sample: an (H, W, C) uint8 or float32 image alone or with a mask, boxes and
    keypoints (``order``), NumPy's global generator seeded alike on both sides first (the
    random transforms draw from it); the result is the transformed sample."""
    c = d.pick([3, 3, 1])
    # (HueTransform, SaturationTransform and ColorJitter's hue convert BGR to HSV: 3 channels)
    h, w = d.int(1, 7), d.int(1, 7)
    image = d.rng.integers(0, 256, size=(h, w, c)).astype(d.pick(["uint8", "uint8", "float32"]))
    if image.dtype == np.float32 and d.r() < 0.5:
        image += d.rng.random(image.shape).astype(np.float32)
    order = ["image"]
    sample = [("np", enc_array(image))]
    if d.r() < 0.4:
        order.append("mask")
        sample.append(("np", enc_array(d.rng.integers(0, 3, size=(h, w, 1)).astype("uint8"))))
    if d.r() < 0.3:
        order.append("boxes")
        lo = d.rng.uniform(0, [w, h], size=(d.int(1, 3), 2))
        boxes = np.concatenate([lo, lo + d.rng.uniform(0, 3, size=lo.shape)], 1)
        sample.append(("np", enc_array(boxes.astype("float32"))))
    if d.r() < 0.2:
        order.append("keypoints")
        points = d.rng.uniform(0, [w, h, 1], size=(d.int(1, 2), d.int(1, 2), 3))
        sample.append(("np", enc_array(points.astype("float32"))))
    parts = [_one_transform(d, c) for _ in range(d.pick([1, 1, 2, 3]))]
    return ("Tr", [("v", parts), ("v", tuple(order)), ("v", d.int(0, 99)),
                   ("L", sample)], {})


def _run_transform(parts, order, seed, sample):
    import megengine.data.transform as T

    built = [getattr(T, name)(*args, **kw, order=order) for name, args, kw in parts]
    transform = built[0] if len(built) == 1 else T.Compose(built, order=order)
    np.random.seed(seed)
    return transform.apply(tuple(sample) if len(sample) > 1 else sample[0])


SAMPLERS = ("SequentialSampler", "RandomSampler", "ReplacementSampler")
# the transforms a loader applies here (those that draw no random numbers: upstream's loader
# seeds NumPy's generator from its own per-batch seeds)
STEADY_TRANSFORMS = ("Normalize", "Pad", "Resize", "CenterCrop", "ToMode")


def _data(d):
    """A ``DataLoader`` over an ``ArrayDataset`` of drawn images and labels, with a drawn
    sampler (sequential, seeded random, seeded with replacement; batch size, ``drop_last``,
    ``world_size`` and ``rank``, wrapped in ``Infinite`` now and then) and now and then a
    ``Compose`` of transforms that draw no random numbers; the result is the sampler's length
    and the first five batches."""
    n, h, w, c = d.int(1, 9), d.int(1, 4), d.int(1, 4), d.pick([1, 3])
    name = d.pick(SAMPLERS)
    kw = {"drop_last": bool(d.r() < 0.3)}
    if name != "SequentialSampler":
        kw["seed"] = d.int(0, 999)
    if d.r() < 0.3:
        kw["world_size"], kw["rank"] = 2, d.int(0, 1)
    # (a rank's share smaller than the batch raises, on both sides: now and then)
    share = -(-n // kw.get("world_size", 1))
    kw["batch_size"] = d.int(1, 4) if d.r() < 0.1 else d.int(1, min(4, share))
    if name == "ReplacementSampler":
        if d.r() < 0.5:
            kw["num_samples"] = d.int(1, 6)
        if d.r() < 0.3:
            kw["weights"] = [float(d.int(1, 3)) for _ in range(n)]
    elif d.r() < 0.2:
        kw["indices"] = sorted({d.int(0, n - 1) for _ in range(3)})
    parts = None
    if d.r() < 0.5:
        parts = []
        while len(parts) < 2:
            part = _one_transform(d, c)
            if part[0] in STEADY_TRANSFORMS:
                parts.append(part)
    images = d.rng.integers(0, 256, size=(n, h, w, c)).astype("uint8")
    labels = d.rng.integers(0, 10, size=(n,)).astype("int32")
    return ("DL", [("v", name), ("v", kw), ("v", bool(d.r() < 0.2)), ("v", parts),
                   ("np", enc_array(images)), ("np", enc_array(labels))], {})


def _run_loader(name, kw, infinite, parts, images, labels):
    import itertools

    import megengine.data as data
    import megengine.data.transform as T

    dataset = data.dataset.ArrayDataset(images, labels)
    sampler = getattr(data, name)(dataset, **kw)
    length = len(sampler)
    if infinite:
        sampler = data.Infinite(sampler)
    transform = None
    if parts is not None:
        order = ("image", "image_category")
        transform = T.Compose([getattr(T, p)(*a, **k, order=order) for p, a, k in parts],
                              order=order)
    loader = data.DataLoader(dataset, sampler=sampler, transform=transform)
    return [length, list(itertools.islice(iter(loader), 5))]


def _vision(d):
    """``F.vision``: warps, remap, ROI pooling and alignment, resizing, color conversion."""
    kind = d.pick(["warp_perspective", "warp_affine", "remap", "roi_align", "roi_pooling",
                   "interpolate", "cvt_color", "correlation"])
    n, c, h, w = d.int(1, 2), d.int(1, 3), d.int(2, 5), d.int(2, 5)
    img = d.tensor((n, c, h, w), "float32", special=False)
    border = d.pick(["replicate", "reflect", "reflect_101", "wrap", "constant"])
    if kind in ("warp_perspective", "warp_affine"):
        rows = 3 if kind == "warp_perspective" else 2
        m = np.eye(3)[:rows] + d.rng.uniform(-0.2, 0.2, size=(rows, 3))
        m[:2, 2] += d.rng.uniform(-1, 1, size=2)
        if kind == "warp_perspective":
            m[2] = [d.rng.uniform(-0.02, 0.02), d.rng.uniform(-0.02, 0.02), 1.0]
        mat = enc_array(np.broadcast_to(m, (n, rows, 3)).astype("float32"))
        out_shape = (d.int(1, 5), d.int(1, 5))
        kw = {"border_mode": border, "border_val": d.pick([0.0, 1.5])}
        if kind == "warp_affine":  # (NHWC, its default format)
            img = d.tensor((n, h, w, c), "float32", special=False)
        if d.r() < 0.3:
            kw["interp_mode"] = d.pick(["nearest", "linear"])
        return ("F.vision." + kind, [img, mat, ("v", out_shape)], kw)
    if kind == "remap":
        oh, ow = d.int(1, 4), d.int(1, 4)
        grid = d.rng.uniform(-1.5, max(h, w) + 0.5, size=(n, oh, ow, 2)).astype("float32")
        if d.r() < 0.4:
            grid = np.round(grid * 2) / 2  # on pixel centres and halfway
        kw = {"border_mode": border, "scalar": d.pick([0.0, 2.0])}
        if d.r() < 0.3:
            kw["interp_mode"] = d.pick(["nearest", "linear"])
        return ("F.vision.remap", [img, enc_array(grid.astype("float32"))], kw)
    if kind in ("roi_align", "roi_pooling"):
        k = d.int(1, 3)
        x0 = d.rng.uniform(0, w - 1, size=k)
        y0 = d.rng.uniform(0, h - 1, size=k)
        rois = np.stack([d.rng.integers(0, n, size=k), x0, y0,
                         x0 + d.rng.uniform(0.5, w, size=k), y0 + d.rng.uniform(0.5, h, size=k)],
                        1).astype("float32")
        out = (d.int(1, 3), d.int(1, 3))
        if kind == "roi_pooling":
            return ("F.vision.roi_pooling", [img, enc_array(rois), ("v", out)],
                    {"mode": d.pick(["max", "average"]), "scale": d.pick([1.0, 0.5])})
        return ("F.vision.roi_align", [img, enc_array(rois), ("v", out)],
                {"mode": d.pick(["average", "max"]), "spatial_scale": d.pick([1.0, 0.5]),
                 "sample_points": d.int(1, 3), "aligned": bool(d.r() < 0.5)})
    if kind == "interpolate":
        mode = d.pick(["nearest", "bilinear", "bicubic", "area"])
        kw = {"mode": mode}
        if mode == "area" or d.r() < 0.5:
            kw["size"] = (d.int(1, 6), d.int(1, 6))
        else:
            kw["scale_factor"] = d.pick([2.0, 0.5, 1.5])
        if mode in ("bilinear", "bicubic") and d.r() < 0.5:
            kw["align_corners"] = bool(d.r() < 0.5)
        return ("F.vision.interpolate", [img], kw)
    if kind == "cvt_color":
        mode = d.pick(["RGB2GRAY", "RGB2BGR", "BGR2GRAY", "GRAY2RGB", "RGB2YUV", "YUV2RGB"])
        ch = 1 if mode.startswith("GRAY") else 3
        pixels = d.rng.integers(0, 256, size=(n, h, w, ch)).astype("float32")
        return ("F.vision.cvt_color", [enc_array(pixels)], {"mode": mode})
    a, b = img, d.tensor((n, c, h, w), "float32", special=False)
    return ("F.vision.correlation", [a, b], {
        "kernel_size": 1, "max_displacement": d.int(0, 1), "stride1": 1, "stride2": 1,
        "pad_size": d.int(0, 1), "is_multiply": bool(d.r() < 0.6)})


def _gradient(d, layers=True):
    """A call of the differentiable kinds (not writes) run under a GradManager that attaches its
    float32 tensor inputs: the result is the outputs and each input's gradient of a weighted
    sum of the float32 outputs (None where there is none). A quarter of them, drawn by a stream
    of their own (the other seeds keep their calls), call a layer (`_module`), whose parameters'
    gradients follow its inputs' (not RNN or LSTM: upstream 1.13's CPU backward of theirs is
    wrong, docs/compatibility.rst, and its parameters are a flat weight of its own)."""
    for _ in range(20 if layers and np.random.default_rng((d.seed, 4)).random() < 0.25 else 0):
        name, args, kwargs = _module(d)
        if name not in ("Mod.RNN", "Mod.LSTM"):
            return ("grad:" + name, args, kwargs)
    for _ in range(20):
        name, args, kwargs = d.pick([_unary, _binary, _operator, _reduction, _shape_op, _nn,
                                     _more_nn, _more_nn2, _vision, _indexing])(d)
        if name != "setitem" and any(a[0] == "t" and a[1] == "float32" for a in args):
            return ("grad:" + name, args, kwargs)
    return ("grad:F.exp", [d.tensor(None, "float32")], {})


def _odd_gradient(d):
    """`_gradient`'s call with NaN and an infinity among the weights of the sum it
    differentiates, so among its outputs' gradients (`_with_gradients`): where they reach the
    inputs is compared with upstream's (``--odd-gradients``: every seed draws one; `draw`
    draws none, so that its seeds keep their calls; no layers, whose parameters' NaN gradients
    are not judged)."""
    name, args, kwargs = _gradient(d, layers=False)
    return ("gradodd:" + name[5:], args, kwargs)


def _autocast(d):
    """A call of the layer, loss, element-wise, reduction or module kinds with float32 inputs
    run under ``megengine.amp.autocast()``: which ops compute in float16 and which stay in
    float32 are upstream's dispatcher's rules."""
    for _ in range(20):
        name, args, kwargs = d.pick([_nn, _nn, _more_nn, _module, _unary, _binary,
                                     _reduction])(d)
        if any(a[0] == "t" and a[1] == "float32" for a in args):
            return ("amp:" + name, args, kwargs)
    return ("amp:F.exp", [d.tensor(None, "float32")], {})


def _traced(d):
    """A call of the element-wise, operator, reduction, shape, layer or module kinds run by
    ``megengine.jit.trace`` (symbolic or not, now and then ``capture_as_const``): the result
    is the second call's, which the trace checks against what the first recorded."""
    for _ in range(20):
        name, args, kwargs = d.pick([_unary, _binary, _operator, _reduction, _shape_op, _nn,
                                     _more_nn, _module])(d)
        if any(a[0] == "t" for a in args):
            return (d.pick(["jit:", "jit:", "jitsym:", "jitconst:"]) + name, args, kwargs)
    return ("jit:F.exp", [d.tensor(None, "float32")], {})


def _under_trace(mge, fn, mode):
    def run(*values, **kwargs):
        from megengine.jit import trace

        slots = [i for i, v in enumerate(values) if isinstance(v, mge.Tensor)]

        def inner(*tensors):
            args = list(values)
            for i, t in zip(slots, tensors):
                args[i] = t
            return fn(*args, **kwargs)

        traced = trace(inner, symbolic=mode != "jit", capture_as_const=mode == "jitconst")
        tensors = [values[i] for i in slots]
        traced(*tensors)
        return traced(*tensors)
    return run


def _under_autocast(mge, fn):
    def run(*values, **kwargs):
        with mge.amp.autocast():
            return fn(*values, **kwargs)
    return run


def _with_gradients(mge, fn, odd=False):
    """``fn`` run under a GradManager (`_gradient`); ``odd``: the weights of its outputs' sum,
    so their gradients, hold NaN at the last element and inf at the middle one (`_odd_gradient`)."""
    def run(*values, **kwargs):
        from megengine.autodiff import GradManager

        leaves = [v for v in values if isinstance(v, mge.Tensor) and v.dtype == np.float32]
        gm = GradManager().attach(leaves)
        with gm:
            out = fn(*values, **kwargs)
            loss = _weighted_loss(mge, out, odd)
            if loss is not None:
                gm.backward(loss)
        return [out, [v.grad for v in leaves]]
    return run


def _weighted_loss(mge, out, odd=False, dtype=np.float32):
    """The sum of the float32 outputs among ``out`` (a Tensor or a list or tuple of them),
    each weighted elementwise by a ramp from 0.5 to 1.5 (``odd``: with inf at its middle element
    and NaN at its last), or None where there is none (``dtype``: the outputs' float type)."""
    loss = None
    for o in out if isinstance(out, (list, tuple)) else [out]:
        if isinstance(o, mge.Tensor) and o.dtype == dtype and o.size:
            w = np.linspace(0.5, 1.5, o.size, dtype=dtype).reshape(o.shape)
            if odd:
                w.flat[(o.size - 1) // 2], w.flat[-1] = np.inf, np.nan
            term = (o * mge.tensor(w)).sum()
            loss = term if loss is None else loss + term
    return loss


KINDS = ((_unary, 3), (_binary, 3), (_operator, 3), (_reduction, 3), (_shape_op, 5),
         (_creation, 1), (_nn, 4), (_indexing, 3), (_methods, 3), (_construct, 1),
         (_more_nn, 2), (_module, 3), (_vision, 2), (_gradient, 6),
         (_optimizer, 2), (_transform, 2), (_data, 1), (_autocast, 2),
         (_more_nn2, 2), (_quantized, 2), (_training, 2), (_traced, 2))


def draw(seed):
    d = Draw(seed)
    fns, weights = zip(*KINDS)
    p = np.array(weights, float) / sum(weights)
    return fns[int(d.rng.choice(len(fns), p=p))](d)


# ----- running a call (this file's code on both sides) -----

def _decode(mge, e):
    kind = e[0]
    if kind == "t":
        a = dec_array(e)
        return mge.tensor(a, dtype=a.dtype)
    if kind == "v":
        return e[1]
    if kind == "np":
        return dec_array(e[1])
    if kind == "S":
        return {k: dec_array(v) for k, v in e[1].items()}
    if kind == "L":
        return [_decode(mge, x) for x in e[1]]
    if kind == "I":
        return _index_of(e[1], mge.tensor)
    raise ValueError(f"unknown encoded value {kind!r}")


def _index_of(items, array=lambda a: a):
    """The index an "I" payload's ``items`` encode (`_index`), its arrays passed to ``array``
    (numpy arrays by default; the call's side makes them Tensors)."""
    out = []
    for it in items:
        tag = it[0]
        if tag == "i":
            out.append(it[1])
        elif tag == "s":
            out.append(slice(it[1], it[2], it[3]))
        elif tag == "n":
            out.append(None)
        elif tag == "e":
            out.append(Ellipsis)
        else:
            out.append(array(dec_array(it[1])))
    return tuple(out)


def _encode(out):
    if hasattr(out, "numpy") and hasattr(out, "dtype"):
        return enc_array(np.asarray(out.numpy()))
    if isinstance(out, (list, tuple)):
        return ("L", [_encode(x) for x in out])
    if isinstance(out, np.ndarray):
        return ("np", enc_array(out))
    if isinstance(out, np.generic):
        return ("v", out.item())
    if isinstance(out, np.dtype):
        return ("v", out.name)
    if isinstance(out, dict):  # (a state_dict: its keys in a fixed order)
        return ("D", [(k, _encode(out[k])) for k in sorted(out, key=repr)])
    return ("v", out)


def _function(mge, F, name):
    if name.startswith("grad:Mod."):
        return _run_module(name[9:], gradients=True)
    if name.startswith("grad:"):
        return _with_gradients(mge, _function(mge, F, name[5:]))
    if name.startswith("gradodd:"):
        return _with_gradients(mge, _function(mge, F, name[8:]), odd=True)
    if name.startswith("amp:"):
        return _under_autocast(mge, _function(mge, F, name[4:]))
    if name.startswith(("jit:", "jitsym:", "jitconst:")):
        mode, _, inner = name.partition(":")
        return _under_trace(mge, _function(mge, F, inner), mode)
    space, _, attr = name.partition(".")
    if space == "F":
        obj = F
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    if space == "op":
        fn = getattr(operator, attr)
        if name in AUGMENTED_NAMES:  # x OP= y: its value, and x's other name's
            return lambda x, y: [fn(x, y), x]
        return fn
    if space == "T":
        if attr == "T":
            return lambda x: x.T
        return lambda x, *a, **k: getattr(x, attr)(*a, **k)
    if space == "A":  # a property
        return lambda x: getattr(x, attr)
    if space == "B":  # a builtin: len(x), int(x), abs(x), ...
        import builtins

        return getattr(builtins, attr)
    if space == "M":
        return getattr(mge, attr)
    if space == "Mod":
        return _run_module(attr)
    if space == "Opt":
        return _run_optimizer(attr)
    if space == "Q":
        return _run_quantized(attr)
    if space == "Train":
        return _run_training(attr)
    if name == "Tr":
        return _run_transform
    if name == "DL":
        return _run_loader
    if name == "getitem":
        return lambda x, idx: x[idx]
    if name == "setitem":
        def setitem(x, idx, v):
            x[idx] = v
            return x
        return setitem
    raise ValueError(f"unknown function {name!r}")


def run_call(call):
    """(True, encoded result) or (False, error type name, message, the names of its type's
    bases) of ``call`` here."""
    import warnings

    import megengine as mge
    import megengine.functional as F

    name, args, kwargs = call
    try:
        fn = _function(mge, F, name)
    except AttributeError as e:
        return (False, "missing", str(e))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = [_decode(mge, a) for a in args]
            return (True, _encode(fn(*values, **kwargs)))
    except Exception as e:  # noqa: BLE001  (an error is a result to compare)
        return (False, type(e).__name__, str(e)[:300], tuple(c.__name__ for c in type(e).__mro__))


CALL_SECONDS = 20


def serve(path_in, path_out):
    """The upstream side: run each call of the pickled list in ``path_in``, appending each
    result to ``path_out`` as it comes (length-prefixed pickles), so that a crash loses one."""
    import signal

    import megengine

    # (ops in order: with upstream 1.13's asynchronous dispatch an error surfaces at a later
    # call, and now and then a later call computes another value: call 620,207, a comparison,
    # after the calls before it in one process; alone it agrees. The process is its own, so
    # the setting leaves no test process changed)
    megengine.config.async_level = 0
    with open(path_in, "rb") as f:
        calls = pickle.load(f)
    with open(path_out, "ab") as out:
        for call in calls:
            signal.alarm(CALL_SECONDS)  # a call that hangs ends the process: a "crash"
            result = run_call(call)
            signal.alarm(0)
            raw = pickle.dumps(result, protocol=4)
            out.write(struct.pack("<Q", len(raw)) + raw)
            out.flush()


def _read_results(path):
    results = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 8 <= len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        if pos + 8 + n > len(data):
            break
        results.append(pickle.loads(data[pos + 8:pos + 8 + n]))
        pos += 8 + n
    return results


def run_elsewhere(python, calls, workdir, cwd=None, timeout=600, env=None):
    """Results of ``calls`` under ``python`` (run from ``cwd``, with environment ``env``); a
    call that killed the process gets (False, "crash", its exit status) and the rest run in a
    new one."""
    import os

    results = []
    while len(results) < len(calls):
        path_in = os.path.join(workdir, "calls.pkl")
        path_out = os.path.join(workdir, "results.bin")
        with open(path_in, "wb") as f:
            pickle.dump(calls[len(results):], f, protocol=4)
        open(path_out, "wb").close()
        proc = subprocess.run([python, os.path.abspath(__file__), "--serve", path_in, path_out],
                              cwd=cwd or workdir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=timeout, env=env)
        got = _read_results(path_out)
        results.extend(got)
        if len(results) < len(calls):
            if proc.returncode == 0:
                raise RuntimeError(f"{python} stopped early: {proc.stderr.decode()[-2000:]}")
            results.append((False, "crash", f"exit status {proc.returncode}"))
    return results


# ----- comparing -----

def _close(a, b, loose=False):
    if a.dtype.kind in "iub":
        return np.array_equal(a, b)
    return not _apart(a, b, loose).any()


def _apart(a, b, loose=False):
    """Where float arrays ``a`` and ``b`` differ beyond `_close`'s tolerance (or in where
    +inf stands)."""
    tol = (1e-2 if a.dtype == np.float16 else 1e-5) * (10 if loose else 1)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.abs(b64[np.isfinite(b64)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0  # (rounding of its terms)
    return ~np.isclose(a64, b64, rtol=tol, atol=tol * scale, equal_nan=True) | \
        ((np.isinf(a64) & (a64 > 0)) != (np.isinf(b64) & (b64 > 0)))


def _traced_pow_of_abs(call, mine, theirs):
    """Whether a traced ``x ** e`` differs only where ``x`` is negative and ``e`` not an
    integer: NaN here, as eagerly in both engines, and ``|x| ** e`` in upstream 1.13's traced
    graph (call 504,278: ``F.pow(x, 0.001)`` of -1.947 gave 1.00067; measured in both trace
    modes, and ``x ** 0.3`` as well)."""
    if call[0].partition(":")[2] not in ("F.pow", "op.pow") or not (mine[0] and theirs[0]) \
            or mine[1][0] != "t" or theirs[1][0] != "t" or call[1][0][0] != "t":
        return False
    x = dec_array(call[1][0])
    e = dec_array(call[1][1]) if call[1][1][0] == "t" else np.asarray(call[1][1][1])
    if x.dtype.kind != "f" or np.asarray(e).dtype.kind not in "fiu":
        return False
    a, b = dec_array(mine[1]), dec_array(theirs[1])
    if a.shape != b.shape or not _broadcasts(np.broadcast_shapes(x.shape, e.shape), a.shape):
        return False
    x, e = np.broadcast_to(x, a.shape), np.broadcast_to(e, a.shape)
    odd = (x < 0) & (e != np.round(e))
    with np.errstate(all="ignore"):
        upstream = (np.abs(x.astype(np.float64)) ** e).astype(b.dtype)
    return bool(odd.any()) and np.isnan(a[odd]).all() and _close(b[odd], upstream[odd]) and \
        _close(a[~odd], b[~odd])


# upstream errors whose type is an accident of its code (both_engines.ACCIDENTAL_ERRORS but
# NotImplementedError, which no call has needed passed over), and a crashed process
_ACCIDENTAL_ERRORS = frozenset({"AttributeError", "NameError", "UnboundLocalError", "error",
                                "crash"})


def _other_error_type(mine, theirs):
    """Where both raised: None when this side's error is of upstream's type too (an
    ``except`` written for upstream catches it: docs/compatibility.rst's rule for bad
    arguments), or upstream's is an accident of its code; else what differs."""
    from .both_engines import error_types_agree  # (this side only: upstream's runs us by path)

    bases = mine[3] if len(mine) > 3 else (mine[1],)
    if error_types_agree(theirs[1], bases, _ACCIDENTAL_ERRORS):
        return None
    return f"an error of another type: here {mine[1]} {list(bases[1:-2])}, upstream {theirs[1]}"


def known(call, mine, theirs):
    """Which documented difference (docs/compatibility.rst) two differing results show, or
    None."""
    if call[0].endswith("Mod.Elemwise"):  # (judged as the function of its method: call 131556)
        call = (call[0].replace("Mod.Elemwise", "F." + call[1][0][1][0][0]), call[1][3:], {})
    name = call[0]
    if not mine[0] and not theirs[0] and "can not infer value of this tensor under trace" in \
            str(theirs[2]):  # (an error of another cause: upstream's trace fails first)
        return "upstream's symbolic trace cannot read a value the call needs"
    if not mine[0] and not theirs[0] and "the weight dimension of conv1d should be 3" in \
            str(theirs[2]):  # (upstream's grouped Conv1d refuses its own 4-d weight, before
        # the input's check that fails here: call 594932)
        return "upstream's grouped Conv1d refuses its own weight first"
    if name.startswith(("grad:", "gradodd:")):
        return _known_with_gradients(call, mine, theirs)
    if name == "amp:Mod.ConvTranspose2d" and mine[0] and theirs[0] and \
            "bias" in call[1][1][1] and mine[1][0] == theirs[1][0] == "t":
        # upstream 1.13 under autocast adds the first channel's bias to every channel
        bias = dec_array(call[1][1][1]["bias"]).astype(np.float32).reshape(1, -1, 1, 1)
        ours, t = dec_array(mine[1]), dec_array(theirs[1])
        if _close((ours.astype(np.float32) - bias + bias[:, :1]).astype(ours.dtype), t):
            return "conv_transpose2d's bias under autocast"
    if name.startswith(("amp:Mod.Conv", "amp:Mod.Linear")) and mine[0] and theirs[0]:
        # (upstream 1.13 under autocast adds the first channel's bias to every channel: as
        # "amp:Mod.ConvTranspose2d" above, here before the fused batch norm and ReLU)
        biased = run_call(_first_channels_bias(call)) if "Transpose" in name else None
        if biased is not None and differ(biased, theirs) is None:
            return "conv_transpose2d's bias under autocast"
        # (a fused batch norm's statistics, float32, of the float16 layer's output:
        # each engine sums those float16 values its own way, 1e-4 apart in a variance of 2)
        if "Bn" in name and any(_stats_float16_apart(m, theirs[1])
                                for m in (mine[1], biased and biased[1]) if m):
            return "running statistics of float16 values under autocast"
    if name.endswith("Mod.BatchMatMulActivation") and mine[0] and theirs[0] and \
            mine[1][0] == theirs[1][0] == "t" and _close_as(
                _upstream_bmma(call), dec_array(theirs[1]), name.startswith("amp:")):
        # (upstream 1.13's float layer adds its (out_features,) bias along the last axis:
        # docs/compatibility.rst)
        return "BatchMatMulActivation's bias per output row"
    if name.startswith("Q.") and mine[0] and theirs[0] and _one_step_apart(mine[1], theirs[1]):
        # (float32 rounding before a quantization, in another order, decides a value that
        # lies at a rounding boundary: 1.5 exact here, 1.4999 upstream)
        return "a quantized value at a rounding boundary: one step apart"
    reruns = _rounded_the_other_way(call) if name.startswith("Q.") and mine[0] and \
        theirs[0] else []
    if any(v[0] and (differ(v, theirs) is None or _one_step_apart(v[1], theirs[1]))
           for v in reruns):
        # (an observer's extreme lies at a boundary by construction: the negative one of a
        # symmetric observer is -127.5 steps, -7.5 in 4 bits, up to float32 rounding of the
        # layer's output, its sums' order. In training the step it moves by feeds the next
        # layer's observer, and that layer's scale and every value after it differ: seeds
        # 144,076 (a conv's minimum -16.223614 here, -16.223618 upstream: -8 and -7 steps of
        # 4 bits) and 150,683 (a batch norm's -1.9927762 here, -1.992776 upstream, one float32
        # step apart: -127 and -128 steps). The check reruns the call here with every value
        # that close to a boundary rounded toward zero, then away: upstream's results then)
        return "a quantized value at a rounding boundary, rounded the other way"
    if any(v[0] and differ(v, mine) is not None and _one_step_apart(
            ("L", v[1][1][:1]), ("L", theirs[1][1][:1])) for v in reruns):
        # (several values at boundaries, rounded each its own way by float32 noise, and the
        # observers' moving averages carry each choice into the later batches: call 362,973,
        # ema_lowbit's 4 bits, the first batch within one step of this side's run with every
        # boundary value rounded toward zero, the later ones each a mixture of both)
        return "quantized values at rounding boundaries, each rounded its own way"
    if name == "Q.calibration_qconfig" and mine[0] and theirs[0] and \
            _scaled_alike(mine[1], theirs[1]):
        # (HistogramObserver picks the range that minimises its quantization error over a
        # histogram whose bins span the observed range: a layer output a float32 step apart
        # there, as the rounding of its sums' order leaves it, moves the bins and can move the
        # chosen range by a bin: calls 191,071 and 258,217, the quantized network's integers
        # the same and its output scale 1.2e-4 and 8.3e-4 apart)
        return "calibration's histogram range: the same integers at an output scale 1e-3 apart"
    if name.startswith("jitsym:") and mine[0] and theirs[0] and mine[1][0] == "t" and \
            theirs[1][0] == "t" and mine[1][2] == theirs[1][2] and 0 in mine[1][2]:
        # (an empty result: upstream's symbolic graph gives the input's dtype, even where its
        # eager op refuses the dtype, hsigmoid of bools)
        return "a traced op of empty tensors: upstream's graph keeps the input dtype"
    if name.startswith(("jit:", "jitsym:", "jitconst:")) and _traced_pow_of_abs(call, mine,
                                                                                theirs):
        return "a traced power of a negative base: upstream's graph takes |x| ** e"
    if name.startswith(("amp:", "jit:", "jitsym:", "jitconst:")):
        # (under autocast or a trace: the call's own documented differences)
        return known((name.partition(":")[2],) + tuple(call[1:]), mine, theirs)
    if name in AUGMENTED_NAMES and mine[0] and theirs[0]:  # x OP= y: [value, x's other name]
        (value_m, alias_m), (value_t, alias_t) = mine[1][1], theirs[1][1]
        why = _differ_value(alias_m, alias_t) and (_differ_value(value_m, alias_m) or
                                                   _differ_value(value_t, alias_t))
        if why:  # the other name sees a different tensor than x: no documented difference
            return None
        plain = (_plain(name),) + tuple(call[1:])
        if _differ_value(value_m, value_t) is None:
            return None
        return known(plain, (True, value_m), (True, value_t))
    if name.startswith("Q.") and not mine[0] and "CPU devices only" in mine[2] and _on_gpu():
        return "quantized networks run on the CPU only"  # (compatibility.rst: the limits)
    if name in ("F.vision.warp_affine", "F.vision.warp_perspective", "F.vision.remap") and \
            _on_gpu():  # (the CPU's kernels round sample points to 1/32 pixel, as upstream's)
        return "warps on a GPU sample at the exact points"
    if name == "F.diag" and mine[0] and theirs[0] and mine[1][0] == "t" and _differ_value(
            mine[1], enc_array(np.diag(dec_array(call[1][0]), call[2].get("k", 0)))) is None:
        return "as numpy's diag"  # (upstream's of an empty vector: uninitialised memory)
    if name == "F.tile" and mine[0] and theirs[0] and mine[1][0] == theirs[1][0] == "t":
        x, reps = dec_array(call[1][0]), tuple(call[1][1][1])
        if len(reps) > x.ndim and theirs[1][2] == reps[:len(reps) - x.ndim] + x.shape and \
                _differ_value(mine[1], enc_array(np.tile(x, reps))) is None:
            # (upstream reshapes the tiled value to the extra reps and the input's shape: an
            # error where that size differs, the tiling dropped for an empty tensor)
            return "tile with more reps than axes, as numpy's"
    if name == "F.vision.interpolate" and call[2].get("align_corners") and mine[0] and \
            theirs[0] and np.isnan(dec_array(theirs[1])).any() and \
            1 in dec_array(mine[1]).shape[2:]:
        return "one output pixel with align_corners"  # (upstream divides by size - 1: NaN)
    if name in ("getitem", "setitem") and not mine[0] and theirs[0] and \
            mine[1] == "IndexingError" and any(
                it[0] == "b" and not dec_array(it[1]).any() for it in call[1][1][1]):
        # numpy's and torch's error: index arrays that do not broadcast, one of them an
        # all-False mask's (upstream: an empty result, a write that does nothing)
        return "an empty mask beside index arrays it does not broadcast with"
    if name == "getitem" and mine[0] and mine[1][0] == "t":
        x = dec_array(call[1][0])
        try:
            want = x[_index_of(call[1][1][1])]
        except IndexError:
            want = None
        if want is not None and _differ_value(mine[1], enc_array(want)) is None:
            # (upstream 1.13 reads outside the tensor for a reversed slice that starts past
            # its end, x[5::-1]: zeros, or an error)
            return "as numpy indexes"
    if name == "F.vision.cvt_color" and not mine[0] and mine[1] == "ArgumentError" and \
            theirs[0]:  # (RGB2BGR of float32: upstream returns uninitialised memory)
        return "a cvt_color mode refused for float images"
    if name == "DL" and "indices" in call[1][1][1] and mine[0] and theirs[0]:
        return "a sampler given indices counts them"  # (upstream's counts the whole dataset)
    if name in ("Mod.GroupNorm", "Mod.InstanceNorm", "Mod.LayerNorm", "Mod.GeneralNorm") and \
            mine[0] and \
            theirs[0] and mine[1][0] == theirs[1][0] == "t":
        exact = _norm_module_exact(call)
        here, there = dec_array(mine[1]), dec_array(theirs[1])
        if not _close(there, exact) and (
                _close(here, exact) or 10 * np.abs(here - exact).max()
                <= np.abs(there - exact).max()):
            # (a group of nearly equal values: each side's float32 rounding of x - mean is
            # divided by their small spread. Seed 179,810: an instance of [2.4636068,
            # 2.4644897], std 4.4e-4: this side 2.5e-6 off the float64 result, upstream 8.7e-5;
            # where they are closer still, float32 rounding passes the tolerance here too, but
            # stays far nearer: seed 539,334, a pair [2.8633783, 2.8577003] with eps 1e-5,
            # this side 3.4e-5 off, upstream 7.9e-3)
            return "normalising nearly equal values: upstream's rounding, this side's within " \
                   "the tolerance of the float64 result or ten times nearer it"
    if name in ("Mod.LinearBn1d", "Mod.LinearBnRelu1d") and call[1][2][1] and mine[0] and \
            theirs[0]:
        exact = _linear_bn_exact(call)
        if _close(dec_array(mine[1][1][0]), exact) and \
                not _close(dec_array(theirs[1][1][0]), exact):
            # (a column the linear layer makes nearly constant, a weight of -0.0: the batch
            # norm divides each side's rounding of x - mean by sqrt(eps). Call 361,245: this
            # side gives the float64 result, 0.8254082, upstream 0.8254414)
            return "normalising nearly equal values: upstream's rounding, this side's within " \
                   "the tolerance of the float64 result or ten times nearer it"
    if name in ("Mod.RNNCell", "Mod.LSTMCell") and not call[1][0][1][1].get("bias", True):
        return "cells without bias add no bias"  # (upstream's cells add the buffers)
    if name == "F.topk_accuracy" and mine[0] and theirs[0]:
        x, ks = dec_array(call[1][0]), call[2].get("topk", 1)
        for k in (ks if isinstance(ks, tuple) else (ks,)):
            kth = -np.sort(-x, axis=1)[:, k - 1:k]
            if ((x == kth).sum(1) > 1).any():  # a tie at the k-th place: which gets in differs
                return "order among ties"
        return None
    if name == "F.svd" and mine[0] and theirs[0] and mine[1][0] == theirs[1][0] == "L":
        (u_m, s_m, v_m), (u_t, s_t, v_t) = mine[1][1], theirs[1][1]
        if _differ_value(s_m, s_t) is None and all(
                a[2] == b[2] and _close(np.abs(dec_array(a)), np.abs(dec_array(b)), True)
                for a, b in ((u_m, u_t), (v_m, v_t))):
            # (each is one up to its sign; to 10x the tolerance: a vector's rounding grows
            # as its singular value nears another)
            return "singular vectors' signs"
        return None
    if name in ("F.sort", "F.topk") and mine[0] and theirs[0] and mine[1][0] == "L":
        # (values, indices): the values agree (else no "known"), the indices may differ
        if _differ_value(mine[1][1][0], theirs[1][1][0]) is None:
            return known(call, (True, mine[1][1][1]), (True, theirs[1][1][1]))
        return None
    if _normalises(name) and mine[0] and theirs[0] and \
            _float32_rounding(call, {}, "out", mine[1], theirs[1]):
        return ROUNDING  # (call 78333: a channel of equal values normalised in training)
    if not (mine[0] and theirs[0] and mine[1][0] == theirs[1][0] == "t"):
        return None
    _, d1, s1, _ = mine[1]
    _, d2, s2, _ = theirs[1]
    if name in FLOAT16_KEPT and (d1, d2) == ("float16", "float32") and s1 == s2:
        a, b = dec_array(mine[1]), dec_array(theirs[1]).astype(np.float16)
        if _close(a, b):
            return "float16 kept"
    if name in ("F.argmax", "F.argmin", "T.argmax", "T.argmin") and s1 == s2:
        x = dec_array(call[1][0])
        if np.isnan(x).any():
            axis = call[2].get("axis")
            want = (np.argmax if name.endswith("argmax") else np.argmin)(x, axis=axis)
            if call[2].get("keepdims") and axis is not None:
                want = np.expand_dims(want, axis)
            if np.array_equal(dec_array(mine[1]).reshape(np.shape(want)), want):
                return "argmax / argmin of NaN: the first NaN, as numpy's"  # (upstream: another)
    if name == "F.nn.general_norm" and s1 == s2:
        want = _general_norm_exact(call)[0]
        here, there = dec_array(mine[1]), dec_array(theirs[1])
        if _close(here, want.astype(np.float32)) or \
                10 * np.abs(here - want).max() <= np.abs(there - want).max():
            # (upstream's differs by more than float32 rounding where the values are close
            # compared to their size: its variance loses digits. Where they are very close
            # float32 rounding grows past the tolerance here too, but stays far nearer the
            # float64 result: seed 222256, a group [2.2885666, 2.3015435], std 6.5e-3: this
            # side 2.6e-5 off, upstream 3.3e-3)
            return "normalising values close to each other: upstream's rounding"
    if name == "F.scatter" and s1 == s2:
        x, axis, idx, src = (dec_array(call[1][0]), call[1][1][1], dec_array(call[1][2]),
                             dec_array(call[1][3]))
        want = x.copy()
        np.put_along_axis(want, idx.astype(np.intp), src, axis)
        if np.array_equal(dec_array(mine[1]), want, equal_nan=True):
            return "scatter by its formula"  # (upstream 1.13's misplaces some writes)
    if name in ("F.mod", "op.mod") and d1 == d2 and d1 in FLOATS and s1 == s2:
        return "float % with Python's sign rule"
    if name in ZERO_D_KEPT and s1 == () and s2 == (1,) and d1 == d2:
        return "0-d comparisons and *_like stay 0-d"
    if name == "F.norm" and call[2].get("ord") in (float("inf"), float("-inf")) \
            and (call[2].get("axis") is not None or call[2].get("keepdims")) and \
            s2 in ((), (1,)):
        return "norm of ord +-inf over an axis"  # (upstream's is over every element)
    if name in ("F.argsort", "F.topk", "F.sort") and d1 == d2 and s1 == s2:
        x, i1, i2 = dec_array(call[1][0]), dec_array(mine[1]), dec_array(theirs[1])
        if x.ndim == i1.ndim + 1 and x.ndim:  # (topk kth_only: one index a row; seed 226849)
            i1, i2 = i1[..., None], i2[..., None]
        if x.ndim == i1.ndim and i1.dtype.kind == "i" and np.array_equal(
                np.take_along_axis(x, i1, -1), np.take_along_axis(x, i2, -1)):
            return "order among ties"
    if name == "F.logsumexp" and len(s2) == len(s1) and s1 != s2 and 1 in dec_array(
            call[1][0]).shape:  # (upstream squeezes the input's other size-1 axes too)
        return "logsumexp keeps the other size-1 axes"
    if name in ("F.nn.softmax", "F.nn.logsoftmax") and \
            not np.isfinite(dec_array(call[1][0])).all():
        return "a NaN or infinite input gives NaN, as torch's"  # (upstream: 0 and 1)
    if name == "F.gather" and s1 == s2:
        x, axis, idx = dec_array(call[1][0]), call[1][1][1], dec_array(call[1][2])
        if np.array_equal(dec_array(mine[1]), np.take_along_axis(x, idx.astype(np.intp), axis),
                          equal_nan=True):
            return "gather by its formula"  # (upstream 1.13's 3-d gather reads wrong elements)
    if name in ("F.max", "F.min", "T.max", "T.min") and s1 == s2:
        x, a, b = dec_array(call[1][0]), dec_array(mine[1]), dec_array(theirs[1])
        apart = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if not np.isfinite(x).all() and (~np.isfinite(a))[apart].all():
            # (upstream's float16 kernel skips a NaN and clamps an infinity to +-65504)
            return "a NaN or infinity in a max / min stays"
    if s1 == s2 and d1 == d2 and d1 in FLOATS:
        a, b = dec_array(mine[1]), dec_array(theirs[1])
        odd_in = np.zeros(a.shape, bool)  # where an operand (broadcast) is NaN or infinite
        for arg in call[1]:
            if arg[0] == "t" and arg[1] in FLOATS:
                odd = ~np.isfinite(dec_array(arg))
                odd_in |= np.broadcast_to(odd, a.shape) if _broadcasts(odd.shape, a.shape) \
                    else False
        apart = _apart(a, b)
        base = name.split(":")[-1]  # (without jit:, grad:, amp: ...)
        if (base in _NAN_HIDING or base.startswith("Mod.") and "Relu" in base) and \
                apart.any() and (odd_in & ~np.isfinite(a))[apart].all():
            # (upstream's relu, relu6, clip, maximum and minimum hide a NaN operand, its exp
            # of +inf saturates at 2.4e38; elsewhere the rule hid F.sign's NaN)
            return "a NaN or infinite operand stays so"
    if name == "F.gelu" and s1 == s2:
        x, a, b = dec_array(call[1][0]), dec_array(mine[1]), dec_array(theirs[1])
        apart = _apart(a, b)
        if (np.isneginf(x) & (a == 0))[apart].all():
            return "gelu of -inf is its limit, -0"  # (upstream's: NaN)
    if name == "F.logsumexp" and s1 == s2:
        x = dec_array(call[1][0])
        if np.isposinf(x).any() and np.isnan(dec_array(theirs[1])).any():
            return "logsumexp of a row holding +inf is inf"  # (upstream's: inf - inf, NaN)
    return None


# the functions where upstream 1.13 loses a NaN or infinite operand (and the modules that end
# in a ReLU; its vectorised sigmoid of a larger tensor gives 0 for NaN): `known` accepts this
# fork's NaN or infinity there
_NAN_HIDING = frozenset(("F.relu", "F.nn.relu", "F.relu6", "F.nn.relu6", "F.clip",
                         "F.maximum", "F.minimum", "F.exp", "F.sigmoid",
                         "F.fuse_add_relu"))  # (Elemwise's fused add and relu: call 625,409)


def _scaled_alike(mine, theirs):
    """Whether two lists of outputs agree but for the last, which is the other's times one
    factor within 1% of 1 (the same integers dequantized at another scale), zeros alike."""
    if mine[0] != "L" or theirs[0] != "L" or len(mine[1]) != len(theirs[1]) or any(
            _differ_value(x, y) is not None for x, y in zip(mine[1][:-1], theirs[1][:-1])):
        return False
    x, y = mine[1][-1], theirs[1][-1]
    if x[0] != "t" or y[0] != "t" or x[2] != y[2]:
        return False
    a, b = dec_array(x).astype(np.float64), dec_array(y).astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or ((a == 0) != (b == 0)).any() \
            or not a.any():
        return False
    ratio = a[a != 0] / b[a != 0]
    return abs(ratio.mean() - 1) <= 1e-2 and np.ptp(ratio) <= 1e-5


def _one_step_apart(mine, theirs):
    """Whether two lists of dequantized outputs differ only where a value moved by one step
    of its output's grid (the smallest gap between the values there), some of their values
    still agreeing (a wrong scale or zero point moves them all). An output of one value has
    no grid but the two values: there the other outputs' agreement is the evidence."""
    if mine[0] != "L" or theirs[0] != "L" or len(mine[1]) != len(theirs[1]):
        return False
    agreeing = False
    for x, y in zip(mine[1], theirs[1]):
        if x[0] != "t" or y[0] != "t" or x[2] != y[2]:
            return False
        a, b = dec_array(x).astype(np.float64), dec_array(y).astype(np.float64)
        apart = ~np.isclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)
        agreeing = agreeing or not apart.all()
        if not apart.any():
            continue
        if not (np.isfinite(a) & np.isfinite(b))[apart].all():
            return False
        values = np.unique(np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]]))
        gaps = np.diff(values)
        gaps = gaps[gaps > 1e-5 * max(1.0, np.abs(values).max())]
        if not gaps.size or not np.allclose(np.abs(a - b)[apart], gaps.min(), rtol=1e-3):
            return False
    return agreeing


def _rounded_the_other_way(call):
    """This side's results of a ``Q.`` call again, twice: under `rounding_nudged` toward zero,
    then away from zero."""
    results = []
    for away in (False, True):
        with rounding_nudged(away):
            results.append(run_call(call))
    return results


@contextlib.contextmanager
def rounding_nudged(away):
    """Fake quantization (`FakeQuant`, TQT) on this side rounding every value within 16
    float32 steps of a half-step boundary toward zero (``away`` False) or away from zero
    (exact halves go away from zero, as upstream's kernels round), while the block runs."""
    import megengine.quantization.utils as qu

    plain, fused = qu._round_half_away, qu._use_fake_quant_kernel

    def nudged(xp, x):
        a = xp.abs(x)
        t = xp.floor(a)
        near = xp.abs(a - t - 0.5) <= 16 * np.finfo(np.float32).eps * xp.maximum(a, 1)
        return xp.where(near, xp.sign(x) * (t + 1 if away else t), plain(xp, x))
    qu._round_half_away, qu._use_fake_quant_kernel = nudged, lambda x: False
    try:
        yield
    finally:
        qu._round_half_away, qu._use_fake_quant_kernel = plain, fused


_CONVOLUTIONS = frozenset(("F.conv1d", "F.nn.conv2d", "F.conv3d", "F.conv_transpose2d",
                          "F.conv_transpose3d", "F.local_conv2d"))


def _odd_gradient_known(name, kwargs, i, leaves, outputs, gm, gt):
    """`known` for input ``i``'s gradients ``gm`` (here) and ``gt`` (upstream's) of a call
    ``name(..., **kwargs)`` whose outputs' gradients hold NaN and inf (`_odd_gradient`), where
    they differ; ``leaves``: the call's float32 inputs, ``outputs`` its encoded outputs."""
    if not all(np.isfinite(x).all() for x in leaves) or _non_finite(outputs):
        # (the gradients of NaN and infinite inputs and outputs, the domain's edges, are
        # judged on the calls with finite weights, `_gradient`'s, by their own rules)
        return "a NaN or infinite input or output besides"
    if name == "F.topk" and kwargs.get("kth_only"):
        # (kth_only: upstream 1.13 multiplies the row by its 0/1 mask, NaN everywhere;
        # this side selects, as torch's kthvalue: docs/compatibility.rst)
        return "topk's k-th value selects its gradient"
    if name in ("F.nn.ctc_loss", "F.deformable_conv2d", "F.nn.deformable_psroi_pooling"):
        # (tests/fuzz/special_inputs.py OTHER_GRADIENT_RULES: neither side's pattern judged)
        return "a NaN gradient's reach through ctc_loss and the deformable ops, not judged"
    if gm[0] != "t" or gt[0] != "t" or gm[2] != gt[2]:
        return None
    a, b = dec_array(gm), dec_array(gt)
    if name == "F.region_restricted_conv" and _close(np.where(np.isnan(a), b, a), b, True):
        # (a tap outside its output pixel's region: upstream's kernels skip it, this fork
        # multiplies it by 0, as a masked torch convolution does: NaN * 0 reaches the weight.
        # Elsewhere the gradients agree)
        return "a NaN gradient through region_restricted_conv's masked taps"
    odd_a, odd_b = ~np.isfinite(a), ~np.isfinite(b)
    if np.array_equal(odd_a, odd_b) and _close(np.where(odd_a, 0, a), np.where(odd_b, 0, b),
                                               True):
        return "NaN for an infinity at the same elements: each formula's arithmetic"
    if not (odd_b & ~odd_a).any() and (name in _CONVOLUTIONS and i == 1 or
                                       name == "F.vision.warp_perspective" and i == 1):
        # (upstream 1.13's weight gradients and its warp's gradient of mat are finite in
        # places where a NaN or infinite output gradient reaches them, measured; this side's
        # are NaN or inf there, as IEEE's products of every term)
        return "upstream's weight and matrix gradients lose a NaN or infinity"
    both = (odd_a & odd_b) | np.isclose(a, b, rtol=1e-4, atol=1e-4)
    if name in ("F.std", "F.norm", "F.normalize") and (np.isnan(b) & (a == 0) | both).all():
        return "no NaN gradient where the value is 0, as torch's"
    x = leaves[i] if i < len(leaves) else None
    if name in ("F.prod", "T.prod") and x is not None and (x == 0).any() and \
            (np.isnan(b) | both).all():
        return "prod's gradient: the product of the other elements"  # (upstream: NaN)
    return None


def _non_finite(e):
    """Whether encoded value ``e`` holds a float NaN or infinity."""
    if e[0] == "t":
        a = dec_array(e)
        return a.dtype.kind in "fc" and not np.isfinite(a).all()
    if e[0] == "L":
        return any(_non_finite(x) for x in e[1])
    return False


def _module_gradients_known(call, mine, theirs):
    """`known` for a layer's gradients (`_run_module`: each float32 input's, then each
    parameter's by name), here and upstream's, whose outputs agree: the reason where every pair
    that differs is a documented difference, else None."""
    import megengine.module as M

    name = call[0].split(":", 1)[1]
    (args, kwargs, *forward), training = call[1][0][1], call[1][2][1]
    inputs = [dec_array(a) for a in call[1][3:] if a[0] == "t" and a[1] == "float32"]
    params = sorted(k for k, _ in getattr(M, name[4:])(*args, **kwargs).named_parameters())
    reasons, exact = set(), {}  # (exact: `_float32_rounding`'s float64 run)
    weights_dropped = name == "Mod.MultiHeadAttention" and _attention_weights_dropped(call, theirs)
    for i, (key, gm, gt) in enumerate(zip([None] * len(inputs) + params, mine, theirs)):
        if _differ_value(gm, gt, loose=True) is None:
            continue
        if name in ("Mod.RNNCell", "Mod.LSTMCell") and str(key).startswith("bias") and \
                gm[0] == gt[0] == "t" and gt[2][1:] == gm[2] and \
                _close(dec_array(gt).sum(0), dec_array(gm), True):
            # (a bias broadcast over the batch: upstream 1.13's gradient keeps the batch axis,
            # (N, H) for an (H,) parameter; its sum over the batch is this side's)
            reasons.add("upstream's cell bias gradient keeps the batch axis")
        elif not training and ("BatchNorm" in name or "Bn" in name) and \
                key in ("weight", "bias", "bn.weight", "bn.bias") and \
                gm[0] == gt[0] == "t" and (_unset_apart(gm, gt) or _differ_value(
                    gm, _float64_run(call, exact)[i], loose=True) is None):
            # (as F.batch_norm's in inference mode: upstream's weight gradient, and its bias's,
            # now and then: memory left unset, call 153617's bias gradient [6e-29, -1.6e-38,
            # 6e-29] for [40, 45, 50], or another gradient's values, calls 37591 and 114928,
            # whose reruns upstream agree; this side's is the float64 run's)
            reasons.add("batch_norm's weight gradient in inference mode")
        elif name == "Mod.PReLU" and key is None and (inputs[0] == 0).any():
            reasons.add("the gradient at 0 is the negative slope, as torch's")
        elif name in ("Mod.MaxPool2d", "Mod.AdaptiveMaxPool2d") and key is None and \
                _overlapping(("grad:" + ("F.nn.max_pool2d" if name == "Mod.MaxPool2d" else
                                         "F.nn.adaptive_max_pool2d"),
                              [call[1][3], ("v", args[0])], kwargs)):
            reasons.add("overlapping max windows give the first maximum, as torch's")
        elif name in NORM_FUNCTIONS and _nearly_equal(_norm_groups(
                ("grad:" + NORM_FUNCTIONS[name], [call[1][3], ("v", args[0])], {}))):
            reasons.add("normalising nearly equal values: rounding")  # (call 199304)
        elif name == "Mod.BatchMatMulActivation" and key == "bias":
            # (upstream's float layer adds its bias along the last axis, docs/compatibility.rst:
            # its gradient sums the other axis; here the outputs agreed all the same, call
            # 161664)
            reasons.add("BatchMatMulActivation's bias per output row")
        elif weights_dropped:
            # (need_weights: upstream 1.13's backward drops what reaches the layer through the
            # attention weights it returns; its gradients are this side's of the first output
            # alone, calls 25579, 169583, 186456; this side's are the finite differences)
            reasons.add("upstream drops the returned attention weights' gradient")
        elif _normalises(name) and gm[0] == gt[0] == "t" and \
                _float32_rounding(call, exact, i, gm, gt):
            # (a batch norm over values that nearly agree, a bias or weight before it whose
            # gradient is rounding noise: calls 75335, 103254, 121563)
            reasons.add(ROUNDING)
        else:
            return None
    return ", ".join(sorted(reasons)) or None


def _normalises(name):
    """Whether layer ``name`` (``Mod.``) normalises its values (a batch, layer, group or instance
    norm, fused or not), which multiplies roundings by 1 / std: where `_float32_rounding` may
    judge (elsewhere a float64 run of this side's code would hide a wrong formula)."""
    return name.startswith("Mod.") and ("Bn" in name or "Norm" in name)


ROUNDING = "float32 rounding: this side's within the float64 result's tolerance, ten times " \
           "nearer it, or a 0 each side's noise"


def _float32_rounding(call, exact, i, mine, theirs):
    """Whether a layer's call's gradient ``i`` (or its outputs, ``i`` "out"), ``mine`` here, and
    upstream's ``theirs`` are apart by rounding's size only, and ``mine`` is within the tolerance
    of the float64 result, or ten times nearer it than ``theirs``, or, where that result is 0,
    both within 1e-3 of its largest value: `_run_module` with float64 inputs, parameters and
    buffers, run here once (``exact`` keeps its results, rounded to float32)."""
    _float64_run(call, exact)
    flat = [_flat_values(x) for x in (mine, theirs, exact[i])]
    if any(f is None or f.shape != flat[2].shape for f in flat) or _holds_float16(mine):
        return False  # (float16 results, under autocast, are judged by its own rules)
    # (apart by rounding's size only: 1e-2 of the largest output, or of the largest gradient,
    # so that a wrong formula, which the float64 run shares, is not taken for rounding)
    scale = max(np.abs(np.nan_to_num(v)).max(initial=0) for v in (
        _flat_values(e) for k, e in exact.items() if (k == "out") == (i == "out"))
        if v is not None)
    if np.abs(flat[0] - flat[1]).max(initial=0) > 1e-2 * max(1.0, scale):
        return False
    # (a value that is 0 but for rounding, a bias's gradient before a batch norm in training, is
    # each side's noise: call 624,129, [2e-7, -5.5e-4] here, [4e-7, 5.5e-4] upstream)
    ours, theirs = (np.abs(f - flat[2]).max(initial=0) for f in flat[:2])
    zero = np.abs(flat[2]).max(initial=0) <= 1e-6 * max(1.0, scale)
    return _differ_value(mine, exact[i], loose=True) is None or ours * 10 <= theirs or \
        zero and max(ours, theirs) <= 1e-3 * max(1.0, scale)


def _float64_run(call, exact):
    """Fill ``exact`` (once) with a layer call's results run here in float64 (`_run_module`
    with float64 inputs, parameters and buffers), rounded to float32: "out" and each gradient
    by its index."""
    import megengine as mge

    def down(x):
        if isinstance(x, (list, tuple)):
            return [down(v) for v in x]
        return x.astype(np.float32) if getattr(x, "dtype", None) == np.float64 else x

    if not exact:
        wide = [enc_array(dec_array(a).astype(np.float64)) if a[0] == "t" and
                a[1] == "float32" else a for a in call[1]]
        out, grads = _run_module(call[0].partition("Mod.")[2], True, dtype=np.float64)(
            *[_decode(mge, a) for a in wide])
        exact["out"] = _encode(down(out))
        exact.update(enumerate(_encode(down(grads))[1]))
    return exact


def _holds_float16(e):
    """Whether an encoded result holds a float16 tensor."""
    if e[0] == "t":
        return e[1] == "float16"
    return e[0] in ("L", "np") and any(_holds_float16(x) for x in (
        e[1] if e[0] == "L" else [e[1]]))


def _flat_values(e):
    """The float values of an encoded result, in order, as one float64 array (None where it
    holds something else)."""
    if e[0] == "t":
        return dec_array(e).astype(np.float64).ravel()
    if e[0] == "np":
        return _flat_values(e[1])
    if e[0] == "L":
        parts = [_flat_values(x) for x in e[1]]
        return None if any(p is None for p in parts) else np.concatenate(parts + [np.zeros(0)])
    return None


NORM_FUNCTIONS = {"Mod.LayerNorm": "F.nn.layer_norm", "Mod.GroupNorm": "F.group_norm",
                  "Mod.InstanceNorm": "F.instance_norm"}


def _nearly_equal(groups):
    """Whether a normalisation's groups (`_norm_groups`) hold one of values whose standard
    deviation is under 0.1, where dividing by it multiplies the roundings."""
    return groups.shape[-1] > 1 and bool((groups.std(-1) < 0.1).any())


def _attention_weights_dropped(call, theirs):
    """Whether upstream's gradients ``theirs`` of a MultiHeadAttention call that returns its
    attention weights are this side's of the attention output alone."""
    import megengine as mge

    init = call[1][0][1]
    if len(init) < 3 or not init[2][0].get("need_weights"):
        return False
    _, grads = _run_module("MultiHeadAttention", True, first=True)(
        *[_decode(mge, a) for a in call[1]])
    alone = _encode(list(grads))
    return alone[0] == "L" and len(alone[1]) == len(theirs) and all(
        _differ_value(a, t, loose=True) is None for a, t in zip(alone[1], theirs))


def _known_with_gradients(call, mine, theirs):
    """`known` for a call run with gradients: the outputs' reason, else the gradients'."""
    inner = (call[0].split(":", 1)[1],) + tuple(call[1:])
    if not (mine[0] and theirs[0]):
        return known(inner, mine, theirs)
    (out_m, grads_m), (out_t, grads_t) = mine[1][1], theirs[1][1]
    if _differ_value(out_m, out_t) is not None:
        return known(inner, (True, out_m), (True, out_t))
    name = _plain(inner[0])
    if name.startswith("Mod."):
        return _module_gradients_known(call, grads_m[1], grads_t[1])
    if name == "F.vision.cvt_color":
        return "cvt_color is differentiable here"  # (upstream gives no gradient)
    if name in ("F.vision.correlation", "F.vision.roi_align"):
        # (upstream 1.13's backward disagrees with finite differences, roi_align's leaves
        # uninitialised memory in places; this one matches them: checked on the cases found)
        return "the gradient of correlation and roi_align by finite differences"
    if name in ("F.mod", "op.mod"):
        return "the divisor of % gets a gradient, as torch's"  # (upstream's gets none)
    leaves = [dec_array(a) for a in call[1] if a[0] == "t" and a[1] == "float32"]
    odd = call[0].startswith("gradodd:")  # (NaN and inf among the outputs' gradients)
    for i, (x, gm, gt) in enumerate(zip(leaves, grads_m[1], grads_t[1])):
        if _differ_value(gm, gt, loose=True) is None:
            continue
        if gm[0] == "t" and gt[0] == "t" and gm[2] == x.shape != gt[2]:
            return "a broadcast operand's gradient has its shape"  # (upstream's: the output's)
        base = dec_array(call[1][0]) if call[1][0][0] == "t" else np.asarray(call[1][0][1])
        if name in ("op.pow", "F.pow") and (base == 0).any():
            return "the exponent's gradient at base 0 is 0, as torch's"  # (upstream: -inf)
        if name == "F.batch_norm" and not call[2].get("training", False) and \
                x is leaves[3] and gm[0] == gt[0] == "t" and _unset_apart(gm, gt):
            # (x, mean, var, w, b; upstream 1.13's, now and then: 6 of 300 repeats of one call
            # gave zeros, seed 89,324 [2.6e22, 0] for [2.98, 28.6], and its rerun agrees)
            return "batch_norm's weight gradient in inference mode"
        if name in ("F.nn.max_pool2d", "F.nn.adaptive_max_pool2d") and _overlapping(call):
            return "overlapping max windows give the first maximum, as torch's"
        if name == "F.nn.general_norm" and gm[0] == gt[0] == "t" and gm[2] == gt[2]:
            exact = _general_norm_exact(call)[1][[id(v) for v in leaves].index(id(x))]
            if _close(dec_array(gm), exact.astype(np.float32), True) and \
                    not _close(dec_array(gt), exact.astype(np.float32), True):
                # (a group of two values: their gradients are what is left of terms of size 1
                # that cancel. Seed 206,626: an input gradient of 3.6106e-3 in float64, here
                # 3.6011e-3, upstream 3.357e-3)
                return "a normalisation's gradient: upstream's rounding, this side's within " \
                       "the tolerance of the float64 result"
        if name in ("F.group_norm", "F.instance_norm", "F.nn.layer_norm", "F.nn.general_norm"):
            groups = _norm_groups(call)
            if _nearly_equal(groups):
                # (values nearly equal: a standard deviation under 0.1, where dividing by it
                # multiplies the roundings)
                return "normalising nearly equal values: rounding"
            a, b = (dec_array(gm), dec_array(gt)) if gm[0] == gt[0] == "t" else (None, None)
            if groups.shape[-1] == 1 and a is not None and \
                    np.array_equal(np.isnan(a), np.isnan(b)) and \
                    np.nanmax(np.abs(a - b), initial=0) <= \
                    1e-3 * max(1.0, float(np.nanmax(np.abs(b), initial=0))):
                # a group of one value normalises to 0, whose rounding (x - mean, 1e-7 here and
                # there, torch's kernel too) times 1 / sqrt(eps) = 316 makes the gradients
                # (seeds 80,662 and 82,466: a weight gradient of -6.5e-5 here, 0 upstream;
                # NaN at the same elements on both sides, --odd-gradients seed 539,781)
                return "normalising single values: rounding times 1 / sqrt(eps)"
        if name == "F.hswish" and (np.abs(x) == 3).any():
            return "hswish's kinks on ATen's kernel, as torch's"
        if name in ("F.nn.prelu", "F.nn.leaky_relu") and (x == 0).any():
            return "the gradient at 0 is the negative slope, as torch's"
        if name in ("F.norm", "F.abs", "F.nn.l1_loss", "F.normalize") and (x == 0).any():
            return "the gradient of |x| at 0 is 0, as torch's"
        if odd:  # (the rules below take a NaN or infinity for their own: the weights' here)
            reason = _odd_gradient_known(name, call[2], i, leaves, out_m, gm, gt)
            if reason:
                return reason
            continue
        if name in ("F.prod", "T.prod") and (~np.isfinite(x) | (x == 0)).any() and \
                gt[0] == "t" and np.isnan(dec_array(gt)).any():
            return "prod's gradient: the product of the other elements"  # (upstream: NaN)
        if name in ("F.std", "F.norm", "F.normalize") and gt[0] == "t" and \
                np.isnan(dec_array(gt)).any():
            return "no NaN gradient where the value is 0, as torch's"
        if np.isnan(x).any() and gm[0] == "t" and gt[0] == "t" and gm[2] == gt[2] and \
                _close(*(np.where(np.isnan(x), 0, dec_array(g)) for g in (gm, gt)), True):
            return "a NaN input's gradient"
        if gm[0] == "t" and gt[0] == "t" and not np.isfinite(dec_array(gm)).all():
            return "an infinite derivative at the domain's edge, as torch's"
        return None
    return None


def _on_gpu():
    """Whether this checkout computes on a GPU (the record is upstream's CPU answers)."""
    import megengine as mge

    return mge.get_default_device().startswith(("gpu", "xpu")) and \
        mge.device.get_device_count("gpu") > 0


def _overlapping(call):
    """Whether a max pooling call's windows overlap (kernel larger than stride)."""
    name, args, kw = call[0].split(":", 1)[1], call[1], call[2]
    if name.endswith("adaptive_max_pool2d"):
        h, w = dec_array(args[0]).shape[2:]
        o = args[1][1]
        oh, ow = (o, o) if isinstance(o, int) else o
        return h - (oh - 1) * (h // oh) > h // oh or w - (ow - 1) * (w // ow) > w // ow
    k, stride = args[1][1], kw.get("stride", args[1][1])
    return k > stride


def _unset_apart(mine, theirs):
    """Whether encoded arrays ``mine`` and ``theirs`` agree wherever ``theirs`` holds a value
    that memory left unset gives: 0, or one a million times larger or smaller than ours
    (call 491183: [0, 4.6e-15, 8.2e-19] for [-11.6, -6.5, -15.0])."""
    a, b = dec_array(mine).astype(np.float64), dec_array(theirs).astype(np.float64)
    scale = np.maximum(1.0, np.abs(a))
    unset = (b == 0) | ~np.isfinite(b) | (np.abs(b) > 1e6 * scale) | (np.abs(b) < 1e-6 * scale)
    return bool(np.all(unset | np.isclose(a, b, 1e-4, 1e-5)))


def _stats_float16_apart(mine, theirs):
    """Whether two [output, [running statistics]] results agree in the output and within
    float16 rounding (2e-3 of the larger of 1 and the largest magnitude) in the statistics:
    each engine rounds the float16 layer output its own way (call 484971: equal outputs,
    running variances of 5.04 and 5.05)."""
    if mine[0] != "L" or theirs[0] != "L" or len(mine[1]) != 2 or len(theirs[1]) != 2 or \
            _differ_value(mine[1][0], theirs[1][0]) is not None:
        return False
    ours, upstream = mine[1][1], theirs[1][1]
    if ours[0] != "L" or upstream[0] != "L" or len(ours[1]) != len(upstream[1]):
        return False
    for a, b in zip(ours[1], upstream[1]):
        a, b = (v[1] if v[0] == "np" else v for v in (a, b))  # (numpy arrays: their values)
        if a[0] != "t" or b[0] != "t" or a[1:3] != b[1:3]:
            return False
        a, b = dec_array(a).astype(np.float64), dec_array(b).astype(np.float64)
        if not np.allclose(a, b, rtol=0, atol=2e-3 * max(1.0, float(np.abs(b).max(initial=0)))):
            return False
    return True


def _close_as(a, b, half):
    """``a`` and ``b`` agree: within float32's tolerance, or float16's (1e-2 of the larger of 1
    and the largest magnitude) where ``half`` (a product under autocast)."""
    if not half:
        return _close(a, b)
    return np.shape(a) == np.shape(b) and np.allclose(
        a, b, rtol=0, atol=1e-2 * max(1.0, float(np.abs(b).max(initial=0))))


def _upstream_bmma(call):
    """What upstream 1.13's float BatchMatMulActivation computes for a ``Mod.`` call:
    ``weight @ x``, its bias added along the last axis, then the nonlinearity."""
    (args, kw), state = call[1][0][1], call[1][1][1]
    x = dec_array(call[1][3]).astype(np.float32)
    out = dec_array(state["weight"]).astype(np.float32) @ x
    if "bias" in state:
        out = out + dec_array(state["bias"]).astype(np.float32)
    return np.maximum(out, 0) if kw.get("nonlinear_mode", "identity") == "relu" else out


def _first_channels_bias(call):
    """A fused transposed convolution's call with every channel's bias its first channel's
    (what upstream 1.13's conv_transpose2d adds under autocast)."""
    name, args, kwargs = call
    state = dict(args[1][1])
    key = next((k for k in state if k in ("bias", "conv_transpose2d.bias")), None)
    if key is None:  # (no bias)
        return call
    bias = dec_array(state[key])
    state[key] = enc_array(np.broadcast_to(bias[:, :1], bias.shape).copy())
    return (name, [args[0], ("S", state)] + list(args[2:]), kwargs)


def _norm_module_exact(call):
    """A GroupNorm / InstanceNorm / LayerNorm / GeneralNorm module call's output computed by
    torch in float64
    (megengine's defaults: eps 1e-5, affine weight and bias from the call's state)."""
    import torch
    import torch.nn.functional as TF

    kind = call[0][4:]
    (args, kw), state = call[1][0][1], call[1][1][1]
    x = torch.from_numpy(dec_array(call[1][3]).astype(np.float64))
    w, b = (torch.from_numpy(dec_array(state[k]).astype(np.float64)) if k in state else None
            for k in ("weight", "bias"))
    eps = kw.get("eps", 1e-5)
    if kind == "GeneralNorm":  # (the normalised axes' mean and biased variance)
        axes = kw["normalized_axis"]
        axes = [a % x.ndim for a in ((axes,) if isinstance(axes, int) else axes)]
        keep = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        mean = x.mean(dim=axes, keepdim=True)
        out = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(dim=axes, keepdim=True) + eps)
        if w is not None:
            out = out * w.reshape(keep) + b.reshape(keep)
        return out.numpy()
    if kind == "LayerNorm":
        shape = (args[0],) if isinstance(args[0], int) else tuple(args[0])
        out = TF.layer_norm(x, shape, None if w is None else w.reshape(shape),
                            None if b is None else b.reshape(shape), eps)
    else:
        groups = x.shape[1] if kind == "InstanceNorm" else args[0]
        out = TF.group_norm(x, groups, None if w is None else w.reshape(-1),
                            None if b is None else b.reshape(-1), eps)
    return out.numpy()


def _linear_bn_exact(call):
    """A LinearBn1d / LinearBnRelu1d module call's output in training mode (the batch's mean
    and biased variance, megengine's eps 1e-5), computed by torch in float64."""
    import torch
    import torch.nn.functional as TF

    state = {k: torch.from_numpy(dec_array(v).astype(np.float64))
             for k, v in call[1][1][1].items()}
    x = torch.from_numpy(dec_array(call[1][3]).astype(np.float64))
    y = TF.linear(x, state["linear.weight"], state.get("linear.bias"))
    y = TF.batch_norm(y, None, None, state["bn.weight"], state["bn.bias"], True, 0.0, 1e-5)
    return (TF.relu(y) if call[0].endswith("Relu1d") else y).numpy()


def _general_norm_exact(call):
    """A general_norm call's output and the gradients of its float32 tensors (x, then weight
    and bias when given; `_with_gradients`' output weights), computed by torch in float64."""
    import torch

    args = call[1]
    x = torch.tensor(dec_array(args[0]).astype(np.float64), requires_grad=True)
    axes = [a % x.ndim for a in args[1][1]]
    mean = x.mean(dim=axes, keepdim=True)
    y = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(dim=axes, keepdim=True) + 1e-5)
    leaves = [x]
    if len(args) > 4 and args[3][0] == "t":  # weight and bias, shaped as the normalised axes
        keep = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        w, b = (torch.tensor(dec_array(a).astype(np.float64), requires_grad=True)
                for a in args[3:5])
        y = y * w.reshape(keep) + b.reshape(keep)
        leaves += [w, b]
    weights = np.linspace(0.5, 1.5, y.numel(), dtype=np.float32).reshape(tuple(y.shape))
    (y * torch.from_numpy(weights.astype(np.float64))).sum().backward()
    return y.detach().numpy(), [v.grad.numpy() for v in leaves]


def _norm_groups(call):
    """A normalisation call's input (float64) as its groups, one a row."""
    name, args = call[0].split(":", 1)[1], call[1]
    x = dec_array(args[0]).astype(np.float64)
    if name == "F.group_norm":
        groups = x.reshape(x.shape[0], args[1][1], -1)
    elif name == "F.instance_norm":
        groups = x.reshape(x.shape[0] * x.shape[1], -1)
    elif name == "F.nn.general_norm":  # (the normalised axes last, each group a row)
        axes = [a % x.ndim for a in call[1][1][1]]
        rest = [a for a in range(x.ndim) if a not in axes]
        groups = x.transpose(rest + axes).reshape(-1, int(np.prod([x.shape[a] for a in axes])))
    else:
        groups = x.reshape(-1, int(np.prod(args[1][1])))
    return groups.reshape(-1, groups.shape[-1])


def _broadcasts(shape, to):
    return len(shape) <= len(to) and all(m in (1, n) for m, n in zip(shape[::-1], to[::-1]))


def differ(mine, theirs, gradients=False, loose=False):
    """None when two encoded results agree, else what differs; ``loose``: to 10x the
    tolerance (a few training steps, whose updates add up the roundings of every op)."""
    if mine[0] != theirs[0]:
        return "a value here, an error there" if mine[0] else "an error here, a value there"
    if not mine[0]:
        return None  # both raised (the messages and types are each engine's own)
    if loose:
        return _differ_value(mine[1], theirs[1], loose=True)
    if gradients:  # [outputs, [gradients]]: the gradients to 10x the tolerance (they add up
        # more roundings, and a normalisation of close values multiplies them)
        (out_m, grads_m), (out_t, grads_t) = mine[1][1], theirs[1][1]
        why = _differ_value(out_m, out_t)
        return f"outputs: {why}" if why else _differ_value(grads_m, grads_t, loose=True)
    return _differ_value(mine[1], theirs[1])


def _differ_value(a, b, loose=False):
    if a[0] != b[0]:
        return f"kinds {a[0]} / {b[0]}"
    if a[0] == "t":
        if a[1] != b[1]:
            return f"dtype {a[1]} / {b[1]}"
        if a[2] != b[2]:
            return f"shape {a[2]} / {b[2]}"
        return None if _close(dec_array(a), dec_array(b), loose) else "values"
    if a[0] == "L":
        if len(a[1]) != len(b[1]):
            return f"{len(a[1])} / {len(b[1])} items"
        for i, (x, y) in enumerate(zip(a[1], b[1])):
            why = _differ_value(x, y, loose)
            if why:
                return f"item {i}: {why}"
        return None
    if a[0] == "np":
        return _differ_value(a[1], b[1], loose)
    if a[0] == "D":
        keys_a, keys_b = [k for k, _ in a[1]], [k for k, _ in b[1]]
        if keys_a != keys_b:
            return f"keys {keys_a} / {keys_b}"
        for (k, x), (_, y) in zip(a[1], b[1]):
            why = _differ_value(x, y, loose)
            if why:
                return f"[{k!r}]: {why}"
        return None
    x, y = a[1], b[1]
    if isinstance(x, float) or isinstance(y, float):
        return None if np.isclose(x, y, rtol=1e-5, equal_nan=True) else f"{x!r} / {y!r}"
    return None if x == y else f"{x!r} / {y!r}"


def describe(call):
    name, args, kwargs = call

    def show(e):
        if e[0] == "t":
            return f"tensor({dec_array(e).tolist()!r}, dtype={e[1]})"
        if e[0] == "L":
            return "[" + ", ".join(show(x) for x in e[1]) + "]"
        if e[0] == "I":
            return repr(e[1])
        return repr(e[1])

    return f"{name}({', '.join(show(a) for a in args)}" + \
        "".join(f", {k}={v!r}" for k, v in kwargs.items()) + ")"


def fuzz(seeds, start, upstream=None, record=None, cwd="/tmp", show=print,
         odd_gradients=False):
    import tempfile

    seed_list = list(range(start, start + seeds))
    calls = [_odd_gradient(Draw(s)) if odd_gradients else draw(s) for s in seed_list]
    if upstream is None:
        import collections

        return 0, collections.Counter("value" if run_call(c)[0] else "error" for c in calls)
    import os

    # (without PYTHONPATH, which names this checkout: upstream's interpreter must find its own)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as tmp:
        theirs = run_elsewhere(upstream, calls, tmp, cwd=cwd, env=env)
    if record:
        save_record(record, seed_list, calls, theirs)
    return compare_all(seed_list, calls, theirs, show)


def compare_all(seeds, calls, theirs, show=print):
    """Run ``calls`` here and compare with ``theirs`` (upstream's results): (failures, a
    Counter of outcomes), each failure shown."""
    import collections

    outcomes, bad = collections.Counter(), 0
    for seed, call, t in zip(seeds, calls, theirs):
        m = run_call(call)
        if not t[0] and t[1] == "missing":
            outcomes["not in upstream"] += 1
            continue
        why = differ(m, t, loose=call[0].startswith("Train."),
                     gradients=call[0].startswith(("grad:", "gradodd:")) and m[0] and t[0])
        if why is None and not m[0]:
            why = _other_error_type(m, t)
        if why is None:
            outcomes["same value" if m[0] else "both raise"] += 1
            continue
        if m[0] and not t[0]:  # upstream refuses what this fork computes: no upstream program
            outcomes["upstream raises"] += 1  # meets it (docs/compatibility.rst lists them)
            continue
        reason = known(call, m, t)
        if reason:
            outcomes[f"known: {reason}"] += 1
            continue
        bad += 1
        show(f"=== call {seed}: {why}\n  {describe(call)}\n  here:     {_brief(m)}\n"
             f"  upstream: {_brief(t)}")
    return bad, outcomes


# ----- a record of upstream's answers (tests/fuzz/upstream_calls.json: CI compares with it) --

def _to_json(e):
    import base64

    if isinstance(e, tuple) and e and e[0] == "t" and len(e) == 4 and isinstance(e[3], bytes):
        return {"array": e[1], "shape": list(e[2]), "bytes": base64.b64encode(e[3]).decode()}
    if isinstance(e, list):  # (lists and tuples kept apart: JSON arrays are tuples)
        return {"list": [_to_json(x) for x in e]}
    if isinstance(e, tuple):
        return [_to_json(x) for x in e]
    if isinstance(e, dict):
        return {"dict": [[k, _to_json(v)] for k, v in e.items()]}
    if isinstance(e, float) and not np.isfinite(e):
        return {"float": repr(e)}
    return e


def _from_json(j):
    import base64

    if isinstance(j, dict):
        if "array" in j:
            return ("t", j["array"], tuple(j["shape"]), base64.b64decode(j["bytes"]))
        if "float" in j:
            return float(j["float"])
        if "list" in j:
            return [_from_json(x) for x in j["list"]]
        return {k: _from_json(v) for k, v in j["dict"]}
    if isinstance(j, list):
        return tuple(_from_json(x) for x in j)
    return j


def save_record(path, seeds, calls, results):
    import json

    with open(path, "w") as f:
        json.dump({"upstream": "MegEngine 1.13.0 (python3.10, CPU)", "seeds": seeds,
                   "calls": [_to_json(c) for c in calls],
                   "results": [_to_json(r) for r in results]}, f, separators=(",", ":"))
        f.write("\n")


def load_record(path):
    import json

    with open(path) as f:
        data = json.load(f)
    return data["seeds"], [_from_json(c) for c in data["calls"]], \
        [_from_json(r) for r in data["results"]]


def _brief(r):
    if not r[0]:
        return f"{r[1]}: {r[2]}"
    v = r[1]
    if v[0] == "t":
        return f"{v[1]} {v[2]} {dec_array(v).tolist()!r}"[:400]
    if v[0] == "L":
        return "[" + "; ".join(_brief((True, x)) for x in v[1]) + "]"
    return repr(v[1])[:400]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1], argv[2])
        return 0
    from .gen import seeds_main

    return seeds_main(argv, "python -m tests.fuzz.upstream_calls", __doc__, "calls", fuzz,
                      options=[("--upstream", dict(default=None, metavar="PYTHON",
                                                   help="an interpreter with upstream "
                                                        "MegEngine installed")),
                               ("--record", dict(default=None, metavar="FILE",
                                                 help="with --upstream: also write the calls "
                                                      "and upstream's answers to FILE (JSON)")),
                               ("--odd-gradients", dict(
                                   action="store_true",
                                   help="draw only differentiable calls, whose outputs' "
                                        "gradients hold NaN and inf"))])


if __name__ == "__main__":
    sys.exit(main())
