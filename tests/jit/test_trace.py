"""Tests for megengine/jit/tracing.py with record.py and replay.py: `trace` records once per
signature, then reruns and checks the function (symbolic=False or True) or replays the record
(without_host=True); traced results must equal eager ones, step for step. (What a recording
captures: test_record.py; a checked call's mismatch reports: test_check_mismatch.py.)"""
import numpy as np
import pytest

import megengine as mge
from megengine.autodiff import GradManager
from megengine.core import dispatch
from megengine.jit import TraceError, TraceMismatchError, exclude_from_trace, is_tracing, trace

from jit_nets import MLP, MODES, batches, mse, training_step, values


# ----- (1) inference ---------------------------------------------------------------------------
@pytest.mark.parametrize("symbolic", MODES)
def test_inference_matches_eager_on_new_inputs(symbolic):
    net = MLP()
    f = trace(net, symbolic=symbolic)
    for x, _ in batches(4):
        np.testing.assert_array_equal(f(x).numpy(), net(x).numpy())


@pytest.mark.parametrize("symbolic", MODES)
@pytest.mark.parametrize("form", ["value", "tuple", "list", "dict"])
def test_output_structures(symbolic, form):
    @trace(symbolic=symbolic)
    def f(x):
        y = -x
        return {"value": y, "tuple": (y, 3), "list": [y, x * 2], "dict": {"neg": y}}[form]

    for v in ([1.0, 2.0], [3.0, -4.0], [0.5, 0.0]):
        out = f(mge.tensor(v))
        neg = out if form == "value" else out["neg"] if form == "dict" else out[0]
        np.testing.assert_array_equal(neg.numpy(), -np.array(v, "float32"))
        if form == "tuple":
            assert type(out) is tuple and out[1] == 3
        if form == "list":
            assert type(out) is list
            np.testing.assert_array_equal(out[1].numpy(), 2 * np.array(v, "float32"))


@pytest.mark.parametrize("symbolic", MODES)
def test_namedtuple_output(symbolic):
    from collections import namedtuple

    Out = namedtuple("Out", "double neg")
    f = trace(lambda x: Out(x * 2, -x), symbolic=symbolic)
    for v in (1.0, 3.0):
        out = f(mge.tensor([v]))
        assert type(out) is Out
        assert out.double.numpy().tolist() == [2 * v] and out.neg.numpy().tolist() == [-v]


def test_decorator_forms():
    @trace
    def a(x):
        return x + 1

    @trace(symbolic=True)
    def b(x):
        return x + 1

    c = trace(lambda x: x + 1, symbolic=True)
    for f in (a, b, c):
        assert isinstance(f, trace)
        for v in (1.0, 5.0):
            assert f(mge.tensor([v])).numpy().tolist() == [v + 1]
    assert a.__name__ == "a" and not a._symbolic and b._symbolic


def test_method_decorator_binds_self():
    class Model:
        def __init__(self):
            self.w = mge.Parameter([2.0])

        @trace(symbolic=True)
        def forward(self, x):
            return x * self.w

    m = Model()
    assert m.forward(mge.tensor([3.0])).numpy().tolist() == [6.0]
    assert m.forward(mge.tensor([4.0])).numpy().tolist() == [8.0]
    other = Model()
    other.w.set_value(mge.tensor([5.0]))
    # another instance is another signature: traced anew, with its own parameters
    assert other.forward(mge.tensor([4.0])).numpy().tolist() == [20.0]
    assert m.forward(mge.tensor([1.0])).numpy().tolist() == [2.0]


# ----- (2) training steps ----------------------------------------------------------------------
def _manual_step(net, gm, lr=0.1):
    def step(x, y):
        with gm:
            loss = mse(net(x), y)
            gm.backward(loss)
        for p in net.params():
            p -= lr * p.grad  # an in-place write into the Parameter: an event of the trace
        return loss

    return step


@pytest.mark.parametrize("symbolic", MODES)
def test_training_step_manual_update_matches_eager(symbolic):
    data = batches(6)
    runs = []
    for traced in (False, True):
        net = MLP()
        gm = GradManager().attach(net.params())
        step = _manual_step(net, gm)
        if traced:
            step = trace(step, symbolic=symbolic)
        losses = []
        params = []
        for x, y in data:
            losses.append(step(x, y).numpy())
            for p in net.params():
                p.grad = None
            params.append(values(net.params()))
        runs.append((losses, params))
    (eager_losses, eager_params), (traced_losses, traced_params) = runs
    assert eager_losses[-1] < eager_losses[0]  # it trains
    for i in range(len(data)):
        np.testing.assert_array_equal(traced_losses[i], eager_losses[i])
        for a, b in zip(traced_params[i], eager_params[i]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("symbolic", MODES)
def test_gradients_accumulate_like_eager(symbolic):
    # no clearing of .grad: each backward adds to the gradient the last one left
    runs = []
    for traced in (False, True):
        net = MLP()
        gm = GradManager().attach(net.params())

        def step(x, y):
            with gm:
                loss = mse(net(x), y)
                gm.backward(loss)
            return loss

        f = trace(step, symbolic=symbolic) if traced else step
        for x, y in batches(3):
            f(x, y)
        runs.append(values(p.grad for p in net.params()))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("symbolic", MODES)
def test_training_with_optimizer_matches_eager(symbolic):
    optim = pytest.importorskip("megengine.optimizer")
    data = batches(6)
    runs = []
    for traced in (False, True):
        net = MLP()
        step = training_step(lambda x, y: mse(net(x), y), net.params(),
                             optim.SGD(net.params(), lr=0.1, momentum=0.9))
        f = trace(step, symbolic=symbolic) if traced else step
        runs.append([(f(x, y).numpy(), values(net.params())) for x, y in data])
    for (la, pa), (lb, pb) in zip(*runs):
        np.testing.assert_array_equal(la, lb)
        for a, b in zip(pa, pb):
            np.testing.assert_array_equal(a, b)
        assert all(p.grad is None for p in net.params())


@pytest.mark.parametrize("symbolic", MODES)
def test_module_training_matches_eager(symbolic):
    M = pytest.importorskip("megengine.module")
    F = pytest.importorskip("megengine.functional")
    optim = pytest.importorskip("megengine.optimizer")
    rng = np.random.RandomState(3)
    data = [(mge.tensor(rng.randn(16, 10)), mge.tensor(rng.randint(0, 4, 16), dtype="int32"))
            for _ in range(5)]
    runs = []
    for traced in (False, True):
        mge.random.seed(7)  # the layers' initial weights
        net = M.Sequential(M.Linear(10, 32), M.ReLU(), M.Linear(32, 4))
        step = training_step(lambda x, label: F.loss.cross_entropy(net(x), label),
                             net.parameters(), optim.SGD(net.parameters(), lr=0.05))
        f = trace(step, symbolic=symbolic) if traced else step
        runs.append([(f(x, y).numpy(), values(net.parameters())) for x, y in data])
    for (la, pa), (lb, pb) in zip(*runs):
        np.testing.assert_allclose(la, lb, rtol=1e-6)
        for a, b in zip(pa, pb):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ----- (3) backward outside the traced function -----------------------------------------------
@pytest.mark.parametrize("symbolic", MODES)
def test_backward_outside_traced_forward(symbolic):
    data = batches(4)
    runs = []
    for traced in (False, True):
        net = MLP()
        gm = GradManager().attach(net.params())
        forward = trace(net, symbolic=symbolic) if traced else net
        grads = []
        for x, y in data:
            with gm:
                loss = mse(forward(x), y)
                gm.backward(loss)
            grads.append(values(p.grad for p in net.params()))
            for p in net.params():
                p -= 0.1 * p.grad
                p.grad = None
        runs.append(grads)
    for ga, gb in zip(*runs):
        for a, b in zip(ga, gb):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("symbolic", MODES)
def test_input_gradient_through_replay(symbolic):
    f = trace(lambda x: (x * x * 3).sum(), symbolic=symbolic)
    for v in ([1.0, 2.0], [3.0, -1.0], [0.5, 4.0]):
        x = mge.tensor(v)
        gm = GradManager().attach(x)
        with gm:
            gm.backward(f(x))
        np.testing.assert_allclose(x.grad.numpy(), 6 * np.array(v), rtol=1e-6)


@pytest.mark.parametrize("symbolic", MODES)
def test_grad_returned_from_trace_is_fresh(symbolic):
    # upstream's test_dump_backward_graph without the dump: x0.grad read inside the function
    x0 = mge.Parameter(np.ones((2, 3), "float32"))
    gm = GradManager().attach(x0)

    @trace(symbolic=symbolic)
    def f(x1):
        with gm:
            y = x0 * x1
            gm.backward(y, mge.tensor(np.ones((2, 3), "float32")))
        return y, x0.grad

    for k in range(3):
        x0.grad = None
        x1 = mge.tensor(np.full((2, 3), k + 1.0))
        _, g = f(x1)
        np.testing.assert_array_equal(g.numpy(), x1.numpy())


# ----- (5) a new signature is traced anew -------------------------------------------------------
@pytest.mark.parametrize("options", [{"symbolic": True}, {"without_host": True}])
def test_shape_change_retraces(options):
    net = MLP()
    runs = []

    def fwd(x):
        runs.append(x.shape)
        return net(x)

    f = trace(fwd, **options)
    for n in (8, 5, 8, 5, 3):
        x = mge.tensor(np.random.RandomState(n).randn(n, 6))
        np.testing.assert_allclose(f(x).numpy(), net(x).numpy(), rtol=1e-6)
    assert len(f._programs) == 3  # one program per shape
    if options.get("without_host"):
        assert runs == [(8, 6), (5, 6), (3, 6)]  # Python ran once per new shape only
    else:
        assert len(runs) == 5  # symbolic=True reruns (and checks) Python on every call


def test_symbolic_dtype_structure_and_kwargs_changes_retrace():
    runs = []

    @trace(without_host=True)
    def f(xs, scale=1):
        runs.append(len(xs))
        return xs[0] * scale + xs[1]

    calls = [([1.0], [2.0], {}), ([1.0], [2], {}), ([1.0], [2.0], {"scale": 3}),
             ([1.0], [2.0], {"scale": mge.tensor([4.0])}), ([1.0], [2.0], {})]
    for a, b, kw in calls:
        xs = [mge.tensor(a), mge.tensor(b)]
        expect = xs[0].numpy() * (kw["scale"].numpy() if isinstance(kw.get("scale"), mge.Tensor)
                                  else kw.get("scale", 1)) + xs[1].numpy()
        np.testing.assert_array_equal(f(xs, **kw).numpy(), expect)
    assert len(runs) == 4  # the last call reuses the first signature's program
    three = [mge.tensor([1.0]), mge.tensor([2.0]), mge.tensor([3.0])]
    assert f(three).numpy().tolist() == [3.0] and len(runs) == 5


def test_symbolic_non_tensor_argument_is_part_of_the_signature():
    f = trace(lambda x, k: x * k, symbolic=True)
    assert f(mge.tensor([1.0]), 3).numpy().tolist() == [3.0]
    assert f(mge.tensor([2.0]), 3).numpy().tolist() == [6.0]
    assert f(mge.tensor([2.0]), 4).numpy().tolist() == [8.0]  # never the stale k=3 program
    assert f(mge.tensor([1.0]), 3).numpy().tolist() == [3.0]


def test_without_host_does_not_run_python_again():
    seen = []

    @trace(without_host=True)
    def f(x):
        seen.append(1)
        return x + 1

    for v in range(4):
        assert f(mge.tensor([float(v)])).numpy().tolist() == [v + 1.0]
    assert seen == [1]


def test_symbolic_runs_python_side_effects_on_every_call(capsys):
    # upstream's trace.__call__ always calls the function; a counter, a print and a list append
    # happen on each call, exactly as in the untraced function (the oracle)
    counter, seen = [0], []

    def fn(x):
        counter[0] += 1
        y = x * 2
        print("value", y.numpy().tolist())
        seen.append(float(y.sum()))
        return y

    f = trace(fn, symbolic=True)
    outs = [f(mge.tensor([float(v)])).numpy().tolist() for v in range(1, 4)]
    traced_print = capsys.readouterr().out
    eager_counter, eager_seen = counter[0], list(seen)
    counter[0], seen[:] = 0, []
    eager = [fn(mge.tensor([float(v)])).numpy().tolist() for v in range(1, 4)]
    assert outs == eager == [[2.0], [4.0], [6.0]]
    assert traced_print == capsys.readouterr().out == "value [2.0]\nvalue [4.0]\nvalue [6.0]\n"
    assert eager_counter == counter[0] == 3 and eager_seen == seen == [2.0, 4.0, 6.0]


def test_symbolic_data_dependent_branch_is_checked_not_replayed():
    # the branch taken depends on a value: a call that takes the other branch must not return
    # the recorded branch's result (the old replay did); it raises, and the trace stays usable
    @trace(symbolic=True)
    def f(x):
        if x.sum().item() > 0:
            return x * 2
        return x - 1

    assert f(mge.tensor([1.0, 2.0])).numpy().tolist() == [2.0, 4.0]
    assert f(mge.tensor([3.0, 1.0])).numpy().tolist() == [6.0, 2.0]  # the same branch
    with pytest.raises(TraceMismatchError) as info:
        f(mge.tensor([-1.0, -2.0]))
    assert str(info.value) == "trace error because operator mismatch"
    assert "Mul" in info.value.detail and "Sub" in info.value.detail
    assert dispatch._trace_hook is None
    assert f(mge.tensor([5.0, 1.0])).numpy().tolist() == [10.0, 2.0]


# ----- the rest of the API ----------------------------------------------------------------------
def test_exception_in_first_call_leaves_it_untraced():
    state = {"fail": True}

    @trace(symbolic=True)
    def f(x):
        y = x + 1
        if state["fail"]:
            raise KeyError("boom")
        return y

    with pytest.raises(KeyError):
        f(mge.tensor([1.0]))
    assert dispatch._trace_hook is None
    state["fail"] = False
    assert f(mge.tensor([1.0])).numpy().tolist() == [2.0]
    assert f(mge.tensor([5.0])).numpy().tolist() == [6.0]


@pytest.mark.parametrize("symbolic", MODES)
def test_exclude_from_trace_and_is_tracing(symbolic):
    flags = []

    @trace(symbolic=symbolic)
    def f(x):
        flags.append(is_tracing())
        with exclude_from_trace():
            flags.append(is_tracing())
            _ = (x * 100).numpy()  # not recorded, not checked
        return -x

    for v in (1.0, 2.0):
        assert f(mge.tensor([v])).numpy().tolist() == [-v]
    assert flags[:2] == [True, False]
    assert f._program.n_ops == 1
    assert not is_tracing()


def test_checked_call_accepts_what_an_excluded_block_computed():
    # upstream's contract: an exclude_from_trace block may compute differently from call to
    # call (here it negates on odd calls) and the traced ops after it use its result. The
    # oracle is the same arithmetic by hand: -(-x) when nothing is negated in the block.
    state = {"flip": False}

    @trace(symbolic=False)
    def f(x):
        x = -x
        with exclude_from_trace():
            if state["flip"]:
                x = -x
        return -x

    for k, v in enumerate((1.0, 2.0, 3.0, 4.0)):
        state["flip"] = k % 2 == 1
        expected = -v if state["flip"] else v
        assert f(mge.tensor([v])).numpy().tolist() == [expected]
    assert f._program.n_ops == 2

    # outside such a block a tensor from elsewhere is still a mismatch
    other = mge.tensor([7.0])

    @trace(symbolic=False)
    def g(x):
        y = -x
        return -(other if state["flip"] else y)

    state["flip"] = False
    g(mge.tensor([1.0]))
    state["flip"] = True
    with pytest.raises(TraceMismatchError, match="expect internal node, got external"):
        g(mge.tensor([1.0]))


def test_nested_recording_is_refused_but_replay_inside_is_fine():
    inner = trace(lambda x: x * 2, without_host=True)
    outer = trace(lambda x: inner(x) + 1, symbolic=True)
    with pytest.raises(NotImplementedError, match="nested"):
        outer(mge.tensor([1.0]))
    inner(mge.tensor([1.0]))  # recorded outside: replays inside the outer's recording
    assert outer(mge.tensor([1.0])).numpy().tolist() == [3.0]
    assert outer(mge.tensor([4.0])).numpy().tolist() == [9.0]
    # a symbolic=True trace reruns Python, which is a nested trace inside another (upstream:
    # "nested trace" is not implemented either)
    checked = trace(lambda x: x * 2, symbolic=True)
    checked(mge.tensor([1.0]))
    with pytest.raises(NotImplementedError, match="nested"):
        trace(lambda x: checked(x) + 1, symbolic=True)(mge.tensor([1.0]))


def test_compiler_options_are_accepted():
    from megengine.jit import DTRConfig, GraphOptimizationConfig, SublinearMemoryConfig

    f = trace(lambda x: x + 1, symbolic=True, opt_level=0, symbolic_shape=False,
              sublinear_memory_config=SublinearMemoryConfig(), dtr_config=DTRConfig(),
              graph_opt_config=GraphOptimizationConfig())
    assert f(mge.tensor([1.0])).numpy().tolist() == [2.0]


def test_compiler_options_are_checked_as_upstreams_constructors_assert():
    # upstream 1.13 measured: AssertionError for a negative count, TypeError for a string
    # (its comparison), AttributeError for a config of another type (accepted before)
    from megengine.jit import DTRConfig, SublinearMemoryConfig

    for make, words in [(lambda: SublinearMemoryConfig(thresh_nr_try=-1), "thresh_nr_try"),
                        (lambda: SublinearMemoryConfig(num_worker=0), "num_worker"),
                        (lambda: DTRConfig(eviction_threshold=-1), "eviction_threshold")]:
        with pytest.raises(AssertionError, match=f"{words} must be >= ") as error:
            make()
        assert isinstance(error.value, ValueError)
    with pytest.raises(TypeError, match="genetic_nr_iter must be a number, got str"):
        SublinearMemoryConfig(genetic_nr_iter="x")
    with pytest.raises(TypeError, match="dtr_config must be a DTRConfig or None, got int"):
        trace(lambda x: x, dtr_config=3)
    assert DTRConfig().eviction_threshold == 0  # (upstream refuses its own default)


def test_recording_without_grad_manager_hooks_is_detected():
    # what the tracer sees when autodiff recording starts without an event telling it
    def g(x):
        dispatch._set_recording(+1)
        return x + 1

    try:
        with pytest.raises(TraceError, match="trace hooks"):
            trace(g, symbolic=True)(mge.tensor([1.0]))
    finally:
        dispatch._set_recording(-1)


def test_untraced_apply_is_untouched():
    assert dispatch._trace_hook is None
    x = mge.tensor([1.0, 2.0])
    assert (x + x).numpy().tolist() == [2.0, 4.0]


@pytest.mark.parametrize("symbolic", [False, True])
def test_random_draws_are_fresh_on_every_replay(symbolic):
    import megengine.random as mrandom

    @trace(symbolic=symbolic)
    def noisy(x):
        return x + mrandom.normal(size=(3,)) + mrandom.permutation(3).astype("float32")

    x = mge.tensor(np.zeros(3, "float32"))
    mrandom.seed(5)
    outs = [noisy(x).numpy() for _ in range(3)]
    assert not np.allclose(outs[1], outs[2]), "a replay must not repeat the first call's draws"
    mrandom.seed(5)
    expected = [(mrandom.normal(size=(3,)) + mrandom.permutation(3).astype("float32")).numpy()
                for _ in range(3)]
    np.testing.assert_allclose(outs, expected)


# ----- MegEngine 0.x programs: numpy batches as positional arguments ---------------------------
@pytest.mark.parametrize("symbolic", MODES)
def test_0x_step_with_numpy_batches_and_optimizer_backward(symbolic):
    """A 0.x training step (the model zoo's first train.py, MegEngine_unet's jit_train.py):
    numpy batches passed positionally, ``opt.backward(loss)`` inside the traced function,
    ``opt.zero_grad()``/``opt.step()`` outside. 0.x made each positional argument a Tensor, so
    one program serves every batch, and training equals the untraced run."""
    M = pytest.importorskip("megengine.module")
    F = pytest.importorskip("megengine.functional")
    optim = pytest.importorskip("megengine.optimizer")
    rng = np.random.RandomState(5)
    data = [(rng.randn(8, 6).astype("float32"), rng.randint(0, 3, 8).astype("int32"))
            for _ in range(4)]
    runs = []
    for traced in (False, True):
        mge.random.seed(11)  # the layers' initial weights
        net = M.Sequential(M.Linear(6, 16), M.ReLU(), M.Linear(16, 3))
        opt = optim.SGD(net.parameters(), lr=0.1)

        def step(image, label, net=None, optimizer=None):
            logits = net(image)
            loss = F.cross_entropy_with_softmax(logits, label)
            optimizer.backward(loss)
            return logits, loss

        f = trace(step, symbolic=symbolic) if traced else step
        out = []
        for x, y in data:
            opt.zero_grad()
            logits, loss = f(x if traced else mge.tensor(x), y if traced else mge.tensor(y),
                             net=net, optimizer=opt)
            opt.step()
            out.append((loss.numpy(), np.argmax(logits, axis=1)))
        runs.append((out, values(net.parameters())))
        if traced:
            assert len(f._programs) == 1  # batches are inputs, not values keying new programs
    (ea, pa), (eb, pb) = runs
    for (la, aa), (lb, ab) in zip(ea, eb):
        np.testing.assert_allclose(la, lb, rtol=1e-6)
        np.testing.assert_array_equal(aa, ab)
    for a, b in zip(pa, pb):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_0x_compiler_options_are_accepted():
    # MegEngine 0.x's trace(symbolic, opt_level=None, log_level, allreduce_pack_max_size)
    f = trace(lambda x: x * 2, symbolic=True, opt_level=None, log_level=2,
              allreduce_pack_max_size=16)
    np.testing.assert_array_equal(f(mge.tensor([1.0, 2.0])).numpy(), [2.0, 4.0])
    with pytest.raises(ValueError, match="opt_level must be an int from 0 to 3"):
        trace(lambda x: x, opt_level=7)


def test_0x_enabled_switch_runs_plain_python(monkeypatch):
    calls = []

    def f(x):
        calls.append(1)  # a Python side effect: runs on every untraced call
        return x + 1

    g = trace(f, symbolic=True)
    monkeypatch.setattr(trace, "enabled", False)
    for _ in range(3):
        np.testing.assert_array_equal(g(mge.tensor([1.0])).numpy(), [2.0])
    assert len(calls) == 3 and not g._programs  # nothing recorded
    monkeypatch.setattr(trace, "enabled", True)
    g(mge.tensor([1.0]))
    assert len(g._programs) == 1
