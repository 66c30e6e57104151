"""Tests for M.SyncBatchNorm: over 3 ranks with unequal batches it equals torch's BatchNorm on the concatenated batch."""
import numpy as np
import pytest

import megengine as mge
import megengine.distributed as dist
import megengine.module as M
from megengine.autodiff import GradManager

SIZES = (2, 3, 4)  # per-rank batch sizes: SyncBatchNorm allows them to differ
C = 3


def _data(rank, ndim):
    rng = np.random.RandomState(10 + rank)
    shape = (SIZES[rank], C) + (2, 3)[: ndim - 2]
    return rng.randn(*shape).astype("float32") * 2 + 1, rng.randn(*shape).astype("float32")


def _affine():
    return np.array([1.5, -0.5, 2.0], np.float32), np.array([0.1, 0.2, -0.3], np.float32)


def _worker(ndim):
    rank = dist.get_rank()
    x_np, w_np = _data(rank, ndim)
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


@pytest.mark.parametrize("ndim", [4, 2], ids=["NCHW", "NC"])
def test_sync_batchnorm_equals_torch_batchnorm_on_the_whole_batch(run_ranks, ndim):
    import torch

    results = run_ranks(_worker, len(SIZES), ndim)
    xs, ws = zip(*(_data(r, ndim) for r in range(len(SIZES))))
    x = torch.tensor(np.concatenate(xs), requires_grad=True)
    ref = (torch.nn.BatchNorm2d if ndim == 4 else torch.nn.BatchNorm1d)(C, momentum=0.1)
    weight, bias = _affine()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(weight))
        ref.bias.copy_(torch.tensor(bias))
    out = ref(x)
    (out * torch.tensor(np.concatenate(ws))).sum().backward()
    ref.eval()
    evaluated = ref(x).detach().numpy()
    bounds = np.cumsum((0,) + SIZES)
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


def test_sync_batchnorm_not_distributed_is_batchnorm():
    x = mge.tensor(np.random.RandomState(0).randn(4, C, 2, 2).astype("float32"))
    sync, plain = M.SyncBatchNorm(C), M.BatchNorm2d(C)
    np.testing.assert_allclose(sync(x).numpy(), plain(x).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sync.running_var.numpy(), plain.running_var.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="2-d, 3-d or 4-d"):
        sync(mge.tensor(np.zeros((2,), np.float32)))
