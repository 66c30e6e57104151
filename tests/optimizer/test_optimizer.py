"""The Optimizer base: groups, skipping, in-place steps, state dicts, the 0.x zero_grad/backward."""
import copy
import io

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from devices import address
from megengine.autodiff import GradManager
from megengine.core import dispatch
from megengine.optimizer import LAMB, SGD, Adadelta, Adagrad, Adam, AdamW
from megengine.core.ops import ArgumentError

X = np.array([[1.0, 2.0, -1.0], [0.5, -0.3, 2.0]], dtype=np.float32)
Y = np.array([[1.0], [-1.0]], dtype=np.float32)


def _model():
    rng = np.random.RandomState(3)
    w = mge.Parameter(np.asarray(rng.randn(3, 1), dtype=np.float32))
    b = mge.Parameter(np.zeros((1,), dtype=np.float32))
    return w, b


def _loss(w, b):
    err = mge.Tensor(X) @ w + b - mge.Tensor(Y)
    return (err * err).sum()


def test_step_skips_parameters_without_grad():
    p, q = mge.Parameter([1.0, 2.0]), mge.Parameter([3.0])
    opt = SGD([p, q], lr=0.5, momentum=0.9)
    p.grad = mge.Tensor([1.0, -1.0])
    opt.step()
    assert p.tolist() == [0.5, 2.5]
    assert q.tolist() == [3.0]
    # q's state is the zeros it starts from (upstream's state dicts list every parameter)
    assert opt.state_dict()["state"][1]["momentum_buffer"].tolist() == [0.0]


def test_step_checks_the_gradients():
    p = mge.Parameter([1.0, 2.0])
    opt = SGD([p], lr=0.1)
    p.grad = mge.Tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\)"):
        opt.step()
    p.grad = np.ones(2, np.float32)
    with pytest.raises(TypeError, match="must be a Tensor"):
        opt.step()


def _optimizer_snapshot(opt):
    """Deep copies of everything a failed call must leave as it was."""
    return ([p.numpy().copy() for p in opt._params()],
            [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
             for g in opt.param_groups],
            opt.state_dict())


def _assert_same(before, after):
    assert type(before) is type(after)
    if isinstance(before, dict):
        assert before.keys() == after.keys()
        for k in before:
            _assert_same(before[k], after[k])
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after)
        for b, a in zip(before, after):
            _assert_same(b, a)
    elif isinstance(before, np.ndarray):
        assert before.dtype == after.dtype
        np.testing.assert_array_equal(before, after)
    else:
        assert before == after


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.5, momentum=0.9),
                                  lambda ps: Adam(ps, lr=0.5)])
@pytest.mark.parametrize("bad", [np.ones((5, 5), np.float32), "grad",
                                 np.ones(3, np.complex64)])
def test_a_failed_step_updates_no_parameter(make, bad):
    # upstream 1.13 measured: SGD.step with parameter 1 of 3 given a (5, 5) gradient raised
    # after parameter 0 had moved from 1.0 to 0.5; torch refuses such a .grad when it is set,
    # so a step never sees one (nor a complex .grad for a real parameter: "assigned grad has
    # data of a different type"). Here the step checks every gradient before it updates any.
    ps = [mge.Parameter(np.full(3, float(i + 1), np.float32)) for i in range(3)]
    opt = make(ps)
    for p in ps:
        p.grad = mge.Tensor(np.ones(3, np.float32))
    opt.step()  # some state to keep
    ps[1].grad = mge.Tensor(bad) if isinstance(bad, np.ndarray) else bad
    before = _optimizer_snapshot(opt)
    with pytest.raises((ValueError, TypeError), match="parameter 1.*nothing was updated"):
        opt.step()
    _assert_same(before, _optimizer_snapshot(opt))
    ps[1].grad = mge.Tensor(np.ones(3, np.float32))
    opt.step()  # and the next good step updates all three
    assert all((p.numpy() != b).all() for p, b in zip(ps, before[0]))


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.5, momentum=0.9),
                                  lambda ps: Adam(ps, lr=0.5)])
def test_a_step_with_an_integer_parameter_to_update_updates_nothing(make):
    # upstream 1.13 measured: SGD and Adam over two float parameters and an int32 one, all
    # with gradients, raised (an elemwise dtype assertion) after updating the float ones
    ps = [mge.Parameter(np.ones(3, np.float32)) for _ in range(2)]
    ps.append(mge.Parameter(np.ones(3, np.int32)))
    opt = make(ps)
    for p in ps:
        p.grad = mge.Tensor(np.ones(3, np.float32))
    before = _optimizer_snapshot(opt)
    with pytest.raises(TypeError, match="parameter 2 is of dtype int32.*nothing was updated"):
        opt.step()
    _assert_same(before, _optimizer_snapshot(opt))
    ps[2].grad = None  # skipped, as any parameter without a gradient
    opt.step()
    # (Adam's multi-tensor kernel on a GPU rounds its bias corrections in float32: 0.50000006)
    np.testing.assert_allclose([p.tolist() for p in ps[:2]], [[0.5] * 3] * 2, rtol=1e-6)
    assert ps[2].tolist() == [1, 1, 1]


def test_clear_grad_sets_grads_to_none_and_step_chains():
    p = mge.Parameter([1.0])
    opt = SGD(p, lr=1.0)
    p.grad = mge.Tensor([2.0])
    opt.step().clear_grad()
    assert p.grad is None and p.tolist() == [-1.0]


def test_param_groups_have_their_own_lr_and_can_be_changed_between_steps():
    p, q = mge.Parameter([1.0]), mge.Parameter([1.0])
    opt = SGD([{"params": [p]}, {"params": q, "lr": 0.1}], lr=1.0)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.1]
    p.grad, q.grad = mge.Tensor([1.0]), mge.Tensor([1.0])
    opt.step()
    np.testing.assert_allclose([p.item(), q.item()], [0.0, 0.9], rtol=1e-6)
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    np.testing.assert_allclose([p.item(), q.item()], [-0.5, 0.8], rtol=1e-6)


@pytest.mark.parametrize("make", [lambda ps, lr: SGD(ps, lr=lr, momentum=0.9),
                                  lambda ps, lr: Adam(ps, lr=lr),
                                  lambda ps, lr: AdamW(ps, lr=lr),
                                  lambda ps, lr: Adagrad(ps, lr=lr),
                                  lambda ps, lr: Adadelta(ps, lr=lr)])
def test_a_tensor_lr_updates_as_its_value(make):
    # upstream 1.13's optimizers compute with a Tensor lr, given or set into param_groups
    # between steps (measured: the same parameters as with the float); this fork's refused it
    # ("lr must be a number")
    def train(lr, later):
        w, b = _model()
        opt = make([w, b], lr)
        gm = GradManager().attach([w, b])
        for step in range(3):
            if step == 2:
                opt.param_groups[0]["lr"] = later
            with gm:
                gm.backward(_loss(w, b))
            opt.step().clear_grad()
        return w.numpy(), b.numpy()

    want = train(0.05, 0.2)
    got = train(mge.tensor(0.05), mge.tensor(np.float32(0.2)))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match=r"lr must be a number or a Tensor of one real value"):
        make([mge.Parameter([1.0])], mge.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="invalid lr: -0.5"):
        make([mge.Parameter([1.0])], mge.tensor(-0.5))


def test_adams_betas_stay_as_given():
    # upstream keeps the list a program passed (its param_groups and state dict show it)
    assert Adam([mge.Parameter([1.0])], lr=0.1, betas=[0.8, 0.9]).param_groups[0]["betas"] \
        == [0.8, 0.9]
    with pytest.raises(TypeError, match=r"Adam: betas must be a pair \(beta1, beta2\), got 0.9"):
        Adam([mge.Parameter([1.0])], lr=0.1, betas=0.9)


def test_add_param_group():
    # upstream 1.13 measured: its add_param_group makes no state for the new group, so the next
    # step of a stateful optimizer raises KeyError (AdamW: self._state[param]); torch's and this
    # fork's give the group its state
    p, q = mge.Parameter([1.0]), mge.Parameter([1.0])
    opt = SGD([p], lr=1.0, momentum=0.5)
    opt.add_param_group({"params": [q], "lr": 0.25})
    assert opt.param_groups[1]["momentum"] == 0.5  # missing hyperparameters come from defaults
    q.grad = mge.Tensor([4.0])
    opt.step()
    assert q.tolist() == [0.0]
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": [p]})
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [mge.Parameter([1.0])], "lr": -1.0})


def test_bad_groups_and_state_dicts_raise_upstreams_error_types_too():
    # upstream 1.13 measured: add_param_group asserts a dict and new parameters and raises
    # KeyError for a dict without "params"; load_state_dict raises TypeError for a non-dict and
    # KeyError for a missing entry
    p = mge.Parameter([1.0])
    opt = SGD([p], lr=1.0)
    with pytest.raises(AssertionError, match="more than once"):
        opt.add_param_group({"params": [p]})
    with pytest.raises(AssertionError, match="expected a dict"):
        opt.add_param_group([mge.Parameter([1.0])])
    with pytest.raises(KeyError, match=r"'params' entry, got dict with \['lr'\]"):
        opt.add_param_group({"lr": 1.0})
    with pytest.raises(TypeError, match="expected a dict"):
        opt.load_state_dict([1])
    with pytest.raises(KeyError, match="expected a dict"):
        opt.load_state_dict({"state": {}})
    assert len(opt.param_groups) == 1


# Upstream 1.13 asserts its SGD's, Adagrad's and Adadelta's hyperparameters (AssertionError) and
# raises ValueError for Adam's, AdamW's and LAMB's (their sources' checks; measured); one error of
# both types serves code written against either.
@pytest.mark.parametrize("make, match", [
    (lambda ps: SGD(ps, lr=-0.1), "invalid lr: -0.1"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.9), "invalid momentum: -0.9"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=-1.0), "invalid weight_decay: -1.0"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), "nesterov=True needs a momentum > 0"),
    (lambda ps: Adagrad(ps, lr_decay=-1.0), "invalid lr_decay: -1.0"),
    (lambda ps: Adagrad(ps, eps=-1e-10), "invalid eps: -1e-10"),
    (lambda ps: Adadelta(ps, rho=1.5), "Adadelta: invalid rho 1.5"),
    (lambda ps: Adadelta(ps, weight_decay=-1.0), "invalid weight_decay: -1.0"),
    (lambda ps: Adam(ps, lr=-1.0), "invalid lr: -1.0"),
    (lambda ps: Adam(ps, lr=0.1, betas=(0.9, 1.0)), r"Adam: invalid beta at index 1: 1.0"),
    (lambda ps: AdamW(ps, lr=0.1, betas=(-0.1, 0.9)), r"AdamW: invalid beta at index 0: -0.1"),
    (lambda ps: AdamW(ps, lr=0.1, weight_decay=-0.01), "invalid weight_decay: -0.01"),
    (lambda ps: LAMB(ps, lr=0.1, eps=-1.0), "invalid eps: -1.0"),
    (lambda ps: LAMB(ps, lr=0.1, betas=(0.9, -0.1)), r"LAMB: invalid beta at index 1: -0.1"),
    (lambda ps: SGD(ps, lr=0.1).add_param_group({"params": [mge.Parameter([2.0])], "lr": -1.0}),
     "invalid lr: -1.0"),
])
def test_bad_hyperparameters_raise_an_error_of_upstreams_both_types(make, match):
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match=match) as caught:
            make([mge.Parameter([1.0])])
        assert type(caught.value) is ArgumentError


@pytest.mark.parametrize("params, error, match", [
    ([], ValueError, "empty"),
    ([mge.Tensor([1.0])], TypeError, "only optimize Parameters"),
    (3, TypeError, "params must be"),
    ([{"params": {mge.Parameter([1.0])}}], TypeError, "not a set"),
])
def test_bad_params_are_rejected(params, error, match):
    with pytest.raises(error, match=match):
        SGD(params, lr=0.1)


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    lambda ps: Adam(ps, lr=0.05, weight_decay=1e-2),
    lambda ps: AdamW(ps, lr=0.05),
    lambda ps: Adagrad(ps, lr=0.1, lr_decay=0.01),
    lambda ps: Adadelta(ps, lr=1.0),
])
def test_state_dict_round_trip_continues_training_identically(make):
    grads = [[np.asarray(np.random.RandomState(s).randn(*shape), dtype=np.float32)
              for shape in ((3, 1), (1,))] for s in range(6)]

    def train(params, opt, steps):
        for g in steps:
            for p, gv in zip(params, g):
                p.grad = mge.Tensor(gv)
            opt.step()

    # uninterrupted
    params = list(_model())
    opt = make(params)
    train(params, opt, grads)
    expected = [p.numpy() for p in params]

    # interrupted after 3 steps: save, rebuild everything, load, continue
    params = list(_model())
    opt = make(params)
    train(params, opt, grads[:3])
    f = io.BytesIO()
    mge.save({"params": [p.numpy() for p in params], "opt": opt.state_dict()}, f)
    f.seek(0)
    ckpt = mge.load(f)
    params = [mge.Parameter(v) for v in ckpt["params"]]
    opt = make(params)
    opt.load_state_dict(ckpt["opt"])
    addresses = [address(p) for p in params]
    train(params, opt, grads[3:])
    for p, e in zip(params, expected):
        np.testing.assert_array_equal(p.numpy(), e)
    assert [address(p) for p in params] == addresses


def test_load_state_dict_restores_hyperparameters_and_checks_shapes():
    p = mge.Parameter([1.0, 2.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = mge.Tensor([1.0, 1.0])
    opt.step()
    sd = opt.state_dict()
    other = SGD([mge.Parameter([0.0, 0.0])], lr=0.5)
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.1 and other.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="shape"):
        SGD([mge.Parameter([0.0, 0.0, 0.0])], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        SGD([{"params": [mge.Parameter([0.0])]}, {"params": [mge.Parameter([0.0])]}],
            lr=0.1).load_state_dict(sd)


@pytest.mark.parametrize("spoil", ["negative lr", "bad momentum", "state shape", "group count",
                                   "state entry", "group entry", "buffer of strings",
                                   "buffer holding None", "complex buffer"])
def test_a_failed_load_state_dict_changes_nothing(spoil):
    # upstream 1.13 measured: a state whose group 0 has lr 7.0 and whose group 1 has one
    # parameter too few raised ValueError after group 0's lr had become 7.0 (and a negative lr
    # or a (9,) momentum buffer for a (2,) parameter loaded without an error). torch checks
    # the whole state before it changes anything; so does this fork, whose own checks refuse
    # the bad values.
    a, b, c = (mge.Parameter(np.ones(n, np.float32)) for n in (3, 2, 2))
    opt = SGD([{"params": [a]}, {"params": [b, c], "lr": 0.5}], lr=0.1, momentum=0.9)
    for p in (a, b, c):
        p.grad = mge.Tensor(np.ones(p.shape, np.float32))
    opt.step()
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = 7.0  # a good change before the bad one
    saved["state"][0]["momentum_buffer"] = np.full(3, 5.0, np.float32)
    if spoil == "negative lr":
        saved["param_groups"][1]["lr"] = -7.0
    elif spoil == "bad momentum":
        saved["param_groups"][1]["momentum"] = -1.0
    elif spoil == "state shape":
        saved["state"][2]["momentum_buffer"] = np.zeros(9, np.float32)
    elif spoil == "group count":
        saved["param_groups"][1]["params"] = saved["param_groups"][1]["params"][:1]
    elif spoil == "state entry":
        saved["state"][2] = "momentum"
    elif spoil == "buffer of strings":
        saved["state"][2]["momentum_buffer"] = np.array(["a", "b"])
    elif spoil == "buffer holding None":  # (earlier versions of this fork loaded it as NaN)
        saved["state"][2]["momentum_buffer"] = np.array([1.0, None])
    elif spoil == "complex buffer":  # (earlier versions dropped the imaginary part)
        saved["state"][2]["momentum_buffer"] = np.array([1.0, 2j])
    else:
        del saved["param_groups"][1]["params"]
    before = _optimizer_snapshot(opt)
    groups = [id(g) for g in opt.param_groups]
    match = {"state entry": "state of parameter 2 is a str",
             "buffer of strings": "state of parameter 2 cannot be loaded: its "
                                  "'momentum_buffer' must hold numbers",
             "buffer holding None": "'momentum_buffer' must hold numbers, got None",
             "complex buffer": "'momentum_buffer' is complex \\(complex128\\) but its "
                               "parameter is real",
             "group entry": "group 1 of the state is not a dict with a 'params'"}.get(spoil)
    with pytest.raises((ValueError, TypeError), match=match):
        opt.load_state_dict(saved)
    _assert_same(before, _optimizer_snapshot(opt))
    assert [id(g) for g in opt.param_groups] == groups


def test_load_state_dict_keeps_a_schedulers_initial_lr_as_torch():
    # A state saved after MultiStepLR (its groups carry "initial_lr") loaded into a fresh
    # optimizer, the order a resumed program may take. upstream 1.13 measured: ValueError
    # "loaded state dict contains a parameter group that doesn't match the keys of optimizer's
    # group"; this fork keeps the extra key and the saved rates, as torch's load_state_dict.
    from megengine.optimizer import MultiStepLR

    p = mge.Parameter([1.0, 2.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    sched = MultiStepLR(opt, milestones=[1], gamma=0.5)
    p.grad = mge.Tensor([1.0, 1.0])
    opt.step()
    sched.step()
    fresh = SGD([mge.Parameter([0.0, 0.0])], lr=0.3, momentum=0.9)
    fresh.load_state_dict(opt.state_dict())

    tp = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9)
    tsched = torch.optim.lr_scheduler.MultiStepLR(topt, milestones=[1], gamma=0.5)
    tp.grad = torch.tensor([1.0, 1.0])
    topt.step()
    tsched.step()
    tfresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.3, momentum=0.9)
    tfresh.load_state_dict(topt.state_dict())
    for key in ("lr", "initial_lr"):
        assert fresh.param_groups[0][key] == pytest.approx(tfresh.param_groups[0][key])


def test_state_dict_is_a_snapshot():
    p = mge.Parameter([1.0, 2.0])
    opt = Adam([p], lr=0.1)
    p.grad = mge.Tensor([1.0, 1.0])
    opt.step()
    sd = opt.state_dict()
    saved = {k: np.copy(v) for k, v in sd["state"][0].items()}
    opt.step()  # later steps must not change what was exported
    for k, v in saved.items():
        np.testing.assert_array_equal(sd["state"][0][k], v)
    assert sd["state"][0]["step"] == 1
    assert isinstance(sd["state"][0]["exp_avg"], np.ndarray)


# The layout of upstream 1.13's state dicts (upstream 1.13 measured): SGD's groups hold lr,
# momentum and weight_decay (nesterov is the optimizer's, not a group's); every parameter has
# its state (zeros from construction on), with or without a step; a step count is a float32
# 0-d array. Upstream's load_state_dict needs every parameter's state and the same group keys,
# so the state dicts this fork made before failed there (KeyError, ValueError, or a dtype
# assertion on the int step).
UPSTREAM_STATE_KEYS = [
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
     ["lr", "momentum", "params", "weight_decay"], ["momentum_buffer"]),
    (lambda ps: Adam(ps, lr=0.1), ["betas", "eps", "lr", "params", "weight_decay"],
     ["exp_avg", "exp_avg_sq", "step"]),
    (lambda ps: AdamW(ps, lr=0.1), ["betas", "eps", "lr", "params", "weight_decay"],
     ["exp_avg", "exp_avg_sq", "step"]),
    (lambda ps: Adagrad(ps, lr=0.1), ["eps", "lr", "lr_decay", "params", "weight_decay"],
     ["square_avg", "step"]),
    (lambda ps: Adadelta(ps, lr=0.1), ["eps", "lr", "params", "rho", "weight_decay"],
     ["acc_delta", "square_avg", "step"]),
]


@pytest.mark.parametrize("make, group_keys, state_keys", UPSTREAM_STATE_KEYS)
def test_state_dict_has_upstreams_layout(make, group_keys, state_keys):
    p, q = mge.Parameter([1.0, 2.0]), mge.Parameter([3.0])
    opt = make([p, q])
    before = opt.state_dict()
    assert sorted(before["param_groups"][0]) == group_keys
    assert sorted(before["state"]) == [0, 1]
    for i in (0, 1):
        assert sorted(before["state"][i]) == state_keys
    p.grad = mge.Tensor([1.0, -1.0])  # q has no gradient: its state stays as made
    opt.step()
    opt.step()
    after = opt.state_dict()
    assert sorted(after["state"]) == [0, 1] and sorted(after["state"][1]) == state_keys
    for i, steps in ((0, 2), (1, 0)):
        if "step" in state_keys:
            step = after["state"][i]["step"]
            assert type(step) is np.ndarray and step.dtype == np.float32 and step.shape == ()
            assert step == steps
    for name in state_keys:
        if name != "step":
            assert after["state"][1][name].tolist() == [0.0]
            assert after["state"][0][name].dtype == np.float32
    # keep_var=True gives the state's Tensors (upstream's argument)
    kept = opt.state_dict(keep_var=True)["state"][0]
    assert all(isinstance(v, mge.Tensor) for v in kept.values())


@pytest.mark.parametrize("make, group_keys, state_keys", UPSTREAM_STATE_KEYS)
def test_state_dict_makes_fresh_state_only_for_parameters_not_updated(make, group_keys,
                                                                      state_keys, monkeypatch):
    p, q = mge.Parameter([1.0, 2.0]), mge.Parameter([3.0])
    opt = make([p, q])
    p.grad = mge.Tensor([1.0, -1.0])
    opt.step()
    asked = []
    fresh = type(opt)._fresh_state
    monkeypatch.setattr(type(opt), "_fresh_state",
                        lambda self, param, *args: asked.append(param) or fresh(self, param, *args))
    state = opt.state_dict()["state"]
    assert asked == [q]  # p's state exists: no zero buffers are made for it
    assert list(state[0]) == list(state[1])  # in one order (Adagrad's update adds its step first)

def test_state_dicts_in_the_old_layout_and_of_other_optimizers():
    # this fork's earlier layout (int step, SGD's "nesterov" in the group) still loads
    p = mge.Parameter([1.0, 2.0])
    old = {"param_groups": [{"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0,
                             "params": [0]}],
           "state": {0: {"momentum_buffer": np.array([0.5, 0.5], np.float32)}}}
    sgd = SGD([p], lr=0.1, momentum=0.9)
    sgd.load_state_dict(old)
    p.grad = mge.Tensor([1.0, 1.0])
    sgd.step()  # nesterov, from the loaded group: buf = 0.9*0.5 + 1; p -= 0.1*(1 + 0.9*buf)
    np.testing.assert_allclose(p.numpy(), np.array([1.0, 2.0]) - 0.1 * (1 + 0.9 * 1.45), rtol=1e-6)
    adam = Adam([p], lr=0.1)
    adam.load_state_dict({"param_groups": [dict(adam.state_dict()["param_groups"][0])],
                          "state": {0: {"exp_avg": np.zeros(2, np.float32),
                                        "exp_avg_sq": np.zeros(2, np.float32), "step": 3}}})
    assert adam._state[p]["step"] == 3
    # the state of another optimizer lacks hyperparameters this one needs: refused, unchanged
    with pytest.raises(ValueError, match=r"lacks \['betas', 'eps'\].*another optimizer"):
        adam.load_state_dict(sgd.state_dict())
    assert adam._state[p]["step"] == 3 and adam.param_groups[0]["lr"] == 0.1


def test_state_buffers_are_tensors_that_show_the_current_value():
    # upstream keeps each buffer as a Tensor in `opt._state[param]`; training programs read
    # it, e.g. `opt._state[w]["momentum_buffer"].numpy()`. Oracle: v = 0.9 * v + g by hand.
    w = mge.Parameter([1.0, -2.0])
    opt = SGD([w], lr=0.5, momentum=0.9)
    g1, g2 = np.array([0.5, 1.5], np.float32), np.array([-1.0, 2.0], np.float32)
    w.grad = mge.Tensor(g1)
    opt.step()
    buf = opt._state[w]["momentum_buffer"]
    assert isinstance(buf, mge.Tensor)
    np.testing.assert_allclose(buf.numpy(), g1)
    w.grad = mge.Tensor(g2)
    opt.step()
    assert opt._state[w]["momentum_buffer"] is buf  # the same Tensor, updated in place
    np.testing.assert_allclose(buf.numpy(), 0.9 * g1 + g2, rtol=1e-6)
    np.testing.assert_allclose(w.numpy(), [1.0, -2.0] - 0.5 * g1 - 0.5 * (0.9 * g1 + g2),
                               rtol=1e-6)
    # a state loaded from a state dict holds Tensors too, and training continues from it
    other = SGD([mge.Parameter([0.0, 0.0])], lr=0.5, momentum=0.9)
    other.load_state_dict(opt.state_dict())
    (p,) = other.param_groups[0]["params"]
    assert isinstance(other._state[p]["momentum_buffer"], mge.Tensor)
    np.testing.assert_allclose(other._state[p]["momentum_buffer"].numpy(), buf.numpy())
    p.grad = mge.Tensor(g1)
    other.step()
    # (its first element cancels, 0.9 * -0.55 + 0.5 = 0.005: the float32 rounding of the
    # 0.5-sized terms, an ulp or two of 0.5 whether or not a kernel fuses the multiply-add (a
    # GPU's does), is the tolerance there; the oracle in float64)
    v1 = 0.9 * g1.astype(np.float64) + g2
    np.testing.assert_allclose(other._state[p]["momentum_buffer"].numpy(), 0.9 * v1 + g1,
                               rtol=1e-6, atol=1e-7)


def _train_1x(steps):
    w, b = _model()
    gm = GradManager().attach([w, b])
    opt = SGD([w, b], lr=0.05, momentum=0.9)
    for _ in range(steps):
        with gm:
            gm.backward(_loss(w, b))
        opt.step().clear_grad()
    return w.numpy(), b.numpy()


def _train_0x(steps):
    w, b = _model()
    opt = SGD([w, b], lr=0.05, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(w, b)
        opt.backward(loss)
        opt.step()
    return w.numpy(), b.numpy()


def test_0x_flow_gives_the_same_updates_as_the_1x_flow():
    for got, want in zip(_train_0x(4), _train_1x(4)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # and it trained: the hand-computed first-step gradient of w is 2 X^T (X w + b - Y)
    w, b = _model()
    expected_w = w.numpy() - 0.05 * 2 * X.T @ (X @ w.numpy() + b.numpy() - Y)
    np.testing.assert_allclose(_train_0x(1)[0], expected_w, rtol=1e-5)


def test_0x_step_ends_the_recording_and_zero_grad_zeroes():
    w, b = _model()
    opt = SGD([w, b], lr=0.1)
    opt.zero_grad()
    assert dispatch.is_recording()
    opt.backward(_loss(w, b))
    assert dispatch.is_recording()  # records on: another backward before step() adds up
    grad = w.grad
    opt.zero_grad()
    assert w.grad is grad and not w.grad.numpy().any()  # zeroed in place, as upstream
    opt.zero_grad()  # calling it twice keeps one recording going
    opt.backward(_loss(w, b))
    opt.step()
    assert not dispatch.is_recording()


def test_0x_backward_calls_before_step_add_up_as_torch_accumulates():
    # 0.x's backward was add_update(param.grad, grad); MAML (zhen8838/maml-megengine) calls it
    # once per task between zero_grad() and step(). torch's .backward() accumulates the same way.
    rng = np.random.RandomState(5)
    xs = [rng.randn(2, 3).astype(np.float32) for _ in range(3)]
    w, b = _model()
    tw = torch.tensor(w.numpy(), requires_grad=True)
    tb = torch.tensor(b.numpy(), requires_grad=True)
    opt, topt = SGD([w, b], lr=0.1, momentum=0.9), torch.optim.SGD([tw, tb], lr=0.1, momentum=0.9)
    for step in range(2):
        opt.zero_grad()
        topt.zero_grad()
        for x in xs:
            opt.backward(F.tanh(mge.Tensor(x) @ w + b).sum() * (step + 1))
            (torch.tanh(torch.tensor(x) @ tw + tb).sum() * (step + 1)).backward()
        np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)
        opt.step()
        topt.step()
        assert not dispatch.is_recording()
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), tb.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_0x_maml_step_first_order_gradients_of_each_task_add_up():
    # the program's loop: per task F.grad on the support loss (graph kept), fast weights, then
    # optimizer.backward(query loss); torch oracle with the inner gradient detached (first order)
    rng = np.random.RandomState(6)
    tasks = [(rng.randn(4, 3).astype(np.float32), rng.randn(4, 3).astype(np.float32))
             for _ in range(2)]
    w, b = _model()
    opt = SGD([w, b], lr=0.1)
    opt.zero_grad()
    tw = torch.tensor(w.numpy(), requires_grad=True)
    tb = torch.tensor(b.numpy(), requires_grad=True)
    for xs_, xq in tasks:
        support = ((mge.Tensor(xs_) @ w + b) ** 2).mean()
        gw, gb = F.grad(support, [w, b], use_virtual_grad=False)
        opt.backward(((mge.Tensor(xq) @ (w - 0.5 * gw) + (b - 0.5 * gb)) ** 2).mean())
        tsupport = ((torch.tensor(xs_) @ tw + tb) ** 2).mean()
        tgw, tgb = (g.detach() for g in torch.autograd.grad(tsupport, [tw, tb]))
        ((torch.tensor(xq) @ (tw - 0.5 * tgw) + (tb - 0.5 * tgb)) ** 2).mean().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-5, atol=1e-6)
    opt.step()
    assert not dispatch.is_recording()


def test_zero_grad_as_a_clear_grad_synonym_does_not_leave_recording_on():
    w, b = _model()
    gm = GradManager().attach([w, b])
    opt = SGD([w, b], lr=0.05, momentum=0.9)
    for _ in range(4):
        opt.zero_grad()  # PyTorch habit, next to the user's own GradManager
        with gm:
            gm.backward(_loss(w, b))
        opt.step()
        assert not dispatch.is_recording()
    for got, want in zip((w.numpy(), b.numpy()), _train_1x(4)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_backward_without_zero_grad_says_what_to_do():
    w, b = _model()
    opt = SGD([w, b], lr=0.1)
    with pytest.raises(RuntimeError, match="zero_grad"):
        opt.backward(_loss(w, b))


def test_1x_user_never_starts_recording():
    w, b = _model()
    opt = SGD([w, b], lr=0.1)
    w.grad = mge.Tensor(np.ones((3, 1), np.float32))
    opt.step().clear_grad()
    assert not dispatch.is_recording()
    assert opt._gm is None and not w._tracked


def test_step_clear_grad_and_zero_grad_are_announced_to_a_tracer(monkeypatch):
    calls = []

    class Hook:  # stands in for megengine.jit's recorder
        def event(self, fn, *args, **kwargs):
            calls.append(fn.__name__)
            monkeypatch.setattr(dispatch, "_trace_hook", None)
            try:
                return fn(*args, **kwargs)
            finally:
                monkeypatch.setattr(dispatch, "_trace_hook", self)

    p = mge.Parameter([1.0])
    opt = SGD([p], lr=1.0)
    p.grad = mge.Tensor([1.0])
    monkeypatch.setattr(dispatch, "_trace_hook", Hook(), raising=False)
    assert opt.step() is opt
    opt.clear_grad()
    opt.zero_grad()
    monkeypatch.setattr(dispatch, "_trace_hook", None)
    opt._gm.release()
    assert calls == ["step", "clear_grad", "zero_grad"]
    assert p.tolist() == [0.0] and p.grad is None


def _train_0x_forward_first(steps, traced=False):
    # 0.x order of MegEngine/Models' GAN steps: forward, zero_grad, backward, step
    from megengine import jit

    w, b = _model()
    opt = SGD([w, b], lr=0.05, momentum=0.9)

    def step():
        loss = _loss(w, b)
        opt.zero_grad()
        opt.backward(loss)
        opt.step()
        return loss

    run = jit.trace(step) if traced else step
    with pytest.warns(RuntimeWarning, match="before optimizer.zero_grad"):
        run()  # nothing recorded this forward: no update, and it says so
    np.testing.assert_array_equal(w.numpy(), _model()[0].numpy())
    for _ in range(steps - 1):
        run()
    assert dispatch.is_recording()  # recording ahead for the next forward ...
    del run, step, opt
    import gc

    gc.collect()
    assert not dispatch.is_recording()  # ... until the optimizer goes away
    return w.numpy(), b.numpy()


@pytest.mark.parametrize("traced", [False, True])
def test_0x_forward_before_zero_grad_trains_from_the_second_step(traced):
    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.simplefilter("error")  # only the first step warns
        # (besides upstream's deprecation of each zero_grad call)
        _warnings.filterwarnings("ignore", "Call to deprecated method zero_grad",
                                 DeprecationWarning)
        got = _train_0x_forward_first(4, traced)
    for g, want in zip(got, _train_1x(3)):
        np.testing.assert_allclose(g, want, rtol=1e-6)


def test_0x_forward_first_with_two_overlapping_optimizers_stays_first_order():
    # a GAN: each optimizer's recording sees the other's step; with both recording, a backward
    # must stay first order (not recorded by the other optimizer) and each optimizer's gradients
    # must be those of plain autodiff (oracle: a 1.x GradManager)
    import megengine.functional as F

    rng = np.random.RandomState(0)
    x = mge.tensor(rng.randn(1, 1, 4, 4).astype("float32"))
    g0, d0 = rng.randn(1, 1, 4, 4).astype("float32"), rng.randn(1, 1, 2, 2).astype("float32")

    def losses(g, d):
        fake = x * g
        return (F.avg_pool2d(fake, 2) * d).sum(), (F.avg_pool2d(fake.detach(), 2) * d * d).sum()

    g, d = mge.Parameter(g0), mge.Parameter(d0)
    opt_g, opt_d = SGD([g], lr=0.1), SGD([d], lr=0.1)
    with pytest.warns(RuntimeWarning):
        for _ in range(3):
            loss_g, _ = losses(g, d)
            opt_g.zero_grad(); opt_g.backward(loss_g); opt_g.step()
            _, loss_d = losses(g, d)
            opt_d.zero_grad(); opt_d.backward(loss_d); opt_d.step()

    g1, d1 = mge.Parameter(g0), mge.Parameter(d0)  # the same, 1.x, first steps skipped
    gm_g, gm_d = GradManager().attach([g1]), GradManager().attach([d1])
    for _ in range(2):
        with gm_g:
            gm_g.backward(losses(g1, d1)[0])
        SGD([g1], lr=0.1).step().clear_grad()
        with gm_d:
            gm_d.backward(losses(g1, d1)[1])
        SGD([d1], lr=0.1).step().clear_grad()
    np.testing.assert_allclose(g.numpy(), g1.numpy(), rtol=1e-6)
    np.testing.assert_allclose(d.numpy(), d1.numpy(), rtol=1e-6)
    assert not np.allclose(g.numpy(), g0)
    del opt_g, opt_d
    import gc

    gc.collect()
    assert not dispatch.is_recording()


def test_record_block_trains_as_the_0x_flow():
    # upstream 1.0's pre-release spelling: zero_grad(); with opt.record(): forward; backward
    w, b = _model()
    opt = SGD([w, b], lr=0.05, momentum=0.9)
    for _ in range(4):
        opt.zero_grad()
        with opt.record():
            opt.backward(_loss(w, b))
        opt.step()
        assert not dispatch.is_recording()
    for got, want in zip((w.numpy(), b.numpy()), _train_0x(4)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_record_block_without_backward_stops_recording_and_does_not_nest():
    w, b = _model()
    opt = SGD([w, b], lr=0.1)
    with opt.record():  # no zero_grad() first: record() starts the recording itself
        assert dispatch.is_recording()
        with pytest.raises(RuntimeError, match="already recording"):
            with opt.record():
                pass
    assert not dispatch.is_recording() and w.grad is None
    with opt.record():
        opt.backward(_loss(w, b))
    # hand-computed gradient of the squared error, as test_0x_flow_gives_the_same_updates...
    np.testing.assert_allclose(w.grad.numpy(), 2 * X.T @ (X @ w.numpy() + b.numpy() - Y),
                               rtol=1e-5)


class _Lion(mge.optimizer.Optimizer):
    """A program's optimizer written to upstream's protocol (`_create_state`, `_add_state`,
    `_updates` with tensor operations), as third-party MegEngine code writes Lion."""

    def __init__(self, params, lr, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def _create_state(self, param_group):
        for param in param_group["params"]:
            self._add_state(param, "exp_avg")
            self._add_state(param, "step", initializer=0.0)

    def _updates(self, param_group):
        lr, wd = param_group["lr"], param_group["weight_decay"]
        beta0, beta1 = param_group["betas"]
        for param in param_group["params"]:
            if param.grad is None:
                continue
            grad, state = param.grad, self._state[param]
            exp_avg = state["exp_avg"]
            state["step"] += 1
            param[...] = param * (1 - lr * wd)
            param[...] = param + F.sign(exp_avg * beta0 + grad * (1 - beta0)) * -lr
            exp_avg[...] = exp_avg * beta1 + (1 - beta1) * grad


def _lion_numpy(w, m, g, lr, wd, beta0, beta1):
    w = w * (1 - lr * wd) - lr * np.sign(m * beta0 + g * (1 - beta0))
    return w, m * beta1 + (1 - beta1) * g


def test_an_optimizer_written_to_upstreams_protocol_trains():
    w, b = _model()
    opt = _Lion([w, b], lr=0.1, weight_decay=0.01)
    assert set(opt._state[w]) == {"exp_avg", "step"}  # made by _create_state in __init__
    ref = {"w": (w.numpy(), np.zeros_like(w.numpy())), "b": (b.numpy(), np.zeros((1,), "f4"))}
    gm = GradManager().attach([w, b])
    w_address = address(w)
    for _ in range(3):
        with gm:
            gm.backward(_loss(w, b))
        grads = {"w": w.grad.numpy(), "b": b.grad.numpy()}
        opt.step().clear_grad()
        for name, p in (("w", w), ("b", b)):
            ref[name] = _lion_numpy(*ref[name], grads[name], 0.1, 0.01, 0.9, 0.99)
            np.testing.assert_allclose(p.numpy(), ref[name][0], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(opt._state[p]["exp_avg"].numpy(), ref[name][1],
                                       rtol=1e-6, atol=1e-7)
    assert address(w) == w_address  # the update wrote into the parameter's storage
    assert float(opt._state[w]["step"]) == 3
    other = _Lion([mge.Parameter(w.numpy()), mge.Parameter(b.numpy())], lr=0.1)
    other.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(list(other._state.values())[0]["exp_avg"].numpy(),
                                  opt._state[w]["exp_avg"].numpy())
    with pytest.raises(ValueError, match="'exp_avg' of this parameter exists already"):
        opt._add_state(w, "exp_avg")


def test_an_upstream_protocol_step_is_not_recorded_by_a_recording_grad_manager():
    w, b = _model()
    w0 = w.numpy()
    opt = _Lion([w, b], lr=0.1)
    gm = GradManager().attach([w, b])
    w_address = address(w)
    with gm:
        w.grad = mge.Tensor(np.ones((3, 1), "float32"))
        opt.step()  # w -= lr * sign(0.1 * grad): w0 - 0.1, written into w's storage
        gm.backward(_loss(w, b))
    # w stayed the attached leaf: the loss's gradient (at the new w) is added to w.grad, and
    # nothing flowed through the update
    w1 = w0 - 0.1
    err = X @ w1 - Y
    np.testing.assert_allclose(w.numpy(), w1, rtol=1e-6)
    np.testing.assert_allclose(w.grad.numpy(), 1 + 2 * X.T @ err, rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), [2 * err.sum()], rtol=1e-5)
    assert address(w) == w_address and opt._state[w]["exp_avg"]._node is None


def test_param_group_keys_in_upstreams_order():
    # upstream 1.13 measured: list(opt.param_groups[0]) and the state dict's group keys
    # (printed dicts show this order)
    import megengine.module as M
    from megengine import optimizer as optim

    want = {
        "SGD": ["lr", "momentum", "weight_decay"],
        "Adam": ["lr", "weight_decay", "betas", "eps"],
        "AdamW": ["lr", "weight_decay", "betas", "eps"],
        "Adagrad": ["lr", "lr_decay", "eps", "weight_decay"],
        "Adadelta": ["lr", "rho", "eps", "weight_decay"],
    }
    net = M.Linear(2, 2)
    for name, keys in want.items():
        opt = getattr(optim, name)(net.parameters(), **({} if name == "Adadelta" else {"lr": 0.1}))
        assert list(opt.param_groups[0]) == ["params"] + keys, name
        assert list(opt.state_dict()["param_groups"][0]) == keys + ["params"], name


def test_zero_grad_warns_upstreams_deprecation_at_the_callers_line():
    # upstream 1.13 measured: each opt.zero_grad() warns DeprecationWarning "Call to deprecated
    # method zero_grad. (use clear_grad instead) -- Deprecated since version 1.0.", pointing at
    # the caller's line; it still zeroes the gradients (the 0.x flow relies on it)
    import warnings

    w = mge.Parameter(np.ones(3, "float32"))
    w.grad = mge.tensor(np.full(3, 2.0, "float32"))
    opt = SGD([w], lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.zero_grad()
    assert [str(c.message) for c in caught] == [
        "Call to deprecated method zero_grad. (use clear_grad instead) -- "
        "Deprecated since version 1.0."]
    assert caught[0].category is DeprecationWarning and caught[0].filename == __file__
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros(3, "float32"))
