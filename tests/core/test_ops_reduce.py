"""Tests of the Reduce op (megengine/core/ops.py) on its ATen path: sum / mean / max / min of
float32 and float64 arrays from 8192 elements, against torch (values and gradients) and numpy."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.core import ops
from megengine.functional import _aten

from devices import host_default_device  # noqa: F401  (a fixture)

# the ATen path serves numpy arrays (CuPy's reductions stay on CUDA): on the host, also where
# the default device is a GPU (MGE_SIM_CUDA=1 or a real one)
pytestmark = pytest.mark.usefixtures("host_default_device")

MODES = ["sum", "mean", "max", "min"]
TORCH = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin}


def _on_aten(a):
    """Whether a forward result lives in torch's memory (the ATen path's zero-copy result)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a.base is not None


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,axis", [((97, 131), 1), ((97, 131), 0), ((97, 131), -1),
                                        ((17, 29, 23), (0, 2)), ((17, 29, 23), (-1, 0, 1))])
@pytest.mark.parametrize("keepdims", [False, True])
def test_large_reductions_match_torch_values_and_gradients(dtype, mode, shape, axis, keepdims):
    rs = np.random.RandomState(len(shape) * 10 + MODES.index(mode))
    a = rs.randn(*shape).astype(dtype)  # continuous values: no ties for max / min
    x = mge.Parameter(a, dtype=dtype)
    gm = GradManager().attach(x)
    with gm:
        y = getattr(F, mode)(x, axis=axis, keepdims=keepdims)
        dy = np.asarray(rs.randn(*y.shape), dtype)  # (0-d for every axis)
        gm.backward(y, mge.tensor(dy, dtype=dtype))
    dims = (axis,) if isinstance(axis, int) else axis
    full = mode in ("max", "min") and len(dims) == len(shape)
    assert _on_aten(y._data) != full  # max / min over every axis stay on numpy
    t = torch.tensor(a, requires_grad=True)
    ty = TORCH[mode](t, dims, keepdims)
    ty.backward(torch.from_numpy(dy))
    assert y.dtype == dtype and y.shape == tuple(ty.shape)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **_tol(dtype))
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), **_tol(dtype))


@pytest.mark.parametrize("mode", MODES)
def test_aten_and_numpy_paths_agree_on_strided_broadcast_and_reversed_inputs(mode):
    rs = np.random.RandomState(3)
    base = rs.randn(203, 121).astype(np.float32)
    inputs = {"transposed": base.T, "every other column": base[:, ::2],
              "reversed rows": base[::-1], "broadcast row": np.broadcast_to(base[:1], (203, 121)),
              "broadcast column": np.broadcast_to(base[:, :1], (203, 121))}
    for what, a in inputs.items():
        if a.size < ops._ATEN_REDUCE_MIN:
            a = np.concatenate([a, a], axis=1)
        for axis in (0, 1, (0, 1)):
            got = ops.Reduce(mode, axis, keepdims=True).forward(a)
            with _aten.avoided("reduce"):
                want = ops.Reduce(mode, axis, keepdims=True).forward(a)
            assert not _on_aten(want)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=what)
            np.testing.assert_allclose(
                got, getattr(np, mode)(a.astype(np.float64), axis=axis, keepdims=True),
                rtol=1e-5, atol=1e-4, err_msg=what)


@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_on_the_aten_path_as_on_numpy(mode):
    a = np.random.RandomState(4).randn(64, 200).astype(np.float32)
    a[5, 17] = np.nan
    got = getattr(F, mode)(mge.tensor(a), axis=1).numpy()
    assert np.isnan(got[5]) and np.isfinite(np.delete(got, 5)).all()
    np.testing.assert_allclose(got, TORCH[mode](torch.from_numpy(a), (1,)).numpy(), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_ties_on_the_aten_path_give_every_tied_element_the_whole_gradient(mode):
    # upstream's rule (torch shares the gradient among ties instead): hand-computed oracle
    a = np.random.RandomState(5).randint(-3, 4, (128, 100)).astype(np.float64)
    x = mge.Parameter(a, dtype=np.float64)
    gm = GradManager().attach(x)
    dy = np.arange(1.0, 129.0)
    with gm:
        y = getattr(F, mode)(x, axis=1)
        gm.backward(y, mge.tensor(dy, dtype=np.float64))
    assert _on_aten(y._data)
    extreme = getattr(a, mode)(axis=1, keepdims=True)
    np.testing.assert_array_equal(y.numpy(), extreme[:, 0])
    np.testing.assert_array_equal(x.grad.numpy(), (a == extreme) * dy[:, None])
    assert ((a == extreme).sum(axis=1) > 1).any()  # the case has ties


def test_small_inputs_integers_float16_and_prod_stay_on_numpy_with_their_dtype_rules():
    small = np.ones((64, 64), np.float32)  # 4096 elements: below the threshold
    assert not _on_aten(ops.Reduce("sum", 1).forward(small))
    # int8 sums wrap and keep int8 (upstream's rule): 128 ones to -128
    s = F.sum(mge.tensor(np.ones((128, 128), np.int8), dtype=np.int8), axis=1)
    assert s.dtype == np.int8 and (s.numpy() == -128).all()
    # integer means are float32
    m = F.mean(mge.tensor(np.arange(128 * 128, dtype=np.int32).reshape(128, 128)), axis=0)
    assert m.dtype == np.float32
    np.testing.assert_allclose(m.numpy(), np.arange(128 * 128).reshape(128, 128).mean(0))
    h = np.random.RandomState(6).rand(128, 128).astype(np.float16)
    out = ops.Reduce("sum", 1).forward(h)
    assert out.dtype == np.float16 and not _on_aten(out)
    p = ops.Reduce("prod", 1).forward(np.full((128, 128), 1.01, np.float32))
    assert not _on_aten(p)
    np.testing.assert_allclose(p, np.full(128, 1.01 ** 128), rtol=1e-4)


def test_axis_none_and_empty_axis_tuple():
    a = np.random.RandomState(7).randn(90, 100).astype(np.float64)
    s = F.sum(mge.tensor(a, dtype=np.float64))
    assert s.shape == () and _on_aten(s._data)
    np.testing.assert_allclose(s.numpy(), a.sum(), rtol=1e-12)
    m = F.max(mge.tensor(a, dtype=np.float64))  # every axis: numpy's
    assert not _on_aten(m._data) and m.numpy() == a.max()
    same = ops.Reduce("sum", (), keepdims=True).forward(a)  # no axis reduced: x itself
    np.testing.assert_array_equal(same, a)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_second_order_through_a_large_reduction_matches_torch(mode):
    from oracle import check_second_order_against_torch

    a = np.random.RandomState(8).uniform(-1, 1, (96, 101)).astype(np.float32)
    weights = np.linspace(-1, 1, 96).astype(np.float32)
    assert _on_aten(ops.Reduce(mode, 1).forward(a))
    check_second_order_against_torch(
        lambda x: (getattr(F, mode)(x * x * x, axis=1) * mge.tensor(weights)).sum(),
        lambda t: (TORCH[mode](t * t * t, (1,)) * torch.from_numpy(weights)).sum(), a)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_max_min_over_the_last_axis_of_many_short_rows_take_aten_below_the_size_threshold(mode):
    a = np.random.RandomState(9).randn(257, 5).astype(np.float32)  # 257 rows of 5
    x = mge.Parameter(a)
    gm = GradManager().attach(x)
    with gm:
        y = getattr(F, mode)(x, axis=-1)
        gm.backward(y, mge.tensor(np.arange(257, dtype=np.float32)))
    assert _on_aten(y._data)
    t = torch.tensor(a, requires_grad=True)
    ty = TORCH[mode](t, (1,))
    ty.backward(torch.arange(257.0))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())
    # 63 rows, or a reduction over the first axis: numpy's
    assert not _on_aten(ops.Reduce(mode, 1).forward(a[:63]))
    assert not _on_aten(ops.Reduce(mode, 0).forward(a))
