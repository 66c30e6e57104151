"""One torch tensor is one megengine tensor (megengine/module/pytorch/shared.py): tied and shared
parameters train exactly like pure torch, and whole networks pickle and deep-copy."""
import copy
from collections import OrderedDict
import io
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.module.pytorch import PyTorchModule
from devices import address, host, requires_torch_cuda, torch_device, torch_host

REPO = Path(__file__).resolve().parents[3]


class TiedPair(nn.Module):
    """Two layers with one weight (``dec.weight is enc.weight``), as in tied embeddings."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 6)
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


class TwoWrappersOfOneModule(M.Module):
    def __init__(self, tmod):
        super().__init__()
        self.first = PyTorchModule(tmod)
        self.second = PyTorchModule(tmod)

    def forward(self, x):
        return self.second(F.tanh(self.first(x)))


class MirrorAlsoInMegengine(M.Module):
    """A megengine module that also uses the wrapped layer's weight (its output projection)."""

    def __init__(self, tmod):
        super().__init__()
        self.wrap = PyTorchModule(tmod)
        self.out_weight = self.wrap.weight

    def forward(self, x):
        return F.matmul(F.tanh(self.wrap(x)), self.out_weight, transpose_b=True)


def _torch_forward(kind, tmod, x):
    if kind == "tied":
        return tmod(x)
    if kind == "two wrappers":
        return tmod(torch.tanh(tmod(x)))
    return torch.tanh(tmod(x)) @ tmod.weight.T


def _build(kind):
    torch.manual_seed(1)
    tmod = TiedPair() if kind == "tied" else nn.Linear(6, 6)
    reference = copy.deepcopy(tmod).to(torch_device())  # deepcopy keeps the tie; the oracle
    # runs on the torch device the wrapper moves tmod to
    if kind == "tied":
        net = PyTorchModule(tmod)
    elif kind == "two wrappers":
        net = TwoWrappersOfOneModule(tmod)
    else:
        net = MirrorAlsoInMegengine(tmod)
    return net, tmod, reference


OPTIMIZERS = {
    "sgd momentum weight decay": (
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "adam": (lambda ps: optim.Adam(ps, lr=0.05), lambda ps: torch.optim.Adam(ps, lr=0.05)),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["tied", "two wrappers", "mirror also in megengine"])
def test_shared_parameters_train_exactly_like_pure_torch(kind, optimizer):
    net, tmod, reference = _build(kind)
    params = list(net.parameters())
    # listed once, as torch lists them
    assert len(params) == len(list(reference.parameters()))
    assert len({id(p) for p in params}) == len(params)
    make_mge, make_torch = OPTIMIZERS[optimizer]
    opt, topt = make_mge(params), make_torch(reference.parameters())
    gm = GradManager().attach(params)
    rng = np.random.RandomState(0)
    for _ in range(5):
        x, target = rng.randn(8, 6).astype("float32"), rng.randn(8, 6).astype("float32")
        with gm:
            loss = ((net(mge.tensor(x)) - mge.tensor(target)) ** 2).mean()
            gm.backward(loss)
        norm = optim.clip_grad_norm(params, max_norm=0.5)
        opt.step()
        opt.clear_grad()

        xt, target_t = (torch.tensor(a, device=torch_device()) for a in (x, target))
        tloss = ((_torch_forward(kind, reference, xt) - target_t) ** 2).mean()
        topt.zero_grad()
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.5)
        topt.step()
        np.testing.assert_allclose(loss.numpy(), tloss.item(), rtol=1e-5)
        np.testing.assert_allclose(norm.numpy(), tnorm.item(), rtol=1e-5)
    for (name, p), (tname, tp) in zip(tmod.named_parameters(), reference.named_parameters()):
        assert name == tname
        np.testing.assert_allclose(torch_host(p), torch_host(tp), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_tied_weight_is_one_parameter_named_once_and_saved_under_both_names():
    wrap = PyTorchModule(TiedPair())
    assert wrap.enc.weight is wrap.dec.weight
    names = [n for n, _ in wrap.named_parameters()]
    assert sorted(names) == ["dec.bias", "dec.weight", "enc.bias"]  # megengine's sorted walk
    assert wrap.get_param_by_name("enc.weight") is wrap.get_param_by_name("dec.weight")
    state = wrap.state_dict()  # as torch's state_dict: every name, one value
    assert set(state) == set(wrap.torch_module.state_dict())
    np.testing.assert_array_equal(state["enc.weight"], state["dec.weight"])


def test_gradients_of_shared_memory_are_separate_arrays():
    # torch may hand one tensor back as the gradient of two inputs (an add passes its output
    # gradient through); megengine must not give two parameters one array, or an in-place
    # clip scales it twice
    class Add(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor([3.0, 0.0, 0.0]))
            self.b = nn.Parameter(torch.tensor([0.0, 4.0, 0.0]))

        def forward(self, c):
            return (self.a + self.b) * c

    wrap = PyTorchModule(Add())
    c = mge.tensor([0.1, 0.1, 0.0])
    gm = GradManager().attach(wrap.parameters())
    with gm:
        gm.backward(wrap(c).sum())
    a, b = wrap.a, wrap.b
    assert address(a.grad) != address(b.grad)  # (numpy() copies, so compare the storage itself)
    optim.clip_grad_norm([a, b], max_norm=0.1)
    ta, tb = Add().a, Add().b
    loss = ((ta + tb) * torch.tensor([0.1, 0.1, 0.0])).sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([ta, tb], max_norm=0.1)
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-5)


# ----- whole-network pickling and copying -----

class Net(M.Module):
    """A megengine network around a torch block with tied weights and BatchNorm buffers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        block = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 6), bn=nn.BatchNorm1d(6),
                                          act=nn.Tanh(), fc2=nn.Linear(6, 6)))
        block.fc2.weight = block.fc1.weight
        self.block = PyTorchModule(block)
        self.head = M.Linear(6, 3)

    def forward(self, x):
        return self.head(self.block(x))


def _train(net, opt, batches):
    gm = GradManager().attach(net.parameters())
    for x, y in batches:
        with gm:
            loss = ((net(mge.tensor(x)) - mge.tensor(y)) ** 2).mean()
            gm.backward(loss)
        optim.clip_grad_norm(net.parameters(), 1.0)
        opt.step()
        opt.clear_grad()
    return {k: v for k, v in net.state_dict().items()}


def _batches(seed, n=3):
    rng = np.random.RandomState(seed)
    return [(rng.randn(8, 6).astype("float32"), rng.randn(8, 3).astype("float32")) for _ in range(n)]


def _assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_deepcopy_keeps_training_bit_identically():
    net = Net()
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _train(net, opt, _batches(0))
    twin = copy.deepcopy(net)
    assert twin.block.torch_module is not net.block.torch_module
    assert twin.block.torch_module.fc1.weight is twin.block.torch_module.fc2.weight  # tie kept
    assert twin.block.fc1.weight is twin.block.fc2.weight
    twin_opt = optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    twin_opt.load_state_dict(opt.state_dict())
    _assert_same_state(_train(twin, twin_opt, _batches(1)), _train(net, opt, _batches(1)))
    # the copy's mirrors view the copy's torch tensors: training it left the original alone
    assert address(twin.block.fc1.weight) != address(net.block.fc1.weight)


@pytest.mark.parametrize("saved_on", ["this device", "gpu0"])
def test_save_and_load_in_a_fresh_process_keep_training_bit_identically(tmp_path, saved_on,
                                                                         request):
    # "gpu0": the file says gpu0 (made here, see _saved_on_gpu0) and loads with map_location
    if saved_on == "gpu0":
        request.getfixturevalue("on_cpu")
    net = Net()
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _train(net, opt, _batches(0))
    ckpt = {"net": net, "opt": opt.state_dict()}
    if saved_on == "gpu0":
        (tmp_path / "ckpt.mge").write_bytes(_saved_on_gpu0(ckpt))
        load_args, device = ", map_location={'gpu0': 'cpu0'}", "cpu0"
    else:
        mge.save(ckpt, tmp_path / "ckpt.mge")
        load_args, device = "", mge.get_default_device()
    expected = _train(net, opt, _batches(1))
    script = f"""
import pickle, sys
import torch
torch.set_num_threads(1)  # as the test process (conftest): same kernels, same rounding
sys.path.insert(0, {str(Path(__file__).parent)!r})
sys.path.insert(0, {str(Path(__file__).parents[2])!r})  # tests/: devices.py
import megengine as mge, megengine.optimizer as optim
import test_shared as t
mge.set_default_device({device!r})
ckpt = mge.load({str(tmp_path / "ckpt.mge")!r}{load_args})
net = ckpt["net"]
opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
opt.load_state_dict(ckpt["opt"])
assert net.block.fc1.weight is net.block.fc2.weight
if {saved_on == "gpu0"!r}:
    t._assert_whole_on_cpu(net)
with open({str(tmp_path / "after.pkl")!r}, "wb") as f:
    pickle.dump(t._train(net, opt, t._batches(1)), f)
"""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    with open(tmp_path / "after.pkl", "rb") as f:
        _assert_same_state(pickle.load(f), expected)


def test_loaded_network_shares_memory_with_its_loaded_torch_module():
    net = pickle.loads(pickle.dumps(Net()))
    tmod = net.block.torch_module
    for name, p in net.block.named_parameters():
        assert address(p) == address(tmod.get_parameter(name)), name
    mean = net.block.bn.running_mean
    assert address(mean) == address(tmod.bn.running_mean)
    before = mean.numpy().copy()
    net(mge.tensor(np.random.randn(4, 6).astype("float32")))  # training mode: stats move in place
    assert not np.array_equal(before, mean.numpy())
    np.testing.assert_array_equal(mean.numpy(), torch_host(tmod.bn.running_mean))


# ----- loading on another device: mge.load's map_location reaches the torch half -----

@pytest.fixture
def on_cpu():
    """Networks built in the test live on cpu0, also on a machine with a GPU (the default device
    there), so that the trained copies compare bit for bit."""
    before = mge.get_default_device()
    mge.set_default_device("cpu0")
    yield
    mge.set_default_device(before)


def _saved_on_gpu0(obj):
    """``mge.save(obj)`` as a machine whose network lived on gpu0 writes it, made on the CPU:
    torch tags the storages ``cuda:0`` (its location_tag, patched while saving) and megengine's
    device names say ``gpu0`` (the stream's ``cpu0`` strings rewritten in place, same length)."""
    f = io.BytesIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        mge.save(obj, f)
    data = bytearray(f.getvalue())
    rewritten = 0
    for _, arg, pos in pickletools.genops(bytes(data)):
        if arg in ("cpu0", "cpu0:0"):
            start = data.index(arg.encode(), pos)
            data[start:start + 4] = b"gpu0"
            rewritten += 1
    assert rewritten and b"cuda:0" in data and not any(arg in ("cpu0", "cpu0:0") for _, arg, _ in
                                         pickletools.genops(bytes(data)))
    return bytes(data)


def _assert_whole_on_cpu(net):
    """Every part of a loaded Net is on the CPU, and the wrapper's mirrors view its torch module."""
    wrap, tmod = net.block, net.block.torch_module
    assert wrap._device == "cpu0" and net.head.weight.device == "cpu0"
    for name, t in list(wrap.named_parameters()) + list(wrap.named_buffers()):
        assert t.device == "cpu0", name
        torch_t = tmod.get_parameter(name) if isinstance(t, mge.Parameter) else \
            tmod.get_buffer(name)
        assert torch_t.device.type == "cpu" and address(t) == address(torch_t), name
    assert tmod.fc1.weight is tmod.fc2.weight and wrap.fc1.weight is wrap.fc2.weight


@pytest.mark.skipif(mge.is_cuda_available(), reason="checks the message on machines without CUDA")
def test_a_network_saved_on_gpu0_needs_map_location_on_a_cpu_machine(on_cpu):
    data = _saved_on_gpu0(Net())
    for map_location in (None, {"gpu1": "cpu0"}):
        # torch's own message names torch.load's argument; this one names megengine's
        with pytest.raises(RuntimeError, match=r"'cuda:0'.*'gpu0:0'.*map_location='cpu0'"):
            mge.load(io.BytesIO(data), map_location=map_location)
        assert mge.Tensor.dmap_callback is None


@pytest.mark.parametrize("how", ["name", "dict", "callable"])
def test_a_network_saved_on_gpu0_loads_and_trains_on_the_cpu(on_cpu, how):
    net = Net()
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _train(net, opt, _batches(0))
    data = _saved_on_gpu0({"net": net, "opt": opt.state_dict()})
    seen = set()
    map_location = {"name": "cpu0", "dict": {"gpu0": "cpu0"},
                    "callable": lambda saved: seen.add(saved) or "cpu0"}[how]
    ckpt = mge.load(io.BytesIO(data), map_location=map_location)
    if how == "callable":  # torch's storages, the wrapper and megengine's tensors: all "gpu0"
        assert seen == {"gpu0:0"}
    loaded = ckpt["net"]
    _assert_whole_on_cpu(loaded)
    loaded_opt = optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
    loaded_opt.load_state_dict(ckpt["opt"])
    _assert_same_state(_train(loaded, loaded_opt, _batches(1)), _train(net, opt, _batches(1)))
    _assert_whole_on_cpu(loaded)  # training wrote in place: still one memory


def test_a_mirror_in_a_file_from_before_the_mapping_is_refused_clearly(on_cpu, monkeypatch):
    # files written before this fork mapped torch tensors rebuild mirrors with `mirror_of` and
    # the saved device: a mapped torch tensor must not become a mirror that lies about its device
    from megengine.module.pytorch import shared

    monkeypatch.setattr(shared._TorchView, "__reduce_ex__", lambda self, protocol: (
        shared.mirror_of, (self.torch_tensor, self._device, isinstance(self, mge.Parameter))))
    data = _saved_on_gpu0(PyTorchModule(nn.Linear(2, 2)))
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="torch tensor on cpu cannot be a megengine tensor on "
                                           "gpu0.*re-save"):
        mge.load(io.BytesIO(data), map_location="cpu0")


@requires_torch_cuda
def test_a_network_saved_on_a_real_gpu_loads_on_the_cpu_and_back(on_cpu):
    x = np.random.RandomState(3).randn(8, 6).astype("float32")
    mge.set_default_device("gpu0")  # (the fixture restores the default)
    on_gpu = Net()
    assert on_gpu.block.torch_module.fc1.weight.is_cuda
    expected = host(on_gpu(mge.tensor(x)))
    f = io.BytesIO()
    mge.save(on_gpu, f)
    mge.set_default_device("cpu0")
    on_cpu = mge.load(io.BytesIO(f.getvalue()), map_location="cpu0")
    _assert_whole_on_cpu(on_cpu)
    np.testing.assert_allclose(on_cpu(mge.tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-6)

    g = io.BytesIO()
    mge.save(on_cpu, g)
    back = mge.load(io.BytesIO(g.getvalue()), map_location={"cpu0": "gpu0"})
    wrap, tmod = back.block, back.block.torch_module
    assert wrap._device == "gpu0" and back.head.weight.device == "gpu0"
    for name, p in wrap.named_parameters():
        assert p.device == "gpu0" and tmod.get_parameter(name).is_cuda, name
        assert address(p) == address(tmod.get_parameter(name)), name
    assert tmod.fc1.weight is tmod.fc2.weight and wrap.fc1.weight is wrap.fc2.weight
    np.testing.assert_allclose(host(back(mge.tensor(x, device="gpu0"))), expected, rtol=1e-5,
                               atol=1e-6)


@requires_torch_cuda
@pytest.mark.skipif(not mge.is_cuda_available() or mge.get_device_count("gpu") < 2,
                    reason="needs two GPUs")
def test_map_location_moves_the_torch_half_to_another_gpu_too(on_cpu):
    mge.set_default_device("gpu0")  # (the fixture restores the default)
    net = Net()
    f = io.BytesIO()
    mge.save(net, f)
    moved = mge.load(io.BytesIO(f.getvalue()), map_location="gpu1")
    assert moved.block._device == "gpu1" and moved.head.weight.device == "gpu1"
    for name, p in moved.block.named_parameters():
        tp = moved.block.torch_module.get_parameter(name)
        assert p.device == "gpu1" and tp.device == torch.device("cuda", 1), name
        assert address(p) == address(tp), name


def test_a_dead_tensors_callback_during_mirror_of_does_not_deadlock():
    # a garbage collection inside mirror_of (it holds the registry lock while it allocates) runs
    # the weakref callback of a dead torch tensor on the same thread; that callback takes the
    # lock again. Run it that way in a thread: a deadlock fails the test instead of hanging it.
    import threading

    from megengine.module.pytorch import shared

    dead = torch.zeros(2)
    mirror = shared.mirror_of(dead, "cpu0")
    key = id(dead)
    ref = shared._registry[key][0]
    done = threading.Event()

    def collect_while_locked():
        with shared._registry_lock:
            shared._forget(key, ref)  # what the callback does when `dead` dies now
        done.set()

    threading.Thread(target=collect_while_locked, daemon=True).start()
    assert done.wait(10), "the registry lock deadlocked its own thread"
    assert key not in shared._registry
    del mirror


def _mirrored_linear():
    lin = nn.Linear(2, 1, bias=False).to(torch_device())
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    wrap = PyTorchModule(lin)
    return lin, wrap, wrap.weight


@pytest.mark.parametrize("write", [
    lambda w: w.set_value(np.full((1, 2), 5, np.float32)),
    lambda w: w.__iadd__(mge.tensor([[4.0, 3.0]])),
], ids=["set_value", "+="])
def test_mirror_written_while_recording_before_its_use_reaches_torch(write):
    # a mirror's storage is torch's: a write goes there while recording too (`+=` rebound the
    # mirror to a new array, which torch never saw); the gradient is that of the new value
    lin, wrap, w = _mirrored_linear()
    x = mge.Parameter([[3.0, 4.0]])
    gm = GradManager().attach([w, x])
    with gm:
        write(w)
        y = wrap(x)
        gm.backward(y.sum())
    np.testing.assert_array_equal(torch_host(lin.weight), [[5.0, 5.0]])
    assert address(w) == address(lin.weight)
    np.testing.assert_array_equal(host(x.grad), [[5.0, 5.0]])
    np.testing.assert_array_equal(host(w.grad), [[3.0, 4.0]])


@pytest.mark.parametrize("write, torch_write", [
    (lambda w: w.__imul__(2.0), lambda w: w * 2),
    (lambda w: w.__itruediv__(4.0), lambda w: w / 4),
    (lambda w: w.__setitem__((0, 0), 5.0), lambda w: torch.cat([torch.full((1, 1), 5.0),
                                                                w[:, 1:]], 1)),
], ids=["*=", "/=", "setitem"])
def test_attached_mirror_written_by_an_op_before_its_use_differentiates_through_it(
        write, torch_write):
    # the op that computed the value written kept the old one (mul keeps both operands), but
    # its backward for the weight reads only the other operand: no error, torch's gradients
    tw = torch.tensor([[1.0, 2.0]], requires_grad=True)
    tx = torch.tensor([[3.0, 4.0]], requires_grad=True)
    (tx @ torch_write(tw).t()).sum().backward()
    lin, wrap, w = _mirrored_linear()
    x = mge.Parameter([[3.0, 4.0]])
    gm = GradManager().attach([w, x])
    with gm:
        write(w)
        gm.backward(wrap(x).sum())
    np.testing.assert_array_equal(torch_host(lin.weight), torch_write(tw).detach().numpy())
    np.testing.assert_array_equal(host(x.grad), tx.grad.numpy())
    np.testing.assert_array_equal(host(w.grad), tw.grad.numpy())


@pytest.mark.parametrize("write", [
    lambda w, s: w.__imul__(s),
    lambda w, s: w.set_value(w * s),
], ids=["*=", "set_value"])
def test_attached_mirror_scaled_by_an_attached_tensor_raises_not_a_wrong_gradient(write):
    # s's gradient reads w's old value, which the write replaced in torch's memory: torch's own
    # mul_ keeps a copy of it (s.grad = x * w), ours would have read the product (earlier
    # versions of this fork gave s.grad = x * w * s); gm.backward raises instead
    tw = torch.tensor([[1.0, 2.0]], requires_grad=True)
    ts = torch.tensor([[3.0, 5.0]], requires_grad=True)
    w_now = tw * 1
    w_now.mul_(ts)
    (torch.ones(1, 2) @ w_now.t()).sum().backward()
    np.testing.assert_array_equal(ts.grad.numpy(), [[1.0, 2.0]])  # what a gradient must be
    lin, wrap, w = _mirrored_linear()
    s = mge.Parameter([[3.0, 5.0]])
    gm = GradManager().attach([s])
    with gm:
        write(w, s)
        with pytest.raises(RuntimeError, match="Mul: a value it saved.*changed in place"):
            gm.backward(wrap(mge.tensor([[1.0, 1.0]])).sum())
    np.testing.assert_array_equal(torch_host(lin.weight), [[3.0, 10.0]])


def test_attached_mirror_squared_in_place_raises_not_a_wrong_gradient():
    # pow's gradient reads its base, which w **= 2 replaced in torch's memory: torch's pow_
    # keeps a copy (w's gradient 2 * w), earlier versions of this fork gave 2 * w ** 2
    tw = torch.tensor([[1.0, 2.0]], requires_grad=True)
    w_now = tw * 1
    w_now.pow_(2)
    (torch.ones(1, 2) @ w_now.t()).sum().backward()
    np.testing.assert_array_equal(tw.grad.numpy(), [[2.0, 4.0]])
    lin, wrap, w = _mirrored_linear()
    gm = GradManager().attach([w])
    with gm:
        w **= 2
        with pytest.raises(RuntimeError, match="Pow: a value it saved.*changed in place"):
            gm.backward(wrap(mge.tensor([[1.0, 1.0]])).sum())


@pytest.mark.parametrize("write", [
    lambda w: w.set_value(np.zeros((1, 2), np.float32)),
    lambda w: w.__iadd__(1.0),
], ids=["set_value", "+="])
def test_mirror_written_after_torch_saved_it_raises_at_backward(write):
    # torch computes with the mirror's memory, so the write goes there and torch's graph would
    # use the new value (x's gradient was [0, 0]): torch's version check raises instead, as
    # after an in-place write in torch
    lin, wrap, w = _mirrored_linear()
    x = mge.Parameter([[3.0, 4.0]])
    gm = GradManager().attach([x])
    with gm:
        y = wrap(x)
        write(w)
        with pytest.raises(RuntimeError, match="changed in place.*before `with gm:`"):
            gm.backward(y.sum())
    assert address(w) == address(lin.weight)


@pytest.mark.parametrize("write", [
    lambda w: w.set_value(np.zeros((3, 2), np.float32)),
    lambda w: w._reset(mge.tensor(np.zeros((2,), np.float32))),
    lambda w: w.__setitem__(Ellipsis, mge.tensor(np.zeros((3, 2), np.float32))),
    lambda w: w.__iadd__(mge.tensor(np.zeros((3, 1, 2), np.float32))),
], ids=["set_value", "_reset", "setitem of all", "+= broadcasting"])
@pytest.mark.parametrize("recording", [False, True])
def test_mirror_written_with_another_shape_raises_and_keeps_everything(write, recording):
    # the memory is torch's, which cannot take another shape (torch's own copy_ refuses it);
    # a new array would be what megengine computes with while torch goes on with the old one
    lin, wrap, w = _mirrored_linear()
    with pytest.raises(RuntimeError):  # the oracle: torch refuses the write into its memory
        with torch.no_grad():
            lin.weight.copy_(torch.zeros(3, 2))
    gm = GradManager().attach([w])
    with gm:
        if not recording:
            gm.release()
        with pytest.raises(ValueError, match=r"of shape \(1, 2\).*wrap it again"):
            write(w)
    assert address(w) == address(lin.weight) and w.shape == (1, 2)
    np.testing.assert_array_equal(host(w), [[1.0, 2.0]])
    np.testing.assert_array_equal(host(wrap(mge.tensor([[3.0, 4.0]]))), [[11.0]])


def _torch_backward_after_a_write(use, write):
    """The oracle: torch's own backward of ``use(x, w)`` after ``write(w)`` into w's memory."""
    w = torch.tensor([[1.0, 2.0]], requires_grad=True)
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    y = use(x, w)
    with torch.no_grad():
        write(w)
    try:
        y.sum().backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return None
    return x.grad.numpy()


@pytest.mark.parametrize("use, torch_use", [
    (lambda x, w: x * w, lambda x, w: x * w),
    (lambda x, w: F.matmul(x, w.transpose()), lambda x, w: x @ w.t()),
    (lambda x, w: x * w.reshape(2), lambda x, w: x * w.reshape(2)),
], ids=["mul", "matmul", "mul of a view"])
@pytest.mark.parametrize("write, torch_write", [
    (lambda w: w.set_value(np.zeros((1, 2), np.float32)), lambda w: w.zero_()),
    (lambda w: w.__iadd__(1.0), lambda w: w.add_(1.0)),
], ids=["set_value", "+="])
def test_mirror_written_after_a_megengine_op_saved_it_raises_at_backward(
        use, torch_use, write, torch_write):
    # a tied weight: torch's, also used by a MegEngine op, which kept its array; the write
    # goes into torch's memory, so that op's backward would compute with the new value (x's
    # gradient was the written weight): gm.backward raises, as torch's backward does
    assert _torch_backward_after_a_write(torch_use, torch_write) is None
    lin, wrap, w = _mirrored_linear()
    x = mge.Parameter([[3.0, 4.0]])
    gm = GradManager().attach([x])
    with gm:
        y = use(x, w)
        write(w)
        with pytest.raises(RuntimeError, match="changed in place.*before `with gm:`"):
            gm.backward(y.sum())
    with gm:  # the next recording is not refused
        gm.backward(use(x, w).sum())
    np.testing.assert_array_equal(host(x.grad).ravel(), host(w).ravel())


@pytest.mark.parametrize("write", [
    lambda w: w.set_value(w * 2),
    lambda w: w.__setitem__(Ellipsis, w * 2),
    lambda w: w.__imul__(2.0),
], ids=["set_value", "setitem", "*="])
@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_mirror_doubled_after_a_mul_used_it_raises_only_where_torchs_does(write, x_needs_grad):
    # torch's mul saves w only for x's gradient: with x a constant, torch's backward of
    # y = x * w after w.copy_(w * 2) goes on (the copy carries w * 2's graph); with x needing a
    # gradient it raises. Ours read w's kept array the same way (mul kept both operands, and
    # the check looked at both: it raised in both cases)
    tw = torch.tensor([[1.0, 2.0]], requires_grad=True)
    tx = torch.tensor([[3.0, 4.0]], requires_grad=x_needs_grad)
    w_now = tw * 1  # a non-leaf, which torch lets copy_ write with its graph
    ty = tx * w_now
    w_now.copy_(w_now * 2)
    try:
        (ty.sum() + w_now.sum()).backward()
    except RuntimeError as e:
        assert x_needs_grad and "modified by an inplace operation" in str(e)
    else:
        assert not x_needs_grad
    lin, wrap, w = _mirrored_linear()
    x = mge.Parameter([[3.0, 4.0]])
    gm = GradManager().attach([w, x] if x_needs_grad else [w])
    with gm:
        y = x * w
        write(w)
        if x_needs_grad:
            with pytest.raises(RuntimeError, match="changed in place.*before `with gm:`"):
                gm.backward(y.sum() + w.sum())
            return
        gm.backward(y.sum() + w.sum())
    np.testing.assert_array_equal(torch_host(lin.weight), [[2.0, 4.0]])
    np.testing.assert_array_equal(host(w.grad), tw.grad.numpy())


class _Weight(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(value))


_W = np.array([[0.6, 1.3, 0.9], [1.1, 0.8, 1.4]], np.float32)  # the mirror's forward value
_WRITTEN = np.array([[0.5, 0.7, 1.2], [0.9, 1.5, 0.4]], np.float32)
_X23 = np.array([[1.2, 0.7, 1.4], [0.6, 1.1, 0.9]], np.float32)
_X32 = _X23.T.copy()
_IMG = np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(1, 3, 2, 2)
_TF = torch.nn.functional

# (id, x's value, the use in MegEngine, the same in torch (None: the same code)). w is the
# mirror (2, 3) the use reads; the written input is w, wherever it stands in the use
_USES = [
    ("x + w", _X23, lambda x, w: x + w, None),
    ("x - w", _X23, lambda x, w: x - w, None),
    ("x * w", _X23, lambda x, w: x * w, None),
    ("x / w", _X23, lambda x, w: x / w, None),
    ("w / x", _X23, lambda x, w: w / x, None),
    ("w / 3", _X23, lambda x, w: w / 3, None),
    ("w ** 2", _X23, lambda x, w: w ** 2, None),
    ("w ** x", _X23, lambda x, w: w ** x, None),
    ("x ** w", _X23, lambda x, w: x ** w, None),
    ("w % x", _X23, lambda x, w: w % x, None),
    ("x % w", _X23, lambda x, w: x % w, None),
    ("w % 0.5", _X23, lambda x, w: w % 0.5, None),
    ("x * (w // 0.5)", _X23, lambda x, w: x * (w // 0.5),
     lambda x, w: x * torch.div(w, 0.5, rounding_mode="floor")),
    ("maximum", _X23, lambda x, w: F.maximum(x, w), torch.maximum),
    ("minimum 1", _X23, lambda x, w: F.minimum(w, 1.0), lambda x, w: w.clamp_max(1.0)),
    ("x @ w", _X32, lambda x, w: F.matmul(x, w), lambda x, w: x @ w),
    ("w @ x", _X32, lambda x, w: F.matmul(w, x), lambda x, w: w @ x),
    ("w @ x 1-d", _X32[:, 0], lambda x, w: F.matmul(w, x), lambda x, w: w @ x),
    ("batched @ w", _X32[None].repeat(2, 0), lambda x, w: F.matmul(x, w), lambda x, w: x @ w),
    ("linear", _X23, lambda x, w: F.linear(x, w), _TF.linear),
    ("linear bias", _X23, lambda x, w: F.linear(x, x, w[0, :2]),
     lambda x, w: _TF.linear(x, x, w[0, :2])),
    ("conv2d", _IMG, lambda x, w: F.conv2d(x, w.reshape(2, 3, 1, 1)),
     lambda x, w: _TF.conv2d(x, w.reshape(2, 3, 1, 1))),
    ("conv_transpose2d", _IMG[:, :2], lambda x, w: F.conv_transpose2d(x, w.reshape(2, 3, 1, 1)),
     lambda x, w: _TF.conv_transpose2d(x, w.reshape(2, 3, 1, 1))),
    ("batch_norm", _X32, lambda x, w: F.batch_norm(x, None, None, w[0, :2], w[1, :2],
                                                   training=True),
     lambda x, w: _TF.batch_norm(x, None, None, w[0, :2], w[1, :2], training=True)),
    ("layer_norm", _X23, lambda x, w: F.layer_norm(x, (3,), True, w[0], w[1]),
     lambda x, w: _TF.layer_norm(x, (3,), w[0], w[1])),
    ("group_norm", _X23[None] + 1, lambda x, w: F.nn.group_norm(x, 1, True, w[0, :2], w[1, :2]),
     lambda x, w: _TF.group_norm(x, 1, w[0, :2], w[1, :2])),
    ("instance_norm", _X23[None] + 1,
     lambda x, w: F.nn.instance_norm(x, affine=True, weight=w[0, :2], bias=w[1, :2]),
     lambda x, w: _TF.instance_norm(x, weight=w[0, :2], bias=w[1, :2])),
    ("abs", _X23, lambda x, w: F.abs(w) * x, lambda x, w: w.abs() * x),
    ("clip", _X23, lambda x, w: F.clip(w, 0.7, 1.2), lambda x, w: w.clamp(0.7, 1.2)),
    ("clip by x", _X23, lambda x, w: F.clip(w, x, 1.2),
     lambda x, w: w.clamp(x, torch.tensor(1.2, device=w.device))),
    ("where", _X23, lambda x, w: F.where(x > 1, w, x), lambda x, w: torch.where(x > 1, w, x)),
    ("w[0] + x[1]", _X23, lambda x, w: w[0] + x[1], None),
    ("w[[1, 0, 1]]", _X23, lambda x, w: w[[1, 0, 1]], None),
    ("w[x > 1]", _X23, lambda x, w: w[x > 1], None),
    ("gather", _X23, lambda x, w: F.gather(w, 1, mge.tensor([[0, 2], [1, 1]])),
     lambda x, w: w.gather(1, torch.tensor([[0, 2], [1, 1]], device=w.device))),
    ("concat", _X23, lambda x, w: F.concat([w, x]), lambda x, w: torch.cat([w, x])),
    ("stack", _X23, lambda x, w: F.stack([w, x]), lambda x, w: torch.stack([w, x])),
    ("split", _X23, lambda x, w: F.split(w, 3, axis=1)[1], lambda x, w: w.split(1, 1)[1]),
    ("reshape", _X23, lambda x, w: w.reshape(3, 2), None),
    ("transpose", _X23, lambda x, w: w.transpose(1, 0), lambda x, w: w.permute(1, 0)),
    ("broadcast_to", _X23, lambda x, w: F.broadcast_to(w, (2, 2, 3)),
     lambda x, w: w.expand(2, 2, 3)),
    ("sum", _X23, lambda x, w: w.sum(1), None),
    ("mean", _X23, lambda x, w: w.mean(1), None),
    ("prod", _X23, lambda x, w: w.prod(1), None),
    ("max", _X23, lambda x, w: w.max(1), lambda x, w: w.amax(1)),
    ("var", _X23, lambda x, w: F.var(w, 1), lambda x, w: w.var(1, unbiased=False)),
    ("exp", _X23, lambda x, w: F.exp(w), lambda x, w: torch.exp(w)),
    ("expm1", _X23, lambda x, w: F.expm1(w), lambda x, w: torch.expm1(w)),
    ("log", _X23, lambda x, w: F.log(w), lambda x, w: torch.log(w)),
    ("sqrt", _X23, lambda x, w: F.sqrt(w), lambda x, w: torch.sqrt(w)),
    ("square", _X23, lambda x, w: F.square(w), lambda x, w: torch.square(w)),
    ("sin", _X23, lambda x, w: F.sin(w), lambda x, w: torch.sin(w)),
    ("tan", _X23, lambda x, w: F.tan(w), lambda x, w: torch.tan(w)),
    ("tanh", _X23, lambda x, w: F.tanh(w), lambda x, w: torch.tanh(w)),
    ("floor", _X23, lambda x, w: F.floor(w) * x, lambda x, w: w.floor() * x),
    ("relu", _X23, lambda x, w: F.relu(w - 1.0), lambda x, w: torch.relu(w - 1.0)),
    ("sigmoid", _X23, lambda x, w: F.sigmoid(w), lambda x, w: torch.sigmoid(w)),
    ("silu", _X23, lambda x, w: F.silu(w), lambda x, w: _TF.silu(w)),
    ("gelu", _X23, lambda x, w: F.gelu(w), lambda x, w: _TF.gelu(w)),
    ("softmax", _X23, lambda x, w: F.softmax(w, 1), lambda x, w: torch.softmax(w, 1)),
    ("cross_entropy", _X23, lambda x, w: F.loss.cross_entropy(w, mge.tensor([0, 2])),
     lambda x, w: _TF.cross_entropy(w, torch.tensor([0, 2], device=w.device))),
    ("embedding", _X23, lambda x, w: F.embedding(mge.tensor([1, 0, 1]), w),
     lambda x, w: _TF.embedding(torch.tensor([1, 0, 1], device=w.device), w)),
    ("max_pool2d", _X23, lambda x, w: F.max_pool2d(w.reshape(1, 1, 2, 3), 2, 1),
     lambda x, w: _TF.max_pool2d(w.reshape(1, 1, 2, 3), 2, 1)),
    ("max_pool2d disjoint", _X23, lambda x, w: F.max_pool2d(w.reshape(1, 1, 2, 3), 1, 1),
     lambda x, w: _TF.max_pool2d(w.reshape(1, 1, 2, 3), 1, 1)),
    ("avg_pool2d", _X23, lambda x, w: F.avg_pool2d(w.reshape(1, 1, 2, 3), 2, 1),
     lambda x, w: _TF.avg_pool2d(w.reshape(1, 1, 2, 3), 2, 1)),
    ("adaptive_avg_pool2d", _X23, lambda x, w: F.adaptive_avg_pool2d(w.reshape(1, 1, 2, 3), 1),
     lambda x, w: _TF.adaptive_avg_pool2d(w.reshape(1, 1, 2, 3), 1)),
]
# Where torch's backward saved more than it reads (clip, gather and pooling the whole input for
# a mask, a shape or the maxima's indices, var a view of it), saved the weight itself where
# ours keeps a copy (group_norm; torch's instance_norm copies it too) or refuses a write into the
# base of split's views, torch raises; ours kept what its backward reads (the mask, the shape,
# the indices, the copy), so it computes with what its forward saw: upstream's gradient
_KEPT_WHAT_IT_READS = {"clip", "gather", "split", "var", "max_pool2d", "avg_pool2d",
                       "group_norm"}


def _torch_grads_after_a_write(use, x_value, needs, write):
    """The oracle: torch's gradients of (x, w) for ``use(x, w)``, with or without a write into
    w's memory between the forward and the backward; None where torch's backward refuses.
    It runs on the wrapper's torch device: megengine runs the norms and convolutions on
    ATen's kernels for that device, whose float32 results differ from the CPU's by ~1e-5."""
    device = torch_device()
    x = torch.tensor(x_value, device=device, requires_grad=needs[0])
    w = torch.tensor(_W, device=device, requires_grad=needs[1])
    y = use(x, w)
    if write:
        with torch.no_grad():
            w.copy_(torch.tensor(_WRITTEN))
    try:
        (y * torch.linspace(0.5, 2.0, y.numel(), device=device).reshape(y.shape)).sum().backward()
    except RuntimeError as e:
        if "modified by an inplace operation" not in str(e) \
                and "has been modified inplace" not in str(e):  # (split's views)
            raise
        return None
    return [None if t.grad is None else torch_host(t.grad) for t in (x, w)]


@pytest.mark.parametrize("name, use, x_value, torch_use", [
    pytest.param(name, use, x_value, torch_use or use, id=name)
    for name, x_value, use, torch_use in _USES])
@pytest.mark.parametrize("needs", [(False, True), (True, False), (True, True)],
                         ids=["w needs grad", "x needs grad", "both need grads"])
def test_mirror_written_after_a_use_raises_exactly_where_torchs_backward_does(
        name, use, x_value, torch_use, needs):
    # each op says which of its arrays its backward reads for the gradients asked for, as
    # torch's saves them (x @ w with only w's gradient asked for reads x; exp reads its
    # output; sum a shape): a write into the mirror after the use makes gm.backward raise
    # exactly where torch's backward does, and gives torch's gradients where torch's does not.
    # Earlier versions of this fork raised for every op but add and sub, and missed the
    # arrays of the ops running on ATen's kernels (conv and the norms), whose gradients for x
    # were then computed with the written weight
    try:
        want = _torch_grads_after_a_write(torch_use, x_value, needs, write=False)
    except RuntimeError as e:  # nothing of what needs a gradient is used
        assert "does not require grad" in str(e)
        return
    torch_raises = _torch_grads_after_a_write(torch_use, x_value, needs, write=True) is None
    if name in _KEPT_WHAT_IT_READS:
        assert torch_raises  # (the list stays true)
        torch_raises = False
    wrap = PyTorchModule(_Weight(_W).to(torch_device()))
    x, w = mge.Parameter(x_value), wrap.w
    gm = GradManager().attach([t for t, need in zip((x, w), needs) if need])
    with gm:
        y = use(x, w)
        w.set_value(_WRITTEN)
        loss = (y * mge.tensor(np.linspace(0.5, 2.0, y.size, dtype=np.float32))
                .reshape(y.shape)).sum()
        if torch_raises:
            with pytest.raises(RuntimeError, match="changed in place.*before `with gm:`"):
                gm.backward(loss)
            return
        gm.backward(loss)
    for t, need, expected in zip((x, w), needs, want):
        if need:  # (None: no gradient reached it, torch's zeros through w // 0.5)
            got = 0 if t.grad is None else host(t.grad)
            np.testing.assert_allclose(got, 0 if expected is None else expected, rtol=1e-5,
                                       atol=1e-6)


def test_mirror_written_after_an_add_used_it_keeps_the_gradient():
    # add's backward reads no value: torch's backward goes on, and so does gm.backward
    expected = _torch_backward_after_a_write(lambda x, w: x + w, lambda w: w.zero_())
    lin, wrap, w = _mirrored_linear()
    x = mge.Parameter([[3.0, 4.0]])
    gm = GradManager().attach([x])
    with gm:
        y = x + w
        w.set_value(np.zeros((1, 2), np.float32))
        gm.backward(y.sum())
    np.testing.assert_array_equal(host(x.grad), expected)


def test_detached_alias_of_a_mirror_keeps_its_value_as_upstreams():
    # a mirror's memory is torch's and a write goes there (torch's own detach() sees it); a
    # megengine alias is a megengine value, which takes a copy first (upstream's values never
    # change; earlier versions of this fork let it follow the write, as torch's detach)
    lin, wrap, w = _mirrored_linear()
    t_alias, alias = lin.weight.detach(), w.detach()
    before = host(alias).copy()
    w.set_value(np.full((1, 2), 7.0, np.float32))
    np.testing.assert_array_equal(torch_host(t_alias), [[7.0, 7.0]])
    np.testing.assert_array_equal(host(alias), before)
    assert address(w) == address(lin.weight)


@pytest.mark.parametrize("write", ["sgd", "set_value", "+=", "setitem"])
def test_megengine_views_of_a_mirror_keep_their_values_through_writes(write):
    # autodiff fuzz: b[...] (and slices, reshapes, detach) held across an optimizer step
    # followed it; a view of a plain Parameter keeps its value (the parameter moves), a mirror
    # cannot move, so the views take copies before the write
    from megengine.autodiff import GradManager
    from megengine.optimizer import SGD

    lin = nn.Linear(4, 3).to(torch_device())
    wrap = PyTorchModule(lin)
    w = dict(wrap.named_parameters())["weight"]
    views = [w[...], w[1:], w.reshape(-1), w.transpose(1, 0), w.detach(), w[1:].reshape(-1)[2:],
             w.detach()[0]]
    before = [host(v).copy() for v in views]
    if write == "sgd":
        gm = GradManager().attach(wrap.parameters())
        with gm:
            gm.backward(wrap(mge.tensor(np.ones((2, 4), np.float32))).sum())
        SGD(wrap.parameters(), lr=0.5).step()
    elif write == "set_value":
        w.set_value(np.zeros((3, 4), np.float32))
    elif write == "+=":
        w += 1.0
    else:
        w[0] = 5.0
    assert not np.array_equal(torch_host(lin.weight), before[0])  # torch saw the write
    for v, b in zip(views, before):
        np.testing.assert_array_equal(host(v), b)
    assert address(w) == address(lin.weight)


def test_augmented_assignment_to_a_mirrored_buffer_reaches_torch():
    # a buffer is not a Parameter, but its memory is torch's: `+=` writes there (it gave the
    # MegEngine tensor a new array, which torch never saw)
    bn = nn.BatchNorm1d(2).to(torch_device())
    wrap = PyTorchModule(bn)
    running = dict(wrap.named_buffers())["running_mean"]
    running += mge.tensor([1.0, 2.0])
    np.testing.assert_array_equal(torch_host(bn.running_mean), [1.0, 2.0])
    assert address(running) == address(bn.running_mean)


@pytest.mark.parametrize("write", [
    lambda w: w.set_value(np.zeros((3, 3), np.float32)),
    lambda w: w.__iadd__(mge.tensor(np.ones((2, 1, 2), np.float32))),  # broadcasts to (2, 1, 2)
], ids=["set_value", "+="])
def test_a_write_of_another_shape_into_a_mirror_raises_and_changes_nothing(write):
    # torch's tensor keeps its shape, so the value could never reach torch: the mirror took a
    # new array (megengine trained and saved a (3, 3) weight torch never used)
    lin, wrap, w = _mirrored_linear()
    with pytest.raises(ValueError, match=r"shape \(1, 2\).*\(3, 3\)|shape \(1, 2\).*\(2, 1, 2\)"):
        write(w)
    assert w.shape == (1, 2) and address(w) == address(lin.weight)
    np.testing.assert_array_equal(host(w), [[1.0, 2.0]])
    np.testing.assert_array_equal(host(wrap(mge.tensor([[3.0, 4.0]]))), [[11.0]])


def test_repeated_writes_of_a_mirror_while_recording_keep_one_entry():
    # a 0.x program recording on across steps writes the same parameters step after step: what
    # gm.backward checks stays one entry per parameter (the last write's), not one per write
    from megengine.core import dispatch

    lin, wrap, w = _mirrored_linear()
    x = mge.Parameter([[3.0, 4.0]])
    gm = GradManager().attach([x])
    with gm:
        y = x * w
        for i in range(5):
            w.set_value(np.full((1, 2), i, np.float32))
        assert len(dispatch._pinned_writes) == 1
        with pytest.raises(RuntimeError, match="changed in place"):
            gm.backward(y.sum())
    assert not dispatch._pinned_writes  # no recording open: nothing left to check


def test_a_mirror_keeps_torchs_dtype_when_written_with_another():
    # a MegEngine tensor written with a Tensor of another dtype takes that dtype (upstream's
    # `_reset`); a mirror's memory is torch's parameter, whose dtype stays, as torch's copy_
    lin = torch.nn.Linear(2, 2)
    wrap = PyTorchModule(lin)
    w = dict(wrap.named_parameters())["weight"]
    w.set_value(mge.tensor(np.full((2, 2), 0.5, np.float16)))
    w += mge.tensor(np.ones((2, 2), np.int32))
    w[...] = w * mge.tensor(np.full((2, 2), 2, np.int32))
    wrap.load_state_dict({k: np.full(v.shape, 4, np.float16) if k == "bias" else v
                          for k, v in wrap.state_dict().items()})
    assert w.dtype == np.float32 and lin.weight.dtype == torch.float32
    np.testing.assert_array_equal(torch_host(lin.weight), np.full((2, 2), 3.0))
    np.testing.assert_array_equal(torch_host(lin.bias), [4.0, 4.0])
