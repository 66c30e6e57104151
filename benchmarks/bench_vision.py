"""Forward + backward time of F.vision's sampler (remap, warp_perspective) and F.nn.ctc_loss
against PyTorch's kernels for the same work (grid_sample, ctc_loss), same process, as ratios.

    python benchmarks/bench_vision.py [--steps N] [--repeats R] [--quick]

Each pair is checked to give the same values before it is timed. Thread counts are pinned to 1
(OMP/OPENBLAS/MKL_NUM_THREADS, set below with setdefault before numpy is imported); figures are
medians over repeats, the variants taking turns call by call (see _timing.py).
"""
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS: one thread

import numpy as np  # noqa: E402
import torch  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402


def _mge_step(fn, *arrays):
    xs = [mge.tensor(a) for a in arrays]
    gm = GradManager().attach(xs)

    def step():
        with gm:
            out = fn(*xs)
            gm.backward(out.sum())
        return out
    return step


def _torch_step(fn, *arrays):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]

    def step():
        for t in ts:
            t.grad = None
        out = fn(*ts)
        out.sum().backward()
        return out
    return step


def _grid(img, x, y):
    h, w = img.shape[2:]
    grid = torch.stack([x / (w - 1) * 2 - 1, y / (h - 1) * 2 - 1], dim=-1)
    return torch.nn.functional.grid_sample(img, grid, padding_mode="border", align_corners=True)


def cases():
    rs = np.random.RandomState(0)
    img = rs.randn(8, 16, 64, 64).astype(np.float32)
    pts = np.stack([rs.uniform(-2, 65, (8, 48, 48)), rs.uniform(-2, 65, (8, 48, 48))], -1)
    pts = pts.astype(np.float32)
    yield ("remap 8x16x64x64 -> 48x48", _mge_step(F.vision.remap, img, pts),
           _torch_step(lambda i, m: _grid(i, m[..., 0], m[..., 1]), img, pts))

    mat = (np.eye(3) + rs.uniform(-0.02, 0.02, (8, 3, 3))).astype(np.float32)

    def torch_warp(i, m):
        hh, ww = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
        q = torch.einsum("bij,hwj->bhwi", m, torch.stack([ww, hh, torch.ones_like(ww)], -1))
        return _grid(i, q[..., 0] / q[..., 2], q[..., 1] / q[..., 2])

    yield ("warp_perspective 8x16x64x64 -> 48x48",
           _mge_step(lambda i, m: F.vision.warp_perspective(i, m, (48, 48)), img, mat),
           _torch_step(torch_warp, img, mat))

    t, n, c, s = 50, 16, 20, 12
    logits = rs.randn(t, n, c).astype(np.float32)
    label = rs.randint(1, c, (n, s)).astype(np.int32)
    lengths, label_lengths = np.full(n, t, np.int32), rs.randint(4, s + 1, n).astype(np.int32)
    yield ("ctc_loss T=50 N=16 C=20 S=12",
           _mge_step(lambda z: F.nn.ctc_loss(F.softmax(z, axis=-1), lengths, label,
                                             label_lengths), logits),
           _torch_step(lambda z: torch.nn.functional.ctc_loss(
               z.log_softmax(-1), torch.tensor(label), torch.tensor(lengths),
               torch.tensor(label_lengths)), logits))


def main():
    args = _timing.parse_args(__doc__, steps=10, repeats=5, quick_steps=2, quick_repeats=1)
    torch.set_num_threads(1)
    print(_timing.machine_line())
    for name, ours, theirs in cases():
        a, b = ours(), theirs()
        if not np.allclose(a.numpy(), b.detach().numpy(), rtol=1e-4, atol=1e-4):
            sys.exit(f"{name}: megengine and torch disagree; not timing")
        times = _timing.time_steps({"megengine": ours, "torch": theirs}, args.steps, args.repeats)
        m, t_ = times["megengine"], times["torch"]
        print(f"{name:40s} megengine {m.median:8.2f} ms  torch {t_.median:8.2f} ms  "
              f"ratio {m.median / t_.median:5.2f}x (best-of ratio {m.best / t_.best:5.2f}x)")
        _timing.flush()


if __name__ == "__main__":
    main()
