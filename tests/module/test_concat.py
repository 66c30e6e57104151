"""Tests for megengine/module/concat.py: Concat against torch.cat."""
import numpy as np
import torch

import megengine.module as M
from tests.oracle import check_against_torch


def test_concat_axis_and_gradients():
    rs = np.random.RandomState(0)
    a, b, c = rs.randn(2, 3), rs.randn(2, 1), rs.randn(2, 2)
    arrays = [x.astype(np.float32) for x in (a, b, c)]
    check_against_torch(lambda *xs: M.Concat()(xs, axis=1), lambda *ts: torch.cat(ts, 1), *arrays)
    d = rs.randn(1, 3).astype(np.float32)
    check_against_torch(lambda *xs: M.Concat()(xs), lambda *ts: torch.cat(ts, 0), arrays[0], d)
