"""Tests of megengine/functional/vision.py: warping/remapping against torch's grid_sample, ROI
ops, NMS, correlation and cvt_color against upstream's documented outputs and loop references."""
from functools import partial

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine import amp
from megengine.autodiff import GradManager

from devices import (host_default_device, requires_cuda,  # noqa: F401  (fixture used by name)
                     simulated_gpu_runtime)
from oracle import check_against_torch, raises_as_upstream
from oracle import check_second_order_against_torch as check_second_order
from oracle import needs_torch

check = partial(check_against_torch, rtol=1e-4, atol=1e-4)


def rand(*shape, seed=0):
    return np.asarray(np.random.RandomState(seed).randn(*shape), dtype=np.float32)


def _grid_sample(img, x, y, mode="bilinear", padding="border"):
    """torch's sampler at pixel coordinates (align_corners=True maps -1/1 to pixel 0/W-1)."""
    h, w = img.shape[2:]
    grid = torch.stack([x / (w - 1) * 2 - 1, y / (h - 1) * 2 - 1], dim=-1)
    return torch.nn.functional.grid_sample(img, grid, mode=mode, padding_mode=padding,
                                           align_corners=True)


def _directional_check(fn, x, seed=3, eps=1e-2, rtol=2e-3):
    """Gradient of sum(fn(x) * g) along a random direction vs a central difference: exact for
    functions that are linear (or piecewise linear, away from kinks) in x."""
    rs = np.random.RandomState(seed)
    t = mge.tensor(x)
    gm = GradManager().attach([t])
    with gm:
        y = fn(t)
        g = rs.randn(*y.shape).astype(np.float32)
        gm.backward(y, mge.tensor(g))
    v = rs.randn(*x.shape).astype(np.float32)
    diff = ((fn(mge.tensor(x + eps * v)).numpy() - fn(mge.tensor(x - eps * v)).numpy())
            * g).sum() / (2 * eps)
    np.testing.assert_allclose((t.grad.numpy() * v).sum(), diff, rtol=rtol, atol=1e-3)


# ----- remap, warp_perspective, warp_affine -----

def test_remap_upstream_example():
    inp = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    map_xy = np.array([[[1., 0.], [0., 1.]], [[0., 1.], [0., 1.]]], np.float32).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(F.vision.remap(inp, map_xy).numpy(), [[[[1., 4.], [4., 4.]]]])


@pytest.mark.parametrize("border,padding", [("replicate", "border"), ("constant", "zeros")])
def test_remap_linear_against_grid_sample(border, padding):
    img = rand(2, 3, 5, 6)
    rs = np.random.RandomState(1)
    pts = np.stack([rs.uniform(-2, 7, (2, 4, 3)), rs.uniform(-2, 6, (2, 4, 3))], -1)
    check(lambda i, m: F.vision.remap(i, m, border_mode=border),
          lambda i, m: _grid_sample(i, m[..., 0], m[..., 1], padding=padding),
          img, pts.astype(np.float32))


def test_remap_of_a_float16_image_rounds_once():
    # torch's float16 grid_sample sums the four corners in float32 and rounds once; summing in
    # float16 strayed up to 4.6 ulps (the fuzzer's float16 mode, seed 34308 of remap_modes)
    rs = np.random.RandomState(4)
    img = rs.randn(2, 3, 6, 7).astype(np.float16)
    pts = np.stack([rs.uniform(0, 6, (2, 40, 40)), rs.uniform(0, 5, (2, 40, 40))], -1)
    pts = pts.astype(np.float16)
    out = F.vision.remap(img, pts)
    assert out.dtype == np.float16
    exact = _grid_sample(torch.tensor(img, dtype=torch.float64),
                         torch.tensor(pts[..., 0], dtype=torch.float64),
                         torch.tensor(pts[..., 1], dtype=torch.float64)).numpy()
    ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    assert (np.abs(out.numpy().astype(np.float64) - exact) <= ulp).all()


def test_remap_nearest_against_grid_sample():
    img = rand(1, 2, 5, 6)
    pts = np.random.RandomState(2).uniform(0, 4.4, (1, 3, 4, 2)).astype(np.float32)
    check(lambda i, m: F.vision.remap(i, m, interp_mode="nearest"),
          lambda i, m: _grid_sample(i, m[..., 0], m[..., 1], mode="nearest"), img, pts, diff=[0])


@pytest.mark.parametrize("border,expect", [
    ("reflect", [0, 1, 3, 2, 3]), ("reflect_101", [1, 2, 2, 1, 1]), ("wrap", [3, 2, 0, 1, 3]),
    ("replicate", [0, 0, 3, 3, 0]), ("constant", [7, 7, 7, 7, 7]),
])
def test_remap_border_modes_by_hand(border, expect):
    # x = -1, -2, 4, 5, -5 on the row [0, 1, 2, 3] (OpenCV's border definitions)
    img = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)
    xs = np.array([-1, -2, 4, 5, -5], np.float32)
    pts = np.stack([xs, np.zeros(5, np.float32)], -1).reshape(1, 1, 5, 2)
    out = F.vision.remap(img, pts, border_mode=border, scalar=7.0, interp_mode="nearest")
    np.testing.assert_array_equal(out.numpy().ravel(), expect)


def test_warp_perspective_upstream_example_and_mat_idx():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    shift = np.array([[1., 0., 1.], [0., 1., 1.], [0., 0., 1.]], np.float32)
    out = F.vision.warp_perspective(x, shift.reshape(1, 3, 3), (2, 2))
    np.testing.assert_array_equal(out.numpy(), [[[[5., 6.], [9., 10.]]]])
    both = F.vision.warp_perspective(x, np.stack([shift, np.eye(3, dtype=np.float32)]), (2, 2),
                                     mat_idx=[0, 0])
    np.testing.assert_array_equal(both.numpy()[:, 0], [[[5, 6], [9, 10]], [[0, 1], [4, 5]]])
    with pytest.raises(ValueError, match="mat_idx"):
        F.vision.warp_perspective(x, np.stack([shift, shift]), (2, 2))


def _torch_perspective(img, mat, oh, ow):
    hh, ww = torch.meshgrid(torch.arange(oh, dtype=img.dtype), torch.arange(ow, dtype=img.dtype),
                            indexing="ij")
    p = torch.stack([ww, hh, torch.ones_like(ww)], -1)  # (OH, OW, 3)
    q = torch.einsum("bij,hwj->bhwi", mat, p)
    return _grid_sample(img, q[..., 0] / q[..., 2], q[..., 1] / q[..., 2])


def test_warp_perspective_against_torch_with_mat_gradients():
    rs = np.random.RandomState(4)
    mat = (np.eye(3) + rs.uniform(-0.05, 0.05, (2, 3, 3))).astype(np.float32)
    mat[:, :2, 2] += rs.uniform(-1, 1, (2, 2))
    check(lambda i, m: F.vision.warp_perspective(i, m, (4, 5)),
          lambda i, m: _torch_perspective(i, m, 4, 5), rand(2, 2, 6, 7), mat)


@pytest.mark.parametrize("border,padding", [("replicate", "border"), ("constant", "zeros")])
@needs_torch("2.13", "grid_sample's double backward; torch 2.8 raises 'derivative for "
                     "aten::grid_sampler_2d_backward is not implemented'")
def test_remap_and_warp_second_order_through_the_image(border, padding):
    # a gradient penalty through a warp: upstream 1.13 differentiates the image's gradient
    # again (measured); earlier versions of this fork raised "_Sample has no grad_graph"
    img, r = rand(1, 2, 4, 5, seed=5), rand(1, 2, 3, 3, seed=7)
    rs = np.random.RandomState(6)
    pts = np.stack([rs.uniform(-1, 5, (1, 3, 3)), rs.uniform(-1, 4, (1, 3, 3))], -1)
    pts = pts.astype(np.float32)
    check_second_order(
        lambda a: (F.vision.remap(a * a, mge.tensor(pts), border_mode=border) ** 3 * r).sum(),
        lambda a: (_grid_sample(a * a, torch.tensor(pts[..., 0]), torch.tensor(pts[..., 1]),
                                padding=padding) ** 3 * torch.tensor(r)).sum(), img)
    mat = np.array([[[1.1, 0.1, -0.3], [-0.1, 0.9, 0.4], [0.01, 0.0, 1.0]]], np.float32)
    check_second_order(
        lambda a: (F.vision.warp_perspective(a * a, mge.tensor(mat), (3, 3)) ** 3 * r).sum(),
        lambda a: (_torch_perspective(a * a, torch.tensor(mat), 3, 3) ** 3 * torch.tensor(r)
                   ).sum(), img)


def test_warp_second_order_refuses_a_recorded_mat():
    img = mge.Parameter(rand(1, 1, 4, 4))
    mat = mge.Parameter(np.eye(3, dtype=np.float32)[None])
    outer, inner = GradManager().attach([img, mat]), GradManager().attach([img, mat])
    with outer:
        with inner:
            y = (F.vision.warp_perspective(img * img, mat, (3, 3)) ** 2).sum()
            with pytest.raises(RuntimeError, match="sampling points .* cannot be differentiated"):
                inner.backward(y)


def test_warp_of_a_float16_mat_samples_at_float32_points():
    # rounded to float16, a point was up to 1/128 pixel off at x = 4 (a uint8 result a level)
    rs = np.random.RandomState(6)
    mat = np.eye(3) + rs.uniform(-0.05, 0.05, (1, 3, 3))
    mat[:, :2, 2] += rs.uniform(1, 2, (1, 2))
    mat = mat.astype(np.float16)
    img = rand(1, 2, 6, 7) * 100
    got = F.vision.warp_perspective(img, mat, (4, 5))
    want = _torch_perspective(torch.tensor(img, dtype=torch.float64),
                              torch.tensor(mat, dtype=torch.float64), 4, 5)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-3)


def test_warp_affine_is_warp_perspective():
    # exact points: NCHW (and every layout on a GPU), as upstream's CUDA kernel
    rs = np.random.RandomState(5)
    mat = np.concatenate([np.eye(2), rs.uniform(0, 1, (2, 1))], 1)[None].astype(np.float32)
    mat[:, :, :2] += rs.uniform(-0.1, 0.1, (1, 2, 2)).astype(np.float32)
    img = rand(1, 3, 6, 7)
    full = np.concatenate([mat, [[[0, 0, 1]]]], 1).astype(np.float32)
    got = F.vision.warp_affine(img, mat, (4, 5), format="NCHW")
    want = F.vision.warp_perspective(img, full, (4, 5))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    check(lambda i, m: F.vision.warp_affine(i, m, (4, 5), format="NCHW"),
          lambda i, m: _torch_perspective(i, torch.cat([m, torch.tensor([[[0., 0., 1.]]])], 1),
                                          4, 5),
          img, mat)


def _opencv_affine_points(mat, oh, ow, nearest):
    """OpenCV's warpAffine source points (imgwarp.cpp, which megdnn's CPU kernel follows),
    one pixel at a time: each term in 1/1024 pixel (C's rounding, half to even), then the sum
    shifted down to the 1/32-pixel interpolation grid (nearest: to whole pixels)."""
    bits = 10 if nearest else 5
    out = np.zeros((len(mat), oh, ow, 2))
    for b, m in enumerate(mat.astype(np.float64)):
        for h in range(oh):
            for w in range(ow):
                for r in range(2):
                    fixed = (int(np.rint(m[r, 0] * w * 1024)) + int(np.rint((m[r, 1] * h + m[r, 2])
                             * 1024)) + (512 if nearest else 16)) >> bits
                    out[b, h, w, r] = fixed / (1 << (10 - bits))
    return out.astype(np.float32)


@pytest.mark.parametrize("interp", ["linear", "nearest"])
@pytest.mark.parametrize("border", ["wrap", "replicate", "constant"])
@pytest.mark.usefixtures("host_default_device")  # the CPU kernel's rounding
def test_warp_affine_nhwc_on_cpu_samples_on_upstreams_grid(interp, border):
    # upstream's CPU kernel for NHWC float32/uint8 with 1-3 channels is OpenCV's: a point
    # 0.667 px into a pixel samples at 21/32. Oracle: remap at OpenCV's points, worked out above
    rs = np.random.RandomState(6)
    mat = np.concatenate([rs.uniform(-0.2, 0.2, (2, 2, 2)) + 0.7 * np.eye(2),
                          rs.uniform(-1, 1.5, (2, 2, 1))], 2).astype(np.float32)
    mat[1, :, 2] += [-24, 31]  # far outside: the border mode (wrap: back inside) decides
    img = rand(2, 5, 6, 3, seed=6)  # NHWC
    got = F.vision.warp_affine(img, mat, (4, 7), border_mode=border, border_val=0.5,
                               interp_mode=interp)
    pts = _opencv_affine_points(mat, 4, 7, interp == "nearest")
    want = F.vision.remap(img.transpose(0, 3, 1, 2), pts, border_mode=border, scalar=0.5,
                          interp_mode=interp).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    if interp == "linear":  # (nearest rounds both to a whole pixel: rarely different)
        exact = F.vision.warp_affine(img.transpose(0, 3, 1, 2), mat, (4, 7), border_mode=border,
                                     border_val=0.5, format="NCHW", interp_mode=interp)
        assert not np.allclose(got.numpy()[0], exact.numpy()[0].transpose(1, 2, 0), atol=1e-3)
    # a 4-channel or float16 image has no OpenCV kernel upstream: exact points
    img4 = rand(2, 5, 6, 4, seed=6)
    np.testing.assert_allclose(
        F.vision.warp_affine(img4, mat, (4, 7), border_mode=border, interp_mode=interp).numpy(),
        F.vision.warp_affine(img4.transpose(0, 3, 1, 2), mat, (4, 7), border_mode=border,
                             format="NCHW", interp_mode=interp).numpy().transpose(0, 2, 3, 1),
        rtol=1e-5, atol=1e-5)


def _opencv_perspective_points(mat, oh, ow, nearest):
    """OpenCV's warpPerspective source points (which megdnn's CPU kernel follows), one pixel
    at a time: (M0 w + M1 h + M2) * 32 / (M6 w + M7 h + M8) rounded half to even, on the
    1/32-pixel grid (nearest: u / d rounded to a whole pixel)."""
    scale = 1 if nearest else 32
    out = np.zeros((len(mat), oh, ow, 2))
    for b, m in enumerate(mat.astype(np.float64)):
        for h in range(oh):
            for w in range(ow):
                d = m[2, 0] * w + m[2, 1] * h + m[2, 2]
                for r in range(2):
                    u = m[r, 0] * w + m[r, 1] * h + m[r, 2]
                    out[b, h, w, r] = np.rint(u * (scale / d)) / scale if d else 0.0
    return out.astype(np.float32)


@pytest.mark.parametrize("interp", ["linear", "nearest"])
@pytest.mark.usefixtures("host_default_device")  # the CPU kernel's rounding
def test_warp_perspective_nhwc_on_cpu_samples_on_upstreams_grid(interp):
    rs = np.random.RandomState(9)
    mat = (np.eye(3) * 0.7 + rs.uniform(-0.05, 0.05, (2, 3, 3))).astype(np.float32)
    mat[:, 2, 2] = 1
    mat[:, :2, 2] += rs.uniform(0, 1.5, (2, 2)).astype(np.float32)
    for channels in (1, 3):
        img = rand(2, 5, 6, channels, seed=9)  # NHWC
        got = F.vision.warp_perspective(img, mat, (4, 7), format="NHWC", interp_mode=interp)
        pts = _opencv_perspective_points(mat, 4, 7, interp == "nearest")
        want = F.vision.remap(img.transpose(0, 3, 1, 2), pts, interp_mode=interp).numpy()
        np.testing.assert_allclose(got.numpy(), want.transpose(0, 2, 3, 1), rtol=1e-6,
                                   atol=1e-6)
        # with mat_idx too (upstream 1.13 measured: its NHWC mat_idx path is OpenCV's as well)
        indexed = F.vision.warp_perspective(img, mat[::-1], (4, 7), mat_idx=[1, 0],
                                            format="NHWC", interp_mode=interp)
        np.testing.assert_allclose(indexed.numpy(), want[::-1].transpose(0, 2, 3, 1),
                                   rtol=1e-6, atol=1e-6)
    if interp == "linear":  # exact points differ
        exact = F.vision.warp_perspective(img.transpose(0, 3, 1, 2), mat, (4, 7)).numpy()
        assert not np.allclose(got.numpy(), exact.transpose(0, 2, 3, 1), atol=1e-3)


@pytest.mark.usefixtures("host_default_device")  # the CPU kernel's rounding
def test_warp_affine_grid_points_pass_the_exact_points_gradient():
    # the rounding is piecewise constant in mat; its gradient is taken as the exact points':
    # d x / d mat[r] = (w, h, 1), chained with the sampler's gradient at the rounded points
    rs = np.random.RandomState(7)
    mat = np.concatenate([np.eye(2) + rs.uniform(-0.2, 0.2, (2, 2)),
                          rs.uniform(0, 2, (2, 1))], 1)[None].astype(np.float32)
    img = rand(1, 6, 7, 1, seed=7)
    g = rs.randn(1, 4, 5, 1).astype(np.float32)
    m = mge.tensor(mat)
    with GradManager().attach([m]) as gm:
        gm.backward(F.vision.warp_affine(img, m, (4, 5)), mge.tensor(g))
    pts = mge.tensor(_opencv_affine_points(mat, 4, 5, False))
    with GradManager().attach([pts]) as gm:
        gm.backward(F.vision.remap(img.transpose(0, 3, 1, 2), pts),
                    mge.tensor(g.transpose(0, 3, 1, 2)))
    gp = pts.grad.numpy()[0]  # (OH, OW, 2)
    hh, ww = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    want = np.stack([[(gp[..., r] * t).sum() for t in (ww, hh, 1)] for r in (0, 1)])
    np.testing.assert_allclose(m.grad.numpy()[0], want, rtol=1e-4, atol=1e-4)


@requires_cuda
@pytest.mark.parametrize("rows", [2, 3])
def test_warps_of_nhwc_images_on_a_gpu_sample_at_the_exact_points(rows):
    # upstream's CUDA kernels have no 1/32-pixel grid: on a GPU an NHWC float32 image of
    # 3 channels (the CPU's OpenCV case) samples where the NCHW path does
    rs = np.random.RandomState(6)
    mat = np.concatenate([0.7 * np.eye(2) + rs.uniform(-0.2, 0.2, (2, 2, 2)),
                          rs.uniform(0, 1.5, (2, 2, 1))], 2)
    if rows == 3:
        mat = np.concatenate([mat, np.tile([[[0.0, 0.0, 1.0]]], (2, 1, 1))], 1)
    img = mge.tensor(rand(2, 5, 6, 3, seed=6), device="gpu0")  # NHWC
    m = mge.tensor(mat.astype(np.float32), device="gpu0")
    warp = F.vision.warp_affine if rows == 2 else F.vision.warp_perspective
    got = warp(img, m, (4, 7), format="NHWC")
    exact = warp(img.transpose(0, 3, 1, 2), m, (4, 7), format="NCHW")
    np.testing.assert_allclose(got.numpy(), exact.numpy().transpose(0, 2, 3, 1), rtol=1e-5,
                               atol=1e-5)
    pts = _opencv_affine_points(mat[:, :2], 4, 7, False) if rows == 2 else \
        _opencv_perspective_points(mat, 4, 7, False)
    on_grid = F.vision.remap(rand(2, 5, 6, 3, seed=6).transpose(0, 3, 1, 2), pts).numpy()
    assert not np.allclose(got.numpy(), on_grid.transpose(0, 2, 3, 1), atol=1e-3)


def test_conv_format_switch_sets_the_image_layout_as_upstream():
    # megengine.config._conv_format, when not "default", wins over the functions' ``format``
    # (upstream's _get_actual_op_param); NHWC is the NCHW result with channels moved last
    from megengine import config

    rs = np.random.RandomState(8)
    img = rand(1, 2, 5, 6, seed=8)  # NCHW
    nhwc = img.transpose(0, 2, 3, 1).copy()
    mat = (np.eye(3) + rs.uniform(-0.05, 0.05, (1, 3, 3))).astype(np.float32)
    pts = rs.uniform(0, 4, (1, 3, 4, 2)).astype(np.float32)
    want_w = F.vision.warp_perspective(img, mat, (3, 4)).numpy().transpose(0, 2, 3, 1)
    want_r = F.vision.remap(img, pts).numpy().transpose(0, 2, 3, 1)
    with config._override(conv_format="NHWC"):
        np.testing.assert_array_equal(F.vision.warp_perspective(nhwc, mat, (3, 4)).numpy(),
                                      want_w)
        np.testing.assert_array_equal(F.vision.remap(nhwc, pts).numpy(), want_r)
        with pytest.raises(ValueError, match="conv2d: format 'NHWC'"):  # NCHW kernels only
            F.conv2d(img, rand(3, 2, 1, 1))
        with pytest.raises(ValueError, match="max_pool2d: format 'NHWC'"):
            F.max_pool2d(img, 2)
    assert config._conv_format == "default"
    np.testing.assert_array_equal(  # back to the functions' own format
        F.vision.warp_perspective(img, mat, (3, 4)).numpy().transpose(0, 2, 3, 1), want_w)
    config._conv_format = "NHWC"
    try:
        out = F.vision.warp_perspective(nhwc, mat, (3, 4), format="NCHW")  # the switch wins
    finally:
        config._conv_format = "default"
    np.testing.assert_array_equal(out.numpy(), want_w)


@pytest.mark.usefixtures("host_default_device")  # the CPU kernels' rounding
def test_float32_warps_and_remap_round_as_upstreams_cpu_kernels():
    # upstream 1.13 measured, to the bit: megdnn's kernels compute the points in float32
    # ((M0 w + M1 h) + M2, one division) and blend pixel * x factor * y factor (remap in its
    # own order); float64 points were 1-2 float32 ulps off here (0.047 on larger images)
    img = np.array([[[[201.7, 13.3, 97.1, 250.9], [5.5, 180.2, 33.3, 77.7],
                      [140.4, 66.6, 222.2, 9.9]]]], np.float32)
    mat = np.array([[[0.91, -0.13, 0.37], [0.11, 0.87, 0.29], [0.013, -0.021, 1.03]]],
                   np.float32)
    want = [115.50568389892578, 76.24524688720703, 73.7451400756836, 58.39652633666992,
            143.4287872314453, 96.71176147460938]
    got = F.vision.warp_perspective(img, mat, (2, 3)).numpy()
    np.testing.assert_array_equal(got.ravel(), np.float32(want))
    want = [114.05463409423828, 77.68559265136719, 83.18313598632812, 59.46959686279297,
            139.74423217773438, 101.89324951171875]
    got = F.vision.warp_affine(img, mat[:, :2], (2, 3), format="NCHW").numpy()
    np.testing.assert_array_equal(got.ravel(), np.float32(want))
    pts = np.array([[[[0.37, 0.29], [1.291, 0.4], [2.7, 1.33]]]], np.float32)
    want = [114.05464172363281, 77.59232330322266, 67.41930389404297]
    np.testing.assert_array_equal(F.vision.remap(img, pts).numpy().ravel(), np.float32(want))


def test_nearest_remap_rounds_halves_to_even():
    # upstream 1.13 measured: x = 0.5, 1.5, 2.5, -0.5 read columns 0, 2, 2, 0 (earlier versions
    # of this fork took floor(x + 0.5): 1, 2, 3, 0)
    img = np.array([[[[10, 20, 30, 40]]]], np.float32)
    pts = np.array([[[[0.5, 0], [1.5, 0], [2.5, 0], [-0.5, 0]]]], np.float32)
    out = F.vision.remap(img, pts, border_mode="constant", scalar=7.0, interp_mode="nearest")
    assert out.numpy().ravel().tolist() == [10, 30, 30, 10]


@pytest.mark.usefixtures("host_default_device")  # the CPU kernels' rounding
def test_uint8_warps_round_and_fill_the_border_as_upstreams_cpu_kernels():
    # upstream 1.13 measured (the constants below). Every point sits half a pixel off, so the
    # results are x.5 ties and border values: OpenCV's kernel (NHWC, 1-3 channels, mat_idx or
    # not) rounds halves up in fixed point and truncates border_val to uint8 first (300 -> 44,
    # -3.7 -> 253); the others round halves away from zero with the border value as given,
    # and remap rounds its scalar to uint8 first (0.5 -> 1)
    img = np.array([[10, 11, 40], [20, 27, 50]], np.uint8)
    mat = np.array([[[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]]], np.float32)
    nhwc, nchw = img[None, :, :, None], img[None, None]
    for idx in (None, [0]):
        out = F.vision.warp_perspective(nhwc, mat, (2, 3), mat_idx=idx, border_mode="constant",
                                        border_val=300.0, format="NHWC")
        assert out.numpy()[0, ..., 0].tolist() == [[17, 32, 45], [34, 41, 46]]
    out = F.vision.warp_affine(nhwc, mat[:, :2], (2, 3), border_mode="constant", border_val=-3.7)
    assert out.numpy()[0, ..., 0].tolist() == [[17, 32, 149], [138, 146, 202]]
    out = F.vision.warp_perspective(nchw, mat, (2, 3), border_mode="constant", border_val=300.0)
    assert out.numpy()[0, 0].tolist() == [[17, 32, 173], [162, 169, 238]]
    pts = np.array([[[[0.5, 0], [2.5, 0], [1.5, 1]]]], np.float32)
    out = F.vision.remap(nchw, pts, border_mode="constant", scalar=0.5)
    assert out.numpy()[0, 0].tolist() == [[11, 21, 39]]


def test_warp_of_uint8_rounds_and_bad_modes_say_so():
    img = np.array([[[[0, 100], [200, 255]]]], np.uint8)
    out = F.vision.remap(img, np.array([[[[0.5, 0.5]]]], np.float32))
    assert out.dtype == np.uint8 and out.item() == 139  # 138.75 rounded
    with pytest.raises(ValueError, match="border_mode"):
        F.vision.remap(img, np.zeros((1, 1, 1, 2), np.float32), border_mode="mirror")


# ----- roi_align, roi_pooling -----

def _upstream_doc_inputs():
    np.random.seed(42)
    return mge.tensor(np.random.randn(1, 1, 128, 128)), mge.tensor(np.random.random((4, 5)))


def test_roi_ops_match_upstream_documented_outputs():
    inp, rois = _upstream_doc_inputs()
    np.testing.assert_allclose(F.vision.roi_align(inp, rois, (2, 2)).numpy()[0].round(4),
                               [[[0.175, 0.175], [0.1359, 0.1359]]])
    np.testing.assert_allclose(F.vision.roi_pooling(inp, rois, (2, 2)).numpy()[0].round(4),
                               [[[-0.1383, -0.1383], [-0.5035, -0.5035]]])


def _roi_align_loop(img, rois, ph, pw, scale, offset, sh, sw, mode):
    """megdnn's documented algorithm, one output element at a time."""
    _, c, h, w = img.shape

    def at(b, ch, y, x):
        return img[b, ch, y, x] if 0 <= y < h and 0 <= x < w else 0.0

    out = np.zeros((len(rois), c, ph, pw))
    for k, r in enumerate(rois):
        b = int(r[0])
        x0, y0 = r[1] * scale - offset, r[2] * scale - offset
        bw = max(r[3] * scale - offset - x0, 0) / pw
        bh = max(r[4] * scale - offset - y0, 0) / ph
        for ch in range(c):
            for i in range(ph):
                for j in range(pw):
                    vals = []
                    for si in range(sh):
                        for sj in range(sw):
                            y = y0 + bh * (i + (si + 0.5) / sh)
                            x = x0 + bw * (j + (sj + 0.5) / sw)
                            yl, xl = int(np.floor(y)), int(np.floor(x))
                            fy, fx = y - yl, x - xl
                            vals.append(at(b, ch, yl, xl) * (1 - fy) * (1 - fx)
                                        + at(b, ch, yl, xl + 1) * (1 - fy) * fx
                                        + at(b, ch, yl + 1, xl) * fy * (1 - fx)
                                        + at(b, ch, yl + 1, xl + 1) * fy * fx)
                    out[k, ch, i, j] = np.mean(vals) if mode == "average" else max(vals)
    return out


ROIS = np.array([[0, 1.2, 0.5, 6.3, 5.1], [1, -2.0, 3.0, 4.5, 9.5], [1, 2.5, 2.5, 2.5, 3.0]],
                np.float32)


@pytest.mark.parametrize("mode", ["average", "max"])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_against_loop_reference_and_gradient(mode, aligned):
    img = rand(2, 2, 8, 7)
    out = F.vision.roi_align(img, ROIS, (3, 2), mode=mode, spatial_scale=0.9,
                             sample_points=(2, 3), aligned=aligned)
    want = _roi_align_loop(img, ROIS, 3, 2, 0.9, 0.5 if aligned else 0.0, 2, 3, mode)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    _directional_check(lambda x: F.vision.roi_align(x, ROIS, (3, 2), mode=mode,
                                                    spatial_scale=0.9, aligned=aligned), img)


def _roi_align_torch(img, rois, ph, pw, scale, offset, sh, sw, mode):
    """megdnn's algorithm in torch (its dtype, differentiable): each roi's samples gathered
    from their four neighbours (zero outside the image), then averaged or maxed per bin."""
    _, c, h, w = img.shape
    outs = []
    for r in rois.tolist():
        b = int(r[0])
        x0, y0 = r[1] * scale - offset, r[2] * scale - offset
        bw = max(r[3] * scale - offset - x0, 0) / pw
        bh = max(r[4] * scale - offset - y0, 0) / ph
        steps = [(i + (s + 0.5) / sh, j + (t + 0.5) / sw)
                 for i in range(ph) for s in range(sh) for j in range(pw) for t in range(sw)]
        y = torch.tensor([y0 + bh * u for u, _ in steps], dtype=torch.float64)
        x = torch.tensor([x0 + bw * v for _, v in steps], dtype=torch.float64)
        yl, xl = torch.floor(y), torch.floor(x)
        fy, fx = (y - yl).to(img.dtype), (x - xl).to(img.dtype)
        val = 0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                yi, xi = (yl + dy).long(), (xl + dx).long()
                inside = ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)).to(img.dtype)
                val = val + img[b][:, yi.clamp(0, h - 1), xi.clamp(0, w - 1)] * wy * wx * inside
        val = val.reshape(c, ph, sh, pw, sw)
        outs.append(val.mean((2, 4)) if mode == "average" else val.amax((2, 4)))
    return torch.stack(outs)


@pytest.mark.parametrize("mode", ["average", "max"])
def test_roi_align_of_float64_computes_in_float64(mode):
    # earlier versions of this fork computed float64 in float32 and returned float32
    img = np.random.RandomState(1).randn(2, 3, 8, 7)
    g = np.random.RandomState(2).randn(3, 3, 3, 2)
    x = mge.tensor(img, dtype="float64")
    gm = GradManager().attach(x)
    with gm:
        out = F.vision.roi_align(x, ROIS, (3, 2), mode=mode, spatial_scale=0.9,
                                 sample_points=(2, 3))
        gm.backward(out, mge.tensor(g, dtype="float64"))
    t = torch.tensor(img, requires_grad=True)
    want = _roi_align_torch(t, ROIS, 3, 2, 0.9, 0.5, 2, 3, mode)
    (want * torch.tensor(g)).sum().backward()
    assert out.dtype == np.float64 and x.grad.dtype == np.float64
    np.testing.assert_allclose(out.numpy(), want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["average", "max"])
def test_roi_align_second_order(mode):
    # a gradient penalty through a detector's roi_align: upstream 1.13 differentiates the
    # gradient again (measured); earlier versions of this fork raised "_ROIAlign has no
    # grad_graph"
    img, r = rand(2, 2, 8, 7, seed=8), rand(3, 2, 3, 2, seed=9)
    check_second_order(
        lambda a: (F.vision.roi_align(a * a, ROIS, (3, 2), mode=mode, spatial_scale=0.9,
                                      sample_points=(2, 3)) ** 3 * r).sum(),
        lambda a: (_roi_align_torch(a * a, ROIS, 3, 2, 0.9, 0.5, 2, 3, mode) ** 3
                   * torch.tensor(r)).sum(), img)


def test_roi_align_of_float16_stays_float16_and_rounds_once():
    # a float16 result, as upstream's kernel gives, from samples and bins in float32 rounded
    # once; earlier versions of this fork returned float32
    img = np.random.RandomState(1).randn(2, 3, 8, 7).astype(np.float16)
    x = mge.tensor(img)
    gm = GradManager().attach(x)
    with gm:
        out = F.vision.roi_align(x, ROIS, (3, 2), spatial_scale=0.9, sample_points=(2, 3))
        gm.backward(out.sum())
    want = _roi_align_torch(torch.tensor(img, dtype=torch.float64), ROIS, 3, 2, 0.9, 0.5, 2, 3,
                            "average").numpy()
    assert out.dtype == np.float16 and x.grad.dtype == np.float16
    np.testing.assert_allclose(out.numpy(), want, rtol=2.0 ** -11, atol=2.0 ** -25)
    np.testing.assert_array_equal(out.numpy(), want.astype(np.float16))


def test_roi_align_images_without_rois_and_no_rois_at_all():
    # the detection poolers hand each FPN level its own share of rois: an image may have none
    img = rand(3, 2, 10, 10)
    rois = np.array([[2, 1.2, 0.5, 6.3, 5.1], [2, 3.0, 3.0, 7.0, 6.0]], np.float32)  # inside
    x = mge.tensor(img)
    gm = GradManager().attach(x)
    with gm:
        out = F.vision.roi_align(x, rois, (2, 2), sample_points=2)
        gm.backward(out.sum())
    want = _roi_align_loop(img, rois, 2, 2, 1.0, 0.5, 2, 2, "average")
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    g = x.grad.numpy()
    assert not g[:2].any() and g[2].any()
    # images 0 and 1 have no rois; every sample is inside, so its four weights sum to 1
    np.testing.assert_allclose(g.sum(), out.size, rtol=1e-5)
    empty = F.vision.roi_align(x, np.zeros((0, 5), np.float32), (2, 3))
    assert empty.shape == (0, 2, 2, 3)


def _roi_pool_loop(img, rois, ph, pw, scale, mode):
    """megdnn's roi pooling one bin at a time, on numpy arrays or (differentiable) torch
    tensors."""
    _, c, h, w = img.shape
    out = (torch.zeros((len(rois), c, ph, pw), dtype=img.dtype) if torch.is_tensor(img)
           else np.zeros((len(rois), c, ph, pw), np.float32))
    for k, r in enumerate(rois):
        b = int(r[0])
        x1, y1, x2, y2 = (int(np.sign(v) * np.floor(abs(v) + 0.5)) for v in r[1:] * scale)
        bh, bw = max(y2 - y1 + 1, 1) / ph, max(x2 - x1 + 1, 1) / pw
        for i in range(ph):
            for j in range(pw):
                hs = min(max(int(np.floor(i * bh)) + y1, 0), h)
                he = min(max(int(np.ceil((i + 1) * bh)) + y1, 0), h)
                ws = min(max(int(np.floor(j * bw)) + x1, 0), w)
                we = min(max(int(np.ceil((j + 1) * bw)) + x1, 0), w)
                win = img[b, :, hs:he, ws:we].reshape(c, -1)
                if win.shape[1]:
                    out[k, :, i, j] = win.mean(1) if mode != "max" else (
                        win.amax(1) if torch.is_tensor(win) else win.max(1))
    return out


@pytest.mark.parametrize("mode", ["max", "average"])
def test_roi_pooling_against_loop_reference_and_gradient(mode):
    img = rand(2, 2, 8, 7)
    rois = np.concatenate([ROIS, [[0, 20, 20, 30, 30]]]).astype(np.float32)  # empty: zeros
    out = F.vision.roi_pooling(img, rois, (3, 2), mode=mode, scale=0.9)
    np.testing.assert_allclose(out.numpy(), _roi_pool_loop(img, rois, 3, 2, 0.9, mode),
                               rtol=1e-6, atol=1e-6)
    # a small step keeps each window's maximum where it is
    _directional_check(lambda x: F.vision.roi_pooling(x, rois, (3, 2), mode=mode, scale=0.9), img,
                       eps=1e-3)


@pytest.mark.parametrize("mode", ["max", "average"])
def test_roi_pooling_second_order(mode):
    # upstream 1.13 differentiates roi_pooling's gradient again (measured); earlier versions
    # of this fork raised "_ROIPooling has no grad_graph"
    img = rand(2, 2, 8, 7)
    rois = np.concatenate([ROIS, [[0, 20, 20, 30, 30]]]).astype(np.float32)  # empty: zeros
    r = rand(4, 2, 3, 2, seed=9)
    check_second_order(
        lambda a: (F.vision.roi_pooling(a * a, rois, (3, 2), mode=mode, scale=0.9) ** 3
                   * r).sum(),
        lambda a: (_roi_pool_loop(a * a, rois, 3, 2, 0.9, mode) ** 3 * torch.tensor(r)).sum(),
        img)


# ----- nms -----

def test_nms_upstream_cases():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 100, 100], [50, 50, 100, 100],
                      [100, 100, 150, 150]], np.float32)
    keep = F.vision.nms(boxes, np.array([0.5, 0.8, 0.9, 0.6], np.float32), iou_thresh=0.5)
    assert keep.dtype == np.int32 and keep.tolist() == [2, 1, 3]
    assert F.vision.nms(boxes, np.array([0.5, 0.8, 0.9, 0.6], np.float32), 0.5,
                        max_output=2).tolist() == [2, 1]
    x = np.zeros((100, 4))
    np.random.seed(42)
    x[:, :2] = np.random.rand(100, 2) * 20
    x[:, 2:] = np.random.rand(100, 2) * 20 + 100
    assert F.vision.nms(x, np.random.rand(100), iou_thresh=0.7).tolist() == [75, 69]
    with pytest.raises(ValueError, match="scores"):
        F.vision.nms(boxes, np.ones(3, np.float32), 0.5)


def _nms_loop(boxes, scores, thresh, max_output):
    """Greedy nms one pair at a time: keep the best remaining box, drop those over thresh."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            a, b = boxes[i].astype(np.float64), boxes[j].astype(np.float64)
            iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
            ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
            if len(keep) == max_output:
                break
    return keep


@pytest.mark.parametrize("thresh,max_output", [(0.5, None), (0.3, 7), (0.9, None)])
def test_nms_many_boxes_against_pairwise_loop(thresh, max_output):
    rs = np.random.RandomState(1)
    xy = rs.uniform(0, 60, (300, 2))
    boxes = np.concatenate([xy, xy + rs.uniform(1, 30, (300, 2))], 1).astype(np.float32)
    boxes[5] = boxes[4]  # an exact duplicate, and a zero-area box
    boxes[6, 2:] = boxes[6, :2]
    scores = rs.permutation(300).astype(np.float32)
    keep = F.vision.nms(boxes, scores, thresh, max_output)
    assert keep.tolist() == _nms_loop(boxes, scores, thresh, max_output or 300)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32", "bool"])
def test_nms_of_integer_boxes_and_scores_orders_by_value(dtype):
    # earlier versions of this fork ordered uint8 scores by their negation, which wraps (3
    # before 200), and refused bool scores
    rs = np.random.RandomState(2)
    xy = rs.randint(0, 60, (40, 2))
    boxes = np.concatenate([xy, xy + rs.randint(1, 30, (40, 2))], 1).astype(dtype)
    boxes = boxes if dtype != "bool" else rs.randint(0, 2, (40, 4)).astype(bool)
    scores = rs.randint(0, 2 if dtype == "bool" else 120, 40).astype(dtype)
    scores[:2], boxes[1] = (0, 1), boxes[0]  # (a score 0 below 1 on the same box)
    keep = F.vision.nms(mge.tensor(boxes), mge.tensor(scores), 0.4)
    assert keep.tolist() == _nms_loop(boxes, scores.astype(np.int64), 0.4, 40)


# ----- correlation -----

def _correlation_loop(d1, d2, k, md, s1, s2, pad, mul):
    n, c, h, w = d1.shape
    r, gr = (k - 1) // 2, md // s2
    gw = 2 * gr + 1
    oh, ow = -(-(h + 2 * pad - 2 * (md + r)) // s1), -(-(w + 2 * pad - 2 * (md + r)) // s1)
    out = np.zeros((n, gw * gw, oh, ow))

    def at(d, b, y, x):
        return d[b, :, y, x] if 0 <= y < h and 0 <= x < w else np.zeros(c)

    for b in range(n):
        for ch in range(gw * gw):
            for y in range(oh):
                for x in range(ow):
                    x1, y1 = x * s1 + r + md - pad, y * s1 + r + md - pad
                    x2, y2 = x1 + (ch % gw - gr) * s2, y1 + (ch // gw - gr) * s2
                    total = 0.0
                    for i in range(-r, r + 1):
                        for j in range(-r, r + 1):
                            a, bb = at(d1, b, y1 + j, x1 + i), at(d2, b, y2 + j, x2 + i)
                            total += (a * bb).sum() if mul else np.abs(a - bb).sum()
                    out[b, ch, y, x] = total / (k * k * c)
    return out


@pytest.mark.parametrize("args", [(1, 1, 1, 1, 0, True), (3, 2, 1, 2, 1, True),
                                  (1, 2, 2, 1, 2, False), (3, 1, 2, 1, 0, False)])
def test_correlation_against_loop_reference(args):
    d1, d2 = rand(1, 2, 6, 7, seed=1), rand(1, 2, 6, 7, seed=2)
    out = F.vision.correlation(d1, d2, *args)
    np.testing.assert_allclose(out.numpy(), _correlation_loop(d1, d2, *args), rtol=1e-5,
                               atol=1e-6)


def test_correlation_of_float16_is_rounded_once():
    # float16 added up tap by tap was several ulps off (float16 fuzz case 52685: 1.3x torch's
    # float16 error); the exact result is the loop reference in float64 on the float16 values
    args = (5, 1, 3, 2, 0, True)
    d1, d2 = (rand(1, 3, 9, 9, seed=s).astype(np.float16) for s in (3, 4))
    out = F.vision.correlation(mge.tensor(d1), mge.tensor(d2), *args)
    exact = _correlation_loop(d1.astype(np.float64), d2.astype(np.float64), *args)
    assert out.dtype == np.float16
    assert (np.abs(out.numpy() - exact) / np.spacing(np.abs(exact).astype(np.float16))).max() \
        <= 0.51


def test_correlation_gradients_and_errors():
    d1, d2 = rand(1, 2, 6, 7, seed=1), rand(1, 2, 6, 7, seed=2)
    _directional_check(lambda a: F.vision.correlation(a, d2, 3, 2, 1, 1, 1), d1)
    _directional_check(lambda b: F.vision.correlation(d1, b, 1, 2, 2, 1, 1), d2)
    with pytest.raises(ValueError, match="odd"):
        F.vision.correlation(d1, d2, kernel_size=2)


# ----- cvt_color -----

def test_cvt_color_float_modes():
    x = np.array([[[[-0.58675045, 1.7526233, 0.10702174]]]], np.float32)
    np.testing.assert_allclose(F.vision.cvt_color(x, mode="RGB2GRAY").numpy(), [[[[0.86555195]]]],
                               rtol=1e-6)
    img = rand(2, 3, 4, 3)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    np.testing.assert_allclose(F.vision.cvt_color(img, "BGR2GRAY").numpy()[..., 0],
                               0.299 * b + 0.587 * g + 0.114 * r, rtol=1e-5, atol=1e-6)
    # megdnn's float RGB2YUV, written out per channel
    yy = r * 0.114 + g * 0.587 + b * 0.299
    yuv = np.stack([yy, (r - yy) * 0.492 + 0.5, (b - yy) * 0.877 + 0.5], -1)
    got = F.vision.cvt_color(img, "RGB2YUV")
    np.testing.assert_allclose(got.numpy(), yuv, rtol=1e-5, atol=1e-5)
    rgb = np.stack([yy + (yuv[..., 1] - 0.5) * 2.032,
                    yy + (yuv[..., 2] - 0.5) * -0.581 + (yuv[..., 1] - 0.5) * -0.395,
                    yy + (yuv[..., 2] - 0.5) * 1.140], -1)
    np.testing.assert_allclose(F.vision.cvt_color(got, "YUV2RGB").numpy(), rgb, rtol=1e-4,
                               atol=1e-5)
    assert F.vision.cvt_color(img[..., :1], "GRAY2RGB").shape == (2, 3, 4, 3)
    _directional_check(lambda t: F.vision.cvt_color(t, "RGB2YUV"), img)


def test_cvt_color_float64_keeps_its_coefficients_exact():
    # earlier versions rounded the coefficients to float32 (the fuzzer's --float64 mode)
    img = np.random.RandomState(0).rand(2, 3, 4, 3)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    gray = F.vision.cvt_color(mge.tensor(img, dtype="float64"), "BGR2GRAY")
    assert gray.dtype == np.float64
    np.testing.assert_allclose(gray.numpy()[..., 0], 0.299 * b + 0.587 * g + 0.114 * r,
                               rtol=1e-14)
    yy = r * 0.114 + g * 0.587 + b * 0.299  # megdnn's float RGB2YUV
    yuv = F.vision.cvt_color(mge.tensor(img, dtype="float64"), "RGB2YUV")
    np.testing.assert_allclose(yuv.numpy(), np.stack([yy, (r - yy) * 0.492 + 0.5,
                                                      (b - yy) * 0.877 + 0.5], -1), rtol=1e-14)


def test_cvt_color_of_float16_is_rounded_once_and_autocast_leaves_float32_alone():
    img = np.random.RandomState(1).rand(2, 8, 8, 3).astype(np.float16)
    r, g, b = (img[..., i].astype(np.float64) for i in range(3))
    yy = r * 0.114 + g * 0.587 + b * 0.299  # megdnn's float RGB2YUV
    exact = np.stack([yy, (r - yy) * 0.492 + 0.5, (b - yy) * 0.877 + 0.5], -1)
    got = F.vision.cvt_color(mge.tensor(img), "RGB2YUV")
    # (float16 coefficients and a float16 bias add were up to 1.4 ulps off; one rounding
    # is within half an ulp, and float32's own error)
    assert got.dtype == np.float16
    assert (np.abs(got.numpy() - exact) / np.spacing(np.abs(exact).astype(np.float16))).max() \
        <= 0.51
    # upstream 1.13 measured: under autocast a float32 image gives the same float32 values
    # (CvtColor is no op autocast covers; this matmul was cast to float16: 3e-4 off)
    x = mge.tensor(img.astype(np.float32))
    with amp.autocast():
        inside = F.vision.cvt_color(x, "RGB2YUV")
    assert inside.dtype == np.float32
    np.testing.assert_array_equal(inside.numpy(), F.vision.cvt_color(x, "RGB2YUV").numpy())


def test_cvt_color_uint8_modes_by_hand():
    px = np.array([[[[255, 0, 0], [10, 200, 30]]]], np.uint8)
    # (R * 4899 + G * 9617 + B * 1868 + 8192) >> 14
    assert F.vision.cvt_color(px, "RGB2GRAY").numpy().ravel().tolist() == [76, 124]
    assert F.vision.cvt_color(px, "BGR2GRAY").numpy().ravel().tolist() == [29, 128]
    # exact grays 138.503 and 120.497: upstream's 14-bit weights give 138 and 121 (OpenCV 4's
    # 15-bit ones 139 and 120)
    near_half = np.array([[[[53, 194, 77], [180, 73, 209]]]], np.uint8)
    assert F.vision.cvt_color(near_half, "RGB2GRAY").numpy().ravel().tolist() == [138, 121]
    assert F.vision.cvt_color(px, "RGB2BGR").numpy().tolist() == [[[[0, 0, 255], [30, 200, 10]]]]
    rgba = np.concatenate([px, np.full((1, 1, 2, 1), 9, np.uint8)], -1)
    assert F.vision.cvt_color(rgba, "RGBA2RGB").numpy().tolist() == px.tolist()
    assert F.vision.cvt_color(rgba, "RGBA2GRAY").numpy().ravel().tolist() == [76, 124]
    with pytest.raises(ValueError, match="not supported"):
        F.vision.cvt_color(px.astype(np.float32), "RGB2BGR")
    with pytest.raises(TypeError, match=r"must be uint8, got int32 \(convert with "
                                        r"\.astype\('uint8'\) or \.astype\('float32'\)\)"):
        F.vision.cvt_color(px.astype(np.int32), "RGB2GRAY")


def _yuv_loop(frame, to_rgb, planar, u_first):
    """megdnn's JPEG YCrCb 4:2:0 conversion, one pixel at a time."""
    rows, w = frame.shape[:2]
    h = rows * 2 // 3
    flat = frame.reshape(-1).astype(np.int64)
    out = np.zeros((h, w, 3), np.int64)
    for i in range(h):
        for j in range(w):
            if planar:
                q = (i // 2) * (w // 2) + j // 2
                first, second = flat[h * w + q], flat[h * w + h * w // 4 + q]
            else:
                pair = (h + i // 2) * w + j // 2 * 2
                first, second = flat[pair], flat[pair + 1]
            u, v = (first, second) if u_first else (second, first)
            y = flat[i * w + j]
            r = y + ((359 * (v - 128)) >> 8)
            g = y - ((88 * (u - 128) + 183 * (v - 128)) >> 8)
            b = y + ((454 * (u - 128)) >> 8)
            out[i, j] = np.clip([r, g, b] if to_rgb else [b, g, r], 0, 255)
    return out


@pytest.mark.parametrize("mode,layout", [("YUV2RGB_NV21", (True, False, False)),
                                         ("YUV2BGR_NV12", (False, False, True)),
                                         ("YUV2RGB_YV12", (True, True, False)),
                                         ("YUV2BGR_YU12", (False, True, True))])
def test_cvt_color_yuv420_against_loop_reference(mode, layout):
    frame = np.random.RandomState(7).randint(0, 256, (1, 6, 4, 1)).astype(np.uint8)
    out = F.vision.cvt_color(frame, mode)
    assert out.shape == (1, 4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out.numpy()[0], _yuv_loop(frame[0, ..., 0], *layout))
    np.testing.assert_array_equal(F.vision.cvt_color(frame, "YUV2GRAY_NV21").numpy(),
                                  frame[:, :4])


def test_traced_warp_replays_each_calls_mat_idx():
    from megengine.jit import trace

    def f(img, mat, idx):
        return F.vision.warp_perspective(img, mat, (3, 3), mat_idx=idx)

    traced = trace(f, symbolic=True)
    img = mge.tensor(rand(2, 1, 4, 4))
    mat = mge.tensor(np.stack([np.eye(3)] * 3).astype(np.float32))
    for idx in ([0, 1, 1], [1, 0, 0], [1, 1, 0]):
        idx = mge.tensor(np.array(idx, np.int32))
        np.testing.assert_array_equal(traced(img, mat, idx).numpy(), f(img, mat, idx).numpy())
        np.testing.assert_array_equal(f(img, mat, idx).numpy(), img.numpy()[idx.numpy(), :, :3, :3])


# ----- interpolate (values against torch are in test_nn.py) -----

@pytest.mark.parametrize("dtype, row, bilinear, nearest", [
    # upstream 1.13 measured (a 2x2 image of two such rows resized to (2, 3) and (2, 4)): the
    # middle of each row is its mean rounded half away from zero (-0.5 is -1, 127.5 is 128)
    ("uint8", [0, 255], [0, 128, 255], [0, 0, 255, 255]),
    ("uint8", [10, 13], [10, 12, 13], [10, 10, 13, 13]),
    ("int8", [-1, 0], [-1, -1, 0], [-1, -1, 0, 0]),
    ("int8", [-128, 127], [-128, -1, 127], [-128, -128, 127, 127])])
def test_interpolate_keeps_int8_and_uint8_images(dtype, row, bilinear, nearest):
    # earlier versions of this fork gave float32 (127.5 for the first row's middle)
    x = mge.tensor(np.array([row, row], dtype).reshape(1, 1, 2, 2))
    for out, want in [(F.nn.interpolate(x, size=(2, 3)), bilinear),
                      (F.nn.interpolate(x, size=(2, 3), align_corners=True), bilinear),
                      (F.nn.interpolate(x, size=(2, 4), mode="nearest"), nearest)]:
        assert out.dtype == np.dtype(dtype)
        assert out.numpy()[0, 0].tolist() == [want, want]
    assert F.nn.interpolate(x.astype("int32"), size=(2, 3)).dtype == np.float32


def test_interpolate_upstream_example_and_argument_rules():
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    want = [[1., 1.25, 1.75, 2.], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5],
            [3., 3.25, 3.75, 4.]]
    np.testing.assert_allclose(F.vision.interpolate(x, [4, 4], align_corners=False).numpy()[0, 0],
                               want)
    np.testing.assert_allclose(F.vision.interpolate(x, scale_factor=2.0).numpy()[0, 0], want)
    assert F.vision.interpolate(x, mge.tensor([3, 5])).shape == (1, 1, 3, 5)
    line = np.arange(1, 3, dtype=np.float32).reshape(1, 1, 2)
    np.testing.assert_allclose(F.nn.interpolate(line, 4, mode="LINEAR").numpy(),
                               [[[1.0, 1.25, 1.75, 2.0]]])
    for bad in (dict(mode="bicubic", align_corners=True),
                dict(mode="nearest", align_corners=False)):
        with pytest.raises(ValueError, match="align_corners"):
            F.vision.interpolate(x, [4, 4], **bad)
    with pytest.raises(ValueError):
        F.vision.interpolate(line, scale_factor=[2.0, 3.0], mode="linear")
    with pytest.raises(ValueError):
        F.vision.interpolate(x, scale_factor=2.0, mode="linear")
    # a size entry that is a string or a float with a fraction is refused, naming size (int()
    # parsed "1" and truncated 2.5 before); a whole float is the int it holds
    for size in (("1", 2), (2.5, 2)):
        with pytest.raises(TypeError, match=r"interpolate: size must be an int"):
            F.vision.interpolate(x, size, mode="nearest")
    assert F.vision.interpolate(x, (3.0, 2), mode="nearest").shape == (1, 1, 3, 2)


def test_vision_ops_keep_their_upstream_1_0_top_level_names():
    # upstream 1.0-1.2 spelled these F.<name>; later F.vision.<name> (F.nn.<name> deprecated)
    for name in ("nms", "remap", "roi_align", "roi_pooling", "warp_affine", "warp_perspective"):
        assert getattr(F, name) is getattr(F.vision, name) is getattr(F.nn, name)
    img = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    # hand-computed: map points (x, y) = (2, 0), (0, 1), (1.5, 1) -> 2, 4, midway of 5 and 6
    pts = np.array([[[[2.0, 0.0], [0.0, 1.0], [1.5, 1.0]]]], np.float32)
    np.testing.assert_allclose(F.remap(img, pts).numpy(), [[[[2.0, 4.0, 5.5]]]])
    # a translation by 2 columns: dst(h, w) = src(h, w + 2)
    mat = np.array([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)
    np.testing.assert_allclose(F.warp_perspective(img, mat, (2, 2)).numpy(),
                               [[[[2.0, 3.0], [6.0, 7.0]]]])


# ----- deformable_psroi_pooling -----

def _dpsroi_loop(img, rois, trans, no_trans, part, ph, pw, s, scale, trans_std):
    """megdnn's documented DeformablePSROIPooling, one output element at a time."""
    _, c, h, w = img.shape
    classes = 1 if no_trans else trans.shape[1] // 2
    out = np.zeros((len(rois), c, ph, pw))
    for k, r in enumerate(rois):
        b = int(r[0])
        x1, y1, x2, y2 = (np.sign(v) * np.floor(abs(v) + 0.5) for v in r[1:5])  # C round()
        left, top = x1 * scale - 0.5, y1 * scale - 0.5
        rw = max((x2 + 1) * scale - 0.5 - left, 0.1)
        rh = max((y2 + 1) * scale - 0.5 - top, 0.1)
        for ch in range(c):
            cls = ch // (c // classes)
            for i in range(ph):
                for j in range(pw):
                    xs, ys = j * rw / pw + left, i * rh / ph + top
                    if not no_trans:
                        pi, pj = int(np.floor(i / ph * part)), int(np.floor(j / pw * part))
                        xs += trans[k, 2 * cls, pi, pj] * trans_std * rw
                        ys += trans[k, 2 * cls + 1, pi, pj] * trans_std * rh
                    vals = []
                    for si in range(s):
                        for sj in range(s):
                            x, y = xs + sj * rw / pw / s, ys + si * rh / ph / s
                            if x < -0.5 or x > w - 0.5 or y < -0.5 or y > h - 0.5:
                                continue
                            x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
                            xl, yl, xh, yh = (int(np.floor(x)), int(np.floor(y)),
                                              int(np.ceil(x)), int(np.ceil(y)))
                            fx, fy = x - xl, y - yl
                            vals.append((1 - fx) * (1 - fy) * img[b, ch, yl, xl]
                                        + (1 - fx) * fy * img[b, ch, yh, xl]
                                        + fx * (1 - fy) * img[b, ch, yl, xh]
                                        + fx * fy * img[b, ch, yh, xh])
                    out[k, ch, i, j] = np.mean(vals) if vals else 0.0
    return out


DPS_ROIS = np.array([[0, 1.0, 1.4, 6.0, 5.0], [1, -3.0, 2.6, 9.5, 11.0], [1, 4.0, 4.0, 4.0, 4.0]],
                    np.float32)


@pytest.mark.parametrize("no_trans,classes,part", [(True, 1, 3), (False, 1, 3), (False, 2, 2)])
def test_deformable_psroi_pooling_against_loop_reference_and_gradients(no_trans, classes, part):
    img = rand(2, 4, 9, 8)
    trans = (rand(3, 2 * classes, part, part, seed=7) * 2).astype(np.float32)
    args = (no_trans, part, 3, 3, 2, 0.8, 0.3)
    out = F.vision.deformable_psroi_pooling(img, DPS_ROIS, trans, *args)
    want = _dpsroi_loop(img, DPS_ROIS, trans, no_trans, part, 3, 3, 2, 0.8, 0.3)
    assert out.shape == (3, 4, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    # linear in the image; piecewise bilinear in the offsets (kinks only on pixel lines)
    _directional_check(lambda x: F.vision.deformable_psroi_pooling(x, DPS_ROIS, trans, *args),
                       img)
    if not no_trans:
        _directional_check(lambda t: F.vision.deformable_psroi_pooling(img, DPS_ROIS, t, *args),
                           trans, eps=1e-3, rtol=1e-2)


def test_deformable_psroi_pooling_reads_one_trans_row_per_roi():
    # upstream's kernel indexes trans by roi number and only checks trans[1:]: extra rows are
    # allowed (its test passes 24 rows for one roi) and unused
    img, rois = rand(2, 4, 9, 8), DPS_ROIS[:2]
    trans = rand(5, 2, 3, 3, seed=8)
    args = (False, 3, 3, 3, 2, 0.8, 0.3)
    t = mge.tensor(trans)
    with GradManager().attach([t]) as gm:
        out = F.vision.deformable_psroi_pooling(img, rois, t, *args)
        gm.backward(out.sum())
    want = _dpsroi_loop(img, rois, trans[:2], False, 3, 3, 3, 2, 0.8, 0.3)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    assert np.abs(t.grad.numpy()[:2]).sum() > 0
    np.testing.assert_array_equal(t.grad.numpy()[2:], 0)
    with pytest.raises(ValueError, match=r"trans must be \(K=2 or more"):
        F.vision.deformable_psroi_pooling(img, rois, trans[:1], *args)


def test_deformable_psroi_pooling_reads_upstreams_trans_shape_in_memory_order():
    # upstream accepts only trans of shape (K, 2, pooled_h, pooled_w); its kernel reads
    # trans[((k * classes + cls) * 2 + xy) * part * part + i * part + j]: part 2, pooled 3
    img, rois = rand(2, 4, 9, 8), DPS_ROIS[:2]
    trans = rand(2, 2, 3, 3, seed=9)
    args = (False, 2, 3, 3, 2, 0.8, 0.3)
    flat = trans.reshape(-1)
    read = np.array([[[[flat[((k * 2 + xy) * 2 + i) * 2 + j] for j in range(2)] for i in range(2)]
                      for xy in range(2)] for k in range(2)])
    t = mge.tensor(trans)
    with GradManager().attach([t]) as gm:
        out = F.vision.deformable_psroi_pooling(img, rois, t, *args)
        gm.backward(out.sum())
    want = _dpsroi_loop(img, rois, read, False, 2, 3, 3, 2, 0.8, 0.3)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    g = t.grad.numpy().reshape(-1)
    assert np.abs(g[:16]).sum() > 0 and (g[16:] == 0).all()  # 2 rois read 16 of 36 values
    # too few values for the rois (upstream reads past the end of the buffer)
    with pytest.raises(ValueError, match=r"holds 2 values, fewer than the 8 that 1 rois read"):
        F.vision.deformable_psroi_pooling(img, rois[:1], rand(1, 2, 1, 1), False, 2, 1, 1, 2,
                                          0.8)


def test_deformable_psroi_pooling_bad_shapes_say_so():
    img, trans = rand(1, 2, 6, 6), rand(1, 2, 2, 2)
    rois = DPS_ROIS[:1]
    assert F.deformable_psroi_pooling is F.vision.deformable_psroi_pooling
    with pytest.raises(ValueError, match="trans must be"):
        F.vision.deformable_psroi_pooling(img, rois, rand(1, 2, 3, 3), False, 2, 2, 2, 3, 1.0)
    with pytest.raises(ValueError, match="float32"):
        F.vision.deformable_psroi_pooling(img.astype(np.float16), rois, trans, True, 2, 2, 2, 3,
                                          1.0)


# roi_align on the roi geometries detectors produce (crowddet-megengine's FPN roi_pool): small
# rois on a large map, rois wider than a short map, a roi much larger than its samples; rois
# crossing the border and rois sharing an image (gradients adding up) in each
_ROI_GEOMETRIES = {
    "small_rois_large_map": ((1, 3, 40, 36), [[0, 3.0, 4.0, 6.5, 7.0], [0, 30.0, -1.5, 37.0, 2.0],
                                              [0, 4.0, 5.0, 7.0, 8.5]], (2, 2), 2),
    "rois_wider_than_map": ((2, 2, 6, 5), [[1, -1.0, 0.5, 4.5, 7.0], [0, 0.2, 0.2, 3.3, 2.1]],
                            (3, 2), 2),
    "roi_larger_than_samples": ((2, 2, 30, 33), [[0, 1.0, 2.0, 28.0, 25.0],
                                                 [1, -4.0, 10.0, 40.0, 31.0],
                                                 [1, 5.0, 5.0, 6.0, 6.5]], (2, 2), 1),
}


@pytest.mark.parametrize("case", sorted(_ROI_GEOMETRIES))
@pytest.mark.parametrize("mode", ["average", "max"])
def test_roi_align_detector_geometries_against_loop_reference(case, mode):
    shape, rois, pooled, samples = _ROI_GEOMETRIES[case]
    img, rois = rand(*shape), np.array(rois, np.float32)
    out = F.vision.roi_align(img, rois, pooled, mode=mode, spatial_scale=1.0,
                             sample_points=samples, aligned=True)
    want = _roi_align_loop(img, rois, *pooled, 1.0, 0.5, samples, samples, mode)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    _directional_check(lambda x: F.vision.roi_align(x, rois, pooled, mode=mode,
                                                    sample_points=samples), img)


@pytest.mark.parametrize("mode", ["average", "max"])
def test_roi_align_of_no_rois_is_empty_with_zero_gradient(mode):
    # an FPN level that no roi is assigned to (crowddet pads each level with a dummy roi;
    # other programs do not)
    x = mge.tensor(rand(1, 3, 8, 8))
    gm = GradManager().attach([x])
    with gm:
        y = F.vision.roi_align(x, np.zeros((0, 5), np.float32), (2, 3), mode=mode)
        gm.backward((y.sum() + x.sum()) * 2)
    assert y.shape == (0, 3, 2, 3)
    np.testing.assert_array_equal(x.grad.numpy(), np.full((1, 3, 8, 8), 2, np.float32))


@pytest.mark.parametrize("call,upstream_type", [
    (lambda b, s, x, r: F.warp_affine(x, F.zeros((1, 3, 3)), (4, 4)), RuntimeError),
    (lambda b, s, x, r: F.warp_perspective(x, F.zeros((2, 3, 3)), (4, 4)), RuntimeError),
    (lambda b, s, x, r: F.vision.nms(b[:, :3], s, 0.5), AssertionError),
    (lambda b, s, x, r: F.vision.nms(b, s.reshape(2, 1), 0.5), AssertionError),
    (lambda b, s, x, r: F.vision.nms(b, s[:1], 0.5), AssertionError),
    (lambda b, s, x, r: F.vision.roi_align(x, b, (2, 2)), RuntimeError),
    (lambda b, s, x, r: F.vision.roi_align(x[0], r, (2, 2)), RuntimeError),
    (lambda b, s, x, r: F.vision.roi_pooling(x, b, (2, 2)), RuntimeError),
    (lambda b, s, x, r: F.vision.roi_align(x, r, (2, 2), mode="min"), AssertionError),
    (lambda b, s, x, r: F.vision.roi_pooling(x, r, (2, 2), mode="min"), AssertionError),
    (lambda b, s, x, r: F.vision.correlation(x[:, :, :2, :2], x[:, :, :2, :2]), RuntimeError),
    (lambda b, s, x, r: F.vision.interpolate(x, (2, 0)), RuntimeError),
])
def test_input_errors_are_valueerrors_and_upstreams_types(call, upstream_type):
    # warp matrices of another shape or count fail megdnn's shape check too; a detector's
    # post-processing that catches upstream's error type (nms asserts in Python,
    # megdnn's roi kernels fail a shape assertion: RuntimeError) catches ours too
    boxes = mge.tensor(np.array([[0, 0, 4, 4], [1, 1, 5, 5]], np.float32))
    scores = mge.tensor(np.array([0.9, 0.8], np.float32))
    x = mge.tensor(np.zeros((1, 2, 8, 8), np.float32))
    rois = mge.tensor(np.array([[0, 0, 0, 4, 4]], np.float32))
    with pytest.raises(ValueError):
        call(boxes, scores, x, rois)
    with pytest.raises(upstream_type):
        call(boxes, scores, x, rois)


@pytest.mark.parametrize("mode,align", [("bilinear", False), ("bilinear", True),
                                        ("nearest", None), ("linear", False)])
def test_interpolate_second_order(mode, align):
    # a gradient penalty through a critic that up/downsamples differentiates the resampling
    shape = (2, 3, 5) if mode == "linear" else (2, 3, 4, 5)
    x = rand(*shape, seed=3)
    size = (7,) if mode == "linear" else (7, 3)
    r = rand(*shape[:2], *size, seed=4)
    kw = {} if align is None else {"align_corners": align}
    check_second_order(
        lambda a: (F.nn.interpolate(a * a, size=size, mode=mode, **kw) ** 2 * r).sum(),
        lambda a: (torch.nn.functional.interpolate(a * a, size=size, mode=mode, **kw) ** 2
                   * torch.tensor(r)).sum(), x)


@pytest.mark.parametrize("mode", ["linear", "bilinear", "trilinear"])
def test_interpolate_gradients_recorded_under_autocast_compute_in_float32(mode):
    # upstream 1.13 measured: under autocast interpolate's gradient equals float32's bit for
    # bit (its resize backward is no op autocast casts). The recorded gradient did its products
    # with `@`, which autocast computes in float16: first and second order ~1e-3 off torch's
    shape = {"linear": (2, 3, 5), "bilinear": (2, 3, 4, 5), "trilinear": (1, 2, 3, 4, 5)}[mode]
    size = {"linear": (7,), "bilinear": (7, 3), "trilinear": (5, 2, 7)}[mode]
    x = rand(*shape, seed=5)
    r = rand(*shape[:2], *size, seed=6)
    with amp.autocast():
        check_second_order(
            lambda a: (F.nn.interpolate(a * a, size=size, mode=mode) ** 2 * r).sum(),
            lambda a: (torch.nn.functional.interpolate(a * a, size=size, mode=mode) ** 2
                       * torch.tensor(r)).sum(), x)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "trilinear"])
def test_interpolate_of_float16_resamples_in_float32(mode):
    from oracle import check_float16_against_torch

    # the values of --float16 fuzz case 51776: its rows average to -1.121 and 1.147, each
    # rounded to float16 between the passes, and leave 0.013: 40 ulps off (0.8%)
    x = np.array([[[[-0.3933, -1.849], [2.822, -0.5283]], [[-0.1681, 2.377], [-2.66, 0.2908]]]],
                 np.float32)
    x, size = (x[None], (1, 1, 1)) if mode == "trilinear" else (x, (1, 1))
    check_float16_against_torch(
        lambda a: F.vision.interpolate(a, size=size, mode=mode),
        lambda a: torch.nn.functional.interpolate(a, size=size, mode=mode), x)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_large_float16_interpolate_converts_on_aten_with_the_same_values(monkeypatch, mode):
    # the float16 <-> float32 conversions around the float32 resampling take ATen's vectorised
    # loop (`core.ops.cast`); numpy's conversions (the "cast" family avoided) are the oracle,
    # bit for bit, forward and backward
    from megengine.functional import _aten

    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 8, 32, 32)).astype(np.float16)
    g = rng.standard_normal((2, 8, 64, 64)).astype(np.float16)
    taken, real = [], _aten.half_cast
    monkeypatch.setattr(_aten, "half_cast", lambda a, d: taken.append(real(a, d)) or taken[-1])
    runs = []
    for avoid in (("cast",), ()):
        with _aten.avoided(*avoid):
            w = mge.Parameter(x, device="cpu0")
            with GradManager().attach(w) as gm:
                y = F.nn.interpolate(w, scale_factor=2, mode=mode)
                gm.backward(y, mge.tensor(g, device="cpu0"))
            runs.append((y.numpy(), w.grad.numpy()))
        # each way: x, y, g and x's gradient
        assert sum(t is not None for t in taken) == (0 if avoid else 4)
    (y0, g0), (y1, g1) = runs
    assert y1.dtype == g1.dtype == np.float16
    np.testing.assert_array_equal(y1.view(np.uint16), y0.view(np.uint16))
    np.testing.assert_array_equal(g1.view(np.uint16), g0.view(np.uint16))


@pytest.mark.parametrize("align", [False, True])
def test_interpolate_trilinear_matches_torch_with_gradients(align):
    x = np.random.RandomState(3).rand(2, 2, 4, 3, 5).astype("float32")
    check_against_torch(
        lambda a: F.vision.interpolate(a, size=(3, 6, 4), mode="trilinear", align_corners=align),
        lambda a: torch.nn.functional.interpolate(a, size=(3, 6, 4), mode="trilinear",
                                                  align_corners=align), x)
    check_second_order(
        lambda a: (F.vision.interpolate(a, size=(5, 2, 4), mode="trilinear") ** 3).sum(),
        lambda a: (torch.nn.functional.interpolate(a, size=(5, 2, 4), mode="trilinear") ** 3
                   ).sum(), x)
    with pytest.raises(ValueError, match="expects a 5-d input"):
        F.vision.interpolate(mge.tensor(x[0]), size=(2, 2, 2), mode="trilinear")


@pytest.mark.parametrize("call", [
    lambda x: F.vision.warp_perspective(x, mge.tensor(np.eye(3, dtype="float32")[None]), (3, 3)),
    lambda x: F.vision.warp_affine(x.reshape(1, 4, 4, 1),
                                   mge.tensor(np.eye(3, dtype="float32")[None, :2]), (3, 3)),
    lambda x: F.vision.remap(x, mge.tensor(np.zeros((1, 2, 2, 2), "float32")))])
def test_warps_refuse_bool_images(call):
    # numpy's "Invalid integer data type 'b'." came out of the rounding back to the image's dtype
    # (upstream has no bool kernel either)
    x = mge.tensor(np.ones((1, 1, 4, 4), bool))
    with pytest.raises(TypeError, match=r"bool images are not supported; convert with "
                                        r"\.astype\('uint8'\)"):
        call(x)



_AFFINE = np.eye(2, 3, dtype="float32")[None]
_PERSPECTIVE = np.eye(3, dtype="float32")[None]
_MAP = np.zeros((1, 5, 5, 2), "float32")


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.warp_affine(x, mge.tensor(_AFFINE), (5, 5), border_mode="bogus"),
                 RuntimeError, "border_mode must be one of", id="warp_affine-border"),
    pytest.param(lambda x: F.warp_affine(x, mge.tensor(_AFFINE), (5, 5), interp_mode="bogus"),
                 RuntimeError, "interp_mode must be one of", id="warp_affine-interp"),
    pytest.param(lambda x: F.warp_perspective(x, mge.tensor(_PERSPECTIVE), (5, 5),
                                              border_mode="bogus"),
                 RuntimeError, "border_mode must be one of", id="warp_perspective-border"),
    pytest.param(lambda x: F.warp_perspective(x, mge.tensor(_PERSPECTIVE), (5, 5),
                                              interp_mode="bogus"),
                 RuntimeError, "interp_mode must be one of", id="warp_perspective-interp"),
    pytest.param(lambda x: F.remap(x, mge.tensor(_MAP), border_mode="bogus"),
                 RuntimeError, "border_mode must be one of", id="remap-border"),
    pytest.param(lambda x: F.remap(x, mge.tensor(_MAP), interp_mode="bogus"),
                 RuntimeError, "interp_mode must be one of", id="remap-interp"),
    pytest.param(lambda x: F.vision.interpolate(x, scale_factor=2, mode="linear"),
                 AssertionError, "mode 'linear' expects a 3-d input", id="interpolate-linear-4d"),
    pytest.param(lambda x: F.vision.cvt_color(x.transpose(0, 2, 3, 1)[..., :1], mode="bogus"),
                 AssertionError, "mode 'BOGUS' is not supported", id="cvt_color-mode"),
    pytest.param(lambda x: F.vision.nvof(x),
                 AssertionError, r"src must be \(n, t, h, w, 4\)", id="nvof-shape"),
    # its kernels' assertions (an AsyncError, a RuntimeError); earlier versions of this fork
    # raised a plain ValueError
    pytest.param(lambda x: F.warp_perspective(x, mge.tensor(_PERSPECTIVE), (0, 5)),
                 RuntimeError, "out_shape must be", id="warp_perspective-size"),
    pytest.param(lambda x: F.remap(x, mge.tensor(np.zeros((1, 4, 4, 3), np.float32))),
                 RuntimeError, r"map_xy must be \(N, OH, OW, 2\)", id="remap-map"),
    pytest.param(lambda x: F.vision.correlation(x, x[:, :, :4, :4]),
                 RuntimeError, "must be NCHW of one shape", id="correlation-shapes"),
    pytest.param(lambda x: F.vision.cvt_color(x.transpose(0, 2, 3, 1), mode="RGB2GRAY"),
                 RuntimeError, "needs 3 channel", id="cvt_color-channels"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: RuntimeError for an unknown mode string (pybind's "Unable to
    # cast"; earlier versions of this fork raised a plain ValueError), AssertionError for the
    # others. The error is also a ValueError (what the mistake is) and says what was wrong
    raises_as_upstream(call, (1, 2, 5, 5), upstream, match)


def test_nms_of_a_max_output_that_is_no_int_names_it():
    # upstream 1.13 measured: RuntimeError ("Unable to cast"); int()'s words came out before
    boxes, scores = mge.tensor(np.array([[0, 0, 1, 1]], "float32")), mge.tensor([1.0])
    for error in (TypeError, RuntimeError):
        with pytest.raises(error, match=r"nms: max_output must be an int, got \[1, 1\]"):
            F.vision.nms(boxes, scores, 0.5, max_output=[1, 1])


def test_roi_align_of_a_string_spatial_scale_raises():
    # float() parsed "0.5"; upstream 1.13 refuses it ("Unable to cast": a RuntimeError)
    x = mge.tensor(np.ones((1, 1, 4, 4), np.float32))
    rois = mge.tensor(np.array([[0, 0, 0, 2, 2]], np.float32))
    with pytest.raises(RuntimeError, match="^roi_align: spatial_scale must be a number"):
        F.vision.roi_align(x, rois, (2, 2), spatial_scale="0.5")


@pytest.mark.parametrize("mat_idx,match", [
    ("x", "^warp_perspective: mat_idx: cannot make a tensor"),
    ([0.5, 1, 1], r"^warp_perspective: mat_idx must hold image indices \(integers\)"),
])
def test_warp_perspective_of_a_mat_idx_that_is_no_indices_raises(mat_idx, match):
    # numpy's words ("invalid literal for int()") for a string; 0.5 was truncated to image 0
    x = mge.tensor(np.ones((2, 1, 4, 4), np.float32))
    mat = mge.tensor(np.tile(np.eye(3, dtype=np.float32), (3, 1, 1)))
    with pytest.raises(TypeError, match=match):
        F.vision.warp_perspective(x, mat, (4, 4), mat_idx=mat_idx)


@pytest.mark.parametrize("call,match", [
    (lambda x, m, b, s: F.vision.warp_perspective(x, m, (4, 4), border_val="2.5"),
     "^warp_perspective: border_val must be a number"),
    (lambda x, m, b, s: F.vision.remap(x, mge.tensor(np.zeros((1, 2, 2, 2), np.float32)),
                                       scalar="0.0"), "^remap: scalar must be a number"),
    (lambda x, m, b, s: F.vision.nms(b, s, "0.5"), "^nms: iou_thresh must be a number"),
])
def test_a_string_for_a_number_of_the_vision_functions_raises(call, match):
    # float() parsed these; upstream 1.13 refuses them ("Unable to cast": a RuntimeError)
    x = mge.tensor(np.ones((1, 1, 4, 4), np.float32))
    m = mge.tensor(np.eye(3, dtype=np.float32)[None])
    boxes = mge.tensor(np.array([[0, 0, 2, 2], [1, 1, 3, 3]], np.float32))
    with pytest.raises(RuntimeError, match=match):
        call(x, m, boxes, mge.tensor([0.9, 0.8]))


@pytest.mark.parametrize("max_output", [0, -1])
def test_nms_of_a_max_output_below_one_raises(max_output):
    # the loop kept every box (it stops when the count reaches max_output); upstream 1.13
    # refuses a negative one and aborts on 0
    boxes = mge.tensor(np.array([[0, 0, 2, 2], [5, 5, 7, 7]], np.float32))
    with pytest.raises(ValueError, match="^nms: max_output must be >= 1"):
        F.vision.nms(boxes, mge.tensor([0.9, 0.8]), 0.5, max_output=max_output)


@pytest.mark.parametrize("max_output", [None, 1, 3])
def test_nms_of_no_boxes_keeps_none(max_output):
    # the default count is the number of boxes, 0 here: that is no misuse (upstream 1.13
    # returns an empty int32 index for each of these)
    keep = F.vision.nms(mge.tensor(np.zeros((0, 4), np.float32)),
                        mge.tensor(np.zeros(0, np.float32)), 0.5, max_output)
    assert keep.dtype == np.int32 and keep.shape == (0,)


def test_a_gpu_resize_copies_its_matrices_there_once():
    # the resampling matrices of a shape are copied to the GPU at the first call only: a
    # bilinear resize is then its two products (each call copied both matrices again) and the
    # sum that shows the input holds no NaN or infinity
    rt = simulated_gpu_runtime()
    x = mge.tensor(np.random.RandomState(0).randn(2, 3, 5, 7).astype(np.float32), device="gpu0")
    first = F.nn.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    before = rt.kernels
    again = F.nn.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert rt.kernels - before == 3
    np.testing.assert_array_equal(again.numpy(), first.numpy())
    expected = torch.nn.functional.interpolate(torch.tensor(x.numpy()), scale_factor=2,
                                               mode="bilinear", align_corners=False)
    np.testing.assert_allclose(again.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


# ----- interpolate of images holding NaN or infinities -----

def _taps(p, n_in, n_out, mode, align):
    """[(source index, weight)] that upstream's resize reads for output ``p`` along one axis
    (weights of 0 included: 0 * inf is NaN), written as a per-pixel rule: the oracle below."""
    if mode == "nearest":
        return [(min(int(np.float32(p) / (np.float32(n_out) / np.float32(n_in))), n_in - 1),
                 1.0)]
    if mode == "bicubic":
        src = (p + 0.5) * n_in / n_out - 0.5
        i0 = int(np.floor(src))
        t, a = src - i0, -0.75
        ds = (t + 1, t, 1 - t, 2 - t)
        ws = [((a * d - 5 * a) * d + 8 * a) * d - 4 * a if k in (0, 3)
              else ((a + 2) * d - (a + 3)) * d * d + 1 for k, d in enumerate(ds)]
        return [(min(max(i0 - 1 + k, 0), n_in - 1), w) for k, w in enumerate(ws)]
    if align:
        src = p * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        i0 = int(np.floor(src))
    else:
        src = min(max((p + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        i0 = min(int(np.floor(src)), max(n_in - 2, 0))
    t = src - i0
    return [(i0, 1 - t), (min(i0 + 1, n_in - 1), t)]


def _resized_by_taps(img, size, mode, align):
    """Each output pixel as the sum of its taps' weighted pixels, in float64 (IEEE: a NaN read
    with any weight, or an infinity read with weight 0, gives NaN); an image doubled both ways
    by bilinear reads no pixel of weight 0 (upstream's kernel for that case)."""
    (h, w), (oh, ow) = img.shape, size
    doubled = mode == "bilinear" and not align and (oh, ow) == (2 * h, 2 * w)
    out = np.zeros(size)
    with np.errstate(invalid="ignore"):
        for p in range(oh):
            for q in range(ow):
                out[p, q] = sum(wi * wj * np.float64(img[i, j])
                                for i, wi in _taps(p, h, oh, mode, align)
                                for j, wj in _taps(q, w, ow, mode, align)
                                if not (doubled and wi * wj == 0))
    return out


@pytest.mark.parametrize("mode,align", [("nearest", False), ("bilinear", False),
                                        ("bilinear", True), ("bicubic", False)])
def test_interpolate_keeps_a_nan_or_infinity_to_the_outputs_that_read_it(mode, align):
    # the separable products multiplied a NaN or inf pixel by every zero weight: one such pixel
    # made the whole image NaN (upstream 1.13 and torch read each output's few taps)
    rng = np.random.default_rng(0)
    for k in range(40):
        hw = tuple(int(n) for n in rng.integers(1, 7, 2))
        size = tuple(int(n) for n in rng.integers(2, 9, 2)) if k % 4 else (2 * hw[0], 2 * hw[1])
        x = rng.standard_normal((1, 2) + hw).astype(np.float32)
        x.flat[rng.choice(x.size, min(x.size, 3), replace=False)] = \
            rng.choice([np.nan, np.inf, -np.inf], min(x.size, 3))
        kw = {"align_corners": True} if align else {}
        y = F.vision.interpolate(mge.tensor(x), size=size, mode=mode, **kw).numpy()
        for c in range(2):
            want = _resized_by_taps(x[0, c], size, mode, align)
            np.testing.assert_array_equal(np.isnan(y[0, c]), np.isnan(want))
            np.testing.assert_allclose(y[0, c], want, rtol=1e-5, atol=1e-5)  # (infinities: equal)


def test_interpolate_of_nan_and_infinity_counts_upstreams_outputs():
    # upstream 1.13 measured on this image: NaN and infinite outputs per mode (the whole image
    # was NaN here before: 80, 42, 5 and 80 NaN)
    x = np.arange(20, dtype=np.float32).reshape(1, 1, 5, 4)
    x[0, 0, 3, 1], x[0, 0, 0, 3] = -np.inf, np.nan
    for mode, kw, nan, inf in (("nearest", dict(scale_factor=2.0), 4, 4),
                               ("bilinear", dict(size=(7, 6)), 14, 6),
                               ("bicubic", dict(size=(1, 5)), 4, 0),
                               ("bilinear", dict(size=(10, 8), align_corners=True), 13, 16)):
        y = F.vision.interpolate(mge.tensor(x), mode=mode, **kw).numpy()
        assert (int(np.isnan(y).sum()), int(np.isinf(y).sum())) == (nan, inf), mode
    # an image doubled both ways: upstream's kernel reads no pixel of weight 0 there (16 of 36
    # outputs, a ring of 4 x 4; the general rule's zero-weight reads would give all 36)
    x = np.ones((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = np.nan
    y = F.vision.interpolate(mge.tensor(x), scale_factor=2.0, mode="bilinear").numpy()
    np.testing.assert_array_equal(np.isnan(y[0, 0]), np.pad(np.ones((4, 4), bool), 1))
    # and a finite image still resamples through the products (torch's values)
    z = np.random.default_rng(1).standard_normal((1, 2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        F.vision.interpolate(mge.tensor(z), size=(7, 6), mode="bilinear").numpy(),
        torch.nn.functional.interpolate(torch.tensor(z), size=(7, 6), mode="bilinear",
                                        align_corners=False).numpy(), rtol=1e-5, atol=1e-6)


def test_deformable_psroi_pooling_takes_a_sample_on_the_edge_as_upstream():
    # roi rows [-1, 0] in 3 bins of 2 samples: the second bin's second sample lies at
    # -1 + 1/3 + 1/6, -0.49999994 in upstream's float32 (inside the image: it reads row 0) and
    # -0.5000000000000001 in float64 (outside); upstream 1.13 measured: [0, -1.1133, -1.1133]
    x = np.float32([[[[1.12, -2.07, 1.95, -1.1133], [-2.08, -0.06, 1.68, 2.26],
                      [-2.89, -0.54, 2.49, -0.14]]]])
    rois = np.float32([[0.0, 6.735788, -0.5972087, 15.917506, -0.29833096]])
    out = F.vision.deformable_psroi_pooling(
        mge.tensor(x), mge.tensor(rois), mge.tensor(np.zeros((1, 2, 3, 1), np.float32)),
        no_trans=True, part_size=1, pooled_h=3, pooled_w=1, sample_per_part=2,
        spatial_scale=0.5, trans_std=0.3)
    np.testing.assert_allclose(out.numpy().ravel(), [0.0, -1.1133, -1.1133], rtol=1e-6)
