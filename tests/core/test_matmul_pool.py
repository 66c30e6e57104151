"""Matrix products of float32/float64 numpy arrays run on ATen (torch's thread pool) from the sizes
at which numpy's BLAS would start threads of its own (`megengine/core/ops.py` ``matmul``); below
them, and for other dtypes, numpy computes them (float16 products: as float32 ones, rounded). Values and gradients are checked against float64
numpy products on both paths (interpolation against torch's); which path ran is counted through
the op's ATen entry."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager
from megengine.core import ops as core_ops
from megengine.functional import _aten
from devices import host_default_device, record_aten_matmuls  # noqa: F401  (a fixture)

# the CPU's paths (numpy arrays), also on a machine whose default device is a GPU
pytestmark = pytest.mark.usefixtures("host_default_device")


@pytest.fixture
def aten_calls(monkeypatch):
    """The matrix products (their operand shapes) the engine sent to ATen from here on."""
    return record_aten_matmuls(monkeypatch)


def _summed_to(g, shape):
    """``g`` summed over the dims that broadcasting added or stretched to reach its shape."""
    g = g.sum(tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    return g.sum(tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1),
                 keepdims=True)


def _products(a, b, g):
    """``a @ b`` and the gradients of <a @ b, g> in float64 (numpy's own matmul)."""
    a64, b64, g64 = (np.asarray(v, np.float64) for v in (a, b, g))
    a2 = a64[None] if a64.ndim == 1 else a64
    b2 = b64[:, None] if b64.ndim == 1 else b64
    g2 = g64.reshape(np.matmul(a2, b2).shape)
    ga = _summed_to(np.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape)
    gb = _summed_to(np.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape)
    return a64 @ b64, ga.reshape(a.shape), gb.reshape(b.shape)


def _engine(a, b, g):
    ta, tb = mge.tensor(a, dtype=a.dtype), mge.tensor(b, dtype=b.dtype)
    gm = GradManager().attach([ta, tb])
    with gm:
        y = F.matmul(ta, tb)
        gm.backward(y, mge.tensor(g, dtype=g.dtype))
    return y.numpy(), ta.grad.numpy(), tb.grad.numpy()


# (a's shape, b's shape, products on ATen per forward + backward): above the sizes numpy's BLAS
# threads (m * n * k > 4 * 65536, a matrix-vector product from 9216 matrix elements), below
# them, and batched shapes (equal batch dims, a matrix against a batch, broadcast batch dims)
CASES = [
    ((64, 256), (256, 128), 3),  # 2.1M multiply-adds per product
    ((32, 64), (64, 32), 0),  # 65536: numpy's BLAS runs it on the calling thread
    ((128, 128), (128, 16), 0),  # 262144 exactly: not above the threshold
    ((4, 64, 96), (4, 96, 80), 3),  # batched, 491520 per matrix
    ((64, 96), (4, 96, 80), 3),  # a matrix against a batch: a's gradient sums the batch
    ((4, 64, 96), (96, 80), 3),  # a batch against a matrix: forward's one 2-D product
    ((2, 1, 64, 96), (1, 3, 96, 80), 0),  # broadcast batch dims: numpy's matmul
    ((96,), (96, 128), 2),  # vector @ matrix: 12288 matrix elements; b's gradient is an
                            # outer product, k = 1: a matrix product far below the sizes
    ((40, 96), (96,), 0),  # matrix @ vector of 3840 elements: below 9216
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("a_shape,b_shape,on_aten", CASES)
def test_products_above_blas_threading_sizes_run_on_aten_with_numpy_values(
        a_shape, b_shape, on_aten, dtype, aten_calls):
    rs = np.random.RandomState(0)
    a = rs.randn(*a_shape).astype(dtype)
    b = rs.randn(*b_shape).astype(dtype)
    y_shape = np.matmul(a, b).shape
    g = rs.randn(*y_shape).astype(dtype)
    expect = _products(a, b, g)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    got = _engine(a, b, g)
    assert len(aten_calls) == on_aten, aten_calls
    for v, e in zip(got, expect):
        assert v.dtype == np.dtype(dtype)
        np.testing.assert_allclose(v, e, **tol)
    aten_calls.clear()
    with _aten.avoided("gemm"):  # numpy's BLAS all the way: the same values
        again = _engine(a, b, g)
    assert aten_calls == []
    for v, e in zip(again, expect):
        np.testing.assert_allclose(v, e, **tol)


def test_linear_layer_sends_its_three_large_products_to_aten(aten_calls):
    rs = np.random.RandomState(1)
    layer = M.Linear(1024, 1000)
    x = mge.tensor(rs.randn(8, 1024).astype("float32"))
    gm = GradManager().attach([x] + list(layer.parameters()))
    g = rs.randn(8, 1000).astype("float32")
    with gm:
        y = layer(x)
        gm.backward(y, mge.tensor(g))
    assert len(aten_calls) == 3  # forward, x's gradient, the weight's gradient
    w = layer.weight.numpy().astype(np.float64)
    x64, g64 = x.numpy().astype(np.float64), g.astype(np.float64)
    np.testing.assert_allclose(y.numpy(), x64 @ w.T + layer.bias.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x.grad.numpy(), g64 @ w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.weight.grad.numpy(), g64.T @ x64, rtol=1e-4, atol=1e-4)

    aten_calls.clear()
    small = M.Linear(84, 10)  # the guide's classifier at batch 8: numpy, on the calling thread
    small(mge.tensor(rs.randn(8, 84).astype("float32")))
    assert aten_calls == []


@pytest.mark.parametrize("dtype", ["int32", "complex64"])
def test_other_dtypes_stay_on_numpy(dtype, aten_calls):
    rs = np.random.RandomState(2)
    a = (rs.randn(64, 256) * 4).astype(dtype)
    b = (rs.randn(256, 128) * 4).astype(dtype)
    y = F.matmul(mge.tensor(a), mge.tensor(b)).numpy()
    assert aten_calls == []
    expect = np.matmul(a.astype(np.complex128 if dtype == "complex64" else np.float64), b)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-3)


def _f16_steps(y, exact, mag):
    """How many float16 steps each of ``y`` lies from ``exact`` (float64), less what adding in
    float32 may lose where the terms cancel (1e-5 of ``mag``, the sum of their magnitudes)."""
    ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    return np.maximum(np.abs(y.astype(np.float64) - exact) - 1e-5 * mag, 0) / ulp


@pytest.mark.parametrize("sa,sb,calls", [
    ((64, 256), (256, 128), 3),  # large enough for ATen's float32 gemm
    ((4, 32), (32, 8), 0),  # numpy's float32 product
    ((2, 3, 40, 16), (2, 3, 16, 24), 0),  # batched
    ((16,), (16, 5), 0),  # a vector against a matrix
])
def test_float16_products_add_in_float32_and_round_once(sa, sb, calls, aten_calls):
    # float16 operands are multiplied as float32 (numpy has no float16 gemm: its own loop,
    # which adds in float32 as well, took 40-80x as long); the product and both gradients are
    # float16 within one float16 step of the float64 products, almost all of them equal to the
    # float64 value rounded once (a float16 sum would be off by many steps over 256 terms)
    rs = np.random.RandomState(5)
    a = rs.randn(*sa).astype(np.float16)
    b = rs.randn(*sb).astype(np.float16)
    y0 = np.matmul(a.astype(np.float64), b.astype(np.float64))
    g = rs.randn(*y0.shape).astype(np.float16)
    y, ga, gb = _engine(a, b, g)
    assert y.dtype == ga.dtype == gb.dtype == np.float16
    mags = _products(np.abs(a), np.abs(b), np.abs(g))
    for got, exact, mag in zip((y, ga, gb), _products(a, b, g), mags):
        steps = _f16_steps(got, exact, mag)
        assert steps.max() <= 1
        assert np.mean(steps > 0.5) < 0.01
    assert len(aten_calls) == calls


def test_float16_matmul_out_takes_the_rounded_product():
    rs = np.random.RandomState(6)
    a = rs.randn(8, 24).astype(np.float16)
    b = rs.randn(24, 6).astype(np.float16)
    out = np.full((8, 6), np.nan, np.float16)
    assert core_ops.matmul(a, b, out=out) is out
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert _f16_steps(out, exact, np.abs(a).astype(np.float64) @ np.abs(b)).max() <= 1


def test_matmul_out_writes_the_given_array_on_both_paths(aten_calls):
    rs = np.random.RandomState(3)
    for m, k, n, calls in ((64, 256, 128, 1), (4, 8, 8, 0)):
        a = rs.randn(m, k).astype("float32")
        b = rs.randn(k, n).astype("float32")
        out = np.full((m, n), np.nan, np.float32)
        assert core_ops.matmul(a, b, out=out) is out
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
        assert len(aten_calls) == calls
        aten_calls.clear()


def test_noncontiguous_and_reversed_operands_give_numpys_product(aten_calls):
    rs = np.random.RandomState(4)
    a = rs.randn(256, 128).astype("float32")[::-2, ::1]  # negative row stride, every other row
    b = np.asfortranarray(rs.randn(128, 96).astype("float32"))
    y = core_ops.matmul(a, b)
    assert len(aten_calls) == 1
    np.testing.assert_allclose(y, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def test_interpolation_products_run_on_aten_and_match_torch(aten_calls):
    # bilinear resizing is two products with the resampling matrices; from 64 x 64 to 128 x 128
    # the first is 64 x 64 x 128 per channel, above the threading size
    import torch

    rs = np.random.RandomState(6)
    x = rs.randn(2, 3, 64, 64).astype("float32")
    g = rs.randn(2, 3, 128, 128).astype("float32")
    tx = mge.tensor(x)
    gm = GradManager().attach([tx])
    with gm:
        y = F.vision.interpolate(tx, size=(128, 128), mode="bilinear", align_corners=False)
        gm.backward(y, mge.tensor(g))
    assert len(aten_calls) >= 2
    rx = torch.tensor(x, requires_grad=True)
    ry = torch.nn.functional.interpolate(rx, size=(128, 128), mode="bilinear",
                                         align_corners=False)
    ry.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), ry.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tx.grad.numpy(), rx.grad.numpy(), rtol=1e-4, atol=1e-4)
