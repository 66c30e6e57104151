"""Tests for megengine/jit/captures.py: a tensor captured by ``trace(capture_as_const=True)``
that changes by any means makes the next checked call raise "tensors not equals", although
its bits are compared only after the engine wrote into some tensor (each write path below
must count its write: with the count missing, the cached verdict "unchanged" would let the
call through), and always where the storage is shared with someone the engine cannot see."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.core.tensor import _writes
from megengine.device import get_array_module
from megengine.functional.inplace import _inplace_add_
from megengine.jit import TraceMismatchError, captures, trace

MODES = [False, True]


def _traced_linear(symbolic):
    """A Linear layer's forward traced with capture_as_const, called twice (recorded, then
    checked once: the guards hold their verdict)."""
    mge.random.seed(0)  # the initial weights
    net = M.Linear(3, 2)
    f = trace(lambda x: net(x), symbolic=symbolic, capture_as_const=True)
    x = mge.tensor(np.arange(6, dtype="float32").reshape(2, 3))
    f(x)
    np.testing.assert_allclose(f(x).numpy(), net(x).numpy(), rtol=1e-6)
    return net, f, x


def _sgd_step(net, opt_cls, **kw):
    gm = GradManager().attach(net.parameters())
    opt = opt_cls(net.parameters(), **kw)
    with gm:
        gm.backward(net(mge.tensor(np.ones((2, 3), "float32"))).sum())
    opt.step()


WRITES = {
    "_reset": lambda net: net.weight._reset(np.zeros((2, 3), "float32")),
    "set_value": lambda net: net.weight.set_value(np.ones((2, 3), "float32")),
    "setitem of all": lambda net: net.weight.__setitem__(Ellipsis, mge.tensor(np.ones((2, 3)))),
    "setitem of a row": lambda net: net.weight.__setitem__(0, 5.0),
    "augmented operator": lambda net: net.bias.__iadd__(1.0),
    "_inplace_add_": lambda net: _inplace_add_(net.bias, mge.tensor([1.0, 2.0]), 1.0, 0.5),
    "SGD momentum step": lambda net: _sgd_step(net, optim.SGD, lr=0.1, momentum=0.9),
    "Adam step": lambda net: _sgd_step(net, optim.Adam, lr=0.1),
    "LAMB step": lambda net: _sgd_step(net, optim.LAMB, lr=0.1),
    "load_state_dict": lambda net: net.load_state_dict(
        {"weight": np.full((2, 3), 2.0, "float32"), "bias": np.zeros(2, "float32")}),
}


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("how", sorted(WRITES))
def test_every_engine_write_to_a_capture_is_caught(how, symbolic):
    net, f, x = _traced_linear(symbolic)
    WRITES[how](net)
    with pytest.raises(TraceMismatchError) as info:
        f(x)
    assert str(info.value) == "trace error because tensors not equals"
    assert "new value since the trace captured it" in info.value.detail


def test_zero_grad_counts_its_write():
    # (gradients are read live, never captured; the count is what makes that safe to change)
    net = M.Linear(3, 2)
    opt = optim.SGD(net.parameters(), lr=0.1)
    _sgd_step(net, optim.SGD, lr=0.1)
    before = _writes[0]
    opt.zero_grad()
    assert _writes[0] > before
    assert float(np.abs(net.weight.grad.numpy()).sum()) == 0.0


@pytest.mark.parametrize("symbolic", MODES)
def test_a_rebound_array_is_caught_without_a_counted_write(symbolic):
    net, f, x = _traced_linear(symbolic)
    before = _writes[0]
    net.weight._data = net.weight._data + 1  # (private: no write is counted)
    assert _writes[0] == before
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        f(x)


@pytest.mark.parametrize("symbolic", MODES)
def test_a_view_written_through_its_base_is_compared_every_call(symbolic):
    w = mge.Parameter(np.zeros((2, 3), "float32"))
    base = get_array_module(w._device).zeros((4, 3), "float32")
    w._data = base[:2]  # storage shared with another array: writes the engine cannot see
    f = trace(lambda x: x * w, symbolic=symbolic, capture_as_const=True)
    x = mge.tensor(np.ones((2, 3), "float32"))
    f(x)
    f(x)
    before = _writes[0]
    base[0, 0] = 7.0
    assert _writes[0] == before
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        f(x)


def test_torch_shared_parameters_are_compared_every_call():
    torch = pytest.importorskip("torch")
    from megengine.module.pytorch import PyTorchModule

    lin = torch.nn.Linear(3, 2)
    net = PyTorchModule(lin)
    f = trace(lambda x: net(x), symbolic=True, capture_as_const=True)
    x = mge.tensor(np.ones((2, 3), "float32"))
    f(x)
    f(x)
    with torch.no_grad():
        lin.weight.add_(1.0)  # a torch write into the shared storage: not counted
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        f(x)


@pytest.mark.parametrize("symbolic", MODES)
def test_bits_are_compared_only_after_a_write(symbolic, monkeypatch):
    net, f, x = _traced_linear(symbolic)
    compares = []
    real = captures._same_bits

    def counting(a, b):
        compares.append(a.shape)
        return real(a, b)

    monkeypatch.setattr(captures, "_same_bits", counting)
    for _ in range(3):
        f(x)
    assert compares == []  # nothing written since the last check: no weight read
    other = mge.Parameter(np.zeros(4, "float32"))
    other.set_value(np.ones(4, "float32"))  # a write elsewhere: each capture compared once
    y = f(x)
    assert sorted(compares) == [(2,), (2, 3)]
    np.testing.assert_allclose(y.numpy(), net(x).numpy(), rtol=1e-6)
    f(x)
    assert len(compares) == 2


@pytest.mark.parametrize("symbolic", MODES)
def test_a_write_that_restores_the_captured_bits_passes(symbolic):
    net, f, x = _traced_linear(symbolic)
    saved = net.weight.numpy()
    net.weight.set_value(saved + 1)
    net.weight.set_value(saved)
    np.testing.assert_allclose(f(x).numpy(), net(x).numpy(), rtol=1e-6)


def test_negative_zero_is_a_change():
    w = mge.Parameter(np.zeros(2, "float32"))
    f = trace(lambda x: x + w, symbolic=True, capture_as_const=True)
    x = mge.tensor([1.0, 2.0])
    f(x)
    f(x)
    w.set_value(np.array([-0.0, 0.0], "float32"))  # equal values, other bits
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        f(x)


def test_without_host_first_call_changing_a_capture_raises():
    from megengine.jit import TraceError

    w = mge.Parameter(np.ones(2, "float32"))

    def step(x):
        y = x * w
        w.set_value(w.numpy() + 1)
        return y

    f = trace(step, without_host=True, capture_as_const=True)
    with pytest.raises(TraceError, match="changed"):
        f(mge.tensor([1.0, 2.0]))


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("change, reason", [
    ("op", "operator mismatch"),
    ("attribute", "operator mismatch"),
    ("source", "tensors not equals"),
    ("shape", "shape mismatch"),
    ("dtype", "shape mismatch"),
])
def test_captured_inputs_on_the_fast_path_still_catch_mismatches(change, reason, symbolic):
    w = mge.Parameter(np.arange(6, dtype="float32").reshape(2, 3))
    v = mge.Parameter(np.ones((2, 3), "float32"))
    state = {"change": None}

    def f(x):
        c = state["change"]
        if c == "op":
            y = x - w
        elif c == "source":
            y = x * v
        else:
            y = x * w
        if c == "attribute":
            return y.reshape(3, 2)
        return y.reshape(6)

    tr = trace(f, symbolic=symbolic, capture_as_const=True)
    x = mge.tensor(np.ones((2, 3), "float32"))
    tr(x)
    np.testing.assert_array_equal(tr(x).numpy(), f(x).numpy())
    state["change"] = change
    if change == "shape":
        w._data = get_array_module(w._device).ones((3, 3), "float32")
    if change == "dtype":
        w._data = w._data.astype("float16")
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == f"trace error because {reason}", info.value.detail


def test_checked_captures_equal_eager_across_a_training_loop_of_another_net():
    # a capture_as_const inference trace stays valid while another network trains (its
    # writes move the count: the captures are compared again, still equal)
    np.random.seed(0)
    frozen, trained = M.Linear(3, 2), M.Linear(3, 2)
    f = trace(lambda x: F.relu(frozen(x)), symbolic=True, capture_as_const=True)
    x = mge.tensor(np.random.randn(4, 3).astype("float32"))
    for _ in range(3):
        _sgd_step(trained, optim.SGD, lr=0.1, momentum=0.9)
        np.testing.assert_allclose(f(x).numpy(), F.relu(frozen(x)).numpy(), rtol=1e-6)


# ----- a traced function that writes into a tensor it captures -----
# upstream 1.13 measured: only the captured value its graph reads is compared ("tensors not
# equals"); a function that writes the tensor before reading it runs on every call, and so
# does every mode here, each call equal to eager code on the state it meets
W_FIRST = {
    "set_value of an array": lambda w, x: w.set_value(np.array([0.5, -1.0, 2.0], "float32")),
    "set_value of a number": lambda w, x: w.set_value(0.0),
    "setitem ...": lambda w, x: w.__setitem__(Ellipsis, 1.5),
    "_reset of a value of the call": lambda w, x: w._reset(x * 2),
}
ALL_MODES = [dict(symbolic=s, without_host=h, opt_level=o)
             for s in (False, True) for h in (False, True) for o in (0, 2)]


def _write_then_read(w, x, write):
    write(w, x)
    y = x * w  # (opt_level >= 1 would fold x * 0 and x * 1 for a constant w)
    w += 1.0  # a second write, of the value written
    return y + w


@pytest.mark.parametrize("mode", ALL_MODES, ids=str)
@pytest.mark.parametrize("how", sorted(W_FIRST))
def test_a_capture_written_before_it_is_read_runs_every_call_as_eager(how, mode):
    write = W_FIRST[how]
    w = mge.Parameter(np.array([1.0, 2.0, 3.0], "float32"))
    w_ref = mge.Parameter(w.numpy())
    f = trace(lambda x: _write_then_read(w, x, write), capture_as_const=True, **mode)
    for k in range(4):
        x = np.array([1.0, -2.0, 0.5], "float32") * (k + 1)
        want = _write_then_read(w_ref, mge.tensor(x), write).numpy()
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(w.numpy(), w_ref.numpy(), rtol=1e-6)


@pytest.mark.parametrize("mode", ALL_MODES, ids=str)
def test_a_captured_scalar_written_before_an_op_is_not_folded(mode):
    # x * w with w captured as 1.0 is x (opt_level >= 1), but w is 0 when the op runs: the
    # recording call of symbolic=True computed x (arith_opt folded the captured value)
    w = mge.Parameter(np.float32(1.0))

    def f(x):
        w.set_value(0.0)
        return x * w + F.exp(w)

    traced = trace(f, capture_as_const=True, **mode)
    for _ in range(3):
        np.testing.assert_allclose(traced(mge.tensor([1.0, 2.0])).numpy(), [1.0, 1.0])
        assert float(w.numpy()) == 0.0


@pytest.mark.parametrize("symbolic", MODES)
def test_a_capture_read_before_its_write_is_compared_as_upstream(symbolic):
    # its captured value is read: the second call finds another value there (upstream's
    # "tensors not equals"); the reads after the write read what the call wrote
    w = mge.Parameter(np.array([1.0, 2.0], "float32"))

    def f(x):
        y = x * w
        w._reset(w + x)
        return y + w

    traced = trace(f, symbolic=symbolic, capture_as_const=True)
    np.testing.assert_allclose(traced(mge.tensor([1.0, 1.0])).numpy(), [3.0, 5.0])
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        traced(mge.tensor([1.0, 1.0]))
    w.set_value(np.array([1.0, 2.0], "float32"))  # the captured value again
    np.testing.assert_allclose(traced(mge.tensor([2.0, 0.0])).numpy(), [5.0, 2.0])
    np.testing.assert_allclose(w.numpy(), [3.0, 2.0])


def test_without_host_refuses_a_capture_read_before_its_write_saying_what_to_do():
    from megengine.jit import TraceError

    w = mge.Parameter(np.array([1.0, 2.0], "float32"))

    def f(x):
        y = x * w
        w._reset(w + x)
        return y

    traced = trace(f, without_host=True, capture_as_const=True)
    with pytest.raises(TraceError, match="reads that value before the change.*Write the tensor "
                                         "before reading it"):
        traced(mge.tensor([1.0, 1.0]))
    np.testing.assert_allclose(w.numpy(), [2.0, 3.0])  # (the call ran, as eager code)


def test_a_replay_of_a_capture_read_before_its_write_asks_that_it_still_holds_its_value():
    # the recording call left w as captured (0 * x), so the program is kept; once w holds
    # another value, a replay would compute with the captured one where eager code reads the
    # new one (upstream's compiled graph does so silently)
    w = mge.Parameter(np.zeros(2, "float32"))

    def f(x):
        y = x * w.sum()
        w[...] = w * x
        return y + w

    traced = trace(f, without_host=True, capture_as_const=True)
    for _ in range(2):
        np.testing.assert_allclose(traced(mge.tensor([1.0, 2.0])).numpy(), [0.0, 0.0])
    w.set_value(np.array([1.0, 1.0], "float32"))
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        traced(mge.tensor([1.0, 2.0]))
