"""State given to a wrapped torch module after wrapping (module/pytorch/_watch.py): an error, never
a tensor torch uses that megengine silently leaves untrained or unsaved."""
import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

import megengine as mge
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.module.pytorch import PyTorchModule
from devices import torch_device, torch_host


def _x():
    return mge.tensor(np.random.RandomState(0).randn(4, 5).astype("float32"))


def _head():
    return nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))


class _LazyState(nn.Module):
    """Registers a buffer on its first forward (the pattern of running counters and caches)."""

    def __init__(self, persistent):
        super().__init__()
        self.lin, self.persistent = nn.Linear(5, 3), persistent

    def forward(self, x):
        self.register_buffer("cache", x.detach().sum(0), persistent=self.persistent)
        return self.lin(x) + self.cache[:3]


@pytest.mark.parametrize("change, named", [
    (lambda m: m.__setitem__(2, nn.Linear(5, 2)), "submodule '2'"),  # a new head
    (lambda m: m.__setitem__(2, m[0]), "submodule '2'"),  # the old head's tensors left unused
    (lambda m: m.append(nn.Linear(3, 2)), "submodule '3'"),
    (lambda m: setattr(m[0], "scale", nn.Parameter(torch.ones(5))), "parameter '0.scale'"),
    (lambda m: m[2].register_buffer("stat", torch.ones(3)), "buffer '2.stat'"),
    (lambda m: torch.nn.utils.parametrizations.weight_norm(m[0]), "submodule '0.parametrizations"),
    # a stateless newcomer is watched too
    (lambda m: (m.__setitem__(1, nn.GELU()), setattr(m[1], "p", nn.Parameter(torch.ones(1)))),
     "parameter '1.p'"),
], ids=["new_head", "tied_head", "appended", "parameter", "buffer", "weight_norm", "via_a_stateless_newcomer"])
def test_state_added_after_wrapping_is_an_error_naming_it(change, named):
    tmod = _head()
    wrap = PyTorchModule(tmod)
    wrap(_x())
    change(tmod)
    for _ in range(2):  # and it stays an error
        with pytest.raises(RuntimeError, match=f"gained {named}.*after it was wrapped.*wrap the"):
            wrap(_x())


class _Aliasing(nn.Module):
    """Gives its layer a second name on each forward (a reference kept for later use)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        self.last = self.fc
        return self.last(x)


@pytest.mark.parametrize("alias", [
    lambda m: None,  # the forward names the layer again
    lambda m: setattr(m, "weight", m.fc.weight),  # a parameter named again after wrapping
], ids=["submodule_in_forward", "parameter"])
def test_a_new_name_for_mirrored_tensors_trains_like_torch(alias):
    # torch computes with tensors megengine mirrors and trains: no state was added (it raised
    # 'gained submodule last')
    torch.manual_seed(0)
    tmod = _Aliasing().to(torch_device())
    reference = copy.deepcopy(tmod)
    wrap = PyTorchModule(tmod)
    alias(tmod)
    gm = GradManager().attach(wrap.parameters())
    for _ in range(2):
        with gm:
            out = wrap(_x())
            gm.backward((out * out).sum())
    tx = torch.tensor(_x().numpy(), device=torch_device())
    for _ in range(2):
        (reference(tx) ** 2).sum().backward()
    np.testing.assert_allclose(out.numpy(), torch_host(reference(tx)), rtol=1e-6)
    np.testing.assert_allclose(wrap.fc.weight.grad.numpy(), torch_host(reference.fc.weight.grad),
                               rtol=1e-5)


def test_a_swapped_in_head_is_not_left_silently_untrained():
    """Before: the old head kept its tensors, the address check passed, the new head never moved."""
    tmod = _head()
    wrap = PyTorchModule(tmod)
    tmod[2] = nn.Linear(5, 2).to(torch_device())
    gm = GradManager().attach(wrap.parameters())
    with pytest.raises(RuntimeError, match="submodule '2'"):
        with gm:
            gm.backward(wrap(_x()).sum())


def test_a_buffer_registered_in_forward_is_an_error_unless_non_persistent():
    with pytest.raises(RuntimeError, match="gained buffer 'cache'.*forward pass in torch first"):
        PyTorchModule(_LazyState(persistent=True))(_x())
    # a cache torch does not save (rotary tables, masks) may come and go on every call
    torch.manual_seed(0)
    tmod = _LazyState(persistent=False)
    reference = copy.deepcopy(tmod).to(torch_device())
    wrap = PyTorchModule(tmod)
    for _ in range(3):
        out = wrap(_x())
    np.testing.assert_allclose(out.numpy(), torch_host(reference(torch.tensor(_x().numpy(), device=torch_device()))),
                               rtol=1e-6)
    # and created before wrapping, a persistent one is ordinary state
    lazy = _LazyState(persistent=True)
    lazy(torch.zeros(4, 5))
    wrap = PyTorchModule(lazy)
    wrap(_x())
    assert "cache" in wrap.state_dict()


def test_stateless_swaps_and_in_place_updates_still_train_like_torch():
    torch.manual_seed(0)
    tmod = _head()
    wrap = PyTorchModule(tmod)
    tmod[1] = nn.GELU()  # no state: megengine has nothing to mirror
    tmod[0].weight = tmod[0].weight  # the same tensor again
    reference = copy.deepcopy(tmod)
    opt = optim.SGD(wrap.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    gm = GradManager().attach(wrap.parameters())
    for _ in range(2):
        with gm:
            gm.backward((wrap(_x()) ** 2).sum())
        opt.step().clear_grad()
        ref_opt.zero_grad()
        (reference(torch.tensor(_x().numpy(), device=torch_device())) ** 2).sum().backward()
        ref_opt.step()
    for name, p in reference.named_parameters():
        np.testing.assert_allclose(torch_host(tmod.get_parameter(name)), torch_host(p), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


@pytest.mark.parametrize("copy_of", [copy.deepcopy, lambda w: pickle.loads(pickle.dumps(w))],
                         ids=["deepcopy", "pickle"])
def test_copies_are_watched_on_their_own(copy_of):
    wrap = PyTorchModule(_head())
    twin = copy_of(wrap)
    twin.torch_module[0].scale = nn.Parameter(torch.ones(5, device=torch_device()))
    with pytest.raises(RuntimeError, match="parameter '0.scale'"):
        twin(_x())
    wrap(_x())  # the original's torch module did not change


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_what_torch_refuses_or_what_leaves_the_tree_is_not_an_error():
    scripted = torch.jit.script(_head())
    wrap = PyTorchModule(scripted)
    with pytest.raises(RuntimeError, match="Cannot re-assign modules in a ScriptModule"):
        scripted.new = nn.Linear(2, 2)  # torch refuses it after its registration hooks ran
    wrap(_x())
    tmod = _head()
    wrap = PyTorchModule(tmod)
    relu = tmod[1]
    tmod[1] = nn.GELU()  # relu leaves the tree
    relu.p = nn.Parameter(torch.ones(1))
    tmod[2].register_buffer("gone", torch.ones(1))
    del tmod[2].gone
    wrap(_x())


class _RunningMean(nn.Module):
    """Keeps running statistics by rebinding its buffers in forward, as much torch code does
    (torch's own BatchNorm writes them in place); eval normalises with them."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        y = self.lin(x)
        if self.training:
            self.mean = self.mean * 0.9 + 0.1 * y.mean(0)  # not detached: torch's own choice
            self.mean = self.mean.detach()  # rebound twice in one call
            self.steps = self.steps + 1
            return y
        return y - self.mean


def test_buffers_rebound_in_forward_stay_shared_and_train_like_torch():
    """Before: the wrapper's next call raised that 'mean' was replaced, and megengine's
    state_dict kept the value from before the call."""
    torch.manual_seed(0)
    tmod = _RunningMean().to(torch_device())
    twin = copy.deepcopy(tmod)
    wrap = PyTorchModule(tmod)
    mean_view, address = wrap.mean, tmod.mean.data_ptr()
    opt, twin_opt = optim.SGD(wrap.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    gm = GradManager().attach(wrap.parameters())
    rng = np.random.RandomState(0)
    for _ in range(3):
        x = rng.randn(4, 5).astype("float32")
        with gm:
            gm.backward((wrap(mge.tensor(x)) ** 2).sum())
        opt.step().clear_grad()
        twin_opt.zero_grad()
        (twin(torch.tensor(x, device=torch_device())) ** 2).sum().backward()
        twin_opt.step()
    assert tmod.mean.data_ptr() == address and wrap.mean is mean_view
    state = wrap.state_dict()
    for name, want in twin.state_dict().items():
        np.testing.assert_allclose(state[name], torch_host(want), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    assert int(state["steps"]) == 3
    x = rng.randn(4, 5).astype("float32")
    wrap.eval(), twin.eval()
    np.testing.assert_allclose(wrap(mge.tensor(x)).numpy(),
                               torch_host(twin(torch.tensor(x, device=torch_device()))),
                               rtol=1e-6, atol=1e-6)


class _GrowingQueue(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("queue", torch.zeros(2, 5))

    def forward(self, x):
        if self.training:
            self.queue = torch.cat([self.queue, x.detach()])  # one more row each call
        return x * 2


def test_a_buffer_rebound_to_another_shape_in_forward_is_refused_and_kept():
    tmod = _GrowingQueue()
    wrap = PyTorchModule(tmod)
    queue, address = tmod.queue, tmod.queue.data_ptr()
    with pytest.raises(RuntimeError, match=r"'queue' was \(2, 5\) float32.*now \(6, 5\).*"
                                           r"in place.*persistent=False"):
        wrap(_x())
    assert tmod.queue is queue and tmod.queue.data_ptr() == address
    np.testing.assert_array_equal(wrap.queue.numpy(), np.zeros((2, 5)))
    wrap.eval()  # the wrapper is whole: calls that keep the buffer run
    np.testing.assert_array_equal(wrap(_x()).numpy(), _x().numpy() * 2)


class _FailsAfterRebinding(nn.Module):
    """Rebinds its running mean, then raises on a bad batch (a check after the statistics)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.register_buffer("mean", torch.zeros(5))

    def forward(self, x):
        self.mean = self.mean * 0.5 + x.detach().mean(0)
        if not torch.isfinite(x).all():
            raise ValueError("a batch with nan")
        return self.lin(x)


def test_a_forward_raising_after_rebinding_a_buffer_leaves_the_wrapper_whole():
    """Before: the buffer stayed rebound to torch's new tensor, megengine's kept the old value,
    and every later call raised that 'mean' was replaced."""
    torch.manual_seed(0)
    tmod = _FailsAfterRebinding().to(torch_device())
    twin = copy.deepcopy(tmod)
    wrap = PyTorchModule(tmod)
    mean, address = tmod.mean, tmod.mean.data_ptr()
    bad = np.full((4, 5), np.nan, "float32")
    bad[0] = 1.0
    with pytest.raises(ValueError, match="a batch with nan"):
        wrap(mge.tensor(bad))
    with pytest.raises(ValueError, match="a batch with nan"):
        twin(torch.tensor(bad, device=torch_device()))
    assert tmod.mean is mean and tmod.mean.data_ptr() == address
    # the value torch gave the buffer before raising, on both sides, as in torch alone
    np.testing.assert_array_equal(wrap.mean.numpy(), torch_host(twin.mean))
    x = _x()
    np.testing.assert_allclose(wrap(x).numpy(), torch_host(twin(torch.tensor(
        x.numpy(), device=torch_device()))), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(wrap.state_dict()["mean"], torch_host(twin.mean))


def test_a_forward_raising_after_rebinding_a_buffer_to_another_shape_keeps_its_error():
    class Fails(_GrowingQueue):
        def forward(self, x):
            super().forward(x)
            raise ValueError("the module's own error")

    tmod = Fails()
    wrap = PyTorchModule(tmod)
    queue = tmod.queue
    with pytest.raises(ValueError, match="the module's own error") as caught:
        wrap(_x())
    assert "'queue' was (2, 5) float32" in "".join(caught.value.__notes__)
    assert tmod.queue is queue


class _RebindsItsParameter(nn.Module):
    def __init__(self, same_memory):
        super().__init__()
        self.w = nn.Parameter(torch.ones(5))
        self.same_memory = same_memory

    def forward(self, x):
        if self.training:  # e.g. a weight clipped by building a new parameter
            self.w = nn.Parameter(self.w.data if self.same_memory else self.w.clamp(0, 0.5))
        return x * self.w


@pytest.mark.parametrize("same_memory", [False, True])
def test_a_parameter_rebound_in_forward_is_refused_with_the_fix_and_kept(same_memory):
    """Before: that call trained nothing (the gradient went to the new torch parameter, the
    megengine one got none) and the next call raised that 'w' was replaced, without saying
    what to do; on the same memory (nn.Parameter(self.w.data)) no call ever raised."""
    tmod = _RebindsItsParameter(same_memory)
    wrap = PyTorchModule(tmod)
    w = tmod.w
    gm = GradManager().attach(wrap.parameters())
    with pytest.raises(RuntimeError, match=r"parameter\(s\) 'w' were assigned a new "
                                           r"nn.Parameter.*never be trained.*kept.*in place"):
        with gm:
            gm.backward(wrap(_x()).sum())
    assert tmod.w is w and wrap.w.grad is None
    np.testing.assert_array_equal(wrap.w.numpy(), np.ones(5))
    wrap.eval()  # the wrapper is whole: a forward that keeps its parameter trains it
    with gm:
        gm.backward(wrap(_x()).sum())
    np.testing.assert_allclose(wrap.w.grad.numpy(), _x().numpy().sum(0), rtol=1e-6)


def test_a_functional_call_inside_forward_leaves_the_shared_buffers_as_they_were():
    """torch.func.functional_call swaps buffers in and back by assignment: no rebinding to
    adopt (adopting the swapped-in value would overwrite the buffer)."""
    class Swaps(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(5)

        def forward(self, x):
            stats = {"running_mean": torch.ones(5, device=x.device),
                     "running_var": torch.full((5,), 4.0, device=x.device)}
            return torch.func.functional_call(self.bn, stats, (x,))

    tmod = Swaps().eval()
    wrap = PyTorchModule(tmod)
    x = _x()
    np.testing.assert_allclose(wrap(x).numpy(), (x.numpy() - 1) / np.sqrt(4 + 1e-5), rtol=1e-6)
    np.testing.assert_array_equal(torch_host(tmod.bn.running_mean), np.zeros(5))
    np.testing.assert_array_equal(wrap.bn.running_var.numpy(), np.ones(5))


class _CachesLast(nn.Module):
    """Registers its cache empty (None) and fills it in forward: torch's state_dict has it from
    then on."""

    def __init__(self, persistent):
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.register_buffer("last", None, persistent=persistent)

    def forward(self, x):
        self.last = x.detach().mean(0)
        return self.lin(x)


def test_a_buffer_registered_empty_and_set_in_forward_is_named_until_wrapped_after_it():
    """Before: megengine's state_dict silently lacked 'last', which torch's had."""
    tmod = _CachesLast(persistent=True)
    with pytest.raises(RuntimeError, match="gained buffer 'last' after it was wrapped"):
        PyTorchModule(tmod)(_x())
    PyTorchModule(_CachesLast(persistent=False))(_x())  # not state megengine saves: fine
    tmod = _CachesLast(persistent=True).to(torch_device())
    tmod(torch.zeros(1, 5, device=torch_device()))  # the fix: one torch forward, then wrap
    wrap = PyTorchModule(tmod)
    wrap(_x())  # rebinding it in forward is then taken into the shared memory
    np.testing.assert_allclose(wrap.state_dict()["last"], _x().numpy().mean(0), rtol=1e-6)
    assert wrap.state_dict().keys() == tmod.state_dict().keys()
