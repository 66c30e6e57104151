"""Tests for megengine/jit/tracing.py's public surface as upstream uses it: one program per call
signature (a training step with changing batch sizes re-traces and matches eager), keyword
arguments, upstream's options and their effects, get_profile, partial_trace, and upstream's
``"trace error because <reason>"`` texts."""
import functools
import random

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.core._trace_option import set_symbolic_shape as core_set_symbolic_shape
from megengine.jit import TraceError, partial_trace, set_symbolic_shape, trace


def _net_and_step(traced, **options):
    mge.random.seed(5)  # the layers' initial weights
    net = M.Sequential(M.Linear(6, 12), M.ReLU(), M.Linear(12, 3))
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    runs = []

    def step(x, label, *, weight=1.0):
        runs.append(x.shape[0])
        with gm:
            loss = F.loss.cross_entropy(net(x), label) * weight
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    return net, (trace(step, **options) if traced else step), runs


@pytest.mark.parametrize("options", [{"symbolic": False}, {"symbolic": True},
                                     {"without_host": True}])
def test_training_step_with_changing_batch_sizes_retraces_and_matches_eager(options):
    rng = np.random.RandomState(0)
    sizes = [8, 8, 5, 8, 3, 5, 5, 8]  # a last partial batch, then new epochs
    data = [(mge.tensor(rng.randn(n, 6)), mge.tensor(rng.randint(0, 3, n), dtype="int32"))
            for n in sizes]
    eager_net, eager_step, _ = _net_and_step(False)
    net, step, runs = _net_and_step(True, **options)
    for x, y in data:
        expect = eager_step(x, y).numpy()
        np.testing.assert_allclose(step(x, y).numpy(), expect, rtol=1e-6)
        for a, b in zip(net.parameters(), eager_net.parameters()):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    if options.get("without_host"):
        assert runs == [8, 5, 3]  # Python ran once per batch size; the rest were replays
    else:
        assert runs == sizes  # symbolic True or False: the function runs (and is checked) each call
    assert "3 traced signatures" in repr(step)


def test_keyword_arguments_reach_the_function_and_select_programs():
    eager_net, eager_step, _ = _net_and_step(False)
    net, step, runs = _net_and_step(True, without_host=True)
    x = mge.tensor(np.random.RandomState(1).randn(4, 6))
    y = mge.tensor([0, 1, 2, 0], dtype="int32")
    for w in (1.0, 0.5, 1.0, mge.tensor(2.0), mge.tensor(3.0)):
        np.testing.assert_allclose(step(x, y, weight=w).numpy(),
                                   eager_step(x, y, weight=w).numpy(), rtol=1e-6)
    # weight=1.0 twice shares one program; a tensor weight is an input: 3.0 reuses 2.0's program
    assert len(runs) == 3


@pytest.mark.parametrize("normal_expr, mismatch_expr, reason", [
    ("a + b + c", "a + b - c", "operator mismatch"),
    ("a + b + 1", "a + b + 2", "tensors not equals"),
    ("((a + b), (b + c))[0]", "a + b", "mismature end"),
    ("a + b + c", "c + (a + b)", "expect internal node, got external"),
    ("c + (a + b)", "a + b + c", "expect external node, got internal"),
    ("a + b + c", "a + b + c + c", "too many instructions"),
    ("((a + b), (b + c))[1]", "((a + b), (b + c))[0]", "data unreadable"),
    ("((a + b), (b + c))[1] + a", "((a + b), (b + c))[0] + a", "input id mismatch"),
])
@pytest.mark.parametrize("symbolic", [False, True])
def test_upstream_trace_mismatch_texts(normal_expr, mismatch_expr, reason, symbolic):
    # upstream's test_trace_mismatch (all eight cases; upstream runs it with symbolic=True):
    # both modes rerun Python and check it, and the trace stays usable after a mismatch
    a, b, c = mge.tensor([1, 2, 3, 4]), mge.tensor([5, 6, 7, 8]), mge.tensor([9, 0, 1, 2])
    mismatch = False

    @trace(symbolic=symbolic)
    def fn(a, b, c):
        return eval(mismatch_expr if mismatch else normal_expr)

    rnd = random.Random(0)
    for i in range(20):
        try:
            d = fn(a, b, c)
        except TraceError as e:
            assert mismatch
            assert str(e) == f"trace error because {reason}"
        else:
            assert not mismatch
            np.testing.assert_equal(d.numpy(), eval(normal_expr).numpy())
        mismatch = i > 0 and rnd.random() > 0.6


@pytest.mark.parametrize("symbolic", [False, True])
def test_exception_in_traced_call_is_the_users_not_a_trace_error(symbolic):
    # upstream's test_exception_in_trace: the user's exception propagates unchanged, and the
    # next call is checked against the same record
    a, b, c = mge.tensor([1, 2, 3, 4]), mge.tensor([5, 6, 7, 8]), mge.tensor([9, 0, 1, 2])
    exc = Exception()
    state = {"raise": False}

    @trace(symbolic=symbolic)
    def fn(a, b, c):
        result = a + b
        if state["raise"]:
            raise exc
        return result + c

    for k in range(6):
        state["raise"] = k % 3 == 1
        try:
            d = fn(a, b, c)
        except TraceError:
            pytest.fail("unexpected trace error")
        except Exception as e:
            assert state["raise"] and e is exc
        else:
            np.testing.assert_equal(d.numpy(), (a + b + c).numpy())


def test_imperative_runs_python_every_call_and_still_dumps():
    runs = []

    def f(x):
        runs.append(1)
        return x * 2

    t = trace(f, imperative=True, capture_as_const=True)
    for v in (1.0, 2.0, 3.0):
        assert t(mge.tensor([v])).numpy().tolist() == [2 * v]
    assert len(runs) == 3
    import io
    assert t.dump(io.BytesIO()).nr_opr == 3  # input, constant 2, MUL


def test_record_only_records_for_dump_and_refuses_to_run_again():
    import io
    t = trace(lambda x: x + 1, record_only=True)
    t(mge.tensor([1.0]))
    assert t.dump(io.BytesIO()).outputs == ["ADD"]  # implies capture_as_const
    with pytest.raises(TraceError, match="record_only"):
        t(mge.tensor([1.0]))


def test_profiling_and_get_profile():
    for options in ({"symbolic": True}, {"symbolic": False}):
        t = trace(lambda x: F.exp(-x) * 2, profiling=True, **options)
        x = mge.tensor(np.ones(5))
        for _ in range(3):
            t(x)
        prof = t.get_profile()["profiler"]
        assert prof["calls"] == 2  # the recording call is not profiled
        names = {op["name"]: op for op in prof["ops"]}
        assert all(names[n]["count"] == 2 for n in names) and len(names) >= 2
        assert prof["total_seconds"] == pytest.approx(sum(o["seconds"] for o in prof["ops"]))
    with pytest.raises(RuntimeError, match="profiling=True"):
        trace(lambda x: x).get_profile()


def test_options_are_checked_or_documented_without_effect():
    with pytest.raises(ValueError, match="opt_level"):
        trace(lambda x: x, opt_level=7)
    old = set_symbolic_shape(False)
    try:
        assert core_set_symbolic_shape(False) is False  # the same switch as upstream's core one
        # upstream's trace defaults to symbolic_shape=True whatever the global switch says
        assert trace(lambda x: x)._symbolic_shape is True
        assert trace(lambda x: x, symbolic_shape=False)._symbolic_shape is False
    finally:
        set_symbolic_shape(old)
    t = trace(lambda x: x.reshape(x.shape[0], -1), symbolic=True, symbolic_shape=False,
              opt_level=0)
    for n in (2, 4, 2):
        assert t(mge.tensor(np.ones((n, 3, 2)))).shape == (n, 6)


@pytest.mark.parametrize("options", [{}, {"backend": "xla", "trace_gmcallback": False},
                                     {"capture_as_const": True}])
def test_partial_trace_replays_forward_inside_an_eager_step(options, monkeypatch):
    import megengine.jit.partial_tracing as partial_tracing

    mge.random.seed(2)  # the same initial weights
    eager = M.Sequential(M.Linear(4, 8), M.ReLU(), M.Linear(8, 2))
    mge.random.seed(2)
    net = M.Sequential(M.Linear(4, 8), M.ReLU(), M.Linear(8, 2))
    runs = []

    def forward(model, x):  # upstream's use: partial_trace(type(model).forward) on the model
        runs.append(1)
        return model(x)

    monkeypatch.setattr(partial_tracing, "_warned", set())
    if options.get("backend") == "xla":  # upstream 1.13's XLA backend runs as the default one
        with pytest.warns(UserWarning, match="XLA is not used"):
            traced = partial_trace(forward, **options)
    else:
        traced = partial_trace(forward, **options)
    # with capture_as_const the model's parameters stay live (the Module is an argument), so
    # they get gradients, as upstream's partial trace of a module's forward
    fwd = functools.partial(traced, net)

    rng = np.random.RandomState(0)
    for n in (3, 3, 5, 3):
        x = mge.tensor(rng.randn(n, 4))
        losses = []
        for model, call in ((eager, eager), (net, fwd)):
            gm = GradManager().attach(model.parameters())
            with gm:
                loss = (call(x) ** 2).mean()
                gm.backward(loss)
            losses.append(loss.numpy())
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
        for a, b in zip(net.parameters(), eager.parameters()):
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-6)
            a.grad = b.grad = None
    assert len(runs) == 2  # one recording per batch size
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        partial_trace(lambda x: x, backend="tpu")
    with pytest.raises(AssertionError, match="without_host"):
        partial_trace(lambda x: x, without_host=False)


@pytest.mark.parametrize("symbolic", [False, True])
def test_shapes_that_do_not_broadcast_raise_upstreams_runtime_error(symbolic):
    # upstream's test_graph_error: its graph raises RuntimeError; numpy code expects
    # ValueError, and the engine's error is both. The trace is usable afterwards.
    a = mge.tensor(np.arange(8).reshape(2, 4))
    b = mge.tensor(np.arange(8).reshape(2, 4))
    fn = trace(lambda a, b: a + b, symbolic=symbolic)
    fn(a, b)
    for expected in (RuntimeError, ValueError):
        with pytest.raises(expected, match=r"shapes \(2, 4\) and \(4, 2\) do not broadcast"):
            fn(a, b.transpose())
    np.testing.assert_array_equal(fn(a, b).numpy(), np.arange(8).reshape(2, 4) * 2)


@pytest.mark.parametrize("options", [{"symbolic": False}, {"symbolic": True},
                                     {"without_host": True}])
def test_a_grad_manager_made_inside_each_call(options):
    # upstream's test_maximum_grad_consistency: a new GradManager (and a new group) on every
    # call, x.grad read and reset inside; the oracle is the function run eagerly
    y = mge.Parameter([2.0])

    def f(x):
        with GradManager() as gm:
            gm.attach(x)
            gm.backward(F.maximum(x, x * y).sum())
        with GradManager().attach(y) | GradManager():
            pass
        dx = x.grad
        x.grad = None
        return dx

    traced = trace(f, **options)
    for k in range(3):
        data = np.arange(4.0) - 1.5 + k
        got = traced(mge.tensor(data)).numpy()  # the .grad of this call's own argument
        np.testing.assert_array_equal(got, f(mge.tensor(data)).numpy())
        np.testing.assert_array_equal(got, np.where(data * 2 > data, 2.0, 1.0))


# ----- symbolic_shape: what x.shape is while a traced function runs -----

@pytest.mark.parametrize("options", [{"symbolic": False}, {"symbolic": True},
                                     {"without_host": True}, {"imperative": True}])
def test_shape_inside_a_trace_is_a_tuple_that_reads_like_upstreams_shape_tensor(options):
    seen = []

    @trace(**options)
    def f(x):
        s = x.shape
        # upstream (symbolic_shape=True, its default): a shape Tensor read with .numpy()
        np.testing.assert_array_equal(s.numpy(), np.array([2, 3, 4], dtype=np.int32))
        assert s.numpy().dtype == np.int32 and s.ndim == 1 and s.shape == (3,)
        np.testing.assert_array_equal(s[1:].numpy(), [3, 4])
        # ordinary programs: a tuple of ints
        assert s == (2, 3, 4) and s[0] == 2 and isinstance(s[0], int) and len(s) == 3
        assert s[1:] + (5,) == (3, 4, 5) and tuple(s) == (2, 3, 4) and hash(s) == hash((2, 3, 4))
        assert np.prod(s) == 24 and np.asarray(s).dtype == np.int64  # numpy sees a plain tuple
        seen.append(type(s).__name__)
        return (x + F.zeros(s)).reshape(s[0], -1) * 2

    x = mge.tensor(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    for _ in range(3):
        y = f(x)
        np.testing.assert_array_equal(y.numpy(), np.arange(24).reshape(2, 12) * 2)
    assert seen and set(seen) == {"Shape"}
    assert type(x.shape) is tuple  # outside the call: a plain tuple again


def test_symbolic_shape_false_and_the_global_switch():
    @trace(symbolic=True, symbolic_shape=False)
    def f(x):
        assert type(x.shape) is tuple
        return x + 1

    f(mge.tensor([1.0]))
    f(mge.tensor([1.0]))
    old = set_symbolic_shape(True)  # upstream: shapes are symbolic outside traces too
    try:
        x = mge.tensor(np.ones((2, 5)))
        assert x.shape.numpy().tolist() == [2, 5] and x.shape.tolist() == [2, 5]
        assert mge.tensor(3.0).shape == ()  # a scalar's shape stays (), as upstream
        s = x.shape
        assert s.astype("float32").numpy().tolist() == [2.0, 5.0]
        assert s[1:].item() == 5
        with pytest.raises(ValueError, match="2 elements"):
            s.item()
        import pickle
        assert type(pickle.loads(pickle.dumps(s))) is tuple
    finally:
        set_symbolic_shape(old)
    assert type(mge.tensor(np.ones((2, 5))).shape) is tuple


def test_upstream_shape_reads_of_topk_and_warp_perspective_under_symbolic_trace():
    # upstream's test_trace_topk / test_trace_warp_perspective, checked on every call
    x = mge.tensor([5, 2, 7, 1, 0, 3, 2])

    @trace(symbolic=True)
    def f(x):
        y = F.topk(x, 3)
        np.testing.assert_equal(y[0].shape.numpy(), np.array([3]))
        return y

    for _ in range(3):
        np.testing.assert_array_equal(f(x)[0].numpy(), [0, 1, 2])
    img = mge.tensor(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    m = mge.tensor(np.array([[[1, 0, 1], [0, 1, 1], [0, 0, 1]]], dtype=np.float32))

    @trace(symbolic=True)
    def g(img, m):
        out = F.vision.warp_perspective(img, m, (2, 2))
        np.testing.assert_equal(out.shape.numpy(), np.array([1, 1, 2, 2]))
        return out

    for _ in range(3):  # the matrix shifts by (1, 1): out[i, j] = img[i + 1, j + 1]
        np.testing.assert_array_equal(g(img, m).numpy()[0, 0], [[5, 6], [9, 10]])


@pytest.mark.parametrize("options", [{"symbolic": False}, {"symbolic": True},
                                     {"without_host": True}])
def test_common_shape_idioms_under_trace_match_eager(options):
    def f(x):
        n, c, h, w = x.shape
        return (F.vision.interpolate(x, size=x.shape[2:]) + F.broadcast_to(x[:1], x.shape),
                x.reshape(*x.shape[:2], -1).sum(axis=2) + float(np.prod(x.shape)),
                mge.tensor(np.zeros(x.shape, dtype="float32")) + x[n - 1],
                F.concat([F.flatten(x, 1), F.zeros((x.shape[0], 1))], axis=1),
                x.reshape(F.concat([mge.tensor(x.shape[:-2]), mge.tensor([-1])])),
                sum(x[i].sum() for i in range(x.shape[0])) * (h * w // c))

    x = mge.tensor(np.random.RandomState(3).rand(2, 3, 4, 4).astype("float32"))
    eager = [t.numpy() for t in f(x)]
    traced = trace(f, **options)
    for _ in range(3):
        for got, want in zip(traced(x), eager):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
