"""Tests for megengine/jit/xla_backend.py: `xla_trace` gives the untraced function's results,
trains as eager training does (GradManager + SGD inside, the model global or an argument as in
upstream's example), replays without rerunning Python, warns that XLA is not used and refuses
what it cannot honour."""
import warnings

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.jit import trace, xla_backend, xla_trace


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(xla_backend, "_warned", True)  # tests of the warning reset it


def _net(seed=0):
    mge.random.seed(seed)  # the layers' initial weights
    return M.Sequential(M.Linear(6, 8), M.ReLU(), M.Linear(8, 3))


def _batches(n=4):
    rng = np.random.RandomState(3)
    return [(mge.tensor(rng.randn(5, 6).astype("float32")),
             mge.tensor(rng.randint(0, 3, 5), dtype="int32")) for _ in range(n)]


def test_results_equal_the_untraced_function():
    net = _net()

    def f(x, scale):
        return F.softmax(net(x) * scale, axis=1).sum(axis=0)

    g = xla_trace(f)
    for x, _ in _batches():
        np.testing.assert_allclose(g(x, 2.0).numpy(), f(x, 2.0).numpy(), rtol=1e-6)
    assert isinstance(g, trace) and g._without_host


def _train(style):
    """Losses and final weights of four SGD steps; style: eager, global (model and optimizer
    from the enclosing scope) or upstream (passed as arguments, capture_as_const=True)."""
    net = _net()
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def step(model, optimizer, x, y):
        with gm:
            loss = F.loss.cross_entropy(model(x), y)
            gm.backward(loss)
        optimizer.step().clear_grad()
        return loss

    if style == "global":
        traced = xla_trace(lambda x, y: step(net, opt, x, y))
        run = traced
    elif style == "upstream":
        traced = xla_trace(step, capture_as_const=True)
        run = lambda x, y: traced(net, opt, x, y)  # noqa: E731
    else:
        run = lambda x, y: step(net, opt, x, y)  # noqa: E731
    losses = [float(run(x, y).numpy()) for x, y in _batches()]
    return losses, [p.numpy() for p in net.parameters()]


@pytest.mark.parametrize("style", ["global", "upstream"])
def test_training_equals_eager_training(style):
    losses, weights = _train(style)
    eager_losses, eager_weights = _train("eager")
    assert losses[0] != losses[-1]  # the model did train
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    for w, e in zip(weights, eager_weights):
        np.testing.assert_allclose(w, e, rtol=1e-5, atol=1e-6)


def test_later_calls_do_not_run_python_and_other_tensors_are_captured():
    runs = []
    offset = mge.tensor([1.0, 1.0])  # reached from no argument: captured as upstream does

    @xla_trace(capture_as_const=True)
    def f(x):
        runs.append(1)
        return x + offset

    x = mge.tensor([1.0, 2.0])
    f(x)
    offset[...] = 10.0
    np.testing.assert_array_equal(f(mge.tensor([3.0, 4.0])).numpy(), [4.0, 5.0])
    assert len(runs) == 1


def test_warns_once_that_xla_is_not_used(monkeypatch):
    monkeypatch.setattr(xla_backend, "_warned", False)
    with pytest.warns(UserWarning, match="XLA is not used"):
        xla_trace(lambda x: x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xla_trace(lambda x: x * 2)  # the second construction is quiet


@pytest.mark.parametrize("options, words", [
    ({"without_host": False}, "without_host=True"),
    ({"symbolic_shape": True}, "symbolic_shape"),
    ({"imperative": True}, "imperative=True"),
])
def test_options_it_cannot_honour_are_refused(options, words):
    with pytest.raises(ValueError, match=words):
        xla_trace(lambda x: x, **options)
    with pytest.raises(ValueError, match=words):
        xla_trace(**options)(lambda x: x)  # the decorator form checks when it gets the function
