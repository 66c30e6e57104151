"""Tests for megengine/module/pixel_shuffle.py: PixelShuffle against torch.nn.PixelShuffle."""
import numpy as np
import pytest
import torch

import megengine.module as M
from tests.oracle import check_against_torch


@pytest.mark.parametrize("shape, r", [((2, 8, 3, 4), 2), ((3, 9, 2, 2), 3), ((2, 2, 8, 3, 3), 2)])
def test_matches_torch(shape, r):
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    check_against_torch(M.PixelShuffle(r), torch.nn.PixelShuffle(r), x)
