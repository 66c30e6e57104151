"""Tests for megengine/jit/dump_devices.py: a program dumped on a (simulated) GPU machine records the device names the program asked for (xpux for the default device), loads on a CPU-only machine with the same outputs, and a device the loader lacks is named with the way to map it."""
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import megengine as mge
from megengine.device import canonical_device
from megengine.jit import trace
from megengine.jit.dump import load
from megengine.jit.dump_devices import device_mapper, recorded_name
from megengine.utils.comp_graph_tools import GraphInference

ROOT = Path(__file__).resolve().parents[2]


def _graph_json(path):
    data = Path(path).read_bytes()
    if data[:7] == b"MGEFORK":
        data = data[16:16 + int.from_bytes(data[8:16], "little")]
    return json.loads(zipfile.ZipFile(io.BytesIO(data)).read("graph.json"))


@pytest.fixture(scope="module")
def dumped_on_two_gpus(tmp_path_factory):
    """Two programs dumped in a process with two simulated GPUs (tests/simcuda): ``default.mgf``
    on the default device (gpu0 there), ``gpu1.mgf`` with its weight and input on gpu1."""
    tmp = tmp_path_factory.mktemp("simdump")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import simcuda
        simcuda.install(2)
        import numpy as np
        import megengine as mge
        import megengine.functional as F
        from megengine.jit import trace

        x = np.random.RandomState(0).rand(4, 2).astype("float32")
        w = mge.tensor(np.arange(6, dtype="float32").reshape(2, 3) / 7)
        f = trace(lambda t: F.relu(F.matmul(t, w) - 0.3) + 0.5, symbolic=True,
                  capture_as_const=True)
        out = f(mge.tensor(x))
        assert out.device == "gpu0", out.device
        f.dump({str(tmp / 'default.mgf')!r}, arg_names=["x"])
        np.save({str(tmp / 'default_out.npy')!r}, out.numpy())

        w1 = w.to("gpu1")
        g = trace(lambda t: t * 2 + w1.sum(), symbolic=True, capture_as_const=True)
        out1 = g(mge.tensor(x, device="gpu1"))
        assert out1.device == "gpu1", out1.device
        g.dump({str(tmp / 'gpu1.mgf')!r}, arg_names=["x"])
        np.save({str(tmp / 'gpu1_out.npy')!r}, out1.numpy())
        np.save({str(tmp / 'x.npy')!r}, x)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("MGE_SIM_CUDA", "MGE_DEFAULT_DEVICE")}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([sys.executable, "-c", script], cwd=str(tmp), env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return tmp


def test_a_program_dumped_on_a_gpu_records_xpux_and_runs_on_this_machine(dumped_on_two_gpus):
    tmp = dumped_on_two_gpus
    graph = _graph_json(tmp / "default.mgf")
    assert graph["version"] == 3  # (2 recorded devices by name too; 3 added symbolic shapes)
    assert [i["device"] for i in graph["inputs"]] == ["xpux"]
    assert graph["consts"] and {c["device"] for c in graph["consts"]} == {"xpux"}
    x = np.load(tmp / "x.npy")
    out = GraphInference(str(tmp / "default.mgf")).run(x)
    (got,) = out.values()
    # the oracle is the GPU run's own output (the same ops; a GPU's float sums may round apart)
    np.testing.assert_allclose(got, np.load(tmp / "default_out.npy"), rtol=1e-6, atol=1e-7)
    # and numpy's value of the traced function
    w = np.arange(6, dtype="float32").reshape(2, 3) / 7
    np.testing.assert_allclose(got, np.maximum(x @ w - 0.3, 0) + 0.5, rtol=1e-6)
    prog = load(str(tmp / "default.mgf"))  # "xpux": the loader's default device
    assert all(c[2] == canonical_device(None) for c in prog.prog.consts)


def test_an_explicit_gpu_the_loader_lacks_is_named_and_maps_like_map_location(dumped_on_two_gpus):
    tmp = dumped_on_two_gpus
    graph = _graph_json(tmp / "gpu1.mgf")
    assert [i["device"] for i in graph["inputs"]] == ["gpu1"]  # not the default: kept as asked
    x = np.load(tmp / "x.npy")
    expected = np.load(tmp / "gpu1_out.npy")
    np.testing.assert_allclose(expected, x * 2 + 15 / 7, rtol=1e-6)
    n_gpus = mge.get_device_count("gpu") if mge.is_cuda_available() else 0
    if n_gpus < 2:  # as upstream's loader: a device that is not here fails, naming the fix
        with pytest.raises(ValueError, match=r"dumped for device 'gpu1'.*device='cpu0'"):
            GraphInference(str(tmp / "gpu1.mgf"))
    for device in ("cpu0", {"gpu1": "cpu0"}, {"gpu1:0": "cpu0"}, lambda name: "cpu0"):
        (got,) = GraphInference(str(tmp / "gpu1.mgf"), device=device).run(x).values()
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_program_dumped_on_the_default_device_runs_on_the_loaders_default_device(
        dumped_on_two_gpus):
    # "xpux" is the loader's default device: a program set to cpu0 runs such a file on cpu0,
    # also on a machine with a GPU (where "xpux" alone is gpu0; MGE_SIM_CUDA=1 runs this so)
    tmp = dumped_on_two_gpus
    previous = mge.get_default_device()
    try:
        mge.set_default_device("xpux")
        assert device_mapper(None, 2)("xpux") == canonical_device("xpux")
        mge.set_default_device("cpu0")
        assert device_mapper(None, 2)("xpux") == "cpu0"
        assert device_mapper({"gpu1": "cpu1"}, 2)("xpux") == "cpu0"
        assert device_mapper("xpux", 2)("cpu1") == canonical_device("xpux")  # (asked for)
        prog = load(str(tmp / "default.mgf"))
        assert prog.prog.consts and all(c[2] == "cpu0" for c in prog.prog.consts)
        x = np.load(tmp / "x.npy")
        (got,) = GraphInference(str(tmp / "default.mgf")).run(x).values()
        np.testing.assert_allclose(got, np.load(tmp / "default_out.npy"), rtol=1e-6, atol=1e-7)
    finally:
        mge.set_default_device(previous)


def test_xpux_is_mapped_to_the_default_device_set_before_loading():
    previous = mge.get_default_device()
    try:
        mge.set_default_device("cpu1")  # (what "xpux" resolves to on no machine)
        assert device_mapper(None, 2)("xpux") == "cpu1"
        assert device_mapper(None, 2)("cpu0") == "cpu0"
        assert device_mapper(None, 1)("gpu0") == "cpu1"  # (version 1's gpu0: the default)
        assert device_mapper({"xpux": "cpu2"}, 2)("xpux") == "cpu2"
    finally:
        mge.set_default_device(previous)


def test_recorded_names_follow_the_default_device_as_it_was_set():
    here = canonical_device(None)
    assert recorded_name(here) == mge.get_default_device()
    previous = mge.get_default_device()
    mge.set_default_device("cpu0")
    try:
        assert recorded_name("cpu0") == "cpu0"
    finally:
        mge.set_default_device(previous)


def test_version_1_files_read_gpu0_as_the_default_device_and_bad_maps_are_refused():
    # version 1 wrote the device a value resolved to: gpu0 was the default device on a GPU
    assert device_mapper(None, 1)("gpu0") == canonical_device(None)
    assert device_mapper(None, 1)("cpu0") == "cpu0"
    assert device_mapper({"gpu0": "cpu0"}, 1)("gpu0") == "cpu0"
    with pytest.raises(ValueError, match="unknown device 'tpu3'"):
        device_mapper({"gpu1": "tpu3"}, 2)
    with pytest.raises(TypeError, match="device must be a device name"):
        device_mapper(3, 2)
    if not mge.is_cuda_available():
        with pytest.raises(ValueError, match="dumped for device 'gpu0'"):
            device_mapper(None, 2)("gpu0")


def _rewritten(data, edit):
    """The bytes of dump file ``data`` with its graph.json passed through ``edit``."""
    if data[:7] == b"MGEFORK":
        data = data[16:16 + int.from_bytes(data[8:16], "little")]
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            content = src.read(name)
            if name == "graph.json":
                graph = json.loads(content)
                edit(graph)
                content = json.dumps(graph).encode()
            dst.writestr(name, content)
    return out.getvalue()  # (a bare archive, as files before the mark were written)


def test_a_version_1_file_dumped_on_a_gpu_still_loads_here():
    import megengine.functional as F

    w = mge.tensor(np.array([0.5, -1.0, 2.0], "float32"))
    f = trace(lambda t: F.relu(t * w) + 1, symbolic=True, capture_as_const=True)
    x = np.array([1.0, 2.0, 3.0], "float32")
    expected = f(mge.tensor(x)).numpy()
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])

    def as_version_1_from_a_gpu(graph):  # version 1 wrote gpu0 for the default device there
        graph["version"] = 1
        for entry in graph["inputs"] + graph["consts"]:
            entry["device"] = "gpu0"

    old = _rewritten(buf.getvalue(), as_version_1_from_a_gpu)
    (got,) = GraphInference(io.BytesIO(old)).run(x).values()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got, np.maximum(x * [0.5, -1.0, 2.0], 0) + 1, rtol=1e-6)
