"""Image functions on HWC numpy arrays (pad, flip, resize, colour conversion), written
with numpy in place of OpenCV and following OpenCV's conventions."""
import collections.abc
import functools
import platform
import random

import numpy as np

from .cv_resize import _saturate, resize_like_cv2

__all__ = [
    "INTER_NEAREST",
    "INTER_LINEAR",
    "INTER_CUBIC",
    "INTER_AREA",
    "INTER_LANCZOS4",
    "INTER_LINEAR_EXACT",
    "INTER_NEAREST_EXACT",
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
INTER_LINEAR_EXACT = 5
INTER_NEAREST_EXACT = 6


def wrap_keepdims(func):
    """Decorate ``func(image, ...)``, written for (H, W, C) images, so that a result of two
    dimensions comes back as (H, W, 1), as upstream's. An (H, W) image (which upstream refuses)
    is given to ``func`` as (H, W, 1), and a one-channel result comes back as (H, W); a result
    of more channels keeps them (``to_bgr`` of an (H, W) gray image is (H, W, 3))."""

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
        if ret.ndim == 2:
            return ret[:, :, None] if image.ndim == 3 else ret
        return ret[:, :, 0] if image.ndim == 2 and ret.shape[2] == 1 else ret

    return wrapper


@wrap_keepdims
def to_gray(image):
    r"""BGR image (H, W, 3) to a gray one (H, W, 1): ``0.114 B + 0.587 G + 0.299 R`` as
    ``cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)`` computes it (uint8 and uint16 in OpenCV 4's
    15-bit fixed point: ``(3735 B + 19235 G + 9798 R + 2**14) >> 15``; float32 with its fused
    multiply-adds)."""
    if image.shape[2] == 1:
        return image.copy()
    if image.shape[2] not in (3, 4):
        raise ValueError("to_gray needs a BGR(A) image with 3 or 4 channels, got {}".format(image.shape[2]))
    if image.dtype in (np.uint8, np.uint16):
        # cv2.cvtColor's integer path (upstream calls it), checked against OpenCV 4.14: float
        # weights put about 0.2% of uint8 pixels one level off, 14-bit ones (OpenCV 3) 0.3%
        b, g, r = (image[:, :, k].astype(np.int64) for k in range(3))
        gray = (b * 3735 + g * 19235 + r * 9798 + (1 << 14)) >> 15
        return gray.astype(image.dtype)[:, :, None]
    # OpenCV's float path on x86-64 (its Intel IPP kernel, on by default; 4.11 and 4.14):
    # fma(R, 0.299, fma(B, 0.114, G * 0.587)) in float32; each fused step is computed in
    # float64 (where a product of two float32 values is exact) and rounded to float32
    b, g, r = (image[:, :, k].astype(np.float32) for k in range(3))
    acc = g * np.float32(0.587)
    for channel, weight in ((b, 0.114), (r, 0.299)):
        acc = (channel.astype(np.float64) * np.float64(np.float32(weight)) + acc).astype(np.float32)
    return _saturate(acc, image.dtype)[:, :, None]


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


def _border_fill(value, channels):
    """The per-channel border colour ``cv2.copyMakeBorder`` makes of ``value`` (an OpenCV
    Scalar): a number fills the first channel only (``Scalar(v)`` is ``(v, 0, 0, 0)``), a
    sequence of up to 4 numbers fills channel by channel, missing ones with 0; an image of more
    than 4 channels takes a Scalar whose four entries are equal, in every channel."""
    flat = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if flat.size > 4:
        raise ValueError(
            "pad value is an OpenCV Scalar of at most 4 numbers, but got {} numbers: {!r}".format(flat.size, value)
        )
    scalar = np.zeros(4)
    scalar[: flat.size] = flat
    if channels <= 4:
        return scalar[:channels]
    if not (scalar == scalar[0]).all():
        raise ValueError(
            "a {}-channel image can only be padded with one value in all channels (OpenCV fills "
            "more than 4 channels with a Scalar of four equal entries), but got value={!r}; pass "
            "that value as a sequence of four equal numbers or as 0".format(channels, value)
        )
    return np.full(channels, scalar[0])


@wrap_keepdims
def pad(input, size, value):
    r"""Pad an (H, W, C) array with a constant border, as ``cv2.copyMakeBorder`` with
    ``BORDER_CONSTANT``.

    Args:
        size: an int (all four sides), ``(bottom, right)`` or ``(top, bottom, left, right)``.
        value: border value as OpenCV's Scalar: a number fills the *first* channel and leaves
            the others 0 (``Scalar(v) = (v, 0, 0, 0)``); give one number per channel (at most
            4) for a colour. Values are rounded (halves to even) and saturated to the image's
            dtype. A float64 value (a Python float, or a list holding one) turns the image into
            float32 first, as upstream does.
    """
    top, bottom, left, right = _pad_sizes(size)
    if np.asarray(value).dtype == np.float64:
        input = input.astype(np.float32)
    h, w, c = input.shape
    out = np.empty((h + top + bottom, w + left + right, c), dtype=input.dtype)
    if top or bottom or left or right:  # (cv2 reads no value when nothing is padded)
        out[...] = _saturate(_border_fill(value, c), input.dtype)
    out[top : top + h, left : left + w] = input
    return out


@wrap_keepdims
def flip(image, flipCode):
    r"""Flip an image: ``flipCode`` 1 horizontally, 0 vertically, -1 both (OpenCV's codes; as
    ``cv2.flip``, any positive code flips horizontally and any negative one both ways)."""
    if not isinstance(flipCode, (int, np.integer)) or isinstance(flipCode, (bool, np.bool_)):
        raise ValueError("flipCode should be 1 (horizontal), 0 (vertical) or -1 (both), got {!r}".format(flipCode))
    if flipCode > 0:
        return np.ascontiguousarray(image[:, ::-1])
    if flipCode == 0:
        return np.ascontiguousarray(image[::-1])
    return np.ascontiguousarray(image[::-1, ::-1])


_INTERPOLATIONS = {
    INTER_NEAREST: "INTER_NEAREST",
    INTER_LINEAR: "INTER_LINEAR",
    INTER_CUBIC: "INTER_CUBIC",
    INTER_AREA: "INTER_AREA",
    INTER_LANCZOS4: "INTER_LANCZOS4",
    INTER_LINEAR_EXACT: "INTER_LINEAR_EXACT",
    INTER_NEAREST_EXACT: "INTER_NEAREST_EXACT",
}

# OpenCV's x86 wheels hand some resizes to Intel IPP, its ARM wheels have no IPP: follow the
# OpenCV that upstream's transforms would load on this machine
_OPENCV_USES_IPP = platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686")

# the dtypes cv2.resize interpolates (others it resizes with INTER_NEAREST only)
_CV_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64))


@wrap_keepdims
def resize(input, size, interpolation=INTER_LINEAR):
    r"""Resize an (H, W, C) array to ``size`` = (height, width), as ``cv2.resize`` does.

    Args:
        interpolation: one of OpenCV's codes, or a sequence of them to pick one at random:

            * ``INTER_NEAREST`` (0): the pixel at ``floor(dst * in / out)``.
            * ``INTER_LINEAR`` (1, default): bilinear with pixel centres aligned.
            * ``INTER_CUBIC`` (2): bicubic (Keys, a = -0.75) over 4 x 4 pixels.
            * ``INTER_AREA`` (3): the mean over each output pixel's area when shrinking;
              OpenCV's bilinear-like weights when enlarging.
            * ``INTER_LANCZOS4`` (4): Lanczos over 8 x 8 pixels.
            * ``INTER_LINEAR_EXACT`` (5): bilinear in OpenCV's bit-exact fixed point (8 fraction
              bits per weight for 8-bit images, 16 for 16-bit ones); floats: ``INTER_LINEAR``.
            * ``INTER_NEAREST_EXACT`` (6): the pixel under each output pixel's centre.

    The result is OpenCV's (4.x wheels) to the level for uint8 images: its float32
    coefficients, its 11-bit fixed point and border rules, and, where the x86 wheels hand the
    work to Intel IPP (uint8 cubic with 1, 3 or 4 channels; ARM wheels have no IPP and are
    followed on ARM machines), a float64 filter that differs from IPP's only on sums within
    about 1e-5 of a half. float32 images are OpenCV's to the
    bit outside IPP's cases (linear and cubic with 1, 3 or 4 channels), within a few float32
    units there. 16-bit images are within a level of OpenCV's (int8 and int32 ones with
    ``INTER_LINEAR_EXACT`` too). An image of the requested size comes back as a copy.
    """
    if len(size) != 2:
        raise ValueError("resize needs size=(height, width), but got {!r}".format(size))
    if isinstance(interpolation, collections.abc.Sequence):
        interpolation = random.choice(interpolation)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            "resize supports OpenCV's interpolation codes {}, but got interpolation={!r}".format(
                ", ".join("{} ({})".format(n, c) for c, n in _INTERPOLATIONS.items()), interpolation
            )
        )
    th, tw = int(size[0]), int(size[1])
    if th <= 0 or tw <= 0:
        raise ValueError("resize needs a positive target size, but got {!r}".format(size))
    h, w, _ = input.shape
    if h == 0 or w == 0:
        raise ValueError("resize needs a non-empty image, but got shape {}".format(input.shape))
    small_int = input.dtype.kind in "iu" and input.dtype.itemsize <= 2
    if (input.dtype in _CV_DTYPES or interpolation in (INTER_NEAREST, INTER_NEAREST_EXACT)
            or (interpolation == INTER_LINEAR_EXACT and small_int)):
        return resize_like_cv2(input, th, tw, interpolation, ipp=_OPENCV_USES_IPP)
    # OpenCV refuses other dtypes (int8, int32, float16, ...) but for nearest (and their
    # bit-exact linear); resize them through a float type that holds them exactly and round
    # back as OpenCV's casts do
    work = np.float32 if input.dtype.itemsize <= 2 and input.dtype.kind != "b" else np.float64
    out = resize_like_cv2(input.astype(work), th, tw, interpolation, ipp=_OPENCV_USES_IPP)
    return _saturate(out, input.dtype)


# OpenCV's uint8 BGR -> HSV_FULL is integer arithmetic with 12-bit reciprocal tables (its
# RGB2HSV_b); HSV_FULL -> BGR runs in float32 (HSV2RGB_f) and rounds to even, and reads the hue
# on a 0..255 circle (hscale 6 / 255) where the forward way writes it on 0..256. Upstream's
# HueTransform goes through both, so they are emulated step for step: float64 formulas differ
# in about 3% of pixels by one level (H or S) and on exact halves of the way back.
_HSV_SHIFT = 12
_SDIV = np.array([0] + [int(np.rint((255 << _HSV_SHIFT) / i)) for i in range(1, 256)], np.int64)
_HDIV = np.array([0] + [int(np.rint((256 << _HSV_SHIFT) / (6.0 * i))) for i in range(1, 256)],
                 np.int64)


def bgr_to_hsv(image):
    r"""uint8 BGR (H, W, 3) to full-range HSV: H, S, V all in [0, 255] (OpenCV's
    COLOR_BGR2HSV_FULL, its integer algorithm). A BGRA image (H, W, 4) gives the HSV of its
    colour, as OpenCV's conversion takes 3 or 4 channels (upstream's HueTransform of a BGRA
    image returns BGR)."""
    bgr = np.asarray(image)
    if bgr.ndim != 3 or bgr.shape[2] not in (3, 4):
        raise ValueError("bgr_to_hsv needs an (H, W, 3) BGR or (H, W, 4) BGRA image, but got "
                         "shape {}; hue applies to colour images only".format(bgr.shape))
    bgr = bgr[..., :3].astype(np.int64)
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
    h = hsv[..., 0].astype(f32) * f32(6.0 / 255)  # sextant position in [0, 6]; 6 is sextant 0
    s = hsv[..., 1].astype(f32) * f32(1.0 / 255)
    v = hsv[..., 2].astype(f32) * f32(1.0 / 255)
    sector = np.floor(h).astype(np.intp)
    f = h - sector.astype(f32)
    sector %= 6  # OpenCV's fmod(h, 6): h = 255 (6.0) is red again
    one = f32(1)
    p, q, t = v * (one - s), v * (one - s * f), v * (one - s * (one - f))
    # (r, g, b) per sector
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    r = np.choose(sector, [c[0] for c in table])
    g = np.choose(sector, [c[1] for c in table])
    b = np.choose(sector, [c[2] for c in table])
    gray = s == 0  # OpenCV's shortcut: no saturation, all channels v
    bgr = np.stack([np.where(gray, v, b), np.where(gray, v, g), np.where(gray, v, r)], axis=-1)
    return _saturate(bgr * f32(255), np.uint8)
