"""CosineAnnealingLR against torch.optim.lr_scheduler.CosineAnnealingLR."""
import io
import math

import numpy as np
import pytest
import torch

import megengine as mge
from megengine.optimizer import SGD, CosineAnnealingLR


def _lrs(scheduler, optimizer, epochs):
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("T_max, eta_min", [(4, 0.0), (5, 0.01)])
def test_lr_sequence_matches_torch_over_more_than_a_period(T_max, eta_min):
    opt = SGD([{"params": [mge.Parameter([1.0])]}, {"params": [mge.Parameter([1.0])], "lr": 0.5}],
              lr=0.1)
    sched = CosineAnnealingLR(opt, T_max=T_max, eta_min=eta_min)
    tp = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    topt = torch.optim.SGD([{"params": [tp[0]]}, {"params": [tp[1]], "lr": 0.5}], lr=0.1)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=T_max, eta_min=eta_min)
    got, want = _lrs(sched, opt, 3 * T_max), _lrs(tsched, topt, 3 * T_max)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert got[T_max] == pytest.approx([eta_min, eta_min])  # the bottom of the cosine


def test_explicit_epoch_and_state_dict_resume():
    opt = SGD([mge.Parameter([1.0])], lr=1.0)
    sched = CosineAnnealingLR(opt, T_max=10, eta_min=0.1)
    sched.step(epoch=5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    buf = io.BytesIO()
    mge.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = mge.load(buf)
    opt2 = SGD([mge.Parameter([1.0])], lr=1.0)
    opt2.load_state_dict(saved["opt"])
    sched2 = CosineAnnealingLR(opt2, T_max=10, eta_min=0.1, current_epoch=5)
    sched2.load_state_dict(saved["sched"])
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


@pytest.mark.parametrize("kw", [dict(T_max=0), dict(T_max=2.5), dict(T_max=3, eta_min=-1.0)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError, match="CosineAnnealingLR"):
        CosineAnnealingLR(SGD([mge.Parameter([1.0])], lr=1.0), **kw)


def test_a_scheduler_refuses_a_state_that_is_not_a_dict():
    sched = CosineAnnealingLR(SGD([mge.Parameter([1.0])], lr=1.0), T_max=4)
    with pytest.raises(TypeError, match="CosineAnnealingLR.load_state_dict: expected the dict"):
        sched.load_state_dict([("T_max", 2)])


@pytest.mark.parametrize("order", ["scheduler first", "optimizer state first"])
def test_a_schedule_resumed_over_a_loaded_optimizer_goes_on_at_the_loaded_lr_as_torchs(order):
    """The base LRScheduler's load_state_dict: a scheduler built after the optimizer's state
    was loaded puts the loaded lr back over the first epoch's its constructor set."""
    def run(opt_cls, sched_cls, params):
        opt = opt_cls(params, lr=1.0)
        sched = sched_cls(opt, T_max=10, eta_min=0.1)
        _lrs(sched, opt, 3)
        saved = {"opt": opt.state_dict(), "sched": sched.state_dict()}
        opt = opt_cls(params, lr=1.0)
        if order == "scheduler first":
            sched = sched_cls(opt, T_max=10, eta_min=0.1)
            opt.load_state_dict(saved["opt"])
        else:
            opt.load_state_dict(saved["opt"])
            sched = sched_cls(opt, T_max=10, eta_min=0.1)
        sched.load_state_dict(saved["sched"])
        return _lrs(sched, opt, 4)

    got = run(SGD, CosineAnnealingLR, [mge.Parameter([1.0])])
    want = run(torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR,
               [torch.nn.Parameter(torch.zeros(1))])
    assert want[0][0] < 1.0  # the lr of epoch 3, not the initial one
    np.testing.assert_allclose(got, want, rtol=1e-9)
