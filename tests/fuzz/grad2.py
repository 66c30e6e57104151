"""Fuzz generators for second-order autodiff: random chains of elementwise, matmul, reduction
and shape ops, differentiated twice by nested GradManagers, against
torch.autograd.grad(create_graph=True)."""
import numpy as np
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from .gen import Check, Mismatch, close, registry, values

OPS, op = registry("grad2")


# name -> (megengine, torch); the same formula on both sides, smooth on all reals (or with
# kinks that random inputs do not hit), so the Hessians exist where they are drawn
UNARY = {
    "sin": (F.sin, torch.sin),
    "tanh": (F.tanh, torch.tanh),
    "exp": (lambda x: F.exp(x * 0.3), lambda x: torch.exp(x * 0.3)),
    "log1p_sq": (lambda x: F.log(1 + x * x), lambda x: torch.log(1 + x * x)),
    "sqrt1": (lambda x: F.sqrt(1 + x * x), lambda x: torch.sqrt(1 + x * x)),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "softplus": (F.softplus, TF.softplus),
    "gelu": (F.gelu, TF.gelu),
    "silu": (F.silu, TF.silu),
    "erf": (F.erf, torch.erf),
    "square": (lambda x: x * x, lambda x: x * x),
    "cube": (lambda x: x ** 3, lambda x: x ** 3),
    "abs_pow": (lambda x: F.abs(x) ** 1.5, lambda x: x.abs() ** 1.5),
    "relu_sq": (lambda x: F.relu(x) ** 2, lambda x: torch.relu(x) ** 2),
    "sum0": (lambda x: F.sum(x, axis=0, keepdims=True), lambda x: x.sum(0, keepdim=True)),
    "mean1": (lambda x: F.mean(x, axis=1, keepdims=True), lambda x: x.mean(1, keepdim=True)),
    "max1": (lambda x: F.max(x, axis=1, keepdims=True), lambda x: x.max(1, keepdim=True)[0]),
    "prod0": (lambda x: F.prod(x, axis=0, keepdims=True), lambda x: x.prod(0, keepdim=True)),
    "softmax1": (lambda x: F.softmax(x, axis=1), lambda x: torch.softmax(x, 1)),
    "logsoftmax0": (lambda x: F.logsoftmax(x, axis=0), lambda x: torch.log_softmax(x, 0)),
    "logsumexp1": (lambda x: F.logsumexp(x, axis=1, keepdims=True),
                   lambda x: torch.logsumexp(x, 1, keepdim=True)),
    "norm1": (lambda x: F.norm(x, axis=1, keepdims=True),
              lambda x: torch.linalg.vector_norm(x, dim=1, keepdim=True)),
    "var0": (lambda x: F.var(x, axis=0, keepdims=True),
             lambda x: x.var(0, unbiased=False, keepdim=True)),
    "transpose": (lambda x: F.transpose(x, (1, 0)), lambda x: x.t()),
    "flip": (lambda x: F.flip(x, 1), lambda x: torch.flip(x, (1,))),
    "slice": (lambda x: x[:, ::2], lambda x: x[:, ::2]),
}

BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / (1 + b * b), lambda a, b: a / (1 + b * b)),
    "maximum": (F.maximum, torch.maximum),
    "pow": (lambda a, b: (1 + a * a) ** (b * 0.5), lambda a, b: (1 + a * a) ** (b * 0.5)),
    "atan2": (lambda a, b: F.atan2(a, 1 + b * b), lambda a, b: torch.atan2(a, 1 + b * b)),
}


def _out_shape(name, s):
    if name in ("sum0", "prod0", "var0"):
        return (1, s[1])
    if name in ("mean1", "max1", "logsumexp1", "norm1"):
        return (s[0], 1)
    if name == "transpose":
        return (s[1], s[0])
    if name == "slice":
        return (s[0], (s[1] + 1) // 2)
    return s


def _draw_program(rng, n_inputs, shapes):
    """A list of steps (kind, name, operand indices); node i < n_inputs is input i."""
    shapes = list(shapes)
    prog = []
    for _ in range(int(rng.integers(2, 6))):
        r = rng.random()
        a = int(rng.integers(len(shapes)))
        if r < 0.15:  # matmul with a node whose rows fit, else with a's own transpose
            fits = [j for j, s in enumerate(shapes) if s[0] == shapes[a][1]]
            if fits:
                b = int(fits[int(rng.integers(len(fits)))])
                prog.append(("matmul", "matmul", (a, b)))
                shapes.append((shapes[a][0], shapes[b][1]))
            else:
                prog.append(("matmul", "gram", (a,)))
                shapes.append((shapes[a][0], shapes[a][0]))
            continue
        if r < 0.55:
            partners = [j for j, s in enumerate(shapes) if _bcast(s, shapes[a])]
            b = int(partners[int(rng.integers(len(partners)))])
            name = list(BINARY)[int(rng.integers(len(BINARY)))]
            if name == "sub" and a == b:  # exact zeros: norm's Hessian is undefined there
                name = "add"
            prog.append(("binary", name, (a, b)))
            shapes.append(tuple(np.broadcast_shapes(shapes[a], shapes[b])))
            continue
        name = list(UNARY)[int(rng.integers(len(UNARY)))]
        prog.append(("unary", name, (a,)))
        shapes.append(_out_shape(name, shapes[a]))
    return prog, shapes


def _bcast(s, t):
    try:
        np.broadcast_shapes(s, t)
        return True
    except ValueError:
        return False


# unary ops whose Hessian does not exist where their input is exactly zero (a row of zeros for
# norm1): such inputs arise exactly however the draw avoids them (logsoftmax0 of one row is 0,
# var0 of one row is 0, sub(a, a)), and there torch's second derivative is NaN (0 / 0) where
# megengine's is a finite one-sided value (seed 115927: norm1 of logsoftmax0 of a (1, 1) input)
_KINKED_AT_ZERO = {"norm1": lambda x: bool((x == 0).all(1).any()),
                   "abs_pow": lambda x: bool((x == 0).any())}


# a row's maximum held by several elements (a row broadcast from one value: maximum(x, y) of a
# column x above every y): upstream gives each tied element the whole gradient, as this fork
# does (docs/compatibility.rst), torch shares it (seed 117360: max1 of maximum((3, 1), (1, 2)))
_TIED = {"max1": lambda x: bool(((x == x.max(1, keepdim=True)[0]).sum(1) > 1).any())}


def _execute(prog, xs, side, weights, kinks=None):
    """Run ``prog`` on ``xs``; ``side`` 0 is megengine, 1 torch. The loss weighs every node
    that no later step uses (so each drawn branch matters) by a fixed random array. ``kinks``,
    a list, receives the names of the steps whose input sits where their Hessian is undefined
    (`_KINKED_AT_ZERO`), and "tied " + the name of those whose maximum is tied (`_TIED`)."""
    nodes = list(xs)
    for kind, name, args in prog:
        if kinks is not None and name in _KINKED_AT_ZERO and kind == "unary" \
                and _KINKED_AT_ZERO[name](nodes[args[0]].detach()):
            kinks.append(name)
        if kinks is not None and name in _TIED and kind == "unary" \
                and _TIED[name](nodes[args[0]].detach()):
            kinks.append("tied " + name)
        if kind == "unary":  # (the nn family's "unary" ops take several inputs)
            nodes.append(UNARY[name][side](*[nodes[i] for i in args]))
        elif kind == "binary":
            nodes.append(BINARY[name][side](nodes[args[0]], nodes[args[1]]))
        elif name == "matmul":
            nodes.append(nodes[args[0]] @ nodes[args[1]])
        else:
            a = nodes[args[0]]
            nodes.append(a @ (F.transpose(a, (1, 0)) if side == 0 else a.t()))
    used = {i for _, _, args in prog for i in args}
    loss = 0
    for i, w in weights.items():
        if i not in used:
            loss = loss + (nodes[i] * (mge.tensor(w) if side == 0 else torch.tensor(w))).sum()
    return loss


def _check(desc, prog, inputs, weights, vs, tol):
    # megengine: an inner GradManager's gradient, recorded by the outer one (upstream's
    # nested pattern), then the outer gradient of <grad, v> (a Hessian-vector product)
    ps = [mge.Parameter(a) for a in inputs]
    outer, inner = GradManager().attach(ps), GradManager().attach(ps)
    with outer:
        with inner:
            inner.backward(_execute(prog, ps, 0, weights))
        firsts = [p.grad for p in ps]
        for p in ps:
            p.grad = None
        hv_loss = 0
        for g, v in zip(firsts, vs):
            if g is not None:
                hv_loss = hv_loss + (g * mge.tensor(v)).sum()
        if isinstance(hv_loss, mge.Tensor):
            outer.backward(hv_loss)
    ts = [torch.tensor(a, requires_grad=True) for a in inputs]
    kinks = []
    tg = torch.autograd.grad(_execute(prog, ts, 1, weights, kinks), ts, create_graph=True,
                             allow_unused=True)
    if any(k.startswith("tied ") for k in kinks):
        return "tied maximum"  # (torch's rule for ties is not upstream's: nothing to compare)
    terms = [(g * torch.tensor(v)).sum() for g, v in zip(tg, vs) if g is not None]
    hv = [None] * len(ts)
    if terms and any(t.requires_grad for t in terms):
        hv = torch.autograd.grad(sum(terms), ts, allow_unused=True)
    for k, (g, t) in enumerate(zip(firsts, tg)):
        want = np.zeros(inputs[k].shape, np.float32) if t is None else t.detach().numpy()
        got = np.zeros(inputs[k].shape, np.float32) if g is None else g.numpy()
        close(got, want, _scaled(tol, want), f"{desc}: first-order grad of input {k}")
    if kinks:
        return "undefined Hessian"  # (the first-order gradients exist there and were compared)
    for k, (p, h) in enumerate(zip(ps, hv)):
        want = np.zeros(inputs[k].shape, np.float32) if h is None else h.numpy()
        got = np.zeros(inputs[k].shape, np.float32) if p.grad is None else p.grad.numpy()
        close(got, want, _scaled(tol, want), f"{desc}: Hessian-vector product, input {k}")
    return "ok"


def _scaled(tol, want):
    # float32 chains of up to five ops: the absolute tolerance follows the gradient's size
    rtol, atol = tol
    return rtol, atol * max(1.0, float(np.abs(want).max()) if want.size else 1.0)


@op("second_order_chain")
def _chain(rng):
    n = int(rng.integers(1, 4))
    shapes = [tuple(int(v) for v in rng.integers(1, 4, size=2)) for _ in range(n)]
    # shared sizes make matmuls and broadcasts likely
    if n > 1 and rng.random() < 0.5:
        shapes[1] = (shapes[0][1], shapes[1][1])
    inputs = [values(rng, s, "float32", -1.5, 1.5) for s in shapes]
    prog, all_shapes = _draw_program(rng, n, shapes)
    weights = {i: values(rng, s, "float32", -1, 1) for i, s in enumerate(all_shapes)}
    vs = [values(rng, s, "float32", -1, 1) for s in shapes]
    desc = "loss of " + "; ".join(f"n{n + i} = {name}{args}" for i, (_, name, args)
                                  in enumerate(prog)) + f" inputs {shapes}"
    return Check(desc, lambda: _check(desc, prog, inputs, weights, vs, (2e-3, 2e-4)))


def _third(desc, inputs, mfn, tfn, tol):
    """d/dx of <d/dx <d/dx f, v>, w>: three nested GradManagers against torch."""
    ps = [mge.Parameter(a) for a in inputs]
    rng = np.random.default_rng(len(desc))
    vs = [values(rng, a.shape, "float32", -1, 1) for a in inputs]
    ws = [values(rng, a.shape, "float32", -1, 1) for a in inputs]
    g3, g2, g1 = (GradManager().attach(ps) for _ in range(3))
    with g3:
        with g2:
            with g1:
                g1.backward(mfn(*ps))
            first = [p.grad for p in ps]
            for p in ps:
                p.grad = None
            g2.backward(sum((g * mge.tensor(v)).sum() for g, v in zip(first, vs)))
        second = [p.grad for p in ps]
        for p in ps:
            p.grad = None
        if any(s is None or not s._tracked for s in second):
            raise Mismatch(f"{desc}: the second-order gradient was not recorded")
        g3.backward(sum((g * mge.tensor(w)).sum() for g, w in zip(second, ws)))
    ts = [torch.tensor(a, requires_grad=True) for a in inputs]
    t1 = torch.autograd.grad(tfn(*ts), ts, create_graph=True)
    t2 = torch.autograd.grad(sum((g * torch.tensor(v)).sum() for g, v in zip(t1, vs)), ts,
                             create_graph=True)
    t3 = torch.autograd.grad(sum((g * torch.tensor(w)).sum() for g, w in zip(t2, ws)), ts)
    for k, (p, t) in enumerate(zip(ps, t3)):
        want = t.numpy()
        close(p.grad.numpy(), want, _scaled(tol, want), f"{desc}: third-order, input {k}")
    return "ok"


@op("third_order")
def _third_order(rng):
    m, k, n = (int(v) for v in rng.integers(1, 4, size=3))
    a, b = values(rng, (m, k), "float32", -1, 1), values(rng, (k, n), "float32", -1, 1)
    name = list(("sin", "tanh", "exp", "sigmoid", "softplus", "cube"))[int(rng.integers(6))]
    mu, tu = UNARY[name]
    return Check(f"third order of sum({name}(a @ b) * a.sum()) a{a.shape} b{b.shape}",
                 lambda: _third(f"third order {name} a{a.shape} b{b.shape}", [a, b],
                                lambda x, y: (mu(x @ y) * x.sum()).sum(),
                                lambda x, y: (tu(x @ y) * x.sum()).sum(), (2e-3, 2e-4)))


# ----- second order through one nn op: its recorded backward (grad_graph) is what is tested -----

def _nn_cases(rng):
    """name -> (megengine fn, torch fn, input shapes); a few drawn hyper-parameters."""
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    h, w = int(rng.integers(3, 6)), int(rng.integers(3, 6))
    k = int(rng.integers(1, 4))
    s, p = int(rng.integers(1, 3)), int(rng.integers(0, k))
    o = int(rng.integers(1, 4))
    label = rng.integers(0, c, size=(n,))
    idx = rng.integers(0, c, size=(n, c, h, w)).astype(np.int32)
    x4 = (n, c, h, w)
    return {
        "conv2d": (lambda a, b: F.conv2d(a, b, stride=s, padding=p),
                   lambda a, b: TF.conv2d(a, b, stride=s, padding=p), [x4, (o, c, k, k)]),
        "conv_transpose2d": (lambda a, b: F.conv_transpose2d(a, b, stride=s, padding=p),
                             lambda a, b: TF.conv_transpose2d(a, b, stride=s, padding=p),
                             [x4, (c, o, k, k)]),
        "max_pool2d": (lambda a: F.max_pool2d(a, k, s, p // 2 if k > 1 else 0),
                       lambda a: TF.max_pool2d(a, k, s, p // 2 if k > 1 else 0), [x4]),
        "avg_pool2d": (lambda a: F.avg_pool2d(a, k, s, p // 2 if k > 1 else 0),
                       lambda a: TF.avg_pool2d(a, k, s, p // 2 if k > 1 else 0,
                                               count_include_pad=False), [x4]),
        "adaptive_avg_pool2d": (lambda a: F.adaptive_avg_pool2d(a, (2, 2)),
                                lambda a: TF.adaptive_avg_pool2d(a, (2, 2)), [x4]),
        "batch_norm_train": (
            lambda a, g, b: F.batch_norm(a, None, None, g.reshape(1, c, 1, 1),
                                         b.reshape(1, c, 1, 1), training=True),
            lambda a, g, b: TF.batch_norm(a, None, None, g, b, training=True),
            [(n + 1, c, h, w), (c,), (c,)]),
        "layer_norm": (lambda a, g, b: F.layer_norm(a, (h, w), True, g, b),
                       lambda a, g, b: TF.layer_norm(a, (h, w), g, b), [x4, (h, w), (h, w)]),
        "group_norm": (lambda a, g, b: F.group_norm(a, 1, True, g, b),
                       lambda a, g, b: TF.group_norm(a, 1, g, b), [x4, (c,), (c,)]),
        "instance_norm": (lambda a: F.instance_norm(a, affine=False),
                          lambda a: TF.instance_norm(a), [x4]),
        "interpolate": (lambda a: F.nn.interpolate(a, scale_factor=2, mode="bilinear",
                                                   align_corners=False),
                        lambda a: TF.interpolate(a, scale_factor=2, mode="bilinear",
                                                 align_corners=False), [x4]),
        "cross_entropy": (lambda a: F.nn.cross_entropy(a, mge.tensor(label.astype(np.int32))),
                          lambda a: TF.cross_entropy(a, torch.tensor(label)), [(n, c)]),
        "binary_cross_entropy": (
            lambda a, b: F.nn.binary_cross_entropy(a, F.sigmoid(b)),
            lambda a, b: TF.binary_cross_entropy_with_logits(a, torch.sigmoid(b)),
            [(n, c), (n, c)]),
        "smooth_l1_loss": (lambda a, b: F.nn.smooth_l1_loss(a, b),
                           lambda a, b: TF.smooth_l1_loss(a, b), [(n, c), (n, c)]),
        "linear": (lambda a, b, d: F.linear(a, b, d), TF.linear, [(n, c), (o, c), (o,)]),
        "gather": (lambda a: F.gather(a, 1, mge.tensor(idx)),
                   lambda a: torch.gather(a, 1, torch.tensor(idx).long()), [x4]),
        "pad": (lambda a: F.nn.pad(a, ((0, 0), (0, 0), (1, 2), (p, 1))),
                lambda a: TF.pad(a, (p, 1, 1, 2)), [x4]),
        "normalize": (lambda a: F.normalize(a, axis=1), lambda a: TF.normalize(a, dim=1),
                      [x4]),
        "cumsum": (lambda a: F.cumsum(a, 2), lambda a: torch.cumsum(a, 2), [x4]),
        "concat_split": (lambda a, b: F.concat([a, b], 1)[:, 1:],
                         lambda a, b: torch.cat([a, b], 1)[:, 1:], [x4, x4]),
        "batched_matmul": (lambda a, b: F.matmul(a, b), torch.matmul,
                           [(n, c, h), (n, h, w)]),
        "var_std": (lambda a: F.var(a, axis=1, keepdims=True) + F.std(a, axis=2, keepdims=True),
                    lambda a: (a.var(1, unbiased=False, keepdim=True)
                               + a.std(2, unbiased=False, keepdim=True)), [(n, c, h)]),
    }


def _nn_second_order(name):
    def gen(rng):
        mfn, tfn, shapes = _nn_cases(rng)[name]
        inputs = [values(rng, s, "float32", -1.5, 1.5) for s in shapes]
        if name.endswith("norm") or name == "batch_norm_train":
            inputs[0] = inputs[0] * 2  # spread: a group's variance far from eps
        if name == "normalize":  # |x| away from 0: x / |x|'s derivatives grow as 1 / |x|**3,
            # and a size-1 axis makes the Hessian float32 noise around 0
            inputs[0] = (np.sign(inputs[0]) * (0.3 + np.abs(inputs[0]))).astype(np.float32)
        out_shape = tuple(tfn(*[torch.tensor(a) for a in inputs]).shape)
        w = values(rng, out_shape, "float32", -1, 1)
        vs = [values(rng, a.shape, "float32", -1, 1) for a in inputs]
        # sin after the op: a linear op's Hessian is zero, its backward's backward still runs
        prog = [("unary", f"nn_{name}", tuple(range(len(inputs)))), ("unary", "sin",
                                                                      (len(inputs),))]
        fns = {f"nn_{name}": (mfn, tfn)}
        desc = f"second order of sum(w * sin({name}(inputs {[a.shape for a in inputs]})))"
        return Check(desc, lambda: _check_nn(desc, fns, prog, inputs, w, vs))
    return gen


def _check_nn(desc, fns, prog, inputs, w, vs):
    UNARY.update({k: (lambda *a, f=f: f(*a), lambda *a, t=t: t(*a)) for k, (f, t) in fns.items()})
    try:
        return _check(desc, prog, inputs, {len(inputs) + 1: w}, vs, (2e-3, 2e-4))
    finally:
        for k in fns:
            UNARY.pop(k, None)


for _name in _nn_cases(np.random.default_rng(0)):
    op(f"second_order_{_name}")(_nn_second_order(_name))
