"""Image functions (F.vision): resizing (interpolate) and the other vision ops upstream has."""
import math

import numpy as np

from ..core.dispatch import Op, apply
from ..core.ops import xp_of
from ._args import _as_float, _tensor

__all__ = ["interpolate"]


# ----- resizing -----

def _interp_matrix(n_in, n_out, mode, align_corners):
    """The (n_out, n_in) matrix that resamples one axis, as upstream and PyTorch do."""
    dst = np.arange(n_out, dtype=np.float64)
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        m[rows, np.minimum(np.floor(dst * (n_in / n_out)).astype(np.int64), n_in - 1)] = 1
        return m
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = (dst + 0.5) * (n_in / n_out) - 0.5
        if mode != "bicubic":
            src = np.maximum(src, 0)
    i0 = np.floor(src).astype(np.int64)
    t = src - i0
    if mode == "bicubic":  # Keys' cubic with A = -0.75, edges replicated
        a = -0.75
        taps = (t + 1, t, 1 - t, 2 - t)
        weights = [((a * d - 5 * a) * d + 8 * a) * d - 4 * a if k in (0, 3)
                   else ((a + 2) * d - (a + 3)) * d * d + 1 for k, d in enumerate(taps)]
        for k, wk in enumerate(weights):
            np.add.at(m, (rows, np.clip(i0 - 1 + k, 0, n_in - 1)), wk)
        return m
    np.add.at(m, (rows, np.minimum(i0, n_in - 1)), 1 - t)
    np.add.at(m, (rows, np.minimum(i0 + 1, n_in - 1)), t)
    return m


class _Resize(Op):
    """Separable resampling ``A_h @ x @ A_w.T`` over the last two axes (A_w None: last axis)."""

    def __init__(self, mat_h, mat_w):
        self.mat_h, self.mat_w = mat_h, mat_w

    def forward(self, x):
        x = _as_float(x)
        xp = xp_of(x)
        self.ah = xp.asarray(self.mat_h, x.dtype)
        self.aw = None if self.mat_w is None else xp.asarray(self.mat_w, x.dtype)
        if self.aw is None:  # 1-d: (N, C, L)
            return x @ self.ah.T
        return self.ah @ (x @ self.aw.T)

    def backward(self, g):
        if self.aw is None:
            return g @ self.ah
        return (self.ah.T @ g) @ self.aw


_INTERP_MODES = ("bilinear", "linear", "bicubic", "nearest")


def interpolate(inp, size=None, scale_factor=None, mode="bilinear", align_corners=None):
    """Resize NCHW ``inp`` (N, C, L for "linear") to ``size`` or by ``scale_factor``.

    ``mode``: "bilinear", "linear", "bicubic" or "nearest". ``align_corners`` (linear modes only,
    default False) maps corner pixel centres onto each other. With ``scale_factor`` the output
    size is ``floor(in * scale)`` and sampling uses in/out, as upstream.
    """
    inp = _tensor(inp)
    mode = str(mode).lower()
    what = "interpolate"
    if mode not in _INTERP_MODES:
        raise ValueError(f"{what}: mode must be one of {_INTERP_MODES}, got {mode!r}")
    if mode in ("bilinear", "linear", "bicubic"):
        align_corners = bool(align_corners)
    elif align_corners is not None:
        raise ValueError(f"{what}: align_corners can only be set in the linear modes")
    spatial = 1 if mode == "linear" else 2
    if inp.ndim != spatial + 2:
        raise ValueError(f"{what}: mode {mode!r} expects a {spatial + 2}-d input, "
                         f"got shape {inp.shape}")
    in_sizes = inp.shape[2:]
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{what}: give exactly one of size and scale_factor")
    if size is not None:
        sizes = (size,) * spatial if isinstance(size, (int, np.integer)) else tuple(size)
        sizes = tuple(int(s) for s in sizes)
    else:
        scales = (scale_factor,) * spatial if isinstance(scale_factor, (int, float)) \
            else tuple(scale_factor)
        if len(scales) != spatial:
            raise ValueError(f"{what}: scale_factor {scale_factor!r} must have {spatial} values")
        sizes = tuple(int(math.floor(n * float(s))) for n, s in zip(in_sizes, scales))
    if len(sizes) != spatial or min(sizes) < 1:
        raise ValueError(f"{what}: output size {sizes} must be {spatial} positive ints")
    mats = [_interp_matrix(n_in, n_out, mode, align_corners)
            for n_in, n_out in zip(in_sizes, sizes)]
    return apply(_Resize(mats[0], mats[1] if spatial == 2 else None), inp)
