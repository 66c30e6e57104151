"""Zero-copy views between engine arrays (numpy, CuPy) and torch tensors, through a C++ operator built on first use.

Importing this module imports torch; `import megengine` does not import it. Users of the bridge: the
engine's ATen-backed kernels, `megengine.module.pytorch` and `megengine.distributed`.

Public API::

    to_torch(array) -> torch.Tensor        # same memory, shape, strides, dtype; keeps `array` alive
    from_torch(tensor) -> ndarray          # same memory; keeps the tensor's storage alive
    load_extension() -> module             # the compiled operator (built once per torch version)
    cache_dir() -> pathlib.Path            # where it is built; delete the directory to force a rebuild
    load_stats() -> dict                   # {"compiled": bool, "seconds": float, "directory": str}

What a view means here:

* Both directions share memory: a write through one side is seen by the other, and neither side
  copies. The one exception: a numpy array with a *negative* stride (``a[::-1]``) cannot be
  described to torch, so ``to_torch`` views a C-contiguous copy of it (writes then do not reach
  ``a``). Misaligned arrays (possible with ``numpy.frombuffer``) raise ``ValueError``.
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
  of a CUDA tensor returns a CuPy array (``cupy.from_dlpack``, which orders CuPy's current stream
  after torch's). Both need a CUDA build of torch; the second needs CuPy.

Speed: a call costs about 0.5 us, less than ``torch.from_numpy`` / ``Tensor.numpy()``; hot loops
may call ``load_extension().to_torch`` / ``.from_torch`` to skip the Python wrapper frame.

Building: the first call compiles the operator (csrc/torch_bridge.cpp, ~10 s) with ninja through
``torch.utils.cpp_extension.load``, which prints one line to stderr, into ``cache_dir()``:
``$MGE_TORCH_EXT_DIR`` (default ``~/.cache/megengine/torch_ext``) / a subdirectory named after the
torch version, the Python version and a hash of the source, flags and numpy major version, so
different builds never clash. Later processes import the built library directly (~1 ms). Delete
the directory to force a rebuild. This module imports torch; ``import megengine`` must not.
"""

import hashlib
import importlib.util
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy
import torch

from . import _config

_config._sync_torch_backends(torch)  # cuDNN switches set in megengine.config before torch loaded
__all__ = ["to_torch", "from_torch", "load_extension", "cache_dir", "load_stats"]

_NAME = "megengine_torch_bridge"
_SOURCES = ("torch_bridge.cpp",)
_CFLAGS = ("-O2",)

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


def _cuda_array_to_torch(array):
    """to_torch for an array with __cuda_array_interface__ (called by the C++ to_torch)."""
    cai = array.__cuda_array_interface__
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"megengine torch bridge: got a CUDA array ({type(array).__name__}) but torch "
            f"{torch.__version__} has no usable CUDA; install a CUDA build of torch"
        )
    device = getattr(getattr(array, "device", None), "id", None)
    if device is None:
        device = torch.cuda.current_device()
    tensor = _ext.cuda_to_torch(array, cai, device)
    # Stream ordering (__cuda_array_interface__ v3): "stream" is the stream the producer (CuPy's
    # current stream) last wrote the array on; None means the data is ready. torch's current stream
    # waits for it via an event, so kernels torch launches next see the finished data without a
    # host synchronisation.
    stream = cai.get("stream")
    if stream is not None:
        consumer = torch.cuda.current_stream(device)
        if (consumer.cuda_stream or 1) != stream:  # torch's default stream 0 is the legacy stream, 1 here
            consumer.wait_stream(torch.cuda.ExternalStream(stream, device=device))
    return tensor


def _cuda_tensor_to_cupy(tensor):
    """from_torch for a CUDA tensor (called by the C++ from_torch once it has checked the dtype)."""
    try:
        import cupy
    except ImportError:
        raise RuntimeError(
            "megengine torch bridge: viewing a CUDA tensor as an engine array needs CuPy; "
            "install it (e.g. pip install cupy-cuda12x) or move the tensor to the CPU"
        ) from None
    # DLPack carries the lifetime (the capsule owns the tensor) and the stream handshake (CuPy passes
    # its current stream; torch makes it wait for torch's current stream).
    return cupy.from_dlpack(tensor.detach())


# --------------------------------------------------------------------------------------------------
# building and loading the operator


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


def cache_dir():
    """The build directory for this torch, Python, numpy and C++ source; delete it to rebuild.

    The root is ``$MGE_TORCH_EXT_DIR`` if set, else ``$XDG_CACHE_HOME/megengine/torch_ext``
    (``~/.cache/megengine/torch_ext``).
    """
    root = os.environ.get("MGE_TORCH_EXT_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "megengine" / "torch_ext"
    digest = hashlib.sha256()
    source_dir = _source_dir()
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (source_dir / name).read_bytes() + b"\0")
    digest.update(" ".join(_CFLAGS).encode())
    # the numpy C API the operator is compiled against is part of its ABI, like torch's and Python's
    digest.update(numpy.__version__.split(".")[0].encode())
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(root) / f"torch-{torch.__version__}-{python}-{digest.hexdigest()[:8]}"


def load_stats():
    """How the operator was obtained in this process: compiled or loaded, how long it took, where."""
    return dict(_load_stats)


def load_extension():
    """The compiled operator module; compiles it the first time for this torch version (~15 s)."""
    global _ext
    if _ext is None:
        with _load_lock:
            if _ext is None:
                _ext = _build_or_load()
    return _ext


def _build_or_load():
    start = time.perf_counter()
    directory = cache_dir()
    built = directory / (_NAME + (".pyd" if sys.platform == "win32" else ".so"))
    compiled = not built.exists()
    # cpp_extension.load holds the file `lock` in the directory while it builds. A library with no
    # lock beside it (checked in this order) is complete, and since the directory is keyed by
    # everything the build depends on, it is current: import it directly, which spares the
    # ~150 ms import of torch.utils.cpp_extension (setuptools) and a ninja run.
    lock = directory / "lock"
    if lock.exists():
        _clear_stale_lock(lock)
    if not compiled and not lock.exists():
        module = _import_library(built)
    else:
        module = _build(directory, announce=compiled)
    module.set_cuda_handlers(_cuda_array_to_torch, _cuda_tensor_to_cupy)
    _load_stats.update(compiled=compiled, seconds=time.perf_counter() - start, directory=str(directory))
    return module


_STALE_LOCK_SECONDS = 600  # a build takes ~15 s; a lock this old was left by a killed build


def _clear_stale_lock(lock):
    """torch's build lock has no timeout: a build killed midway would make every later process
    wait forever. Remove a lock far older than any build; otherwise say who we are waiting for."""
    age = time.time() - lock.stat().st_mtime
    if age > _STALE_LOCK_SECONDS:
        print(f"megengine: removing a stale build lock {lock} ({age:.0f} s old, left by an "
              "interrupted build)", file=sys.stderr, flush=True)
        lock.unlink(missing_ok=True)
    else:
        print(f"megengine: waiting for another process that is building the PyTorch bridge "
              f"operator (lock {lock}; delete it if no build is running)", file=sys.stderr, flush=True)


def _build(directory, announce):
    from torch.utils import cpp_extension  # heavy import (setuptools), only needed to build

    if announce:
        _check_toolchain()
        directory.mkdir(parents=True, exist_ok=True)
        print(
            f"megengine: compiling the PyTorch bridge operator (once per torch version, ~15 s) into {directory} ...",
            file=sys.stderr,
            flush=True,
        )
    # load() takes the file lock in `directory` (concurrent processes build once, the others wait)
    # and runs ninja, which is a no-op when the library is up to date.
    return cpp_extension.load(
        name=_NAME,
        sources=[str(_source_dir() / name) for name in _SOURCES],
        build_directory=str(directory),
        extra_cflags=list(_CFLAGS),
        extra_include_paths=[numpy.get_include()],
        verbose=False,
    )


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
