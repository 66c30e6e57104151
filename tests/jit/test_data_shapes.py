"""Tests for traced values whose shapes data decides (`megengine.jit`'s ``dyn_slots``): the
outputs of ``cond_take``, a boolean mask index, ``nms``, ``F.where(mask)``, and what is computed
from them may change shape from call to call of one signature, as in upstream's compiled graphs.

Oracles: the same function run eagerly on the same input (and numpy for the training step)."""
import io
from pathlib import Path

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.core.ops import GetItem
from megengine.functional.indexing import CondTake
from megengine.jit import ShapeGuardError, TraceMismatchError, trace
from megengine.utils.comp_graph_tools import GraphInference
from tests.test_docs import run_block

MODES = {
    "symbolic=False": dict(symbolic=False),
    "symbolic=True": dict(symbolic=True),
    "capture_as_const": dict(symbolic=True, capture_as_const=True),
    "without_host": dict(symbolic=True, without_host=True),
    "opt_level=0": dict(symbolic=True, opt_level=0),
}


def _boxes(x):
    s = F.abs(x) * 10 + 1
    return F.stack([x * 0, x * 0, s, s], 1)


FUNCTIONS = {
    "mask": lambda x: x[x > 0] * 2,
    "mask_rows": lambda x: x.reshape(2, -1)[:, x.reshape(2, -1)[0] > 0] + 1,
    "cond_take": lambda x: F.cond_take(x > 0, x)[0] + F.cond_take(x > 0, x)[1],
    "nonzero": lambda x: F.where(x > 0)[0] * 3,
    "nms": lambda x: F.vision.nms(_boxes(x), F.abs(x), 0.3),
    # sizes of such values, used as op parameters: computed from the data on every call
    "divide_by_size": lambda x: x[x > 0].sum() / (x[x > 0].shape[0] + 1),
    "zeros_of_size": lambda x: F.zeros((x[x > 0].shape[0], 2)) + 1,
    "reshape": lambda x: x[x > 0].reshape(x[x > 0].shape[0], 1) * F.ones((1, 3)),
    "size_returned": lambda x: F.cond_take(x > 0, x)[1].shape[0] * 2,  # (traced: a Tensor)
    # arith_opt's rewrites of such values (a * 1, a - a): at the shapes the data gives
    "rewrites": lambda x: (lambda v: (v * 1) + (v - v))(x[x > 0]),
}


def _inputs(seed, n=4):
    rng = np.random.RandomState(seed)
    xs = [rng.randn(10).astype("float32") for _ in range(n)]
    xs[1][:] = -1  # nothing selected
    xs[2][:] = 1  # everything
    return xs


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_later_calls_follow_the_data(name, mode):
    fn = FUNCTIONS[name]
    f = trace(fn, **MODES[mode])
    for x in _inputs(hash(name) % 1000):
        out, ref = [np.asarray(v.numpy() if isinstance(v, mge.Tensor) else v)
                    for v in (f(mge.tensor(x)), fn(mge.tensor(x)))]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-6)


@pytest.mark.parametrize("name", ["mask", "cond_take", "divide_by_size", "zeros_of_size",
                                  "reshape", "nms", "rewrites"])
def test_dumped_program_follows_the_data(name):
    fn = FUNCTIONS[name]
    f = trace(fn, symbolic=True, capture_as_const=True)
    xs = _inputs(7)
    f(mge.tensor(xs[0]))
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])
    buf.seek(0)
    g = GraphInference(buf)
    for x in xs:
        (out,) = g.run(x).values()
        ref = fn(mge.tensor(x)).numpy()
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-6)


def _guarded(x):
    v = x[x > 0]
    return v * int(v.shape[0])  # the size leaves the program as a Python int


def test_a_size_used_as_a_python_value_is_checked():
    x3 = np.array([1, 2, 3, -1, -1], "float32")
    x2 = np.array([1, 2, -3, -1, -1], "float32")
    x3b = np.array([-1, 5, 3, -1, 4], "float32")
    # checked calls run the Python code: the constant it made differs, as upstream reports
    f = trace(_guarded, symbolic=True)
    f(mge.tensor(x3))
    np.testing.assert_allclose(f(mge.tensor(x3b)).numpy(), [15, 9, 12])  # the same size
    with pytest.raises(TraceMismatchError, match="tensors not equals"):
        f(mge.tensor(x2))
    # a replay does not: it checks the guard, with the user's line
    f = trace(_guarded, symbolic=True, without_host=True)
    f(mge.tensor(x3))
    np.testing.assert_allclose(f(mge.tensor(x3b)).numpy(), [15, 9, 12])
    with pytest.raises(ShapeGuardError, match=r"as int\(\).*test_data_shapes.py.*it was 3 when "
                                              r"traced and is 2 now"):
        f(mge.tensor(x2))
    # and so does a dumped program
    f = trace(_guarded, symbolic=True, capture_as_const=True)
    f(mge.tensor(x3))
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])
    buf.seek(0)
    g = GraphInference(buf)
    (out,) = g.run(x3b).values()
    np.testing.assert_allclose(out, [15, 9, 12])
    with pytest.raises(ShapeGuardError, match="data decides a size"):
        g.run(x2)


def test_fixed_sizes_replay_refuses_another_data_shape_only_where_a_size_was_read():
    fixed = dict(symbolic=True, without_host=True, symbolic_shape=False)
    f = trace(lambda x: x[x > 0] * 2, **fixed)  # no size read: any number of elements
    for x in _inputs(3):
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), x[x > 0] * 2)
    f = trace(FUNCTIONS["zeros_of_size"], **fixed)  # the size became a Python int
    x = np.array([1, -1, 2], "float32")
    f(mge.tensor(x))
    np.testing.assert_allclose(f(mge.tensor(x[::-1].copy())).numpy(), np.ones((2, 2)))
    with pytest.raises(TraceMismatchError, match=r"has shape \(1,\); it had \(2,\) when traced.*"
                                                 "symbolic_shape=True"):
        f(mge.tensor(np.array([1, -1, -2], "float32")))


@pytest.mark.parametrize("mode", ["symbolic=False", "symbolic=True", "without_host"])
def test_masked_loss_training_step_matches_eager_training(mode):
    rng = np.random.RandomState(0)
    data = [(rng.randn(16, 4).astype("float32"), rng.randn(16).astype("float32"))
            for _ in range(5)]
    w0 = rng.randn(1, 4).astype("float32")

    def train(traced):
        net = M.Linear(4, 1)
        net.weight.set_value(w0)
        net.bias.set_value(np.zeros(1, "float32"))
        gm = GradManager().attach(net.parameters())
        opt = optim.SGD(net.parameters(), lr=0.1)

        def step(x, y):
            with gm:
                p = net(x).reshape(-1)
                mask = y > 0  # a different number of positives in every batch
                loss = ((p[mask] - y[mask]) ** 2).sum() / F.maximum(mask.sum(), 1)
                gm.backward(loss)
            opt.step().clear_grad()
            return loss

        if traced:
            step = trace(step, **MODES[mode])
        losses = [float(step(mge.tensor(x), mge.tensor(y)).numpy()) for x, y in data]
        return losses, net.weight.numpy()

    losses, w = train(True)
    ref_losses, ref_w = train(False)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5)


def test_other_shapes_are_still_checked():
    # a Parameter resized between calls comes from outside: its shape is compared
    w = mge.Parameter(np.ones(1, "float32"))
    f = trace(lambda x: x[x > 0] * w, symbolic=False)
    f(mge.tensor([1.0, 2.0]))
    w.set_value(mge.tensor([2.0, 3.0]))
    with pytest.raises(TraceMismatchError, match="shape mismatch"):
        f(mge.tensor([1.0, 2.0]))


def test_which_ops_say_data_decides_their_shape():
    mask, ints = np.array([True, False]), np.array([0, 1])
    assert GetItem((mask,)).data_shaped and GetItem((slice(None), mask)).data_shaped
    assert not GetItem((ints,)).data_shaped and not GetItem((0, slice(1, 2))).data_shaped
    assert CondTake().data_shaped
    f = trace(lambda x: F.vision.nms(_boxes(x), F.abs(x), 0.3), symbolic=True)
    f(mge.tensor(np.ones(3, "float32")))
    (nms_step,) = [s for s in f._last.steps if s.name == "_nms_keep"]
    assert nms_step.template.data_shaped and nms_step.outs[0] in f._last.dyn_slots
    # a value computed from one is such a value too; one computed only from shapes is not
    g = trace(lambda x: (x[x > 0] * 2, x * 2), symbolic=True)
    g(mge.tensor(np.ones(3, "float32")))
    prog = g._last
    mul_outs = [s.outs[0] for s in prog.steps if s.name.startswith("Mul")]
    assert [s in prog.dyn_slots for s in mul_outs] == [True, False]


def test_the_jit_page_example_runs():
    run_block(Path(__file__).resolve().parents[2] / "docs" / "api" / "jit.rst", "diff = pred[pos]")


# ----- found by the jit fuzzer (tests/fuzz/jit_dyn.py): each failed before its fix -----

_FIXED_REPLAY = dict(symbolic=True, without_host=True, symbolic_shape=False, opt_level=2)


def test_fixed_size_replay_of_a_rewritten_program_checks_data_shapes():
    # opt_level's program has other step positions than the recorded one: the shape check of
    # v * 1 (rewritten to v) ran where no value was made yet (AttributeError)
    def f(x):
        v = x[x > 0] * 1
        return F.zeros((v.shape[0], 2)) + 1

    t = trace(f, **_FIXED_REPLAY)
    t(mge.tensor([1.0, -1.0, 2.0]))
    np.testing.assert_allclose(t(mge.tensor([-1.0, 3.0, 2.0])).numpy(), np.ones((2, 2)))
    with pytest.raises(TraceMismatchError, match=r"has shape \(1,\); it had \(2,\)"):
        t(mge.tensor([1.0, -1.0, -2.0]))


@pytest.mark.parametrize("symbolic_shape", [False, True])
def test_rewrites_of_data_shaped_values_in_replays(symbolic_shape):
    # (v + 0) * v and log(exp(h)) are rewritten (opt_level=2): in a fixed-size replay the
    # rewrite broadcast v to its traced shape (ValueError); in a symbolic one, log(exp(h))'s
    # shape was read from exp(h), which the optimized program no longer makes (AttributeError)
    def f(x):
        v = x[x > 0.5]
        v = (v + 0) * v
        h = x + v.sum()
        return F.log(F.exp(h * 0.01)), v

    t = trace(f, symbolic=False, without_host=True, opt_level=2, symbolic_shape=symbolic_shape)
    rng = np.random.RandomState(0)
    for x in [rng.rand(6).astype("float32") for _ in range(3)] + [np.zeros(6, "float32")]:
        (h, v), (h_ref, v_ref) = t(mge.tensor(x)), f(mge.tensor(x))
        np.testing.assert_allclose(v.numpy(), v_ref.numpy(), rtol=1e-6)
        np.testing.assert_allclose(h.numpy(), h_ref.numpy(), rtol=1e-5)


def test_indexing_a_data_shaped_value_is_no_read_of_its_size():
    # F.where(mask) indexes the positions it found (idx[:, d]); the index is no 1-d bool mask,
    # so its shape is not read: a fixed-size replay used to refuse every other count
    def f(x):
        return x.flatten()[F.where(x.flatten() > 0)[0]] * 2 + x[F.where(x > 1)].sum()

    t = trace(f, **_FIXED_REPLAY)
    for x in _inputs(5):
        x = x.reshape(2, 5)
        np.testing.assert_allclose(t(mge.tensor(x)).numpy(), f(mge.tensor(x)).numpy(), rtol=1e-6)


def _dumped(fn, x, **mode):
    f = trace(fn, symbolic=True, capture_as_const=True, **mode)
    f(mge.tensor(x))
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])
    return buf.getvalue()


def test_fixed_size_file_checks_the_data_shapes_it_read():
    # a file of fixed sizes (symbolic_shape=False) built ops from the traced count: another
    # count gave a wrong value (or a broadcast error); it is refused, as a replay refuses it,
    # also after Network.load + dump
    from megengine.utils.network import Network

    fn = FUNCTIONS["zeros_of_size"]
    data = _dumped(fn, np.array([1, -1, 2], "float32"), symbolic_shape=False)
    net = Network.load(io.BytesIO(data))
    again = io.BytesIO()
    net.dump(again)
    for file in (data, again.getvalue()):
        g = GraphInference(io.BytesIO(file))
        (out,) = g.run(np.array([-1, 3, 2], "float32")).values()
        np.testing.assert_allclose(out, np.ones((2, 2)))
        with pytest.raises(ShapeGuardError, match=r"is \(3,\) now, \(2,\) when traced.*"
                                                  "symbolic_shape=True"):
            g.run(np.array([1, 3, 2], "float32"))


def test_fixed_size_file_checks_a_data_shape_read_off_a_reduction_it_fuses():
    # the size read is that of a mean with keepdims=True, which the loader runs fused with the
    # squeeze after it: the check of its shape was lost and the file silently gave
    # F.zeros of the traced count (3) for an input with 2 positive items
    def fn(x):
        r = F.mean(F.expand_dims(x[x > 0], 1), axis=1, keepdims=True)
        return F.squeeze(r, 1) * 2, F.zeros((r.shape[0],))

    g = GraphInference(io.BytesIO(_dumped(fn, np.array([1, -1, 2, 3], "float32"),
                                          symbolic_shape=False)))
    doubled, zeros = g.run(np.array([3, -1, 2, 1], "float32")).values()
    np.testing.assert_allclose(doubled, [6, 4, 2])
    np.testing.assert_allclose(zeros, [0, 0, 0])
    with pytest.raises(ShapeGuardError, match=r"is \(2, 1\) now, \(3, 1\) when traced"):
        g.run(np.array([1, 2, -3, -4], "float32"))


def test_network_dump_keeps_a_guard_on_a_value_the_outputs_do_not_read():
    # the branch taken on g's size shaped the output, but g is no input of it: Network.dump
    # left the guard out (with a warning) and the reloaded program gave the traced branch
    from megengine.utils.network import Network

    def fn(x):
        g = x[:, x.mean(axis=0) > 0]
        if g.shape[1] > 1:
            x = x + 0.5
        return x * 2

    x = np.array([[1, 2, -3], [1, 2, -3]], "float32")
    net = Network.load(io.BytesIO(_dumped(fn, x)))
    buf = io.BytesIO()
    net.dump(buf)
    g = GraphInference(io.BytesIO(buf.getvalue()))
    (out,) = g.run(x[:, ::-1].copy()).values()
    np.testing.assert_allclose(out, fn(mge.tensor(x[:, ::-1].copy())).numpy())
    with pytest.raises(ShapeGuardError, match="data decides a size"):
        g.run(np.array([[1, -2, -3], [1, -2, -3]], "float32"))


@pytest.mark.parametrize("mode", ["symbolic=True", "without_host", "capture_as_const"])
def test_a_mask_shorter_than_its_axis_follows_the_data(mode):
    # upstream reads a 1-d mask shorter than its axis as the positions of its True entries;
    # those positions were made once, outside the op, when indexing: a checked call refused
    # any other mask (operator mismatch) and a replay silently used the traced positions
    def fn(x):
        m = x[0, :3] > 0
        y = x * 1.0
        y[:, m] = 0.0  # (ASR-Transformer's kl[..., pad_mask] = 0)
        return x[:, m] * 2 + y[:, m].sum()

    f = trace(fn, **MODES[mode])
    x1 = np.array([[1, 2, -3, 4], [5, 6, 7, 8]], "float32")
    f(mge.tensor(x1))
    for x in (x1, x1 * [[-1], [1]], np.array([[-1, -2, 3, 4], [5, 6, 7, 8]], "float32")):
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), fn(mge.tensor(x)).numpy())
