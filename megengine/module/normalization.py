"""Per-sample normalization layers: LayerNorm, GroupNorm, InstanceNorm and GeneralNorm."""
import numpy as np

from .. import functional as F
from ..core._trace_option import as_int, is_dim, is_int
from ..core.ops import ArgumentError, ShapeError  # (ValueErrors, and upstream's types)
from ..core.tensor import Parameter
from . import init
from .module import Module

__all__ = ["LayerNorm", "GroupNorm", "InstanceNorm", "GeneralNorm"]


def _affine_parameters(shape, affine):
    """A normalization layer's ``weight`` (ones) and ``bias`` (zeros) of ``shape``, or
    (None, None) when it is not ``affine`` (also used by the batch norms)."""
    if not affine:
        return None, None
    return Parameter(np.ones(shape, np.float32)), Parameter(np.zeros(shape, np.float32))


def _reset_affine(layer):
    """Set an affine normalization layer's ``weight`` back to ones and ``bias`` to zeros."""
    if layer.affine:
        init.ones_(layer.weight)
        init.zeros_(layer.bias)


class _ChannelNorm(Module):
    """Shared by GroupNorm and InstanceNorm: per-channel ``weight``/``bias`` of shape (C,)."""

    _flat_state = True

    def __init__(self, num_channels, eps, affine, **kwargs):
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.weight, self.bias = _affine_parameters(num_channels, affine)

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def _normalize(self, x, groups):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ShapeError(f"{type(self).__name__}: expected an (N, {self.num_channels}, ...) "
                             f"input, got shape {x.shape}")
        return F.group_norm(x, groups, self.affine, self.weight, self.bias, self.eps)


class GroupNorm(_ChannelNorm):
    """Normalizes each sample over groups of ``num_channels / num_groups`` channels."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, **kwargs):
        if num_groups < 1 or num_channels % num_groups:
            raise ArgumentError(f"GroupNorm: num_channels ({num_channels}) must be divisible "
                                f"by num_groups ({num_groups})")
        super().__init__(num_channels, eps, affine, **kwargs)
        self.num_groups = num_groups

    def forward(self, x):
        return self._normalize(x, self.num_groups)

    def _module_info_string(self) -> str:
        return (f"groups={self.num_groups}, channels={self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}")


class InstanceNorm(_ChannelNorm):
    """Normalizes each channel of each sample on its own (GroupNorm with one channel per group)."""

    def __init__(self, num_channels, eps=1e-5, affine=True, **kwargs):
        super().__init__(num_channels, eps, affine, **kwargs)

    def forward(self, x):
        return self._normalize(x, self.num_channels)

    def _module_info_string(self) -> str:
        return f"channels={self.num_channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm(Module):
    """Normalizes over the trailing ``normalized_shape`` dims; ``weight``/``bias`` have that shape.

    Upstream 1.0-1.3 had ``LayerNorm(num_channels)`` for 4-d (N, C, H, W) input only: it
    normalized each sample over (C, H, W) with a per-channel ``weight``/``bias`` (GroupNorm
    with one group). Code written for it still runs: an int ``normalized_shape`` C given a 4-d
    input whose channel axis is C and whose last axis is not C (which the newer API refuses)
    takes that rule. Any input whose last axis is C follows the newer API.
    """

    _flat_state = True

    def __init__(self, normalized_shape, eps=1e-5, affine=True, **kwargs):
        super().__init__(**kwargs)
        if is_int(normalized_shape):
            normalized_shape = (normalized_shape,)
        # (sizes from x.shape in a dumpable trace: their values, guards: the parameters have them)
        self.normalized_shape = tuple(as_int(s) if is_dim(s) else s for s in normalized_shape)
        self.eps = eps
        self.affine = affine
        self.weight, self.bias = _affine_parameters(self.normalized_shape, affine)

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def forward(self, x):
        (c, *more) = self.normalized_shape
        if not more and x.ndim == 4 and x.shape[1] == c and x.shape[-1] != c:
            return F.group_norm(x, 1, self.affine, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, self.affine, self.weight, self.bias,
                            self.eps)

    def _module_info_string(self) -> str:
        return f"normalized_shape={self.normalized_shape}, eps={self.eps}, affine={self.affine}"


class GeneralNorm(Module):
    """Normalizes over the axes ``normalized_axis`` (upstream 1.13): ``weight``/``bias`` have
    ``normalized_shape``, the sizes of those axes in order. The axes are checked against the
    input in ``forward`` (they must be increasing once negative ones are counted from the end),
    as upstream does."""

    def __init__(self, normalized_shape=None, normalized_axis=0, eps=1e-5, affine=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.eps = eps
        self.affine = affine
        # (the attributes keep what was given, lists as lists and tuples as tuples, as
        # upstream's and its repr show them; an axis given as an int becomes a list of it where
        # the layer is affine, and stays an int where not)
        if is_int(normalized_axis):
            normalized_axis = [as_int(normalized_axis)] if affine else as_int(normalized_axis)
        if is_int(normalized_shape):
            normalized_shape = [as_int(normalized_shape)]
        if affine:
            if normalized_shape is None:
                raise ValueError("GeneralNorm: normalized_shape must be given when affine=True")
            if len(normalized_axis) != len(normalized_shape):
                raise ValueError(f"GeneralNorm: normalized_axis {tuple(normalized_axis)} and "
                                 f"normalized_shape {tuple(normalized_shape)} differ in length")
            if len(set(normalized_axis)) != len(normalized_axis):
                raise ValueError(f"GeneralNorm: normalized_axis {tuple(normalized_axis)} repeats "
                                 "an axis")
        self.normalized_shape = normalized_shape
        self.normalized_axis = normalized_axis
        self.weight, self.bias = _affine_parameters(self.normalized_shape, affine)

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def forward(self, x):
        given = self.normalized_axis
        axes = [a + x.ndim if a < 0 else a for a in ([given] if is_int(given) else given)]
        if self.normalized_shape is not None and tuple(
                x.shape[a] for a in axes if 0 <= a < x.ndim) != tuple(self.normalized_shape):
            raise ShapeError(f"GeneralNorm: the input's sizes on axes {tuple(axes)} "
                             f"(input shape {tuple(x.shape)}) are not normalized_shape "
                             f"{tuple(self.normalized_shape)}")
        return F.nn.general_norm(x, axes, self.affine, self.weight, self.bias, self.eps)

    def _module_info_string(self) -> str:
        return (f"normalized_shape={self.normalized_shape}, normalized_axis="
                f"{self.normalized_axis}, eps={self.eps}, affine={self.affine}")
