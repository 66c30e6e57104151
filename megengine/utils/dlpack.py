"""DLPack exchange: `to_dlpack` hands a Tensor's memory to another framework, `from_dlpack` makes
a Tensor over another framework's memory; neither copies.

The engine's arrays are numpy arrays (CuPy arrays on GPU devices), which speak DLPack
themselves; this module picks the array library from the producer's device and wraps the result
as a Tensor. ``from_dlpack`` takes either an object with ``__dlpack__`` (a torch tensor, a numpy
or CuPy array, JAX, ...) or a bare DLPack capsule, as upstream's does; a capsule can be consumed
once, as the DLPack protocol says.
"""
import ctypes
from typing import Any

from ..core.tensor import Tensor

__all__ = ["to_dlpack", "from_dlpack"]

_CPU, _CUDA, _CUDA_HOST, _CUDA_MANAGED = 1, 2, 3, 13  # DLDeviceType values


def to_dlpack(tensor: Tensor, stream=None):
    """A DLPack capsule over ``tensor``'s memory (no copy): ``torch.utils.dlpack.from_dlpack``
    or ``np.from_dlpack`` of it shares storage with the tensor. ``stream`` (GPU tensors): the
    consumer's CUDA stream, so the producer's pending work is ordered before it."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"to_dlpack: expected a megengine Tensor, got {type(tensor).__name__}")
    if stream is not None and (isinstance(stream, bool) or not isinstance(stream, int)):
        raise TypeError(f"to_dlpack: stream must be an int (a CUDA stream) or None, got "
                        f"{type(stream).__name__} {stream!r}")  # (upstream's TypeError)
    array = tensor._data
    if stream is not None and stream != -1 and tensor._device[0] == "g":
        return array.__dlpack__(stream=stream)
    return array.__dlpack__()


class _Capsule:
    """A bare capsule dressed as a DLPack producer, for array libraries that accept only those."""

    def __init__(self, capsule, device):
        self._capsule, self._device = capsule, device

    def __dlpack__(self, stream=None, **kwargs):
        capsule, self._capsule = self._capsule, None
        if capsule is None:
            raise BufferError("from_dlpack: this DLPack capsule was already consumed")
        return capsule

    def __dlpack_device__(self):
        return self._device


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLTensorHead(ctypes.Structure):  # the first fields of DLTensor (and DLManagedTensor)
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice)]


def _capsule_device(capsule):
    """(device_type, device_id) of a legacy ``"dltensor"`` capsule, read from its DLTensor."""
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    name = get_name(capsule)
    if name == b"used_dltensor":
        raise BufferError("from_dlpack: this DLPack capsule was already consumed (a capsule "
                          "can make one tensor; ask the producer for a new one)")
    if name != b"dltensor":
        raise TypeError(f"from_dlpack: a capsule named {name!r} is not a DLPack tensor "
                        "(expected 'dltensor')")
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object,
                                                                   ctypes.c_char_p]
    head = _DLTensorHead.from_address(get_pointer(capsule, b"dltensor"))
    return int(head.device.device_type), int(head.device.device_id)


class _StreamHandle:
    """A raw CUDA stream handle offered through the CUDA stream protocol (``__cuda_stream__``)."""

    def __init__(self, ptr):
        self._ptr = ptr

    def __cuda_stream__(self):
        return 0, self._ptr


def _external_stream(cupy, ptr):
    """A CuPy stream object over the raw handle ``ptr`` (usable as a context): CuPy 14's
    ``Stream.from_external``, else ``ExternalStream``, which CuPy 14 deprecates."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(_StreamHandle(ptr))
    return cupy.cuda.ExternalStream(ptr)


def from_dlpack(ext_tensor: Any, stream=None) -> Tensor:
    """A Tensor over the memory of ``ext_tensor`` (an object with ``__dlpack__`` or a DLPack
    capsule) without a copy: writes through either side are seen by the other. CPU memory
    becomes a ``cpu0`` tensor, CUDA memory a ``gpu<N>`` tensor (needs CuPy). ``stream``: the
    CUDA stream the tensor will be used on (default: the current one), as upstream's."""
    if isinstance(stream, int) and stream < 0:
        raise ValueError(f"from_dlpack: stream must be a non-negative CUDA stream, got {stream}")
    if hasattr(ext_tensor, "__dlpack__"):
        producer = ext_tensor
        device_type, device_id = ext_tensor.__dlpack_device__()
    elif type(ext_tensor).__name__ == "PyCapsule":
        device_type, device_id = _capsule_device(ext_tensor)
        producer = _Capsule(ext_tensor, (device_type, device_id))
    else:
        raise TypeError(f"from_dlpack: expected a DLPack capsule or an object with __dlpack__ "
                        f"(a torch tensor, a numpy or CuPy array), got "
                        f"{type(ext_tensor).__name__}")
    device_type = int(device_type)
    if device_type in (_CPU, _CUDA_HOST):
        import numpy as np

        return Tensor._wrap(np.from_dlpack(producer), "cpu0")
    if device_type in (_CUDA, _CUDA_MANAGED):
        try:
            import cupy
        except ImportError:
            raise RuntimeError("from_dlpack: the tensor lives in CUDA memory; install CuPy "
                               "(e.g. pip install cupy-cuda12x) to use GPU tensors") from None
        with cupy.cuda.Device(int(device_id)):
            if stream:  # the consumer's stream: the producer orders its pending work before it
                with _external_stream(cupy, int(stream)):
                    array = cupy.from_dlpack(producer)
            else:
                array = cupy.from_dlpack(producer)
        return Tensor._wrap(array, f"gpu{int(device_id)}")
    raise ValueError(f"from_dlpack: DLPack device type {device_type} is not supported here "
                     "(CPU and CUDA memory are)")
