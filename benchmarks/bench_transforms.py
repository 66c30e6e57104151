"""The data transforms' numpy resize against OpenCV's cv2.resize (which upstream's transforms
call) on a 224x224x3 uint8 image resized to 256x256 and to 112x112, per interpolation, in the
same process, as ratios; without cv2, against torch's interpolate for the modes it has.

    python benchmarks/bench_transforms.py [--steps N] [--repeats R] [--quick]

Before timing, each of our results is checked against the baseline's (to the level for uint8
against cv2, except INTER_CUBIC: a level at most, where OpenCV's x86-64 wheels use Intel IPP).
An interpolation this checkout refuses is reported and skipped (so the script also times an
older checkout for a before/after comparison).
"""
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS: one thread

import numpy as np  # noqa: E402

from megengine.data.transform.vision import functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

try:
    import cv2
except ImportError:
    cv2 = None

_NAMES = ["NEAREST", "LINEAR", "CUBIC", "AREA", "LANCZOS4"]


def _baseline(image, size, code):
    """cv2.resize, else torch's interpolate (nearest, bilinear and bicubic only), or None."""
    if cv2 is not None:
        cv2.setNumThreads(1)
        return lambda: cv2.resize(image, size[::-1], interpolation=code)
    import torch

    torch.set_num_threads(1)
    mode = {0: "nearest", 1: "bilinear", 2: "bicubic"}.get(code)
    if mode is None:
        return None
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    kw = {} if mode == "nearest" else {"align_corners": False}
    return lambda: torch.nn.functional.interpolate(t, size=size, mode=mode, **kw).round().clamp(0, 255).to(
        torch.uint8)[0].permute(1, 2, 0).numpy()


def main():
    args = _timing.parse_args(__doc__, steps=20, repeats=5, quick_steps=3, quick_repeats=1)
    print(_timing.machine_line())
    print("baseline:", "cv2 " + cv2.__version__ if cv2 is not None else "torch interpolate")
    image = np.random.RandomState(0).randint(0, 256, size=(224, 224, 3)).astype(np.uint8)
    for size in ((256, 256), (112, 112)):
        for code, name in enumerate(_NAMES):
            ours = lambda: F.resize(image, size, code)  # noqa: E731
            try:
                got = ours()
            except (NotImplementedError, ValueError) as e:
                print(f"224x224x3 -> {size[0]}x{size[1]} {name:9s} refused by this checkout: {e}")
                continue
            base = _baseline(image, size, code)
            if base is None:
                print(f"224x224x3 -> {size[0]}x{size[1]} {name:9s} ours only (no baseline)")
                continue
            diff = np.abs(got.astype(int) - base().reshape(got.shape)).max()
            allowed = 0 if cv2 is not None and code != 2 else 1
            if diff > allowed:
                sys.exit(f"{name}: ours and the baseline differ by {diff} levels; not timing")
            t = _timing.time_steps({"ours": ours, "base": base}, args.steps, args.repeats)
            print(f"224x224x3 -> {size[0]}x{size[1]} {name:9s} ours {t['ours'].median:8.3f} ms  "
                  f"baseline {t['base'].median:7.3f} ms  ratio {t['ours'].median / t['base'].median:6.1f}x"
                  f"  (best: {t['ours'].best / t['base'].best:6.1f}x)")


if __name__ == "__main__":
    main()
