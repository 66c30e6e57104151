"""Tests of megengine/core/torch_bridge.py's one GPU memory pool: CuPy allocating through torch's caching allocator.

Without a GPU, fakes stand for CuPy and torch, each behaving as its documentation says
(``cupy.cuda.memory.PythonFunctionAllocator`` calls ``malloc_func(size, device_id)`` when memory
is made and ``free_func(ptr, device_id)`` once when it dies; torch's raw allocation takes a size
and a stream). The tests at the end need a GPU with CuPy and CUDA torch, and skip without them.
"""
import gc
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import megengine as mge  # noqa: E402
from megengine import device as device_mod  # noqa: E402
from megengine.core import torch_bridge as bridge  # noqa: E402

from devices import requires_torch_cuda  # noqa: E402


class FakeCupy:
    """CuPy's allocator API as documented: a default pool whose ``malloc`` is the allocator
    until ``cuda.set_allocator`` replaces it; the current device and stream."""

    def __init__(self, stream_ptr=77, device=0):
        self.log = []
        self.device, self.stream_ptr = device, stream_ptr
        fake = self

        class MemoryPool:
            def malloc(self, size):
                fake.log.append(("pool", size))

            def free_all_blocks(self):
                fake.log.append("free_all_blocks")

        self._pool = MemoryPool()
        self.allocator = self._pool.malloc  # a bound method: __self__ is the pool

        class PythonFunctionAllocator:
            def __init__(self, malloc_func, free_func):
                self.malloc_func, self.free_func = malloc_func, free_func

            def malloc(self, size):
                return FakeMemory(size, self.malloc_func, self.free_func, fake.device)

        def set_allocator(allocator):
            if fake.inside_using_allocator:
                raise ValueError("Can't change the global allocator inside `using_allocator`")
            fake.log.append("set_allocator")
            fake.allocator = allocator

        self.inside_using_allocator = False
        self.cuda = types.SimpleNamespace(
            get_allocator=lambda: fake.allocator, set_allocator=set_allocator,
            get_current_stream=lambda: types.SimpleNamespace(ptr=fake.stream_ptr),
            memory=types.SimpleNamespace(PythonFunctionAllocator=PythonFunctionAllocator))

    def get_default_memory_pool(self):
        return self._pool


class FakeMemory:
    """What CuPy's PythonFunctionAllocatorMemory does: malloc when made (size > 0), free once
    in its destructor."""

    def __init__(self, size, malloc, free, device_id):
        self.free_func, self.device_id = free, device_id
        self.ptr = malloc(size, device_id) if size > 0 else 0

    def __del__(self):
        if self.ptr:
            self.free_func(self.ptr, self.device_id)


class FakeTorch:
    """torch's caching allocator entry points: raw alloc on the current device, or on a named one."""

    def __init__(self, devices=1):
        self.calls = []
        self.next_ptr = 4096
        fake = self

        def raw_alloc(size, stream):
            fake.calls.append(("raw_alloc", size, stream))
            fake.next_ptr += 512
            return fake.next_ptr

        def caching_allocator_alloc(size, device, stream):
            fake.calls.append(("alloc_on", size, device, stream))
            fake.next_ptr += 512
            return fake.next_ptr

        self._C = types.SimpleNamespace(
            _cuda_cudaCachingAllocator_raw_alloc=raw_alloc,
            _cuda_cudaCachingAllocator_raw_delete=lambda p: fake.calls.append(("delete", p)))
        self.cuda = types.SimpleNamespace(device_count=lambda: devices,
                                          caching_allocator_alloc=caching_allocator_alloc,
                                          caching_allocator_delete=None,
                                          init=lambda: fake.calls.append(("init",)))


@pytest.fixture
def undecided(monkeypatch):
    """A process where the bridge has not chosen the GPU allocator yet (restored afterwards)."""
    monkeypatch.setattr(bridge, "_pool_decided", False)
    monkeypatch.setattr(device_mod, "_torch_pool", None)
    monkeypatch.delenv("MGE_GPU_ALLOCATOR", raising=False)


def test_cupy_allocates_from_torch_on_cupys_stream_and_frees_once(undecided):
    cupy, fake_torch = FakeCupy(stream_ptr=77), FakeTorch()
    assert bridge._decide_gpu_allocator(cupy, fake_torch) is True
    assert device_mod.get_gpu_allocator() == "torch"
    assert device_mod._torch_pool is fake_torch.cuda  # the memory queries now ask torch
    assert cupy.log == ["set_allocator", "free_all_blocks"]  # CuPy's cached blocks are let go
    # torch's CUDA state (its allocator's per-device tables) is set up before CuPy can call it
    assert fake_torch.calls == [("init",)]
    del fake_torch.calls[:]
    memory = cupy.allocator(1000)  # what CuPy does for a new array
    assert fake_torch.calls == [("raw_alloc", 1000, 77)]  # CuPy's current stream, not torch's
    ptr = memory.ptr
    cupy.stream_ptr = 5  # another stream current by the time the array dies: irrelevant
    del memory
    gc.collect()
    assert fake_torch.calls[1:] == [("delete", ptr)]
    assert cupy.allocator(0).ptr == 0 and len(fake_torch.calls) == 2  # empty: no torch call
    # decided once per process: a later crossing installs nothing more
    assert bridge._decide_gpu_allocator(cupy, fake_torch) is True
    assert cupy.log.count("set_allocator") == 1


def test_several_gpus_name_the_device_cupy_allocates_on(undecided):
    cupy, fake_torch = FakeCupy(stream_ptr=9, device=1), FakeTorch(devices=2)
    bridge._decide_gpu_allocator(cupy, fake_torch)
    keep = cupy.allocator(64)
    assert fake_torch.calls == [("init",), ("alloc_on", 64, 1, 9)]
    del keep


def test_opt_out_keeps_cupys_pool(undecided):
    cupy = FakeCupy()
    assert bridge._decide_gpu_allocator(cupy, FakeTorch(), {"MGE_GPU_ALLOCATOR": "cupy"}) is False
    assert cupy.log == [] and device_mod.get_gpu_allocator() == "cupy"


def test_a_bad_choice_names_the_variable_and_the_values(undecided):
    with pytest.raises(ValueError, match=r"MGE_GPU_ALLOCATOR='pool'.*'torch'.*'cupy'"):
        bridge._decide_gpu_allocator(FakeCupy(), FakeTorch(), {"MGE_GPU_ALLOCATOR": "pool"})


def test_an_allocator_the_application_set_is_kept(undecided):
    cupy = FakeCupy()
    cupy.allocator = lambda size: None  # e.g. managed memory, set with cupy.cuda.set_allocator
    assert bridge._decide_gpu_allocator(cupy, FakeTorch()) is False
    assert cupy.log == [] and device_mod.get_gpu_allocator() == "cupy"


def test_inside_using_allocator_the_choice_waits_for_the_next_crossing(undecided):
    cupy = FakeCupy()
    cupy.inside_using_allocator = True
    assert bridge._decide_gpu_allocator(cupy, FakeTorch()) is False
    assert bridge._pool_decided is False
    cupy.inside_using_allocator = False
    assert bridge._decide_gpu_allocator(cupy, FakeTorch()) is True


# ----- on a GPU -----

@pytest.fixture
def torch_pool():
    import os

    import cupy

    if os.environ.get("MGE_GPU_ALLOCATOR", "").strip().lower() == "cupy":
        pytest.skip("MGE_GPU_ALLOCATOR=cupy: CuPy keeps its own pool here")
    # nothing in the suite sets a CuPy allocator, so torch's must be the one in use
    assert bridge._decide_gpu_allocator(), "CuPy did not take torch's caching allocator"
    torch.cuda.synchronize()
    return cupy


@requires_torch_cuda
def test_cupy_arrays_after_a_pytorch_module_come_from_torchs_pool(torch_pool):
    from megengine.module.pytorch import PyTorchModule

    cupy = torch_pool
    m = PyTorchModule(torch.nn.Linear(4, 3), "gpu0")
    m(mge.tensor(np.ones((2, 4), np.float32), device="gpu0"))
    assert device_mod.get_gpu_allocator() == "torch"
    cupy_pool_before = cupy.get_default_memory_pool().used_bytes()
    before = torch.cuda.memory_allocated(0)
    a = cupy.empty(1 << 22, cupy.uint8)  # 4 MiB
    assert torch.cuda.memory_allocated(0) - before >= a.nbytes
    assert cupy.get_default_memory_pool().used_bytes() == cupy_pool_before  # CuPy's pool: untouched
    assert device_mod.get_allocated_memory("gpu0") >= torch.cuda.memory_allocated(0)
    del a
    assert torch.cuda.memory_allocated(0) == before  # freed back to torch, exactly once


@requires_torch_cuda
def test_a_block_freed_on_a_side_stream_is_reused_there_only(torch_pool):
    cupy = torch_pool
    side = cupy.cuda.Stream(non_blocking=True)
    with side:
        a = cupy.ones(1 << 20, cupy.float32)
        ptr = a.data.ptr
        a += 1  # still running on the side stream when freed
        del a
        b = cupy.empty(1 << 20, cupy.float32)  # same stream: torch hands the block back
        assert b.data.ptr == ptr
        del b
    c = cupy.zeros(1 << 20, cupy.float32)  # the null stream: never the side stream's block
    assert c.data.ptr != ptr
    side.synchronize()
    torch.cuda.synchronize()
    assert float(c.sum()) == 0.0
