"""Fuzz generators for F.vision's correlation, remap, warp_affine and warp_perspective against
hand-written numpy oracles of upstream's kernels (FlowNet's correlation; OpenCV's border modes,
nearest rounding and, on the CPU's NHWC path, its fixed-point source points), every mode and
format, gradients by finite differences of the oracles."""
import numpy as np
import torch

import megengine as mge
import megengine.functional as F
from megengine.core import _config
from megengine.device import canonical_device

from .gen import Case, pick, registry, values
from .oracle import numpy_oracle

OPS, op = registry("vision")


# ----- correlation: FlowNet's cost volume, output pixel by output pixel -----

def _correlation(d1, d2, k, md, s1, s2, pad, mul):
    """Caffe FlowNet's kernel: output (y, x) centres a k x k patch of data1 at
    (y * s1 + md + r - pad, x * s1 + md + r - pad) in the unpadded image (zeros outside);
    channel (p, o) (row-major over the (2 * (md // s2) + 1)**2 grid) compares it with the patch
    of data2 displaced by (p * s2, o * s2); mean over the patch and the channels."""
    n, c, h, w = d1.shape[-4:]  # (leading axes: a stack of perturbed inputs)
    r, gr = (k - 1) // 2, md // s2
    if k % 2 == 0:
        raise ValueError("kernel_size must be odd")
    border = md + r
    oh = -(-(h + 2 * pad - 2 * border) // s1)
    ow = -(-(w + 2 * pad - 2 * border) // s1)
    if oh < 1 or ow < 1:
        raise ValueError("input too small")
    m = pad + md + r + 1  # a zero margin that every read falls inside
    p1 = np.pad(d1, ((0, 0),) * (d1.ndim - 2) + ((m, m), (m, m)))
    p2 = np.pad(d2, ((0, 0),) * (d2.ndim - 2) + ((m, m), (m, m)))
    cy = np.arange(oh) * s1 + border - pad + m
    cx = np.arange(ow) * s1 + border - pad + m
    chans = []
    for p in range(-gr, gr + 1):
        for o in range(-gr, gr + 1):
            acc = 0
            for j in range(-r, r + 1):
                for i in range(-r, r + 1):
                    a = p1[..., (cy + j)[:, None], (cx + i)[None, :]]
                    b = p2[..., (cy + j + p * s2)[:, None], (cx + i + o * s2)[None, :]]
                    acc = acc + (a * b if mul else np.abs(a - b)).sum(-3)
            chans.append(acc / (k * k * c))
    return np.stack(chans, -3)


@op("correlation")
def _correlation_case(rng):
    k = pick(rng, [1, 1, 3, 5])
    md = int(rng.integers(0, 4))
    s1, s2 = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    pad = int(rng.integers(0, 3))
    mul = bool(rng.random() < 0.5)
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    need = 2 * (md + (k - 1) // 2) - 2 * pad + 1  # the smallest size with an output pixel
    h, w = (max(1, need + int(rng.integers(-1 if rng.random() < 0.1 else 0, 4)))
            for _ in range(2))
    if rng.random() < 0.05:
        k = 2  # even: both refuse
    d1, d2 = values(rng, (n, c, h, w), "float32"), values(rng, (n, c, h, w), "float32")
    if not mul:
        # |a - b| has a kink at a == b, where the finite differences of the oracle straddle it:
        # every pair the grid compares (displaced ones too, and values against the zero
        # padding) is kept 0.025 or more apart, d1 on the lattice 0.1 k + 0.025 and d2 on
        # 0.1 k + 0.075 (seed 114134 met a displaced pair 0.002 apart)
        d1 = (np.round(d1 * 10) / 10 + 0.025).astype(np.float32)
        d2 = (np.round(d2 * 10) / 10 + 0.075).astype(np.float32)
    args = (k, md, s1, s2, pad, mul)
    return Case(f"correlation(x{d1.shape}, kernel_size={k}, max_displacement={md}, "
                f"stride1={s1}, stride2={s2}, pad_size={pad}, is_multiply={mul})", [d1, d2],
                lambda a, b: F.vision.correlation(a, b, *args),
                numpy_oracle(lambda a, b: _correlation(a, b, *args), stacked=True), tol=(2e-4, 2e-4),
                bcast=mul)


# ----- sampling: OpenCV's border modes and interpolation, pixel by pixel -----

def _border(p, n, mode):
    """OpenCV's borderInterpolate: the pixel read for position ``p`` of a row of ``n``; -1 for
    a constant border outside."""
    if 0 <= p < n:
        return p
    if mode == "replicate":
        return 0 if p < 0 else n - 1
    if mode == "constant":
        return -1
    if mode == "wrap":
        return p % n
    if n == 1:
        return 0
    delta = 1 if mode == "reflect_101" else 0
    while not 0 <= p < n:
        p = -p - 1 + delta if p < 0 else 2 * n - 1 - p - delta
    return p


def _sample(img, pts, batch, border, bval, interp):
    """NCHW float64 ``img`` read at ``pts`` (B, OH, OW, 2) = (x, y) of image ``batch[b]``:
    nearest rounds halves to even, as upstream's remap (a float16 matrix makes exact halves);
    linear weights the four neighbours, each border-mapped on its own (a constant border reads
    ``bval``)."""
    _, c, h, w = img.shape
    b_, oh, ow, _ = pts.shape
    out = np.zeros((b_, c, oh, ow))
    for b in range(b_):
        for y in range(oh):
            for x in range(ow):
                px, py = pts[b, y, x]

                def read(ix, iy):
                    jx, jy = _border(int(ix), w, border), _border(int(iy), h, border)
                    if jx < 0 or jy < 0:
                        return np.full(c, bval)
                    return img[batch[b], :, jy, jx]
                if interp == "nearest":
                    out[b, :, y, x] = read(np.rint(px), np.rint(py))
                    continue
                x0, y0 = np.floor(px), np.floor(py)
                fx, fy = px - x0, py - y0
                out[b, :, y, x] = ((1 - fx) * (1 - fy) * read(x0, y0) + fx * (1 - fy) *
                                   read(x0 + 1, y0) + (1 - fx) * fy * read(x0, y0 + 1) +
                                   fx * fy * read(x0 + 1, y0 + 1))
    return out


def _away(a, interp, lo=0.03):
    """Coordinates moved off the kinks of the sampling (whole pixels for linear, half pixels
    for nearest), where finite differences and the kernels' one-sided gradients differ."""
    shift = 0.5 if interp == "nearest" else 0.0
    frac = (a - shift) - np.floor(a - shift)
    return np.where(frac < lo, a + 2 * lo, np.where(frac > 1 - lo, a - 2 * lo, a)).astype(a.dtype)


_BORDERS = ["replicate", "constant", "reflect", "reflect_101", "wrap"]


def _to_nchw(a, nhwc):
    return a.transpose(0, 3, 1, 2) if nhwc else a


def _from_nchw(a, nhwc):
    return a.transpose(0, 2, 3, 1) if nhwc else a


@op("remap_modes")
def _remap(rng):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    oh, ow = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    border, interp = pick(rng, _BORDERS), pick(rng, ["linear", "nearest"])
    scalar = float(pick(rng, [0.0, 1.5, -2.0]))
    nhwc = bool(rng.random() < 0.3)  # megengine.config._conv_format = "NHWC", as upstream
    x = values(rng, (n, h, w, c) if nhwc else (n, c, h, w), "float32")
    # up to two image sizes outside: reflect and wrap fold more than once
    xy = np.stack([values(rng, (n, oh, ow), "float32", -2 * w - 1, 3 * w),
                   values(rng, (n, oh, ow), "float32", -2 * h - 1, 3 * h)], -1)
    xy = _away(xy, interp)
    batch = np.arange(n)

    def mge_fn(a, m):
        with _config._override(conv_format="NHWC" if nhwc else "default"):
            return F.vision.remap(a, m, border_mode=border, scalar=scalar, interp_mode=interp)
    # (rounds: an integer image's values, the border's 1.5 too, are rounded as upstream 1.13's
    # remap rounds them: 2 for a uint8 / int8 image, measured; seed 101977)
    return Case(f"remap(x{x.shape}{' NHWC' if nhwc else ''}, map{xy.shape}, {border}, "
                f"scalar={scalar}, {interp})", [x, xy], mge_fn,
                numpy_oracle(lambda a, m: _from_nchw(_sample(_to_nchw(a, nhwc), m, batch,
                                                             border, scalar, interp), nhwc)),
                tol=(2e-4, 2e-4), bcast=False, diff=[0, 1] if interp == "linear" else [0],
                rounds=True)


# ----- warps: the source point of each output pixel, then the sampling above -----

def _exact_points(m, oh, ow):
    hh, ww = np.meshgrid(np.arange(oh, dtype=np.float64), np.arange(ow, dtype=np.float64),
                         indexing="ij")
    u = m[:, 0, 0, None, None] * ww + m[:, 0, 1, None, None] * hh + m[:, 0, 2, None, None]
    v = m[:, 1, 0, None, None] * ww + m[:, 1, 1, None, None] * hh + m[:, 1, 2, None, None]
    if m.shape[1] == 2:
        return np.stack([u, v], -1)
    d = m[:, 2, 0, None, None] * ww + m[:, 2, 1, None, None] * hh + m[:, 2, 2, None, None]
    return np.stack([u / d, v / d], -1)


def _cv_points(m, oh, ow, interp):
    """The points OpenCV's warpAffine / warpPerspective sample (upstream's CPU kernels on NHWC
    float32/uint8 images): affine in 1/1024-pixel fixed point (per-column and per-row terms
    rounded half to even, then shifted down to the 1/32 table grid with a rounding offset);
    perspective ``rint(32 u / d) / 32``; nearest mode to whole pixels."""
    pts = np.zeros((m.shape[0], oh, ow, 2))
    for b in range(m.shape[0]):
        for y in range(oh):
            for x in range(ow):
                if m.shape[1] == 2:
                    bits = 10 if interp == "nearest" else 5  # AB_BITS - (INTER_BITS or 0)
                    rnd = 1 << (bits - 1)
                    for r in range(2):
                        fixed = (int(np.rint(m[b, r, 0] * x * 1024))
                                 + int(np.rint((m[b, r, 1] * y + m[b, r, 2]) * 1024)) + rnd)
                        pts[b, y, x, r] = (fixed >> bits) / (1 << (10 - bits))
                else:
                    d = m[b, 2, 0] * x + m[b, 2, 1] * y + m[b, 2, 2]
                    s = 1.0 if interp == "nearest" else 32.0
                    for r in range(2):
                        t = m[b, r, 0] * x + m[b, r, 1] * y + m[b, r, 2]
                        pts[b, y, x, r] = np.rint(t * s / d) / s if d != 0 else 0.0
    return pts


def _draw_mat(rng, b, rows, h, w):
    m = np.tile(np.eye(3, dtype=np.float32)[:rows], (b, 1, 1))
    m[:, :2, :2] += values(rng, (b, 2, 2), "float32", -0.5, 0.5)
    m[:, :2, 2] = np.stack([values(rng, (b,), "float32", -w, w),
                            values(rng, (b,), "float32", -h, h)], -1)
    if rows == 3:
        m[:, 2, :2] = values(rng, (b, 2), "float32", -0.08, 0.08)
    return m


def _warp_case(rng, rows):
    what = "warp_affine" if rows == 2 else "warp_perspective"
    n = int(rng.integers(1, 3))
    c = pick(rng, [1, 2, 3, 4])
    h, w = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    oh, ow = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    out_shape = (oh, ow) if oh != ow or rng.random() < 0.5 else oh
    shape_arg = mge.tensor(np.array([oh, ow], np.int32)) if rng.random() < 0.2 else out_shape
    border, interp = pick(rng, _BORDERS), pick(rng, ["linear", "nearest"])
    fmt = pick(rng, ["NHWC", "NCHW"])
    dt = "uint8" if rng.random() < 0.15 else "float32"
    # (an integer image's border value is a whole number: a half rounds either way upstream)
    bval = float(pick(rng, [0.0, 2.5] if dt == "float32" else [0.0, 7.0]))
    nhwc = fmt == "NHWC"
    mat_idx = None
    b = n
    if rows == 3 and rng.random() < 0.35:
        b = int(rng.integers(1, 4))
        mat_idx = rng.integers(0, n, size=b).astype(np.int32)
    batch = np.arange(n) if mat_idx is None else mat_idx
    shp = (n, h, w, c) if nhwc else (n, c, h, w)
    x = values(rng, shp, dt, 0, 255) if dt == "uint8" else values(rng, shp, dt)
    m = _draw_mat(rng, b, rows, h, w)
    # upstream's CPU kernel for these is OpenCV's: rounded source points (its CUDA kernel, as
    # this engine on a GPU, samples at the exact points)
    on_cpu = str(canonical_device(None)).startswith("cpu")
    cv = (on_cpu and nhwc and dt in ("float32", "uint8")
          and c in ((1, 2, 3) if rows == 2 else (1, 3)))
    oh_, ow_ = (oh, ow) if isinstance(out_shape, tuple) else (oh, oh)
    exact = _exact_points(m.astype(np.float64), oh_, ow_)
    near = exact if not cv else _cv_points(m.astype(np.float64), oh_, ow_, interp)
    shift = 0.5 if interp == "nearest" else 0.0
    frac = (near - shift) - np.floor(near - shift)
    # a point on a kink, or one that float32 arithmetic may round across it: no mat gradient
    # (and for the rounded points, values that rounding of float32 products may change)
    kink = bool(((frac < 0.02) | (frac > 0.98)).any())
    if cv:
        fx = exact * 1024 - np.floor(exact * 1024)
        kink = kink or bool(((np.abs(fx - 0.5) < 0.05) | (fx < 0.01) | (fx > 0.99)).any())
    diff = [0] if dt == "float32" else []
    if dt == "float32" and interp == "linear" and not kink:
        diff = [0, 1]

    def oracle(grid):
        def points(mm):
            return _cv_points(mm, oh_, ow_, interp) if grid else _exact_points(mm, oh_, ow_)

        def value(a, mm):
            # uint8 as upstream 1.13 measured: OpenCV's kernel (grid) casts the border value
            # to uint8 as C does and rounds halves up; megdnn's rounds halves away from zero
            b = float(np.int64(bval).astype(np.uint8)) if grid and dt == "uint8" else bval
            out = _from_nchw(_sample(_to_nchw(a, nhwc), points(mm), batch, border, b, interp),
                             nhwc)
            if dt != "uint8":
                return out
            return np.clip(np.floor(out + 0.5) if grid else np.trunc(out + 0.5), 0, 255)

        def exact_value(a, mm):
            # the documented mat gradient: that of the exact points (straight through the
            # rounding)
            m64 = m.astype(np.float64)
            pts = points(m64) + _exact_points(mm, oh_, ow_) - _exact_points(m64, oh_, ow_)
            return _from_nchw(_sample(_to_nchw(a, nhwc), pts, batch, border, bval, interp),
                              nhwc)
        return numpy_oracle(value, [value, exact_value], out_dtype=dt)
    on_grid, off_grid = oracle(cv), oracle(False)

    def torch_fn(a, mm):
        # the float modes' float64 and float16 images (torch's tensors here float64) take the
        # exact points, as upstream's non-OpenCV CPU kernel does: OpenCV's grid is float32's
        # and uint8's (the integer and quantized modes hand torch float32 values)
        return (on_grid if a.dtype in (torch.float32, torch.uint8) else off_grid)(a, mm)

    if rows == 2:
        def mge_fn(a, mm):
            return F.vision.warp_affine(a, mm, shape_arg, border_mode=border, border_val=bval,
                                        format=fmt, interp_mode=interp)
    else:
        idx_arg = mat_idx if mat_idx is None or rng.random() < 0.5 else mge.tensor(mat_idx)

        def mge_fn(a, mm):
            return F.vision.warp_perspective(a, mm, shape_arg, mat_idx=idx_arg,
                                             border_mode=border, border_val=bval, format=fmt,
                                             interp_mode=interp)
    return Case(f"{what}(x{x.shape} {dt} {fmt}, mat{m.shape}, "
                f"{out_shape if shape_arg is out_shape else 'Tensor' + str([oh, ow])}, mat_idx="
                f"{None if mat_idx is None else mat_idx.tolist()}, {border}, border_val={bval}, "
                f"{interp}{', OpenCV grid' if cv else ''})", [x, m], mge_fn,
                torch_fn, tol=(5e-4, 5e-4) if dt == "float32" else (0, 1.01), diff=diff, bcast=False,
                layouts=False, dtypes=[dt] if dt == "uint8" else None)


@op("warp_affine_modes")
def _warp_affine(rng):
    return _warp_case(rng, 2)


@op("warp_perspective_modes")
def _warp_perspective(rng):
    return _warp_case(rng, 3)
