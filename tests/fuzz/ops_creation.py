"""Fuzz generators for the creation functions (F.arange, F.linspace, F.eye, F.full, F.zeros,
F.ones, the ``_like`` forms and F.meshgrid) against torch, in upstream's dtype and counting
conventions where torch's differ."""
import numpy as np
import torch

import megengine as mge
import megengine.functional as F

from .gen import Case, pick, registry, shape, values

OPS, op = registry("creation")


def _number(rng, v):
    """``v`` as a plain number, now and then as a 0-d Tensor (upstream takes both)."""
    return mge.tensor(v) if rng.random() < 0.2 else v


@op("arange")
def _arange(rng):
    dt = pick(rng, [None, None, "int32", "float16"])
    # binary-exact steps where the values are cast to ints: no rounding decides a truncation
    steps = [1, 2, -1, 3, 0.5, -0.25] + ([] if dt == "int32" else [0.3, -0.7])
    start, step = pick(rng, [0, 1, -2, 2.5, 0.25]), pick(rng, steps)
    stop = start + step * float(rng.uniform(-1, 6)) if rng.random() < 0.8 else \
        pick(rng, [0, 3, -4])
    if dt == "int32":
        stop = round(stop * 4) / 4
    form = pick(rng, ["stop", "start_stop", "all"])
    if form == "stop":
        start, step, args = 0, 1, (stop,)
    elif form == "start_stop":
        step, args = 1, (start, stop)
    else:
        args = (start, stop, step)
    kw = {} if dt is None else {"dtype": dt}
    margs = tuple(_number(rng, v) for v in args)
    # upstream counts in float32, ceil((stop - start) / step), and fills float32 values that
    # it then casts to the dtype
    f32 = np.float32
    num = max(int(np.ceil((f32(stop) - f32(start)) / f32(step))), 0)

    def t():
        vals = torch.arange(num, dtype=torch.float64) * step + start
        return vals.to(torch.float32).to(getattr(torch, dt or "float32"))
    return Case(f"arange{tuple(args)}, dtype={dt}{' (Tensor args)' if margs != args else ''}",
                [], lambda: F.arange(*margs, **kw), t)


@op("linspace")
def _linspace(rng):
    dt = pick(rng, [None, None, "int32", "float16"])
    num = int(rng.integers(0, 7))
    start = float(pick(rng, [0, -1.5, 2, 0.25]))
    if dt == "int32":  # whole values only: a float32 rounding would decide the truncation
        start, stop = int(start), int(start) + int(rng.integers(-3, 4)) * max(num - 1, 1)
    else:
        stop = float(start + rng.uniform(-4, 4))
    kw = {} if dt is None else {"dtype": dt}
    margs = (start, stop, _number(rng, num))
    return Case(f"linspace({start}, {stop}, {num}, dtype={dt})", [],
                lambda: F.linspace(*margs, **kw),
                lambda: torch.linspace(start, stop, num, dtype=torch.float64).to(
                    getattr(torch, dt or "float32")))


@op("eye")
def _eye(rng):
    n, m = int(rng.integers(0, 5)), pick(rng, [None, int(rng.integers(0, 5))])
    dt = pick(rng, [None, "float32", "int32", "bool", "float16"])
    kw = {} if dt is None else {"dtype": dt}
    form = pick(rng, ["args", "args", "shape"])
    tdt = getattr(torch, dt or "float32")
    cols = n if m is None else m
    if form == "shape":  # upstream's eye also takes the whole shape as N
        mfn = lambda: F.eye((n, cols), **kw)  # noqa: E731
    else:
        mfn = lambda: F.eye(n, m, **kw)  # noqa: E731
    return Case(f"eye({n}, {m}, dtype={dt}) {form}", [], mfn,
                lambda: torch.eye(n, cols, dtype=tdt))


def _shape_form(rng, shp):
    """``shp`` as upstream takes it: a tuple, a list, an int (1-d) or a 1-d int32 Tensor."""
    r = rng.random()
    if len(shp) == 1 and r < 0.25:
        return shp[0]
    if shp and r < 0.4:
        return mge.tensor(list(shp), dtype="int32")
    return list(shp) if r < 0.6 else shp


def _wrapped(value, dt):
    """``value`` cast into dtype ``dt`` as upstream casts a fill value: a Python int outside an
    integer dtype's range wraps (as ``Tensor(value, dt)``); torch refuses most of those."""
    if isinstance(value, int) and np.dtype(dt).kind in "iu":
        return int(np.array(value, np.int64).astype(dt))
    return value


@op("full")
def _full(rng):
    shp = shape(rng, 0, 3)
    dt = pick(rng, [None, None, "float32", "int32", "float16", "int8", "uint8"])
    value = pick(rng, [2, -3, 0, 1.5, -0.25, True, False] + ([300, -200] if dt in
                                                              ("int8", "uint8") else []))
    if dt in ("int32", "int8", "uint8") and isinstance(value, float):
        value = int(value)
    # upstream's dtype None is the value's: int32 for an int (torch: int64), float32, bool
    want = dt or {bool: "bool", int: "int32", float: "float32"}[type(value)]
    arg, mvalue = _shape_form(rng, shp), _number(rng, value)
    return Case(f"full({arg!r}, {mvalue!r}, dtype={dt})", [],
                lambda: F.full(arg, mvalue, dtype=dt),
                lambda: torch.full(shp, _wrapped(value, want), dtype=getattr(torch, want)))


@op("zeros_ones")
def _zeros_ones(rng):
    shp = shape(rng, 0, 3)
    name = pick(rng, ["zeros", "ones"])
    dt = pick(rng, [None, "int32", "bool", "float16", "int8"])
    kw = {} if dt is None else {"dtype": dt}
    arg = _shape_form(rng, shp)
    return Case(f"{name}({arg!r}, dtype={dt})", [], lambda: getattr(F, name)(arg, **kw),
                lambda: getattr(torch, name)(shp, dtype=getattr(torch, dt or "float32")))


@op("full_like")
def _full_like(rng):
    shp = shape(rng, 0, 3)
    dt = pick(rng, ["float32", "float32", "float16", "int32", "int8", "uint8", "bool"])
    x = values(rng, shp, dt)
    name = pick(rng, ["zeros_like", "ones_like", "full_like"])
    value = pick(rng, [2, 0, 1.5, 7, -3, -0.75, True, 300, -200])
    if isinstance(value, float) and dt == "uint8":
        value = abs(value)  # (a negative float's cast to an unsigned dtype is undefined)
    if name == "full_like":
        mvalue = _number(rng, value)
        return Case(f"full_like(x{shp} {dt}, {mvalue!r})", [x],
                    lambda a: F.full_like(a, mvalue),
                    lambda a: torch.full_like(a, _wrapped(value, dt)), writes=0)
    return Case(f"{name}(x{shp} {dt})", [x], getattr(F, name), getattr(torch, name))


@op("meshgrid")
def _meshgrid(rng):
    k = int(rng.integers(1, 4))
    xs = [values(rng, (int(rng.integers(0, 4)),), "float32") for _ in range(k)]
    indexing = pick(rng, ["xy", "ij"])
    return Case(f"meshgrid({', '.join(f'x{a.shape}' for a in xs)}, indexing={indexing!r})", xs,
                lambda *ts: F.meshgrid(*ts, indexing=indexing),
                lambda *ts: torch.meshgrid(*ts, indexing=indexing))
