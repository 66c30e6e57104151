"""Tests of megengine/module/batchnorm.py's eval call: shapes, values, hooks and labels on the common path."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from megengine import Tensor

from devices import host


def _pair(cls, tcls, c, seed=0):
    """(our layer, torch's) in eval mode with the same random affine parameters and stats."""
    rs = np.random.RandomState(seed)
    ours, theirs = cls(c), tcls(c)
    w, b = rs.uniform(0.5, 1.5, c).astype(np.float32), rs.randn(c).astype(np.float32)
    m, v = rs.randn(c).astype(np.float32) * 0.3, rs.uniform(0.5, 1.5, c).astype(np.float32)
    for t, a in ((ours.weight, w), (ours.bias, b), (ours.running_mean, m),
                 (ours.running_var, v)):
        t._reset(mge.tensor(a.reshape(t.shape)))
    with torch.no_grad():
        for t, a in ((theirs.weight, w), (theirs.bias, b), (theirs.running_mean, m),
                     (theirs.running_var, v)):
            t.copy_(torch.from_numpy(a))
    ours.eval()
    theirs.eval()
    return ours, theirs


@pytest.mark.parametrize("cls,tcls,shape", [
    (M.BatchNorm2d, torch.nn.BatchNorm2d, (1, 5, 3, 7)),
    (M.BatchNorm1d, torch.nn.BatchNorm1d, (4, 5)),
    (M.BatchNorm1d, torch.nn.BatchNorm1d, (2, 5, 9)),
])
def test_eval_batch_norm_keeps_the_input_shape_and_matches_torch(cls, tcls, shape):
    ours, theirs = _pair(cls, tcls, shape[1])
    a = np.random.RandomState(1).randn(*shape).astype(np.float32)
    out = ours(mge.tensor(a))
    with torch.no_grad():
        expect = theirs(torch.from_numpy(a)).numpy()
    assert out.shape == shape
    np.testing.assert_allclose(host(out), expect, rtol=1e-5, atol=1e-5)


def test_eval_batch_norm_refuses_bad_inputs_with_the_reason():
    bn, _ = _pair(M.BatchNorm2d, torch.nn.BatchNorm2d, 3)
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected a 4-d NCHW input, got shape"):
        bn(mge.tensor(np.ones((2, 3, 4), np.float32)))
    with pytest.raises(ValueError, match=r"running_mean of shape \(1, 3, 1, 1\) does not match "
                                         "4 channels"):
        bn(mge.tensor(np.ones((2, 4, 2, 2), np.float32)))
    off = M.BatchNorm2d(3, track_running_stats=False)
    off.track_running_stats = True
    with pytest.raises(ValueError, match="track_running_stats was False at construction"):
        off(mge.tensor(np.ones((2, 3, 2, 2), np.float32)))


def test_eval_batch_norm_runs_hooks_and_keeps_a_format_label():
    bn, theirs = _pair(M.BatchNorm2d, torch.nn.BatchNorm2d, 3)
    seen = []
    bn.register_forward_pre_hook(lambda m, inputs: seen.append("pre"))
    bn.register_forward_hook(lambda m, inputs, out: out * 2)
    nchw = np.random.RandomState(2).randn(2, 3, 4, 5).astype(np.float32)
    x = Tensor(nchw, format="nhwc")
    out = bn(x)
    assert seen == ["pre"] and out.format == "nhwc" and out.shape == (2, 3, 4, 5)
    with torch.no_grad():
        expect = theirs(torch.from_numpy(nchw)).numpy() * 2  # the forward hook's output
    np.testing.assert_allclose(host(out), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, tcls, shape", [(M.BatchNorm1d, torch.nn.BatchNorm1d, (1, 3)),
                                              (M.BatchNorm1d, torch.nn.BatchNorm1d, (1, 3, 1)),
                                              (M.BatchNorm2d, torch.nn.BatchNorm2d, (1, 3, 1, 1))])
def test_training_on_one_value_per_channel_is_refused_as_torch(cls, tcls, shape):
    # upstream 1.13 measured on these shapes: zeros out and running_var [nan nan nan] (the
    # variance of one value divided by 0); torch raises ValueError ("Expected more than 1
    # value per channel when training"). Earlier versions of this fork gave zeros and a
    # running_var of 0.9. Nothing changes; eval mode and a batch of two still work.
    x = np.arange(1, 4, dtype=np.float32).reshape(shape)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        tcls(3)(torch.tensor(x))
    bn = cls(3)
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\.eval\(\)"):
        bn(Tensor(x))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones((1, 3, 1, 1)))
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros((1, 3, 1, 1)))
    untracked = cls(3, track_running_stats=False)
    untracked.eval()  # (no running statistics: batch statistics still)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        untracked(Tensor(x))
    bn.eval()
    np.testing.assert_allclose(bn(Tensor(x)).numpy(), x / np.sqrt(1 + 1e-5), rtol=1e-6)
    bn.train()
    assert bn(Tensor(np.concatenate([x, x + 1]))).shape == (2,) + shape[1:]


def test_sync_batch_norm_on_one_process_refuses_one_value_per_channel_as_batch_norm():
    # one process: SyncBatchNorm is BatchNorm (its statistics are this process's batch), so
    # it has BatchNorm's rule (torch's SyncBatchNorm raises the same ValueError where the
    # world has one process). Distributed, the values of all ranks count.
    x = np.arange(1, 4, dtype=np.float32).reshape(1, 3, 1, 1)
    bn = M.SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"SyncBatchNorm: expected more than 1 value per"):
        bn(Tensor(x))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones((1, 3, 1, 1)))
    two = np.concatenate([x, x + 1])
    expect = torch.nn.BatchNorm2d(3)(torch.tensor(two)).detach().numpy()
    np.testing.assert_allclose(bn(Tensor(two)).numpy(), expect, rtol=1e-5, atol=1e-5)
