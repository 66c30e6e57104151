"""Tests that each op, gradient and update runs with its own GPU current (megengine/core/dispatch.py's device switching).

CuPy allocates on the thread's *current* CUDA device. With several GPUs the dispatcher makes the
op's device current for forward and backward, and GradManager and the optimizers do the same for
what they allocate. On machines without GPUs these tests install a fake switcher and label numpy
arrays "gpu1"/"gpu0" (the custom ops below never ask CuPy for anything), which checks the
bookkeeping: who asks for which device when, and that the caller's device comes back. The tests
at the end need real GPUs and skip without them.
"""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine import device as device_mod
from megengine.autodiff import GradManager
from megengine.autodiff.grad_manager import grad as grad_of
from megengine.core import dispatch
from megengine.core.dispatch import Op, apply
from megengine.core.tensor import Parameter, Tensor
from megengine.optimizer import SGD, Optimizer

from devices import host, requires_cuda


class FakeSwitcher:
    """Stands for the CUDA runtime's current device; logs every question and switch."""

    def __init__(self, current=0):
        self.device = current
        self.log = []

    def current(self):
        self.log.append("current")
        return self.device

    def use(self, index):
        self.log.append(("use", index))
        self.device = index

    def uses(self):
        return [entry[1] for entry in self.log if entry != "current"]


@pytest.fixture
def switcher():
    fake = FakeSwitcher(current=0)
    previous = dispatch.set_device_switcher(fake)
    try:
        yield fake
    finally:
        dispatch.set_device_switcher(previous)


class Scale(Op):
    """y = k * x; records the current (fake) device in forward and in backward."""

    def __init__(self, k, sw, seen):
        self.k, self.sw, self.seen = k, sw, seen

    def forward(self, x):
        self.seen.append(("forward", self.k, self.sw.device))
        return x * self.k

    def backward(self, g):
        self.seen.append(("backward", self.k, self.sw.device))
        return g * self.k


class Fails(Op):
    def __init__(self, where):
        self.where = where

    def forward(self, x):
        if self.where == "forward":
            raise ArithmeticError("forward failed")
        return x + 0

    def backward(self, g):
        raise ArithmeticError("backward failed")


def on(device, values):
    """A tensor labelled ``device`` holding a numpy array (no CuPy needed)."""
    return Tensor._wrap(np.asarray(values, np.float32), device)


def test_forward_runs_with_the_ops_gpu_current_and_gives_the_callers_back(switcher):
    seen = []
    x = on("gpu1", [1.0, 2.0])
    y = apply(Scale(3.0, switcher, seen), x)
    assert seen == [("forward", 3.0, 1)]
    assert switcher.device == 0 and switcher.uses() == [1, 0]
    assert y._device == "gpu1"
    np.testing.assert_array_equal(y._data, [3.0, 6.0])


def test_no_switch_when_the_ops_gpu_is_current_already(switcher):
    switcher.device = 1
    seen = []
    apply(Scale(2.0, switcher, seen), on("gpu1", [1.0]))
    assert seen == [("forward", 2.0, 1)] and switcher.uses() == []


def test_backward_runs_each_node_on_its_gpu_switching_once(switcher):
    seen = []
    x = on("gpu1", [1.0, -2.0, 0.5])
    gm = GradManager().attach(x)
    with gm:
        y = apply(Scale(3.0, switcher, seen), x)
        z = apply(Scale(-2.0, switcher, seen), y)
        switcher.log.clear()
        gm.backward(z, on("gpu1", [1.0, 1.0, 1.0]))
    backward = [s for s in seen if s[0] == "backward"]
    assert backward == [("backward", -2.0, 1), ("backward", 3.0, 1)]
    assert switcher.uses() == [1, 0]  # one switch for the whole backward, then the caller's
    assert switcher.device == 0
    np.testing.assert_array_equal(x.grad._data, [-6.0, -6.0, -6.0])  # d(-2 * 3x)/dx
    assert x.grad._device == "gpu1"


def test_run_backward_alone_switches_and_restores(switcher):
    seen = []
    x = on("gpu1", [2.0])
    gm = GradManager().attach(x)
    with gm:
        y = apply(Scale(5.0, switcher, seen), x)
        switcher.log.clear()
        found = dispatch.run_backward([y], [np.ones(1, np.float32)], {(id(x._node[0]), 0)},
                                      free_graph=False)
    assert [s for s in seen if s[0] == "backward"] == [("backward", 5.0, 1)]
    assert switcher.uses() == [1, 0] and switcher.device == 0
    np.testing.assert_array_equal(found[(id(x._node[0]), 0)], [5.0])


def test_nodes_on_two_gpus_each_get_their_own_current(switcher):
    seen = []
    a, b = on("gpu0", [1.0]), on("gpu1", [1.0])
    gm = GradManager().attach([a, b])
    with gm:
        ya = apply(Scale(2.0, switcher, seen), a)
        yb = apply(Scale(7.0, switcher, seen), b)
        gm.backward([ya, yb], [on("gpu0", [1.0]), on("gpu1", [1.0])])
    assert ("backward", 2.0, 0) in seen and ("backward", 7.0, 1) in seen
    assert ("forward", 2.0, 0) in seen and ("forward", 7.0, 1) in seen
    assert switcher.device == 0
    np.testing.assert_array_equal(a.grad._data, [2.0])
    np.testing.assert_array_equal(b.grad._data, [7.0])


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_the_callers_device_comes_back_when_an_op_raises(switcher, where):
    x = on("gpu1", [1.0])
    gm = GradManager().attach(x)
    with pytest.raises(ArithmeticError, match=f"{where} failed"):
        with gm:
            y = apply(Fails(where), x)
            gm.backward(y, on("gpu1", [1.0]))
    assert switcher.device == 0
    assert 1 in switcher.uses()  # it did switch before failing


def test_grad_function_allocates_on_the_tensors_gpu(switcher):
    seen = []
    x = on("gpu1", [1.0, 2.0])
    gm = GradManager().attach(x)
    with gm:
        y = apply(Scale(4.0, switcher, seen), x)
        # grad() makes the ones for y itself: on a real GPU that needs gpu1 current; here the
        # array module of a labelled gpu1 is missing, so only the scope is checked through
        # a numpy stand-in for CuPy's ones
        switcher.log.clear()
        original = device_mod.get_array_module
        try:
            import megengine.autodiff.grad_manager as gm_mod

            gm_mod.get_array_module = _numpy_with_device_check(switcher, 1)
            (g,) = grad_of(y, [x])
        finally:
            gm_mod.get_array_module = original
    np.testing.assert_array_equal(g._data, [4.0, 4.0])
    assert switcher.device == 0 and switcher.uses() == [1, 0]


def _numpy_with_device_check(switcher, expected):
    class Checked:
        @staticmethod
        def ones(shape, dtype):
            assert switcher.device == expected, "output gradient allocated on the wrong GPU"
            return np.ones(shape, dtype)

        @staticmethod
        def zeros(shape, dtype):
            assert switcher.device == expected
            return np.zeros(shape, dtype)

    return lambda device: Checked


class Probing(Optimizer):
    def __init__(self, params, sw):
        super().__init__(params, {"lr": 1.0})
        self.sw, self.seen = sw, []

    def _update(self, param, grad, state, group):
        self.seen.append(self.sw.device)
        param._data -= group["lr"] * grad


def _parameter_on(device, values):
    p = Parameter(np.asarray(values, np.float32), device="cpu0")
    p._device = device  # a label: the update below is numpy arithmetic
    p.grad = on(device, np.ones(len(values)))
    return p


def test_optimizer_updates_each_parameter_on_its_gpu_and_restores(switcher):
    p0, p1, p1b = (_parameter_on(d, [1.0, 2.0]) for d in ("gpu0", "gpu1", "gpu1"))
    opt = Probing([p1, p0, p1b], switcher)
    opt.step()
    assert opt.seen == [1, 0, 1]
    assert switcher.uses() == [1, 0, 1, 0]  # a switch per change of device, then the caller's
    assert switcher.device == 0
    np.testing.assert_array_equal(p1._data, [0.0, 1.0])


def test_plain_sgd_step_on_a_labelled_gpu_parameter_restores_the_device(switcher):
    p = _parameter_on("gpu1", [1.0, 2.0])
    SGD([p], lr=0.5).step()
    np.testing.assert_array_equal(p._data, [0.5, 1.5])
    assert switcher.uses() == [1, 0]


def test_cpu_work_never_asks_the_switcher(switcher):
    # on cpu0 explicitly: the default device is a GPU on a CUDA machine
    w = mge.Parameter(np.array([[0.5, -1.0], [2.0, 0.25]], np.float32), device="cpu0")
    x = mge.tensor(np.array([[1.0, 2.0]], np.float32), device="cpu0")
    gm = GradManager().attach(w)
    opt = SGD([w], lr=0.1, momentum=0.9)
    for _ in range(2):
        with gm:
            loss = (F.relu(F.matmul(x, w)) * 2).sum()
            gm.backward(loss)
        opt.step().clear_grad()
    assert switcher.log == []


def test_on_device_is_a_no_op_without_a_switcher():
    previous = dispatch.set_device_switcher(None)
    try:
        with dispatch.on_device("gpu1"):
            pass
        assert dispatch.device_scope() is None
    finally:
        dispatch.set_device_switcher(previous)


def test_device_module_installs_the_switcher_for_the_dispatcher():
    # megengine.device decides (more than one GPU) and the dispatcher hears of it
    saved = dispatch._switcher
    fake = FakeSwitcher()
    try:
        device_mod._set_switcher(fake)
        assert dispatch._switcher is fake
        device_mod._set_switcher(None)
        assert dispatch._switcher is None
    finally:
        dispatch.set_device_switcher(saved)
        device_mod._switcher = saved


def test_cuda_switcher_calls_the_runtime():
    calls = []

    class Runtime:
        @staticmethod
        def getDevice():
            calls.append("get")
            return 3

        @staticmethod
        def setDevice(index):
            calls.append(("set", index))

    sw = device_mod.CudaDeviceSwitcher(Runtime)
    assert sw.current() == 3
    sw.use(1)
    assert calls == ["get", ("set", 1)]


# ----- on real GPUs -----

def _gpu_count():
    return device_mod.get_device_count("gpu") if mge.is_cuda_available() else 0


requires_two_gpus = pytest.mark.skipif(_gpu_count() < 2,
                                       reason="needs two CUDA GPUs (CuPy sees fewer here)")


@requires_cuda
def test_one_gpu_installs_no_switcher():
    if _gpu_count() != 1:
        pytest.skip("this machine has more than one GPU")
    assert dispatch._switcher is None  # the current device can only be 0: nothing to switch


@requires_two_gpus
def test_training_on_gpu1_allocates_there_while_gpu0_is_current():
    import cupy

    assert isinstance(dispatch._switcher, device_mod.CudaDeviceSwitcher)
    with cupy.cuda.Device(0):
        w = mge.Parameter(np.array([[0.5, -1.0], [2.0, 0.25]], np.float32), device="gpu1")
        x = mge.tensor(np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32), device="gpu1")
        assert w._data.device.id == 1 and x._data.device.id == 1
        gm = GradManager().attach(w)
        opt = SGD([w], lr=0.1, momentum=0.9)
        with gm:
            y = F.relu(F.matmul(x, w)) * 3
            loss = (y * y).sum()
            gm.backward(loss)
        assert y._data.device.id == 1 and w.grad._data.device.id == 1
        opt.step()
        assert opt._state[w]["momentum_buffer"]._data.device.id == 1
        assert cupy.cuda.runtime.getDevice() == 0  # the caller's device is current again
    # oracle: the same step in numpy
    xv, wv = np.array([[1.0, 2.0], [-3.0, 0.5]]), np.array([[0.5, -1.0], [2.0, 0.25]])
    h = xv @ wv
    dy = 2 * 9 * np.maximum(h, 0) * (h > 0)
    gw = xv.T @ dy
    np.testing.assert_allclose(host(w), wv - 0.1 * gw, rtol=1e-5)


@requires_two_gpus
def test_pytorch_module_on_gpu1_trains_there():
    import cupy
    import torch

    from megengine.module.pytorch import PyTorchModule

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    ref = torch.nn.Linear(3, 2).to("cuda:1")
    ref.load_state_dict(lin.state_dict())
    with cupy.cuda.Device(0):
        m = PyTorchModule(lin, "gpu1")
        x = mge.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), device="gpu1")
        gm = GradManager().attach(m.parameters())
        with gm:
            gm.backward((m(x) ** 2).sum())
        for p in m.parameters():
            assert p.grad._data.device.id == 1
        assert cupy.cuda.runtime.getDevice() == 0
    (ref(torch.arange(6, dtype=torch.float32, device="cuda:1").reshape(2, 3)) ** 2).sum().backward()
    grads = sorted((tuple(p.shape), host(p.grad)) for p in m.parameters())
    expected = sorted((tuple(p.shape), p.grad.detach().cpu().numpy()) for p in ref.parameters())
    for (_, g), (_, e) in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_a_traced_replay_runs_each_op_with_its_gpu_current(switcher):
    from megengine.jit import trace

    seen = []
    f = trace(lambda x: apply(Scale(2.0, switcher, seen), x), symbolic=True)
    f(on("gpu1", [1.0]))  # recorded through apply
    seen.clear()
    switcher.log.clear()
    y = f(on("gpu1", [4.0]))  # replayed without autodiff: the replay's own fast path
    assert seen == [("forward", 2.0, 1)]
    assert switcher.device == 0 and switcher.uses() == [1, 0]
    np.testing.assert_array_equal(y._data, [8.0])


class _RecordsDevice(np.ndarray):
    """A numpy array that notes the (fake) current device when something is written into it."""

    def __setitem__(self, index, value):
        self.writes.append(self.sw.device)
        super().__setitem__(index, value)


def test_in_place_writes_run_with_the_tensors_gpu_current(switcher):
    data = np.zeros(2, np.float32).view(_RecordsDevice)
    data.sw, data.writes = switcher, []
    writes = data.writes
    p = Parameter(np.zeros(2, np.float32))
    p._data, p._device = data, "gpu1"
    del data  # (another holder of the array would make the writes give p a copy)
    p.set_value(on("gpu1", [1.0, 2.0]))  # Tensor._reset: the optimizers' and load_state_dict's write
    p += on("gpu1", [1.0, 1.0])  # an augmented operator on a Parameter: Tensor._inplace
    assert writes == [1, 1] and switcher.device == 0
    np.testing.assert_array_equal(np.asarray(p._data), [2.0, 3.0])
