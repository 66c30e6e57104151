"""Observers: modules that watch the tensors passing through and derive quantization parameters
(scale, zero point) from their range, as upstream's ``megengine.quantization.observer``."""
from abc import abstractmethod
from copy import deepcopy
from typing import Union

import numpy as np

from .. import functional as F
from ..core.ops import ArgumentError  # (a ValueError, and upstream's AssertionError)
from ..core.tensor import Tensor
from ..module import Module
from .utils import (
    QParams,
    QParamsModuleMixin,
    QuantDtypeMeta,
    QuantMode,
    _QuantDtypeMixin,
    create_qparams,
)

__all__ = [
    "Observer", "MinMaxObserver", "SyncMinMaxObserver", "ExponentialMovingAverageObserver",
    "SyncExponentialMovingAverageObserver", "HistogramObserver", "PassiveObserver",
]


class Observer(_QuantDtypeMixin, Module, QParamsModuleMixin):
    """Base of observers: records statistics of its input in ``forward`` (returning the input
    unchanged) and turns them into QParams in ``get_qparams``. ``dtype`` is a name such as
    ``"qint8"`` or a :class:`~.QuantDtypeMeta`. ``train()`` enables it, ``eval()`` disables it."""

    def __init__(self, dtype: Union[str, QuantDtypeMeta], **kwargs):
        super().__init__(dtype, True, **kwargs)

    def train(self, mode: bool = True, recursive: bool = True) -> None:
        super().train(mode, recursive)
        if mode:
            self.enable()
        else:
            self.disable()

    @abstractmethod
    def forward(self, x):
        """Observe ``x`` and return it unchanged."""


class MinMaxObserver(Observer):
    """Keeps the running minimum and maximum of everything it saw (``min_val``, ``max_val``).

    Scale (the range always includes 0): symmetric ``max(|min|, |max|) / ((qmax - qmin) / 2)``;
    asymmetric ``(max - min) / (qmax - qmin)`` with zero point ``qmin - round(min / scale)``;
    never below ``eps``, so a fresh observer gives a usable scale.
    """

    def __init__(self, mode: QuantMode = QuantMode.SYMMERTIC, eps: float = 0.00001,
                 dtype: Union[str, QuantDtypeMeta] = "qint8", **kwargs):
        super().__init__(dtype, **kwargs)
        if not isinstance(mode, QuantMode):
            raise TypeError(f"{type(self).__name__}: mode must be a QuantMode, got {mode!r}")
        self.mode = mode
        self.min_val = Tensor(np.finfo(np.float32).max, dtype=np.float32)
        self.max_val = Tensor(np.finfo(np.float32).min, dtype=np.float32)
        self.scale_limit = eps

    def _calculate_qparams(self, inp_min_val, inp_max_val):
        min_val = F.minimum(0.0, inp_min_val)
        max_val = F.maximum(0.0, inp_max_val)
        if self.mode == QuantMode.SYMMERTIC:
            symmetric_max = F.maximum(-min_val, max_val)
            scale = F.maximum(symmetric_max / ((self.qmax - self.qmin) / 2), self.scale_limit)
            zero_point = None
        else:
            scale = F.maximum((max_val - min_val) / (self.qmax - self.qmin), self.scale_limit)
            zero_point = self.qmin - F.round(min_val / scale)
        return create_qparams(self.mode, self.dtype, scale=scale, zero_point=zero_point)

    def get_qparams(self):
        return self._calculate_qparams(self.min_val, self.max_val)

    def _batch_min_max(self, x):
        return x.min(), x.max()

    def forward(self, x_orig):
        if self._records():
            x = x_orig.detach()  # statistics only: no gradient flows through the observer
            x_min, x_max = self._batch_min_max(x)
            self.min_val._reset(F.minimum(self.min_val, x_min))
            self.max_val._reset(F.maximum(self.max_val, x_max))
        return x_orig

    def _records(self):
        return self.enabled


def _all_reduce_min_max(x):
    """The minimum and maximum of ``x`` over every rank of the default group (this rank's alone
    when no process group is running)."""
    from ..distributed import is_distributed

    if not is_distributed():
        return x.min(), x.max()
    from ..functional.distributed import all_reduce_max, all_reduce_min

    return all_reduce_min(x.min()), all_reduce_max(x.max())


class SyncMinMaxObserver(MinMaxObserver):
    """A :class:`MinMaxObserver` whose min and max are taken over all ranks (an all-reduce over
    ``megengine.distributed``'s default group), so every rank gets the same qparams. As
    upstream 1.13's, it records every batch, also in eval mode and after ``disable()`` /
    ``disable_observer`` (upstream's test reads ``self.enable``, the method, which is always
    true), so ``sync_ema_fakequant_qconfig``'s weight scales are upstream's."""

    def _batch_min_max(self, x):
        return _all_reduce_min_max(x)

    def _records(self):
        return True


class ExponentialMovingAverageObserver(MinMaxObserver):
    """Min and max as exponential moving averages:
    ``min = momentum * min + (1 - momentum) * batch_min``; the first batch sets them directly."""

    def __init__(self, momentum: float = 0.9, mode: QuantMode = QuantMode.SYMMERTIC,
                 eps: float = 0.00001, dtype: Union[str, QuantDtypeMeta] = "qint8", **kwargs):
        super().__init__(mode, eps, dtype, **kwargs)
        self.momentum = Tensor(momentum, dtype="float32")
        # 0 for the first batch, then ``momentum``: no Python branch on the first call
        self.runtime_momentum = Tensor(0.0, dtype="float32")

    def set_momentum(self, momentum):
        """Use ``momentum`` from the next batch on (upstream's waits one batch longer)."""
        self.momentum = Tensor(momentum, dtype="float32")
        if float(self.runtime_momentum.numpy()) != 0.0:  # past the first batch
            self.runtime_momentum._reset(self.momentum)

    def forward(self, x_orig):
        if self.enabled:
            x = x_orig.detach()
            x_min, x_max = self._batch_min_max(x)
            m = self.runtime_momentum
            self.min_val._reset(self.min_val * m + (1 - m) * x_min)
            self.max_val._reset(self.max_val * m + (1 - m) * x_max)
            self.runtime_momentum._reset(self.momentum)
        return x_orig


class SyncExponentialMovingAverageObserver(ExponentialMovingAverageObserver):
    """An :class:`ExponentialMovingAverageObserver` over the min and max of all ranks."""

    def _batch_min_max(self, x):
        return _all_reduce_min_max(x)


class HistogramObserver(MinMaxObserver):
    """A :class:`MinMaxObserver` that also keeps a histogram of what it saw (``bins`` bins over
    ``[min_val, max_val]``, re-binned as the range grows) and picks the min/max that minimise
    the L2 quantization error of that histogram, cutting outliers off. For calibration: as
    upstream's, it records every batch it sees, also in evaluation mode and when disabled
    (``eval()``, ``disable_observer``), so a calibration pass may run the network in ``eval()``."""

    def __init__(self, bins: int = 2048, upsample_rate: int = 128,
                 mode: QuantMode = QuantMode.SYMMERTIC, eps: float = 0.00001,
                 dtype: Union[str, QuantDtypeMeta] = "qint8", **kwargs):
        super().__init__(mode, eps, dtype, **kwargs)
        self.bins = bins
        self.upsample_rate = upsample_rate
        self.dst_nbins = self.dtype.qmax - self.dtype.qmin + 1
        # histogram[0] == -1 marks "nothing seen yet" (upstream's convention)
        self.histogram = Tensor([-1] + [0.0] * (bins - 1), dtype="float32")

    def _quantization_error(self, hist, bin_width, start_bin, end_bin):
        """L2 error of quantizing the histogram's mass (uniform inside each source bin) to
        ``dst_nbins`` levels spread over source bins ``start_bin..end_bin``."""
        dst_width = bin_width * (end_bin - start_bin + 1) / self.dst_nbins
        if dst_width == 0.0:
            return 0.0
        src = np.arange(self.bins, dtype=np.float64)
        begin = (src - start_bin) * bin_width
        end = begin + bin_width
        dst_begin = np.clip(np.floor(begin / dst_width), 0, self.dst_nbins - 1)
        dst_end = np.clip(np.floor(end / dst_width), 0, self.dst_nbins - 1)
        density = hist / bin_width

        def norm(a, b):  # density * integral of x^2 from a to b
            return density * (b ** 3 - a ** 3) / 3

        center_begin = dst_begin * dst_width + dst_width / 2
        center_end = dst_end * dst_width + dst_width / 2
        half = dst_width / 2
        same = dst_begin == dst_end
        err_same = norm(begin - center_begin, end - center_begin)
        err_split = (norm(begin - center_begin, half)
                     + (dst_end - dst_begin - 1) * norm(-half, half)
                     + norm(-half, end - center_end))
        return float(np.where(same, err_same, err_split).sum())

    def _non_linear_param_search(self):
        """Shrink [min, max] from whichever side holds less mass, step by step, while the L2
        quantization error keeps falling; return the new (min, max) as Tensors."""
        min_val, max_val = float(self.min_val.numpy()), float(self.max_val.numpy())
        hist = self.histogram.numpy().astype(np.float64)
        bin_width = (max_val - min_val) / self.bins
        total = hist.sum()
        csum = np.cumsum(hist)
        stepsize, alpha, beta = 1e-5, 0.0, 1.0
        start_bin, end_bin = 0, self.bins - 1
        norm_min = float("inf")
        while alpha < beta:
            next_alpha, next_beta = alpha + stepsize, beta - stepsize
            left, right = start_bin, end_bin
            while left < end_bin and csum[left] < next_alpha * total:
                left += 1
            while right > start_bin and csum[right] > next_beta * total:
                right -= 1
            next_start, next_end = start_bin, end_bin
            if left - start_bin > end_bin - right:
                next_start, alpha = left, next_alpha
            else:
                next_end, beta = right, next_beta
            if next_start == start_bin and next_end == end_bin:
                continue
            norm = self._quantization_error(hist, bin_width, next_start, next_end)
            if norm > norm_min:
                break
            norm_min, start_bin, end_bin = norm, next_start, next_end
        new_min = self.min_val + Tensor(bin_width * start_bin, dtype=np.float32)
        new_max = self.min_val + Tensor(bin_width * (end_bin + 1), dtype=np.float32)
        return new_min, new_max

    def get_qparams(self):
        if self.histogram.numpy()[0] == -1:
            raise ValueError("HistogramObserver has observed no data yet: run calibration "
                             "batches through the network before asking for its scale "
                             "(quantize(), get_qparams())")
        new_min, new_max = self._non_linear_param_search()
        return self._calculate_qparams(new_min, new_max)

    def _combine_histograms(self, new_hist, orig_hist, downsample_rate, start_idx):
        # the old histogram spread over a grid upsample_rate times finer (each count repeated
        # in its bin's fine bins), placed at its offset in the combined range and summed back
        # down to `bins` bins of downsample_rate fine bins each, as upstream's: read off the
        # old counts' cumulative sum at each new bin's end, without making the fine grid,
        # which holds bins * downsample_rate numbers (gigabytes once a batch's range is
        # thousands of times the earlier ones': upstream 1.13 runs out of memory there)
        u = self.upsample_rate
        ends = np.arange(1, self.bins + 1) * downsample_rate - start_idx  # (in fine bins)
        ends = np.clip(ends, 0, self.bins * u)
        at = np.minimum(ends // u, self.bins - 1)
        before = np.concatenate([[0.0], np.cumsum(orig_hist)])[at] * u
        integral = before + (ends - at * u) * orig_hist[at]
        shifted = np.zeros(self.bins)
        shifted[1:] = integral[:-1]
        return new_hist + (integral - shifted) / u

    def _adjust_min_max(self, combined_min, combined_max):
        # widen the combined range so that it is a whole number of old-histogram fine bins
        old_min, old_max = float(self.min_val.numpy()), float(self.max_val.numpy())
        fine_width = (old_max - old_min) / (self.bins * self.upsample_rate)
        downsample_rate = int(np.ceil((combined_max - combined_min) / (self.bins * fine_width)))
        extra = downsample_rate * (self.bins * fine_width) - (combined_max - combined_min)
        combined_max += extra / 2
        combined_min -= extra / 2
        start_idx = int(np.round((old_min - combined_min) / fine_width))
        return combined_min, combined_max, downsample_rate, start_idx

    def forward(self, x_orig):
        # no `enabled` check: upstream's histogram observer records in eval mode too, and
        # calibration scripts rely on it (net.eval(); net(batch); quantize(net))
        x = x_orig.numpy()
        old_min, old_max = float(self.min_val.numpy()), float(self.max_val.numpy())
        hist = self.histogram.numpy()
        new_min, new_max = float(x.min()), float(x.max())
        if hist[0] == -1:
            new_hist = _histogram(x, self.bins, new_min, new_max)
        else:
            new_min, new_max = min(new_min, old_min), max(new_max, old_max)
            if new_min == old_min and new_max == old_max:
                new_hist = _histogram(x, self.bins, new_min, new_max) + hist
            elif old_min == old_max:
                # every value so far was one number (a ReLU that gave zeros): its count lands
                # in the bin of the new range that holds it (upstream 1.13 divides by the old
                # range's width, 0, and raises)
                new_hist = _histogram(x, self.bins, new_min, new_max).astype(np.float64)
                at = int((old_min - new_min) / (new_max - new_min) * self.bins)
                new_hist[min(at, self.bins - 1)] += hist.sum()
            else:
                new_min, new_max, downsample_rate, start_idx = self._adjust_min_max(new_min,
                                                                                    new_max)
                new_hist = _histogram(x, self.bins, new_min, new_max).astype(np.float64)
                new_hist = self._combine_histograms(new_hist, hist.astype(np.float64),
                                                    downsample_rate, start_idx)
        self.histogram = Tensor(np.asarray(new_hist, np.float32), device=x_orig.device)
        self.min_val = Tensor(np.float32(new_min), device=x_orig.device)
        self.max_val = Tensor(np.float32(new_max), device=x_orig.device)
        return x_orig


def _histogram(x, bins, low, high):
    """``np.histogram(x, bins, (low, high))``'s counts, also where the range is so narrow that
    its float32 bins are narrower than float32's step there (a layer whose outputs lie within a
    few steps of each other): numpy 1.25 and later refuse such bins, while earlier numpy,
    upstream's, counts each value into the bin its float32 arithmetic gives, as done here."""
    try:
        return np.histogram(x, bins, (low, high))[0]
    except ValueError:
        if not low < high:
            raise
    edges = np.linspace(low, high, bins + 1, dtype=x.dtype)
    kept = x[(x >= low) & (x <= high)]
    at = ((kept - low) * (bins / (high - low))).astype(np.intp)  # (float32 as numpy's)
    at[at == bins] -= 1
    at[kept < edges[at]] -= 1
    at[(kept >= edges[at + 1]) & (at != bins - 1)] += 1
    return np.bincount(at, minlength=bins)


class PassiveObserver(Observer):
    """Holds qparams set from outside (``set_qparams``, e.g. by :func:`~.reset_qconfig` or
    :func:`~.apply_easy_quant`) and observes nothing; ``scale`` can be read and set."""

    def __init__(self, dtype: Union[str, QuantDtypeMeta], **kwargs):
        super().__init__(dtype, **kwargs)
        self.qparams = None
        self.orig_scale = None

    def _need_qparams(self):
        if self.qparams is None:
            raise ValueError("PassiveObserver has no qparams yet: call set_qparams(qparams) "
                             "first (reset_qconfig does it from the previous observer)")
        return self.qparams

    @property
    def scale(self):
        return self._need_qparams().scale

    @scale.setter
    def scale(self, value):
        value = np.asarray(value.numpy() if isinstance(value, Tensor) else value, np.float32)
        if not np.all(value > 0):
            raise ArgumentError(f"PassiveObserver: a scale must be positive, got {value}")
        self._need_qparams().scale._reset(value.reshape(self.qparams.scale.shape))

    def get_qparams(self):
        return self.qparams

    def set_qparams(self, qparams: QParams):
        """Take a copy of ``qparams`` (whose scale must be set) as this observer's."""
        if qparams is None or qparams.scale is None:
            raise ValueError("PassiveObserver.set_qparams: Can not get an initialized scale "
                             "(the qparams have scale None)")
        if qparams.dtype_meta is not None and qparams.dtype_meta is not self.dtype:
            raise ArgumentError(f"input qparams' dtype is not equal to self.dtype: "
                                f"qparams.dtype_meta={qparams.dtype_meta}, self.dtype={self.dtype}")
        self.qparams = deepcopy(qparams)
        if self.qparams.dtype_meta is None:
            self.qparams.dtype_meta = self.dtype
        self.orig_scale = self.qparams.scale.numpy()

    def forward(self, x):
        return x
