"""Neural-network functions (F.nn): activations, linear, convolution, pooling, normalization, ..."""
import math

import numpy as np

from ..core.dispatch import Op, apply
from ..core.ops import unbroadcast, xp_of
from ..core.tensor import Tensor, _operand, promote_types

__all__ = [
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm", "conv1d", "conv2d",
    "conv_transpose2d", "cross_entropy_with_softmax", "dropout", "embedding", "gelu",
    "group_norm", "hsigmoid", "hswish", "interpolate", "layer_norm", "leaky_relu", "linear",
    "logsigmoid", "logsoftmax", "max_pool2d",
    "pixel_shuffle", "prelu", "relu", "relu6", "sigmoid", "silu", "softmax", "softplus",
]


# ----- argument helpers -----

def _tensor(x):
    """``x`` as a Tensor: Tensors pass through, numbers, lists and arrays become one."""
    return x if isinstance(x, Tensor) else Tensor(x)


def _pair(value, name, what):
    """An int or a pair of ints as a (h, w) tuple of Python ints."""
    if isinstance(value, Tensor):
        value = value.numpy().tolist()
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        h, w = value
        return int(h), int(w)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: {name} must be an int or a pair of ints, got {value!r}") from None


def _as_float(x):
    """Integer input of a float function is computed in float32, as upstream does."""
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def _axes(axis, ndim, what):
    """``axis`` (an int or a sequence) as a sorted tuple of non-negative axes, checked."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = set()
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{what}: axis {a} is out of range for a tensor with {ndim} dims")
        out.add(int(a) % ndim)
    return tuple(sorted(out))


# ----- element-wise activations -----

class _Relu(Op):
    def forward(self, x):
        # integers stay integers, as upstream; a typed zero keeps numpy on its fast loop
        self.y = y = xp_of(x).maximum(x, x.dtype.type(0))
        return y

    def backward(self, g):
        return xp_of(g).multiply(g, self.y > 0, dtype=g.dtype)


class _Activation(Op):
    """``y = f(x)`` element-wise on floats; subclasses give ``compute`` and ``grad``."""

    def forward(self, x):
        self.x = x = _as_float(x)
        self.y = self.compute(xp_of(x), x)
        return self.y

    def backward(self, g):
        return self.grad(xp_of(g), self.x, self.y, g)


def _sigmoid(xp, x):
    # exp(-|x|) never overflows; both branches keep full relative precision
    e = xp.exp(-xp.abs(x))
    d = 1 + e
    return xp.where(x >= 0, 1 / d, e / d)


def _log1p_exp_neg_abs(xp, x):
    """log(1 + exp(-|x|)): the part of softplus that cannot overflow."""
    return xp.log1p(xp.exp(-xp.abs(x)))


# Abramowitz & Stegun 7.1.26: erfc(z) = poly(t) * exp(-z^2), t = 1/(1 + p z), z >= 0; its
# absolute error is below 1.5e-7, inside float32 rounding of the results that use it.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _normal_cdf(xp, x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, via erfc(|x| / sqrt 2): for negative x the small
    value is computed directly instead of as the difference 1 - erf."""
    z = xp.abs(x) * x.dtype.type(1 / math.sqrt(2))
    t = 1 / (1 + _AS_P * z)
    a1, a2, a3, a4, a5 = _AS_A
    half_erfc = 0.5 * (t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))) * xp.exp(-z * z)
    return xp.where(x >= 0, 1 - half_erfc, half_erfc)


class _LeakyRelu(_Activation):
    def __init__(self, negative_slope):
        self.slope = negative_slope

    def compute(self, xp, x):
        return xp.where(x > 0, x, x * x.dtype.type(self.slope))

    def grad(self, xp, x, y, g):
        return xp.where(x > 0, g, g * g.dtype.type(self.slope))


class _Relu6(_Activation):
    def compute(self, xp, x):
        return xp.clip(x, 0, 6)

    def grad(self, xp, x, y, g):
        return g * ((x > 0) & (x < 6))


class _Sigmoid(_Activation):
    def compute(self, xp, x):
        return _sigmoid(xp, x)

    def grad(self, xp, x, y, g):
        return g * y * (1 - y)


class _HSigmoid(_Activation):
    def compute(self, xp, x):
        return xp.clip(x + 3, 0, 6) / 6

    def grad(self, xp, x, y, g):
        return g * ((x > -3) & (x < 3)) / 6


class _HSwish(_Activation):
    def compute(self, xp, x):
        return x * xp.clip(x + 3, 0, 6) / 6

    def grad(self, xp, x, y, g):
        return g * xp.where(x < -3, 0, xp.where(x > 3, 1, (2 * x + 3) / 6))


class _Gelu(_Activation):
    def compute(self, xp, x):
        self.cdf = _normal_cdf(xp, x)
        return x * self.cdf

    def grad(self, xp, x, y, g):
        pdf = xp.exp(-0.5 * x * x) * x.dtype.type(1 / math.sqrt(2 * math.pi))
        return g * (self.cdf + x * pdf)


class _Silu(_Activation):
    def compute(self, xp, x):
        self.s = _sigmoid(xp, x)
        return x * self.s

    def grad(self, xp, x, y, g):
        s = self.s
        return g * (s * (1 + x * (1 - s)))


class _Softplus(_Activation):
    def compute(self, xp, x):
        return _log1p_exp_neg_abs(xp, x) + xp.maximum(x, 0)

    def grad(self, xp, x, y, g):
        return g * _sigmoid(xp, x)


class _LogSigmoid(_Activation):
    def compute(self, xp, x):
        return xp.minimum(x, 0) - _log1p_exp_neg_abs(xp, x)

    def grad(self, xp, x, y, g):
        return g * _sigmoid(xp, -x)


class _PRelu(Op):
    def forward(self, x, w):
        dtype = promote_types(x.dtype, w.dtype)
        x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        self.x, self.w = x, w
        try:
            return xp_of(x).where(x > 0, x, x * w)
        except ValueError:
            raise ValueError(f"prelu: weight of shape {w.shape} does not broadcast to the input "
                             f"of shape {x.shape}") from None

    def backward(self, g):
        xp = xp_of(g)
        pos = self.x > 0
        gx = xp.where(pos, g, g * self.w) if self.needs_input_grad[0] else None
        gw = unbroadcast(xp.where(pos, 0, g * self.x), self.w.shape) \
            if self.needs_input_grad[1] else None
        return gx, gw


def relu(x):
    """Element-wise ``max(x, 0)``."""
    return apply(_Relu(), _tensor(x))


def leaky_relu(inp, negative_slope=0.01):
    """Element-wise ``x`` where positive, else ``negative_slope * x``."""
    return apply(_LeakyRelu(float(negative_slope)), _tensor(inp))


def relu6(x):
    """Element-wise ``min(max(x, 0), 6)``."""
    return apply(_Relu6(), _tensor(x))


def sigmoid(x):
    """Element-wise ``1 / (1 + exp(-x))``, without overflow."""
    return apply(_Sigmoid(), _tensor(x))


def hsigmoid(x):
    """Element-wise ``relu6(x + 3) / 6``."""
    return apply(_HSigmoid(), _tensor(x))


def hswish(x):
    """Element-wise ``x * relu6(x + 3) / 6``."""
    return apply(_HSwish(), _tensor(x))


def gelu(x):
    """Element-wise ``x * Phi(x)``, Phi the standard normal CDF (the exact, erf form)."""
    return apply(_Gelu(), _tensor(x))


def silu(x):
    """Element-wise ``x * sigmoid(x)``."""
    return apply(_Silu(), _tensor(x))


def softplus(inp):
    """Element-wise ``log(1 + exp(x))``, computed as ``log1p(exp(-|x|)) + relu(x)``."""
    return apply(_Softplus(), _tensor(inp))


def logsigmoid(inp):
    """Element-wise ``log(sigmoid(x)) = -softplus(-x)``."""
    return apply(_LogSigmoid(), _tensor(inp))


def prelu(inp, weight):
    """Element-wise ``x`` where positive, else ``weight * x`` (``weight`` broadcasts)."""
    inp = _tensor(inp)
    return apply(_PRelu(), inp, _operand(weight, inp))


# ----- softmax family -----

class _Softmax(Op):
    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        x = _as_float(x)
        e = xp_of(x).exp(x - x.max(self.axes, keepdims=True))
        e /= e.sum(self.axes, keepdims=True)
        self.y = e
        return e

    def backward(self, g):
        y = self.y
        return y * (g - (g * y).sum(self.axes, keepdims=True))


class _LogSoftmax(Op):
    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        x = _as_float(x)
        xp = xp_of(x)
        shifted = x - x.max(self.axes, keepdims=True)
        self.y = shifted - xp.log(xp.exp(shifted).sum(self.axes, keepdims=True))
        return self.y

    def backward(self, g):
        return g - xp_of(g).exp(self.y) * g.sum(self.axes, keepdims=True)


def _get_softmax_axis(ndim):
    # upstream's default: axis 0 for 0-, 1- and 3-d input (C, H, W), else axis 1
    return 0 if ndim in (0, 1, 3) else 1


def softmax(inp, axis=None):
    """``exp(x) / sum(exp(x))`` along ``axis`` (default: 0 for 0/1/3-d input, else 1)."""
    inp = _tensor(inp)
    if axis is None:
        axis = _get_softmax_axis(inp.ndim)
    return apply(_Softmax(_axes(axis, inp.ndim, "softmax")), inp)


def logsoftmax(inp, axis):
    """``log(softmax(x))`` along ``axis``, computed as ``x - logsumexp(x)``."""
    inp = _tensor(inp)
    return apply(_LogSoftmax(_axes(axis, inp.ndim, "logsoftmax")), inp)


# ----- linear -----

class _Linear(Op):
    """``x @ W.T + b`` as one op: one matmul forward, at most two back."""

    def forward(self, x, w, b=None):
        if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"linear: input of shape {x.shape} does not match weight of shape {w.shape}; "
                "expected input (..., in_features) and weight (out_features, in_features)"
            )
        dtype = promote_types(x.dtype, w.dtype)
        self.x, self.w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        y = self.x @ self.w.T
        if b is not None:
            if b.size != w.shape[0]:
                raise ValueError(f"linear: bias of shape {b.shape} does not match "
                                 f"{w.shape[0]} out_features")
            self.b_shape = b.shape
            y += b.reshape(-1)
        return y

    def backward(self, g):
        needs = self.needs_input_grad
        x, w = self.x, self.w
        gx = g @ w if needs[0] else None
        g2 = g.reshape(-1, g.shape[-1])
        gw = g2.T @ x.reshape(-1, x.shape[-1]) if needs[1] else None
        if len(needs) == 2:
            return gx, gw
        gb = g2.sum(0).reshape(self.b_shape) if needs[2] else None
        return gx, gw, gb


def linear(inp, weight, bias=None, compute_mode="default"):
    """``inp @ weight.T + bias``; ``weight`` is (out_features, in_features)."""
    inp, weight = _tensor(inp), _tensor(weight)
    if bias is None:
        return apply(_Linear(), inp, weight)
    return apply(_Linear(), inp, weight, _tensor(bias))


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
    return inputs if bias is None else inputs + (_tensor(bias),)


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
    out = apply(op, *inputs)
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


# ----- normalization -----

class _BatchNorm(Op):
    """Batch norm of an (N, C, ...) input per channel.

    Inputs: x, then weight and bias if given, then running mean and var if given. Training
    normalizes with the batch statistics and, with running stats, also returns their updates
    ``momentum * running + (1 - momentum) * batch`` (unbiased batch variance) as two more
    outputs; inference normalizes with the running stats, which are constants. Each direction
    allocates one full-size array and works in place on it, and channel sums are einsums: fresh
    large arrays cost page faults that would dominate.
    """

    def __init__(self, eps, momentum, training, has_weight, has_bias, has_stats):
        self.eps, self.momentum, self.training = eps, momentum, training
        self.has_weight, self.has_bias, self.has_stats = has_weight, has_bias, has_stats

    def forward(self, x, *params):
        xp = xp_of(x)
        self.x_shape = x.shape
        n, c = x.shape[:2]
        self.x3 = x3 = _as_float(x).reshape(n, c, -1)
        self.m = m = max(x3.size // max(c, 1), 1)
        self.param_shapes = [p.shape for p in params]
        w = params[0].reshape(c).astype(x3.dtype, copy=False) if self.has_weight else None
        b = params[int(self.has_weight)].reshape(c).astype(x3.dtype, copy=False) \
            if self.has_bias else None
        if self.training:
            self.mean = xp.einsum("ncs->c", x3) / m
            y = x3 - self.mean[:, None]
            self.var = xp.einsum("ncs,ncs->c", y, y) / m
        else:
            rm, rv = params[-2:]
            self.mean = _as_float(rm).reshape(c)
            self.var = _as_float(rv).reshape(c)
            y = x3 - self.mean[:, None]
        self.inv = 1 / xp.sqrt(self.var + x3.dtype.type(self.eps))
        self.scale = self.inv if w is None else self.inv * w  # y = (x - mean) * scale + b
        y *= self.scale[:, None]
        if b is not None:
            y += b[:, None]
        y = y.reshape(self.x_shape)
        if not (self.training and self.has_stats):
            return y
        rm, rv = params[-2:]
        mom = self.momentum
        new_mean = mom * rm + (1 - mom) * self.mean.reshape(rm.shape)
        new_var = mom * rv + (1 - mom) * (self.var * (m / max(m - 1, 1))).reshape(rv.shape)
        return y, new_mean.astype(rm.dtype, copy=False), new_var.astype(rv.dtype, copy=False)

    def backward(self, g, *stat_grads):  # the running-stat outputs have no gradient
        xp = xp_of(g)
        needs = self.needs_input_grad
        m, x3, mean, inv = self.m, self.x3, self.mean, self.inv
        g3 = g.reshape(x3.shape)
        gb = xp.einsum("ncs->c", g3)
        gw = (xp.einsum("ncs,ncs->c", g3, x3) - mean * gb) * inv  # sum(g * xhat)
        gx = None
        if needs[0]:
            if self.training:
                # w * inv * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * inv
                gx = x3 - mean[:, None]
                gx *= (-inv * gw / m)[:, None]
                gx -= (gb / m)[:, None]
                gx += g3
                gx *= self.scale[:, None]
            else:  # the statistics are constants
                gx = g3 * self.scale[:, None]
            gx = gx.reshape(self.x_shape)
        grads = [gx]
        if self.has_weight:
            grads.append(gw.reshape(self.param_shapes[0]) if needs[1] else None)
        if self.has_bias:
            grads.append(gb.reshape(self.param_shapes[int(self.has_weight)])
                         if needs[1 + self.has_weight] else None)
        if self.has_stats:
            grads += [None, None]
        return tuple(grads)


class _Normalize(Op):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with statistics over the last axis of
    the ``view`` of x (layer norm: (rows, M); group norm: (N, groups, -1)).

    ``affine_view``/``affine_shape`` say how weight and bias broadcast against x. Inputs: x,
    then weight and bias if present.
    """

    def __init__(self, view, affine_view, affine_shape, eps, has_weight, has_bias):
        self.view, self.eps = view, eps
        self.affine_view, self.affine_shape = affine_view, affine_shape
        self.has_weight, self.has_bias = has_weight, has_bias

    def forward(self, x, *params):
        xp = xp_of(x)
        self.x_shape = x.shape
        x = _as_float(x).reshape(self.view)
        xhat = x - x.mean(-1, keepdims=True)
        var = xp.einsum("...i,...i->...", xhat, xhat)[..., None] / x.shape[-1]
        self.inv = 1 / xp.sqrt(var + x.dtype.type(self.eps))
        xhat *= self.inv
        self.xhat = y = xhat.reshape(self.affine_view)
        self.param_shapes = [p.shape for p in params]
        self.w = params[0].reshape(self.affine_shape) if self.has_weight else None
        if self.w is not None:
            y = y * self.w
        if self.has_bias:
            y = y + params[-1].reshape(self.affine_shape)
        return (y if y is not self.xhat else y.copy()).reshape(self.x_shape)

    def backward(self, g):
        needs = self.needs_input_grad
        g = g.reshape(self.affine_view)
        xhat = self.xhat
        grads = []
        if self.has_weight:
            grads.append(unbroadcast(g * xhat, self.affine_shape).reshape(self.param_shapes[0])
                         if needs[1] else None)
        if self.has_bias:
            grads.append(unbroadcast(g, self.affine_shape).reshape(self.param_shapes[-1])
                         if needs[-1] else None)
        gx = None
        if needs[0]:
            gxhat = (g if self.w is None else g * self.w).reshape(self.view)
            xh = xhat.reshape(self.view)
            gx = xh * -(gxhat * xh).mean(-1, keepdims=True)
            gx += gxhat
            gx -= gxhat.mean(-1, keepdims=True)
            gx *= self.inv
            gx = gx.reshape(self.x_shape)
        return (gx, *grads)


def _normalize(op, inp, weight, bias):
    return apply(op, inp, *[_tensor(t) for t in (weight, bias) if t is not None])


def _check_param(t, channels, what, name):
    if t is not None and _tensor(t).size != channels:
        raise ValueError(f"{what}: {name} of shape {_tensor(t).shape} does not match "
                         f"{channels} channels")


def batch_norm(inp, running_mean=None, running_var=None, weight=None, bias=None, *,
               training=False, momentum=0.9, eps=1e-5, inplace=True, compute_mode="default",
               param_dim="dim_1c11"):
    """Batch normalization over every axis but 1 (the channels) of ``inp``.

    Training normalizes with the batch statistics and, given running stats, updates them as
    upstream: ``running = momentum * running + (1 - momentum) * batch`` with the unbiased batch
    variance, written into the running tensors' own storage when ``inplace`` (else returned:
    ``(out, new_mean, new_var)``). Inference normalizes with the running statistics.
    Parameters and running stats hold C elements ((1, C, 1, 1) or (C,)).
    """
    inp = _tensor(inp)
    what = "batch_norm"
    if inp.ndim < 2:
        raise ValueError(f"{what}: expected an input (N, C, ...) of 2 or more dims, "
                         f"got shape {inp.shape}")
    c = inp.shape[1]
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        _check_param(t, c, what, name)
    has_mean, has_var = running_mean is not None, running_var is not None
    if not training and not (has_mean and has_var):
        raise ValueError(f"{what}: running_mean and running_var are needed when training=False")
    if training and has_var and inp.size // max(c, 1) < 2:
        raise ValueError(f"{what}: training needs more than one value per channel to update "
                         f"running_var, got input shape {inp.shape}")
    if training and inplace:
        for t, name in ((running_mean, "running_mean"), (running_var, "running_var")):
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"{what}: {name} must be a Tensor to be updated in place, "
                                f"got {type(t).__name__}")
    inputs = [inp] + [_tensor(t) for t in (weight, bias) if t is not None]
    has_stats = has_mean or has_var
    if has_stats:
        # a missing one of the pair is stood in for by its initial value; its update is dropped
        shape = _tensor(running_mean if has_mean else running_var).shape
        for t, fill in ((running_mean, 0.0), (running_var, 1.0)):
            inputs.append(_tensor(t) if t is not None
                          else Tensor(np.full(shape, fill, np.float32), device=inp._device))
    op = _BatchNorm(eps, float(momentum), bool(training), weight is not None, bias is not None,
                    has_stats)
    out = apply(op, *inputs)
    if not (training and has_stats):
        return out
    out, new_mean, new_var = out
    new_mean, new_var = (new_mean if has_mean else None), (new_var if has_var else None)
    if not inplace:
        return out, new_mean, new_var
    # written into the buffers' own storage; _reset is also what jit.trace replays
    if has_mean:
        running_mean._reset(new_mean)
    if has_var:
        running_var._reset(new_var)
    return out


def layer_norm(inp, normalized_shape, affine=True, weight=None, bias=None, eps=1e-5):
    """Normalize over the trailing ``normalized_shape`` dims of ``inp`` (biased variance).

    With ``affine``, ``weight`` and ``bias`` (of ``normalized_shape``) scale and shift; a
    missing one is left out.
    """
    inp = _tensor(inp)
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or tuple(inp.shape[inp.ndim - k:]) != shape or inp.ndim < k:
        raise ValueError(f"layer_norm: normalized_shape {shape} does not match the trailing "
                         f"dims of the input of shape {inp.shape}")
    m = int(np.prod(shape))
    view = (-1, m)
    if not affine:
        weight = bias = None
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is not None and _tensor(t).size != m:
            raise ValueError(f"layer_norm: {name} of shape {_tensor(t).shape} does not match "
                             f"normalized_shape {shape}")
    op = _Normalize(view, view, (1, m), eps, weight is not None, bias is not None)
    return _normalize(op, inp, weight, bias)


def group_norm(inp, num_groups, affine=True, weight=None, bias=None, eps=1e-5):
    """Normalize each sample over groups of C / ``num_groups`` channels (biased variance).

    With ``affine``, per-channel ``weight`` and ``bias`` (C elements) scale and shift.
    """
    inp = _tensor(inp)
    if inp.ndim < 2:
        raise ValueError(f"group_norm: expected an input (N, C, ...), got shape {inp.shape}")
    n, c = inp.shape[:2]
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"group_norm: {c} channels (input shape {inp.shape}) are not divisible "
                         f"into num_groups={num_groups}")
    if not affine:
        weight = bias = None
    for t, name in ((weight, "weight"), (bias, "bias")):
        _check_param(t, c, "group_norm", name)
    op = _Normalize((n, num_groups, -1), (n, c, -1), (1, c, 1), eps, weight is not None,
                    bias is not None)
    return _normalize(op, inp, weight, bias)


# ----- dropout, embedding -----

class _Dropout(Op):
    def __init__(self, drop_prob):
        self.p = drop_prob

    def forward(self, x):
        xp = xp_of(x)
        # numpy's global RNG, which megengine.random.seed() also seeds
        keep = xp.random.random_sample(x.shape) >= self.p
        self.mask = keep.astype(x.dtype)
        self.mask *= x.dtype.type(1 / (1 - self.p))
        return x * self.mask

    def backward(self, g):
        return g * self.mask


def dropout(inp, drop_prob, training=True):
    """Zero each element with probability ``drop_prob`` and scale the rest by 1/(1 - p).

    With ``training`` False (or p == 0) the input is returned as is.
    """
    if not 0 <= drop_prob < 1:
        raise ValueError(f"dropout: drop_prob must be in [0, 1), got {drop_prob}")
    inp = _tensor(inp)
    if not training or drop_prob == 0:
        return inp
    if inp.dtype.kind != "f":
        raise TypeError(f"dropout: expected a float tensor, got dtype {inp.dtype}")
    return apply(_Dropout(float(drop_prob)), inp)


class _Embedding(Op):
    def __init__(self, padding_idx):
        self.padding_idx = padding_idx

    def forward(self, idx, w):
        if idx.dtype.kind not in "iu":
            raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
        if w.ndim != 2:
            raise ValueError(f"embedding: weight must be 2-d (num_embeddings, dim), "
                             f"got shape {w.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= w.shape[0]):
            raise ValueError(f"embedding: indices must be in [0, {w.shape[0]}), got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        self.idx, self.w_shape = idx, w.shape
        return w[idx]

    def backward(self, g):
        if not self.needs_input_grad[1]:
            return None, None
        xp = xp_of(g)
        gw = xp.zeros(self.w_shape, g.dtype)
        # repeated indices accumulate
        xp.add.at(gw, self.idx.reshape(-1), g.reshape(-1, self.w_shape[1]))
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return None, gw


def embedding(inp, weight, padding_idx=None, max_norm=None, norm_type=None):
    """Rows of ``weight`` (num_embeddings, dim) picked by the integer indices ``inp``.

    ``padding_idx``: that row gets no gradient. ``max_norm``/``norm_type`` are not supported
    (upstream does not support them either).
    """
    if max_norm is not None or norm_type is not None:
        raise ValueError("embedding: max_norm and norm_type are not supported; pass None")
    weight = _tensor(weight)
    if padding_idx is not None:
        padding_idx = int(padding_idx)
        if not -weight.shape[0] <= padding_idx < weight.shape[0]:
            raise ValueError(f"embedding: padding_idx {padding_idx} is out of range for "
                             f"{weight.shape[0]} embeddings")
    return apply(_Embedding(padding_idx), _tensor(inp), weight)


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


def pixel_shuffle(inp, upscale_factor):
    """Rearrange (..., C*r*r, H, W) into (..., C, H*r, W*r), ``r`` = ``upscale_factor``."""
    inp = _tensor(inp)
    r = int(upscale_factor)
    if r < 1 or inp.ndim < 3 or inp.shape[-3] % (r * r):
        raise ValueError(f"pixel_shuffle: input of shape {inp.shape} needs >= 3 dims and "
                         f"channels (dim -3) divisible by upscale_factor**2 = {r * r}")
    *lead, c, h, w = inp.shape
    x = inp.reshape(-1, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(tuple(lead) + (c // (r * r), h * r, w * r))


# ----- names that live elsewhere but upstream also spells F.nn.<name> -----

from .elemwise import tanh  # noqa: E402,F401
from .math import logsumexp  # noqa: E402,F401
from .tensor import indexing_one_hot, one_hot, pad  # noqa: E402,F401
from .loss import *  # noqa: E402,F401,F403  (F.nn.cross_entropy, F.nn.l1_loss, ...)
from .loss import cross_entropy_with_softmax  # noqa: E402,F401  (0.x: F.cross_entropy_with_softmax)
