"""`get_scaled_model`: train a network's Conv2d and Linear layers with their weights multiplied
by fixed factors (constants, or powers of two that bring a weight near a chosen norm), each
layer's bias by the scale its output carries, until a BatchNorm2d normalizes it away; eval
mode computes with the weights as stored (upstream 1.13's ``megengine.experimental``)."""
import numpy as np

from .. import functional as F
from .. import module as M
from ..core.tensor import Tensor
from ..logger import get_logger
from ..utils.module_utils import set_module_mode_safe

__all__ = ["get_norm_mod_value", "get_scaled_model"]

_SCALED = (M.Conv2d, M.Linear)  # (their subclasses too: ConvRelu2d, LinearRelu, QAT layers)


def get_norm_mod_value(weight, norm_value) -> Tensor:
    """The largest power of two ``s`` with ``s * ||weight|| <= norm_value`` (the 2-norm of all
    of ``weight``'s values), a 0-d float32 Tensor without gradient: the factor that brings the
    weight's norm into ``(norm_value / 2, norm_value]``. A zero weight gives inf."""
    if not (isinstance(norm_value, (int, float, np.number)) and not isinstance(norm_value, bool)
            and np.isfinite(norm_value) and norm_value > 0):
        raise ValueError(f"get_norm_mod_value: norm_value must be a positive number (the norm "
                         f"to bring the weight to), got {norm_value!r}")
    norm = F.norm(weight.reshape(-1)).detach()
    scale = (norm_value / norm).numpy()
    if np.isfinite(scale) and scale > 0:
        # the exponent read exactly (frexp: scale = m * 2**e, 0.5 <= m < 1), where upstream's
        # floor(log(scale) / log(2)) in float32 may round a power of two down a step
        scale = np.ldexp(np.float32(1), int(np.frexp(scale)[1]) - 1)
    return Tensor(np.asarray(scale, dtype=np.float32), device=weight.device)


class _ScaledCompute:
    """A scaled layer's ``calc_conv`` / ``calc_linear`` (set on the instance): in training mode
    the layer's weight times ``weight_scale`` and bias times ``bias_scale`` go to the
    computation the layer had; in eval mode the weight and bias as given."""

    def __init__(self, layer, name, inner):
        self.layer = layer
        self.name = name  # "calc_conv" or "calc_linear"
        self.inner = inner  # the instance's own callable before this one, or None: the class's

    def __call__(self, inp, weight, bias):
        layer = self.layer
        if layer.training:
            weight = weight * layer.weight_scale
            bias = None if bias is None else bias * layer.bias_scale
        if self.inner is not None:
            return self.inner(inp, weight, bias)
        return getattr(type(layer), self.name)(layer, inp, weight, bias)


def _scale_layer(layer, weight_scale, bias_scale):
    method = "calc_conv" if isinstance(layer, M.Conv2d) else "calc_linear"
    own = layer.__dict__.get(method)
    if not isinstance(own, _ScaledCompute):  # (scaled again: new factors, one wrapper)
        layer.__dict__[method] = _ScaledCompute(layer, method, own)
    layer.weight_scale = weight_scale
    layer.bias_scale = bias_scale


def _checked_entries(model, scale_submodel):
    names = dict(model.named_modules())
    if not isinstance(scale_submodel, dict):
        raise TypeError("get_scaled_model: scale_submodel must be a dict of submodule name -> "
                        f"(mode, value), got {type(scale_submodel).__name__}")
    for key, entry in scale_submodel.items():
        if key not in names:
            known = ", ".join(repr(n) for n in list(names)[:8]) + (", ..." if len(names) > 8
                                                                   else "")
            raise ValueError(f"get_scaled_model: the model has no submodule named {key!r} "
                             f"(named_modules() gives {known})")
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2
                and isinstance(entry[1], (int, float, np.number))
                and not isinstance(entry[1], bool)):
            raise TypeError(f"get_scaled_model: scale_submodel[{key!r}] must be a pair (mode, "
                            "number): ('CONST', factor), or any other mode and the norm to "
                            f"scale weights to, got {entry!r}")
        if entry[0] != "CONST" and not (np.isfinite(entry[1]) and entry[1] > 0):
            raise ValueError(f"get_scaled_model: scale_submodel[{key!r}] asks for weights of "
                             f"norm {entry[1]!r}; a norm to scale to must be a positive number")
    return names


def _factor(name, layer, mode, value):
    if mode == "CONST":
        return float(value)
    factor = get_norm_mod_value(layer.weight, float(value))
    if not np.isfinite(factor.item()):
        norm = float(np.linalg.norm(layer.weight.numpy().reshape(-1)))
        raise ValueError(f"get_scaled_model: {name!r}'s weight has norm {norm:g}, which no "
                         f"factor brings to {value}; scale it with ('CONST', factor) or leave "
                         "it out")
    return factor


def _chosen_layers(order, scale_submodel, input_shape):
    """{id(layer): (mode, value)} of the layers to scale, from the calls' order: a named
    Conv2d / Linear by its own entry; those that run after a named block by the block's,
    where a BatchNorm2d runs before the next block starts (else they are left unscaled)."""
    chosen, pending, block = {}, {}, None
    unclosed = []

    def close(closed):
        if closed:
            chosen.update((k, v) for k, v in pending.items() if k not in chosen)
        elif pending:
            unclosed.append(block)
        pending.clear()

    for name, module in order:
        entry = scale_submodel.get(name)
        if isinstance(module, M.BatchNorm2d):
            close(True)
            block = None
        elif isinstance(module, _SCALED):
            if entry is not None:
                chosen.setdefault(id(module), tuple(entry))
            elif block is not None:
                pending.setdefault(id(module), scale_submodel[block])
        elif entry is not None:
            close(False)
            block = name
    close(False)
    ran = {name for name, _ in order}
    log = get_logger(__name__)
    for name in scale_submodel:
        if name not in ran:
            log.warning("get_scaled_model: %r did not run in the forward of zeros%s: left "
                        "unscaled", name, input_shape)
    for name in unclosed:
        log.warning("get_scaled_model: no BatchNorm2d ran after the layers of %r: left "
                    "unscaled (a BatchNorm2d takes their scale out again)", name)
    return chosen


def get_scaled_model(model: M.Module, scale_submodel: dict, input_shape=None) -> M.Module:
    """Scale ``model``'s Conv2d and Linear layers for training, in place, and return it.

    ``scale_submodel`` maps names of ``model.named_modules()`` to ``(mode, value)``: mode
    ``"CONST"`` multiplies weights by ``value``; any other mode by
    :func:`get_norm_mod_value` of the layer's weight and ``value`` (its norm target), fixed now.
    A named Conv2d or Linear is scaled alone; a named other module (a block) scales the Conv2d
    and Linear layers that run after it up to the next BatchNorm2d, each by its own factor
    (none of them where no BatchNorm2d runs before another block starts: a warning says so).
    Layers run in the order one eval-mode forward of zeros of ``input_shape`` calls them. The
    scale of the activations, the product of the factors of the scaled layers run since the
    last BatchNorm2d, multiplies each scaled layer's bias (``bias_scale``; the weight's factor
    is ``weight_scale``: Tensors, so in the state dict, where norm-fitted). Training-mode
    forwards compute with the scaled weights and biases (gradients reach the stored
    parameters); eval-mode forwards with the stored ones.

    Upstream 1.13 gives the same factors, and with constants alone the same bias scales and
    training (measured), but differs: its Linear layers cannot be scaled (it looks for
    ``_calc_linear``); once a norm-fitted factor has been taken, the bias scales of the layers
    scaled since share one Tensor that each later layer multiplies in place (all end with the
    product of all the factors); and a BatchNorm2d resets the activations' scale only where it
    ends a block.
    """
    if input_shape is None:
        raise ValueError("get_scaled_model: input_shape is required: the model runs once on "
                         "zeros of that shape to find the order of its layers")
    names = _checked_entries(model, scale_submodel)
    ids = {id(m): n for n, m in names.items()}
    order = []  # (name, module) of every call, pre-forward order
    hooks = [m.register_forward_pre_hook(lambda m, inputs: order.append((ids[id(m)], m)))
             for m in names.values()]
    try:
        with set_module_mode_safe(model, training=False):
            model(F.zeros(input_shape))
    finally:
        for hook in hooks:
            hook.remove()

    chosen = _chosen_layers(order, scale_submodel, tuple(input_shape))
    plan = []  # (layer, weight factor, bias factor): all worked out before any is set
    carried = 1.0  # the scale of the activations since the last BatchNorm2d
    for name, module in order:
        if isinstance(module, M.BatchNorm2d):
            carried = 1.0
        elif id(module) in chosen:
            mode, value = chosen.pop(id(module))
            factor = _factor(name, module, mode, value)
            carried = carried * factor
            plan.append((module, factor, carried))
    for layer, factor, bias_factor in plan:
        _scale_layer(layer, factor, bias_factor)
    return model
