"""Device names, the default device and the 0.x `megengine.core` names (megengine/device.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine import device as dev
from megengine.autodiff import GradManager


@pytest.fixture(autouse=True)
def _restore_default():
    before = mge.get_default_device()
    yield
    mge.set_default_device(before)


def test_names_map_to_devices():
    assert dev.canonical_device("cpu0") == "cpu0"
    assert dev.canonical_device("cpux") == "cpu0"
    assert dev.canonical_device("cpu1:0") == "cpu1"  # upstream's cpuN: distinct devices
    assert dev.canonical_device("cpu2") == "cpu2"
    # without CUDA, "xpux" (upstream's default, "the best there is") is the CPU
    assert dev.canonical_device("xpux") == ("gpu0" if mge.is_cuda_available() else "cpu0")
    # upstream's default is "xpux"; MGE_DEFAULT_DEVICE (e.g. make gpu-check's cpu0 run) overrides it
    assert mge.get_default_device() == os.environ.get("MGE_DEFAULT_DEVICE", "xpux")


# Upstream's comp node name grammar (CompNode::Locator::parse in src/core/impl/comp_node/
# comp_node.cpp): the number may be left out before a stream, which reads it as 0; "xpu" alone is
# "xpux"; "multithreadT:N" is device N with T > 0 threads; its unit test_linspace_cpu passes
# device="cpu:0".
@pytest.mark.parametrize("name, device", [
    ("cpu:0", "cpu0"), ("cpu0:1", "cpu0"), ("cpu1:3", "cpu1"), ("cpux:2", "cpu0"),
    ("xpux:2", "xpux"), ("xpu", "xpux"), ("xpu:1", "xpux"), ("multithread2:0", "cpu0"),
    ("multithread4:1", "cpu1"), ("multithread4", "cpu0"), ("cpu:default", "cpu0"),
    ("multithread:default:2", "cpu0"), ("cpu01", "cpu1"),
])
def test_names_are_parsed_as_upstreams_comp_node_locator(name, device):
    assert dev.canonical_device(name) == dev.canonical_device(device)
    x = F.linspace(1, 9, 8, device=name)
    assert x.device == dev.canonical_device(device)
    np.testing.assert_allclose(x.numpy(), np.linspace(1, 9, 8, dtype=np.float32), rtol=1e-6)


@pytest.mark.parametrize("bad", ["tpu0", "cpu", "gpu-1", "", "cuda:0", "cpu0:", "cpu0:x",
                                 "cpux:", "multithread", "multithread:2", "multithread0:1",
                                 "cpu :0", " cpu0", "cpu0\n", "multithread:default:"])
def test_unknown_device_names_are_rejected_with_the_expected_form(bad):
    with pytest.raises(ValueError, match="unknown device.*'cpu0'"):
        dev.canonical_device(bad)
    with pytest.raises(ValueError, match="unknown device"):
        mge.tensor([1.0], device=bad)


def test_backends_upstream_names_but_this_engine_lacks_say_so():
    for name in ("rocm0", "atlas0:1", "cambricon1"):
        with pytest.raises(ValueError, match="no ROCm, Atlas or Cambricon backend"):
            dev.canonical_device(name)


@pytest.mark.skipif(mge.is_cuda_available(), reason="checks the message on machines without CUDA")
def test_gpu_without_cuda_says_what_to_install():
    with pytest.raises(RuntimeError, match="needs CUDA"):
        dev.canonical_device("gpu:1")
    with pytest.raises(RuntimeError, match="needs CUDA.*cupy"):
        mge.tensor([1.0], device="gpu0")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        mge.set_default_device("gpu0")
    assert mge.get_device_count("gpu") == 0


def test_set_default_device_applies_to_new_tensors_and_is_checked_first():
    mge.set_default_device("cpu0")
    assert mge.get_default_device() == "cpu0"
    assert mge.tensor([1.0]).device == "cpu0"
    with pytest.raises(ValueError):
        mge.set_default_device("nope")
    with pytest.raises(AssertionError):  # (upstream asserts the name: its error type too)
        mge.set_default_device("nope")
    with pytest.raises(TypeError, match="a device must be a name") as error:
        mge.set_default_device(3)
    assert isinstance(error.value, AssertionError)  # upstream 1.13: "Invalid device name 3"
    assert mge.get_default_device() == "cpu0"  # a bad name changes nothing


def test_device_count_and_array_module():
    assert mge.get_device_count("cpu") == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="device type"):
        mge.get_device_count("tpu")
    with pytest.raises(AssertionError, match="device type"):  # (upstream asserts)
        mge.get_device_count("tpu")
    assert dev.get_array_module("cpu0") is np


def test_xpu_counts_the_best_kind_there_is():
    best = "gpu" if mge.is_cuda_available() else "cpu"
    assert mge.get_device_count("xpu") == mge.get_device_count(best) >= 1
    assert dev.what_is_xpu() == ("cuda" if best == "gpu" else "cpu")
    assert mge.get_device_count(dev.DeviceType.CPU) == mge.get_device_count("cpu")
    assert mge.get_device_count("rocm") == 0
    assert not (dev.is_rocm_available() or dev.is_cambricon_available()
                or dev.is_atlas_available())


def _meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads Linux's /proc/meminfo")
def test_cpu_memory_status_is_the_machines():
    total, free = dev.get_mem_status_bytes("cpu0")
    assert total == _meminfo("MemTotal")
    assert 0 < free <= total and abs(free - _meminfo("MemAvailable")) < 256 * 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_cpu_memory_grows_with_tensors_and_peaks_reset():
    size = 48 * 2**20
    before = dev.get_allocated_memory("cpu0")
    # written: the pages are resident (on cpu0 whatever the default device: a GPU tensor is
    # not cpu0's memory, and the host memory CUDA takes around it stays when it is deleted)
    big = mge.tensor(np.ones(size // 4, np.float32), device="cpu0")
    assert big.device == "cpu0"
    during = dev.get_allocated_memory("cpu0")
    assert during - before > size * 0.8
    assert dev.get_max_allocated_memory("cpu0") >= during
    assert dev.get_reserved_memory("cpu0") >= during * 0.9
    del big
    dev.coalesce_free_memory()
    dev.reset_max_memory_stats("cpu0")
    peak = dev.get_max_reserved_memory("cpu0")
    if peak >= during:
        pytest.skip("this kernel does not let a process reset its peak (/proc/self/clear_refs)")
    assert peak < during - size * 0.5


def test_prealloc_config_is_checked():
    dev.set_prealloc_config(alignment=256, min_req=1 << 20, max_overhead=0, growth_factor=1.5)
    for bad in ({"alignment": 0}, {"min_req": -1}, {"max_overhead": -1},
                {"growth_factor": 0.5}):
        with pytest.raises(ValueError, match=next(iter(bad))) as error:
            dev.set_prealloc_config(**bad)
        assert isinstance(error.value, AssertionError)  # upstream 1.13 asserts (measured)


@pytest.mark.skipif(mge.is_cuda_available(), reason="checks the messages without CUDA")
def test_cuda_queries_without_cuda_say_so():
    for query in (dev.get_cuda_version, dev.get_cudnn_version,
                  lambda: dev.get_cuda_compute_capability(0),
                  lambda: dev.get_cuda_device_property(0)):
        with pytest.raises(RuntimeError, match="no CUDA device is usable"):
            query()
    assert dev.get_cuda_driver_version() == 0  # (upstream 1.13 measured on a CPU machine: 0)
    assert mge.get_cuda_driver_version() == 0


@pytest.mark.skipif(not mge.is_cuda_available(), reason="needs a CUDA device")
def test_cuda_queries_match_cupy():
    import cupy

    cc = cupy.cuda.Device(0).compute_capability  # e.g. "90"
    assert dev.get_cuda_compute_capability(0) == int(cc)
    prop = dev.get_cuda_device_property(0)
    assert prop.major * 10 + prop.minor == int(cc) and prop.total_memory > 0
    assert dev.get_cuda_version() == cupy.cuda.runtime.runtimeGetVersion()
    assert dev.get_cuda_driver_version() == cupy.cuda.runtime.driverGetVersion()
    total, free = dev.get_mem_status_bytes("gpu0")
    assert total == prop.total_memory and 0 < free <= total
    x = mge.tensor(np.ones(1 << 20, np.float32), device="gpu0")
    assert dev.get_allocated_memory("gpu0") >= x.size * 4
    assert dev.get_max_allocated_memory("gpu0") >= dev.get_allocated_memory("gpu0")


def test_tensorrt_is_not_part_of_this_engine():
    with pytest.raises(RuntimeError, match="TensorRT"):
        dev.get_tensorrt_version()


def test_zero_x_names_used_by_the_guide():
    from megengine.core import Parameter, Tensor, tensor
    from megengine.core.graph import get_default_device

    assert get_default_device() == mge.get_default_device()
    assert Tensor is mge.Tensor and Parameter is mge.Parameter and tensor is mge.tensor


def test_import_megengine_does_not_import_torch():
    code = ("import sys, megengine, megengine.functional, megengine.module, megengine.optimizer, "
            "megengine.autodiff, megengine.jit, megengine.data, megengine.random; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_full_sync_waits_for_queued_work():
    x = mge.tensor(np.arange(4.0, dtype=np.float32), device="xpux")
    y = x * 2
    mge._full_sync()
    mge._sync()
    np.testing.assert_array_equal(y.numpy(), [0.0, 2.0, 4.0, 6.0])


def test_upstreams_multithread_device_is_the_cpu():
    mge.set_default_device("multithread4")
    assert mge.get_default_device() == "multithread4"
    assert mge.tensor([1.0]).device == "cpu0"
    assert dev.canonical_device("multithread2:0") == "cpu0"


class _FakeCupyPool:
    """CuPy's default memory pool and the runtime calls the GPU memory queries make."""

    def __init__(self, used, total):
        self.used, self.total, self.freed = used, total, 0
        fake = self

        class Device:
            def __init__(self, index):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

        self.cuda = type("cuda", (), {"Device": Device, "runtime": type(
            "runtime", (), {"getDeviceCount": staticmethod(lambda: 1)})})
        self.get_default_memory_pool = lambda: fake

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.total

    def free_all_blocks(self):
        self.freed += 1


class _FakeTorchCuda:
    """torch.cuda's memory statistics for device 0."""

    def __init__(self):
        self.calls = []

    def _stat(name, value):
        def stat(self, index):
            assert index == 0
            self.calls.append(name)
            return value
        return stat

    memory_allocated = _stat("memory_allocated", 1000)
    memory_reserved = _stat("memory_reserved", 4000)
    max_memory_allocated = _stat("max_memory_allocated", 3000)
    max_memory_reserved = _stat("max_memory_reserved", 8000)

    def reset_peak_memory_stats(self, index):
        self.calls.append(("reset", index))

    def empty_cache(self):
        self.calls.append("empty_cache")


@pytest.fixture
def fake_gpu(monkeypatch):
    pool = _FakeCupyPool(used=10, total=40)
    monkeypatch.setattr(dev, "_cupy", lambda: pool)
    monkeypatch.setattr(dev, "is_cuda_available", lambda: True)
    monkeypatch.setattr(dev, "_torch_pool", None)
    monkeypatch.setattr(dev, "_gpu_peaks", {})
    return pool


def test_gpu_memory_queries_report_cupys_pool_by_default(fake_gpu):
    assert dev.get_gpu_allocator() == "cupy"
    assert dev.get_allocated_memory("gpu0") == 10
    assert dev.get_reserved_memory("gpu0") == 40
    fake_gpu.used = 25
    dev.get_allocated_memory("gpu0")
    fake_gpu.used = 5
    assert dev.get_max_allocated_memory("gpu0") == 25  # the largest value seen
    dev.reset_max_memory_stats("gpu0")
    assert dev.get_max_allocated_memory("gpu0") == 5
    dev.coalesce_free_memory()
    assert fake_gpu.freed == 1


def test_gpu_memory_queries_report_torchs_pool_while_it_serves_cupy(fake_gpu):
    stats = _FakeTorchCuda()
    dev._use_torch_pool(stats)
    assert dev.get_gpu_allocator() == "torch"
    # CuPy's pool keeps what was allocated before torch took over; the two are disjoint memory
    assert dev.get_allocated_memory("gpu0") == 10 + 1000
    assert dev.get_reserved_memory("gpu0") == 40 + 4000
    assert dev.get_max_allocated_memory("gpu0") == 10 + 3000
    assert dev.get_max_reserved_memory("gpu0") == 40 + 8000
    dev.reset_max_memory_stats("gpu0")
    assert ("reset", 0) in stats.calls
    dev.coalesce_free_memory()
    assert fake_gpu.freed == 1 and "empty_cache" in stats.calls


def test_exit_ends_the_process_at_once_with_the_code_after_flushing(tmp_path):
    script = ("import atexit, megengine as mge\n"
              "atexit.register(lambda: print('atexit ran'))\n"
              "print('before', flush=False)\n"
              "mge._exit(3)\n"
              "print('after')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert run.stdout == "before\n"  # flushed; nothing after it, and no atexit handler ran


def test_device_functions_are_reachable_from_the_top_level_as_upstream():
    # upstream's megengine/__init__.py does `from .device import *` (FINet calls
    # mge.coalesce_free_memory() every iteration)
    import megengine as mge
    from megengine import device

    for name in device.__all__:
        assert getattr(mge, name) is getattr(device, name), name
    mge.coalesce_free_memory()
    with pytest.raises(AttributeError, match="no attribute 'not_a_device_function'"):
        mge.not_a_device_function


def test_comp_node_is_exported_as_upstream_exports_it():
    import megengine.device as device
    from megengine.core._imperative_rt import CompNode

    assert device.CompNode is CompNode  # `from megengine.device import CompNode` (upstream)
    t = mge.tensor([1.0])
    assert device.CompNode(device.get_default_device()) == t.device
    assert str(device.CompNode("xpux")) == str(mge.tensor([1.0], device="xpux").device)
    with pytest.raises(AttributeError, match="no attribute 'CompNodes'"):
        device.CompNodes


# ----- upstream's cpuN: computing nodes of their own on the one host memory -----
# (names are compared as text: a CompNode equals every name of its device)

def test_cpu_devices_are_distinct_and_a_tensor_keeps_its_own():
    x = mge.tensor([1.0, 2.0], device="cpu1")
    assert str(x.device) == "cpu1" and x.device != "cpu0"
    assert x.device.logical_name == "cpu1:0" and "device=cpu1:0" in repr(x)
    assert str((x + 1).device) == "cpu1"  # a Python number takes the device of the tensor it meets
    assert str(F.zeros((2,), device="cpu1").device) == "cpu1"
    assert str(mge.tensor([1.0], device="cpux").device) == "cpu0"
    if not mge.is_cuda_available():  # "xpuN" is "cpuN" without a GPU
        assert dev.canonical_device("xpu1") == "cpu1"
        assert str(mge.tensor([1.0], device="xpu1").device) == "cpu1"


def test_an_op_refuses_tensors_of_two_cpu_devices_and_copy_moves_them():
    a = mge.tensor([1.0, 2.0], device="cpu0")
    b = mge.tensor([3.0, 4.0], device="cpu1")
    with pytest.raises(ValueError, match=r"different devices \(cpu0 and cpu1\)"):
        a + b
    with pytest.raises(ValueError, match="different devices"):
        F.concat([a, b])
    moved = F.copy(a, "cpu1")
    assert str(moved.device) == "cpu1" and str(a.device) == "cpu0"
    np.testing.assert_array_equal((moved + b).numpy(), [4.0, 6.0])
    assert str(a.to("cpu1").device) == "cpu1"


def test_a_gradient_goes_back_to_the_device_of_its_tensor():
    a = mge.Parameter([1.0, 2.0], device="cpu0")
    b = mge.Parameter([3.0, 4.0], device="cpu1")
    gm = GradManager().attach([a, b])
    with gm:
        y = F.concat([a, b], device="cpu1") * mge.tensor([1.0, 2.0, 3.0, 4.0], device="cpu1")
        assert str(y.device) == "cpu1"
        gm.backward(y.sum())
    assert str(a.grad.device) == "cpu0" and str(b.grad.device) == "cpu1"
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(b.grad.numpy(), [3.0, 4.0])
    a.grad = b.grad = None
    with gm:
        y = F.stack([a, b], device="cpu0")
        assert str(y.device) == "cpu0"
        gm.backward((y * mge.tensor([[1.0, 2.0], [3.0, 4.0]], device="cpu0")).sum())
    assert str(a.grad.device) == "cpu0" and str(b.grad.device) == "cpu1"
    np.testing.assert_array_equal(b.grad.numpy(), [3.0, 4.0])
