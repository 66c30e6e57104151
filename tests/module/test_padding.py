"""Tests for megengine/module/padding.py: Pad against upstream's documented outputs and torch."""
import numpy as np
import torch

import megengine as mge
import megengine.module as M
from tests.oracle import check_against_torch


def test_upstream_documented_examples():
    inp = mge.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = M.Pad(pad_width=((1, 1),), mode="constant")(inp).numpy()
    np.testing.assert_array_equal(out, [[0, 0, 0], [1, 2, 3], [4, 5, 6], [0, 0, 0]])
    out = M.Pad(pad_width=((1, 1),), mode="constant", constant_val=9)(inp).numpy()
    np.testing.assert_array_equal(out, [[9, 9, 9], [1, 2, 3], [4, 5, 6], [9, 9, 9]])
    out = M.Pad(pad_width=((1, 1), (1, 2)), mode="reflect")(inp).numpy()
    np.testing.assert_array_equal(out, [[5, 4, 5, 6, 5, 4], [2, 1, 2, 3, 2, 1],
                                        [5, 4, 5, 6, 5, 4], [2, 1, 2, 3, 2, 1]])
    out = M.Pad(pad_width=((1, 1), (1, 2)), mode="replicate")(inp).numpy()
    np.testing.assert_array_equal(out, [[1, 1, 2, 3, 3, 3], [1, 1, 2, 3, 3, 3],
                                        [4, 4, 5, 6, 6, 6], [4, 4, 5, 6, 6, 6]])


def test_gradients_match_torch():
    x = np.random.RandomState(0).randn(2, 3, 4, 5).astype(np.float32)
    width = ((0, 0), (0, 0), (1, 2), (2, 1))
    check_against_torch(M.Pad(width, mode="reflect"),
                        lambda t: torch.nn.functional.pad(t, (2, 1, 1, 2), mode="reflect"), x)
    check_against_torch(M.Pad(width, constant_val=-1.5),
                        lambda t: torch.nn.functional.pad(t, (2, 1, 1, 2), value=-1.5), x)


def test_pad_module_accepts_upstream_misspelt_keyword():
    # M.Pad(pad_witdth=...) is upstream 1.8-1.9's spelling
    inp = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = M.Pad(pad_witdth=((0, 0), (2, 1)), mode="replicate")(mge.tensor(inp)).numpy()
    np.testing.assert_array_equal(out, np.pad(inp, ((0, 0), (2, 1)), mode="edge"))
