"""megengine/core/torch_bridge.py's CUDA view of a torch tensor: the CuPy array built from pointer, extent and strides, and CuPy's stream ordered after torch's with raw event calls.

Without a GPU a recording stand-in takes CuPy's place. It offers only the names and argument
lists real CuPy 14.2 has for these calls (checked against the installed CuPy by
tests/simcuda/api_check.py: ``UnownedMemory(ptr, size, owner, device_id)``,
``MemoryPointer(mem, offset)``, ``ndarray(shape, dtype, memptr, strides)``,
``runtime.eventRecord(event, stream)``, ``runtime.streamWaitEvent(stream, event)``), and no
``ExternalStream``, which CuPy 14 deprecates.
"""
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from megengine.core import torch_bridge as bridge  # noqa: E402


class RecordingCupy:
    def __init__(self, current_stream):
        self.log = []
        log = self.log

        class UnownedMemory:
            def __init__(self, ptr, size, owner, device_id=-1):
                self.ptr, self.size, self.owner, self.device_id = ptr, size, owner, device_id

        class MemoryPointer:
            def __init__(self, mem, offset):
                self.mem, self.ptr = mem, mem.ptr + offset

        class ndarray:
            def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
                self.shape, self.dtype, self.data, self.strides = shape, dtype, memptr, strides

        class Device:
            def __init__(self, device=None):
                self.id = device

            def __enter__(self):
                log.append(("enter device", self.id))

            def __exit__(self, *exc):
                log.append(("exit device", self.id))

        class Event:
            def __init__(self, block=False, disable_timing=False, interprocess=False):
                self.ptr = 900
                log.append(("event", block, disable_timing, interprocess))

        def event_record(event, stream):
            log.append(("eventRecord", event, stream))

        def stream_wait_event(stream, event, flags=0):
            log.append(("streamWaitEvent", stream, event))

        def get_current_stream(device_id=-1):
            return types.SimpleNamespace(ptr=current_stream)

        self.ndarray = ndarray
        self.cuda = types.SimpleNamespace(
            UnownedMemory=UnownedMemory, MemoryPointer=MemoryPointer, Device=Device, Event=Event,
            get_current_stream=get_current_stream,
            runtime=types.SimpleNamespace(eventRecord=event_record,
                                          streamWaitEvent=stream_wait_event))


class CudaLookalike:
    """A CPU tensor answering as a CUDA tensor on device 0 (the bridge reads only these)."""

    def __init__(self, tensor):
        self.t, self.device = tensor, types.SimpleNamespace(index=0)

    def detach(self):
        return self

    def __getattr__(self, name):  # shape, stride, data_ptr, element_size, dtype
        return getattr(self.t, name)


@pytest.fixture
def with_cupy(monkeypatch):
    def install(cupy_stream, torch_stream):
        cupy = RecordingCupy(cupy_stream)
        monkeypatch.setattr(bridge, "_cupy_module", cupy)
        monkeypatch.setattr(bridge, "_pool_decided", True)  # the allocator is not under test
        monkeypatch.setattr(bridge, "_torch_raw_stream", lambda device: torch_stream)
        return cupy
    return install


def test_the_view_covers_the_strided_extent_and_keeps_the_owner(with_cupy):
    cupy = with_cupy(cupy_stream=0, torch_stream=0)
    base = torch.zeros(3, 8)
    t = CudaLookalike(base[:, ::2])  # shape (3, 4), strides (8, 2) elements
    array = bridge._cuda_tensor_to_cupy(t)
    assert array.shape == (3, 4) and array.dtype == np.float32
    assert array.strides == (32, 8)  # bytes
    memory = array.data.mem
    assert memory.ptr == base.data_ptr() and memory.device_id == 0
    assert memory.size == ((3 - 1) * 8 + (4 - 1) * 2 + 1) * 4  # first to last element reached
    assert memory.owner is t  # the (detached) tensor keeps the storage alive
    assert cupy.log == []  # one stream on both sides: nothing to order


def test_cupys_stream_waits_for_torchs_through_an_event_on_raw_handles(with_cupy):
    cupy = with_cupy(cupy_stream=22, torch_stream=11)
    bridge._cuda_tensor_to_cupy(CudaLookalike(torch.ones(4)))
    assert cupy.log == [("enter device", 0), ("event", False, True, False),
                        ("eventRecord", 900, 11), ("streamWaitEvent", 22, 900),
                        ("exit device", 0)]
