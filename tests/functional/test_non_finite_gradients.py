"""A NaN or infinite output gradient (a loss scaler's overflow, a diverged loss) reaches the
inputs that the output selected and no other: the selecting ops' gradients are selects, as
upstream 1.13's kernels (COND_LEQ_MOV for maximum and minimum, clip's, max pooling's and the
reductions' scatters, measured: ``F.max`` of [1, 2, 3, 4] with gradient NaN gives [0, 0, 0,
NaN]), not products by a 0/1 mask, which make NaN of every input a 0 meets (inf * 0, NaN * 0).
The oracles: the select written out in numpy, and torch where its kernel scatters (nearest
resizing)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.quantization.utils import create_qparams, fake_quant_tensor

SPECIAL = np.array([np.nan, np.inf, -np.inf], np.float32)


def _dy(shape, seed=0):
    """An output gradient of ``shape``: normal values, NaN, inf and -inf among them."""
    rs = np.random.RandomState(seed)
    g = rs.randn(*shape).astype(np.float32)
    flat = g.reshape(-1)
    flat[rs.choice(flat.size, min(3, flat.size), replace=False)] = SPECIAL[:min(3, flat.size)]
    return g


def _grads(fn, xs, dy):
    ts = [mge.tensor(x) for x in xs]
    with GradManager().attach(ts) as gm:
        gm.backward(fn(*ts), mge.tensor(dy))
    return [t.grad.numpy() for t in ts]


def _select(mask, dy):
    return np.where(mask, dy, np.float32(0))


def test_maximum_minimum_give_the_gradient_to_the_operand_picked():
    # upstream 1.13 measured: a = [1, 2, 3, 4], b = [2, 1, 3.5, 0], dy = [nan, inf, -inf, nan]
    a, b = np.float32([1, 2, 3, 4]), np.float32([2, 1, 3.5, 0])
    dy = np.float32([np.nan, np.inf, -np.inf, np.nan])
    ga, gb = _grads(F.minimum, [a, b], dy)
    np.testing.assert_array_equal(ga, [np.nan, 0, -np.inf, 0])
    np.testing.assert_array_equal(gb, [0, np.inf, 0, np.nan])
    ga, gb = _grads(F.maximum, [a, b], dy)
    np.testing.assert_array_equal(ga, [0, np.inf, 0, np.nan])
    np.testing.assert_array_equal(gb, [np.nan, 0, -np.inf, 0])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_maximum_of_broadcast_operands_selects(dtype):
    a = np.random.RandomState(1).randn(4, 5).astype(dtype)
    b = np.random.RandomState(2).randn(1, 5).astype(dtype)
    dy = _dy((4, 5)).astype(dtype)
    ga, gb = _grads(F.maximum, [a, b], dy)
    first = a >= b
    np.testing.assert_array_equal(ga, _select(first, dy).astype(dtype))
    np.testing.assert_array_equal(gb, _select(~first, dy).sum(0, keepdims=True).astype(dtype))


def test_clip_gives_no_gradient_outside_its_bounds():
    x = np.random.RandomState(3).randn(6, 7).astype(np.float32)
    dy = _dy(x.shape, 1)
    gx, = _grads(lambda t: F.clip(t, -0.5, 0.5), [x], dy)
    np.testing.assert_array_equal(gx, _select((x >= -0.5) & (x <= 0.5), dy))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_clip_by_tensor_bounds_selects_for_each_operand(dtype):
    rs = np.random.RandomState(4)
    x, lo, hi = (rs.randn(5, 6).astype(dtype) for _ in range(3))
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    dy = _dy(x.shape, 2).astype(dtype)
    gx, gl, gh = _grads(F.clip, [x, lo, hi], dy)
    np.testing.assert_array_equal(gx, _select((x >= lo) & (x <= hi), dy))
    np.testing.assert_array_equal(gl, _select(x < lo, dy))
    np.testing.assert_array_equal(gh, _select(x > hi, dy))


@pytest.mark.parametrize("name", ["max", "min"])
def test_max_and_min_reductions_give_the_gradient_to_the_extremes_alone(name):
    # upstream 1.13 measured: F.max([1, 2, 3, 4]) with gradient NaN gives [0, 0, 0, NaN]
    gx, = _grads(lambda t: F.max(t, axis=0, keepdims=True), [np.float32([1, 2, 3, 4])],
                 np.float32([np.nan]))
    np.testing.assert_array_equal(gx, [0, 0, 0, np.nan])
    x = np.random.RandomState(5).randn(4, 6).astype(np.float32)
    x[1, 2] = x[1, 4] = x[1].max() + 1  # a tie: each tied element takes all of the gradient
    dy = np.float32([0.5, np.nan, np.inf, -np.inf])
    gx, = _grads(lambda t: getattr(F, name)(t, axis=1), [x], dy)
    extreme = getattr(np, name)(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(gx, _select(x == extreme, dy[:, None]))


def _max_pool_select(x, dy, k, s, p):
    """Max pooling's gradient as upstream routes it, written out window by window: all of a
    window's gradient to every element equal to its maximum, nothing to the others."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    gx = np.zeros(xp.shape, np.float32)
    for i in range(dy.shape[2]):
        for j in range(dy.shape[3]):
            win = (slice(None), slice(None), slice(i * s, i * s + k), slice(j * s, j * s + k))
            hit = xp[win] == xp[win].max(axis=(2, 3), keepdims=True)
            gx[win] += _select(hit, dy[:, :, i:i + 1, j:j + 1])
    return gx[:, :, p:p + x.shape[2], p:p + x.shape[3]]


@pytest.mark.parametrize("shape,k,s,p", [((2, 3, 8, 8), 2, 2, 0), ((2, 2, 7, 9), 2, 3, 0),
                                         ((1, 2, 6, 6), 2, 2, 1), ((2, 2, 9, 9), 3, 2, 1)])
def test_max_pooling_sends_a_non_finite_gradient_to_the_maximum_alone(shape, k, s, p):
    # (disjoint windows on numpy slices, padded ones on torch's taps, overlapping ones on
    # ATen's scatter by index: distinct values, so that every path routes alike)
    x = np.random.RandomState(6).permutation(int(np.prod(shape))).reshape(shape)
    x = (x / 7.0).astype(np.float32)
    out = F.max_pool2d(mge.tensor(x), k, s, p)
    dy = _dy(out.shape, 3)
    gx, = _grads(lambda t: F.max_pool2d(t, k, s, p), [x], dy)
    np.testing.assert_array_equal(gx, _max_pool_select(x, dy, k, s, p))


def test_topk_kth_only_shares_among_the_tied_alone():
    x = np.float32([[3, 1, 2, 2, 5], [4, 0, 9, 1, 7]])
    dy = np.float32([np.nan, np.inf])
    gx, = _grads(lambda t: F.topk(t, 3, kth_only=True)[0], [x], dy)
    kth = np.sort(x, axis=1)[:, 2:3]
    tied = x == kth
    np.testing.assert_array_equal(gx, _select(tied, dy[:, None] / tied.sum(1, keepdims=True)))


def test_fake_quant_gives_no_gradient_where_it_clipped():
    x = np.linspace(-3, 3, 13).astype(np.float32)
    dy = _dy(x.shape, 4)
    qp = create_qparams(dtype_meta="qint8", scale=mge.tensor(np.float32(0.01)))
    gx, = _grads(lambda t: fake_quant_tensor(t, qp), [x], dy)
    q = np.sign(x / 0.01) * np.floor(np.abs(x / 0.01) + 0.5)
    np.testing.assert_array_equal(gx, _select((q >= -128) & (q <= 127), dy))


@pytest.mark.parametrize("mode", ["max", "average"])
def test_roi_pooling_sends_nothing_from_an_empty_bin(mode):
    x = (np.random.RandomState(7).permutation(2 * 4 * 4) / 7.0).astype(np.float32)
    x = x.reshape(1, 2, 4, 4)
    rois = np.float32([[0, 1, 1, 2, 2], [0, 7, 7, 9, 9]])  # the second lies outside: empty bins
    dy = np.ones((2, 2, 2, 2), np.float32)
    dy[1] = np.nan
    finite = np.ones_like(dy)
    finite[1] = 0
    gx, = _grads(lambda t: F.vision.roi_pooling(t, mge.tensor(rois), (2, 2), mode), [x], dy)
    want, = _grads(lambda t: F.vision.roi_pooling(t, mge.tensor(rois), (2, 2), mode), [x], finite)
    np.testing.assert_array_equal(gx, want)


@pytest.mark.parametrize("size", [(8, 6), (5, 7), (2, 3)])
def test_nearest_resizing_scatters_a_non_finite_gradient_as_torch(size):
    x = np.random.RandomState(8).randn(1, 2, 4, 3).astype(np.float32)
    dy = _dy((1, 2) + size, 5)
    gx, = _grads(lambda t: F.vision.interpolate(t, size, mode="nearest"), [x], dy)
    xt = torch.tensor(x, requires_grad=True)
    TF.interpolate(xt, size, mode="nearest").backward(torch.tensor(dy))
    # (NaN and infinities where torch's are; sums in another order)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_bilinear_resizing_sends_a_nan_gradient_to_the_pixels_its_output_read():
    # (the resampling matrices' product spread it over every pixel of the image)
    x = np.random.RandomState(9).randn(1, 1, 5, 6).astype(np.float32)
    dy = np.ones((1, 1, 10, 12), np.float32)
    dy[0, 0, 4, 7] = np.nan
    gx, = _grads(lambda t: F.vision.interpolate(t, (10, 12), mode="bilinear",
                                                align_corners=False), [x], dy)
    # output (4, 7) of a doubled image reads rows 1 and 2 (weights 3/4, 1/4), columns 3 and 4
    want = np.zeros((5, 6), bool)
    want[1:3, 3:5] = True
    np.testing.assert_array_equal(np.isnan(gx[0, 0]), want)


@pytest.mark.parametrize("equation,shape", [("ii->i", (4, 4)), ("bii,j->bj", (2, 3, 3)),
                                            ("iji->ij", (3, 2, 3))])
def test_einsum_puts_the_gradient_of_a_diagonal_on_the_diagonal_alone(equation, shape):
    # (an identity matrix ties a repeated label back: its zeros times NaN were NaN)
    rs = np.random.RandomState(10)
    x = rs.randn(*shape).astype(np.float32)
    extra = [rs.randn(2).astype(np.float32)] if "," in equation else []
    out = np.einsum(equation, x, *extra)
    dy = _dy(out.shape, 6)
    gx = _grads(lambda *t: F.einsum(equation, *t), [x] + extra, dy)[0]
    xt = torch.tensor(x, requires_grad=True)
    torch.einsum(equation, xt, *map(torch.tensor, extra)).backward(torch.tensor(dy))
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", ["warp_perspective", "remap"])
def test_a_sample_outside_a_constant_border_sends_no_gradient(fn):
    # output (0, 0) reads at x = -1.5: both of its corners lie outside the image, whose border
    # value it blends; the pixel its index was clamped to took NaN * 0 from it (upstream 1.13:
    # nothing; 300 drawn warps and remaps with NaN and infinite gradients now equal upstream's)
    x = np.random.RandomState(11).randn(1, 1, 3, 4).astype(np.float32)
    dy = np.ones((1, 1, 2, 3), np.float32)
    dy[0, 0, 0, 0] = np.nan
    if fn == "warp_perspective":
        mat = mge.tensor(np.float32([[[1, 0, -1.5], [0, 1, 0], [0, 0, 1]]]))
        gx, = _grads(lambda t: F.vision.warp_perspective(t, mat, (2, 3), border_mode="constant"),
                     [x], dy)
    else:
        xs, ys = np.meshgrid(np.arange(3, dtype=np.float32) - 1.5, np.arange(2, dtype=np.float32))
        map_xy = mge.tensor(np.stack([xs, ys], -1)[None])
        gx, = _grads(lambda t: F.vision.remap(t, map_xy, border_mode="constant"), [x], dy)
    assert np.isfinite(gx).all()


_QP = None


def _fake_quant(t):
    global _QP
    if _QP is None:
        _QP = create_qparams(dtype_meta="qint8", scale=mge.tensor(np.float32(0.01)))
    return fake_quant_tensor(t * 3, _QP)


@pytest.mark.parametrize("fn", [
    lambda t: F.maximum(t, 0.3), lambda t: F.minimum(t, t[::-1] * 0.5),
    lambda t: F.clip(t, -0.5, 0.5), lambda t: F.clip(t, t[::-1] * 0.2, t[::-1] * 0.2 + 0.6),
    lambda t: F.broadcast_to(F.max(t, axis=0, keepdims=True), t.shape),
    lambda t: F.broadcast_to(F.topk(t, 3, kth_only=True)[0], t.shape), _fake_quant,
    lambda t: F.nn.prelu(t, mge.tensor(np.float32([0.25]))),
    lambda t: F.einsum("ii->i", F.broadcast_to(t, (6, 6))),
], ids=["maximum", "minimum", "clip", "clip_by_tensors", "max", "topk_kth", "fake_quant",
        "prelu", "einsum_diagonal"])
def test_a_recorded_backward_selects_as_the_backward(fn):
    # under an outer GradManager the backward runs as recorded ops (grad_graph): the same
    # select, and its derivative in the incoming gradient is the same select
    x = np.float32([-0.9, 0.4, 0.1, 0.7, -0.2, 0.55])
    g = np.float32([np.nan, 1.5, np.inf, -np.inf, 2.0, np.nan])
    plain, = _grads(lambda t: (fn(t) * mge.tensor(g)).sum(), [x], np.float32(1))
    t, v = mge.Parameter(x), mge.Parameter(g)
    gm_outer, gm_inner = GradManager().attach([v]), GradManager().attach([t])
    with gm_outer:
        with gm_inner:
            gm_inner.backward((fn(t) * v).sum())
        np.testing.assert_array_equal(t.grad.numpy(), plain)
        gm_outer.backward(t.grad.sum())
    assert np.isfinite(v.grad.numpy()).all()  # (a select's derivative: 0 or a finite factor)


def test_prelu_slope_takes_nothing_from_where_x_is_not_negative():
    # the slope's gradient sums g * x over x < 0: a NaN or inf g where x >= 0 adds nothing
    # (upstream 1.13 measured: x = [0, 1] with gradients [inf, NaN] gives the slope 0)
    x = np.float32([[-1.0, 0.0], [2.0, -0.5]])
    dy = np.float32([[2.0, np.inf], [np.nan, 4.0]])
    gx, gw = _grads(F.nn.prelu, [x, np.float32([0.25])], dy)
    np.testing.assert_array_equal(gw, [-1.0 * 2.0 + -0.5 * 4.0])
    np.testing.assert_array_equal(gx, [[0.5, np.inf], [np.nan, 1.0]])


def test_a_doubled_image_scatters_its_gradient_by_upstreams_backward_taps():
    # upstream 1.13's backward kernel reads the neighbours of weight 0 at the image's edge
    # even where its forward for a doubled image does not (measured: this very pattern)
    x = np.random.RandomState(0).randn(1, 1, 3, 3).astype(np.float32)
    dy = np.ones((1, 1, 6, 6), np.float32)
    dy[0, 0, 0, 0], dy[0, 0, 3, 3] = np.nan, np.inf
    gx, = _grads(lambda t: F.vision.interpolate(t, scale_factor=2.0, mode="bilinear",
                                                align_corners=False), [x], dy)
    np.testing.assert_array_equal(np.isnan(gx[0, 0]), [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(np.isposinf(gx[0, 0]), [[0, 0, 0], [0, 0, 1], [0, 1, 1]])
