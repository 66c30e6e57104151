"""Simulated CUDA devices for the tests: a fake CuPy installed before megengine loads, and ATen's kernels routed to simulated arrays.

Use: ``MGE_SIM_CUDA=2 python -m pytest tests`` (tests/conftest.py calls `install_from_environment`),
or `install` in a fresh process before ``import megengine``. megengine then finds ``count`` CUDA
devices: ``xpux`` is ``gpu0``, tensors on ``gpuN`` hold simulated CuPy arrays
(`simcuda.fake_cupy`), and with two or more devices the dispatcher switches the current device
as it does on a multi-GPU machine. What the simulation catches: host (numpy) arrays mixed into
device computations, implicit host conversions of device arrays, kernels run (and results
allocated) on a device other than their arrays' (a missed current-device switch), and ops on
arrays of two devices.

ATen's kernels (convolution, pooling, batch norm, softmax, ...) need torch's CUDA, which this
machine lacks. They are *routed*: the bridge's view of a simulated array (`_aten.view`) is a CPU
torch tensor over its host buffer, and the engine array made from a kernel's result
(`_aten.array`) is a simulated array on the device of the array viewed last in this thread (the
op's device, as torch would put a CUDA kernel's result on its inputs' device). ``use_aten``
answers as on a machine whose torch has CUDA, so the GPU's code paths are the ones run. What the
route does not check: an op that views a host array next to its device arrays inside one ATen
call (torch's CPU kernels accept both). Everything else of torch's CUDA stays absent and fails
loudly where reached: ``PyTorchModule`` on a GPU (``torch.device("cuda")``), the bridge's
``to_torch``/``from_torch`` of device memory outside the ATen route, DLPack, NCCL.
"""
import os
import threading

from . import fake_cupy

__all__ = ["install", "install_from_environment", "installed", "device_count", "SimulationGap",
           "MislabelledTensor"]

SimulationGap = fake_cupy.SimulationGap


class MislabelledTensor(AssertionError):
    """A tensor whose device label and array disagree (see `_check_tensor_labels`)."""
ENV = "MGE_SIM_CUDA"


def installed():
    """The simulated cupy module when the simulation is in place, else None."""
    import sys

    cupy = sys.modules.get("cupy")
    return cupy if getattr(cupy, "_simulated", None) is not None else None


def device_count():
    """How many devices are simulated (0 when the simulation is not installed)."""
    cupy = installed()
    return 0 if cupy is None else cupy._simulated.count


def install(count):
    """Simulate ``count`` CUDA devices in this process. Must run before megengine first asks for
    CuPy (its answer is cached): in practice before ``import megengine``."""
    import sys

    if "megengine" in sys.modules:
        from megengine import device

        if device._cupy.cache_info().currsize:
            raise RuntimeError(
                "simcuda.install: megengine has already looked for CuPy in this process; "
                f"install the simulation first (set {ENV}=<devices> before pytest starts)")
    cupy = fake_cupy.install(count)
    _route_aten(cupy)
    _check_tensor_labels(cupy)
    return cupy


def install_from_environment():
    """`install` with the device count ``$MGE_SIM_CUDA`` names; nothing when it is unset or 0."""
    value = os.environ.get(ENV, "").strip()
    if not value or value == "0":
        return None
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{ENV}={value!r}: give the number of simulated CUDA devices, e.g. "
                         f"{ENV}=1 or {ENV}=2") from None
    return install(count)


def _route_aten(cupy):
    """ATen's kernels on simulated arrays: CPU torch tensors over their host buffers (see the
    module docstring)."""
    from megengine.functional import _aten

    real_view, real_array = _aten.view, _aten.array
    ndarray = cupy.ndarray
    state = threading.local()

    def view(a):
        if type(a) is ndarray:
            state.device = a._dev
            return real_view(a._a)
        state.device = None
        return real_view(a)

    def array(t):
        out = real_array(t)
        device = getattr(state, "device", None)
        if device is None or t.device.type != "cpu":
            return out
        wrapped = object.__new__(ndarray)
        wrapped._a, wrapped._dev, wrapped._keep = out, device, None  # (torch's memory)
        return wrapped

    def written(a):
        if type(a) is not ndarray:
            real_written(a)
        # a simulated array: one stream (the null stream) per device, so nothing to order

    def memory_view(a):
        return view(a)  # a simulated array's view holds its numpy buffer only, not the array

    real_written = _aten.written
    view.__doc__ = "simulated CUDA: " + (real_view.__doc__ or "")
    array.__doc__ = "simulated CUDA: " + (real_array.__doc__ or "")
    written.__doc__ = "simulated CUDA: " + (real_written.__doc__ or "")
    memory_view.__doc__ = "simulated CUDA: " + (_aten.memory_view.__doc__ or "")
    _aten.view, _aten.array, _aten.written, _aten.memory_view = view, array, written, memory_view
    _aten._torch_cuda = True  # use_aten answers as where torch has CUDA: the GPU's code paths


def _check_tensor_labels(cupy):
    """Check, wherever a Tensor gets its array or its device, that the two agree: an array of
    simulated device N under the label gpuN, a numpy array under cpu0. A disagreement is
    raised where it is made (an array allocated while another GPU was current, a host array
    under a GPU label), not at the later op that trips over it."""
    from megengine.core import dispatch
    from megengine.device import CudaDeviceSwitcher
    from megengine.core.tensor import Tensor

    ndarray = cupy.ndarray

    def check(t, array, device):
        switcher = dispatch._switcher
        if switcher is not None and type(switcher) is not CudaDeviceSwitcher:
            return  # a test's fake switcher: its tests label host arrays "gpuN" on purpose
        if device[0] == "g":
            if type(array) is not ndarray or array._dev != int(device[3:]):
                where = (f"an array of device {array._dev}" if type(array) is ndarray
                         else f"a host {type(array).__name__}")
                raise MislabelledTensor(
                    f"simulated CUDA: a tensor on {device} gets {where} (allocated while "
                    "another device was current, or never moved to the GPU)")
        elif type(array) is ndarray:
            raise MislabelledTensor(f"simulated CUDA: a tensor on {device} gets an array of "
                                    f"GPU {array._dev}")

    def get_data(t):
        return t.__dict__["_data"]

    def set_data(t, array):
        device = t.__dict__.get("_device")
        if device is not None:
            check(t, array, device)
        t.__dict__["_data"] = array

    def get_device(t):
        return t.__dict__["_device"]

    def set_device(t, device):
        array = t.__dict__.get("_data")
        if array is not None and isinstance(device, str):
            check(t, array, device)
        t.__dict__["_device"] = device

    Tensor._data = property(get_data, set_data)
    Tensor._device = property(get_device, set_device)
