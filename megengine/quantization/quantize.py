"""Passes over a module tree: convert float layers to QAT layers (`quantize_qat`) and QAT layers
to quantized inference layers (`quantize`), set or reset their qconfig, switch fake quantization
and observers on and off, EasyQuant's scale search."""
from copy import deepcopy
from typing import Callable

import numpy as np

from .. import module as Float
from ..functional import concat, norm
from ..core.tensor import Tensor
from ..logger import get_logger
from ..module import Module
from ..utils.module_utils import set_expand_structure
from .qconfig import QConfig, ema_fakequant_qconfig

_logger = get_logger(__name__)

__all__ = [
    "quantize", "quantize_qat", "reset_qconfig", "propagate_qconfig", "hook_qat_module",
    "apply_easy_quant", "enable_fake_quant", "disable_fake_quant", "enable_observer",
    "disable_observer",
]

# The quantizable layers (same names in megengine.module, .qat and .quantized). Upstream
# derives the list from its quantized package; it is spelled out here so that quantize_qat
# does not import megengine.module.quantized.
_quantable_module_names = (
    "Linear", "LinearRelu", "Conv2d", "ConvRelu2d", "ConvTranspose2d", "ConvTransposeRelu2d",
    "ConvBn2d", "ConvBnRelu2d", "ConvTransposeBn2d", "ConvTransposeBnRelu2d", "LinearBn1d",
    "LinearBnRelu1d", "BatchMatMulActivation", "Elemwise", "Concat", "QuantStub",
    "DequantStub",
)


def _get_quantable_module_names():
    return list(_quantable_module_names)


def _qat():
    # megengine.module.qat imports this package (observers, fake quantizers), so it is
    # imported here on first use rather than at the top
    from ..module import qat

    return qat


def _float2qat_dict():
    qat = _qat()
    return {getattr(Float, name): getattr(qat, name) for name in _quantable_module_names}


def _is_qat(mod):
    return isinstance(mod, _qat().QATModule)


def _qat2quantized_dict():
    from ..module import quantized as Q

    qat = _qat()
    return {getattr(qat, name): getattr(Q, name) for name in _quantable_module_names}


def quantize(module: Module, inplace: bool = True, mapping: dict = None):
    """Replace each QAT layer of ``module`` by its quantized inference layer
    (``megengine.module.quantized``: integer weights, quantized inputs and outputs), built by
    its ``from_qat_module`` from the QAT layer's observers and fake quantizers. ``mapping``
    adds or overrides ``{QAT class: quantized class}`` pairs. ``inplace=False`` converts a deep
    copy. Returns the converted module (a new one when ``module`` itself is a QAT layer).

    The new layers start in training mode, as any new Module (upstream's rule, whatever mode
    the QAT layers were in); quantized layers run only in evaluation mode, so call ``.eval()``
    on the result.
    """
    if not inplace:
        module = deepcopy(module)
    convert_dict = _qat2quantized_dict()
    if mapping is not None:
        convert_dict.update(mapping)

    def convert(qat_module):
        cls = convert_dict.get(type(qat_module))
        if cls is None:
            raise TypeError(f"quantize: no quantized layer for {type(qat_module).__name__}; "
                            "pass mapping={QATClass: QuantizedClass}")
        return cls.from_qat_module(qat_module)

    if _is_qat(module):
        return convert(module)
    # every layer is converted before any is replaced, so that a layer that fails to convert
    # leaves the module as it was (upstream 1.13 measured: the layers before it were replaced)
    converted = [(key, convert(submodule)) for key, submodule, parent in list(
        module._flatten(with_key=True, with_parent=True, predicate=_is_qat))
        if not _is_qat(parent)]
    for key, new_mod in converted:
        set_expand_structure(module, key, new_mod)
    return module


def quantize_qat(module: Module, inplace: bool = True, qconfig: QConfig = ema_fakequant_qconfig,
                 mapping: dict = None):
    """Replace each quantizable float layer of ``module`` (the outermost one: a ConvBn2d's
    inner Conv2d stays as it is) by its QAT version, sharing the parameters and buffers, and
    give every QAT layer ``qconfig``. ``mapping`` adds or overrides ``{float class: QAT
    class}`` pairs; layers with ``quantize_disabled`` (``Module.disable_quantize``) are kept.
    ``inplace=False`` converts a deep copy. Returns the converted module (a new one when
    ``module`` itself is quantizable, e.g. a lone ConvBn2d). The QAT layers start in training
    mode, as any new Module (upstream's rule: a float network in eval mode gives QAT layers
    in training mode around its shared batch norms, still in eval mode); set the mode after.
    """
    if not isinstance(qconfig, QConfig):
        raise TypeError(f"quantize_qat: qconfig must be a QConfig, got {type(qconfig).__name__} "
                        "(pass it by keyword: quantize_qat(net, qconfig=...))")
    if not inplace:
        module = deepcopy(module)
    convert_dict = _float2qat_dict()
    if mapping is not None:
        convert_dict.update(mapping)

    def is_quantable(mod):
        # exact types: a QAT Linear is a float Linear too, and must not be converted again
        return type(mod) in convert_dict

    if is_quantable(module) and not module.quantize_disabled:
        # a quantizable root cannot replace itself in its caller's hands: the QAT version is
        # returned (upstream returns the float root unchanged, which silently does nothing)
        new_mod = convert_dict[type(module)].from_float_module(module)
        propagate_qconfig(new_mod, qconfig)
        return new_mod
    # every layer is converted before any is replaced: replacing while walking would change
    # what the walk sees, and a layer that fails to convert leaves the module as it was
    # (upstream 1.13 measured: the layers before it were replaced)
    converted = []
    for key, submodule, parent in list(module._flatten(with_key=True, with_parent=True,
                                                       predicate=is_quantable)):
        # outermost layers only, and nothing inside a QAT layer (the float Conv2d a QAT
        # ConvBn2d keeps), so that converting again changes nothing
        if is_quantable(parent) or _is_qat(parent) or submodule.quantize_disabled:
            continue
        converted.append((key, convert_dict[type(submodule)].from_float_module(submodule)))
    for key, new_mod in converted:
        set_expand_structure(module, key, new_mod)
    propagate_qconfig(module, qconfig)
    return module


def reset_qconfig(module: Module, qconfig: QConfig, inplace: bool = True):
    """Give every QAT layer new observers and fake quantizers from ``qconfig``, starting
    from the qparams its current ones give (those with ``set_qparams``: PassiveObserver, TQT,
    LSQ). Returns the module (a deep copy when ``inplace=False``)."""
    if not isinstance(qconfig, QConfig):
        raise TypeError(f"reset_qconfig: qconfig must be a QConfig, got "
                        f"{type(qconfig).__name__}")
    if not inplace:
        module = deepcopy(module)

    def build(factory, qparams):
        inst = factory() if factory is not None else None
        if inst is not None and getattr(inst, "set_qparams", None) is not None:
            inst.set_qparams(qparams)
        return inst

    # every layer's new observers and fake quantizers are built before any is set, so a
    # factory that raises leaves the module as it was
    built = []
    for m in list(module._flatten(predicate=_is_qat)):
        new = {}
        if m.with_weight:
            weight_params = m.get_weight_qparams()
            new["weight_observer"] = build(qconfig.weight_observer, weight_params)
            new["weight_fake_quant"] = build(qconfig.weight_fake_quant, weight_params)
        if m.with_act:
            act_params = m.get_activation_qparams()
            new["act_observer"] = build(qconfig.act_observer, act_params)
            new["act_fake_quant"] = build(qconfig.act_fake_quant, act_params)
        built.append((m, new))
    for m, new in built:
        for name, value in new.items():
            setattr(m, name, value)
    return module


def _propagate(module: Module, func_str: str, *args, **kwargs):
    qat_module = _qat().QATModule

    def fn(mod):
        if isinstance(mod, qat_module):
            getattr(mod, func_str)(*args, **kwargs)

    module.apply(fn)


def propagate_qconfig(module: Module, qconfig: QConfig):
    """Call ``set_qconfig(qconfig)`` on every QAT layer under ``module``."""
    _propagate(module, "set_qconfig", qconfig)


def hook_qat_module(module: Module, func: Callable):
    """Register ``func`` as a forward hook on every QAT layer; returns the handles."""
    return [m.register_forward_hook(func)
            for m in list(module._flatten(predicate=_is_qat))]


def enable_fake_quant(module: Module):
    """Switch fake quantization on in every QAT layer."""
    _propagate(module, "set_fake_quant", True)


def disable_fake_quant(module: Module):
    """Switch fake quantization off in every QAT layer (they compute in plain float)."""
    _propagate(module, "set_fake_quant", False)


def enable_observer(module: Module):
    """Let every QAT layer's observers update their statistics."""
    _propagate(module, "set_observer", True)


def disable_observer(module: Module):
    """Freeze every QAT layer's observers (their qparams stay as they are)."""
    _propagate(module, "set_observer", False)


def apply_easy_quant(module: Module, data: Tensor, start: float = 0.8, stop: float = 1.2,
                     num: int = 40):
    """EasyQuant (Wu et al., arXiv:2006.16669) as upstream 1.13 runs it: two passes of the
    network over ``data`` twice over (concatenated along the batch: a float half and a
    fake-quantized half), the first searching every QAT layer's weight scale, the second its
    activation scale, each layer at its first call in the pass.

    There the layer runs again on the float half with its fake quantization off (its float
    output), and on the fake-quantized half with each of ``num`` scales evenly spaced in
    ``[start, stop] * its original scale``; the scale whose output is closest to the float
    output, by cosine similarity per sample averaged over the batch, is kept. A scale must
    reach a similarity above 0; where none does, a warning is logged and the last scale tried
    stays, as upstream's. The layer then hands on its float output and the fake-quantized output
    it had computed before the search, so later layers see the earlier ones at their original
    scales; a layer without that observer (a QuantStub in the weight pass) hands on its output
    as it is, both halves fake-quantized. Every searched layer's fake quantization is on
    afterwards. The layers must hold PassiveObservers (``reset_qconfig(net, passive_qconfig)``
    first). Returns the module.
    """
    if not stop >= start > 0 or int(num) < 1:
        raise ValueError(f"apply_easy_quant: need 0 < start <= stop and num >= 1, got "
                         f"start={start}, stop={stop}, num={num}")
    layers = list(module._flatten(predicate=_is_qat))
    for layer in layers:  # (before anything changes)
        for where in ("weight_observer", "act_observer"):
            observer = getattr(layer, where, None)
            if observer is not None and not hasattr(observer, "orig_scale"):
                raise TypeError(f"apply_easy_quant needs PassiveObservers ({type(layer).__name__}"
                                f".{where} is a {type(observer).__name__}): reset_qconfig(module, "
                                "passive_qconfig) first")
    batch = data.shape[0]
    doubled = concat([data, data])
    for where in ("weight_observer", "act_observer"):
        handles = {}

        def search(layer, inputs, outputs, where=where):
            handles.pop(id(layer)).remove()  # (its first call in the pass only)
            # (upstream's order: a layer with nothing to search ends with fake quantization on)
            disable_fake_quant(layer)
            float_out = layer(*[x[:batch] for x in inputs])
            enable_fake_quant(layer)
            observer = getattr(layer, where, None)
            if observer is None:
                return None
            quant_in = [x[batch:] for x in inputs]
            best, best_scale = 0.0, None
            for scale in np.linspace(start * observer.orig_scale, stop * observer.orig_scale,
                                     int(num)):
                observer.scale = scale
                similarity = float(_mean_cosine(float_out, layer(*quant_in)).numpy())
                if similarity > best:
                    best, best_scale = similarity, scale
            if best_scale is None:
                _logger.warning("EasyQuant finds no better scale")
            else:
                observer.scale = best_scale
            return concat([float_out, outputs[batch:]])
        for layer in layers:
            handles[id(layer)] = layer.register_forward_hook(search)
        try:
            module(doubled)
        finally:
            for handle in handles.values():
                handle.remove()
    return module


def _mean_cosine(x, y):
    """Cosine similarity of ``x`` and ``y`` per sample (over all but the first axis), averaged."""
    axis = tuple(range(1, x.ndim))
    return ((x * y).sum(axis=axis) / (norm(x, axis=axis) * norm(y, axis=axis))).mean()
