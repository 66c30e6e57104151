"""Tests of megengine/functional/nn.py: values and gradients against torch.nn.functional."""
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from oracle import check_against_torch


def rand(*shape, low=-2.0, high=2.0):
    return np.asarray(np.random.uniform(low, high, shape), dtype=np.float32)


check = partial(check_against_torch, atol=1e-5, check_dtype=True)


# ----- activations -----

ACTIVATIONS = [
    ("relu", lambda x: F.relu(x), TF.relu),
    ("leaky_relu", lambda x: F.leaky_relu(x), TF.leaky_relu),
    ("leaky_relu_0.2", lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2)),
    ("relu6", F.relu6, TF.relu6),
    ("sigmoid", F.sigmoid, torch.sigmoid),
    ("hsigmoid", F.hsigmoid, TF.hardsigmoid),
    ("hswish", F.hswish, TF.hardswish),
    ("gelu", F.gelu, TF.gelu),
    ("silu", F.silu, TF.silu),
    ("softplus", F.softplus, TF.softplus),
    ("logsigmoid", F.logsigmoid, TF.logsigmoid),
]


@pytest.mark.parametrize("name,fn,torch_fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_value_and_grad(name, fn, torch_fn):
    x = rand(4, 5, 6, low=-8, high=8)
    check(fn, torch_fn, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,torch_fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_extreme_inputs_stay_finite(name, fn, torch_fn):
    x = np.array([-1e4, -100, -30, -1e-3, 0.0, 1e-3, 30, 100, 1e4], np.float32)
    check(fn, torch_fn, x, rtol=1e-5, atol=1e-6)


def test_activations_are_in_F_and_F_nn():
    for name, _, _ in ACTIVATIONS:
        name = name.split("_0")[0]
        assert getattr(F, name) is getattr(F.nn, name)


def test_relu_keeps_integers():
    y = F.relu(mge.tensor(np.array([-2, 0, 3], np.int32)))
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y.numpy(), [0, 0, 3])


def test_sigmoid_of_integers_is_float32():
    y = F.sigmoid(mge.tensor([0, 1]))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), torch.sigmoid(torch.tensor([0.0, 1.0])).numpy())


@pytest.mark.parametrize("wshape", [(1, 3, 1, 1), (1,)])
def test_prelu(wshape):
    x = rand(2, 3, 4, 4)
    w = rand(*wshape, low=0.05, high=0.5)
    check(F.prelu, lambda a, b: TF.prelu(a, b.reshape(-1)), x, w,
          grad_shape={1: lambda g: g.reshape(wshape)})


def test_prelu_bad_weight_shape_names_both():
    with pytest.raises(ValueError, match=r"prelu.*\(5,\).*\(2, 3, 4\)"):
        F.prelu(mge.tensor(rand(2, 3, 4)), mge.tensor(rand(5)))


# ----- softmax family -----

@pytest.mark.parametrize("shape,axis,torch_dim", [
    ((4, 7), None, 1), ((5,), None, 0), ((3, 4, 5), None, 0), ((2, 3, 4, 5), None, 1),
    ((3, 4, 5), -1, -1), ((3, 4, 5), 1, 1),
])
def test_softmax(shape, axis, torch_dim):
    x = rand(*shape, low=-5, high=5)
    check(lambda t: F.softmax(t, axis), lambda t: torch.softmax(t, torch_dim), x)


def test_softmax_over_several_axes():
    x = rand(2, 3, 4)
    check(lambda t: F.softmax(t, (1, 2)),
          lambda t: torch.exp(t - torch.logsumexp(t, dim=(1, 2), keepdim=True)), x)


def test_softmax_large_logits_are_stable():
    x = np.array([[1000.0, 0.0, -1000.0], [88.0, 89.0, 90.0]], np.float32)
    check(lambda t: F.softmax(t, 1), lambda t: torch.softmax(t, 1), x)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_logsoftmax(axis):
    x = rand(4, 6, low=-50, high=50)
    check(lambda t: F.logsoftmax(t, axis), lambda t: torch.log_softmax(t, axis), x,
          rtol=1e-5, atol=1e-5)


def test_softmax_bad_axis():
    with pytest.raises(ValueError, match="softmax: axis 3"):
        F.softmax(mge.tensor(rand(2, 3)), 3)


# ----- linear -----

@pytest.mark.parametrize("xshape,bias", [((8, 5), True), ((8, 5), False), ((2, 3, 5), True)])
def test_linear(xshape, bias):
    x, w, b = rand(*xshape), rand(4, 5), rand(4)
    if bias:
        check(F.linear, TF.linear, x, w, b)
    else:
        check(F.linear, TF.linear, x, w)


def test_linear_input_without_grad():
    x, w, b = rand(3, 5), rand(4, 5), rand(4)
    check(F.linear, TF.linear, x, w, b, diff=[1, 2])


def test_linear_shape_mismatch_names_both():
    with pytest.raises(ValueError, match=r"linear.*\(3, 6\).*\(4, 5\)"):
        F.linear(mge.tensor(rand(3, 6)), mge.tensor(rand(4, 5)))


# ----- convolution -----

CONV_CASES = [
    # (N, C, H, W), O, k, stride, padding, dilation, groups
    ((2, 3, 9, 9), 4, 3, 1, 0, 1, 1),
    ((2, 3, 9, 9), 4, 3, 1, 1, 1, 1),
    ((2, 3, 10, 11), 5, 3, 2, 1, 1, 1),
    ((2, 2, 12, 12), 3, 3, 1, 2, 2, 1),
    ((1, 3, 11, 9), 2, (3, 2), (2, 1), (1, 2), (1, 2), 1),
    ((2, 4, 8, 8), 6, 3, 1, 1, 1, 2),
    ((2, 4, 9, 7), 8, (2, 3), 2, (0, 1), 1, 4),
    ((3, 4, 6, 6), 5, 1, 1, 0, 1, 1),  # 1x1 fast path
    ((16, 1, 28, 28), 8, 3, 1, 1, 1, 1),  # the benchmark CNN's layer (smaller batch)
]


def _kpair(k):
    return (k, k) if isinstance(k, int) else k


@pytest.mark.parametrize("shape,out,k,stride,padding,dilation,groups", CONV_CASES)
def test_conv2d(shape, out, k, stride, padding, dilation, groups):
    kh, kw = _kpair(k)
    x = rand(*shape)
    w = rand(out, shape[1] // groups, kh, kw)
    b = rand(1, out, 1, 1)
    check(lambda a, c, d: F.conv2d(a, c, d, stride, padding, dilation, groups),
          lambda a, c, d: TF.conv2d(a, c, d.reshape(-1), stride, padding, dilation, groups),
          x, w, b, rtol=1e-4, atol=1e-4)


def test_conv2d_upstream_grouped_weight_layout():
    x = rand(2, 6, 7, 7)
    w = rand(3, 4, 2, 3, 3)  # (groups, out/groups, in/groups, kh, kw)
    check(lambda a, c: F.conv2d(a, c, padding=1, groups=3),
          lambda a, c: TF.conv2d(a, c.reshape(12, 2, 3, 3), padding=1, groups=3),
          x, w, rtol=1e-4, atol=1e-4)


def test_conv2d_without_bias_and_input_grad():
    x, w = rand(2, 3, 6, 6), rand(4, 3, 3, 3)
    check(lambda a, c: F.conv2d(a, c, stride=2), lambda a, c: TF.conv2d(a, c, stride=2),
          x, w, diff=[1], rtol=1e-4, atol=1e-4)


def test_conv2d_channel_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"conv2d.*\(2, 3, 8, 8\).*3 channels.*\(4, 2, 3, 3\)"):
        F.conv2d(mge.tensor(rand(2, 3, 8, 8)), mge.tensor(rand(4, 2, 3, 3)))


def test_conv2d_bad_arguments():
    x = mge.tensor(rand(1, 4, 5, 5))
    with pytest.raises(ValueError, match="conv2d: expected a 4-d input"):
        F.conv2d(mge.tensor(rand(4, 5, 5)), mge.tensor(rand(2, 4, 3, 3)))
    with pytest.raises(ValueError, match="has 2 groups, but groups=4"):
        F.conv2d(x, mge.tensor(rand(2, 3, 2, 3, 3)), groups=4)
    with pytest.raises(ValueError, match="too small"):
        F.conv2d(x, mge.tensor(rand(2, 4, 7, 7)))
    with pytest.raises(ValueError, match="bias of shape"):
        F.conv2d(x, mge.tensor(rand(2, 4, 3, 3)), mge.tensor(rand(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="conv_mode"):
        F.conv2d(x, mge.tensor(rand(2, 4, 3, 3)), conv_mode="convolution")
    with pytest.raises(TypeError, match="stride must be an int or a pair"):
        F.conv2d(x, mge.tensor(rand(2, 4, 3, 3)), stride="2")


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2),
])
def test_conv1d(stride, padding, dilation, groups):
    x, w, b = rand(2, 4, 15), rand(6, 4 // groups, 3), rand(1, 6, 1)
    check(lambda a, c, d: F.conv1d(a, c, d, stride, padding, dilation, groups),
          lambda a, c, d: TF.conv1d(a, c, d.reshape(-1), stride, padding, dilation, groups),
          x, w, b, rtol=1e-4, atol=1e-4)


CONV_T_CASES = [
    # (N, Cin, H, W), Cout, k, stride, padding, output_padding, dilation, groups
    ((2, 3, 5, 5), 4, 3, 1, 0, 0, 1, 1),
    ((2, 3, 5, 6), 2, 3, 2, 1, 1, 1, 1),
    ((1, 2, 4, 4), 3, (2, 3), (2, 1), (0, 1), (1, 0), 1, 1),
    ((2, 2, 5, 5), 2, 3, 1, 2, 0, 2, 1),
    ((2, 4, 5, 5), 6, 3, 2, 1, 0, 1, 2),
]


@pytest.mark.parametrize("shape,out,k,stride,padding,output_padding,dilation,groups",
                         CONV_T_CASES)
def test_conv_transpose2d(shape, out, k, stride, padding, output_padding, dilation, groups):
    kh, kw = _kpair(k)
    x, w, b = rand(*shape), rand(shape[1], out // groups, kh, kw), rand(1, out, 1, 1)
    check(lambda a, c, d: F.conv_transpose2d(a, c, d, stride, padding, output_padding, dilation,
                                             groups),
          lambda a, c, d: TF.conv_transpose2d(a, c, d.reshape(-1), stride, padding,
                                              output_padding, groups, dilation),
          x, w, b, rtol=1e-4, atol=1e-4)


def test_conv_transpose2d_upstream_grouped_weight_layout():
    x, w = rand(2, 4, 5, 5), rand(2, 2, 3, 3, 3)  # (groups, in/groups, out/groups, kh, kw)
    check(lambda a, c: F.conv_transpose2d(a, c, stride=2, groups=2),
          lambda a, c: TF.conv_transpose2d(a, c.reshape(4, 3, 3, 3), stride=2, groups=2),
          x, w, rtol=1e-4, atol=1e-4)


def test_conv_transpose2d_channel_mismatch():
    with pytest.raises(ValueError, match=r"conv_transpose2d.*\(1, 3, 4, 4\).*\(2, 5, 3, 3\)"):
        F.conv_transpose2d(mge.tensor(rand(1, 3, 4, 4)), mge.tensor(rand(2, 5, 3, 3)))


# ----- pooling -----

POOL_CASES = [
    # shape, kernel, stride, padding
    ((2, 3, 8, 8), 2, None, 0),
    ((2, 3, 7, 9), 2, None, 0),  # sizes not divisible: the last row/column is dropped
    ((2, 2, 9, 9), 3, 2, 1),
    ((1, 2, 8, 7), 3, 1, 1),
    ((2, 2, 9, 10), (2, 3), (1, 2), (1, 1)),
    ((64, 8, 28, 28), 2, 2, 0),  # the benchmark CNN's pooling
]


@pytest.mark.parametrize("shape,kernel,stride,padding", POOL_CASES)
def test_max_pool2d(shape, kernel, stride, padding):
    x = rand(*shape)
    check(lambda a: F.max_pool2d(a, kernel, stride, padding),
          lambda a: TF.max_pool2d(a, kernel, stride if stride is not None else kernel, padding),
          x)


def test_max_pool2d_ties_route_the_gradient_like_torch():
    # after a relu most windows hold several equal zeros: one element gets the gradient
    x = np.maximum(rand(2, 3, 8, 8), 0)
    x[0, 0, :2, :2] = 1.5
    check(lambda a: F.max_pool2d(a, 2), lambda a: TF.max_pool2d(a, 2), x)
    check(lambda a: F.max_pool2d(a, 3, 1, 1), lambda a: TF.max_pool2d(a, 3, 1, 1), x)


def test_max_pool2d_keeps_integers():
    x = np.arange(16, dtype=np.int32).reshape(1, 1, 4, 4)
    y = F.max_pool2d(mge.tensor(x), 2, padding=1)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(
        y.numpy(), TF.max_pool2d(torch.tensor(x, dtype=torch.float32), 2, padding=1).numpy())


@pytest.mark.parametrize("shape,kernel,stride,padding", POOL_CASES)
@pytest.mark.parametrize("mode", ["average_count_exclude_padding", "average"])
def test_avg_pool2d(shape, kernel, stride, padding, mode):
    x = rand(*shape)
    check(lambda a: F.avg_pool2d(a, kernel, stride, padding, mode),
          lambda a: TF.avg_pool2d(a, kernel, stride if stride is not None else kernel, padding,
                                  count_include_pad=mode == "average"),
          x)


def test_pool_errors():
    with pytest.raises(ValueError, match="avg_pool2d: mode"):
        F.avg_pool2d(mge.tensor(rand(1, 1, 4, 4)), 2, mode="sum")
    with pytest.raises(ValueError, match=r"max_pool2d: input of shape \(1, 1, 2, 2\)"):
        F.max_pool2d(mge.tensor(rand(1, 1, 2, 2)), 3)
    with pytest.raises(ValueError, match="max_pool2d: expected a 4-d input"):
        F.max_pool2d(mge.tensor(rand(4, 4)), 2)


@pytest.mark.parametrize("oshp", [(4, 4), 2, (1, 3)])
def test_adaptive_pools_match_torch_when_divisible(oshp):
    x = rand(2, 3, 8, 12)
    check(lambda a: F.adaptive_max_pool2d(a, oshp), lambda a: TF.adaptive_max_pool2d(a, oshp), x)
    check(lambda a: F.adaptive_avg_pool2d(a, oshp), lambda a: TF.adaptive_avg_pool2d(a, oshp), x)


def test_adaptive_pools_follow_upstreams_window_rule():
    # upstream: stride = in // out, window = in - (out - 1) * stride (10 -> 3: stride 3, window 4)
    x = rand(2, 3, 10, 7)
    check(lambda a: F.adaptive_max_pool2d(a, (3, 2)),
          lambda a: TF.max_pool2d(a, (4, 4), (3, 3)), x)
    check(lambda a: F.adaptive_avg_pool2d(a, (3, 2)),
          lambda a: TF.avg_pool2d(a, (4, 4), (3, 3)), x)


# ----- normalization -----

def _bn_inputs(shape):
    c = shape[1]
    return rand(*shape), rand(1, c, *([1] * (len(shape) - 2)), low=0.5, high=1.5), \
        rand(1, c, *([1] * (len(shape) - 2)))


@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (16, 4), (6, 3, 7)])
def test_batch_norm_training_values_grads_and_running_stats(shape):
    x, w, b = _bn_inputs(shape)
    c = shape[1]
    rm0, rv0 = rand(1, c, 1, 1), rand(1, c, 1, 1, low=0.5, high=2)
    rm, rv = mge.tensor(rm0), mge.tensor(rv0)
    storage = (rm._data, rv._data)
    trm, trv = torch.tensor(rm0.reshape(-1)), torch.tensor(rv0.reshape(-1))
    momentum = 0.8
    check(lambda a, c_, d: F.batch_norm(a, rm, rv, c_, d, training=True, momentum=momentum),
          lambda a, c_, d: TF.batch_norm(a, trm, trv, c_.reshape(-1), d.reshape(-1),
                                         training=True, momentum=1 - momentum),
          x, w, b, rtol=1e-4, atol=1e-4)
    # the running stats are updated in place, with torch's (unbiased) running variance
    assert rm._data is storage[0] and rv._data is storage[1]
    np.testing.assert_allclose(rm.numpy().reshape(-1), trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv.numpy().reshape(-1), trv.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_norm_inference():
    x, w, b = _bn_inputs((4, 3, 5, 5))
    rm, rv = rand(3), rand(3, low=0.5, high=2)
    check(lambda a, c, d, e, f: F.batch_norm(a, e, f, c, d, training=False),
          lambda a, c, d, e, f: TF.batch_norm(a, e, f, c.reshape(-1), d.reshape(-1),
                                              training=False),
          x, w, b, rm, rv, diff=[0, 1, 2], rtol=1e-4, atol=1e-4)


def test_batch_norm_without_affine_or_running_stats():
    x = rand(6, 3, 4, 4)
    check(lambda a: F.batch_norm(a, training=True),
          lambda a: TF.batch_norm(a, None, None, training=True), x, rtol=1e-4, atol=1e-4)


def test_batch_norm_not_inplace_returns_new_stats():
    x = rand(8, 3, 4, 4)
    rm, rv = mge.tensor(np.zeros((1, 3, 1, 1), np.float32)), mge.tensor(np.ones((1, 3, 1, 1),
                                                                                np.float32))
    out, new_mean, new_var = F.batch_norm(mge.tensor(x), rm, rv, training=True, inplace=False)
    trm, trv = torch.zeros(3), torch.ones(3)
    expect = TF.batch_norm(torch.tensor(x), trm, trv, training=True, momentum=0.1)
    np.testing.assert_allclose(out.numpy(), expect.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_mean.numpy().reshape(-1), trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_var.numpy().reshape(-1), trv.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rm.numpy(), 0)  # untouched
    np.testing.assert_array_equal(rv.numpy(), 1)


def test_batch_norm_with_only_a_running_mean():
    x = rand(8, 3, 4, 4)
    rm = mge.tensor(np.ones((1, 3, 1, 1), np.float32))
    out = F.batch_norm(mge.tensor(x), rm, None, training=True, momentum=0.5)
    trm, trv = torch.ones(3), torch.ones(3)
    expect = TF.batch_norm(torch.tensor(x), trm, trv, training=True, momentum=0.5)
    np.testing.assert_allclose(out.numpy(), expect.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rm.numpy().reshape(-1), trm.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("symbolic", [False, True])
def test_batch_norm_running_stats_update_on_every_traced_call(symbolic):
    from megengine.jit import trace

    rm, rv = mge.tensor(np.zeros((1, 3, 1, 1), np.float32)), mge.tensor(np.ones((1, 3, 1, 1),
                                                                                np.float32))
    step = trace(lambda a: F.batch_norm(a, rm, rv, training=True), symbolic=symbolic)
    trm, trv = torch.zeros(3), torch.ones(3)
    for _ in range(3):
        x = rand(4, 3, 2, 2)
        out = step(mge.tensor(x))
        expect = TF.batch_norm(torch.tensor(x), trm, trv, training=True, momentum=0.1)
        np.testing.assert_allclose(out.numpy(), expect.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rm.numpy().reshape(-1), trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv.numpy().reshape(-1), trv.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_norm_errors():
    x = mge.tensor(rand(4, 3, 2, 2))
    with pytest.raises(ValueError, match="running_mean and running_var are needed"):
        F.batch_norm(x)
    with pytest.raises(ValueError, match=r"batch_norm: weight of shape \(4,\) does not match 3"):
        F.batch_norm(x, weight=mge.tensor(rand(4)), training=True)
    with pytest.raises(TypeError, match="running_mean must be a Tensor"):
        F.batch_norm(x, np.zeros(3, np.float32), mge.tensor(np.ones(3, np.float32)),
                     training=True)


@pytest.mark.parametrize("shape,normalized_shape,affine", [
    ((4, 6), 6, True), ((2, 3, 4, 5), (4, 5), True), ((3, 7), (7,), False),
])
def test_layer_norm(shape, normalized_shape, affine):
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    x, w, b = rand(*shape), rand(*ns, low=0.5, high=1.5), rand(*ns)
    if affine:
        check(lambda a, c, d: F.layer_norm(a, normalized_shape, True, c, d),
              lambda a, c, d: TF.layer_norm(a, ns, c, d), x, w, b, rtol=1e-4, atol=1e-4)
    else:
        check(lambda a: F.layer_norm(a, normalized_shape, False),
              lambda a: TF.layer_norm(a, ns), x, rtol=1e-4, atol=1e-4)


def test_layer_norm_shape_mismatch():
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(5,\).*\(2, 4\)"):
        F.layer_norm(mge.tensor(rand(2, 4)), 5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm(groups):
    x, w, b = rand(3, 4, 5, 6), rand(4, low=0.5, high=1.5), rand(4)
    check(lambda a, c, d: F.group_norm(a, groups, True, c, d),
          lambda a, c, d: TF.group_norm(a, groups, c, d), x, w, b, rtol=1e-4, atol=1e-4)


def test_group_norm_bad_groups():
    with pytest.raises(ValueError, match="group_norm: 4 channels"):
        F.group_norm(mge.tensor(rand(2, 4, 3)), 3, False)


# ----- dropout -----

def test_dropout_training_scales_kept_and_grad_follows_mask():
    x = mge.tensor(rand(200, 100, low=0.5, high=1.5))
    gm = GradManager().attach([x])
    with gm:
        y = F.dropout(x, 0.3)
        gm.backward(y, mge.tensor(np.ones(y.shape, np.float32)))
    y, xv, g = y.numpy(), x.numpy(), x.grad.numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], xv[kept] / 0.7, rtol=1e-6)
    np.testing.assert_allclose(g, kept / np.float32(0.7), rtol=1e-6)


def test_dropout_off_is_identity_and_bad_prob_raises():
    x = mge.tensor(rand(3, 4))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    with pytest.raises(ValueError, match=r"dropout: drop_prob must be in \[0, 1\)"):
        F.dropout(x, 1.0)


def test_dropout_follows_numpy_seed():
    x = mge.tensor(np.ones((50,), np.float32))
    np.random.seed(3)
    a = F.dropout(x, 0.5).numpy()
    np.random.seed(3)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)


# ----- embedding -----

def test_embedding_repeated_indices_accumulate():
    idx = np.array([[1, 3, 1], [0, 3, 3]], np.int32)
    w = rand(5, 4)
    check(lambda i, a: F.embedding(i, a), lambda i, a: TF.embedding(i.long(), a), idx, w)


def test_embedding_padding_idx_gets_no_gradient():
    idx = np.array([0, 2, 2, 1], np.int32)
    w = rand(4, 3)
    check(lambda i, a: F.embedding(i, a, padding_idx=2),
          lambda i, a: TF.embedding(i.long(), a, padding_idx=2), idx, w)


def test_embedding_errors():
    w = mge.tensor(rand(4, 3))
    with pytest.raises(ValueError, match=r"embedding: indices must be in \[0, 4\)"):
        F.embedding(mge.tensor([0, 4]), w)
    with pytest.raises(TypeError, match="embedding: indices must be integers"):
        F.embedding(mge.tensor([0.0, 1.0]), w)
    with pytest.raises(ValueError, match="max_norm"):
        F.embedding(mge.tensor([0]), w, max_norm=1.0)


# ----- resizing -----

@pytest.mark.parametrize("size", [(7, 9), (3, 2), (5, 5)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolate_bilinear(size, align_corners):
    x = rand(2, 3, 5, 6)
    check(lambda a: F.interpolate(a, size, mode="bilinear", align_corners=align_corners),
          lambda a: TF.interpolate(a, size, mode="bilinear", align_corners=align_corners), x)


@pytest.mark.parametrize("size", [(10, 12), (3, 4), (7, 5)])
def test_interpolate_nearest(size):
    x = rand(2, 2, 5, 6)
    check(lambda a: F.interpolate(a, size, mode="nearest"),
          lambda a: TF.interpolate(a, size, mode="nearest"), x)


@pytest.mark.parametrize("size", [(8, 9), (3, 4)])
def test_interpolate_bicubic(size):
    x = rand(1, 2, 5, 6)
    check(lambda a: F.interpolate(a, size, mode="bicubic"),
          lambda a: TF.interpolate(a, size, mode="bicubic", align_corners=False), x,
          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolate_linear_1d(align_corners):
    x = rand(2, 3, 7)
    check(lambda a: F.interpolate(a, 11, mode="linear", align_corners=align_corners),
          lambda a: TF.interpolate(a, 11, mode="linear", align_corners=align_corners), x)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_interpolate_scale_factor(mode):
    x = rand(1, 2, 5, 6)
    check(lambda a: F.interpolate(a, scale_factor=1.5, mode=mode),
          lambda a: TF.interpolate(a, scale_factor=1.5, mode=mode,
                                   recompute_scale_factor=True), x)


def test_interpolate_errors():
    x = mge.tensor(rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="interpolate: mode"):
        F.interpolate(x, 8, mode="area")
    with pytest.raises(ValueError, match="align_corners can only be set"):
        F.interpolate(x, 8, mode="nearest", align_corners=True)
    with pytest.raises(ValueError, match="expects a 4-d input"):
        F.interpolate(mge.tensor(rand(4, 4)), 8)


def test_pixel_shuffle():
    x = rand(2, 3, 8, 4, 5)
    check(lambda a: F.pixel_shuffle(a, 2), lambda a: TF.pixel_shuffle(a, 2), x)
    with pytest.raises(ValueError, match="pixel_shuffle"):
        F.pixel_shuffle(mge.tensor(rand(1, 6, 2, 2)), 2)


# ----- namespace -----

def test_public_names_are_exported():
    import megengine.functional.nn as nn_mod

    for name in nn_mod.__all__:
        assert getattr(F, name) is getattr(nn_mod, name), name
    for name in ("cross_entropy", "binary_cross_entropy", "l1_loss", "square_loss",
                 "hinge_loss"):
        assert getattr(F.nn, name) is getattr(F.loss, name)
    # upstream also spells these F.nn.<name>; they live in the sibling modules
    for name in ("pad", "one_hot", "indexing_one_hot", "logsumexp", "tanh"):
        assert getattr(F.nn, name) is getattr(F, name), name
