"""The CuPy behaviours the engine relies on, checked on the real CuPy without a GPU (and held against the simulated CuPy), and the fused kernels compiled by CuPy's code generator and NVRTC.

Used by `tests/simcuda/api_check.py`; each check returns verdict lines ("OK ...", "NOTE ...",
"MISMATCH ..."). Nothing here touches device memory: CuPy's memory, pointer, stream and
allocator objects are host-side Python objects until a kernel runs or memory is read, and its
code generator and NVRTC need no driver. Where a check cannot be made without a device, it says
so instead of passing.
"""
import importlib
import inspect
import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["run_all", "compile_kernels", "kernel_specs"]

REPO = Path(__file__).resolve().parents[2]
_FAKE_POINTER = 0x7F00_0000_0000  # never dereferenced: only the objects around it are built


def _check(label, fn):
    """Run one check: ``fn()`` returns (verdict, detail); an exception is a MISMATCH."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            verdict, detail = fn()
        deprecations = {str(w.message) for w in caught
                        if issubclass(w.category, DeprecationWarning)}
        if deprecations and verdict == "OK":
            verdict, detail = "NOTE", (detail + "; " if detail else "") + \
                "DeprecationWarning: " + "; ".join(sorted(deprecations))
    except Exception as e:  # noqa: BLE001  (a check that raises has found a difference)
        verdict, detail = "MISMATCH", f"{type(e).__name__}: {e}"
    return f"{verdict:8s} {label}{': ' + detail if detail else ''}"


def _raises(fn, exc_type):
    try:
        fn()
    except exc_type as e:
        return str(e) or type(e).__name__
    return None


# ----- behaviours ---------------------------------------------------------------------------------

def _allocator_is_pool_method(cupy):
    # torch_bridge._decide_gpu_allocator: "the application set no allocator of its own" is
    # cupy.cuda.get_allocator().__self__ is cupy.get_default_memory_pool()
    ok = getattr(cupy.cuda.get_allocator(), "__self__", None) is cupy.get_default_memory_pool()
    return ("OK", "get_allocator().__self__ is get_default_memory_pool()") if ok else \
        ("MISMATCH", "the default allocator is not the default pool's bound malloc")


def _python_allocator_and_using_allocator(cupy):
    # torch_bridge: set_allocator(PythonFunctionAllocator(malloc, free).malloc), and a ValueError
    # from set_allocator inside cupy.cuda.using_allocator(...) means "try again later"
    previous = cupy.cuda.get_allocator()
    allocator = cupy.cuda.memory.PythonFunctionAllocator(lambda size, device_id: 0,
                                                         lambda pointer, device_id: None)
    try:
        cupy.cuda.set_allocator(allocator.malloc)
        if cupy.cuda.get_allocator() != allocator.malloc:
            return "MISMATCH", "get_allocator() does not return what set_allocator set"
        with cupy.cuda.using_allocator(previous):
            message = _raises(lambda: cupy.cuda.set_allocator(allocator.malloc), ValueError)
    finally:
        cupy.cuda.set_allocator(previous)
    if message is None:
        return "MISMATCH", "set_allocator inside using_allocator did not raise ValueError"
    return "OK", f"set_allocator inside using_allocator raises ValueError ({message!r})"


def _unowned_view(cupy, fake):
    # torch_bridge._cuda_tensor_to_cupy: a CuPy array over a torch tensor's memory
    owner = object()
    memory = cupy.cuda.UnownedMemory(_FAKE_POINTER, 3 * 4 * 4, owner, 0)
    array = cupy.ndarray((3, 4), np.dtype(np.float32), cupy.cuda.MemoryPointer(memory, 0), (16, 4))
    facts = {"shape": array.shape == (3, 4), "strides": array.strides == (16, 4),
             "data.ptr": array.data.ptr == _FAKE_POINTER, "data.device_id": array.data.device_id == 0,
             "type(data.mem) is UnownedMemory": type(array.data.mem).__name__ == "UnownedMemory",
             "base is None": array.base is None, "device.id": array.device.id == 0}
    wrong = [k for k, v in facts.items() if not v]
    if wrong:
        return "MISMATCH", "the view differs from what the engine and tests/devices.py expect: " \
            + ", ".join(wrong)
    gap = _raises(lambda: fake.cuda.UnownedMemory(_FAKE_POINTER, 48, owner, 0), Exception)
    return "OK", ("UnownedMemory(ptr, size, owner, device_id) + MemoryPointer(mem, 0) + "
                  "ndarray(shape, dtype, memptr, strides): " + ", ".join(facts)
                  + ("; the simulation refuses it, as documented" if gap else ""))


def _external_stream(cupy):
    stream = cupy.cuda.ExternalStream(12345, 0)
    if (stream.ptr, stream.device_id) != (12345, 0):
        return "MISMATCH", f"ExternalStream(12345, 0) has ptr {stream.ptr}, device {stream.device_id}"
    return "OK", "ExternalStream(ptr, device_id) keeps both"


def _raw_event_calls(cupy):
    # torch_bridge orders CuPy's stream after torch's with runtime.eventRecord/streamWaitEvent
    # on raw handles (no Stream objects per call)
    runtime = cupy.cuda.runtime
    missing = [n for n in ("eventRecord", "streamWaitEvent") if not hasattr(runtime, n)]
    if missing:
        return "MISMATCH", f"cupy.cuda.runtime lacks {missing}"
    return "OK", "runtime.eventRecord(event, stream) and streamWaitEvent(stream, event) exist"


def _zero_d_host_arrays(cupy, fake):
    # a 0-d numpy array is not a scalar to CuPy: kernels and ufuncs refuse it (TypeError
    # "Unsupported type <class 'numpy.ndarray'>"); numpy scalars are accepted
    from cupy._core import _scalar

    real_zero_d = _raises(lambda: _scalar.CScalar(np.array(2.0)), TypeError)
    real_scalar = _raises(lambda: _scalar.CScalar(np.float32(2.0)), TypeError)
    if real_zero_d is None or real_scalar is not None:
        return "NOTE", ("CuPy's scalar rule changed: 0-d array refused: "
                        f"{real_zero_d is not None}, numpy scalar refused: {real_scalar is not None}")
    sim = _raises(lambda: fake.multiply(fake.ones(3), np.array(2.0)), TypeError)
    if sim is None:
        return "MISMATCH", ("CuPy refuses a 0-d numpy array as a kernel operand, the simulated "
                            "CuPy accepts it (fake_cupy._operand)")
    return "OK", "0-d numpy arrays refused by CuPy and by the simulation; numpy scalars accepted"


def _elementwise_type_rules(cupy, fake):
    # CuPy's ElementwiseKernel: one dtype per type letter T, fixed dtypes exact, nin or nargs
    # arguments; the simulation must refuse what CuPy refuses
    spec = ("T x, T y", "T z", "z = x + y", "api_check_add")
    real = cupy.ElementwiseKernel(*spec)
    mixed = _raises(lambda: real._decide_params_type((np.dtype(np.float32), np.dtype(np.float64)),
                                                     ()), TypeError)
    if mixed is None:
        return "NOTE", "CuPy now accepts two dtypes for one type letter"
    sim_kernel = fake.ElementwiseKernel(*spec)
    a32 = fake.ones(3, np.float32)
    a64 = fake.ones(3, np.float64)
    problems = []
    if _raises(lambda: sim_kernel(a32, a64), TypeError) is None:
        problems.append("mixed dtypes for T")
    if _raises(lambda: sim_kernel(a32), TypeError) is None:
        problems.append("a wrong number of arguments")
    if _raises(lambda: sim_kernel(a32, a32, fake.ones(3, np.float64)), TypeError) is None:
        problems.append("an output of another dtype")
    if problems:
        return "MISMATCH", "the simulated ElementwiseKernel accepts " + ", ".join(problems) + \
            f" (CuPy: {mixed!r})"
    return "OK", f"mixed dtypes for one type letter refused by CuPy ({mixed!r}) and the simulation"


def _array_methods(cupy, fake):
    # every method and operator of the simulated ndarray must exist on CuPy's: one CuPy lacks
    # (__index__, say) would let engine code pass the simulation and fail on a GPU
    # (the simulation's own slots: its host array, device and the owner a view keeps alive)
    slots = ("_dev", "_keep", "__slots__", "__weakref__")
    extra = sorted(n for n in set(dir(fake.ndarray)) - set(dir(cupy.ndarray))
                   if not n.startswith("_a") and n not in slots)
    if extra:
        return "MISMATCH", f"the simulated cupy.ndarray has what CuPy's lacks: {extra}"
    return "OK", "the simulated cupy.ndarray has no method or operator CuPy's lacks"


# made by the simulation itself, never called by CuPy's users (CuPy's Memory(size) allocates;
# its ufunc takes kernel tables): their constructors need not match
_BUILT_BY_THE_SIMULATION = {"ufunc", "cuda.Memory", "cuda.memory.Memory"}


def _simulated_signatures(cupy, fake):
    # every function and class the simulation defines itself (not numpy's, wrapped) takes no
    # parameter CuPy's namesake lacks: a call the simulation accepts must be one CuPy accepts
    from simcuda.api_check import signature_of

    spaces = [("", fake, cupy), ("cuda.", fake.cuda, cupy.cuda),
              ("cuda.runtime.", fake.cuda.runtime, cupy.cuda.runtime),
              ("cuda.memory.", fake.cuda.memory, cupy.cuda.memory)]
    pairs = []
    for prefix, mine, theirs in spaces:
        for name, value in list(vars(mine).items()):
            if name.startswith("_") or not callable(value) or not hasattr(theirs, name):
                continue
            pairs.append((prefix + name, value, getattr(theirs, name)))
            if isinstance(value, type):
                for method, fn in vars(value).items():
                    if callable(fn) and not method.startswith("_") and \
                            hasattr(getattr(theirs, name), method):
                        pairs.append((f"{prefix}{name}.{method}", fn,
                                      getattr(getattr(theirs, name), method)))
    for method, fn in vars(fake.ndarray).items():
        if callable(fn) and not method.startswith("_") and hasattr(cupy.ndarray, method):
            pairs.append((f"ndarray.{method}", fn, getattr(cupy.ndarray, method)))
    extra, compared = [], 0
    for name, mine, theirs in pairs:
        if name in _BUILT_BY_THE_SIMULATION:
            continue
        a, b = signature_of(mine), signature_of(theirs)
        if a is None or b is None:
            continue
        kinds = {p.kind for p in b.parameters.values()}
        if inspect.Parameter.VAR_KEYWORD in kinds:
            continue  # CuPy takes any keyword: nothing to compare
        compared += 1
        own = [p for p in a.parameters if p not in b.parameters and p != "self"
               and a.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                inspect.Parameter.VAR_KEYWORD)]
        if own:
            extra.append(f"{name} takes {own} (CuPy: {b})")
    if extra:
        return "MISMATCH", "the simulation accepts parameters CuPy lacks: " + "; ".join(extra)
    return "OK", f"{compared} simulated functions and methods take no parameter CuPy's lack"


def _ufunc_scatter_ops(cupy, fake):
    # ufunc.at is CuPy's scatter operation, present on the ufuncs with a _scatter_op; the
    # simulation's table (fake_cupy's _SCATTER_OPS) must name the same ufuncs
    import numpy

    real = {name for name in dir(numpy) if isinstance(getattr(numpy, name), numpy.ufunc)
            and getattr(getattr(cupy, name, None), "_scatter_op", None)}
    sim = set()
    for name in dir(numpy):
        if isinstance(getattr(numpy, name), numpy.ufunc) and hasattr(cupy, name):
            try:
                getattr(fake, name).at(fake.zeros(2, np.float32), slice(0, 1), 1.0)
            except NotImplementedError:
                continue
            except Exception:  # noqa: BLE001  (a one-input ufunc, etc.: has at, other error)
                pass
            sim.add(name)
    if real != sim:
        return "MISMATCH", (f"ufunc.at: CuPy has it for {sorted(real)}, the simulation for "
                            f"{sorted(sim)}")
    return "OK", f"ufunc.at exists for {sorted(real)} only, in CuPy and the simulation"


def _recorded_table(cupy):
    # the simulated CuPy refuses names and arguments by tests/simcuda/cupy_signatures.json:
    # it must be the installed CuPy's
    from simcuda import cupy_table

    recorded, actual = cupy_table.load(), cupy_table.generate(cupy)
    if recorded is None:
        return "MISMATCH", f"{cupy_table.PATH.name} is missing: run api_check.py --write-table"
    if recorded != actual:
        diffs = []
        for key in ("spaces", "ndarray"):
            a, b = recorded.get(key), actual.get(key)
            if a != b:
                diffs.append(key)
        return "MISMATCH", (f"{cupy_table.PATH.name} records CuPy {recorded.get('version')}, "
                            f"the installed CuPy {actual['version']} differs in {diffs}: run "
                            "api_check.py --write-table and review the diff")
    spaces = actual["spaces"]
    return "OK", (f"{cupy_table.PATH.name} is CuPy {actual['version']}'s: "
                  + ", ".join(f"cupy{'.' + k if k else ''} {len(v['names'])} names "
                              f"({len(v['signatures'])} signatures)" for k, v in spaces.items())
                  + f", ndarray {len(actual['ndarray']['signatures'])} method signatures")


def _torch_cuda_functions(torch):
    # names the bridge reaches through getattr with a fallback: present in CUDA builds only
    problems = []
    for name in ("caching_allocator_alloc", "caching_allocator_delete", "ExternalStream",
                 "current_stream", "init", "memory_allocated", "memory_reserved"):
        if not hasattr(torch.cuda, name):
            problems.append(name)
    if problems:
        return "MISMATCH", f"torch.cuda lacks {problems}"
    return "OK", ("torch.cuda has the allocator, stream and memory functions the bridge calls "
                  "(_C._cuda_* raw entry points exist only in CUDA builds; the bridge falls back)")


def run_all(cupy, torch, fake):
    """Every behaviour check; returns (lines, number of MISMATCH lines)."""
    checks = [
        ("default allocator is the pool's malloc", lambda: _allocator_is_pool_method(cupy)),
        ("PythonFunctionAllocator / set_allocator / using_allocator",
         lambda: _python_allocator_and_using_allocator(cupy)),
        ("a view of foreign CUDA memory", lambda: _unowned_view(cupy, fake)),
        ("ExternalStream (utils/dlpack.py, CuPy < 14)", lambda: _external_stream(cupy)),
        ("raw event calls (torch_bridge)", lambda: _raw_event_calls(cupy)),
        ("0-d numpy arrays in kernels", lambda: _zero_d_host_arrays(cupy, fake)),
        ("ElementwiseKernel type rules", lambda: _elementwise_type_rules(cupy, fake)),
        ("ndarray methods", lambda: _array_methods(cupy, fake)),
        ("simulated signatures", lambda: _simulated_signatures(cupy, fake)),
        ("ufunc.at", lambda: _ufunc_scatter_ops(cupy, fake)),
        ("the simulation's table of CuPy's names", lambda: _recorded_table(cupy)),
    ]
    if torch is not None:
        checks.append(("torch.cuda functions", lambda: _torch_cuda_functions(torch)))
    lines = [_check(label, fn) for label, fn in checks]
    return lines, sum(line.startswith("MISMATCH") for line in lines)


# ----- kernels ------------------------------------------------------------------------------------

def kernel_specs():
    """{"module.attribute": getter} for every `fused_kernel` the engine defines: the modules
    that call ``fused_kernel(`` are imported and their module-level getters collected, and the
    getters their classes hold (elemwise's unary gradients: ``Tanh.grad_kernel``)."""
    def is_getter(value):
        return callable(value) and all(hasattr(value, a) for a in ("in_params", "out_params",
                                                                   "body", "name"))

    specs = {}
    for path in sorted((REPO / "megengine").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "fused_kernel(" not in text or path.name == "fused.py":
            continue
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if is_getter(value):
                specs[f"{name}.{attr}"] = value
            elif isinstance(value, type) and value.__module__ == name:
                for cattr, cvalue in vars(value).items():
                    cvalue = getattr(cvalue, "__func__", cvalue)  # (a staticmethod's getter)
                    if is_getter(cvalue):
                        specs[f"{name}.{attr}.{cattr}"] = cvalue
    return specs


def kernel_source(cupy, spec, dtype, scalars):
    """The CUDA source CuPy generates for ``spec`` when called with arrays of ``dtype`` (inputs
    after the first as scalars when ``scalars``), as ElementwiseKernel.__call__ would."""
    from cupy._core import _carray, _kernel, _scalar

    kernel = cupy.ElementwiseKernel(spec.in_params, spec.out_params, spec.body, spec.name)
    dtype = np.dtype(dtype)

    def given(p, i):
        if scalars and i > 0:
            return None
        return dtype if p.dtype is None else np.dtype(p.dtype)

    in_types, out_types, type_map = kernel._decide_params_type(
        tuple(given(p, i) for i, p in enumerate(kernel.in_params)), ())
    # CuPy's argument kinds (cupy/_core/_kernel.pxd): 1 ndarray, 2 indexer, 3 scalar; the
    # generated source is checked below to contain what each kind produces
    ndarray_kind, indexer_kind, scalar_kind = 1, 2, 3
    infos = [(_kernel._ArgInfo(scalar_kind, _scalar.CScalar, in_types[i], 0, True, True)
              if given(p, i) is None else
              _kernel._ArgInfo(ndarray_kind, cupy.ndarray, in_types[i], 1, True, True))
             for i, p in enumerate(kernel.in_params)]
    infos += [_kernel._ArgInfo(ndarray_kind, cupy.ndarray, t, 1, True, True) for t in out_types]
    infos.append(_kernel._ArgInfo(indexer_kind, _carray.Indexer, None, 1, True, True))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, kernel.params,
                                                kernel.operation, kernel.name, kernel.preamble)
    arrays = sum(1 for p, i in zip(kernel.in_params, range(99)) if given(p, i) is not None) + \
        len(out_types)
    if code.count("CArray<") != arrays or "CIndexer<1" not in code:
        raise AssertionError("CuPy's argument kinds changed: the generated source does not have "
                             f"{arrays} CArray parameters and a CIndexer:\n{code}")
    return code


def _compile(cupy, code, arch, cache_dir):
    """Compile ``code`` as ElementwiseKernel does (cupy._core.core.compile_with_cache: CuPy's
    headers, NVRTC) for ``sm_<arch>``. Loading the module needs a driver and fails after the
    cubin is written to CuPy's cache: that file is the evidence. Returns its size in bytes."""
    from cupy._core import core
    from cupy.cuda import compiler

    # CuPy asks the *current device* for the -arch option (memoized per device, which needs a
    # driver); the rule it applies is reproduced here for the arch given
    original = compiler._get_arch_for_options_for_nvrtc

    def arch_option(arch_=None):
        arch_ = arch_ or arch
        if not compiler._use_ptx and int(arch_) <= int(compiler._get_max_compute_capability()):
            return f"-arch=sm_{arch_}", "cubin"
        return f"-arch=compute_{arch_}", "ptx"

    before = set(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else set()
    compiler._get_arch_for_options_for_nvrtc = arch_option
    try:
        core.compile_with_cache(code, (), arch=arch)
    except compiler.CompileException:
        raise
    except Exception as e:  # noqa: BLE001  (the module load without a driver)
        load_error = e
    else:
        load_error = None
    finally:
        compiler._get_arch_for_options_for_nvrtc = original
    new = [f for f in set(os.listdir(cache_dir)) - before if f.endswith(".cubin")]
    if not new:
        # the same source compiled earlier in this process: found in the cache, then the load
        # failed; the cache holds it
        if load_error is not None and "Driver" not in str(load_error) and \
                "driver" not in str(load_error):
            raise load_error
        return 0
    payload = Path(cache_dir, new[0]).read_bytes()
    return len(payload)


# the kernels the engine also calls on float16 arrays (autocast's ReLUs and gelu's limits: a
# select is exact in any dtype; the unary functions' gradients and PReLU's, which CuPy's half
# computes in float32 and rounds once); the others serve float32 and float64 only
# (`core.fused.use_fused`)
HALF_KERNELS = {"megengine_relu_grad", "megengine_gelu_limits", "megengine_prelu",
                "megengine_prelu_grad"} | {
    f"megengine_{name}_grad" for name in ("log1p", "sqrt", "square", "sin", "cos", "tan", "asin",
                                          "acos", "atan", "sinh", "cosh", "tanh", "asinh",
                                          "acosh", "atanh")}


def compile_kernels(cupy, arch="90", compile_=True):
    """Generate and compile every engine kernel; returns (lines, number of MISMATCH lines)."""
    lines = []
    try:
        specs = kernel_specs()
    except Exception as e:  # noqa: BLE001
        return [f"MISMATCH the engine's kernels could not be collected: {type(e).__name__}: {e}"], 1
    nvrtc_problem = None
    if compile_:
        try:
            from cupy.cuda import nvrtc

            version = nvrtc.getVersion()
            lines.append(f"OK       NVRTC {version[0]}.{version[1]} loads; compiling for sm_{arch}")
        except Exception as e:  # noqa: BLE001
            nvrtc_problem = (f"NVRTC cannot be loaded ({type(e).__name__}: {e}); install the "
                             "nvidia-cuda-nvrtc wheel of CuPy's CUDA version")
    cache_dir = os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache")
    bad = 0
    for qualname, spec in specs.items():
        for dtype in ("float32", "float64") + (("float16",) if spec.name in HALF_KERNELS else ()):
            for scalars in (False, True):
                label = f"kernel {spec.name} [{qualname}] T={dtype}" + \
                    (", inputs after the first as scalars" if scalars else ", all arrays")
                try:
                    code = kernel_source(cupy, spec, dtype, scalars)
                except Exception as e:  # noqa: BLE001  (a parameter string CuPy refuses)
                    lines.append(f"MISMATCH {label}: CuPy's code generation: "
                                 f"{type(e).__name__}: {e}")
                    bad += 1
                    continue
                if not compile_ or nvrtc_problem:
                    lines.append(f"NOTE     {label}: source generated, not compiled"
                                 + (f" ({nvrtc_problem})" if nvrtc_problem else ""))
                    continue
                try:
                    size = _compile(cupy, code, arch, cache_dir)
                except Exception as e:  # noqa: BLE001  (CompileException: the body is wrong)
                    message = str(e).strip().splitlines()
                    lines.append(f"MISMATCH {label}: NVRTC: " + " | ".join(message[:6]))
                    bad += 1
                    continue
                lines.append(f"OK       {label}: compiled for sm_{arch}"
                             + (f" ({size} bytes of cubin)" if size else " (cached)"))
    if not specs:
        lines.append("MISMATCH no fused kernels were found in megengine/ (fused_kernel calls)")
        bad += 1
    return lines, bad

