"""Tests for megengine/jit/arith_opt.py: upstream's level-1 arithmetic rewrites of a traced
program (``trace(opt_level=...)``), each against hand-computed values, in every trace mode;
where they must not apply (opt_level=0, live externals, events between, host reads); autodiff
through a rewritten program against torch; dump."""
import io

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine import Parameter
from megengine.autodiff import GradManager
from megengine.jit import TraceMismatchError, trace
from megengine.utils.comp_graph_tools import GraphInference

MODES = [{"symbolic": False}, {"symbolic": True}, {"without_host": True}]
f32 = np.float32


def _ops(tr):
    """The op classes a trace's latest program runs on replay (its optimized program)."""
    prog = tr._program.optimized or tr._program
    return [type(s.template).__name__ for s in prog.steps if hasattr(s, "template")]


def _calls(tr, *args, n=3):
    with np.errstate(all="ignore"):
        return [tr(*args).numpy() for _ in range(n)]


def _same(value, expected):
    expected = np.array(expected, dtype=f32)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    zero = expected == 0  # -0.0 and 0.0: the sign tells them apart
    np.testing.assert_array_equal(np.signbit(value[zero]), np.signbit(expected[zero]))


# (function, inputs, value with the rewrite (hand-computed), value without it, rewritten op,
#  whether the recording call of symbolic=True applies it (rules on Python-data constants are
#  only planned once that call has returned))
CASES = {
    "a - a -> 0": (lambda x: x - x, [[np.inf, 1.0]], [0.0, 0.0], [np.nan, 0.0], "Fill", True),
    "a / a -> 1": (lambda x: x / x, [[0.0, 2.0]], [1.0, 1.0], [np.nan, 1.0], "Fill", True),
    "a // a -> 1": (lambda x: x // x, [[0.0, 3.0]], [1.0, 1.0], [np.nan, 1.0], "Fill", True),
    # -0.0 + 0.0 is +0.0; the rewrite keeps the -0.0 of x
    "a + 0 -> a": (lambda x: x + 0.0, [[-0.0, 2.0]], [-0.0, 2.0], [0.0, 2.0], "BroadcastAs",
                   False),
    "a * 0 -> 0": (lambda x: x * 0.0, [[np.inf, np.nan, 2.0]], [0.0, 0.0, 0.0],
                   [np.nan, np.nan, 0.0], "Fill", False),
    "log(exp(a)) -> a": (lambda x: F.log(F.exp(x)), [[100.0, 1.0]], [100.0, 1.0],
                         [np.inf, 1.0], "BroadcastAs", True),
    "log(exp(a) * b) -> a + log(b)": (lambda x, y: F.log(F.exp(x) * y), [[100.0], [2.0]],
                                      [100 + np.log(2.0)], [np.inf], "Add", True),
    "log(exp(a) / b) -> a - log(b)": (lambda x, y: F.log(F.exp(x) / y), [[100.0], [2.0]],
                                      [100 - np.log(2.0)], [np.inf], "Sub", True),
    "log(b / exp(a)) -> log(b) - a": (lambda x, y: F.log(y / F.exp(x)), [[100.0], [2.0]],
                                      [np.log(2.0) - 100], [-np.inf], "Sub", True),
    # float32: 1 + 1e-10 is 1, so log gives 0; log1p keeps 1e-10
    "log(1 + x) -> log1p(x)": (lambda x: F.log(1 + x), [[1e-10]], [1e-10], [0.0], "Log1p",
                               False),
    "log(exp(x) + exp(y)) -> logaddexp": (lambda x, y: F.log(F.exp(x) + F.exp(y)),
                                          [[1e4], [0.0]], [1e4], [np.inf], "LogAddExp", True),
    "exp(x) - 1 -> expm1(x)": (lambda x: F.exp(x) - 1, [[1e-10]], [1e-10], [0.0], "Expm1",
                               False),
}


@pytest.mark.parametrize("mode", MODES, ids=["symbolic=False", "symbolic=True", "without_host"])
@pytest.mark.parametrize("name", list(CASES))
def test_each_rewrite_gives_the_hand_computed_value(name, mode):
    fn, inputs, rewritten, plain, op_name, at_recording = CASES[name]
    args = [mge.tensor(np.array(v, dtype=f32)) for v in inputs]
    tr = trace(fn, opt_level=1, **mode)
    values = _calls(tr, *args)
    # the recording call: eager under symbolic=False (as upstream's first call), rewritten under
    # symbolic=True / without_host when the rule needs no Python-data constant
    eager_first = mode.get("symbolic") is False
    first = rewritten if at_recording and not eager_first else plain
    _same(values[0], first)
    for v in values[1:]:
        _same(v, rewritten)
    assert op_name in _ops(tr)
    # opt_level=0: nothing is rewritten, every call computes as eager
    tr0 = trace(fn, opt_level=0, **mode)
    for v in _calls(tr0, *args):
        _same(v, plain)
    assert tr0._program.optimized is None


@pytest.mark.parametrize("mode", MODES, ids=["symbolic=False", "symbolic=True", "without_host"])
def test_identity_rewrites_keep_the_ops_shape_and_dtype_and_own_storage(mode):
    x = mge.tensor(np.array([1, -2, 3], dtype=np.int32))

    def f(x):
        return x * F.ones((1, 1)), x ** 1, x // 1, F.floor_div(x.astype("float32") + 0.5, 1)

    tr = trace(f, **mode)  # the default level (2) includes level 1
    for _ in range(3):
        a, b, c, d = tr(x)
        assert a.shape == (1, 3) and a.dtype == np.float32  # int32 * float32 (1, 1)
        np.testing.assert_array_equal(a.numpy(), [[1, -2, 3]])
        # ** of integers computes in float32 (upstream's F.pow docs); // keeps int32
        for t, dtype in ((b, np.float32), (c, np.int32)):
            assert t.dtype == dtype and t.shape == (3,)
            np.testing.assert_array_equal(t.numpy(), [1, -2, 3])
        np.testing.assert_array_equal(d.numpy(), [1, -2, 3])  # floor(x + 0.5) by hand
        b[0] = 7  # a new array: writing into it leaves the argument alone
        assert x.numpy().tolist() == [1, -2, 3]
    ops = _ops(tr)
    assert "Mul" not in ops and "Pow" not in ops and "FloorDiv" not in ops and "Floor" in ops


def test_power_and_exp_of_constants():
    z = mge.tensor(0.0)

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return x ** 0, F.exp(z) * x, x ** z

    for _ in range(2):
        a, b, c = f(mge.tensor([np.nan, 2.0]))
        np.testing.assert_array_equal(a.numpy(), [1.0, 1.0])
        np.testing.assert_array_equal(b.numpy(), [np.nan, 2.0])  # exp(0) -> 1, then 1 * x
        np.testing.assert_array_equal(c.numpy(), [1.0, 1.0])
    assert "Pow" not in _ops(f) and "Exp" not in _ops(f)


@pytest.mark.parametrize("mode", MODES, ids=["symbolic=False", "symbolic=True", "without_host"])
def test_a_live_parameter_is_not_a_constant_but_a_captured_one_is(mode):
    p = Parameter(np.zeros((1,), dtype=f32))
    live = trace(lambda x: x * p, **mode)
    captured = trace(lambda x: x * p, capture_as_const=True, **mode)
    x = mge.tensor([np.inf, 2.0])
    with np.errstate(all="ignore"):
        live(x), captured(x)
        p[...] = mge.tensor([3.0])
        np.testing.assert_array_equal(live(x).numpy(), [np.inf, 6.0])  # reads p now
        if "without_host" in mode:  # a replay computes with the captured value
            np.testing.assert_array_equal(captured(x).numpy(), [0.0, 0.0])  # inf * 0 -> 0
        else:  # a checked call compares it first, as upstream's compiled trace
            with pytest.raises(TraceMismatchError, match="tensors not equals"):
                captured(x)
    assert "Mul" in _ops(live) and "Fill" in _ops(captured)


@pytest.mark.parametrize("mode", MODES, ids=["symbolic=False", "symbolic=True", "without_host"])
def test_no_rewrite_reaches_across_an_event(mode):
    w = Parameter(np.array([1.0], dtype=f32))

    @trace(**mode)
    def f(x):
        e = F.exp(w)
        w[...] = w + 1  # an in-place write into a Parameter: an event between exp and log
        return F.log(e) + x  # log(exp(w)) -> w would read the new w

    for k in range(3):
        np.testing.assert_allclose(f(mge.tensor([0.0])).numpy(), [1.0 + k], rtol=1e-6)
    assert "Log" in _ops(f)


@pytest.mark.parametrize("mode", MODES, ids=["symbolic=False", "symbolic=True", "without_host"])
def test_an_intermediate_used_elsewhere_is_kept(mode):
    @trace(**mode)
    def f(x, y):
        ex = F.exp(x)
        return F.log(ex + F.exp(y)), ex

    for k in range(3):
        with np.errstate(all="ignore"):
            lse, ex = f(mge.tensor([1e4, 1.0]), mge.tensor([0.0, 2.0]))
        if k > 0 or mode.get("symbolic") is not False:  # (a symbolic=False recording: eager)
            np.testing.assert_allclose(lse.numpy(), [1e4, np.logaddexp(1.0, 2.0)], rtol=1e-6)
        np.testing.assert_allclose(ex.numpy(), [np.inf, np.e], rtol=1e-6)
    ops = _ops(f)
    assert ops.count("Exp") == 1 and "LogAddExp" in ops and "Log" not in ops


@pytest.mark.parametrize("mode", MODES, ids=["symbolic=False", "symbolic=True", "without_host"])
def test_a_value_written_in_place_is_read_as_it_was(mode):
    @trace(**mode)
    def f(x):
        y = F.exp(x)
        y += 1  # dataflow: y holds exp(x) + 1 from here; log(1 + e) -> log1p(e) reads exp(x)
        return F.log(y)

    for _ in range(3):  # log(exp(0) + 1) = log(2), not log1p(exp(0) + 1) = log(3)
        np.testing.assert_allclose(f(mge.tensor([0.0])).numpy(), [np.log(2.0)], rtol=1e-6)


def test_a_value_read_to_the_host_keeps_the_steps_before_it_as_recorded():
    # the recording computed log(1 + x) eagerly (its constant 1 is known only afterwards) and
    # read the result: a replay checks it reads the same value, so that step is not rewritten
    @trace(without_host=True)
    def f(x):
        y = F.log(1 + x)
        n = y.numpy().size  # a host read of an op output: a guard on replay
        return y * n

    x = mge.tensor([1e-10], dtype="float32")
    for _ in range(3):
        assert f(x).numpy().tolist() == [0.0]  # float32 log(1 + 1e-10), as recorded
    assert "Log1p" not in _ops(f)


@pytest.mark.parametrize("mode", MODES, ids=["symbolic=False", "symbolic=True", "without_host"])
def test_gradients_through_a_rewritten_program_match_torch(mode):
    x = Parameter(np.array([1e4, 0.5, -3.0], dtype=f32))
    y = Parameter(np.array([0.0, 1.5, -3.0], dtype=f32))
    gm = GradManager().attach([x, y])

    @trace(**mode)
    def step():
        with gm:
            loss = (F.log(F.exp(x) + F.exp(y)) * mge.tensor([1.0, 2.0, 3.0])).sum()
            gm.backward(loss)
        return loss

    tx = torch.tensor(x.numpy(), requires_grad=True)
    ty = torch.tensor(y.numpy(), requires_grad=True)
    loss = (torch.logaddexp(tx, ty) * torch.tensor([1.0, 2.0, 3.0])).sum()
    loss.backward()
    eager_first = mode.get("symbolic") is False  # upstream's first call: eager, so inf/NaN
    with np.errstate(all="ignore"):
        for k in range(3):
            x.grad = y.grad = None
            out = step()
            if k > 0 or not eager_first:
                np.testing.assert_allclose(out.numpy(), loss.item(), rtol=1e-6)
                np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5)
                np.testing.assert_allclose(y.grad.numpy(), ty.grad.numpy(), rtol=1e-5)


def test_dump_writes_the_rewritten_program():
    @trace(symbolic=True, capture_as_const=True)
    def f(x, y):
        return F.log(F.exp(x) + F.exp(y)), x / x

    with np.errstate(all="ignore"):
        f(mge.tensor([1e4, 0.0]), mge.tensor([0.0, 0.0]))
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    out = GraphInference(file).run(np.array([1e4, 0.0], f32), np.array([0.0, 0.0], f32))
    lse, one = out.values()
    np.testing.assert_allclose(lse, [1e4, np.log(2.0)], rtol=1e-6)
    np.testing.assert_array_equal(one, [1.0, 1.0])


def test_levels():
    fn = lambda x: x / x  # noqa: E731
    x = mge.tensor([0.0])
    for level in (1, 2, 3):  # no level-2 passes or JIT here: 2 and 3 do what 1 does
        assert _calls(trace(fn, opt_level=level, symbolic=True), x, n=1)[0].tolist() == [1.0]
    assert trace(fn)._opt_level == 2  # upstream's default
    with pytest.raises(ValueError, match="opt_level"):
        trace(fn, opt_level=-1)


def test_a_dumped_rewrite_that_is_its_input_unchanged_holds_no_operator():
    from megengine.utils.network import Network

    def types(opt_level, fn, x):
        f = trace(fn, symbolic=True, opt_level=opt_level, capture_as_const=True)
        f(mge.tensor(x))
        file = io.BytesIO()
        info = f.dump(file, optimize_for_inference=False)
        file.seek(0)
        net = Network.load(file)
        file.seek(0)
        (out,) = GraphInference(file).run(x + 1).values()
        return [o.type for o in net.all_oprs], info, out

    x = np.array([0.5, -2.0], "float32")
    kept, _, out = types(0, lambda a: F.log(F.exp(a)), x)
    assert kept == ["Host2DeviceCopy", "Elemwise", "Elemwise"]
    np.testing.assert_allclose(out, x + 1, rtol=1e-6)
    # as upstream's graph, whose log(exp(x)) is the input's var: one operator, the input's name
    gone, info, out = types(1, lambda a: F.log(F.exp(a)), x)
    assert gone == ["Host2DeviceCopy"] and info.outputs == ["arg_0"] and info.nr_opr == 1
    np.testing.assert_array_equal(out, x + 1)
    # a rewrite that changes the shape (x * ones of a bigger shape) keeps its broadcast
    _, _, out = types(1, lambda a: a * F.ones((3, 2)), x)
    np.testing.assert_array_equal(out, np.broadcast_to(x + 1, (3, 2)))
