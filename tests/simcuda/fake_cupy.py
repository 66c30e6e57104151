"""A simulated CuPy: numpy arrays behind CuPy's device rules, so the engine's CUDA paths run (and fail where CuPy would) on a CPU.

What is simulated, and how it follows CuPy:

* ``cupy.ndarray`` wraps a numpy array and the index of the simulated GPU it was allocated on:
  the thread's *current* device at allocation (``cupy.cuda.Device(i)`` as a context or ``.use()``,
  ``cupy.cuda.runtime.setDevice``). ``type(a).__module__`` is ``"cupy"``, as the engine tests.
* Host memory is kept apart as CuPy keeps it: ``numpy.asarray(a)`` / ``__array__`` raise CuPy's
  ``TypeError`` ("Implicit conversion to a NumPy array is not allowed"); functions, ufuncs,
  operators and ElementwiseKernels refuse ``numpy.ndarray`` operands of any shape, 0-d ones
  included ("Unsupported type <class 'numpy.ndarray'>"; Python and numpy scalars are accepted,
  as by CuPy).
  ``.get()``, ``cupy.asnumpy`` and ``.tolist()`` copy to the host; ``cupy.asarray(host)`` and
  ``cupy.array(host)`` copy to the current device.
* A kernel (a function, ufunc, reduction, a method that computes) runs on the current device:
  its array operands must live there (CuPy's "The device where the array resides (1) is different
  from the current device (0)", raised as on GPUs without peer access, so a missed device switch
  is found) and its result is allocated there. Views (slices, reshapes, transposes) keep their
  array's device and need no current device. Copies (``a.copy()``, ``cupy.array(a)``, ``.get()``)
  are transfers and may read another device.
* Reductions and scalar indexing return 0-d arrays; ``float(a)``/``int(a)``/``bool(a)``/
  ``.item()`` of one element read it back, as CuPy does.
* ``cupy.random`` keeps one generator per device (numpy's ``RandomState``), seeded per device.
* ``cupy.ElementwiseKernel``: the CUDA body is compiled as C++ for the host (the engine's kernels
  are plain arithmetic; `tests/cuda_kernels.py` does the compiling) and run with CuPy's calling
  convention, argument and dtype rules (one dtype per type letter, fixed dtypes exact, the
  inputs or the inputs and outputs, outputs of the broadcast shape) and device checks, so the
  source a GPU would compile is what runs.
* The memory pool reports the bytes of live arrays that own their memory, per device.
  (Devices, the current device, memory objects, the pool and streams: `cuda_runtime`.)

Not simulated, and failing loudly when reached: raw device pointers (``cupy.ndarray(...,
memptr=...)``, ``UnownedMemory`` of another framework's memory), DLPack (``cupy.from_dlpack``,
``toDlpack``), external streams and events (``ExternalStream``, ``Event.record``); NCCL is absent.
Streams are the null stream only (``get_current_stream().ptr == 0``). Numerical differences
between CuPy's kernels and numpy's are not simulated (but for clip's NaN where its bounds cross:
`_clip_as_cupy`), nor which numpy functions CuPy lacks.
"""
import importlib.machinery
import math
import sys
import types
import weakref

import numpy as np

from . import cupy_table
from .cuda_runtime import CUDARuntimeError, Runtime, SimulationGap, build_cuda
from .kernels import check_types, parse_params

__all__ = ["build", "install", "SimulationGap", "CUDARuntimeError"]

_NO_HOST = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")


def _clip_as_cupy(a, a_min=None, a_max=None, out=None, **kwargs):
    """numpy's clip of ``a`` with the answer of CuPy's ``cupy_clip`` kernel where the bounds
    cross: that kernel (cupy/_core/_routines_math.pyx) computes ``in1 > in2 ? in2 : (in0 < in1
    ? in1 : (in0 > in2 ? in2 : in0))``, so where lower > upper a NaN of ``a`` becomes upper
    (numpy's clip keeps the NaN; elsewhere the two agree)."""
    result = np.clip(a, a_min, a_max, out=out, **kwargs)
    if a_min is not None and a_max is not None and result.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            crossed = np.greater(a_min, a_max)
        if np.any(crossed):
            np.copyto(result, a_max, where=crossed)
    return result


_AS_CUPY = {"clip": _clip_as_cupy}  # numpy functions whose CuPy kernel answers differently


def build(count):
    """A fresh ``(cupy, cupyx)`` pair of modules simulating ``count`` CUDA devices."""
    if count < 1:
        raise ValueError(f"simulated CUDA: at least one device is needed, got {count}")
    rt = Runtime(count)
    # the real CuPy's names and signatures (cupy_table.py): what CuPy lacks or would refuse
    # is refused here too
    table = cupy_table.load()

    def _checker(space, name, shown):
        if table is None:
            return None
        entry = table["ndarray"] if space == "ndarray" else table["spaces"][space]
        text = entry["signatures"].get(name)
        return None if text is None else cupy_table.binder(text, shown)

    # id(numpy buffer) -> the device array owning it: the memory pool's used bytes, and CuPy's
    # ``base`` (the same array object each time)
    live = weakref.WeakValueDictionary()
    # id(root) -> the UnownedMemory of a foreign buffer, ``root`` the numpy array over it that
    # the bridge made: kept while root lives, as CuPy's array keeps its MemoryPointer's memory
    # (the engine keys fresh gradients by that object: `dispatch._foreign_key`)
    foreign = {}

    # ----- arrays -----

    class ndarray:
        """A simulated CuPy array: a numpy array on simulated device ``device.id``."""

        # _keep: the array a view was made from (its owner), held as CuPy's view holds its
        # ``base``: the engine asks the reference count whether something views an array
        # (`Tensor._shared`)
        __slots__ = ("_a", "_dev", "_keep", "__weakref__")
        __array_priority__ = 100  # numpy defers binary operators to us, as it does to CuPy

        def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
            if memptr is not None:
                raise SimulationGap(
                    "simulated CUDA: cupy.ndarray over a raw device pointer (memptr=...) cannot be "
                    "simulated: there is no device memory behind it (torch CUDA tensors through "
                    "the bridge need a real GPU)")
            self._a = np.empty(shape, dtype, order=order)
            self._dev = rt.current()
            self._keep = None
            live[id(self._a)] = self

        # -- what the array is --
        shape = property(lambda self: self._a.shape)
        dtype = property(lambda self: self._a.dtype)
        ndim = property(lambda self: self._a.ndim)
        size = property(lambda self: self._a.size)
        itemsize = property(lambda self: self._a.itemsize)
        nbytes = property(lambda self: self._a.nbytes)
        strides = property(lambda self: self._a.strides)
        flags = property(lambda self: self._a.flags)
        T = property(lambda self: _view(self, self._a.T))
        mT = property(lambda self: _view(self, self._a.mT))
        device = property(lambda self: Device(self._dev))

        @property
        def real(self):
            return _view(self, self._a.real)

        @real.setter
        def real(self, value):
            _on_current(self, "real")
            self._a.real = _operand(value, "real")
            rt.kernels += 1

        @property
        def imag(self):
            return _view(self, self._a.imag)

        @imag.setter
        def imag(self, value):
            _on_current(self, "imag")
            self._a.imag = _operand(value, "imag")
            rt.kernels += 1

        @property
        def base(self):
            # CuPy: the array this one views (the same object each time), None for an array
            # owning its memory or viewing another framework's (UnownedMemory)
            raw = self._a.base
            if not isinstance(raw, np.ndarray):
                return None
            owner = live.get(id(raw))
            if owner is None or owner._a is not raw:
                owner = _wrap(raw, self._dev, launched=False)
            return owner

        @property
        def data(self):
            root = self._a
            while isinstance(root.base, np.ndarray):
                root = root.base
            offset = self._a.__array_interface__["data"][0] - \
                root.__array_interface__["data"][0]
            if root.base is None:
                return MemoryPointer(Memory(root, self._dev), offset)
            # another framework's memory (ATen's results through the route): one UnownedMemory
            # per owner, as CuPy keeps one per view it made (the engine compares them by identity)
            memory = foreign.get(id(root))
            if memory is None or memory.owner is not root.base:
                memory = object.__new__(UnownedMemory)
                Memory.__init__(memory, root, self._dev)
                memory._raw = None  # (held by the dict below: it must not keep root alive)
                memory.owner = root.base
                foreign[id(root)] = memory
                weakref.finalize(root, foreign.pop, id(root), None)
            return MemoryPointer(memory, offset)

        @property
        def __cuda_array_interface__(self):
            # the host address of the numpy buffer: tests compare addresses with it; the bridge
            # reaching it without the ATen route fails (torch has no CUDA here)
            return {"shape": self._a.shape, "typestr": self._a.dtype.str,
                    "data": (self._a.__array_interface__["data"][0], False),
                    "strides": None if self._a.flags.c_contiguous else self._a.strides,
                    "version": 3, "stream": None}

        def __array__(self, *args, **kwargs):
            raise TypeError(_NO_HOST)

        def __array_ufunc__(self, uf, method, *inputs, **kwargs):
            mine = getattr(module, uf.__name__, None)
            if not isinstance(mine, ufunc):
                return NotImplemented
            return getattr(mine, method)(*inputs, **kwargs) if method != "__call__" \
                else mine(*inputs, **kwargs)

        def __array_function__(self, func, types_, args, kwargs):
            target = _function_for(func)
            if target is None:
                return NotImplemented
            return target(*args, **kwargs)

        def __dlpack__(self, *args, **kwargs):
            raise SimulationGap("simulated CUDA: DLPack exchange of device memory cannot be "
                                "simulated (torch has no CUDA here)")

        toDlpack = __dlpack__

        # -- host transfers --
        def get(self, stream=None, order="C", out=None, blocking=True):
            rt.syncs += 1
            if out is not None:
                np.copyto(out, self._a)
                return out
            return np.array(self._a, order=order)

        def set(self, arr, stream=None):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
            if arr.shape != self._a.shape:
                raise ValueError(f"Shape mismatch: {arr.shape} vs {self._a.shape}")
            self._a[...] = arr
            rt.kernels += 1

        def tobytes(self, order="C"):
            rt.syncs += 1
            return self._a.tobytes(order)

        def tolist(self):
            rt.syncs += 1
            return self._a.tolist()

        def item(self, *args):
            rt.syncs += 1
            return self._a.item(*args)

        def __bool__(self):
            rt.syncs += 1
            return bool(self._a)

        def __int__(self):
            rt.syncs += 1
            return int(self._a)

        def __float__(self):
            rt.syncs += 1
            return float(self._a)

        def __complex__(self):
            rt.syncs += 1
            return complex(self._a)

        # no __index__: CuPy's arrays have none, so range(a), [..][a] and operator.index(a) of a
        # 0-d device array raise TypeError; int(a) reads it back

        def __len__(self):
            return len(self._a)

        def __iter__(self):
            if self._a.ndim == 0:
                raise TypeError("iteration over a 0-d array")
            return (self[i] for i in range(len(self._a)))

        def __repr__(self):
            return repr(self._a)

        def __str__(self):
            return str(self._a)

        def __format__(self, spec):
            return format(self._a, spec) if self._a.ndim == 0 else str(self._a)

        __hash__ = None

        def __reduce__(self):  # pickling copies to the host and back, onto the current device
            return (_unpickle, (self._a,))

        def __copy__(self):
            return self.copy()

        def __deepcopy__(self, memo):
            return self.copy()

        # -- indexing --
        def __getitem__(self, key):
            key = _index(key)
            out = self._a[key]
            if not isinstance(out, np.ndarray):  # one element: CuPy returns a 0-d view
                return _view(self, self._a[(key if isinstance(key, tuple) else (key,))
                                           + (Ellipsis,)])
            if np.may_share_memory(out, self._a):
                return _view(self, out)
            _on_current(self, "indexing")  # advanced indexing: a gather kernel
            return _wrap(out, self._dev)

        def __setitem__(self, key, value):
            _on_current(self, "assignment")
            key = _index(key)
            if isinstance(value, ndarray):
                _on_current(value, "assignment")
                value = value._a
            elif isinstance(value, (list, tuple)):
                value = _operand(value, "assignment", allow_host=True)
            self._a[key] = value
            rt.kernels += 1

        # -- computing methods: a kernel on the current device --
        def copy(self, order="C"):
            # a transfer: CuPy copies onto the current device from wherever the array is
            return _wrap(self._a.copy(order=order), rt.current())

        def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
            if not copy and np.dtype(dtype) == self._a.dtype:
                return self
            _on_current(self, "astype")
            return _wrap(self._a.astype(dtype, order=order, copy=True), rt.current())

        def fill(self, value):
            _on_current(self, "fill")
            if isinstance(value, ndarray):
                value = value._a
            self._a.fill(value)
            rt.kernels += 1

        def view(self, dtype=None):
            return _view(self, self._a.view() if dtype is None else self._a.view(dtype))

    # arguments that are shapes, axes or indices, not data: CuPy reads host arrays there
    host_arguments = {"reshape", "transpose", "swapaxes", "squeeze", "diagonal", "take", "repeat",
                      "expand_dims", "broadcast_to", "moveaxis", "rollaxis", "tile", "roll"}

    def _method(name):
        lenient = name in host_arguments
        check = _checker("ndarray", name, "ndarray." + name)

        def method(self, *args, **kwargs):
            if check is not None:
                check(args, kwargs)
            args, kwargs = _operands(args, kwargs, name, allow_host=lenient)
            as_cupy = _AS_CUPY.get(name)
            out = (as_cupy(self._a, *args, **kwargs) if as_cupy is not None
                   else getattr(self._a, name)(*args, **kwargs))
            if isinstance(out, np.ndarray) and np.may_share_memory(out, self._a):
                return _view(self, out)  # reshape, transpose, squeeze, ...: no kernel
            _on_current(self, name)
            return _result(out)
        method.__name__ = name
        return method

    for _name in ("reshape", "transpose", "swapaxes", "squeeze", "ravel", "flatten", "diagonal",
                  "sum", "prod", "mean", "var", "std", "max", "min", "argmax", "argmin", "all",
                  "any", "cumsum", "cumprod", "clip", "round", "conj", "conjugate", "dot",
                  "nonzero", "take", "repeat", "sort", "argsort", "trace", "ptp", "put",
                  "choose", "compress", "searchsorted", "partition", "argpartition"):
        setattr(ndarray, _name, _method(_name))

    def _binary(name, reflected=False):
        np_name = {"truediv": "true_divide", "floordiv": "floor_divide", "mod": "remainder",
                   "pow": "power", "and": "bitwise_and", "or": "bitwise_or",
                   "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift",
                   "matmul": "matmul", "eq": "equal", "ne": "not_equal", "lt": "less",
                   "le": "less_equal", "gt": "greater", "ge": "greater_equal"}.get(name, name)

        def op(self, other):
            if not _known(other):
                return NotImplemented  # e.g. a megengine Tensor: its reflected operator runs
            f = getattr(module, np_name)
            return f(other, self) if reflected else f(self, other)

        def iop(self, other):
            if not _known(other):
                return NotImplemented
            getattr(module, np_name)(self, other, out=self)
            return self
        return op, iop

    for _name in ("add", "subtract", "multiply", "truediv", "floordiv", "mod", "pow", "and",
                  "or", "xor", "lshift", "rshift", "matmul"):
        _py = {"subtract": "sub", "multiply": "mul"}.get(_name, _name)
        _op, _iop = _binary(_name)
        setattr(ndarray, f"__{_py}__", _op)
        if _name != "matmul":  # CuPy has no __imatmul__ (Python falls back to a = a @ b)
            setattr(ndarray, f"__i{_py}__", _iop)
        setattr(ndarray, f"__r{_py}__", _binary(_name, reflected=True)[0])
    for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(ndarray, f"__{_name}__", _binary(_name)[0])

    def _unary(np_name):
        return lambda self: getattr(module, np_name)(self)

    ndarray.__neg__ = _unary("negative")
    ndarray.__pos__ = _unary("positive")
    ndarray.__abs__ = _unary("absolute")
    ndarray.__invert__ = _unary("invert")
    ndarray.__divmod__ = lambda self, other: module.divmod(self, other)
    ndarray.__module__ = "cupy"  # what the engine tests to tell CuPy arrays from numpy's

    def _wrap(raw, dev, launched=True):
        """A device array over numpy result ``raw``; ``launched``: memory no device array owned
        before counts as a kernel's output (`Runtime.kernels`)."""
        a = object.__new__(ndarray)
        a._a, a._dev, a._keep = raw, dev, None
        if raw.base is None:
            live[id(raw)] = a
            rt.kernels += launched
        else:  # a view of a device array's buffer holds that array, as CuPy's views do
            root = raw
            while isinstance(root.base, np.ndarray):
                root = root.base
            owner = live.get(id(root))
            if owner is not None and owner._a is root:
                a._keep = owner
            else:  # a view of a temporary the computation made
                rt.kernels += launched
        return a

    def _view(of, raw):
        a = object.__new__(ndarray)
        a._a, a._dev = raw, of._dev
        a._keep = of if of._keep is None else of._keep
        return a

    def _unpickle(raw):
        return _wrap(np.array(raw), rt.current())

    def _on_current(a, what):
        current = rt.current()
        if a._dev != current:
            raise ValueError(
                f"The device where the array resides ({a._dev}) is different from the current "
                f"device ({current}). Peer access is unavailable between these devices. "
                f"[simulated CUDA, in {what}: make the array's device current first]")

    def _known(x):
        return isinstance(x, (ndarray, np.ndarray, np.generic, int, float, complex, bool))

    def _operand(x, what, allow_host=False):
        """``x`` as numpy for a kernel on the current device: a device array there, a scalar,
        or (lists, tuples) the same inside; host arrays (0-d ones too) refused."""
        if isinstance(x, ndarray):
            _on_current(x, what)
            return x._a
        if isinstance(x, np.ndarray):
            if allow_host:
                return x
            # 0-d too: CuPy's kernels take Python and numpy scalars (np.float32(2)), never a
            # numpy array of any shape (cupy._core._scalar.CScalar refuses np.array(2.0))
            raise TypeError(f"Unsupported type {type(x)} [simulated CUDA, in {what}: a host "
                            "array met a device array; copy it with cupy.asarray first, or "
                            "pass a scalar (.item(), or a numpy scalar) for a 0-d one]")
        if isinstance(x, list):
            return [_operand(v, what, allow_host) for v in x]
        if isinstance(x, tuple):
            return tuple(_operand(v, what, allow_host) for v in x)
        return x

    def _operands(args, kwargs, what, allow_host=False):
        args = tuple(_operand(a, what, allow_host) for a in args)
        if kwargs:
            kwargs = {k: _operand(v, what, allow_host) for k, v in kwargs.items()}
        return args, kwargs

    def _result(out, launched=True):
        """numpy results as device arrays on the current device (numpy scalars become 0-d);
        ``launched``: new memory counts as a kernel's output (`_wrap`)."""
        if isinstance(out, np.ndarray):
            return _wrap(out, rt.current(), launched)
        if isinstance(out, np.generic):
            return _wrap(np.asarray(out), rt.current(), launched)
        if isinstance(out, tuple):
            return tuple(_result(o, launched) for o in out)
        if isinstance(out, list):
            return [_result(o, launched) for o in out]
        return out

    def _index(key):
        """An index for the wrapped array: device index arrays read where they live (CuPy
        launches the gather on the current device: checked by the caller), host ones accepted
        (CuPy copies them)."""
        if isinstance(key, ndarray):
            return key._a
        if isinstance(key, tuple):
            return tuple(k._a if isinstance(k, ndarray) else k for k in key)
        if isinstance(key, list) and any(isinstance(k, ndarray) for k in key):
            return [k._a if isinstance(k, ndarray) else k for k in key]
        return key

    # ----- functions and ufuncs -----

    # Functions that make views: no kernel, the result keeps the operand's device.
    views = {"reshape", "transpose", "swapaxes", "moveaxis", "rollaxis", "squeeze", "expand_dims",
             "broadcast_to", "broadcast_arrays", "atleast_1d", "atleast_2d", "atleast_3d", "ravel",
             "split", "array_split", "hsplit", "vsplit", "dsplit", "diagonal", "real", "imag",
             "flip", "fliplr", "flipud", "rot90"}

    def _function(name, fn, check=None):
        """``fn`` (numpy's) on the current device; ``check(args, kwargs)``: CuPy's signature."""
        lenient = name in host_arguments

        def _args(args, kwargs):  # the data operand first, shapes/axes/indices after it
            if not lenient or not args:
                return _operands(args, kwargs, name)
            rest, kwargs = _operands(args[1:], kwargs, name, allow_host=True)
            return (_operand(args[0], name),) + rest, kwargs

        if name in views:
            def call(*args, **kwargs):
                if check is not None:
                    check(args, kwargs)
                first = args[0] if args and isinstance(args[0], ndarray) else None
                if first is None or first._dev == rt.current():
                    args, kwargs = _args(args, kwargs)
                    return _result(fn(*args, **kwargs))
                rest, kwargs = _operands(args[1:], kwargs, name, allow_host=lenient)
                raw = fn(first._a, *rest, **kwargs)
                parts = raw if isinstance(raw, (list, tuple)) else [raw]
                if not all(isinstance(p, np.ndarray) and np.may_share_memory(p, first._a)
                           for p in parts):
                    _on_current(first, name)  # the result needed a copy: a kernel
                out = [_view(first, p) for p in parts]
                return out[0] if not isinstance(raw, (list, tuple)) else type(raw)(out)
        else:
            launched = name not in ("empty", "empty_like")  # (an allocation, no kernel)

            def call(*args, **kwargs):
                if check is not None:
                    check(args, kwargs)
                args, kwargs = _args(args, kwargs)
                return _result(fn(*args, **kwargs), launched)
        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"simulated cupy.{name} (numpy.{name} on the current device)"
        return call

    class ufunc:
        """A simulated CuPy ufunc: numpy's, run on the current device."""

        def __init__(self, np_ufunc):
            self._u = np_ufunc
            self.__name__ = np_ufunc.__name__
            self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs
            self.identity, self.types = np_ufunc.identity, np_ufunc.types

        def _run(self, method, args, kwargs):
            out = kwargs.get("out")
            args, kwargs = _operands(args, kwargs, self.__name__)
            result = method(*args, **kwargs)
            if out is not None:  # written in place: hand back the device array(s) given
                rt.kernels += 1
                return out if not isinstance(out, tuple) or len(out) > 1 else out[0]
            return _result(result)

        def __call__(self, *args, **kwargs):
            # CuPy's ufunc.__call__: nin to nargs positional arguments; keywords out, dtype,
            # casting only (numpy's where=, order=, subok=, signature= are "Wrong arguments")
            unknown = set(kwargs) - {"out", "dtype", "casting"}
            if unknown:
                raise TypeError(f"Wrong arguments {dict((k, kwargs[k]) for k in unknown)}")
            if not self.nin <= len(args) <= self.nargs:
                raise TypeError(f"Wrong number of arguments for 'cupy_{self.__name__}'. It must "
                                f"be either {self.nin} or {self.nargs} (with outputs), but "
                                f"given {len(args)}.")
            return self._run(self._u, args, kwargs)

        # CuPy's ufuncs reduce and accumulate only as add and multiply, reduceat only as add
        # (cupy/_core/_kernel.pyx, ufunc.reduce/accumulate/reduceat)
        def _only(self, method, names):
            if self.__name__ not in names:
                raise NotImplementedError(f"`cupy_{self.__name__}.{method}` is not supported yet")

        def reduce(self, *args, **kwargs):
            self._only("reduce", ("add", "multiply"))
            return self._run(self._u.reduce, args, kwargs)

        def accumulate(self, *args, **kwargs):
            self._only("accumulate", ("add", "multiply"))
            return self._run(self._u.accumulate, args, kwargs)

        def reduceat(self, *args, **kwargs):
            self._only("reduceat", ("add",))
            return self._run(self._u.reduceat, args, kwargs)

        def outer(self, *args, **kwargs):
            return self._run(self._u.outer, args, kwargs)

        def at(self, a, indices, b=None):
            op = _SCATTER_OPS.get(self.__name__)
            if op is None:  # CuPy's ufunc.at is its scatter operation: four ufuncs have one
                raise NotImplementedError(f"`cupy_{self.__name__}.at` is not supported yet")
            if not isinstance(a, ndarray):
                raise TypeError(f"{self.__name__}.at: the target must be a cupy.ndarray")
            _check_scatter_dtype(op, a, indices)
            a_raw, indices, = _operand(a, self.__name__ + ".at"), _index(indices)
            if b is None:
                self._u.at(a_raw, indices)
            else:
                self._u.at(a_raw, indices, _operand(b, self.__name__ + ".at"))
            rt.kernels += 1

        def __repr__(self):
            return f"<ufunc '{self.__name__}' (simulated cupy)>"

    def _function_for(func):
        """Our function for a numpy function met by ``__array_function__`` (None: CuPy's
        NotImplemented)."""
        where = func.__module__ or "numpy"
        space = module
        for part in where.split(".")[1:]:
            if part.startswith("_"):
                break
            space = getattr(space, part, None)
            if space is None:
                return None
        return getattr(space, func.__name__, None)

    class _Namespace(types.ModuleType):
        """A numpy namespace (numpy, numpy.linalg, numpy.fft) served on the current device."""

        def __init__(self, name, np_space):
            super().__init__(name)
            self._np_space = np_space

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            space = self.__name__.partition(".")[2]  # "" for cupy, "linalg" for cupy.linalg
            if table is not None and name not in table["spaces"][space]["names"]:
                raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} "
                                     f"[simulated CUDA: CuPy {table['version']} has none]")
            value = getattr(self._np_space, name)
            if space == "" and name in _AS_CUPY:
                value = _AS_CUPY[name]
            if isinstance(value, np.ufunc):
                value = ufunc(value)
            elif isinstance(value, types.ModuleType):
                if value.__name__ not in ("numpy.linalg", "numpy.fft"):
                    raise AttributeError(f"simulated cupy has no {self.__name__}.{name}")
                value = _Namespace(self.__name__ + "." + name, value)
            elif callable(value) and not isinstance(value, type):
                value = _function(name, value, _checker(space, name, f"{self.__name__}.{name}"))
            setattr(self, name, value)  # looked up once
            return value

    # ----- creation and transfers -----

    def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0):
        if isinstance(obj, ndarray):  # a copy onto the current device (a peer copy if need be)
            if not copy and obj._dev == rt.current() and (dtype is None
                                                         or np.dtype(dtype) == obj.dtype):
                return obj
            return _wrap(np.array(obj._a, dtype=dtype, copy=True, order=order, ndmin=ndmin),
                         rt.current())
        if isinstance(obj, (list, tuple)) and _holds_device_arrays(obj):
            obj = _operand(obj, "array")  # CuPy stacks device arrays on the current device
        return _wrap(np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin),
                     rt.current())

    def _holds_device_arrays(obj):
        return any(isinstance(v, ndarray) or (isinstance(v, (list, tuple))
                                              and _holds_device_arrays(v)) for v in obj)

    def asarray(a, dtype=None, order=None, *, blocking=False):
        if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype) \
                and order in (None, "K", "A"):
            return a  # as CuPy: the array itself, on whatever device it lives
        return array(a, dtype=dtype, copy=not isinstance(a, ndarray), order=order or "K")

    def asnumpy(a, stream=None, order="C", out=None, blocking=True):
        if isinstance(a, ndarray):
            return a.get(order=order, out=out)
        return np.asarray(a, order=order)

    def ascontiguousarray(a, dtype=None):
        if not isinstance(a, ndarray):
            raise TypeError(f"Unsupported type {type(a)} [simulated CUDA, in ascontiguousarray]")
        if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        _on_current(a, "ascontiguousarray")
        return _wrap(np.ascontiguousarray(a._a, dtype=dtype), rt.current())

    def get_array_module(*args):
        return module if any(isinstance(a, ndarray) for a in args) else np

    def from_dlpack(*args, **kwargs):
        raise SimulationGap("simulated CUDA: cupy.from_dlpack (DLPack from torch CUDA tensors) "
                            "cannot be simulated; torch has no CUDA here")

    class ElementwiseKernel:
        """CuPy's ElementwiseKernel with the CUDA body compiled as host C++ (see module doc).

        CuPy's calling rules are kept (cupy/_core/_kernel.pyx, ``ElementwiseKernel.__call__``
        and ``_decide_params_type``): the inputs, or the inputs and all outputs; keywords
        ``size``/``stream``/``block_size`` only; each type letter (``T``) one dtype over the
        arrays given (scalars take it), a fixed dtype (``bool mask``) exactly that dtype in an
        array; outputs given must be device arrays of the broadcast shape."""

        def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True,
                     preamble="", no_return=False, return_tuple=False, **kwargs):
            self.in_params, self.out_params = in_params, out_params
            self._ins, self._outs = parse_params(in_params), parse_params(out_params)
            if "i" in [n for _, n in self._ins + self._outs]:
                raise ValueError("Can not use 'i' as a parameter name")
            self.body = self.operation = operation
            self.name = name
            self.nin, self.nout = len(self._ins), len(self._outs)
            self.nargs = self.nin + self.nout
            self._host = None

        def __call__(self, *args, size=None, stream=None, block_size=128, **kwargs):
            if kwargs:
                raise TypeError(f"Wrong arguments {kwargs}")
            if size is not None:
                raise SimulationGap(f"simulated ElementwiseKernel {self.name}: size= (raw "
                                    "parameters) is not simulated")
            if len(args) not in (self.nin, self.nargs):
                raise TypeError(f"Wrong number of arguments for {self.name!r}. It must be either "
                                f"{self.nin} or {self.nargs} (with outputs), but given "
                                f"{len(args)}.")
            raw = tuple(_operand(a, f"ElementwiseKernel {self.name}") for a in args)
            outs = args[self.nin:]
            if any(not isinstance(o, ndarray) for o in outs):
                raise TypeError("Output arguments type must be cupy.ndarray")
            check_types(self.name, self._ins, self._outs, args,
                        lambda a: a.dtype if isinstance(a, ndarray) else None)
            shapes = [np.shape(r) for r in raw]  # CuPy broadcasts the outputs given too
            try:
                shape = np.broadcast_shapes(*shapes)
            except ValueError:
                raise ValueError("operands could not be broadcast together with shapes "
                                 + " ".join(map(str, shapes))) from None
            if any(o.shape != shape for o in outs):
                raise ValueError("Out shape is mismatched")
            if self._host is None:
                from .kernels import host_kernel

                self._host = host_kernel(self)
            result = self._host(*raw)
            if outs:  # written into the device arrays given: CuPy returns them
                rt.kernels += 1
                return outs[0] if len(outs) == 1 else tuple(outs)
            # the host kernel keeps bool outputs as uint8 0/1; CuPy allocates them as bool
            results = result if isinstance(result, tuple) else (result,)
            results = tuple(r.view(np.bool_) if ptype == "bool" else r
                            for r, (ptype, _) in zip(results, self._outs))
            return _result(results if isinstance(result, tuple) else results[0])

    # ufunc -> CuPy's scatter operation (CuPy 14.2's ufunc._scatter_op; checked by
    # tests/simcuda/api_check.py), and the dtypes it takes with an integer-array index (CUDA's
    # atomics; cupy/_core/_routines_indexing.pyx, _scatter_op_single; "sub" assumed as "add";
    # the bitwise ones are not restricted here)
    _SCATTER_OPS = {"add": "add", "subtract": "sub", "maximum": "max", "minimum": "min",
                    "bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor"}
    _ATOMIC = {"add": ("int32", "float16", "float32", "float64", "uint32", "uint64"),
               "max": ("int32", "float32", "float64", "uint32", "uint64")}
    _ATOMIC["sub"], _ATOMIC["min"] = _ATOMIC["add"], _ATOMIC["max"]

    def _check_scatter_dtype(op, a, indices):
        parts = indices if isinstance(indices, tuple) else (indices,)
        integer_array = any(
            (isinstance(p, (ndarray, np.ndarray)) and p.ndim > 0 and p.dtype.kind in "iu")
            or (isinstance(p, list) and np.asarray(_index(p)).dtype.kind in "iu")
            for p in parts)
        if integer_array and op in _ATOMIC and a.dtype.name not in _ATOMIC[op]:
            name = {"add": "scatter_add", "sub": "scatter_sub", "max": "scatter_max",
                    "min": "scatter_min"}[op]
            raise TypeError(f"{name} only supports {', '.join(_ATOMIC[op])}, as data type "
                            f"[simulated CUDA: got {a.dtype}]")

    def scatter_add(a, slices, value):
        if not isinstance(a, ndarray):
            raise TypeError("scatter_add: the target must be a cupy.ndarray")
        _check_scatter_dtype("add", a, slices)
        np.add.at(_operand(a, "scatter_add"), _index(slices), _operand(value, "scatter_add"))
        rt.kernels += 1


    cuda = build_cuda(rt, live)
    Device, Memory, UnownedMemory, MemoryPointer = \
        cuda.Device, cuda.Memory, cuda.UnownedMemory, cuda.MemoryPointer
    pool = cuda.pool

    # ----- cupy.random: one generator per device -----

    generators = {}

    def _generator():
        index = rt.current()
        if index not in generators:
            generators[index] = np.random.RandomState(index)
        return generators[index]

    class _Random(types.ModuleType):
        def seed(self, seed=None):
            if seed is not None and seed >= 2**32:  # cupy's seed is a uint64, numpy's 32 bits
                if seed >= 2**64:
                    raise TypeError(f"Cannot cast {seed} to uint64")
                seed = [seed & 0xFFFFFFFF, seed >> 32]
            generators[rt.current()] = np.random.RandomState(seed)

        def __getattr__(self, name):
            if name.startswith("__") or not hasattr(np.random.RandomState, name) or (
                    table is not None and name not in table["spaces"]["random"]["names"]):
                raise AttributeError(f"simulated cupy.random has no {name!r}")
            check = _checker("random", name, "cupy.random." + name)

            def draw(*args, **kwargs):
                if check is not None:
                    check(args, kwargs)
                args, kwargs = _operands(args, kwargs, "random." + name)
                dtype = kwargs.pop("dtype", None)  # CuPy's draws take a dtype; numpy's do not
                out = getattr(_generator(), name)(*args, **kwargs)
                if dtype is not None:
                    out = np.asarray(out).astype(dtype, copy=False)
                return _result(out)
            draw.__name__ = name
            return draw

    # ----- the modules -----

    module = _Namespace("cupy", np)
    module.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    module.__file__ = __file__
    module.__version__ = "13.0.0+simulated"
    module.__doc__ = __doc__
    module._simulated = rt
    for obj in (ndarray, ufunc, array, asarray, asnumpy, ascontiguousarray, get_array_module,
                from_dlpack, ElementwiseKernel):
        setattr(module, obj.__name__, obj)
    module.asanyarray = asarray
    module.cuda = cuda
    module.random = _Random("cupy.random")
    module.get_default_memory_pool = lambda: pool
    module.get_default_pinned_memory_pool = lambda: pool
    module.fromDlpack = from_dlpack
    module.newaxis, module.inf, module.nan, module.pi, module.e = None, math.inf, math.nan, \
        math.pi, math.e

    cupyx = types.ModuleType("cupyx")
    cupyx.__spec__ = importlib.machinery.ModuleSpec("cupyx", None)
    cupyx.scatter_add = scatter_add
    cupyx.__doc__ = "simulated cupyx: scatter_add only"
    return module, cupyx


def install(count):
    """Put a simulated CuPy with ``count`` devices into ``sys.modules`` (``cupy``, ``cupy.cuda``,
    ``cupy.cuda.runtime``, ``cupy.cuda.memory``, ``cupy.random``, ``cupyx``); returns it."""
    cupy, cupyx = build(count)
    sys.modules.update({"cupy": cupy, "cupy.cuda": cupy.cuda, "cupy.cuda.runtime":
                        cupy.cuda.runtime, "cupy.cuda.memory": cupy.cuda.memory,
                        "cupy.random": cupy.random, "cupyx": cupyx})
    return cupy

