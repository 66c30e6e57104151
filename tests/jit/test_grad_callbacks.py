"""Tests of megengine/jit/grad_callbacks.py: in ``without_host`` traces (and ``xla_trace``) a
GradManager callback's ops are replayed and its Python side effects happen while tracing only,
as upstream's compiled program (upstream's integration/test_xla_dist_training.py checks it);
checked traces and callbacks whose ops do not say everything they did still run Python."""
import warnings

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager
from megengine.jit import trace, xla_backend, xla_trace
from megengine.optimizer import SGD


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(xla_backend, "_warned", True)


def _train(wrap, callback_factory, steps=4):
    """Train a small net with ``callbacks=[callback_factory(calls)]``; return (losses, the
    number of callback calls after each step, final weights)."""
    mge.random.seed(0)  # the layer's initial weights
    net = M.Linear(4, 3)
    calls = [0]
    cbs = callback_factory(calls)  # one callback, or a list of them
    gm = GradManager().attach(net.parameters(), callbacks=cbs if isinstance(cbs, list) else [cbs])
    opt = SGD(net.parameters(), lr=0.5)

    def step(model, opt, x, y):
        with gm:
            loss = F.nn.cross_entropy(model(x), y)
            gm.backward(loss)
            opt.step().clear_grad()
        return loss

    if wrap is not None:
        step = wrap(step)
    rng = np.random.RandomState(1)
    losses, counts = [], []
    for _ in range(steps):
        x = mge.tensor(rng.randn(5, 4).astype("float32"))
        y = mge.tensor(rng.randint(0, 3, 5).astype("int32"))
        losses.append(step(net, opt, x, y).item())
        counts.append(calls[0])
    return np.array(losses), counts, net.weight.numpy()


def _clipping(calls):
    def cb(tensor, grad):
        calls[0] += 1  # a Python side effect
        return F.clip(grad, -0.02, 0.02)

    return cb


REPLAYING = {
    "xla_trace": lambda f: xla_trace(f, capture_as_const=True),
    "without_host": lambda f: trace(f, without_host=True),
}


@pytest.mark.parametrize("mode", sorted(REPLAYING))
def test_callback_ops_replay_and_its_side_effect_happens_while_tracing_only(mode):
    eager_losses, eager_counts, eager_w = _train(None, _clipping)
    losses, counts, w = _train(REPLAYING[mode], _clipping)
    # upstream: np.testing.assert_array_equal(imp_ses[0], xla_ses): two parameters, one call each
    assert eager_counts == [2, 4, 6, 8] and counts == [2, 2, 2, 2]
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    np.testing.assert_allclose(w, eager_w, rtol=1e-6, atol=1e-7)
    # the clip is part of what was replayed: without it training goes elsewhere
    _, _, unclipped_w = _train(None, lambda calls: lambda t, g: g)
    assert np.abs(unclipped_w - w).max() > 1e-3


def test_checked_traces_run_the_callbacks_every_call():
    # symbolic=False/True rerun the Python function (upstream too), callbacks included
    eager_losses, eager_counts, _ = _train(None, _clipping)
    losses, counts, _ = _train(lambda f: trace(f, symbolic=True), _clipping)
    assert counts == eager_counts
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)


def test_a_callback_that_reads_a_value_runs_in_python_on_every_replay():
    # it may branch on the value, which the recorded ops cannot say: it is called again
    def scaling(calls):
        def cb(tensor, grad):
            calls[0] += 1
            return grad * (0.5 if float(F.abs(grad).max().item()) > 0.1 else 2.0)

        return cb

    eager_losses, eager_counts, eager_w = _train(None, scaling)
    losses, counts, w = _train(REPLAYING["without_host"], scaling)
    assert counts == eager_counts
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    np.testing.assert_allclose(w, eager_w, rtol=1e-6, atol=1e-7)


def test_a_callback_that_drops_gradients_drops_them_on_replays():
    def drop_bias(calls):
        def cb(tensor, grad):
            calls[0] += 1
            return None if tensor.ndim == 1 else grad

        return cb

    eager_losses, _, eager_w = _train(None, drop_bias)
    losses, counts, w = _train(REPLAYING["without_host"], drop_bias)
    assert counts == [2, 2, 2, 2]
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    np.testing.assert_allclose(w, eager_w, rtol=1e-6, atol=1e-7)


def test_callbacks_after_a_dropped_gradient_get_none_on_replays_too():
    # the callbacks after one returning None are called with None (upstream's loop); such a
    # call has no gradient to record ops on, so it runs in Python on every replay
    def drop_bias_then_clip(calls):
        def drop(tensor, grad):
            return None if tensor.ndim == 1 else grad

        def clip(tensor, grad):
            calls[0] += 1
            return None if grad is None else F.clip(grad, -0.02, 0.02)

        return [drop, clip]

    eager_losses, eager_counts, eager_w = _train(None, drop_bias_then_clip)
    losses, counts, w = _train(REPLAYING["without_host"], drop_bias_then_clip)
    assert eager_counts == [2, 4, 6, 8]
    assert counts == [2, 3, 4, 5]  # the weight's clip replays; the bias's None call runs
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    np.testing.assert_allclose(w, eager_w, rtol=1e-6, atol=1e-7)


def test_grad_objects_still_deliver_gradients_on_replays():
    # core.autodiff.grad.Grad hands gradients to its callbacks through a GradManager callback:
    # that delivery is the result, not a side effect, so replays make it too
    from megengine.core.autodiff.grad import Grad

    got = []

    @trace(without_host=True)
    def f(x):
        with Grad() as grad:
            grad.wrt(x, callback=got.append)
            grad(F.sin(x) * 3, F.ones_like(x))
        return x

    for v in ([0.1, 0.2], [0.3, -1.0]):
        f(mge.tensor(v))
        np.testing.assert_allclose(got[-1].numpy(), 3 * np.cos(v), rtol=1e-6)
    assert len(got) == 2
