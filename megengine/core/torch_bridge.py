"""Zero-copy views between engine arrays (numpy, CuPy) and torch tensors, through a C++ operator built on first use.

Importing this module imports torch; `import megengine` does not import it. Users of the bridge: the
engine's ATen-backed kernels, `megengine.module.pytorch` and `megengine.distributed`.

Public API::

    to_torch(array) -> torch.Tensor        # same memory, shape, strides, dtype; keeps `array` alive
    from_torch(tensor) -> ndarray          # same memory; keeps the tensor's storage alive
    load_extension(verbose=None) -> module # the compiled operator (built once per torch version)
    build(force=False, verbose=None)       # build ahead of time; returns the library's path
    cache_dir() -> pathlib.Path            # where it is built; delete the directory to force a rebuild
    load_stats() -> dict                   # {"compiled", "waited", "seconds", "directory"}

What a view means here:

* Both directions share memory: a write through one side is seen by the other, and neither side
  copies. The one exception: a numpy array with a *negative* stride (``a[::-1]``) cannot be
  described to torch, so ``to_torch`` views a C-contiguous copy of it (writes then do not reach
  ``a``). Misaligned arrays (possible with ``numpy.frombuffer``) raise ``ValueError``. A numpy
  scalar (numpy's arithmetic on 0-d arrays returns one) becomes a 0-d tensor holding a copy.
* Strides of size-1 dimensions are replaced by the value torch would compute for a contiguous
  tensor (numpy leaves arbitrary values there, which can make a tensor look channels-last).
* A read-only numpy array is viewed anyway: torch has no read-only flag, so do not write through
  the tensor.
* A tensor that requires grad is viewed like ``tensor.detach()``: the data, not the graph.
* Supported dtypes: float16/32/64, int8/16/32/64, uint8, bool. Others raise ``TypeError``
  (``torch.bfloat16`` has no numpy dtype: cast it, e.g. ``t.float()``).
* Lifetime: the tensor holds a reference to the numpy array, the array's ``base`` holds the
  tensor's storage, so either side may be deleted first.
* CUDA: ``to_torch`` takes any array with ``__cuda_array_interface__`` (CuPy) and, when the
  interface names the producer's stream, makes torch's current stream wait for it. ``from_torch``
  of a CUDA tensor returns a CuPy array built from its pointer, shape and strides, owning the
  tensor's storage, on the tensor's device; CuPy's current stream waits for torch's (an event,
  only when they are different streams). Both need a CUDA build of torch; the second needs CuPy.
* One GPU memory pool: the first CUDA array or tensor through the bridge makes CuPy allocate
  through torch's caching allocator (blocks requested on CuPy's current stream), so the two
  frameworks share one pool; ``MGE_GPU_ALLOCATOR=cupy`` keeps CuPy's own pool (see
  `TorchCudaAllocator` and `_decide_gpu_allocator`).

Speed: a call costs about 0.5 us, less than ``torch.from_numpy`` / ``Tensor.numpy()``; hot loops
may call ``load_extension().to_torch`` / ``.from_torch`` to skip the Python wrapper frame.

Building: the first call compiles the operator (csrc/torch_bridge.cpp) with ninja through
``torch.utils.cpp_extension.load`` into ``cache_dir()``: a subdirectory of ``cache_root()``
(``$MGE_TORCH_EXT_DIR``, else ``$TORCH_EXTENSIONS_DIR/megengine_torch_bridge``, else
``~/.cache/megengine/torch_ext``) named after the torch version, the Python version and a hash of
the source, flags and numpy major version, so different builds never clash. A cold build takes
about 3 s on 2 cores (measured 2.7-3.3 s; longer on a busy machine); later processes import the
cached library after checking its checksum (a few ms). Notices ("compiling ...", "built in N s") go to the logger
``megengine.core.torch_bridge`` (to stderr when the application configured no logging);
``MGE_TORCH_EXT_VERBOSE=1`` or ``load_extension(verbose=True)`` shows the compiler's output. A
damaged cached library is rebuilt, never loaded; a process waits for another's build at most
``$MGE_TORCH_EXT_LOCK_TIMEOUT`` seconds (default 300). ``python -m megengine.module.pytorch build``
compiles ahead of time. This module imports torch; ``import megengine`` must not.
"""

import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy
import torch

from . import _config
from .. import device as _device

# The oldest torch the suite was measured to pass on, pyproject.toml's floor: on torch 2.3 and
# 2.5 megengine.distributed's reduce_scatter fails on gloo and data-parallel runs sometimes hang;
# torch 2.1 cannot even read numpy 2's arrays ("Could not infer dtype of numpy.float32").
# Refused here, where every path into torch passes, rather than failing later and obscurely.
_TORCH_FLOOR = (2, 8)
if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < _TORCH_FLOOR:
    _floor = "%d.%d" % _TORCH_FLOOR
    raise ImportError(
        f"megengine needs torch {_floor} or newer, found torch {torch.__version__} "
        f"({torch.__file__}). Upgrade it, e.g. to the CPU build: pip install 'torch>={_floor}' "
        f"--index-url https://download.pytorch.org/whl/cpu")

_config._sync_torch_backends(torch)  # cuDNN switches set in megengine.config before torch loaded

__all__ = ["to_torch", "from_torch", "load_extension", "build", "cache_dir", "cache_root", "library_path",
           "load_stats"]

_NAME = "megengine_torch_bridge"
_SOURCES = ("torch_bridge.cpp",)
# -ffp-contract=off: no fused multiply-add, so that sgd_step rounds as numpy does (an FMA is one
# rounding where numpy's `p -= lr * g` has two; GCC fuses across statements where the target has FMA)
_CFLAGS = ("-O2", "-ffp-contract=off")

_ext = None  # the compiled module, once loaded
_load_lock = threading.Lock()
_load_stats = {}


def to_torch(array):
    """A torch tensor viewing ``array``'s memory (numpy.ndarray, or a CUDA array such as CuPy's)."""
    # The C++ function type-checks and dispatches (CUDA arrays come back to _cuda_array_to_torch).
    # Hot loops may call load_extension().to_torch directly to skip this Python frame.
    return (_ext or load_extension()).to_torch(array)


def from_torch(tensor):
    """An engine array viewing ``tensor``'s storage: numpy.ndarray for CPU, cupy.ndarray for CUDA."""
    return (_ext or load_extension()).from_torch(tensor)


# --------------------------------------------------------------------------------------------------
# CUDA
#
# Stream ordering, one rule both ways: the consumer's current stream waits for the producer's
# current stream through an event recorded on the producer's, so kernels the consumer launches
# next see finished data without a host synchronisation. When both current streams are the same
# stream (the common case: torch's and CuPy's default streams are both CUDA's legacy default
# stream, handle 0) nothing is recorded at all, so the hot path costs two integer reads.
# Raw stream handles are read without building torch.cuda.Stream objects (a few microseconds each).


def _torch_raw_stream_slow(device):
    return torch.cuda.current_stream(device).cuda_stream


_torch_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or _torch_raw_stream_slow


def _cupy_stream_ptr(cupy, device):
    """The handle of CuPy's current stream on CUDA device ``device`` (0: the null stream)."""
    try:
        return cupy.cuda.get_current_stream(device).ptr
    except TypeError:  # a CuPy whose get_current_stream takes no device
        with cupy.cuda.Device(device):
            return cupy.cuda.get_current_stream().ptr


_torch_cuda = None


def _torch_has_cuda():
    global _torch_cuda
    if _torch_cuda is None:  # asked once: torch.cuda.is_available() queries the driver each time
        _torch_cuda = torch.cuda.is_available()
    return _torch_cuda


def _cuda_array_to_torch(array, owner=None):
    """to_torch for an array with __cuda_array_interface__ (called by the C++ to_torch). The
    tensor keeps ``owner`` alive (default: ``array``): see `functional._aten.memory_view`."""
    cai = array.__cuda_array_interface__
    if not _torch_has_cuda():
        raise RuntimeError(
            f"megengine torch bridge: got a CUDA array ({type(array).__name__}) but torch "
            f"{torch.__version__} has no usable CUDA; install a CUDA build of torch"
        )
    if not _pool_decided:
        _decide_gpu_allocator()
    device = getattr(getattr(array, "device", None), "id", None)
    if device is None:
        device = torch.cuda.current_device()
    tensor = _ext.cuda_to_torch(array if owner is None else owner, cai, device)
    # __cuda_array_interface__ v3: "stream" is the stream the producer (CuPy's current stream) last
    # wrote the array on, 1 meaning the legacy default stream; None means the data is ready.
    stream = cai.get("stream")
    if stream is not None:
        consumer = _torch_raw_stream(device) or 1  # torch's legacy default stream: 0 here, 1 there
        if consumer != stream:
            torch.cuda.current_stream(device).wait_stream(
                torch.cuda.ExternalStream(stream, device=device))
    return tensor


_NUMPY_DTYPES = {}  # torch dtype -> numpy dtype, filled on first use of each dtype


def _numpy_dtype(torch_dtype):
    dtype = _NUMPY_DTYPES.get(torch_dtype)
    if dtype is None:
        # the C++ side has already refused dtypes numpy (and so CuPy) cannot hold
        dtype = _NUMPY_DTYPES[torch_dtype] = numpy.dtype(str(torch_dtype).replace("torch.", ""))
    return dtype


def _extent_bytes(shape, strides, itemsize):
    """Bytes from the first element to the end of the last one a strided view reaches (0 if empty)."""
    if 0 in shape:
        return 0
    return (sum((n - 1) * s for n, s in zip(shape, strides)) + 1) * itemsize


def _cuda_tensor_to_cupy(tensor):
    """from_torch for a CUDA tensor (called by the C++ from_torch once it has checked the dtype).

    The CuPy array is built from the pointer, shape, strides and dtype, with the detached tensor
    (which holds the storage, not the autograd graph) as the memory's owner: no DLPack capsule
    and no Stream objects per call.
    """
    cupy = _cupy()
    if not _pool_decided:
        _decide_gpu_allocator()
    device = tensor.device.index
    owner = tensor.detach()
    itemsize = owner.element_size()
    shape, strides = owner.shape, owner.stride()
    memory = cupy.cuda.UnownedMemory(owner.data_ptr(), _extent_bytes(shape, strides, itemsize),
                                     owner, device)
    array = cupy.ndarray(tuple(shape), _numpy_dtype(owner.dtype), cupy.cuda.MemoryPointer(memory, 0),
                         tuple(s * itemsize for s in strides))
    cupy_waits_for_torch(device, cupy)
    return array


def cupy_waits_for_torch(device, cupy=None):
    """Order the kernels CuPy launches next on CUDA device ``device`` (its current stream)
    after the work queued so far on torch's current stream there: an event, recorded only when
    the two are different streams. For memory torch has written (an ATen kernel in place on a
    view of an engine array: `functional._aten.written`, or a tensor `from_torch` hands over)."""
    cupy = cupy or _cupy()
    producer = _torch_raw_stream(device)
    consumer = _cupy_stream_ptr(cupy, device)
    if producer != consumer:  # CuPy's current stream must not run ahead of torch's
        with cupy.cuda.Device(device):  # the event must belong to the streams' device
            event = cupy.cuda.Event(block=False, disable_timing=True, interprocess=False)
            # raw handles: no Stream objects per call, and no cupy.cuda.ExternalStream, which
            # CuPy 14 deprecates (a DeprecationWarning on every crossing)
            cupy.cuda.runtime.eventRecord(event.ptr, producer)
            cupy.cuda.runtime.streamWaitEvent(consumer, event.ptr)


# --------------------------------------------------------------------------------------------------
# One GPU memory pool
#
# CuPy and torch each keep a caching pool; side by side, memory one of them cached after a peak is
# invisible to the other, and a GPU that one pool would serve runs out. So once the bridge meets
# CUDA memory (the first CUDA array or tensor through to_torch/from_torch: a PyTorchModule placed
# on a GPU, or an ATen kernel on engine arrays), CuPy allocates through torch's caching allocator
# (Thinc's PyTorchShim does the same) and megengine.device's memory queries report torch's pool.
# MGE_GPU_ALLOCATOR=cupy keeps CuPy's own pool; an allocator the application set in CuPy itself
# (cupy.cuda.set_allocator) is never replaced.

_ALLOCATOR_VARIABLE = "MGE_GPU_ALLOCATOR"
_pool_decided = False
_pool_lock = threading.Lock()


class TorchCudaAllocator:
    """CuPy's memory from torch's caching allocator: ``malloc(size, device_id) -> pointer`` and
    ``free(pointer, device_id)``, the pair ``cupy.cuda.memory.PythonFunctionAllocator`` takes
    (CuPy calls ``free`` exactly once, when the last array using the memory dies).

    Streams: torch's caching allocator ties every block to the stream it was requested for and,
    once the block is freed, hands it out again only to requests for that same stream. Work on one
    stream runs in order, so a kernel that still reads the freed block is finished before the next
    owner's kernels on that stream start, without any synchronisation (CuPy's own pool keeps the
    same rule with the same key). The kernels that use a CuPy array run on CuPy's current stream,
    so that is the stream each block is requested for, not torch's current stream (which may be a
    different one: a torch side stream would let torch reuse the block while CuPy's kernels still
    run). As with CuPy's pool, an array later used on another stream must be ordered by the user.

    ``raw_alloc(size, stream) -> pointer`` allocates on the current device (torch's
    ``_cuda_cudaCachingAllocator_raw_alloc``); with more than one GPU ``alloc_on(size, device,
    stream)`` (``torch.cuda.caching_allocator_alloc``) names the device CuPy asked for instead,
    since torch keeps its own idea of the current device inside its device guards.
    """

    __slots__ = ("_raw_alloc", "_alloc_on", "_raw_delete", "_current_stream")

    def __init__(self, raw_alloc, raw_delete, current_stream, alloc_on=None):
        self._raw_alloc = raw_alloc
        self._raw_delete = raw_delete
        self._current_stream = current_stream  # () -> CuPy's current stream (has .ptr)
        self._alloc_on = alloc_on

    def malloc(self, size, device_id):
        stream = self._current_stream().ptr
        if self._alloc_on is None:
            return self._raw_alloc(size, stream)
        return self._alloc_on(size, device_id, stream)

    def free(self, pointer, device_id):
        try:
            self._raw_delete(pointer)
        except Exception:  # at interpreter exit torch may be gone; CuPy frees from a destructor
            if not sys.is_finalizing():
                raise


def _torch_allocator_for(torch_module, cupy):
    cuda = torch_module.cuda
    raw_alloc = getattr(torch_module._C, "_cuda_cudaCachingAllocator_raw_alloc", None)
    raw_delete = getattr(torch_module._C, "_cuda_cudaCachingAllocator_raw_delete", None)
    if raw_delete is None:
        raw_delete = cuda.caching_allocator_delete
    # one GPU: the current device is 0 for torch and CuPy alike, so the direct call (no device
    # guard, no Python frame of torch's) is right; more: name the device every time
    alloc_on = None
    if raw_alloc is None or cuda.device_count() > 1:
        alloc_on = cuda.caching_allocator_alloc
    return TorchCudaAllocator(raw_alloc, raw_delete, cupy.cuda.get_current_stream, alloc_on)


def _decide_gpu_allocator(cupy=None, torch_module=None, environ=None):
    """Make CuPy allocate through torch's caching allocator (once per process) unless
    ``MGE_GPU_ALLOCATOR=cupy`` or the application set its own CuPy allocator; returns whether
    torch's allocator now serves CuPy."""
    global _pool_decided
    with _pool_lock:
        if _pool_decided:
            return _device.get_gpu_allocator() == "torch"
        environ = os.environ if environ is None else environ
        choice = environ.get(_ALLOCATOR_VARIABLE, "torch").strip().lower() or "torch"
        if choice not in ("torch", "cupy"):
            raise ValueError(
                f"{_ALLOCATOR_VARIABLE}={environ.get(_ALLOCATOR_VARIABLE)!r}: use 'torch' (CuPy "
                "allocates from torch's caching allocator, one pool; the default) or 'cupy' "
                "(CuPy keeps its own memory pool)"
            )
        _pool_decided = True
        if choice == "cupy":
            return False
        if cupy is None:
            try:
                cupy = _cupy()
            except RuntimeError:  # a CUDA array from elsewhere (not CuPy): no CuPy pool to share
                return False
        torch_module = torch if torch_module is None else torch_module
        pool = cupy.get_default_memory_pool()
        current = cupy.cuda.get_allocator()
        if getattr(current, "__self__", None) is not pool:
            _notice(logging.DEBUG, "CuPy has an allocator set by the application; it is kept "
                                   "(GPU memory stays in two pools)")
            return False
        # torch's caching allocator is set up by torch's lazy CUDA initialisation, which its raw
        # entry point does not run ("Allocator not initialized for device 0"), and the first
        # CuPy allocation may come before any torch tensor is made on the GPU
        init = getattr(torch_module.cuda, "init", None)
        if init is not None:
            init()
        allocator = _torch_allocator_for(torch_module, cupy)
        try:
            cupy.cuda.set_allocator(
                cupy.cuda.memory.PythonFunctionAllocator(allocator.malloc, allocator.free).malloc)
        except ValueError as error:  # inside cupy.cuda.using_allocator(...) on this thread
            _pool_decided = False  # try again at the next crossing, outside that block
            _notice(logging.DEBUG, f"CuPy's allocator not replaced yet: {error}")
            return False
        # blocks CuPy cached so far go back to the driver, where torch's allocator can take them
        pool.free_all_blocks()
        _device._use_torch_pool(torch_module.cuda)
        _notice(logging.DEBUG, "CuPy now allocates through torch's CUDA caching allocator")
        return True


_cupy_module = None


def _cupy():
    global _cupy_module
    if _cupy_module is None:
        try:
            import cupy
        except ImportError:
            raise RuntimeError(
                "megengine torch bridge: viewing a CUDA tensor as an engine array needs CuPy; "
                "install it (e.g. pip install cupy-cuda12x) or move the tensor to the CPU"
            ) from None
        _cupy_module = cupy
    return _cupy_module


# --------------------------------------------------------------------------------------------------
# building and loading the operator
#
# The cache directory holds the library, the ninja build files, a stamp and a lock:
#
# * ``stamp.json`` is written after a successful build and records the library's size and SHA-256.
#   A library is imported only when it matches its stamp, so a truncated or overwritten file is
#   rebuilt instead of being handed to dlopen (which would kill the process with SIGBUS/SIGSEGV).
# * ``build.lock`` is taken with an OS file lock (fcntl/msvcrt) by the one process that builds.
#   The OS drops the lock when that process dies, so a killed build never leaves a lock behind;
#   a process that waits for a live builder gives up after a bounded time with an error that names
#   the lock file. torch's own ``lock`` file (cpp_extension's FileBaton, which waits forever) is only
#   ever created under our lock, so one found while we hold ours is stale and is removed.

_STAMP = "stamp.json"
_LOCK = "build.lock"
_LOCK_TIMEOUT = 300.0  # seconds to wait for another builder (a cold build takes ~3 s on 2 cores)
_log = logging.getLogger(__name__)


def _source_dir():
    """The C++ sources: megengine/_csrc/ in an installed wheel, <repo>/csrc/ in a checkout."""
    package = Path(__file__).resolve().parents[1]  # .../megengine
    candidates = (package / "_csrc", package.parent / "csrc")
    for directory in candidates:
        if all((directory / name).is_file() for name in _SOURCES):
            return directory
    raise FileNotFoundError(
        "megengine torch bridge: C++ sources " + ", ".join(_SOURCES) + " not found in "
        + " or ".join(str(d) for d in candidates) + "; the installation is incomplete, reinstall megengine"
    )


def cache_root():
    """Where builds go: ``$MGE_TORCH_EXT_DIR``, else ``$TORCH_EXTENSIONS_DIR/megengine_torch_bridge``
    (torch's convention for extension builds), else ``$XDG_CACHE_HOME/megengine/torch_ext``
    (``~/.cache/megengine/torch_ext``)."""
    root = os.environ.get("MGE_TORCH_EXT_DIR")
    if root:
        return Path(root)
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root) / _NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "megengine" / "torch_ext"


def cache_dir():
    """The build directory for this torch, Python, numpy and C++ source (under `cache_root`)."""
    digest = hashlib.sha256()
    source_dir = _source_dir()
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (source_dir / name).read_bytes() + b"\0")
    digest.update(" ".join(_CFLAGS).encode())
    # the numpy C API the operator is compiled against is part of its ABI, like torch's and Python's
    digest.update(numpy.__version__.split(".")[0].encode())
    digest.update(b"stamped")  # directories from before stamps are never reused (their library is unchecked)
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"torch-{torch.__version__}-{python}-{digest.hexdigest()[:8]}"


def library_path(directory=None):
    """The compiled library's path in ``directory`` (default: `cache_dir`)."""
    directory = cache_dir() if directory is None else Path(directory)
    return directory / (_NAME + (".pyd" if sys.platform == "win32" else ".so"))


def load_stats():
    """How the operator was obtained in this process: ``compiled`` (this process ran the build),
    ``waited`` (seconds spent waiting for another process's build), ``seconds`` (total),
    ``directory``."""
    return dict(_load_stats)


def _verbose_default():
    return os.environ.get("MGE_TORCH_EXT_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def load_extension(verbose=None):
    """The compiled operator module; the first call for this torch version compiles it (~3 s on
    2 cores), later processes import the cached library (a few ms).

    ``verbose`` (default: ``$MGE_TORCH_EXT_VERBOSE``) shows the compiler and ninja output and
    logs each step; without it the only notices are "compiling ..." and "built in N s".
    """
    global _ext
    if _ext is None:
        with _load_lock:
            if _ext is None:
                _ext = _build_or_load(_verbose_default() if verbose is None else bool(verbose))
    return _ext


def build(force=False, verbose=None):
    """Build the operator ahead of time (Docker images, CI); returns the library's path.

    ``force`` rebuilds even when a valid cached library exists. Used by
    ``python -m megengine.module.pytorch build``.
    """
    verbose = _verbose_default() if verbose is None else bool(verbose)
    directory = cache_dir()
    if force or not _stamp_ok(directory):
        _build_locked(directory, verbose, force=force)
    return library_path(directory)


def _notice(level, message):
    """Log a notice. An application that configured logging gets it through its handlers (logger
    ``megengine.core.torch_bridge``); one that did not still sees INFO notices on stderr, since a
    silent pause on the first run looks like a hang."""
    if _log.hasHandlers():
        _log.log(level, message)
    elif level >= logging.INFO:
        print("megengine: " + message, file=sys.stderr, flush=True)


def _build_or_load(verbose):
    start = time.perf_counter()
    directory = cache_dir()
    if _stamp_ok(directory):
        module, compiled, waited = _import_library(library_path(directory)), False, 0.0
        _notice(logging.DEBUG if not verbose else logging.INFO,
                f"loaded the PyTorch bridge operator from {directory}")
    else:
        module, compiled, waited = _build_locked(directory, verbose)
    module.set_cuda_handlers(_cuda_array_to_torch, _cuda_tensor_to_cupy)
    _load_stats.update(compiled=compiled, waited=waited, seconds=time.perf_counter() - start,
                       directory=str(directory))
    return module


def _stamp_ok(directory):
    """Whether the library in ``directory`` is complete: it matches the stamp written after its build."""
    library = library_path(directory)
    try:
        stamp = json.loads((Path(directory) / _STAMP).read_text())
        size = library.stat().st_size
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("size") != size:
        return False
    return stamp.get("sha256") == _sha256(library)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_stamp(directory):
    library = library_path(directory)
    stamp = {"library": library.name, "size": library.stat().st_size, "sha256": _sha256(library),
             "torch": torch.__version__, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    partial = Path(directory) / (_STAMP + ".tmp")
    partial.write_text(json.dumps(stamp, indent=1))
    os.replace(partial, Path(directory) / _STAMP)  # atomic: readers see no stamp or a whole one


def _lock_timeout():
    value = os.environ.get("MGE_TORCH_EXT_LOCK_TIMEOUT")
    if not value:
        return _LOCK_TIMEOUT
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"MGE_TORCH_EXT_LOCK_TIMEOUT must be a number of seconds, got {value!r}"
        ) from None


def _build_locked(directory, verbose, force=False):
    """Build under the directory's lock; returns (module, compiled, seconds waited).

    While another process holds the lock, re-check every 0.1 s whether it finished (a valid
    stamp appeared: import that) and give up after ``$MGE_TORCH_EXT_LOCK_TIMEOUT`` seconds.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / _LOCK
    timeout = _lock_timeout()
    start = time.monotonic()
    announced = False
    with open(lock_path, "a+b") as lock_file:
        while not _try_lock(lock_file):
            waited = time.monotonic() - start
            if not force and _stamp_ok(directory):
                return _import_library(library_path(directory)), False, waited
            if waited >= timeout:
                raise TimeoutError(
                    f"megengine torch bridge: waited {waited:.0f} s for another process ({_holder(lock_path)}) "
                    f"that holds the build lock {lock_path}. If that process is stuck, stop it; or wait "
                    "longer (MGE_TORCH_EXT_LOCK_TIMEOUT=seconds), or build into another directory "
                    "(MGE_TORCH_EXT_DIR=...)"
                )
            if not announced:
                _notice(logging.INFO, f"waiting for {_holder(lock_path)}, which is building the "
                                      f"PyTorch bridge operator (lock {lock_path})")
                announced = True
            time.sleep(0.1)
        try:
            waited = time.monotonic() - start
            if not force and _stamp_ok(directory):  # built by the process we waited for
                return _import_library(library_path(directory)), False, waited
            lock_file.seek(0)
            lock_file.truncate()
            lock_file.write(f"pid {os.getpid()} on {platform.node()}\n".encode())
            lock_file.flush()
            module = _build(directory, verbose, clean=force)
            _write_stamp(directory)
            return module, True, waited
        finally:
            _unlock(lock_file)


def _holder(lock_path):
    try:
        holder = lock_path.read_text().strip()
    except OSError:
        holder = ""
    return f"process {holder}" if holder.startswith("pid") else "another process"


if os.name == "nt":
    import msvcrt

    def _try_lock(f):
        try:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(f):
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(f):
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(f):
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _build(directory, verbose, clean=False):
    """Compile and import the operator; the caller holds the directory's lock. ``clean`` deletes
    the objects and ninja's files too, so everything is compiled again."""
    from torch.utils import cpp_extension  # heavy import (setuptools), only needed to build

    _check_toolchain()
    library = library_path(directory)
    # Under our lock nobody else builds here, so whatever is left is from an interrupted or
    # damaged build: the stamp and library go (ninja relinks from the objects), and so does
    # torch's FileBaton `lock`, on which cpp_extension.load would otherwise wait forever.
    leftovers = [directory / _STAMP, library, directory / "lock"]
    if clean:
        leftovers += [p for p in directory.iterdir() if p.is_file() and p.name != _LOCK]
    for leftover in dict.fromkeys(leftovers):
        if leftover.name == "lock" and leftover.exists():
            _notice(logging.WARNING, f"removing a stale torch build lock {leftover}")
        leftover.unlink(missing_ok=True)
    _notice(logging.INFO, f"compiling the PyTorch bridge operator (once per torch version, "
                          f"a few seconds) into {directory} ...")
    start = time.perf_counter()
    module = cpp_extension.load(
        name=_NAME,
        sources=[str(_source_dir() / name) for name in _SOURCES],
        build_directory=str(directory),
        extra_cflags=list(_CFLAGS),
        extra_include_paths=[numpy.get_include()],
        verbose=verbose,
    )
    _notice(logging.INFO, f"built the PyTorch bridge operator in {time.perf_counter() - start:.1f} s")
    return module


def _import_library(path):
    spec = importlib.util.spec_from_file_location(_NAME, path)
    try:
        module = importlib.util.module_from_spec(spec)  # runs the module's PyInit
    except ImportError as error:
        raise ImportError(
            f"megengine torch bridge: cannot load the built operator {path} ({error}); delete "
            f"{path.parent} to rebuild it"
        ) from error
    spec.loader.exec_module(module)
    return module


def _check_toolchain():
    if shutil.which("ninja") is None:
        # `pip install ninja` into a venv that is not activated leaves ninja next to the interpreter
        beside_python = Path(sys.executable).parent
        if (beside_python / "ninja").exists():
            os.environ["PATH"] = str(beside_python) + os.pathsep + os.environ.get("PATH", "")
        else:
            raise RuntimeError(
                "megengine torch bridge: building the PyTorch bridge operator needs ninja, which was not "
                "found on PATH; install it with `pip install ninja`"
            )
    compiler = (os.environ.get("CXX") or "").split()
    if compiler:
        found = shutil.which(compiler[0])
    else:
        found = shutil.which("c++") or shutil.which("g++")
    if found is None:
        wanted = f"the compiler named by CXX ({compiler[0]})" if compiler else "a C++ compiler (c++ or g++)"
        raise RuntimeError(
            f"megengine torch bridge: building the PyTorch bridge operator needs {wanted}, which was not "
            "found on PATH; install g++ (e.g. `apt-get install g++`, or the build-essential package)"
        )


def main(argv=None):
    """``python -m megengine.module.pytorch {build,info,clean}``: manage the compiled operator."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m megengine.module.pytorch",
        description="Build the PyTorch bridge operator ahead of time (Docker images, CI), show "
                    "where it is cached, or delete the cache.")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="compile the operator now unless a valid build is cached")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even if a valid build is cached")
    build_cmd.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")
    commands.add_parser("info", help="print the cache directory and whether a valid build is there")
    commands.add_parser("clean", help="delete this torch version's cached build")
    args = parser.parse_args(argv)
    directory = cache_dir()
    if args.command == "build":
        start = time.perf_counter()
        path = build(force=args.force, verbose=args.verbose or None)
        print(f"{path} ready ({time.perf_counter() - start:.1f} s)")
    elif args.command == "info":
        state = "built" if _stamp_ok(directory) else "not built (the first use compiles it)"
        print(f"{directory}: {state}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
        print(f"removed {directory}")
    return 0
