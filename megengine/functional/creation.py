"""Tensor creation functions (F.zeros, F.ones, F.full and their ``_like`` forms, F.arange,
F.linspace, F.eye, F.copy): upstream's `megengine.functional.tensor` names, re-exported there."""
import numpy as np

from .. import device as _device
from ..core import dtype as _qd
from ..core import ops as _ops
from ..core._caller import public_argument
from ..core.ops import ArgumentError, ArgumentTypeError, BroadcastError
from ..core._trace_option import Shape, dumpable, is_dim, is_int, is_sym, sizes_of
from ..core.dispatch import Op, apply, on_device
from ..core.dtype_rules import _check_dtype, is_complex_data, complex_error
from ..core.tensor import Tensor, as_array
from ._args import _int
from .elemwise import _tensor


def _place(device):
    dev = _device.canonical_device(device)
    return dev, _device.array_module_on(dev)  # allocates on dev's GPU, also when not current


def _dtype(dtype, what):
    # None means the default float, as upstream (np.dtype(None) would be float64)
    return _check_dtype(np.float32 if dtype is None else dtype, what)


def _num(value):
    return value.item() if isinstance(value, Tensor) else value


def _one_number(value, name, what):
    """``value`` as one number: a number (or a size from ``x.shape`` while tracing) as it is; a
    Tensor, array or sequence holding one number gives it (upstream reads ``F.arange([1], 4)``'s
    start as 1); anything else raises, naming ``what`` and ``name``."""
    if is_sym(value) or isinstance(value, (int, float, np.number)):
        return value
    try:
        if isinstance(value, Tensor):
            if value.size == 1:
                return value.item()
        elif np.size(value) == 1 and np.asarray(value).dtype.kind in "biuf":
            return np.asarray(value).item()
    except (TypeError, ValueError):  # (ragged nesting)
        pass
    raise ArgumentTypeError(f"{what}: {name} must be a number (or hold one number), got "
                            f"{value!r}")


def _unwrap_shape(shape):
    """The shape inside a 1-tuple that holds it: upstream's broadcast and reshape unwrap one
    (their ``_expand_args``), so ``F.zeros(([2, 3],))`` is ``F.zeros([2, 3])``."""
    if (type(shape) is tuple and len(shape) == 1
            and isinstance(shape[0], (list, tuple, Tensor, np.ndarray))):
        return shape[0]
    return shape


def _whole(s):
    """Whether ``s`` is a float holding a whole number (``2.0``, ``n / 2`` of an even n): a size
    upstream's shape conversion reads as the int it holds (a fraction is refused)."""
    return isinstance(s, (float, np.floating)) and float(s).is_integer()


def _shape_arg(shape, what):
    """A shape as upstream accepts it, as a tuple of Python ints: an int, a sequence (whose items
    may be ints, numpy ints or 0-d arrays, or one-element Tensors, e.g. pieces of ``x.shape``),
    a 1-D Tensor or numpy array (what ``F.concat`` of shape pieces gives); a scalar's is ``()``.
    None raises, naming the function called and its argument, as upstream's ``F.zeros(None)``
    raises (earlier versions of this fork took it for ``()``: a function that returned None
    by mistake made a scalar)."""
    if shape is None:
        func, arg = public_argument(None)
        raise ArgumentTypeError(f"{func or what}: {arg or 'the shape'} is None; pass a shape: "
                                "an int, a sequence of ints or a 1-D integer Tensor (() for a "
                                "scalar)")
    shape = _unwrap_shape(shape)
    if isinstance(shape, Shape):  # x.shape while tracing: its items, SymDims kept (not numpy())
        shape = tuple(shape)
    if isinstance(shape, Tensor):
        sizes = sizes_of(shape)  # a shape tensor of a dumpable trace: its SymDims
        shape = shape.numpy() if sizes is None else sizes.tolist()  # (numpy: a noted read)
    if hasattr(shape, "ndim") and hasattr(shape, "tolist"):  # numpy/CuPy array or numpy scalar
        if shape.dtype.kind == "f" and bool((shape == shape.round()).all()):
            # upstream's shape check reads a float shape holding whole numbers (a shape
            # computed by matmul, as upstream's test_interpreter does; np.array([2.0, 3.0]))
            # as those ints
            shape = shape.astype("int64")
        if shape.dtype.kind not in "iu":
            raise TypeError(f"{what}: a shape array must hold integers (or whole-number "
                            f"floats), got dtype {shape.dtype}: {shape.tolist()}")
        shape = shape.tolist()
    if is_dim(shape):  # a size from x.shape in a dumpable trace (see core._trace_option)
        return (shape,)
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool) or _whole(shape):
        return (int(shape),)
    if not isinstance(shape, (list, tuple)):
        raise ArgumentTypeError(f"{what}: a shape must be an int, a sequence of ints, a 1-D "
                                f"integer Tensor or None, got {type(shape).__name__}")
    out = []
    for s in shape:
        if isinstance(s, Tensor) and sizes_of(s) is not None and sizes_of(s).size == 1:
            s = sizes_of(s).ravel()[0]  # (Tensor(x.shape)[0]: a size of a dumpable trace)
        if isinstance(s, Tensor):
            if s.size != 1 or s.dtype.kind not in "iuf":
                raise TypeError(f"{what}: a shape entry Tensor must be one integer (or a whole-"
                                f"number float), got shape {s.shape} and dtype {s.dtype}")
            s = s.item()  # (a float: refused below unless whole, Tensor(3.0) as upstream's)
        if isinstance(s, np.ndarray) and s.ndim == 0:
            s = s[()]  # a 0-d array is its numpy scalar (upstream's test_reshape passes one)
        if is_dim(s):
            out.append(s)
            continue
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) and not _whole(s):
            raise ArgumentTypeError(f"{what}: shape entries must be ints (or whole-number "
                                    f"floats), got {s!r} in {shape!r}")
        out.append(int(s))
    return tuple(out)


def _shape(shape, what):
    shape = _shape_arg(shape, what)
    if any(s < 0 for s in shape):
        raise ArgumentError(f"{what}: shape {shape} has a negative dimension")
    return shape


def _fill_value(value, dtype, what):
    """``value`` as one element of ``dtype``, converted as ``Tensor(value, dtype)`` converts it:
    a Python int outside an integer dtype's range wraps (upstream's Fill and FillLike cast the
    value, as its guide's ``Tensor([127, 128, 129], dtype="int8")``; numpy 2 would raise
    OverflowError), a float truncates. A Tensor gives its number (also from a GPU). (0 and 1,
    every dtype's, and a float for a float dtype are taken as they are: the conversion cost
    zeros_like three times its ~2.5 us)"""
    if type(value) is int and 0 <= value <= 1 or type(value) is float and dtype.kind == "f":
        return value
    if value is None or isinstance(value, (str, bytes)):  # (numpy parses "0.5" into a float
        raise _bad_value(value, what)  # dtype, and None into NaN)
    try:
        value = as_array(_num(value), dtype, device="cpu0")[()]
    except (TypeError, ValueError):  # (a string, a many-valued Tensor: numpy's words)
        raise _bad_value(value, what) from None
    return value


def _bad_value(value, what):
    return ArgumentTypeError(f"{what}: value must be a number, a one-element Tensor or a "
                             f"sequence of numbers, got {value!r}")


def _check_fills(value, shape, what):
    """A sequence value (numpy's broadcasting, as upstream's) must broadcast to ``shape``."""
    if getattr(value, "ndim", 0):  # (np.ndim of a Python number costs ~1 us: asarray)
        try:
            np.broadcast_to(value, shape)
        except ValueError:
            raise BroadcastError(f"{what}: value of shape {np.shape(value)} does not broadcast "
                                 f"to the shape {tuple(shape)}") from None


def _filled(shape, value, dtype, device, what):
    """A tensor of ``shape`` filled with ``value``: a constant, or an op when the shape holds
    sizes of a dumpable trace (`megengine.core.ops.Full`). A shape holding a Tensor the program
    computes (``F.zeros((n, 3))``, ``F.full(shape_tensor, 2.0)``) is an input of the op there,
    as upstream's Fill makes it: the value as a constant broadcast to the shape Tensor."""
    dev, xp = _place(device)
    shape = _unwrap_shape(shape)
    value = _fill_value(value, dtype, what)
    if dumpable() and (_ops.by_shape_tensor(shape) or _ops.computed_sizes(shape)):
        from .tensor import broadcast_to  # (tensor.py imports this module)

        return broadcast_to(Tensor._wrap(xp.full((), value, dtype), dev), shape)
    shape = _shape(shape, what)
    _check_fills(value, shape, what)
    if any(map(is_dim, shape)):
        return apply(_ops.Full(shape, value, np.dtype(dtype), dev))
    return Tensor._wrap(_full(xp, shape, value, np.dtype(dtype)), dev)


def _full(xp, shape, value, dtype):
    """``xp.full`` (``xp`` from `array_module_on`); a sequence value (a numpy array, which
    CuPy's full does not take) is broadcast on the device."""
    if getattr(value, "ndim", 0):  # (np.ndim of a Python number costs ~1 us: asarray)
        return xp.ascontiguousarray(xp.broadcast_to(xp.asarray(value, dtype), shape))
    return xp.full(shape, value, dtype)


def zeros(shape, dtype="float32", device=None):
    """A tensor of ``shape`` filled with zeros."""
    return _filled(shape, 0, _dtype(dtype, "zeros"), device, "zeros")


def ones(shape, dtype="float32", device=None):
    """A tensor of ``shape`` filled with ones."""
    return _filled(shape, 1, _dtype(dtype, "ones"), device, "ones")


def full(shape, value, dtype=None, device=None):
    """A tensor of ``shape`` filled with ``value``; dtype None: int32, float32 or bool by value."""
    if dtype is None:
        try:
            dtype = (value.dtype if isinstance(value, Tensor)
                     else as_array(value, device="cpu0").dtype)
        except (TypeError, ValueError):
            raise _bad_value(value, "full") from None
    return _filled(shape, value, _dtype(dtype, "full"), device, "full")


def _like(inp, value, what):
    inp = _tensor(inp)
    if inp.dtype.metadata is not None and _qd.is_quantize(inp.dtype):
        # a quantized tensor's like holds the value (zeros_like: the zero point), not an
        # integer taken for one
        value = _qd.quantize_array(np.asarray(value, np.float32), inp.dtype)[()]
    else:
        value = _fill_value(value, inp.dtype, what)
    shape = inp.shape
    _check_fills(value, shape, what)
    if any(map(is_dim, shape)):  # sizes of a dumpable trace: made at the shape a dump runs at
        return apply(_ops.Full(tuple(shape), value, inp.dtype, inp._device))
    xp = _device.array_module_on(inp._device)  # on inp's GPU, also when not current
    return Tensor._wrap(_full(xp, inp.shape, value, inp.dtype), inp._device)


def zeros_like(inp):
    """Zeros with the shape, dtype and device of ``inp``."""
    return _like(inp, 0, "zeros_like")


def ones_like(inp):
    """Ones with the shape, dtype and device of ``inp``."""
    return _like(inp, 1, "ones_like")


def full_like(inp, value):
    """``value`` (cast to inp's dtype) with the shape and device of ``inp``; a complex value
    needs a complex ``inp``."""
    inp = _tensor(inp)
    if inp.dtype.kind != "c" and is_complex_data(value):  # (numpy would only warn)
        raise complex_error("full_like", getattr(value, "dtype", "complex128"), f"filling a {inp.dtype} "
                            "tensor with it would drop the imaginary part",
                            "give a complex inp (inp.astype('complex64')) or a real value")
    return _like(inp, value, "full_like")


def arange(start=0, stop=None, step=1, dtype="float32", device=None):
    """Evenly spaced values in ``[start, stop)``: ``arange(5)`` is 0..4; float32 by default."""
    if stop is None:
        start, stop = 0, start
    if dumpable() and any(isinstance(v, Tensor) for v in (start, stop, step)):
        return _from_tensors(_ArangeOf, (start, stop, step), _dtype(dtype, "arange"), device)
    start, stop, step = (_one_number(v, name, "arange") for v, name in (
        (start, "start"), (stop, "stop"), (step, "step")))
    if step == 0:
        raise ArgumentError("arange: step must not be 0")
    dev, xp = _place(device)
    if any(map(is_sym, (start, stop, step))) and all(
            isinstance(v, (int, float, np.integer, np.floating)) or is_sym(v)
            for v in (start, stop, step)):
        # bounds computed from traced shapes (F.arange(x.shape[0]), anchors' arange(s, n * s +
        # s / 2, s)): an op, so that a dumped program counts at the shapes it runs at
        return apply(_Arange(start, stop, step, _dtype(dtype, "arange"), dev))
    with on_device(dev):  # the arithmetic allocates on the current GPU
        return Tensor._wrap(_arange_values(xp, start, stop, step, _dtype(dtype, "arange")), dev)


def _arange_values(xp, start, stop, step, dtype):
    if all(isinstance(v, (int, np.integer)) for v in (start, stop, step)):
        num = max(-((start - stop) // step), 0)  # exact ceil((stop - start) / step)
    else:
        # upstream counts in float32 (ceil((stop - start) / step) on float32 tensors), so
        # arange(7.8, 8.4, 0.05) has 12 values where float64 arithmetic gives 13
        f32 = np.float32
        num = max(int(np.ceil((f32(stop) - f32(start)) / f32(step))), 0)
    return (start + step * xp.arange(num, dtype=np.float64)).astype(dtype)


class _Arange(Op):
    """``arange`` of bounds computed from traced shapes (see `arange`)."""

    def __init__(self, start, stop, step, dtype, device):
        self.start, self.stop, self.step = start, stop, step
        self.dtype, self.device = dtype, device

    def forward(self):
        xp = _device.array_module_on(self.device)
        with on_device(self.device):
            return _arange_values(xp, self.start, self.stop, self.step, self.dtype)

    def backward(self, *gs):
        return ()


class _Linspace(Op):
    """``linspace`` whose count or bounds are computed from traced shapes (see `linspace`)."""

    def __init__(self, start, stop, num, dtype, device):
        self.start, self.stop, self.num = start, stop, num
        self.dtype, self.device = dtype, device

    def forward(self):
        xp = _device.array_module_on(self.device)
        with on_device(self.device):
            return xp.linspace(float(self.start), float(self.stop), self.num).astype(self.dtype)

    def backward(self, *gs):
        return ()


class _FromTensors(Op):
    """``arange`` / ``linspace`` of arguments some of which are Tensors, while a dumpable trace
    records (`core._trace_option.dumpable`): upstream's Linspace operator takes start, stop and
    num as inputs (its arange computes the count from its arguments with ops), so a dumped
    program reads them when it runs, and the length of the result is their values'."""

    data_shaped = True

    def __init__(self, args, dtype, device):
        self.args = args  # the numbers given, None where a Tensor is an input of the op
        self.dtype, self.device = dtype, device

    def forward(self, *arrays):
        given = iter(arrays)
        args = [a if a is not None else next(given).item() for a in self.args]
        xp = _device.array_module_on(self.device)
        with on_device(self.device):
            return self.values(xp, *args)

    def backward(self, *gs):
        return (None,) * self.args.count(None)


class _ArangeOf(_FromTensors):
    def values(self, xp, start, stop, step):
        if step == 0:
            raise ArgumentError("arange: step must not be 0")
        return _arange_values(xp, start, stop, step, self.dtype)


class _LinspaceOf(_FromTensors):
    def values(self, xp, start, stop, num):
        return xp.linspace(float(start), float(stop), _count(num)).astype(self.dtype)


def _from_tensors(op_type, args, dtype, device):  # (``dtype`` checked by the caller)
    dev, _ = _place(device)
    tensors = [v for v in args if isinstance(v, Tensor)]
    numbers = tuple(None if isinstance(v, Tensor) else v for v in args)
    return apply(op_type(numbers, dtype, dev), *tensors)


def _count(num):
    num = _int(num, "num", "linspace")
    if num < 0:
        raise ArgumentError(f"linspace: num must be >= 0, got {num}")
    return num


def linspace(start, stop, num, dtype="float32", device=None):
    """``num`` evenly spaced values from ``start`` to ``stop``, both included."""
    if dumpable() and any(isinstance(v, Tensor) for v in (start, stop, num)):
        return _from_tensors(_LinspaceOf, (start, stop, num), _dtype(dtype, "linspace"),
                             device)
    num = _count(num)
    # (float() took a string, "1", which upstream refuses, and named neither for a list; a
    # bound computed from x.shape in a dumpable trace, an int or a float one (x.shape[0] *
    # 0.5), stays a size, which the op reads at each run, as upstream's graph computes its
    # Tensor bounds: float() would make it a guarded constant)
    start, stop = (v if is_sym(v) else float(_one_number(v, name, "linspace"))
                   for v, name in ((start, "start"), (stop, "stop")))
    dev, xp = _place(device)
    if is_dim(num) or is_sym(start) or is_sym(stop):  # sizes from x.shape in a dumpable trace:
        return apply(_Linspace(start, stop, num, _dtype(dtype, "linspace"), dev))  # an op
    with on_device(dev):  # astype allocates on the current GPU
        values = xp.linspace(start, stop, num)
        return Tensor._wrap(values.astype(_dtype(dtype, "linspace")), dev)


def eye(N, M=None, dtype="float32", device=None):
    """An ``N x M`` matrix (``M`` defaults to ``N``) with ones on the diagonal.

    As upstream, ``N`` may also be a whole shape ``(n, m)`` (a Tensor, array or tuple) when ``M``
    is None."""
    dev, xp = _place(device)
    if M is None and not is_int(N) and not (
            isinstance(N, Tensor) and N.ndim == 0):
        shape = _shape(N, "eye")
        if len(shape) not in (1, 2):
            raise ArgumentError(f"eye: a shape must be (n,) or (n, m), got {shape}")
        N, M = shape[0], shape[-1]
    n, m = _shape((N, N if M is None else M), "eye")
    if is_dim(n) or is_dim(m):  # sizes from x.shape in a dumpable trace: made at the run's shapes
        return apply(_Eye(n, m, _dtype(dtype, "eye"), dev))
    return Tensor._wrap(xp.eye(n, m, dtype=_dtype(dtype, "eye")), dev)


class _Eye(Op):
    """``eye`` of sizes computed from traced shapes (see `eye`)."""

    def __init__(self, n, m, dtype, device):
        self.n, self.m, self.dtype, self.device = n, m, dtype, device

    def forward(self):
        xp = _device.array_module_on(self.device)
        with on_device(self.device):
            return xp.eye(self.n, self.m, dtype=self.dtype)

    def backward(self, *gs):
        return ()


def copy(inp, device=None):
    """A copy of ``inp`` on ``device`` (default: inp's device); gradients flow back."""
    inp = _tensor(inp)
    if device is None:  # upstream's Identity operator; Copy is a copy onto a named device
        return apply(_ops.Identity(), inp)
    return apply(_ops.Copy(_device.canonical_device(device)), inp)


# Upstream's home for these is `megengine.functional.tensor` (it re-exports them), and they keep
# reporting it: traced modules print `tensor.<name>` and dumped programs name ops by module path,
# as they did before this file was split off from that one.
for _value in list(globals().values()):
    if getattr(_value, "__module__", None) == __name__:
        _value.__module__ = "megengine.functional.tensor"
del _value
