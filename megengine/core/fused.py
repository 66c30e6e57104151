"""CuPy ElementwiseKernels for the engine's CUDA hot paths, built on first use, their C++ bodies kept readable for the CPU tests.

On a GPU, an update or gradient that would be a chain of small CuPy kernels and temporaries (an
optimizer step, ReLU's backward) is one ElementwiseKernel, defined next to its numpy code in the
op's or optimizer's own file. The kernels are compiled on first use and cached (per process by
CuPy's in-memory cache, across processes by its on-disk cache); CuPy is imported only then.
Machines without a GPU check the same bodies: the tests compile them as C++ and run them against
torch (tests/optimizer/test_fused_kernels.py, tests/functional/test_nn.py).
"""
import numpy as np

from .dispatch import KERNEL_FLOATS

__all__ = ["fused_kernel", "use_fused", "use_fused_with_half"]


def fused_kernel(in_params, out_params, body, name):
    """A function that returns the CuPy ElementwiseKernel, built once on its first call."""
    kernel = None

    def get():
        nonlocal kernel
        if kernel is None:
            import cupy

            kernel = cupy.ElementwiseKernel(in_params, out_params, body, name)
        return kernel

    # the source stays readable: tests compile the body as C++ on machines without a GPU
    get.in_params, get.out_params, get.body, get.name = in_params, out_params, body, name
    return get


def use_fused(data, grad):
    """Whether a fused CUDA kernel serves ``data`` and ``grad``: CuPy arrays of one float32/float64
    dtype. numpy arrays and scalars (and other dtypes, e.g. float16, on the GPU) take the
    array-module code, which works on either module."""
    return (type(data) is not np.ndarray and not isinstance(data, np.generic)
            and data.dtype in KERNEL_FLOATS
            and grad.dtype == data.dtype and type(grad) is type(data))


_WITH_HALF = frozenset(map(np.dtype, ("float16", "float32", "float64")))


def use_fused_with_half(*arrays):
    """`use_fused` for the kernels that also serve float16 (autocast's arrays): CuPy arrays of
    one float16, float32 or float64 dtype. For bodies whose float16 is exact (a select) or is
    what torch's CUDA kernels compute: CuPy's float16 converts to float in every operation, so
    a body computes in float32 and rounds once, where its value is assigned."""
    first = arrays[0]
    return (type(first) is not np.ndarray and not isinstance(first, np.generic)
            and first.dtype in _WITH_HALF
            and all(type(a) is type(first) and a.dtype == first.dtype for a in arrays[1:]))
