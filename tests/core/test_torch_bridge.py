"""Tests for megengine/core/torch_bridge.py: zero-copy views between numpy arrays and torch tensors."""
import gc
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from megengine.core import torch_bridge as bridge  # noqa: E402
from devices import address, requires_torch_cuda  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

DTYPES = [
    (np.float16, torch.float16), (np.float32, torch.float32), (np.float64, torch.float64),
    (np.int8, torch.int8), (np.int16, torch.int16), (np.int32, torch.int32), (np.int64, torch.int64),
    (np.uint8, torch.uint8), (np.bool_, torch.bool),
]


@pytest.fixture(scope="module", autouse=True)
def _extension():
    bridge.load_extension()  # compiles once per torch version (outside any test's timing)


def element_strides(a):
    return tuple(s // a.itemsize for s in a.strides)


def contiguous_strides(shape):
    return torch.empty(shape).stride()


def torch_view_strides(a):
    """numpy's strides in elements, except size-1 dims, which get what a contiguous tensor would have."""
    strides, inner = [], 1
    for n, s in reversed(list(zip(a.shape, element_strides(a)))):
        strides.insert(0, inner if n == 1 else s)
        inner = strides[0] * max(n, 1)
    return tuple(strides)


# ---------------------------------------------------------------------------------------------------
# to_torch


def test_to_torch_shares_memory_both_ways():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = bridge.to_torch(a)
    assert t.data_ptr() == address(a)
    assert t.shape == (3, 4) and t.dtype == torch.float32 and t.stride() == (4, 1)
    a[1, 2] = -1.0
    assert t[1, 2].item() == -1.0
    t[2, 3] = 42.0
    assert a[2, 3] == 42.0
    t.add_(1)  # an in-place torch kernel, too
    expected = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected[1, 2], expected[2, 3] = -1, 42
    np.testing.assert_array_equal(a, expected + 1)


@pytest.mark.parametrize("view", [
    lambda x: x.T,                       # transposed
    lambda x: x[::2, 1::3],              # sliced with steps
    lambda x: x[:, 1:4],                 # offset view
    lambda x: x.reshape(6, 4, 1)[:, ::2],  # trailing size-1 dim
])
def test_to_torch_views_strided_arrays(view):
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    a = view(base)
    t = bridge.to_torch(a)
    assert t.data_ptr() == address(a)
    assert tuple(t.shape) == a.shape
    assert t.stride() == torch_view_strides(a)
    np.testing.assert_array_equal(t.numpy(), a)
    t.mul_(-1)  # writes through the view land in the base array
    np.testing.assert_array_equal(a, -view(np.arange(24, dtype=np.float64).reshape(4, 6)))


def test_to_torch_strides_of_non_unit_dims_are_numpys():
    a = np.zeros((5, 7, 3), np.int32).transpose(2, 0, 1)[:, ::2, 1:]
    t = bridge.to_torch(a)
    assert t.stride() == element_strides(a)
    assert t.data_ptr() == address(a)


def test_to_torch_broadcast_view_has_zero_strides():
    row = np.arange(4, dtype=np.float32)
    a = np.broadcast_to(row, (3, 4))  # read-only, stride 0 on dim 0
    t = bridge.to_torch(a)
    assert t.stride() == (0, 1)
    assert t.data_ptr() == address(row)
    np.testing.assert_array_equal(t.numpy(), a)
    row[0] = 9  # read-only views are still views
    assert (t[:, 0] == 9).all()


def test_to_torch_zero_dim_and_empty():
    a = np.array(3.5, np.float32)
    t = bridge.to_torch(a)
    assert t.shape == () and t.item() == 3.5 and t.data_ptr() == address(a)
    e = np.zeros((0, 3, 2), np.float32)[:, ::2]
    te = bridge.to_torch(e)
    assert tuple(te.shape) == (0, 2, 2)
    assert te.stride() == contiguous_strides((0, 2, 2))


@pytest.mark.parametrize("scalar", [np.float32(2.5), np.float64(-1.25), np.int64(7), np.bool_(True)])
def test_to_torch_numpy_scalar_is_a_0d_tensor(scalar):
    """numpy's arithmetic on 0-d arrays returns scalars (a gradient of a 0-d output can be one)."""
    t = bridge.to_torch(scalar)
    assert t.shape == () and t.item() == scalar.item()
    assert t.dtype == torch.from_numpy(np.asarray(scalar)).dtype


def test_to_torch_negative_strides_make_a_copy():
    base = np.arange(6, dtype=np.float32)
    a = base[::-1]
    t = bridge.to_torch(a)
    np.testing.assert_array_equal(t.numpy(), a)
    assert t.is_contiguous()
    t[0] = 100  # the one documented copy: writes do not reach the array
    assert base[5] == 5
    # a negative stride on a size-1 dimension is meaningless: still a view
    b = np.arange(6, dtype=np.float32).reshape(1, 6)[::-1]
    assert bridge.to_torch(b).data_ptr() == address(b)


def test_size_one_strides_are_normalised():
    x = np.random.rand(4, 3, 5, 6).astype(np.float32)
    a = x[:, [1]]  # fancy indexing: numpy leaves stride 480 bytes on the size-1 channel dim
    assert a.strides[1] != a.strides[0]  # the odd layout the bridge must hide from torch
    t = bridge.to_torch(a)
    assert t.data_ptr() == address(a)
    assert t.stride() == contiguous_strides(a.shape)
    assert t.is_contiguous()
    # torch copies an input's strides into outputs: with numpy's odd stride they would carry it on
    assert (t + 1).stride() == contiguous_strides(a.shape)
    assert torch.empty_like(t).stride() == contiguous_strides(a.shape)
    weight = torch.randn(2, 1, 3, 3)
    out = torch.nn.functional.conv2d(t, weight)
    assert out.is_contiguous()
    out.view(-1, 2)  # what user code does with the result
    expected = torch.nn.functional.conv2d(torch.from_numpy(np.ascontiguousarray(a)), weight)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6)


def test_to_torch_read_only_array_is_viewed():
    a = np.arange(4, dtype=np.int64)
    a.setflags(write=False)
    t = bridge.to_torch(a)
    assert t.data_ptr() == address(a)
    assert t.tolist() == [0, 1, 2, 3]


def test_to_torch_rejects_what_it_cannot_view():
    with pytest.raises(TypeError, match="numpy.ndarray"):
        bridge.to_torch([1.0, 2.0])
    with pytest.raises(TypeError, match="complex64.*not supported"):
        bridge.to_torch(np.zeros(3, np.complex64))
    with pytest.raises(TypeError, match="uint16.*not supported"):
        bridge.to_torch(np.zeros(3, np.uint16))
    with pytest.raises(TypeError, match="big-endian"):
        bridge.to_torch(np.zeros(3, ">f4"))
    misaligned = np.frombuffer(bytearray(17), np.float32, count=4, offset=1)
    assert not misaligned.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        bridge.to_torch(misaligned)


class FakeCudaArray:
    """What a CuPy array exposes, over host memory: enough to check the metadata path without a GPU."""

    def __init__(self, host):
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": host.shape, "typestr": host.dtype.str, "data": (address(host), False),
            "strides": host.strides, "version": 3, "stream": 1,
        }

    def copy(self):
        return FakeCudaArray(self.host.copy())


def test_cuda_array_interface_is_read_like_numpy():
    # only metadata: the CUDA tensor over host memory is never computed with or read
    ext = bridge.load_extension()
    fake = FakeCudaArray(np.zeros((4, 3, 5, 6), np.float32)[:, [1]])
    owner = weakref.ref(fake)
    t = ext.cuda_to_torch(fake, fake.__cuda_array_interface__, 0)
    assert t.device == torch.device("cuda", 0) and t.dtype == torch.float32
    assert t.data_ptr() == address(fake.host)
    assert tuple(t.shape) == (4, 1, 5, 6) and t.stride() == contiguous_strides((4, 1, 5, 6))
    del fake
    gc.collect()
    assert owner() is not None
    del t
    gc.collect()
    assert owner() is None
    flipped = FakeCudaArray(np.zeros((3, 4), np.int64)[::-1])  # negative stride: views a copy
    t = ext.cuda_to_torch(flipped, flipped.__cuda_array_interface__, 0)
    assert t.stride() == (4, 1) and t.data_ptr() != address(flipped.host)
    contiguous = FakeCudaArray(np.zeros((2, 3), np.uint8))
    contiguous.__cuda_array_interface__["strides"] = None  # None means C-contiguous
    assert ext.cuda_to_torch(contiguous, contiguous.__cuda_array_interface__, 0).stride() == (3, 1)
    with pytest.raises(TypeError, match="'<c8' is not supported"):
        wrong = FakeCudaArray(np.zeros(2, np.complex64))
        ext.cuda_to_torch(wrong, wrong.__cuda_array_interface__, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch has CUDA here")
def test_cuda_array_without_cuda_torch_says_so():
    with pytest.raises(RuntimeError, match="no usable CUDA"):
        bridge.to_torch(FakeCudaArray(np.zeros(2, np.float32)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch and a GPU")
def test_cupy_arrays_round_trip_on_the_gpu():
    cupy = pytest.importorskip("cupy")
    a = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    t = bridge.to_torch(a)
    assert t.is_cuda and t.device.index == a.device.id
    assert t.data_ptr() == a.data.ptr and t.stride() == (4, 1)
    t.add_(1)
    torch.cuda.synchronize()
    assert float(a[2, 3]) == 12
    b = bridge.from_torch(t.t())
    assert isinstance(b, cupy.ndarray) and b.data.ptr == t.data_ptr() and b.shape == (4, 3)
    with pytest.raises(TypeError, match="bfloat16"):
        bridge.from_torch(torch.zeros(2, dtype=torch.bfloat16, device="cuda"))
    # stream ordering: CuPy fills an array on its own stream, torch reads it on torch's stream
    with cupy.cuda.Stream(non_blocking=True):
        big = cupy.zeros(1 << 24, cupy.float32)
        big += 1
        tb = bridge.to_torch(big)
    assert tb.sum().item() == 1 << 24


def test_extent_of_a_strided_cuda_view_in_bytes():
    # what UnownedMemory is told the view reaches: hand-computed cases
    assert bridge._extent_bytes((3, 4), (4, 1), 4) == 48  # contiguous
    assert bridge._extent_bytes((4, 3), (1, 4), 4) == 48  # transposed
    assert bridge._extent_bytes((2, 3), (12, 2), 8) == (12 + 4 + 1) * 8  # every other column
    assert bridge._extent_bytes((5,), (0,), 2) == 2  # expanded: one element
    assert bridge._extent_bytes((0, 7), (7, 1), 4) == 0 and bridge._extent_bytes((), (), 4) == 4


@requires_torch_cuda
def test_from_torch_of_a_cuda_tensor_is_a_cupy_view_that_keeps_the_storage():
    import cupy

    t = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4).t()
    a = bridge.from_torch(t)
    assert isinstance(a, cupy.ndarray) and a.data.ptr == t.data_ptr() and a.device.id == t.device.index
    assert a.shape == (4, 3) and a.strides == (4, 16) and a.dtype == np.float32
    expected = t.cpu().numpy()
    del t
    torch.cuda.empty_cache()  # the storage must survive: the array owns a reference to it
    np.testing.assert_array_equal(a.get(), expected)
    for dtype in (torch.float16, torch.int64, torch.bool, torch.uint8):
        assert bridge.from_torch(torch.zeros(2, dtype=dtype, device="cuda")).dtype == \
            np.dtype(str(dtype).replace("torch.", ""))
    assert bridge.from_torch(torch.zeros(0, 3, device="cuda")).shape == (0, 3)


@requires_torch_cuda
def test_views_keep_stream_order_with_both_frameworks_on_side_streams():
    import cupy

    n = 1 << 24
    torch_side, cupy_side = torch.cuda.Stream(), cupy.cuda.Stream(non_blocking=True)
    # torch writes on its side stream; CuPy reads the view on its own side stream
    with torch.cuda.stream(torch_side):
        t = torch.zeros(n, device="cuda")
        for _ in range(4):
            t.add_(1)
        with cupy_side:
            total = bridge.from_torch(t).sum()
    cupy_side.synchronize()
    assert float(total.get()) == 4 * n
    # CuPy writes on its side stream; torch reads the view on its side stream
    with cupy_side:
        c = cupy.zeros(n, cupy.float32)
        for _ in range(3):
            c += 1
        with torch.cuda.stream(torch_side):
            s = bridge.to_torch(c).sum()
    torch_side.synchronize()
    assert s.item() == 3 * n


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.device_count() >= 2
                         and importlib.util.find_spec("cupy") is not None),
                    reason="needs two GPUs, a CUDA build of torch and CuPy")
def test_views_honour_the_device_index():
    import cupy

    t = torch.ones(3, device="cuda:1")
    a = bridge.from_torch(t)
    assert a.device.id == 1 and a.data.ptr == t.data_ptr()
    with cupy.cuda.Device(1):
        c = cupy.full(3, 2.0, cupy.float32)
    back = bridge.to_torch(c)
    assert back.device == torch.device("cuda", 1) and back.data_ptr() == c.data.ptr


# ---------------------------------------------------------------------------------------------------
# from_torch


def test_from_torch_shares_memory_both_ways():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = bridge.from_torch(t)
    assert isinstance(a, np.ndarray)
    assert address(a) == t.data_ptr()
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.flags.writeable
    t[0, 1] = -5
    assert a[0, 1] == -5
    a[2, 2] = 77
    assert t[2, 2].item() == 77


@pytest.mark.parametrize("view", [
    lambda t: t.t(),
    lambda t: t[::2, 1::3],
    lambda t: t[1:, 2:],
    lambda t: t[:1].expand(5, 6),  # zero stride
    lambda t: t[2, 3],             # 0-d
    lambda t: t[:0],               # empty
])
def test_from_torch_views_strided_tensors(view):
    t = view(torch.arange(30, dtype=torch.int32).reshape(5, 6))
    a = bridge.from_torch(t)
    assert a.shape == tuple(t.shape)
    if t.numel():  # (numpy 2 zeroes the strides of empty arrays; they carry no meaning)
        assert element_strides(a) == t.stride()
        assert address(a) == t.data_ptr()
    np.testing.assert_array_equal(a, t.numpy())


def test_from_torch_of_requires_grad_views_the_data():
    p = torch.nn.Parameter(torch.ones(3))
    a = bridge.from_torch(p)
    assert address(a) == p.data_ptr()
    a[1] = 4  # like an optimizer step writing the parameter
    assert p.detach()[1].item() == 4


def test_from_torch_bfloat16_says_to_cast():
    with pytest.raises(TypeError, match=r"bfloat16 has no numpy dtype.*t\.float\(\)"):
        bridge.from_torch(torch.zeros(2, dtype=torch.bfloat16))


def test_from_torch_rejects_what_it_cannot_view():
    with pytest.raises(TypeError, match=r"torch\.complex64 is not supported"):
        bridge.from_torch(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        bridge.from_torch(np.zeros(2))
    with pytest.raises(TypeError, match="strided"):
        bridge.from_torch(torch.eye(2).to_sparse())
    with pytest.raises(ValueError, match="CPU"):
        bridge.from_torch(torch.empty(2, device="meta"))


# ---------------------------------------------------------------------------------------------------
# both directions


@pytest.mark.parametrize("np_dtype, torch_dtype", DTYPES)
def test_every_dtype_round_trips(np_dtype, torch_dtype):
    a = (np.arange(-3, 9) % 5).astype(np_dtype).reshape(3, 4)
    t = bridge.to_torch(a)
    assert t.dtype == torch_dtype
    np.testing.assert_array_equal(t.numpy(), a)
    back = bridge.from_torch(t)
    assert back.dtype == np.dtype(np_dtype)
    assert address(back) == address(a)
    np.testing.assert_array_equal(back, a)


def test_numpy_owner_outlives_its_array_and_is_freed_after_both_sides():
    a = np.arange(1000, dtype=np.float64)
    owner = weakref.ref(a)
    t = bridge.to_torch(a)
    del a
    gc.collect()
    assert owner() is not None  # the tensor keeps it alive
    b = bridge.from_torch(t[10:20])  # and an array viewing the tensor keeps the tensor's storage
    del t
    gc.collect()
    np.testing.assert_array_equal(b, np.arange(10, 20, dtype=np.float64))
    assert owner() is not None
    del b
    gc.collect()
    assert owner() is None  # no reference leaked on either side


def test_torch_storage_outlives_the_tensor():
    t = torch.arange(100_000, dtype=torch.float32)
    a = bridge.from_torch(t)
    del t
    gc.collect()
    junk = [torch.full((100_000,), -1.0) for _ in range(8)]  # would reuse freed memory
    np.testing.assert_array_equal(a[:5], [0, 1, 2, 3, 4])
    assert a[-1] == 99_999
    del junk


def test_tensor_released_on_another_thread():
    # torch may free the storage without the GIL (autograd / DataLoader threads)
    import threading

    a = np.ones(8, np.float32)
    owner = weakref.ref(a)
    box = [bridge.to_torch(a)]
    del a
    thread = threading.Thread(target=box.clear)
    thread.start()
    thread.join()
    gc.collect()
    assert owner() is None


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_round_trips_do_not_leak():
    def round_trips(n):
        for _ in range(n):
            a = np.empty(1024, np.float32)  # 4 KiB: a leaked owner would show quickly
            t = bridge.to_torch(a)
            b = bridge.from_torch(t)
            bridge.to_torch(bridge.from_torch(torch.empty(1024)))
            del a, t, b

    round_trips(2_000)  # warm up allocator pools
    gc.collect()
    before = _rss_bytes()
    round_trips(100_000)
    gc.collect()
    assert _rss_bytes() - before < 16 * 2**20


# ---------------------------------------------------------------------------------------------------
# building


def test_cache_dir_is_keyed_and_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("MGE_TORCH_EXT_DIR", str(tmp_path))
    directory = bridge.cache_dir()
    assert directory.parent == tmp_path
    assert directory.name.startswith(f"torch-{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-")
    monkeypatch.delenv("MGE_TORCH_EXT_DIR")
    assert bridge.cache_dir().name == directory.name


def test_cache_dir_changes_with_the_source(monkeypatch, tmp_path):
    # a new function in csrc (hand_over) must never be looked up in a library built from older
    # sources: the directory name carries a hash of every source file
    edited = tmp_path / "csrc"
    edited.mkdir()
    for name in bridge._SOURCES:
        text = (bridge._source_dir() / name).read_text()
        (edited / name).write_text(text + "\n// edited\n")
    before = bridge.cache_dir()
    monkeypatch.setattr(bridge, "_source_dir", lambda: edited)
    assert bridge.cache_dir() != before
    assert bridge.cache_dir().parent == before.parent


def test_loaded_extension_is_cached():
    assert bridge.load_extension() is bridge.load_extension()
    stats = bridge.load_stats()
    assert stats["directory"] == str(bridge.cache_dir())


def test_missing_toolchain_is_named(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(bridge.shutil, "which", lambda name: None)
    monkeypatch.setattr(bridge.sys, "executable", "/nonexistent/python")
    with pytest.raises(RuntimeError, match="pip install ninja"):
        bridge._check_toolchain()
    monkeypatch.setattr(bridge.shutil, "which", lambda name: "/usr/bin/ninja" if name == "ninja" else None)
    with pytest.raises(RuntimeError, match="install g\\+\\+"):
        bridge._check_toolchain()
    monkeypatch.setenv("CXX", "clang++-99 -O2")
    with pytest.raises(RuntimeError, match="clang\\+\\+-99"):
        bridge._check_toolchain()


# ----- the build cache: damaged libraries, locks, settings (fake builds; one real one) -----

@pytest.fixture
def built_library():
    """The bytes of this process's working library (built by the module fixture)."""
    return bridge.library_path(bridge.cache_dir()).read_bytes()


class _FakeModule:
    def set_cuda_handlers(self, *handlers):
        pass


@pytest.fixture
def fake_cache(monkeypatch, tmp_path, built_library):
    """An empty cache root in tmp_path whose builds copy the working library (no compiler) and
    whose imports record which bytes they were given (a damaged file would kill the process)."""
    monkeypatch.setenv("MGE_TORCH_EXT_DIR", str(tmp_path))
    monkeypatch.setattr(bridge, "_load_stats", {})
    events = {"built": 0, "imported": []}

    def fake_load(name, sources, build_directory, verbose, **kwargs):
        assert not (Path(build_directory) / "lock").exists(), "torch's stale lock must be gone"
        events["built"] += 1
        events["verbose"] = verbose
        bridge.library_path(build_directory).write_bytes(built_library)
        return _FakeModule()

    def fake_import(path):
        events["imported"].append(Path(path).read_bytes() == built_library)
        return _FakeModule()

    from torch.utils import cpp_extension
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(bridge, "_import_library", fake_import)
    monkeypatch.setattr(bridge, "_check_toolchain", lambda: None)
    return events


def _damage(library, how):
    data = bytearray(library.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "4 KB zeroed":
        data[4096:8192] = bytes(4096)
    library.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "4 KB zeroed", "no stamp"])
def test_a_damaged_cached_library_is_rebuilt_never_imported(fake_cache, how):
    directory = bridge.cache_dir()
    bridge._build_or_load(verbose=False)  # first build: writes the library and its stamp
    assert fake_cache["built"] == 1 and bridge._stamp_ok(directory)
    bridge._build_or_load(verbose=False)  # a valid cache is imported, not rebuilt
    assert fake_cache["built"] == 1 and fake_cache["imported"] == [True]
    if how == "no stamp":  # e.g. a build killed between linking and stamping
        (directory / "stamp.json").unlink()
    else:
        _damage(bridge.library_path(directory), how)
    assert not bridge._stamp_ok(directory)
    bridge._build_or_load(verbose=False)
    assert fake_cache["built"] == 2, "the damaged library was rebuilt"
    assert fake_cache["imported"] == [True], "and never handed to the dynamic loader"
    assert bridge._stamp_ok(directory) and bridge.load_stats()["compiled"] is True


def test_a_leftover_torch_lock_is_removed_not_waited_on(fake_cache):
    directory = bridge.cache_dir()
    directory.mkdir(parents=True)
    (directory / "lock").write_text("")  # torch's FileBaton, left by a killed build
    start = time.monotonic()
    bridge._build_or_load(verbose=False)  # fake_load asserts the lock is gone before building
    assert fake_cache["built"] == 1 and time.monotonic() - start < 5


def _hold_build_lock(directory):
    directory.mkdir(parents=True, exist_ok=True)
    holder = open(directory / "build.lock", "a+b")
    assert bridge._try_lock(holder)
    holder.write(b"pid 4242 on testhost\n")
    holder.flush()
    return holder


def test_the_wait_for_a_live_builder_is_bounded_and_names_the_lock(fake_cache, monkeypatch):
    directory = bridge.cache_dir()
    holder = _hold_build_lock(directory)
    monkeypatch.setenv("MGE_TORCH_EXT_LOCK_TIMEOUT", "0.5")
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError) as info:
            bridge._build_or_load(verbose=False)
    finally:
        holder.close()
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert str(directory / "build.lock") in message and "pid 4242" in message
    assert "MGE_TORCH_EXT_LOCK_TIMEOUT" in message and fake_cache["built"] == 0
    bridge._build_or_load(verbose=False)  # the holder is gone (its lock died with it): build
    assert fake_cache["built"] == 1


def test_a_waiting_process_loads_what_the_builder_finished(fake_cache, built_library):
    directory = bridge.cache_dir()
    holder = _hold_build_lock(directory)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(got=bridge._build_locked(directory, False)))
    waiter.start()
    time.sleep(0.3)
    bridge.library_path(directory).write_bytes(built_library)  # the other builder finishes...
    bridge._write_stamp(directory)
    waiter.join(10)  # ...and keeps its lock: the waiter re-checks the stamp instead of waiting on
    holder.close()
    module, compiled, waited = result["got"]
    assert compiled is False and waited >= 0.2, "it waited, it did not compile"
    assert fake_cache["built"] == 0 and fake_cache["imported"] == [True]


def test_verbose_switch_and_notices_through_logging(fake_cache, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="megengine.core.torch_bridge")
    bridge._build_or_load(verbose=True)
    assert fake_cache["verbose"] is True
    messages = [r.getMessage() for r in caplog.records if r.name == "megengine.core.torch_bridge"]
    assert any(m.startswith("compiling the PyTorch bridge operator") for m in messages)
    assert any(re.fullmatch(r"built the PyTorch bridge operator in \d+\.\d s", m) for m in messages)
    monkeypatch.setenv("MGE_TORCH_EXT_VERBOSE", "1")
    bridge.build(force=True)  # the environment switch, and an ahead-of-time rebuild
    assert fake_cache["verbose"] is True and fake_cache["built"] == 2
    monkeypatch.setenv("MGE_TORCH_EXT_VERBOSE", "0")
    bridge.build(force=True)
    assert fake_cache["verbose"] is False


def test_cache_root_follows_torch_extensions_dir_unless_mge_dir_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("MGE_TORCH_EXT_DIR", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_ext"))
    assert bridge.cache_dir().parent == tmp_path / "torch_ext" / "megengine_torch_bridge"
    monkeypatch.setenv("MGE_TORCH_EXT_DIR", str(tmp_path / "mge"))
    assert bridge.cache_dir().parent == tmp_path / "mge"


@pytest.mark.slow
def test_build_load_and_heal_in_fresh_processes(tmp_path):
    # End to end, no fakes, one cold compile: a fresh cache root is compiled once with two notices,
    # then loaded silently; then its library is damaged (4 KB zeroed: SIGBUS/SIGSEGV if it were
    # dlopen'ed) and torch's lock is left behind (which used to make every process wait forever):
    # the next process rebuilds (ninja relinks) and works.
    env = dict(os.environ, MGE_TORCH_EXT_DIR=str(tmp_path), MGE_TORCH_EXT_LOCK_TIMEOUT="60")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    script = ("from megengine.core import torch_bridge as b; import numpy as np; "
              "assert b.to_torch(np.arange(3.0)).tolist() == [0.0, 1.0, 2.0]; "
              "print(b.load_stats()['compiled'])")

    def run():
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip(), done.stderr

    compiled, err = run()
    assert compiled == "True"
    assert err.count("compiling the PyTorch bridge operator") == 1
    assert len(re.findall(r"built the PyTorch bridge operator in \d+\.\d s", err)) == 1
    compiled, err = run()
    assert compiled == "False" and err == ""
    directory = tmp_path / bridge.cache_dir().name
    _damage(bridge.library_path(directory), "4 KB zeroed")
    (directory / "lock").write_text("")
    compiled, err = run()
    assert compiled == "True" and "built the PyTorch bridge operator in" in err
    assert "removing a stale torch build lock" in err

def test_command_line_build_and_info(fake_cache, capsys):
    directory = bridge.cache_dir()
    assert bridge.main(["info"]) == 0
    assert capsys.readouterr().out.strip() == f"{directory}: not built (the first use compiles it)"
    assert bridge.main(["build"]) == 0 and fake_cache["built"] == 1
    assert capsys.readouterr().out.startswith(f"{bridge.library_path(directory)} ready (")
    assert bridge.main(["build"]) == 0 and fake_cache["built"] == 1  # valid: nothing to do
    assert bridge.main(["build", "--force", "--verbose"]) == 0 and fake_cache["built"] == 2
    assert fake_cache["verbose"] is True
    capsys.readouterr()
    assert bridge.main(["info"]) == 0
    assert capsys.readouterr().out.strip() == f"{directory}: built"
    assert bridge.main(["clean"]) == 0 and not directory.exists()


# ----- hand_over: PyTorchModule's gradients torch -> megengine in one call -----

def _gradient_cases():
    """(grads, taken) covering every branch of the hand-over: small (one non-contiguous),
    fresh, a view of a fresh base, a slice of a bigger buffer, one of the ``taken`` tensors,
    the same tensor twice, None, a float64 one, and sparse ones (nn.Embedding(sparse=True)'s,
    repeated rows uncoalesced), big and small."""
    torch.manual_seed(0)
    out_grad = torch.randn(3000)
    fresh = torch.randn(4000)
    base = torch.randn(50, 60)
    view_of_base = base.t().contiguous().view(60, 50)  # a view; its base is the copy alone
    transposed_product = torch.randn(70, 40).mm(torch.randn(40, 50)).t()
    big = torch.randn(10000)
    rows = torch.tensor([[3, 0, 3, 7]])
    sparse = torch.sparse_coo_tensor(rows, torch.randn(4, 300), (10, 300), check_invariants=True)
    small_sparse = torch.sparse_coo_tensor(rows, torch.randn(4, 2), (10, 2), check_invariants=True)
    grads = (torch.randn(6), torch.randn(8, 5).t(), fresh, view_of_base, big[:5000],
             out_grad, fresh, None, torch.randn(2500, dtype=torch.float64),
             transposed_product.contiguous().view(-1), sparse, small_sparse)
    return grads, (out_grad, torch.zeros(3))


def test_cpp_hand_over_equals_the_python_hand_over():
    """The C++ hand-over (csrc/torch_bridge.cpp) against the Python loop it replaced on the CPU
    (still the CUDA path): the same values, the same arrays declared fresh, and no two results
    or a result and a ``taken`` tensor on one memory."""
    from megengine.core import dispatch
    from megengine.module.pytorch.module import _FRESH_MIN_NUMEL, _TorchCall

    ext = bridge.load_extension()
    outcomes = []
    for run in ("c++", "python"):
        grads, taken = _gradient_cases()
        slots = [2 * k + 1 for k in range(len(grads))]  # results land at their slots only
        result = [None] * (2 * len(grads) + 1)
        dispatch.forget_fresh_gradients()
        if run == "c++":
            ext.hand_over(grads, slots, result, taken, _FRESH_MIN_NUMEL,
                          dispatch.fresh_registry())
        else:
            _TorchCall._hand_over(ext, grads, slots, result, taken[:1], taken[1:],
                                  _FRESH_MIN_NUMEL)
        declared = [a is not None and dispatch.fresh_owner(a) is not None for a in result]
        dispatch.forget_fresh_gradients()
        assert all(result[2 * k] is None for k in range(len(grads) + 1))
        arrays = [a for a in result if a is not None]
        for k, g in enumerate(grads):
            a = result[2 * k + 1]
            if g is None:
                assert a is None
                continue
            dense = g.to_dense() if g.is_sparse else g  # (sums the repeated rows)
            assert a.dtype == dense.numpy().dtype and a.shape == tuple(g.shape)
            np.testing.assert_array_equal(a, dense.numpy())
            assert not any(np.shares_memory(a, t.numpy()) for t in taken)
        for i, a in enumerate(arrays):
            assert not any(np.shares_memory(a, b) for b in arrays[i + 1:])
        outcomes.append(declared)
    assert outcomes[0] == outcomes[1]
    # kept without a copy and declared fresh: the fresh tensor (the first time), the two views
    # whose base owns a storage of their size alone, and the clones made for the taken tensor
    # and for the repeated one, and the big sparse one made dense; copied (small) or shared (a
    # slice of a bigger buffer): the rest
    assert outcomes[0][1::2] == [False, False, True, True, False, True, True,
                                              False, True, True, True, False]

def test_hand_over_without_copies_keeps_gradients_apart():
    """min_numel 0 (PyTorchModule's CUDA setting, where a copy is a kernel launch): small
    gradients pass the same storage checks as large ones instead of being copied. Every result
    is a view of its torch gradient or of a clone torch made for it (no engine-side copy), its
    values are the gradient's, and still no two results, nor a result and a ``taken`` tensor,
    share memory; the small gradients that own their storage are declared fresh."""
    from megengine.core import dispatch
    from megengine.module.pytorch.module import _TorchCall

    ext = bridge.load_extension()
    grads, taken = _gradient_cases()
    slots = list(range(len(grads)))
    result = [None] * len(grads)
    dispatch.forget_fresh_gradients()
    _TorchCall._hand_over(ext, grads, slots, result, taken[:1], taken[1:], 0)
    declared = [a is not None and dispatch.fresh_owner(a) is not None for a in result]
    dispatch.forget_fresh_gradients()
    for k, g in enumerate(grads):
        a = result[k]
        if g is None:
            assert a is None
            continue
        dense = g.to_dense() if g.is_sparse else g
        np.testing.assert_array_equal(a, dense.numpy())
        assert a.base is not None and not a.flags.owndata, f"gradient {k} was copied"
        assert not any(np.shares_memory(a, t.numpy()) for t in taken)
    arrays = [a for a in result if a is not None]
    for i, a in enumerate(arrays):
        assert not any(np.shares_memory(a, b) for b in arrays[i + 1:])
    # the first small one (fresh, contiguous) is now kept and declared fresh; the small
    # transposed one is kept as a view, not declared (it is not contiguous)
    assert declared[0] is True and declared[1] is False
    assert np.shares_memory(result[0], grads[0].numpy())



def test_cpp_hand_over_refuses_bad_arguments():

    ext = bridge.load_extension()
    declare = {}  # (the registry of fresh gradients)
    with pytest.raises(TypeError, match="hand_over"):
        ext.hand_over((torch.zeros(3),), (0,), [None], (), 2048, declare)  # slots: not a list
    with pytest.raises(TypeError, match="fresh: dict"):  # (the former callable)
        ext.hand_over((torch.zeros(3),), [0], [None], (), 2048, lambda a: a)
    with pytest.raises(ValueError, match="one slot per gradient"):
        ext.hand_over((torch.zeros(3),), [0, 1], [None], (), 2048, declare)
    with pytest.raises(IndexError, match="slot out of range"):
        ext.hand_over((torch.zeros(3),), [5], [None], (), 2048, declare)
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        ext.hand_over((np.zeros(3),), [0], [None], (), 2048, declare)
