"""The simulated CUDA runtime behind the fake CuPy: devices and the current one per thread, memory objects, the pool, the null stream."""
import threading
import types

__all__ = ["SimulationGap", "CUDARuntimeError", "Runtime", "build_cuda"]


class SimulationGap(RuntimeError):
    """A CUDA facility the simulator cannot provide (raw pointers, DLPack, external streams)."""


class CUDARuntimeError(RuntimeError):
    """CuPy's ``cupy_backends.cuda.api.runtime.CUDARuntimeError``."""


class Runtime:
    """The simulated CUDA runtime: device count and the calling thread's current device.

    ``kernels`` and ``syncs`` count, over all devices and threads, what a real GPU would be
    asked for: a kernel (or copy) that fills new memory or writes in place, and a read of device
    values by the host (``.get()``, ``float(a)``, ``bool(a)``, ...: a synchronisation). Views
    and bare allocations count as neither. ATen's kernels, routed to the CPU, are not counted
    here (torch's dispatcher sees them: benchmarks/count_launches.py).
    """

    def __init__(self, count):
        self.count = count
        self._local = threading.local()
        self.kernels = 0
        self.syncs = 0

    def current(self):
        return getattr(self._local, "device", 0)

    def set_current(self, index):
        index = int(index)
        if not 0 <= index < self.count:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal "
                                   f"(simulated: {self.count} device(s), asked for {index})")
        self._local.device = index



def build_cuda(rt, live):
    """The ``cupy.cuda`` module for runtime ``rt``; ``live`` maps the numpy buffers of live
    device arrays that own their memory to those arrays (the pool's used bytes)."""

    class Device:
        """``cupy.cuda.Device``: the current device as a context, or by ``use()``."""

        def __init__(self, device=None):
            self.id = rt.current() if device is None else int(device)
            self._stack = []

        def __enter__(self):
            previous = rt.current()
            rt.set_current(self.id)
            self._stack.append(previous)
            return self

        def __exit__(self, *exc):
            rt.set_current(self._stack.pop())

        def use(self):
            rt.set_current(self.id)

        def synchronize(self):
            if not 0 <= self.id < rt.count:
                raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")

        compute_capability = property(lambda self: "90")
        mem_info = property(lambda self: _mem_info(self.id))

        def __int__(self):
            return self.id

        __index__ = __int__

        def __eq__(self, other):
            return isinstance(other, Device) and other.id == self.id

        def __hash__(self):
            return hash(("cupy.cuda.Device", self.id))

        def __repr__(self):
            return f"<CUDA Device {self.id}>"

    class Memory:
        """Memory of a simulated device (an array's numpy buffer)."""

        def __init__(self, raw, device_id):
            self._raw, self.device_id = raw, device_id
            self.ptr = raw.__array_interface__["data"][0]
            self.size = raw.nbytes

    class UnownedMemory(Memory):
        def __init__(self, ptr, size, owner, device_id=-1):
            raise SimulationGap("simulated CUDA: UnownedMemory (another framework's device "
                                "memory, e.g. a torch CUDA tensor) cannot be simulated")

    class MemoryPointer:
        def __init__(self, mem, offset):
            self.mem, self.ptr = mem, mem.ptr + offset
            self.device_id = mem.device_id

    class MemoryPool:
        """The default pool: bytes of live arrays that own their memory, per device."""

        def used_bytes(self):
            current = rt.current()
            return sum(a._a.nbytes for a in list(live.values()) if a._dev == current)

        def total_bytes(self):
            return self.used_bytes()

        def free_bytes(self):
            return 0

        def free_all_blocks(self, stream=None):
            pass

        def malloc(self, size):
            raise SimulationGap("simulated CUDA: raw allocations cannot be simulated")

        def set_limit(self, size=None, fraction=None):
            pass

        def get_limit(self):
            return 0

    pool = MemoryPool()
    current = [pool.malloc]  # the allocator set_allocator set

    def _mem_info(index):
        total = 16 << 30
        used = sum(a._a.nbytes for a in list(live.values()) if a._dev == index)
        return total - used, total

    class Stream:
        """The null stream (the only one simulated)."""

        ptr = 0
        null = None

        def __init__(self, null=False, non_blocking=False, priority=None):
            if not null:
                raise SimulationGap("simulated CUDA: only the null stream is simulated")
            self.device_id = rt.current()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def synchronize(self):
            pass

        def use(self):
            return self

        def wait_event(self, event):
            pass

        @classmethod
        def from_external(cls, obj):
            # CuPy 14's replacement of ExternalStream (an object with __cuda_stream__)
            version, ptr = obj.__cuda_stream__()
            if ptr != 0:
                raise SimulationGap("simulated CUDA: external streams (torch's CUDA streams) "
                                    "cannot be simulated")
            return Stream(null=True)

    def get_current_stream(device_id=-1):
        return Stream(null=True)

    def ExternalStream(*args, **kwargs):
        raise SimulationGap("simulated CUDA: external streams (torch's CUDA streams) cannot be "
                            "simulated")

    class Event:
        ptr = 0  # a raw handle, as CuPy's (never a real event here)

        def __init__(self, block=False, disable_timing=False, interprocess=False):
            pass

        def record(self, stream=None):
            if stream is not None and getattr(stream, "ptr", 0) != 0:
                raise SimulationGap("simulated CUDA: events on non-null streams")

        def synchronize(self):
            pass

    class PythonFunctionAllocator:
        def __init__(self, malloc_func, free_func):  # CuPy's parameter names
            self._malloc, self._free = malloc_func, free_func

        def malloc(self, size):
            raise SimulationGap("simulated CUDA: a Python allocator cannot serve simulated "
                                "arrays (they live in host memory)")

    def set_allocator(allocator=None):  # CuPy's parameter name
        current[0] = pool.malloc if allocator is None else allocator

    def get_allocator():
        return current[0]

    class using_allocator:
        def __init__(self, allocator=None):  # CuPy's parameter name
            self._allocator = allocator

        def __enter__(self):
            self._previous = current[0]
            set_allocator(self._allocator)

        def __exit__(self, *exc):
            current[0] = self._previous

    def _properties(device):  # CuPy's parameter name
        index = device
        if not 0 <= index < rt.count:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        return {"name": b"Simulated CUDA device (numpy)", "major": 9, "minor": 0,
                "totalGlobalMem": 16 << 30, "multiProcessorCount": 132}

    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.CUDARuntimeError = CUDARuntimeError
    runtime.getDeviceCount = lambda: rt.count
    runtime.getDevice = rt.current
    def setDevice(device):  # CuPy's parameter name
        rt.set_current(device)

    runtime.setDevice = setDevice
    runtime.getDeviceProperties = _properties
    runtime.memGetInfo = lambda: _mem_info(rt.current())
    runtime.runtimeGetVersion = lambda: 12040
    runtime.driverGetVersion = lambda: 12040
    runtime.deviceSynchronize = lambda: None

    def _null_stream_only(what):
        def call(*handles):
            streams = handles[:1] if what == "streamWaitEvent" else handles[1:2]
            if any(int(h) != 0 for h in streams):
                raise SimulationGap(f"simulated CUDA: runtime.{what} on a non-null stream")
        call.__name__ = what
        return call

    runtime.eventRecord = _null_stream_only("eventRecord")  # (event, stream)
    runtime.streamWaitEvent = _null_stream_only("streamWaitEvent")  # (stream, event, flags=0)
    runtime.is_hip = False

    memory = types.ModuleType("cupy.cuda.memory")
    for obj in (Memory, UnownedMemory, MemoryPointer, MemoryPool, PythonFunctionAllocator,
                set_allocator, get_allocator, using_allocator):
        setattr(memory, obj.__name__, obj)

    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime, cuda.memory = runtime, memory
    for obj in (Device, Memory, UnownedMemory, MemoryPointer, MemoryPool, Stream, ExternalStream,
                Event, PythonFunctionAllocator, set_allocator, get_allocator, using_allocator,
                get_current_stream):
        setattr(cuda, obj.__name__, obj)
    cuda.get_device_id = rt.current
    cuda.is_available = lambda: True
    cuda.Stream.null = Stream(null=True)
    cuda.pool = pool  # cupy.get_default_memory_pool()
    return cuda
