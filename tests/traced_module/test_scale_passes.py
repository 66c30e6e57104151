"""Tests of megengine/traced_module/_scale_passes.py: optimize's FuseAddMul and BackwardFoldScale
(oracle: the unoptimized module's outputs and hand-computed constants and weights)."""
import logging

import numpy as np
import pytest

import megengine.functional as F
import megengine.module as M
from megengine import Tensor
from megengine.traced_module import optimize, trace_module

_ARITH = ("__add__", "__radd__", "__sub__", "__mul__", "__rmul__", "__truediv__", "__neg__")


def _arith(tm):
    """(method or function name, the scalar it uses) of every arithmetic step, in order."""
    found = []
    for e in tm.graph.exprs():
        name = getattr(e, "method", None) or getattr(getattr(e, "func", None), "__name__", None)
        if name in _ARITH or name in ("add", "sub", "mul", "div", "neg"):
            scalars = [a for a in e.args if isinstance(a, (int, float))]
            found.append((name, scalars[0] if scalars else None))
    return found


def _x(*shape):
    return Tensor(np.random.randn(*shape).astype(np.float32))


def _assert_outputs(got, expect, atol=1e-6):
    """Each output of an optimized module against the unoptimized module's (numpy arrays)."""
    assert len(got) == len(expect)
    for g, want in zip(got, expect):
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-5, atol=atol)


class Chain(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        y = (y + 1) + 2                 # -> y + 3
        y = -(3 * (y * 0.5)) * 2        # -> y * -3
        y = (y - 1) / 4                 # kinds differ: both stay
        z = self.conv(x) * 2 * 0.5      # the identity: no step at all
        return y, z


def test_fuse_add_mul_merges_adjacent_constants():
    net = Chain()
    x = _x(1, 2, 3, 3)
    expect = [t.numpy() for t in net(x)]
    tm = trace_module(net, x)
    opt = optimize(tm, "FuseAddMul")
    assert _arith(opt) == [("__add__", 3.0), ("__mul__", -3.0), ("__sub__", 1),
                           ("__truediv__", 4)]
    _assert_outputs(opt(x), expect)
    assert len(_arith(tm)) == 10  # the module optimize was given is unchanged


class SharedMiddle(M.Module):
    def forward(self, x):
        y = x * 2
        return y * 3, y + 1  # y has two readers: merging would change the second


def test_fuse_add_mul_keeps_a_value_read_twice():
    x = _x(3)
    opt = optimize(trace_module(SharedMiddle(), x), "FuseAddMul")
    assert _arith(opt) == [("__mul__", 2), ("__mul__", 3), ("__add__", 1)]
    a, b = opt(x)
    np.testing.assert_allclose(a.numpy(), x.numpy() * 6, rtol=1e-6)


class Scaled(M.Module):
    def __init__(self, conv_cls=M.Conv2d):
        super().__init__()
        self.conv = conv_cls(3, 4, 3, padding=1)
        self.factor = Tensor([2.0, 5.0])

    def forward(self, x):
        y = F.relu(self.conv(x)) * self.factor[0]  # a constant the graph computes
        y = F.max_pool2d(y + 1, 2)
        return F.flatten(y, 1) * 3


class SubConv(M.Conv2d):  # traced into: F.conv2d reading getattrs
    pass


@pytest.mark.parametrize("conv_cls", [M.Conv2d, SubConv])
def test_backward_fold_scale_moves_scales_into_the_conv(conv_cls, caplog):
    net = Scaled(conv_cls)
    x = _x(2, 3, 6, 6)
    expect = net(x).numpy()
    w, b = net.conv.weight.numpy().copy(), net.conv.bias.numpy().copy()
    with caplog.at_level(logging.WARNING):
        opt = optimize(trace_module(net, x).flatten(), "BackwardFoldScale")
    assert [r.getMessage() for r in caplog.records] == [
        "Since BackwardFoldScale requires FuseConvBn, FuseConvBn will be enabled."]
    np.testing.assert_allclose(opt(x).numpy(), expect, rtol=1e-5, atol=1e-5)
    # hand-computed: both scales (2 and 3) reach the conv; the constant added between them
    # is seen by the 3 only
    assert _arith(opt) == [("__add__", 3.0)]
    np.testing.assert_allclose(opt.conv.weight.numpy(), w * 6, rtol=1e-6)
    np.testing.assert_allclose(opt.conv.bias.numpy(), b * 6, rtol=1e-6)
    np.testing.assert_array_equal(net.conv.weight.numpy(), w)  # the original stays


class NoBias(M.Module):
    def __init__(self, conv_cls):
        super().__init__()
        self.conv = conv_cls(3, 4, 3, padding=1, bias=False)

    def forward(self, x):
        return F.relu(self.conv(x)) * 3


@pytest.mark.parametrize("conv_cls", [M.Conv2d, SubConv])
def test_backward_fold_scale_into_a_conv_without_bias_keeps_it_without(conv_cls):
    net = NoBias(conv_cls)
    x = _x(2, 3, 5, 5)
    expect = net(x).numpy()
    w = net.conv.weight.numpy().copy()
    opt = optimize(trace_module(net, x).flatten(), "BackwardFoldScale")
    np.testing.assert_allclose(opt(x).numpy(), expect, rtol=1e-5, atol=1e-5)
    assert _arith(opt) == []  # the 3 went into the weight
    np.testing.assert_allclose(opt.conv.weight.numpy(), w * 3, rtol=1e-6)
    assert opt.conv.bias is None


class NoFold(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 1)

    def forward(self, x):
        r = F.relu(self.conv(x))
        neg = F.relu(self.conv(x)) * -2        # relu(-2 v) != -2 relu(v): must stay
        both = r * 2 + r * 3                   # one r cannot be 2x and 3x at once
        raw = F.relu(x) * 4                    # x is the graph's input: nothing to fold into
        return neg, both, raw


def test_backward_fold_scale_keeps_what_cannot_move():
    net = NoFold()
    x = _x(1, 2, 3, 3)
    expect = [t.numpy() for t in net(x)]
    opt = optimize(trace_module(net, x), ["FuseConvBn", "BackwardFoldScale"])
    _assert_outputs(opt(x), expect, atol=1e-5)
    muls = [c for name, c in _arith(opt) if name in ("__mul__", "__rmul__")]
    # the last scale of `both` (3) moved into r, the first is now 2 / 3
    assert muls[0] == -2 and muls[-1] == 4 and len(muls) == 3
    assert muls[1] == pytest.approx(2 / 3)


class Residual(M.Module):
    def __init__(self):
        super().__init__()
        self.stem = M.Conv2d(3, 4, 3, padding=1)
        self.conv2 = M.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        r = F.relu(self.stem(x))
        y = F.relu(self.conv2(r) + r)
        return y.reshape(y.shape[0], -1) / 4  # reading y.shape does not pin y's scale


def test_backward_fold_scale_through_a_residual_and_a_shape_read():
    net = Residual()
    x = _x(2, 3, 5, 5)
    expect = net(x).numpy()
    ws, bs = net.stem.weight.numpy(), net.stem.bias.numpy()
    w2, b2 = net.conv2.weight.numpy(), net.conv2.bias.numpy()
    opt = optimize(trace_module(net, x), "BackwardFoldScale")
    np.testing.assert_allclose(opt(x).numpy(), expect, rtol=1e-5, atol=1e-6)
    assert _arith(opt) == [("__add__", None)]  # only the residual sum is left
    # hand-computed: r and y are both a quarter now; the stem makes r a quarter, conv2 reads
    # a quarter and gives a quarter: same weight, a quarter of the bias
    np.testing.assert_allclose(opt.stem.weight.numpy(), ws / 4, rtol=1e-6)
    np.testing.assert_allclose(opt.stem.bias.numpy(), bs / 4, rtol=1e-6)
    np.testing.assert_allclose(opt.conv2.weight.numpy(), w2, rtol=1e-6)
    np.testing.assert_allclose(opt.conv2.bias.numpy(), b2 / 4, rtol=1e-6)


class Degenerate(M.Module):
    """Multiplications no factor can pass: by zero (`acc = h * 0`, a zeros-like idiom) and by
    constants that are not finite."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 1)
        self.conv2 = M.Conv2d(2, 2, 1)

    def forward(self, x):
        h = self.conv(x)
        acc = h * 0
        h = h + acc * 0.1
        big = self.conv2(x) * float("inf")
        return h * 2, big * 0.5, (F.relu(self.conv2(x)) + float("nan")) * 3


def test_backward_fold_scale_leaves_zero_and_non_finite_scales():
    # drawn by the traced_module fuzzing (program 140: `acc = h * 0`): the pass divided by the
    # zero scale (ZeroDivisionError)
    net = Degenerate()
    x = _x(1, 2, 3, 3)
    expect = [t.numpy() for t in net(x)]
    opt = optimize(trace_module(net, x), ["FuseConvBn", "BackwardFoldScale"])
    _assert_outputs(opt(x), expect)
    muls = [c for name, c in _arith(opt) if name in ("__mul__", "__rmul__")]
    assert 0 in muls and float("inf") in muls  # both stay where they were


class WritesItsCopy(M.Module):
    """Scales whose outputs are written in place: removing one would make the write change the
    tensor it was computed from."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 1)

    def forward(self, x):
        h = x * 1.0                 # an identity, but h is written below
        h[:, 0] = 0.5
        k = (x + 1.0) - 1.0         # FuseAddMul's identity, written below
        k += 2.0
        c = self.conv(x)
        s = c * 3.0                 # BackwardFoldScale would fold 3 into conv, then write into c
        s[:, 1] = 0.0
        return h + x, k * x, s + c


def test_passes_keep_a_scale_whose_output_is_written_in_place():
    # drawn by the traced_module fuzzing (program 171: `h = h * 1.0; h[:, 0] = 0.5` on the
    # input): the removed identity made the write change the caller's input
    net = WritesItsCopy()
    xa = np.random.randn(1, 2, 3, 3).astype(np.float32)
    expect = [t.numpy() for t in net(Tensor(xa))]
    tm = trace_module(net, Tensor(xa))
    for passes in ("FuseAddMul", ["FuseConvBn", "BackwardFoldScale"]):
        x = Tensor(xa)
        _assert_outputs(optimize(tm, passes)(x), expect)
        np.testing.assert_array_equal(x.numpy(), xa)  # the caller's input as it was


class CountsCalls(M.Module):
    """State the graph writes in place each call, read in scalar arithmetic."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 1)
        self.w = Tensor(np.zeros((4,), np.float32))

    def forward(self, x):
        self.w += 0.25
        h = self.conv(x) * (1.0 + self.w[2])   # changes from call to call
        h = h - self.w[1:3].sum() * 0.5
        self.w[...] = self.w * 2
        return h * 2.0


def test_passes_read_no_constant_from_state_the_graph_writes():
    # drawn by the traced_module fuzzing (program 137 with writes): the passes read
    # `self.w[1:3].sum() * 0.5` once as a constant, and turned `self.w += 0.25` into an
    # out-of-place add, so the state stopped changing
    xa = np.random.randn(1, 2, 3, 3).astype(np.float32)
    for passes in ("FuseAddMul", ["FuseConvBn", "BackwardFoldScale"], ["FuseConvBn",
                                                                        "FuseAddMul"]):
        net = CountsCalls()
        twin = CountsCalls()
        twin.conv.weight[...] = net.conv.weight
        twin.conv.bias[...] = net.conv.bias
        opt = optimize(trace_module(net, Tensor(xa)), passes)
        twin(Tensor(xa))  # the tracing call's writes
        for _ in range(3):
            np.testing.assert_allclose(opt(Tensor(xa)).numpy(), twin(Tensor(xa)).numpy(),
                                       rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt.w.numpy(), twin.w.numpy())


class DeadBranch(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 1)

    def forward(self, x):
        h = self.conv(x)
        v = h * 2.0 + 1.0
        v = F.relu(v - 0.5)  # never read: dropped when the pass recompiles the graph
        return h * 3.0


def test_backward_fold_scale_skips_the_steps_its_rewrites_dropped():
    # drawn by the traced_module fuzzing (program 277): a rewrite's compile() dropped the
    # unread `v - 0.5`, and its own rewrite then failed ("... is not in list")
    net = DeadBranch()
    x = _x(1, 2, 3, 3)
    expect = net(x).numpy()
    opt = optimize(trace_module(net, x), ["FuseConvBn", "BackwardFoldScale"])
    np.testing.assert_allclose(opt(x).numpy(), expect, rtol=1e-5, atol=1e-6)


class _NearOneScale(M.Module):
    def forward(self, x):
        c = x.mean(axis=1)
        # a scale within 1e-6 of 1 on a value a comparison also reads: it must stay
        return (c >= c.max() * 0.9999995).astype("float32") + c * 0


def test_backward_fold_scale_keeps_a_scale_close_to_one():
    # found by tests/fuzz/traced.py (seed 6432): the planner matched factors to 1e-6, so a
    # scale of 0.9999995 moved back into a value a comparison reads, and vanished there; the
    # mask then lost the elements within 5e-7 of the maximum
    x = Tensor(np.array([[1.0, 1.0], [0.9999997, 0.9999997]], np.float32))
    net = _NearOneScale()
    expect = net(x).numpy()
    assert expect.tolist() == [1.0, 1.0]  # (0.9999997 >= 0.9999995: kept by the scale)
    tm = optimize(trace_module(net, x), enabled_pass=["BackwardFoldScale"])
    np.testing.assert_array_equal(tm(x).numpy(), expect)
    assert ("__mul__", 0.9999995) in _arith(tm)


class _MaxByAvgPool(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 1)
        self.pool = M.AvgPool2d(2, mode="MAX")

    def forward(self, x):
        y = self.pool(self.conv(x)) * -2.0  # max(-2 v) is not -2 max(v): the scale stays
        return y, F.avg_pool2d(self.conv(x), 2, mode="max") * -3.0


def test_backward_fold_scale_keeps_a_negative_scale_after_an_average_pooling_in_max_mode():
    # avg_pool2d's mode "max" (upstream's, in any case) is a max pooling: only a positive scale
    # passes it (this pass moved a negative one into the convolution as through an average)
    net = _MaxByAvgPool()
    x = _x(1, 2, 4, 4)
    expect = [t.numpy() for t in net(x)]
    opt = optimize(trace_module(net, x), ["BackwardFoldScale"])
    _assert_outputs(opt(x), expect)
    assert [c for name, c in _arith(opt) if name in ("__mul__", "__rmul__")] == [-2.0, -3.0]
