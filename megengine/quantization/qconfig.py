"""QConfig: which observer and fake quantizer a QAT module builds for its weight and its
activation, and upstream's preset configs."""
import inspect
from collections import namedtuple
from functools import partial

from ..module import Module
from .fake_quant import TQT, FakeQuantize
from .utils import _dtype_with_narrow_range
from .observer import (
    ExponentialMovingAverageObserver,
    HistogramObserver,
    MinMaxObserver,
    PassiveObserver,
    SyncExponentialMovingAverageObserver,
    SyncMinMaxObserver,
)

__all__ = [
    "QConfig", "min_max_fakequant_qconfig", "ema_fakequant_qconfig", "sync_ema_fakequant_qconfig",
    "ema_lowbit_fakequant_qconfig", "calibration_qconfig", "tqt_qconfig", "passive_qconfig",
    "easyquant_qconfig",
]


def _canonical_keywords(factory: partial) -> dict:
    """A partial's keywords with its dtype as a QuantDtypeMeta and ``narrow_range`` applied, so
    ``partial(TQT, dtype="qint8", narrow_range=True)`` (upstream 1.2-1.3's spelling) equals
    ``partial(TQT, dtype="qint8_narrow")`` (1.4+'s), as the two build the same quantizer."""
    keywords = dict(factory.keywords)
    if "dtype" not in keywords and "narrow_range" not in keywords:
        return keywords
    dtype = keywords.get("dtype")
    if dtype is None:
        try:
            dtype = inspect.signature(factory.func).parameters["dtype"].default
        except (TypeError, ValueError, KeyError):
            return keywords
    try:
        keywords["dtype"] = _dtype_with_narrow_range(dtype, keywords, "QConfig")
    except (TypeError, ValueError):
        return dict(factory.keywords)  # not a dtype we know: compare as written
    return keywords


class QConfig(namedtuple("QConfig", ["weight_observer", "act_observer", "weight_fake_quant",
                                     "act_fake_quant"])):
    """Four factories (classes, usually ``functools.partial(Class, dtype=...)``, or None for
    "none"): each QAT module calls them to build its own observers and fake quantizers (see
    :meth:`~.QATModule.set_qconfig`). Configs compare by value (partials by their class and
    arguments) and print as namedtuples.

    Weights usually take a narrow dtype (``"qint8_narrow"``, qmin -127): a sum of products of
    -128s could overflow the int16 an integer kernel accumulates pairs in.
    """

    def __new__(cls, weight_observer, act_observer, weight_fake_quant, act_fake_quant):
        for name, value in (("weight_observer", weight_observer), ("act_observer", act_observer),
                            ("weight_fake_quant", weight_fake_quant),
                            ("act_fake_quant", act_fake_quant)):
            if isinstance(value, Module):
                raise ValueError(
                    f"QConfig must not receive observer instance ({name} is a "
                    f"{type(value).__name__} object): please pass observer class generator "
                    f"using `partial(Observer, ...)` instead, so each module builds its own")
            if value is not None and not callable(value):
                raise TypeError(f"QConfig: {name} must be a class or partial (or None), "
                                f"got {value!r}")
        return super().__new__(cls, weight_observer, act_observer, weight_fake_quant,
                               act_fake_quant)

    def _key(self):
        # functools.partial compares by identity; two configs built alike should be equal
        return tuple((f.func, f.args, tuple(sorted(_canonical_keywords(f).items())))
                     if isinstance(f, partial) else f for f in self)

    def __eq__(self, other):
        if not isinstance(other, QConfig):
            return NotImplemented
        return self._key() == other._key()

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self):
        return hash(self._key())


min_max_fakequant_qconfig = QConfig(
    weight_observer=partial(MinMaxObserver, dtype="qint8_narrow"),
    act_observer=partial(MinMaxObserver, dtype="qint8"),
    weight_fake_quant=partial(FakeQuantize, dtype="qint8_narrow"),
    act_fake_quant=partial(FakeQuantize, dtype="qint8"),
)

ema_fakequant_qconfig = QConfig(
    weight_observer=partial(MinMaxObserver, dtype="qint8_narrow"),
    act_observer=partial(ExponentialMovingAverageObserver, dtype="qint8"),
    weight_fake_quant=partial(FakeQuantize, dtype="qint8_narrow"),
    act_fake_quant=partial(FakeQuantize, dtype="qint8"),
)

sync_ema_fakequant_qconfig = QConfig(
    weight_observer=partial(SyncMinMaxObserver, dtype="qint8_narrow"),
    act_observer=partial(SyncExponentialMovingAverageObserver, dtype="qint8"),
    weight_fake_quant=partial(FakeQuantize, dtype="qint8_narrow"),
    act_fake_quant=partial(FakeQuantize, dtype="qint8"),
)

ema_lowbit_fakequant_qconfig = QConfig(
    weight_observer=partial(MinMaxObserver, dtype="qint4"),
    act_observer=partial(ExponentialMovingAverageObserver, dtype="qint4"),
    weight_fake_quant=partial(FakeQuantize, dtype="qint4"),
    act_fake_quant=partial(FakeQuantize, dtype="qint4"),
)

calibration_qconfig = QConfig(
    weight_observer=partial(MinMaxObserver, dtype="qint8_narrow"),
    act_observer=partial(HistogramObserver, dtype="qint8"),
    weight_fake_quant=None,
    act_fake_quant=None,
)

tqt_qconfig = QConfig(
    weight_observer=None,
    act_observer=None,
    weight_fake_quant=partial(TQT, dtype="qint8_narrow"),
    act_fake_quant=partial(TQT, dtype="qint8"),
)

passive_qconfig = QConfig(
    weight_observer=partial(PassiveObserver, dtype="qint8_narrow"),
    act_observer=partial(PassiveObserver, dtype="qint8"),
    weight_fake_quant=partial(FakeQuantize, dtype="qint8_narrow"),
    act_fake_quant=partial(FakeQuantize, dtype="qint8"),
)

easyquant_qconfig = passive_qconfig
