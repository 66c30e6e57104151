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


def test_dropout_follows_the_megengine_seed():
    # megengine.random.seed governs the draws on every device (numpy's RNG here, CuPy's on a GPU)
    x = mge.tensor(np.ones((50,), np.float32))
    mge.random.seed(3)
    a = F.dropout(x, 0.5).numpy()
    mge.random.seed(3)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert 5 < (a == 0).sum() < 45  # it did drop, and not everything


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
