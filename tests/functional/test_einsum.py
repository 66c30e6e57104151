"""F.einsum against torch.einsum: values, first-order and second-order gradients, errors."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from oracle import check_against_torch, check_float16_against_torch

CASES = [
    ("ij->ji", [(2, 3)]),
    ("ij", [(2, 3)]),                                  # implicit: identity
    ("ba", [(2, 3)]),                                  # implicit: sorted labels -> transpose
    ("ik,kj->ij", [(2, 3), (3, 4)]),
    ("ik,kj", [(2, 3), (3, 4)]),
    ("i,j->ij", [(2,), (3,)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (1, 4, 5)]),     # ellipsis dims broadcast (1 vs 2)
    ("i...,i...->...", [(3, 2, 4), (3, 1, 4)]),
    ("ii->i", [(4, 4)]),                               # diagonal
    ("ii", [(4, 4)]),                                  # trace
    ("iij->ji", [(3, 3, 2)]),
    ("ij->", [(2, 3)]),
    ("ijk->i", [(2, 3, 4)]),                           # labels only this operand has
    ("ik,jkl,il->ij", [(2, 3), (4, 3, 5), (2, 5)]),    # three operands
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("i j , j k -> i k", [(2, 3), (3, 2)]),            # spaces are ignored
    ("bde,e", [(0, 4, 4), (4,)]),                      # an empty label (fuzz seed 78)
    ("ebcd,cabd", [(1, 0, 4, 1), (4, 3, 0, 1)]),       # size 1 broadcast to 0 (fuzz seed 39)
]


# two operands: numpy's plain loop below 65536 label combinations; from there one batched
# matrix product, or numpy's optimized path where that does not apply
LARGE = [
    ("bij,bjk->bik", [(16, 64, 64), (16, 64, 64)], "matmul"),  # 4M combinations
    ("ij,jk->ik", [(64, 32), (32, 32)], "matmul"),  # 65536 exactly
    ("ij,jk->ik", [(63, 32), (32, 32)], "plain"),  # 64512
    ("bhqd,bhkd->bhqk", [(2, 4, 32, 16), (2, 4, 32, 16)], "matmul"),  # attention scores
    ("bij,bjk->kib", [(4, 24, 32), (4, 32, 40)], "matmul"),  # output in another order
    ("ijk,jl->li", [(30, 20, 8), (20, 16)], "matmul"),  # k only in the first: summed first
    ("i,j->ij", [(300,), (300,)], "matmul"),  # an outer product: no inner label
    ("ij,ij->", [(300, 300), (300, 300)], "matmul"),  # all summed: 1 x 1 result
    ("ii,ij->j", [(300, 300), (300, 256)], "optimize"),  # a diagonal (i twice in one operand)
    ("bij,bjk->bik", [(1, 64, 64), (8, 64, 64)], "optimize"),  # b broadcast
    ("ii->i", [(300, 300)], "plain"),  # its gradient: (g, an identity), a fresh label, 90000
]


@pytest.mark.parametrize("eq,shapes,path", LARGE, ids=[f"{c[0]}-{c[2]}" for c in LARGE])
def test_einsum_of_large_contractions_is_one_matrix_product(eq, shapes, path, monkeypatch):
    import importlib

    einsum_module = importlib.import_module("megengine.functional.einsum")  # (F.einsum: the op)
    seen = []
    real_einsum, real_matmul = np.einsum, einsum_module._as_matmul

    def spy_einsum(*args, optimize=False, **kwargs):
        seen.append("optimize" if optimize else "plain")
        return real_einsum(*args, optimize=optimize, **kwargs)

    def spy_matmul(*args):
        out = real_matmul(*args)
        if out is not None:
            seen.append("matmul")
        return out

    monkeypatch.setattr(np, "einsum", spy_einsum)
    monkeypatch.setattr(einsum_module, "_as_matmul", spy_matmul)
    rs = np.random.RandomState(3)
    arrays = [rs.randn(*s).astype(np.float32) for s in shapes]
    check_against_torch(lambda *xs: F.einsum(eq, *xs), lambda *ts: torch.einsum(eq, *ts),
                        *arrays, rtol=1e-4, atol=1e-3)
    if type(mge.tensor(1.0)._data) is np.ndarray:  # (on a GPU CuPy's einsum runs)
        assert seen[0] == path  # the forward's contraction


@pytest.mark.parametrize("dtype", ["float64", "float16", "int32"])
def test_einsum_as_one_matrix_product_keeps_dtypes(dtype):
    rs = np.random.RandomState(4)
    a, b = (rs.randint(-3, 4, s).astype(dtype) for s in ((8, 64, 32), (8, 32, 48)))
    y = F.einsum("bij,bjk->bik", mge.tensor(a, dtype=dtype), mge.tensor(b, dtype=dtype))
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y.numpy(), np.matmul(a.astype(np.float64), b))


@pytest.mark.parametrize("eq,shapes", CASES, ids=[c[0] for c in CASES])
def test_einsum_values_and_grads_match_torch(eq, shapes):
    rs = np.random.RandomState(0)
    arrays = [rs.randn(*s).astype(np.float32) for s in shapes]
    torch_eq = eq.replace(" ", "")
    check_against_torch(lambda *xs: F.einsum(eq, *xs),
                        lambda *ts: torch.einsum(torch_eq, *ts), *arrays, check_dtype=True)


def test_einsum_integer_operands_are_exact_like_numpy():
    rs = np.random.RandomState(1)
    a = rs.randint(0, 100, (3, 4, 5)).astype(np.int32)
    b = rs.randint(0, 100, (5, 2)).astype(np.int32)
    out = F.einsum("ijk,kl->jil", mge.tensor(a), mge.tensor(b))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out.numpy(), np.einsum("ijk,kl->jil", a, b))


@pytest.mark.parametrize("other,want", [("float32", "float32"), ("complex64", "complex64"),
                                        ("float16", "float32")])
def test_einsum_of_integers_and_floats_takes_upstreams_promotion(other, want):
    # earlier versions of this fork gave numpy's einsum dtype: int32 and float32 float64,
    # int32 and complex64 complex128; int32 and float16 are float32 (upstream 1.13 measured:
    # float16 meeting an integer counts as float32)
    rs = np.random.RandomState(2)
    a = rs.randint(-5, 6, (3, 4)).astype(np.int32)
    b = rs.randn(5, 4).astype(other) if other != "complex64" else \
        (rs.randn(5, 4) + 1j * rs.randn(5, 4)).astype(other)
    x, y = mge.tensor(a), mge.tensor(b, dtype=other)
    with GradManager().attach([y]) as gm:
        out = F.einsum("ij,kj->ik", x, y)
        gm.backward(out, mge.tensor(np.ones(out.shape, want), dtype=want))
    tb = torch.tensor(b.astype(np.complex64 if other == "complex64" else np.float32),
                      requires_grad=True)
    ta = torch.tensor(a, dtype=tb.dtype)
    tout = torch.einsum("ij,kj->ik", ta, tb)
    tout.backward(torch.ones_like(tout))
    assert out.dtype == np.dtype(want) and y.grad.dtype == np.dtype(other)
    tol = 2e-2 if other == "float16" else 1e-5
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(y.grad.numpy(), tb.grad.numpy(), rtol=tol, atol=tol)


def test_einsum_second_order():
    # a Hessian-vector product through nested GradManagers vs torch create_graph=True
    rs = np.random.RandomState(2)
    a, b, v = (rs.randn(*s).astype(np.float32) for s in ((3, 4), (4, 4), (3, 4)))
    x, y = mge.Parameter(a), mge.Parameter(b)
    outer, inner = GradManager().attach([x, y]), GradManager().attach([x, y])
    with outer:
        with inner:
            inner.backward((F.einsum("ij,jj->i", x, y) ** 2).sum())
        gx = x.grad
        assert gx._tracked, "the first gradient was not recorded"
        x.grad = y.grad = None
        outer.backward((gx * mge.tensor(v)).sum())
    tx, ty = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (tgx,) = torch.autograd.grad((torch.einsum("ij,jj->i", tx, ty) ** 2).sum(), [tx],
                                 create_graph=True)
    hx, hy = torch.autograd.grad((tgx * torch.tensor(v)).sum(), [tx, ty])
    np.testing.assert_allclose(gx.numpy(), tgx.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), hx.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y.grad.numpy(), hy.numpy(), rtol=1e-4, atol=1e-5)


def test_einsum_grad_only_for_attached_operand():
    a = mge.tensor(np.ones((2, 3), np.float32))
    b = mge.tensor(np.arange(3, dtype=np.float32))
    gm = GradManager().attach([a])
    with gm:
        gm.backward(F.einsum("ij,j->", a, b))
    np.testing.assert_array_equal(a.grad.numpy(), np.tile(np.arange(3, dtype=np.float32), (2, 1)))
    assert b.grad is None


@pytest.mark.parametrize("eq,shapes,match", [
    ("ij,jk->ik", [(2, 3)], "names 2 operand"),
    ("ijk->i", [(2, 3)], "name 3 dims"),
    ("ij,jk->ik", [(2, 3), (4, 5)], "label 'j' has size 3"),
    ("ij->k", [(2, 3)], "appear in no input"),
    ("i1->i", [(2, 3)], "bad subscripts"),
    ("ij->ii", [(2, 3)], "repeat a label"),
    ("cb,bacb->", [(1, 4), (4, 2, 1, 1)], "label 'b' repeats in one operand with sizes 4 and 1"),
])
def test_einsum_bad_input_says_what_is_wrong(eq, shapes, match):
    with pytest.raises(ValueError, match=match):
        F.einsum(eq, *[mge.tensor(np.zeros(s, np.float32)) for s in shapes])


@pytest.mark.parametrize("equation", [["ij->ji"], 3, None], ids=["list", "int", "none"])
def test_einsum_equation_that_is_not_a_str_says_so(equation):
    with pytest.raises(TypeError, match="equation must be a str"):
        F.einsum(equation, mge.tensor(np.zeros((2, 3), np.float32)))


def test_einsum_plans_follow_the_shapes_of_each_call():
    # the plans are kept per equation and shapes: one equation over operands of other shapes
    # (a size-1 batch broadcast, a larger product, a smaller one again) recomputes none stale
    rs = np.random.RandomState(7)
    for shapes in [((4, 32, 64), (4, 64, 48)), ((1, 32, 64), (4, 64, 48)),
                   ((4, 8, 16), (4, 16, 8)), ((4, 32, 64), (4, 64, 48)),
                   ((6, 40, 64), (6, 64, 48))]:
        arrays = [rs.randn(*s).astype(np.float32) for s in shapes]
        check_against_torch(lambda *xs: F.einsum("bij,bjk->bik", *xs),
                            lambda *ts: torch.einsum("bij,bjk->bik", *ts), *arrays,
                            rtol=1e-4, atol=1e-4)


# numpy's einsum of two operands adds float16 in float16: a contraction over 5000 ones stopped
# at 2048; torch's kernels add in float32 and round once (the gradients' cases: long labels
# that a gradient sums over)
@pytest.mark.parametrize("equation, shapes", [
    ("ij,jk->ik", ((4, 20000), (20000, 3))),
    ("ij,jk->ik", ((20000, 3), (3, 2))),
    ("i,ij->j", ((20000,), (20000, 3))),
    ("bij,bj->bi", ((2, 20000, 3), (2, 3))),
], ids=["long_contraction", "long_gradient_sum", "vector_matrix", "batched_gradient_sum"])
def test_float16_einsum_adds_in_float32(equation, shapes):
    rs = np.random.RandomState(0)
    check_float16_against_torch(lambda *xs: F.einsum(equation, *xs),
                                lambda *ts: torch.einsum(equation, *ts),
                                *[rs.rand(*s) for s in shapes])


_BOOLS = np.array([[True, False, True], [True, True, False], [False, True, True]])


_B3 = np.stack([_BOOLS, ~_BOOLS])


@pytest.mark.parametrize("equation, ops", [
    ("ij,jk->ik", [_BOOLS, _BOOLS]), ("ij,ij->i", [_BOOLS, _BOOLS]), ("ij,ij->", [_BOOLS, _BOOLS]),
    ("bij,bjk->bik", [_B3, _B3]), ("ij,jk,kl->il", [_BOOLS] * 3), ("ij,j->i", [_BOOLS, _BOOLS[0]]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_einsum_summing_a_label_of_bools_is_refused_as_matmul(equation, ops):
    # as F.matmul of bools (torch: "bmm" not implemented for 'Bool'); earlier versions of this
    # fork gave numpy's or of ands
    with pytest.raises(NotImplementedError, match="Bool"):
        torch.einsum(equation, *map(torch.from_numpy, ops))
    with pytest.raises(TypeError, match=r"^einsum: the operands are bool.*integer or float"):
        F.einsum(equation, *map(mge.tensor, ops))


@pytest.mark.parametrize("equation, ops", [
    ("ij,ij->ij", [_BOOLS, ~_BOOLS]), ("ij,ij->ji", [_BOOLS, _BOOLS.T]),
    ("i,j->ij", [_BOOLS[0], _BOOLS[1]]), ("ij,jk->ijk", [_BOOLS, _BOOLS.T]),
    ("ij,j->ij", [_BOOLS, _BOOLS[1]]), ("ii->i", [_BOOLS]), ("ij", [_BOOLS]), ("ij->", [_BOOLS]),
    ("ij->j", [_BOOLS]), ("ii", [_BOOLS]), ("...j->...", [_BOOLS]),
    ("ij,ij->ij", [_BOOLS, np.arange(9, dtype=np.int32).reshape(3, 3)]),  # (float32, as @)
], ids=lambda v: v if isinstance(v, str) else "")
def test_einsum_of_bools_is_torchs_and_or_count(equation, ops):
    # no label summed: the and of the operands, bool (as torch); one operand summed: the count
    # of Trues, int32 as F.sum of bools (torch counts in int64; numpy's einsum gave their or);
    # a bool meeting an integer: float32 (upstream's promotion), the product of the values
    got = F.einsum(equation, *map(mge.tensor, ops))
    want = torch.einsum(equation, *(torch.from_numpy(x.astype(np.float32)) if len(
        {o.dtype for o in ops}) > 1 else torch.from_numpy(x) for x in ops)).numpy()
    assert got.dtype == {np.dtype(bool): np.bool_, np.dtype(np.int64): np.int32,
                         np.dtype(np.float32): np.float32}[want.dtype]
    np.testing.assert_array_equal(got.numpy(), want)
