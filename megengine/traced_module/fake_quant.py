"""`FakeQuantize` with fixed quantization parameters (upstream's
``megengine.traced_module.fake_quant``): quantize-dequantize with the scale and zero point set
on it, for a QAT model whose parameters are known (a converted or traced one)."""
from typing import Union

from ..core.dtype import QuantDtypeMeta
from ..quantization.fake_quant import _FakeQuantize
from ..quantization.utils import QParams, QParamsModuleMixin, fake_quant_tensor

__all__ = ["FakeQuantize"]


class FakeQuantize(_FakeQuantize, QParamsModuleMixin):
    """Fake quantization (:func:`~.fake_quant_tensor`: straight-through gradient inside the
    range, zero outside) by the ``qparams`` that `set_qparams` gave it, or by the ``qparams``
    a caller (an observer) hands to ``forward``; either must be of this quantizer's ``dtype``.
    """

    def __init__(self, dtype: Union[str, QuantDtypeMeta], enable: bool = True, **kwargs):
        super().__init__(dtype, enable, **kwargs)
        self.qparams = None

    def _check_dtype(self, dtype_meta, what):
        if dtype_meta != self.dtype:
            raise ValueError(f"FakeQuantize: {what} are of dtype {dtype_meta}, this quantizer's "
                             f"is {self.dtype}; make them for its dtype")

    def fake_quant_forward(self, inp, qparams: QParams = None):
        if qparams is None:
            qparams = self.qparams
            if qparams is None:
                raise ValueError("FakeQuantize has no qparams: call set_qparams(create_qparams("
                                 "dtype_meta=..., scale=...)) first, or pass qparams")
        self._check_dtype(qparams.dtype_meta, "the qparams given")
        return fake_quant_tensor(inp, qparams)

    def get_qparams(self):
        """The qparams `set_qparams` gave (None before)."""
        return self.qparams

    def set_qparams(self, qparams: QParams):
        """Quantize by ``qparams`` from now on (a copy; its ``dtype_meta`` may be None for this
        quantizer's dtype). Its ``scale`` must be set."""
        if qparams.scale is None:
            raise ValueError("FakeQuantize.set_qparams: the qparams have no scale (create_qparams("
                             "dtype_meta=..., scale=...))")
        dtype_meta = self.dtype if qparams.dtype_meta is None else qparams.dtype_meta
        self._check_dtype(dtype_meta, "the qparams to set")
        self.qparams = QParams(qparams.mode, dtype_meta, qparams.scale, qparams.zero_point)
