"""LiteLayout and LiteTensor: MegEngine Lite's tensors, here a numpy buffer on the host with
upstream's methods (copy in, share in, reshape, slice, read out)."""
import ctypes

import numpy as np

from .struct import LiteDataType, LiteDeviceType

__all__ = ["LiteLayout", "LiteTensor", "LiteTensorConcat", "lite_dtype_2_numpy"]

MAX_DIM = 7  # upstream's layouts hold at most 7 dims


# Errors: what the mistake is, and what upstream's Lite raises for it, so code written for
# either catches them: its C++ library's RuntimeError ("Error: ..."), its Python asserts,
# numpy's and ctypes' TypeErrors.
class _LiteValueError(ValueError, RuntimeError):
    """A value the Lite library refuses (a tensor name it lacks, a shape that does not fit)."""


class _LiteIndexError(IndexError, RuntimeError):
    """An index past a network's inputs or outputs."""


class _LiteKindError(TypeError, ValueError, AssertionError):
    """An argument of a kind Lite does not take (a file that is no file, a dtype it lacks)."""

_LITE_TO_NUMPY = {
    LiteDataType.LITE_FLOAT: np.float32,
    LiteDataType.LITE_HALF: np.float16,
    LiteDataType.LITE_INT: np.int32,
    LiteDataType.LITE_INT16: np.int16,
    LiteDataType.LITE_INT8: np.int8,
    LiteDataType.LITE_UINT8: np.uint8,
    LiteDataType.LITE_UINT16: np.uint16,
}
_NUMPY_TO_LITE = {np.dtype(v): k for k, v in _LITE_TO_NUMPY.items()}


def _lite_dtype(dtype):
    """The LiteDataType of a LiteDataType, numpy dtype, numpy scalar type or dtype name."""
    if dtype is None:
        return LiteDataType.LITE_FLOAT
    if isinstance(dtype, LiteDataType):
        return dtype
    try:
        key = np.dtype(dtype)
    except TypeError:
        key = None
    if key not in _NUMPY_TO_LITE:
        names = sorted(str(d) for d in _NUMPY_TO_LITE)
        raise _LiteKindError(f"MegEngine Lite has no data type for {dtype!r}; its tensors hold "
                             f"{names} (convert the data first, e.g. data.astype('float32'))")
    return _NUMPY_TO_LITE[key]


def _shape_list(shape):
    try:
        shape = [int(s) for s in shape]
    except (TypeError, ValueError):
        raise _LiteKindError(f"a Lite shape is a list of ints, got {shape!r}") from None
    if len(shape) > MAX_DIM:
        raise ValueError(f"a Lite layout has at most {MAX_DIM} dims, got shape {shape}")
    return shape


class LiteLayout:
    """Shape and data type of a Lite tensor (upstream's ``LiteLayout(shape, dtype)``).

    ``dtype``: a `LiteDataType`, a numpy dtype or type, or a dtype name (default float32).
    """

    def __init__(self, shape=None, dtype=None):
        self.shapes = list(shape) if shape else []
        self.data_type = _lite_dtype(dtype)

    @property
    def shapes(self):
        return list(self._shapes)

    @shapes.setter
    def shapes(self, shape):
        self._shapes = _shape_list(shape)

    @property
    def ndim(self):
        return len(self._shapes)

    @property
    def data_type(self):
        return self._data_type

    @data_type.setter
    def data_type(self, value):
        self._data_type = _lite_dtype(value)

    @property
    def dtype(self):
        """The numpy scalar type of the data (``np.float32`` for LITE_FLOAT)."""
        return _LITE_TO_NUMPY[self._data_type]

    def __eq__(self, other):
        return (isinstance(other, LiteLayout) and self.shapes == other.shapes
                and self.data_type == other.data_type)

    def __repr__(self):
        return repr({"shapes": self.shapes, "ndim": self.ndim, "data_type": self.dtype})


def _host_only(device_type):
    device_type = LiteDeviceType(device_type)
    if device_type not in (LiteDeviceType.LITE_CPU, LiteDeviceType.LITE_DEVICE_DEFAULT):
        raise ValueError(f"this MegEngine Lite runs on the CPU only; {device_type.name} tensors "
                         "and networks are not available (use LiteDeviceType.LITE_CPU)")
    return LiteDeviceType.LITE_CPU


class LiteTensor:
    """A block of data with its layout (upstream's ``LiteTensor``): a numpy array on the host.

    Made from a `LiteLayout`, or from ``shapes`` and ``dtype``; its memory starts zeroed.
    """

    def __init__(self, layout=None, device_type=LiteDeviceType.LITE_CPU, device_id=0,
                 is_pinned_host=False, shapes=None, dtype=None):
        self._device_type = _host_only(device_type)
        self._device_id = int(device_id)
        self._is_pinned_host = bool(is_pinned_host)
        if layout is None:
            layout = LiteLayout(shapes, dtype)
        elif not isinstance(layout, LiteLayout):
            raise TypeError(f"LiteTensor: layout must be a LiteLayout, got {type(layout).__name__}")
        self._array = np.zeros(layout.shapes, layout.dtype)

    # ---------------------------------------------------------------- description
    @property
    def layout(self):
        return LiteLayout(self._array.shape, self._array.dtype)

    @layout.setter
    def layout(self, layout):
        """Set the layout (a LiteLayout, or a list of dims keeping the data type). The memory is
        kept when its size in bytes stays the same, else made anew (zeroed), as upstream's."""
        if isinstance(layout, (list, tuple)):
            layout = LiteLayout(layout, self._array.dtype)
        elif not isinstance(layout, LiteLayout):
            raise TypeError(f"layout: expected a LiteLayout or a list of dims, got "
                            f"{type(layout).__name__}")
        dtype, shape = np.dtype(layout.dtype), layout.shapes
        if self._array.flags.c_contiguous and int(np.prod(shape)) * dtype.itemsize == self.nbytes:
            self._array = self._array.reshape(-1).view(dtype).reshape(shape)
        else:
            self._array = np.zeros(shape, dtype)

    @property
    def nbytes(self):
        return int(self._array.nbytes)

    @property
    def device_type(self):
        return self._device_type

    @property
    def device_id(self):
        return self._device_id

    @property
    def is_pinned_host(self):
        return self._is_pinned_host

    @property
    def is_continue(self):
        """Whether the memory is one contiguous block (a slice may not be)."""
        return bool(self._array.flags.c_contiguous)

    def update(self):
        """Upstream refreshes its Python view of the C tensor here; the numpy buffer is always
        current, so there is nothing to refresh."""

    # ---------------------------------------------------------------- memory
    def fill_zero(self):
        self._array[...] = 0

    def share_memory_with(self, src_tensor):
        """Use ``src_tensor``'s memory (and layout) from now on."""
        self._array = _lite_tensor(src_tensor, "share_memory_with")._array

    def copy_from(self, src_tensor):
        """Copy ``src_tensor``'s data and layout into memory of this tensor's own."""
        self._array = np.array(_lite_tensor(src_tensor, "copy_from")._array, order="C")

    def reshape(self, shape):
        """The same data under a new shape (one dim may be -1)."""
        shape = _shape_list(shape)
        try:
            self._array = self._array.reshape(shape)
        except ValueError:
            raise _LiteValueError(f"reshape: {self._array.size} elements cannot take shape "
                                  f"{shape}") from None

    def slice(self, start, end, step=None):
        """A tensor viewing ``[start:end:step]`` of each leading dim (it shares this memory)."""
        start, end = list(start), list(end)
        step = [1] * len(start) if step is None else list(step)
        if not len(start) == len(end) == len(step):
            raise ValueError(f"slice: start {start}, end {end} and step {step} must have one "
                             "entry per sliced dim")
        out = LiteTensor(device_type=self._device_type, device_id=self._device_id)
        out._array = self._array[tuple(slice(b, e, s) for b, e, s in zip(start, end, step))]
        return out

    def get_ctypes_memory(self):
        """The address of the data as a ctypes ``c_void_p``."""
        return ctypes.c_void_p(self._array.ctypes.data)

    def set_data_by_share(self, data, length=0, layout=None):
        """Use numpy array ``data`` as this tensor's memory, without a copy (the array must be
        C-contiguous and of the tensor's data type unless ``layout`` says otherwise)."""
        if not isinstance(data, np.ndarray):
            raise TypeError(f"set_data_by_share: expected a numpy array, got "
                            f"{type(data).__name__}")
        if not data.flags.c_contiguous:
            raise ValueError("set_data_by_share: the array is not C-contiguous; call "
                             "np.ascontiguousarray(data) first")
        want = np.dtype(layout.dtype) if layout is not None else self._array.dtype
        if data.dtype != want:
            # upstream would reinterpret the bytes as the tensor's type; say so instead
            raise ValueError(f"set_data_by_share: the array holds {data.dtype} but the tensor "
                             f"holds {want}; convert the array (data.astype('{want}')) or pass "
                             "a layout of its type")
        shape = layout.shapes if layout is not None else list(data.shape)
        if length and length != data.nbytes:
            raise ValueError(f"set_data_by_share: length {length} is not the array's "
                             f"{data.nbytes} bytes")
        self._array = data if list(data.shape) == shape else data.reshape(shape)

    def set_data_by_copy(self, data, data_length=0, layout=None):
        """Copy ``data`` in: a numpy array (the tensor takes its shape and type), or a list of
        numbers filling the tensor's memory from the start in its layout."""
        if layout is not None:
            self.layout = layout
        if isinstance(data, np.ndarray):
            _lite_dtype(data.dtype)  # a type Lite has, or a clear error
            self._array = np.array(data, order="C", copy=True)
        elif isinstance(data, (list, tuple)):
            flat = np.asarray(data, dtype=self._array.dtype).reshape(-1)
            if flat.size > self._array.size:
                raise ValueError(f"set_data_by_copy: {flat.size} values do not fit a tensor of "
                                 f"{self._array.size} elements (layout {self.layout})")
            self._array.reshape(-1)[:flat.size] = flat
        else:
            raise _LiteKindError(f"set_data_by_copy: expected a numpy array or a list, got "
                                 f"{type(data).__name__}")

    def get_data_by_share(self):
        """The tensor's memory as a numpy array (no copy: valid until the next forward)."""
        return self._array

    def to_numpy(self):
        """A copy of the data as a numpy array of the tensor's shape and type."""
        return np.array(self._array, order="C", copy=True)

    def __repr__(self):
        return repr({"layout": self.layout, "device_type": self._device_type,
                     "device_id": self._device_id, "is_pinned_host": self._is_pinned_host})


def _lite_tensor(t, what):
    if not isinstance(t, LiteTensor):
        raise _LiteKindError(f"{what}: expected a LiteTensor, got {type(t).__name__}")
    return t


def LiteTensorConcat(tensors, dim, device_type=LiteDeviceType.LITE_DEVICE_DEFAULT,
                     device_id=-1):
    """A new tensor joining ``tensors`` along ``dim``."""
    arrays = [_lite_tensor(t, "LiteTensorConcat")._array for t in tensors]
    out = LiteTensor(device_type=device_type, device_id=max(int(device_id), 0))
    out._array = np.concatenate(arrays, axis=dim)
    return out


def lite_dtype_2_numpy(dtype):
    """The numpy scalar type of a `LiteDataType`."""
    if not isinstance(dtype, LiteDataType):
        raise TypeError(f"lite_dtype_2_numpy: expected a LiteDataType, got {dtype!r}")
    return _LITE_TO_NUMPY[dtype]
