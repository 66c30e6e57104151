"""The updates of many passes (Adam, AdamW, Adagrad, Adadelta, LAMB) of large parameters on ATen's
ops while torch's pool has several threads: the same bits as numpy's passes."""
import numpy as np
import pytest

import megengine as mge
from megengine import optimizer
from megengine.functional import _aten
from megengine.optimizer import adadelta, adagrad, adam, lamb
from megengine.optimizer.optimizer import passes_on_aten
from devices import pool_threads

HYPER = {  # a parameter's update, weight decay apart
    "Adam": dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    "AdamW": dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    "Adagrad": dict(lr=0.01, lr_decay=0.1, eps=1e-6),
    "Adadelta": dict(lr=1.0, rho=0.8, eps=1e-6),
    "LAMB": dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),  # (weight decay: the trust ratio)
}


def _steps_on_both_paths(name, dtype, shapes, weight_decay, monkeypatch, hyper=None):
    """Three steps of optimizer ``name`` over parameters of ``shapes``: the sizes of the
    parameters whose update took ATen's ops, and the parameters and state buffers after the
    steps on the paths the engine chose and on numpy's passes alone (family "update"
    avoided). ``hyper``: the hyperparameters (default `HYPER`'s)."""
    sizes = []
    real = passes_on_aten

    def spy(data, grad, group):
        on_aten = real(data, grad, group)
        if on_aten:
            sizes.append(data.size)
        return on_aten

    for module in (adam, adagrad, adadelta, lamb):  # (adam: also AdamW's update)
        monkeypatch.setattr(module, "passes_on_aten", spy)
    rng = np.random.RandomState(0)

    def draw(shape):
        a = rng.randn(*shape)
        return (a + 1j * rng.randn(*shape) if dtype == "complex64" else a).astype(dtype)

    init = [draw(s) for s in shapes]
    grads = [[draw(s) for s in shapes] for _ in range(3)]
    results = []
    for avoid in ([], ["update"]):
        with _aten.avoided(*avoid):
            ps = [mge.Parameter(v.copy(), dtype=dtype, device="cpu0") for v in init]
            opt = getattr(optimizer, name)(ps, weight_decay=weight_decay,
                                           **(hyper or HYPER[name]))
            for step_grads in grads:
                for p, g in zip(ps, step_grads):
                    p.grad = mge.Tensor(g, dtype=dtype, device="cpu0")
                opt.step()
        results.append([[p.numpy()] + [b.numpy() for b in opt._state[p].values()
                                       if isinstance(b, mge.Tensor)] for p in ps])
    return sizes, results


@pytest.mark.parametrize("name", list(HYPER))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
def test_large_parameters_update_on_aten_bit_for_bit_with_threads(
        name, weight_decay, dtype, monkeypatch):
    # with more than one thread in torch's pool, a parameter from 2**19 real values updates
    # with ATen's ops on the pool (a complex one as pairs of reals), smaller ones with numpy's
    # passes; the same operations in the same order: the same bits as numpy's passes
    pair = dtype == "complex64"  # two real values an element
    shapes = [(1024 >> pair, 512), (3, 4), ((1 << (19 - pair)) - 1,)]
    with pool_threads(2):
        sizes, (engine, numpy_only) = _steps_on_both_paths(name, dtype, shapes, weight_decay,
                                                           monkeypatch)
    assert sizes == [1 << 19] * 3  # the large one, each step of the first run
    for got, expected in zip(engine, numpy_only):
        # the parameter and its buffers
        assert len(got) == len(expected) == 1 + len(getattr(optimizer, name)._state_buffers)
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype == dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("hyper", [dict(bias_correction=False), dict(always_adapt=True)])
def test_lamb_without_bias_correction_or_always_adapting_updates_on_aten_bit_for_bit(
        hyper, monkeypatch):
    shapes = [(1024, 512), (3, 4)]
    with pool_threads(2):
        sizes, (engine, numpy_only) = _steps_on_both_paths(
            "LAMB", "float32", shapes, 0.0, monkeypatch, dict(HYPER["LAMB"], **hyper))
    assert sizes == [1 << 19] * 3
    for got, expected in zip(engine, numpy_only):
        for a, b in zip(got, expected):
            assert a.tobytes() == b.tobytes()


def test_lamb_fp16s_float32_master_copy_updates_on_aten_bit_for_bit(monkeypatch):
    # float16 parameters: the float32 master copy and moments update on ATen, the parameter
    # gets the master rounded; state: exp_avg, exp_avg_sq and param_fp32
    with pool_threads(2):
        sizes, (engine, numpy_only) = _steps_on_both_paths(
            "LAMBFp16", "float16", [(1024, 512), (3, 4)], 0.1, monkeypatch, HYPER["LAMB"])
    assert sizes == [1 << 19] * 3
    for got, expected in zip(engine, numpy_only):
        assert sorted(a.dtype.name for a in got) == ["float16", "float32", "float32", "float32"]
        for a, b in zip(got, expected):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", list(HYPER))
def test_large_parameters_keep_numpys_passes_with_one_thread(name, monkeypatch):
    # one thread: numpy's passes are as fast as ATen's and need no views
    with pool_threads(1):
        sizes, _ = _steps_on_both_paths(name, "float32", [(1024, 512)], 0.01, monkeypatch)
    assert sizes == []


def test_numpy_float_hyperparameters_keep_numpys_passes(monkeypatch):
    # numpy computes float32 passes with a numpy float64 scalar in float64 (NEP 50), ATen's ops
    # in float32: such an update stays on numpy's passes, whose results it keeps
    for hyper in (dict(HYPER["Adam"], lr=np.float64(0.0123)),
                  dict(HYPER["Adam"], betas=(0.8, np.float64(0.99)))):
        with pool_threads(2):
            sizes, _ = _steps_on_both_paths("Adam", "float32", [(1024, 512)], 0.0, monkeypatch,
                                            hyper)
        assert sizes == []
    # a parameter group may give its betas as a list
    data = np.zeros((1024, 512), np.float32)
    with pool_threads(2):
        assert passes_on_aten(data, data, {"lr": 0.01, "betas": [0.8, 0.99]})
        assert not passes_on_aten(data, data, {"lr": 0.01, "betas": [0.8, np.float64(0.99)]})
