"""Forward + backward time of F.vision.roi_align on FPN levels of a detection-sized image,
against the same sampling written with PyTorch tensor ops (gather the four bilinear corners of
every sample, autograd's scatter-add backward), same process, as ratios.

    python benchmarks/bench_roi_align.py [--steps N] [--repeats R] [--quick]

The levels are those of an 800x1216 image (strides 4 to 32, 256 channels, batch 2) with 512
rois whose sizes fit the level, as FPN's level assignment (canonical 224 px at stride 16) gives:
two-stage detectors (crowddet, Faster R-CNN) pool every roi this way. Each pair is checked to
give the same values before it is timed; one thread each.
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

POOLED, SAMPLES = 7, 2


def _torch_roi_align(img, rois, scale):
    """megdnn's roi_align (aligned, average, 2x2 samples, zeros outside) with torch ops."""
    n, c, h, w = img.shape
    b = rois[:, 0].long()
    start = rois[:, 1:3] * scale - 0.5
    size = (rois[:, 3:5] * scale - 0.5 - start).clamp(min=0)
    steps = (torch.arange(POOLED)[:, None] + (torch.arange(SAMPLES) + 0.5) / SAMPLES).reshape(-1)
    ys = start[:, 1:2] + size[:, 1:2] / POOLED * steps  # (K, S)
    xs = start[:, 0:1] + size[:, 0:1] / POOLED * steps
    y0, x0 = ys.floor(), xs.floor()
    fy, fx = ys - y0, xs - x0
    out = 0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = (y0 + dy).long(), (x0 + dx).long()
            ok = ((yi >= 0) & (yi < h))[:, :, None] & ((xi >= 0) & (xi < w))[:, None, :]
            v = img[b[:, None, None], :, yi.clamp(0, h - 1)[:, :, None], xi.clamp(0, w - 1)[:, None, :]]
            out = out + v * (wy[:, :, None] * wx[:, None, :] * ok)[..., None]  # (K, S, S, C)
    k = rois.shape[0]
    out = out.reshape(k, POOLED, SAMPLES, POOLED, SAMPLES, c).mean((2, 4))
    return out.permute(0, 3, 1, 2)


def cases():
    rs = np.random.RandomState(0)
    height, width, k = 800, 1216, 512
    for stride in (4, 8, 16, 32):
        h, w = height // stride, width // stride
        img = rs.randn(2, 256, h, w).astype(np.float32)
        side = 224 * stride / 16 * rs.uniform(0.7, 1.4, (k, 2))  # the level's roi sizes
        xy = rs.uniform(0, 1, (k, 2)) * ([width, height] - side)
        rois = np.concatenate([rs.randint(0, 2, (k, 1)), xy, xy + side], 1).astype(np.float32)

        xm = mge.tensor(img)
        gm = GradManager().attach([xm])

        def ours(xm=xm, gm=gm, rois=rois, stride=stride):
            with gm:
                out = F.vision.roi_align(xm, rois, (POOLED, POOLED), spatial_scale=1 / stride,
                                         sample_points=SAMPLES, aligned=True)
                gm.backward(out.sum())
            return out.numpy()

        xt = torch.tensor(img, requires_grad=True)
        rt = torch.tensor(rois)

        def theirs(xt=xt, rt=rt, stride=stride):
            xt.grad = None
            out = _torch_roi_align(xt, rt, 1 / stride)
            out.sum().backward()
            return out.detach().numpy()

        yield f"stride {stride:2d}: 2x256x{h}x{w}, {k} rois", ours, theirs


def main():
    args = _timing.parse_args(__doc__, steps=5, repeats=3, quick_steps=1, quick_repeats=1)
    torch.set_num_threads(1)
    print(_timing.machine_line())
    for name, ours, theirs in cases():
        if not np.allclose(ours(), theirs(), rtol=1e-4, atol=1e-4):
            sys.exit(f"{name}: megengine and torch disagree; not timing")
        times = _timing.time_steps({"megengine": ours, "torch": theirs}, args.steps, args.repeats,
                                   warmup=1)
        m, t_ = times["megengine"], times["torch"]
        print(f"{name:34s} megengine {m.median:8.1f} ms  torch ops {t_.median:8.1f} ms  "
              f"ratio {m.median / t_.median:5.2f}x (best-of ratio {m.best / t_.best:5.2f}x)")
        _timing.flush()


if __name__ == "__main__":
    main()
