"""Batch normalization layers: BatchNorm1d and BatchNorm2d, with running statistics as buffers."""
import numpy as np

from .. import functional as F
from ..core import dispatch as _dispatch
from ..core.ops import ArgumentError  # (a ValueError, and upstream's AssertionError)
from ..core.tensor import Tensor
from ..functional._aten import layer_views as _layer_views
from ..functional.normalization import (_batch_norm, _check_batch_stats, _empty_batch_affine,
                                       _sync_batch_norm)
from . import init
from .module import Module
from .normalization import _affine_parameters, _reset_affine

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    """Normalizes each channel by its batch statistics (training) or running statistics (eval).

    ``weight``/``bias`` (Parameters) and ``running_mean``/``running_var`` (buffers) are all
    shaped (1, C, 1, 1) as upstream; ``state_dict`` saves them flattened to (C,).
    Running statistics follow upstream's momentum convention:
    ``running = momentum * running + (1 - momentum) * batch`` (momentum 0.9 here is
    PyTorch's 0.1).
    """

    _flat_state = True

    def __init__(self, num_features, eps=1e-5, momentum=0.9, affine=True,
                 track_running_stats=True, freeze=False, **kwargs):
        super().__init__(**kwargs)
        if freeze and not track_running_stats:
            raise ArgumentError(f"{type(self).__name__}: freeze=True needs "
                                "track_running_stats=True")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self._track_running_stats_saved = track_running_stats
        self.freeze = freeze
        shape = (1, num_features, 1, 1)
        self.weight, self.bias = _affine_parameters(shape, affine)
        self.running_mean = Tensor(np.zeros(shape, np.float32)) if track_running_stats else None
        self.running_var = Tensor(np.ones(shape, np.float32)) if track_running_stats else None

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        _reset_affine(self)

    def _as_4d(self, inp):
        raise NotImplementedError

    def forward(self, inp):
        if not self._track_running_stats_saved and self.track_running_stats:
            raise ValueError(f"{type(self).__name__}: track_running_stats was False at "
                             "construction and cannot be turned on later")
        x = self._as_4d(inp)
        weight, bias = self.weight, self.bias
        if self.freeze:  # (upstream: in training and eval mode alike, nothing learns)
            weight = None if weight is None else weight.detach()
            bias = None if bias is None else bias.detach()
        elif not self.training and self.track_running_stats and _dispatch._trace_hook is None \
                and _dispatch._symbolic_hook is None and x._data.size:
            # eval (not frozen), not traced (tracers record F.batch_norm's calls; so the
            # array's own size is the size), not empty: inference on the running statistics,
            # with the layer's kept views of its per-channel tensors (`_aten.LayerViews`)
            out = _batch_norm(x, self.running_mean, self.running_var, weight, bias, False,
                              self.momentum, self.eps, True,
                              self.__dict__.get("_layer_views") or _layer_views(self))
            return out if x is inp else out.reshape(inp.shape)
        if x.size == 0:
            return self._empty_forward(x, inp.shape, weight, bias)
        shape = inp.shape
        if self.freeze:
            # Frozen (upstream: in training and eval mode): a fixed affine map from the running
            # statistics, so nothing learns or updates: inference batch norm (one ATen kernel)
            # on the detached weight and bias
            out = F.batch_norm(x, self.running_mean, self.running_var, weight, bias,
                               training=False, eps=self.eps)
        else:
            track = self.track_running_stats
            if self.training or not track:  # (the input's own shape in the message)
                _check_batch_stats(type(self).__name__, inp,
                                   "call .eval() to normalize by the running statistics")
            out = F.batch_norm(
                x, self.running_mean if track else None, self.running_var if track else None,
                weight, bias,
                training=self.training or not track,  # no running stats: batch stats always
                momentum=self.momentum if self.training and track else 0.0,
                eps=self.eps,
            )
        # (BatchNorm2d's input is its own 4-d view: nothing to reshape back)
        return out if x is inp or out.shape == shape else out.reshape(shape)

    def _empty_forward(self, x, shape, weight, bias):
        # An empty batch has no statistics: upstream returns the (empty) input and leaves the
        # running statistics alone. The affine map still runs, so weight and bias get their
        # (zero) gradients as after any other step (none when frozen: detached).
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels, "
                             f"got input shape {shape}")
        return _empty_batch_affine(x, self.num_features, weight, bias).reshape(shape)

    def _module_info_string(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs over all but the channel axis."""

    def _as_4d(self, inp):
        if inp.ndim not in (2, 3):
            raise ValueError(f"BatchNorm1d: expected a 2-d or 3-d input, got shape {inp.shape}")
        return inp.reshape(inp.shape + (1,) * (4 - inp.ndim))


class BatchNorm2d(_BatchNorm):
    """Batch normalization of NCHW inputs over N, H and W for each channel."""

    def _as_4d(self, inp):
        if inp.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected a 4-d NCHW input, got shape {inp.shape}")
        return inp


class SyncBatchNorm(_BatchNorm):
    """Batch normalization whose training statistics are those of the whole batch over ``group``.

    Each rank normalizes its own part of the batch (ranks may hold different batch sizes) with
    the mean and variance of all parts together, so data-parallel training normalizes as one
    process would on the concatenated batch; the gradient flows through the statistics' sums
    (all_reduce_sum, whose backward all-reduces), and every rank updates its running statistics
    with the same values. Inputs are (N, C), (N, C, L) or (N, C, H, W). Not distributed, in eval
    mode, or frozen, it is a plain batch norm.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.9, affine=True,
                 track_running_stats=True, freeze=False, group=None, **kwargs):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, freeze, **kwargs)
        self.group = group  # None: WORLD

    def _as_4d(self, inp):
        if inp.ndim not in (2, 3, 4):
            raise ValueError(f"SyncBatchNorm: expected a 2-d, 3-d or 4-d input (N, C, ...), got "
                             f"shape {inp.shape}")
        return inp.reshape(inp.shape + (1,) * (4 - inp.ndim))

    def forward(self, inp):
        from .. import distributed as dist

        synced = self.training or not self.track_running_stats
        if self.freeze or not synced or not dist.is_distributed():
            return super().forward(inp)
        self._as_4d(inp)  # (checks the number of dims)
        if inp.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: expected {self.num_features} channels, got input "
                             f"shape {inp.shape}")
        tracking = self.training and self.track_running_stats
        return _sync_batch_norm(inp, self.running_mean if tracking else None,
                                self.running_var if tracking else None, self.weight, self.bias,
                                True, self.momentum, self.eps, "additive", self.group,
                                "SyncBatchNorm", "call .eval() to normalize by the running "
                                "statistics")


__all__.append("SyncBatchNorm")  # appended with the class: the rest of the file is edited elsewhere
