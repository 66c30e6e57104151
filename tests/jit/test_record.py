"""Tests for megengine/jit/record.py: what a recording captures from the traced function's
first call. Externals are read live on every call (or frozen with capture_as_const), values
made inside are constants, random ops draw afresh on replay, detach cuts gradients, tensor
index arguments are inputs, in-place writes into internal and argument tensors replay."""
import gc
import io
import weakref

import numpy as np
import pytest

import megengine as mge
from megengine.autodiff import GradManager
from megengine.core.dispatch import Op, apply, xp_of
from megengine.jit import TraceError, TraceMismatchError, trace

from jit_nets import MLP, MODES, batches, mse, training_step


@pytest.mark.parametrize("symbolic", MODES)
def test_parameters_are_read_live(symbolic):
    net = MLP()
    f = trace(net, symbolic=symbolic)
    x = batches(1)[0][0]
    before = f(x).numpy()
    net.w2._reset(net.w2.numpy() * 2)  # in place, outside the trace
    net.b2[...] = 1.0  # in place through __setitem__
    after = f(x).numpy()
    np.testing.assert_allclose(after, before * 2 + 1, rtol=1e-5)
    np.testing.assert_array_equal(after, net(x).numpy())


def test_capture_as_const_freezes_externals_in_replays():
    # upstream: externals are bound at trace time; a compiled replay computes with that value
    w = mge.Parameter([2.0])
    f = trace(lambda x: x * w, capture_as_const=True, without_host=True)
    assert f(mge.tensor([3.0])).numpy().tolist() == [6.0]
    w._reset([10.0])
    assert f(mge.tensor([3.0])).numpy().tolist() == [6.0]
    assert f(mge.tensor([4.0])).numpy().tolist() == [8.0]


@pytest.mark.parametrize("symbolic", [False, True])
def test_checked_calls_refuse_a_captured_external_whose_value_changed(symbolic):
    # upstream's compiled trace compares each captured external with its bound value
    # ("tensors not equals") rather than computing silently with the old one
    w = mge.Parameter([2.0, float("nan")])
    f = trace(lambda x: x * w, capture_as_const=True, symbolic=symbolic)
    x = mge.tensor([3.0, 1.0])
    assert f(x).numpy()[0] == 6.0
    assert f(x).numpy()[0] == 6.0  # unchanged (NaN included): fine
    w[0] = 10.0
    with pytest.raises(TraceMismatchError) as info:
        f(x)
    assert str(info.value) == "trace error because tensors not equals"
    assert "capture_as_const" in info.value.detail and "Parameter" in info.value.detail
    w[0] = 2.0  # the captured value again: accepted
    assert f(x).numpy()[0] == 6.0


@pytest.mark.parametrize("symbolic", [False, True])
def test_gradients_reach_a_captured_parameter_on_every_call(symbolic):
    # the op runs on the captured tensor itself (its value checked), so a GradManager
    # attached to it sees the op on later calls too (they wrote no .grad before)
    w = mge.Parameter(np.array([1.0, -2.0, 3.0], dtype="float32"))
    gm = GradManager().attach(w)

    @trace(symbolic=symbolic, capture_as_const=True)
    def f(x):
        with gm:
            gm.backward((x * w).sum())
        return w.grad * 1

    for k in range(3):
        w.grad = None
        x = mge.tensor(np.arange(3, dtype="float32") + k)
        np.testing.assert_array_equal(f(x).numpy(), x.numpy())  # d(x . w)/dw = x


# a write into a Parameter inside the traced function, as 0.x's update code and
# ``p[...] = ...`` make it
PARAMETER_WRITES = {
    "setitem": lambda p, x: p.__setitem__(Ellipsis, p + x),
    "augmented setitem": lambda p, x: p.__setitem__(Ellipsis, p[...] + x),
    "_reset": lambda p, x: p._reset(p + x),
}


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("how", sorted(PARAMETER_WRITES))
def test_capture_as_const_with_a_write_into_a_parameter(how, symbolic):
    # upstream: the first call computes with the written value; the second stops with "tensors
    # not equals" (the capture changed), and no later call computes with a stale value. Its
    # dump holds the write as dataflow, as ours does
    # (symbolic=True's first call read the value captured before the write where opt_level's
    # rewrites ran ``p * 1``: it returned 0)
    from megengine.utils.comp_graph_tools import GraphInference

    def body(p, x):
        y = p * 3
        PARAMETER_WRITES[how](p, x)
        return y + p * 1

    p = mge.Parameter(np.zeros((64, 64), "float32"))  # (16 KiB: values let go of, too)
    x = mge.tensor(np.ones((64, 64), "float32"))
    f = trace(lambda x: body(p, x), symbolic=symbolic, capture_as_const=True)
    np.testing.assert_array_equal(f(x).numpy(), np.ones((64, 64)))  # 0 * 3 + (0 + 1) * 1
    np.testing.assert_array_equal(p.numpy(), np.ones((64, 64)))
    with pytest.raises(TraceMismatchError) as info:
        f(x)
    assert str(info.value) == "trace error because tensors not equals"
    assert "capture_as_const" in info.value.detail
    np.testing.assert_array_equal(p.numpy(), np.ones((64, 64)))  # (refused before its write)
    # the dumped file runs from the captured zeros, the write dataflow (tests/jit/
    # test_dump_writes.py): 0 * 3 + (0 + 2) * 1
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    (out,) = GraphInference(file).run(np.full((64, 64), 2.0, "float32")).values()
    np.testing.assert_array_equal(out, np.full((64, 64), 2.0))


def test_a_rewritten_op_on_a_captured_parameter_reaches_its_gradient():
    # symbolic=True computes ``w * 1`` as opt_level's rewrite (``w``): the rewrite read the
    # captured copy, off autodiff, so the first call left w.grad None
    w = mge.Parameter(np.array([1.0, -2.0, 3.0], "float32"))
    gm = GradManager().attach(w)

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        with gm:
            loss = (x * (w * 1)).sum()
            gm.backward(loss)
        return loss

    for k in range(2):  # the recording call, then a checked one
        w.grad = None
        x = mge.tensor(np.arange(3, dtype="float32") + k)
        np.testing.assert_array_equal(f(x).numpy(), (x * w).sum().numpy())
        np.testing.assert_array_equal(w.grad.numpy(), x.numpy())  # d(x . w)/dw = x


@pytest.mark.parametrize("options", [{"symbolic": False}, {"symbolic": True},
                                     {"without_host": True}])
def test_training_with_capture_as_const_is_refused_not_frozen(options):
    # an optimizer step changes the captured weights: computing with the old ones would train
    # nothing, silently (the loss stayed at its first value); now the trace says so
    from megengine import optimizer

    w = mge.Parameter(np.ones(4, dtype="float32"))
    gm = GradManager().attach(w)
    opt = optimizer.SGD([w], lr=0.1)

    @trace(capture_as_const=True, **options)
    def step(x):
        with gm:
            loss = (x * w).sum() ** 2
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    x = mge.tensor(np.full(4, 0.5, dtype="float32"))
    with pytest.raises(TraceError, match="capture_as_const"):
        step(x)
        step(x)


@pytest.mark.parametrize("symbolic", MODES)
def test_constants_made_inside_are_captured(symbolic):
    def fn(x):
        return x + mge.tensor(np.random.rand(3))  # made from Python data: a constant

    f = trace(fn, without_host=True)
    x = mge.tensor(np.zeros(3))
    first = f(x).numpy()
    np.testing.assert_array_equal(f(x).numpy(), first)  # a replay keeps the recorded value

    g = trace(fn, symbolic=symbolic)
    g(x)
    np.random.seed(3)
    want = np.random.rand(3)
    np.random.seed(3)
    # a checked call computes with this call's value, as upstream 1.13's trace (measured)
    np.testing.assert_allclose(g(x).numpy(), want.astype(np.float32))
    h = trace(fn, symbolic=symbolic, capture_as_const=True)
    h(x)
    with pytest.raises(TraceMismatchError) as info:
        h(x)  # captured: a new random value, and the check notices (upstream: the same)
    assert str(info.value) == "trace error because tensors not equals"
    assert "constant" in info.value.detail


@pytest.mark.parametrize("mode", [{"symbolic": False}, {"symbolic": True},
                                  {"without_host": True}])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_the_recording_call_updates_parameters_in_place(opt_name, mode):
    # an optimizer step inside the traced function: eager code updates each parameter's array
    # in place; the recording call held every external's array, so each update found it shared
    # and copied it (a model's worth of memory). Eager training from the same weights is the
    # oracle of the values, on the recording call and the two after it
    from megengine import optimizer

    def setup():
        net = MLP()
        opt = (optimizer.SGD(net.params(), lr=0.1, momentum=0.9) if opt_name == "sgd"
               else optimizer.Adam(net.params(), lr=0.01))
        return net, training_step(lambda x, y: mse(net(x), y), net.params(), opt)

    net, step = setup()
    eager_net, eager_step = setup()
    f = trace(step, **mode)
    for k, (x, y) in enumerate(batches(3)):
        arrays = [weakref.ref(p._data) for p in net.params()]  # (not holding them)
        np.testing.assert_allclose(f(x, y).numpy(), eager_step(x, y).numpy(), rtol=1e-6)
        if k == 0:  # (the recording call)
            assert all(p._data is a() for p, a in zip(net.params(), arrays))
        for p, q in zip(net.params(), eager_net.params()):
            np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("size", [3, 8192])
@pytest.mark.parametrize("how", sorted(PARAMETER_WRITES))
def test_a_parameter_made_and_written_inside_keeps_its_first_value(how, size):
    # the recording holds no array of the model's parameters, but a Parameter made inside the
    # call is a constant of the value it was made with (it dies with the call): the write
    # into it must not reach that value, which a replay starts from on every call
    def fn(x):
        p = mge.Parameter(np.ones(size, "float32"))
        y = p * 2
        PARAMETER_WRITES[how](p, x)
        return y + p

    f = trace(fn, without_host=True)
    for k in range(1, 4):
        x = mge.tensor(np.full(size, k, "float32"))
        np.testing.assert_array_equal(f(x).numpy(), np.full(size, 3 + k))  # 2 + (1 + k)


class _Noise(Op):
    """An op that draws from numpy's RNG in forward, like dropout."""

    def forward(self, x):
        return x + xp_of(x).random.rand(*x.shape).astype(x.dtype)  # on the input's device


def test_random_ops_draw_fresh_values_on_replay():
    f = trace(lambda x: apply(_Noise(), x), symbolic=True)
    x = mge.tensor(np.zeros(16))
    outs = [f(x).numpy() for _ in range(3)]
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])


def test_dropout_draws_fresh_masks_on_replay():
    F = pytest.importorskip("megengine.functional")
    f = trace(lambda x: F.dropout(x, 0.5), symbolic=True)
    x = mge.tensor(np.ones(64))
    masks = [f(x).numpy() != 0 for _ in range(3)]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


@pytest.mark.parametrize("symbolic", MODES)
def test_detach_inside_trace_cuts_gradients(symbolic):
    w = mge.Parameter([1.0, 2.0])
    gm = GradManager().attach(w)

    @trace(symbolic=symbolic)
    def f(x):
        with gm:
            y = x * w
            z = y.detach() ** 2 + y  # d z / d w = x (the detached part contributes nothing)
            gm.backward(z.sum())
        return z.detach()

    for v in ([1.0, 1.0], [2.0, 3.0], [4.0, 0.5]):
        w.grad = None
        z = f(mge.tensor(v))
        np.testing.assert_allclose(w.grad.numpy(), v)
        y = np.array(v) * np.array([1.0, 2.0])
        np.testing.assert_allclose(z.numpy(), y ** 2 + y)


@pytest.mark.parametrize("symbolic", MODES)
def test_tensor_index_argument_is_an_input(symbolic):
    f = trace(lambda x, idx: x[idx] * 1, symbolic=symbolic)
    x = mge.tensor(np.arange(10.0))
    for idx in ([1, 2, 3], [7, 0, 9], [5, 5, 5]):
        np.testing.assert_array_equal(f(x, mge.tensor(idx)).numpy(), np.array(idx, "float32"))


@pytest.mark.parametrize("symbolic", MODES)
def test_inplace_on_internal_and_argument_tensors(symbolic):
    @trace(symbolic=symbolic)
    def f(x):
        y = x * 1
        y += 1
        y[0] = 10.0
        return y * 2

    for v in ([1.0, 2.0], [3.0, 4.0]):
        np.testing.assert_array_equal(f(mge.tensor(v)).numpy(), [20.0, (v[1] + 1) * 2])


def test_device_parameters_are_not_searched_for_sizes(monkeypatch):
    # a Copy or creation op's device (a _Device, a str) holds no sizes: checked calls with
    # symbolic sizes ask has_dims only of the parameters that may hold them
    import megengine.functional as F
    import megengine.jit.check as check
    from megengine.core import _trace_option

    def f(x):
        n = x.shape[0]
        return x.reshape(n, -1) + F.zeros((n, 4)) + F.ones((n, 4), device=x.device)

    fn = trace(f, symbolic=True, capture_as_const=True)
    x = mge.tensor(np.arange(8, dtype="float32").reshape(2, 2, 2))
    want = fn(x).numpy()
    asked = []
    monkeypatch.setattr(check, "has_dims", lambda v: asked.append(v) or _trace_option.has_dims(v))
    np.testing.assert_array_equal(fn(x).numpy(), want)  # a checked call
    assert asked and not [v for v in asked if isinstance(v, str)]


def _assert_steps_equal(traced, step, xs, w):
    """``traced`` (a trace of the training step ``step``) gives step's losses and ``w``'s
    gradients bit for bit on each of ``xs``: all traced calls first, then the eager ones."""
    def run(fn, x):
        w.grad = None
        return fn(x).numpy(), w.grad.numpy()

    got = [run(traced, x) for x in xs]
    want = [run(step, x) for x in xs]
    for (a, ga), (b, gb) in zip(got, want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ga, gb)


@pytest.mark.parametrize("symbolic", MODES)
def test_the_recording_call_lets_go_of_values_the_function_drops(symbolic):
    # as eager code and checked calls: an intermediate the function drops is freed at once, in
    # the first (recording) call too, which used to keep every value until it ended (a
    # ResNet-50 step's peak memory 1.6x eager's); gradients and values as eager's, bit for bit
    import megengine.functional as F

    released = []
    w = mge.Parameter(np.random.RandomState(0).rand(64, 64).astype("float32"))
    gm = GradManager().attach(w)

    def step(x):
        with gm:
            h = F.matmul(x, w) * 2.0  # (64 x 64 float32: 16 KB, a value the call lets go of)
            h.name = "o_h"  # (a named value, noted as it is named)
            ref = weakref.ref(h._data)
            y = F.exp(h)  # (whose backward reads its output, not h)
            del h
            gc.collect()
            released.append(ref() is None)
            loss = y.mean()
            gm.backward(loss)
        return loss

    f = trace(step, symbolic=symbolic)
    xs = [mge.tensor(np.random.RandomState(i).rand(64, 64).astype("float32")) for i in (1, 2)]
    _assert_steps_equal(f, step, xs, w)
    assert released == [True] * 4  # the recording call, a checked one, then eager's two
    (prog,) = f._programs.values()
    assert "o_h" in prog.var_names.values()


@pytest.mark.parametrize("symbolic", MODES)
def test_detached_values_are_let_go_of_after_their_last_use(symbolic):
    # a detach() result (and the value it shares its array with) is freed once the function
    # drops it, in the recording call and in checked calls, as eagerly: both kept it to the
    # end of the call. A loop of detached values (truncated backpropagation's pattern) held
    # every step's array; new tensors that take up the ids of dead ones are not taken for them
    import megengine.functional as F

    released = []
    w = mge.Parameter(np.random.RandomState(0).rand(64, 64).astype("float32") * 0.1)
    gm = GradManager().attach(w)

    def step(x):
        refs = []
        with gm:
            for _ in range(4):
                h = F.matmul(x, w)  # (64 x 64 float32: 16 KB, a value the call lets go of)
                refs.append(weakref.ref(h._data))
                x = F.tanh(h.detach())  # (whose backward reads its output only)
                del h
            unused = x.detach()  # (detached and never used)
            refs.append(weakref.ref(unused._data))
            del unused
            loss = (x * w).sum()
            gm.backward(loss)
        gc.collect()
        released.append([r() is None for r in refs])
        return loss

    f = trace(step, symbolic=symbolic)
    xs = [mge.tensor(np.random.RandomState(i).rand(64, 64).astype("float32")) for i in (1, 2, 3)]
    _assert_steps_equal(f, step, xs, w)
    # the four matmuls' outputs freed, the last tanh (x) still held by the loss's backward
    assert released == [[True] * 4 + [False]] * 6  # the record, two checked calls, eager's


@pytest.mark.parametrize("symbolic", MODES)
def test_a_parameters_detach_is_let_go_of_after_its_last_use(symbolic):
    # 0.x's update w._reset(w.detach() - lr * g) gives w a new array; the detach() result,
    # and with it the array w had before, was held to the end of the recording call and of
    # every checked call (one parameter's worth of memory per update); eager frees both at once
    import megengine.functional as F

    def make_step(w, released):
        gm = GradManager().attach(w)

        def step(x):
            with gm:
                loss = (F.matmul(x, w) ** 2).mean()
                gm.backward(loss)
            refs = []
            for _ in range(2):  # (two updates: the second's array is one the call made)
                d = w.detach()  # (64 x 64 float32: 16 KB, the array w has now)
                refs += [weakref.ref(d), weakref.ref(d._data)]
                w._reset(d - 0.1 * w.grad)  # (d's array is shared: w gets a new one)
                del d
            gc.collect()
            released.append([r() is None for r in refs])
            return loss

        return step

    def run(fn, w):
        return [np.concatenate([fn(x).numpy().ravel(), w.numpy().ravel()]) for x in xs]

    xs = [mge.tensor(np.random.RandomState(i).rand(8, 64).astype("float32")) for i in (1, 2, 3)]
    init = np.random.RandomState(0).rand(64, 64).astype("float32")
    traced_released, eager_released = [], []
    w_traced, w_eager = mge.Parameter(init), mge.Parameter(init)
    got = run(trace(make_step(w_traced, traced_released), symbolic=symbolic), w_traced)
    want = run(make_step(w_eager, eager_released), w_eager)
    np.testing.assert_array_equal(got, want)
    assert eager_released == [[True] * 4] * 3
    # as eager, the recording call too (it kept the array w had when it first read it, in case
    # w turned out to be a constant made from Python data: only a tensor made in the call can)
    assert traced_released == eager_released


@pytest.mark.parametrize("symbolic", MODES)
def test_checked_calls_let_go_of_values_once_the_maps_are_in_use(symbolic):
    # a batch norm's running statistics (externals given to an op of several outputs, checked
    # on the slow path) make a checked call look tensors up in the maps of `_Hook`; the values
    # of such ops were then kept until the call ended (a ResNet-50 step held 340 MB of its
    # batch norms' outputs, of ~800, at batch 4)
    import megengine.functional as F
    import megengine.module as M

    released = []
    w = mge.Parameter(np.random.RandomState(0).rand(1, 16, 1, 1).astype("float32"))
    bn = M.BatchNorm2d(16)
    gm = GradManager().attach(w)

    def step(x):
        with gm:
            h = bn(x * w)  # (4 x 16 x 8 x 8 float32: 16 KB, a value the call lets go of)
            ref = weakref.ref(h._data)
            y = F.exp(h)  # (whose backward reads its output, not h)
            del h
            gc.collect()
            released.append(ref() is None)
            loss = y.mean()
            gm.backward(loss)
        return loss

    f = trace(step, symbolic=symbolic)
    xs = [mge.tensor(np.random.RandomState(i).rand(4, 16, 8, 8).astype("float32"))
          for i in (1, 2)]
    got = [f(x).numpy() for x in xs]
    want = [step(x).numpy() for x in xs]
    assert released == [True] * 4  # the recording call, a checked one, then eager's two
    np.testing.assert_array_equal(got, want)


INDEX_ARGUMENT_USES = {
    "x[idx]": (lambda x, idx: x[idx] * 2, lambda x, idx: x[idx] * 2),
    "x[mask]": (lambda x, mask: x[mask] * 2, lambda x, mask: x[mask] * 2),
    "y[idx] = v": (lambda x, idx: _written(x, idx, -1.0), lambda x, idx: _np_written(x, idx)),
    "y[mask] = v": (lambda x, mask: _written(x, mask, -1.0), lambda x, mask: _np_written(x, mask)),
}


def _written(x, index, value):
    y = x * 1
    y[index] = value
    return y


def _np_written(x, index):
    y = x.copy()
    y[index] = -1.0
    return y


@pytest.mark.parametrize("mode", [{"symbolic": False}, {"symbolic": True},
                                  {"symbolic": True, "capture_as_const": True},
                                  {"without_host": True}])
@pytest.mark.parametrize("use", sorted(INDEX_ARGUMENT_USES))
def test_the_recording_call_lets_go_of_an_index_argument(use, mode):
    # ``x[idx]`` puts idx's array into the op; the recorded op kept it for as long as the trace
    # kept its program (a batch of indices or masks given once and dropped by the caller stayed
    # alive), where eager code lets go of it. Later calls index with their own, as numpy does
    fn, oracle = INDEX_ARGUMENT_USES[use]
    f = trace(fn, **mode)
    rng = np.random.RandomState(0)
    data = rng.rand(300, 4).astype("float32")
    x = mge.tensor(data)

    def index():
        if "mask" in use:
            return data > rng.rand(300, 4)
        return rng.randint(0, 300, 500).astype("int32")

    i = index()
    idx = mge.tensor(i)
    gone = [weakref.ref(idx), weakref.ref(idx._data)]
    np.testing.assert_array_equal(f(x, idx).numpy(), oracle(data, i))
    del idx
    gc.collect()
    assert [r() for r in gone] == [None, None]
    for _ in range(2):
        i = index()
        np.testing.assert_array_equal(f(x, mge.tensor(i)).numpy(), oracle(data, i))


@pytest.mark.parametrize("symbolic", MODES)
def test_the_recording_call_lets_go_of_a_computed_index(symbolic):
    # the same for an index the function computes: held weakly as any value of the call, it
    # was held by the recorded op to the end of the trace
    import megengine.functional as F

    seen = []

    def fn(x):
        order = F.argsort(x[:, 0])
        seen.append(weakref.ref(order._data))
        return x[order] * 2

    f = trace(fn, symbolic=symbolic)
    for seed in range(3):
        data = np.random.RandomState(seed).rand(300, 4).astype("float32")
        got = f(mge.tensor(data)).numpy()
        gc.collect()
        assert seen[-1]() is None
        np.testing.assert_array_equal(got, data[np.argsort(data[:, 0])] * 2)
