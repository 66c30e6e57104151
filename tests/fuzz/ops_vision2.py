"""Fuzz generators for F.vision.cvt_color (OpenCV and the colour formulas as oracles) and
F.vision.deformable_psroi_pooling (a float64 numpy reference of upstream's documented kernel:
megdnn's naive DeformablePSROIPooling, which samples lie inside decided in its float32,
gradients by finite differences)."""
import numpy as np
import torch

try:  # the oracle of the uint8 channel modes; without it only the *2GRAY modes are drawn
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

import megengine.functional as F

from .gen import Case, pick, registry, values
from .oracle import numpy_oracle

OPS, op = registry()


# ----- cvt_color -----

# uint8 modes whose meaning OpenCV shares (same name); the YUV <-> RGB modes use megdnn's own
# coefficients and channel order, so only their float pair's consistency is fuzzed
_CV2_UINT8 = {"RGB2GRAY": 3, "BGR2GRAY": 3, "RGBA2GRAY": 4, "GRAY2RGB": 1, "RGBA2RGB": 4,
              "RGBA2BGR": 4, "RGB2BGR": 3, "BGR2RGB": 3}
_YUV420_GRAY = ("YUV2GRAY_NV21", "YUV2GRAY_NV12", "YUV2GRAY_YV12", "YUV2GRAY_YU12")


def _gray_uint8(mode):
    # megdnn's kernel (dnn/src/naive/cvt_color): OpenCV 3's 14-bit weights 4899, 9617, 1868,
    # rounded half up; OpenCV 4 weighs by 15 bits and differs where the exact gray is near .5
    def t(a):
        v = a.long()
        r, g, b = (v[..., 2], v[..., 1], v[..., 0]) if mode == "BGR2GRAY" else \
            (v[..., 0], v[..., 1], v[..., 2])
        return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14)[..., None].to(torch.uint8)
    return t


def _cv2(mode):
    if mode.endswith("GRAY"):
        return _gray_uint8(mode)
    code = getattr(cv2, "COLOR_" + mode)

    def t(a):
        out = np.stack([cv2.cvtColor(np.ascontiguousarray(img), code) for img in a.numpy()]) \
            if a.shape[0] else np.zeros(tuple(a.shape[:3]) + (1 if mode.endswith("GRAY") else 3,),
                                        np.uint8)
        return torch.from_numpy(out.reshape(tuple(a.shape[:3]) + (-1,)))
    return t


def _gray(a, order):
    r, g, b = (a[..., i:i + 1] for i in order)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _yuv_roundtrip(a):
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = r * 0.114 + g * 0.587 + b * 0.299  # (megdnn's RGB2YUV reads B, G, R weights)
    u, v = (r - y) * 0.492, (b - y) * 0.877  # (U, V less their 0.5 offsets)
    return torch.stack([y + u * 2.032, y + v * -0.581 + u * -0.395, y + v * 1.140], -1)


@op("cvt_color", "vision")
def _cvt_color(rng):
    n, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
    kind = pick(rng, ["float", "float", "uint8", "yuv420", "roundtrip"])
    if kind == "float":
        mode = pick(rng, ["RGB2GRAY", "BGR2GRAY", "GRAY2RGB"])
        x = values(rng, (n, h, w, 1 if mode == "GRAY2RGB" else 3), "float32", 0, 1)
        t = {"RGB2GRAY": lambda a: _gray(a, (0, 1, 2)), "BGR2GRAY": lambda a: _gray(a, (2, 1, 0)),
             "GRAY2RGB": lambda a: a.expand(-1, -1, -1, 3)}[mode]
        return Case(f"cvt_color(x{x.shape} float32, {mode})", [x],
                    lambda a: F.vision.cvt_color(a, mode), t, tol=(1e-5, 1e-6))
    if kind == "uint8":
        mode = pick(rng, sorted(m for m in _CV2_UINT8 if cv2 is not None or m.endswith("GRAY")))
        x = rng.integers(0, 256, size=(n, h, w, _CV2_UINT8[mode])).astype(np.uint8)
        return Case(f"cvt_color(x{x.shape} uint8, {mode})", [x],
                    lambda a: F.vision.cvt_color(a, mode), _cv2(mode))
    if kind == "yuv420":
        # a 4:2:0 frame stacks the H x W luma plane on the H/2 x W chroma rows: gray is luma
        mode = pick(rng, _YUV420_GRAY)
        h2, w2 = 2 * int(rng.integers(1, 3)), 2 * int(rng.integers(1, 3))
        x = rng.integers(0, 256, size=(n, h2 * 3 // 2, w2, 1)).astype(np.uint8)
        return Case(f"cvt_color(x{x.shape} uint8, {mode})", [x],
                    lambda a: F.vision.cvt_color(a, mode), lambda a: a[:, :h2])
    # RGB2YUV then YUV2RGB gives the image back to 2e-4 (megdnn's coefficient pair is rounded to
    # 3-4 digits), gradients included: megdnn's two formulas, written out per channel
    x = values(rng, (n, h, w, 3), "float32", 0, 1)
    return Case(f"cvt_color(cvt_color(x{x.shape}, RGB2YUV), YUV2RGB)", [x],
                lambda a: F.vision.cvt_color(F.vision.cvt_color(a, "RGB2YUV"), "YUV2RGB"),
                _yuv_roundtrip, tol=(1e-5, 1e-5))


# ----- deformable_psroi_pooling -----

def _round_half_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _dpsroi(inp, rois, trans, no_trans, part, ph, pw, spp, scale, tstd):
    """Upstream's DeformablePSROIPooling, vectorised over rois, channels, bins and samples:
    each bin of roi k averages the in-image samples of a spp x spp grid that starts at the
    bin's corner, shifted by trans[k, 2*cls:2*cls+2, part cell] * trans_std times the roi's
    size; samples are clamped into the image and read bilinearly. trans is read in memory
    order as megdnn's kernel reads it, (K, 2 * classes, part, part) whatever its shape
    (upstream accepts only (K, 2, ph, pw))."""
    _, c, hh, ww = inp.shape
    k = rois.shape[0]
    ncls = 1 if no_trans else trans.shape[1] // 2
    sh = (k, 1, 1, 1)
    py, px = np.arange(ph).reshape(1, 1, ph, 1), np.arange(pw).reshape(1, 1, 1, pw)
    cls = (np.arange(c) // (c // ncls)).reshape(1, c, 1, 1)

    def samples(dt):
        """The samples' (x, y), computed in ``dt`` in the kernel's order."""
        r = _round_half_away(rois[:, 1:5].astype(dt))
        f = dt.type
        x1, y1 = r[:, 0] * f(scale) - f(0.5), r[:, 1] * f(scale) - f(0.5)
        rw = np.maximum((r[:, 2] + 1) * f(scale) - f(0.5) - x1, f(0.1))
        rh = np.maximum((r[:, 3] + 1) * f(scale) - f(0.5) - y1, f(0.1))
        if no_trans:
            tx = ty = np.zeros((k, c, ph, pw), dt)
        else:
            kk = np.arange(k).reshape(sh)
            part_h = np.floor(py / ph * part).astype(int)
            part_w = np.floor(px / pw * part).astype(int)
            at = ((kk * ncls + cls) * 2 * part + part_h) * part + part_w
            tx = trans.reshape(-1)[at].astype(dt) * f(tstd)
            ty = trans.reshape(-1)[at + part * part].astype(dt) * f(tstd)
        ws = px.astype(dt) * (rw / pw).reshape(sh) + x1.reshape(sh) + tx * rw.reshape(sh)
        hs = py.astype(dt) * (rh / ph).reshape(sh) + y1.reshape(sh) + ty * rh.reshape(sh)
        step = np.arange(spp, dtype=dt)
        x = ws[..., None, None] + step.reshape(1, spp) * (rw / pw / spp).reshape(k, 1, 1, 1, 1, 1)
        y = hs[..., None, None] + step.reshape(spp, 1) * (rh / ph / spp).reshape(k, 1, 1, 1, 1, 1)
        return np.broadcast_arrays(x, y)

    x, y = samples(np.dtype(np.float64))
    # which samples are inside, in the kernel's float32: a sample at the edge, -0.5, is inside
    # there and may be just outside in float64 (-1 + 1/3 + 1/6: -0.49999994 and -0.5000000000000001)
    x32, y32 = samples(np.dtype(np.float32))
    inside = (x32 >= -0.5) & (x32 <= ww - 0.5) & (y32 >= -0.5) & (y32 <= hh - 0.5)
    x, y = np.clip(x, 0, ww - 1), np.clip(y, 0, hh - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1i, y1i = np.ceil(x).astype(int), np.ceil(y).astype(int)
    dx, dy = x - x0, y - y0
    b = rois[:, 0].astype(int).reshape(k, 1, 1, 1, 1, 1)
    ch = np.arange(c).reshape(1, c, 1, 1, 1, 1)
    val = ((1 - dx) * (1 - dy) * inp[b, ch, y0, x0] + (1 - dx) * dy * inp[b, ch, y1i, x0]
           + dx * (1 - dy) * inp[b, ch, y0, x1i] + dx * dy * inp[b, ch, y1i, x1i])
    count = inside.sum((-1, -2))
    total = np.where(inside, val, 0).sum((-1, -2))
    return np.where(count > 0, total / np.maximum(count, 1), 0)


@op("deformable_psroi_pooling", "vision")
def _deformable_psroi(rng):
    n, hh, ww = int(rng.integers(1, 3)), int(rng.integers(2, 7)), int(rng.integers(2, 7))
    no_trans = bool(rng.random() < 0.3)
    ncls = int(rng.integers(1, 3))
    c = ncls * int(rng.integers(1, 3))
    part, ph, pw = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    spp = int(rng.integers(1, 4))
    scale = pick(rng, [1.0, 0.5, 0.25])
    tstd = pick(rng, [0.1, 0.3])
    k = int(rng.integers(1, 4))
    # corners away from .5 (C's round and numpy's differ only there, but keep them apart from
    # the rounding edge anyway); some rois reach past the image
    lo = rng.uniform(-1, np.array([ww, hh]) / scale, size=(k, 2))
    size = rng.uniform(0, 1.5 * np.array([ww, hh]) / scale, size=(k, 2))
    box = np.concatenate([lo, lo + size], 1)
    box = np.where(np.abs(box - np.round(box)) > 0.45, box + 0.2, box)
    rois = np.concatenate([rng.integers(0, n, size=(k, 1)), box], 1).astype(np.float32)
    x = values(rng, (n, c, hh, ww), "float32")
    extra = int(rng.random() < 0.2)  # upstream reads row k of trans for roi k; more rows: unused
    tshape = (k + extra, 2 * ncls, part, part)
    if (ncls == 1 and (ph, pw) != (part, part) and (k + extra) * ph * pw >= k * part * part
            and rng.random() < 0.5):
        tshape = (k + extra, 2, ph, pw)  # upstream's own shape, read as the other in memory
    trans = values(rng, tshape, "float32", -1, 1)
    args = (no_trans, part, ph, pw, spp, scale, tstd)

    def ref(a, r, t):
        return _dpsroi(a, r, t, *args)
    return Case(f"deformable_psroi_pooling(x{x.shape}, {k} rois, trans{trans.shape}, "
                f"no_trans={no_trans}, part_size={part}, pooled=({ph}, {pw}), "
                f"sample_per_part={spp}, spatial_scale={scale}, trans_std={tstd})",
                [x, rois, trans],
                lambda a, r, t: F.vision.deformable_psroi_pooling(a, r, t, no_trans, part, ph, pw,
                                                                  spp, scale, tstd),
                numpy_oracle(ref), diff=[0] if no_trans else [0, 2], tol=(2e-4, 2e-4),
                bcast=False)
