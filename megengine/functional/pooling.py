"""Pooling (F.nn.max_pool2d/avg_pool2d and the adaptive ones): forward and backward per op."""
import numpy as np

from ..core.dispatch import Op, apply
from ..core.ops import xp_of
from .conv import _pad2d
from ._args import _as_float, _pair, _tensor

__all__ = ["adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d"]


# ----- pooling -----

class _Pool2d(Op):
    """Max or average pooling as kh*kw strided slices of the padded input: no window copies.

    The max gradient goes to the first maximum of each window in row-major order, as PyTorch.
    """

    def __init__(self, mode, kernel, stride, padding, what):
        self.mode, self.kernel, self.stride, self.padding, self.what = \
            mode, kernel, stride, padding, what

    def forward(self, x):
        what = self.what
        if x.ndim != 4:
            raise ValueError(f"{what}: expected a 4-d input (N, C, H, W), got shape {x.shape}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
            raise ValueError(f"{what}: kernel_size {self.kernel} and stride {self.stride} must be "
                             f"positive and padding {self.padding} non-negative")
        n, c, h, w = x.shape
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"{what}: input of shape {x.shape} is smaller than the window "
                             f"{self.kernel} (padding {self.padding})")
        xp = xp_of(x)
        is_max = self.mode == "max"
        if not is_max:
            x = _as_float(x)
        fill = 0
        if is_max and (ph or pw):
            fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        self.xpad = xpad = _pad2d(x, ph, pw, fill)
        self.slices = [(slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))
                       for i in range(kh) for j in range(kw)]
        self.x_shape = x.shape
        out = xpad[(Ellipsis,) + self.slices[0]].copy()
        for si, sj in self.slices[1:]:
            if is_max:
                xp.maximum(out, xpad[:, :, si, sj], out=out)
            else:
                out += xpad[:, :, si, sj]
        if is_max:
            self.out = out
            return out
        if self.mode == "average":  # the padding counts: always kh*kw
            self.count = out.dtype.type(kh * kw)
        else:  # average_count_exclude_padding: only real elements count (separable per axis)
            top, left = xp.arange(oh) * sh - ph, xp.arange(ow) * sw - pw
            rows = xp.minimum(top + kh, h) - xp.maximum(top, 0)
            cols = xp.minimum(left + kw, w) - xp.maximum(left, 0)
            self.count = (rows[:, None] * cols[None, :]).astype(out.dtype)
        out /= self.count
        return out

    def backward(self, g):
        xp = xp_of(g)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        n, c, h, w = self.x_shape
        oh, ow = g.shape[2:]
        # Disjoint windows write their slices directly (no temporaries); when they also tile
        # the whole input, no zero fill is needed either.
        disjoint = kh <= sh and kw <= sw
        tiled = disjoint and (kh, kw) == (sh, sw) and not ph and not pw \
            and (h, w) == (oh * sh, ow * sw)
        gxpad = (xp.empty if tiled else xp.zeros)(self.xpad.shape, g.dtype)
        if self.mode == "max":
            free = None  # windows whose gradient is not yet given to an element
            last = len(self.slices) - 1
            for k, (si, sj) in enumerate(self.slices):
                hit = self.xpad[:, :, si, sj] == self.out
                if free is not None:
                    hit &= free
                if disjoint:
                    xp.multiply(g, hit, out=gxpad[:, :, si, sj])
                else:
                    gxpad[:, :, si, sj] += g * hit
                if k < last:
                    if free is None:
                        free = ~hit
                    else:
                        free ^= hit  # hit is inside free: this clears it
        else:
            gs = g / self.count
            for si, sj in self.slices:
                if disjoint:
                    gxpad[:, :, si, sj] = gs
                else:
                    gxpad[:, :, si, sj] += gs
        return gxpad[:, :, ph:ph + h, pw:pw + w] if ph or pw else gxpad


def max_pool2d(inp, kernel_size, stride=None, padding=0):
    """2-d max pooling of NCHW ``inp``; ``stride`` defaults to ``kernel_size``, padding is -inf."""
    kernel = _pair(kernel_size, "kernel_size", "max_pool2d")
    stride = kernel if stride is None else _pair(stride, "stride", "max_pool2d")
    return apply(_Pool2d("max", kernel, stride, _pair(padding, "padding", "max_pool2d"),
                         "max_pool2d"), _tensor(inp))


_AVG_MODES = ("average_count_exclude_padding", "average")


def avg_pool2d(inp, kernel_size, stride=None, padding=0, mode="average_count_exclude_padding"):
    """2-d average pooling of NCHW ``inp``; ``stride`` defaults to ``kernel_size``.

    ``mode`` "average_count_exclude_padding" (default) divides by the real elements in each
    window; "average" divides by kh*kw, counting the zero padding.
    """
    m = str(getattr(mode, "name", mode)).lower()
    if m not in _AVG_MODES:
        raise ValueError(f"avg_pool2d: mode must be one of {_AVG_MODES}, got {mode!r}")
    kernel = _pair(kernel_size, "kernel_size", "avg_pool2d")
    stride = kernel if stride is None else _pair(stride, "stride", "avg_pool2d")
    return apply(_Pool2d(m, kernel, stride, _pair(padding, "padding", "avg_pool2d"),
                         "avg_pool2d"), _tensor(inp))


def _adaptive(inp, oshp, mode, what):
    inp = _tensor(inp)
    if inp.ndim != 4:
        raise ValueError(f"{what}: expected a 4-d input (N, C, H, W), got shape {inp.shape}")
    oh, ow = _pair(oshp, "oshp", what)
    h, w = inp.shape[2:]
    if not (1 <= oh <= h and 1 <= ow <= w):
        raise ValueError(f"{what}: output size {(oh, ow)} must be between 1 and the input's "
                         f"spatial size {(h, w)}")
    # upstream's rule: stride = in // out, window = in - (out - 1) * stride, no padding
    sh, sw = h // oh, w // ow
    kernel = (h - (oh - 1) * sh, w - (ow - 1) * sw)
    return apply(_Pool2d(mode, kernel, (sh, sw), (0, 0), what), inp)


def adaptive_max_pool2d(inp, oshp):
    """Max pooling to output size ``oshp`` (int or (OH, OW)), windows chosen as upstream."""
    return _adaptive(inp, oshp, "max", "adaptive_max_pool2d")


def adaptive_avg_pool2d(inp, oshp):
    """Average pooling to output size ``oshp`` (int or (OH, OW)), windows chosen as upstream."""
    return _adaptive(inp, oshp, "average", "adaptive_avg_pool2d")
