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
