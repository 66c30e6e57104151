"""F.einsum: Einstein summation over tensors, as one differentiable op."""
import functools
import math
import string

import numpy as np

from ..core.dispatch import Op, apply
from ..core.dtype import refuse_quantized
from ..core.ops import (acc_dtype, acc_sum, masked_gradient, masked_gradient_graph, matmul,
                        refuse_bool_product, xp_of)
from ..core.tensor import Tensor, promote_types
from .elemwise import _tensor

__all__ = ["einsum"]


# Planning an einsum (parsing, the matrix product's axes, the gradients' equations) took as
# long as the (8, 16, 32) x (8, 32, 16) product itself: the plans are kept per equation and
# shapes (a training loop repeats both), by the cached functions below. Measured with one
# thread (CPU time of the calling thread, the machine shared) at those shapes: forward 61 ->
# 18 us, forward + backward 296 -> 129 us; bench_ops.py ``--case einsum``, megengine / torch,
# before and after, alternated twice: (8, 16, 32) forward 1.33-1.60x -> 0.79-0.84x, forward +
# backward 1.12-1.13x -> 0.71-0.73x; (8, 64, 128) 1.21-1.29x -> 0.99-1.02x and 1.28-1.55x ->
# 1.01-1.02x.
_PLANS = 256


@functools.lru_cache(maxsize=_PLANS)
def _parse(equation, shapes):
    """The equation in explicit form with every '...' spelled out as letters.

    ``shapes``: a tuple of the operands' shapes. Returns (input subscripts, output subscripts,
    label -> size), cached: callers read the dict and never change it. The ellipsis letters
    are letters the equation does not use; they are aligned to the right as numpy broadcasts
    them.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(
            f"einsum: equation {equation!r} names {len(terms)} operand(s) but "
            f"{len(shapes)} were given"
        )
    for part in terms + ([rhs] if arrow else []):
        bad = set(part.replace("...", "")) - set(string.ascii_letters)
        if bad or part.count("...") > 1:
            raise ValueError(
                f"einsum: bad subscripts {part!r} in {equation!r}: use letters and at most one "
                "'...' per operand"
            )
    free = [c for c in string.ascii_letters if c not in eq]
    n_ell = []
    for term, shape in zip(terms, shapes):
        named = len(term.replace("...", ""))
        if "..." in term:
            if named > len(shape):
                raise ValueError(
                    f"einsum: subscripts {term!r} name {named} dims but the operand has "
                    f"shape {shape}"
                )
            n_ell.append(len(shape) - named)
        elif named != len(shape):
            raise ValueError(
                f"einsum: subscripts {term!r} name {named} dims but the operand has shape {shape}"
            )
    ell = "".join(free[: max(n_ell, default=0)])
    subs, k = [], 0
    for term in terms:
        if "..." in term:
            e = n_ell[k]
            k += 1
            term = term.replace("...", ell[len(ell) - e:] if e else "")
        subs.append(term)
    if arrow:
        out = rhs.replace("...", ell)
        missing = set(out) - set("".join(subs))
        if missing:
            raise ValueError(
                f"einsum: output labels {sorted(missing)} of {equation!r} appear in no input"
            )
        if len(set(out)) != len(out):
            raise ValueError(f"einsum: output subscripts {rhs!r} repeat a label")
    else:
        # implicit mode, as numpy: broadcast dims first, then the labels seen once, sorted
        joined = "".join(subs)
        out = ell + "".join(sorted(c for c in set(joined) if c not in ell and joined.count(c) == 1))
    sizes = {}
    for term, shape in zip(subs, shapes):
        own = {}
        for c, n in zip(term, shape):
            if own.setdefault(c, n) != n:  # (a diagonal is square: no broadcast within one)
                raise ValueError(
                    f"einsum: label {c!r} repeats in one operand with sizes {own[c]} and {n} "
                    f"({equation!r} with shapes {list(shapes)}); a diagonal needs equal sizes"
                )
            have = sizes.get(c)
            if have is not None and have != 1 and n != 1 and have != n:
                raise ValueError(
                    f"einsum: label {c!r} has size {have} in one operand and {n} in another "
                    f"({equation!r} with shapes {list(shapes)})"
                )
            # a size-1 dimension broadcasts to the other's size, 0 included (as numpy's)
            sizes[c] = n if have is None or have == 1 else have
    return subs, out, sizes


def _wide(arrays):
    """``arrays`` with float16 ones in float32, or None where none is float16: numpy's einsum
    of two operands adds float16 in float16 (a contraction over 5000 ones stopped at 2048),
    torch's kernels add in float32 and round once. The gradients' contractions are widened
    too: numpy 2.4's optimized einsum adds their float16 in float32, numpy 2.0's does not
    everywhere (the gradient of 'bij,bj->bi' over 20000 labels was 73% off there)."""
    for a in arrays:
        if acc_dtype(a.dtype) is not None:
            return [b if acc_dtype(b.dtype) is None else b.astype(acc_dtype(b.dtype))
                    for b in arrays]
    return None


# numpy's plain einsum loop over every combination of labels is cheaper than a matrix product
# below ~65536 combinations and far slower above (one thread, float32: 'ij,jk->ik' 8^3 4.2 us
# plain against 22 through numpy's ``optimize``, 64^3 89 against 30; 'bij,bjk->bik' 4x8^3 8.9
# against 21, 16x32^3 309 against 43, (16, 64, 64) 907 against 113). From there a contraction
# of two numpy operands is one batched matrix product (`_as_matmul`) through `core.ops.matmul`:
# numpy's BLAS on the calling thread, or ATen in torch's pool where numpy's BLAS would start
# threads of its own (which numpy's ``optimize`` path lets it do). Chains of three or more take
# numpy's ``optimize`` (a contraction order; ~20 us of planning per call), as do CuPy arrays.
# Earlier versions of this fork took the plain loop for every two-operand forward.
_OPTIMIZE_MIN = 65536


def _contract(xp, eq, operands):
    """``xp.einsum(eq, *operands)`` (``eq`` explicit, with '->') by the cheapest of the paths
    above."""
    if len(operands) > 2:
        return xp.einsum(eq, *operands, optimize=True)
    if len(operands) == 2 and _combinations(eq, tuple(x.shape for x in operands)) \
            >= _OPTIMIZE_MIN:
        if xp is np:
            out = _as_matmul(eq, *operands)
            if out is not None:
                return out
        return xp.einsum(eq, *operands, optimize=True)
    return xp.einsum(eq, *operands)


@functools.lru_cache(maxsize=_PLANS)
def _combinations(eq, shapes):
    """How many combinations of label values the plain loop of ``eq`` visits."""
    sizes = {}
    for sub, shape in zip(eq.partition("->")[0].split(","), shapes):
        for c, n in zip(sub, shape):
            sizes[c] = max(sizes.get(c, 1), n)
    return math.prod(sizes.values())


def _as_matmul(eq, a, b):
    """Two-operand ``np.einsum(eq, a, b)`` as one batched matrix product: the labels both keep
    (batch), those only one keeps (rows of a, columns of b) and those both sum (the inner
    dimension) each merged into one axis; a label only one operand has and drops is summed
    first. None where that does not apply (a label repeated in an operand, a size-1 dimension
    broadcast against another size, other dtypes)."""
    if a.dtype is not b.dtype or a.dtype.kind != "f":
        return None
    plan = _matmul_plan(eq, a.shape, b.shape)
    if plan is None:
        return None
    drop_a, drop_b, a_axes, a3, b_axes, b3, y_shape, y_axes = plan
    if drop_a:
        a = a.sum(drop_a)
    if drop_b:
        b = b.sum(drop_b)
    y = matmul(a.transpose(a_axes).reshape(a3), b.transpose(b_axes).reshape(b3))
    return y.reshape(y_shape).transpose(y_axes)


@functools.lru_cache(maxsize=_PLANS)
def _matmul_plan(eq, a_shape, b_shape):
    """`_as_matmul`'s axes for ``eq`` and two operands of these shapes: (axes of a to sum
    first, the same for b, a's axis order and 3-D shape, b's, the product's shape before its
    axes go to the output's order, that order), or None where it does not apply."""
    lhs, out = eq.split("->")
    sa, sb = lhs.split(",")
    if len(set(sa)) < len(sa) or len(set(sb)) < len(sb):
        return None
    sizes = {}
    for sub, shape in ((sa, a_shape), (sb, b_shape)):
        for c, n in zip(sub, shape):
            if sizes.setdefault(c, n) != n:  # broadcast: numpy's einsum does it
                return None
    drop_a = tuple(i for i, c in enumerate(sa) if c not in sb and c not in out)
    drop_b = tuple(i for i, c in enumerate(sb) if c not in sa and c not in out)
    if drop_a:
        sa = "".join(c for c in sa if c in sb or c in out)
    if drop_b:
        sb = "".join(c for c in sb if c in sa or c in out)
    batch = [c for c in out if c in sa and c in sb]
    rows = [c for c in out if c in sa and c not in sb]
    cols = [c for c in out if c in sb and c not in sa]
    inner = [c for c in sa if c in sb and c not in out]

    def size(labels):
        return math.prod(sizes[c] for c in labels)

    order = batch + rows + cols
    return (drop_a, drop_b,
            tuple(sa.index(c) for c in batch + rows + inner),
            (size(batch), size(rows), size(inner)),
            tuple(sb.index(c) for c in batch + inner + cols),
            (size(batch), size(inner), size(cols)),
            tuple(sizes[c] for c in order), tuple(order.index(c) for c in out))


@functools.lru_cache(maxsize=_PLANS)
def _grad_plan(equation, shapes, k):
    """How d(out)/d(operand k) of einsum ``equation`` over operands of ``shapes`` contracts:
    (equation, the extra constant arrays' specs), cached.

    The gradient is einsum(grad, other operands -> operand k's labels). A label repeated
    in operand k (a diagonal, 'ii') gets a fresh name tied back by an identity matrix; a
    label only operand k has (summed away in the forward) is spread by a ones vector.
    """
    subs, out, sizes = _parse(equation, shapes)
    sub = subs[k]
    others = [s for j, s in enumerate(subs) if j != k]
    used = set(equation) | set("".join(subs)) | set(out)
    fresh = iter(c for c in string.ascii_letters if c not in used)
    renamed, seen, extras = [], set(), []
    for c in sub:
        if c in seen:
            f = next(fresh)
            extras.append(("eye", c + f, sizes[c]))
            renamed.append(f)
        else:
            seen.add(c)
            renamed.append(c)
    have = set(out).union(*others) | {c for _, s, _ in extras for c in s}
    for c in dict.fromkeys(renamed):
        if c not in have:
            extras.append(("ones", c, sizes[c]))
    eq = ",".join([out] + others + [s for _, s, _ in extras]) + "->" + "".join(renamed)
    return eq, tuple(extras)


def _bool_sum(xs):
    """The operands of an einsum of bools that sums a label: two or more are a matrix product
    of bools, refused as F.matmul's (torch: "bmm" not implemented for 'Bool'); one is a sum,
    which counts the Trues in int32 as F.sum does (torch counts in int64; numpy's einsum, and
    earlier versions of this fork, gave their or). Without a sum, a product of bools is their
    and, as torch's."""
    if len(xs) > 1:
        refuse_bool_product(xs[0].dtype, "einsum")
    return (xs[0].astype(np.int32),)


def _diagonals(xp, labels, extras):
    """Where the gradient (over ``labels``) of an operand with a repeated label may be other
    than 0: on the diagonals that the identity matrices of ``extras`` tie. Off them it is
    selected to 0 (the identities' zeros times a NaN or infinite gradient made NaN there;
    torch's gradient is put on the diagonal alone)."""
    mask = True
    for kind, (c, f), n in (e for e in extras if e[0] == "eye"):
        at_c, at_f = [1] * len(labels), [1] * len(labels)
        at_c[labels.index(c)] = at_f[labels.index(f)] = n
        mask = mask & (xp.arange(n).reshape(at_c) == xp.arange(n).reshape(at_f))
    return mask


class Einsum(Op):
    holomorphic = True  # complex gradients (core/dispatch.py): its contractions conjugate nothing

    def __init__(self, equation):
        if not isinstance(equation, str):  # (before the plans' caches hash it)
            raise TypeError(f"einsum: equation must be a str like 'ij,jk->ik', got {equation!r}")
        self.equation = equation

    def forward(self, *xs):
        self.shapes = tuple(x.shape for x in xs)
        self.subs, self.out, self.sizes = _parse(self.equation, self.shapes)
        self.dtypes = [x.dtype for x in xs]
        if any(d != self.dtypes[0] for d in self.dtypes[1:]):  # upstream's promotion, not
            # numpy's einsum's (int32 and float32 gave float64, int32 and complex64 complex128)
            want = functools.reduce(promote_types, self.dtypes)
            xs = tuple(x.astype(want, copy=False) for x in xs)
        if xs[0].dtype.kind == "b" and not set("".join(self.subs)) <= set(self.out):
            xs = _bool_sum(xs)
        self.xs = xs
        eq = ",".join(self.subs) + "->" + self.out
        xp, wide = xp_of(xs[0]), _wide(xs)
        if wide is None:
            return _contract(xp, eq, xs)
        return _contract(xp, eq, wide).astype(xp.result_type(*xs))

    def _full_shape(self, sub):
        return tuple(self.sizes[c] for c in sub)

    def backward(self, g):
        xp = xp_of(g)
        grads = []
        for k, need in enumerate(self.needs_input_grad):
            if not need:
                grads.append(None)
                continue
            eq, extras = _grad_plan(self.equation, self.shapes, k)
            # size-1 dims broadcast in the forward: contract against the broadcast view
            others = []
            for j, (x, s) in enumerate(zip(self.xs, self.subs)):
                if j != k:
                    full = self._full_shape(s)
                    others.append(x if x.shape == full else xp.broadcast_to(x, full))
            consts = [xp.eye(n, dtype=g.dtype) if kind == "eye" else xp.ones(n, g.dtype)
                      for kind, _, n in extras]
            operands = [g, *others, *consts]
            gk = _contract(xp, eq, _wide(operands) or operands)
            if any(kind == "eye" for kind, _, _ in extras):
                gk = masked_gradient(gk, _diagonals(xp, eq.split("->")[1], extras))
            gk = self._unbroadcast(xp, gk, k)
            if gk.dtype.kind != "c":  # (a real input's complex gradient: the dispatcher takes
                gk = gk.astype(self.dtypes[k], copy=False)  # its real part)
            grads.append(gk)
        return tuple(grads)

    def _unbroadcast(self, xp, gk, k):
        axes = tuple(i for i, (n, full) in enumerate(zip(self.shapes[k], gk.shape)) if n != full)
        return acc_sum(gk, axes, keepdims=True) if axes else gk

    def grad_graph(self, inputs, outputs, grads):
        # the same contractions, built from tensors so an outer GradManager records them
        from .tensor import broadcast_to

        g = grads[0]
        out = []
        for k, need in enumerate(self.needs_input_grad):
            if not need:
                out.append(None)
                continue
            eq, extras = _grad_plan(self.equation, self.shapes, k)
            others = [broadcast_to(x, self._full_shape(s))
                      for j, (x, s) in enumerate(zip(inputs, self.subs)) if j != k]
            xp = xp_of(g._data)
            consts = [Tensor._wrap(xp.eye(n, dtype=g.dtype) if kind == "eye"
                                   else xp.ones(n, g.dtype), g._device)
                      for kind, _, n in extras]
            gk = apply(Einsum(eq), g, *others, *consts)
            if any(kind == "eye" for kind, _, _ in extras):
                gk = masked_gradient_graph(gk, _diagonals(xp, eq.split("->")[1], extras))
            axes = tuple(i for i, (n, full) in enumerate(zip(self.shapes[k], gk.shape))
                         if n != full)
            out.append(gk.sum(axis=axes, keepdims=True) if axes else gk)
        return tuple(out)


def einsum(equation, *operands):
    """Einstein summation, as ``numpy.einsum``: ``F.einsum("ik,kj->ij", a, b)``.

    Subscripts are letters; ``...`` stands for broadcast dimensions; a label repeated within
    one operand takes its diagonal; without ``->`` the output holds the labels seen once, in
    alphabetical order (after the ``...`` dimensions). A label's size-1 dimensions broadcast
    to its size in the other operands (0 included); a label repeated within one operand needs
    the same size at each place. Differentiable in every operand.
    """
    if not operands:
        raise ValueError("einsum: give at least one operand after the equation")
    operands = [_tensor(x) for x in operands]
    for t in operands:
        if t._data.dtype.metadata is not None:  # (a product's scale is not its operands')
            refuse_quantized("einsum", t)
    return apply(Einsum(equation), *operands)
