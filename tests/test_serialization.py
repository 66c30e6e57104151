"""mge.save / mge.load: paths and files, Tensors and Parameters, numpy arrays, map_location."""
import io
import pickle

import numpy as np
import pytest

import megengine as mge
from megengine.core.tensor import Tensor


def _round_trip(obj, **load_kw):
    f = io.BytesIO()
    mge.save(obj, f)
    f.seek(0)
    return mge.load(f, **load_kw)


def test_tensors_parameters_and_arrays_round_trip():
    t = mge.Tensor([[1.0, 2.0], [3.0, 4.0]])
    p = mge.Parameter(np.arange(3, dtype=np.int32))
    p.name = "weight"
    arr = np.linspace(0, 1, 5)
    obj = {"t": t, "p": p, "arr": arr, "nested": [t, (1, "x")], "scalar": 3.5}
    back = _round_trip(obj)
    assert type(back["t"]) is mge.Tensor and type(back["p"]) is mge.Parameter
    np.testing.assert_array_equal(back["t"].numpy(), t.numpy())
    np.testing.assert_array_equal(back["p"].numpy(), p.numpy())
    assert back["t"].dtype == np.float32 and back["p"].dtype == np.int32
    assert back["p"].name == "weight" and back["p"].grad is None
    assert type(back["arr"]) is np.ndarray and back["arr"].dtype == np.float64
    np.testing.assert_array_equal(back["arr"], arr)
    assert back["nested"][0] is back["t"]  # shared objects stay shared
    assert back["nested"][1] == (1, "x") and back["scalar"] == 3.5
    assert back["t"].device == "cpu0"
    # the loaded tensor is a working tensor with its own storage
    back["t"] += 1
    assert t.numpy()[0, 0] == 1.0 and back["t"].numpy()[0, 0] == 2.0


def test_save_and_load_with_paths(tmp_path):
    path = tmp_path / "ckpt.mge"
    mge.save({"w": mge.Parameter([1.0, 2.0])}, str(path))
    np.testing.assert_array_equal(mge.load(str(path))["w"].numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(mge.load(path)["w"].numpy(), [1.0, 2.0])  # a PathLike too


def test_files_are_plain_pickles():
    f = io.BytesIO()
    mge.save(mge.Tensor([1.0, 2.0]), f, pickle_protocol=2)
    f.seek(0)
    np.testing.assert_array_equal(pickle.load(f).numpy(), [1.0, 2.0])
    # and a plain pickle loads with mge.load
    back = mge.load(io.BytesIO(pickle.dumps(mge.Parameter([3.0]))))
    assert type(back) is mge.Parameter and back.tolist() == [3.0]


@pytest.mark.parametrize("map_location", ["cpux", "cpu0", {"cpu0": "cpu1"}, {"cpux": "cpu0"},
                                          lambda dev: "cpu0"])
def test_map_location_on_cpu(map_location):
    back = _round_trip({"t": mge.Tensor([1.0])}, map_location=map_location)
    assert back["t"].device == "cpu0" and back["t"].tolist() == [1.0]


@pytest.fixture
def saved_on_gpu(monkeypatch):
    """A file whose tensor says it was saved on gpu0 (this machine may have no GPU)."""
    original = Tensor.__getstate__
    monkeypatch.setattr(Tensor, "__getstate__", lambda self: {**original(self), "device": "gpu0"})
    f = io.BytesIO()
    mge.save({"w": mge.Parameter([1.0, 2.0]), "arr": np.ones(2)}, f)
    monkeypatch.setattr(Tensor, "__getstate__", original)
    f.seek(0)
    return f


@pytest.mark.parametrize("map_location", ["cpu0", {"gpu0": "cpu0"}, {"gpux": "cpux"},
                                          {"xpux": "cpu0"}])
def test_map_location_moves_tensors_saved_on_a_gpu(saved_on_gpu, map_location):
    back = mge.load(saved_on_gpu, map_location=map_location)
    assert type(back["w"]) is mge.Parameter and back["w"].device == "cpu0"
    np.testing.assert_array_equal(back["w"].numpy(), [1.0, 2.0])
    assert type(back["arr"]) is np.ndarray


def test_map_location_callable_sees_the_saved_device(saved_on_gpu):
    seen = []
    back = mge.load(saved_on_gpu, map_location=lambda dev: seen.append(dev) or "cpu0")
    assert seen == ["gpu0"] and back["w"].device == "cpu0"


def test_unmatched_dict_keeps_the_saved_device(saved_on_gpu):
    if mge.is_cuda_available():
        pytest.skip("this machine can place tensors on gpu0")
    with pytest.raises(RuntimeError, match="map_location"):
        mge.load(saved_on_gpu, map_location={"gpu1": "cpu0"})
    saved_on_gpu.seek(0)
    with pytest.raises(RuntimeError, match="map_location"):
        mge.load(saved_on_gpu)


def test_bad_arguments():
    f = io.BytesIO()
    mge.save(1, f)
    f.seek(0)
    with pytest.raises(ValueError, match="invalid device"):
        mge.load(f, map_location="tpu0")
    with pytest.raises(ValueError, match="invalid device"):
        mge.load(f, map_location={"gpu0": "nowhere"})
    with pytest.raises(TypeError, match="map_location"):
        mge.load(f, map_location=3)
    with pytest.raises(TypeError, match="file"):
        mge.save(1, 42)
    with pytest.raises(TypeError, match="file"):
        mge.load(42)
