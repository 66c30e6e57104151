"""CI slice of the GradManager fuzzer (`autodiff`: drawn programs of attaches, recordings,
writes, backwards, callbacks and SGD steps against the documented rules, differentiated by
torch; the full runs are offline, ``python -m tests.fuzz.autodiff``, with ``--upstream PYTHON``
checking the rules against upstream MegEngine), and checks that it catches what it must."""
import collections

import numpy as np

import pytest

from megengine.autodiff import grad_manager
from megengine.core import dispatch

from .autodiff import NO_TORCH_DEVICE, AutodiffMismatch, check, draw

SEEDS = range(400)  # about 1 ms a program


def _has_module(seed):
    return any(st[0] == "module" for st in draw(seed))


def _expected(seed):
    """"ok", or on a simulated GPU (torch has no CUDA there) the refusal of a program with a
    PyTorchModule."""
    import megengine as mge
    import torch

    on_gpu = not mge.Tensor(0.0).device.startswith("cpu")
    return NO_TORCH_DEVICE if on_gpu and not torch.cuda.is_available() and _has_module(seed) \
        else "ok"


@pytest.mark.parametrize("start", range(SEEDS.start, SEEDS.stop, 50))
def test_drawn_programs_give_the_documented_gradients(start):
    for seed in range(start, start + 50):
        assert check(seed) == _expected(seed)


def test_the_slice_covers_every_kind():
    kinds = collections.Counter()
    for seed in SEEDS:
        prog = draw(seed)
        recording = set()
        for st in prog:
            kind = st[0]
            if kind == "record":
                kinds["nested" if recording else "record"] += 1
                recording.add(st[1])
            elif kind in ("release", "backward"):
                recording.discard(st[1])
                kinds[kind if kind == "release" else f"backward {st[4]}"] += 1
            elif kind == "attach":
                kinds["attach while recording" if recording else "attach"] += 1
                kinds.update(f"callback {k}" for k, _ in st[3])
            elif kind == "write":
                kinds[f"write {st[2][0]}" + (" number" if st[3] is None else "")] += 1
            elif kind == "op":
                kinds[f"op {st[2]}"] += 1
            else:
                kinds[kind] += 1
    for kind in ("module", "op torch_linear", "record", "nested", "release", "backward loss", "backward dys", "attach",
                 "attach while recording", "callback scale", "callback add", "callback none",
                 "write slice", "write int", "write list", "write all", "write slice number",
                 "inplace", "clear", "scale_grad", "sgd", "op detach", "op copy", "op max",
                 "op maximum", "op getitem", "op where", "op stack", "op matmul_t",
                 "op cube_function", "gradop"):
        assert kinds[kind] >= 5, (kind, kinds)


def _first_failing(seeds):
    for seed in seeds:
        try:
            check(seed)
        except AutodiffMismatch:
            return seed
    return None


def test_callbacks_stopping_at_a_dropped_gradient_are_caught(monkeypatch):
    def stop_at_none(t, grad, callbacks):  # the fork's behaviour before upstream's was measured
        for cb in callbacks:
            grad = cb(t, grad)
            if grad is None:
                return None
        return grad

    monkeypatch.setattr(grad_manager, "_run_callbacks", stop_at_none)
    assert _first_failing(SEEDS) is not None


def test_ops_before_a_mid_recording_attach_counting_are_caught(monkeypatch):
    # a program that needs the cut-off `Key.join` makes (found offline: 1 in the 60,000 seeds
    # from 0; without a PyTorchModule, so it runs on a simulated GPU too). The case itself is
    # tests/autodiff/test_grad_manager.py's test_ops_before_a_mid_recording_attach_...
    assert check(39260) == "ok"
    monkeypatch.setattr(dispatch.Key, "join", lambda self, node: None)
    assert _first_failing([39260]) is not None


def test_an_attached_intermediate_given_the_earlier_ops_gradients_is_caught(monkeypatch):
    # a program that uses an intermediate, then attaches it while recording (found offline:
    # 1 in the 3,000 seeds from 0, without a PyTorchModule); upstream 1.13 gives it the
    # gradient of the ops made after the attach only (tests/autodiff/test_grad_manager.py's
    # test_an_intermediate_attached_while_recording_gets_the_ops_made_after)
    assert check(2435) == "ok"
    monkeypatch.setattr(grad_manager, "_pass_through", lambda t, node, idx: None)
    assert _first_failing([2435]) is not None


def test_upstreams_garbage_gradients_are_counted_and_other_differences_are_not():
    from .autodiff import _canon, run_megengine

    log = _canon(run_megengine(draw(3)))  # (a program without upstream quirks)
    slot, grad = next((s, g) for e in log for s, g in e["grads"].items() if g is not None)
    entry = next(e for e in log if e["grads"].get(slot) is not None)

    def upstream_with(value):
        changed = _canon(log)
        changed[log.index(entry)]["grads"][slot] = (np.asarray(grad) * 0 + value).tolist()
        return changed

    assert check(3, upstream_with(-1.35e21)) == "ok (upstream's gradient holds garbage)"
    with pytest.raises(AutodiffMismatch):
        check(3, upstream_with(7.0))


def test_gradients_not_accumulating_are_caught(monkeypatch):
    def replace(t, grad):
        t.grad = grad

    monkeypatch.setattr(grad_manager, "_add_grad", replace)
    assert _first_failing(SEEDS) is not None


def test_a_wrong_gradient_is_caught(monkeypatch):
    from megengine.functional import elemwise

    real = elemwise.Tanh.grad
    monkeypatch.setattr(elemwise.Tanh, "grad",
                        staticmethod(lambda xp, x, y, g: real(xp, x, y, g) * 1.01))
    assert _first_failing(SEEDS) is not None


def test_a_backward_recorded_without_its_graph_is_caught(monkeypatch):
    # second order: an outer GradManager differentiates the inner one's gradients (the
    # programs' "gradop"); a backward that an outer recording records run as the raw one
    # (no graph) loses those terms
    from megengine.core.tensor import Tensor

    def raw(node, op, slot):
        device = next(g for g in slot if g is not None)._device
        out = dispatch._array_step(node, op, [None if g is None else g._data for g in slot])
        out = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(None if g is None else Tensor._wrap(g, device) for g in out)

    monkeypatch.setattr(dispatch, "_graph_step", raw)
    assert _first_failing(SEEDS) is not None

