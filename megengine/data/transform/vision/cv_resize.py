"""cv2.resize in numpy, computed as OpenCV 4.x computes it: its sampling tables, its float32
coefficients, its 11-bit fixed point for uint8, its border rules and the summation order of its
SIMD loops, so that uint8 results are the same to the level and float32 ones to the bit
(checked against opencv-python 4.14 on x86-64; ``resize_like_cv2`` says where they are not)."""
import numpy as np

__all__ = ["resize_like_cv2"]

INTER_NEAREST, INTER_LINEAR, INTER_CUBIC, INTER_AREA, INTER_LANCZOS4 = 0, 1, 2, 3, 4
INTER_LINEAR_EXACT, INTER_NEAREST_EXACT = 5, 6

# OpenCV's INTER_RESIZE_COEF_BITS: uint8 images are resized with coefficients scaled by 2**11
# and rounded to int16; the two passes together scale by 2**22.
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS
_F32 = np.float32
# lanes of OpenCV's SIMD vertical passes (SSE3 is the baseline of its x86-64 wheels and these
# loops are not dispatched to AVX2): 8 int16 for uint8 cubic, 4 floats for float32 cubic and
# lanczos4; the columns past the last full step are summed by scalar code in another order
_LANES_S16 = 8
_LANES_F32 = 4


def _cubic_coeffs(x):
    """OpenCV's interpolateCubic (a = -0.75), in float32 step for step."""
    a = _F32(-0.75)
    one = _F32(1)
    x1 = x + one
    c0 = ((a * x1 - _F32(5) * a) * x1 + _F32(8) * a) * x1 - _F32(4) * a
    c1 = ((a + _F32(2)) * x - (a + _F32(3))) * x * x + one
    y = one - x
    c2 = ((a + _F32(2)) * y - (a + _F32(3))) * y * y + one
    c3 = one - c0 - c1 - c2
    return np.stack([c0, c1, c2, c3], axis=1).astype(_F32)


def _lanczos4_coeffs(x):
    """OpenCV's interpolateLanczos4: sin(pi t / 4) sin(pi t) / t**2 over 8 taps, normalised
    in float32; ``x + 3 - i`` is rounded to float32 first, as in its C++."""
    s45 = 0.70710678118654752440084436210485
    cs = np.array([[1, 0], [-s45, -s45], [0, 1], [s45, -s45], [-1, 0], [s45, s45], [0, -1], [-s45, s45]])
    x3 = (x + _F32(3)).astype(_F32)
    y0 = -x3.astype(np.float64) * np.pi * 0.25
    s0, c0 = np.sin(y0), np.cos(y0)
    coeffs = np.empty((x.size, 8), _F32)
    total = np.zeros(x.size, _F32)
    for i in range(8):
        y = -(x3 - _F32(i)).astype(np.float64) * np.pi * 0.25
        with np.errstate(divide="ignore", invalid="ignore"):
            coeffs[:, i] = ((cs[i, 0] * s0 + cs[i, 1] * c0) / (y * y)).astype(_F32)
        total = total + coeffs[:, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        coeffs *= (_F32(1) / total)[:, None]
    # OpenCV's shortcut for x below FLT_EPSILON: the centre tap alone (no 0/0)
    tiny = x < np.finfo(_F32).eps
    coeffs[tiny] = 0
    coeffs[tiny, 3] = 1
    return coeffs


def _taps(in_size, out_size, interpolation, horizontal):
    """For one axis: source indices (out, k), clamped to the image, and float32 weights (out, k).

    ``horizontal`` applies OpenCV's x-only rule for linear (and enlarging area): a sample left of
    the first or right of the last pixel takes that pixel alone; rows instead are clamped with
    their weights kept (which differs only in float rounding)."""
    inv_scale = out_size / in_size
    scale = 1.0 / inv_scale
    d = np.arange(out_size, dtype=np.float64)
    if interpolation == INTER_AREA:  # enlarging: OpenCV's area-to-bilinear weights
        s = np.floor(d * scale).astype(np.int64)
        f = ((d + 1) - (s + 1) * inv_scale).astype(_F32)
        f = np.where(f <= 0, _F32(0), f - np.floor(f)).astype(_F32)
    else:
        f = ((d + 0.5) * scale - 0.5).astype(_F32)
        s = np.floor(f).astype(np.int64)
        f = (f - s.astype(_F32)).astype(_F32)
    if interpolation == INTER_CUBIC:
        w = _cubic_coeffs(f)
    elif interpolation == INTER_LANCZOS4:
        w = _lanczos4_coeffs(f)
    else:
        if horizontal:
            outside = (s < 0) | (s >= in_size - 1)
            s = np.clip(s, 0, in_size - 1)
            f = np.where(outside, _F32(0), f)
        w = np.stack([_F32(1) - f, f], axis=1).astype(_F32)
    k = w.shape[1]
    idx = np.clip(s[:, None] + np.arange(k) - (k // 2 - 1), 0, in_size - 1)
    return idx, w


def _fixed(w):
    """float32 weights to OpenCV's int16 fixed point (saturate_cast rounds half to even)."""
    return np.clip(np.rint(w * _F32(_COEF_SCALE)), -32768, 32767).astype(np.int64)


def _separable(image, xt, yt, interpolation):
    """The horizontal pass over the rows that are read, then the vertical pass (OpenCV's order),
    on rows flattened to (x, channel) as OpenCV walks them."""
    (xi, xw), (yi, yw) = xt, yt
    h, w, c = image.shape
    th, tw, taps = yi.shape[0], xi.shape[0], xw.shape[1]
    fixed = image.dtype == np.uint8
    if fixed:  # linear sums fit int32 (255 * 2**11 per row), cubic and lanczos4 ones may not
        acc = np.int32 if taps == 2 else np.int64
        xw, yw = _fixed(xw).astype(acc), _fixed(yw).astype(acc)
    else:
        acc = np.float64 if image.dtype == np.float64 else _F32
        xw, yw = xw.astype(acc), yw.astype(acc)
    rows, yi = np.unique(yi, return_inverse=True)
    yi = yi.reshape(yw.shape)
    # tap k of output column (x, channel ch) reads source column xi[x, k] * c + ch
    cols = (xi[:, None, :] * c + np.arange(c)[None, :, None]).reshape(tw * c, taps)
    xw = np.repeat(xw, c, axis=0)
    src = image.reshape(h, w * c)[rows].astype(acc, copy=False)
    horiz = np.take(src, cols[:, 0], axis=1) * xw[:, 0]
    for k in range(1, taps):  # OpenCV sums the taps left to right
        horiz += np.take(src, cols[:, k], axis=1) * xw[:, k]
    row = lambda k: np.take(horiz, yi[:, k], axis=0)  # noqa: E731  (row tap k of each output)
    if fixed and interpolation in (INTER_LINEAR, INTER_AREA):
        # OpenCV's vertical pass (SIMD and scalar alike) drops 4 bits of each row and keeps the
        # high half of 16-bit products: ((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16),
        # rounded by 2 bits: not the exact (sum + 2**21) >> 22, one level off now and then
        horiz >>= 4
        out = (row(0) * yw[:, 0, None]) >> 16
        out += (row(1) * yw[:, 1, None]) >> 16
        out += 2
        out >>= 2
        return np.clip(out, 0, 255).astype(np.uint8).reshape(th, tw, c)
    terms = [row(k) * yw[:, k, None] for k in range(taps)]
    if not fixed:
        out = terms[0].copy()
        for t in terms[1:]:
            out += t
        if taps > 2 and acc is _F32:
            # cubic and lanczos4: OpenCV's SIMD loop (4 floats a step) adds the last rows first,
            # h0 b0 + (h1 b1 + (... + h7 b7)); its tail adds them in order, as above
            nested = terms[-1].copy()
            for t in terms[-2::-1]:
                nested = t + nested
            out = _simd_split(out, nested, _LANES_F32)
        return _saturate(out, image.dtype).reshape(th, tw, c)
    if interpolation == INTER_CUBIC:
        # SIMD: float32 ((h3 b3 + h2 b2) + h1 b1) + h0 b0 with b = beta / 2**22, rounded to even
        scale = _F32(1.0 / (_COEF_SCALE * _COEF_SCALE))
        simd = row(3).astype(_F32) * (yw[:, 3, None].astype(_F32) * scale)
        for k in (2, 1, 0):
            simd = row(k).astype(_F32) * (yw[:, k, None].astype(_F32) * scale) + simd
        out = _simd_split(_fixed_point_sum(terms), np.rint(simd).astype(np.int64), _LANES_S16)
    else:  # lanczos4: no SIMD vertical pass for uint8
        out = _fixed_point_sum(terms)
    return np.clip(out, 0, 255).astype(np.uint8).reshape(th, tw, c)


def _fixed_point_sum(terms):
    """OpenCV's scalar FixedPtCast: the integer sum rounded by 22 bits, halves up."""
    total = sum(terms[1:], terms[0])
    return (total + (1 << (2 * _COEF_BITS - 1))) >> (2 * _COEF_BITS)


def _simd_split(exact, simd, step):
    """Columns of a flattened row (x * channels) that the SIMD loop covers, ``step`` at a time,
    take ``simd``; the rest (the row's tail) takes ``exact``."""
    x = (exact.shape[1] // step) * step
    out = exact.copy()
    out[:, :x] = simd[:, :x]
    return out


def _saturate(values, dtype):
    """Float results cast to ``dtype``, rounded and saturated for integer types as OpenCV's
    ``saturate_cast`` (rounded for bool)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    elif dtype.kind == "b":
        values = np.rint(values)
    return values.astype(dtype, copy=False)


def _area_table(in_size, out_size, scale):
    """OpenCV's computeResizeAreaTab as (out, taps) index and float32 weight tables: each output
    cell covers ``scale`` source pixels, partial pixels at its ends weighted by the covered part."""
    taps = [[] for _ in range(out_size)]
    for dx in range(out_size):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, in_size - fsx1)
        sx1, sx2 = int(np.ceil(fsx1)), int(np.floor(fsx2))
        sx2 = min(sx2, in_size - 1)
        sx1 = min(sx1, sx2)
        if sx1 - fsx1 > 1e-3:
            taps[dx].append((sx1 - 1, (sx1 - fsx1) / cell))
        for sx in range(sx1, sx2):
            taps[dx].append((sx, 1.0 / cell))
        if fsx2 - sx2 > 1e-3:
            taps[dx].append((sx2, min(min(fsx2 - sx2, 1.0), cell) / cell))
    n = max(len(t) for t in taps)
    idx = np.zeros((out_size, n), np.int64)
    w = np.zeros((out_size, n), _F32)  # padding taps weigh 0: adding 0.0 changes no float sum
    for dx, t in enumerate(taps):
        for k, (sx, a) in enumerate(t):
            idx[dx, k], w[dx, k] = sx, a
    return idx, w


def _area_shrink(image, th, tw):
    """True area averaging (both axes shrink): OpenCV's resizeArea_, summed in float32
    (float64 for float64 images) in its order, rounded to even for integers."""
    h, w, _ = image.shape
    xi, xw = _area_table(w, tw, 1.0 / (tw / w))
    yi, yw = _area_table(h, th, 1.0 / (th / h))
    acc = np.float64 if image.dtype == np.float64 else _F32
    xw, yw = xw.astype(acc), yw.astype(acc)
    out = None
    for ky in range(yi.shape[1]):
        src = image[yi[:, ky]].astype(acc, copy=False)
        row = src[:, xi[:, 0]] * xw[None, :, 0, None]
        for kx in range(1, xi.shape[1]):
            row += src[:, xi[:, kx]] * xw[None, :, kx, None]
        term = yw[:, ky, None, None] * row
        out = term if out is None else out + term
    return _saturate(out, image.dtype)


def _area_fast(image, sy, sx):
    """Integer shrink factors: OpenCV's resizeAreaFast_, the mean of each sy x sx block (integer
    images: the sum times float32 1/area, rounded to even; its 2 x 2 fast mode for 1, 3 or 4
    channels rounds halves up instead)."""
    h, w, c = image.shape
    th, tw = h // sy, w // sx
    # the block's pixels in OpenCV's order (row by row), each as a strided (th, tw, c) view
    parts = [image[i : th * sy : sy, j : tw * sx : sx] for i in range(sy) for j in range(sx)]
    area = sy * sx
    if image.dtype.kind in "iu":  # 8- and 16-bit: the sums are exact, in ints or float32
        total = parts[0].astype(np.int32)
        for p in parts[1:]:
            total += p
        if sy == 2 and sx == 2 and c in (1, 3, 4):
            total += 2
            total >>= 2
            return total.astype(image.dtype)
        return _saturate(total.astype(_F32) * (_F32(1) / _F32(area)), image.dtype)
    acc = np.float64 if image.dtype == np.float64 else _F32
    parts = [p.astype(acc) for p in parts]
    total = np.zeros((th, tw, c), acc)
    k = 0
    while k <= area - 4:  # OpenCV adds four pixels at a time
        total += ((parts[k] + parts[k + 1]) + parts[k + 2]) + parts[k + 3]
        k += 4
    for k in range(k, area):
        total += parts[k]
    return _saturate(total * acc(1.0 / area), image.dtype)


def _ipp_taps(in_size, out_size, interpolation):
    """Positions and weights in float64, none rounded to float32 (the Intel IPP kernels)."""
    f = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    if interpolation == INTER_LINEAR:
        f = np.maximum(f, 0.0)
    s = np.floor(f)
    f = f - s
    if interpolation == INTER_LINEAR:
        w = np.stack([1 - f, f], axis=1)
    else:  # Keys' cubic, a = -0.75, at distances 1 + f, f, 1 - f, 2 - f
        a = -0.75
        near = lambda t: ((a + 2) * t - (a + 3)) * t * t + 1  # noqa: E731
        far = lambda t: ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # noqa: E731
        w = np.stack([far(1 + f), near(f), near(1 - f), far(2 - f)], axis=1)
    k = w.shape[1]
    idx = np.clip(s.astype(np.int64)[:, None] + np.arange(k) - (k // 2 - 1), 0, in_size - 1)
    return idx, w


def _uses_ipp(image, interpolation):
    """Whether OpenCV's x86-64 wheels hand this resize to Intel IPP (measured on 4.14: IPP serves
    1, 3 and 4 channels; linear from 2 x 2 pixels up for 16-bit, float32 and float64; cubic from
    4 x 4 up for uint8, 16-bit and float32)."""
    h, w, c = image.shape
    if c not in (1, 3, 4):
        return False
    kind = image.dtype.name
    if interpolation == INTER_LINEAR:
        return min(h, w) >= 2 and kind in ("uint16", "int16", "float32", "float64")
    if interpolation == INTER_CUBIC:
        return min(h, w) >= 4 and kind in ("uint8", "uint16", "int16", "float32")
    return False


def _ipp_like(image, th, tw, interpolation):
    """IPP's results are those of the same filter in float64, rounded once at the end (its own
    arithmetic is not published: sums within about 1e-5 of a half may round the other way)."""
    (xi, xw), (yi, yw) = (_ipp_taps(image.shape[1], tw, interpolation),
                          _ipp_taps(image.shape[0], th, interpolation))
    rows, yi = np.unique(yi, return_inverse=True)
    yi = yi.reshape(yw.shape)
    src = image[rows].astype(np.float64)
    horiz = sum(src[:, xi[:, k]] * xw[None, :, k, None] for k in range(xw.shape[1]))
    out = sum(horiz[yi[:, k]] * yw[:, k, None, None] for k in range(yw.shape[1]))
    return _saturate(out, image.dtype)


def _nearest_exact_index(in_size, out_size):
    """OpenCV's resizeNN_bitexact: the pixel under each output pixel's centre, in 16-bit fixed
    point, src = (dst * step + step / 2 - in % 2) >> 16 with step = round(in / out * 2**16)."""
    step = ((in_size << 16) + out_size // 2) // out_size
    start = step // 2 - in_size % 2
    return np.minimum((step * np.arange(out_size, dtype=np.int64) + start) >> 16, in_size - 1)


def _linear_exact_taps(in_size, out_size, frac):
    """OpenCV's bit-exact linear weights (interpolationLinear): the source position in float64,
    its fraction rounded to ``frac`` bits; samples left of the first pixel or right of the last
    take that pixel alone (weights (one, 0))."""
    one = 1 << frac
    f = (1.0 / (out_size / in_size)) * (np.arange(out_size) + 0.5) - 0.5
    s = np.floor(f).astype(np.int64)
    w1 = np.rint((f - s) * one).astype(np.int64)
    inside = (s >= 0) & (s < in_size - 1)
    w1 = np.where(inside, w1, 0)
    s = np.clip(s, 0, in_size - 1)
    idx = np.stack([s, np.minimum(s + 1, in_size - 1)], axis=1)
    return idx, np.stack([one - w1, w1], axis=1)


def _linear_exact(image, th, tw):
    """OpenCV's INTER_LINEAR_EXACT for 8- and 16-bit integers: both passes in fixed point with
    8 (16-bit images: 16) fraction bits per weight, the sum rounded once, halves up."""
    frac = 8 * image.dtype.itemsize
    h, w, c = image.shape
    xi, xw = _linear_exact_taps(w, tw, frac)
    yi, yw = _linear_exact_taps(h, th, frac)
    src = image.reshape(h, w * c).astype(np.int64)
    cols = (xi[:, None, :] * c + np.arange(c)[None, :, None]).reshape(tw * c, 2)
    xw = np.repeat(xw, c, axis=0)
    horiz = np.take(src, cols[:, 0], axis=1) * xw[:, 0] + np.take(src, cols[:, 1], axis=1) * xw[:, 1]
    out = np.take(horiz, yi[:, 0], axis=0) * yw[:, 0, None] + np.take(horiz, yi[:, 1], axis=0) * yw[:, 1, None]
    out = (out + (1 << (2 * frac - 1))) >> (2 * frac)
    return _saturate(out, image.dtype).reshape(th, tw, c)


def resize_like_cv2(image, th, tw, interpolation, ipp=True):
    """``cv2.resize(image, (tw, th), interpolation=interpolation)`` for an (H, W, C) array.

    ``ipp``: follow OpenCV's x86-64 wheels, which give some linear and cubic cases to Intel IPP;
    ``False`` computes OpenCV's own code everywhere (``cv2.ipp.setUseIPP(False)``, or a build
    without IPP such as ARM's).

    Where the results are not OpenCV's to the bit: IPP's cases (uint8 cubic: sums within ~1e-5
    of a half may round the other way; float32 linear and cubic: a few float32 units), 16-bit
    images (a level: OpenCV's 16-bit SIMD orders are not followed) and int8 with
    ``INTER_LINEAR_EXACT`` (a level)."""
    h, w, _ = image.shape
    if (h, w) == (th, tw):
        return image.copy()
    if interpolation == INTER_LINEAR_EXACT and image.dtype.kind == "f":
        interpolation = INTER_LINEAR  # as OpenCV: floats have no bit-exact variant
    if ipp and _uses_ipp(image, interpolation):
        return _ipp_like(image, th, tw, interpolation)
    if interpolation == INTER_NEAREST_EXACT:
        return image[_nearest_exact_index(h, th)][:, _nearest_exact_index(w, tw)]
    if interpolation == INTER_NEAREST:
        # src = floor(dst * (1 / (out / in))), no half-pixel shift
        yi = np.minimum(np.floor(np.arange(th) * (1.0 / (th / h))).astype(np.intp), h - 1)
        xi = np.minimum(np.floor(np.arange(tw) * (1.0 / (tw / w))).astype(np.intp), w - 1)
        return image[yi][:, xi]
    scale_x, scale_y = 1.0 / (tw / w), 1.0 / (th / h)
    iscale_x, iscale_y = int(np.rint(scale_x)), int(np.rint(scale_y))
    area_fast = abs(scale_x - iscale_x) < np.finfo(float).eps and abs(scale_y - iscale_y) < np.finfo(float).eps
    if interpolation == INTER_LINEAR and area_fast and iscale_x == 2 and iscale_y == 2:
        interpolation = INTER_AREA  # OpenCV halves with the area mean, which is the same
    if interpolation == INTER_LINEAR_EXACT:
        if area_fast and iscale_x == 2 and iscale_y == 2 and image.shape[2] != 2:
            return _area_fast(image, 2, 2)
        return _linear_exact(image, th, tw)
    if interpolation == INTER_AREA and scale_x >= 1 and scale_y >= 1:
        if area_fast:
            return _area_fast(image, iscale_y, iscale_x)
        return _area_shrink(image, th, tw)
    xt = _taps(w, tw, interpolation, horizontal=True)
    yt = _taps(h, th, interpolation, horizontal=False)
    return _separable(image, xt, yt, interpolation)
