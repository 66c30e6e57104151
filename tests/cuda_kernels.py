"""The engine's CUDA ElementwiseKernels, run on the CPU: each kernel body compiled as C++ and called like CuPy calls it.

The CUDA hot paths are CuPy ElementwiseKernels built by `megengine.core.fused.fused_kernel`
(optimizer updates, ReLU's backward, fake quantization). On machines without a GPU, `emulate`
compiles the *same body* with the host's C++ compiler (for ``T = float`` and ``T = double``, the
two types the engine instantiates) and returns a callable with CuPy's calling convention on numpy
arrays: the inputs, then optionally the outputs; array arguments broadcast to one shape; an
output not given is allocated and returned. Tests put it in the kernel's place and compare
against torch, so the kernel source the GPU will compile is what is checked.
"""
import ctypes
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

__all__ = ["emulate", "CXX"]

CXX = shutil.which("c++") or shutil.which("g++")
_C_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_FIXED = {"bool": ("unsigned char", np.uint8), "float32": ("float", np.float32),
          "float64": ("double", np.float64), "int32": ("int", np.int32),
          "int64": ("long long", np.int64)}


def _params(spec):
    """``"T x, bool flag"`` -> [("T", "x"), ("bool", "flag")]."""
    return [tuple(p.split()) for p in spec.split(",")]


def _source(kernel):
    ins, outs = _params(kernel.in_params), _params(kernel.out_params)

    def c_type(t, c):
        return c if t == "T" else _FIXED[t][0]

    formal = [f"{'T' if t == 'T' else _FIXED[t][0]} {n}" for t, n in ins] + \
        [f"{'T' if t == 'T' else _FIXED[t][0]}& {n}" for t, n in outs]
    src = ("#include <cmath>\nusing std::sqrt; using std::trunc; using std::fabs; "
           "using std::copysign; using std::exp; using std::log; using std::pow; using std::isinf;\n"
           f"template <typename T> static void body({', '.join(formal)}) {{\n{kernel.body}\n;}}\n")
    # ";" after the body: CuPy's generated loop is "${operation};", so a body may end without one
    for c in ("float", "double"):
        c_args = [f"const {c_type(t, c)}* {n}" for t, n in ins] + \
            [f"{c_type(t, c)}* {n}" for t, n in outs]
        actual = ", ".join(f"{n}[k_]" for _, n in ins + outs)
        src += (f'extern "C" void run_{c}(long n_, {", ".join(c_args)}) {{\n'
                f"  for (long k_ = 0; k_ < n_; ++k_) body<{c}>({actual});\n}}\n")
    return src


def emulate(kernel, tmp_path, reuse=False):
    """A numpy stand-in for the CuPy kernel that ``kernel`` (a `fused_kernel` getter) builds.

    ``tmp_path``: a directory for the C++ file and the library. Skips the test when the machine
    has no C++ compiler; fails it when the body is not valid C++ for float and double
    (``-Wall -Werror``). A float16 call runs the float body on the values converted to float32
    and rounds the outputs to float16, which is what CuPy's ``float16`` does (it converts to
    float in every operation and function and rounds where a value is assigned to one): exact
    for bodies without float16 locals, refused for the others. ``reuse``: load a library an
    earlier call built there from the same source instead of compiling again (the simulated
    CuPy's cache, tests/simcuda/kernels.py).
    """
    lib = _build(kernel, tmp_path, "kernel", _source(kernel), reuse)
    ins, outs = _params(kernel.in_params), _params(kernel.out_params)
    # a local ``T name`` would round to float16 where it is assigned on a GPU: not emulated
    half_locals = re.search(r"\bT\s+[A-Za-z_]\w*\s*[=;]", kernel.body) is not None

    def call(*args):
        if len(args) not in (len(ins), len(ins) + len(outs)):
            raise TypeError(f"{kernel.name}: {len(ins)} inputs (and optionally {len(outs)} "
                            f"outputs) expected, got {len(args)} arguments")
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        dtype = next(a.dtype for (t, _), a in zip(ins + outs, args)
                     if t == "T" and isinstance(a, np.ndarray))
        if dtype == np.float16:  # (see above: float arithmetic, float16 outputs)
            if half_locals:
                raise NotImplementedError(f"{kernel.name}: a body with float16 locals is not "
                                          "emulated in float16")
            f32 = [a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float16
                   else a for a in args[:len(ins)]]
            got = call(*f32)
            got = [g.astype(np.float16) for g in (got if isinstance(got, tuple) else (got,))]
            if len(args) > len(ins):
                for out, value in zip(args[len(ins):], got):
                    np.copyto(out, value)
                got = list(args[len(ins):])
            return got[0] if len(got) == 1 else tuple(got)
        fn = getattr(lib, f"run_{_C_NAMES[dtype]}")  # (float32 and float64 otherwise)
        shape = np.broadcast_shapes(*(a.shape for a in arrays))

        def buffer(t, value):
            np_type = dtype if t == "T" else _FIXED[t][1]
            return np.ascontiguousarray(np.broadcast_to(np.asarray(value, np_type), shape))

        in_bufs = [buffer(t, a) for (t, _), a in zip(ins, args)]
        given = args[len(ins):]
        out_bufs = [buffer(t, given[i]) if given else np.empty(shape, dtype if t == "T"
                                                                else _FIXED[t][1])
                    for i, (t, _) in enumerate(outs)]
        fn(ctypes.c_long(int(np.prod(shape))),
           *(b.ctypes.data_as(ctypes.c_void_p) for b in in_bufs + out_bufs))
        if given:  # CuPy writes into the outputs it was given
            for out, buf in zip(given, out_bufs):
                assert out.shape == shape, f"{kernel.name}: an output of shape {out.shape}"
                np.copyto(out, buf)
            results = list(given)
        else:
            results = out_bufs
        return results[0] if len(results) == 1 else tuple(results)

    return call


def _build(kernel, directory, stem, source, reuse):
    """Compile ``source`` into ``directory/<stem>.so`` (or, with ``reuse``, load the library an
    earlier call built there from the same source) and load it."""
    library = directory / f"{stem}.so"
    cpp = directory / f"{stem}.cpp"
    if not (reuse and library.exists() and cpp.exists() and cpp.read_text() == source):
        if CXX is None:
            pytest.skip("no C++ compiler on this machine")
        cpp.write_text(source)
        partial = directory / f"{stem}.so.{os.getpid()}"  # renamed when whole: readers in
        run = subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-Wall", "-Werror",
                              "-o", str(partial), str(cpp)],  # other processes never load
                             capture_output=True, text=True)  # half a file
        assert run.returncode == 0, f"{kernel.name}: the body is not valid C++:\n{run.stderr}"
        os.replace(partial, library)
    return ctypes.CDLL(str(library))
