"""The fuzzer's special-values mode (``python -m tests.fuzz --special``): a drawn case whose
inputs include float32 tensors is run again with one to three elements of each replaced by
IEEE's special values (NaN, +inf, -inf, 0.0 or -0.0, each at most once per tensor, so that no
new ties appear), to find NaN and infinities lost or made on the way: a BLAS call that skips a
zero factor, a fast path that clamps, a reduction that drops a NaN. `converted_inputs`'s runner
runs it; the oracle is torch's op on the same float32 values:

- an output's dtype is torch's (or the case's), its NaN are where torch's are, its infinities
  are torch's, and its finite values are within the case's tolerance of torch's;
- where torch refuses the values (a probability of NaN for ``binary_cross_entropy``) there is
  nothing to compare: "torch refuses", accepted, whatever megengine does;
- both raising is "error" (a matrix of NaN whose SVD does not converge: numpy's error here);
  megengine alone raising is a Mismatch. Gradients are not compared;
- the ops whose float inputs are coordinates (`COORDINATE_OPS`: sampling maps, warp matrices,
  boxes, offsets) are skipped: a NaN position has no pixel to read, and each kernel reads
  another one.

The values replaced are picked from the case's own values by a generator seeded with their
bytes, so a seed reproduces its case."""
import zlib

import numpy as np

from .converted_inputs import Mode, run_converted
from .gen import Mismatch, _close

SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0)
COORDINATE_OPS = {"remap", "warp_affine", "warp_perspective", "roi_align", "roi_pooling",
                  "deformable_conv2d", "deformable_psroi_pooling", "nms", "correlation"}


class _Special(Mode):
    name = "special"
    non_finite = True
    triage = False  # (the float32 path is the one under test)
    errors = ()  # (float32 stays float32: no refusal of a dtype to accept)
    reruns_refused = False  # (a case upstream refuses is about its arguments, not its values)

    def dtypes(self, rng, xs):
        return [np.dtype(np.float32)] * len(xs)

    def convert(self, x, dt):
        q = np.array(x, dtype=np.float32, copy=True)
        if q.size == 0:
            return q
        rng = np.random.default_rng(zlib.crc32(q.tobytes()))
        count = min(q.size, int(rng.integers(1, 4)))
        picked = [SPECIALS[i] for i in rng.permutation(4)[:count]]  # (at most one zero)
        if 0.0 in picked and rng.random() < 0.5:
            picked[picked.index(0.0)] = -0.0
        q.flat[rng.choice(q.size, count, replace=False)] = picked
        return q

    def values(self, q, dt):
        return q.astype(np.float64)

    def refusal(self, msg):
        return False

    def check(self, y, want_value, want_dtype, tol, what, kept=(), native=None):
        got, dt = y.numpy(), np.dtype(y.dtype)
        if dt != want_dtype and dt != want_value.dtype:
            raise Mismatch(f"{what} dtype {dt}, expected {want_dtype}")
        if got.dtype.kind in "fc" and want_value.dtype.kind in "fc":
            g, w = (np.stack([a.real, a.imag], -1) if a.dtype.kind == "c" else a
                    for a in (got, want_value))
            inf = np.isinf(g.astype(np.float64)) | np.isinf(w.astype(np.float64))
            if (inf & (g != w)).any():
                i = tuple(np.argwhere(inf & (g != w))[0])
                raise Mismatch(f"{what}: {g[i]} where torch has {w[i]} at {i}")
        _close(got, want_value, tol, what)


SPECIAL = _Special()


def run_special(case, rng):
    """Run ``case`` with special values among its float32 inputs (`run_converted`); "torch
    refuses" where torch's op raises on them."""
    if getattr(case, "desc", "").split("(")[0] in COORDINATE_OPS:
        return "skip"
    try:
        return run_converted(case, rng, SPECIAL)
    except Mismatch as e:
        if "megengine accepted what torch refuses" in str(e):
            return "torch refuses"
        if "megengine raised" in str(e) and "(torch: " in str(e):
            return "error"  # (both raise)
        raise
