"""Tests of megengine/functional/conv.py: values and gradients against torch, memory shared with ATen."""
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from devices import (address, device_array, host, host_default_device,  # noqa: F401
                     views_foreign_memory)
from oracle import check_against_torch, check_second_order_against_torch, raises_as_upstream


def rand(*shape, low=-2.0, high=2.0):
    return np.asarray(np.random.uniform(low, high, shape), dtype=np.float32)


check = partial(check_against_torch, atol=1e-5, check_dtype=True)


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
    # upstream 1.13 measured: RuntimeError from conv2d's shape check, AssertionError from
    # conv1d's (the error is both)
    with pytest.raises(RuntimeError, match="conv2d: expected a 4-d input"):
        F.conv2d(mge.tensor(rand(4, 5, 5)), mge.tensor(rand(2, 4, 3, 3)))
    with pytest.raises(AssertionError, match="conv1d: expected a 3-d input"):
        F.conv1d(mge.tensor(rand(1, 4, 5, 5)), mge.tensor(rand(2, 4, 3)))
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


def test_conv1d_upstream_grouped_weight_layout():
    x, w = rand(2, 4, 9), rand(2, 3, 2, 3)  # (groups, out/groups, in/groups, k)
    check(lambda a, c: F.conv1d(a, c, padding=1, groups=2),
          lambda a, c: TF.conv1d(a, c.reshape(6, 2, 3), padding=1, groups=2),
          x, w, rtol=1e-4, atol=1e-4)


CONV3D_CASES = [
    # (N, C, D, H, W), O, k, stride, padding, dilation, groups
    ((2, 3, 5, 6, 5), 4, 3, 1, 0, 1, 1),
    ((1, 4, 6, 5, 7), 6, (2, 3, 1), (2, 1, 2), (1, 0, 1), 1, 2),
    ((2, 2, 7, 7, 7), 2, 3, 1, 2, 2, 1),
]


@pytest.mark.parametrize("shape,out,k,stride,padding,dilation,groups", CONV3D_CASES)
def test_conv3d(shape, out, k, stride, padding, dilation, groups):
    k3 = (k,) * 3 if isinstance(k, int) else k
    x, w, b = rand(*shape), rand(out, shape[1] // groups, *k3), rand(1, out, 1, 1, 1)
    check(lambda a, c, d: F.conv3d(a, c, d, stride, padding, dilation, groups),
          lambda a, c, d: TF.conv3d(a, c, d.reshape(-1), stride, padding, dilation, groups),
          x, w, b, rtol=1e-4, atol=1e-4)


def test_conv3d_upstream_grouped_weight_layout_and_errors():
    x, w = rand(1, 4, 4, 4, 4), rand(2, 3, 2, 2, 2, 2)
    check(lambda a, c: F.conv3d(a, c, groups=2),
          lambda a, c: TF.conv3d(a, c.reshape(6, 2, 2, 2, 2), groups=2), x, w,
          rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"conv3d: expected a 5-d input \(N, C, D, H, W\)"):
        F.conv3d(mge.tensor(rand(1, 4, 4, 4)), mge.tensor(w), groups=2)
    with pytest.raises(TypeError, match="conv3d: stride must be an int or 3 ints"):
        F.conv3d(mge.tensor(x), mge.tensor(w), stride=(1, 2), groups=2)


@pytest.mark.parametrize("stride,padding,output_padding,dilation,groups", [
    (1, 0, 0, 1, 1), (2, 1, 1, 1, 1), ((2, 1, 2), (0, 1, 1), (1, 0, 0), 1, 2), (1, 1, 0, 2, 1),
])
def test_conv_transpose3d(stride, padding, output_padding, dilation, groups):
    x, w, b = rand(2, 4, 3, 4, 3), rand(4, 6 // groups, 3, 2, 3), rand(1, 6, 1, 1, 1)
    check(lambda a, c, d: F.conv_transpose3d(a, c, d, stride, padding, output_padding,
                                             dilation, groups),
          lambda a, c, d: TF.conv_transpose3d(a, c, d.reshape(-1), stride, padding,
                                              output_padding, groups, dilation),
          x, w, b, rtol=1e-4, atol=1e-4)


def test_conv_integer_input_computes_in_float32():
    x = np.arange(2 * 3 * 5 * 5, dtype=np.int32).reshape(2, 3, 5, 5) % 7
    w = rand(4, 3, 3, 3)
    y = F.conv2d(mge.tensor(x), mge.tensor(w))
    assert y.dtype == np.float32
    expect = TF.conv2d(torch.tensor(x, dtype=torch.float32), torch.tensor(w))
    np.testing.assert_allclose(y.numpy(), expect.numpy(), rtol=1e-4, atol=1e-4)


# ----- memory: ATen works on the engine's arrays, no copies -----

def test_conv_saves_views_of_the_engine_arrays_and_returns_torch_memory():
    x, w = mge.tensor(rand(2, 3, 8, 8)), mge.tensor(rand(4, 3, 3, 3))
    gm = GradManager().attach([x, w])
    with gm:
        y = F.conv2d(x, w, padding=1)
        op = y._node[0].op
        # what backward keeps is the input and the weight themselves (as torch keeps them)
        assert op.tx.data_ptr() == address(x._data)
        assert op.tw.data_ptr() == address(w._data)
        # the output is ATen's buffer seen through numpy, not a copy of it
        assert views_foreign_memory(y)
        # so are the gradients the op hands back (GradManager then gives each .grad memory of
        # its own: torch memory may alias, so .grad receives a copy of it)
        gx, gw = op.backward(device_array(np.ones(y.shape, np.float32), y))
        assert views_foreign_memory(gx) and views_foreign_memory(gw)
        gm.backward(y, mge.tensor(np.ones(y.shape, np.float32)))
    np.testing.assert_array_equal(x.grad.numpy(), host(gx))
    np.testing.assert_array_equal(w.grad.numpy(), host(gw))


def test_grouped_weight_is_viewed_not_copied():
    x, w = mge.tensor(rand(1, 4, 6, 6)), mge.tensor(rand(2, 3, 2, 3, 3))
    gm = GradManager().attach([w])
    with gm:
        y = F.conv2d(x, w, groups=2)
        assert y._node[0].op.tw.data_ptr() == address(w._data)
        gm.backward(y.sum())
    assert w.grad.shape == w.shape


# ----- grad_graph: the gradients as recorded convolutions -----

GRAPH_CASES = [
    ("conv2d", lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 1), (2, 3, 7, 8), (4, 3, 3, 3)),
    ("conv2d_grouped_dilated", lambda x, w, b: F.conv2d(x, w, b, 1, 2, 2, 2), (2, 4, 9, 9),
     (2, 3, 2, 3, 3)),
    ("conv2d_stride_remainder", lambda x, w, b: F.conv2d(x, w, b, 3, 0, 1, 1), (1, 2, 10, 11),
     (3, 2, 2, 2)),
    ("conv1d", lambda x, w, b: F.conv1d(x, w, b, 2, 1, 1, 2), (2, 4, 11), (6, 2, 3)),
    ("conv3d", lambda x, w, b: F.conv3d(x, w, b, 1, 1, 1, 1), (1, 2, 4, 5, 4), (3, 2, 2, 3, 2)),
    ("conv_transpose2d", lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1, 1, 2),
     (2, 4, 4, 5), (4, 3, 3, 3)),
    ("conv_transpose3d", lambda x, w, b: F.conv_transpose3d(x, w, b, 2, 0, 1, 1, 1),
     (1, 2, 3, 3, 2), (2, 3, 2, 2, 3)),
]


@pytest.mark.parametrize("name,fn,xshape,wshape", GRAPH_CASES, ids=[c[0] for c in GRAPH_CASES])
def test_grad_graph_matches_backward(name, fn, xshape, wshape):
    transposed = "transpose" in name
    groups = 2 if name in ("conv2d_grouped_dilated", "conv1d", "conv_transpose2d") else 1
    out = wshape[0] * (wshape[1] if len(wshape) > len(xshape) else 1)
    if transposed:
        out = wshape[1] * groups
    b_shape = (1, out) + (1,) * (len(xshape) - 2)
    x, w, b = mge.tensor(rand(*xshape)), mge.tensor(rand(*wshape)), mge.tensor(rand(*b_shape))
    gm = GradManager().attach([x, w, b])
    with gm:
        y = fn(x, w, b)
        op = y._node[0].op
    dy = rand(*y.shape)
    expect = op.backward(device_array(dy, y))
    got = op.grad_graph((x, w, b), (y,), (mge.tensor(dy),))
    for e, g in zip(expect, got):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), host(e), rtol=1e-4, atol=1e-4)


# ----- sliding windows -----

@pytest.mark.parametrize("kernel,padding,stride,dilation", [
    (3, 0, 1, 1), ((2, 3), (1, 0), (2, 1), 1), (2, 1, 1, 2),
])
def test_sliding_window(kernel, padding, stride, dilation):
    x = rand(2, 3, 7, 6)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel

    def torch_fn(a):
        cols = TF.unfold(a, kernel, dilation, padding, stride)  # (N, C*kh*kw, L)
        h = (7 + 2 * _kpair(padding)[0] - _kpair(dilation)[0] * (kh - 1) - 1) \
            // _kpair(stride)[0] + 1
        return cols.reshape(2, 3, kh, kw, h, -1).permute(0, 1, 4, 5, 2, 3)

    check(lambda a: F.sliding_window(a, kernel, padding, stride, dilation), torch_fn, x)


@pytest.mark.parametrize("kernel,padding,stride,dilation", [(3, 0, 1, 1), (2, 1, 2, 1),
                                                            ((3, 2), 1, 1, (1, 2))])
def test_sliding_window_transpose_is_fold(kernel, padding, stride, dilation):
    size = (6, 7)
    windows = F.sliding_window(mge.tensor(rand(2, 3, *size)), kernel, padding, stride, dilation)
    x = rand(*windows.shape)
    n, c, oh, ow, kh, kw = x.shape

    def torch_fn(a):
        cols = a.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)
        return TF.fold(cols, size, kernel, dilation, padding, stride)

    check(lambda a: F.sliding_window_transpose(a, size, kernel, padding, stride, dilation),
          torch_fn, x)


def test_sliding_windows_second_order():
    # a gradient penalty through sliding windows: upstream 1.13 differentiates the gradient
    # again (measured); earlier versions of this fork raised "_Im2Col has no grad_graph"
    x, kernel, padding, stride = rand(1, 2, 5, 4), (2, 3), 1, (2, 1)
    windows = F.sliding_window(mge.tensor(x), kernel, padding, stride)
    r = rand(*windows.shape)
    n, c, oh, ow, kh, kw = windows.shape

    def unfold(a):
        return TF.unfold(a, kernel, 1, padding, stride).reshape(n, c, kh, kw, oh, ow).permute(
            0, 1, 4, 5, 2, 3)

    check_second_order_against_torch(
        lambda a: (F.sliding_window(a * a, kernel, padding, stride) ** 3 * r).sum(),
        lambda a: (unfold(a * a) ** 3 * torch.tensor(r)).sum(), x)
    w = rand(*windows.shape)

    def fold(a):
        cols = a.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)
        return TF.fold(cols, (5, 4), kernel, 1, padding, stride)

    check_second_order_against_torch(
        lambda a: (F.sliding_window_transpose(a * a, (5, 4), kernel, padding, stride) ** 3
                   * x).sum(),
        lambda a: (fold(a * a) ** 3 * torch.tensor(x)).sum(), w)


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_sliding_window_transpose_adds_in_upstream_order(dtype):
    # upstream's kernel adds the windows into each pixel one by one, windows in row-major
    # order, taps in row-major order within a window; float sums of 3+ terms depend on that
    # order, and upstream's test compares exactly. Oracle: that loop, written out here.
    h, w, (ph, pw), (sh, sw), (kh, kw), (dh, dw) = 7, 8, (1, 2), (2, 1), (3, 2), (1, 3)
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rng = np.random.RandomState(3)
    x = (rng.randn(2, 2, oh, ow, kh, kw) * 1e3).astype(dtype)
    expect = np.zeros((2, 2, h, w), dtype)
    for i, j in np.ndindex(oh, ow):
        for a, b in np.ndindex(kh, kw):
            r, c = i * sh - ph + a * dh, j * sw - pw + b * dw
            if 0 <= r < h and 0 <= c < w:
                expect[:, :, r, c] += x[:, :, i, j, a, b]
    out = F.sliding_window_transpose(mge.tensor(x, dtype=dtype), (h, w), (kh, kw), (ph, pw),
                                     (sh, sw), (dh, dw))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.numpy(), expect)


def test_sliding_window_errors():
    with pytest.raises(ValueError, match="sliding_window: expected a 4-d input"):
        F.sliding_window(mge.tensor(rand(3, 4, 4)), 2)
    # each a ValueError and a RuntimeError (ShapeError) and upstream's AssertionError (its
    # asserts there)
    for upstream_type in (ValueError, RuntimeError, AssertionError):
        with pytest.raises(upstream_type, match="sliding_window_transpose: input of shape"):
            F.sliding_window_transpose(mge.tensor(rand(1, 1, 3, 3, 2, 2)), (5, 5), 2)
        with pytest.raises(upstream_type, match="sliding_window_transpose: expected a 6-d"):
            F.sliding_window_transpose(mge.tensor(rand(1, 3, 3, 2, 2)), (5, 5), 2)
        with pytest.raises(upstream_type, match="sliding_window_transpose: the input is too "
                                                "small along H"):
            F.sliding_window_transpose(mge.tensor(rand(1, 1, 2, 2, 3, 3)), (2, 2), 5)


# ----- local (untied) convolution -----

def _torch_local_conv(x, w, stride, padding, dilation):
    """Reference: one einsum per output position over its own window (no unfold)."""
    g, oh, ow, cg, kh, kw, og = w.shape
    (sh, sw), (ph, pw), (dh, dw) = _kpair(stride), _kpair(padding), _kpair(dilation)
    xp = TF.pad(x, (pw, pw, ph, ph))
    n = x.shape[0]
    rows = []
    for i in range(oh):
        cols = []
        for j in range(ow):
            win = xp[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
            win = win.reshape(n, g, cg, kh, kw)
            cols.append(torch.einsum("ngcij,gcijo->ngo", win, w[:, i, j]).reshape(n, g * og))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


@pytest.mark.parametrize("groups,stride,padding,dilation", [(1, 1, 0, 1), (2, 2, 1, 1),
                                                            (1, 1, 1, 2)])
def test_local_conv2d(groups, stride, padding, dilation):
    x = rand(2, 4, 6, 7)
    k = 3
    oh = (6 + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    ow = (7 + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w = rand(groups, oh, ow, 4 // groups, k, k, 6 // groups)
    check(lambda a, c: F.local_conv2d(a, c, None, stride, padding, dilation),
          lambda a, c: _torch_local_conv(a, c, stride, padding, dilation),
          x, w, rtol=1e-4, atol=1e-4)


def test_local_conv2d_six_dim_weight_and_bias():
    x, w, b = rand(1, 3, 5, 5), rand(3, 3, 3, 3, 3, 2), rand(1, 2, 1, 1)
    check(lambda a, c, d: F.local_conv2d(a, c, d),
          lambda a, c, d: _torch_local_conv(a, c[None], 1, 0, 1) + d, x, w, b,
          rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"local_conv2d: the weight .* 3x3 output positions.*4x4"):
        F.local_conv2d(mge.tensor(rand(1, 3, 6, 6)), mge.tensor(w))


# ----- deformable convolution -----

def _torch_deformable(x, w, offset, mask, stride, padding, dilation, groups):
    """Reference, tap by tap and position by position: DCNv2's bilinear sampling."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = _kpair(stride), _kpair(padding), _kpair(dilation)
    oh, ow = offset.shape[2:]
    taps = kh * kw
    dg = offset.shape[1] // (2 * taps)
    cols = []
    for b in range(n):
        per_b = []
        for t in range(taps):
            i, j = divmod(t, kw)
            for gi in range(dg):
                chans = slice(gi * c // dg, (gi + 1) * c // dg)
                grid = []
                for y in range(oh):
                    for z in range(ow):
                        py = y * sh - ph + i * dh + offset[b, 2 * (gi * taps + t), y, z]
                        px = z * sw - pw + j * dw + offset[b, 2 * (gi * taps + t) + 1, y, z]
                        val = torch.zeros(c // dg)
                        if -1 < float(py.detach()) < h and -1 < float(px.detach()) < wd:
                            y0, x0 = int(np.floor(float(py.detach()))), int(np.floor(float(px.detach())))
                            for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                                if 0 <= yy < h and 0 <= xx < wd:
                                    wgt = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
                                    val = val + wgt * x[b, chans, yy, xx]
                        grid.append(val * mask[b, gi * taps + t, y, z])
                per_b.append(torch.stack(grid, -1))  # (c/dg, L)
        # (taps, dg, c/dg, L) -> (c, taps, L)
        stacked = torch.stack(per_b).reshape(taps, dg, c // dg, oh * ow)
        cols.append(stacked.permute(1, 2, 0, 3).reshape(c, taps, oh * ow))
    cols = torch.stack(cols).reshape(n, groups, cg * taps, oh * ow)
    return torch.matmul(w.reshape(groups, o // groups, cg * taps), cols).reshape(n, o, oh, ow)


@pytest.mark.parametrize("groups,dg,stride,padding,dilation", [(1, 1, 1, 1, 1), (2, 2, 2, 0, 1),
                                                               (1, 2, 1, 1, 2)])
def test_deformable_conv2d_against_a_direct_reference(groups, dg, stride, padding, dilation):
    np.random.seed(3)
    x, w = rand(1, 4, 5, 5), rand(4, 4 // groups, 3, 3)
    oh = (5 + 2 * padding - dilation * 2 - 1) // stride + 1
    offset = rand(1, 2 * dg * 9, oh, oh, low=-1.5, high=1.5)
    mask = rand(1, dg * 9, oh, oh, low=0.0, high=1.0)
    check(lambda a, c, d, e: F.deformable_conv2d(a, c, d, e, None, stride, padding, dilation,
                                                 groups),
          lambda a, c, d, e: _torch_deformable(a, c, d, e, stride, padding, dilation, groups),
          x, w, offset, mask, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,dg,stride,padding,dilation,grouped_weight",
                         [(1, 1, 1, 1, 1, False), (2, 2, 2, 0, 1, True), (1, 2, 1, 1, 2, False)])
def test_deformable_conv2d_is_twice_differentiable(groups, dg, stride, padding, dilation,
                                                   grouped_weight):
    # a Hessian-vector product through x, weight, offset and mask against torch autograd's
    # double backward of the direct reference; the loss squares y, so the output gradient
    # depends on the inputs too. (Upstream 1.13 measured: the outer GradManager gets no
    # gradient there, None for every input, silently.) Offsets keep away from whole pixels,
    # where the bilinear weights have kinks.
    rng = np.random.RandomState(5)
    x, w = rand(1, 4, 5, 5), rand(4, 4 // groups, 3, 3)
    oh = (5 + 2 * padding - dilation * 2 - 1) // stride + 1
    offset = (rng.randint(-2, 2, (1, 2 * dg * 9, oh, oh))
              + rng.uniform(0.2, 0.8, (1, 2 * dg * 9, oh, oh))).astype(np.float32)
    mask = rng.uniform(0.3, 1.0, (1, dg * 9, oh, oh)).astype(np.float32)
    r = mge.tensor(rand(1, 4, oh, oh))
    wshape = (groups, 4 // groups) + w.shape[1:] if grouped_weight else w.shape

    def loss(a, c, d, e):
        y = F.deformable_conv2d(a, c.reshape(wshape), d, e, None, stride, padding, dilation,
                                groups)
        return (y * y * r).sum()

    def torch_loss(a, c, d, e):
        y = _torch_deformable(a, c, d, e, stride, padding, dilation, groups)
        return (y * y * torch.tensor(r.numpy())).sum()

    check_second_order_against_torch(loss, torch_loss, x, w, offset, mask, rtol=1e-3, atol=1e-3)

def test_deformable_conv2d_of_float16_samples_in_float32():
    # float16 points 32 pixels in are 1/64 pixel coarse: their bilinear weights were up to 1/128
    # off (fuzz case 51028 of --float16: 12 ulps off). The exact result: the reference in
    # float64 on the same float16 values; ours is rounded once
    np.random.seed(4)
    x, w = rand(1, 2, 40, 40).astype(np.float16), rand(2, 2, 3, 3).astype(np.float16)
    offset = rand(1, 18, 3, 3, low=-1.5, high=1.5)  # (float32, as upstream computes them)
    mask = rand(1, 9, 3, 3, low=0.0, high=1.0)
    xs = [mge.tensor(a) for a in (x, w, offset, mask)]
    gm = GradManager().attach(xs)
    with gm:
        y = F.deformable_conv2d(*xs, None, stride=16)
        gm.backward(y.sum())
    assert y.dtype == np.float16 and [t.grad.dtype for t in xs] == [np.float16, np.float16,
                                                                    np.float32, np.float32]
    exact = _torch_deformable(*(torch.tensor(a, dtype=torch.float64) for a in (x, w, offset, mask)),
                              16, 0, 1, 1).numpy()
    ulp = np.spacing(np.float16(np.abs(exact).max())).astype(np.float64)
    assert np.abs(y.numpy() - exact).max() <= ulp


def test_deformable_conv2d_without_offsets_is_conv2d():
    x, w, b = rand(2, 3, 6, 6), rand(4, 3, 3, 3), rand(1, 4, 1, 1)
    offset, mask = np.zeros((2, 18, 6, 6), np.float32), np.ones((2, 9, 6, 6), np.float32)
    check(lambda a, c, d, e, f: F.deformable_conv2d(a, c, d, e, f, padding=1),
          lambda a, c, d, e, f: TF.conv2d(a, c, f.reshape(-1), padding=1), x, w, offset, mask, b,
          diff=[0, 1, 4], rtol=1e-4, atol=1e-4)


def test_deformable_conv2d_bad_offset_names_the_layout():
    x, w = mge.tensor(rand(1, 2, 5, 5)), mge.tensor(rand(2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"offset of shape \(1, 9, 3, 3\) must be"):
        F.deformable_conv2d(x, w, mge.tensor(rand(1, 9, 3, 3)), mge.tensor(rand(1, 9, 3, 3)))
    with pytest.raises(ValueError, match=r"mask of shape \(1, 8, 3, 3\) must be"):
        F.deformable_conv2d(x, w, mge.tensor(rand(1, 18, 3, 3)), mge.tensor(rand(1, 8, 3, 3)))


def test_sliding_windows_keep_integers():
    x = np.arange(2 * 5 * 4, dtype=np.int32).reshape(1, 2, 5, 4)
    windows = F.sliding_window(mge.tensor(x), 2, stride=(2, 1))
    assert windows.dtype == np.int32 and windows.shape == (1, 2, 2, 3, 2, 2)
    # window (i, j) starts at row 2i, column j
    np.testing.assert_array_equal(windows.numpy()[0, 1, 1, 2], x[0, 1, 2:4, 2:4])
    back = F.sliding_window_transpose(windows, (5, 4), 2, stride=(2, 1))
    assert back.dtype == np.int32
    counts = np.array([1, 2, 2, 1])  # how many windows cover each column; rows 0-3 once, 4 never
    np.testing.assert_array_equal(back.numpy()[0, :, :4], x[0, :, :4] * counts)
    np.testing.assert_array_equal(back.numpy()[0, :, 4], 0)


@pytest.mark.parametrize("transposed", [False, True])
def test_grad_graph_is_recorded_for_a_second_derivative(transposed):
    # d/dw <dx, v> through the recorded gradient, against torch's double backward
    x0, v0 = rand(2, 4, 6, 6), None
    w0 = rand(4, 3, 3, 3) if transposed else rand(6, 2, 3, 3)
    conv_m = (lambda a, c: F.conv_transpose2d(a, c, stride=2, padding=1, groups=2)) \
        if transposed else (lambda a, c: F.conv2d(a, c, stride=2, padding=1, groups=2))
    conv_t = (lambda a, c: TF.conv_transpose2d(a, c, stride=2, padding=1, groups=2)) \
        if transposed else (lambda a, c: TF.conv2d(a, c, stride=2, padding=1, groups=2))
    x, w = mge.tensor(x0), mge.tensor(w0)
    gm_outer, gm_inner = GradManager().attach([w]), GradManager().attach([x, w])
    with gm_outer:
        with gm_inner:
            y = conv_m(x, w)
        dy0 = rand(*y.shape)
        v0 = rand(*x0.shape)
        gx, _ = y._node[0].op.grad_graph((x, w), (y,), (mge.tensor(dy0),))
        gm_outer.backward((gx * mge.tensor(v0)).sum())
    tx, tw = torch.tensor(x0, requires_grad=True), torch.tensor(w0, requires_grad=True)
    (tgx,) = torch.autograd.grad(conv_t(tx, tw), tx, torch.tensor(dy0), create_graph=True)
    (tgx * torch.tensor(v0)).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-4)


# ----- region restricted convolution -----

def _torch_region_restricted_conv(x, w, rin, rout, stride, padding, dilation, groups):
    # upstream's own test recipe: a sum over region ids v of the plain convolution of the
    # input masked to rin == v, kept where rout == v
    g, og, cg, kh, kw = w.shape
    weight = w.reshape(g * og, cg, kh, kw)
    out = 0
    for v in torch.unique(torch.cat([rin.flatten(), rout.flatten()])):
        masked = x * (rin == v).unsqueeze(1).to(x.dtype)
        y = TF.conv2d(masked, weight, None, stride, padding, dilation, groups)
        out = out + y * (rout == v).unsqueeze(1).to(x.dtype)
    return out


RRCONV_CASES = [
    # (N, C, H, W), O, k, stride (always 1, as upstream's), padding, dilation, groups, id dtype
    ((2, 3, 7, 7), 3, 3, 1, 1, 1, 3, np.int32),  # depthwise, upstream's common use
    ((1, 4, 8, 6), 6, (3, 2), 1, (1, 0), (1, 2), 2, np.int32),
    # uint8 ids, their gradients too (upstream 1.13 on the CPU gives both)
    ((2, 2, 6, 6), 4, 2, 1, 0, 1, 1, np.uint8),
]


@pytest.mark.parametrize("shape,o,k,s,p,d,g,id_dtype", RRCONV_CASES)
def test_region_restricted_conv_matches_masked_torch_convolutions(shape, o, k, s, p, d, g,
                                                                  id_dtype):
    n, c, h, w = shape
    kh, kw = _kpair(k)
    ss, pp, dd = _kpair(s), _kpair(p), _kpair(d)
    oh = (h + 2 * pp[0] - dd[0] * (kh - 1) - 1) // ss[0] + 1
    ow = (w + 2 * pp[1] - dd[1] * (kw - 1) - 1) // ss[1] + 1
    rs = np.random.RandomState(3)
    rin = rs.randint(0, 3, (n, h, w)).astype(id_dtype)
    rout = rs.randint(0, 3, (n, oh, ow)).astype(id_dtype)
    check(lambda x, wt, a, b: F.region_restricted_conv(x, wt, a, b, None, s, p, d, g),
          lambda x, wt, a, b: _torch_region_restricted_conv(x, wt, a, b, s, p, d, g),
          rand(*shape), rand(g, o // g, c // g, kh, kw), rin, rout, rtol=1e-4, atol=1e-4)


def test_region_restricted_conv_hand_computed():
    # a 2x2 all-ones kernel over a 3x3 image: each output sums the taps of its own region
    x = mge.tensor(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3))
    w = mge.tensor(np.ones((1, 1, 1, 2, 2), np.float32))
    rin = mge.tensor(np.array([[[0, 0, 1], [0, 1, 1], [2, 2, 2]]], np.int32))
    rout = mge.tensor(np.array([[[0, 1], [2, 1]]], np.int32))
    out = F.region_restricted_conv(x, w, rin, rout, bias=mge.tensor(np.full((1, 1, 1, 1), 0.5,
                                                                            np.float32)))
    # (0,0): taps 0,1,3 in region 0; (0,1): taps 2,4,5 in region 1; (1,0): taps 6,7 in region 2;
    # (1,1): taps 4,5 in region 1
    np.testing.assert_allclose(out.numpy(), [[[[0 + 1 + 3 + 0.5, 2 + 4 + 5 + 0.5],
                                               [6 + 7 + 0.5, 4 + 5 + 0.5]]]])


def test_region_restricted_conv_bad_input_is_named():
    x = mge.tensor(np.zeros((1, 2, 4, 4), np.float32))
    w = mge.tensor(np.zeros((2, 1, 1, 3, 3), np.float32))
    rin = mge.tensor(np.zeros((1, 4, 4), np.int32))
    rout = mge.tensor(np.zeros((1, 2, 2), np.int32))
    with pytest.raises(TypeError, match="int32 or uint8"):
        F.region_restricted_conv(x, w, rin.astype("float32"), rout, groups=2)
    with pytest.raises(ValueError, match=r"rout \(N, OH, OW\)"):
        F.region_restricted_conv(x, w, rin, mge.tensor(np.zeros((1, 4, 4), np.int32)), groups=2)
    with pytest.raises(ValueError, match="groups=1"):
        F.region_restricted_conv(x, w, rin, rout, groups=1)


def test_region_restricted_conv_refuses_what_upstreams_kernels_do():
    # upstream's RegionRestrictedConvolution (megdnn): stride 1 only; rin and rout of one
    # dtype, int32 or uint8
    x = mge.tensor(np.ones((1, 2, 5, 5), np.float32))
    w = mge.tensor(np.ones((2, 1, 1, 3, 3), np.float32))
    rin, rout = np.zeros((1, 5, 5), np.int32), np.zeros((1, 3, 3), np.int32)
    with pytest.raises(ValueError, match="stride must be 1"):
        F.region_restricted_conv(x, w, rin, np.zeros((1, 2, 2), np.int32), stride=2, groups=2)
    with pytest.raises(ValueError, match="stride must be 1"):
        F.region_restricted_conv(x, w, rin, np.zeros((1, 3, 2), np.int32), stride=(1, 2),
                                 groups=2)
    for a, b in ((rin, rout.astype(np.uint8)), (rin.astype(np.int16), rout.astype(np.int16)),
                 (rin.astype(np.int8), rout.astype(np.int8))):
        with pytest.raises(TypeError, match="one dtype, int32 or uint8"):
            F.region_restricted_conv(x, w, a, b, groups=2)
    rin8, rout8 = mge.tensor(rin.astype(np.uint8)), mge.tensor(rout.astype(np.uint8))
    # uint8 ids: the forward and both gradients as int32 ids' (upstream 1.13 on the CPU,
    # measured); each of the 3x3 outputs sees its 3x3 window of ones
    want = F.region_restricted_conv(x, w, rin, rout, groups=2).numpy()
    np.testing.assert_array_equal(F.region_restricted_conv(x, w, rin8, rout8, groups=2).numpy(),
                                  want)
    gm = GradManager().attach([x, w])
    with gm:
        gm.backward(F.region_restricted_conv(x, w, rin8, rout8, groups=2).sum())
    np.testing.assert_array_equal(w.grad.numpy(), np.full((2, 1, 1, 3, 3), 9, np.float32))
    # (input pixel (i, j) is read by the outputs whose window covers it)
    cover = np.array([1, 2, 3, 2, 1], np.float32)
    np.testing.assert_array_equal(x.grad.numpy(), np.broadcast_to(np.outer(cover, cover),
                                                                  (1, 2, 5, 5)))


@pytest.mark.parametrize("mode", ["checked", "without_host", "dump"])
def test_region_restricted_conv_traced_follows_new_region_maps(mode):
    # the keep-mask is made by ops from rin and rout: a replay or a dumped program given other
    # region maps computes it anew (it once was a constant of the trace)
    import io

    from megengine.jit import trace
    from megengine.utils.comp_graph_tools import GraphInference

    rs = np.random.RandomState(5)
    x, w = rand(1, 2, 6, 6), rand(2, 1, 1, 3, 3)
    maps = [(rs.randint(0, 3, (1, 6, 6)).astype(np.int32),
             rs.randint(0, 3, (1, 4, 4)).astype(np.int32)) for _ in range(3)]

    def fn(x, w, rin, rout):
        return F.region_restricted_conv(x, w, rin, rout, groups=2)

    f = trace(fn, symbolic=True, without_host=mode == "without_host",
              capture_as_const=mode == "dump")
    f(*map(mge.tensor, (x, w) + maps[0]))
    if mode == "dump":
        buf = io.BytesIO()
        f.dump(buf, arg_names=["x", "w", "rin", "rout"])
        buf.seek(0)
        g = GraphInference(buf)
    for rin, rout in maps[1:]:
        want = _torch_region_restricted_conv(*map(torch.tensor, (x, w, rin, rout)), 1, 0, 1, 2)
        got = (list(g.run(x, w, rin, rout).values())[0] if mode == "dump"
               else f(*map(mge.tensor, (x, w, rin, rout))).numpy())
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


# ----- kernel choice and argument forms -----

@pytest.mark.parametrize("shape,out,stride,im2col", [
    ((3, 1, 11, 9), 8, 1, True),  # one grey channel into few: ATen's im2col kernel
    ((3, 1, 11, 9), 32, 1, False),  # many outputs: oneDNN
    ((2, 3, 13, 11), 6, 2, False),  # an RGB stem with stride 2 (ShuffleNet's): oneDNN
    ((2, 3, 9, 9), 4, 1, False),
])
def test_first_layer_kernel_choice_keeps_torchs_values_and_gradients(shape, out, stride, im2col,
                                                                      monkeypatch):
    from megengine.functional import _aten

    used = []
    real = _aten.aten()

    class Recorder:
        def __getattr__(self, name):
            used.append(name)
            return getattr(real, name)

    monkeypatch.setattr(_aten, "aten", Recorder)
    x, w, b = rand(*shape), rand(out, shape[1], 3, 3), rand(1, out, 1, 1)
    check(lambda a, c, d: F.conv2d(a, c, d, stride, 1),
          lambda a, c, d: TF.conv2d(a, c, d.reshape(-1), stride, 1), x, w, b, rtol=1e-4,
          atol=1e-4)
    on_cpu = type(mge.tensor(x)._data) is np.ndarray
    assert ("_slow_conv2d_forward" in used) == (im2col and on_cpu)


@pytest.mark.parametrize("stride,padding", [
    (2, 1), ((2, 2), (1, 1)), ([2, 2], [1, 1]), (np.int64(2), np.int32(1)),
    (mge.tensor([2, 2]), mge.tensor(1)),
])
def test_conv2d_takes_every_form_of_its_size_arguments(stride, padding):
    x, w = rand(2, 3, 9, 8), rand(4, 3, 3, 3)
    y = F.conv2d(mge.tensor(x), mge.tensor(w), None, stride, padding)
    expect = TF.conv2d(torch.tensor(x), torch.tensor(w), None, 2, 1)
    np.testing.assert_allclose(y.numpy(), expect.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", [(1, 1, 1), "same", None, (1, None)])
def test_conv2d_rejects_malformed_size_arguments_with_their_name(padding):
    with pytest.raises(TypeError, match=r"conv2d: padding must be an int or a pair of ints"):
        F.conv2d(mge.tensor(rand(1, 3, 5, 5)), mge.tensor(rand(2, 3, 3, 3)), None, 1, padding)


# ----- the per-call checks of the common path (module arguments, config and amp at defaults) -----

def test_conv_size_and_stride_errors_say_what_is_wrong():
    x, w = mge.tensor(np.ones((1, 2, 5, 4), np.float32)), mge.tensor(np.ones((3, 2, 3, 3),
                                                                             np.float32))
    with pytest.raises(ValueError, match=r"conv2d: the input is too small along W \(4, padding 0\)"
                                         r" for a kernel of 3 with dilation 2"):
        F.conv2d(x, w, dilation=2)
    for stride in (0, -1, (1, 0)):
        with pytest.raises(ValueError, match="conv2d: stride must be a positive int, got"):
            F.conv2d(x, w, stride=stride)
    with pytest.raises(TypeError, match=r"conv2d: stride must be an int or a pair of ints, got "
                                        r"\(1, 2, 3\)"):
        F.conv2d(x, w, stride=(1, 2, 3))
    with pytest.raises(ValueError, match="input of shape .* has 2 channels but the weight"):
        F.conv2d(x, mge.tensor(np.ones((3, 4, 1, 1), np.float32)))
    # sizes that just fit (one output along W) pass the inline check
    assert F.conv2d(x, w, padding=(0, 0), dilation=(1, 1), stride=(2, 3)).shape == (1, 3, 2, 1)


def test_conv_argument_tuples_of_other_types_are_converted():
    rs = np.random.RandomState(2)
    a, k = rs.randn(2, 3, 7, 6).astype(np.float32), rs.randn(4, 3, 3, 2).astype(np.float32)
    expect = TF.conv2d(torch.tensor(a), torch.tensor(k), stride=(2, 1), padding=(1, 0)).numpy()
    for stride, padding in (((2, 1), (1, 0)), ([2, 1], [1, 0]), ((np.int64(2), 1), (np.int64(1), False))):
        out = F.conv2d(mge.tensor(a), mge.tensor(k), stride=stride, padding=padding)
        np.testing.assert_allclose(host(out), expect, rtol=1e-5, atol=1e-5)


def test_conv_format_switch_and_autocast_still_apply_on_every_call():
    from megengine import amp, config

    rs = np.random.RandomState(3)
    x = mge.tensor(rs.randn(1, 2, 5, 5).astype(np.float32))
    w = mge.tensor(rs.randn(3, 2, 3, 3).astype(np.float32))
    config._conv_format = "NHWC"
    try:
        with pytest.raises(ValueError, match="conv2d: format 'NHWC'.*takes NCHW"):
            F.conv2d(x, w)
    finally:
        config._conv_format = "default"
    with amp.autocast():
        out = F.conv2d(x, w)
    assert out.dtype == np.float16
    expect = TF.conv2d(torch.tensor(x.numpy()).half().float(), torch.tensor(w.numpy()).half()
                       .float()).numpy()
    np.testing.assert_allclose(host(out).astype(np.float32), expect, rtol=1e-2, atol=1e-2)


def test_conv_gradients_after_inference_calls_and_of_mixed_dtypes_match_torch():
    # inference calls keep nothing for a backward; a recorded call after them keeps what it
    # needs, with each input's gradient in that input's dtype
    rs = np.random.RandomState(4)
    a, k = rs.randn(2, 4, 5, 7), rs.randn(6, 2, 3, 3).astype(np.float32)
    x, w = mge.tensor(a, dtype="float64"), mge.tensor(k)
    F.conv2d(x, w, groups=2)
    gm = GradManager().attach([x, w])
    with gm:
        y = F.conv2d(x, w, stride=(2, 1), padding=1, groups=2)
        gm.backward(y.sum())
    assert y.dtype == np.float64 and x.grad.dtype == np.float64 and w.grad.dtype == np.float32
    tx = torch.tensor(a, requires_grad=True)
    tw = torch.tensor(k.astype(np.float64), requires_grad=True)
    ty = TF.conv2d(tx, tw, stride=(2, 1), padding=1, groups=2)
    ty.sum().backward()
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(w.grad), tw.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn, torch_fn, w_shape, kwargs", [
    (F.conv2d, TF.conv2d, (8, 4, 3, 3), dict(stride=2, padding=1)),
    (F.conv2d, TF.conv2d, (8, 2, 3, 3), dict(padding=1, groups=2)),
    (F.conv_transpose2d, TF.conv_transpose2d, (4, 8, 3, 3), dict(stride=2, padding=1)),
    (F.conv1d, TF.conv1d, (8, 4, 5), dict(padding=2)),
], ids=["conv2d", "groups", "transposed", "conv1d"])
def test_float16_convolution_on_cpu_adds_in_float32_and_rounds_once(fn, torch_fn, w_shape, kwargs):
    # the oracle: torch's float32 convolution of the same float16 values, rounded to float16
    # once (forward, and each gradient from the float16 output gradient)
    rng = np.random.default_rng(8)
    nd = len(w_shape) - 2
    x = rng.standard_normal((2, 4) + (9,) * nd).astype(np.float16)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float16)
    b = rng.standard_normal(w_shape[1] if fn is F.conv_transpose2d else w_shape[0])
    b = b.astype(np.float16)
    tx, tw, tb = (torch.tensor(a.astype(np.float32), requires_grad=True) for a in (x, w, b))
    ty = torch_fn(tx, tw, tb, **kwargs)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float16)
    ty.backward(torch.from_numpy(g.astype(np.float32)))
    xs = [mge.tensor(a, device="cpu0") for a in (x, w, b)]
    with GradManager().attach(xs) as gm:
        y = fn(*xs, **kwargs)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    assert y.dtype == np.float16 and all(t.grad.dtype == np.float16 for t in xs)
    np.testing.assert_array_equal(y.numpy(), ty.detach().half().numpy())
    for t, want in zip(xs, (tx, tw, tb)):
        np.testing.assert_array_equal(t.grad.numpy(), want.grad.half().numpy())


@pytest.mark.usefixtures("host_default_device")  # (the CPU's path)
def test_float16_conv_layer_sees_its_weights_written_in_place():
    # the float32 copies made per call are not kept as the layer's views: a write to the
    # float16 weight shows in the next call
    conv = mge.module.Conv2d(3, 4, 3, padding=1)
    conv.weight._reset(conv.weight.astype("float16"))
    conv.bias._reset(conv.bias.astype("float16"))
    x = np.random.default_rng(9).standard_normal((1, 3, 6, 6)).astype(np.float16)
    for scale in (1, 2):
        if scale == 2:
            conv.weight[...] = conv.weight * 2
        w, b = (torch.tensor(p.numpy().astype(np.float32)) for p in (conv.weight, conv.bias))
        want = TF.conv2d(torch.tensor(x.astype(np.float32)), w, b.reshape(-1), padding=1)
        np.testing.assert_array_equal(conv(mge.tensor(x)).numpy(), want.half().numpy())


@pytest.mark.parametrize("call", [
    lambda x: F.sliding_window(x, 3),
    lambda x: F.local_conv2d(x, mge.tensor(np.zeros((6, 6, 2, 3, 3, 2), np.float32))),
    lambda x: F.deformable_conv2d(x, mge.tensor(np.zeros((2, 2, 3, 3), np.float32)),
                                  mge.tensor(np.zeros((1, 18, 6, 6), np.float32)),
                                  mge.tensor(np.zeros((1, 9, 6, 6), np.float32))),
])
def test_a_3d_input_is_a_valueerror_and_upstreams_runtimeerror(call):
    # megdnn's shape assertion is a RuntimeError: code catching it catches ours too
    x = mge.tensor(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="expected a 4-d input"):
        call(x)
    with pytest.raises(RuntimeError, match="expected a 4-d input"):
        call(x)


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.conv2d(x, mge.tensor(np.ones((3, 3, 3, 3), "float32"))),
                 RuntimeError, "has 2 channels but the weight of shape", id="conv2d-channels"),
    pytest.param(lambda x: F.conv_transpose2d(x, mge.tensor(np.ones((3, 3, 3, 3), "float32"))),
                 RuntimeError, "has 2 channels but the weight of shape", id="deconv-channels"),
    pytest.param(lambda x: F.conv2d(x, mge.tensor(np.ones((2, 2, 3, 3), "float32")), padding=-1),
                 RuntimeError, r"padding \(-1, -1\) and output_padding \(0, 0\) must be "
                 "non-negative",
                 id="conv2d-negative-padding"),
    pytest.param(lambda x: F.conv2d(x, mge.tensor(np.ones((2, 2, 3, 3), "float32")), stride=0),
                 RuntimeError, "stride must be a positive int, got 0 along H",
                 id="conv2d-zero-stride"),
    pytest.param(lambda x: F.conv2d(x, mge.tensor(np.ones((2, 2, 3, 3), "float32")),
                                    compute_mode="bogus"),
                 RuntimeError, "compute_mode must be 'default' or 'float32'", id="compute_mode"),
    # (torch's "dilation should be greater than zero" and "non-positive stride is not
    # supported" came out here before, naming neither the function nor the axis)
    pytest.param(lambda x: F.conv2d(x, mge.tensor(np.ones((2, 2, 3, 3), "float32")),
                                    dilation=(1, -3)),
                 RuntimeError, "conv2d: dilation must be a positive int, got -3 along W",
                 id="conv2d-negative-dilation"),
    pytest.param(lambda x: F.conv_transpose2d(x, mge.tensor(np.ones((2, 2, 3, 3), "float32")),
                                              stride=-3),
                 RuntimeError, "conv_transpose2d: stride must be a positive int, got -3 along H",
                 id="deconv-negative-stride"),
    pytest.param(lambda x: F.local_conv2d(x, mge.tensor(np.ones((3, 3, 2, 3, 3, 2), "float32")),
                                          dilation=0),
                 RuntimeError, "local_conv2d: dilation must be a positive int, got 0 along H",
                 id="local_conv2d-zero-dilation"),
    pytest.param(lambda x: F.conv2d(x, mge.tensor(np.ones((2, 2, 3, 3), "float32")), groups=0),
                 RuntimeError, "conv2d: groups must be positive, got 0", id="conv2d-zero-groups"),
    # (megdnn's shape deduction asserts: an input too small for the kernel, a transposed
    # convolution's padding that leaves no output, an output_padding not below the stride)
    pytest.param(lambda x: F.conv2d(x, mge.tensor(np.ones((2, 2, 3, 3), "float32")), dilation=3),
                 RuntimeError, "conv2d: the input is too small along H", id="conv2d-too-small"),
    pytest.param(lambda x: F.conv_transpose2d(x, mge.tensor(np.ones((2, 2, 2, 2), "float32")),
                                              padding=4),
                 RuntimeError, "conv_transpose2d: padding .4, 4. leaves no output",
                 id="deconv-no-output"),
    pytest.param(lambda x: F.conv_transpose2d(x, mge.tensor(np.ones((2, 2, 2, 2), "float32")),
                                              stride=2, output_padding=2),
                 AssertionError, "output_padding .2, 2. must be smaller than stride",
                 id="deconv-output-padding"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: channel counts that do not match fail in its C++ checks
    # (RuntimeError), a negative padding or an unknown compute_mode in pybind's "Unable to cast"
    # (RuntimeError; torch's "negative padding is not supported" came out here before); earlier
    # versions of this fork raised a plain ValueError. The error is also a ValueError (what
    # the mistake is) and says what was wrong
    raises_as_upstream(call, (1, 2, 5, 5), upstream, match)


@pytest.mark.parametrize("call", [
    lambda x, w: F.conv2d(x, w, groups=[1, 1]),
    lambda x, w: F.conv_transpose2d(x, w, groups="1"),
])
def test_groups_of_another_type_is_a_typeerror_and_upstreams_runtimeerror(call):
    # upstream 1.13 measured: RuntimeError (its C++ check of the weight's rank); before, int()
    # of the list raised "int() argument must be ... not 'list'", naming no argument
    x = mge.tensor(np.ones((1, 2, 5, 5), "float32"))
    w = mge.tensor(np.ones((2, 2, 3, 3), "float32"))
    for error in (TypeError, RuntimeError):
        with pytest.raises(error, match="groups must be an int, got"):
            call(x, w)


@pytest.mark.parametrize("name,arg,call", [
    ("conv2d", "weight", lambda x: F.conv2d(x, "w")),
    ("conv2d", "bias", lambda x: F.conv2d(x, np.ones((2, 3, 1, 1), np.float32), bias="b")),
    ("conv_transpose2d", "weight", lambda x: F.conv_transpose2d(x, "w")),
    ("local_conv2d", "inp", lambda x: F.local_conv2d(None, x)),
])
def test_a_string_or_none_for_a_tensor_names_the_function_and_the_argument(name, arg, call):
    # (Tensor's constructor refused it, many calls below the function: its words named
    # neither); upstream 1.13 raises TypeError ("py_apply expects tensor as inputs")
    x = mge.tensor(np.ones((1, 3, 4, 4), np.float32))
    with pytest.raises(TypeError, match=f"^{name}: {arg}(: cannot make a tensor| is None)"):
        call(x)


@pytest.mark.parametrize("stride", ["12", ("1", 1), (2.5, 1), "2"])
def test_a_string_or_a_fractional_stride_raises_where_it_was_read_as_ints(stride):
    # int() parsed "1" and truncated 2.5, and a string is a sequence: "12" was stride (1, 2);
    # upstream 1.13 refuses them (pybind's "Unable to cast": a RuntimeError)
    x = mge.tensor(np.ones((1, 2, 5, 5), np.float32))
    w = mge.tensor(np.ones((3, 2, 1, 1), np.float32))
    for cls in (TypeError, RuntimeError):
        with pytest.raises(cls, match="^conv2d: stride must be an int or a pair of ints"):
            F.conv2d(x, w, stride=stride)


def test_a_whole_float_stride_is_the_int_it_holds():
    x = np.random.rand(1, 2, 5, 5).astype(np.float32)
    w = np.random.rand(3, 2, 1, 1).astype(np.float32)
    out = F.conv2d(mge.tensor(x), mge.tensor(w), stride=(2.0, 1))
    want = TF.conv2d(torch.tensor(x), torch.tensor(w), stride=(2, 1)).numpy()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)


def test_a_whole_float_alone_is_both_ints_of_a_pair():
    # as a pair's entries: F.conv2d(x, w, padding=1.0) and F.max_pool2d(x, 2.0), which upstream
    # 1.13 reads with int() (measured), raised "must be an int or a pair of ints"
    x = np.random.rand(1, 2, 5, 5).astype(np.float32)
    w = np.random.rand(3, 2, 3, 3).astype(np.float32)
    out = F.conv2d(mge.tensor(x), mge.tensor(w), padding=1.0, stride=np.float32(2))
    want = TF.conv2d(torch.tensor(x), torch.tensor(w), padding=1, stride=2).numpy()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(F.max_pool2d(mge.tensor(x), 2.0).numpy(),
                                  TF.max_pool2d(torch.tensor(x), 2).numpy())
    with pytest.raises(TypeError, match="^max_pool2d: kernel_size must be an int or a pair"):
        F.max_pool2d(mge.tensor(x), 2.5)


def test_a_channels_last_view_convolves_as_its_contiguous_copy():
    # a transposed NDHWC volume has channels-last strides, with which ATen took oneDNN's
    # channels-last kernels: an infinite weight times the padding gave inf there, NaN on the
    # contiguous volume (torch's kernel; special-values fuzz seed 189 of conv3d, whose
    # geometry this is)
    rs = np.random.RandomState(0)
    x = rs.randn(2, 2, 6, 1, 6).astype(np.float32)
    w = rs.randn(2, 1, 2, 2, 2).astype(np.float32)
    w[1, 0, 0, 0, 1], w[1, 0, 1, 0, 0] = -np.inf, np.inf
    args = dict(stride=(2, 1, 2), padding=(1, 1, 0), dilation=(1, 1, 2), groups=2)
    last = (0, 2, 3, 4, 1)  # NCDHW -> NDHWC
    view = F.transpose(mge.tensor(np.ascontiguousarray(x.transpose(last))), np.argsort(last))
    got = F.conv3d(view, mge.tensor(w), **args).numpy()
    want = TF.conv3d(torch.tensor(x), torch.tensor(w), **args).numpy()
    assert np.isnan(want).any()  # (the case holds padding times an infinity)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
