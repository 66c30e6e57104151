"""Tests for megengine/module/elemwise.py: each Elemwise mode against the torch expression it names."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from tests.oracle import check_against_torch

rs = np.random.RandomState(0)
A = rs.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
B = rs.uniform(-1.5, 1.5, (3, 4)).astype(np.float32)
C = rs.uniform(-1.0, 1.0, (3, 4)).astype(np.float32)
D = rs.uniform(-1.0, 1.0, (4,)).astype(np.float32)  # broadcasts

UNARY = [
    ("RELU", torch.relu), ("abs", torch.abs), ("NEGATE", torch.neg), ("exp", torch.exp),
    ("log", torch.log), ("log1p", torch.log1p), ("expm1", torch.expm1), ("sin", torch.sin),
    ("cos", torch.cos), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid),
    ("h_swish", torch.nn.functional.hardswish), ("silu", torch.nn.functional.silu),
    ("sqrt", torch.sqrt), ("square", torch.square),
]
BINARY = [
    ("ADD", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("true_div", torch.div),
    ("max", torch.maximum), ("min", torch.minimum), ("pow", torch.pow),
    ("fuse_add_relu", lambda x, y: torch.relu(x + y)),
    ("FUSE_ADD_SIGMOID", lambda x, y: torch.sigmoid(x + y)),
    ("fuse_add_tanh", lambda x, y: torch.tanh(x + y)),
    ("fuse_add_h_swish", lambda x, y: torch.nn.functional.hardswish(x + y)),
    ("switch_gt0", lambda x, y: torch.where(x > 0, y, torch.zeros_like(y))),
    ("log_sum_exp", torch.logaddexp),
]


@pytest.mark.parametrize("mode, torch_fn", UNARY)
def test_unary_modes(mode, torch_fn):
    check_against_torch(M.Elemwise(mode), torch_fn, A)


@pytest.mark.parametrize("mode, torch_fn", BINARY)
def test_binary_modes_broadcast(mode, torch_fn):
    if mode == "switch_gt0":  # the condition input has no gradient
        check_against_torch(M.Elemwise(mode), torch_fn, B, D, diff=[1])
    else:
        check_against_torch(M.Elemwise(mode), torch_fn, A, D)


def test_ternary_and_quaternary_fused_modes():
    check_against_torch(M.Elemwise("fuse_mul_add3"), lambda a, b, c: a * b + c, A, B, C)
    check_against_torch(M.Elemwise("FUSE_MUL_ADD4"), lambda a, b, c, d: a * b + c * d, A, B, C, A)
    check_against_torch(M.Elemwise("cond_leq_mov"),
                        lambda a, b, c: torch.where(a <= b, c, torch.zeros_like(c)),
                        B, C, A, diff=[2])


def test_comparisons_and_unknown_mode():
    # upstream 1.13 measured: the layer's comparisons give 0 / 1 in the inputs' dtype
    # (lt of [1., 2, 3] and [2., 2, 2] is float32 [1, 0, 0]; of int32s int32 [1, 0, 0]), where
    # F.less and x < y give bool
    out = M.Elemwise("lt")(A, B)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), (A < B).astype(np.float32))
    ints = M.Elemwise("leq")(np.array([1, 2, 3], np.int32), np.array([2, 2, 2], np.int32))
    assert ints.dtype == np.int32 and ints.numpy().tolist() == [1, 1, 0]
    assert M.Elemwise("eq")(A, A).numpy().tolist() == np.ones_like(A).tolist()
    assert M.Elemwise("neq")(A, B).dtype == np.float32
    with pytest.raises(ValueError, match="unknown method 'fuse_nothing'"):
        M.Elemwise("fuse_nothing")
    # upstream 1.13 measured: the repr names no method (earlier versions of this fork did)
    assert repr(M.Elemwise("add")) == "Elemwise()" and M.Elemwise("add").method == "add"


def test_clip_and_prelu_modes():
    # upstream 1.13 measured: clip of [1, 2, 3] between [2, 2, 2] and [2, 3, 4] is [2, 2, 3]
    lo, hi = np.full(3, 2.0, np.float32), np.array([2.0, 3.0, 4.0], np.float32)
    got = M.Elemwise("clip")(*map(mge.tensor, (np.array([1.0, 2.0, 3.0], np.float32), lo, hi)))
    assert got.numpy().tolist() == [2.0, 2.0, 3.0]
    check_against_torch(M.Elemwise("clip"), lambda x, a, b: torch.minimum(torch.maximum(x, a), b),
                        B, C - 0.5, C + 0.5, diff=[0])
    check_against_torch(M.Elemwise("prelu"), lambda x, w: torch.where(x > 0, x, x * w), B, C)


def test_error_function_modes_and_fast_tanh():
    # MegEngine/swin-transformer's trunc_normal_ calls M.Elemwise("erfinv"); the layer shares
    # functional's mode table, so every upstream mode is there
    u = rs.uniform(-0.9, 0.9, (3, 4)).astype(np.float32)
    check_against_torch(M.Elemwise("erfinv"), torch.erfinv, u)
    check_against_torch(M.Elemwise("ERF"), torch.erf, B)
    check_against_torch(M.Elemwise("erfc"), torch.erfc, B)
    check_against_torch(M.Elemwise("erfcinv"), lambda x: torch.erfinv(1 - x), A - 0.4)
    # upstream's FAST_TANH is the rational approximation x (27 + x^2) / (27 + 9 x^2)
    check_against_torch(M.Elemwise("fast_tanh"), lambda x: x * (27 + x * x) / (27 + 9 * x * x), B)
    check_against_torch(M.Elemwise("neg"), torch.neg, B)  # the alias this layer always had
