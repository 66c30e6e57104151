"""SGD's update of numpy parameters in one call of the torch bridge's ``sgd_step`` (`SGD._update_host`):
numpy's own values (``p -= lr * g``, two roundings) bit for bit, and the pairs it cannot take left to
numpy's code."""
import numpy as np
import pytest

import megengine as mge
from megengine.functional import _aten
from megengine.optimizer import SGD
from megengine.optimizer.optimizer import _ATEN_UPDATE_MIN, Optimizer

from devices import host_default_device  # noqa: F401  (the fixture: the update of host arrays)

# the parameters on the CPU, where their arrays are numpy's, also where the default device is a
# GPU (MGE_SIM_CUDA, a CUDA machine)
pytestmark = pytest.mark.usefixtures("host_default_device")


@pytest.fixture
def bridge():
    _aten.view(np.zeros(1, np.float32))  # loads torch and the bridge, as a network's ops do
    return _aten.bridge()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lr", [0.1, 1e-3, 0.3333, 1.7, 3.0])
def test_sgd_step_rounds_as_numpy(bridge, dtype, lr):
    """Sizes on both sides of the compiler's vector width, values of far apart magnitudes: an
    FMA (one rounding) would differ from numpy's product-then-difference in some of them."""
    rng = np.random.RandomState(0)
    params, grads, expected = [], [], []
    for n in (1, 3, 7, 16, 33, 150, 2400, 48001):
        p = (rng.randn(n) * rng.choice([1e-3, 1.0, 1e3], n)).astype(dtype)
        g = (rng.randn(n) * rng.choice([1e-5, 1.0, 1e4], n)).astype(dtype)
        want = p.copy()
        want -= lr * g  # SGD._update's formula
        params.append(p)
        grads.append(g)
        expected.append(want)
    assert bridge.sgd_step(params, grads, lr, 1 << 40) == []
    for got, want in zip(params, expected):
        np.testing.assert_array_equal(got, want)
        assert got.tobytes() == want.tobytes()  # (signed zeros too)


def test_sgd_step_leaves_what_it_cannot_take(bridge):
    base = np.arange(12, dtype=np.float32)
    readonly = np.ones(3, np.float32)
    readonly.flags.writeable = False
    pairs = [
        (np.ones(4, np.float16), np.ones(4, np.float16)),  # 0: float16
        (np.ones(6, np.float32)[::2], np.ones(3, np.float32)),  # 1: a strided parameter
        (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32).T),  # 2: a strided gradient
        (np.ones(4, np.float32), np.ones(4, np.float64)),  # 3: two dtypes
        (np.ones((2, 2), np.float32), np.ones(4, np.float32)),  # 4: two shapes
        (readonly, np.ones(3, np.float32)),  # 5: read-only
        (base[1:5], base[:4]),  # 6: overlapping memory (numpy buffers the product first)
        (np.ones(8, np.float32), np.ones(8, np.float32)),  # 7: not below max_numel
        (np.ones(2, np.float32), np.ones(2, np.float32)),  # 8: taken
    ]
    params, grads = [p for p, _ in pairs], [g for _, g in pairs]
    before = [p.copy() for p in params]
    assert bridge.sgd_step(params, grads, 0.5, 8) == list(range(8))
    for p, b in zip(params[:8], before):
        np.testing.assert_array_equal(p, b)  # left untouched
    np.testing.assert_array_equal(params[8], [0.5, 0.5])
    same = np.ones(4, np.float32)  # one memory for both: each element reads its own value
    assert bridge.sgd_step([same], [same], 0.25, 8) == []
    np.testing.assert_array_equal(same, np.full(4, 0.75, np.float32))
    with pytest.raises(TypeError, match="sgd_step"):
        bridge.sgd_step([same], [same, same], 0.25, 8)


def _train(params_init, grads, monkeypatch, host, **hyper):
    """Three SGD steps from ``params_init`` with ``grads`` (per step, per parameter): the
    parameters after them and, per ``sgd_step`` call, the number of pairs and the indices it
    left; ``host`` False: the
    per-parameter `_update` the step took before `SGD._update_host` existed."""
    calls = []
    real = _aten.bridge().sgd_step

    def spy(params, gs, lr, max_numel):
        left = real(params, gs, lr, max_numel)
        calls.append((len(params), left))
        return left

    with monkeypatch.context() as patched:
        patched.setattr(_aten.bridge(), "sgd_step", spy)
        if not host:
            patched.setattr(SGD, "_update_host", Optimizer._update_host)
        params = [mge.Parameter(v.copy(), dtype=v.dtype) for v in params_init]
        opt = SGD(params, **hyper)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = mge.Tensor(g, dtype=g.dtype) if g.flags.c_contiguous \
                    else mge.Tensor(np.ascontiguousarray(g.T), dtype=g.dtype).T
            opt.step()
    return [p.numpy() for p in params], calls


def test_sgd_updates_numpy_parameters_in_one_call(bridge, monkeypatch):
    rng = np.random.RandomState(1)
    shapes = [(4, 5), (7,), (), (3, 3), (2, 3), (_ATEN_UPDATE_MIN,)]
    dtypes = [np.float32, np.float64, np.float32, np.float16, np.float32, np.float32]
    init = [np.asarray(rng.randn(*s), dtype=d) for s, d in zip(shapes, dtypes)]
    grads = [[np.asarray(rng.randn(*s), dtype=d) for s, d in zip(shapes, dtypes)]
             for _ in range(3)]
    for step in grads:
        step[4] = np.asfortranarray(step[4])  # (2, 3): a transposed gradient, not C-contiguous
    got, calls = _train(init, grads, monkeypatch, True, lr=0.1)
    want, no_calls = _train(init, grads, monkeypatch, False, lr=0.1)
    # one call a step, all six parameters offered; float16, the transposed gradient and the
    # large parameter (ATen's update, with threads) are left to `_update`, as before
    assert calls == [(6, [3, 4, 5])] * 3 and no_calls == []
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("hyper", [dict(lr=0.1, momentum=0.9), dict(lr=0.1, weight_decay=0.01),
                                   dict(lr=np.float32(0.1))])
def test_other_configurations_keep_numpys_update(bridge, monkeypatch, hyper):
    """Momentum, weight decay, and a learning rate that is no Python float (numpy's type rules
    then differ from a cast to the parameter's dtype) take `_update`."""
    rng = np.random.RandomState(2)
    init = [rng.randn(3, 4).astype(np.float32)]
    grads = [[rng.randn(3, 4).astype(np.float32)] for _ in range(3)]
    got, calls = _train(init, grads, monkeypatch, True, **hyper)
    want, _ = _train(init, grads, monkeypatch, False, **hyper)
    assert calls == []
    assert got[0].tobytes() == want[0].tobytes()
