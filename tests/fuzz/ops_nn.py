"""Fuzz generators for F.nn: activations, softmax/logsoftmax, losses, normalizations,
convolution and pooling (random stride/padding/dilation/groups), interpolate, pad, one_hot."""
import numpy as np
import torch
import torch.nn.functional as TF

import megengine.functional as F

from .gen import Case, like, pick, registry, shape, values

OPS, op = registry()


# ----- activations -----

ACT = {
    "relu": (F.relu, torch.relu),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2)),
    "relu6": (F.relu6, TF.relu6),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "hsigmoid": (F.hsigmoid, TF.hardsigmoid),
    "hswish": (F.hswish, TF.hardswish),
    "gelu": (F.gelu, TF.gelu),
    "silu": (F.silu, TF.silu),
    "softplus": (F.softplus, TF.softplus),
    "logsigmoid": (F.logsigmoid, TF.logsigmoid),
}


def _act_gen(name):
    mfn, tfn = ACT[name]

    def gen(rng):
        shp = shape(rng)
        dt = pick(rng, ["float32", "float32", "float16"])
        x = values(rng, shp, dt, -8, 8)
        # no values at the kinks (0, -3, 3, 6), where the two frameworks may pick other
        # subgradients
        x = np.where(np.abs(np.round(x) - x) < 1e-2, x + 0.05, x).astype(dt)
        return Case(f"{name}(x{shp} {dt})", [x], mfn, tfn,
                    tol=(2e-2, 2e-2) if dt == "float16" else (1e-4, 1e-5))
    return gen


for _n in ACT:
    op(_n, "activation")(_act_gen(_n))


@op("prelu", "activation")
def _prelu(rng):
    shp = (int(rng.integers(1, 4)),) + shape(rng, 1, 3)
    c = shp[1]
    x = values(rng, shp, "float32")
    w = values(rng, (pick(rng, [1, c]),), "float32", 0.05, 0.5)
    # upstream's prelu is max(x, 0) + w * min(x, 0) with numpy broadcasting (a (C,) weight
    # meets the last axis; M.PReLU reshapes it), not torch's per-channel rule
    return Case(f"prelu(x{shp}, w{w.shape})", [x, w], F.prelu,
                lambda a, ww: torch.where(a > 0, a, a * ww))


def _softmax_axis(ndim):
    return 0 if ndim in (0, 1, 3) else 1  # upstream's default axis


@op("softmax", "activation")
def _softmax(rng):
    shp = shape(rng, 1, 4)
    axis = None if rng.random() < 0.3 else int(rng.integers(-len(shp), len(shp)))
    x = values(rng, shp, pick(rng, ["float32", "float32", "float16"]), -5, 5)
    ax = _softmax_axis(len(shp)) if axis is None else axis
    return Case(f"softmax(x{shp} {x.dtype}, axis={axis})", [x], lambda a: F.softmax(a, axis),
                lambda a: torch.softmax(a, ax), tol=(2e-2, 2e-3) if x.dtype == np.float16
                else None)


@op("logsoftmax", "activation")
def _logsoftmax(rng):
    shp = shape(rng, 1, 4)
    axis = int(rng.integers(-len(shp), len(shp)))
    x = values(rng, shp, pick(rng, ["float32", "float32", "float16"]), -5, 5)
    return Case(f"logsoftmax(x{shp} {x.dtype}, axis={axis})", [x],
                lambda a: F.logsoftmax(a, axis), lambda a: torch.log_softmax(a, axis),
                tol=(2e-2, 2e-2) if x.dtype == np.float16 else None)


# ----- losses -----

_RED = ("mean", "sum", "none")


def _reduce(t, reduction):
    return t.mean() if reduction == "mean" else t.sum() if reduction == "sum" else t


@op("l1_loss", "loss")
def _l1(rng):
    shp = shape(rng, 1, 3, zero=False)
    red = pick(rng, _RED)
    p, y = values(rng, shp, "float32"), values(rng, shp, "float32")
    return Case(f"l1_loss({shp}, {red})", [p, y], lambda a, b: F.nn.l1_loss(a, b, red),
                lambda a, b: _l1_torch(a, b, red))


def _l1_torch(a, b, red):
    if red == "mean" and not a.is_floating_point():
        # (torch's mean refuses integers; upstream averages the integer |pred - label|, which
        # wraps as torch's does: the integer mode's second oracle)
        t = TF.l1_loss(a, b, reduction="none")
        return t.sum() / t.numel()
    return TF.l1_loss(a, b, reduction=red)


@op("square_loss", "loss")
def _square(rng, name="square_loss"):
    shp = shape(rng, 1, 3, zero=False)
    red = pick(rng, _RED)
    p, y = values(rng, shp, "float32"), values(rng, shp, "float32")
    return Case(f"{name}({shp}, {red})", [p, y], lambda a, b: getattr(F.nn, name)(a, b, red),
                lambda a, b: TF.mse_loss(a, b, reduction=red))


@op("mse_loss", "loss")
def _mse(rng):
    return _square(rng, "mse_loss")


@op("smooth_l1_loss", "loss")
def _smooth_l1(rng):
    shp = shape(rng, 1, 3, zero=False)
    red, beta = pick(rng, _RED), pick(rng, [1.0, 0.5, 2.0])
    p, y = values(rng, shp, "float32"), values(rng, shp, "float32")
    return Case(f"smooth_l1_loss({shp}, beta={beta}, {red})", [p, y],
                lambda a, b: F.nn.smooth_l1_loss(a, b, beta, red),
                lambda a, b: TF.smooth_l1_loss(a, b, reduction=red, beta=beta))


@op("binary_cross_entropy", "loss")
def _bce(rng):
    shp = shape(rng, 1, 3, zero=False)
    red, logits = pick(rng, _RED), bool(rng.random() < 0.5)
    p = values(rng, shp, "float32", -4, 4) if logits else values(rng, shp, "float32", 0.02, 0.98)
    y = values(rng, shp, "float32", 0, 1)
    # probabilities: upstream's formula, whose logs torch's clamps at -100 (p = 0 or 1, which
    # the integer mode draws: NaN or inf in upstream's and megengine's)
    t = (lambda a, b: TF.binary_cross_entropy_with_logits(a, b, reduction=red)) if logits else \
        (lambda a, b: _reduce(-(b * torch.log(a) + (1 - b) * torch.log(1 - a)), red))
    return Case(f"binary_cross_entropy({shp}, with_logits={logits}, {red})", [p, y],
                lambda a, b: F.nn.binary_cross_entropy(a, b, with_logits=logits, reduction=red),
                t)


@op("cross_entropy", "loss")
def _ce(rng):
    n, c = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    extra = shape(rng, 0, 2, zero=False, max_dim=3)
    red, logits = pick(rng, _RED), bool(rng.random() < 0.6)
    ls = pick(rng, [0, 0, 0.1, 0.3])
    pred = values(rng, (n, c) + extra, "float32", -3, 3)
    if not logits:
        pred = np.exp(pred) / np.exp(pred).sum(axis=1, keepdims=True)
        pred = pred.astype(np.float32)
    label = rng.integers(0, c, size=(n,) + extra).astype(np.int32)
    # the class axis anywhere (upstream's axis argument; torch's is 1); the label keeps the
    # other dims in order, so it is the same array
    axis = 1 if rng.random() < 0.6 else int(rng.integers(0, pred.ndim))
    pred = np.moveaxis(pred, 1, axis).copy()

    def t(p, y):
        p = torch.movedim(p, axis, 1)
        p = p.contiguous()  # torch's nll_loss backward refuses strided inputs
        logp = torch.log_softmax(p, 1) if logits else torch.log(p)
        return TF.nll_loss(logp, y.long(), reduction=red) * (1 - ls) + _reduce(
            -logp.mean(1), red) * ls
    return Case(f"cross_entropy(pred{pred.shape}, label{label.shape}, axis={axis}, "
                f"with_logits={logits}, label_smooth={ls}, {red})", [pred, label],
                lambda p, y: F.nn.cross_entropy(p, y, axis=axis, with_logits=logits,
                                                label_smooth=ls, reduction=red), t, diff=[0],
                tol=(2e-4, 2e-5))


@op("hinge_loss", "loss")
def _hinge(rng):
    shp = (int(rng.integers(1, 4)),) + shape(rng, 1, 3, zero=False)
    red, norm = pick(rng, _RED), pick(rng, ["L1", "L2"])
    p = values(rng, shp, "float32")
    y = np.where(rng.random(shp) < 0.5, -1, 1).astype(np.float32)

    def t(a, b):
        m = torch.relu(1 - a * b)
        return _reduce((m if norm == "L1" else m * m).sum(1), red)
    return Case(f"hinge_loss({shp}, {norm}, {red})", [p, y],
                lambda a, b: F.nn.hinge_loss(a, b, norm, red), t, diff=[0])


# ----- normalization -----
# (no broadcast layouts: a broadcast makes a normalized group constant, where the input
# gradient is a sum of terms ~1/sqrt(eps) that cancel to 0, leaving rounding noise ~1e-4 in
# both frameworks)

@op("layer_norm", "normalization")
def _layer_norm(rng):
    shp = shape(rng, 1, 4, zero=False)
    k = int(rng.integers(1, len(shp) + 1))
    ns = shp[len(shp) - k:]
    affine = bool(rng.random() < 0.6)
    # a spread inside each normalized group: a nearly constant group makes the gradient
    # ill-conditioned (torch's and our float32 results then differ from float64 by ~1e-3)
    # (and a one-element group has gradient 0 times 1/sqrt(eps): torch's rounding noise is
    # amplified ~300x there)
    m = int(np.prod(ns))
    x = (values(rng, shp, "float32", -0.3, 0.3)
         + rng.permutation(m).reshape(ns).astype(np.float32))
    tol = (5e-4, 2e-4) if m > 1 else (5e-4, 1e-3)
    w, b = values(rng, ns, "float32"), values(rng, ns, "float32")
    return Case(f"layer_norm(x{shp}, {ns}, affine={affine})", [x, w, b],
                lambda a, ww, bb: F.nn.layer_norm(a, ns, affine, ww if affine else None,
                                                  bb if affine else None),
                lambda a, ww, bb: TF.layer_norm(a, ns, ww if affine else None,
                                                bb if affine else None),
                diff=[0, 1, 2] if affine else [0], tol=tol, bcast=False)


@op("group_norm", "normalization")
def _group_norm(rng):
    g = int(rng.integers(1, 4))
    c = g * int(rng.integers(1, 3))
    shp = (int(rng.integers(1, 3)), c) + shape(rng, 0, 2, zero=False)
    x = values(rng, shp, "float32")
    w, b = values(rng, (c,), "float32"), values(rng, (c,), "float32")
    tol = (5e-4, 2e-4)
    if c // g * int(np.prod(shp[2:])) <= 2:
        # groups of one or two values normalise to 0 or about -1 and 1 whatever they are: x's
        # exact gradient is 0 or what eps leaves of it, and ATen's closed-form backward (ours,
        # torch's F.group_norm bit for bit) computes it as the residue of terms up to
        # |dy * w| / sqrt(var + eps) (4 * 3 / 3.2e-3, about 3800) cancelling: a few float32
        # ulps of those (2.4e-4 each), where the reference's autograd subtracts the mean
        # exactly (seeds 50070: 1.1162 against 1.1172; 50093: 2.4e-4 against an exact 0)
        tol = (5e-3, 2e-3)
    return Case(f"group_norm(x{shp}, {g})", [x, w, b],
                lambda a, ww, bb: F.nn.group_norm(a, g, True, ww, bb),
                lambda a, ww, bb: _group_norm_ref(a, g, ww, bb), tol=tol, bcast=False)


def _group_norm_ref(x, g, w, b, eps=1e-5):
    # by hand: torch's group_norm refuses groups of one element, which upstream normalizes
    # (to the bias)
    y = x.reshape(x.shape[0], g, -1)
    y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, correction=0, keepdim=True) + eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return y.reshape(x.shape) * w.reshape(shape) + b.reshape(shape)


@op("instance_norm", "normalization")
def _instance_norm(rng):
    shp = (int(rng.integers(1, 3)), int(rng.integers(1, 4))) + shape(rng, 1, 2, zero=False)
    if int(np.prod(shp[2:])) == 1:
        shp = shp[:2] + (2,) + shp[3:]
    c = shp[1]
    x = values(rng, shp, "float32")
    w, b = values(rng, (c,), "float32"), values(rng, (c,), "float32")
    tol = (5e-4, 2e-4)
    if int(np.prod(shp[2:])) == 2:
        # two values normalise to about -1 and 1 whatever they are: x's gradient is the
        # cancellation residue of terms var/eps times larger, and ATen's group norm kernel
        # (ours, and torch's F.group_norm bit for bit) keeps fewer of its bits than torch's
        # instance_norm, which runs batch norm's (seed 30218: 0.4% apart)
        tol = (5e-3, 1e-3)
    return Case(f"instance_norm(x{shp})", [x, w, b],
                lambda a, ww, bb: F.nn.instance_norm(a, True, ww, bb),
                lambda a, ww, bb: TF.instance_norm(a, weight=ww, bias=bb), tol=tol,
                bcast=False)


@op("batch_norm", "normalization")
def _batch_norm(rng):
    c = int(rng.integers(1, 4))
    shp = (int(rng.integers(2, 4)), c) + shape(rng, 0, 2, zero=False)
    training = bool(rng.random() < 0.5)
    pshape = (1, c) + (1,) * (len(shp) - 2)
    x = values(rng, shp, "float32")
    w, b = values(rng, pshape, "float32"), values(rng, pshape, "float32")
    rm, rv = values(rng, pshape, "float32"), values(rng, pshape, "float32", 0.5, 2)

    def m(a, ww, bb):
        if training:
            return F.nn.batch_norm(a, None, None, ww, bb, training=True)
        return F.nn.batch_norm(a, like(rm, a), like(rv, a), ww, bb, training=False)
    return Case(f"batch_norm(x{shp}, training={training})", [x, w, b], m,
                # every operand .contiguous(): torch 2.13's CPU batch_norm backward returns wrong
                # input gradients for a channels-last view with a size-1 spatial dim (shape
                # (3, 3, 1, 3), strides (9, 1, 1, 3)), and, in inference, for a contiguous input
                # with a strided weight (it reads the weight as if contiguous). The fuzzer found
                # both; ours agrees with the by-hand gradient g * w / sqrt(var + eps)
                lambda a, ww, bb: TF.batch_norm(
                    a.contiguous(), like(rm, a).ravel(), like(rv, a).ravel(),
                    ww.reshape(-1).contiguous(), bb.reshape(-1).contiguous(), training=training),
                tol=(5e-4, 2e-4), bcast=False)


# ----- convolution and pooling -----

def _conv_gen(nd, transposed=False):
    def gen(rng):
        groups = pick(rng, [1, 1, 2, 3])
        cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        k = tuple(int(v) for v in rng.integers(1, 4, size=nd))
        s = tuple(int(v) for v in rng.integers(1, 3, size=nd))
        d = tuple(int(v) for v in rng.integers(1, 3, size=nd))
        p = tuple(int(v) for v in rng.integers(0, 3, size=nd))
        n = int(rng.integers(1, 3))
        sp = tuple(int(v) for v in rng.integers(1, 7, size=nd))
        dt = "float16" if rng.random() < 0.15 else "float32"  # float16: forward only
        x = values(rng, (n, cin) + sp, dt)
        if transposed:
            wshape = (cin, cout // groups) + k
            op_ = pick(rng, [0, 0, 1])
            op_ = tuple(min(op_, max(si, di) - 1) for si, di in zip(s, d))
        else:
            wshape = (cout, cin // groups) + k
        w = values(rng, wshape, dt)
        b = values(rng, (1, cout) + (1,) * nd, dt)
        if transposed:
            out = [(i - 1) * si - 2 * pi + di * (ki - 1) + oi + 1
                   for i, si, pi, di, ki, oi in zip(sp, s, p, d, k, op_)]
        else:
            out = [(i + 2 * pi - di * (ki - 1) - 1) // si + 1
                   for i, si, pi, di, ki in zip(sp, s, p, d, k)]
        refuse = "no output" if min(out) <= 0 else None
        one = lambda t: t[0] if nd == 1 else t  # noqa: E731
        if transposed:
            mf = lambda a, ww, bb: F.conv_transpose2d(a, ww, bb, s, p, op_, d, groups)  # noqa
            tf = lambda a, ww, bb: TF.conv_transpose2d(a, ww, bb.reshape(-1), s, p, op_,  # noqa
                                                       groups, d)
            name = "conv_transpose2d"
        else:
            mfn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
            tfn = {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}[nd]
            mf = lambda a, ww, bb: mfn(a, ww, bb, one(s), one(p), one(d), groups)  # noqa
            # (the weight with fresh strides: torch 2.13's CPU conv1d of a (2, 2, 1) input by a
            # (2, 2, 1) weight of strides (2, 1, 2), a transposed view, with stride 2, padding
            # 1 and dilation 2 crashed the process (segmentation fault; .contiguous() keeps
            # those strides: a size-1 axis): --int seed 101475. This side computes it.)
            tf = lambda a, ww, bb: tfn(a, ww.clone(memory_format=torch.contiguous_format),  # noqa
                                       bb.reshape(-1), s, p, d, groups)
            name = f"conv{nd}d"
        return Case(f"{name}(x{x.shape} {dt}, w{wshape}, stride={s}, padding={p}, "
                    f"dilation={d}, groups={groups})", [x, w, b], mf, tf,
                    tol=(2e-4, 2e-4) if dt == "float32" else (2e-2, 3e-2), refuse=refuse)
    return gen


op("conv1d", "conv")(_conv_gen(1))
op("conv2d", "conv")(_conv_gen(2))
op("conv3d", "conv")(_conv_gen(3))
op("conv_transpose2d", "conv")(_conv_gen(2, transposed=True))


@op("max_pool2d", "pool")
def _max_pool(rng):
    k = tuple(int(v) for v in rng.integers(1, 4, size=2))
    s = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(1, 3, size=2))
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    shp = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) + tuple(
        int(v) for v in rng.integers(max(k), 7, size=2))
    dt = pick(rng, [np.float32, np.float32, np.float16])
    x = (rng.permutation(int(np.prod(shp))).reshape(shp) * 0.1 / max(1, np.prod(shp) / 500)
         ).astype(dt)  # no ties (float16 holds the small ones exactly enough)
    return Case(f"max_pool2d(x{shp}, {k}, stride={s}, padding={p})", [x],
                lambda a: F.nn.max_pool2d(a, k, s, p),
                lambda a: TF.max_pool2d(a, k, s if s is not None else k, p), bcast=False)


@op("avg_pool2d", "pool")
def _avg_pool(rng):
    k = tuple(int(v) for v in rng.integers(1, 4, size=2))
    s = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(1, 3, size=2))
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    mode = pick(rng, ["average_count_exclude_padding", "average"])
    shp = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) + tuple(
        int(v) for v in rng.integers(max(k), 7, size=2))
    x = values(rng, shp, pick(rng, ["float32", "float32", "float16"]))
    return Case(f"avg_pool2d(x{shp}, {k}, stride={s}, padding={p}, mode={mode})", [x],
                lambda a: F.nn.avg_pool2d(a, k, s, p, mode),
                lambda a: TF.avg_pool2d(a, k, s if s is not None else k, p,
                                        count_include_pad=mode == "average"))


@op("adaptive_avg_pool2d", "pool")
def _adaptive_avg(rng):
    shp = (1, int(rng.integers(1, 3))) + tuple(int(v) for v in rng.integers(1, 8, size=2))
    o = tuple(int(rng.integers(1, n + 1)) for n in shp[2:])
    x = values(rng, shp, "float32")
    stride = tuple(n // m for n, m in zip(shp[2:], o))
    kernel = tuple(n - (m - 1) * st for n, m, st in zip(shp[2:], o, stride))
    return Case(f"adaptive_avg_pool2d(x{shp}, {o})", [x],
                lambda a: F.nn.adaptive_avg_pool2d(a, o),
                lambda a: TF.avg_pool2d(a, kernel, stride))
    # upstream's windows, not torch's adaptive bins: stride = in // out and
    # window = in - (out - 1) * stride


# ----- resampling, padding, one_hot -----

@op("interpolate", "vision")
def _interpolate(rng):
    mode = pick(rng, ["nearest", "bilinear", "linear", "bicubic"])
    nsp = 1 if mode == "linear" else 2
    shp = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) + tuple(
        int(v) for v in rng.integers(1, 6, size=nsp))
    # upstream takes align_corners only in the linear modes (None elsewhere)
    align = None if mode in ("nearest", "bicubic") else bool(rng.random() < 0.5)
    if rng.random() < 0.5:
        size = tuple(int(v) for v in rng.integers(1, 9, size=nsp))
        scale = None
    else:
        size, scale = None, float(pick(rng, [0.5, 2.0, 1.5, 3.0]))
    x = values(rng, shp, pick(rng, ["float32", "float32", "float16"]))
    tm = mode

    def t(a):
        return TF.interpolate(a, size=size, scale_factor=scale, mode=tm, align_corners=align,
                              recompute_scale_factor=True if scale else None)
    return Case(f"interpolate(x{shp}, size={size}, scale_factor={scale}, mode={mode}, "
                f"align_corners={align})", [x],
                lambda a: F.vision.interpolate(a, size, scale, mode, align), t,
                tol=(2e-4, 2e-4) if x.dtype == np.float32 else (2e-2, 3e-2), rounds=True)


@op("pad", "shape")
def _pad(rng):
    shp = shape(rng, 1, 3, zero=False)
    mode = pick(rng, ["constant", "edge", "reflect"])
    k = int(rng.integers(1, len(shp) + 1))
    widths = []
    for n in shp[:k]:
        hi = n - 1 if mode == "reflect" else 3
        widths.append((int(rng.integers(0, hi + 1)), int(rng.integers(0, hi + 1))))
    cval = float(pick(rng, [0.0, 1.5]))
    x = values(rng, shp, pick(rng, ["float32", "float32", "float16", "int32"]))
    if x.dtype == np.int32:
        cval = int(cval)
    np_mode = {"constant": "constant", "edge": "edge", "reflect": "reflect"}[mode]

    def t(a):
        if mode == "constant":
            flat = []
            for b, e in reversed(widths + [(0, 0)] * (len(shp) - k)):
                flat += [b, e]
            return TF.pad(a, flat, value=cval)
        for ax, (b, e) in enumerate(widths):  # edge/reflect: gather rows by numpy's index map
            idx = np.pad(np.arange(shp[ax]), (b, e), mode=np_mode)
            a = a.index_select(ax, torch.from_numpy(idx))
        return a
    # (writes: the output is x's dtype, the fill cast into it: 1.5 pads a bool x with True and
    # an integer one with 1, which torch's pad on the float values does not show)
    return Case(f"pad(x{shp}, {widths}, mode={mode}, constant_value={cval})", [x],
                lambda a: F.nn.pad(a, widths, mode, cval), t, writes=0)


@op("one_hot", "indexing")
def _one_hot(rng):
    shp = shape(rng, 0, 3)
    c = int(rng.integers(1, 5))
    x = rng.integers(0, c, size=shp).astype(np.int32)
    return Case(f"one_hot(x{shp}, {c})", [x], lambda a: F.one_hot(a, c),
                lambda a: TF.one_hot(a.long(), c), dtypes=["int32"])


# ----- more of F.nn: linear, embedding, pixel_shuffle, adaptive max pooling -----

@op("linear", "matmul")
def _linear(rng):
    lead = shape(rng, 0, 2)
    fin, fout = int(rng.integers(0, 5)), int(rng.integers(1, 5))
    has_bias = bool(rng.random() < 0.6)
    x = values(rng, lead + (fin,), "float32")
    w, b = values(rng, (fout, fin), "float32"), values(rng, (fout,), "float32")
    return Case(f"linear(x{x.shape}, w{w.shape}, bias={has_bias})", [x, w, b],
                lambda a, ww, bb: F.nn.linear(a, ww, bb if has_bias else None),
                lambda a, ww, bb: TF.linear(a, ww, bb if has_bias else None),
                diff=[0, 1, 2] if has_bias else [0, 1], tol=(2e-4, 2e-4))


@op("embedding", "indexing")
def _embedding(rng):
    n, d = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    ishape = shape(rng, 0, 3)
    idx = rng.integers(0, n, size=ishape).astype(np.int32)
    pad = None if rng.random() < 0.7 else int(rng.integers(0, n))
    w = values(rng, (n, d), "float32")
    return Case(f"embedding(idx{ishape}, w{w.shape}, padding_idx={pad})", [idx, w],
                lambda i, ww: F.nn.embedding(i, ww, padding_idx=pad),
                lambda i, ww: TF.embedding(i.long(), ww, padding_idx=pad), diff=[1])


@op("pixel_shuffle", "shape")
def _pixel_shuffle(rng):
    r = int(rng.integers(1, 4))
    shp = shape(rng, 0, 2, zero=False, max_dim=2) + (int(rng.integers(1, 3)) * r * r,) + tuple(
        int(v) for v in rng.integers(1, 4, size=2))
    x = values(rng, shp, "float32")
    return Case(f"pixel_shuffle(x{shp}, {r})", [x], lambda a: F.nn.pixel_shuffle(a, r),
                lambda a: TF.pixel_shuffle(a, r))


@op("adaptive_max_pool2d", "pool")
def _adaptive_max(rng):
    shp = (1, int(rng.integers(1, 3))) + tuple(int(v) for v in rng.integers(1, 8, size=2))
    o = tuple(int(rng.integers(1, n + 1)) for n in shp[2:])
    x = (rng.permutation(int(np.prod(shp))).reshape(shp) * 0.1).astype(np.float32)  # no ties
    stride = tuple(n // m for n, m in zip(shp[2:], o))
    kernel = tuple(n - (m - 1) * st for n, m, st in zip(shp[2:], o, stride))
    return Case(f"adaptive_max_pool2d(x{shp}, {o})", [x],
                lambda a: F.nn.adaptive_max_pool2d(a, o),
                lambda a: TF.max_pool2d(a, kernel, stride), bcast=False)  # upstream's windows
