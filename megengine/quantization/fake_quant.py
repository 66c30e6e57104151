"""Fake quantizers: modules that quantize-dequantize a tensor in float during QAT, with fixed
qparams from an observer (FakeQuantize) or a learnt scale (TQT, LSQ), as upstream's
``megengine.quantization.fake_quant``."""
import math
from typing import Union

import numpy as np

from .. import functional as F
from ..core.ops import ArgumentError  # (a ValueError, and upstream's AssertionError)
from ..core.tensor import Parameter, Tensor
from ..module import Module
from .utils import (
    LSQParams,
    QParams,
    QParamsModuleMixin,
    QuantDtypeMeta,
    QuantMode,
    _QuantDtypeMixin,
    create_qparams,
    fake_quant_tensor,
    lsq_forward,
    tqt_forward,
)

__all__ = ["FakeQuantize", "TQT", "LSQ"]


class _FakeQuantize(_QuantDtypeMixin, Module):
    """Base of fake quantizers: ``forward(inp, qparams)`` runs ``fake_quant_forward`` when
    enabled and ``normal_forward`` (the identity) when not. ``dtype`` is a name such as
    ``"qint8"`` or a :class:`~.QuantDtypeMeta`."""

    def __init__(self, dtype: Union[str, QuantDtypeMeta], enable: bool = True, **kwargs):
        super().__init__(dtype, enable, **kwargs)

    def fake_quant_forward(self, inp, qparams: QParams = None):
        raise NotImplementedError(f"{type(self).__name__} must define fake_quant_forward")

    def normal_forward(self, inp, qparams: QParams = None):
        return inp

    def forward(self, inp, qparams: QParams = None):
        if self.enabled:
            return self.fake_quant_forward(inp, qparams=qparams)
        return self.normal_forward(inp, qparams=qparams)


class FakeQuantize(_FakeQuantize):
    """Quantize-dequantize with the qparams an observer hands in (:func:`~.fake_quant_tensor`:
    straight-through gradient inside the range, zero outside)."""

    def fake_quant_forward(self, inp, qparams: QParams = None):
        if qparams is None:
            raise ValueError("FakeQuantize needs qparams (from an observer): pair it with an "
                             "observer in the QConfig, or call it as fq(x, observer.get_qparams())")
        if qparams.dtype_meta is not self.dtype:
            raise ArgumentError(f"input qparams' dtype is not equal to self.dtype: "
                                f"qparams.dtype_meta={qparams.dtype_meta}, "
                                f"self.dtype={self.dtype}; give observer and fake quantizer "
                                "the same dtype")
        return fake_quant_tensor(inp, qparams)


class TQT(_FakeQuantize, QParamsModuleMixin):
    """TQT (arXiv:1903.08066, Trained Quantization Thresholds): symmetric fake quantization
    with the power-of-two scale ``2 ** self.scale``, where ``self.scale`` (a Parameter, 0 at
    first) learns through the TQT gradient (see :func:`~.tqt_forward`)."""

    def __init__(self, dtype: Union[str, QuantDtypeMeta], enable: bool = True, **kwargs):
        super().__init__(dtype, enable, **kwargs)
        self.scale = Parameter(0.0, dtype="float32")

    def fake_quant_forward(self, inp, qparams: QParams = None):
        return tqt_forward(self.qmin, self.qmax, inp, self.scale)

    def set_qparams(self, qparams: QParams):
        """Start from ``qparams``' scale (its log2 becomes ``self.scale``); symmetric only."""
        if qparams.mode != QuantMode.SYMMERTIC:
            raise ArgumentError(f"only symmetric quantization is supported by TQT, got "
                                f"{qparams.mode}")
        if qparams.scale is None:
            raise ArgumentError("TQT.set_qparams: Can not get an initialized scale (scale is "
                                "None)")
        self.scale[...] = F.log(qparams.scale) / math.log(2)

    def get_qparams(self):
        return create_qparams(QuantMode.SYMMERTIC, self.dtype, scale=2 ** self.scale.detach())


class LSQ(_FakeQuantize, QParamsModuleMixin):
    """LSQ (arXiv:1902.08153, Learned Step size Quantization): fake quantization with the
    learnt step size ``|step_size| + eps`` (see :func:`~.lsq_forward`). ``set_qparams`` starts
    it from an observer's qparams (scale, zero point, and ``grad_scale`` of LSQParams)."""

    def __init__(self, dtype: Union[str, QuantDtypeMeta], enable: bool = True,
                 eps: float = 1e-5, **kwargs):
        super().__init__(dtype=dtype, enable=enable, **kwargs)
        self.eps = Tensor(eps, dtype="float32")
        self.step_size = Parameter(1.0, dtype="float32")
        self.mode = None
        self.zero_point = Tensor(0.0, dtype="float32")
        self.grad_scale = Tensor(1.0, dtype="float32")

    def set_qparams(self, qparams: QParams):
        if qparams.scale is None:
            raise ArgumentError("LSQ.set_qparams: Can not get an initialized scale (scale is "
                                "None)")
        self.mode = qparams.mode
        if qparams.mode == QuantMode.ASYMMERTIC:
            self.zero_point = Tensor(qparams.zero_point.numpy(), dtype="float32")
        else:
            self.zero_point = Tensor(0.0, dtype="float32")
        # the forward adds eps back, so the first step size reproduces the observer's scale
        scale = qparams.scale.numpy().astype(np.float32)
        eps = self.eps.numpy()
        self.step_size = Parameter(np.where(scale < eps, 0, scale - eps).astype(np.float32))
        grad_scale = getattr(qparams, "grad_scale", None)
        if grad_scale is not None:
            self.grad_scale = Tensor(np.asarray(
                grad_scale.numpy() if isinstance(grad_scale, Tensor) else grad_scale,
                np.float32))

    def fake_quant_forward(self, inp, qparams: QParams = None):
        step_size = F.abs(self.step_size) + self.eps
        return lsq_forward(self.qmin, self.qmax, inp, step_size, self.zero_point,
                           self.grad_scale)

    def get_qparams(self):
        return LSQParams(mode=self.mode, dtype_meta=self.dtype,
                         scale=F.abs(self.step_size.detach()) + self.eps,
                         zero_point=self.zero_point, grad_scale=self.grad_scale)
