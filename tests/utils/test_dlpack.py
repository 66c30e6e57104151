"""megengine.utils.dlpack: round trips with torch.utils.dlpack (the oracle) share memory both
ways; capsules are consumed once; bad input is named."""
import numpy as np
import pytest

import megengine as mge
from megengine.utils.dlpack import from_dlpack, to_dlpack

from devices import child_env

torch = pytest.importorskip("torch")


def cpu_tensor(a):
    return mge.tensor(a, device="cpu0")


@pytest.mark.parametrize("dtype", ["float32", "int32", "float16", "bool"])
def test_to_dlpack_into_torch_shares_memory(dtype):
    x = cpu_tensor(np.arange(6).reshape(2, 3).astype(dtype))
    t = torch.utils.dlpack.from_dlpack(to_dlpack(x))
    np.testing.assert_array_equal(t.numpy(), x.numpy())
    assert t.data_ptr() == x._data.ctypes.data  # the same bytes, not a copy
    if dtype != "bool":
        t[0, 0] = 7
        assert x.numpy()[0, 0] == 7


def test_from_torch_capsule_and_object_share_memory():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)[:, 1:]  # strided view
    for source in (torch.utils.dlpack.to_dlpack(t), t):
        x = from_dlpack(source)
        assert isinstance(x, mge.Tensor) and x.device is not None
        assert x.shape == (3, 3) and x.dtype == np.float32
        np.testing.assert_array_equal(x.numpy(), t.numpy())
        assert x._data.ctypes.data == t.data_ptr()
    t[0, 0] = -1.0
    assert x.numpy()[0, 0] == -1.0
    y = x * 2  # the engine computes on it like on any tensor
    np.testing.assert_array_equal(y.numpy(), t.numpy() * 2)


@pytest.mark.parametrize("consumer", ["from_dlpack", "asarray", "as_tensor"])
def test_a_tensor_speaks_dlpack_itself_as_upstreams(consumer):
    # upstream 1.13's Tensor has __dlpack__ / __dlpack_device__ (measured): torch takes the
    # tensor itself and shares its memory. Here torch.asarray / as_tensor of a Tensor raised
    # "len() of a 0-d tensor" before (torch walked it as a sequence).
    x = cpu_tensor(np.arange(6, dtype=np.float32).reshape(2, 3).T)  # a strided view too
    assert x.__dlpack_device__() == (1, 0)  # DLPack's kDLCPU, device 0
    t = getattr(torch, consumer)(x)
    assert t.shape == (3, 2) and t.stride() == (1, 3)
    np.testing.assert_array_equal(t.numpy(), x.numpy())
    t[0, 1] = -7.0  # one memory: the engine sees torch's write
    assert x.numpy()[0, 1] == -7.0
    b = np.from_dlpack(x)
    assert np.shares_memory(b, x._data)
    copied = torch.utils.dlpack.from_dlpack(x.__dlpack__(copy=True))  # (numpy >= 2.1 asks so)
    copied[0, 0] = 99.0
    assert x.numpy()[0, 0] == 0.0 and copied[0, 0] == 99.0
    assert torch.tensor(x).data_ptr() != t.data_ptr()  # torch.tensor copies, as for any input


def test_round_trip_through_torch_keeps_the_address():
    x = cpu_tensor(np.random.rand(4, 5).astype("float32"))
    back = from_dlpack(torch.utils.dlpack.to_dlpack(torch.utils.dlpack.from_dlpack(to_dlpack(x))))
    assert back._data.ctypes.data == x._data.ctypes.data
    np.testing.assert_array_equal(back.numpy(), x.numpy())


def test_numpy_producer_and_consumer():
    a = np.arange(5, dtype=np.int64)
    x = from_dlpack(a)
    assert x._data.ctypes.data == a.ctypes.data
    b = np.from_dlpack(_Producer(to_dlpack(cpu_tensor(np.ones(3, np.float32)))))
    np.testing.assert_array_equal(b, np.ones(3))


class _Producer:  # what numpy needs around a capsule
    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **kwargs):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


def test_capsule_is_consumed_once_and_bad_input():
    capsule = torch.utils.dlpack.to_dlpack(torch.ones(2))
    from_dlpack(capsule)
    with pytest.raises(BufferError, match="already consumed"):
        from_dlpack(capsule)
    with pytest.raises(TypeError, match="__dlpack__"):
        from_dlpack([1, 2])
    with pytest.raises(TypeError, match="megengine Tensor"):
        to_dlpack(np.ones(2))
    with pytest.raises(ValueError, match="stream"):
        from_dlpack(torch.ones(2), stream=-2)
    # upstream 1.13 measured: "stream must be ``int`` or ``none``" (a TypeError)
    with pytest.raises(TypeError, match="stream must be an int .* or None, got str"):
        mge.tensor([1.0]).__dlpack__(stream="x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch built with CUDA)")
def test_cuda_round_trip():
    cupy = pytest.importorskip("cupy")
    t = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    x = from_dlpack(t)
    assert x._device == "gpu0" and isinstance(x._data, cupy.ndarray)
    assert x._data.data.ptr == t.data_ptr()
    back = torch.utils.dlpack.from_dlpack(to_dlpack(x))
    assert back.data_ptr() == t.data_ptr()
    back[0, 0] = 5
    torch.cuda.synchronize()
    assert float(x.numpy()[0, 0]) == 5


def test_utils_submodules_are_attributes_after_import_megengine():
    # upstream's to_dlpack/from_dlpack examples call mge.utils.dlpack.* after a bare
    # `import megengine`; a fresh interpreter, since this file already imported the submodule
    import os
    import subprocess
    import sys

    code = (
        "import megengine as mge, numpy as np\n"
        "x = mge.tensor([[0.2, 0.3, 0.5], [0.1, 0.2, 0.6]])\n"
        "y = mge.utils.dlpack.from_dlpack(mge.utils.dlpack.to_dlpack(x))\n"
        "assert (y.numpy() == x.numpy()).all()\n"
        "assert callable(mge.utils.module_stats.module_stats)\n"
        "try:\n    mge.utils.nope\nexcept AttributeError as e:\n    print(e)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = child_env(dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                    "")))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no attribute 'nope'" in out.stdout
