"""Convolution layers (Conv1d/2d/3d, ConvTranspose2d/3d, LocalConv2d, DeformableConv2d, RegionRestrictedConv), upstream's weight layouts."""
from typing import Tuple, Union

import numpy as np

from .. import functional as F
from ..core import dispatch as _dispatch
from ..core._trace_option import as_int, is_dim, is_int
from ..core.ops import ArgumentError  # (a ValueError, and upstream's AssertionError)
from ..core.tensor import Parameter
from ..functional._aten import layer_views as _layer_views
from ..functional.conv import _check_conv_mode, _conv
from . import init
from .module import Module

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "ConvTranspose3d", "DeformableConv2d",
           "LocalConv2d", "ConvRelu2d", "ConvTransposeRelu2d", "RegionRestrictedConv"]


def _sizes(value, n, what, allow_zero):
    """An int or ``n`` ints (a pair, a triple) as an n-tuple of non-negative (or positive)
    ints."""
    # (a size from x.shape in a dumpable trace is read here: its value, a guard; a layer made
    # inside a traced function has parameters of fixed shapes anyway)
    sizes = (value,) * n if is_int(value) else tuple(value)
    sizes = tuple(as_int(v) if is_dim(v) else v for v in sizes)
    lowest = 0 if allow_zero else 1
    if len(sizes) != n or not all(isinstance(v, (int, np.integer)) and v >= lowest
                                  for v in sizes):
        count = {2: "a pair", 3: "three"}[n]
        raise ArgumentError(f"{what} must be an int >= {lowest} or {count} of them, got "
                            f"{value!r}")
    return tuple(int(v) for v in sizes)


def _single(value, what, allow_zero):
    lowest = 0 if allow_zero else 1
    value = as_int(value) if is_dim(value) else value  # (a SymDim: a guard)
    if not isinstance(value, (int, np.integer)) or value < lowest:
        raise ArgumentError(f"{what} must be an int >= {lowest}, got {value!r}")
    return int(value)


def _geometry(what, n, kernel_size, stride, padding, dilation):
    """Layer ``what``'s ``kernel_size, stride, padding, dilation``, checked: each an int (``n``
    1, as upstream's Conv1d keeps them) or an n-tuple; padding may be 0, the others >= 1."""
    def checked(value, name, allow_zero):
        if n == 1:
            return _single(value, f"{what} {name}", allow_zero)
        return _sizes(value, n, f"{what} {name}", allow_zero)

    return (checked(kernel_size, "kernel_size", False), checked(stride, "stride", False),
            checked(padding, "padding", True), checked(dilation, "dilation", False))


class _ConvNd(Module):
    """Shared parameters and initialization of the convolution layers.

    Weight layout (upstream's): ``(out, in, *k)``; with groups, ``(groups, out/groups,
    in/groups, *k)``; transposed convolution swaps in and out. Bias is ``(1, out, 1, ...)``.
    """

    output_padding = 0  # upstream's layers all carry it; the transposed ones set their own

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 groups, bias, conv_mode, compute_mode, **kwargs):
        super().__init__(**kwargs)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{type(self).__name__}: in_channels ({in_channels}) and out_channels "
                f"({out_channels}) must both be divisible by groups ({groups})"
            )
        if conv_mode not in ("cross_correlation", "CROSS_CORRELATION"):
            raise ValueError(f"{type(self).__name__}: conv_mode {conv_mode!r} is not supported; "
                             "use 'cross_correlation'")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.conv_mode = conv_mode
        self.compute_mode = compute_mode
        self.weight = Parameter(np.zeros(self._infer_weight_shape(), dtype=np.float32))
        self.bias = Parameter(np.zeros(self._infer_bias_shape(), dtype=np.float32)) if bias else None
        self.reset_parameters()

    def _set_padding_mode(self, padding_mode):
        if padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"{type(self).__name__}: padding_mode {padding_mode!r} is not "
                             "'zeros', 'reflect' or 'replicate'")
        self.padding_mode = padding_mode

    def get_pad_witdth(self):
        """``F.pad``'s width for this layer's padding: ``((0, 0), (0, 0), (p, p), ...)``, one
        pair a spatial axis (upstream's name, spelled so: a layer with ``padding_mode``
        'reflect' or 'replicate' pads its input by it; a subclass may override it)."""
        pads = self.padding if isinstance(self.padding, tuple) else (self.padding,)
        return ((0, 0), (0, 0)) + tuple((p, p) for p in pads)

    def _padded(self, inp):
        """(input, padding for the conv): non-zero padding modes pad the input explicitly."""
        if self.padding_mode == "zeros":
            return inp, self.padding
        return F.pad(inp, self.get_pad_witdth(), self.padding_mode), 0

    def _kernel(self):
        return self.kernel_size if isinstance(self.kernel_size, tuple) else (self.kernel_size,)

    def _infer_weight_shape(self):
        k = self._kernel()
        i, o, g = self.in_channels, self.out_channels, self.groups
        if self._transposed:
            i, o = o, i
        return (o, i) + k if g == 1 else (g, o // g, i // g) + k

    def _infer_bias_shape(self):
        return (1, self.out_channels) + (1,) * len(self._kernel())

    def _get_fanin(self):
        # Upstream counts all input channels (out channels for transposed), not per group.
        channels = self.out_channels if self._transposed else self.in_channels
        return channels * int(np.prod(self._kernel()))

    def reset_parameters(self) -> None:
        # Upstream 1.x: weight ~ N(0, 1 / fan_in), bias = 0.
        init.normal_(self.weight, 0.0, float(np.sqrt(1.0 / self._get_fanin())))
        if self.bias is not None:
            init.zeros_(self.bias)

    def _module_info_string(self):
        def default(v, d):
            return v == d or v == (d,) * len(self._kernel())

        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if not default(self.stride, 1):
            s += f", stride={self.stride}"
        if not default(self.padding, 0):
            s += f", padding={self.padding}"
        if not default(self.dilation, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv1d(_ConvNd):
    """1-d convolution over (N, C, L) inputs; ``weight`` (out, in, k) or
    (groups, out/groups, in/groups, k), ``bias`` (1, out, 1)."""

    _transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True,
                 conv_mode: str = "cross_correlation", compute_mode: str = "default",
                 padding_mode: str = "zeros", **kwargs):
        super().__init__(
            in_channels, out_channels,
            *_geometry("Conv1d", 1, kernel_size, stride, padding, dilation),
            groups, bias, conv_mode, compute_mode, **kwargs,
        )
        self._set_padding_mode(padding_mode)

    def calc_conv(self, inp, weight, bias):
        """This layer's convolution with the given ``weight`` and ``bias`` (upstream's hook:
        QAT layers and user code pass a transformed weight)."""
        inp, padding = self._padded(inp)
        return F.conv1d(inp, weight, bias, self.stride, padding, self.dilation, self.groups,
                        self.conv_mode, self.compute_mode)

    def forward(self, inp):
        return self.calc_conv(inp, self.weight, self.bias)


class Conv2d(_ConvNd):
    """2-d convolution over NCHW inputs; ``weight`` (out, in, kh, kw) or
    (groups, out/groups, in/groups, kh, kw), ``bias`` (1, out, 1, 1)."""

    _transposed = False

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1, bias: bool = True,
                 conv_mode: str = "cross_correlation", compute_mode: str = "default",
                 padding_mode: str = "zeros", **kwargs):
        super().__init__(
            in_channels, out_channels,
            *_geometry("Conv2d", 2, kernel_size, stride, padding, dilation),
            groups, bias, conv_mode, compute_mode, **kwargs,
        )
        self._set_padding_mode(padding_mode)

    def calc_conv(self, inp, weight, bias):
        """This layer's convolution with the given ``weight`` and ``bias`` (upstream's hook:
        QAT layers and user code pass a transformed weight)."""
        padding = self.padding
        if self.padding_mode != "zeros":  # (zero padding, nearly every layer: no call)
            inp, padding = self._padded(inp)
        hook = _dispatch._trace_hook
        # the op keeps the layer's views of its own weight and bias only (a QAT layer's
        # fake-quantized weight, new every call, is not kept alive to the next)
        hold = weight is self.weight and bias is self.bias
        if hook is not None or _dispatch._symbolic_hook is not None:
            if _dispatch._symbolic_hook is not None or not getattr(hook, "checking", False):
                # traced (jit.trace's recording, trace_module, a loaded program's VarNodes):
                # the public call, which tracers patch and record (and a recorded op holds no
                # views)
                return F.conv2d(inp, weight, bias, self.stride, padding, self.dilation,
                                self.groups, self.conv_mode, self.compute_mode)
            hold = False  # a checked call of jit.trace (its hook is `checking`): the
            # recorded op, without views (its geometry normalized once, as the layer keeps
            # it: ~4 us a call less)
        if self.conv_mode != "cross_correlation" or self.compute_mode != "default":
            _check_conv_mode(self.conv_mode, self.compute_mode, "conv2d")
        # F.conv2d's body, with the layer's kept weight views (`_aten.LayerViews`)
        return _conv(2, False, "conv2d", inp, weight, bias, self.stride, padding,
                     self.dilation, self.groups, 0,
                     self.__dict__.get("_layer_views") or _layer_views(self), hold)

    def forward(self, inp):
        return self.calc_conv(inp, self.weight, self.bias)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-d convolution (the gradient of Conv2d w.r.t. its input); ``weight``
    (in, out, kh, kw) or (groups, in/groups, out/groups, kh, kw), ``bias`` (1, out, 1, 1)."""

    _transposed = True

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 output_padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1, bias: bool = True,
                 conv_mode: str = "cross_correlation", compute_mode: str = "default", **kwargs):
        self.output_padding = _sizes(output_padding, 2, "ConvTranspose2d output_padding", True)
        super().__init__(
            in_channels, out_channels,
            *_geometry("ConvTranspose2d", 2, kernel_size, stride, padding, dilation),
            groups, bias, conv_mode, compute_mode, **kwargs,
        )

    def calc_conv_transpose2d(self, inp, weight, bias):
        """This layer's transposed convolution with the given ``weight`` and ``bias``
        (upstream's hook, as :meth:`Conv2d.calc_conv`)."""
        return F.conv_transpose2d(inp, weight, bias, self.stride, self.padding,
                                  self.output_padding, self.dilation, self.groups,
                                  self.conv_mode, self.compute_mode)

    def forward(self, inp):
        return self.calc_conv_transpose2d(inp, self.weight, self.bias)


class Conv3d(_ConvNd):
    """3-d convolution over (N, C, D, H, W) inputs; ``weight`` (out, in, kd, kh, kw) or
    (groups, out/groups, in/groups, kd, kh, kw), ``bias`` (1, out, 1, 1, 1)."""

    _transposed = False

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int, int]],
                 stride: Union[int, Tuple[int, int, int]] = 1,
                 padding: Union[int, Tuple[int, int, int]] = 0,
                 dilation: Union[int, Tuple[int, int, int]] = 1, groups: int = 1,
                 bias: bool = True, conv_mode: str = "cross_correlation", **kwargs):
        super().__init__(
            in_channels, out_channels,
            *_geometry("Conv3d", 3, kernel_size, stride, padding, dilation),
            groups, bias, conv_mode, "default", **kwargs,
        )

    def calc_conv(self, inp, weight, bias):
        """This layer's convolution with the given ``weight`` and ``bias`` (upstream's hook)."""
        return F.conv3d(inp, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        self.conv_mode)

    def forward(self, inp):
        return self.calc_conv(inp, self.weight, self.bias)


class ConvTranspose3d(_ConvNd):
    """Transposed 3-d convolution (the gradient of Conv3d w.r.t. its input); ``weight``
    (in, out, kd, kh, kw) or (groups, in/groups, out/groups, kd, kh, kw), ``bias``
    (1, out, 1, 1, 1)."""

    _transposed = True

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int, int]],
                 stride: Union[int, Tuple[int, int, int]] = 1,
                 padding: Union[int, Tuple[int, int, int]] = 0,
                 output_padding: Union[int, Tuple[int, int, int]] = 0,
                 dilation: Union[int, Tuple[int, int, int]] = 1, groups: int = 1,
                 bias: bool = True, **kwargs):
        self.output_padding = _sizes(output_padding, 3, "ConvTranspose3d output_padding", True)
        super().__init__(
            in_channels, out_channels,
            *_geometry("ConvTranspose3d", 3, kernel_size, stride, padding, dilation),
            groups, bias, "cross_correlation", "default", **kwargs,
        )

    def _get_fanin(self):
        # upstream's ConvTranspose3d counts the input channels (ConvTranspose2d the output ones)
        return self.in_channels * int(np.prod(self.kernel_size))

    def forward(self, inp):
        return F.conv_transpose3d(inp, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.dilation, self.groups)


class LocalConv2d(_ConvNd):
    """Convolution with untied kernels (a locally connected layer): every output position of an
    ``input_height`` x ``input_width`` input has its own kernel. ``weight`` is
    (groups, OH, OW, in/groups, kh, kw, out/groups); there is no bias."""

    _transposed = False
    padding_mode = "zeros"  # as upstream's attribute: the layer pads with zeros only

    def __init__(self, in_channels: int, out_channels: int, input_height: int,
                 input_width: int, kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1,
                 conv_mode: str = "cross_correlation", **kwargs):
        self.input_height, self.input_width = int(input_height), int(input_width)
        super().__init__(
            in_channels, out_channels,
            *_geometry("LocalConv2d", 2, kernel_size, stride, padding, dilation),
            groups, False, conv_mode, "default", **kwargs,
        )

    def _infer_weight_shape(self):
        # the output size counts the dilation (upstream's layer leaves it out, which makes
        # its weight unusable with dilation > 1)
        out = []
        for size, k, s, p, d in zip((self.input_height, self.input_width), self.kernel_size,
                                    self.stride, self.padding, self.dilation):
            o = (size + 2 * p - d * (k - 1) - 1) // s + 1
            if o < 1:
                raise ValueError(f"LocalConv2d: an input of {self.input_height}x"
                                 f"{self.input_width} is too small for kernel {self.kernel_size}"
                                 f" (padding {self.padding}, dilation {self.dilation})")
            out.append(o)
        g = self.groups
        return (g, out[0], out[1], self.in_channels // g) + self.kernel_size + \
            (self.out_channels // g,)

    def forward(self, inp):
        return F.local_conv2d(inp, self.weight, None, self.stride, self.padding, self.dilation,
                              self.conv_mode)


class DeformableConv2d(_ConvNd):
    """Deformable convolution (DCNv2): ``forward(inp, offset, mask)``, each kernel tap reading
    the input at a learned offset, scaled by a learned mask (see F.deformable_conv2d).
    ``weight`` (out, in, kh, kw) or (groups, out/groups, in/groups, kh, kw), ``bias``
    (1, out, 1, 1)."""

    _transposed = False

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1, bias: bool = True,
                 conv_mode: str = "cross_correlation", compute_mode: str = "default", **kwargs):
        super().__init__(
            in_channels, out_channels,
            *_geometry("DeformableConv2d", 2, kernel_size, stride, padding, dilation),
            groups, bias, conv_mode, compute_mode, **kwargs,
        )

    def calc_conv(self, inp, weight, offset, mask, bias):
        """This layer's deformable convolution with the given ``weight`` and ``bias``
        (upstream's hook)."""
        return F.deformable_conv2d(inp, weight, offset, mask, bias, self.stride, self.padding,
                                   self.dilation, self.groups, self.conv_mode,
                                   self.compute_mode)

    def forward(self, inp, offset, mask):
        return self.calc_conv(inp, self.weight, offset, mask, self.bias)


class RegionRestrictedConv(_ConvNd):
    """Grouped 2-d convolution restricted to regions: ``forward(inp, rin, rout)``, where an output
    pixel only sums the input pixels whose region id (``rin``, (N, H, W)) equals its own
    (``rout``, (N, OH, OW)); see F.region_restricted_conv. ``weight`` is always grouped,
    (groups, out/groups, in/groups, kh, kw); ``bias`` (1, out, 1, 1). Note upstream's argument
    order: ``groups`` and ``bias`` come right after ``kernel_size``."""

    _transposed = False

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]], groups: int = 1, bias: bool = True,
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1,
                 conv_mode: str = "cross_correlation", compute_mode: str = "default",
                 padding_mode: str = "zeros", **kwargs):
        if padding_mode != "zeros":
            # upstream accepts 'reflect'/'replicate' here but pads with zeros all the same
            raise ValueError(f"RegionRestrictedConv: only padding_mode='zeros' is supported, got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode
        super().__init__(
            in_channels, out_channels,
            *_geometry("RegionRestrictedConv", 2, kernel_size, stride, padding, dilation),
            groups, bias, conv_mode, compute_mode, **kwargs,
        )

    def _infer_weight_shape(self):
        g = self.groups
        return (g, self.out_channels // g, self.in_channels // g) + self.kernel_size

    def get_pad_width(self):
        """Upstream's name on this layer for :meth:`~._ConvNd.get_pad_witdth` (the layer pads
        with zeros only, inside the convolution)."""
        return self.get_pad_witdth()

    def calc_conv(self, inp, weight, rin, rout, bias):
        return F.region_restricted_conv(inp, weight, rin, rout, bias, self.stride, self.padding,
                                        self.dilation, self.groups, self.conv_mode,
                                        self.compute_mode)

    def forward(self, inp, rin, rout):
        return self.calc_conv(inp, self.weight, rin, rout, self.bias)


class ConvRelu2d(Conv2d):
    """``relu(conv2d(x))``: a Conv2d with its relu fused (same parameters and state dict)."""

    def forward(self, inp):
        return F.relu(super().forward(inp))


class ConvTransposeRelu2d(ConvTranspose2d):
    """``relu(conv_transpose2d(x))``: a ConvTranspose2d with its relu fused."""

    def forward(self, inp):
        return F.relu(super().forward(inp))
