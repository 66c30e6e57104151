"""Fuzz generators for indexing (get/set item), joining and splitting, gather/scatter/where/
cond_take, sorting and the shape functions: each draws one call and returns a `gen.Case`."""
import numpy as np
import torch

import megengine as mge
import megengine.functional as F

from .gen import Case, pick, registry, shape, values

OPS, op = registry()


# ----- indexing: numpy's semantics (upstream's), checked by a numpy-backed torch Function -----

class _NumpyGet(torch.autograd.Function):
    """x[index] with numpy's rules (torch has no negative steps); gradient: np.add.at."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.index, ctx.shape = index, x.shape
        return torch.from_numpy(np.array(x.detach().numpy()[index]))

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, np.float32)
        np.add.at(out, ctx.index, g.numpy())
        return torch.from_numpy(out), None


class _NumpySet(torch.autograd.Function):
    """x with x[index] = v (numpy's rules, unique positions)."""

    @staticmethod
    def forward(ctx, x, v, index):
        ctx.index, ctx.vshape = index, v.shape
        out = x.detach().numpy().copy()
        out[index] = v.detach().numpy()
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, g):
        gx = g.numpy().copy()
        gx[ctx.index] = 0
        gv = g.numpy()[ctx.index]
        # sum over the dims v was broadcast along
        lead = gv.ndim - len(ctx.vshape)
        gv = gv.sum(axis=tuple(range(lead))) if lead > 0 else gv
        ones = tuple(i for i, n in enumerate(ctx.vshape) if n == 1 and gv.shape[i] != 1)
        gv = gv.sum(axis=ones, keepdims=True) if gv.ndim else gv
        gv = np.ascontiguousarray(gv).reshape(ctx.vshape)
        return torch.from_numpy(gx), torch.from_numpy(gv), None


def _draw_index(rng, shp, unique=False):
    """A random index for an array of shape ``shp``: ints, slices (negative steps), None,
    Ellipsis, int arrays, bool masks, mixed; ``unique``: no position selected twice."""
    items, axis, adv_shape, used_ellipsis, n_adv = [], 0, None, False, 0
    nd = len(shp)
    while axis < nd:
        r = rng.random()
        n = shp[axis]
        if r < 0.1 and not used_ellipsis and nd - axis >= 1:
            used_ellipsis = True
            skip = int(rng.integers(0, nd - axis + 1))
            items.append(Ellipsis)
            axis += skip
            continue
        if r < 0.2:
            items.append(None)
            continue
        if r < 0.35 and n > 0:
            i = int(rng.integers(-n, n))
            if rng.random() < 0.03:
                i = n + 1  # out of range: both must refuse
            items.append(i)
        elif r < 0.45 and n > 0 and n_adv < (1 if unique else 2):
            k = int(rng.integers(0, n + 1)) if adv_shape is None else adv_shape
            idx = rng.permutation(n)[:k] if unique else rng.integers(-n, n, size=k)
            adv_shape = k
            n_adv += 1
            items.append(idx.astype(pick(rng, [np.int32, np.int64])))
        elif r < 0.52 and n_adv == 0:
            # a mask over this and maybe the following dims (x[mask] with mask.shape == x.shape
            # is the common case)
            span = int(rng.integers(1, nd - axis + 1))
            items.append(rng.random(shp[axis:axis + span]) < 0.5)
            n_adv = 2  # a mask uses up the advanced slots
            axis += span
            continue
        else:
            step = pick(rng, [1, 1, 2, -1, -2, 3, None])
            start = pick(rng, [None, 0, 1, -1, -n - 1 if n else None])
            stop = pick(rng, [None, n, -1, 2, n + 3])
            items.append(slice(start, stop, step))
        axis += 1
    if rng.random() < 0.2:
        items.append(None)
    return tuple(items)


def _fmt(index):
    return "[" + ", ".join(
        "..." if i is Ellipsis else f"arr{i.astype(int).tolist()}" if isinstance(i, np.ndarray)
        else f"{i.start}:{i.stop}:{i.step}" if isinstance(i, slice) else repr(i) for i in index
    ) + "]"


def _mge_index(rng, index):
    # index arrays reach megengine as numpy arrays or as Tensors
    return tuple(mge.tensor(i, dtype=i.dtype) if isinstance(i, np.ndarray) and rng.random() < 0.5
                 and i.dtype != np.int64 else i for i in index)


@op("getitem", "indexing")
def _getitem(rng):
    shp = shape(rng, 0 if rng.random() < 0.1 else 1, 4)
    dt = pick(rng, ["float32", "float32", "int32", "bool"])
    x = values(rng, shp, dt)
    index = _draw_index(rng, shp)
    midx = _mge_index(rng, index)
    if len(index) == 1 and rng.random() < 0.5:
        index, midx = index[0], midx[0]  # a bare (non-tuple) index
    return Case(f"x{shp} {dt}{_fmt(index if isinstance(index, tuple) else (index,))}", [x],
                lambda a: a[midx], lambda a: _NumpyGet.apply(a, index) if a.requires_grad
                else torch.from_numpy(np.array(a.numpy()[index])))


@op("setitem", "indexing")
def _setitem(rng):
    shp = shape(rng, 1, 4)
    x = values(rng, shp, "float32")
    index = _draw_index(rng, shp, unique=True)
    try:
        tshape = np.empty(shp)[index].shape
    except IndexError:
        tshape = (1,)
    if rng.random() < 0.3:
        vshape = ()
    else:
        vshape = tuple(1 if rng.random() < 0.3 else n for n in tshape)
        vshape = vshape[int(rng.integers(0, len(vshape) + 1)):] if rng.random() < 0.3 else vshape
    v = values(rng, vshape, "float32")
    midx = _mge_index(rng, index)

    def m(a, b):
        y = a * 1  # a new tensor: the leaf stays as drawn
        y[midx] = b
        return y
    return Case(f"x{shp}{_fmt(index)} = v{vshape}", [x, v], m,
                lambda a, b: _NumpySet.apply(a, b, index))


# ----- joining, splitting -----

@op("concat", "shape")
def _concat(rng):
    base = shape(rng, 1, 4)
    axis = int(rng.integers(-len(base), len(base)))
    k = int(rng.integers(1, 4))
    shapes = []
    for _ in range(k):
        s = list(base)
        s[axis] = int(rng.integers(0, 4))
        shapes.append(tuple(s))
    if rng.random() < 0.05 and len(base) > 1:
        bad = list(shapes[-1])
        bad[(axis + 1) % len(base)] += 1  # a mismatched non-concat dim: both must refuse
        shapes[-1] = tuple(bad)
    dt = pick(rng, ["float32", "int32"])
    xs = [values(rng, s, dt) for s in shapes]
    return Case(f"concat({shapes}, axis={axis}) {dt}", xs, lambda *a: F.concat(list(a), axis),
                lambda *a: torch.cat(list(a), axis))


@op("stack", "shape")
def _stack(rng):
    base = shape(rng, 0, 3)
    axis = int(rng.integers(-len(base) - 1, len(base) + 1))
    k = int(rng.integers(1, 4))
    xs = [values(rng, base, "float32") for _ in range(k)]
    # a 0-d item counts as shape (1,), as upstream's (torch's stack keeps it 0-d)
    return Case(f"stack({k} x {base}, axis={axis})", xs, lambda *a: F.stack(list(a), axis),
                lambda *a: torch.stack([t.reshape(t.shape or (1,)) for t in a], axis))


@op("split", "shape")
def _split(rng):
    shp = list(shape(rng, 1, 3, zero=False))
    axis = int(rng.integers(-len(shp), len(shp)))
    if rng.random() < 0.5:
        n = int(rng.integers(1, 4))
        shp[axis] = n * int(rng.integers(1, 3))
        arg = n
        t = lambda a: torch.chunk(a, n, axis)  # noqa: E731  (even parts)
    else:
        n = shp[axis]
        arg = sorted(int(i) for i in rng.integers(0, n + 1, size=int(rng.integers(1, 3))))
        t = lambda a: torch.tensor_split(a, arg, axis)  # noqa: E731
    x = values(rng, tuple(shp), "float32")
    return Case(f"split(x{tuple(shp)}, {arg}, axis={axis})", [x],
                lambda a: F.split(a, arg, axis), t)


# ----- gather / scatter / where / cond_take -----

@op("gather", "indexing")
def _gather(rng):
    shp = shape(rng, 1, 3, zero=False)
    axis = int(rng.integers(-len(shp), len(shp)))
    ishp = list(shp)
    ishp[axis] = int(rng.integers(1, 4))
    n = shp[axis]
    idx = rng.integers(0, n, size=ishp).astype(np.int32)
    if rng.random() < 0.05:
        idx.flat[0] = n  # out of range: both refuse
    x = values(rng, shp, "float32")
    return Case(f"gather(x{shp}, axis={axis}, index{tuple(ishp)})", [x, idx],
                lambda a, i: F.gather(a, axis, i), lambda a, i: torch.gather(a, axis, i.long()),
                diff=[0])


@op("scatter", "indexing")
def _scatter(rng):
    shp = shape(rng, 1, 3, zero=False)
    axis = int(rng.integers(-len(shp), len(shp)))
    n = shp[axis]
    k = int(rng.integers(1, n + 1))
    ishp = list(shp)
    ishp[axis] = k
    # unique positions along the axis: torch's result with duplicates is unspecified (so no
    # broadcast layout either: its repeats are duplicates; int8 seed 90015 took another write)
    idx = np.moveaxis(np.stack([rng.permutation(n)[:k] for _ in range(int(np.prod(
        [d for i, d in enumerate(ishp) if i != axis % len(shp)], dtype=int)))]).reshape(
        [d for i, d in enumerate(ishp) if i != axis % len(shp)] + [k]), -1, axis % len(shp))
    idx = idx.astype(np.int32)
    x, src = values(rng, shp, "float32"), values(rng, tuple(ishp), "float32")
    return Case(f"scatter(x{shp}, axis={axis}, index{tuple(ishp)})", [x, idx, src],
                lambda a, i, s: F.scatter(a, axis, i, s),
                lambda a, i, s: torch.scatter(a, axis, i.long(), s), diff=[0, 2], writes=0,
                bcast=False)


@op("where", "indexing")
def _where(rng):
    shp = shape(rng)
    dt = pick(rng, ["float32", "float32", "int32", "float16"])
    mask = values(rng, shp, "bool")
    x = values(rng, tuple(1 if rng.random() < 0.2 else d for d in shp), dt)
    y = values(rng, shp, dt)
    return Case(f"where(mask{shp}, x{x.shape}, y{shp}) {dt}", [mask, x, y], F.where, torch.where)


@op("cond_take", "indexing")
def _cond_take(rng):
    shp = shape(rng, 0, 3)
    x = values(rng, shp, "float32")
    mask = values(rng, shp, "bool")
    return Case(f"cond_take(mask{shp}, x)", [mask, x], F.cond_take,
                lambda m, a: (a[m], torch.from_numpy(np.flatnonzero(m.numpy()).astype(np.int32))))


# ----- sorting -----

def _distinct(rng, shp, dt):
    # distinct values: the order of ties is unspecified in both frameworks
    n = int(np.prod(shp, dtype=int))
    return (rng.permutation(n).reshape(shp) - n // 2).astype(dt) * (0.5 if dt != "int32" else 1)


@op("sort", "sorting")
def _sort(rng):
    shp = shape(rng, 1, 2)
    dt = pick(rng, ["float32", "int32", "float16"])
    x = _distinct(rng, shp, dt).astype(dt)
    desc = bool(rng.random() < 0.5)
    return Case(f"sort(x{shp} {dt}, descending={desc})", [x], lambda a: F.sort(a, desc),
                lambda a: torch.sort(a, descending=desc), dtypes=[dt, "int32"], bcast=False)


@op("argsort", "sorting")
def _argsort(rng):
    shp = shape(rng, 1, 2)
    x = _distinct(rng, shp, "float32")
    desc = bool(rng.random() < 0.5)
    return Case(f"argsort(x{shp}, descending={desc})", [x], lambda a: F.argsort(a, desc),
                lambda a: torch.argsort(a, descending=desc), dtypes=["int32"], bcast=False)


@op("topk", "sorting")
def _topk(rng):
    shp = shape(rng, 1, 2, zero=False)
    x = _distinct(rng, shp, "float32")
    k = int(rng.integers(1, shp[-1] + 1))
    if rng.random() < 0.1:
        k = shp[-1] + 2  # upstream's kernel takes the whole row (torch refuses)
    desc = bool(rng.random() < 0.5)
    kth = bool(rng.random() < 0.25)

    def t(a):
        v, i = torch.topk(a, min(k, shp[-1]), largest=desc, sorted=True)
        return (v[..., -1], i[..., -1]) if kth else (v, i)
    return Case(f"topk(x{shp}, {k}, descending={desc}, kth_only={kth})", [x],
                lambda a: F.topk(a, k, descending=desc, kth_only=kth), t,
                dtypes=["float32", "int32"], bcast=False)


@op("sort_nan", "sorting")
def _sort_nan(rng):
    # F.sort, F.argsort and F.topk put NaN after every number in both orders (numpy's order,
    # documented; torch's descending puts NaN first, so the oracle sorts -x ascending): rows of
    # distinct numbers with NaNs, maybe an inf and a -inf. The order among NaNs is unspecified,
    # so the indices are compared through the values they pick; gradients only where a row holds
    # at most one NaN (which NaN receives a gradient is that order)
    shp = shape(rng, 1, 2, zero=False, max_dim=6)
    x = _distinct(rng, shp, "float32")
    rows = x.reshape(-1, shp[-1])
    most = 0
    for row in rows:
        k = int(rng.integers(0, min(3, row.size) + 1))
        picked = rng.permutation(row.size)[:k + 2]
        row[picked[:k]] = np.nan
        for v, at in zip((np.inf, -np.inf), picked[k:]):
            if rng.random() < 0.3:
                row[at] = v
        most = max(most, k)
    name = pick(rng, ["sort", "argsort", "topk"])
    desc = bool(rng.random() < 0.5)
    k = int(rng.integers(1, shp[-1] + 1))
    kth = bool(rng.random() < 0.25) and name == "topk"

    def t_fn(a):
        b = -a if desc else a  # (torch's ascending order puts NaN last)
        if name == "topk":
            v, i = torch.topk(b, k, largest=False, sorted=True)
            v, i = (v[..., -1:], i[..., -1:]) if kth else (v, i)
        else:
            v, i = torch.sort(b, stable=True)
        v = -v if desc else v
        picked = torch.gather(a, -1, i).detach()
        return picked if name == "argsort" else (v.reshape(v.shape[:-1]) if kth else v, picked)

    def m_fn(a):
        if name == "topk":
            v, i = F.topk(a, k, descending=desc, kth_only=kth)
            if kth:
                return v, F.gather(a, -1, F.expand_dims(i, -1)).detach()
        elif name == "sort":
            v, i = F.sort(a, desc)
        else:
            i = F.argsort(a, desc)
        picked = F.gather(a, -1, i).detach()
        return picked if name == "argsort" else (v, picked)

    return Case(f"{name}(x{shp} with NaN{', k=' + str(k) if name == 'topk' else ''}, "
                f"descending={desc}{', kth_only' if kth else ''})", [x],
                m_fn, t_fn, diff=None if most <= 1 else [], bcast=False)


# ----- shape functions -----

@op("broadcast_to", "shape")
def _broadcast_to(rng):
    target = shape(rng, 0, 4)
    src = tuple(1 if rng.random() < 0.4 else d for d in target)
    src = src[int(rng.integers(0, len(src) + 1)):] if rng.random() < 0.4 else src
    if rng.random() < 0.05 and target:
        target = target[:-1] + (target[-1] + 2,)  # invalid
    x = values(rng, src, "float32")
    return Case(f"broadcast_to(x{src}, {target})", [x], lambda a: F.broadcast_to(a, target),
                lambda a: torch.broadcast_to(a, target))


@op("reshape", "shape")
def _reshape(rng):
    shp = shape(rng, 0, 4)
    n = int(np.prod(shp, dtype=int))
    target = list(rng.permutation(list(shp))) if shp else []
    if rng.random() < 0.3:
        target = [n] if n else [0]
    if target and rng.random() < 0.4 and n:
        target[int(rng.integers(len(target)))] = -1
    if rng.random() < 0.05:
        target = target + [2] if n else [3]  # the wrong number of elements: both refuse
    target = tuple(int(t) for t in target)
    x = values(rng, shp, "float32")
    return Case(f"reshape(x{shp}, {target})", [x], lambda a: F.reshape(a, target),
                lambda a: torch.reshape(a, target))


@op("transpose", "shape")
def _transpose(rng):
    shp = shape(rng, 0, 4)
    perm = tuple(int(i) for i in rng.permutation(len(shp)))
    x = values(rng, shp, "float32")
    return Case(f"transpose(x{shp}, {perm})", [x], lambda a: F.transpose(a, perm),
                lambda a: a.permute(perm))


@op("flatten", "shape")
def _flatten(rng):
    shp = shape(rng, 1, 4)
    nd = len(shp)
    s = int(rng.integers(-nd, nd))
    e = int(rng.integers(s % nd, nd))
    e = e - nd if rng.random() < 0.5 else e
    x = values(rng, shp, "float32")
    return Case(f"flatten(x{shp}, {s}, {e})", [x], lambda a: F.flatten(a, s, e),
                lambda a: torch.flatten(a, s, e))


@op("expand_dims", "shape")
def _expand_dims(rng):
    shp = shape(rng, 0, 3)
    k = int(rng.integers(1, 3))
    out_nd = len(shp) + k
    axes = [int(a) for a in rng.permutation(out_nd)[:k]]
    axes = [a - out_nd if rng.random() < 0.4 else a for a in axes]
    axis = axes[0] if k == 1 and rng.random() < 0.5 else tuple(axes)
    target = np.expand_dims(np.empty(shp), axis).shape
    x = values(rng, shp, "float32")
    return Case(f"expand_dims(x{shp}, {axis})", [x], lambda a: F.expand_dims(a, axis),
                lambda a: a.reshape(target))


@op("squeeze", "shape")
def _squeeze(rng):
    shp = shape(rng, 0, 4)
    ones = [i for i, d in enumerate(shp) if d == 1]
    r = rng.random()
    if r < 0.3 or not ones:
        axis = None
    elif r < 0.65:
        axis = pick(rng, ones)
        axis = axis - len(shp) if rng.random() < 0.4 else axis
    else:
        axis = tuple(ones[:int(rng.integers(1, len(ones) + 1))])
    refuse = None
    others = [i for i, d in enumerate(shp) if d != 1]
    if others and rng.random() < 0.1:
        axis = pick(rng, others)  # torch leaves such a dim alone; upstream refuses
        refuse = "upstream cannot squeeze a dim whose size is not 1"
    x = values(rng, shp, "float32")
    target = np.squeeze(np.empty(shp), axis).shape if refuse is None else shp
    return Case(f"squeeze(x{shp}, {axis})", [x], lambda a: F.squeeze(a, axis),
                lambda a: a.reshape(target), refuse=refuse)


@op("repeat", "shape")
def _repeat(rng):
    shp = shape(rng, 0, 3)
    reps = int(rng.integers(0, 4))
    axis = None if not shp or rng.random() < 0.3 else int(rng.integers(-len(shp), len(shp)))
    x = values(rng, shp, "float32")
    return Case(f"repeat(x{shp}, {reps}, axis={axis})", [x], lambda a: F.repeat(a, reps, axis),
                lambda a: torch.repeat_interleave(a, reps, axis),
                refuse="upstream asserts repeats >= 1" if reps == 0 else None)


@op("tile", "shape")
def _tile(rng):
    shp = shape(rng, 0, 3)
    reps = tuple(int(r) for r in rng.integers(1, 4, size=int(rng.integers(len(shp) if shp else 1,
                                                                          len(shp) + 2))))
    x = values(rng, shp, "float32")
    return Case(f"tile(x{shp}, {reps})", [x], lambda a: F.tile(a, reps),
                lambda a: torch.tile(a, reps))


@op("roll", "shape")
def _roll(rng):
    shp = shape(rng, 1, 3)
    if rng.random() < 0.3:
        axis, shift = None, int(rng.integers(-5, 6))
    elif rng.random() < 0.5:
        axis, shift = int(rng.integers(-len(shp), len(shp))), int(rng.integers(-5, 6))
    else:
        k = int(rng.integers(1, len(shp) + 1))
        axis = tuple(int(a) for a in rng.permutation(len(shp))[:k])
        shift = tuple(int(s) for s in rng.integers(-5, 6, size=k))
    x = values(rng, shp, "float32")
    return Case(f"roll(x{shp}, {shift}, axis={axis})", [x], lambda a: F.roll(a, shift, axis),
                lambda a: torch.roll(a, shift, axis) if axis is not None else
                torch.roll(a, shift))


@op("flip", "shape")
def _flip(rng):
    shp = shape(rng, 1, 4)
    k = int(rng.integers(1, len(shp) + 1))
    axis = tuple(int(a) - (len(shp) if rng.random() < 0.3 else 0)
                 for a in rng.permutation(len(shp))[:k])
    axis = axis[0] if k == 1 and rng.random() < 0.5 else axis
    x = values(rng, shp, "float32")
    return Case(f"flip(x{shp}, {axis})", [x], lambda a: F.flip(a, axis),
                lambda a: torch.flip(a, axis if isinstance(axis, tuple) else (axis,)))


@op("indexing_one_hot", "indexing")
def _indexing_one_hot(rng):
    shp = shape(rng, 1, 3, zero=False)
    axis = int(rng.integers(-len(shp), len(shp)))
    keep = bool(rng.random() < 0.4)
    ishape = shp[:axis % len(shp)] + shp[axis % len(shp) + 1:]
    idx = rng.integers(0, shp[axis], size=ishape).astype(np.int32)
    x = values(rng, shp, "float32")

    def t(a, i):
        out = torch.gather(a, axis, i.long().unsqueeze(axis))
        return out if keep else out.squeeze(axis)
    return Case(f"indexing_one_hot(x{shp}, idx{ishape}, axis={axis}, keepdims={keep})",
                [x, idx], lambda a, i: F.indexing_one_hot(a, i, axis, keep), t, diff=[0])


@op("diag", "shape")
def _diag(rng):
    shp = shape(rng, 1, 2)
    k = int(rng.integers(-3, 4))
    x = values(rng, shp, "float32")
    return Case(f"diag(x{shp}, k={k})", [x], lambda a: F.diag(a, k), lambda a: torch.diag(a, k))
