"""Tests for megengine/jit/check.py: a checked call (symbolic=False or True) takes the fast path
for plain ops and events, falls back to the full comparison where the fast path cannot decide,
and either way gives eager results and reports the same mismatches."""
import weakref

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.core import dispatch
from megengine.jit import TraceMismatchError, check, exclude_from_trace, is_tracing, trace

from devices import host_default_device  # noqa: F401  (fixture used by name)
from jit_nets import training_step

MODES = [False, True]


@pytest.fixture
def slow_calls(monkeypatch):
    """Counts the ops and events that a checked call sends to the full comparison."""
    seen = []
    op_slowly, event_slowly = check._Checker._check_slowly, check._Checker._check_event_slowly

    def count_op(self, op, inputs):
        seen.append(type(op).__name__)
        return op_slowly(self, op, inputs)

    def count_event(self, fn, args, kwargs):
        seen.append(fn.__qualname__)
        return event_slowly(self, fn, args, kwargs)

    monkeypatch.setattr(check._Checker, "_check_slowly", count_op)
    monkeypatch.setattr(check._Checker, "_check_event_slowly", count_event)
    return seen


def _training(traced_with):
    """Three SGD steps of a small MLP, eager or traced: the losses and final weights."""
    mge.random.seed(0)  # the layers' initial weights
    net = M.Sequential(M.Linear(6, 8), M.ReLU(), M.Linear(8, 3))
    step = training_step(lambda x, y: F.loss.cross_entropy(net(x), y), net.parameters(),
                         optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
    if traced_with is not None:
        step = trace(step, **traced_with)
    rng = np.random.RandomState(1)
    losses = []
    for _ in range(4):
        x = mge.tensor(rng.randn(5, 6).astype("float32"))
        y = mge.tensor(rng.randint(0, 3, 5), dtype="int32")
        losses.append(float(step(x, y).numpy()))
    return losses, [p.numpy() for p in net.parameters()]


@pytest.mark.parametrize("symbolic", MODES)
def test_training_step_takes_the_fast_path_and_equals_eager(symbolic, slow_calls):
    losses, weights = _training({"symbolic": symbolic})
    assert slow_calls == []  # ops with plain parameters, events with tensors or objects
    eager_losses, eager_weights = _training(None)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    for w, e in zip(weights, eager_weights):
        np.testing.assert_allclose(w, e, rtol=1e-6, atol=1e-7)


def test_ops_with_array_parameters_are_compared_in_full(slow_calls):
    state = {"idx": np.array([0, 2])}
    f = trace(lambda x: x[state["idx"]] * 2, symbolic=False)
    x = mge.tensor([1.0, 2.0, 3.0])
    f(x)
    np.testing.assert_array_equal(f(x).numpy(), [2.0, 6.0])
    assert slow_calls  # the index array is a parameter: compared by value
    state["idx"] = np.array([1, 2])  # the same shape, another value
    with pytest.raises(TraceMismatchError) as info:
        f(x)
    assert str(info.value) == "trace error because operator mismatch"
    assert "parameters differ" in info.value.detail


@pytest.mark.parametrize("symbolic", MODES)
def test_constants_made_in_the_function_are_compared_by_value(symbolic):
    # F.full's value is a constant of the program, as a Python number an op takes is (see
    # test_python_scalar_constant_of_another_value_is_refused): a new value raises, as
    # upstream 1.13's trace does (measured)
    state = {"c": 2.0}
    f = trace(lambda x: x * F.full((2,), state["c"]), symbolic=symbolic)
    x = mge.tensor([1.0, 2.0])
    f(x)
    np.testing.assert_array_equal(f(x).numpy(), [2.0, 4.0])
    state["c"] = 3.0
    with pytest.raises(TraceMismatchError) as info:
        f(x)
    assert str(info.value) == "trace error because tensors not equals"


@pytest.mark.parametrize("symbolic", MODES)
def test_a_tensor_made_in_the_function_takes_its_value_of_each_call(symbolic):
    # ``mge.tensor(a)`` in the function is a value of each call, as upstream 1.13's trace
    # takes it (measured: x * mge.tensor(m) gave 0.25 then 2.0 as m changed, symbolic or not;
    # earlier versions of this fork raised "tensors not equals"); under capture_as_const it
    # is a constant of the program, and a new value raises as upstream's does
    state = {"c": np.float32([2.0, 0.5])}
    f = trace(lambda x: x * mge.tensor(state["c"]), symbolic=symbolic)
    x = mge.tensor([1.0, 2.0])
    for c in ([2.0, 0.5], [2.0, 0.5], [3.0, -1.0], [0.25, 4.0]):
        state["c"] = np.float32(c)
        np.testing.assert_array_equal(f(x).numpy(), np.float32(c) * [1.0, 2.0])
    g = trace(lambda x: x * mge.tensor(state["c"]), symbolic=symbolic, capture_as_const=True)
    g(x)
    state["c"] = np.float32([5.0, 5.0])
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        g(x)
    # another shape or dtype is another program's value: refused
    state["c"] = np.float32([1.0, 2.0, 3.0])
    with pytest.raises(TraceMismatchError):
        f(mge.tensor([1.0, 2.0, 3.0])[:2])


@pytest.mark.parametrize("symbolic", MODES)
def test_host_data_written_in_the_function_is_each_calls(symbolic):
    # a write of host data (set_value, setitem, an init function, a layer made in the call)
    # writes this call's value, as upstream 1.13's trace does (measured: each call returned
    # x * its own draw; earlier versions of this fork raised "tensors not equals" at the
    # second call); a capture_as_const trace compares it and raises, as upstream's
    buf = mge.Parameter(np.zeros(3, "float32"))
    made = []

    def f(x):
        a = np.random.rand(3).astype("float32")
        made.append(a)
        buf.set_value(a)
        w = mge.Parameter(np.zeros(3, "float32"))
        M.init.normal_(w)  # (a random init, then a write of this call's value)
        w[...] = a * 2
        lin = M.Linear(3, 1)  # a layer made in the call: its own random init
        lin.load_state_dict({"weight": a[None], "bias": np.zeros(1, "float32")})
        return x * buf + w, lin(x[None])

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor(np.ones(3, "float32"))
    for k in range(3):
        y, z = tr(x)
        np.testing.assert_allclose(y.numpy(), made[k] * 3, rtol=1e-6)
        np.testing.assert_allclose(z.numpy(), [[made[k].sum()]], rtol=1e-6)
    captured = trace(f, symbolic=symbolic, capture_as_const=True)
    captured(x)
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        captured(x)


# the fast path compares bytes of constants in host memory; a GPU's take check_source
@pytest.mark.usefixtures("host_default_device")
@pytest.mark.parametrize("symbolic", MODES)
def test_constants_from_python_data_take_the_fast_path(symbolic, monkeypatch):
    full = []
    check_source = check._Checker.check_source
    monkeypatch.setattr(check._Checker, "check_source",
                        lambda self, t, s, where: full.append(s) or check_source(self, t, s, where))
    state = {"internal": False}

    def f(x):
        y = x * 0.5 + mge.tensor([np.nan, 1.0])  # two constants, a NaN in one: the same bytes
        c = y if state["internal"] else mge.tensor([np.nan, 2.0])
        return y * c

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor([2.0, 2.0])
    tr(x)
    for _ in range(2):
        np.testing.assert_array_equal(tr(x).numpy(), [np.nan, 4.0])
    assert full == []
    # a value of the call with the constant's bytes is still not the constant
    state["internal"] = True
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == "trace error because expect external node, got internal"


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("size", [2, 20])
def test_constants_holding_nan_match_on_every_device_and_size(symbolic, size):
    # the full comparison (constants in GPU memory, or over the fast path's 64 bytes) compares
    # NaN as the fast path does; NaN == NaN is False, which made every checked call mismatch
    value = np.full(size, np.nan, np.float32)
    value[0] = 1.0
    # (captured: mge.tensor(value) is a constant of the program only under capture_as_const)
    tr = trace(lambda x: x + mge.tensor(value), symbolic=symbolic, capture_as_const=True)
    x = mge.tensor(np.ones(size, np.float32))
    for _ in range(3):
        out = tr(x).numpy()
    np.testing.assert_array_equal(out, value + 1)
    value[0] = 2.0  # another constant still mismatches
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        tr(x)


def test_external_parameter_resized_between_calls_is_a_shape_mismatch():
    w = mge.Parameter(np.ones(1, "float32"))
    f = trace(lambda x: x * w, symbolic=False)
    x = mge.tensor([1.0, 2.0])
    f(x)
    w.set_value(mge.tensor([2.0, 3.0]))  # outside the trace: the same Parameter, a new shape
    with pytest.raises(TraceMismatchError) as info:
        f(x)
    assert str(info.value) == "trace error because shape mismatch"
    assert "input 1" in info.value.detail and "(1,)" in info.value.detail


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_an_input_of_a_many_input_op_changed_between_calls_is_refused(symbolic, change):
    # ops of three inputs or more compare their inputs' shapes and dtypes at once on the fast
    # path (a linear layer's three): a bias given another shape or dtype between calls is
    # still refused, with the loop's message
    mge.random.seed(0)
    fc = M.Linear(3, 2)
    f = trace(lambda x: fc(x), symbolic=symbolic)
    x = mge.tensor(np.ones((4, 3), "float32"))
    f(x)
    f(x)
    fc.bias.set_value(mge.tensor(np.zeros(3, "float32")) if change == "shape"
                      else fc.bias.astype("float16"))
    with pytest.raises(TraceMismatchError) as info:
        f(x)
    assert str(info.value) == "trace error because shape mismatch"
    assert "input 2" in info.value.detail
    assert ("(2,)" if change == "shape" else "float16") in info.value.detail


@pytest.mark.parametrize("symbolic", MODES)
def test_external_buffer_rebound_by_an_inplace_write(symbolic):
    # a global non-Parameter tensor: ``buf += x`` rebinds it to the sum (an event), and the
    # next op reads it from there; the next call starts from the rebound value, as eagerly
    buf = mge.tensor([0.0, 0.0])

    def accumulate(x):
        nonlocal buf
        buf += x
        return buf * 2

    f = trace(accumulate, symbolic=symbolic)
    got = [f(mge.tensor([1.0, float(k)])).numpy().tolist() for k in range(3)]
    assert got == [[2.0, 0.0], [4.0, 2.0], [6.0, 6.0]]
    assert buf.numpy().tolist() == [3.0, 3.0]


@pytest.mark.parametrize("symbolic", MODES)
def test_buffers_rebound_between_traced_training_steps_are_used(symbolic):
    # basecls' precise BN (``bn.running_mean = ...`` after an epoch) between calls of its
    # traced training step: the trace runs on the new buffers, as eagerly and on upstream
    def make():
        mge.random.seed(3)
        net = M.Sequential(M.Conv2d(3, 4, 3), M.BatchNorm2d(4))
        return net, training_step(lambda x: net(x).mean(), net.parameters(),
                                  optim.SGD(net.parameters(), lr=0.1, momentum=0.9))

    results = []
    for traced in (False, True):
        net, step = make()
        f = trace(step, symbolic=symbolic) if traced else step
        for i in range(4):
            if i == 2:
                net[1].running_mean = mge.tensor(np.full((1, 4, 1, 1), 0.5, "float32"))
                net[1].running_var = mge.tensor(np.full((1, 4, 1, 1), 2.0, "float32"))
            f(mge.tensor(np.random.RandomState(i).rand(2, 3, 5, 5).astype("float32")))
        net.eval()
        out = net(mge.tensor(np.ones((1, 3, 5, 5), "float32")))
        results.append([net[1].running_mean, net[1].running_var, net[0].weight, out])
    for eager, traced in zip(*results):
        np.testing.assert_array_equal(traced.numpy(), eager.numpy())


@pytest.mark.parametrize("symbolic", MODES)
def test_batch_norm_statistics_writes_take_the_fast_path(symbolic, slow_calls):
    # ``running_mean._reset(new_mean.detach())``: the detach() step before the write is taken
    # up with the event (it went through the full comparison, ~40 us per write); the values
    # as eager's (a conv + batch norm training step, same initial weights)
    def run(traced):
        mge.random.seed(3)
        net = M.Sequential(M.Conv2d(3, 4, 3), M.BatchNorm2d(4), M.ReLU(), M.Conv2d(4, 4, 3),
                           M.BatchNorm2d(4))
        step = training_step(lambda x: net(x).mean(), net.parameters(),
                             optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
        f = trace(step, symbolic=symbolic) if traced else step
        losses = [f(mge.tensor(np.random.RandomState(i).rand(2, 3, 7, 7).astype("float32")))
                  .numpy() for i in range(3)]
        return losses, [t.numpy() for t in (*net.parameters(), *net.buffers())]

    traced_losses, traced_state = run(True)
    assert slow_calls == [], slow_calls  # (batch norm's op, three outputs, too)
    eager_losses, eager_state = run(False)
    for got, want in zip(traced_losses + traced_state, eager_losses + eager_state):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


BN_STATISTICS_WRITES = {  # (the running mean, the batch's mean and variance) -> the value
    "the variance": lambda old, mean, var: var.detach(),  # another value of the call
    "not detached": lambda old, mean, var: mean,  # the value itself, not a detached alias
    "the old value": lambda old, mean, var: old.detach(),  # an external's, not the call's
}


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("how", sorted(BN_STATISTICS_WRITES))
def test_a_batch_norm_statistics_write_unlike_the_recorded_one_is_caught(how, symbolic):
    # the recorded write is ``running_mean._reset(new_mean.detach())``; a checked call that
    # writes another value there must not pass for it on the fast path
    running_mean = mge.tensor(np.zeros((1, 2, 1, 1), "float32"))
    running_var = mge.tensor(np.ones((1, 2, 1, 1), "float32"))
    state = {"write": lambda old, mean, var: mean.detach()}

    @trace(symbolic=symbolic)
    def f(x):
        out, mean, var = F.batch_norm(x, running_mean, running_var, training=True,
                                      inplace=False)
        running_mean._reset(state["write"](running_mean, mean, var))
        return out

    x = mge.tensor(np.random.RandomState(0).rand(3, 2, 2, 2).astype("float32"))
    f(x)
    f(x)
    state["write"] = BN_STATISTICS_WRITES[how]
    with pytest.raises(TraceMismatchError):
        f(x)


def _write_an_earlier_detach(running_mean, mean):
    d = mean.detach()
    mean.detach()  # (the later one is what the fast path put in the alias step's slot)
    running_mean._reset(d)


def _write_after_an_op(running_mean, mean):
    running_mean._reset(mean.detach() * 1)


def _write_after_an_excluded_write(running_mean, mean):
    d = mean.detach()
    with exclude_from_trace():
        d._reset(d + 1)  # (d gets an array of its own: no longer the batch's mean)
    running_mean._reset(d)


def _write_into_another_tensor(running_mean, mean):
    mge.tensor(np.zeros((1, 2, 1, 1), "float16"))._reset(mean.detach())


BN_DETACHED_WRITES = {  # how -> (the write, what a checked call says: None where it passes)
    "into another tensor": (_write_into_another_tensor, (
        "dtype mismatch: float32 vs float16", "the arguments of Tensor._reset()")),
    "an earlier detach() of the value": (_write_an_earlier_detach, None),
    "a detach() changed by an op": (_write_after_an_op, (
        "operator mismatch", "op #1 (Mul): the trace has a call of Tensor._reset() here")),
    "a detach() written into by an excluded block": (_write_after_an_excluded_write, (
        "expect internal node, got external", "a tensor made outside the traced ops")),
}


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("how", sorted(BN_DETACHED_WRITES))
def test_a_detach_put_in_its_slot_as_made_is_still_compared(how, symbolic, monkeypatch):
    # a detach() that a write right after it takes (batch norm's statistics) goes into the
    # alias step's slot as it is made, with no entry in ``detached_from`` (no weak reference
    # per write), and the write is compared at once; a call that writes another detach(),
    # the same one after an op or a write, or into another tensor, is still compared in full:
    # the same dataflow passes and writes eager's value, anything else gets the full
    # comparison's message
    running_mean = mge.tensor(np.zeros((1, 2, 1, 1), "float32"))
    running_var = mge.tensor(np.ones((1, 2, 1, 1), "float32"))
    state = {"write": lambda running_mean, mean: running_mean._reset(mean.detach())}

    def f(x):
        out, mean, _ = F.batch_norm(x, running_mean, running_var, training=True,
                                    inplace=False)
        state["write"](running_mean, mean)
        return out

    refs = []
    made_ref = check._Checker._detached_ref
    monkeypatch.setattr(check._Checker, "_detached_ref",
                        lambda self, t: refs.append(t) or made_ref(self, t))
    tr = trace(f, symbolic=symbolic)
    x = mge.tensor(np.random.RandomState(0).rand(3, 2, 2, 2).astype("float32"))
    tr(x)
    tr(x)
    assert refs == []  # the recorded write took the detach() as it was made
    write, refused = BN_DETACHED_WRITES[how]
    state["write"] = write
    if refused is None:
        before = running_mean.numpy()
        _, mean, _ = F.batch_norm(x, mge.tensor(before), running_var, training=True,
                                  inplace=False)  # (eager: what the write writes)
        tr(x)
        np.testing.assert_allclose(running_mean.numpy(), mean.numpy(), rtol=1e-6)
        assert not np.allclose(before, mean.numpy())  # (what it held before differed)
        return
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    reason, words = refused
    assert str(info.value) == f"trace error because {reason}"
    assert words in info.value.detail, info.value.detail


class _Pieces(dispatch.Op):
    """Its input cut into ``pieces`` equal parts along axis 0, one output each (one piece: the
    input's copy, a single output). ``pieces`` is a class attribute, no parameter the trace
    compares: a checked call of the recorded op may meet another number of outputs."""

    pieces = 2

    def forward(self, x):
        if self.pieces == 1:
            return x.copy()
        n = x.shape[0] // self.pieces
        return tuple(x[k * n:(k + 1) * n].copy() for k in range(self.pieces))


SEVERAL_OUTPUTS_CHANGES = {  # what changes -> (the state it sets, the reason, words in detail)
    "a parameter": ({"momentum": 0.5}, "operator mismatch", ["op #1", "parameters differ"]),
    "an input": ({"input": "y"}, "expect external node, got internal", ["op #1", "input 0"]),
    "the outputs' order": ({"order": "var, mean"}, "input id mismatch", ["op #3", "input 1"]),
    "more outputs": ({"pieces": 3}, "operator mismatch",
                     ["op #2", "the trace had 2 outputs, this call has 3"]),
    "one output": ({"pieces": 1}, "operator mismatch",
                   ["op #2", "the trace had 2 outputs, this call has 1"]),
}


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("change", sorted(SEVERAL_OUTPUTS_CHANGES))
def test_ops_of_several_outputs_take_the_fast_path_and_still_refuse_a_change(symbolic, change,
                                                                             slow_calls):
    # a training batch norm (three outputs) and `_Pieces` (two) are compared on the fast path
    # (they went through the full comparison), with the values of eager calls; another
    # parameter, an input from elsewhere, the outputs used in another order or another number
    # of outputs (one: not a tuple) must still be refused
    running_mean = mge.tensor(np.zeros((1, 2, 1, 1), "float32"))
    running_var = mge.tensor(np.ones((1, 2, 1, 1), "float32"))
    recorded = {"momentum": 0.9, "input": "x", "order": "mean, var", "pieces": 2}
    state = dict(recorded)

    def f(x):
        y = x * 2
        out, mean, var = F.batch_norm(x if state["input"] == "x" else y, running_mean,
                                      running_var, training=True, inplace=False,
                                      momentum=state["momentum"])
        first, second = (mean, var) if state["order"] == "mean, var" else (var, mean)
        _Pieces.pieces = state["pieces"]
        try:
            pieces = dispatch.apply(_Pieces(), out)
        finally:
            _Pieces.pieces = 2
        return pieces[0] * first + pieces[-1] * second

    tr = trace(f, symbolic=symbolic)
    rng = np.random.RandomState(0)
    for _ in range(3):
        x = mge.tensor(rng.rand(6, 2, 2, 2).astype("float32"))
        np.testing.assert_allclose(tr(x).numpy(), f(x).numpy(), rtol=1e-6, atol=1e-7)
    assert slow_calls == [], slow_calls
    values, reason, words = SEVERAL_OUTPUTS_CHANGES[change]
    state.update(values)
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == f"trace error because {reason}"
    for w in words:
        assert w in info.value.detail, info.value.detail
    state.update(recorded)  # the next call is checked anew
    np.testing.assert_allclose(tr(x).numpy(), f(x).numpy(), rtol=1e-6, atol=1e-7)


class _OneOrTuple(dispatch.Op):
    """The input's copy, alone or (``in_tuple``, a class attribute the trace does not compare) as
    a tuple of one; ``table``, an array parameter, sends its checks to the full comparison."""

    in_tuple = False

    def __init__(self, table=None):
        super().__init__()
        if table is not None:
            self.table = table

    def forward(self, x):
        return (x.copy(),) if self.in_tuple else x.copy()


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("recorded_in_tuple", [False, True])
@pytest.mark.parametrize("path", ["fast", "full"])
def test_one_output_against_a_tuple_of_one_says_which_is_which(symbolic, recorded_in_tuple,
                                                               path):
    # both have one output: "the trace had 1 output, this call has 1" said nothing, and the
    # full comparison took one tensor for a tuple of one (the fast path and replay refused it)
    table = np.zeros(2) if path == "full" else None

    def f(x):
        out = dispatch.apply(_OneOrTuple(table), x * 2)
        return (out[0] if type(out) is tuple else out) + 1

    x = mge.tensor([1.0, 2.0])
    tr = trace(f, symbolic=symbolic)
    try:
        _OneOrTuple.in_tuple = recorded_in_tuple
        for _ in range(2):
            np.testing.assert_array_equal(tr(x).numpy(), [3.0, 5.0])
        _OneOrTuple.in_tuple = not recorded_in_tuple
        with pytest.raises(TraceMismatchError) as info:
            tr(x)
    finally:
        _OneOrTuple.in_tuple = False
    expected = ("one tensor where the trace had a tuple of one" if recorded_in_tuple
                else "a tuple of one output where the trace had one tensor")
    assert "op #1" in info.value.detail and expected in info.value.detail, info.value.detail


@pytest.mark.parametrize("symbolic", MODES)
def test_the_same_tensor_passed_twice(symbolic):
    f = trace(lambda a, b: a * 2 + b, symbolic=symbolic)
    for v in ([1.0, 2.0], [3.0, 5.0]):
        x = mge.tensor(v)
        np.testing.assert_array_equal(f(x, x).numpy(), np.array(v) * 3)
    with pytest.raises(TraceMismatchError):  # the trace read b from the first argument's slot
        f(mge.tensor([1.0, 2.0]), mge.tensor([1.0, 2.0]))


def test_event_given_another_value_than_recorded():
    net = M.Linear(3, 1)
    gm = GradManager().attach(net.parameters())
    state = {"second": False}

    @trace(symbolic=True)
    def step(x):
        with gm:
            a = net(x).sum()
            b = (net(x) * 2).sum()
            gm.backward(b if state["second"] else a)
        return a

    x = mge.tensor(np.ones((2, 3), "float32"))
    step(x)
    step(x)
    state["second"] = True
    with pytest.raises(TraceMismatchError) as info:
        step(x)
    assert str(info.value) == "trace error because input id mismatch"
    assert "GradManager.backward" in info.value.detail
    state["second"] = False
    step(x)  # still usable


def test_detached_input_goes_through_the_full_comparison(slow_calls):
    f = trace(lambda x: (x * 2).detach() + 1, symbolic=True)
    x = mge.tensor([1.0, 2.0])
    f(x)
    np.testing.assert_array_equal(f(x).numpy(), [3.0, 5.0])
    assert slow_calls  # the detach() step is matched by the full path


@pytest.mark.parametrize("symbolic", MODES)
def test_a_tensor_rebound_in_place_no_longer_stands_for_its_old_value(symbolic):
    # ``y += 1`` rebinds y to the sum; ``old`` (a detached view made before) still holds the
    # product. Using y where the trace used the product is a mismatch, and the other way round
    state = {"use_old": True}

    @trace(symbolic=symbolic)
    def f(x):
        y = x * 3
        old = y.detach()
        y += 1
        return (old if state["use_old"] else y) * 2

    x = mge.tensor([1.0, 2.0])
    np.testing.assert_array_equal(f(x).numpy(), [6.0, 12.0])
    np.testing.assert_array_equal(f(x).numpy(), [6.0, 12.0])
    state["use_old"] = False
    with pytest.raises(TraceMismatchError) as info:
        f(x)
    assert "op #2" in info.value.detail  # the Mul by 2 (ops: Mul, Add, Mul)
    g = trace(f.__wrapped__, symbolic=symbolic)  # recorded with y: the old value is refused
    np.testing.assert_array_equal(g(x).numpy(), [8.0, 14.0])
    np.testing.assert_array_equal(g(x).numpy(), [8.0, 14.0])
    state["use_old"] = True
    with pytest.raises(TraceMismatchError):
        g(x)


@pytest.mark.parametrize("symbolic", MODES)
def test_set_value_inside_the_function_keeps_the_parameter_itself(symbolic, slow_calls):
    # set_value replaces a Parameter's data (an event); the Parameter is still the external
    # the trace used, so the ops after it keep the fast path and read the new value
    w = mge.Parameter([1.0, 1.0])

    @trace(symbolic=symbolic)
    def f(x):
        y = x * w
        w.set_value(y)
        return x + w

    x = mge.tensor([2.0, 3.0])
    np.testing.assert_array_equal(f(x).numpy(), [4.0, 6.0])  # w = [2, 3]
    np.testing.assert_array_equal(f(x).numpy(), [6.0, 12.0])  # w = [4, 9]
    assert w.numpy().tolist() == [4.0, 9.0]
    assert slow_calls == []


@pytest.mark.parametrize("symbolic", [False, True])
def test_capture_as_const_checks_constants_made_in_the_function_by_value(symbolic):
    # ``x * 2`` makes a new 0-d tensor on every call; capture_as_const captured the first
    # one: later calls are checked by its value, not refused for being another object
    state = {"c": 2.0}
    f = trace(lambda x: x * state["c"], symbolic=symbolic, capture_as_const=True)
    for v in ([1.0, 2.0], [3.0, -1.0]):
        np.testing.assert_array_equal(f(mge.tensor(v)).numpy(), np.array(v) * 2)
    state["c"] = 3.0  # another value: the op would run on the captured 2.0, so refused
    with pytest.raises(TraceMismatchError) as info:
        f(mge.tensor([1.0, 2.0]))
    assert str(info.value) == "trace error because tensors not equals"


@pytest.mark.parametrize("symbolic", [False, True])
def test_excluded_block_may_make_the_output_on_some_calls(symbolic):
    # upstream's guide (jit/trace, "exclude_from_trace"): the block adds 1 on even calls only,
    # so the traced function returns the block's result on calls 0 and 2 and the traced op's
    # on call 1; the documented output is 3, 2, 3
    from megengine import jit
    calls = []

    @jit.trace(symbolic=symbolic)
    def f(x):
        x += 1
        with jit.exclude_from_trace():
            if len(calls) % 2 == 0:
                x += 1
        return x

    for _ in range(3):
        calls.append(f(mge.tensor([1])).numpy().tolist())
    assert calls == [[3], [2], [3]]


def test_a_computed_output_still_has_to_match():
    # the relaxation above is for outputs the trace did not compute, not for computed ones
    @trace
    def g(x):
        a, b = x + 1, x + 2
        return a if len(outs) == 0 else b  # another computed value returned: a mismatch

    outs = []
    outs.append(g(mge.tensor([1.0])))
    with pytest.raises(TraceMismatchError):
        g(mge.tensor([1.0]))


@pytest.mark.parametrize("mode", [{}, {"symbolic": True}, {"without_host": True}])
def test_set_value_of_a_parameter_from_its_detached_value_equals_eager(mode):
    # 0.x-style updates (MegEngine/Models' GAN programs): w._reset(w.detach() * a + x). The
    # event returns w, an external the call reached only through detach(): it is no new tensor
    # (the second call raised "the trace got 0 new tensors from it, this call 1")
    w = mge.Parameter(np.array([0.5, -0.5], np.float32))

    @trace(**mode)
    def step(x):
        w._reset(w.detach() * 0.5 + x)
        return w * 1

    expect = np.array([0.5, -0.5], np.float32)
    x = np.array([1.0, 2.0], np.float32)
    for _ in range(3):
        out = step(mge.tensor(x))
        expect = expect * 0.5 + x
        np.testing.assert_allclose(out.numpy(), expect, rtol=1e-6)
    np.testing.assert_allclose(w.numpy(), expect, rtol=1e-6)


@pytest.mark.parametrize("options", [dict(symbolic=False), dict(symbolic=True),
                                     dict(symbolic=True, capture_as_const=True)])
def test_checked_calls_let_go_of_values_past_their_last_use(options):
    # as eager code does: an intermediate the function dropped is freed at once, not kept
    # to the end of the call (memory reused while in cache: ~7% of a small convnet's time)
    import weakref

    alive = []

    def f(x):
        y = x * 2
        ref = weakref.ref(y)
        z = y + 1
        del y
        w = z * 3
        alive.append(ref() is not None)
        return w

    tr = trace(f, **options)
    x = mge.tensor(np.ones(check.FREE_BYTES // 4, "float32"))  # (smaller values are kept)
    for _ in range(3):
        np.testing.assert_array_equal(tr(x).numpy(), f(x).numpy())
    assert alive[2::2] == [False, False]  # the checked calls (eager calls in between)


@pytest.mark.parametrize("options", [dict(symbolic=False), dict(symbolic=True),
                                     dict(symbolic=True, capture_as_const=True)])
def test_values_let_go_of_are_found_for_inplace_writes_and_shapes(options, slow_calls):
    def f(x):
        y = x * 2
        z = y + 1
        y += 1  # (the Add is y's last use: let go of, then written in place)
        return (y * z).reshape(y.shape[0], -1) + F.zeros(mge.Tensor(y.shape))

    tr = trace(f, **options)
    for _ in range(3):  # (values this large are let go of: see check.FREE_BYTES)
        x = mge.tensor(np.random.randn(64, check.FREE_BYTES // 256).astype("float32"))
        np.testing.assert_allclose(tr(x).numpy(), f(x).numpy(), rtol=1e-6)
    # a later use of a value let go of is still named in a mismatch
    state = {"late": False}

    def g(x):
        y = x * 2
        z = y + 1
        return z + y if state["late"] else z + x

    tg = trace(g, **options)
    x = mge.tensor(np.ones(check.FREE_BYTES // 4, "float32"))
    tg(x)
    tg(x)
    state["late"] = True
    with pytest.raises(TraceMismatchError) as info:
        tg(x)
    assert "output 0 of op #0" in info.value.detail, info.value.detail


# ----- sizes in checked calls of dumpable traces (capture_as_const) -----
def _shuffle_block(x):
    """The size arithmetic of ShuffleNetV2's channel shuffle: ops built from ``x.shape``."""
    b, c, h, w = x.shape
    y = x.reshape(b * c // 2, 2, h * w).transpose(1, 0, 2).reshape(2, -1, c // 2, h, w)
    return F.concat([y[0], F.relu(y[1])], 1)


def test_size_reads_answer_without_building_the_maps(monkeypatch):
    # a shape read of a value whose sizes built ops (x's) gives SymDims, of any other value
    # (batch norm's checks, ``y.size``) plain ints: both without the maps of the slow paths
    # (building them cost ~0.1 ms per call of ShuffleNetV2)
    from megengine.core._trace_option import SymDim

    seen = []

    def fn(x):
        y = _shuffle_block(_shuffle_block(x))
        r = F.relu(y)  # no op is built from r's sizes (no constant either: a Python scalar is
        # matched by the maps)
        hook = mge.core.dispatch._trace_hook
        seen.append((type(x.shape[1]), type(x.size), type(r.shape[1]), type(r.size),
                     getattr(hook, "by_tensor", "no hook")))
        return r

    x = np.random.RandomState(0).randn(1, 8, 3, 5).astype("float32")
    want = fn(mge.tensor(x)).numpy()
    f = trace(fn, symbolic=False, capture_as_const=True)
    for _ in range(3):
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), want)
    # (eager: ints; the recording hands out SymDims everywhere; checked calls only where ops
    # were built from them)
    assert seen[0][:4] == (int,) * 4 and seen[1][:4] == (SymDim,) * 4
    assert seen[2:] == [(SymDim, SymDim, int, int, None)] * 2


def test_an_array_that_reuses_the_id_of_a_sized_value_let_go_of_reads_plain_sizes():
    # y's sizes built an op; after its last use the checked call lets go of it and so does
    # the function: the next array made takes its id (CPython reuses the memory at once). The
    # checked call must not take the new value for y: its sizes are plain ints, as recorded
    from megengine.core._trace_option import SymDim

    seen = []

    def fn(x):
        y = x * 2
        z = F.zeros(y.shape[0] * y.shape[1])  # an op built from y's sizes
        old, gone = id(y._data), weakref.ref(y._data)
        del y
        freed = gone() is None  # (the checked call keeps y's array no longer than eager code)
        w = -x
        seen.append((id(w._data) == old, type(w.shape[0]), type(w._data) is np.ndarray, freed))
        return z, w

    x = np.ones((4, check.FREE_BYTES // 16), "float32")
    f = trace(fn, symbolic=True, capture_as_const=True)
    for _ in range(6):
        z, w = f(mge.tensor(x))
        np.testing.assert_allclose(w.numpy(), -x)
        assert z.shape == (x.size,)
    assert [kind for _, kind, _, _ in seen] == [SymDim] + [int] * 5
    # the checked calls let go of y's array as eager code does, so that the allocator may give
    # its memory (and id) to the next array: the case this test is about. (Whether it does
    # depends on the allocator's state: run alone, CPython's gives it at once; after other
    # test files it may not, where only the freeing is asserted)
    assert all(freed for _, _, numpy, freed in seen[1:] if numpy)


@pytest.mark.parametrize("symbolic", MODES)
def test_captured_inputs_are_not_asked_while_nothing_was_written(symbolic, monkeypatch):
    # the fast path tests a capture's write count and array itself and asks its guard only
    # after a write (or for storage the engine cannot see written: a view, compared always)
    from megengine.jit import captures

    asked = []
    real = captures.CaptureGuard.unchanged

    def counting(self):
        asked.append(self.tensor.shape)
        return real(self)

    monkeypatch.setattr(captures.CaptureGuard, "unchanged", counting)
    lin = M.Linear(3, 2)
    base = mge.Parameter(np.arange(4, dtype="float32"))
    view = mge.Tensor(base.numpy())
    view._data = base._data[1:3]  # a view: compared on every call
    f = trace(lambda x: lin(x) * view, symbolic=symbolic, capture_as_const=True)
    x = mge.tensor(np.ones((2, 3), "float32"))
    for _ in range(3):
        f(x)
    asked.clear()
    for _ in range(2):
        f(x)
    assert asked == [(2,), (2,)]  # the view, each call; the weight and bias not at all
    lin.bias.set_value(np.ones(2, "float32"))  # a write: each capture asked once more
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        f(x)
    assert (2,) in asked[2:] and len(asked) >= 4


# ----- the fast paths for Python-scalar constants, index parameters and several outputs -----

@pytest.mark.usefixtures("host_default_device")
@pytest.mark.parametrize("options", [{"symbolic": False}, {"symbolic": True},
                                     {"symbolic": False, "capture_as_const": True},
                                     {"symbolic": True, "capture_as_const": True}])
def test_python_scalar_constants_skip_the_maps_but_not_a_value_of_the_call(options, monkeypatch):
    # ``x * 0.5`` makes a 0-d constant held by its tensor alone: accepted by its bytes without
    # building the maps (capture_as_const's captured constants too); a value of this call with
    # the same bytes (``h``, or a detached ``h``) must still be refused
    maps = []
    index = check._Checker._index
    monkeypatch.setattr(check._Checker, "_index", lambda self: maps.append(1) or index(self))
    state = {"use": "const"}

    def f(x):
        h = x[0] - 1.5  # 0.5 computed in the call
        c = 0.5 if state["use"] == "const" else h if state["use"] == "h" else h.detach()
        return (x * c - 1.0) * 2.0, h

    tr = trace(f, **options)
    x = mge.tensor([2.0, 4.0])
    tr(x)
    maps.clear()
    for _ in range(2):
        out, h = tr(x)
        np.testing.assert_array_equal(out.numpy(), [0.0, 2.0])
    assert maps == []  # no slot maps were built: every constant took the fast path
    state["use"] = "h"
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == "trace error because expect external node, got internal"
    state["use"] = "detached"  # the trace had no detach(): the op is not as recorded
    with pytest.raises(TraceMismatchError):
        tr(x)
    state["use"] = "const"
    np.testing.assert_array_equal(tr(x)[0].numpy(), [0.0, 2.0])  # the next call is checked anew


@pytest.mark.usefixtures("host_default_device")
@pytest.mark.parametrize("symbolic", MODES)
def test_python_scalar_constant_of_another_value_is_refused(symbolic):
    state = {"c": 0.5}
    tr = trace(lambda x: x * state["c"] + 1.0, symbolic=symbolic)
    x = mge.tensor([2.0, 4.0])
    for _ in range(2):
        np.testing.assert_array_equal(tr(x).numpy(), [2.0, 3.0])
    state["c"] = 0.25
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == "trace error because tensors not equals"


@pytest.mark.parametrize("symbolic", MODES)
def test_captured_small_tensor_written_between_calls_is_refused(symbolic):
    # a global tensor of a few bytes captured by capture_as_const: it is the input itself, so
    # its captured value is what is checked (the bytes path is for other tensors)
    w = mge.tensor([1.0, 2.0])
    tr = trace(lambda x: x * w, symbolic=symbolic, capture_as_const=True)
    x = mge.tensor([3.0, 3.0])
    for _ in range(2):
        np.testing.assert_array_equal(tr(x).numpy(), [3.0, 6.0])
    w[0] = 5.0
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == "trace error because tensors not equals"


@pytest.mark.parametrize("symbolic", MODES)
def test_slice_indices_take_the_fast_path_and_another_index_is_refused(symbolic, slow_calls):
    state = {"i": 3, "stop": 8}

    def f(x):
        return x[:, state["i"]] + x[state["i"], :state["stop"]], F.concat(
            [x[:, :state["stop"]], x[:, state["stop"]:]], axis=1)

    tr = trace(f, symbolic=symbolic)
    data = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    x = mge.tensor(data)
    tr(x)
    for _ in range(2):
        a, b = tr(x)
        np.testing.assert_array_equal(a.numpy(), data[:, 3] + data[3, :8])
        np.testing.assert_array_equal(b.numpy(), data)
    assert slow_calls == []  # every op on the fast path, the slices included
    for key, value in (("i", 4), ("stop", 7)):
        state.update(i=3, stop=8)
        state[key] = value
        with pytest.raises(TraceMismatchError) as info:
            tr(x)
        assert "parameters differ" in info.value.detail


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("index", [[0], [0, 1]])
@pytest.mark.parametrize("where", ["x[i]", "x[:, i]"])
def test_an_index_tensor_where_the_trace_had_an_int_is_refused(symbolic, index, where):
    # ``(0,) == (np.array([0]),)`` is True (and raises for two items): the fast path must not
    # take a 1-element index array for the int it equals, x[0] and x[[0]] differ in shape
    # (an index without slices is hashed, one with slices walked)
    state = {"tensor": False}

    def f(x):
        i = mge.tensor(index, dtype="int32") if state["tensor"] else 0
        return (x[i] if where == "x[i]" else x[:, i]) * 2

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    for _ in range(2):
        np.testing.assert_array_equal(tr(x).numpy(), [0.0, 2.0, 4.0] if where == "x[i]"
                                      else [0.0, 6.0])
    state["tensor"] = True
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert "parameters differ" in info.value.detail


@pytest.mark.parametrize("symbolic", MODES)
def test_several_outputs_checked_by_identity_still_refuse_other_values(symbolic):
    state = {"order": "ab"}

    def f(x):
        a, b = x * 2, x + 1
        out = {"ab": [a, b], "ba": [b, a], "a": [a], "aab": [a, a, b]}[state["order"]]
        return out

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor([1.0, 2.0])
    for _ in range(2):
        a, b = tr(x)
        np.testing.assert_array_equal(a.numpy(), [2.0, 4.0])
        np.testing.assert_array_equal(b.numpy(), [2.0, 3.0])
    for order in ("ba", "a", "aab"):
        state["order"] = order
        with pytest.raises(TraceMismatchError) as info:
            tr(x)
        assert str(info.value) == "trace error because data unreadable"


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("swap", ["unary", "binary", "binary_second", "external"])
def test_one_and_two_input_ops_from_another_source_are_refused(symbolic, swap):
    # ops of one or two inputs compare them unrolled: each must still be the recorded value
    w = mge.Parameter(np.array([1.0, 1.0], np.float32))
    state = {"swap": None}

    def f(x):
        a, b = x * 2, x + 1  # the same shape and dtype: only where they come from differs
        on = state["swap"]
        u = F.relu(b if on == "unary" else a)
        v = (b if on == "binary" else a) - (a if on == "binary_second" else b)
        return u + v * (x if on == "external" else w)

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor([1.0, 2.0])
    for _ in range(2):
        np.testing.assert_array_equal(tr(x).numpy(), [2.0, 5.0])  # a = [2, 4], b = [2, 3]
    state["swap"] = swap
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == "trace error because input id mismatch"  # (x: an argument)


@pytest.mark.usefixtures("host_default_device")
@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("other", ["int32", "shape (1,)"])
def test_a_constant_of_the_same_bytes_and_another_dtype_or_shape_is_refused(symbolic, other):
    # float32 2.0 has the bytes of int32 1073741824 and of float32 [2.0]: the bytes alone do
    # not make the recorded constant
    state = {"other": False}

    def f(x):
        if not state["other"]:
            c = mge.tensor(np.array(2.0, np.float32))
        elif other == "int32":
            c = mge.tensor(np.array(1073741824, np.int32), dtype="int32")
        else:
            c = mge.tensor(np.array([2.0], np.float32))
        return x * c

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor([2.0, 3.0])
    for _ in range(2):
        np.testing.assert_array_equal(tr(x).numpy(), [4.0, 6.0])
    state["other"] = True
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == "trace error because shape mismatch"


class _TakeAlong(dispatch.Op):
    """A one-parameter op of the test's own: ``x.sum(axis)`` (an int parameter, as a public
    function would pass one; numpy also takes a 1-element array there)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        return x.sum(axis=int(np.asarray(self.axis).reshape(())))


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("make", ["own op", "sum"])
@pytest.mark.parametrize("other", [np.array([1]), np.array(1)])
def test_a_scalar_parameter_given_as_an_array_is_refused(symbolic, make, other, slow_calls):
    # ``{"axis": np.array([1])} == {"axis": 1}`` is True: the op fast path must not take an
    # array for the plain number the trace had in a parameter that is no tuple (the full
    # comparison refuses it: an array parameter is compared as an array)
    state = {"axis": 1}

    def f(x):
        if make == "own op":
            y = dispatch.apply(_TakeAlong(state["axis"]), x)
        else:  # (F.sum hands its axis to its Reduce op as given)
            y = F.sum(x, axis=state["axis"])
        return y * 2

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    for _ in range(3):
        want = f(x).numpy()
        np.testing.assert_array_equal(tr(x).numpy(), want)
    assert slow_calls == [], slow_calls  # the recorded axis took the fast path
    state["axis"] = other
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert "parameters differ" in info.value.detail


ALL_MODES = [dict(symbolic=False), dict(symbolic=True), dict(symbolic=False, capture_as_const=True),
             dict(symbolic=True, capture_as_const=True)]


class _ThroughTheEngine(dispatch.Op):
    """An op of plain parameters (the op fast path) whose forward works with tensors, as a
    user's Function does: it applies ops, reads shapes and values, writes in place, excludes a
    block from tracing and asks whether it traces; ``fail`` makes it raise."""

    seen = []  # what each forward saw (class attributes: no parameters of the op)
    fail = False

    def __init__(self, scale):
        self.scale = scale

    def forward(self, x):
        t = mge.tensor(x)
        y = t * self.scale + 1.0  # ops of its own: not the traced function's
        y += t  # an in-place write (an event) of its own
        with exclude_from_trace():
            z = y - 1.0
        self.seen.append((is_tracing(), tuple(t.shape), int(z.shape[0]), float(y.sum().item())))
        if self.fail:
            raise ValueError("forward failed")
        return y.numpy()


@pytest.mark.usefixtures("host_default_device")  # (the forward returns a host array)
@pytest.mark.parametrize("options", ALL_MODES)
def test_what_an_op_forward_applies_is_its_own_on_the_fast_path(options, slow_calls):
    # the fast path leaves the hook in place while the forward runs (no switching): ops,
    # events, reads and shapes inside it must pass untraced, as with the hook off, whatever
    # the order and count of them, and an exception must leave the hook as it was
    seen = _ThroughTheEngine.seen
    seen.clear()

    def f(x):
        return dispatch.apply(_ThroughTheEngine(2.0), F.relu(x)) * 3.0

    tr = trace(f, **options)
    x = mge.tensor(np.arange(4, dtype=np.float32))
    want = (np.arange(4) * 3.0 + 1.0) * 3.0
    for _ in range(3):
        np.testing.assert_allclose(tr(x).numpy(), want)
    assert slow_calls == [], slow_calls
    assert seen == [(False, (4,), 4, 22.0)] * 3  # untraced inside, plain shapes, every call
    assert dispatch._trace_hook is None
    _ThroughTheEngine.fail = True
    try:
        with pytest.raises(ValueError, match="forward failed"):
            tr(x)
    finally:
        _ThroughTheEngine.fail = False
    assert dispatch._trace_hook is None and not is_tracing()
    np.testing.assert_allclose(tr(x).numpy(), want)  # the trace goes on being checked
    seen.clear()
    np.testing.assert_allclose(f(x).numpy(), want)  # eager: the same inside
    assert seen == [(False, (4,), 4, 22.0)]


class _SumOf(dispatch.Op):
    """The sum of however many inputs it is given (no parameters: the op fast path)."""

    def forward(self, *xs):
        out = xs[0].copy()
        for x in xs[1:]:
            out += x
        return out


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("counts", [(1, 2), (2, 1), (2, 3), (3, 2), (3, 4)])
def test_an_op_given_another_number_of_inputs_is_refused(symbolic, counts, slow_calls):
    # the fast path tells the input count by unpacking one or two inputs, and asks for it
    # otherwise: the same op and parameters with an input more or fewer is no recorded op
    state = {"n": counts[0]}

    def f(x):
        return dispatch.apply(_SumOf(), *[x] * state["n"]) * 2

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor([1.0, 2.0])
    for _ in range(3):
        np.testing.assert_array_equal(tr(x).numpy(), [2.0 * counts[0], 4.0 * counts[0]])
    assert slow_calls == [], slow_calls
    state["n"] = counts[1]
    with pytest.raises(TraceMismatchError) as info:
        tr(x)
    assert str(info.value) == "trace error because operator mismatch"


@pytest.mark.parametrize("symbolic", MODES)
def test_sizes_handed_out_again_in_later_calls_act_as_this_calls(symbolic, slow_calls):
    # a checked call with symbolic sizes hands out the SymDims an earlier call made for the
    # same value and shape (kept by the program): they must compute as this call's (arithmetic
    # gives SymDims, so the ops are the recorded ones), and a value whose shape data decides
    # must not get another shape's sizes
    import weakref

    seen = []

    def f(x):
        n = x.shape[0]
        half = mge.Tensor(n // 2)  # (an op of the program where n // 2 is a SymDim)
        y = x.reshape(n // 2, -1) * half.astype("float32") + 1.0
        seen.append((weakref.ref(y), x.shape))
        v, _ = F.cond_take(x > 0, x)
        return y, F.zeros((v.shape[0] * 2,))  # (sized by data: another length per call)

    tr = trace(f, symbolic=symbolic, capture_as_const=True)
    x = mge.tensor(np.array([1.0, -2.0, 3.0, 4.0], np.float32))
    for k in range(4):
        data = np.array([1.0, -2.0, 3.0, 4.0], np.float32) * (1 if k % 2 == 0 else -1)
        x = mge.tensor(data)
        y, z = tr(x)
        np.testing.assert_array_equal(y.numpy(), data.reshape(2, -1) * 2.0 + 1.0)
        assert z.shape == (2 * int((data > 0).sum()),)
    assert slow_calls.count("Reshape") == 0, slow_calls
    assert [tuple(s) for _, s in seen] == [(4,)] * 4
    assert [type(d).__name__ for d in seen[-1][1]] == ["SymDim"]
    assert seen[-1][1] is seen[-2][1]  # (the same Shape, kept from the call before)
    del y, z
    import gc

    gc.collect()
    assert all(r() is None for r, _ in seen)  # the kept sizes hold no value of a call alive


@pytest.mark.parametrize("symbolic", [False, True])
def test_times_one_and_power_one_take_the_fast_path_with_the_ops_values(monkeypatch, symbolic):
    # x * 1, 1 * x and x ** 1 are rewritten to x (opt_level >= 1), which is what the op gives
    # itself: a checked call runs them on its fast path (the slow one cost ~7x an eager op);
    # x + 0 keeps its rewrite there (-0.0 + 0 is +0.0 where upstream's rewrite gives -0.0)
    slow = []
    call_slowly = check._Checker._call_slowly

    def counting(self, op, inputs, sizes=None):
        slow.append(type(op).__name__)
        return call_slowly(self, op, inputs, sizes)

    monkeypatch.setattr(check._Checker, "_call_slowly", counting)
    a = np.array([[1.5, -0.0, np.inf], [np.nan, -2.0, 3.0]], "float32")
    p = mge.Parameter(a)
    gm = GradManager().attach(p)
    dy = np.arange(6, dtype="float32").reshape(2, 3)

    def fn(x):
        with gm:
            y = (1.0 * (x * 1.0)) ** 1
            gm.backward(y, mge.tensor(dy))
        return y, y + 0.0

    f = trace(fn, symbolic=symbolic)
    for call in range(3):
        p.grad = None
        slow.clear()
        y, z = f(p)
        assert np.array_equal(y.numpy(), a, equal_nan=True)
        assert np.array_equal(np.signbit(y.numpy()), np.signbit(a))
        # (the recording call knows no constant yet: it adds; checked calls rewrite x + 0 to
        # x, as upstream, and -0.0 stays)
        assert np.signbit(z.numpy()[0, 1]) == (call > 0)
        np.testing.assert_array_equal(p.grad.numpy(), dy)
    assert "Mul" not in slow and "Pow" not in slow and "Add" in slow, slow


@pytest.mark.parametrize("symbolic", MODES)
def test_an_index_tensor_beside_a_size_from_a_shape(symbolic):
    # ``x[i, :n]`` with n from x.shape in a dumpable trace: the index holds a symbolic size and
    # an argument's array; a checked call compares it with the recorded sizes and this call's
    # index (it was given the first call's index, and every later call raised "operator
    # mismatch"), and an index from another place is still refused
    state = {"other": False}

    def f(x, i, j):
        n = x.shape[1] // 2
        return x[j if state["other"] else i, :n] * 2

    tr = trace(f, symbolic=symbolic, capture_as_const=True)
    data = np.arange(24, dtype=np.float32).reshape(6, 4)
    x = mge.tensor(data)
    rng = np.random.RandomState(0)
    for _ in range(3):
        i, j = rng.randint(0, 6, 5), rng.randint(0, 6, 5)
        got = tr(x, mge.tensor(i, dtype="int32"), mge.tensor(j, dtype="int32"))
        np.testing.assert_array_equal(got.numpy(), data[i, :2] * 2)
    state["other"] = True
    with pytest.raises(TraceMismatchError) as info:
        tr(x, mge.tensor(i, dtype="int32"), mge.tensor(j, dtype="int32"))
    assert "parameters differ" in info.value.detail


@pytest.mark.parametrize("symbolic", MODES)
def test_a_conv_layer_in_a_checked_call_makes_the_recorded_op_without_views(symbolic,
                                                                             monkeypatch):
    # a checked call's Conv2d makes F.conv2d's op from the geometry the layer keeps (no
    # normalizing per call), holding none of the layer's views, as the recorded op; a stride
    # changed between calls is still refused
    ops = []
    apply = dispatch.apply_unhooked

    def seen(op, inputs):
        ops.append((type(op).__name__, op.__dict__.get("cache"), op.stride))
        return apply(op, inputs)

    monkeypatch.setattr(dispatch, "apply_unhooked", seen)
    mge.random.seed(0)
    conv = M.Conv2d(2, 3, 3, padding=1)
    x = mge.tensor(np.random.RandomState(0).rand(1, 2, 5, 5).astype("float32"))
    want = conv(x).numpy()  # eagerly: the layer keeps its views and geometry
    f = trace(lambda x: conv(x), symbolic=symbolic)
    for _ in range(3):
        np.testing.assert_allclose(f(x).numpy(), want, rtol=1e-6)
    assert ops[-1] == ("_Convolution", None, (1, 1))  # (the checked call's)
    conv.stride = (2, 2)
    with pytest.raises(TraceMismatchError, match="parameters differ"):
        f(x)


@pytest.mark.parametrize("symbolic", MODES)
def test_a_write_into_an_external_lets_go_of_the_large_value_it_last_used(symbolic):
    # the event fast path lets go of values only where there is one to let go of (batch
    # norm's small statistics have none): a large value whose last use is a write into an
    # external is freed at the write, as eagerly; the write's flag says it rebinds nothing,
    # which a write into a value of the call does not say
    buf = mge.tensor(np.zeros(check.FREE_BYTES // 4, "float32"))
    alive = []

    def f(x):
        y = x * 2
        ref = weakref.ref(y)
        buf._reset(y.detach())
        del y
        alive.append(ref() is not None)
        z = x[:4] * 3
        z._reset(np.full(4, 5, "float32"))  # (an array: an event; a value of the call would
        return z * 2 + buf[:4]  # be dataflow, no event)

    tr = trace(f, symbolic=symbolic)
    x = mge.tensor(np.arange(check.FREE_BYTES // 4, dtype="float32"))
    want = 10 + x.numpy()[:4] * 2
    for _ in range(3):
        np.testing.assert_array_equal(tr(x).numpy(), want)
        np.testing.assert_array_equal(buf.numpy(), x.numpy() * 2)
    assert alive == [False, False, False]
    writes = [step for step in tr._program.steps if getattr(step, "fn", None) is
              mge.Tensor._reset]
    assert [step.writes_ext for step in writes] == [True, False]
