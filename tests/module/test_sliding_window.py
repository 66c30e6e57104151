"""SlidingWindow / SlidingWindowTranspose against torch's unfold / fold (same windows, reordered)."""
import numpy as np
import torch

import megengine as mge
import megengine.module as M


def test_sliding_window_matches_torch_unfold():
    x = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    out = M.SlidingWindow(kernel_size=3, padding=1, stride=2, dilation=2)(mge.tensor(x)).numpy()
    cols = torch.nn.functional.unfold(torch.from_numpy(x), 3, dilation=2, padding=1, stride=2)
    oh, ow = out.shape[2:4]
    # torch: (N, C*KH*KW, OH*OW) -> ours: (N, C, OH, OW, KH, KW)
    ref = cols.numpy().reshape(2, 3, 3, 3, oh, ow).transpose(0, 1, 4, 5, 2, 3)
    np.testing.assert_array_equal(out, ref)


def test_sliding_window_transpose_matches_torch_fold():
    windows = np.random.randn(1, 2, 3, 3, 2, 2).astype(np.float32)
    out = M.SlidingWindowTranspose((4, 4), kernel_size=2, padding=0, stride=1)(mge.tensor(windows))
    cols = torch.from_numpy(windows.transpose(0, 1, 4, 5, 2, 3).reshape(1, 2 * 4, 9))
    ref = torch.nn.functional.fold(cols, (4, 4), 2).numpy()
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-6)
