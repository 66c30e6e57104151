"""Fuzz generators for megengine.optimizer: random hyper-parameters, parameter groups and
gradients over several steps, with a state_dict round trip mid-run, against torch.optim (or a
numpy oracle of upstream's formulas where torch's differ or has none); LR schedulers against
torch's."""
import copy

import numpy as np
import torch

import megengine as mge
import megengine.optimizer as optim
from megengine import Parameter

from .gen import Check, close, pick, registry, shape, values

OPS, op = registry("optimizer")


TOL = (2e-5, 2e-6)


def _draw_params(rng):
    """1-3 parameters, now and then a complex64 one (updated as pairs of reals, torch's rule)."""
    n = int(rng.integers(1, 4))
    return [values(rng, shape(rng, 0, 3, zero=False), pick(rng, ["float32"] * 3 + ["complex64"]),
                   -2, 2) for _ in range(n)]


def _groups(rng, n_params, hyper):
    """Split parameter indices into one or two groups; the second may override hyper-params
    drawn by ``hyper(rng)``."""
    if n_params > 1 and rng.random() < 0.5:
        cut = int(rng.integers(1, n_params))
        return [(list(range(cut)), {}), (list(range(cut, n_params)), hyper(rng))]
    return [(list(range(n_params)), {})]


def _run_steps(rng, make_mge, step_ref, init, groups, steps, defaults):
    """Run ``steps`` updates of megengine's optimizer (``make_mge(param_groups)``) and of the
    oracle (``step_ref(step, params, grads, groups)``, updating numpy arrays in place, or a
    torch optimizer). A state_dict round trip into a fresh optimizer happens mid-run. Some
    parameters get no gradient at some steps (skipped by both)."""
    mparams = [Parameter(p.copy()) for p in init]

    def mge_groups():
        return [dict(params=[mparams[i] for i in idx], **hp) for idx, hp in groups]
    opt = make_mge(mge_groups())
    ref = step_ref()
    cut = int(rng.integers(1, steps)) if steps > 1 else None
    for step in range(steps):
        grads = [values(rng, p.shape, p.dtype, -1, 1) if rng.random() < 0.85 else None
                 for p in init]
        if all(g is None for g in grads):
            grads[0] = values(rng, init[0].shape, init[0].dtype, -1, 1)
        for p, g in zip(mparams, grads):
            p.grad = None if g is None else mge.tensor(g)
        if step == cut:
            # mid-run: the state travels through a copy into a fresh optimizer
            sd = copy.deepcopy(opt.state_dict())
            opt = make_mge(mge_groups())
            opt.load_state_dict(sd)
        opt.step()
        want = ref(grads)
        for k, (p, w) in enumerate(zip(mparams, want)):
            close(p.numpy(), w, TOL, f"step {step} (state_dict round trip at {cut}): "
                  f"parameter {k}")
    return "ok"


def _torch_ref(init, groups, make_torch):
    def start():
        tps = [torch.tensor(p.copy(), requires_grad=True) for p in init]
        topt = make_torch([dict(params=[tps[i] for i in idx], **hp) for idx, hp in groups])

        def ref(grads):
            for t, g in zip(tps, grads):
                t.grad = None if g is None else torch.tensor(g)
            topt.step()
            return [t.detach().numpy() for t in tps]
        return ref
    return start


def _torch_case(name, mcls, tcls, hyper, defaults_fn):
    def gen(rng):
        init = _draw_params(rng)
        d = defaults_fn(rng)
        groups = _groups(rng, len(init), hyper)
        steps = int(rng.integers(2, 6))
        desc = f"{name}({d}) groups={[(i, hp) for i, hp in groups]} steps={steps} " \
               f"params={[p.shape for p in init]}"
        return Check(desc, lambda: _wrap(desc, lambda: _run_steps(
            rng, lambda g: mcls(g, **d), _torch_ref(init, groups, lambda g: tcls(g, **d)),
            init, groups, steps, d)))
    return gen


def _wrap(desc, fn):
    from .gen import Mismatch
    try:
        return fn()
    except Mismatch as e:
        raise Mismatch(f"{desc}: {e}") from e


def _lr(rng):
    return float(pick(rng, [0.1, 0.01, float(rng.uniform(1e-3, 0.5))]))


def _sgd_hyper(rng):
    d = dict(lr=_lr(rng))
    if rng.random() < 0.6:
        d["momentum"] = float(pick(rng, [0.9, float(rng.uniform(0, 0.99))]))
        if rng.random() < 0.4:
            d["nesterov"] = True
    if rng.random() < 0.5:
        d["weight_decay"] = float(rng.uniform(0, 0.1))
    return d


def _betas(rng):
    return (float(rng.uniform(0.5, 0.99)), float(rng.uniform(0.8, 0.9999)))


def _adam_hyper(rng):
    d = dict(lr=_lr(rng))
    if rng.random() < 0.5:
        d["betas"] = _betas(rng)
    if rng.random() < 0.5:
        d["eps"] = float(pick(rng, [1e-8, 1e-3, 1e-6]))
    if rng.random() < 0.5:
        d["weight_decay"] = float(rng.uniform(0, 0.1))
    return d


def _adadelta_hyper(rng):
    d = dict(lr=float(rng.uniform(0.1, 1.5)), rho=float(rng.uniform(0.5, 0.99)))
    if rng.random() < 0.5:
        d["eps"] = float(pick(rng, [1e-6, 1e-3]))
    if rng.random() < 0.5:
        d["weight_decay"] = float(rng.uniform(0, 0.1))
    return d


def _group_hp(fn, keys):
    """A second group's overrides: a subset of fresh draws (nesterov needs momentum: both or
    neither move)."""
    def hyper(rng):
        d = fn(rng)
        return {k: v for k, v in d.items() if k in keys and rng.random() < 0.7}
    return hyper


op("SGD")(_torch_case("SGD", optim.SGD, torch.optim.SGD,
                      _group_hp(_sgd_hyper, ("lr", "weight_decay")), _sgd_hyper))
op("Adam")(_torch_case("Adam", optim.Adam, torch.optim.Adam,
                       _group_hp(_adam_hyper, ("lr", "betas", "eps", "weight_decay")),
                       _adam_hyper))
op("AdamW")(_torch_case("AdamW", optim.AdamW, torch.optim.AdamW,
                        _group_hp(_adam_hyper, ("lr", "betas", "eps", "weight_decay")),
                        lambda rng: dict(_adam_hyper(rng), weight_decay=float(
                            rng.uniform(0, 0.2)))))
op("Adadelta")(_torch_case("Adadelta", optim.Adadelta, torch.optim.Adadelta,
                           _group_hp(_adadelta_hyper, ("lr", "rho", "weight_decay")),
                           _adadelta_hyper))


# ----- numpy oracles of upstream's formulas -----

def _as_pairs(a):
    """A complex array as its (..., 2) real and imaginary parts in float64 (torch's
    view_as_real, which defines a complex parameter's update); a real one in float64."""
    return np.stack([a.real, a.imag], -1) if a.dtype.kind == "c" else a.astype(np.float64)


def _numpy_ref(init, groups, defaults, update):
    """An oracle running ``update(p, g, state, hp)`` (numpy, in place on ``p``) per parameter
    with its group's hyper-parameters; parameters without a gradient are skipped. A complex
    parameter is updated as its pairs of reals."""
    def start():
        ps = [_as_pairs(p) for p in init]
        states = [dict() for _ in init]
        hps = {}
        for idx, hp in groups:
            for i in idx:
                hps[i] = dict(defaults, **hp)

        def ref(grads):
            for i, g in enumerate(grads):
                if g is not None:
                    update(ps[i], _as_pairs(g), states[i], hps[i])
            return [p[..., 0] + 1j * p[..., 1] if p0.dtype.kind == "c" else p
                    for p, p0 in zip(ps, init)]
        return ref
    return start


def _adagrad_update(p, g, s, hp):
    # upstream: eps inside the square root (torch.optim.Adagrad adds it outside)
    s["step"] = s.get("step", 0) + 1
    g = g + hp.get("weight_decay", 0.0) * p
    s["sum"] = s.get("sum", 0) + g * g
    clr = hp["lr"] / (1 + (s["step"] - 1) * hp.get("lr_decay", 0.0))
    p -= clr * g / np.sqrt(s["sum"] + hp.get("eps", 1e-10))


def _lamb_update(p, g, s, hp, bias_correction, always_adapt):
    b1, b2 = hp.get("betas", (0.9, 0.999))
    s["step"] = t = s.get("step", 0) + 1
    s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
    c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
    u = (s["m"] / c1) / (np.sqrt(s["v"] / c2) + hp.get("eps", 1e-8))
    wd = hp.get("weight_decay", 0.0)
    if wd:
        u = u + wd * p
    ratio = 1.0
    pn, un = np.linalg.norm(p), np.linalg.norm(u)
    if (always_adapt or wd > 0) and pn > 0 and un > 0:
        ratio = pn / un
    p -= hp["lr"] * ratio * u


@op("Adagrad")
def _adagrad(rng):
    init = _draw_params(rng)
    d = dict(lr=_lr(rng))
    if rng.random() < 0.5:
        d["lr_decay"] = float(rng.uniform(0, 0.5))
    if rng.random() < 0.5:
        d["eps"] = float(pick(rng, [1e-10, 1e-3, 0.1]))
    if rng.random() < 0.5:
        d["weight_decay"] = float(rng.uniform(0, 0.1))
    groups = _groups(rng, len(init), lambda r: {"lr": _lr(r)})
    steps = int(rng.integers(2, 6))
    desc = f"Adagrad({d}) groups={groups} steps={steps} params={[p.shape for p in init]}"
    return Check(desc, lambda: _wrap(desc, lambda: _run_steps(
        rng, lambda g: optim.Adagrad(g, **d),
        _numpy_ref(init, groups, d, _adagrad_update), init, groups, steps, d)))


@op("LAMB")
def _lamb(rng):
    init = _draw_params(rng)
    d = dict(lr=_lr(rng))
    if rng.random() < 0.5:
        d["betas"] = _betas(rng)
    if rng.random() < 0.5:
        d["weight_decay"] = float(pick(rng, [0.0, float(rng.uniform(0, 0.1))]))
    kw = dict(bias_correction=bool(rng.random() < 0.7), always_adapt=bool(rng.random() < 0.3))
    groups = _groups(rng, len(init), lambda r: {"weight_decay": float(r.uniform(0, 0.1))})
    steps = int(rng.integers(2, 6))
    desc = f"LAMB({d}, {kw}) groups={groups} steps={steps} params={[p.shape for p in init]}"
    return Check(desc, lambda: _wrap(desc, lambda: _run_steps(
        rng, lambda g: optim.LAMB(g, **d, **kw),
        _numpy_ref(init, groups, d, lambda p, g, s, hp: _lamb_update(p, g, s, hp, **kw)),
        init, groups, steps, d)))


# ----- learning-rate schedulers -----

def _sched_case(name, make_mge, make_torch):
    def gen(rng):
        lr = _lr(rng)
        hp = make_mge.draw(rng)
        epochs = int(rng.integers(1, 12))

        def check():
            p = Parameter(np.zeros(2, np.float32))
            mopt = optim.SGD([p], lr=lr)
            tp = torch.zeros(2, requires_grad=True)
            topt = torch.optim.SGD([tp], lr=lr)
            ms, ts = make_mge(mopt, hp), make_torch(topt, hp)
            for e in range(epochs):
                close(np.float64(mopt.param_groups[0]["lr"]),
                      np.float64(topt.param_groups[0]["lr"]), (1e-6, 1e-9),
                      f"{name}({hp}) lr={lr}: epoch {e}")
                if e == epochs // 2:  # the scheduler's state survives a round trip
                    sd = copy.deepcopy(ms.state_dict())
                    ms.load_state_dict(sd)
                mopt.step()
                topt.step()
                ms.step()
                ts.step()
            return "ok"
        return Check(f"{name}({hp}) lr={lr} epochs={epochs}", check)
    return gen


class _Multi:
    @staticmethod
    def draw(rng):
        ms = sorted(set(int(v) for v in rng.integers(1, 10, size=int(rng.integers(1, 4)))))
        return dict(milestones=ms, gamma=float(pick(rng, [0.1, float(rng.uniform(0.1, 0.9))])))

    def __call__(self, opt, hp):
        return optim.MultiStepLR(opt, **hp)


class _Cos:
    @staticmethod
    def draw(rng):
        return dict(T_max=int(rng.integers(1, 8)), eta_min=float(pick(rng, [0.0, 1e-3])))

    def __call__(self, opt, hp):
        return optim.CosineAnnealingLR(opt, **hp)


op("MultiStepLR", "scheduler")(_sched_case(
    "MultiStepLR", _Multi(), lambda o, hp: torch.optim.lr_scheduler.MultiStepLR(o, **hp)))
op("CosineAnnealingLR", "scheduler")(_sched_case(
    "CosineAnnealingLR", _Cos(), lambda o, hp: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, **hp)))


# ----- a whole training loop: layers, loss, GradManager and optimizer together -----

@op("training_loop")
def _training_loop(rng):
    import megengine.functional as F
    import megengine.module as M
    from megengine.autodiff import GradManager

    c, n, hw, classes = int(rng.integers(1, 3)), int(rng.integers(2, 4)), 4, 3
    name = pick(rng, ["SGD", "Adam", "AdamW"])
    hp = {"SGD": _sgd_hyper, "Adam": _adam_hyper, "AdamW": _adam_hyper}[name](rng)
    mom = float(rng.uniform(0.5, 0.95))
    steps = int(rng.integers(2, 4))
    xs = [values(rng, (n, c, hw, hw), "float32") for _ in range(steps)]
    ys = [rng.integers(0, classes, size=n).astype(np.int32) for _ in range(steps)]

    def check():
        # no conv bias: before a training-mode BN its gradient is zero up to rounding, which
        # Adam's normalisation turns into full steps of either sign
        def torch_net(dtype):
            return torch.nn.Sequential(
                torch.nn.Conv2d(c, 3, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(3, momentum=1 - mom), torch.nn.ReLU(), torch.nn.Flatten(),
                torch.nn.Linear(3 * hw * hw, classes)).to(dtype)

        # a float64 twin from the same float32 values: a tiny weight gradient carries a large
        # relative rounding error (seed 70129 at step 1: -3.12e-7 exactly, torch float32
        # -3.38e-7, megengine -3.19e-7), and Adam with eps 1e-8 keeps that relative error in a
        # step of ~lr, putting torch's float32 run 1.9e-3 off the exact training (megengine
        # 5.2e-4): megengine may be off torch float32 by twice torch's own error, besides the
        # tolerance
        tnet, exact = torch_net(torch.float32), torch_net(torch.float64)
        conv, bn = M.Conv2d(c, 3, 3, padding=1, bias=False), M.BatchNorm2d(3, momentum=mom)
        fc = M.Linear(3 * hw * hw, classes)
        pairs = [(conv.weight, tnet[0].weight), (bn.weight, tnet[1].weight), (bn.bias, tnet[1].bias),
                 (fc.weight, tnet[4].weight), (fc.bias, tnet[4].bias)]
        with torch.no_grad():
            for (p, t), e in zip(pairs, exact.parameters()):
                t.copy_(torch.tensor(values(rng, tuple(t.shape), "float32", -0.5, 0.5)))
                e.copy_(t)
                p.set_value(t.numpy().reshape(p.shape))
        params = [p for p, _ in pairs]
        opt = getattr(optim, name)(params, **hp)
        topt = getattr(torch.optim, name)(tnet.parameters(), **hp)
        eopt = getattr(torch.optim, name)(exact.parameters(), **hp)
        gm = GradManager().attach(params)

        def against(ours, theirs, truth, tol, what):
            theirs, truth = (t.detach().numpy() for t in (theirs, truth))
            own_error = float(np.abs(theirs.astype(np.float64) - truth).max(initial=0))
            close(ours.reshape(theirs.shape), theirs, (tol[0], tol[1] + 3 * own_error), what)

        for step, (x, y) in enumerate(zip(xs, ys)):
            with gm:
                h = F.relu(bn(conv(mge.tensor(x))))
                loss = F.nn.cross_entropy(fc(F.flatten(h, 1)), mge.tensor(y))
                gm.backward(loss)
            opt.step().clear_grad()
            tlosses = []
            for net, o, dtype in ((tnet, topt, torch.float32), (exact, eopt, torch.float64)):
                o.zero_grad()
                tloss = torch.nn.functional.cross_entropy(net(torch.tensor(x, dtype=dtype)),
                                                          torch.tensor(y).long())
                tloss.backward()
                o.step()
                tlosses.append(tloss)
            what = f"step {step}"
            against(loss.numpy(), *tlosses, (2e-4, 2e-5), f"{what}: loss")
            for k, ((p, t), e) in enumerate(zip(pairs, exact.parameters())):
                against(p.numpy(), t, e, (5e-4, 5e-5), f"{what}: parameter {k}")
            for stat in ("running_mean", "running_var"):
                against(getattr(bn, stat).numpy(), getattr(tnet[1], stat),
                        getattr(exact[1], stat), (5e-4, 5e-5), f"{what}: {stat}")
        return "ok"
    desc = f"conv-bn-relu-linear, {name}({hp}), BN momentum {mom:.3f}, x{(n, c, hw, hw)}, " \
           f"{steps} steps"
    return Check(desc, lambda: _wrap(desc, check))
