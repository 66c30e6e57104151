"""The tests' one way to ask a device for memory addresses and host copies (numpy or CuPy, torch CPU or CUDA).

Tests run on the default device (``xpux``: a GPU when CUDA is usable, else the CPU; or whatever
``MGE_DEFAULT_DEVICE`` names), so a tensor's storage may be a numpy array or a CuPy array, and a
torch module wrapped by ``PyTorchModule`` may live on the GPU. Tests never read
``__array_interface__``, ``.ctypes`` or ``torch.Tensor.numpy()`` themselves: they call these.
"""
import contextlib

import numpy as np
import pytest

import megengine as mge
from megengine.device import canonical_device

__all__ = ["address", "host", "shares_memory", "torch_host", "torch_device", "views_foreign_memory",
           "device_array", "host_default_device", "child_env", "run_python", "pool_threads",
           "requires_cuda", "requires_torch_cuda", "skip_unless_aten_serves_the_default_device",
           "on_aten_or_arrays", "peak_rss_growth_kib", "CUDNN_RNN_EVAL_BACKWARD",
           "cudnn_runs_torch_rnns", "forked_torch_autograd_fails",
           "skip_if_forked_torch_autograd_fails"]


def _raw(x):
    """The engine array behind a Tensor, or ``x`` itself."""
    return x._data if isinstance(x, mge.Tensor) else x


def address(x) -> int:
    """Address of the first element of a Tensor's storage, an engine array, or a torch tensor."""
    x = _raw(x)
    if hasattr(x, "data_ptr"):  # torch.Tensor, on any device
        return x.data_ptr()
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0]
    if hasattr(x, "__cuda_array_interface__"):  # CuPy (or any CUDA array)
        return x.__cuda_array_interface__["data"][0]
    raise TypeError(f"address: expected a Tensor, an array or a torch tensor, got {type(x).__name__}")


def _span(x):
    """(first byte, one past the last byte) that an engine array's elements reach."""
    start = address(x)
    if x.size == 0:
        return start, start
    low = sum(min(0, (n - 1) * s) for n, s in zip(x.shape, x.strides))
    high = sum(max(0, (n - 1) * s) for n, s in zip(x.shape, x.strides))
    return start + low, start + high + x.itemsize


def shares_memory(a, b) -> bool:
    """Whether two Tensors' (or engine arrays') elements may overlap in memory: numpy's exact
    answer for host arrays, an overlap of the spans they reach for CuPy arrays (``np.shares_memory``
    cannot read device memory)."""
    a, b = _raw(a), _raw(b)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.shares_memory(a, b))
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def host(x) -> np.ndarray:
    """A numpy copy of a Tensor, an engine array (numpy/CuPy), a torch tensor, or a number."""
    x = _raw(x)
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return torch_host(x)
    if hasattr(x, "get") and hasattr(x, "__cuda_array_interface__"):  # CuPy: copies to the host
        return x.get()
    return np.array(x)


def views_foreign_memory(x) -> bool:
    """Whether an engine array (or a Tensor's) views memory it did not allocate, such as a torch
    tensor's seen through the bridge. numpy: not owning its data, with a base that holds it;
    CuPy: built on ``UnownedMemory`` (the bridge's CUDA views; CuPy's ``flags.owndata`` is only
    ``base is None``, true for them too)."""
    x = _raw(x)
    if isinstance(x, np.ndarray):
        return not x.flags.owndata and x.base is not None
    memory = getattr(getattr(x, "data", None), "mem", None)  # CuPy: MemoryPointer.mem
    return type(memory).__name__ == "UnownedMemory"


def device_array(a, like):
    """``a`` (a numpy array) as an engine array on the device of ``like`` (a Tensor), for tests
    that call an op's forward/backward on raw arrays."""
    return mge.tensor(a, dtype=np.asarray(a).dtype, device=like.device)._data


def torch_host(t) -> np.ndarray:
    """A numpy copy of a torch tensor on any device (it may require grad)."""
    return t.detach().cpu().numpy().copy()


def torch_device(device=None) -> str:
    """The torch device matching a megengine device (default: the default device):
    ``"cuda:N"`` for ``gpuN``, ``"cpu"`` for every CPU name."""
    dev = canonical_device(device)
    return "cuda:" + dev[3:] if dev.startswith("gpu") else "cpu"


# torch's words when asked for gradients of a cuDNN RNN in eval mode (on a GPU only)
CUDNN_RNN_EVAL_BACKWARD = "cudnn RNN backward can only be called in training mode"


def cudnn_runs_torch_rnns() -> bool:
    """Whether a torch RNN (LSTM, GRU, RNN) on the default device's torch device runs on cuDNN,
    whose kernels have no backward in eval mode: torch's backward raises
    `CUDNN_RNN_EVAL_BACKWARD` there (also for a PyTorchModule, which runs torch's)."""
    import torch

    return (torch_device().startswith("cuda") and torch.backends.cudnn.is_available()
            and torch.backends.cudnn.enabled)


requires_cuda = pytest.mark.skipif(
    not mge.is_cuda_available(),
    reason="needs a CUDA GPU and CuPy (megengine.is_cuda_available() is False here)")


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


requires_torch_cuda = pytest.mark.skipif(
    not (mge.is_cuda_available() and _torch_cuda()),
    reason="needs a CUDA GPU with both CuPy and a CUDA build of torch")


def _autograd_in_a_forked_child():
    import os

    import torch
    from megengine.distributed.launcher import _AUTOGRAD_FORK

    code = 0
    try:
        torch.ones(1, requires_grad=True).sum().backward()
    except RuntimeError as e:
        code = 3 if _AUTOGRAD_FORK in str(e) else 4
    os._exit(code)  # (not the parent's atexit handlers: pytest's)


_forked_autograd_fails = False  # once true, for good: torch's autograd threads stay


def forked_torch_autograd_fails() -> bool:
    """Whether processes forked from this one now fail in torch's autograd ("Unable to handle
    autograd's threading in combination with fork-based multiprocessing"): so it is once this
    process has run a torch backward pass where torch sees a GPU (its autograd engine's device
    threads), and `megengine.distributed.launcher`'s forked ranks could then not train a
    PyTorchModule. Found out by forking a child that runs a one-element backward pass; on
    machines without a GPU it is never so."""
    global _forked_autograd_fails
    import multiprocessing

    if not _forked_autograd_fails and "fork" in multiprocessing.get_all_start_methods():
        child = multiprocessing.get_context("fork").Process(target=_autograd_in_a_forked_child)
        child.start()
        child.join(60)
        if child.exitcode is None:
            child.kill()
            child.join()
        _forked_autograd_fails = child.exitcode == 3
    return _forked_autograd_fails


def skip_if_forked_torch_autograd_fails():
    """Skip the calling test when `forked_torch_autograd_fails` (right before it launches ranks
    whose function cannot be pickled for spawned ranks)."""
    if forked_torch_autograd_fails():
        pytest.skip("this process ran a torch backward pass where torch sees a GPU, and torch's "
                    "autograd threads make forked ranks fail in theirs (a forked probe's "
                    "backward raised 'Unable to handle autograd's threading in combination "
                    "with fork-based multiprocessing'); the launcher says so to users")


@pytest.fixture
def host_default_device():
    """Run a test with ``cpu0`` as the default device, also on a CUDA machine: for tests of
    quantized tensors, which live on CPU devices only (megengine/core/dtype.py refuses to put
    them on a GPU). Use: ``pytestmark = pytest.mark.usefixtures("host_default_device")`` with
    the fixture imported from here."""
    previous = mge.get_default_device()
    mge.set_default_device("cpu0")
    try:
        yield
    finally:
        mge.set_default_device(previous)


def _simulated_runtime():
    """The simulated CuPy's runtime (tests/simcuda.cuda_runtime.Runtime), or None where CuPy is
    not simulated."""
    import sys

    return getattr(sys.modules.get("cupy"), "_simulated", None)


def _simulated_cuda():
    """Whether the GPUs here are simulated (tests/simcuda), whose ATen kernels are routed to
    the CPU as a CUDA build of torch would run them."""
    return _simulated_runtime() is not None


def simulated_gpu_runtime():
    """For a test that counts what a GPU is asked (kernel launches, host reads): the simulated
    CuPy's runtime, whose ``kernels`` and ``syncs`` count them; the test is skipped where the
    GPU is not simulated (tests/test_simulated_gpu_paths.py runs the counting test files on a
    simulated GPU in every test run)."""
    runtime = _simulated_runtime()
    if runtime is None:
        pytest.skip("counts the simulated GPU's kernels and host reads "
                    "(tests/test_simulated_gpu_paths.py runs this file on one)")
    return runtime


def aten_torch_device(device=None) -> str:
    """The torch device whose ATen kernels serve the engine's arrays on ``device`` (default: the
    default device): ``"cuda:N"`` for ``gpuN`` with a CUDA build of torch, else ``"cpu"`` (CPU
    devices, and simulated GPUs, whose ATen kernels run on the CPU). A torch oracle computed
    there runs the same kernels as the engine's ATen path, so exact comparisons hold (torch's
    CUDA and CPU kernels differ in the last bits: erf, gelu)."""
    dev = torch_device(device)
    return dev if dev != "cpu" and _torch_cuda() and not _simulated_cuda() else "cpu"


def skip_unless_aten_serves_the_default_device():
    """Skip when tensors live on a GPU but torch has no CUDA: CuPy arrays then stay on CuPy's
    array code, so an op's ATen path cannot run (megengine/functional/_aten.py, `use_aten`)."""
    if canonical_device(None).startswith("gpu") and not (_torch_cuda() or _simulated_cuda()):
        pytest.skip("tensors live on a GPU here, and CuPy arrays take ATen's kernels only with "
                    "a CUDA build of torch, which this machine lacks")


def record_aten_kernels(monkeypatch):
    """A list that grows with the name of each ATen kernel the engine looks up from now on
    (``megengine.functional._aten.aten()`` and ``_aten.ops`` wrapped for the test): which path
    an op took."""
    from megengine.functional import _aten

    used, real = [], _aten.aten()

    class Recorder:  # torch.ops.aten or `_aten.ops`, noting each kernel looked up
        def __init__(self, namespace):
            self.namespace = namespace

        def __getattr__(self, name):
            used.append(name)
            return getattr(self.namespace, name)

    monkeypatch.setattr(_aten, "aten", lambda: Recorder(real))
    monkeypatch.setattr(_aten, "ops", Recorder(_aten.ops))
    return used


def on_aten_or_arrays(path, monkeypatch, family, kernels):
    """The body of a fixture (``yield from``) that runs its test on one path of an op with both
    an ATen and an array implementation: on ``"aten"`` (skipped where ATen cannot serve the
    default device) every kernel named in ``kernels`` must have been looked up by the end of the
    test; on ``"arrays"`` (``_aten.avoided(family)``: what CuPy arrays run when torch has no
    CUDA) none of them."""
    from megengine.functional import _aten

    if path == "aten":
        skip_unless_aten_serves_the_default_device()
    used = record_aten_kernels(monkeypatch)
    if path == "aten":
        yield path
        assert set(kernels) <= set(used), used
        return
    with _aten.avoided(family):
        yield path
    assert not set(kernels) & set(used), used


def peak_rss_growth_kib(step, warmup=1000, steps=9000):
    """How many KiB this process's peak RSS grows over ``steps`` calls of ``step`` made after
    ``warmup`` calls (caches, pools and lazy imports fill during the warm-up, so that what grows
    later is a leak)."""
    import gc
    import resource

    for _ in range(warmup):
        step()
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        step()
    gc.collect()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before


@contextlib.contextmanager
def pool_threads(n):
    """torch's thread pool (the engine's CPU kernels') at ``n`` threads for the block."""
    from megengine.functional import _aten

    before = _aten.get_num_threads()
    _aten.set_num_threads(n)
    try:
        yield
    finally:
        _aten.set_num_threads(before)


def record_aten_matmuls(monkeypatch):
    """A list that grows with the operand shapes of each matrix product the engine sends to
    ATen from now on (`megengine/core/ops.py` ``matmul``'s ATen entry, wrapped for the test):
    which products took torch's pool."""
    from megengine.core import ops as core_ops
    from megengine.functional import _aten

    core_ops.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))  # (loads _aten)
    calls, real = [], _aten.op("matmul")

    def counting(*args, **kwargs):
        calls.append(tuple(a.shape for a in args[:2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(core_ops, "_matmul", counting)
    return calls


def child_env(env=None):
    """The environment for a fresh Python process a test starts (default: this one's).

    Under simulated GPUs (tests/simcuda) the child cannot have them: the simulation must be in
    place before megengine loads, and putting it there imports megengine, which would change
    what these children check (import order, torch loaded lazily). So the child runs as a plain
    CPU process: without ``MGE_SIM_CUDA``, and without a ``MGE_DEFAULT_DEVICE`` naming a GPU it
    has not got. Elsewhere ``env`` is returned as it is (on a real GPU the child has the GPU)."""
    import os

    env = dict(os.environ if env is None else env)
    if _simulated_cuda():
        env.pop("MGE_SIM_CUDA", None)
        if env.get("MGE_DEFAULT_DEVICE", "").startswith("gpu"):
            env.pop("MGE_DEFAULT_DEVICE")
    return env


def run_python(code, timeout=180, **env):
    """Run ``code`` in a fresh Python process (`child_env` plus ``env``, this checkout first on
    its path) and return its stdout's words; its stderr is the failure message."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = dict(child_env(), PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()
