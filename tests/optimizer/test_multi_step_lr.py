"""MultiStepLR (and the LRScheduler base) against torch.optim.lr_scheduler.MultiStepLR."""
import io

import numpy as np
import pytest
import torch

import megengine as mge
from megengine.optimizer import SGD, LRScheduler, MultiStepLR


def _lrs(scheduler, optimizer, epochs):
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()  # no gradients: nothing moves, but torch wants this order
        scheduler.step()
    return out


def test_lr_sequence_matches_torch():
    opt = SGD([{"params": [mge.Parameter([1.0])]}, {"params": [mge.Parameter([1.0])], "lr": 0.5}],
              lr=0.1)
    sched = MultiStepLR(opt, milestones=[2, 5, 6], gamma=0.3)
    tp = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    topt = torch.optim.SGD([{"params": [tp[0]]}, {"params": [tp[1]], "lr": 0.5}], lr=0.1)
    tsched = torch.optim.lr_scheduler.MultiStepLR(topt, milestones=[2, 5, 6], gamma=0.3)
    got, want = _lrs(sched, opt, 9), _lrs(tsched, topt, 9)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == [0.1, 0.5] and got[-1] == pytest.approx([0.1 * 0.3 ** 3, 0.5 * 0.3 ** 3])


def test_step_with_explicit_epoch_and_initial_lr():
    opt = SGD([mge.Parameter([1.0])], lr=1.0)
    sched = MultiStepLR(opt, [3])
    assert opt.param_groups[0]["initial_lr"] == 1.0 and sched.current_epoch == 0
    sched.step(epoch=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_resume_from_state_dicts():
    opt = SGD([mge.Parameter([1.0])], lr=1.0)
    sched = MultiStepLR(opt, [2, 4], gamma=0.5)
    for _ in range(3):
        sched.step()
    f = io.BytesIO()
    mge.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, f)
    f.seek(0)
    ckpt = mge.load(f)

    opt2 = SGD([mge.Parameter([1.0])], lr=1.0)
    opt2.load_state_dict(ckpt["opt"])
    sched2 = MultiStepLR(opt2, [2, 4], gamma=0.5, current_epoch=ckpt["sched"]["current_epoch"] - 1)
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.current_epoch == 3 and opt2.param_groups[0]["lr"] == 0.5
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.25


def test_errors():
    opt = SGD([mge.Parameter([1.0])], lr=1.0)
    with pytest.raises(ValueError, match="increasing"):
        MultiStepLR(opt, [5, 2])
    with pytest.raises(TypeError, match="ints"):
        MultiStepLR(opt, [1.5])
    with pytest.raises(TypeError, match="Optimizer"):
        MultiStepLR(object(), [1])
    with pytest.raises(KeyError, match="initial_lr"):
        MultiStepLR(SGD([mge.Parameter([1.0])], lr=1.0), [1], current_epoch=3)
    sched = MultiStepLR(opt, [1])
    with pytest.raises(KeyError, match="no 'milestones'"):
        sched.load_state_dict({"nonsense": 1})
    with pytest.raises(NotImplementedError):
        LRScheduler(SGD([mge.Parameter([1.0])], lr=1.0))


def test_state_dict_has_upstreams_keys_and_base_lrs_follow_the_optimizer():
    # upstream 1.13 measured: MultiStepLR(SGD(lr=0.1), (2, 4), 0.5) stepped 3 times has state
    # {'milestones': (2, 4), 'gamma': 0.5, 'current_epoch': 3}; a schedule of an optimizer with
    # lr=1.0 that loads {..., 'current_epoch': 3, 'base_lrs': [0.1], 'extra': 1} keeps base_lrs
    # [1.0], sets no 'extra' attribute, and its next step gives lr 0.25
    sched = MultiStepLR(SGD([mge.Parameter([1.0])], lr=0.1), (2, 4), gamma=0.5)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    assert state == {"milestones": (2, 4), "gamma": 0.5, "current_epoch": 3}
    assert type(state["milestones"]) is tuple

    opt = SGD([mge.Parameter([1.0])], lr=1.0)
    tuned = MultiStepLR(opt, [2, 4], gamma=0.5)
    tuned.load_state_dict({"milestones": [2, 4], "gamma": 0.5, "current_epoch": 3,
                           "base_lrs": [0.1], "extra": 1})
    assert tuned.base_lrs == [1.0] and not hasattr(tuned, "extra")
    tuned.step()
    assert opt.param_groups[0]["lr"] == 0.25 and tuned.get_lr() == [0.25]


def test_load_state_dict_missing_key_changes_nothing():
    # upstream 1.13 measured: a state dict without 'gamma' raises KeyError
    sched = MultiStepLR(SGD([mge.Parameter([1.0])], lr=1.0), [2, 4], gamma=0.5)
    with pytest.raises(KeyError, match="no 'gamma'"):
        sched.load_state_dict({"milestones": [1], "current_epoch": 7})
    assert sched.milestones == [2, 4] and sched.current_epoch == 0


@pytest.mark.parametrize("state, error, match", [
    (3, TypeError, "expected the dict"),
    ({"milestones": "24", "gamma": 0.5, "current_epoch": 1}, TypeError, "list of ints"),
    ({"milestones": [4, 2], "gamma": 0.5, "current_epoch": 1}, ValueError, "increasing"),
    ({"milestones": [1, 2], "gamma": "0.5", "current_epoch": 1}, TypeError, "gamma"),
    ({"milestones": [1, 2], "gamma": 0.5, "current_epoch": 1.5}, TypeError, "current_epoch"),
])
def test_load_state_dict_checks_the_values_and_changes_nothing(state, error, match):
    # upstream 1.13 measured: each loads, and the next step raises TypeError (milestones "24",
    # gamma "0.5") or decays by unsorted milestones; torch's sets whatever the dict holds.
    # Here the values get the constructor's checks before any is set.
    sched = MultiStepLR(SGD([mge.Parameter([1.0])], lr=1.0), [2, 4], gamma=0.5)
    sched.step()
    before = dict(sched.__dict__)
    with pytest.raises(error, match=match):
        sched.load_state_dict(state)
    assert sched.__dict__ == before
    sched.step()
    assert sched.optimizer.param_groups[0]["lr"] == 0.5



def test_a_step_to_a_bad_epoch_leaves_the_schedule_where_it_was():
    # upstream 1.13 measured: step("x") raised TypeError ('<' between str and int) with
    # current_epoch already "x", and every later step() raised too
    opt = SGD([mge.Parameter([1.0])], lr=1.0)
    sched = MultiStepLR(opt, [2, 4], gamma=0.5)
    sched.step()
    with pytest.raises(TypeError, match=r"MultiStepLR.step: epoch must be a number .* got 'x'"):
        sched.step("x")
    assert sched.current_epoch == 1 and opt.param_groups[0]["lr"] == 1.0

    class Failing(MultiStepLR):
        def get_lr(self):
            if self.current_epoch == 3:
                raise RuntimeError("no lr for epoch 3")
            return super().get_lr()

    sched = Failing(opt, [2, 4], gamma=0.5)
    sched.step()
    sched.step()  # epoch 2: lr 0.5
    with pytest.raises(RuntimeError, match="no lr for epoch 3"):
        sched.step()
    assert sched.current_epoch == 2 and opt.param_groups[0]["lr"] == 0.5
    sched.step(4)
    assert opt.param_groups[0]["lr"] == 0.25


def _resumed_lrs(order, make_opt, make_sched, params, saved):
    """The lrs of 4 epochs of a schedule resumed from ``saved`` (an optimizer's and a
    scheduler's state dicts) with the scheduler built before or after the optimizer's state
    is loaded."""
    opt = make_opt(params)
    if order == "scheduler first":  # upstream's order (its only one)
        sched = make_sched(opt)
        opt.load_state_dict(saved["opt"])
    else:  # torch accepts this too (so does this fork: the state's "initial_lr" is kept)
        opt.load_state_dict(saved["opt"])
        sched = make_sched(opt)
    sched.load_state_dict(saved["sched"])
    return _lrs(sched, opt, 4)


def _saved_after(epochs, make_opt, make_sched, params):
    opt = make_opt(params)
    sched = make_sched(opt)
    _lrs(sched, opt, epochs)
    return {"opt": opt.state_dict(), "sched": sched.state_dict()}


@pytest.mark.parametrize("order", ["scheduler first", "optimizer state first"])
def test_a_resumed_schedule_goes_on_at_the_loaded_lr_in_either_order_as_torchs(order):
    """Built after the optimizer's state was loaded, the scheduler's constructor sets the first
    epoch's lr; loading its state puts the loaded lr back, as torch's keeps it (earlier
    versions of this fork trained the first resumed epoch at the initial lr)."""
    ours = (lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda o: MultiStepLR(o, [2, 5], gamma=0.1))
    theirs = (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
              lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5], gamma=0.1))
    params = [mge.Parameter([1.0])]
    tparams = [torch.nn.Parameter(torch.zeros(1))]
    got = _resumed_lrs(order, *ours, params, _saved_after(4, *ours, params))
    want = _resumed_lrs(order, *theirs, tparams, _saved_after(4, *theirs, tparams))
    assert want[0] == [pytest.approx(0.01)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_lrs_set_after_the_schedule_started_are_kept_by_a_load_as_upstreams():
    """Only the lrs this schedule's constructor wrote over a loaded optimizer are put back:
    lrs a later step() or the user set stay (upstream's load_state_dict rewrites none)."""
    opt = SGD([mge.Parameter([1.0])], lr=0.1)
    sched = MultiStepLR(opt, [2], gamma=0.1)
    _lrs(sched, opt, 3)
    saved = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    for change in ("step", "by hand"):
        opt2 = SGD([mge.Parameter([1.0])], lr=0.1)
        opt2.load_state_dict(saved["opt"])
        sched2 = MultiStepLR(opt2, [2], gamma=0.1)
        if change == "step":
            sched2.step()  # epoch 1: lr 0.1
            want = 0.1
        else:
            opt2.param_groups[0]["lr"] = want = 0.05
        sched2.load_state_dict(saved["sched"])
        assert opt2.param_groups[0]["lr"] == want, change
        assert sched2.state_dict() == saved["sched"]


def test_a_second_schedule_keeps_its_first_lr_when_its_own_state_is_loaded():
    # upstream 1.13 measured (tests/fuzz/upstream_optim program 19405): a second MultiStepLR
    # over an optimizer a first one ran over sets its first epoch's lr from "initial_lr" (0.5,
    # not the 0.3 set by hand), and loading its own state keeps that; earlier versions of this
    # fork took the groups' "initial_lr" for a loaded state and put 0.3 back
    opt = SGD([mge.Parameter([1.0])], lr=0.5)
    MultiStepLR(opt, [2], gamma=0.1).step()
    opt.param_groups[0]["lr"] = 0.3
    sched = MultiStepLR(opt, [1, 2], gamma=0.5)
    assert opt.param_groups[0]["lr"] == 0.5
    sched.load_state_dict(sched.state_dict())
    assert opt.param_groups[0]["lr"] == 0.5
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.25
