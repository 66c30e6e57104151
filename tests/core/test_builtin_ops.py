"""Tests of megengine/core/_imperative_rt/ops.py (`megengine.core.ops.builtin`): each descriptor
applied with `core2.apply` against torch (values and gradients) or numpy."""
import pickle

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.core._imperative_rt.core2 import apply
from megengine.core.ops import builtin
from devices import host_default_device  # noqa: F401  (fixture used by name)
from oracle import check_against_torch

rng = np.random.RandomState(0)


def one(op, *xs):
    out = apply(op, *xs)
    assert isinstance(out, tuple) and len(out) == 1
    return out[0]


def test_builtin_is_the_descriptor_module_and_imports_as_upstream_writes_it():
    import megengine.core.ops.builtin as by_path
    from megengine.core._imperative_rt import ops as rt_ops
    from megengine.core.ops.builtin import Elemwise, LAMBUpdate  # noqa: F401

    assert by_path is builtin is rt_ops


# ---------------------------------------------------------------- Elemwise
UNARY = {  # mode -> torch function; inputs in (0.1, 0.9) suit every one of them
    "RELU": torch.relu, "ABS": torch.abs, "ACOS": torch.acos, "ASIN": torch.asin,
    "COS": torch.cos, "EXP": torch.exp, "EXPM1": torch.expm1, "LOG": torch.log,
    "LOG1P": torch.log1p, "NEGATE": torch.neg, "SIGMOID": torch.sigmoid, "SIN": torch.sin,
    "TANH": torch.tanh, "FAST_TANH": torch.tanh, "ERF": torch.erf, "ERFINV": torch.erfinv,
    "ERFC": torch.erfc, "H_SWISH": torch.nn.functional.hardswish,
    "SILU": torch.nn.functional.silu, "GELU": torch.nn.functional.gelu, "SINH": torch.sinh,
    "COSH": torch.cosh, "ASINH": torch.asinh, "ATANH": torch.atanh, "TAN": torch.tan,
    "SOFTPLUS": torch.nn.functional.softplus, "RELU6": torch.nn.functional.relu6,
    "HSIGMOID": torch.nn.functional.hardsigmoid,
    "LOGSIGMOID": torch.nn.functional.logsigmoid, "SQRT": torch.sqrt,
    "SQUARE": torch.square,
}


@pytest.mark.parametrize("mode", sorted(UNARY))
def test_unary_modes_match_torch_with_gradients(mode):
    x = rng.uniform(0.1, 0.9, (3, 4)).astype(np.float32)
    if mode in ("RELU", "ABS", "NEGATE", "H_SWISH", "RELU6", "HSIGMOID", "SILU", "GELU"):
        x = rng.uniform(-4, 8, (3, 4)).astype(np.float32)  # both sides of their kinks
    op = builtin.Elemwise(mode)
    check_against_torch(lambda t: one(op, t), UNARY[mode], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,np_fn", [
    ("CEIL", np.ceil), ("FLOOR", np.floor), ("ROUND", None),
    ("SIGN", lambda x: np.where(np.isnan(x), 0, np.sign(x))),  # (NaN's 0: upstream's, torch's)
    ("ISNAN", np.isnan), ("ISINF", np.isinf), ("ACOSH", np.arccosh),
])
def test_unary_modes_without_a_useful_gradient_match_numpy(mode, np_fn):
    x = np.array([-2.5, -1.2, 0.0, 0.5, 1.5, 2.7, np.nan, np.inf], np.float32)
    if mode == "ACOSH":
        x = np.array([1.0, 1.5, 3.0, 10.0], np.float32)
    if mode == "ROUND":  # upstream rounds halves away from zero (C's round), not to even
        x = x[:6]
        expect = np.array([-3, -1, 0, 1, 2, 3], np.float32)
    else:
        with np.errstate(invalid="ignore"):
            expect = np_fn(x)
    got = one(builtin.Elemwise(mode), mge.tensor(x)).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-6)


BINARY = {
    "ADD": torch.add, "SUB": torch.sub, "MUL": torch.mul, "TRUE_DIV": torch.div,
    "POW": torch.pow, "MAX": torch.maximum, "MIN": torch.minimum,
    "LOG_SUM_EXP": torch.logaddexp, "ATAN2": torch.atan2,
    "FUSE_ADD_RELU": lambda a, b: torch.relu(a + b),
    "FUSE_ADD_SIGMOID": lambda a, b: torch.sigmoid(a + b),
    "FUSE_ADD_TANH": lambda a, b: torch.tanh(a + b),
    "FUSE_ADD_H_SWISH": lambda a, b: torch.nn.functional.hardswish(a + b),
}


@pytest.mark.parametrize("mode", sorted(BINARY))
def test_binary_modes_broadcast_and_match_torch_with_gradients(mode):
    a = rng.uniform(0.2, 2.0, (2, 3)).astype(np.float32)
    b = rng.uniform(-1.5, 1.5, (3,)).astype(np.float32)
    op = builtin.Elemwise(mode=mode.lower())  # upstream also takes the name in lower case
    check_against_torch(lambda x, y: one(op, x, y), BINARY[mode], a, b, rtol=1e-5, atol=1e-5)


def _torch_grad(fn, x, dy):
    t = torch.tensor(x, requires_grad=True)
    (g,) = torch.autograd.grad(fn(t), t, torch.tensor(dy))
    return g.numpy()


# backward kernels: mode -> (torch forward, whether the kernel takes the forward *output*)
GRAD_MODES = {
    "ABS_GRAD": (torch.abs, False), "SWITCH_GT0": (torch.relu, False),
    "SIGMOID_GRAD": (torch.sigmoid, True), "TANH_GRAD": (torch.tanh, True),
    "FAST_TANH_GRAD": (torch.tanh, False),
    "H_SWISH_GRAD": (torch.nn.functional.hardswish, False),
    "SILU_GRAD": (torch.nn.functional.silu, False),
    "GELU_GRAD": (torch.nn.functional.gelu, False),
    "SOFTPLUS_GRAD": (torch.nn.functional.softplus, False),
    "RELU6_GRAD": (torch.nn.functional.relu6, False),
    "HSIGMOID_GRAD": (torch.nn.functional.hardsigmoid, False),
    "ASINH_GRAD": (torch.asinh, False), "ATANH_GRAD": (torch.atanh, False),
}


@pytest.mark.parametrize("mode", sorted(GRAD_MODES))
def test_backward_kernel_modes_equal_torch_autograd(mode):
    fn, takes_output = GRAD_MODES[mode]
    x = rng.uniform(-5, 7, (10,)).astype(np.float32)
    if mode == "ATANH_GRAD":
        x = rng.uniform(-0.9, 0.9, (10,)).astype(np.float32)
    dy = rng.randn(10).astype(np.float32)
    first = fn(torch.tensor(x)).numpy() if takes_output else x
    got = one(builtin.Elemwise(mode), mge.tensor(first), mge.tensor(dy)).numpy()
    np.testing.assert_allclose(got, _torch_grad(fn, x, dy), rtol=1e-5, atol=1e-6)


def test_acosh_grad_and_prelu_modes_equal_torch():
    x = rng.uniform(1.2, 4, (6,)).astype(np.float32)
    dy = rng.randn(6).astype(np.float32)
    got = one(builtin.Elemwise("acosh_grad"), mge.tensor(x), mge.tensor(dy)).numpy()
    np.testing.assert_allclose(got, _torch_grad(torch.acosh, x, dy), rtol=1e-5)
    x = rng.randn(2, 3, 4).astype(np.float32)
    w = np.array([0.1, 0.3, 0.5], np.float32).reshape(1, 3, 1)
    check_against_torch(lambda a, b: one(builtin.Elemwise("prelu"), a, b),
                        lambda a, b: torch.where(a > 0, a, a * b), x, w)


def test_comparison_logic_shift_and_integer_modes_match_numpy():
    a = np.array([1, 5, 7, 9], np.int32)
    b = np.array([2, 5, 3, 4], np.int32)
    ta, tb = mge.tensor(a), mge.tensor(b)
    for mode, expect in [("LT", a < b), ("LEQ", a <= b), ("EQ", a == b), ("NEQ", a != b),
                         ("FLOOR_DIV", a // b), ("MOD", a % b), ("SHL", a << b),
                         ("SHR", a >> b), ("MAX", np.maximum(a, b))]:
        got = one(builtin.Elemwise(mode), ta, tb).numpy()
        # upstream 1.13 measured: the op's comparisons are 0 / 1 in the inputs' dtype
        np.testing.assert_array_equal(got, expect.astype(np.int32), err_msg=mode)
        assert got.dtype == np.int32, mode
    p = np.array([True, False, True, False])
    q = np.array([True, True, False, False])
    tp, tq = mge.tensor(p), mge.tensor(q)
    np.testing.assert_array_equal(one(builtin.Elemwise("and"), tp, tq).numpy(), p & q)
    np.testing.assert_array_equal(one(builtin.Elemwise("or"), tp, tq).numpy(), p | q)
    np.testing.assert_array_equal(one(builtin.Elemwise("xor"), tp, tq).numpy(), p ^ q)
    np.testing.assert_array_equal(one(builtin.Elemwise("not"), tp).numpy(), ~p)


def test_ternary_and_fused_modes_match_numpy():
    x, y, z, w = (rng.randn(5).astype(np.float32) for _ in range(4))
    tx, ty, tz, tw = map(mge.tensor, (x, y, z, w))
    np.testing.assert_allclose(one(builtin.Elemwise("fuse_mul_add3"), tx, ty, tz).numpy(),
                               x * y + z, rtol=1e-6)
    np.testing.assert_allclose(one(builtin.Elemwise("fuse_mul_add4"), tx, ty, tz, tw).numpy(),
                               x * y + z * w, rtol=1e-6)
    np.testing.assert_array_equal(one(builtin.Elemwise("cond_leq_mov"), tx, ty, tz).numpy(),
                                  np.where(x <= y, z, 0))
    np.testing.assert_array_equal(one(builtin.Elemwise("cond_lt_mov"), tx, ty, tz).numpy(),
                                  np.where(x < y, z, 0))
    lo, hi = mge.tensor(-0.5), mge.tensor(0.5)
    np.testing.assert_array_equal(one(builtin.Elemwise("clip"), tx, lo, hi).numpy(),
                                  np.clip(x, -0.5, 0.5))
    d = np.array([2.0, 0.0, -4.0], np.float32)
    n = np.array([1.0, 3.0, 2.0], np.float32)
    np.testing.assert_array_equal(
        one(builtin.Elemwise("safe_div"), mge.tensor(n), mge.tensor(d)).numpy(), [0.5, 0, -0.5])


def test_select_modes_give_zero_where_the_condition_fails_whatever_the_value():
    # upstream's SWITCH_GT0 / COND_LT_MOV / COND_LEQ_MOV are selects (upstream 1.13, measured:
    # switch_gt0([-1, 0, 1, 2], [inf, nan, inf, nan]) is [0, 0, inf, nan]); as products by
    # the condition they gave NaN (0 * inf) where it fails
    # where the condition fails (the builtin op's and megengine.module.Elemwise's, which
    # runs megengine.functional.elemwise's modes)
    import megengine.module as M

    x, g = mge.tensor([-1.0, 0.0, 1.0, 2.0]), mge.tensor([np.inf, np.nan, np.inf, np.nan])
    a, b = mge.tensor([1.0, 2.0, 0.0, 3.0]), mge.tensor([0.5, 2.0, 1.0, 1.0])
    for mode, args, want in (("switch_gt0", (x, g), [0, 0, np.inf, np.nan]),
                             ("cond_lt_mov", (a, b, g), [0, 0, np.inf, 0]),
                             ("cond_leq_mov", (a, b, g), [0, np.nan, np.inf, 0])):
        np.testing.assert_array_equal(one(builtin.Elemwise(mode), *args).numpy(), want)
        np.testing.assert_array_equal(M.Elemwise(mode)(*args).numpy(), want)


def test_modes_are_upstreams_enum_and_descriptors_compare_by_value():
    E = builtin.Elemwise
    assert E("add") == E("ADD") == E(E.Mode.ADD) == E(mode="Add")
    assert hash(E("add")) == hash(E(mode=E.Mode.ADD))
    assert E("add") != E("mul") and E("add") != builtin.Reduce("sum")
    assert E.Mode.FUSE_MUL_ADD3.name == "FUSE_MUL_ADD3"
    op = E("add")
    op.mode = "mul"  # parameters are attributes, as upstream's
    assert op == E("mul")
    assert "mode=" in repr(op)
    # a mode equals its name in any case, as upstream's enums compare with strings
    assert op.mode == "MUL" and op.mode == "mul" and op.mode != "ADD"
    assert E.Mode.ADD != E.Mode.MUL and {E.Mode.ADD: 1}[E("add").mode] == 1


def test_execution_strategy_flags_stay_on_a_pickled_descriptor():
    # upstream's Convolution.Strategy flags (megdnn's execution policy) combine with |
    conv = builtin.Convolution(stride_h=2)
    conv.strategy = conv.Strategy.PROFILE | conv.Strategy.REPRODUCIBLE
    loaded = pickle.loads(pickle.dumps(conv))
    assert loaded == conv and loaded.strategy == conv.strategy
    assert builtin.Convolution.Strategy.HEURISTIC not in loaded.strategy
    assert builtin.MatrixMul.Strategy is builtin.Convolution.Strategy


def test_bad_descriptors_and_applications_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown mode 'plus'.*ADD") as error:
        builtin.Elemwise("plus")
    assert isinstance(error.value, RuntimeError)  # (upstream 1.13: pybind's "Unable to cast")
    with pytest.raises(TypeError, match="unknown parameter 'axes'.*axis"):
        builtin.Reduce(mode="sum", axes=0)
    with pytest.raises(TypeError, match="missing parameter 'mode'"):
        builtin.Elemwise()
    x = mge.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="takes 2 input tensors, got 1"):
        apply(builtin.Elemwise("add"), x)
    with pytest.raises(TypeError, match="input 1 is a float, not a Tensor"):
        apply(builtin.Elemwise("add"), x, 1.0)
    with pytest.raises(NotImplementedError, match="RMULH"):
        apply(builtin.Elemwise("rmulh"), x, x)
    with pytest.raises(NotImplementedError, match="F.conv2d"):
        apply(builtin.Convolution(stride_h=1), x, x)
    assert builtin.Convolution(stride_h=1) == builtin.Convolution(stride_h=1)


def test_apply_runs_engine_ops_too_and_always_returns_a_tuple():
    from megengine.core.ops import Copy

    x = mge.tensor([1.0, 2.0])
    (y,) = apply(Copy(x.device), x)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    with pytest.raises(TypeError, match="op descriptor"):
        apply("add", x, x)


def test_elemwise_descriptor_is_traced_like_any_op():
    from megengine.jit import trace

    op = builtin.Elemwise("fuse_mul_add3")

    @trace(symbolic=True)
    def f(a, b, c):
        return one(op, a, b, c)

    for _ in range(3):  # the first call records, the later ones replay the program
        a, b, c = (rng.randn(4).astype(np.float32) for _ in range(3))
        np.testing.assert_allclose(f(*map(mge.tensor, (a, b, c))).numpy(), a * b + c, rtol=1e-6)


# ---------------------------------------------------------------- reductions, shapes, indexing
@pytest.mark.parametrize("mode,np_fn", [("sum", np.sum), ("sum_sqr", lambda a, **k:
                                         np.sum(a * a, **k)), ("product", np.prod),
                                        ("min", np.min), ("max", np.max), ("mean", np.mean)])
def test_reduce_modes_keep_the_axis_by_default_as_upstream(mode, np_fn):
    x = rng.uniform(0.5, 1.5, (2, 3, 4)).astype(np.float32)
    t = mge.tensor(x)
    got = one(builtin.Reduce(mode=mode, axis=1), t)
    np.testing.assert_allclose(got.numpy(), np_fn(x, axis=1, keepdims=True), rtol=1e-5)
    got = one(builtin.Reduce(mode=mode, axis=2, keepdim=False), t)
    np.testing.assert_allclose(got.numpy(), np_fn(x, axis=2), rtol=1e-5)
    target = mge.tensor(np.array([1, 3, 1], np.int32))  # reduce-to-shape form
    got = one(builtin.Reduce(mode=mode), t, target)
    np.testing.assert_allclose(got.numpy(), np_fn(x, axis=(0, 2), keepdims=True), rtol=1e-5)


def test_reduce_gradients_match_torch():
    x = rng.randn(3, 4).astype(np.float32)
    check_against_torch(lambda t: one(builtin.Reduce("sum_sqr", axis=0), t),
                        lambda t: (t * t).sum(0, keepdim=True), x)
    check_against_torch(lambda t: one(builtin.Reduce("mean", axis=1, keepdim=False), t),
                        lambda t: t.mean(1), x)


def test_typecvt_getvarshape_broadcast_reshape():
    x = rng.randn(2, 1, 3).astype(np.float32)
    t = mge.tensor(x)
    y = one(builtin.TypeCvt(dtype="float16"), t)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.numpy(), x.astype(np.float16))
    s = one(builtin.GetVarShape(), t)
    assert s.dtype == np.int32
    np.testing.assert_array_equal(s.numpy(), [2, 1, 3])
    np.testing.assert_array_equal(one(builtin.GetVarShape(axis=2), t).numpy(), [3])
    shape = mge.tensor(np.array([2, 4, 3], np.int32))
    np.testing.assert_array_equal(one(builtin.Broadcast(), t, shape).numpy(),
                                  np.broadcast_to(x, (2, 4, 3)))
    np.testing.assert_array_equal(one(builtin.Broadcast(shape=(2, 2, 3)), t).numpy(),
                                  np.broadcast_to(x, (2, 2, 3)))
    np.testing.assert_array_equal(
        one(builtin.Reshape(), t, mge.tensor(np.array([3, -1], np.int32))).numpy(),
        x.reshape(3, -1))
    check_against_torch(lambda a: one(builtin.Broadcast(shape=(2, 5, 3)), a),
                        lambda a: a.expand(2, 5, 3), x)


def test_dimshuffle_addaxis_removeaxis_identity_with_gradients():
    x = rng.randn(2, 3, 4).astype(np.float32)
    check_against_torch(lambda a: one(builtin.Dimshuffle((2, 0, 1)), a),
                        lambda a: a.permute(2, 0, 1), x)
    got = one(builtin.Dimshuffle(pattern=(1, "x", 0, 2)), mge.tensor(x))
    assert got.shape == (3, 1, 2, 4)
    np.testing.assert_array_equal(got.numpy(), x.transpose(1, 0, 2)[:, None])
    # upstream's op (megbrain's Dimshuffle) writes the new axis as -1 in its pattern
    check_against_torch(lambda a: one(builtin.Dimshuffle(pattern=(-1, 2, 0, -1, 1)), a),
                        lambda a: a.permute(2, 0, 1)[None, :, :, None], x)
    check_against_torch(lambda a: one(builtin.AddAxis(axis=[0, 3]), a),
                        lambda a: a.unsqueeze(0).unsqueeze(3), x)
    y = rng.randn(1, 3, 1).astype(np.float32)
    check_against_torch(lambda a: one(builtin.RemoveAxis(axis=[2, 0]), a),
                        lambda a: a.reshape(3), y)
    # upstream's AxisAddRemove applies its descriptors one after another, each position counted
    # on the shape the ones before it left, an added one from the end of its result
    # (src/opr/impl/tensor_manip.cpp: axis_manip_get_output_layout, ADD_1 at
    # axis.get(ndim + 1); tensor_manip.h: "All the axis descs would be processed in order")
    check_against_torch(lambda a: one(builtin.AddAxis(axis=[2, 0]), a),
                        lambda a: a.unsqueeze(2).unsqueeze(0), x)
    check_against_torch(lambda a: one(builtin.AddAxis(axis=[-1]), a),
                        lambda a: a.unsqueeze(-1), x)
    check_against_torch(lambda a: one(builtin.RemoveAxis(axis=[0, 1]), a),
                        lambda a: a.squeeze(0).squeeze(1), rng.randn(1, 3, 1).astype(np.float32))
    check_against_torch(lambda a: one(builtin.Identity(), a), lambda a: a.clone(), x)


def test_concat_copy_and_matmul_descriptors():
    a, b = rng.randn(2, 3).astype(np.float32), rng.randn(4, 3).astype(np.float32)
    check_against_torch(lambda p, q: one(builtin.Concat(axis=0), p, q),
                        lambda p, q: torch.cat([p, q], 0), a, b)
    y = one(builtin.Copy(comp_node="cpu1"), mge.tensor(a))
    assert y.device == "cpu1"
    np.testing.assert_array_equal(y.numpy(), a)
    check_against_torch(lambda p, q: one(builtin.MatrixMul(transposeB=True), p, q),
                        lambda p, q: p @ q.T, a, b)
    c = rng.randn(5, 3, 2).astype(np.float32)
    d = rng.randn(5, 3, 4).astype(np.float32)
    check_against_torch(lambda p, q: one(builtin.BatchedMatrixMul(True, False), p, q),
                        lambda p, q: p.transpose(1, 2) @ q, c, d)
    v, w = rng.randn(5).astype(np.float32), rng.randn(5).astype(np.float32)
    check_against_torch(lambda p, q: one(builtin.Dot(), p, q), torch.dot, v, w)


def test_indexing_one_hot_and_set_one_hot_match_torch():
    x = rng.randn(3, 4, 2).astype(np.float32)
    idx = np.array([[1, 3], [0, 0], [2, 1]], np.int32)
    check_against_torch(
        lambda a, i: one(builtin.IndexingOneHot(axis=1), a, i),
        lambda a, i: torch.gather(a, 1, i.long().unsqueeze(1)), x, idx, diff=[0])
    base = rng.randn(3, 4).astype(np.float32)
    pos = np.array([1, 2, 3], np.int32)
    val = rng.randn(3, 1).astype(np.float32)

    def torch_set(b, p, v):
        return b.scatter(1, p.long().unsqueeze(1), v)

    check_against_torch(lambda b, p, v: one(builtin.IndexingSetOneHot(axis=1), b, p, v),
                        torch_set, base, pos, val, diff=[0, 2])


def test_subtensor_and_multi_axis_vec_read_their_bounds_from_inputs():
    x = rng.randn(5, 6).astype(np.float32)
    t = mge.tensor(x)
    s = mge.tensor
    items = ((0, True, True, False, False), (1, False, False, True, False))
    got = one(builtin.Subtensor(items=items), t, s(1), s(4), s(2))
    np.testing.assert_array_equal(got.numpy(), x[1:4, ::2])
    got = one(builtin.Subtensor(items=((1, False, False, False, True),)), t, s(3))
    np.testing.assert_array_equal(got.numpy(), x[:, 3])
    i0 = s(np.array([0, 4, 2], np.int32))
    i1 = s(np.array([5, 1, 1], np.int32))
    items = ((0, False, False, False, True), (1, False, False, False, True))
    check_against_torch(
        lambda a: one(builtin.IndexingMultiAxisVec(items), a, i0, i1),
        lambda a: a[[0, 4, 2], [5, 1, 1]], x)
    with pytest.raises(TypeError, match="take 2 index inputs, got 1"):
        apply(builtin.Subtensor(items=items), t, s(1))


def test_linspace_descriptor():
    got = one(builtin.Linspace(), mge.tensor(0.0), mge.tensor(3.0), mge.tensor(4))
    np.testing.assert_allclose(got.numpy(), np.linspace(0, 3, 4, dtype=np.float32))
    got = one(builtin.Linspace(endpoint=False), mge.tensor(0.0), mge.tensor(2.0), mge.tensor(4))
    np.testing.assert_allclose(got.numpy(), np.linspace(0, 2, 4, endpoint=False), rtol=1e-6)


def test_fake_quant_matches_torch_fake_quantize():
    x = rng.uniform(-3, 3, (4, 5)).astype(np.float32)
    scale, zp = 0.05, 3
    check_against_torch(
        lambda a: one(builtin.FakeQuant(qmin=-128, qmax=127), a, mge.tensor(scale),
                      mge.tensor(zp, dtype="float32")),
        lambda a: torch.fake_quantize_per_tensor_affine(a, scale, zp, -128, 127), x,
        atol=1e-6)


# ---------------------------------------------------------------- LAMB, packing, collectives
def _lamb_reference(m, v, w, g, b1, b2, step, lr, wd, eps, bias_correction, always_adapt):
    """upstream's formulas, in float64 numpy"""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    c1, c2 = (1 - b1 ** step, 1 - b2 ** step) if bias_correction else (1.0, 1.0)
    delta = (m / c1) / (np.sqrt(v / c2) + eps) + wd * w
    pn, dn = np.linalg.norm(w), np.linalg.norm(delta)
    ratio = pn / dn if (always_adapt or wd > 0) and pn > 0 and dn > 0 else 1.0
    return m, v, w - lr * ratio * delta


@pytest.mark.parametrize("wd,always_adapt,bias_correction", [(0.4, False, True),
                                                             (0.0, False, True),
                                                             (0.0, True, False)])
def test_lamb_update_is_upstreams_step(wd, always_adapt, bias_correction):
    m, v, w = (rng.uniform(size=(8, 6)).astype(np.float32) for _ in range(3))
    g = rng.uniform(size=(8, 6)).astype(np.float16)  # upstream's own test feeds a float16 grad
    op = builtin.LAMBUpdate(0.9, 0.999, 3, 1e-2, wd, 1e-8, bias_correction, always_adapt)
    got = apply(op, *map(mge.tensor, (m, v, w, g)))
    expect = _lamb_reference(m.astype(np.float64), v.astype(np.float64), w.astype(np.float64),
                             g.astype(np.float64), 0.9, 0.999, 3, 1e-2, wd, 1e-8,
                             bias_correction, always_adapt)
    for a, b in zip(got, expect):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a.numpy(), b, rtol=2e-5, atol=1e-6)


def test_lamb_update_applied_in_a_loop_trains_as_the_lamb_optimizer():
    # upstream's LAMB optimizer is written with this op: a loop of it equals our LAMB
    w0 = rng.randn(4, 3).astype(np.float32)
    x = rng.randn(6, 4).astype(np.float32)
    p_opt, p_op = mge.Parameter(w0), mge.Parameter(w0)
    opt = mge.optimizer.LAMB([p_opt], lr=0.05, weight_decay=0.1)
    m = mge.tensor(np.zeros_like(w0))
    v = mge.tensor(np.zeros_like(w0))
    for step in range(1, 4):
        for p in (p_opt, p_op):
            gm = GradManager().attach(p)
            with gm:
                gm.backward(F.matmul(mge.tensor(x), p).sum() ** 2 / 10)
        opt.step()
        opt.clear_grad()
        op = builtin.LAMBUpdate(0.9, 0.999, mge.tensor(float(step)), 0.05, 0.1, 1e-8)
        m, v, new = apply(op, m, v, p_op, p_op.grad)
        p_op._reset(new)
        p_op.grad = None
    np.testing.assert_allclose(p_op.numpy(), p_opt.numpy(), rtol=1e-5, atol=1e-6)


def test_param_pack_descriptors_match_numpy():
    a = rng.randn(1).astype(np.float32)
    b = rng.randn(3, 3).astype(np.float32)
    offsets = [0, 1, 1, 10]
    packed = one(builtin.ParamPackConcat(offsets=offsets), mge.tensor(a), mge.tensor(b),
                 mge.tensor(np.array(offsets, np.int32)))
    np.testing.assert_array_equal(packed.numpy(), np.concatenate([a, b.ravel()]))
    p, q = apply(builtin.ParamPackSplit(offsets=offsets, shapes=[(1,), (3, 3)]), packed)
    np.testing.assert_array_equal(p.numpy(), a)
    np.testing.assert_array_equal(q.numpy(), b)


def test_collective_comm_is_hashable_and_needs_a_process_group():
    # applied on 2 ranks in tests/distributed/test_collective_descriptors.py
    assert builtin.CollectiveComm() == builtin.CollectiveComm()
    assert hash(builtin.CollectiveComm(mode="all_reduce_max")) == hash(
        builtin.CollectiveComm(mode=builtin.CollectiveComm.Mode.ALL_REDUCE_MAX))
    x = mge.tensor(rng.randn(3).astype(np.float32))
    with pytest.raises(ValueError, match="nr_devices=2.*1 ranks"):
        apply(builtin.CollectiveComm(nr_devices=2), x)
    with pytest.raises(RuntimeError, match="init_process_group"):
        apply(builtin.CollectiveComm(), x)


# ---------------------------------------------------------------- random numbers
def test_rng_descriptors_draw_from_the_global_source_or_a_seeded_handle():
    from megengine.core._imperative_rt.ops import (delete_rng_handle, get_global_rng_seed,
                                                    new_rng_handle)

    mge.random.seed(1234)
    assert get_global_rng_seed() == 1234
    shape = mge.tensor(np.array([200, 50], np.int32))
    u = one(builtin.UniformRNG(seed=get_global_rng_seed()), shape).numpy()
    assert u.shape == (200, 50) and u.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.02
    g = one(builtin.GaussianRNG(mean=2.0, std=0.5), shape).numpy()
    assert abs(g.mean() - 2.0) < 0.02 and abs(g.std() - 0.5) < 0.02
    draws = []
    for _ in range(2):  # one seed gives one sequence; consecutive draws differ
        h = new_rng_handle("cpu1", 7)
        op = builtin.GaussianRNG(seed=7, handle=h)
        a, b = one(op, shape), one(op, shape)
        assert a.device == "cpu1"
        assert not np.array_equal(a.numpy(), b.numpy())
        draws.append(a.numpy())
        delete_rng_handle(h)
    np.testing.assert_array_equal(draws[0], draws[1])
    with pytest.raises(ValueError, match="no random-number handle"):
        delete_rng_handle(h)


def test_parametric_rng_descriptors_have_their_distributions_moments():
    mge.random.seed(5)
    n = 20000
    k, theta = F.full((n,), 2.0), F.full((n,), 0.8)
    gamma = one(builtin.GammaRNG(), k, theta).numpy()
    assert abs(gamma.mean() - 1.6) < 0.05 and abs(gamma.std() - np.sqrt(2) * 0.8) < 0.05
    beta = one(builtin.BetaRNG(), F.full((n,), 2.0), F.full((n,), 0.8)).numpy()
    assert abs(beta.mean() - 2 / 2.8) < 0.02
    poisson = one(builtin.PoissonRNG(), F.full((n,), 3.0)).numpy()
    assert abs(poisson.mean() - 3.0) < 0.05 and abs(poisson.var() - 3.0) < 0.15
    expo = one(builtin.ExponentialRNG(), F.full((n,), 2.0)).numpy()
    assert abs(expo.mean() - 0.5) < 0.02


def test_permutation_and_shuffle_descriptors():
    for dtype in ("int32", "int16", "float32"):
        p = one(builtin.PermutationRNG(dtype=dtype), mge.tensor(np.array([100], np.int32)))
        assert p.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(np.sort(p.numpy()), np.arange(100))
    x = rng.randn(10, 2).astype(np.float32)
    out, order = apply(builtin.ShuffleRNG(), mge.tensor(x))
    np.testing.assert_array_equal(np.sort(order.numpy()), np.arange(10))
    np.testing.assert_array_equal(out.numpy(), x[order.numpy()])


def test_mesh_indexing_meshes_and_batched_mesh_indexes_per_batch():
    x = rng.randn(4, 5, 6).astype(np.float32)
    i1 = np.array([4, 0, 2], np.int32)
    i2 = np.array([1, 5], np.int32)
    items = ((1, False, False, False, True), (2, False, False, False, True))
    check_against_torch(
        lambda a: one(builtin.MeshIndexing(items), a, mge.tensor(i1), mge.tensor(i2)),
        lambda a: a[:, i1][:, :, i2], x)
    got = one(builtin.MeshIndexing(((0, False, False, False, True),
                                    (2, False, False, False, True))), mge.tensor(x),
              mge.tensor(3), mge.tensor(i2))
    np.testing.assert_array_equal(got.numpy(), x[3][:, i2])
    b1 = np.array([[0, 1], [4, 4], [2, 3], [1, 0]], np.int32)  # one index row per batch entry
    expect = np.stack([x[b][b1[b]] for b in range(4)])
    check_against_torch(
        lambda a: one(builtin.BatchedMeshIndexing(((1, False, False, False, True),)), a,
                      mge.tensor(b1)),
        lambda a: torch.stack([a[b][torch.tensor(b1[b]).long()] for b in range(4)]), x)
    np.testing.assert_array_equal(
        one(builtin.BatchedMeshIndexing(((1, False, False, False, True),)), mge.tensor(x),
            mge.tensor(b1)).numpy(), expect)


@pytest.mark.usefixtures("host_default_device")  # quantized tensors live on CPUs only
def test_elemwise_multi_type_quantized_and_bool_modes():
    import megengine.core.tensor.dtype as qdtype

    a = np.array([1, -3, 100, 127], "int8")  # stored values of qint8(2.0): reals 2a
    b = np.array([2, 5, 100, -128], "int8")
    x = mge.tensor(a, dtype=qdtype.qint8(2.0))  # (values given to a quantized dtype are stored)
    y = mge.tensor(b, dtype=qdtype.qint8(2.0))
    out = one(builtin.ElemwiseMultiType(mode="qadd", dtype=qdtype.qint8(4.0)), x, y)
    # hand-computed: (2a + 2b) / 4 rounded half away from zero, saturated to [-128, 127]
    real = (a.astype(float) + b) * 2 / 4
    expect = np.clip(np.sign(real) * np.floor(np.abs(real) + 0.5), -128, 127)
    np.testing.assert_array_equal(out.astype("float32").numpy(), expect * 4)
    got = one(builtin.ElemwiseMultiType(mode="LT"), mge.tensor([1.0, 3.0]), mge.tensor([2.0, 2.0]))
    np.testing.assert_array_equal(got.numpy(), [True, False])
    with pytest.raises(NotImplementedError, match="fixed-point kernel"):
        one(builtin.ElemwiseMultiType(mode="ROUND_SHR_SATURATE_IXxI8xI8"), x, y)
    # upstream's mixed-case member names, and any case of them as a string
    mode = builtin.ElemwiseMultiType.Mode.FUSE_MUL_ADD3_INT16x32x32x32
    assert builtin.ElemwiseMultiType(mode="fuse_mul_add3_int16X32x32X32").mode is mode
    assert builtin.ElemwiseMultiType(builtin.ElemwiseMultiType.Mode.QADD).mode.name == "QADD"
    with pytest.raises(TypeError, match="output's quantized dtype"):
        one(builtin.ElemwiseMultiType(mode="qadd"), x, y)


def test_get_var_shape_is_an_op_on_its_input_in_a_dumped_program():
    import io

    from megengine.jit import trace
    from megengine.jit.dump import load

    f = trace(lambda d: apply(builtin.GetVarShape(axis=-1), d)[0], symbolic=True,
              capture_as_const=True)
    assert f(mge.tensor(np.zeros((1, 2, 3), "float32"))).numpy().tolist() == [3]
    file = io.BytesIO()
    f.dump(file, arg_names=["d"], output_names=["shape"])
    file.seek(0)
    # the file was traced with shape (1, 2, 3); fed another last axis it reports that one
    (got,) = load(file).run({"d": np.zeros((1, 2, 7), "float32")}, strict_shape=False).values()
    assert got.dtype == np.int32 and got.numpy().tolist() == [7]
    with pytest.raises(ValueError, match="out of range"):
        apply(builtin.GetVarShape(axis=3), mge.tensor(np.zeros((1, 2, 3))))
