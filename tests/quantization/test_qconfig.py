"""Tests for megengine.quantization.qconfig: configs compare by value, refuse instances, and the
presets build upstream's observers and fake quantizers with upstream's dtypes."""
from functools import partial

import pytest

from megengine.quantization import (
    QConfig,
    calibration_qconfig,
    ema_fakequant_qconfig,
    ema_lowbit_fakequant_qconfig,
    min_max_fakequant_qconfig,
    passive_qconfig,
    sync_ema_fakequant_qconfig,
    tqt_qconfig,
)
from megengine.quantization.fake_quant import TQT, FakeQuantize
from megengine.quantization.observer import (
    ExponentialMovingAverageObserver,
    HistogramObserver,
    MinMaxObserver,
    PassiveObserver,
    SyncExponentialMovingAverageObserver,
    SyncMinMaxObserver,
)


def test_qconfigs_compare_by_value():
    qconfig = QConfig(weight_observer=None, act_observer=None,
                      weight_fake_quant=partial(TQT, dtype="qint8_narrow"),
                      act_fake_quant=partial(TQT, dtype="qint8"))
    assert qconfig == tqt_qconfig and hash(qconfig) == hash(tqt_qconfig)
    assert qconfig != min_max_fakequant_qconfig
    other = QConfig(None, None, partial(TQT, dtype="qint8"), partial(TQT, dtype="qint8"))
    assert other != tqt_qconfig


def test_narrow_range_spelling_equals_the_narrow_dtype():
    # upstream 1.2-1.3 wrote narrow weights as dtype="qint8", narrow_range=True; 1.4+ as
    # dtype="qint8_narrow": both build the same quantizer, so the configs are equal
    old = QConfig(weight_observer=None, act_observer=None,
                  weight_fake_quant=partial(TQT, dtype="qint8", narrow_range=True),
                  act_fake_quant=partial(TQT, dtype="qint8", narrow_range=False))
    assert old == tqt_qconfig and hash(old) == hash(tqt_qconfig)
    # a default dtype is the class's ("qint8" for MinMaxObserver)
    implicit = QConfig(partial(MinMaxObserver, narrow_range=True), None, None, None)
    assert implicit == QConfig(partial(MinMaxObserver, dtype="qint8_narrow"), None, None, None)
    wide = QConfig(None, None, partial(TQT, dtype="qint8", narrow_range=False),
                   partial(TQT, dtype="qint8"))
    assert wide != tqt_qconfig
    built = old.weight_fake_quant()
    assert (built.qmin, built.qmax) == (-127, 127)


def test_qconfig_refuses_instances_and_non_callables():
    with pytest.raises(ValueError, match="partial"):
        QConfig(MinMaxObserver(), None, None, None)
    with pytest.raises(TypeError, match="class or partial"):
        QConfig(None, "MinMaxObserver", None, None)


@pytest.mark.parametrize("qconfig,classes,dtypes", [
    (min_max_fakequant_qconfig, (MinMaxObserver, MinMaxObserver, FakeQuantize, FakeQuantize),
     ("qint8_narrow", "qint8")),
    (ema_fakequant_qconfig,
     (MinMaxObserver, ExponentialMovingAverageObserver, FakeQuantize, FakeQuantize),
     ("qint8_narrow", "qint8")),
    (sync_ema_fakequant_qconfig,
     (SyncMinMaxObserver, SyncExponentialMovingAverageObserver, FakeQuantize, FakeQuantize),
     ("qint8_narrow", "qint8")),
    (ema_lowbit_fakequant_qconfig,
     (MinMaxObserver, ExponentialMovingAverageObserver, FakeQuantize, FakeQuantize),
     ("qint4", "qint4")),
    (passive_qconfig, (PassiveObserver, PassiveObserver, FakeQuantize, FakeQuantize),
     ("qint8_narrow", "qint8")),
    (calibration_qconfig, (MinMaxObserver, HistogramObserver, None, None),
     ("qint8_narrow", "qint8")),
    (tqt_qconfig, (None, None, TQT, TQT), ("qint8_narrow", "qint8")),
], ids=["min_max", "ema", "sync_ema", "ema_lowbit", "passive", "calibration", "tqt"])
def test_presets_build_upstreams_modules(qconfig, classes, dtypes):
    for i, (factory, cls) in enumerate(zip(qconfig, classes)):
        if cls is None:
            assert factory is None
            continue
        inst = factory()
        assert type(inst) is cls
        assert inst.dtype.name == dtypes[i % 2]  # weight entries first, activation second
