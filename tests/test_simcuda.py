"""The simulated CUDA devices (tests/simcuda): the fake CuPy keeps CuPy's rules, and the engine's GPU paths pass on simulated gpu0 and gpu1.

The first tests check the simulator itself against CuPy's documented behaviour (a fresh fake
module per test, never installed, so this process's megengine is untouched). The last ones run
engine code under ``MGE_SIM_CUDA=2`` in a subprocess (the simulation must be in place before
megengine loads): the multi-device cases of tests/simcuda/multi_gpu_cases.py, which also run on
a machine with two real GPUs.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simcuda import cuda_runtime, fake_cupy

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture
def cp():
    cupy, _ = fake_cupy.build(2)
    return cupy


def test_host_conversion_is_refused_as_by_cupy(cp):
    a = cp.arange(3, dtype=np.float32)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        np.array([1.0, 2.0, 3.0]) + a  # numpy's operator hands the ufunc to CuPy, which refuses
    np.testing.assert_array_equal(a.get(), [0, 1, 2])
    np.testing.assert_array_equal(cp.asnumpy(a), [0, 1, 2])
    assert a.tolist() == [0.0, 1.0, 2.0] and float(a[1]) == 1.0


def test_host_arrays_are_refused_as_operands_scalars_are_not(cp):
    a = cp.ones(3, dtype=np.float32)
    for bad in (lambda: a + np.ones(3), lambda: cp.maximum(a, np.zeros(3)),
                lambda: cp.concatenate([a, np.ones(2)]), lambda: a.dot(np.ones(3))):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            bad()
    for fine in (a + 2, a * np.float32(2), a - np.float64(1.0), 2 ** a):
        assert type(fine) is cp.ndarray and fine.shape == (3,)
    np.testing.assert_allclose((a * np.float32(2) - np.float64(1.0)).get(), [1, 1, 1])
    # a 0-d numpy array is an array, not a scalar, to CuPy: cupy._core._scalar.CScalar refuses
    # it (checked against CuPy 14.2 by tests/simcuda/api_check.py); .item() makes it a scalar
    for bad in (lambda: a - np.array(1.0), lambda: cp.where(a > 0, a, np.array(0.0, np.float32))):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            bad()
    assert float((a - np.array(1.0).item()).sum()) == 0.0


def test_reductions_and_scalar_indexing_give_0d_device_arrays(cp):
    a = cp.asarray(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    for r in (a.sum(), cp.max(a), a[1, 0], cp.linalg.norm(a)):
        assert type(r) is cp.ndarray and r.ndim == 0
    assert float(a.sum()) == 10.0 and float(a[1, 0]) == 3.0
    np.testing.assert_allclose(float(cp.linalg.norm(a)), np.sqrt(30.0), rtol=1e-6)
    b = a[0]  # a view: writing through it reaches a, as CuPy's basic indexing
    b[1] = 7.0
    assert float(a[0, 1]) == 7.0


def test_arrays_live_where_they_were_allocated_and_kernels_run_on_the_current_device(cp):
    a = cp.ones(4, dtype=np.float32)
    assert a.device.id == 0
    with cp.cuda.Device(1):
        b = cp.zeros(4, dtype=np.float32)
        assert b.device.id == 1 and (b + 1).device.id == 1
        with pytest.raises(ValueError, match=r"resides \(0\) is different from the current "
                                             r"device \(1\)"):
            a * 2  # a kernel on device 1 reading device 0's memory
        c = a.copy()  # a transfer: CuPy copies onto the current device
        assert c.device.id == 1
    assert cp.cuda.runtime.getDevice() == 0  # the context gave device 0 back
    with pytest.raises(ValueError, match="different from the current device"):
        a + b  # arrays of two devices in one kernel
    assert a.reshape(2, 2).device.id == 0 and b.T.device.id == 1  # views: no kernel, no check
    assert cp.array(b).device.id == 0  # cupy.array copies onto the current device
    cp.cuda.runtime.setDevice(1)
    assert cp.empty(2).device.id == 1
    with pytest.raises(cuda_runtime.CUDARuntimeError, match="invalid device ordinal"):
        cp.cuda.runtime.setDevice(2)


def test_numpy_functions_on_device_arrays_dispatch_to_the_simulation(cp):
    a = cp.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.sum(a, axis=0)  # __array_function__: CuPy serves numpy's functions
    assert type(s) is cp.ndarray
    np.testing.assert_array_equal(s.get(), [3, 5, 7])
    e = np.exp(a)  # __array_ufunc__
    assert type(e) is cp.ndarray
    np.testing.assert_allclose(e.get(), np.exp(np.arange(6, dtype=np.float32).reshape(2, 3)))
    np.add.at(a, (0, 1), 10.0)
    assert float(a[0, 1]) == 11.0


def test_clip_answers_as_cupys_kernel_where_the_bounds_cross(cp):
    # cupy_clip: in1 > in2 ? in2 : (in0 < in1 ? in1 : (in0 > in2 ? in2 : in0)), so a NaN
    # becomes the upper bound where lower > upper (numpy's clip keeps it); elsewhere numpy's
    x = np.array([np.nan, -np.inf, -1.0, 0.5, 3.0, np.inf], np.float32)
    a = cp.asarray(x)
    for got in (cp.clip(a, 2.0, 1.0), a.clip(2.0, 1.0)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.get(), [1.0] * 6)
    for got in (cp.clip(a, 0.0, 1.0), a.clip(0.0, 1.0)):
        np.testing.assert_array_equal(got.get(), [np.nan, 0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(cp.clip(cp.asarray([5, -5], np.int32), 3, 1).get(), [1, 1])


def test_random_streams_are_per_device_and_seeded(cp):
    cp.random.seed(5)
    first = cp.random.random_sample(3).get()
    cp.random.seed(5)
    np.testing.assert_array_equal(cp.random.random_sample(3).get(), first)
    with cp.cuda.Device(1):
        r = cp.random.random_sample(3)
        assert r.device.id == 1


def test_memory_pool_counts_live_arrays_per_device(cp):
    pool = cp.get_default_memory_pool()
    before = pool.used_bytes()
    a = cp.zeros(1000, dtype=np.float32)
    assert pool.used_bytes() == before + 4000
    with cp.cuda.Device(1):
        assert pool.used_bytes() == 0
    del a
    assert pool.used_bytes() == before


def test_elementwise_kernels_run_their_cuda_body_with_cupys_rules(cp):
    k = cp.ElementwiseKernel("T x, T y, float32 s", "T z", "z = x * y + s;", "simcuda_fma")
    x = cp.asarray(np.array([1.0, 2.0, 3.0], np.float32))
    z = k(x, x, 0.5)
    assert type(z) is cp.ndarray and z.dtype == np.float32
    np.testing.assert_allclose(z.get(), [1.5, 4.5, 9.5])
    out = cp.zeros(3, dtype=np.float32)
    assert k(x, 2.0, 1.0, out) is out  # outputs given are written and returned
    np.testing.assert_allclose(out.get(), [3, 5, 7])
    with pytest.raises(TypeError, match="Unsupported type"):
        k(x, np.ones(3, np.float32), 0.0)
    with cp.cuda.Device(1), pytest.raises(ValueError, match="different from the current"):
        k(x, x, 0.0)


def test_elementwise_kernels_keep_cupys_argument_and_dtype_rules(cp):
    # cupy/_core/_kernel.pyx: ElementwiseKernel.__call__ and _decide_params_type
    k = cp.ElementwiseKernel("T x, T y", "T z, bool m", "z = x + y; m = z > 0", "simcuda_rules")
    x32 = cp.ones(3, dtype=np.float32)
    x64 = cp.ones(3, dtype=np.float64)
    z, m = k(x32, 1.5)  # no ";" after the body: CuPy's loop adds one
    assert z.dtype == np.float32 and m.dtype == np.bool_
    np.testing.assert_allclose(z.get(), [2.5] * 3)
    with pytest.raises(TypeError, match="Type is mismatched"):
        k(x32, x64)  # one dtype per type letter
    with pytest.raises(TypeError, match="Type is mismatched"):
        k(x32, x32, cp.zeros(3, np.float32), cp.zeros(3, np.int8))  # bool means bool
    with pytest.raises(TypeError, match="Wrong number of arguments"):
        k(x32, x32, cp.zeros(3, np.float32))  # the inputs, or the inputs and every output
    with pytest.raises(TypeError, match="Output arguments type must be cupy.ndarray"):
        k(x32, x32, 0.0, cp.zeros(3, bool))  # (a numpy output: "Unsupported type" before it)
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        k(x32, x32, cp.zeros(1, np.float32), cp.zeros(1, bool))  # outputs broadcast, then differ
    with pytest.raises(ValueError, match="could not be broadcast"):
        k(x32, x32, cp.zeros(4, np.float32), cp.zeros(4, bool))
    with pytest.raises(TypeError, match="Wrong arguments"):
        k(x32, x32, blocks=2)
    with pytest.raises(ValueError, match="'i' as a parameter name"):
        cp.ElementwiseKernel("T i", "T z", "z = i", "simcuda_bad_name")


def test_what_cannot_be_simulated_fails_loudly(cp):
    with pytest.raises(cuda_runtime.SimulationGap, match="DLPack"):
        cp.from_dlpack(object())
    with pytest.raises(cuda_runtime.SimulationGap, match="raw device pointer"):
        cp.ndarray((2,), np.float32, memptr=object())
    with pytest.raises(cuda_runtime.SimulationGap, match="external streams"):
        cp.cuda.ExternalStream(1234, 0)

    class Handle:  # CuPy 14's stream protocol
        def __init__(self, ptr):
            self.ptr = ptr

        def __cuda_stream__(self):
            return 0, self.ptr

    with pytest.raises(cuda_runtime.SimulationGap, match="external streams"):
        cp.cuda.Stream.from_external(Handle(1234))
    with pytest.raises(cuda_runtime.SimulationGap, match="non-null stream"):
        cp.cuda.runtime.eventRecord(cp.cuda.Event().ptr, 1234)
    with pytest.raises(cuda_runtime.SimulationGap, match="non-null stream"):
        cp.cuda.runtime.streamWaitEvent(1234, cp.cuda.Event().ptr)
    cp.cuda.runtime.eventRecord(cp.cuda.Event().ptr, 0)  # the null stream is simulated
    assert cp.cuda.Stream.from_external(Handle(0)).ptr == 0
    assert cp.cuda.get_current_stream().ptr == 0 == cp.cuda.get_current_stream(0).ptr


def _run_simulated(args, devices=2, timeout=300):
    env = dict(os.environ, MGE_SIM_CUDA=str(devices),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("MGE_DEFAULT_DEVICE", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_engine_gpu_paths_pass_on_two_simulated_devices():
    # (the simulation replaces an installed CuPy too: it enters sys.modules first)
    run = _run_simulated([str(TESTS / "simcuda" / "multi_gpu_cases.py")])
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and "skipped" not in run.stdout, tail


def test_ufunc_methods_and_scatter_dtypes_follow_cupy(cp):
    # cupy/_core/_kernel.pyx: reduce/accumulate only as add and multiply, reduceat only as add,
    # at only where a scatter operation exists; _routines_indexing.pyx: atomics' dtypes
    a = cp.asarray(np.array([1.0, 2.0, 3.0], np.float32))
    assert float(cp.add.reduce(a)) == 6.0 and float(cp.multiply.reduce(a)) == 6.0
    np.testing.assert_array_equal(cp.add.accumulate(a).get(), [1, 3, 6])
    for bad in (lambda: cp.maximum.reduce(a), lambda: cp.maximum.accumulate(a),
                lambda: cp.multiply.reduceat(a, [0, 2]), lambda: cp.multiply.at(a, [0], 2.0)):
        with pytest.raises(NotImplementedError, match="is not supported yet"):
            bad()
    cp.add.at(a, cp.asarray(np.array([0, 0])), 1.0)  # repeated indices each add
    cp.maximum.at(a, [2], 10.0)
    np.testing.assert_array_equal(a.get(), [3, 2, 10])
    counts = cp.zeros(3, dtype=np.int64)
    with pytest.raises(TypeError, match="scatter_add only supports int32"):
        cp.add.at(counts, cp.asarray(np.array([0, 1])), 1)  # no 64-bit signed atomicAdd
    with pytest.raises(TypeError, match="scatter_max only supports"):
        cp.maximum.at(cp.zeros(3, np.float16), [0], 1.0)
    cp.add.at(counts, slice(0, 2), 1)  # no integer-array index: a plain in-place add
    cp.add.at(counts, cp.asarray(np.array([True, False, True])), 1)  # a mask: any dtype
    np.testing.assert_array_equal(counts.get(), [2, 1, 1])


def test_ufunc_calls_take_cupys_keywords_only(cp):
    a = cp.ones(3, dtype=np.float32)
    out = cp.empty(3, dtype=np.float32)
    assert cp.add(a, 1, out=out) is out and cp.multiply(a, 2, dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="Wrong arguments"):
        cp.add(a, 1, where=a > 0)  # numpy's where= is not CuPy's
    with pytest.raises(TypeError, match="Wrong number of arguments"):
        cp.add(a)


def test_names_and_signatures_are_cupys(cp):
    # tests/simcuda/cupy_signatures.json: CuPy 14.2's names and signatures (api_check.py keeps
    # it equal to the installed CuPy); numpy's extras are refused as CuPy refuses them
    a = cp.ones((2, 3), dtype=np.float32)
    assert float(cp.sum(a, axis=0, keepdims=True).sum()) == 6.0
    for absent in ("insert", "geomspace", "errstate"):  # numpy has them, CuPy 14.2 not
        with pytest.raises(AttributeError, match="has no attribute"):
            getattr(cp, absent)
    with pytest.raises(TypeError, match="where"):
        cp.sum(a, where=a > 0)  # numpy's sum takes where=, CuPy's not
    with pytest.raises(TypeError, match="initial"):
        a.max(initial=0.0)  # nor does ndarray.max take initial=
    with pytest.raises(TypeError, match="random_sample"):
        cp.random.random_sample((2,), np.float32, 1)  # (size, dtype) only
