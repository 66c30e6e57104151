"""`Tensor` and `Parameter`: an array on a device, its properties, methods, indexing and pickling
(its operators are in `operators`, its dtype rules in `dtype_rules`)."""
import math
import sys
from collections.abc import MutableMapping

import numpy as np

from .. import device as _device_mod
from . import _trace_option
from . import amp  # noqa: F401  upstream's `megengine.core.tensor.amp` (the autocast state)
from . import dispatch
from . import dtype  # upstream's `megengine.core.tensor.dtype` (quantized dtypes)
from . import format as _fmt
from . import ops as _ops
from .dtype_rules import (_NARROW, _PROMOTE_CACHE, _SUPPORTED_KINDS, _as_array,  # noqa: F401
                          _check_dtype, _quantized_pair, _refuse_on_gpu, promote_types)

__all__ = ["Tensor", "Parameter", "tensor", "as_array", "promote_types"]


def as_array(value, dtype=None, device=None, copy=True):
    """Turn a scalar, (nested) list, array or Tensor into an engine array, upstream's dtype rules."""
    if isinstance(value, Tensor):
        value = value._data
    device = _device_mod.canonical_device(device)
    if dispatch._switcher is not None and device[0] == "g":  # several GPUs: CuPy allocates
        with dispatch.on_device(device):  # on the current one, so make it the tensor's
            return _as_array(value, dtype, device, copy)
    return _as_array(value, dtype, device, copy)


class CompNode(str):
    """A device name as upstream's ``Tensor.device`` reports it; compares equal to the name."""

    def __new__(cls, name, logical=None):
        self = str.__new__(cls, name)
        # the name the tensor was made with (a `_Device` carries it), else the text's own
        self._logical = logical or getattr(name, "_logical", None)
        return self

    @property
    def logical_name(self):
        """The name the program gave, with its stream, as upstream spells it: ``"cpu0:0"`` for a
        tensor made with ``device="cpu0"`` (and every result computed from it), ``"xpux:0"``
        for the default device (pickles record it: upstream's ops refuse to mix a loaded
        ``"cpu0:0"`` tensor with its ``xpux`` ones)."""
        if self._logical:
            return self._logical
        from ..device import _logical_name

        return _logical_name(str(self))

    @property
    def physical_name(self):
        """The device the name resolves to, with its stream: ``"cpu0:0"`` for ``"xpux"`` on a
        machine without a GPU (upstream's ``CompNode.physical_name``)."""
        from ..device import canonical_device

        name = str(self)
        stream = name.partition(":")[2] or "0"
        return canonical_device(name.partition(":")[0]) + ":" + stream

    def __repr__(self):  # upstream's: the device, and the name it was asked by
        return f'CompNode("{self.physical_name}" from "{self.logical_name}")'

    # Upstream compares comp nodes by the device they resolve to, so on a machine without a
    # GPU `tensor.device == "xpu0"` holds for a tensor on "cpu0". Equal text is the fast path;
    # only differing names are resolved, and a name that does not resolve compares unequal.
    def __eq__(self, other):
        if not isinstance(other, str):
            return NotImplemented
        if str.__eq__(self, other):
            return True
        from ..device import canonical_device

        try:
            return canonical_device(str(self)) == canonical_device(other)
        except (ValueError, RuntimeError):
            return False

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = str.__hash__


class QParams:
    """Quantization parameters a tensor carries (upstream's ``Tensor.qparams``).

    Data only, for fake quantization: quantization code that reads and writes
    ``mode``/``dtype_meta``/``scale``/``zero_point`` keeps working, and the values travel with
    the tensor through ``mge.save``/``mge.load`` and ``copy.deepcopy``. (A quantized tensor
    carries its scale in its dtype instead: ``megengine.core.tensor.dtype``.)
    """

    __slots__ = ("mode", "dtype_meta", "scale", "zero_point")
    __module__ = "megengine.quantization.utils"  # its home in upstream, where pickles find it
    __firstlineno__ = None  # Python 3.13+'s inspect reads it in the file of __module__

    def __init__(self, mode=None, dtype_meta=None, scale=None, zero_point=None):
        self.mode, self.dtype_meta, self.scale, self.zero_point = mode, dtype_meta, scale, zero_point

    def update(self, qparams):
        for name in self.__slots__:
            setattr(self, name, getattr(qparams, name))

    def __eq__(self, other):
        if not isinstance(other, QParams):
            return NotImplemented
        return all(_same(getattr(self, n), getattr(other, n)) for n in self.__slots__)

    __hash__ = None

    def __getstate__(self):  # as upstream pickles its slots (its QParams has no __setstate__)
        return None, {n: getattr(self, n) for n in self.__slots__}

    def __setstate__(self, state):
        if isinstance(state, tuple):  # upstream's pickles: its slots as (None, {name: value})
            state = state[1] or {}
        for n in self.__slots__:
            setattr(self, n, state.get(n))

    def __repr__(self):  # str() of each field, as upstream's: mode=QuantMode.SYMMERTIC
        return "QParams(" + ", ".join(f"{n}={getattr(self, n)}" for n in self.__slots__) + ")"


def _same(a, b):
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
                and bool(np.array_equal(a.numpy(), b.numpy())))
    return a == b


class _QParamsDict(MutableMapping):
    """`QParams` seen as a dict (upstream's ``Tensor.q_dict``); its keys are the fields."""

    def __init__(self, qparams):
        self._qparams = qparams

    def _check(self, key):
        if key not in QParams.__slots__:
            raise KeyError(f"q_dict has the keys {QParams.__slots__}, not {key!r}")

    def __getitem__(self, key):
        self._check(key)
        return getattr(self._qparams, key)

    def __setitem__(self, key, value):
        self._check(key)
        setattr(self._qparams, key, value)

    def __delitem__(self, key):
        self._check(key)
        setattr(self._qparams, key, None)

    def __iter__(self):
        return iter(QParams.__slots__)

    def __len__(self):
        return len(QParams.__slots__)


class _TensorType(type):
    """Tensor's metaclass, for one name: ``Tensor.dtype`` on the class is the module of
    quantized dtypes. ``megengine.core.tensor`` is the Tensor class (the 0.x name), so
    upstream's ``import megengine.core.tensor.dtype as dtype`` looks ``dtype`` up on the class.
    A data descriptor of the metaclass wins over the class's own ``dtype`` property for class
    attribute lookups only; tensors still read their dtype through that plain property."""

    @property
    def dtype(cls):
        return dtype

    @property
    def utils(cls):  # upstream's `import megengine.core.tensor.utils as utils`, as for dtype
        return utils

    @property
    def amp(cls):  # upstream's `import megengine.core.tensor.amp as amp` (the autocast state)
        return amp

    @property
    def megbrain_graph(cls):  # upstream's `import megengine.core.tensor.megbrain_graph as G`
        return megbrain_graph

    @property
    def function(cls):  # upstream 1.0's `import megengine.core.tensor.function as ...`
        return sys.modules[__name__ + ".function"]

    @property
    def tensor_wrapper(cls):  # and its `megengine.core.tensor.tensor_wrapper`
        return sys.modules[__name__ + ".tensor_wrapper"]

    @property
    def raw_tensor(cls):  # and 1.0-1.1's `megengine.core.tensor.raw_tensor`
        return sys.modules[__name__ + ".raw_tensor"]


def _check_same_kind(t, want_dtype, want_device, want_format):
    """Upstream's rule for ``Tensor(t, dtype=..., device=..., format=...)`` of a Tensor ``t``:
    the new tensor has ``t``'s dtype, device and format label; naming others raises
    RuntimeError (it converts nothing)."""
    if want_dtype is not None and not dtype.is_dtype_equal(
            dtype.tensor_dtype(_check_dtype(want_dtype, "Tensor")), t.dtype):
        raise RuntimeError(
            f"Tensor(t, dtype={dtype.dtype_name(np.dtype(want_dtype))}): t is "
            f"{dtype.dtype_name(t.dtype)}, and a tensor made from a tensor keeps its dtype (as "
            "upstream's); convert it with t.astype(dtype)")
    if want_device != t._device:
        raise RuntimeError(
            f"Tensor(t, device={want_device!r}): t is on {t._device}, and a tensor made from a "
            f"tensor stays on its device (as upstream's); move it with t.to({want_device!r})")
    if want_format not in ("default", t._format):
        raise RuntimeError(
            f"Tensor(t, format={want_format!r}): t is labelled {t._format!r}, and a tensor made "
            f"from a tensor keeps its label (as upstream's); relabel a copy with "
            f"y = Tensor(t); y.format = {want_format!r} (the value stays)")


def _unpinned_write(t, value, what):
    """The error for a write into pinned storage (`Tensor._pinned_storage`) that cannot go there:
    the tensor would take a new array, which the other framework never sees."""
    kind = "a quantized value" if value.dtype.metadata is not None else \
        f"a value of shape {tuple(value.shape)}"
    return ValueError(
        f"{what}: this tensor is another framework's memory (a PyTorchModule's mirror of a torch "
        f"parameter or buffer) of shape {tuple(t.shape)} and dtype {t.dtype}, so {kind} could "
        "never reach it; write a value of its shape, or change the torch module and wrap it "
        "again")


class _InstanceDict:
    """The plain instance ``__dict__`` that Tensor's own ``__dict__`` property wraps."""


_instance_dict = _InstanceDict.__dict__["__dict__"]


def _list_is_a_tuple(index):
    """Whether a list index holding a sequence, an array, a Tensor, a slice, None or Ellipsis
    (``x[[rows, cols]]``) means the tuple of those items, as upstream 1.13's ``x[...]`` reads
    it (measured: ``x[[[0, 1], [1, 0]]]`` is ``[x[0, 1], x[1, 0]]``), as torch's and numpy's
    before 1.23 did; numpy now reads it as one index array (a (2, 2, ...) result). A list of
    ints or bools stays one index. (Upstream's ``x[...] = v`` takes numpy's reading: so does
    this engine's.)"""
    for i in index:
        if i is None or i is Ellipsis or isinstance(i, (list, tuple, slice, np.ndarray)) or \
                hasattr(i, "_data"):
            return True
    return False


class Tensor(_InstanceDict, metaclass=_TensorType):
    """An n-dimensional array on a device, with autodiff through `megengine.autodiff`."""

    __array_priority__ = 1000  # numpy defers `ndarray op Tensor` to our reflected operators
    _node = None
    _name = None
    _format = "default"
    _qparams = None
    # Whether another framework computes with this tensor's memory (a PyTorchModule's mirror of
    # a torch parameter or buffer): writes must go into that memory, even while recording
    _pinned_storage = False
    # Whether this is a var of a program being built (`megengine.utils.network_node.VarNode`):
    # ``x[...] = v`` stays an op over x there, as in upstream's graph
    _graph_var = False
    #: set by ``mge.load`` while it unpickles: saved device name -> device to place the tensor on
    dmap_callback = None

    def __new__(cls, *args, **kwargs):
        # Upstream pickles a tensor as `cls.__new__(cls, value, dtype, device_logical_name)`
        # (from __getnewargs__) followed by __setstate__, without __init__; files written by
        # upstream's mge.save are read through this path, mapping the device as mge.load asks.
        self = object.__new__(cls)
        if (len(args) == 3 and not kwargs and isinstance(args[0], np.ndarray)
                and isinstance(args[1], np.dtype) and isinstance(args[2], str)):
            value, dtype, device = args
            self._device = _device_mod.canonical_device(_mapped_device(device))
            self._data = as_array(value, dtype, self._device)
            self.grad = None
        return self

    def __init__(self, data=None, dtype=None, device=None, is_const=False, no_cache=False,
                 name=None, format="default"):
        if data is None:
            data = []
        if isinstance(data, Tensor) and device is None:
            device = data._device
        self._device = _device_mod.canonical_device(device)
        if isinstance(data, Tensor):
            _check_same_kind(data, dtype, self._device, format)
        made = None  # Tensor(x.shape) in a dumpable trace: made by an op, from the shapes a
        if _trace_option._dim_source is not None:  # dumped program runs at
            made = _trace_option.sizes_tensor(data, dtype, self._device)
        if (made is None and isinstance(data, Tensor) and not is_const
                and (dispatch._trace_hook is not None or data._node is not None)):
            # upstream's new tensor is t itself under a new name: its gradient reaches t, as
            # an Identity op's does (CLIP's encode_text trains its token embedding through
            # mge.tensor(embedding(text), dtype=...)); a traced program computes it from t
            made = dispatch.apply(_ops.Identity(), data)
            self._node = made._node
        self._data = as_array(data, dtype, self._device) if made is None else made._data
        self.grad = None
        self._name = name
        if format != "default":
            self.format = format
            if format == "nhwc":
                # upstream: `data` is the value (NCHW), which an "nhwc" tensor keeps in NHWC memory
                self._data = _fmt.channels_last(self._data, self._device)
        elif isinstance(data, Tensor):
            self._format = data._format  # a tensor made from a tensor keeps its format label
        hook = dispatch._trace_hook
        if hook is not None and hasattr(hook, "made"):  # megengine.jit.trace's recording call
            hook.made(self)  # notes it: its first value may become a constant of the program

    # Upstream's tensor keeps its value (and autodiff identity) in C++, outside the Python
    # ``__dict__``: a subclass that adopts another tensor's attributes, basedet's
    # ``Boxes.__init__`` doing ``self.__dict__ = boxes.__dict__``, gets the same value but stays
    # a tensor of its own, whose in-place updates (``boxes[:] = clipped``, ``boxes *= s``) leave
    # the other one as it was. Here the value lives in the instance dict, so assigning a dict
    # takes a copy of it rather than sharing it.
    @property
    def __dict__(self):
        return _instance_dict.__get__(self)

    @__dict__.setter
    def __dict__(self, attributes):
        own = _instance_dict.__get__(self)
        if attributes is own:  # ``t.__dict__ = t.__dict__`` changes nothing, as for any object
            return
        own.clear()
        own.update(attributes)
        if dispatch._adopt_hook is not None:  # megengine.traced_module records
            dispatch._adopt_hook(self, attributes)

    @classmethod
    def _wrap(cls, array, device):
        """A tensor over ``array`` with no copy and no checks (the engine's internal constructor)."""
        t = object.__new__(cls)
        t._data = array
        t._device = device
        t.grad = None
        return t

    # ----- what a tensor is -----
    @property
    def dtype(self):
        return self._data.dtype

    @property
    def shape(self):
        if not _fmt.auto_convert and self._format == "nhwc":  # upstream's raw NHWC shape
            shape = _fmt.to_physical(self._data).shape
        else:
            shape = self._data.shape
            if _trace_option._dim_source is not None and shape:  # a dumpable trace records:
                return _trace_option.symbolic_shape(self, shape)  # sizes that say where from
        if _trace_option._use_symbolic_shape:  # traced calls: a tuple with upstream's .numpy()
            return _trace_option.Shape(shape) if shape else shape
        return shape

    @property
    def _tuple_shape(self):
        """The shape as a tuple of ints (upstream's ``shape`` can be a Tensor while tracing)."""
        if not _fmt.auto_convert and self._format == "nhwc":
            return _fmt.to_physical(self._data).shape
        return self._data.shape

    @property
    def format(self):
        """The memory format label: ``"default"``, ``"nchw"`` or ``"nhwc"`` (upstream 1.10+).

        An ``"nhwc"`` tensor behaves as the NCHW tensor it stands for (shape, indexing, ops,
        ``numpy()``, gradients) while ``megengine.config._auto_format_convert`` is on (the
        default); ops pass the label on by upstream's rules (`megengine.core.format`).
        ``Tensor(array, format="nhwc")`` is the tensor ``array``, stored in NHWC memory (as
        upstream's runtime makes it); setting the label keeps the value.
        """
        return self._format

    @format.setter
    def format(self, value):
        self._format = _fmt.check_label(value, self._data.ndim)
        if value != "default":
            _fmt.labelled()

    @property
    def qparams(self):
        """Quantization parameters (a :class:`QParams`, created on first access: symmetric mode,
        no dtype, scale or zero point, as upstream's)."""
        if self._qparams is None:
            from ..quantization.utils import QuantMode

            self._qparams = QParams(QuantMode.SYMMERTIC)
        return self._qparams

    @property
    def q_dict(self):
        """The quantization parameters as upstream's older dict (keys ``mode``, ``dtype_meta``,
        ``scale``, ``zero_point``): a live view of `qparams`, so it pickles with the tensor."""
        return _QParamsDict(self.qparams)

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        if _trace_option._dim_source is not None:  # a dumpable trace records: see shape
            return _trace_option.symbolic_size(self, self._data.size)
        return self._data.size

    @property
    def device(self):
        return CompNode(self._device)

    def _dev_tensor(self):
        """Upstream's handle on the tensor's device value (a
        `megengine.core.tensor.megbrain_graph.DeviceTensorND`, what graph inputs take)."""
        return megbrain_graph.DeviceTensorND(self._data, self._device)

    @property
    def name(self):
        """The tensor's name; ``""`` when none was given, as upstream."""
        return "" if self._name is None else self._name

    @name.setter
    def name(self, value):
        if value is not None and not isinstance(value, str):  # (upstream's C++ setter refuses)
            raise _ops.ArgumentTypeError(f"a tensor's name must be a str or None, got "
                                         f"{type(value).__name__}")
        self._name = value
        hook = dispatch._trace_hook
        if hook is not None and hasattr(hook, "named"):  # megengine.jit.trace notes it for
            hook.named(self, value)  # trace.dump now: the tensor may die before the call ends

    @property
    def _tracked(self):
        """True while the tensor is tracked by autodiff (attached, or computed from one)."""
        return self._node is not None and bool(self._node[0].live)

    def _no_requires_grad(self, value=None):
        # Upstream 1.x reserves the name and raises: a program written for it never relies on
        # a value, and 0.x-era code that reads it (filtering parameters on it) fails loudly here
        # as there, instead of silently getting False for every parameter nothing attached yet
        raise AttributeError(
            "Tensor.requires_grad is reserved for future use (as in upstream MegEngine 1.x): a "
            "tensor is differentiated when a GradManager attaches it (gm.attach(params)); every "
            "Parameter of module.parameters() can be trained")

    requires_grad = property(_no_requires_grad, _no_requires_grad, _no_requires_grad)

    def numpy(self):
        """The value as a read-only host numpy array (a copy; upstream hands out a read-only
        view, so a program writing into it, as into a ``state_dict()`` value, is told so
        instead of changing a copy nobody reads)."""
        data = self._data
        if self._device.startswith("gpu"):
            value = data.get()
        else:
            # C order, as upstream's host copies are: a transposed or broadcast value handed on
            # (torch.tensor, tobytes, ctypes) would otherwise keep a strided layout
            value = np.array(data, copy=True, order="C")
        if dispatch._trace_hook is not None:  # megengine.jit.trace notes values read to the host
            dispatch._trace_hook.read(self, value)  # (item, int(), tolist, shapes come here)
        if not _fmt.auto_convert and self._format == "nhwc":  # upstream's raw NHWC value
            value = np.ascontiguousarray(_fmt.to_physical(value))
        value.flags.writeable = False
        return value

    def _peek(self):
        """The value as a host numpy array, unseen by megengine.jit.trace: for argument checks
        whose value decides no op and no op parameter (a traced call would otherwise treat the
        value as baked into the program, see megengine/jit/tracing.py, "Host reads")."""
        data = self._data
        return data.get() if self._device.startswith("gpu") else np.array(data, copy=True)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __dlpack__(self, stream=None, *, copy=None, **kwargs):
        """DLPack, as upstream's Tensor: a capsule over this tensor's memory, no copy
        (`megengine.utils.dlpack.to_dlpack`), so that ``torch.from_dlpack(t)``,
        ``torch.asarray(t)`` and ``np.from_dlpack(t)`` share it; ``copy=True`` hands over a
        copy. The capsule is DLPack's first kind, which every consumer takes (newer protocol
        keywords such as ``max_version`` ask for nothing else)."""
        from ..utils.dlpack import to_dlpack  # utils sits above core

        return to_dlpack(Tensor._wrap(self._data.copy(), self._device) if copy else self, stream)

    def __dlpack_device__(self):
        """(DLPack device type, device index) of this tensor's memory: (1, 0) on the CPU, (2, n)
        on CUDA device n."""
        return self._data.__dlpack_device__()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """numpy's operators and ufuncs on tensors: ``array + t`` (as upstream's),
        ``np.add(t, array)``, ``np.equal(t, array)`` apply this engine's op and give a Tensor on
        the tensor's device (with autodiff; upstream 1.13 computes the ufunc calls on the host
        values, a new tensor of ``t``'s type that is not differentiated). Other ufuncs
        (``np.sqrt(t)``, ``np.isnan(t)``, ``np.add.reduce(t)``), or calls with
        ``dtype=``/``where=``..., run in numpy on the host values and give new tensors
        (`__array_wrap__`; not differentiated, as upstream's); with ``out=`` arrays they give
        numpy's results."""
        name = _UFUNC_OPS.get(ufunc)
        if method == "__call__" and not kwargs and name is not None:
            if len(inputs) == 1:
                return dispatch.apply(_ops.UNARY[name](), inputs[0])
            a, b = inputs
            like = a if isinstance(a, Tensor) else b
            return dispatch.apply(_ops.BINARY[name](), _operand(a, like), _operand(b, like))
        if any(isinstance(o, Tensor) for o in kwargs.get("out", ())):
            return NotImplemented  # numpy then raises: a Tensor is not a numpy output buffer
        arrays = [x.numpy() if isinstance(x, Tensor) else x for x in inputs]
        result = getattr(ufunc, method)(*arrays, **kwargs)
        if "out" in kwargs or method == "at":
            return result  # numpy's own buffers were written
        like = next(x for x in inputs if isinstance(x, Tensor))
        if isinstance(result, tuple):  # np.modf, np.divmod, np.frexp
            return tuple(like.__array_wrap__(r) for r in result)
        return like.__array_wrap__(result)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        """What numpy makes of a tensor's host values comes back as a tensor of this one's type
        on its device, as upstream's: ``np.clip(t, 0, 1)``, ``np.round(t)``, ``np.squeeze(t)``,
        ``np.cumsum(t)`` (and the ufuncs above) give new tensors, not differentiated. (Upstream
        1.13 raises RuntimeError for some, ``np.argmax(t, 1)``, ``np.transpose(t)``, ``np.sqrt``
        of an int32 tensor; here they give tensors too, of numpy's dtype.)"""
        array = np.asarray(array)
        return type(self)(array, dtype=array.dtype, device=self.device)

    def item(self, *args):
        if not args and self._data.size != 1:  # (upstream asserts: ArgumentError is both)
            raise _ops.ArgumentError(
                f"item(): can only convert a tensor of one element to a Python scalar, not one "
                f"of {self._data.size}; index it first (x[i].item()) or use x.tolist()")
        try:
            return self.numpy().item(*args)
        except IndexError as e:  # (upstream's kernel fails: a RuntimeError; IndexingError is one)
            raise _ops.IndexingError(f"item{args}: {e}") from None

    def tolist(self):
        return self.numpy().tolist()

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __bool__(self):
        if self._data.size != 1:  # (not self.size: a subclass may make it torch's size())
            raise _ops.ArgumentError(  # (a ValueError, and upstream's AssertionError)
                f"the truth value of a tensor with {self._data.size} elements is ambiguous; "
                "use F.logical_and/any/all or .item()"
            )
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        size = self._size_read()
        return int(self.item()) if size is None else size

    def _size_read(self):
        """A size held by this 0-d tensor while a dumpable trace records (``x.shape[0]`` of a
        shape tensor): its `SymDim`, read as a guard as ``int(x.shape[0])`` of a tuple is."""
        sizes = _trace_option.sizes_of(self)
        return _trace_option.as_int(sizes[()]) if sizes is not None and sizes.ndim == 0 \
            else None

    def __complex__(self):  # (Python falls back to __float__, which a complex value refuses)
        return complex(self.item())

    def __index__(self):
        if self.dtype.kind not in "iub" or self.size != 1:
            raise TypeError(f"only integer tensors with one element can be an index, not {self.dtype}")
        size = self._size_read()
        return int(self.item()) if size is None else size

    __hash__ = object.__hash__

    def __repr__(self):
        # _peek: printing decides no op, so a trace need not note the read. Upstream's layout:
        # numpy's str() at 4 decimals (a 0-d value prints in full, as numpy prints scalars),
        # continuation lines indented by numpy alone -- what upstream's docstrings show. A
        # quantized tensor names its storage dtype (int8), as upstream's; .dtype has the scale.
        with np.printoptions(precision=4, suppress=False):
            body = str(self._peek())
        dt = self._data.dtype
        extra = "" if dt == np.float32 and dt.metadata is None else f", dtype={dt.name}"
        return f"Tensor({body}{extra}, device={self._device_label()})"

    def _device_label(self):
        return self.device.logical_name

    # Pickling as upstream 1.x does, so files move between upstream and this engine both ways:
    # `__getnewargs__` gives (value, dtype, device logical name) to `cls.__new__`, and the state
    # holds only the optional extras. A "name" key is ours; upstream's __setstate__ ignores it.
    def __getnewargs__(self):
        value = self.numpy()
        if _fmt.shows_physical(self):  # the pickle holds the NCHW value, as upstream's default
            value = _fmt.to_logical(value)
        return (value, self.dtype, self.device.logical_name)

    def __getstate__(self):
        state = {}
        if self._format != "default":
            state["format"] = self._format
        if self._qparams is not None:
            state["qparams"] = self._qparams
        if self._name:
            state["name"] = self._name
        return state

    def __setstate__(self, state):
        state = dict(state)
        if "data" in state:
            # older formats carried the value in the state: upstream before 1.3 (data, device,
            # dtype, qdict) and this fork before it pickled as upstream (data, device, name, grad)
            data = state.pop("data")
            self._device = _device_mod.canonical_device(_mapped_device(str(state.pop("device"))))
            dtype = state.pop("dtype", None)
            self._data = as_array(data, np.dtype(dtype) if dtype is not None else data.dtype,
                                  self._device)
            self.grad = None
        if "qdict" in state:  # upstream's name before "qparams"
            qdict = state.pop("qdict")
            qparams = QParams(**{k: v for k, v in qdict.items() if k in QParams.__slots__}) \
                if isinstance(qdict, dict) else qdict
        else:
            qparams = state.pop("qparams", None)
        self._qparams = qparams
        self._name = state.pop("name", None)
        if "format" in state:
            self.format = state.pop("format")

    # ----- conversions that keep autodiff -----
    def astype(self, dtype):
        if dtype is None:  # numpy reads None as float64; upstream raises RuntimeError
            raise RuntimeError("astype: dtype None is not a dtype; name the dtype to cast to, "
                               "e.g. x.astype('float32')")
        dtype = _check_dtype(dtype, "astype")
        own = self._data.dtype
        if dtype is own:  # numpy's builtin dtypes are singletons: same object, same metadata
            return self
        if dtype.metadata is None and own.metadata is None:  # no quantized dtype on either side
            if dtype == own:
                return self
            return dispatch.apply(_ops.AsType(dtype), self)
        return _astype_quantized(self, dtype)

    def reshape(self, *args):  # (upstream's parameter names: expr.named_args, set_arg)
        shape = args
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, Tensor, np.ndarray,
                                                     _trace_option.ShapeArray)):
            shape = shape[0]
        if type(shape) is tuple and _ops.all_ints(shape):  # (sizes as ints, the usual call)
            return dispatch.apply(_ops.Reshape(shape), self)
        if _ops.by_shape_tensor(shape):  # (a dumpable trace: the shape is the op's input)
            return dispatch.apply(_ops.ReshapeBy(_ops.unspec_axis(shape)), self, shape)
        if _trace_option._dim_source is not None and _ops.computed_sizes(shape):  # (... and
            # so are sizes that are Tensors; the first test keeps eager calls fast)
            from ..functional.tensor import reshape  # functional sits above core: load on use
            return reshape(self, shape)
        return dispatch.apply(_ops.Reshape(_ops.int_tuple(shape, "reshape")), self)

    def __round__(self, ndigits=None):
        """``round(t)``: upstream's ``F.round``, halves away from zero, a tensor of t's dtype."""
        if ndigits is not None:
            raise TypeError(f"round(tensor, {ndigits!r}): a tensor rounds to integers only, as "
                            "upstream's; scale first, e.g. F.round(t * 10 ** n) / 10 ** n")
        from ..functional.elemwise import round as round_  # functional sits above core
        return round_(self)

    def __floor__(self):
        """``math.floor(t)``: upstream's ``F.floor``, a tensor of t's shape and dtype (not a
        Python int, so it also takes a tensor of several elements)."""
        from ..functional.elemwise import floor  # functional sits above core
        return floor(self)

    def __ceil__(self):
        """``math.ceil(t)``: upstream's ``F.ceil``, a tensor of t's shape and dtype."""
        from ..functional.elemwise import ceil  # functional sits above core
        return ceil(self)

    def _broadcast(self, *args):
        """Upstream's private ``Tensor._broadcast``: ``F.broadcast_to(self, shape)``, the shape
        given as one tuple, list or Tensor, or as separate sizes (as `reshape` takes it)."""
        from ..functional.tensor import broadcast_to  # functional sits above core: load on use
        shape = args
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, Tensor)):
            shape = shape[0]
        return broadcast_to(self, shape)

    def transpose(self, *args):
        axes = args
        if len(axes) == 1 and isinstance(axes[0], (Tensor, np.ndarray)):
            axes = (_ops.axis_of_array(axes[0]),)  # (an integer Tensor: its ints, as upstream)
            if isinstance(axes[0], (Tensor, np.ndarray)):
                raise TypeError(f"transpose: axes must be ints (a permutation of the dims), got "
                                f"a {type(axes[0]).__name__} of dtype {axes[0].dtype}")
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = axes[0]
        return dispatch.apply(_ops.Transpose(tuple(axes) if axes else None), self)

    def dimshuffle(self, *pattern):
        """MegEngine 0.x's spelling of ``transpose``, still called by official programs (the
        model zoo's ShuffleNetV1): ``pattern`` names every dim once; an ``'x'`` entry inserts a
        size-1 dim."""
        if len(pattern) == 1 and isinstance(pattern[0], (tuple, list)):
            pattern = tuple(pattern[0])
        kept = [p for p in pattern if p != "x"]
        if sorted(kept) != list(range(self.ndim)):
            raise ValueError(f"dimshuffle: pattern {pattern} must name each of the {self.ndim} "
                             "dims 0..ndim-1 once ('x' adds a size-1 dim)")
        out = self.transpose(kept) if kept != list(range(self.ndim)) else self
        if len(kept) != len(pattern):
            out = out.reshape(tuple(1 if p == "x" else self.shape[p] for p in pattern))
        return out

    @property
    def T(self):
        return self.transpose()

    def flatten(self, start_axis=0, end_axis=-1):
        from ..functional.tensor import _axis  # (an axis out of range raises, as upstream's)

        shape = self.shape
        nd = len(shape)
        s, e = _axis(start_axis, max(nd, 1), "flatten"), _axis(end_axis, max(nd, 1), "flatten")
        new = shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:]
        try:
            return self.reshape(new)
        except ValueError:
            if s <= e + 1:  # (then new has the tensor's size: not the axes' order)
                raise
            # (upstream takes end_axis one before start_axis, inserting a size-1 dim, and
            # refuses more; its reshape's words, and ours, named neither axis)
            raise _ops.ShapeError(
                f"flatten: end_axis {end_axis} (axis {e}) comes {s - e} axes before start_axis "
                f"{start_axis} (axis {s}) of a tensor of shape {shape}; the dims start_axis to "
                "end_axis, in order, are merged") from None

    def detach(self):
        """A tensor with the same storage (and format label), cut off from autodiff. As
        upstream's, a later write into either gives the writer a new array (`_shared`)."""
        t = Tensor._wrap(self._data, self._device)
        if dispatch._pinned_roots:  # torch's memory (a PyTorchModule's): t keeps its value
            dispatch._note_view(t)
        hook = dispatch._trace_hook
        if hook is not None and hasattr(hook, "detached"):  # megengine.jit.trace records it
            hook.detached(self, t)
        if self._format != "default":
            t._format = self._format
        return t

    def to(self, device):
        """A new tensor with this value on ``device`` (a Copy op, differentiable), also on the
        device it is on, as upstream's: ``y = x.to(x.device)`` keeps its value when x is
        written (earlier versions of this fork returned x itself)."""
        return dispatch.apply(_ops.Copy(_device_mod.canonical_device(device)), self)

    def _to(self, device):
        """``to`` for the engine's own temporaries: itself when it is already there."""
        dev = _device_mod.canonical_device(device)
        return self if dev == self._device else dispatch.apply(_ops.Copy(dev), self)

    # ----- in-place value replacement -----
    # Upstream's values never change: `set_value`, `+=` and an optimizer's update give the tensor
    # a new value, so a recorded backward always computes with what its forward saw. Here a
    # write goes into the tensor's storage (torch sees a mirrored parameter's update, and an
    # update allocates nothing) except while an op recorded by a GradManager may hold the array
    # for its backward (`dispatch.holds_arrays`): the tensor then gets a new array instead. A
    # pinned storage stays, and its owner is told (`_wrote_pinned`).
    def _reset(self, other):
        """Replace the value; writes into the existing storage when shape and dtype allow and
        no recorded op may hold it. As upstream's, the tensor becomes ``other`` for autodiff
        too (see `_track_as`), and a Tensor value brings its dtype (``p.set_value(
        p.astype("float16"))`` makes p float16); other values (arrays, numbers) take the
        tensor's. The tensor stays on its device. A PyTorchModule's mirror keeps torch's
        dtype, as torch's ``copy_``."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this write as an event
            dispatch._trace_hook.event(Tensor._reset, self, other)
            return
        _note_write()
        entry = None
        if isinstance(other, Tensor):
            entry = other._node
            cast = self._pinned_storage and other.dtype != self.dtype
            if entry is not None and entry[0].live and (other._device != self._device or cast):
                # a tracked value comes over by recorded ops, so its gradient goes back
                other = other._to(self._device)
                if cast:
                    other = other.astype(self.dtype)
                entry = other._node
            value = other._data
            if other._device != self._device:  # the value comes over; the tensor stays where it is
                value = _ops.move_array(value, self._device)
        elif getattr(getattr(other, "dtype", None), "metadata", None) is not None:
            value = as_array(other, other.dtype, self._device)  # a quantized value keeps its scale
        else:
            value = as_array(other, self.dtype, self._device)
        if self._pinned_storage and (value.shape != self._data.shape
                                     or value.dtype.metadata is not None):
            raise _unpinned_write(self, value, "set_value")
        if value.dtype.metadata is not None or self._data.dtype.metadata is not None:
            if not dtype.is_dtype_equal(value.dtype, self._data.dtype):
                # another quantized dtype (a loaded checkpoint's scales): the tensor takes it
                self._data = value.copy()
                self._track_as(entry)
                return
        held = dispatch.holds_arrays()  # a recorded op may hold the array: it must not change
        if (value.shape == self._data.shape and _writeable(self._data)
                and not _views_another_array(self._data)
                and (self._pinned_storage
                     or value.dtype == self._data.dtype and not (held or self._shared()))):
            if held:
                self._wrote_pinned()
            if self._pinned_storage:  # megengine tensors viewing torch's memory keep values
                dispatch.keep_values_of_views(self._data)
            if dispatch._switcher is not None:  # several GPUs: write on this tensor's device
                with dispatch.on_device(self._device):
                    self._data[...] = value
            else:
                self._data[...] = value
        else:
            with dispatch.on_device(self._device):  # CuPy copies onto the current GPU
                self._data = value.copy()  # (an array or number has the tensor's dtype now)
            if self._node is not None and self._node[0].op is None:
                self._node[0].out_meta = ((self._data.shape, self._data.dtype),)
        self._track_as(entry)

    def _track_as(self, entry):
        """After a write of a value whose graph entry is ``entry``: upstream's write makes the
        tensor that value, so later ops differentiate into what made it (``y.set_value(x * 3)``
        then ``y * 1`` gives x the gradient 3); a value no live recording tracks makes a
        computed tensor a constant. An attached tensor given such a value stays attached (its
        leaf stays; upstream's loses its attachment until the next ``record()``)."""
        if entry is not None and entry[0].live:
            self._node = entry
        elif self._node is not None and self._node[0].op is not None:
            self._node = None

    def set_value(self, value):
        """Set the value (upstream's ``set_value``, which returns None): the storage is kept
        when it fits and no recorded op may hold it (see `_reset`).

        .. deprecated:: 1.0
           please use ``tensor_name[...] = value``. Each call warns upstream 1.x's
           DeprecationWarning in its words (engine code calls `_reset`)."""
        import warnings

        warnings.warn("Call to deprecated method set_value. (please use ``tensor_name[...] = "
                      "value``) -- Deprecated since version 1.0.", DeprecationWarning,
                      stacklevel=2)
        self._reset(value)

    def _before_recorded_write(self):
        """Called before the engine writes into this tensor's array in place (an optimizer's
        update) while a recorded op may hold it (`dispatch.holds_arrays`): the tensor moves to
        a copy first (see `_reset`)."""
        if self._pinned_storage:
            self._wrote_pinned()
        else:
            self._unshare()

    def _unshare(self):
        """Move to a copy of the array before a write in place that others must not see."""
        with dispatch.on_device(self._device):
            self._data = self._data.copy()

    def _shared(self):
        """Whether something besides this tensor refers to its array: another tensor over it
        (``detach()``), a view of it (``reshape``, a slice, ``transpose``: a view keeps its base
        array alive), an engine cache. A write in place would reach that holder, whose value
        upstream never changes, so the writer takes a new array instead. (numpy's
        ``ndarray.resize`` asks the same of the reference count.) Engine caches of views are
        no such holder: they let the array go (`dispatch.release_cached`)."""
        if _refs(self) <= _ALONE:
            return False
        return not dispatch.release_cached(self._data) or _refs(self) > _ALONE

    def _aliased(self):
        """Whether a write into this tensor's array in place could change another tensor or
        fail: the array is a view of another one (`_views_another_array`: ``p.grad = g.reshape(
        ...)``), read-only (a broadcast), or `_shared`. Engine code about to write in place
        (``zero_grad``, ``bcast_list_``) gives the tensor a new array instead."""
        return (_views_another_array(self._data) or not _writeable(self._data)
                or self._shared())

    def _wrote_pinned(self):
        """Hook: this tensor's pinned storage was written while a recorded op may hold it."""

    # ----- upstream's memory hints (DTR and swapping) -----
    # Upstream's interpreter may free a tensor's device memory and rebuild the value when it is
    # next read: recomputed from its producer after `_drop()` (only with the `enable_drop`
    # option, or under `megengine.dtr`), copied back from the host after `_swap_out()`. The
    # value a program sees never changes. This engine keeps every value resident (it has no
    # recomputation or swapping), so the hints are accepted and the program runs unchanged
    # with the same results; `megengine.core.get_option("enable_drop")` is kept for the same
    # programs.
    def _drop(self):
        """Hint that the value may be evicted and recomputed later; the value stays here."""

    def _swap_out(self):
        """Hint that the value may move to host memory until it is needed; it stays here."""

    def _swap_in(self):
        """Hint that a swapped-out value is needed again on its device; it is already there."""

    def _inplace(self, op_result):
        """Result of an augmented operator: Parameters update their storage while no
        GradManager records (pinned storage always), others rebind (see `_reset`). As
        upstream's, the tensor takes the result's dtype (``int_param += 1.5`` is float32; a
        quantized parameter keeps its dtype, a PyTorchModule's mirror torch's)."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this write as an event
            return dispatch._trace_hook.event(Tensor._inplace, self, op_result)
        if self._pinned_storage and op_result.shape != self.shape:
            raise _unpinned_write(self, op_result, "an augmented assignment (+=, ...)")
        _note_write()
        recording = dispatch._recording
        if ((isinstance(self, Parameter) and not recording and not self._shared()
             and (op_result.dtype == self.dtype or self._data.dtype.metadata is not None)
             or self._pinned_storage)
                and op_result.shape == self.shape and _writeable(self._data)):
            if self._data.dtype.metadata is not None and \
                    op_result._data.dtype.metadata != self._data.dtype.metadata:
                # a quantized parameter keeps values: p /= 2 quantizes the float quotient (a
                # cast of the array would store it as the integers)
                op_result = op_result.astype(self.dtype)
            if self._pinned_storage:  # megengine tensors viewing torch's memory keep values
                dispatch.keep_values_of_views(self._data)
            if dispatch._switcher is not None:  # several GPUs: write on this tensor's device
                with dispatch.on_device(self._device):
                    self._data[...] = op_result._data.astype(self.dtype, copy=False)
            else:
                self._data[...] = op_result._data.astype(self.dtype, copy=False)
            if recording:  # pinned storage: it holds the result, and the tensor is the result
                self._wrote_pinned()
                self._node = op_result._node
            return self
        self._data = op_result._data
        self._node = op_result._node
        return self

    # ----- indexing -----
    def __getitem__(self, index):
        if type(index) is list and _list_is_a_tuple(index):
            index = tuple(index)
        return dispatch.apply(_ops.GetItem(_ops.normalize_index(index)), self)

    def __setitem__(self, index, value):
        if index is Ellipsis and isinstance(value, Tensor) and (
                value.shape != self.shape or value.dtype != self.dtype
                and value.dtype.metadata is None and self.dtype.metadata is None):
            # upstream: `t[...] = v` makes t the tensor v (its `_reset`), whatever v's shape
            # and dtype, so a buffer made as Tensor(0.0) can be filled by `pe[...] = table`
            # (ASR-Transformer)
            # a copy on this tensor's device, its own array: in-place updates of one (an
            # optimizer's) must not reach the other; an op, so a trace sees where it came from
            self._inplace(dispatch.apply(_ops.Copy(self._device), value))
            self._format = value._format
            return
        idx = _ops.normalize_index(index)
        whole = (index is Ellipsis and isinstance(value, Tensor) and value.shape == self.shape)
        label = value._format if whole else None
        try:
            value = _operand(value, self)
        except QuantizedNumberError:  # a number written into a quantized tensor: its value
            value = Tensor(value, dtype=np.float32, device=self._device)
        if (value.dtype != self.dtype or value.dtype.metadata != self.dtype.metadata) and \
                (value.dtype.kind != "c" or self.dtype.kind == "c"):  # (metadata: a quantized
            # dtype's scale, which == ignores; a complex value for a real x: SetItem refuses)
            value = value.astype(self.dtype)
        if index is Ellipsis and not self._graph_var:
            # upstream's `t[...] = v` is its `_reset`: t becomes the value, so what t held
            # before gets no gradient (None, as upstream's), not zeros through a SetItem
            if value.shape != self.shape:  # (a number, or a value that broadcasts)
                from ..functional.tensor import broadcast_to

                value = broadcast_to(value, self.shape)
            result = dispatch.apply(_ops.Copy(self._device), value)
        else:
            result = dispatch.apply(_ops.SetItem(idx), self, value)
        self._inplace(result)
        if whole:
            self._format = label  # `t[...] = other` replaces all of t, its format label included

    # ----- reductions used as methods -----
    def sum(self, axis=None, keepdims=False):
        return dispatch.apply(_ops.Reduce("sum", axis, keepdims), self)

    def mean(self, axis=None, keepdims=False):
        return dispatch.apply(_ops.Reduce("mean", axis, keepdims), self)

    def prod(self, axis=None, keepdims=False):
        return dispatch.apply(_ops.Reduce("prod", axis, keepdims), self)

    def max(self, axis=None, keepdims=False):
        return dispatch.apply(_ops.Reduce("max", axis, keepdims), self)

    def min(self, axis=None, keepdims=False):
        return dispatch.apply(_ops.Reduce("min", axis, keepdims), self)


def _astype_quantized(x, to):
    """``astype`` where a side is quantized (numpy's == ignores the scale, so compare it, as a
    tensor holds it: float32)."""
    if dtype.is_dtype_equal(dtype.tensor_dtype(to), x._data.dtype):
        return x
    if not (dtype.is_quantize(to) or dtype.is_quantize(x._data.dtype)):
        return dispatch.apply(_ops.AsType(to), x)  # metadata that is not ours
    return dispatch.apply(dtype.QuantizedCast(to), x)


def _mapped_device(saved):
    """Where a tensor saved on ``saved`` goes: ``Tensor.dmap_callback`` decides while loading."""
    callback = Tensor.dmap_callback
    if callback is None:  # (pickle.load, copy.deepcopy)
        return _device_mod._saved_device_here(saved)
    target = callback(saved)
    try:
        _device_mod.canonical_device(target)
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(
            f"load: a tensor saved on {saved!r} cannot be placed on {target!r} here ({e}); "
            "pass map_location to megengine.load, e.g. map_location='cpu0'"
        ) from None
    return target


# How many writes into tensors' storage the engine has made: every engine path that changes a
# value in place calls `_note_write` (`Tensor._reset`/`set_value`, `Tensor._inplace` (so
# setitem, augmented operators, ``_inplace_add_``), `Optimizer.step` and ``clear_grad``,
# ``bcast_list_``). While it stands still no tensor's own storage changed, so megengine.jit's
# capture_as_const need not compare captured values bit by bit (see jit/captures.py). (A list:
# its one item is read where it is imported.)
_writes = [0]


def _note_write():
    _writes[0] += 1


def check_grad_is_tensor(t, where, unchanged, owner="a tensor's"):
    """Refuse ``t.grad`` unless it is None or a Tensor: ``.grad`` is a plain attribute a user
    may set to anything, and the callers (a step, clipping, unscaling, backward) check every
    tensor before they change any. ``where`` names the caller, ``unchanged`` says what was
    left as it was, ``owner`` which tensor it is ("parameter 3's")."""
    grad = t.grad
    if grad is not None and not isinstance(grad, Tensor):
        raise TypeError(
            f"{where}: {owner} .grad must be a Tensor or None, got {type(grad).__name__} (on a "
            f"tensor of shape {t.shape}); set it to None or to a Tensor of the tensor's shape "
            f"({unchanged})")


def _views_another_array(array):
    """Whether ``array`` is a view of another array of its kind: the output of a view op
    (reshape, transpose, a slice) shares its input's memory. Upstream's tensors are values, so
    ``w.reshape(...).set_value(v)`` must not write into ``w``; such a tensor gets its own copy.
    Storage a foreign owner lends (a torch tensor's, whose base is a capsule) is this tensor's
    own and is still written in place."""
    base = getattr(array, "base", None)
    return base is not None and type(base) is type(array)


def _refs(tensor):
    return sys.getrefcount(tensor._data)


# What `_refs` counts for an array that only its tensor holds (the call's own references
# included, which vary with the Python version)
_ALONE = _refs(Tensor._wrap(np.empty(0), "cpu0"))


def _writeable(array):
    # CuPy's flags have no "writeable": device arrays are always writeable.
    return getattr(array.flags, "writeable", True)


class Parameter(Tensor):
    """A tensor that is a module's learnable state; optimizers update it in place."""

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


dispatch.Tensor = Tensor  # the dispatcher wraps its outputs in this class


#: upstream's ``megengine.tensor``: the Tensor class itself, so ``isinstance(x, tensor)`` holds
tensor = Tensor

# Tensor's operators, and upstream's module paths below this file: both files use the class
# above, so they load once it exists. Their names stay importable from here, where the engine's
# other layers and user programs have always found them.
from . import _imperative_rt  # noqa: E402,F401  (loaded by tensor_paths; named here as before)
from .operators import (_UFUNC_OPS, QuantizedNumberError, _augmented, _binary,  # noqa: E402,F401
                        _float_pow_operands, _operand, _unary)
from .tensor_paths import (_function_class, _Later, _upstream_path,  # noqa: E402,F401
                           array_method, as_raw_tensor, megbrain_graph, utils)
