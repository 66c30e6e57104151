"""Convolution (F.nn.conv1d/conv2d/conv_transpose2d): forward and both backward passes per op."""

__all__ = ["conv1d", "conv2d", "conv_transpose2d"]


from ..core import amp as _amp
from ..core.dispatch import Op, apply
from ..core.ops import xp_of
from ..core.tensor import promote_types
from ._args import _pair, _tensor


# ----- convolution -----

def _pad2d(x, ph, pw, value=0):
    """``x`` (N, C, H, W) with ``ph``/``pw`` rows/columns of ``value`` on both sides."""
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    out = xp_of(x).full((n, c, h + 2 * ph, w + 2 * pw), value, x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _windows(xpad, kh, kw, oh, ow, stride, dilation):
    """The (N, C, kh, kw, OH, OW) view of every kernel window of ``xpad``: no copy."""
    sn, sc, sh, sw = xpad.strides
    n, c = xpad.shape[:2]
    return xp_of(xpad).lib.stride_tricks.as_strided(
        xpad, (n, c, kh, kw, oh, ow),
        (sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]))


def _col2im(cols, shape, stride, dilation):
    """Sum window values ``cols`` (N, C, kh, kw, OH, OW) back into an array of ``shape``.

    One strided slice-add per kernel offset: kh*kw vectorised passes, no scatter.
    """
    out = xp_of(cols).zeros(shape, cols.dtype)
    kh, kw, oh, ow = cols.shape[2:]
    (sh, sw), (dh, dw) = stride, dilation
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                j * dw:j * dw + sw * (ow - 1) + 1:sw] += cols[:, :, i, j]
    return out


def _group_weight(w, groups, what, transposed=False):
    """The weight as (G, A, B, kh, kw): A = out (in for transposed) and B = in (out) per group.

    Accepts upstream's grouped layout (G, A, B, kh, kw) and the flat (G*A, B, kh, kw) one.
    """
    if w.ndim == 5:
        if w.shape[0] != groups:
            raise ValueError(f"{what}: a 5-d weight of shape {w.shape} has {w.shape[0]} groups, "
                             f"but groups={groups}")
        return w
    if w.ndim != 4:
        layout = "(in, out/groups, kh, kw)" if transposed else "(out, in/groups, kh, kw)"
        raise ValueError(f"{what}: expected a 4-d weight {layout} or a 5-d grouped weight, "
                         f"got shape {w.shape}")
    if w.shape[0] % groups:
        raise ValueError(f"{what}: weight of shape {w.shape}: dim 0 ({w.shape[0]}) is not "
                         f"divisible by groups={groups}")
    return w.reshape((groups, w.shape[0] // groups) + w.shape[1:])


def _conv_out(size, k, s, p, d, what, axis):
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    if out < 1:
        raise ValueError(f"{what}: the input is too small along {axis} ({size}, padding {p}) "
                         f"for a kernel of {k} with dilation {d}")
    return out


def _bias_view(b, channels, what):
    if b.size != channels:
        raise ValueError(f"{what}: bias of shape {b.shape} does not match the {channels} "
                         "output channels (expected (1, C, 1, 1) or (C,))")
    return b.reshape(1, channels, 1, 1)


class _Conv2d(Op):
    """Cross-correlation by im2col + one batched matmul; the data gradient by col2im."""

    def __init__(self, stride, padding, dilation, groups, what):
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.what = groups, what

    def forward(self, x, w, b=None):
        what = self.what
        if x.ndim != 4:
            raise ValueError(f"{what}: expected a 4-d input (N, C, H, W), got shape {x.shape}")
        w5 = _group_weight(w, self.groups, what)
        g, og, cg, kh, kw = w5.shape
        n, c, h, wd = x.shape
        if c != g * cg:
            raise ValueError(
                f"{what}: input of shape {x.shape} has {c} channels but the weight of shape "
                f"{w.shape} expects {g * cg} (groups={g} x {cg} in-channels per group)")
        dtype = promote_types(x.dtype, w.dtype)
        x, w5 = x.astype(dtype, copy=False), w5.astype(dtype, copy=False)
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oh = _conv_out(h, kh, sh, ph, dh, what, "H")
        ow = _conv_out(wd, kw, sw, pw, dw, what, "W")
        xpad = _pad2d(x, ph, pw)
        if kh == kw == 1 and sh == sw == 1 and not ph and not pw:
            cols = x.reshape(n, g, cg, h * wd)  # 1x1 convolution: the input is its own im2col
        else:
            cols = _windows(xpad, kh, kw, oh, ow, self.stride, self.dilation) \
                .reshape(n, g, cg * kh * kw, oh * ow)
        wmat = w5.reshape(g, og, cg * kh * kw)
        y = (wmat @ cols).reshape(n, g * og, oh, ow)
        if b is not None:
            y += _bias_view(b, g * og, what)
            self.b_shape = b.shape
        needs = self.needs_input_grad
        self.cols = cols if needs[1] else None
        self.wmat = wmat if needs[0] else None
        self.w_shape, self.xpad_shape, self.x_shape = w.shape, xpad.shape, x.shape
        return y

    def backward(self, gy):
        needs = self.needs_input_grad
        n, o, oh, ow = gy.shape
        g = self.groups
        g4 = gy.reshape(n, g, o // g, oh * ow)
        gx = gw = gb = None
        if needs[0]:
            kh, kw = self.w_shape[-2:]
            dcols = (self.wmat.transpose(0, 2, 1) @ g4).reshape(n, -1, kh, kw, oh, ow)
            gxpad = _col2im(dcols, self.xpad_shape, self.stride, self.dilation)
            (ph, pw), (h, wd) = self.padding, self.x_shape[2:]
            gx = gxpad[:, :, ph:ph + h, pw:pw + wd] if ph or pw else gxpad
        if needs[1]:
            gw = (g4 @ self.cols.transpose(0, 1, 3, 2)).sum(0).reshape(self.w_shape)
        if len(needs) == 2:
            return gx, gw
        if needs[2]:
            gb = gy.reshape(n, o, -1).sum(2).sum(0).reshape(self.b_shape)
        return gx, gw, gb


class _ConvTranspose2d(Op):
    """The adjoint of `_Conv2d` in its input: col2im forward, im2col + matmul backward."""

    def __init__(self, stride, padding, output_padding, dilation, groups):
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.output_padding, self.groups = output_padding, groups

    def forward(self, x, w, b=None):
        what = "conv_transpose2d"
        if x.ndim != 4:
            raise ValueError(f"{what}: expected a 4-d input (N, C, H, W), got shape {x.shape}")
        w5 = _group_weight(w, self.groups, what, transposed=True)
        g, ig, og, kh, kw = w5.shape
        n, c, h, wd = x.shape
        if c != g * ig:
            raise ValueError(
                f"{what}: input of shape {x.shape} has {c} channels but the weight of shape "
                f"{w.shape} expects {g * ig} (groups={g} x {ig} in-channels per group)")
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oph, opw = self.output_padding
        if oph >= max(sh, dh) or opw >= max(sw, dw):
            raise ValueError(f"{what}: output_padding {self.output_padding} must be smaller than "
                             f"stride {self.stride} or dilation {self.dilation}")
        oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
        ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"{what}: padding {self.padding} leaves no output for an input of "
                             f"shape {x.shape} and a weight of shape {w.shape}")
        dtype = promote_types(x.dtype, w.dtype)
        x, w5 = x.astype(dtype, copy=False), w5.astype(dtype, copy=False)
        wmat = w5.reshape(g, ig, og * kh * kw)
        xg = x.reshape(n, g, ig, h * wd)
        cols = (wmat.transpose(0, 2, 1) @ xg).reshape(n, g * og, kh, kw, h, wd)
        ypad = _col2im(cols, (n, g * og, oh + 2 * ph, ow + 2 * pw), self.stride, self.dilation)
        y = xp_of(x).ascontiguousarray(ypad[:, :, ph:ph + oh, pw:pw + ow]) if ph or pw else ypad
        if b is not None:
            y += _bias_view(b, g * og, what)
            self.b_shape = b.shape
        self.xg = xg if self.needs_input_grad[1] else None
        self.wmat, self.w_shape, self.x_shape = wmat, w.shape, x.shape
        return y

    def backward(self, gy):
        needs = self.needs_input_grad
        n, c, h, wd = self.x_shape
        g = self.groups
        kh, kw = self.w_shape[-2:]
        gpad = _pad2d(gy, *self.padding)
        gcols = _windows(gpad, kh, kw, h, wd, self.stride, self.dilation) \
            .reshape(n, g, -1, h * wd)
        gx = (self.wmat @ gcols).reshape(self.x_shape) if needs[0] else None
        gw = (self.xg @ gcols.transpose(0, 1, 3, 2)).sum(0).reshape(self.w_shape) \
            if needs[1] else None
        if len(needs) == 2:
            return gx, gw
        gb = gy.reshape(n, gy.shape[1], -1).sum(2).sum(0).reshape(self.b_shape) \
            if needs[2] else None
        return gx, gw, gb


def _check_conv_mode(conv_mode, compute_mode, what):
    mode = str(getattr(conv_mode, "name", conv_mode)).lower()
    if mode != "cross_correlation":
        raise ValueError(f"{what}: conv_mode must be 'cross_correlation', got {conv_mode!r}")
    cmode = str(getattr(compute_mode, "name", compute_mode)).lower()
    if cmode not in ("default", "float32"):
        raise ValueError(f"{what}: compute_mode must be 'default' or 'float32', "
                         f"got {compute_mode!r}")


def _conv_inputs(inp, weight, bias):
    inputs = (_tensor(inp), _tensor(weight))
    inputs = inputs if bias is None else inputs + (_tensor(bias),)
    return _amp.cast_for_compute(*inputs)  # megengine.amp.autocast: float16 compute


def conv2d(inp, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           conv_mode="cross_correlation", compute_mode="default"):
    """2-d cross-correlation of NCHW ``inp`` with ``weight`` (out, in/groups, kh, kw).

    With ``groups`` > 1 the weight may also be upstream's (groups, out/groups, in/groups, kh, kw).
    ``bias`` has ``out`` elements, (1, out, 1, 1) as upstream's Conv2d keeps it.
    """
    _check_conv_mode(conv_mode, compute_mode, "conv2d")
    op = _Conv2d(_pair(stride, "stride", "conv2d"), _pair(padding, "padding", "conv2d"),
                 _pair(dilation, "dilation", "conv2d"), int(groups), "conv2d")
    return apply(op, *_conv_inputs(inp, weight, bias))


def conv1d(inp, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           conv_mode="cross_correlation", compute_mode="default"):
    """1-d cross-correlation of (N, C, L) ``inp`` with ``weight`` (out, in/groups, k).

    With ``groups`` > 1 the weight may also be (groups, out/groups, in/groups, k); ``bias`` has
    ``out`` elements ((1, out, 1) as upstream's Conv1d keeps it).
    """
    _check_conv_mode(conv_mode, compute_mode, "conv1d")
    inp, weight = _tensor(inp), _tensor(weight)
    if inp.ndim != 3:
        raise ValueError(f"conv1d: expected a 3-d input (N, C, L), got shape {inp.shape}")
    if weight.ndim not in (3, 4):
        raise ValueError(f"conv1d: expected a 3-d weight (out, in/groups, k) or a 4-d grouped "
                         f"weight, got shape {weight.shape}")
    # A length-L signal is an L x 1 image: reuse the 2-d op on views.
    op = _Conv2d((int(stride), 1), (int(padding), 0), (int(dilation), 1), int(groups), "conv1d")
    inputs = (inp.reshape(inp.shape + (1,)), weight.reshape(weight.shape + (1,)))
    if bias is not None:
        inputs += (_tensor(bias),)
    out = apply(op, *_amp.cast_for_compute(*inputs))  # megengine.amp.autocast
    return out.reshape(out.shape[:3])


def conv_transpose2d(inp, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, conv_mode="cross_correlation", compute_mode="default"):
    """Transposed 2-d convolution (the gradient of conv2d in its input).

    ``weight`` is (in, out/groups, kh, kw), or upstream's grouped
    (groups, in/groups, out/groups, kh, kw); ``bias`` has ``out`` elements.
    """
    _check_conv_mode(conv_mode, compute_mode, "conv_transpose2d")
    what = "conv_transpose2d"
    op = _ConvTranspose2d(_pair(stride, "stride", what), _pair(padding, "padding", what),
                          _pair(output_padding, "output_padding", what),
                          _pair(dilation, "dilation", what), int(groups))
    return apply(op, *_conv_inputs(inp, weight, bias))
