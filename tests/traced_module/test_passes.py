"""Tests of megengine/traced_module/_passes.py: optimize returns an optimized copy; FuseConvBn folds
eval-mode batch norms into convolutions."""
import logging

import numpy as np
import pytest

import megengine.functional as F
import megengine.module as M
from megengine import Tensor
from megengine.traced_module import optimize, trace_module


class SubConv(M.Conv2d):  # traced into: F.conv2d on getattrs
    pass


class SubBN(M.BatchNorm2d):  # traced into: F.batch_norm on getattrs
    pass


class Net(M.Module):
    def __init__(self, conv_cls, bn_cls):
        super().__init__()
        self.conv = conv_cls(3, 4, 3, padding=1, bias=False)
        self.bn = bn_cls(4)
        self.tail = M.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.tail(F.relu(self.bn(self.conv(x))))


def _net(conv_cls, bn_cls):
    net = Net(conv_cls, bn_cls)
    # statistics away from the defaults, so a fold that ignores them shows
    x = Tensor(np.random.randn(8, 3, 5, 5).astype(np.float32) * 3 + 1)
    for _ in range(3):
        net(x)
    net.bn.weight._reset(np.random.rand(1, 4, 1, 1).astype(np.float32) + 0.5)
    net.bn.bias._reset(np.random.randn(1, 4, 1, 1).astype(np.float32))
    net.eval()
    return net


@pytest.mark.parametrize("conv_cls", [M.Conv2d, SubConv])
@pytest.mark.parametrize("bn_cls", [M.BatchNorm2d, SubBN])
def test_fuse_conv_bn_matches_the_network(conv_cls, bn_cls):
    net = _net(conv_cls, bn_cls)
    x = Tensor(np.random.randn(2, 3, 5, 5).astype(np.float32))
    expect = net(x).numpy()
    traced = trace_module(net, x)
    flat = traced.flatten()
    weight_before = net.conv.weight.numpy().copy()
    names_before = [n.name for n in flat.graph.nodes()]
    fused = optimize(flat, "FuseConvBn")
    assert fused is not flat
    assert flat.graph.get_module_by_type(M.BatchNorm2d).as_list() \
        or flat.graph.get_function_by_type(F.batch_norm).as_list()  # the original is kept
    np.testing.assert_allclose(flat(x).numpy(), expect, rtol=1e-6, atol=1e-6)
    flat = fused
    # as upstream: the batch norm's nodes go, every other node keeps its name; a traced-into
    # conv without bias gains one
    kept = [n for n in names_before if not n.startswith("bn") and n != "batch_norm_out"]
    gained = ["conv_bias"] if conv_cls is SubConv else []
    assert sorted(n.name for n in flat.graph.nodes()) == sorted(kept + gained)
    assert flat.graph.get_function_by_type(F.batch_norm).as_list() == []
    assert flat.graph.get_module_by_type(M.BatchNorm2d).as_list() == []
    np.testing.assert_allclose(flat(x).numpy(), expect, rtol=1e-4, atol=1e-5)
    # nothing shared was changed: the original layers and the unflattened trace still agree
    np.testing.assert_array_equal(net.conv.weight.numpy(), weight_before)
    np.testing.assert_allclose(traced(x).numpy(), expect, rtol=1e-6, atol=1e-6)


def test_training_mode_and_unknown_passes_are_left_alone():
    net = Net(M.Conv2d, M.BatchNorm2d)  # training mode: batch statistics, nothing to fold
    x = Tensor(np.random.randn(2, 3, 5, 5).astype(np.float32))
    flat = optimize(trace_module(net, x).flatten(), ["FuseConvBn"])
    assert len(flat.graph.get_module_by_type(M.BatchNorm2d).as_list()) == 1
    with pytest.raises(ValueError, match="FuseConvBn.*BackwardFoldScale"):
        optimize(flat, "FoldConstants")
    with pytest.raises(TypeError, match="TracedModule"):
        optimize(net)


def _eval_output_after_training(net, x, scale):
    """Three training-mode calls of ``net`` on ``x * scale + 1`` (running statistics away from the
    defaults, so that a fold that ignores them shows), then eval mode: returns its output on
    ``x``, what the fused network must give."""
    for _ in range(3):
        net(x * scale + 1)
    net.eval()
    return net(x).numpy()


class Twice(M.Module):  # one conv layer called twice, each call followed by its own bn
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 3, 1)
        self.bn1, self.bn2 = M.BatchNorm2d(3), M.BatchNorm2d(3)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))


def test_fuse_conv_bn_is_quiet_and_renames_only_a_shared_layer(caplog):
    net = Twice()
    x = Tensor(np.random.randn(4, 3, 5, 5).astype(np.float32))
    expect = _eval_output_after_training(net, x, scale=2)
    with caplog.at_level(logging.WARNING):
        fused = optimize(trace_module(net, x), "FuseConvBn")
    np.testing.assert_allclose(fused(x).numpy(), expect, rtol=1e-4, atol=1e-5)
    # upstream's line for the first fusion, while the layer still has two readers; the
    # second fusion is its only reader left and takes its attribute
    assert [r.getMessage() for r in caplog.records] == [
        "Module Twice.conv is used 2 times and its name will be reset to conv_1"]
    convs = [e.inputs[0].owner for e in fused.graph.exprs() if e.inputs
             and getattr(e.inputs[0], "module_type", None) is M.Conv2d]
    assert len(convs) == 2 and convs[0] is not convs[1]
    assert net.conv is not convs[0] and net.conv is not convs[1]


class SharedBlock(M.Module):  # one SubConv held by two parents: folding must not reach both
    def __init__(self):
        super().__init__()
        conv = SubConv(3, 3, 1)
        self.a, self.b = M.Sequential(conv), M.Sequential(conv)
        self.bn = M.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.a(x)) + self.b(x)


def test_fuse_conv_bn_leaves_a_layer_held_twice_alone(caplog):
    net = SharedBlock()
    x = Tensor(np.random.randn(2, 3, 4, 4).astype(np.float32))
    expect = _eval_output_after_training(net, x, scale=3)
    with caplog.at_level(logging.WARNING):
        fused = optimize(trace_module(net, x).flatten(), "FuseConvBn")
    assert fused.graph.get_module_by_type(M.BatchNorm2d).as_list() == []
    np.testing.assert_allclose(fused(x).numpy(), expect, rtol=1e-4, atol=1e-5)
    assert getattr(fused.a, "0") is getattr(fused.b, "0")  # still one layer
    assert any("shared with other modules" in r.getMessage() for r in caplog.records)
