"""tests/simcuda/api_scan.py and api_check.py: the scanner finds CuPy/torch uses as written, the checker tells a real signature from a wrong call; with the real CuPy installed, the whole check passes.

The scanner and the checker's logic are tested on small hand-written sources and a stand-in
module whose right answers are known here. The end-to-end test needs the real CuPy (e.g.
``pip install cupy-cuda13x``, no GPU needed) and skips without it; `make cuda-api-check` runs the
same check in a scratch environment that has it.
"""
import importlib.util
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from simcuda import api_check, api_scan

REPO = Path(__file__).resolve().parents[1]


def _scan(tmp_path, source):
    path = tmp_path / "sample.py"
    path.write_text(textwrap.dedent(source))
    return [(u.root, u.name, u.call, u.line) for u in api_scan.scan_file(path)]


def test_scanner_finds_roots_chains_and_call_shapes(tmp_path):
    uses = _scan(tmp_path, """\
        import cupy
        import torch
        import torch.distributed as dist
        from cupy.cuda import runtime as rt

        def f(x, cp):
            cupy.cuda.Device(1).use()
            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks(stream=None)
            xp = xp_of(x)
            xp.add.at(x, [0], 1)
            rt.setDevice(0)
            cp.zeros((2,), dtype="f")
            torch.cuda.current_stream(0).wait_stream(s)
            dist.all_reduce(x, op=None)
            getattr(torch._C, "_cuda_getCurrentRawStream", None)
            torch.nn.Linear(2, 2)   # not a CUDA name: not recorded
        """)
    assert ("cupy", "cuda.Device", (1, (), False), 7) in uses
    assert ("cupy", "cuda.Device().use", (0, (), False), 7) in uses
    assert ("cupy", "get_default_memory_pool().free_all_blocks", (0, ("stream",), False), 9) in uses
    assert ("xp", "add.at", (3, (), False), 11) in uses
    assert ("cupy", "cuda.runtime.setDevice", (1, (), False), 12) in uses
    assert ("cupy", "zeros", (1, ("dtype",), False), 13) in uses
    assert ("torch", "cuda.current_stream().wait_stream", (1, (), False), 14) in uses
    assert ("torch", "distributed.all_reduce", (1, ("op",), False), 15) in uses
    assert ("torch", "_C._cuda_getCurrentRawStream", None, 16) in uses
    assert not [u for u in uses if "nn" in u[1]]


def test_names_imported_from_other_parts_of_torch_are_not_uses(tmp_path):
    uses = _scan(tmp_path, """\
        from torch.utils.tensorboard import SummaryWriter
        from torch.cuda import current_stream
        import torch

        def f(path):
            SummaryWriter(path)
            getattr(torch.utils, "tensorboard", None)
            current_stream(0)
        """)
    assert [u[:2] for u in uses] == [("torch", "cuda.current_stream")]


def test_scanner_drops_names_rebound_to_something_else(tmp_path):
    uses = _scan(tmp_path, """\
        import cupy

        def test_with_a_fake():
            cupy = FakeCupy()
            cupy.log.count("x")

        def engine():
            return cupy.cuda.runtime.getDeviceCount()
        """)
    assert [u[1] for u in uses] == ["cuda.runtime.getDeviceCount"]


def test_calls_expected_to_fail_are_not_uses(tmp_path):
    uses = _scan(tmp_path, """\
        import cupy
        import pytest

        def test_refusal():
            with pytest.raises(TypeError):
                cupy.zeros(3, where=True)
            cupy.ones(2)
        """)
    assert [(u[1], u[3]) for u in uses] == [("ones", 7)]


def _stand_in():
    """A module shaped like CuPy: a Python function, a Cython-like class whose signature is only
    in its docstring, a class returned by a factory."""
    module = types.ModuleType("standin")

    def zeros(shape, dtype=float, order="C"):
        pass

    class Device:
        """Device(device=None)

        A stand-in with Cython's signature line."""

        def __init__(self, *args, **kwargs):
            pass

        def use(self):
            pass

    module.zeros, module.cuda = zeros, types.SimpleNamespace(Device=Device)
    return module


def test_checker_tells_fitting_calls_from_wrong_ones():
    m = _stand_in()
    ok, _ = api_check.resolve(m, "cupy", "zeros", (1, ("dtype",), False))
    assert ok == "OK"
    verdict, detail = api_check.resolve(m, "cupy", "zeros", (1, ("device",), False))
    assert verdict == "MISMATCH" and "device" in detail
    verdict, detail = api_check.resolve(m, "cupy", "cuda.Device", (2, (), False))
    assert verdict == "MISMATCH" and "too many positional" in detail  # from the docstring line
    assert api_check.resolve(m, "cupy", "cuda.Device", (1, (), False))[0] == "OK"
    verdict, detail = api_check.resolve(m, "cupy", "cuda.Stream", None)
    assert verdict == "MISMATCH" and "'Stream'" in detail


def test_checker_follows_calls_through_the_classes_they_return():
    m = _stand_in()
    assert api_check.resolve(m, "cupy", "cuda.Device().use", (0, (), False))[0] == "OK"
    verdict, detail = api_check.resolve(m, "cupy", "cuda.Device().use", (1, (), False))
    assert verdict == "MISMATCH"  # self is given by the instance: one more is too many
    verdict, detail = api_check.resolve(m, "cupy", "cuda.Device().synchronise", None)
    assert verdict == "MISMATCH" and "synchronise" in detail


def test_cython_and_pybind_signature_lines_are_read():
    class Cython:
        """UnownedMemory(intptr_t ptr, size_t size, owner, int device_id=-1)"""

    sig = api_check.signature_of(Cython)
    assert list(sig.parameters) == ["ptr", "size", "owner", "device_id"]

    class Pybind:
        def __init__(self, *args, **kwargs):
            """__init__(self: torch.Store, host_name: str, port: int, is_master: bool = False) -> None"""

    sig = api_check.signature_of(Pybind)
    assert list(sig.parameters) == ["host_name", "port", "is_master"]


_REAL_CUPY = importlib.util.find_spec("cupy") is not None and \
    "simulated" not in str(getattr(sys.modules.get("cupy"), "__version__", ""))


@pytest.mark.skipif(not _REAL_CUPY, reason="needs the real CuPy installed (pip install "
                    "cupy-cuda13x; no GPU needed); `make cuda-api-check` runs it in a scratch venv")
def test_the_whole_check_passes_against_the_installed_cupy():
    run = subprocess.run([sys.executable, str(REPO / "tests" / "simcuda" / "api_check.py"),
                          "--quiet", "--no-compile"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
