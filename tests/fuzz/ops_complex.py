"""Fuzz generators with complex inputs: values and gradients through complex tensors against
torch's complex autograd (a complex input's gradient is dL/dx + i dL/dy, a real input's the
real one), for the ops with a complex rule; and the ops that need an order, which must refuse."""
import numpy as np
import torch

import megengine as mge
import megengine.functional as F

from .gen import Case, axis_arg, broadcast_partner, pick, registry, shape, values

OPS, op = registry("complex")

C64 = "complex64"


def _cvalues(rng, shp, lo=-2.0, hi=2.0):
    return values(rng, shp, C64, lo, hi)


def _operand(rng, shp):
    """A complex64 array, now and then a float32 one (the op promotes it to complex)."""
    return values(rng, shp, "float32", -2, 2) if rng.random() < 0.25 else _cvalues(rng, shp)


def _as_complex(t):
    return t if t.dtype.is_complex else t.to(torch.complex64)


# ----- element-wise -----

# name: (megengine fn, torch fn); complex-differentiable functions (and abs), drawn away from
# nothing in particular: a value on a branch cut has probability 0
UNARY = {
    "neg": (F.neg, torch.neg), "abs": (F.abs, torch.abs), "exp": (F.exp, torch.exp),
    "expm1": (F.expm1, torch.expm1), "log": (F.log, torch.log), "log1p": (F.log1p, torch.log1p),
    "sqrt": (F.sqrt, torch.sqrt), "square": (F.square, torch.square),
    "sin": (F.sin, torch.sin), "cos": (F.cos, torch.cos), "tan": (F.tan, torch.tan),
    "asin": (F.asin, torch.asin), "acos": (F.acos, torch.acos), "atan": (F.atan, torch.atan),
    "sinh": (F.sinh, torch.sinh), "cosh": (F.cosh, torch.cosh), "tanh": (F.tanh, torch.tanh),
    "asinh": (F.asinh, torch.asinh), "acosh": (F.acosh, torch.acosh),
    "atanh": (F.atanh, torch.atanh),
    "pow 2": (lambda z: z ** 2, lambda t: t ** 2), "pow 0.5": (lambda z: z ** 0.5, lambda t: t ** 0.5),
    "2 ** z": (lambda z: 2 ** z, lambda t: 2 ** t), "1 / z": (lambda z: 1 / z, lambda t: 1 / t),
}


@op("c_unary")
def _c_unary(rng):
    name = pick(rng, sorted(UNARY))
    mfn, tfn = UNARY[name]
    shp = shape(rng)
    return Case(f"{name}(z{shp} {C64})", [_cvalues(rng, shp)], mfn, tfn, tol=(2e-4, 2e-4))


BINARY = {
    "add": (F.add, torch.add), "sub": (F.sub, torch.sub), "mul": (F.mul, torch.mul),
    "div": (F.div, torch.div), "pow": (F.pow, torch.pow),
}


@op("c_binary")
def _c_binary(rng):
    name = pick(rng, sorted(BINARY))
    mfn, tfn = BINARY[name]
    sa = shape(rng)
    sb = broadcast_partner(rng, sa)
    if rng.random() < 0.5:
        sa, sb = sb, sa
    a, b = _operand(rng, sa), _operand(rng, sb)
    if a.dtype != C64 and b.dtype != C64:
        a = a.astype(C64)
    if name == "pow" and a.dtype != C64:  # a negative real base: torch and numpy would differ
        a, b = b, a                       # on whether the result is complex at all
        sa, sb = sb, sa
    return Case(f"{name}(a{sa} {a.dtype}, b{sb} {b.dtype})", [a, b], mfn, tfn, tol=(2e-4, 2e-4))


@op("c_scalar")
def _c_scalar(rng):
    name = pick(rng, ["add", "sub", "mul", "div", "rsub", "rdiv"])
    s = pick(rng, [2.5, -1.5j, 0.5 + 2j, 3])
    shp = shape(rng)
    x = _operand(rng, shp)
    f = {"add": lambda z: z + s, "sub": lambda z: z - s, "mul": lambda z: z * s,
         "div": lambda z: z / s, "rsub": lambda z: s - z, "rdiv": lambda z: s / z}[name]
    real = x.dtype != C64 and not isinstance(s, complex)  # stays float32
    return Case(f"{name}(x{shp} {x.dtype}, {s!r})", [x], f, f,
                dtypes=["float32" if real else C64], tol=(2e-4, 2e-4))


# ----- reductions -----

@op("c_reduce")
def _c_reduce(rng):
    name = pick(rng, ["sum", "mean", "prod"])
    shp = shape(rng, 1, 3, zero=name != "mean")
    ax = axis_arg(rng, len(shp))
    keep = bool(rng.random() < 0.4)
    x = _cvalues(rng, shp, -1.2, 1.2)

    def t(z):
        if ax is None:
            out = getattr(torch, name)(z)
            return out.reshape((1,) * z.ndim) if keep else out
        if name == "prod":  # torch's prod takes one dim
            for a in sorted((ax,) if isinstance(ax, int) else ax, key=lambda a: -(a % z.ndim)):
                z = torch.prod(z, a % z.ndim, keepdim=True)
            if not keep:
                z = z.squeeze(tuple(sorted(a % x.ndim for a in
                                           ((ax,) if isinstance(ax, int) else ax))))
            return z
        return getattr(torch, name)(z, dim=ax, keepdim=keep)
    return Case(f"{name}(z{shp} {C64}, axis={ax}, keepdims={keep})", [x],
                lambda z: getattr(F, name)(z, axis=ax, keepdims=keep), t, tol=(2e-4, 2e-4))


# ----- matmul -----

@op("c_matmul")
def _c_matmul(rng):
    k = pick(rng, [1, 2, 3, 5])
    m, n = pick(rng, [1, 2, 4]), pick(rng, [1, 3])
    batch = shape(rng, 0, 2, zero=False, max_dim=3)
    nda, ndb = pick(rng, [1, 2, 2 + len(batch)]), pick(rng, [1, 2, 2 + len(batch)])
    sa = (k,) if nda == 1 else (*batch[:nda - 2], m, k)
    sb = (k,) if ndb == 1 else (*batch[len(batch) - (ndb - 2):], k, n)
    a, b = _operand(rng, sa), _operand(rng, sb)
    if a.dtype != C64 and b.dtype != C64:
        b = b.astype(C64)
    # float and complex operands promote to complex (numpy's rule; torch's matmul refuses them)
    return Case(f"matmul(a{sa} {a.dtype}, b{sb} {b.dtype})", [a, b], F.matmul,
                lambda x, y: torch.matmul(_as_complex(x), _as_complex(y)), tol=(2e-4, 2e-4))


# ----- indexing -----

@op("c_getitem")
def _c_getitem(rng):
    shp = tuple(int(rng.integers(1, 5)) for _ in range(int(rng.integers(1, 4))))
    kind = pick(rng, ["int", "slice", "array", "mask"])
    if kind == "int":
        idx = int(rng.integers(-shp[0], shp[0]))
    elif kind == "slice":
        idx = (slice(None), slice(None, None, 2)) if len(shp) > 1 else slice(1, None)
    elif kind == "array":
        idx = rng.integers(0, shp[0], size=int(rng.integers(1, 6)))  # repeats: summed back
    else:
        idx = rng.random(shp) < 0.5
    x = _cvalues(rng, shp)

    def m(z):
        return z[mge.tensor(idx)] if isinstance(idx, np.ndarray) else z[idx]

    def t(z):
        return z[torch.tensor(idx)] if isinstance(idx, np.ndarray) else z[idx]
    return Case(f"z{shp}[{kind}]", [x], m, t)


@op("c_setitem")
def _c_setitem(rng):
    shp = tuple(int(rng.integers(1, 5)) for _ in range(int(rng.integers(1, 4))))
    i = int(rng.integers(0, shp[0]))
    x = _cvalues(rng, shp)
    vshp = broadcast_partner(rng, shp[1:])
    vshp = vshp[len(vshp) - len(shp) + 1:] if len(vshp) >= len(shp) else vshp  # no more dims
    v = _operand(rng, vshp)

    def m(z, w):
        y = z * 1
        y[i] = w
        return y * (1 + 1j)

    def t(z, w):
        y = z.clone()
        y[i] = _as_complex(w)  # (torch's backward of a real-into-complex copy_ fails)
        return y * (1 + 1j)
    return Case(f"z{shp}[{i}] = v{v.shape} {v.dtype}", [x, v], m, t)


@op("c_gather")
def _c_gather(rng):
    shp = tuple(int(rng.integers(1, 4)) for _ in range(int(rng.integers(1, 4))))
    ax = int(rng.integers(len(shp)))
    ishp = tuple(int(rng.integers(1, 4)) if a == ax else n for a, n in enumerate(shp))
    idx = rng.integers(0, shp[ax], size=ishp).astype(np.int32)
    return Case(f"gather(z{shp}, {ax}, idx{ishp})", [_cvalues(rng, shp), idx],
                lambda z, i: F.gather(z, ax, i), lambda z, i: torch.gather(z, ax, i.long()))


# ----- concat / stack / split -----

@op("c_concat")
def _c_concat(rng):
    base = shape(rng, 1, 3, zero=False)
    ax = int(rng.integers(len(base)))
    n = int(rng.integers(1, 4))
    parts = []
    for _ in range(n):
        s = list(base)
        s[ax] = int(rng.integers(0, 3))
        parts.append(_operand(rng, tuple(s)))
    if all(p.dtype != C64 for p in parts):
        parts[0] = parts[0].astype(C64)
    stack = bool(rng.random() < 0.4)
    if stack:
        parts = [_operand(rng, base) for _ in range(n)]
        parts[0] = parts[0].astype(C64)
    what = "stack" if stack else "concat"
    return Case(f"{what}({[p.shape for p in parts]} {[str(p.dtype) for p in parts]}, axis={ax})",
                parts, lambda *zs: getattr(F, what)(list(zs), axis=ax),
                lambda *ts: (torch.stack if stack else torch.cat)(list(ts), dim=ax))


@op("c_split")
def _c_split(rng):
    shp = shape(rng, 1, 3, zero=False)
    ax = int(rng.integers(len(shp)))
    n = shp[ax]
    cuts = sorted(int(c) for c in rng.integers(0, n + 1, size=int(rng.integers(1, 3))))
    x = _cvalues(rng, shp)
    sizes = np.diff([0] + cuts + [n]).tolist()
    return Case(f"split(z{shp}, {cuts}, axis={ax})", [x], lambda z: F.split(z, cuts, axis=ax),
                lambda t: torch.split(t, sizes, dim=ax))


# ----- shape ops and the other linear ops -----

SHAPE_OPS = ["broadcast_to", "cond_take", "copy", "cumsum", "expand_dims", "flip", "pad",
             "pad edge", "repeat", "reshape", "roll", "tile", "transpose", "where"]


def _shape_case(rng, name, x):
    shp = x.shape
    nd = len(shp)
    perm = [int(i) for i in rng.permutation(nd)]
    ax = int(rng.integers(nd))
    cases = {
        "reshape": (lambda z: z.reshape(-1), lambda t: t.reshape(-1)),
        "transpose": (lambda z: F.transpose(z, perm), lambda t: t.permute(*perm)),
        "broadcast_to": (lambda z: F.broadcast_to(z, (2,) + shp),
                         lambda t: torch.broadcast_to(t, (2,) + shp)),
        "expand_dims": (lambda z: F.expand_dims(z, 0), lambda t: t.unsqueeze(0)),
        "flip": (lambda z: F.flip(z, ax), lambda t: torch.flip(t, (ax,))),
        "roll": (lambda z: F.roll(z, 1, ax), lambda t: torch.roll(t, 1, ax)),
        "repeat": (lambda z: F.repeat(z, 2, ax), lambda t: torch.repeat_interleave(t, 2, ax)),
        "tile": (lambda z: F.tile(z, (2,) * nd), lambda t: t.repeat((2,) * nd)),
        "cumsum": (lambda z: F.cumsum(z, ax), lambda t: torch.cumsum(t, ax)),
        "pad": (lambda z: F.nn.pad(z, [(1, 0)] * nd, constant_value=0.5),
                lambda t: torch.nn.functional.pad(t, (1, 0) * nd, value=0.5)),
        "pad edge": (lambda z: F.nn.pad(z, [(0, 0)] * (nd - 1) + [(2, 1)], mode="edge"),
                     lambda t: torch.nn.functional.pad(t[(None,) * (2 - min(nd, 2))],
                                                       (2, 1), mode="replicate")
                     .reshape(shp[:-1] + (shp[-1] + 3,))),
        "copy": (F.copy, torch.clone),
        "where": (lambda z: F.where(mge.tensor(x.real > 0), z, 0.5j),
                  lambda t: torch.where(torch.tensor(x.real > 0), t, 0.5j)),
        "cond_take": (lambda z: F.cond_take(mge.tensor(x.real > 0), z)[0],
                      lambda t: t[torch.tensor(x.real > 0)]),
    }
    return cases[name]


@op("c_shape")
def _c_shape(rng):
    name = pick(rng, SHAPE_OPS)
    shp = shape(rng, 1, 3, zero=name != "pad edge")  # (torch's replicate takes no empty dim)
    x = _cvalues(rng, shp)
    m, t = _shape_case(rng, name, x)
    return Case(f"{name}(z{shp} {C64})", [x], m, t, layouts=name not in ("where", "cond_take"))


@op("c_linear")
def _c_linear(rng):
    name = pick(rng, ["linear", "einsum", "matinv", "diag"])
    n = int(rng.integers(1, 4))
    if name == "matinv":  # well-conditioned: the identity plus a small complex matrix
        x = (np.eye(n) * 2 + _cvalues(rng, (n, n), -0.4, 0.4)).astype(C64)
        return Case(f"matinv(z{x.shape})", [x], F.matinv, torch.linalg.inv, tol=(5e-4, 5e-4),
                    bcast=False)  # (repeated rows: singular)
    if name == "diag":
        x = _cvalues(rng, pick(rng, [(n,), (n, n)]))
        return Case(f"diag(z{x.shape})", [x], F.diag, torch.diag)
    x, w = _operand(rng, (2, n)), _operand(rng, (3, n))
    if name == "linear":
        b = _operand(rng, (3,))
        if C64 not in (x.dtype, w.dtype, b.dtype):
            b = b.astype(C64)
        return Case(f"linear(x{x.shape} {x.dtype}, w {w.dtype}, b {b.dtype})", [x, w, b],
                    F.linear, lambda a, v, c: torch.nn.functional.linear(
                        _as_complex(a), _as_complex(v), _as_complex(c)), tol=(2e-4, 2e-4))
    if x.dtype != C64 and w.dtype != C64:
        w = w.astype(C64)
    return Case(f"einsum('ij,kj->ik', {x.dtype}, {w.dtype})", [x, w],
                lambda a, v: F.einsum("ij,kj->ik", a, v),
                lambda a, v: torch.einsum("ij,kj->ik", _as_complex(a), _as_complex(v)),
                tol=(2e-4, 2e-4))


# ----- ops that need an order: refused (upstream's complex tensors refuse every op but a few) --

ORDERED = {
    "relu": F.relu, "max": F.max, "argmax": F.argmax, "sort": F.sort,
    "topk": lambda z: F.topk(z.reshape(-1), 1), "maximum": lambda z: F.maximum(z, 0),
    "less": lambda z: z < 0, "clip": lambda z: F.clip(z, -1, 1), "floor": F.floor,
    "sign": F.sign, "astype float32": lambda z: z.astype("float32"),
}


@op("c_refused")
def _c_refused(rng):
    name = pick(rng, sorted(ORDERED))
    shp = shape(rng, 1, 3, zero=False)
    return Case(f"{name}(z{shp} {C64})", [_cvalues(rng, shp)], ORDERED[name],
                lambda t: t, refuse="complex numbers have no order / no float cast")
