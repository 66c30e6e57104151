"""megengine.utils.bn_fusion: a fused module computes what the unfused conv (or linear) -> bn
-> relu computes (eval: BN folded into the weights; training: ConvBn/LinearBn with a copy of
BN); the linear fold is checked against torch.nn.utils.fusion."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.utils.bn_fusion import (fold_weight_bias, fuse_conv_bn_relu_module,
                                       fuse_linear_bn_relu_module)

rng = np.random.RandomState(0)


def trained_bn(channels, bn_cls=M.BatchNorm2d):
    bn = bn_cls(channels)
    bn.weight.set_value(rng.uniform(0.5, 2, bn.weight.shape).astype("float32"))
    bn.bias.set_value(rng.randn(*bn.bias.shape).astype("float32"))
    bn.running_mean.set_value(rng.randn(*bn.running_mean.shape).astype("float32"))
    bn.running_var.set_value(rng.uniform(0.5, 3, bn.running_var.shape).astype("float32"))
    return bn


def unfused(conv, bn, relu, x):
    y = conv(x)
    if bn is not None:
        y = bn(y)
    return relu(y) if relu is not None else y


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "transposed"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_relu", [True, False])
def test_eval_mode_folds_into_the_weights(transpose, groups, bias, with_relu):
    if transpose:
        conv = M.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=groups,
                                 bias=bias)
    else:
        conv = M.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias)
    if bias:
        conv.bias.set_value(rng.randn(*conv.bias.shape).astype("float32"))
    bn, relu = trained_bn(6), (M.ReLU() if with_relu else None)
    conv.eval()
    bn.eval()
    x = mge.tensor(rng.randn(2, 4, 5, 5).astype("float32"))
    fused = fuse_conv_bn_relu_module(conv, bn, relu)
    expected_type = {(False, True): M.ConvRelu2d, (False, False): M.Conv2d,
                     (True, True): M.ConvTransposeRelu2d, (True, False): M.ConvTranspose2d}
    assert type(fused) is expected_type[(transpose, with_relu)]
    assert not fused.training
    np.testing.assert_allclose(fused(x).numpy(), unfused(conv, bn, relu, x).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert fused.weight is not conv.weight  # new parameters; the inputs are untouched


def test_training_mode_keeps_bn():
    conv = M.Conv2d(3, 4, 3, padding=1)
    bn = trained_bn(4)
    fused = fuse_conv_bn_relu_module(conv, bn, M.ReLU())
    assert isinstance(fused, M.ConvBnRelu2d) and fused.training
    assert fused.bn is not bn
    x = mge.tensor(rng.randn(3, 3, 4, 4).astype("float32"))
    np.testing.assert_allclose(fused(x).numpy(), F.relu(bn(conv(x))).numpy(), rtol=1e-5,
                               atol=1e-6)
    t = fuse_conv_bn_relu_module(M.ConvTranspose2d(3, 4, 2), trained_bn(4), None)
    assert isinstance(t, M.ConvTransposeBn2d)


def test_without_bn():
    conv = M.Conv2d(2, 3, 1)
    fused = fuse_conv_bn_relu_module(conv, None, M.ReLU())
    assert isinstance(fused, M.ConvRelu2d)
    x = mge.tensor(rng.randn(1, 2, 3, 3).astype("float32"))
    np.testing.assert_allclose(fused(x).numpy(), F.relu(conv(x)).numpy(), rtol=1e-6)


def test_fold_weight_bias_by_hand():
    w = np.ones((2, 1, 1, 1), np.float32)
    gamma, beta = np.array([2.0, 3.0]), np.array([1.0, -1.0])
    mean, var = np.array([0.5, 1.0]), np.array([3.0, 0.0])
    wf, bf = fold_weight_bias(mge.tensor(w), None, gamma, beta, mean, var, eps=1.0)
    scale = gamma / np.sqrt(var + 1.0)  # [1, 3]
    np.testing.assert_allclose(wf.numpy().ravel(), scale, rtol=1e-6)
    np.testing.assert_allclose(bf.numpy().ravel(), beta - mean * scale, rtol=1e-6)
    assert bf.shape == (1, 2, 1, 1)


def test_bad_input_is_named():
    conv, bn = M.Conv2d(2, 3, 1), trained_bn(3)
    bn.eval()
    with pytest.raises(ValueError, match=r"fuse_conv_bn_relu_module: conv and bn must both be "
                                         r"in training or both in eval mode"):
        fuse_conv_bn_relu_module(conv, bn, None)
    conv.eval()
    wide = trained_bn(4)
    wide.eval()
    with pytest.raises(ValueError, match=r"fuse_conv_bn_relu_module: bn.num_features \(4\) must "
                                         r"equal conv.out_channels \(3\)"):
        fuse_conv_bn_relu_module(conv, wide, None)
    with pytest.raises(TypeError, match="Conv2d or ConvTranspose2d"):
        fuse_conv_bn_relu_module(M.Linear(2, 2), bn, None)


def test_linear_fold_matches_torch():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_linear_bn_weights

    w, b = rng.randn(5, 3).astype("float32"), rng.randn(5).astype("float32")
    bn = trained_bn(5, M.BatchNorm1d)
    wf, bf = fold_weight_bias(mge.tensor(w), mge.tensor(b), bn.weight, bn.bias,
                              bn.running_mean, bn.running_var, bn.eps)
    t = lambda p: torch.from_numpy(np.asarray(p.numpy() if hasattr(p, "numpy") else p)
                                   .reshape(-1).copy())
    tw, tb = fuse_linear_bn_weights(torch.from_numpy(w), torch.from_numpy(b),
                                    t(bn.running_mean), t(bn.running_var), bn.eps,
                                    t(bn.weight), t(bn.bias))
    assert wf.shape == (5, 3) and bf.shape == (5,)
    np.testing.assert_allclose(wf.numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bf.numpy(), tb.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_relu", [True, False])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_linear_bn_relu_fuses(bias, with_relu, training):
    linear = M.Linear(4, 6, bias=bias)
    if bias:
        linear.bias.set_value(rng.randn(6).astype("float32"))
    bn, relu = trained_bn(6, M.BatchNorm1d), (M.ReLU() if with_relu else None)
    linear.train(training)
    bn.train(training)
    fused = fuse_linear_bn_relu_module(linear, bn, relu)
    expected_type = {(False, True): M.LinearRelu, (False, False): M.Linear,
                     (True, True): M.LinearBnRelu1d, (True, False): M.LinearBn1d}
    assert type(fused) is expected_type[(training, with_relu)]
    assert fused.training == training and fused.name == linear.name
    x = mge.tensor(rng.randn(8, 4).astype("float32"))
    # the unfused layers are the oracle; in training mode run them on a copy of bn so the
    # running statistics the fused module updates start from the same values
    from copy import deepcopy
    oracle_bn = deepcopy(bn)
    np.testing.assert_allclose(fused(x).numpy(), unfused(linear, oracle_bn, relu, x).numpy(),
                               rtol=1e-4, atol=1e-5)
    if training:
        assert fused.bn is not bn
        np.testing.assert_allclose(fused.bn.running_mean.numpy(),
                                   oracle_bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)


def test_linear_without_bn_and_bad_input():
    linear = M.Linear(3, 2)
    fused = fuse_linear_bn_relu_module(linear, None, M.ReLU())
    assert type(fused) is M.LinearRelu
    x = mge.tensor(rng.randn(4, 3).astype("float32"))
    np.testing.assert_allclose(fused(x).numpy(), np.maximum(linear(x).numpy(), 0), rtol=1e-6)
    bn = trained_bn(2, M.BatchNorm1d)
    with pytest.raises(ValueError, match=r"fuse_linear_bn_relu_module: linear and bn must both "
                                         r"be in training or both in eval mode"):
        bn.eval()
        fuse_linear_bn_relu_module(linear, bn, None)
    linear.eval()
    with pytest.raises(ValueError, match=r"fuse_linear_bn_relu_module: bn.num_features \(5\) "
                                         r"must equal linear.out_features \(2\)"):
        wide = trained_bn(5, M.BatchNorm1d)
        wide.eval()
        fuse_linear_bn_relu_module(linear, wide, None)
    with pytest.raises(TypeError, match="Linear"):
        fuse_linear_bn_relu_module(M.Conv2d(2, 2, 1), bn, None)
    with pytest.raises(TypeError, match="BatchNorm1d"):
        fuse_linear_bn_relu_module(linear, M.BatchNorm2d(2), None)


@pytest.mark.parametrize("fuse, layer, bn_type", [
    (fuse_conv_bn_relu_module, lambda: M.Conv2d(2, 2, 1), "BatchNorm2d"),
    (fuse_linear_bn_relu_module, lambda: M.Linear(2, 2), "BatchNorm1d"),
])
def test_fusing_names_a_bn_or_relu_of_the_wrong_type(fuse, layer, bn_type):
    with pytest.raises(TypeError, match=rf"{fuse.__name__}: bn must be a {bn_type} or None, "
                                        r"got ReLU"):
        fuse(layer(), M.ReLU(), None)
    with pytest.raises(TypeError, match=rf"{fuse.__name__}: relu must be a ReLU or None, "
                                        r"got Linear"):
        fuse(layer(), None, M.Linear(1, 1))
