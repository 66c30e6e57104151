"""Tests of megengine/functional/pooling.py: values and gradients against torch, memory shared with ATen."""
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from devices import address, simulated_gpu_runtime, views_foreign_memory
from oracle import check_against_torch, raises_as_upstream


def rand(*shape, low=-2.0, high=2.0):
    return np.asarray(np.random.uniform(low, high, shape), dtype=np.float32)


check = partial(check_against_torch, atol=1e-5, check_dtype=True)


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


def _tied_max_pool_grad(x, g, kernel, stride, padding):
    """Upstream's max pooling gradient, written out window by window: each window's gradient
    goes whole to every real element equal to its maximum (padding holds the lowest value)."""
    (kh, kw), (sh, sw), (ph, pw) = ((v, v) if isinstance(v, int) else v
                                    for v in (kernel, stride, padding))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
                constant_values=np.finfo(x.dtype).min)
    gx = np.zeros(xp.shape)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            win = (slice(None), slice(None), slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))
            hit = xp[win] == xp[win].max(axis=(2, 3), keepdims=True)
            gx[win] += hit * g[:, :, i:i + 1, j:j + 1]
    return gx[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]


def _max_pool_grad(x0, args, g0=None, pool=F.max_pool2d):
    x = mge.tensor(x0)
    gm = GradManager().attach([x])
    with gm:
        y = pool(x, *args)
        gm.backward(y, mge.tensor(g0) if g0 is not None else F.ones_like(y))
    return y.numpy(), x.grad.numpy()


def test_windows_that_do_not_overlap_give_every_tied_maximum_the_gradient_as_upstream():
    # upstream 1.13 measured: each window's gradient goes whole to every element equal to its
    # maximum (torch gives it to the first alone, as earlier versions of this fork did)
    x = np.array([[[[1, 1, 2, 2], [1, 1, 2, 3], [0, 5, 4, 4], [5, 0, 4, 4]]]], np.float32)
    g = np.array([[[[1, 2], [3, 4]]]], np.float32)
    _, gx = _max_pool_grad(x, (2,), g)
    np.testing.assert_array_equal(gx[0, 0], [[1, 1, 0, 0], [1, 1, 0, 2], [0, 3, 4, 4],
                                             [3, 0, 4, 4]])
    _, gx = _max_pool_grad(x, ((2, 2),), g, pool=F.adaptive_max_pool2d)  # (2x2 windows too)
    np.testing.assert_array_equal(gx[0, 0], [[1, 1, 0, 0], [1, 1, 0, 2], [0, 3, 4, 4],
                                             [3, 0, 4, 4]])


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (2, 2, 1), (2, 3, 0), (3, 3, 1),
                                                    ((1, 2), (2, 2), (0, 1))])
def test_max_pool2d_ties_after_a_relu_share_the_gradient(kernel, stride, padding):
    # after a relu many windows hold several equal zeros or equal values (a padded window runs
    # on ATen's kernel, an unpadded one as numpy slices: the same rule)
    x = np.maximum(rand(2, 3, 8, 8), 0)
    x[0, 0, :2, :2] = 1.5
    x[1, 2, 3:6, 2:5] = 0.75
    g = rand(*F.max_pool2d(mge.tensor(x), kernel, stride, padding).shape)
    _, gx = _max_pool_grad(x, (kernel, stride, padding), g)
    np.testing.assert_allclose(gx, _tied_max_pool_grad(x, g, kernel, stride, padding),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("odd", [False, True])
def test_tiled_max_pool_backward_kernel_matches_the_window_rule(dtype, odd, tmp_path,
                                                                monkeypatch):
    """The one-kernel backward a GPU runs for windows side by side (2x2 stride 2:
    `_Pool2d._tiled_max_backward`), its CUDA body compiled here as C++: every tied maximum gets
    its window's gradient (the window-by-window oracle), a NaN maximum is matched by the
    window's NaNs (the other elements of that window get nothing), and on an odd plane the last
    row and column, in no window, get zeros."""
    from cuda_kernels import emulate
    from megengine.functional import pooling

    monkeypatch.setattr(pooling, "_tied_grad_kernel",
                        lambda kernel=emulate(pooling._tied_grad_kernel, tmp_path): kernel)
    rng = np.random.RandomState(4)
    x = np.maximum(rng.randn(2, 3, 6 + odd, 8 + odd), 0).astype(dtype)  # (relu: tied zeros)
    x[0, 1, 2:4, 4:6] = 0.25  # four tied maxima
    x[1, 0, 0, 1] = np.nan  # a NaN maximum
    y = x[:, :, :6, :8].reshape(2, 3, 3, 2, 4, 2).max(axis=(3, 5))  # (numpy's max: NaN)
    g = rng.randn(2, 3, 3, 4).astype(dtype)
    op = pooling._Pool2d("max", (2, 2), (2, 2), (0, 0), "max_pool2d")
    op.tiled = (x, y)
    gx = op._tiled_max_backward(g)
    assert gx.dtype == np.dtype(dtype) and gx.shape == x.shape
    finite = x.copy()
    finite[1, 0, :2, :2] = 0  # the NaN window, checked by hand below
    expect = _tied_max_pool_grad(finite, g, 2, 2, 0)
    expect[1, 0, :2, :2] = [[0, g[1, 0, 0, 0]], [0, 0]]  # only the NaN takes the gradient
    np.testing.assert_array_equal(gx, expect.astype(dtype))
    assert (gx[0, 1, 2:4, 4:6] == g[0, 1, 1, 2]).all()


def test_tiled_max_pool_backward_runs_only_for_windows_side_by_side():
    from megengine.functional.pooling import _use_tiled_kernel

    class Cuda:  # what the test reads of a CUDA array
        def __init__(self, shape, dtype="float32", contiguous=True):
            self.shape, self.dtype = shape, np.dtype(dtype)
            self.flags = type("Flags", (), {"c_contiguous": contiguous})

    assert _use_tiled_kernel(Cuda((2, 3, 8, 6)), (2, 2), (2, 2), (0, 0))
    assert _use_tiled_kernel(Cuda((2, 3, 9, 6)), (3, 2), (3, 2), (0, 0))
    assert _use_tiled_kernel(Cuda((2, 3, 7, 6)), (2, 2), (2, 2), (0, 0))  # a row left: zeros
    assert not _use_tiled_kernel(Cuda((2, 3, 8, 6)), (2, 2), (3, 3), (0, 0))  # gaps
    assert not _use_tiled_kernel(Cuda((2, 3, 8, 6)), (2, 2), (2, 2), (1, 0))  # padding
    assert not _use_tiled_kernel(Cuda((2, 3, 8, 6), "float16"), (2, 2), (2, 2), (0, 0))
    assert not _use_tiled_kernel(Cuda((2, 3, 8, 6), contiguous=False), (2, 2), (2, 2), (0, 0))
    assert not _use_tiled_kernel(np.zeros((2, 3, 8, 6), "float32"), (2, 2), (2, 2), (0, 0))


def test_overlapping_windows_route_ties_like_torch():
    # overlapping windows give a window's gradient to its first maximum, ATen's scatter by
    # index (upstream's every-tie rule costs a pass per kernel tap there: documented)
    x = np.maximum(rand(2, 3, 8, 8), 0)
    x[0, 0, :2, :2] = 1.5
    check(lambda a: F.max_pool2d(a, 3, 1, 1), lambda a: TF.max_pool2d(a, 3, 1, 1), x)
    check(lambda a: F.max_pool2d(a, 3, 2, 1), lambda a: TF.max_pool2d(a, 3, 2, 1), x)


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (2, 2, 1), (3, 3, 0)])
def test_gradient_of_tied_maxima_is_differentiable(kernel, stride, padding):
    # the penalty's gradient for v passes the adjoint of the scatter to every tied maximum:
    # S^T u sums u over each window's maxima; S is written out from the window-by-window rule
    x0 = np.maximum(np.random.RandomState(2).randn(1, 2, 6, 6), 0).astype("float32")
    x0[0, 0, :3, :3] = 0.5
    oh = (6 + 2 * padding - kernel) // stride + 1
    v0 = np.random.RandomState(3).randn(1, 2, oh, oh).astype("float32")
    x, v = mge.Parameter(x0), mge.Parameter(v0)
    gm_outer, gm_inner = GradManager().attach([v]), GradManager().attach([x])
    with gm_outer:
        with gm_inner:
            gm_inner.backward((F.max_pool2d(x, kernel, stride, padding) * v).sum())
        g = x.grad
        x.grad = None
        gm_outer.backward((g ** 2 * x).sum())
    eye = np.eye(v0.size).reshape((v0.size,) + v0.shape)
    S = np.stack([_tied_max_pool_grad(x0, e, kernel, stride, padding).ravel() for e in eye], 1)
    np.testing.assert_allclose(g.numpy().ravel(), S @ v0.ravel(), rtol=1e-6, atol=1e-6)
    want = S.T @ (2 * (S @ v0.ravel()) * x0.ravel())
    np.testing.assert_allclose(v.grad.numpy().ravel(), want, rtol=1e-5, atol=1e-5)


def test_max_pool2d_keeps_integers():
    x = np.arange(16, dtype=np.int32).reshape(1, 1, 4, 4)
    y = F.max_pool2d(mge.tensor(x), 2, padding=1)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(
        y.numpy(), TF.max_pool2d(torch.tensor(x, dtype=torch.float32), 2, padding=1).numpy())


def _int_max_pool(x, kernel, stride, padding):
    """Max pooling by hand, window by window, the padding the dtype's lowest value."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=np.iinfo(x.dtype).min)
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    return np.array([[[[xp[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw].max()
                        for j in range(ow)] for i in range(oh)]
                      for c in range(x.shape[1])] for n in range(x.shape[0])], x.dtype)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32", "int64"])
@pytest.mark.parametrize("kernel,stride,padding", [
    ((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 1)), ((2, 3), (1, 1), (0, 1)),
    ((2, 2), (3, 3), (2, 2))])  # (the last: explicit padding, windows of padding alone)
def test_max_pool2d_of_integers_is_exact_in_their_dtype(dtype, kernel, stride, padding):
    # (ATen's CUDA max pooling has no integer kernels: the GPU takes the maximum over the
    # kernel taps; int64 values beyond float64's integers must stay exact, and a window of
    # padding alone gives the dtype's lowest value)
    info = np.iinfo(dtype)
    rs = np.random.RandomState(1)
    x = rs.randint(info.min, info.max, (2, 3, 7, 6), dtype=dtype)
    if dtype == "int64":
        x[:, :, ::2] = info.max - rs.randint(0, 3, x[:, :, ::2].shape)  # 2**63 - 1, -2, -3
    y = F.max_pool2d(mge.tensor(x, dtype=dtype), kernel, stride, padding)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y.numpy(), _int_max_pool(x, kernel, stride, padding))
    got = F.adaptive_max_pool2d(mge.tensor(x, dtype=dtype), (3, 4))  # (3, 3) windows, (2, 1) apart
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.numpy(), _int_max_pool(x, (3, 3), (2, 1), (0, 0)))


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 1, 1), (2, 1, 0), (3, 2, 1)])
def test_max_pool2d_of_bools_is_any_over_the_window(kernel, stride, padding):
    # (earlier versions of this fork raised ATen's "max_pool2d not implemented for 'Bool'" on
    # overlapping windows and on GPUs)
    x = np.random.RandomState(0).rand(2, 3, 6, 5) < 0.2
    y = F.max_pool2d(mge.tensor(x), kernel, stride, padding)
    want = TF.max_pool2d(torch.tensor(x, dtype=torch.float32), kernel, stride, padding)
    assert y.dtype == np.bool_
    np.testing.assert_array_equal(y.numpy(), want.numpy() > 0)
    got = F.adaptive_max_pool2d(mge.tensor(x), (3, 5))  # (windows that torch's rule shares)
    np.testing.assert_array_equal(got.numpy(), TF.adaptive_max_pool2d(
        torch.tensor(x, dtype=torch.float32), (3, 5)).numpy() > 0)


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


LOWEST = float(np.finfo(np.float32).min)  # max pooling's padding value, as upstream's kernel's


@pytest.mark.parametrize("padding", [2, (2, 1)])
def test_padding_wider_than_half_the_window(padding):
    # upstream allows it; ATen's kernels do not, so the op pads explicitly
    x = rand(2, 3, 7, 6)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    check(lambda a: F.max_pool2d(a, 2, 1, padding),
          lambda a: TF.max_pool2d(TF.pad(a, (pw, pw, ph, ph), value=LOWEST), 2, 1), x)
    check(lambda a: F.avg_pool2d(a, 3, 1, padding, "average"),
          lambda a: TF.avg_pool2d(TF.pad(a, (pw, pw, ph, ph)), 3, 1), x)

    def exclude(a):  # the sum of each window over the number of real elements in it
        ones = torch.ones_like(a)
        sums = TF.avg_pool2d(TF.pad(a, (pw, pw, ph, ph)), 3, 1, divisor_override=1)
        counts = TF.avg_pool2d(TF.pad(ones, (pw, pw, ph, ph)), 3, 1, divisor_override=1)
        return sums / counts

    check(lambda a: F.avg_pool2d(a, 3, 1, padding), exclude, x, rtol=1e-5)


def test_windows_entirely_in_the_padding_cannot_be_averaged():
    with pytest.raises(ValueError, match="avg_pool2d: padding .* leaves windows with no input"):
        F.avg_pool2d(mge.tensor(rand(1, 1, 3, 3)), 2, 1, 3)


def test_pooling_saves_a_view_of_the_input():
    x = mge.tensor(rand(2, 3, 8, 8))
    gm = GradManager().attach([x])
    with gm:
        y = F.max_pool2d(x, 2)
        assert y._node[0].op.tx.data_ptr() == address(x)
        z = F.avg_pool2d(x, 3, 1, 1)
        assert z._node[0].op.tx.data_ptr() == address(x)
        assert views_foreign_memory(z)  # ATen's output buffer, seen through numpy/CuPy
        gm.backward([y.sum(), z.sum()])
    assert x.grad.shape == x.shape


def test_max_pool2d_nan_and_infinite_inputs_like_torch():
    # NaN propagates (those inputs take ATen's kernel); a window whose real elements are all
    # -inf routes its gradient to its first real element, never to the padding
    x = rand(2, 2, 6, 6)
    x[0, 0, 1, 1] = np.nan
    x[1, 1, :2, :2] = -np.inf
    for args in ((2,), (3, 2, 1)):
        y = F.max_pool2d(mge.tensor(x), *args)
        expect = TF.max_pool2d(torch.tensor(x), *args)
        np.testing.assert_array_equal(y.numpy(), expect.numpy())
    x[0, 0, 1, 1] = 0.5
    check(lambda a: F.max_pool2d(a, 3, 2, 1), lambda a: TF.max_pool2d(a, 3, 2, 1), x)


def _check_gradient_penalty_against_torch(pool, torch_pool, x0, v0):
    """WGAN-GP's gradient penalty through ``pool``: g = d sum(pool(x * x) * v) / dx, penalty =
    sum(g ** 2), differentiated for x and v; g, the penalty and both gradients are compared
    with torch's double backward through ``torch_pool``."""
    x, v = mge.Parameter(x0), mge.Parameter(v0)
    gm_outer, gm_inner = GradManager().attach([x, v]), GradManager().attach([x])
    with gm_outer:
        with gm_inner:
            y = (pool(x * x) * v).sum()
            gm_inner.backward(y)
        g = x.grad
        x.grad = None
        penalty = (g ** 2).sum()
        gm_outer.backward(penalty)

    tx = torch.tensor(x0, requires_grad=True)
    tv = torch.tensor(v0, requires_grad=True)
    ty = (torch_pool(tx * tx) * tv).sum()
    (tg,) = torch.autograd.grad(ty, tx, create_graph=True)
    tp = (tg ** 2).sum()
    tdx, tdv = torch.autograd.grad(tp, (tx, tv))
    np.testing.assert_allclose(g.numpy(), tg.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(penalty.numpy(), tp.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), tdx.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v.grad.numpy(), tdv.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode,padding", [("average_count_exclude_padding", 1),
                                          ("average", 1), ("average_count_exclude_padding", 0)])
def test_avg_pool2d_gradient_is_differentiable_like_torch(mode, padding):
    # a gradient penalty (WGAN-GP on MegEngine/Models' WGAN discriminator, which average-pools)
    rng = np.random.RandomState(0)
    x0 = rng.randn(2, 3, 5, 5).astype("float32")
    oh = (5 + 2 * padding - 2) // 2 + 1
    v0 = rng.randn(2, 3, oh, oh).astype("float32")
    _check_gradient_penalty_against_torch(
        lambda a: F.avg_pool2d(a, 2, 2, padding, mode=mode),
        lambda a: TF.avg_pool2d(a, 2, 2, padding, count_include_pad=(mode == "average")), x0, v0)


MAX_SECOND_ORDER_CASES = [
    # kernel, stride, padding: disjoint windows (numpy slices), overlapping (ATen's indices),
    # a padding wider than half the window (explicit -inf padding, upstream allows it)
    (2, 2, 0), (3, 2, 1), (3, 2, 2),
    (2, 3, 0),  # windows with gaps between them (rows and columns no window reads)
]


def _torch_max_pool(tx, kernel, stride, padding):
    if 2 * padding > kernel:  # torch refuses it: pad with -inf by hand, as upstream does
        tx = TF.pad(tx, (padding,) * 4, value=-float("inf"))
        padding = 0
    return TF.max_pool2d(tx, kernel, stride, padding)


@pytest.mark.parametrize("kernel,stride,padding", MAX_SECOND_ORDER_CASES)
def test_max_pool2d_gradient_is_differentiable_like_torch(kernel, stride, padding):
    # WGAN-GP's penalty through max pooling
    rng = np.random.RandomState(1)
    x0 = rng.randn(2, 3, 6, 6).astype("float32")
    oh = (6 + 2 * padding - kernel) // stride + 1
    v0 = rng.randn(2, 3, oh, oh).astype("float32")
    _check_gradient_penalty_against_torch(
        lambda a: F.max_pool2d(a, kernel, stride, padding),
        lambda a: _torch_max_pool(a, kernel, stride, padding), x0, v0)


@pytest.mark.parametrize("kernel,stride,padding", MAX_SECOND_ORDER_CASES)
def test_max_pool2d_third_order_matches_torch(kernel, stride, padding):
    # three nested managers: the recorded gradient of the recorded gradient (the gather op's
    # own rule) against torch's create_graph twice
    rng = np.random.RandomState(2)
    x0 = rng.randn(1, 2, 6, 6).astype("float32")
    x = mge.Parameter(x0)
    gm3, gm2, gm1 = (GradManager().attach([x]) for _ in range(3))
    with gm3:
        with gm2:
            with gm1:
                gm1.backward((F.max_pool2d(x ** 3, kernel, stride, padding) ** 2).sum())
            g1 = x.grad
            x.grad = None
            gm2.backward((g1 ** 2).sum())
        g2 = x.grad
        x.grad = None
        gm3.backward((g2 * x).sum())

    tx = torch.tensor(x0, requires_grad=True)
    (t1,) = torch.autograd.grad((_torch_max_pool(tx ** 3, kernel, stride, padding) ** 2).sum(),
                                tx, create_graph=True)
    (t2,) = torch.autograd.grad((t1 ** 2).sum(), tx, create_graph=True)
    (t3,) = torch.autograd.grad((t2 * tx).sum(), tx)
    np.testing.assert_allclose(g2.numpy(), t2.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x.grad.numpy(), t3.numpy(), rtol=1e-4, atol=1e-4)




# ----- overlapping max windows on ATen's channels-last kernel (CPU, float32/float64) -----

CHANNELS_LAST_CASES = [
    # shape, kernel, stride, padding: ShuffleNet/ResNet's 3x3 stride 2, odd sizes, a window
    # wider than the stride in one axis only, a padding wider than half the window (explicit)
    ((2, 3, 9, 11), 3, 2, 1),
    ((1, 5, 7, 7), 3, 1, 1),
    ((2, 4, 8, 9), (3, 2), (2, 1), (1, 0)),
    ((1, 2, 6, 5), 3, 2, 2),
]


def _torch_pool_padded(a, kernel, stride, padding):
    """torch's max pooling, with a padding wider than half the window made explicit (-inf)."""
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    p = padding if isinstance(padding, tuple) else (padding, padding)
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        a = TF.pad(a, (p[1], p[1], p[0], p[0]), value=-float("inf"))
        p = (0, 0)
    return TF.max_pool2d(a, k, stride, p)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,kernel,stride,padding", CHANNELS_LAST_CASES)
def test_overlapping_max_pool_values_and_gradients_match_torch(shape, kernel, stride, padding,
                                                               dtype):
    x0 = np.random.RandomState(3).randn(*shape).astype(dtype)
    x0[0, 0, 1, :3] = x0[0, 0, 2, 1]  # ties inside windows: the first maximum takes the gradient
    g0 = np.random.RandomState(4).randn(*_torch_pool_padded(
        torch.tensor(x0), kernel, stride, padding).shape).astype(dtype)
    tx = torch.tensor(x0, requires_grad=True)
    ty = _torch_pool_padded(tx, kernel, stride, padding)
    ty.backward(torch.tensor(g0))

    eval_y = F.max_pool2d(mge.tensor(x0, dtype=dtype), kernel, stride, padding)  # no gradient
    x = mge.tensor(x0, dtype=dtype)
    gm = GradManager().attach([x])
    with gm:  # the same call with a gradient needed right after: indices are made now
        y = F.max_pool2d(x, kernel, stride, padding)
        gm.backward(y, mge.tensor(g0, dtype=dtype))
    for out in (eval_y, y):
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


def test_max_pool_without_gradient_makes_no_indices_and_a_strided_input_is_read_as_is():
    from megengine.functional.pooling import _Pool2d

    base = np.random.RandomState(5).randn(2, 3, 10, 12).astype("float32")
    x0 = base[:, ::-1, 1::2, ::1]  # channels reversed, every other row: a strided view
    seen = []
    real = _Pool2d._max_channels_last

    def spy(self, tx):
        out = real(self, tx)
        seen.append(self.indices is None)
        return out

    _Pool2d._max_channels_last = spy
    try:
        y = F.max_pool2d(mge.tensor(x0), 3, 2, 1)
        x = mge.tensor(x0)
        gm = GradManager().attach([x])
        with gm:
            z = F.max_pool2d(x, 3, 2, 1)
            gm.backward(z.sum())
    finally:
        _Pool2d._max_channels_last = real
    assert seen == ([True, False] if mge.tensor(x0)._data.__class__ is np.ndarray else [])
    tx = torch.tensor(np.ascontiguousarray(x0), requires_grad=True)
    ty = TF.max_pool2d(tx, 3, 2, 1)
    ty.sum().backward()
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(z.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


def test_max_pool_without_gradient_propagates_nan_like_torch():
    x = rand(1, 2, 7, 7)
    x[0, 1, 3, 3] = np.nan
    x[0, 0, :3, :3] = -np.inf
    y = F.max_pool2d(mge.tensor(x), 3, 2, 1)
    np.testing.assert_array_equal(y.numpy(), TF.max_pool2d(torch.tensor(x), 3, 2, 1).numpy())


def test_avg_pool2d_max_mode_is_max_pooling():
    # upstream 1.13 measured: avg_pool2d(mode="max") of arange(16) (4x4), window 2, stride 2,
    # padding 1: [[0, 2, 3], [8, 10, 11], [12, 14, 15]], max_pool2d's result
    x = mge.tensor(np.arange(16, dtype="float32").reshape(1, 1, 4, 4))
    out = F.avg_pool2d(x, 2, 2, 1, mode="max")
    assert out.numpy()[0, 0].tolist() == [[0, 2, 3], [8, 10, 11], [12, 14, 15]]
    np.testing.assert_array_equal(out.numpy(), F.max_pool2d(x, 2, 2, 1).numpy())


def test_max_pool2d_window_of_padding_alone_gives_the_lowest_value():
    # upstream 1.13 measured: a window that covers only padding gives float32's lowest value
    # (-3.4028235e38), not -inf (window 2, padding 2 of a 4x4 input: the border windows)
    x = mge.tensor(np.arange(16, dtype="float32").reshape(1, 1, 4, 4))
    out = F.max_pool2d(x, 2, padding=2).numpy()[0, 0]
    low = np.finfo(np.float32).min
    assert out[1:3, 1:3].tolist() == [[5, 7], [13, 15]]
    assert (out[0] == low).all() and (out[:, 0] == low).all() and np.isfinite(out).all()


@pytest.mark.parametrize("fn, torch_fn, kwargs", [
    (F.max_pool2d, TF.max_pool2d, dict(kernel_size=2)),
    (F.max_pool2d, TF.max_pool2d, dict(kernel_size=3, stride=2, padding=1)),
    (F.avg_pool2d, partial(TF.avg_pool2d, count_include_pad=False),  # (upstream's default)
     dict(kernel_size=3, stride=2, padding=1)),
], ids=["max-disjoint", "max-overlapping", "avg"])
def test_float16_pooling_on_cpu_pools_in_float32_and_rounds_once(fn, torch_fn, kwargs):
    # the oracle: torch's float32 pooling of the same float16 values, rounded once; distinct
    # values (no ties, where the two engines' max-pooling gradients differ by design)
    rng = np.random.default_rng(12)
    x = (rng.permutation(2 * 3 * 12 * 12) / 4 - 100).astype(np.float16).reshape(2, 3, 12, 12)
    tx = torch.tensor(x.astype(np.float32), requires_grad=True)
    ty = torch_fn(tx, **kwargs)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float16)
    ty.backward(torch.from_numpy(g.astype(np.float32)))
    t = mge.tensor(x, device="cpu0")
    with GradManager().attach(t) as gm:
        y = fn(t, **kwargs)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    assert y.dtype == t.grad.dtype == np.float16
    np.testing.assert_array_equal(y.numpy(), ty.detach().half().numpy())
    np.testing.assert_array_equal(t.grad.numpy(), tx.grad.half().numpy())


@pytest.mark.parametrize("pool", [F.nn.max_pool2d, F.nn.avg_pool2d])
def test_a_3d_input_is_a_valueerror_and_upstreams_runtimeerror(pool):
    # megdnn's shape assertion is a RuntimeError: code catching it catches ours too
    x = mge.tensor(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="expected a 4-d input"):
        pool(x, 2)
    with pytest.raises(RuntimeError, match="expected a 4-d input"):
        pool(x, 2)
    # and an input smaller than the window (megdnn's shape deduction asserts)
    with pytest.raises(RuntimeError, match="smaller than the window"):
        pool(mge.tensor(np.zeros((1, 1, 2, 4), np.float32)), 3)


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.adaptive_avg_pool2d(x[0], (2, 2)),
                 RuntimeError, r"expected a 4-d input \(N, C, H, W\)", id="adaptive_avg-3d"),
    pytest.param(lambda x: F.adaptive_max_pool2d(x[0], (2, 2)),
                 RuntimeError, r"expected a 4-d input \(N, C, H, W\)", id="adaptive_max-3d"),
    pytest.param(lambda x: F.adaptive_avg_pool2d(x, (-1, 2)),
                 RuntimeError, "must be between 1 and the input's spatial size", id="adaptive-neg"),
    pytest.param(lambda x: F.adaptive_max_pool2d(x, 0),
                 RuntimeError, "must be between 1 and the input's spatial size", id="adaptive-0"),
    pytest.param(lambda x: F.max_pool2d(x, -2),
                 RuntimeError, "must be positive and padding", id="max_pool2d-negative"),
    pytest.param(lambda x: F.avg_pool2d(x, 2, mode="bogus"),
                 RuntimeError, "mode must be one of", id="avg_pool2d-mode"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: a 3-d input and a bad output size fail in its C++ checks
    # (RuntimeError; an output size 0 crashed the process), a negative window or an unknown
    # mode in pybind's "Unable to cast" (RuntimeError); earlier
    # versions of this fork raised a plain ValueError. The error is also a ValueError (what
    # the mistake is) and says what was wrong
    raises_as_upstream(call, (1, 2, 5, 5), upstream, match)


@pytest.mark.parametrize("kernel", [("2", 2), (2.5, 2), "22"])
def test_pooling_of_a_string_or_fractional_window_raises(kernel):
    # int() parsed "2" and truncated 2.5; upstream 1.13 refuses them ("Unable to cast")
    x = mge.tensor(np.ones((1, 1, 4, 4), np.float32))
    for f, name in ((F.max_pool2d, "max_pool2d"), (F.avg_pool2d, "avg_pool2d")):
        with pytest.raises(RuntimeError, match=f"^{name}: kernel_size must be an int or a pair"):
            f(x, kernel)


def test_max_pooling_of_an_odd_plane_on_a_gpu_reads_nothing_back(monkeypatch):
    # windows side by side on a plane they do not tile: the one-kernel backward, not the ATen
    # path per kernel tap (`_tied_hits`, whose NaN test torch reads back to the host: a sync on
    # a real GPU, which the simulation's torch on the CPU does not count), the last row and
    # column getting no gradient
    from megengine.functional import pooling

    rt = simulated_gpu_runtime()

    def per_tap(self):
        raise AssertionError("the per-tap ATen path ran")

    monkeypatch.setattr(pooling._Pool2d, "_tied_hits", per_tap)
    xa = np.maximum(np.random.RandomState(0).randn(2, 3, 7, 9), 0).astype(np.float32)
    x = mge.tensor(xa, device="gpu0")
    gm = GradManager().attach(x)
    for _ in range(2):
        x.grad = None
        syncs = rt.syncs
        with gm:
            y = F.max_pool2d(x, 2)
            gm.backward((y * y).sum())
        assert rt.syncs == syncs
    t = torch.tensor(xa, requires_grad=True)
    ty = TF.max_pool2d(t, 2)
    (ty * ty).sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy())
    got = x.grad.numpy()
    np.testing.assert_allclose(got[:, :, :6, :8][got[:, :, :6, :8] != 0],
                               t.grad.numpy()[:, :, :6, :8][got[:, :, :6, :8] != 0], rtol=1e-6)
    assert (got[:, :, 6, :] == 0).all() and (got[:, :, :, 8] == 0).all()
