"""Image functions on HWC numpy arrays (pad, flip, resize, colour conversion), written
with numpy in place of OpenCV and following OpenCV's conventions."""
import collections.abc
import functools
import random

import numpy as np

__all__ = [
    "INTER_NEAREST",
    "INTER_LINEAR",
    "INTER_CUBIC",
    "INTER_AREA",
    "INTER_LANCZOS4",
    "to_gray",
    "to_bgr",
    "pad",
    "flip",
    "resize",
    "bgr_to_hsv",
    "hsv_to_bgr",
]

# OpenCV's interpolation codes, so that code written for cv2 constants keeps working.
INTER_NEAREST = 0
INTER_LINEAR = 1
INTER_CUBIC = 2
INTER_AREA = 3
INTER_LANCZOS4 = 4


def wrap_keepdims(func):
    """Accept (H, W, C) or (H, W) images and give back as many dimensions as came in."""

    @functools.wraps(func)
    def wrapper(image, *args, **kwargs):
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise ValueError(
                "{} needs an image of shape (H, W, C) or (H, W), but got shape {}".format(
                    func.__name__, image.shape
                )
            )
        ret = func(image if image.ndim == 3 else image[:, :, None], *args, **kwargs)
        return ret if image.ndim == 3 else ret[:, :, 0]

    return wrapper


def _cast_like(values, dtype):
    """Cast float results to ``dtype``, rounding and saturating for integer types as OpenCV does."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    elif dtype.kind == "b":
        values = np.rint(values)
    return values.astype(dtype)


@wrap_keepdims
def to_gray(image):
    r"""BGR image (H, W, 3) to a gray one (H, W, 1): ``0.114 B + 0.587 G + 0.299 R`` (uint8 and
    uint16 in OpenCV's fixed point: ``(1868 B + 9617 G + 4899 R + 2**13) >> 14``)."""
    if image.shape[2] == 1:
        return image.copy()
    if image.shape[2] not in (3, 4):
        raise ValueError("to_gray needs a BGR(A) image with 3 or 4 channels, got {}".format(image.shape[2]))
    if image.dtype in (np.uint8, np.uint16):
        # OpenCV's integer path (upstream calls cv2.cvtColor): 14-bit fixed-point weights,
        # rounded (float weights put about 0.2% of uint8 pixels one level off)
        b, g, r = (image[:, :, k].astype(np.int64) for k in range(3))
        gray = (b * 1868 + g * 9617 + r * 4899 + (1 << 13)) >> 14
        return gray.astype(image.dtype)[:, :, None]
    weights = np.array([0.114, 0.587, 0.299], dtype=np.float32)
    gray = image[:, :, :3].astype(np.float32) @ weights
    return _cast_like(gray, image.dtype)[:, :, None]


@wrap_keepdims
def to_bgr(image):
    r"""Gray image (H, W, 1) to a BGR one (H, W, 3) with three equal channels."""
    if image.shape[2] != 1:
        raise ValueError("to_bgr needs a 1-channel image, got {} channels".format(image.shape[2]))
    return np.repeat(image, 3, axis=2)


def _pad_sizes(size):
    """Normalise a pad size to (top, bottom, left, right)."""
    if isinstance(size, (int, np.integer)):
        size = (size,) * 4
    elif isinstance(size, collections.abc.Sequence) and len(size) == 2:
        size = (0, size[0], 0, size[1])
    elif not (isinstance(size, collections.abc.Sequence) and len(size) == 4):
        raise ValueError(
            "pad size should be an int, (bottom, right) or (top, bottom, left, right), but got {!r}".format(size)
        )
    if any(int(s) < 0 for s in size):
        raise ValueError("pad sizes must be non-negative, but got {!r}".format(size))
    return tuple(int(s) for s in size)


@wrap_keepdims
def pad(input, size, value):
    r"""Pad an (H, W, C) array with a constant border.

    Args:
        size: an int (all four sides), ``(bottom, right)`` or ``(top, bottom, left, right)``.
        value: border value, a number or one number per channel (as OpenCV's Scalar:
            missing channels get 0). A float value turns the result into float32.
    """
    top, bottom, left, right = _pad_sizes(size)
    if np.asarray(value).dtype.kind == "f":
        input = input.astype(np.float32)
    h, w, c = input.shape
    fill = np.zeros(c, dtype=np.float64)
    flat = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if flat.size == 1:
        fill[:] = flat[0]
    else:
        fill[: min(c, flat.size)] = flat[:c]
    out = np.empty((h + top + bottom, w + left + right, c), dtype=input.dtype)
    out[...] = _cast_like(fill, input.dtype)
    out[top : top + h, left : left + w] = input
    return out


@wrap_keepdims
def flip(image, flipCode):
    r"""Flip an image: ``flipCode`` 1 horizontally, 0 vertically, -1 both (OpenCV's codes)."""
    if flipCode == 1:
        return np.ascontiguousarray(image[:, ::-1])
    if flipCode == 0:
        return np.ascontiguousarray(image[::-1])
    if flipCode == -1:
        return np.ascontiguousarray(image[::-1, ::-1])
    raise ValueError("flipCode should be 1 (horizontal), 0 (vertical) or -1 (both), got {!r}".format(flipCode))


def _nearest_index(in_size, out_size):
    # OpenCV's INTER_NEAREST: src = floor(dst * in / out), no half-pixel shift.
    return np.minimum(np.floor(np.arange(out_size) * (1.0 / (out_size / in_size))).astype(np.intp), in_size - 1)


def _linear_index(in_size, out_size):
    # OpenCV's INTER_LINEAR: pixel centres are aligned, src = (dst + 0.5) * in / out - 0.5,
    # clamped to the border (the same as torch's align_corners=False).
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


@wrap_keepdims
def resize(input, size, interpolation=INTER_LINEAR):
    r"""Resize an (H, W, C) array to ``size`` = (height, width).

    Args:
        interpolation: ``INTER_NEAREST`` or ``INTER_LINEAR`` (OpenCV's codes 0 and 1), or a
            sequence of them to pick one at random.
    """
    if len(size) != 2:
        raise ValueError("resize needs size=(height, width), but got {!r}".format(size))
    if isinstance(interpolation, collections.abc.Sequence):
        interpolation = random.choice(interpolation)
    th, tw = int(size[0]), int(size[1])
    if th <= 0 or tw <= 0:
        raise ValueError("resize needs a positive target size, but got {!r}".format(size))
    h, w, _ = input.shape
    if h == 0 or w == 0:
        raise ValueError("resize needs a non-empty image, but got shape {}".format(input.shape))
    if interpolation == INTER_NEAREST:
        return input[_nearest_index(h, th)][:, _nearest_index(w, tw)]
    if interpolation != INTER_LINEAR:
        raise NotImplementedError(
            "resize supports INTER_NEAREST (0) and INTER_LINEAR (1) only, got interpolation={!r}; "
            "this build resizes with numpy, not OpenCV".format(interpolation)
        )
    work = np.float64 if input.dtype == np.float64 else np.float32
    y0, y1, wy = _linear_index(h, th)
    x0, x1, wx = _linear_index(w, tw)
    img = input.astype(work, copy=False)
    wy = wy.astype(work)[:, None, None]
    rows = img[y0] * (1 - wy) + img[y1] * wy
    wx = wx.astype(work)[None, :, None]
    out = rows[:, x0] * (1 - wx) + rows[:, x1] * wx
    return _cast_like(out, input.dtype)


# OpenCV's uint8 BGR -> HSV_FULL is integer arithmetic with 12-bit reciprocal tables (its
# RGB2HSV_b); HSV_FULL -> BGR runs in float32 (HSV2RGB_f) and rounds to even. Upstream's
# HueTransform goes through both, so they are emulated step for step: float64 formulas differ
# in about 3% of pixels by one level (H or S) and on exact halves of the way back.
_HSV_SHIFT = 12
_SDIV = np.array([0] + [int(np.rint((255 << _HSV_SHIFT) / i)) for i in range(1, 256)], np.int64)
_HDIV = np.array([0] + [int(np.rint((256 << _HSV_SHIFT) / (6.0 * i))) for i in range(1, 256)],
                 np.int64)


def bgr_to_hsv(image):
    r"""uint8 BGR (H, W, 3) to full-range HSV: H, S, V all in [0, 255] (OpenCV's
    COLOR_BGR2HSV_FULL, its integer algorithm)."""
    bgr = np.asarray(image).astype(np.int64)
    b, g, r = bgr[..., 0], bgr[..., 1], bgr[..., 2]
    v = bgr.max(axis=-1)
    diff = v - bgr.min(axis=-1)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    # the sextant's offset: red is the maximum first, then green, then blue
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT  # an arithmetic (floor) shift, as C's
    h = np.where(h < 0, h + 256, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_bgr(image):
    r"""Full-range uint8 HSV (H, W, 3) back to uint8 BGR (OpenCV's COLOR_HSV2BGR_FULL, in
    float32 as OpenCV computes it)."""
    hsv = np.asarray(image)
    f32 = np.float32
    h = hsv[..., 0].astype(f32) * f32(6.0 / 256)  # sextant position in [0, 6)
    s = hsv[..., 1].astype(f32) * f32(1.0 / 255)
    v = hsv[..., 2].astype(f32) * f32(1.0 / 255)
    sector = np.floor(h).astype(np.intp)
    f = h - sector.astype(f32)
    one = f32(1)
    p, q, t = v * (one - s), v * (one - s * f), v * (one - s * (one - f))
    # (r, g, b) per sector
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    r = np.choose(sector, [c[0] for c in table])
    g = np.choose(sector, [c[1] for c in table])
    b = np.choose(sector, [c[2] for c in table])
    gray = s == 0  # OpenCV's shortcut: no saturation, all channels v
    bgr = np.stack([np.where(gray, v, b), np.where(gray, v, g), np.where(gray, v, r)], axis=-1)
    return _cast_like(bgr * f32(255), np.uint8)
