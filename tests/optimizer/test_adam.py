"""Adam against torch.optim.Adam (bias correction, eps placement, L2 decay); argument checks."""
import contextlib

import pytest
import torch

import megengine as mge
from megengine.optimizer import Adam


@pytest.mark.parametrize("kw", [
    dict(lr=0.01),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3),
    dict(lr=0.01, weight_decay=0.1),
])
def test_adam_matches_torch(side_by_side, kw):
    side_by_side(lambda ps: Adam(ps, **kw), lambda ps: torch.optim.Adam(ps, **kw))


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1.0), "lr"),
    (dict(lr=0.1, betas=(1.0, 0.9)), "beta at index 0"),
    (dict(lr=0.1, betas=(0.9, -0.1)), "beta at index 1"),
    (dict(lr=0.1, eps=-1e-8), "eps"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
])
def test_adam_rejects_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        Adam([mge.Parameter([1.0])], **kw)


def test_adam_rejects_betas_that_are_not_a_pair():
    with pytest.raises(TypeError, match="betas"):
        Adam([mge.Parameter([1.0])], lr=0.1, betas=(0.9,))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(257,), ()], ids=str)
def test_adam_update_is_upstreams_formula_step_by_step(name, weight_decay, shape):
    # the array code (cpu0; a GPU runs one fused kernel, whose contractions round otherwise)
    # works in place in scratch buffers, operation by operation in upstream's order: float32
    # results equal the formula written with temporaries, bit for bit
    import numpy as np

    from megengine import optimizer

    rng = np.random.RandomState(0)
    w = np.asarray(rng.randn(*shape), np.float32)
    p = mge.Parameter(w.copy(), device="cpu0")
    opt = getattr(optimizer, name)([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                                   weight_decay=weight_decay)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, 6):
        g = np.asarray(rng.randn(*shape), np.float32)
        p.grad = mge.Tensor(g, device=p.device)
        opt.step()
        if name == "Adam" and weight_decay:
            g = g + weight_decay * w
        m = 0.9 * m + (1 - 0.9) * g
        v = 0.999 * v + (1 - 0.999) * (g * g)
        delta = (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)) ** 0.5 + 1e-8)
        if name == "AdamW" and weight_decay:
            delta = delta + weight_decay * w
        w = w - 0.01 * delta
        np.testing.assert_array_equal(p.numpy(), w, err_msg=f"step {t}")


@contextlib.contextmanager
def _pool_threads(n):
    """torch's pool (the engine's) at ``n`` threads for the block (the suite runs at one)."""
    from megengine.functional import _aten

    before = _aten.get_num_threads()
    _aten.set_num_threads(n)
    try:
        yield
    finally:
        _aten.set_num_threads(before)


def _steps_on_both_paths(name, dtype, shapes, weight_decay, monkeypatch):
    """Three steps of optimizer ``name`` over parameters of ``shapes``: the sizes that took
    `adam_aten` each step, and the parameters and moments after the steps on the paths the
    engine chose and on numpy's passes alone (family "update" avoided)."""
    import numpy as np

    from megengine import optimizer
    from megengine.functional import _aten
    from megengine.optimizer import adam, adamw

    sizes, real = [], adam.adam_aten

    def spy(param, *args, **kwargs):
        sizes.append(param._data.size)
        return real(param, *args, **kwargs)

    monkeypatch.setattr(adam, "adam_aten", spy)
    monkeypatch.setattr(adamw, "adam_aten", spy)
    rng = np.random.RandomState(0)
    init = [(rng.randn(*s) + (1j * rng.randn(*s) if dtype == "complex64" else 0)).astype(dtype)
            for s in shapes]
    grads = [[(rng.randn(*s) + (1j * rng.randn(*s) if dtype == "complex64" else 0))
              .astype(dtype) for s in shapes] for _ in range(3)]
    results = []
    for avoid in ([], ["update"]):
        with _aten.avoided(*avoid):
            ps = [mge.Parameter(v.copy(), dtype=dtype, device="cpu0") for v in init]
            opt = getattr(optimizer, name)(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                           weight_decay=weight_decay)
            for step_grads in grads:
                for p, g in zip(ps, step_grads):
                    p.grad = mge.Tensor(g, dtype=dtype, device="cpu0")
                opt.step()
        results.append([(p.numpy(), opt._state[p]["exp_avg"].numpy(),
                         opt._state[p]["exp_avg_sq"].numpy()) for p in ps])
    return sizes, results


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
def test_adam_updates_large_parameters_on_aten_bit_for_bit_with_threads(
        name, weight_decay, dtype, monkeypatch):
    # with more than one thread in torch's pool, a parameter from 2**19 real values updates
    # with ATen's ops on the pool (a complex one as pairs of reals), smaller ones with numpy's
    # passes; the same operations in the same order: the same bits as numpy's passes
    pair = dtype == "complex64"  # two real values an element
    shapes = [(1024 >> pair, 512), (3, 4), ((1 << (19 - pair)) - 1,)]
    with _pool_threads(2):
        sizes, (engine, numpy_only) = _steps_on_both_paths(name, dtype, shapes, weight_decay,
                                                           monkeypatch)
    assert sizes == [1 << 19] * 3  # the large one, each step of the first run
    for got, expected in zip(engine, numpy_only):
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype == dtype and a.tobytes() == b.tobytes()


def test_adam_keeps_numpys_passes_with_one_thread(monkeypatch):
    # one thread: numpy's passes are as fast as ATen's and need no views
    with _pool_threads(1):
        sizes, _ = _steps_on_both_paths("AdamW", "float32", [(1024, 512)], 0.01, monkeypatch)
    assert sizes == []
