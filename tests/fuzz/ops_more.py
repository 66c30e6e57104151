"""Fuzz generators for the public names no other fuzz file reached: 0.x aliases and legacy
helpers (F.legacy), complex numbers, bit shifts, erfcinv/isinf, shapeof, add_update and the
top-k accuracy metrics; each draws one call and returns a `gen.Case` (or `gen.Check`)."""
import numpy as np
import torch

import megengine as mge
import megengine.functional as F

from .gen import Case, Check, Mismatch, broadcast_partner, pick, registry, shape, values
from .ops_math import _binary_gen, _clip

OPS, op = registry()


# ----- 0.x names of fuzzed ops: drawn like the 1.x op, called by the old name -----

@op("arcsin", "elemwise")
def _arcsin(rng):
    return _inverse_trig(rng, "arcsin", torch.asin)


@op("arccos", "elemwise")
def _arccos(rng):
    return _inverse_trig(rng, "arccos", torch.acos)


def _inverse_trig(rng, name, tfn):
    shp = shape(rng)
    dt = pick(rng, ["float32", "float32", "float16"])
    x = values(rng, shp, dt, -0.95, 0.95)
    return Case(f"{name}(x{shp} {dt})", [x], getattr(F, name), tfn,
                tol=(2e-2, 2e-2) if dt == "float16" else None)


def _binary_alias(name, tfn):
    def gen(rng):
        dt = pick(rng, ["float32", "float32", "int32"])
        sa = shape(rng)
        sb = broadcast_partner(rng, sa)
        a = values(rng, sa, dt)
        b = values(rng, sb, dt, 1, 3) * np.where(rng.random(sb) < 0.5, -1, 1).astype(dt)
        if rng.random() < 0.3:  # a Python scalar operand
            s = pick(rng, [2, -1.5, 0.5])
            return Case(f"{name}(a{sa} {dt}, {s})", [a], lambda x: getattr(F, name)(x, s),
                        lambda x: tfn(x.to(torch.result_type(x, s)), s))
        return Case(f"{name}(a{sa} {dt}, b{sb} {dt})", [a, b], getattr(F, name), tfn)
    return gen


op("divide", "elemwise")(_binary_alias("divide", torch.true_divide))
op("multiply", "elemwise")(_binary_alias("multiply", torch.mul))
op("subtract", "elemwise")(_binary_gen("sub", alias="subtract"))
op("power", "elemwise")(_binary_gen("pow", alias="power"))


@op("clamp", "elemwise")
def _clamp(rng):
    return _clip(rng, "clamp")


@op("identity", "elemwise")
def _identity(rng):
    shp = shape(rng)
    dt = pick(rng, ["float32", "float32", "float16", "int32", "int8", "bool"])
    # 0.x's identity operator keeps the dtype (a bool stays bool), as 1.x's F.copy
    return Case(f"identity(x{shp} {dt})", [values(rng, shp, dt)], F.identity,
                lambda a: a.clone())


@op("top_k", "sorting")
def _top_k(rng):
    shp = shape(rng, 1, 2, zero=False)
    x = rng.permutation(int(np.prod(shp))).reshape(shp).astype(np.float32) * 0.5  # no ties
    k = int(rng.integers(1, shp[-1] + 1))
    desc = bool(rng.random() < 0.5)
    return Case(f"top_k(x{shp}, {k}, descending={desc})", [x],
                lambda a: F.top_k(a, k, descending=desc),
                lambda a: torch.topk(a, k, largest=desc, sorted=True),
                dtypes=["float32", "int32"], bcast=False)


@op("dimshuffle", "shape")
def _dimshuffle(rng):
    shp = shape(rng, 0, 4)
    perm = [int(i) for i in rng.permutation(len(shp))]
    pattern = list(perm)
    for _ in range(int(rng.integers(0, 3))):  # 'x' adds a size-1 axis (0.x's pattern)
        pattern.insert(int(rng.integers(0, len(pattern) + 1)), "x")
    if shp and rng.random() < 0.06:
        pattern = pattern + [perm[0]]  # an axis twice: refused by both
    x = values(rng, shp, pick(rng, ["float32", "int32"]))

    def t(a):
        y = torch.permute(a, [p for p in pattern if p != "x"])
        return y.reshape([1 if p == "x" else a.shape[p] for p in pattern])
    return Case(f"dimshuffle(x{shp}, {pattern})", [x], lambda a: F.dimshuffle(a, pattern), t)


# ----- 0.x helpers defined by their 1.x equivalents -----

@op("matrix_mul", "matmul")
def _matrix_mul(rng):
    m, k, n = (int(v) for v in rng.integers(0, 5, size=3))
    sa, sb = (m, k), (k, n)
    refuse = None
    if rng.random() < 0.15:  # 0.x's matrix_mul takes 2-d operands only (torch broadcasts)
        sa, refuse = (2,) + sa, "matrix_mul of a 3-d operand"
    a, b = values(rng, sa, "float32"), values(rng, sb, "float32")
    return Case(f"matrix_mul(a{sa}, b{sb})", [a, b], F.matrix_mul, torch.matmul,
                tol=(2e-4, 2e-4), refuse=refuse)


@op("batched_matrix_mul", "matmul")
def _batched_matrix_mul(rng):
    bs, m, k, n = (int(v) for v in rng.integers(0, 4, size=4))
    sa, sb = (bs, m, k), (bs, k, n)
    refuse = None
    r = rng.random()
    if r < 0.08:
        sb, refuse = (1, k, n), "a batch of 1 against another batch size (torch broadcasts)"
    elif r < 0.16:
        sb, refuse = (k, n), "a 2-d operand (torch broadcasts)"
    a, b = values(rng, sa, "float32"), values(rng, sb, "float32")
    return Case(f"batched_matrix_mul(a{sa}, b{sb})", [a, b], F.batched_matrix_mul,
                torch.matmul, tol=(2e-4, 2e-4), refuse=refuse if bs != 1 or r >= 0.08 else None)


def _axes_arg(rng, axes):
    return axes[0] if len(axes) == 1 and rng.random() < 0.5 else tuple(axes)


@op("add_axis", "shape")
def _add_axis(rng):
    shp = shape(rng, 0, 3)
    n = len(shp)
    axes = []
    for _ in range(int(rng.integers(1, 3))):  # 0.x inserts one position at a time
        n += 1
        axes.append(int(rng.integers(-n, n)))
    if rng.random() < 0.05:
        axes[-1] = n + 1  # out of range for the result: refused by both
    axis = _axes_arg(rng, axes)

    def t(a):
        for ax in axes:
            a = a.unsqueeze(ax)
        return a
    return Case(f"add_axis(x{shp}, {axis})", [values(rng, shp, "float32")],
                lambda a: F.add_axis(a, axis), t)


@op("remove_axis", "shape")
def _remove_axis(rng):
    base = shape(rng, 0, 3, zero=False)
    shp = list(base)
    for _ in range(int(rng.integers(1, 3))):
        shp.insert(int(rng.integers(0, len(shp) + 1)), 1)
    cur, axes = list(shp), []
    for _ in range(int(rng.integers(1, cur.count(1) + 1))):  # one axis at a time, as 0.x
        ones = [i for i, d in enumerate(cur) if d == 1]
        i = pick(rng, ones)
        axes.append(i - len(cur) if rng.random() < 0.4 else i)
        del cur[i]
    refuse = None
    if rng.random() < 0.1 and any(d != 1 for d in shp):
        axes = [next(i for i, d in enumerate(shp) if d != 1)]
        refuse = "removing an axis of size > 1 (torch's squeeze leaves it)"
    axis = _axes_arg(rng, axes)

    def t(a):
        for ax in axes:
            a = a.squeeze(ax)
        return a
    return Case(f"remove_axis(x{tuple(shp)}, {axis})", [values(rng, tuple(shp), "float32")],
                lambda a: F.remove_axis(a, axis), t, refuse=refuse)


@op("shapeof", "shape")
def _shapeof(rng):
    shp = shape(rng, 0, 4)
    axis = None if not shp or rng.random() < 0.5 else int(rng.integers(-len(shp), len(shp)))
    x = values(rng, shp, pick(rng, ["float32", "int32"]))

    def t(a):
        s = torch.tensor(list(a.shape), dtype=torch.int32)
        return s if axis is None else s[axis]
    return Case(f"shapeof(x{shp}, axis={axis})", [x], lambda a: F.shapeof(a, axis), t,
                dtypes=["int32"])


@op("add_update", "elemwise")
def _add_update(rng):
    shp = shape(rng, 0, 3)
    dshape = broadcast_partner(rng, shp)
    alpha, beta, bias = pick(rng, [1.0, 0.0, 0.5]), pick(rng, [1.0, -2.0, 0.25]), \
        pick(rng, [0.0, 0.0, 1.5])
    dest = values(rng, shp, "float32")
    if alpha == 0 and dest.size and rng.random() < 0.5:
        dest.flat[0] = np.inf  # alpha=0 drops the old value: inf * 0 must not leave a NaN
    delta = values(rng, dshape, pick(rng, ["float32", "float32", "int32"]))
    desc = (f"add_update(dest{shp}, delta{dshape} {delta.dtype}, alpha={alpha}, beta={beta}, "
            f"bias={bias})")
    try:
        fits = np.broadcast_shapes(shp, dshape) == shp
    except ValueError:
        fits = False

    def fn():
        d = mge.Parameter(dest.copy())
        try:
            out = F.add_update(d, mge.tensor(delta, dtype=delta.dtype), alpha=alpha, beta=beta,
                               bias=bias)
        except ValueError as e:
            if not fits and "does not broadcast to dest's shape" in str(e):
                return "error"
            raise
        if not fits:
            raise Mismatch(f"{desc}: accepted a delta that does not broadcast to dest")
        if out is not d:
            raise Mismatch(f"{desc}: returned a new tensor, not dest updated in place")
        want = beta * delta.astype(np.float64) + bias
        if alpha != 0:
            want = want + alpha * dest.astype(np.float64)
        want = np.broadcast_to(want, shp).astype(np.float32)
        if d.dtype != np.float32 or tuple(d.shape) != shp:
            raise Mismatch(f"{desc}: dest became {d.dtype} {d.shape}")
        if not np.allclose(d.numpy(), want, rtol=1e-6, atol=1e-6):
            raise Mismatch(f"{desc}: dest {d.numpy()}, want {want}")
        return "ok"
    return Check(desc, fn)


@op("triplet_margin_loss", "loss")
def _triplet(rng):
    n, d = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    margin, p = pick(rng, [1.0, 0.5, 2.0]), pick(rng, [2, 1, 3])
    a, pos, neg = (values(rng, (n, d), "float32") for _ in range(3))
    # away from the hinge's kink and from a zero distance (|.|^p has no gradient there in
    # torch's convention for p <= 1)
    dp = np.linalg.norm(a - pos, p, axis=1)
    dn = np.linalg.norm(a - neg, p, axis=1)
    neg = np.where((np.abs(dp - dn + margin) < 0.05)[:, None], neg + 0.3, neg).astype(np.float32)
    refuse = None
    if rng.random() < 0.05:
        p, refuse = 0, "p must be > 0"

    def t(x, y, z):
        return torch.relu(torch.linalg.vector_norm(x - y, p, 1)
                          - torch.linalg.vector_norm(x - z, p, 1) + margin).mean()
    return Case(f"triplet_margin_loss(({n}, {d}), margin={margin}, p={p})", [a, pos, neg],
                lambda x, y, z: F.triplet_margin_loss(x, y, z, margin, p), t,
                tol=(2e-4, 2e-5), refuse=refuse, bcast=False)


@op("nll_loss", "loss")
def _nll_loss(rng):
    n, c = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    extra = shape(rng, 0, 1, zero=False, max_dim=3)
    pred = values(rng, (n, c) + extra, "float32", -4, 0)  # (log-probabilities)
    ignore = pick(rng, [-1, -1, int(rng.integers(0, c))])
    low = -1 if ignore == -1 or rng.random() < 0.2 else 0
    label = rng.integers(low, c, size=(n,) + extra).astype(np.int32)

    def t(p, y):  # 0.x's: the sum over the kept labels over their count, or over 1 for none
        kept = max(int((y != ignore).sum()), 1)
        return torch.nn.functional.nll_loss(p.contiguous(), y.long(), ignore_index=ignore,
                                            reduction="sum") / kept
    refuse = None
    if ignore != -1 and (label == -1).any():
        refuse = "a label -1 that is not ignore_index is out of range"
    return Case(f"nll_loss(pred{pred.shape}, label{label.shape}, ignore_index={ignore})",
                [pred, label], lambda p, y: F.nll_loss(p, y, ignore_index=ignore), t,
                refuse=refuse)


@op("zero_grad", "elemwise")
def _zero_grad(rng):
    shp = shape(rng)
    x = values(rng, shp, "float32")
    return Case(f"x{shp} * zero_grad(x)", [x], lambda a: a * F.zero_grad(a),
                lambda a: a * a.detach())


@op("cross_entropy_with_softmax", "loss")
def _ce_softmax(rng):
    n, c = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    extra = shape(rng, 0, 1, zero=False, max_dim=3)
    ls = pick(rng, [0, 0, 0.2])
    pred = values(rng, (n, c) + extra, "float32")
    label = rng.integers(0, c, size=(n,) + extra).astype(np.int32)
    axis = 1 if rng.random() < 0.7 else None

    def t(p, y):
        logp = torch.log_softmax(p, 1)
        return torch.nn.functional.nll_loss(logp.contiguous(), y.long()) * (1 - ls) \
            - logp.mean(1).mean() * ls
    kw = {} if axis is None else {"axis": axis}
    return Case(f"cross_entropy_with_softmax(pred{pred.shape}, label{label.shape}, {kw}, "
                f"label_smooth={ls})", [pred, label],
                lambda p, y: F.cross_entropy_with_softmax(p, y, label_smooth=ls, **kw), t,
                diff=[0], tol=(2e-4, 2e-5))


# ----- complex numbers made of real parts: values and the parts' gradients through them -----
# (complex inputs of the other ops: tests/fuzz/ops_complex.py)

def _complex_parts(c, *parts):
    # complex128 of float64 parts, else complex64 (float16 ones too: there is no complex32)
    want = np.complex128 if np.float64 in [np.dtype(p.dtype) for p in parts] else np.complex64
    if np.dtype(c.dtype) != want:
        raise Mismatch(f"complex result of dtype {c.dtype}, want {np.dtype(want)}")
    return _as_parts(F.real(c), *parts), _as_parts(F.imag(c), *parts)


def _as_parts(v, *parts):
    """A part of a complex value made of ``parts``: float32 where they are float16 (complex64's
    parts: docs/compatibility.rst), checked here and then given in float16, whose values the
    float16 mode compares with torch's float16 (whose complex32 has float16 parts)."""
    if all(np.dtype(p.dtype) != np.float16 for p in parts):
        return v
    if np.dtype(v.dtype) != np.float32:
        raise Mismatch(f"a part of a complex value of float16 parts of dtype {v.dtype}, want "
                       "float32 (complex64's)")
    return v.astype("float16")


@op("complex", "elemwise")
def _complex(rng):
    sa = shape(rng, 0, 3)
    sb = broadcast_partner(rng, sa)
    a, b = values(rng, sa, "float32"), values(rng, sb, "float32")
    return Case(f"complex(re{sa}, im{sb})", [a, b],
                lambda x, y: _complex_parts(F.complex(x, y), x, y),
                lambda x, y: (lambda c: (c.real, c.imag))(torch.complex(*torch.broadcast_tensors(
                    x, y))))


@op("polar", "elemwise")
def _polar(rng):
    sa = shape(rng, 0, 3)
    sb = broadcast_partner(rng, sa)
    r, th = values(rng, sa, "float32", 0, 3), values(rng, sb, "float32", -3.1, 3.1)
    return Case(f"polar(abs{sa}, angle{sb})", [r, th],
                lambda x, y: _complex_parts(F.polar(x, y), x, y),
                lambda x, y: (lambda c: (c.real, c.imag))(torch.polar(*torch.broadcast_tensors(
                    x, y))))


@op("imag", "elemwise")
def _imag(rng):
    shp = shape(rng, 0, 3)
    a, b = values(rng, shp, "float32"), values(rng, shp, "float32")
    part = pick(rng, ["imag", "real"])
    return Case(f"{part}(complex(a{shp}, b{shp}))", [a, b],
                lambda x, y: _as_parts(getattr(F, part)(F.complex(x * 2, y * 3)), x, y),
                lambda x, y: getattr(torch.complex(x * 2, y * 3), part))


# ----- integers: bit shifts -----

def _shift_gen(name):
    tfn = torch.bitwise_left_shift if name == "left_shift" else torch.bitwise_right_shift

    def gen(rng):
        dt = pick(rng, ["int32", "int32", "int8", "uint8", "int16"])
        sa = shape(rng)
        sb = broadcast_partner(rng, sa)
        lo = 0 if dt == "uint8" else -40
        x = values(rng, sa, dt, lo, 40)
        bits = {"int8": 7, "uint8": 7, "int16": 15}.get(dt, 31)
        y = rng.integers(0, min(bits, 9) + 1, size=sb).astype(dt)
        refuse = None
        if rng.random() < 0.08:  # upstream shifts integers only (torch refuses floats too)
            x, refuse = x.astype(np.float32), "a shift of floats"
        if rng.random() < 0.3:
            s = int(rng.integers(0, 4))
            return Case(f"{name}(x{sa} {x.dtype}, {s})", [x], lambda a: getattr(F, name)(a, s),
                        lambda a: tfn(a, s), diff=[], refuse=refuse)
        return Case(f"{name}(x{sa} {x.dtype}, y{sb} {dt})", [x, y], getattr(F, name), tfn,
                    diff=[], refuse=refuse)
    return gen


op("left_shift", "elemwise")(_shift_gen("left_shift"))
op("right_shift", "elemwise")(_shift_gen("right_shift"))


# ----- erfcinv, isinf -----

@op("erfcinv", "elemwise")
def _erfcinv(rng):
    shp = shape(rng)
    dt = pick(rng, ["float32", "float32", "float16"])
    x = values(rng, shp, dt, 0.08, 1.92)
    # torch has no erfcinv: erfinv(1 - x) is the same function (exact in float64)
    return Case(f"erfcinv(x{shp} {dt})", [x], F.erfcinv,
                lambda a: torch.erfinv(1 - a.double()).to(a.dtype),
                tol=(2e-2, 2e-2) if dt == "float16" else (2e-4, 2e-5))


@op("isinf", "elemwise")
def _isinf(rng):
    shp = shape(rng)
    dt = pick(rng, ["float32", "float16", "int32"])
    x = values(rng, shp, dt)
    if dt != "int32" and x.size:
        special = rng.random(shp) < 0.4
        x = np.where(special, rng.choice(np.array([np.inf, -np.inf, np.nan, 0.0], dt), size=shp),
                     x).astype(dt)
    return Case(f"isinf(x{shp} {dt})", [x], F.isinf, torch.isinf, bcast=True)


# ----- top-k accuracy -----

def _accuracy_gen(name):
    def gen(rng):
        n, c = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        logits = rng.permutation(n * c).reshape(n, c).astype(np.float32)  # no ties
        target = rng.integers(0, c, size=n).astype(np.int32)
        r = rng.random()
        if r < 0.4:
            topk = int(rng.integers(1, c + 1))
        elif r < 0.6:
            topk = (int(rng.integers(1, c + 1)),)
        else:
            topk = tuple(int(k) for k in rng.integers(1, c + 1, size=int(rng.integers(2, 4))))
        refuse = None
        if rng.random() < 0.06:
            topk, refuse = c + 1, "k larger than the number of classes"

        def t(lg, tg):
            ks = [topk] if isinstance(topk, int) else list(topk)
            rank = (lg > lg.gather(1, tg.long()[:, None])).sum(1)  # classes scoring higher
            accs = [(rank < k).float().mean() for k in ks]
            return accs[0] if len(ks) == 1 else accs  # (a 1-tuple too, as upstream 1.13's)
        return Case(f"{name}(logits({n}, {c}), target, topk={topk})", [logits, target],
                    lambda lg, tg: getattr(F, name)(lg, tg, topk), t, diff=[], refuse=refuse,
                    bcast=False, layouts=True)
    return gen


op("topk_accuracy", "metric")(_accuracy_gen("topk_accuracy"))
op("accuracy", "metric")(_accuracy_gen("accuracy"))
