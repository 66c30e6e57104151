"""Device names, the default device, the array module (numpy / CuPy) per device, device queries."""
import enum
import functools
import numbers
import os
import re
import sys

import numpy as np

__all__ = [
    "get_default_device",
    "set_default_device",
    "is_cuda_available",
    "is_cambricon_available",
    "is_atlas_available",
    "is_rocm_available",
    "get_device_count",
    "get_mem_status_bytes",
    "get_cuda_compute_capability",
    "get_cuda_device_property",
    "get_cuda_version",
    "get_cuda_driver_version",
    "get_cudnn_version",
    "get_tensorrt_version",
    "get_allocated_memory",
    "get_reserved_memory",
    "get_max_reserved_memory",
    "get_max_allocated_memory",
    "reset_max_memory_stats",
    "set_prealloc_config",
    "coalesce_free_memory",
    "what_is_xpu",
    "DeviceType",
    "get_array_module",
    "canonical_device",
    "get_gpu_allocator",
    "CudaDeviceSwitcher",
    "DeviceNameError",
    "DeviceTypeError",
]


class DeviceType(enum.Enum):
    """Kinds of device upstream knows; this engine serves CPU and CUDA (UNSPEC: "xpu")."""

    UNSPEC = 0
    CUDA = 1
    CPU = 2
    CAMBRICON = 3
    ROCM = 4
    ATLAS = 5

# Upstream's comp node names (its C++ CompNode::Locator::parse): a kind, cpu, gpu or xpu ("the
# best there is"), then a number or "x" ("any"), then an optional ":stream". The number may be
# left out before a stream ("cpu:0" is cpu0:0) and "xpu" alone is "xpux". "multithreadT:N" is
# CPU N computing with T > 0 threads (for inference); "cpu:default" and "multithread:default:T"
# are upstream's default CPU, which computes in the caller's thread.
_DEVICE_RE = re.compile(r"(cpu|gpu|xpu|multithread)(\d+|x)?(?::(\d+))?")
_DEFAULT_CPU_RE = re.compile(r"cpu:default|multithread:default:\d+")
_NAME_FORMS = ("a name like 'cpu0', 'cpux', 'gpu0', 'xpux', 'cpu:0', 'gpu0:1' (a stream) or "
               "'multithread4:0' (4 threads on cpu0)")
_default_device = os.environ.get("MGE_DEFAULT_DEVICE", "xpux")


_cuda_forgotten = False  # set by _forget_cuda in a process that must not touch CUDA
_cuda_pid = None  # the process that asked CuPy's CUDA runtime first (is_cuda_available)


@functools.lru_cache(maxsize=None)
def _cupy():
    # Looked up once: a failed import is slow, and every default-device tensor asks.
    if _cuda_forgotten:
        return None
    try:
        import cupy  # optional extra: only present on CUDA machines
    except Exception:  # ImportError, or a CuPy that finds no driver
        return None
    return cupy


@functools.lru_cache(maxsize=None)
def is_cuda_available() -> bool:
    """True when a CUDA device can serve arrays (CuPy installed and a GPU visible)."""
    global _cuda_pid
    cp = _cupy()
    if cp is None:
        return False
    if _cuda_pid is None:
        _cuda_pid = os.getpid()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception:
        return False
    if count > 1:  # ops on gpu1 must make gpu1 current (see CudaDeviceSwitcher)
        _set_switcher(CudaDeviceSwitcher(cp.cuda.runtime))
    return count > 0


# ----- the current CUDA device -----
#
# CuPy allocates memory and launches kernels on the calling thread's *current* device (the CUDA
# runtime's, which torch reads too), whatever device the arrays live on. With one GPU the
# current device can only be 0, so nothing ever needs switching; with more, the dispatcher, the
# GradManager and the optimizers make each op's device current through the switcher installed
# here (megengine.core.dispatch holds it: ``dispatch.set_device_switcher``).

class CudaDeviceSwitcher:
    """Reads (``current() -> int``) and sets (``use(index)``) the calling thread's current CUDA
    device through the CUDA runtime (cudaGetDevice / cudaSetDevice, CuPy's bindings); torch
    reads the same runtime state, so one switch serves both frameworks."""

    __slots__ = ("current", "use")

    def __init__(self, runtime=None):
        runtime = _cupy().cuda.runtime if runtime is None else runtime
        # the bound functions themselves: no Python frame of ours per call
        self.current = runtime.getDevice
        self.use = runtime.setDevice


_switcher = None  # a CudaDeviceSwitcher when more than one GPU is visible
_switcher_listeners = []


def _on_switcher_change(listener):
    """Call ``listener(switcher)`` now and whenever the switcher changes (the dispatcher's hook:
    this layer cannot import the core)."""
    _switcher_listeners.append(listener)
    listener(_switcher)


def _set_switcher(switcher):
    global _switcher
    _switcher = switcher
    for listener in _switcher_listeners:
        listener(switcher)


def _cuda_touched() -> bool:
    """Whether this process has already called into CUDA (CuPy's runtime, or torch's CUDA state):
    from then on a forked child cannot use CUDA, and asking here initialises nothing new."""
    if is_cuda_available.cache_info().currsize and _cupy.cache_info().currsize and \
            _cupy() is not None:
        return True
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # a torch without the cuda module
        return False


def _cuda_lost_in_fork() -> bool:
    """Whether this process was forked from one that had called into CUDA (CuPy's runtime
    through this module, or torch's CUDA state): no CUDA call can succeed here, as a CUDA
    context does not survive ``fork`` (the answers cached in the parent still say CUDA is
    usable). False once the process forgot CUDA (`_forget_cuda`: it works as one without)."""
    if _cuda_forgotten:
        return False
    if _cuda_pid is not None and _cuda_pid != os.getpid():
        return True
    torch = sys.modules.get("torch")
    try:  # (torch marks the children forked after it initialized CUDA)
        return bool(torch is not None and torch.cuda._is_in_bad_fork())
    except Exception:  # a torch without the cuda module
        return False


def _forget_cuda():
    """Make this process answer every device query as a machine without a GPU does, and put new
    tensors on the CPU. For a process forked after its parent used CUDA (a CUDA context does not
    survive ``fork``: any CUDA call in the child fails), e.g. `megengine.distributed.launcher`'s
    CPU workers forked from a process that ran GPU work."""
    global _cuda_forgotten, _default_device
    _cuda_forgotten = True
    _cupy.cache_clear()
    is_cuda_available.cache_clear()
    _set_switcher(None)
    _default_device = "cpu0"


def get_device_count(device_type: str = "gpu") -> int:
    """Number of devices of ``device_type``: "gpu" (CUDA), "cpu" (cores), or "xpu" (the best
    kind there is: the GPUs when CUDA is usable, else the CPU cores). "rocm" counts 0 here."""
    kind = _device_kind(device_type, "get_device_count")
    if kind == "xpu":
        kind = "gpu" if is_cuda_available() else "cpu"
    if kind == "cpu":
        return os.cpu_count() or 1
    if kind == "gpu":
        return _cupy().cuda.runtime.getDeviceCount() if is_cuda_available() else 0
    return 0  # ROCm, Cambricon, Atlas: no backend for them in this engine


def _device_kind(device_type, what):
    name = getattr(device_type, "name", device_type)  # a DeviceType member or a string
    kind = {"cpu": "cpu", "cpux": "cpu", "gpu": "gpu", "cuda": "gpu", "xpu": "xpu",
            "unspec": "xpu", "rocm": "rocm", "amdgpu": "rocm", "cambricon": "cambricon",
            "atlas": "atlas"}.get(str(name).lower())
    if kind is None:
        raise DeviceNameError(f"{what}: unknown device type {device_type!r}; use 'gpu', 'cpu' "
                              "or 'xpu'")
    return kind


def is_cambricon_available() -> bool:
    """False: this engine has no Cambricon backend."""
    return False


def is_atlas_available() -> bool:
    """False: this engine has no Atlas backend."""
    return False


def is_rocm_available() -> bool:
    """False: this engine has no ROCm backend (its GPU arrays are CuPy's, on CUDA)."""
    return False


def what_is_xpu() -> str:
    """What "xpux" means here: ``"cuda"`` when CUDA is usable, else ``"cpu"``."""
    return "cuda" if is_cuda_available() else "cpu"


class DeviceNameError(ValueError, RuntimeError, AssertionError):
    """A device name this engine cannot read (``"cuda:0"``, ``"cpu"``, a GPU not visible): a
    ValueError saying which names it takes, and a RuntimeError, what upstream raises there (its
    comp node locator's "invalid comp node id"; ``set_default_device`` and
    ``get_device_count`` assert first: an AssertionError too), so code written for any of
    them catches it."""


class DeviceTypeError(TypeError, RuntimeError, AssertionError):
    """A device given as something that is no name (``device=0``): a TypeError, and a
    RuntimeError as upstream's (its C++ check asserts a CompNode; ``set_default_device``
    asserts in Python first: an AssertionError too)."""


def parse_device_name(name: str):
    """``(kind, number)`` of an upstream device name: kind "cpu", "gpu" or "xpu", number its
    digits or "x"; the stream is dropped (one stream per device here), a "multithread" name is
    its CPU. Raises ValueError naming the accepted forms for any other text."""
    if _DEFAULT_CPU_RE.fullmatch(name):
        return "cpu", "0"
    m = _DEVICE_RE.fullmatch(name)
    if m is not None:
        kind, number, stream = m.groups()
        if number is None:  # upstream reads a missing number as 0, but needs one of them
            number = "x" if kind == "xpu" and stream is None else stream and "0"
        if kind == "multithread":  # multithreadT:N, T threads on CPU N; T = 0 is refused
            kind, number = "cpu", (None if number in (None, "x") or int(number) == 0
                                   else stream or "0")
        if number is not None:
            return kind, number
    if name.startswith(("rocm", "atlas", "cambricon")):
        raise DeviceNameError(f"device {name!r}: this engine has no ROCm, Atlas or Cambricon "
                              "backend; use a CPU ('cpu0') or a CUDA GPU ('gpu0')")
    raise DeviceNameError(f"unknown device {name!r}: expected {_NAME_FORMS}")


class _Device(str):
    """A canonical device name ("cpu0", "gpu1"; equal to and hashed as that text) that also
    remembers the name the program asked for, as upstream's logical comp node name
    (``_logical``: "xpux:0" for the default device, "cpu0:0" for ``device="cpu0"``). Tensors keep
    the one they were made with, an op's outputs take their input's, so
    ``x.device.logical_name`` and the name ``mge.save`` records are the program's own."""

    def __reduce__(self):  # pickled as its text: files never name this class
        return (str, (str(self),))


_NAMED = {}  # (canonical, logical) -> its _Device, made once


@functools.lru_cache(maxsize=256)
def _logical_name(name):
    """Upstream's logical name of a device name: the name with its stream ("cpu0" -> "cpu0:0",
    "xpu" -> "xpux:0", "cpu:0" -> "cpu0:0"); multithread and default-CPU names as given."""
    m = _DEVICE_RE.fullmatch(name)
    if m is None or m.group(1) == "multithread":
        return name if ":" in name else name + ":0"
    kind, number, stream = m.groups()
    if number is None:
        number = "x" if kind == "xpu" and stream is None else "0"
    return f"{kind}{number}:{stream or 0}"


def canonical_device(device=None) -> str:
    """Validate a device name and return the device it means: "cpu<N>" or "gpu<N>" (a str that
    also remembers the name as given: ``_Device``).

    "xpux"/"xpuN" mean "the best device there is": a GPU when CUDA is available, else the CPU
    device of that number. "cpuN" are upstream's CPU computing nodes: one host memory, but
    distinct devices, as upstream's (a tensor keeps the one it was made on, an op refuses
    inputs of two of them, ``F.copy`` / ``Tensor.to`` move between them); "x" is number 0.
    Upstream's "multithreadT:N" (CPU N computing with T threads) is "cpuN": the CPU kernels
    here use their libraries' own thread pools. Names are parsed as upstream parses them
    (`parse_device_name`): "cpu:0" is "cpu0", "gpu0:1" is "gpu0" (one stream per device here).
    """
    if type(device) is _Device:  # a tensor's own: already checked
        return device
    if device is None:
        device = _default_device
    # a CompNode is a str naming the device, and may carry its tensor's logical name; other
    # objects (upstream's CompNode-likes) by their logical name
    logical = getattr(device, "_logical", None)
    if isinstance(device, (numbers.Number, bytes, list, tuple, dict)):  # (str() would name
        # some device: 0 was "unknown device '0'")
        raise DeviceTypeError(f"a device must be a name such as 'cpu0', 'gpu0' or 'xpux' (or a "
                              f"tensor's .device), got {type(device).__name__}: {device!r}")
    name = str(device) if isinstance(device, str) else str(getattr(device, "logical_name", device))
    kind, index = parse_device_name(name)
    if kind == "xpu":
        kind = "gpu" if is_cuda_available() else "cpu"
    if kind == "gpu":
        if not is_cuda_available():
            raise RuntimeError(
                f"device {name!r} needs CUDA, but no CUDA device is usable here: install CuPy "
                "(pip install cupy-cuda12x) on a machine with an NVIDIA GPU, or use 'cpu0'/'xpux'"
            )
        if index != "x" and int(index) >= get_device_count("gpu"):
            raise DeviceNameError(f"device {name!r}: only {get_device_count('gpu')} GPU(s) are "
                                  "visible")
    key = (kind + ("0" if index == "x" else str(int(index))), logical or _logical_name(name))
    named = _NAMED.get(key)
    if named is None:
        named = _NAMED[key] = _Device(key[0])
        named._logical = key[1]
    return named


def get_default_device() -> str:
    """The device new tensors go to (upstream's default is "xpux")."""
    return _default_device


def set_default_device(device: str = "xpux"):
    """Set the device new tensors go to; the name is checked now, not at first use."""
    global _default_device
    canonical_device(device)
    _default_device = str(device)


def _saved_device_here(name):
    """The device name a value saved or dumped on ``name`` goes to when the loader maps nothing
    (``mge.load`` without ``map_location``, ``pickle.load``, a dumped program): ``name`` itself,
    except upstream's default device name "xpux" (any stream), which goes to this program's
    default device. A file records the name its program asked for, and "xpux" is the saver's
    default ("the best device available"); upstream's ``load`` asks programs to set their
    default device before loading, so a program that set it (``set_default_device("cpu0")``,
    ``MGE_DEFAULT_DEVICE=cpu0``) runs such files there, also on a machine with a GPU, where
    "xpux" alone would put the parameters on gpu0 and leave the program's inputs on cpu0. With
    the default left at "xpux" the name stays as saved."""
    try:
        saved = parse_device_name(name)
        default = parse_device_name(_default_device)
    except ValueError:
        return name  # (the caller reports a name it cannot read)
    if saved == ("xpu", "x") and default != ("xpu", "x"):
        return _default_device
    return name


def get_array_module(device: str):
    """The array module that serves ``device`` (a canonical name): numpy for CPUs, CuPy for GPUs."""
    if device.startswith("gpu"):
        return _cupy()
    return np


class _ArrayModuleOn:
    """CuPy with one GPU made current around each function call (see `array_module_on`)."""

    __slots__ = ("_xp", "_index")

    def __init__(self, xp, index):
        self._xp, self._index = xp, index

    def __getattr__(self, name):
        value = getattr(self._xp, name)
        if not callable(value) or isinstance(value, type):
            return value  # dtypes, classes, constants

        def on_device(*args, **kwargs):
            with self._xp.cuda.Device(self._index):
                return value(*args, **kwargs)
        return on_device


def array_module_on(device: str):
    """`get_array_module` for code that allocates outside an op's forward (tensor factories):
    CuPy allocates on the *current* GPU, so with several GPUs visible its functions run with
    ``device`` current; otherwise the module itself (no cost)."""
    xp = get_array_module(device)
    if xp is np or _switcher is None:
        return xp
    return _ArrayModuleOn(xp, int(device[3:]))


# ----- device properties and memory -----

def _need_cuda(what):
    if not is_cuda_available():
        raise RuntimeError(
            f"{what}: no CUDA device is usable here (CuPy and an NVIDIA GPU are needed); "
            "check megengine.is_cuda_available() first"
        )
    return _cupy()


def _gpu_index(device, what):
    """The CUDA index of ``device``: an int, or a device name such as "gpu1"."""
    if isinstance(device, int):
        index = device
    else:
        index = int(canonical_device(device)[3:])
    count = get_device_count("gpu")
    if not 0 <= index < count:
        raise ValueError(f"{what}: no GPU {index}; {count} visible")
    return index


class CudaDeviceProperty:
    """What upstream's ``get_cuda_device_property`` reports: name, compute capability, memory."""

    def __init__(self, name, major, minor, total_memory, multi_processor_count):
        self.name, self.major, self.minor = name, major, minor
        self.total_memory, self.multi_processor_count = total_memory, multi_processor_count

    def __repr__(self):
        return (f"CudaDeviceProperty(name={self.name!r}, major={self.major}, minor={self.minor}, "
                f"total_memory={self.total_memory // 2**20}MB, "
                f"multi_processor_count={self.multi_processor_count})")


def get_cuda_device_property(device: int, device_type=DeviceType.CUDA):
    """Properties of CUDA device ``device`` (an index); raises when CUDA is not usable."""
    cp = _need_cuda("get_cuda_device_property")
    props = cp.cuda.runtime.getDeviceProperties(_gpu_index(device, "get_cuda_device_property"))
    name = props["name"]
    return CudaDeviceProperty(name.decode() if isinstance(name, bytes) else name,
                              props["major"], props["minor"], props["totalGlobalMem"],
                              props["multiProcessorCount"])


def get_cuda_compute_capability(device: int, device_type=DeviceType.CUDA) -> int:
    """Compute capability of CUDA device ``device`` as ``major * 10 + minor`` (e.g. 86)."""
    prop = get_cuda_device_property(device, device_type)
    return prop.major * 10 + prop.minor


def get_cuda_version() -> int:
    """The CUDA runtime version serving GPU arrays (CuPy's), as ``1000 * major + 10 * minor``.

    Upstream reports the version it was compiled with; this engine has no CUDA code of its
    own, so the runtime CuPy uses is the one that counts. Raises when CUDA is not usable.
    """
    return int(_need_cuda("get_cuda_version").cuda.runtime.runtimeGetVersion())


def get_cuda_driver_version() -> int:
    """The newest CUDA version the installed driver supports, as ``1000 * major + 10 * minor``;
    0 where CUDA is not usable (upstream 1.13 measured: 0 on a machine without a GPU)."""
    if not is_cuda_available():
        return 0
    return int(_cupy().cuda.runtime.driverGetVersion())


def get_cudnn_version() -> int:
    """The cuDNN version under the convolution kernels on GPUs (ATen's, so torch's cuDNN).

    Raises when CUDA is not usable. Imports torch.
    """
    _need_cuda("get_cudnn_version")
    import torch  # the convolutions run on ATen's cuDNN kernels through the bridge

    version = torch.backends.cudnn.version()
    if version is None:
        raise RuntimeError("get_cudnn_version: the installed torch was built without cuDNN")
    return int(version)


def get_tensorrt_version() -> int:
    """Upstream's TensorRT version; this engine does not use TensorRT, so this raises."""
    raise RuntimeError(
        "get_tensorrt_version: this engine does not use TensorRT (upstream links it for "
        "inference of dumped graphs, which this engine does not run)"
    )


def _proc_status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def get_mem_status_bytes(device=None):
    """``(total, free)`` memory of ``device`` in bytes (default: the default device).

    For the CPU these are the machine's physical memory and the memory available to new
    allocations (``MemTotal``/``MemAvailable`` of ``/proc/meminfo``).
    """
    dev = canonical_device(device)
    if dev.startswith("gpu"):
        cp = _cupy()
        with cp.cuda.Device(int(dev[3:])):
            free, total = cp.cuda.runtime.memGetInfo()
        return int(total), int(free)
    info = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    if "MemTotal" in info:
        return info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# Which pool serves CuPy's arrays. CuPy's own pool by default; once the PyTorch bridge has met
# CUDA memory, torch's caching allocator (megengine.core.torch_bridge installs it unless
# MGE_GPU_ALLOCATOR=cupy), so the two frameworks share one pool. ``_torch_pool`` is then
# ``torch.cuda`` (its memory statistics); this module never imports torch itself.
_torch_pool = None


def _use_torch_pool(torch_cuda):
    """Record that torch's caching allocator now serves CuPy (``torch_cuda``: ``torch.cuda``,
    or None to go back to CuPy's pool); the memory queries below then report it."""
    global _torch_pool
    _torch_pool = torch_cuda


def get_gpu_allocator() -> str:
    """Which allocator new GPU arrays come from: ``"torch"`` (torch's caching allocator, shared
    with the torch modules) or ``"cupy"`` (CuPy's memory pool)."""
    return "cupy" if _torch_pool is None else "torch"


# CuPy's memory pool keeps no peak statistics: the peaks below are the largest values seen
# by these functions since the last reset (upstream's allocator tracks every allocation).
# torch's allocator keeps its own peaks, which are used for its share.
_gpu_peaks = {}


def _gpu_pool_bytes(dev):
    """(allocated, reserved) bytes of GPU ``dev``: CuPy's pool, plus torch's allocator while it
    serves CuPy (arrays made before it took over stay in CuPy's pool until they die)."""
    cp = _cupy()
    index = int(dev[3:])
    with cp.cuda.Device(index):
        pool = cp.get_default_memory_pool()
        used, reserved = int(pool.used_bytes()), int(pool.total_bytes())
    peak_used, peak_reserved = _gpu_peaks.get(dev, (0, 0))
    _gpu_peaks[dev] = (max(peak_used, used), max(peak_reserved, reserved))
    if _torch_pool is not None:
        used += int(_torch_pool.memory_allocated(index))
        reserved += int(_torch_pool.memory_reserved(index))
    return used, reserved


def _gpu_peak_bytes(dev):
    """(peak allocated, peak reserved) of GPU ``dev`` since the last reset, same sources."""
    _gpu_pool_bytes(dev)
    peak_used, peak_reserved = _gpu_peaks[dev]
    if _torch_pool is not None:
        index = int(dev[3:])
        peak_used += int(_torch_pool.max_memory_allocated(index))
        peak_reserved += int(_torch_pool.max_memory_reserved(index))
    return peak_used, peak_reserved


def _cpu_resident():
    # numpy allocates from the C heap, so what tensors hold shows up as the process's resident
    # memory (with everything else the process holds); there is no separate engine pool.
    rss = _proc_status_kb("VmRSS")
    if rss is None:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss


def get_allocated_memory(device=None):
    """Bytes held by arrays on ``device``. On a GPU: what the pool serving CuPy has handed out
    (CuPy's pool; torch's caching allocator too once it serves CuPy, see `get_gpu_allocator`:
    then torch's own tensors count as well, it is one pool). On the CPU, the process's resident
    memory (numpy allocates from the C heap, not from an engine pool)."""
    dev = canonical_device(device)
    return _gpu_pool_bytes(dev)[0] if dev.startswith("gpu") else _cpu_resident()


def get_reserved_memory(device=None):
    """Bytes the allocator holds for ``device``: on a GPU the pool serving CuPy, used and cached
    (CuPy's, plus torch's caching allocator once it serves CuPy); on the CPU, the process's
    resident memory, as :func:`get_allocated_memory`."""
    dev = canonical_device(device)
    return _gpu_pool_bytes(dev)[1] if dev.startswith("gpu") else _cpu_resident()


def _cpu_peak():
    peak = _proc_status_kb("VmHWM")
    return peak if peak is not None else _cpu_resident()


def get_max_allocated_memory(device=None):
    """Peak of :func:`get_allocated_memory` since the last :func:`reset_max_memory_stats`.

    CPU: the process's peak resident memory (``VmHWM``). GPU: for CuPy's pool the largest value
    these functions have seen (it keeps no peak statistics), plus torch's own peak while its
    allocator serves CuPy."""
    dev = canonical_device(device)
    if dev.startswith("gpu"):
        return _gpu_peak_bytes(dev)[0]
    return _cpu_peak()


def get_max_reserved_memory(device=None):
    """Peak of :func:`get_reserved_memory` since the last :func:`reset_max_memory_stats`."""
    dev = canonical_device(device)
    if dev.startswith("gpu"):
        return _gpu_peak_bytes(dev)[1]
    return _cpu_peak()


def reset_max_memory_stats(device=None):
    """Start the peaks over from the current values (on Linux CPUs by resetting ``VmHWM``)."""
    dev = canonical_device(device)
    if dev.startswith("gpu"):
        _gpu_peaks.pop(dev, None)
        if _torch_pool is not None:
            _torch_pool.reset_peak_memory_stats(int(dev[3:]))
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets the peak resident set size (VmHWM) of this process
    except OSError:
        pass  # not Linux, or not allowed: the peak keeps counting from process start


_prealloc_config = {}


def set_prealloc_config(alignment: int = 1, min_req: int = 32 * 1024 * 1024,
                        max_overhead: int = 0, growth_factor=2.0, device_type=DeviceType.CUDA):
    """How upstream's CUDA allocator grows its pool; checked as upstream, kept, and without
    effect here: CPU arrays come from the C heap, and CuPy's pool on GPUs grows per request and
    has no such knobs. Its errors are ValueErrors and upstream's AssertionErrors."""
    from .core.ops import ArgumentError

    if not (isinstance(alignment, int) and alignment > 0):
        raise ArgumentError("set_prealloc_config: alignment must be a positive int, "
                            f"got {alignment!r}")
    if not (isinstance(min_req, int) and min_req > 0):
        raise ArgumentError(f"set_prealloc_config: min_req must be a positive int, got "
                            f"{min_req!r}")
    if not (isinstance(max_overhead, int) and max_overhead >= 0):
        raise ArgumentError("set_prealloc_config: max_overhead must be an int >= 0, "
                            f"got {max_overhead!r}")
    if not (isinstance(growth_factor, numbers.Real) and growth_factor >= 1):
        raise ArgumentError(f"set_prealloc_config: growth_factor must be >= 1, got "
                            f"{growth_factor!r}")
    _prealloc_config[_device_kind(device_type, "set_prealloc_config")] = dict(
        alignment=alignment, min_req=min_req, max_overhead=max_overhead,
        growth_factor=growth_factor)


def coalesce_free_memory():
    """Give cached free memory back to the system: on GPUs CuPy's free blocks and, while torch's
    caching allocator serves CuPy, torch's (``torch.cuda.empty_cache``); the C heap's free pages
    on Linux CPUs (``malloc_trim``). Memory in use is never moved."""
    import gc

    gc.collect()  # arrays that only a reference cycle kept alive are freed first
    if is_cuda_available():
        _cupy().get_default_memory_pool().free_all_blocks()
        if _torch_pool is not None:
            _torch_pool.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def _full_sync():
    """Wait until every device has finished its queued work (upstream's ``megengine._full_sync``).

    CPU ops run when they are called, so only CUDA devices (CuPy streams) can have work left.
    """
    if is_cuda_available():
        cp = _cupy()
        for index in range(get_device_count("gpu")):
            with cp.cuda.Device(index):
                cp.cuda.Device(index).synchronize()


_sync = _full_sync  # upstream's `_sync` waits for its interpreter queue: the same thing here


def __getattr__(name):
    # upstream's megengine.device also exports CompNode (its C++ comp node type); here it is
    # core's device-name class, loaded on use because core sits above this module
    if name == "CompNode":
        from .core._imperative_rt import CompNode

        return CompNode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
