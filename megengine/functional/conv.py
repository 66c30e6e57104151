"""Convolution (F.nn.conv1d/2d/3d, their transposes, local, deformable, sliding windows) on ATen.

Every op here runs its forward and both backward passes on ATen's kernels (oneDNN on the CPU,
cuDNN on CUDA) through zero-copy views of the engine's arrays (`_aten.view` / `_aten.array`); what
backward keeps is what torch's autograd would keep (the input and weight views, no im2col
buffers). The ops keep upstream's argument rules, grouped weight layouts and error messages.
One exception: `sliding_window_transpose` sums its windows with numpy/CuPy strided adds, in
upstream's order, so that its float sums round as upstream's do.
"""

__all__ = [
    "conv1d", "conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d", "deformable_conv2d",
    "local_conv2d", "region_restricted_conv", "sliding_window", "sliding_window_transpose",
]

import numpy as np

from ..core._trace_option import is_int
from ..core import _config
from ..core import amp as _amp
from ..core.dispatch import FLOAT16, Op, apply
from ..core.dtype import _zero_point, no_quantized_form, refuse_quantized, saturated, stored
from ..core.dtype_rules import complex_error
from ..core.ops import (ArgumentError, ArgumentTypeError, ShapeError, as_dtype, cast,
                        finite_sum, xp_of)
from ..core.tensor import Tensor, promote_types
from . import _aten
from ._args import _bias_widened, _not_int, _tensor
from .indexing import Compute
from .math import sum as _sum
from .tensor import concat

_DIMS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
# megengine.config's variables, read directly: `_conv` asks whether the global conv-format
# switch is left at "default" (every layer's call) without a function call
_CONFIG_VARS = vars(_config)
_AXES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _ntuple(value, n, name, what):
    """An int or a sequence of ``n`` ints as a tuple of Python ints."""
    # the common cases first, as a module passes them (every layer, every call); the element
    # tests are written out (a generator under all() costs ~0.3 us a call, 4 calls a conv)
    if type(value) is tuple and len(value) == n and type(value[0]) is int \
            and type(value[-1]) is int and (n < 3 or type(value[1]) is int):
        return value
    if type(value) is int:
        return (value,) * n
    if isinstance(value, Tensor):
        value = value.numpy().tolist()
    if is_int(value) or isinstance(value, (float, np.floating)) and not _not_int(value):
        # (a size of a dumpable trace: its value, a guard; a whole float, padding=1.0: the int
        # it holds, as in a sequence and as upstream's int() reads it)
        return (int(value),) * n
    try:
        # (a string is a sequence: "12" read as (1, 2); int() parsed "1" and truncated 2.5)
        if isinstance(value, (str, bytes)) or any(_not_int(v) for v in value):
            raise TypeError
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n:
        kind = "an int or a pair of ints" if n == 2 else f"an int or {n} ints"
        raise ArgumentTypeError(f"{what}: {name} must be {kind}, got {value!r}")
    return out


def _geometry(nd, what, stride, padding, dilation, output_padding=0):
    """(stride, padding, dilation, output_padding) of an ``nd``-d convolution as tuples of ints,
    strides and dilations positive, paddings non-negative: torch's own checks ("dilation should
    be greater than zero", "negative padding is not supported") say neither which function nor
    what to pass."""
    # (written out, not a generator over the four: every F.conv call outside a layer runs this)
    s, p = _ntuple(stride, nd, "stride", what), _ntuple(padding, nd, "padding", what)
    d = _ntuple(dilation, nd, "dilation", what)
    op = _ntuple(output_padding, nd, "output_padding", what)
    if min(s) < 1 or min(d) < 1:
        for name, sizes in (("stride", s), ("dilation", d)):
            if min(sizes) < 1:
                axis = _AXES[nd][sizes.index(min(sizes))]
                raise ArgumentError(f"{what}: {name} must be a positive int, got {min(sizes)} "
                                    f"along {axis}")
    if min(p + op) < 0:
        raise ArgumentError(f"{what}: padding {p} and output_padding {op} must be non-negative")
    return s, p, d, op


def _groups(groups, what):
    """``groups`` as a positive Python int."""
    if type(groups) is int and groups >= 1:  # the usual call, at once
        return groups
    if not is_int(groups) or isinstance(groups, bool):
        raise ArgumentTypeError(f"{what}: groups must be an int, got {groups!r}")
    if int(groups) < 1:
        raise ArgumentError(f"{what}: groups must be positive, got {groups}")
    return int(groups)


def _compute_dtype(what, *dtypes):
    """Promoted float dtype of the operands (integer operands compute in float32; upstream 1.13
    refuses them, except int8 in conv_transpose2d, which it gives int32; complex ones raise)."""
    dtype = dtypes[0]
    if dtype.kind == "f" and all(d == dtype for d in dtypes[1:]):  # the common case
        return dtype
    for d in dtypes[1:]:
        dtype = promote_types(dtype, d)
    if dtype.kind == "c":  # (a float cast would drop the imaginary part)
        raise complex_error(what, dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def _nchw(a):
    """``a`` C-contiguous (a copy where it is a strided view). ATen picks its convolution by
    the operands' strides: a view with channels-last strides (a transposed NHWC image or
    weight) takes oneDNN's channels-last kernels, which skip the padding, where the contiguous
    3-d kernel multiplies it: an infinite weight times the padding gave inf where the same
    values stored contiguously give NaN (special-values fuzz seed 189 of conv3d). Operands
    holding NaN or infinities are convolved contiguous, so that the result does not depend on
    their strides; finite ones keep the channels-last kernels, 1.8x faster than a copy and the
    contiguous kernel (a (16, 64, 56, 56) view of an NHWC image, 3x3 to 64 channels, one
    thread: 44 ms against 79)."""
    return a if a.flags.c_contiguous else xp_of(a).ascontiguousarray(a)


def _flat_weight(w, groups, nd, what, transposed):
    """The weight in ATen's flat layout: (out, in/groups, *k), or (in, out/groups, *k) transposed.

    Accepts that layout and upstream's grouped (groups, out/groups, in/groups, *k) (transposed:
    (groups, in/groups, out/groups, *k)), which is the same memory with the first two dims split.
    """
    if w.ndim == nd + 3:
        if w.shape[0] != groups:
            raise ShapeError(f"{what}: a {nd + 3}-d weight of shape {w.shape} has {w.shape[0]} "
                             f"groups, but groups={groups}")
        return w.reshape((w.shape[0] * w.shape[1],) + w.shape[2:])
    if w.ndim != nd + 2:
        k = ", ".join("kd kh kw".split()[3 - nd:]) if nd > 1 else "k"
        layout = f"(in, out/groups, {k})" if transposed else f"(out, in/groups, {k})"
        raise ShapeError(f"{what}: expected a {nd + 2}-d weight {layout} or a {nd + 3}-d grouped "
                         f"weight, got shape {w.shape}")
    if w.shape[0] % groups:
        raise ShapeError(f"{what}: weight of shape {w.shape}: dim 0 ({w.shape[0]}) is not "
                         f"divisible by groups={groups}")
    return w


def _conv_out(size, k, s, p, d, what, axis):
    if s < 1:  # (a stride of 0 would otherwise end in a ZeroDivisionError)
        raise ArgumentError(f"{what}: stride must be a positive int, got {s} along {axis}")
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    if out < 1:
        raise ShapeError(f"{what}: the input is too small along {axis} ({size}, padding {p}) "
                         f"for a kernel of {k} with dilation {d}")
    return out


# The order in which a convolution hands out its inputs' gradients (x, w, b are inputs 0, 1,
# 2), as upstream's ops do, so that gradient callbacks see them in upstream's order: its
# convolution is an op on (x, w), its transposed convolution one on (w, x), and a bias is
# added by a second op, whose backward runs first. (torch's convolution hands x, w, b out.)
_GRAD_ORDER = {(False, True): (2, 0, 1), (True, False): (1, 0), (True, True): (2, 1, 0)}


class _Convolution(Op):
    """N-d convolution (or its transpose) of x with w, plus an optional bias, on ATen.

    Forward is ``aten.convolution``, backward ``aten.convolution_backward`` with an output mask
    from ``needs_input_grad``, so unneeded gradients are never computed. The saved tensors are
    views of the engine's input and weight arrays.
    """
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)

    def __init__(self, nd, transposed, stride, padding, dilation, output_padding, groups, what):
        self.nd, self.transposed, self.what = nd, transposed, what
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.output_padding, self.groups = output_padding, groups

    def _check(self, x, wf, w):
        """Channels and spatial sizes as upstream requires; returns the output channels."""
        what, nd, g = self.what, self.nd, self.groups
        if x.ndim != nd + 2:
            # (upstream's conv2d fails its C++ shape check, RuntimeError, its conv1d asserts)
            raise ArgumentError(f"{what}: expected a {nd + 2}-d input {_DIMS[nd]}, got shape "
                                f"{x.shape}")
        c = x.shape[1]
        if self.transposed:
            expect, out = wf.shape[0], wf.shape[1] * g
        else:
            expect, out = wf.shape[1] * g, wf.shape[0]
        if c != expect:
            raise ShapeError(
                f"{what}: input of shape {x.shape} has {c} channels but the weight of shape "
                f"{w.shape} expects {expect} (groups={g} x {expect // g} in-channels per group)")
        k = wf.shape[2:]
        if not self.transposed:
            shape, stride, padding, dilation = x.shape, self.stride, self.padding, self.dilation
            for i in range(nd):
                # an output size (n // s + 1) under 1 is a negative n (or a stride under 1):
                # only then `_conv_out` is called, to say what is wrong
                if shape[2 + i] + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1 < 0 \
                        or stride[i] < 1:
                    _conv_out(shape[2 + i], k[i], stride[i], padding[i], dilation[i], what,
                              _AXES[nd][i])
            return out
        for i in range(nd):
            op, s, d = self.output_padding[i], self.stride[i], self.dilation[i]
            if op >= max(s, d):
                raise ArgumentError(f"{what}: output_padding {self.output_padding} must be "
                                    f"smaller than stride {self.stride} or dilation "
                                    f"{self.dilation}")
            size = (x.shape[2 + i] - 1) * s - 2 * self.padding[i] + d * (k[i] - 1) + op + 1
            if size < 1:
                raise ShapeError(f"{what}: padding {self.padding} leaves no output for an input "
                                 f"of shape {x.shape} and a weight of shape {w.shape}")
        return out

    def _few_input_channels(self, x, wf):
        """A plain 2-d CPU convolution of one input channel into at most 16, stride 1, with a
        kernel of <= 9 taps (a small grey-image network's first layer): ATen's im2col + GEMM
        kernel (``_slow_conv2d_forward``) beats the oneDNN path that ``aten.convolution``
        picks. Measured forward with torch 2.13, one thread: (64, 1, 28, 28) * (8, 1, 3, 3)
        0.31 ms vs 0.45. With 32 output channels, 3 input channels or stride 2 oneDNN wins:
        (64, 1, 28, 28) * (32, 1, 3, 3) 0.69 vs 0.54; (64, 3, 32, 32) * (16, 3, 3, 3) 1.34 vs
        0.92; (8, 3, 224, 224) * (24, 3, 3, 3) stride 2 (ShuffleNetV2's stem) 6.4 vs 2.5,
        (1, 3, 112, 112) * (32, 3, 3, 3) stride 2 0.19 vs 0.11. Backward stays
        ``convolution_backward``.
        """
        # (one input channel first: the test that fails for nearly every layer)
        return (wf.shape[1] == 1 and self.groups == 1 and self.nd == 2 and not self.transposed
                and self.dilation == (1, 1) and self.stride == (1, 1)
                and wf.shape[0] <= 16 and wf.shape[2] * wf.shape[3] <= 9
                and type(x) is np.ndarray)

    # a layer's `_aten.LayerViews`, set by `_conv` when a module passes one (F.conv*: None)
    cache = None
    # float16 on the CPU computes in float32 and rounds once (`_prepare`): the gradient
    # arriving is converted up, the results down. Not `Op.half_in_float32`: whether a call does
    # follows the dtype its operands compute in, a float32 bias widening float16 ones
    # (`_bias_widened`), at any size; and a layer's kept views (`cache`) are keyed on the
    # weight's identity, which the mechanism's float32 copy would change on every call
    half = False

    def forward(self, x, w, b=None):
        if not (x.flags.c_contiguous and w.flags.c_contiguous) and \
                not (finite_sum(x) and finite_sum(w)):  # (see `_nchw`)
            x, w = _nchw(x), _nchw(w)
        c = self.cache
        e = None if c is None else c.entry
        if e is not None and e[0] == (id(w), id(b), x.shape, x.dtype, w.shape, self.stride,
                                      self.padding, self.dilation, self.output_padding,
                                      self.groups):
            # the layer's weight and bias arrays, checked with an input of this shape and
            # dtype: their views as made last time (zero-copy, so they see in-place writes)
            tw, tb, out, slow = e[2]
            # (the bridge's C functions without `view`'s and `array`'s frames: it made e's
            # views, and these are CPU arrays, which simulated CUDA's routing leaves alone)
            tx, to_array = _aten._to_torch(x), _aten._from_torch
        else:
            tx, tw, tb, out, slow = self._prepare(x, w, b, c)
            to_array = _aten.array
        if b is not None:
            self.b_shape, self.b_dtype = b.shape, b.dtype
        if b is not None or self.transposed:  # see _GRAD_ORDER
            self.grad_order = _GRAD_ORDER[self.transposed, b is not None]
        if slow:
            y = _aten.aten()._slow_conv2d_forward(tx, tw, tw.shape[2:], tb, self.stride,
                                                  self.padding)
        else:  # (the binding from `_aten.op`'s table without its frame, once looked up)
            y = (_aten._bindings.get("convolution") or _aten.op("convolution"))(
                tx, tw, tb, self.stride, self.padding, self.dilation, self.transposed,
                self.output_padding, self.groups)
        if any(self.needs_input_grad):  # both views, as torch's ConvolutionBackward keeps
            self.tx, self.tw = tx, tw
            self.bias_sizes = None if b is None else [out]
            self.dtypes = (x.dtype, w.dtype)
            self.w_shape = w.shape
        return cast(to_array(y), FLOAT16) if self.half else to_array(y)

    def _prepare(self, x, w, b, cache):
        """Check the arguments; (input, weight and bias views in the compute dtype, output
        channels, whether the few-input-channels kernel runs). With a layer's ``cache``, the
        views are kept there when they are the arrays' own memory (no cast, no copy), on the
        CPU (a CUDA view also orders streams when it is made, so it is made per call).

        float16 on the CPU computes in float32, the result rounded to float16 once (`half`):
        the values of a float16 convolution that adds in float32, as torch's and upstream's
        kernels add, where ATen's CPU float16 convolution took 8-60x its float32 one (one
        thread, the 8 convolutions of a small ResNet's training step under ``amp.autocast``
        at batch 16, 32x32: forward 1.42 s against 0.023, backward 0.47 against 0.056)."""
        wf = _flat_weight(w, self.groups, self.nd, self.what, self.transposed)
        out = self._check(x, wf, w)
        dtype = x.dtype
        if dtype != w.dtype or dtype.kind != "f":  # (same float dtypes: the common case)
            dtype = _compute_dtype(self.what, dtype, w.dtype)
        dtype = _bias_widened(dtype, b)
        self.half = dtype is FLOAT16 and type(x) is np.ndarray
        if self.half:
            dtype = np.dtype(np.float32)
        tb = None
        if b is not None:
            if b.size != out:
                raise ShapeError(f"{self.what}: bias of shape {b.shape} does not match the {out} "
                                 f"output channels (expected (1, C{', 1' * self.nd}) or (C,))")
            tb = _aten.view(as_dtype(b.reshape(out), dtype))
        tx = _aten.view(as_dtype(x, dtype))
        tw = _aten.view(as_dtype(wf, dtype))
        slow = wf.shape[1] == 1 and self._few_input_channels(x, wf)  # (the first test, inline)
        if cache is not None and type(w) is np.ndarray and x.dtype == dtype \
                and w.dtype == dtype and w.flags.c_contiguous \
                and (b is None or (b.dtype == dtype and b.flags.c_contiguous)):
            # (contiguous: their reshapes above are views, not copies)
            cache.fill((id(w), id(b), x.shape, x.dtype, w.shape, self.stride, self.padding,
                        self.dilation, self.output_padding, self.groups), (w, b),
                       (tw, tb, out, slow))
        return tx, tw, tb, out, slow

    def backward(self, gy):
        needs = self.needs_input_grad
        mask = [needs[0], needs[1], len(needs) > 2 and needs[2]]
        gx, gw, gb = _aten.aten().convolution_backward(
            _aten.view(cast(gy, np.float32) if self.half else gy), self.tx, self.tw,
            self.bias_sizes, self.stride, self.padding, self.dilation, self.transposed,
            self.output_padding, self.groups, mask)
        # ATen's fresh buffers, declared so: a GradManager hands them to .grad without a copy
        x_dtype, w_dtype = self.dtypes
        fresh = _aten.fresh_gradient
        gx = as_dtype(fresh(gx), x_dtype) if mask[0] else None
        gw = as_dtype(fresh(gw).reshape(self.w_shape), w_dtype) if mask[1] else None
        if len(needs) == 2:
            return gx, gw
        gb = as_dtype(fresh(gb).reshape(self.b_shape), self.b_dtype) if mask[2] else None
        return gx, gw, gb

    def grad_graph(self, inputs, outputs, output_grads):
        """The gradients as differentiable convolutions (see `_conv_grads`)."""
        return _conv_grads(self, inputs, output_grads[0])


def _conv_grads(op, inputs, gy):
    """Gradients of `_Convolution` written with `_Convolution` itself, so they are recorded.

    For a convolution y = conv(x, w): dx = conv_transpose(dy, w) and dw is a convolution of x
    with dy (batch and channel axes swapped, stride and dilation exchanged). A transposed
    convolution is the data gradient of a convolution, so its gradients swap the roles:
    dx = conv(dy, w) and dw is that same correlation of dy with x.
    """
    x, w = inputs[0], inputs[1]
    nd, g = op.nd, op.groups
    wf_shape = (w.shape[0] * w.shape[1],) + w.shape[2:] if w.ndim == nd + 3 else w.shape
    wf = w.reshape(wf_shape)
    k = wf_shape[2:]
    needs = op.needs_input_grad
    gx = gw = None
    if needs[0]:
        if op.transposed:
            data = _Convolution(nd, False, op.stride, op.padding, op.dilation, (0,) * nd, g,
                                op.what)
        else:
            extra = tuple(
                x.shape[2 + i] - ((gy.shape[2 + i] - 1) * op.stride[i] - 2 * op.padding[i]
                                  + op.dilation[i] * (k[i] - 1) + 1) for i in range(nd))
            data = _Convolution(nd, True, op.stride, op.padding, op.dilation, extra, g, op.what)
        gx = apply(data, gy, wf)
    if needs[1]:
        # correlate `src` (the conv's input side) with `dst` (its output side), per group
        src, dst = (gy, x) if op.transposed else (x, gy)
        cg, og = src.shape[1] // g, dst.shape[1] // g
        parts = []
        for i in range(g):
            s = src[:, i * cg:(i + 1) * cg].transpose((1, 0) + tuple(range(2, nd + 2)))
            d = dst[:, i * og:(i + 1) * og].transpose((1, 0) + tuple(range(2, nd + 2)))
            corr = _Convolution(nd, False, op.dilation, op.padding, op.stride, (0,) * nd, 1,
                                op.what)
            r = apply(corr, s, d)  # (cg, og, *k') with k' >= k: crop the kernel window
            r = r[(slice(None), slice(None)) + tuple(slice(0, kk) for kk in k)]
            parts.append(r.transpose((1, 0) + tuple(range(2, nd + 2))))
        gwf = parts[0] if g == 1 else concat(parts, axis=0)  # (og or cg per group) stacked
        gw = gwf.reshape(w.shape)
    grads = (gx, gw)
    if len(inputs) > 2:
        gb = None
        if needs[2]:
            gb = _sum(gy, axis=[0] + list(range(2, nd + 2))).reshape(inputs[2].shape)
        grads += (gb,)
    return grads


def _check_conv_mode(conv_mode, compute_mode, what):
    if conv_mode == "cross_correlation" and compute_mode == "default":  # (every layer's call)
        return
    mode = str(getattr(conv_mode, "name", conv_mode)).lower()
    if mode != "cross_correlation":
        raise ValueError(f"{what}: conv_mode must be 'cross_correlation', got {conv_mode!r}")
    cmode = str(getattr(compute_mode, "name", compute_mode)).lower()
    if cmode not in ("default", "float32"):
        raise ArgumentError(f"{what}: compute_mode must be 'default' or 'float32', "
                            f"got {compute_mode!r}")


def _conv(nd, transposed, what, inp, weight, bias, stride, padding, dilation, groups,
          output_padding=0, views=None, hold=True):
    """The convolutions' common body; ``views``: the calling layer's `_aten.LayerViews`,
    which the op keeps unless ``hold`` is False (only their normalized geometry is used)."""
    if _CONFIG_VARS["__conv_format"] != "default":  # (the switch left alone: NCHW, no call)
        _config._effective_conv_format("NCHW", what, supported=("NCHW",))  # NHWC: refused
    args = None if views is None else views.args
    if args is not None and args[0] is stride and args[1] is padding \
            and args[2] is dilation and args[3] is groups and args[4] is output_padding:
        op = _Convolution(nd, transposed, *args[5], what)  # (the layer's, as last time)
    else:
        made = _geometry(nd, what, stride, padding, dilation, output_padding) \
            + (_groups(groups, what),)
        op = _Convolution(nd, transposed, *made, what)
        if views is not None and all(
                type(a) is int or (type(a) is tuple and all(type(v) is int for v in a))
                for a in (stride, padding, dilation, groups, output_padding)):
            views.args = (stride, padding, dilation, groups, output_padding, made)
    if views is not None and hold:
        op.cache = views
    inputs = (inp if isinstance(inp, Tensor) else Tensor(inp),
              weight if isinstance(weight, Tensor) else Tensor(weight))
    if bias is not None:
        inputs += (_tensor(bias),)
    if inputs[0]._data.dtype.metadata is not None:  # quantized: the exact qint32 accumulator
        return _quantized_conv(nd, transposed, what, inputs, op)
    if _amp._enabled and nd < 3:  # megengine.amp.autocast: float16 compute (upstream's 3-d
        inputs = _amp.cast_for_compute(*inputs)  # convolutions promote, as without autocast)
    return apply(op, *inputs)


def _quantized_conv(nd, transposed, what, inputs, op):
    """Upstream's convolution of quantized tensors gives the qint32 accumulator (scale input
    scale * weight scale): F.quantized's exact integer convolution, 2-d only."""
    from . import quantized

    if nd != 2:
        raise TypeError(f"{what}: quantized tensors are supported by the 2-d convolutions; "
                        "dequantize first (x.astype('float32'))")
    bias = inputs[2] if len(inputs) > 2 else None
    if transposed:
        return quantized.conv_transpose2d(inputs[0], inputs[1], bias, None, op.stride,
                                          op.padding, op.output_padding, op.dilation, op.groups)
    return quantized.conv_bias_activation(inputs[0], inputs[1], bias, None, op.stride,
                                          op.padding, op.dilation, op.groups)


def conv1d(inp, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           conv_mode="cross_correlation", compute_mode="default"):
    """1-d cross-correlation of (N, C, L) ``inp`` with ``weight`` (out, in/groups, k).

    With ``groups`` > 1 the weight may also be (groups, out/groups, in/groups, k); ``bias`` has
    ``out`` elements ((1, out, 1) as upstream's Conv1d keeps it).
    """
    _check_conv_mode(conv_mode, compute_mode, "conv1d")
    return _conv(1, False, "conv1d", inp, weight, bias, stride, padding, dilation, groups)


def conv2d(inp, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           conv_mode="cross_correlation", compute_mode="default"):
    """2-d cross-correlation of NCHW ``inp`` with ``weight`` (out, in/groups, kh, kw).

    With ``groups`` > 1 the weight may also be upstream's (groups, out/groups, in/groups, kh, kw).
    ``bias`` has ``out`` elements, (1, out, 1, 1) as upstream's Conv2d keeps it.
    """
    if conv_mode != "cross_correlation" or compute_mode != "default":  # (a layer's: no call)
        _check_conv_mode(conv_mode, compute_mode, "conv2d")
    return _conv(2, False, "conv2d", inp, weight, bias, stride, padding, dilation, groups)


def conv3d(inp, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           conv_mode="cross_correlation"):
    """3-d cross-correlation of (N, C, D, H, W) ``inp`` with ``weight`` (out, in/groups, kd, kh, kw).

    With ``groups`` > 1 the weight may also be (groups, out/groups, in/groups, kd, kh, kw);
    ``bias`` has ``out`` elements ((1, out, 1, 1, 1) as upstream's Conv3d keeps it).
    """
    _check_conv_mode(conv_mode, "default", "conv3d")
    return _conv(3, False, "conv3d", inp, weight, bias, stride, padding, dilation, groups)


def conv_transpose2d(inp, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, conv_mode="cross_correlation", compute_mode="default"):
    """Transposed 2-d convolution (the gradient of conv2d in its input).

    ``weight`` is (in, out/groups, kh, kw), or upstream's grouped
    (groups, in/groups, out/groups, kh, kw); ``bias`` has ``out`` elements.
    """
    _check_conv_mode(conv_mode, compute_mode, "conv_transpose2d")
    return _conv(2, True, "conv_transpose2d", inp, weight, bias, stride, padding, dilation,
                 groups, output_padding)


def conv_transpose3d(inp, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1):
    """Transposed 3-d convolution (the gradient of conv3d in its input).

    ``weight`` is (in, out/groups, kd, kh, kw), or (groups, in/groups, out/groups, kd, kh, kw);
    ``bias`` has ``out`` elements.
    """
    return _conv(3, True, "conv_transpose3d", inp, weight, bias, stride, padding, dilation,
                 groups, output_padding)


# ----- sliding windows (im2col / col2im) -----

def _window_args(kernel_size, padding, stride, dilation, what):
    k = _ntuple(kernel_size, 2, "kernel_size", what)
    p = _ntuple(padding, 2, "padding", what)
    s = _ntuple(stride, 2, "stride", what)
    d = _ntuple(dilation, 2, "dilation", what)
    if min(k + s + d) < 1 or min(p) < 0:
        raise ArgumentError(f"{what}: kernel_size {k}, stride {s} and dilation {d} must be "
                            f"positive and padding {p} non-negative")
    return k, p, s, d


class _Im2Col(Op):
    """(N, C, H, W) -> (N, C, OH, OW, KH, KW) windows (``aten.im2col``); its gradient is col2im."""

    def __init__(self, k, p, s, d, what):
        self.k, self.p, self.s, self.d, self.what = k, p, s, d, what

    def forward(self, x):
        if x.ndim != 4:
            raise ShapeError(f"{self.what}: expected a 4-d input (N, C, H, W), got shape "
                             f"{x.shape}")
        n, c, h, w = x.shape
        oh, ow = (_conv_out(size, *args, self.what, axis) for size, args, axis in zip(
            (h, w), zip(self.k, self.s, self.p, self.d), "HW"))
        self.hw = (h, w)
        exact = x.dtype.kind != "f"  # ATen's im2col is float-only: integers go through float64
        if exact and x.dtype.kind == "c":  # (the cast would drop the imaginary part)
            raise complex_error(self.what, x.dtype)
        # a quantized input pads with value 0: its zero point
        zp = _zero_point(x.dtype) if exact and x.dtype.metadata is not None else 0
        cols = _aten.aten().im2col(_aten.view(x.astype(np.float64) - zp if exact else x), self.k,
                                   self.d, self.p, self.s)
        # (N, C*KH*KW, OH*OW) viewed as upstream's (N, C, OH, OW, KH, KW): no copy
        out = _aten.array(cols.view(n, c, *self.k, oh, ow).permute(0, 1, 4, 5, 2, 3))
        return (out + zp).astype(x.dtype) if exact else out

    def backward(self, g):
        n, c, oh, ow, kh, kw = g.shape
        tg = _aten.view(g).permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)
        return _aten.fresh_gradient(_aten.aten().col2im(tg, self.hw, self.k, self.d, self.p,
                                                        self.s))

    def grad_graph(self, inputs, outputs, grads):
        # linear: the gradient is col2im, whose own gradient is im2col again
        return (apply(_Col2Im(self.hw, self.k, self.p, self.s, self.d, self.what), grads[0]),)


def _col2im_in_window_order(x, size, k, p, s, d):
    """Sum (N, C, OH, OW, KH, KW) windows into (N, C, *size), adding into each pixel in the
    order of the windows, (oh, ow) row-major, as upstream's kernel does, so that float sums
    round the same way (upstream's tests compare them exactly). One strided add per kernel
    tap: at a given pixel, a later window is reached by an earlier tap, so the taps run from
    last to first."""
    xp = xp_of(x)
    n, c, oh, ow, kh, kw = x.shape
    (h, w), (ph, pw), (sh, sw), (dh, dw) = size, p, s, d
    canvas = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)  # padding is summed, then cut
    for i in reversed(range(kh)):
        rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
        for j in reversed(range(kw)):
            canvas[:, :, rows, j * dw:j * dw + sw * (ow - 1) + 1:sw] += x[..., i, j]
    return xp.ascontiguousarray(canvas[:, :, ph:ph + h, pw:pw + w])


class WindowShapeError(ShapeError, AssertionError):
    """``sliding_window_transpose``'s input of a shape its output size does not fit: a
    ShapeError (ValueError and RuntimeError) and an AssertionError, what upstream's asserts
    raise there, so an ``except`` written for either catches it."""


class _Col2Im(Op):
    """(N, C, OH, OW, KH, KW) windows summed back into (N, C, H, W); its gradient is im2col."""

    def __init__(self, size, k, p, s, d, what):
        self.size, self.k, self.p, self.s, self.d, self.what = size, k, p, s, d, what

    def forward(self, x):
        what = self.what
        if x.ndim != 6:
            raise WindowShapeError(f"{what}: expected a 6-d input (N, C, OH, OW, KH, KW), got "
                                   f"shape {x.shape}")
        n, c, oh, ow, kh, kw = x.shape
        try:
            expect = tuple(_conv_out(size, *args, what, axis) for size, args, axis in zip(
                self.size, zip(self.k, self.s, self.p, self.d), "HW"))
        except ShapeError as e:  # (an output size too small for one window)
            raise WindowShapeError(str(e)) from None
        if (kh, kw) != self.k or (oh, ow) != expect:
            raise WindowShapeError(f"{what}: input of shape {x.shape} does not match output_size "
                                   f"{self.size} with kernel {self.k}, padding {self.p}, stride "
                                   f"{self.s}, dilation {self.d} (expected windows {expect} of "
                                   f"{self.k})")
        if x.dtype.metadata is not None:  # quantized: a sum, as add's (saturated; no zero point)
            if _zero_point(x.dtype):
                raise no_quantized_form(what, x.dtype)
            return saturated(_col2im_in_window_order(stored(x).astype(np.int64), self.size,
                                                     self.k, self.p, self.s, self.d), x.dtype)
        return _col2im_in_window_order(x, self.size, self.k, self.p, self.s, self.d)

    def backward(self, g):
        n, c = g.shape[:2]
        cols = _aten.aten().im2col(_aten.view(g), self.k, self.d, self.p, self.s)
        oh = (self.size[0] + 2 * self.p[0] - self.d[0] * (self.k[0] - 1) - 1) // self.s[0] + 1
        ow = cols.shape[2] // oh
        return _aten.array(cols.view(n, c, *self.k, oh, ow).permute(0, 1, 4, 5, 2, 3))

    def grad_graph(self, inputs, outputs, grads):
        return (apply(_Im2Col(self.k, self.p, self.s, self.d, self.what), grads[0]),)


def sliding_window(inp, kernel_size, padding=0, stride=1, dilation=1):
    """The sliding windows of NCHW ``inp`` as (N, C, OH, OW, KH, KW) (upstream's Images2Neibs).

    Zero padding; OH = (H + 2 * padding - dilation * (KH - 1) - 1) // stride + 1, same for OW.
    """
    what = "sliding_window"
    return apply(_Im2Col(*_window_args(kernel_size, padding, stride, dilation, what), what),
                 _tensor(inp))


def sliding_window_transpose(inp, output_size, kernel_size, padding=0, stride=1, dilation=1):
    """Sum (N, C, OH, OW, KH, KW) windows back into an ``(N, C, *output_size)`` image: the adjoint of
    `sliding_window` (overlapping windows add up)."""
    what = "sliding_window_transpose"
    size = _ntuple(output_size, 2, "output_size", what)
    return apply(_Col2Im(size, *_window_args(kernel_size, padding, stride, dilation, what), what),
                 _tensor(inp))


# ----- untied and deformable kernels -----

class _LocalConv2d(Op):
    """Convolution with a separate kernel per output position (upstream's GroupLocal).

    ``aten.im2col`` gathers the windows, one batched matmul (``bmm``) per (group, position)
    applies the kernels; the data gradient goes back through ``aten.col2im``. The window matrix
    is what the weight gradient needs, so it is kept (as torch's unfold + matmul would keep it).
    """

    def __init__(self, stride, padding, dilation, what):
        self.stride, self.padding, self.dilation, self.what = stride, padding, dilation, what

    def forward(self, x, w):
        what = self.what
        if x.ndim != 4:
            raise ShapeError(f"{what}: expected a 4-d input (N, C, H, W), got shape {x.shape}")
        if w.ndim == 6:
            w7 = w.reshape((1,) + w.shape)
        elif w.ndim == 7:
            w7 = w
        else:
            raise ShapeError(f"{what}: expected a weight (OH, OW, C, KH, KW, O) or (groups, OH, "
                             f"OW, C/groups, KH, KW, O/groups), got shape {w.shape}")
        g, woh, wow, cg, kh, kw, og = w7.shape
        n, c, h, wd = x.shape
        if c != g * cg:
            raise ShapeError(f"{what}: input of shape {x.shape} has {c} channels but the weight "
                             f"of shape {w.shape} expects {g * cg} ({g} groups x {cg})")
        k = (kh, kw)
        oh, ow = (_conv_out(size, *args, what, axis) for size, args, axis in zip(
            (h, wd), zip(k, self.stride, self.padding, self.dilation), "HW"))
        if (oh, ow) != (woh, wow):
            raise ShapeError(f"{what}: the weight of shape {w.shape} has kernels for {woh}x{wow} "
                             f"output positions, but the input of shape {x.shape} gives {oh}x{ow}")
        dtype = _compute_dtype(what, x.dtype, w.dtype)
        self.dtypes, self.shapes = (x.dtype, w.dtype), (x.shape, w.shape, (g, og, oh, ow))
        aten = _aten.aten()
        cols = aten.im2col(_aten.view(x.astype(dtype, copy=False)), k, self.dilation,
                           self.padding, self.stride)
        # (N, G*Cg*K, L) -> (G*L, N, Cg*K): one small matrix product per group and position
        a = cols.view(n, g, cg * kh * kw, oh * ow).permute(1, 3, 0, 2).reshape(
            g * oh * ow, n, cg * kh * kw)
        wm = _aten.view(w7.astype(dtype, copy=False)).reshape(g * oh * ow, cg * kh * kw, og)
        y = aten.bmm(a, wm).view(g, oh, ow, n, og).permute(3, 0, 4, 1, 2).reshape(
            n, g * og, oh, ow)
        needs = self.needs_input_grad
        self.a = a if needs[1] else None
        self.wm = wm if needs[0] else None
        return _aten.array(y)

    def backward(self, gy):
        aten = _aten.aten()
        needs = self.needs_input_grad
        (x_shape, w_shape, (g, og, oh, ow)), (x_dtype, w_dtype) = self.shapes, self.dtypes
        n = gy.shape[0]
        gyr = _aten.view(gy).view(n, g, og, oh, ow).permute(1, 3, 4, 0, 2).reshape(
            g * oh * ow, n, og)
        gx = gw = None
        if needs[0]:
            da = aten.bmm(gyr, self.wm.transpose(1, 2))  # (G*L, N, Cg*K)
            cgk = da.shape[2]
            dcols = da.view(g, oh * ow, n, cgk).permute(2, 0, 3, 1).reshape(n, g * cgk, oh * ow)
            gx = aten.col2im(dcols, x_shape[2:], w_shape[-3:-1], self.dilation, self.padding,
                             self.stride)
            gx = _aten.fresh_gradient(gx).astype(x_dtype, copy=False)
        if needs[1]:
            gw = aten.bmm(self.a.transpose(1, 2), gyr)  # (G*L, Cg*K, Og)
            gw = _aten.fresh_gradient(gw).reshape(w_shape).astype(w_dtype, copy=False)
        return gx, gw


def local_conv2d(inp, weight, bias=None, stride=1, padding=0, dilation=1,
                 conv_mode="cross_correlation"):
    """Convolution with untied kernels: each output position (oh, ow) has its own kernel.

    ``weight`` is upstream's (groups, OH, OW, C/groups, KH, KW, O/groups), or
    (OH, OW, C, KH, KW, O) without groups; ``bias`` (if given) is added to the output.
    """
    what = "local_conv2d"
    _check_conv_mode(conv_mode, "default", what)
    _config._effective_conv_format("NCHW", what, supported=("NCHW",))
    op = _LocalConv2d(*_geometry(2, what, stride, padding, dilation)[:3], what)
    inp, weight = _tensor(inp), _tensor(weight)
    refuse_quantized(what, inp, weight)
    out = apply(op, inp, weight)
    return out if bias is None else out + _tensor(bias)


def _dense_region_ids(xp, rin, rout):
    """``rin``'s and ``rout``'s region ids as dense ranks 0, 1, ... over both (float32)."""
    ids = xp.unique(xp.concatenate([rin.ravel(), rout.ravel()]).astype(np.int64),
                    return_inverse=True)[1].reshape(-1).astype(np.float32)
    return ids[:rin.size].reshape(rin.shape), ids[rin.size:].reshape(rout.shape)


def region_restricted_conv(inp, weight, rin, rout, bias=None, stride=1, padding=0, dilation=1,
                           groups=1, conv_mode="cross_correlation", compute_mode="default"):
    """Grouped 2D convolution in which each output pixel only sees input pixels of its own region:
    ``out[n, o, y, x]`` sums ``weight * inp`` over the kernel taps whose ``rin[n, ih, iw]``
    equals ``rout[n, y, x]`` (upstream's RegionRestrictedConvolution; padded taps read 0).

    ``inp`` (N, C, H, W); ``weight`` (groups, O/groups, C/groups, KH, KW), always grouped as
    upstream's; ``rin`` (N, H, W) and ``rout`` (N, OH, OW) region ids, both int32 or both uint8;
    ``bias`` (if given) is added. Gradients reach ``inp``, ``weight`` and ``bias``.

    As upstream's kernels, ``stride`` must be 1. Gradients are given for both id dtypes, as
    upstream 1.13 gives them on the CPU (measured: uint8 ids' equal int32 ids').
    """
    what = "region_restricted_conv"
    _check_conv_mode(conv_mode, compute_mode, what)
    inp, weight = _tensor(inp), _tensor(weight)
    rin, rout = _tensor(rin), _tensor(rout)
    if inp.ndim != 4 or weight.ndim != 5:
        raise ShapeError(f"{what}: expected an NCHW input and a (groups, O/groups, C/groups, KH, "
                         f"KW) weight, got shapes {inp.shape} and {weight.shape}")
    n, c, h, w = inp.shape
    g, og, cg, kh, kw = weight.shape
    if g != groups or c != g * cg:
        raise ShapeError(f"{what}: weight {weight.shape} does not fit groups={groups} and "
                         f"{c} input channels (weight[0] must be groups, weight[2] C/groups)")
    if rin.dtype != rout.dtype or rin.dtype not in (np.int32, np.uint8):
        raise TypeError(f"{what}: rin and rout must hold region ids of one dtype, int32 or uint8 "
                        f"(upstream's kernels), got {rin.dtype} and {rout.dtype}; cast them with "
                        ".astype('int32')")
    s, p, d = (_ntuple(v, 2, name, what) for v, name in
               ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    if s != (1, 1):
        raise ValueError(f"{what}: stride must be 1 (upstream's RegionRestrictedConvolution has "
                         f"no other), got stride={stride!r}")
    oh, ow = ((size + 2 * pi - di * (k - 1) - 1) // si + 1
              for size, k, si, pi, di in zip((h, w), (kh, kw), s, p, d))
    if tuple(rin.shape) != (n, h, w) or tuple(rout.shape) != (n, oh, ow):
        raise ShapeError(f"{what}: rin must be (N, H, W) = {(n, h, w)} and rout (N, OH, OW) = "
                         f"{(n, oh, ow)}, got {tuple(rin.shape)} and {tuple(rout.shape)}")
    # Region ids become dense ranks, exact in float32, so the id windows can be cut by the same
    # sliding window as the input; a tap is kept where its id equals the output pixel's id.
    # All through ops: a trace follows new region maps (replays and dumps run them anew).
    rin_ids, rout_ids = apply(Compute(_dense_region_ids), rin, rout)
    # padded taps get id -1, which no output pixel has (their input is 0 anyway)
    rin_win = sliding_window(rin_ids.reshape(n, 1, h, w) + 1, (kh, kw), p, s, d) - 1
    keep = (rin_win == rout_ids.reshape(n, 1, oh, ow, 1, 1)).astype(inp.dtype)
    win = sliding_window(inp, (kh, kw), p, s, d) * keep  # (N, C, OH, OW, KH, KW)
    from .einsum import einsum

    out = einsum("ngcyxij,gocij->ngoyx", win.reshape(n, g, cg, oh, ow, kh, kw), weight)
    out = out.reshape(n, g * og, oh, ow)
    return out if bias is None else out + _tensor(bias)


def _deform_sample(torch, x, offset, mask, k, s, p, d, out_hw):
    """The deformable windows of ``x``: (N, C, K, L) bilinear samples at the shifted kernel taps.

    Tap t = (i, j) of output position (oh, ow) in deformable group dg reads x at
    (oh * s - p + i * d + dy, ow * s - p + j * d + dx), where (dy, dx) is
    ``offset[n, 2 * (dg * K + t) : +2, oh, ow]`` (DCNv2's layout), times
    ``mask[n, dg * K + t, oh, ow]``. Points outside (-1, H) x (-1, W) read 0; corners outside
    the image count as 0.
    """
    n, c, h, w = x.shape
    (kh, kw), (oh, ow) = k, out_hw
    taps, length = kh * kw, oh * ow
    groups = offset.shape[1] // (2 * taps)
    off = offset.reshape(n, groups, taps, 2, oh, ow)
    # the points and their weights in the offset's dtype (float32 for float16 input, whose
    # points 4 apart from 0 are 1/256 pixel coarse), and so the samples
    dev, dt = x.device, offset.dtype
    tap_y = (torch.arange(kh, device=dev, dtype=dt) * d[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=dev, dtype=dt) * d[1]).repeat(kh)
    pos_y = torch.arange(oh, device=dev, dtype=dt) * s[0] - p[0]
    pos_x = torch.arange(ow, device=dev, dtype=dt) * s[1] - p[1]
    py = off[:, :, :, 0] + tap_y.view(1, 1, taps, 1, 1) + pos_y.view(1, 1, 1, oh, 1)
    px = off[:, :, :, 1] + tap_x.view(1, 1, taps, 1, 1) + pos_x.view(1, 1, 1, 1, ow)
    valid = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0
    xg = x.reshape(n, groups, c // groups, h * w)
    shape = (n, groups, 1, taps * length)
    total = 0
    for dy, dx, weight in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx),
                           (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yi, xi = y0 + dy, x0 + dx
        inside = valid & (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long().reshape(shape)
        values = xg.gather(3, index.expand(n, groups, c // groups, taps * length))
        total = total + values * (weight * inside).reshape(shape)
    total = total * mask.reshape(shape)
    return total.reshape(n, c, taps, length)


class _DeformableConv2d(Op):
    """Deformable convolution (DCNv2, upstream's DeformableConv) composed of ATen ops.

    The forward runs torch ops over views of the engine's arrays, recording torch's autograd
    graph only when a gradient is wanted; backward is ``torch.autograd.grad`` over it, so what
    backward keeps is exactly what torch keeps. Under an outer GradManager the gradient is
    `_DeformableConv2dGrad`, an op that torch differentiates once more.
    """

    def __init__(self, stride, padding, dilation, groups, what):
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.what = groups, what

    def forward(self, x, w, offset, mask):
        what, g = self.what, self.groups
        if x.ndim != 4:
            raise ShapeError(f"{what}: expected a 4-d input (N, C, H, W), got shape {x.shape}")
        wf = _flat_weight(w, g, 2, what, False)
        o, cg, kh, kw = wf.shape
        n, c, h, wd = x.shape
        if c != g * cg:
            raise ShapeError(
                f"{what}: input of shape {x.shape} has {c} channels but the weight of shape "
                f"{w.shape} expects {g * cg} (groups={g} x {cg} in-channels per group)")
        oh, ow = (_conv_out(size, *args, what, axis) for size, args, axis in zip(
            (h, wd), zip((kh, kw), self.stride, self.padding, self.dilation), "HW"))
        taps = kh * kw
        if offset.ndim != 4 or offset.shape[0] != n or offset.shape[2:] != (oh, ow) \
                or offset.shape[1] % (2 * taps) or c % max(offset.shape[1] // (2 * taps), 1) \
                or offset.shape[1] == 0:
            raise ShapeError(f"{what}: offset of shape {offset.shape} must be (N, 2 * dg * KH * KW,"
                             f" OH, OW) = ({n}, 2 * dg * {taps}, {oh}, {ow}) with dg deformable "
                             f"groups dividing the {c} input channels")
        dg = offset.shape[1] // (2 * taps)
        if mask.shape != (n, dg * taps, oh, ow):
            raise ShapeError(f"{what}: mask of shape {mask.shape} must be (N, dg * KH * KW, OH, "
                             f"OW) = {(n, dg * taps, oh, ow)}")
        torch = _aten.torch_module()
        self.dtype = _compute_dtype(what, x.dtype, w.dtype)
        self.dtypes, self.w_shape = (x.dtype, w.dtype, offset.dtype, mask.dtype), w.shape
        self.out_hw = (oh, ow)
        needs = self.needs_input_grad
        ins = self.torch_inputs((x, w, offset, mask), needs)
        with torch.set_grad_enabled(any(needs)):
            y = self.run(torch, ins)
        if any(needs):
            self.y, self.ins = y, ins
        return _aten.array(y.detach())

    def torch_inputs(self, arrays, needs):
        """Torch views of x and the weight as (O, C/groups, KH, KW) in the compute dtype,
        offset and mask in it or float32, the wider (upstream computes them in float32); those
        ``needs`` marks require gradients."""
        x, w, offset, mask = arrays
        ins = []
        wide = promote_types(self.dtype, np.dtype(np.float32))
        for a, dt, need in zip((x, _flat_weight(w, self.groups, 2, self.what, False), offset,
                                mask), (self.dtype, self.dtype, wide, wide), needs):
            t = _aten.view(a.astype(dt, copy=False))
            ins.append(t.requires_grad_() if need else t)
        return ins

    def run(self, torch, ins):
        """The convolution of the torch tensors ``ins`` (`torch_inputs`)."""
        x, wf, offset, mask = ins
        g, (o, cg, kh, kw), (oh, ow) = self.groups, wf.shape, self.out_hw
        cols = _deform_sample(torch, x, offset, mask, (kh, kw), self.stride, self.padding,
                              self.dilation, (oh, ow))
        # float16: sampled and multiplied in float32, rounded once
        return torch.matmul(wf.to(cols.dtype).reshape(g, o // g, cg * kh * kw),
                            cols.reshape(x.shape[0], g, cg * kh * kw, oh * ow)).reshape(
                                x.shape[0], o, oh, ow).to(x.dtype)

    def engine_grads(self, got, needs, slots=range(4)):
        """Torch gradients ``got`` (one per True in ``needs``) as arrays of the inputs' dtypes
        (the weight's in its own shape), None where not needed."""
        found = iter(got)
        grads = []
        for i, need in zip(slots, needs):
            g = next(found) if need else None
            if g is not None:
                g = _aten.array(g.detach()).astype(self.dtypes[i] if i < 4 else self.dtype,
                                                   copy=False)
                g = g.reshape(self.w_shape) if i == 1 else g
            grads.append(g)
        return tuple(grads)

    def backward(self, gy):
        torch = _aten.torch_module()
        needs = self.needs_input_grad
        wanted = [t for t, need in zip(self.ins, needs) if need]
        return self.engine_grads(torch.autograd.grad(self.y, wanted, _aten.view(gy)), needs)

    def grad_graph(self, inputs, outputs, grads):
        needs = self.needs_input_grad
        got = apply(_DeformableConv2dGrad(self), *inputs, grads[0])
        got = iter(got if isinstance(got, tuple) else (got,))
        return tuple(next(got) if need else None for need in needs)


class _DeformableConv2dGrad(Op):
    """The gradients of a `_DeformableConv2d` as an op, so that they can be differentiated
    again (gradient penalties): inputs x, weight, offset, mask and the output gradient;
    outputs the gradients the convolution's inputs need. Its forward runs the convolution
    again and ``torch.autograd.grad(..., create_graph=True)`` over it; its backward
    differentiates those gradients with torch."""

    def __init__(self, conv):
        self.conv = conv

    def __repr__(self):
        return f"_DeformableConv2dGrad({self.conv.what})"

    def forward(self, x, w, offset, mask, gy):
        torch = _aten.torch_module()
        conv, needs = self.conv, self.needs_input_grad
        first = conv.needs_input_grad
        self.ins = conv.torch_inputs((x, w, offset, mask),
                                     [a or b for a, b in zip(first, needs)])
        self.gy = _aten.view(gy.astype(conv.dtype, copy=False)).detach()
        if needs[4]:
            self.gy.requires_grad_()
        with torch.enable_grad():
            y = conv.run(torch, self.ins)
            self.got = torch.autograd.grad(y, [t for t, f in zip(self.ins, first) if f],
                                           self.gy, create_graph=True)
        out = [g for g in conv.engine_grads(self.got, first) if g is not None]
        return tuple(out) if len(out) != 1 else out[0]

    def backward(self, *ggs):
        torch = _aten.torch_module()
        needs = self.needs_input_grad
        targets = [t for t, need in zip((*self.ins, self.gy), needs) if need]
        ys, dys = [], []
        for g, gg in zip(self.got, ggs):
            if gg is not None and g.requires_grad:
                ys.append(g)
                dys.append(_aten.view(gg).to(g.dtype).reshape(g.shape))  # (offset's: float32)
        self.got = None  # the graph of the gradients is used once
        if not ys:
            return (None,) * len(needs)
        got = torch.autograd.grad(ys, targets, dys, allow_unused=True)
        return self.conv.engine_grads(got, needs, range(5))


def deformable_conv2d(inp, weight, offset, mask, bias=None, stride=1, padding=0, dilation=1,
                      groups=1, conv_mode="cross_correlation", compute_mode="default"):
    """Deformable convolution (DCNv2): each kernel tap reads the input at a learned offset,
    bilinearly interpolated, scaled by a learned mask.

    ``weight`` (out, in/groups, kh, kw) or (groups, out/groups, in/groups, kh, kw);
    ``offset`` (N, 2 * dg * kh * kw, OH, OW) holds (dy, dx) per deformable group and tap;
    ``mask`` (N, dg * kh * kw, OH, OW). Offset and mask compute in float32, as upstream (float16
    input is sampled at float32 points and multiplied in float32, rounded once).
    """
    what = "deformable_conv2d"
    _check_conv_mode(conv_mode, compute_mode, what)
    _config._effective_conv_format("NCHW", what, supported=("NCHW",))
    offset, mask = _tensor(offset), _tensor(mask)
    offset = offset if offset.dtype == np.float32 else offset.astype("float32")
    mask = mask if mask.dtype == np.float32 else mask.astype("float32")
    op = _DeformableConv2d(*_geometry(2, what, stride, padding, dilation)[:3],
                           _groups(groups, what), what)
    inp, weight = _tensor(inp), _tensor(weight)
    refuse_quantized(what, inp, weight)
    out = apply(op, inp, weight, offset, mask)
    return out if bias is None else out + _tensor(bias)
