"""Fuzz generators for the tensor functions the first rounds drew narrowly: repeat's argument
forms, roll with repeated axes, swapaxes, non_zero, topk(no_sort), clip with Tensor bounds,
and indexing by Python lists, 0-d Tensors and numpy integers (numpy's semantics, gradients
through GradManager)."""
import numpy as np
import torch

import megengine as mge
import megengine.functional as F

from .gen import Case, pick, registry, shape, values
from .ops_tensor import _distinct, _NumpyGet, _NumpySet

OPS, op = registry()


@op("repeat_forms", "shape")
def _repeat_forms(rng):
    shp = shape(rng, 0, 3)
    reps = int(rng.integers(1, 4))
    axis = None if not shp or rng.random() < 0.3 else int(rng.integers(-len(shp), len(shp)))
    form = pick(rng, ["int", "numpy", "tensor", "list"])
    refuse = None
    if form == "numpy":
        arg = np.int64(reps)
    elif form == "tensor":
        arg = mge.tensor(reps, dtype="int32")
    elif form == "list":  # torch takes per-element counts; upstream's repeats is one int
        n = int(np.prod(shp, dtype=int)) if axis is None else shp[axis]
        arg = [int(v) for v in rng.integers(1, 3, size=n)]
        refuse = "upstream's repeats is one int (assert repeats >= 1)"
    else:
        arg = reps
    x = values(rng, shp, "float32")
    targ = torch.tensor(arg) if isinstance(arg, list) else int(reps)
    return Case(f"repeat(x{shp}, {form} {arg if form != 'tensor' else reps}, axis={axis})", [x],
                lambda a: F.repeat(a, arg, axis),
                lambda a: torch.repeat_interleave(a, targ, axis), refuse=refuse)


@op("roll_repeated_axes", "shape")
def _roll_repeated(rng):
    shp = shape(rng, 1, 3)
    k = int(rng.integers(2, 4))
    # upstream rolls once per (shift, axis) pair: a repeated axis rolls by the sum
    axis = tuple(int(rng.integers(-len(shp), len(shp))) for _ in range(k))
    shift = tuple(int(s) for s in rng.integers(-6, 7, size=k))
    x = values(rng, shp, "float32")

    def t(a):
        for s, ax in zip(shift, axis):
            a = torch.roll(a, s, ax)
        return a
    return Case(f"roll(x{shp}, {shift}, axis={axis})", [x], lambda a: F.roll(a, shift, axis), t)


@op("swapaxes", "shape")
def _swapaxes(rng):
    shp = shape(rng, 1, 4)
    a1, a2 = (int(rng.integers(-len(shp), len(shp))) for _ in range(2))
    x = values(rng, shp, "float32")
    return Case(f"swapaxes(x{shp}, {a1}, {a2})", [x], lambda a: F.swapaxes(a, a1, a2),
                lambda a: torch.swapaxes(a, a1, a2))


@op("non_zero", "indexing")
def _non_zero(rng):
    shp = shape(rng, 1, 3)  # (numpy refuses nonzero of a 0-d array)
    dt = pick(rng, ["float32", "int32", "bool"])
    x = values(rng, shp, dt, -1, 1) if dt != "float32" else \
        np.where(rng.random(shp) < 0.5, 0, values(rng, shp, dt)).astype(np.float32)
    as_tuple = bool(rng.random() < 0.5)

    def t(a):  # numpy's nonzero: one int32 index vector per dim, row-major order
        idx = np.nonzero(a.detach().numpy())
        idx = [torch.from_numpy(i.astype(np.int32)) for i in idx]
        return tuple(idx) if as_tuple else torch.stack(idx, 1)
    return Case(f"non_zero(x{shp} {dt}, as_tuple={as_tuple})", [x],
                lambda a: F.non_zero(a, as_tuple=as_tuple), t, diff=[])


@op("topk_no_sort", "sorting")
def _topk_no_sort(rng):
    shp = shape(rng, 1, 2, zero=False)
    x = _distinct(rng, shp, "float32")
    k = int(rng.integers(1, shp[-1] + 1))
    desc = bool(rng.random() < 0.5)

    def m(a):
        # any order is allowed: put megengine's k elements in sorted order, with their indices
        v, i = F.topk(a, k, descending=desc, no_sort=True)
        order = F.argsort(v, descending=desc)
        return F.gather(v, -1, order), F.gather(i, -1, order)
    return Case(f"topk(x{shp}, {k}, descending={desc}, no_sort=True)", [x], m,
                lambda a: torch.topk(a, k, largest=desc, sorted=True),
                dtypes=["float32", "int32"], bcast=False)


@op("clip_tensor_bounds", "elemwise")
def _clip_tensor(rng):
    shp = shape(rng, 0, 3)

    def bound_shape():
        s = tuple(1 if rng.random() < 0.4 else d for d in shp)
        return s[int(rng.integers(0, len(s) + 1)):] if rng.random() < 0.3 else s
    x = values(rng, shp, "float32")
    lo = values(rng, bound_shape(), "float32", -2, 0.5) if rng.random() < 0.8 else None
    hi = values(rng, bound_shape(), "float32", -0.5, 2) if lo is None or rng.random() < 0.8 \
        else None
    # lower above upper somewhere: upstream's minimum(maximum(x, lower), upper) gives upper
    inputs = [x] + [b for b in (lo, hi) if b is not None]

    def split(ts):
        it = iter(ts[1:])
        return ts[0], (next(it) if lo is not None else None), (next(it) if hi is not None
                                                               else None)

    def m(*ts):
        a, l_, h_ = split(ts)
        return F.clip(a, l_, h_)

    def t(*ts):
        a, l_, h_ = split(ts)
        return torch.clamp(a, l_, h_)
    return Case(f"clip(x{shp}, lower{None if lo is None else lo.shape}, upper"
                f"{None if hi is None else hi.shape})", inputs, m, t, bcast=False)


def _index_forms(rng, shp, unique):
    """(numpy index, megengine index): per dim a Python list (at most two, of one length;
    ``unique``: no position twice), an int as a 0-d Tensor or a numpy integer or a plain int,
    or a slice (negative steps)."""
    items, mitems, adv_len = [], [], None
    for d in shp:
        r = rng.random()
        if r < 0.25 and (adv_len is None or adv_len <= d) and \
                sum(isinstance(i, np.ndarray) for i in items) < 2:
            k = int(rng.integers(1, min(d, 3) + 1)) if adv_len is None else adv_len
            lst = [int(v) for v in (rng.permutation(d)[:k] if unique else
                                    rng.integers(-d, d, size=k))]
            lst = [v - d if rng.random() < 0.3 and v >= 0 else v for v in lst]
            adv_len = k
            items.append(np.array(lst))
            mitems.append(lst)
        elif r < 0.45:
            i = int(rng.integers(-d, d))
            items.append(i)
            mitems.append(mge.tensor(i, dtype="int32") if rng.random() < 0.5 else np.int64(i))
        elif r < 0.6:
            i = int(rng.integers(-d, d))
            items.append(i)
            mitems.append(i)
        else:
            s = slice(pick(rng, [None, 0, -1, 1]), pick(rng, [None, -1, d]),
                      pick(rng, [None, 1, -1, 2]))
            items.append(s)
            mitems.append(s)
    return tuple(items), tuple(mitems)


def _fmt_forms(mindex):
    return ", ".join(f"Tensor({int(i.item())})" if isinstance(i, mge.Tensor) else repr(i)
                     for i in mindex)


@op("getitem_forms", "indexing")
def _getitem_forms(rng):
    shp = shape(rng, 1, 3, zero=False)
    index, mindex = _index_forms(rng, shp, unique=False)
    x = values(rng, shp, "float32")
    return Case(f"x{shp}[{_fmt_forms(mindex)}]", [x], lambda a: a[mindex],
                lambda a: _NumpyGet.apply(a, index), bcast=False)


@op("setitem_forms", "indexing")
def _setitem_forms(rng):
    shp = shape(rng, 1, 3, zero=False)
    index, mindex = _index_forms(rng, shp, unique=True)
    tshape = np.empty(shp)[index].shape
    vshape = () if rng.random() < 0.25 else tuple(1 if rng.random() < 0.3 else n
                                                   for n in tshape)
    if vshape and rng.random() < 0.3:
        vshape = vshape[int(rng.integers(0, len(vshape) + 1)):]
    x, v = values(rng, shp, "float32"), values(rng, vshape, "float32")

    def m(a, b):
        y = a * 1
        y[mindex] = b
        return y
    return Case(f"x{shp}[{_fmt_forms(mindex)}] = v{vshape}", [x, v], m,
                lambda a, b: _NumpySet.apply(a, b, index), bcast=False)
