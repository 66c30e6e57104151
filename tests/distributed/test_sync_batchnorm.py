"""Tests for M.SyncBatchNorm and F.nn.sync_batch_norm on ranks: with unequal batches, or one value per rank, they equal torch's BatchNorm on the concatenated batch."""
import numpy as np
import pytest

import megengine as mge
import megengine.distributed as dist
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager

C = 3
# per-rank batch sizes (SyncBatchNorm allows them to differ) and spatial dims of each case
CASES = {"NCHW": ((2, 3, 4), (2, 3)), "NC": ((2, 3, 4), ()),
         "one value per rank": ((1, 1), (1, 1))}


def _data(rank, sizes, spatial):
    rng = np.random.RandomState(10 + rank)
    shape = (sizes[rank], C) + spatial
    return rng.randn(*shape).astype("float32") * 2 + 1, rng.randn(*shape).astype("float32")


def _affine():
    return np.array([1.5, -0.5, 2.0], np.float32), np.array([0.1, 0.2, -0.3], np.float32)


def _worker(sizes, spatial):
    rank = dist.get_rank()
    x_np, w_np = _data(rank, sizes, spatial)
    bn = M.SyncBatchNorm(C)
    weight, bias = _affine()
    bn.weight._reset(mge.tensor(weight.reshape(1, C, 1, 1)))
    bn.bias._reset(mge.tensor(bias.reshape(1, C, 1, 1)))
    x = mge.Parameter(x_np)
    gm = GradManager().attach([x, bn.weight, bn.bias])
    with gm:
        out = bn(x)
        gm.backward((out * mge.tensor(w_np)).sum())
    bn.eval()
    evaluated = bn(mge.tensor(x_np)).numpy()
    return dict(out=out.numpy(), dx=x.grad.numpy(), dweight=bn.weight.grad.numpy().ravel(),
                dbias=bn.bias.grad.numpy().ravel(), mean=bn.running_mean.numpy().ravel(),
                var=bn.running_var.numpy().ravel(), eval=evaluated)


@pytest.mark.parametrize("case", list(CASES))
def test_sync_batchnorm_equals_torch_batchnorm_on_the_whole_batch(run_ranks, case):
    import torch

    sizes, spatial = CASES[case]
    results = run_ranks(_worker, len(sizes), sizes, spatial)
    xs, ws = zip(*(_data(r, sizes, spatial) for r in range(len(sizes))))
    x = torch.tensor(np.concatenate(xs), requires_grad=True)
    ref = (torch.nn.BatchNorm2d if spatial else torch.nn.BatchNorm1d)(C, momentum=0.1)
    weight, bias = _affine()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(weight))
        ref.bias.copy_(torch.tensor(bias))
    out = ref(x)
    (out * torch.tensor(np.concatenate(ws))).sum().backward()
    ref.eval()
    evaluated = ref(x).detach().numpy()
    bounds = np.cumsum((0,) + sizes)
    tol = dict(rtol=1e-5, atol=1e-5)
    for r, got in enumerate(results):
        part = slice(bounds[r], bounds[r + 1])
        np.testing.assert_allclose(got["out"], out.detach().numpy()[part], **tol)
        np.testing.assert_allclose(got["dx"], x.grad.numpy()[part], **tol)
        np.testing.assert_allclose(got["mean"], ref.running_mean.numpy(), **tol)
        np.testing.assert_allclose(got["var"], ref.running_var.numpy(), **tol)
        np.testing.assert_allclose(got["eval"], evaluated[part], **tol)
    # each rank's weight/bias gradient is its own part's; the ranks' sum is the whole batch's
    np.testing.assert_allclose(sum(g["dweight"] for g in results), ref.weight.grad.numpy(), **tol)
    np.testing.assert_allclose(sum(g["dbias"] for g in results), ref.bias.grad.numpy(), **tol)
    if case == "one value per rank":  # (the case earlier versions normalized to zeros)
        assert np.abs(results[0]["out"] - bias[None, :, None, None]).min() > 0.1


def _edge_worker():
    """One value per channel over both ranks (rank 1 empty), then an empty batch on both:
    what each call raised and the running statistics after it; then eps_mode="max"."""
    rank = dist.get_rank()
    bn = M.SyncBatchNorm(C)
    results = {}
    for name, n in (("one in all", 1 - rank), ("empty", 0)):
        x = mge.Parameter(np.full((n, C, 1), 3.0, np.float32))
        gm = GradManager().attach([x, bn.weight])
        try:
            with gm:
                out = bn(x)
                gm.backward(out.sum())
            error = None
        except ValueError as e:
            error = str(e)
        results[name] = (error, bn.running_mean.numpy().ravel(), bn.running_var.numpy().ravel())
    x = _data(rank, (2, 3), (2,))[0]
    x[:, 1] = 0.25 + 0.01 * x[:, 1]  # variance about 4e-4: below eps, so eps is used
    rm, rv = mge.tensor(np.zeros(C, "f4")), mge.tensor(np.ones(C, "f4"))
    out = F.nn.sync_batch_norm(mge.tensor(x), rm, rv, training=True, eps=1e-2, eps_mode="max")
    results["max"] = (out.numpy(), rm.numpy(), rv.numpy())
    return results


def test_sync_batchnorm_edge_cases_over_ranks(run_ranks):
    results = run_ranks(_edge_worker, 2)
    for got in results:
        # refused on every rank (none left waiting), as BatchNorm on one value per channel
        error, mean, var = got["one in all"]
        assert "expected more than 1 value per channel over the ranks" in error
        assert "call .eval()" in error
        np.testing.assert_array_equal(mean, np.zeros(C))
        np.testing.assert_array_equal(var, np.ones(C))
        # an empty batch over the group leaves the statistics alone, as BatchNorm's
        error, mean, var = got["empty"]
        assert error is None
        np.testing.assert_array_equal(mean, np.zeros(C))
        np.testing.assert_array_equal(var, np.ones(C))
    # eps_mode="max": divided by sqrt(max(var, eps)) of the whole batch (hand computation)
    xs = [_data(r, (2, 3), (2,))[0] for r in range(2)]
    for x in xs:
        x[:, 1] = 0.25 + 0.01 * x[:, 1]
    whole = np.concatenate(xs).astype(np.float64)
    mean, var = whole.mean(axis=(0, 2)), whole.var(axis=(0, 2))
    assert var[1] < 1e-2 < var[0]
    expect = (whole - mean[None, :, None]) / np.sqrt(np.maximum(var, 1e-2))[None, :, None]
    n = whole.size // C
    for got, part in zip(results, (slice(0, 2), slice(2, 5))):
        out, rm, rv = got["max"]
        np.testing.assert_allclose(out, expect[part], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rm, 0.1 * mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rv, 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_sync_batchnorm_not_distributed_is_batchnorm():
    x = mge.tensor(np.random.RandomState(0).randn(4, C, 2, 2).astype("float32"))
    sync, plain = M.SyncBatchNorm(C), M.BatchNorm2d(C)
    np.testing.assert_allclose(sync(x).numpy(), plain(x).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sync.running_var.numpy(), plain.running_var.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="2-d, 3-d or 4-d"):
        sync(mge.tensor(np.zeros((2,), np.float32)))
