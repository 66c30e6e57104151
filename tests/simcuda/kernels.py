"""CuPy ElementwiseKernels of the simulated CuPy, run on the host (the CUDA body compiled as C++ once per source, cached on disk), and CuPy's rules for their parameters and arguments."""
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .cuda_runtime import SimulationGap

__all__ = ["host_kernel", "cache_root", "parse_params", "check_types"]


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
    import cuda_kernels  # tests/cuda_kernels.py: the body-as-C++ compiler the CPU tests use

    digest = hashlib.sha256(cuda_kernels._source(kernel).encode()).hexdigest()[:16]
    directory = cache_root() / f"{kernel.name}-{digest}"
    directory.mkdir(parents=True, exist_ok=True)
    return cuda_kernels.emulate(kernel, directory, reuse=True)


def parse_params(spec):
    """``"T x, float32 s"`` -> [("T", "x"), ("float32", "s")], as CuPy's ParameterInfo reads
    them; ``raw``/``_non_const`` parameters are not simulated."""
    out = []
    for part in spec.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) < 2:
            raise Exception(f"Syntax error: {part}")  # CuPy raises a bare Exception too
        if len(words) > 2:
            raise SimulationGap(f"simulated ElementwiseKernel: parameter {part.strip()!r} "
                                "(raw, _non_const) is not simulated")
        out.append((words[0], words[1]))
    return out


def check_types(name, ins, outs, args, dtype_of):
    """CuPy's ``_decide_params_type`` (cupy/_core/_kernel.pyx): the outputs given, then the
    inputs, fix each type letter's dtype, a fixed dtype must match exactly, scalars (``dtype_of``
    None) take their parameter's; a letter no array decides is CuPy's KeyError."""
    letters = {}
    n_in = len(ins)
    params = outs[:len(args) - n_in] + ins  # outputs decide first
    values = list(args[n_in:]) + list(args[:n_in])
    for (ptype, pname), value in zip(params, values):
        dtype = dtype_of(value)
        if dtype is None:
            continue
        if len(ptype) > 1:  # a fixed dtype: float32, bool, int64, ...
            if dtype != np.dtype(ptype):
                raise TypeError(f"Type is mismatched. {pname} {dtype} {ptype}")
        elif ptype in letters and letters[ptype] != dtype:
            raise TypeError(f"Type is mismatched. {pname} {dtype} {letters[ptype]} {ptype}")
        else:
            letters[ptype] = dtype
    for ptype, pname in ins + outs:
        if len(ptype) == 1 and ptype not in letters:
            raise TypeError(f"simulated ElementwiseKernel {name}: type {ptype} of {pname} is "
                            "decided by no array argument (CuPy fails with a KeyError)")
