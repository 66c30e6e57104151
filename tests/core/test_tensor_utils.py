"""Tests of megengine/core/tensor_utils.py (`megengine.core.tensor.utils`): upstream's helpers and
`subgraph_fn`, against numpy and torch."""
import numpy as np
import pytest
import torch

import megengine as mge
from megengine.autodiff import GradManager
from megengine.core.ops import builtin
from megengine.core._imperative_rt.core2 import apply
from megengine.core.tensor.utils import (astensor1d, dtype_promotion, isscalar,
                                         make_shape_tuple, subgraph, subgraph_fn)
from devices import requires_cuda
from oracle import check_against_torch

rng = np.random.RandomState(0)


def test_small_helpers():
    assert isscalar(3) and isscalar(2.5) and isscalar(mge.tensor(1.0))
    assert not isscalar(mge.tensor([1.0])) and not isscalar([1, 2])
    t = astensor1d([2, mge.tensor(3), 4], dtype="int32")
    assert t.dtype == np.int32
    np.testing.assert_array_equal(t.numpy(), [2, 3, 4])
    same = mge.tensor([1.0, 2.0])
    assert astensor1d(same) is same
    np.testing.assert_array_equal(astensor1d((5, 6)).numpy(), [5, 6])
    with pytest.raises(ValueError, match="1 dimension"):
        astensor1d(np.zeros((2, 2)))
    assert make_shape_tuple([2, (3, mge.tensor([4, 5]))]) == (2, 3, 4, 5)
    # a VarNode reference makes the constant a var of its graph (upstream's Const(reference))
    from megengine.utils.network import Network
    from megengine.utils.network_node import VarNode

    net = Network()
    ref = net.make_const(0)
    for x in ([1, 2, 3], np.array([1, 2, 3], "int32")):
        for dtype in (None, "float32"):
            v = astensor1d(x, ref, dtype=dtype)
            assert type(v) is VarNode and v.graph is net.graph
            assert v.dtype == (np.float32 if dtype else np.int32)
            np.testing.assert_array_equal(v.numpy(), [1, 2, 3])
    assert type(astensor1d([1, 2], mge.tensor(0))) is mge.Tensor
    f32, i32 = mge.tensor([1.0]), mge.tensor([1])
    assert dtype_promotion([i32, 1.5]) == np.float32  # a float scalar lifts an int tensor
    assert dtype_promotion([f32, 3]) == np.float32
    assert dtype_promotion([i32, mge.tensor([1], dtype="int16")]) == np.int32


def _batch_norm_subgraph(channels, ndim):
    # upstream's own subgraph test body: batch norm written with Reduce, GetVarShape, TypeCvt;
    # on the inputs' device, as upstream's test makes it (its constants live there)
    @subgraph_fn("BatchNormNd", dtype="float32", device=mge.get_default_device(), nr_inputs=4)
    def batch_norm_nd(inputs, f, c):
        inp, eps, weight, bias = inputs[0:4]
        reduce_shape = c((1, channels) + (1,) * (ndim - 2), dtype="int32")
        input_elems = f(builtin.Reduce(mode="product", axis=0), f(builtin.GetVarShape(), inp))
        reduce_elems = f(builtin.Reduce(mode="product", axis=0), reduce_shape)
        reduce_size = f(builtin.TypeCvt(dtype="float32"), f("//", input_elems, reduce_elems))
        mean = f("/", f(builtin.Reduce(mode="sum"), inp, reduce_shape), reduce_size)
        sq = f("/", f(builtin.Reduce(mode="sum_sqr"), inp, reduce_shape), reduce_size)
        var = f("-", sq, f("*", mean, mean))
        scale = f("*", f("**", f("+", var, eps), c(-0.5)), weight)
        return (f("fma3", inp, scale, f("fma3", f("-", mean), scale, bias)),), (True,)

    return batch_norm_nd


def test_subgraph_batch_norm_matches_torch_values_and_gradients():
    x = rng.randn(4, 3, 5, 5).astype(np.float32)
    w = rng.uniform(0.5, 1.5, (1, 3, 1, 1)).astype(np.float32)
    b = rng.randn(1, 3, 1, 1).astype(np.float32)
    bn = _batch_norm_subgraph(3, 4)

    def torch_bn(t, tw, tb):
        out = torch.nn.functional.batch_norm(t, None, None, training=True, eps=1e-5)
        return out * tw + tb

    check_against_torch(lambda t, tw, tb: bn(t, mge.tensor(1e-5), tw, tb)[0], torch_bn,
                        x, w, b, rtol=1e-4, atol=1e-4)


def test_custom_grad_subgraph_uses_the_bodys_gradient():
    # a straight-through round: forward rounds, the yielded gradient passes dy unchanged
    @subgraph_fn("RoundSTE", dtype="float32", device="cpu0", nr_inputs=2, custom_grad=True)
    def round_ste(inputs, f, c):
        x, k = inputs
        y = f("*", f("round", x), k)
        (dy,) = yield (y,)
        yield (f("*", dy, k), None)

    a = rng.uniform(-3, 3, 6).astype(np.float32)
    x, k = mge.tensor(a), mge.tensor(2.0)
    gm = GradManager().attach(x)
    with gm:
        (y,) = round_ste(x, k)
        gm.backward(y, mge.tensor(np.arange(6, dtype=np.float32)))
    t = torch.tensor(a)
    np.testing.assert_array_equal(y.numpy(), torch.round(t).numpy() * 2)  # no halves in a
    np.testing.assert_allclose(x.grad.numpy(), np.arange(6) * 2.0)


def test_einsum_written_as_megengine_sams_subgraph():
    # MegEngine-SAM's einsum lowers "bij,bjk->bik" onto these descriptors; shapes travel as
    # int tensors (GetVarShape, Concat) into Reshape and Broadcast
    @subgraph_fn("Einsum", dtype="float32", device="cpu0", nr_inputs=2, gopt_level=2)
    def bmm(inputs, f, c):
        lhs, rhs = inputs
        dim = lambda t, axis: f(builtin.GetVarShape(axis=axis), t)  # noqa: E731
        shape = f(builtin.Concat(axis=0, comp_node="cpu0"), dim(lhs, 0), dim(lhs, 1),
                  dim(rhs, 2))
        out = f(builtin.BatchedMatrixMul(), lhs, rhs)
        out = f(builtin.Reshape(), out, shape)
        summed = f(builtin.RemoveAxis(axis=[2]), f(builtin.Reduce(mode="sum", axis=2), out))
        return (out, summed), (True, True)

    a = rng.randn(2, 3, 4).astype(np.float32)
    b = rng.randn(2, 4, 5).astype(np.float32)
    check_against_torch(lambda p, q: bmm(p, q), lambda p, q: [p @ q, (p @ q).sum(2)], a, b,
                        rtol=1e-5, atol=1e-5)


def _iou_subgraph():
    # megvii-research/basedet's structures/op_patch.py: pairwise IoU of (N, 4) and (M, 4) boxes
    # written with AddAxis, index-only Subtensor and Elemwise descriptors, made by `subgraph`
    @subgraph("IOU", "float32", mge.get_default_device(), 2, gopt_level=2)
    def iou(inputs, f, c):
        a = f(builtin.AddAxis(axis=[1]), inputs[0])
        b = f(builtin.AddAxis(axis=[0]), inputs[1])
        col = lambda t, i: f(builtin.Subtensor(items=[[2, False, False, False, True]]), t,  # noqa
                             c(i, dtype="int32"))
        iw = f("max", f("-", f("min", col(a, 2), col(b, 2)), f("max", col(a, 0), col(b, 0))),
               c(0.0))
        ih = f("max", f("-", f("min", col(a, 3), col(b, 3)), f("max", col(a, 1), col(b, 1))),
               c(0.0))
        inter = f("*", iw, ih)
        area = lambda t: f("*", f("-", col(t, 2), col(t, 0)), f("-", col(t, 3), col(t, 1)))  # noqa
        return [f("/", inter, f("-", f("+", area(a), area(b)), inter))], [True]

    return iou


def test_subgraph_makes_an_op_that_apply_runs_as_upstreams():
    # upstream: subgraph(...)(body) is a function of no arguments returning the op, and
    # apply(op, *inputs) returns a tuple (earlier versions of this fork called the decorated
    # body with the inputs, so apply(IOU(), a, b) raised "takes 2 inputs, got 0")
    iou = _iou_subgraph()
    op = iou()
    assert isinstance(op, builtin.OpDef) and op == iou() and "IOU" in repr(op)
    assert op != _iou_subgraph()()  # another body is another op

    def torch_iou(p, q):
        lt, rb = torch.maximum(p[:, None, :2], q[None, :, :2]), torch.minimum(p[:, None, 2:],
                                                                             q[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
        return inter / (area(p)[:, None] + area(q)[None] - inter)

    xy = rng.rand(5, 2).astype(np.float32) * 10
    p = np.concatenate([xy, xy + 1 + rng.rand(5, 2).astype(np.float32) * 5], 1)
    xy = rng.rand(7, 2).astype(np.float32) * 10
    q = np.concatenate([xy, xy + 1 + rng.rand(7, 2).astype(np.float32) * 5], 1)
    out = check_against_torch(lambda a, b: apply(op, a, b), lambda a, b: [torch_iou(a, b)],
                              p, q)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (5, 7)


def test_subgraph_misuse_is_explained():
    @subgraph_fn("Two", dtype="float32", device="cpu0", nr_inputs=2)
    def two(inputs, f, c):
        return (f("+", inputs[0], 1.0),), (True,)

    with pytest.raises(TypeError, match="takes 2 inputs, got 1"):
        two(mge.tensor(1.0))
    with pytest.raises(TypeError, match=r"make constants with c\(...\)"):
        two(mge.tensor(1.0), mge.tensor(2.0))
    with pytest.raises(TypeError, match="must be a generator"):
        subgraph_fn("G", dtype="float32", device="cpu0", nr_inputs=1,
                    custom_grad=True)(lambda inputs, f, c: inputs)


@requires_cuda
def test_subgraph_constants_on_another_device_than_its_inputs_are_refused_as_upstream():
    # upstream keeps c(...) on the subgraph's device and its Elemwise asserts one device
    @subgraph_fn("Shift", dtype="float32", device="cpu0", nr_inputs=1)
    def shift(inputs, f, c):
        return (f("+", inputs[0], c(1.5)),), (True,)

    x = mge.tensor([1.0, 2.0], device="gpu0")
    with pytest.raises(ValueError, match=r"reads tensors on gpu0 and cpu0.*device= the device"):
        shift(x)
    (got,) = shift(mge.tensor([1.0, 2.0], device="cpu0"))  # on its own device it runs
    np.testing.assert_array_equal(got.numpy(), [2.5, 3.5])


def test_kernel_built_with_subtensor_and_concat_as_an_augmentation_library_writes_it():
    # the Emboss augmentation (a MegEngine module library the ASR-Transformer program uses)
    # builds its 3x3 kernel in a subgraph from Subtensor slices bounded by int constants
    alpha, strength = 0.7, 0.6

    @subgraph_fn("EmbossKernel", dtype="float32", device=mge.get_default_device(), nr_inputs=2,
                 gopt_level=None)
    def emboss_kernel(inputs, f, c):
        effect, nochange = inputs
        c1, c2, c3 = (c(v, dtype="int32") for v in (1, 2, 3))
        s = c(strength, dtype="float32")

        def sub(src, axis, begin, end):
            items = ((axis, begin is not None, end is not None, False, False),)
            args = tuple(v for v in (begin, end) if v is not None)
            return f(builtin.Subtensor(items=items), src, *args)

        r1, r2, r3 = sub(effect, 0, None, c1), sub(effect, 0, c1, c2), sub(effect, 0, c2, c3)
        k12 = f("-", sub(r1, 1, c1, c2), s)
        k23 = f("+", sub(r2, 1, c2, c3), s)
        rows = [f(builtin.Concat(axis=1), f("-", sub(r1, 1, None, c1), s), k12,
                  sub(r1, 1, c2, c3)),
                f(builtin.Concat(axis=1), k12, sub(r2, 1, c1, c2), k23),
                f(builtin.Concat(axis=1), sub(r3, 1, None, c1), k23,
                  f("+", sub(r3, 1, c2, c3), s))]
        kernel = f(builtin.Concat(axis=0), *rows)
        out = f("+", f("*", nochange, c(1 - alpha)), f("*", kernel, c(alpha)))
        return (out,), (False,)

    e = np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    n = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
    (got,) = emboss_kernel(mge.tensor(e), mge.tensor(n))
    k = np.array([[e[0, 0] - strength, e[0, 1] - strength, e[0, 2]],
                  [e[0, 1] - strength, e[1, 1], e[1, 2] + strength],
                  [e[2, 0], e[1, 2] + strength, e[2, 2] + strength]], np.float32)
    np.testing.assert_allclose(got.numpy(), n * (1 - alpha) + k * alpha, rtol=1e-6)
