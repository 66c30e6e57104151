"""`QATModule`: the base of the quantization-aware-training layers: it owns the observers and
fake quantizers a QConfig builds and applies them to weights, biases and activations."""
from abc import abstractmethod

from ...core.tensor import Tensor
from ...quantization.fake_quant import FakeQuantize
from ...quantization.observer import Observer
from ...quantization.qconfig import QConfig
from ...quantization.utils import QParams, fake_quant_bias
from ..module import Module

__all__ = ["QATModule"]


class QATModule(Module):
    """A float layer that trains with fake quantization. ``weight_observer``/``act_observer``
    and ``weight_fake_quant``/``act_fake_quant`` are built by :meth:`set_qconfig` (None until
    then, and for what the layer lacks: ``with_weight``/``with_act`` say which it has).

    Make one from a float layer with :meth:`from_float_module`, or a whole network with
    :func:`~.quantization.quantize_qat`; the parameters stay the float layer's.
    """

    with_weight = True
    with_act = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.weight_observer = None  # type: Observer
        self.act_observer = None  # type: Observer
        self.weight_fake_quant = None  # type: FakeQuantize
        self.act_fake_quant = None  # type: FakeQuantize

    def __repr__(self):
        return "QAT." + super().__repr__()

    def set_qconfig(self, qconfig: QConfig):
        """Build fresh observers and fake quantizers from ``qconfig``'s factories (a None
        factory leaves None) for the activation and, with a weight, for the weight."""
        if not isinstance(qconfig, QConfig):
            raise TypeError(f"set_qconfig expects a QConfig (e.g. ema_fakequant_qconfig), got "
                            f"{type(qconfig).__name__}")

        def make(factory):
            return factory() if factory is not None else None

        if self.with_act:
            self.act_observer = make(qconfig.act_observer)
            self.act_fake_quant = make(qconfig.act_fake_quant)
        if self.with_weight:
            self.weight_observer = make(qconfig.weight_observer)
            self.weight_fake_quant = make(qconfig.weight_fake_quant)

    @staticmethod
    def _enable_exec(with_module, func, enable):
        if not with_module or func is None:
            return
        if enable:
            func.enable()
        else:
            func.disable()

    def set_fake_quant(self, enable: bool):
        """Switch both fake quantizers on or off (off: they pass values through)."""
        self._enable_exec(self.with_act, self.act_fake_quant, enable)
        self._enable_exec(self.with_weight, self.weight_fake_quant, enable)

    def set_observer(self, enable: bool):
        """Switch both observers on or off (off: their statistics stay as they are)."""
        self._enable_exec(self.with_act, self.act_observer, enable)
        self._enable_exec(self.with_weight, self.weight_observer, enable)

    @staticmethod
    def _apply_fakequant_with_observer(target: Tensor, fake_quant, observer):
        # observe first, so the qparams used already include this batch
        if observer is None:
            oup, qparams = target, None
        else:
            oup = observer(target)
            qparams = observer.get_qparams()
        if fake_quant is not None:
            oup = fake_quant(oup, qparams)
            if hasattr(fake_quant, "get_qparams"):  # a learnt scale (TQT, LSQ) wins
                qparams = fake_quant.get_qparams()
        if qparams is not None:
            # the output carries its qparams: fake_quant_bias reads them from the input and
            # the weight (as upstream, a tensor that went through unchanged is marked itself)
            oup.qparams.update(qparams)
        return oup

    def apply_quant_weight(self, target: Tensor):
        """``target`` through the weight observer and weight fake quantizer."""
        return self._apply_fakequant_with_observer(target, self.weight_fake_quant,
                                                   self.weight_observer)

    def apply_quant_activation(self, target: Tensor):
        """``target`` through the activation observer and activation fake quantizer."""
        return self._apply_fakequant_with_observer(target, self.act_fake_quant,
                                                   self.act_observer)

    def apply_quant_bias(self, target: Tensor, inp: Tensor, w_qat: Tensor):
        """Fake-quantize a bias to qint32 with scale ``input scale * weight scale``
        (:func:`~.fake_quant_bias`) while both fake quantizers are enabled."""
        if (self.act_fake_quant is not None and self.act_fake_quant.enabled
                and self.weight_fake_quant is not None and self.weight_fake_quant.enabled):
            return fake_quant_bias(target, inp, w_qat)
        return target

    @staticmethod
    def _get_method_result(method: str, fake_quant, observer):
        if hasattr(fake_quant, method):
            return getattr(fake_quant, method)()
        if hasattr(observer, method):
            return getattr(observer, method)()
        return None

    def get_weight_dtype(self):
        """The weight's quantized numpy dtype (scale in its metadata), or None."""
        return self._get_method_result("get_quantized_dtype", self.weight_fake_quant,
                                       self.weight_observer)

    def get_activation_dtype(self):
        """The activation's quantized numpy dtype (scale in its metadata), or None."""
        return self._get_method_result("get_quantized_dtype", self.act_fake_quant,
                                       self.act_observer)

    def get_weight_qparams(self) -> QParams:
        """The weight's QParams (the fake quantizer's when it learns them, else the
        observer's), or None."""
        return self._get_method_result("get_qparams", self.weight_fake_quant,
                                       self.weight_observer)

    def get_activation_qparams(self) -> QParams:
        """The activation's QParams, or None."""
        return self._get_method_result("get_qparams", self.act_fake_quant, self.act_observer)

    @classmethod
    @abstractmethod
    def from_float_module(cls, float_module: Module):
        """A QAT module made from ``float_module``, sharing its parameters and buffers."""
