"""CuPy ElementwiseKernels of the simulated CuPy, run on the host: the CUDA body compiled as C++ once per source, cached on disk."""
import hashlib
import os
import tempfile
from pathlib import Path

import cuda_kernels  # tests/cuda_kernels.py: the body-as-C++ compiler the CPU tests use

__all__ = ["host_kernel", "cache_root"]


def cache_root() -> Path:
    """Where compiled kernels are kept: ``$MGE_SIM_CUDA_KERNELS``, else a directory under the
    system's temporary directory (one per user)."""
    root = os.environ.get("MGE_SIM_CUDA_KERNELS")
    if root:
        return Path(root)
    return Path(tempfile.gettempdir()) / f"megengine-simcuda-kernels-{os.getuid()}"


def host_kernel(kernel):
    """A callable running ``kernel`` (an object with ``in_params``, ``out_params``, ``body`` and
    ``name``, as CuPy's ElementwiseKernel) on numpy arrays with CuPy's calling convention.

    The first use of a body compiles it (about half a second); later uses, in this process or
    another, load the library built before. A body that is not valid C++ fails here, naming it.
    """
    digest = hashlib.sha256(cuda_kernels._source(kernel).encode()).hexdigest()[:16]
    directory = cache_root() / f"{kernel.name}-{digest}"
    directory.mkdir(parents=True, exist_ok=True)
    return cuda_kernels.emulate(kernel, directory, reuse=True)
