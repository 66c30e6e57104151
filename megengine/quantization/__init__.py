"""`megengine.quantization`: quantization-aware training (fake quantization in float) as
upstream's package: observers, fake quantizers, qconfigs and the passes over a module tree,
including `quantize`, the conversion to quantized (integer) inference layers.
"""
from .utils import (
    QParams,
    QuantDtypeMeta,
    QuantMode,
    create_qparams,
    fake_quant_bias,
    fake_quant_tensor,
)
from .fake_quant import LSQ, TQT, FakeQuantize
from .observer import (
    ExponentialMovingAverageObserver,
    HistogramObserver,
    MinMaxObserver,
    Observer,
    PassiveObserver,
    SyncExponentialMovingAverageObserver,
    SyncMinMaxObserver,
)
from .qconfig import (
    QConfig,
    calibration_qconfig,
    easyquant_qconfig,
    ema_fakequant_qconfig,
    ema_lowbit_fakequant_qconfig,
    min_max_fakequant_qconfig,
    passive_qconfig,
    sync_ema_fakequant_qconfig,
    tqt_qconfig,
)
from .quantize import (
    apply_easy_quant,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
    hook_qat_module,
    propagate_qconfig,
    quantize,
    quantize_qat,
    reset_qconfig,
)

__all__ = [
    "QParams", "QuantDtypeMeta", "QuantMode", "create_qparams", "fake_quant_bias",
    "fake_quant_tensor", "FakeQuantize", "TQT", "LSQ", "Observer", "MinMaxObserver",
    "SyncMinMaxObserver", "ExponentialMovingAverageObserver",
    "SyncExponentialMovingAverageObserver", "HistogramObserver", "PassiveObserver", "QConfig",
    "min_max_fakequant_qconfig", "ema_fakequant_qconfig", "sync_ema_fakequant_qconfig",
    "ema_lowbit_fakequant_qconfig", "calibration_qconfig", "tqt_qconfig", "passive_qconfig",
    "easyquant_qconfig", "quantize", "quantize_qat", "reset_qconfig", "propagate_qconfig",
    "hook_qat_module", "apply_easy_quant", "enable_fake_quant", "disable_fake_quant",
    "enable_observer", "disable_observer",
]
