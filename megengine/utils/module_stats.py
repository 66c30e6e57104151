"""`module_stats`: run a model once; report parameters, FLOPs and activation sizes per layer.

Counting follows upstream MegEngine 1.x: forward hooks on the layer types listed in
`hook_modules` (convolutions, linear, batch matmul, normalizations, pooling) note each call's
input and output shapes; a FLOP formula registered for the layer's type (`register_flops`)
counts its multiply-adds the way upstream does (a convolution is ``N*Cout*H*W * (Cin/groups *
prod(kernel) + bias)``, a normalization ``7 * numel(input)``, a pooling ``numel(output) *
prod(kernel)``, a linear layer ``numel(output) * in_features + out_features``); each hooked
layer's ``weight`` and ``bias`` are counted once however often they are used, also when a
forward reads them without calling the layer (``self.conv.calc_conv(x, self.conv.weight, ...)``);
an activation is a hooked layer's (first) output.

Layers of other types (activations, elementwise ops) are not counted, as upstream;
`register_hook_module` and `register_flops` add types.

A `PyTorchModule` (a fork's addition) is counted by the same rules: every parameter of a called
wrapper is a row (its torch name under the wrapper's, ``body.conv-w``), and the torch layers
inside whose megengine counterparts have a formula (``torch.nn`` convolutions, ``Linear``,
normalizations, 2-d pooling) are FLOPs and activation rows, class ``torch Conv2d``, with that
formula. The rest of the torch forward (``torch.relu``, a bare ``x @ w``) counts nothing, as
functional calls in a megengine forward count nothing. A torch layer's activation row is read
off the torch tensor (shape, element size, dtype name), so outputs in dtypes numpy or megengine
cannot hold (bfloat16, float8, complex) are counted as they are.

The steps `module_stats` takes are public, as upstream's: `get_op_stats`, `get_param_stats` and
`get_activation_stats` make one row, `sum_op_stats`, `sum_param_stats` and
`sum_activations_stats` add the totals, `print_op_stats`, `print_param_stats`,
`print_activations_stats` and `print_summary` log the tables (`dict2table` makes one).
"""
import collections
import functools
from collections import namedtuple
from typing import Iterable

import numpy as np

from .. import module as M
from ..core.dtype import get_dtype_bit
from ..core.tensor import Tensor
from ..logger import _WHOLE, get_logger
from .module_utils import pytorch_modules, set_module_mode_safe

__all__ = ["module_stats", "sizeof_fmt", "register_flops", "register_hook_module", "hook_modules",
           "get_param_stats", "get_activation_stats", "total_stats", "stats_details",
           "get_op_stats", "sum_op_stats", "sum_param_stats", "sum_activations_stats",
           "print_op_stats", "print_param_stats", "print_activations_stats", "print_summary",
           "dict2table"]

logger = get_logger(__name__)

#: what `module_stats` returns first: totals (sizes in bytes, dims in elements, flops in ops)
total_stats = namedtuple("total_stats", ["param_size", "param_dims", "flops", "act_size",
                                         "act_dims"])
#: what `module_stats` returns second: one list of row dicts per table (a "total" row last)
stats_details = namedtuple("module_stats", ["params", "flops", "activations"])

_flops_of_type = {}  # layer type -> flops(module, inputs, outputs)


def register_flops(*module_types):
    """Decorator: ``@register_flops(M.Conv2d)`` makes ``fn(module, inputs, outputs)`` the FLOP
    count of those layer types (the most specific registered base class of a layer is used)."""
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, M.Module)):
            raise TypeError(f"register_flops: {t!r} is not a Module subclass")

    def register(fn):
        for t in module_types:
            _flops_of_type[t] = fn
        return fn

    return register


def _numel(shape):
    return int(np.prod(shape, dtype=np.int64))


# The formulas return floats where upstream's compute in floats (convolutions and adaptive
# pooling), ints elsewhere, so that a row prints as upstream's (``912.0`` for a convolution).
# Python numbers, not upstream's numpy scalars: under numpy 2 those would print as
# ``np.float64(912.0)``, where upstream (on numpy 1) prints ``912.0``.


# the types upstream gives a formula (ConvTranspose3d has none there, so its calls add no
# FLOPs row, as upstream)
@register_flops(M.Conv1d, M.Conv2d, M.Conv3d, M.LocalConv2d, M.DeformableConv2d)
def flops_convNd(module, inputs, outputs):
    # every output element: Cin/groups * prod(kernel) multiply-adds, plus one bias add
    k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,)
    bias = 1 if module.bias is not None else 0
    return float(_numel(outputs[0].shape)
                 * (module.in_channels // module.groups * _numel(k) + bias))


@register_flops(M.ConvTranspose2d)
def flops_convNdTranspose(module, inputs, outputs):
    # every input element is scattered to Cout/groups * prod(kernel) outputs; bias per output
    k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,)
    bias = 1 if module.bias is not None else 0
    return (_numel(inputs[0].shape) * (module.out_channels // module.groups * _numel(k))
            + _numel(outputs[0].shape) * bias)


@register_flops(M.batchnorm._BatchNorm, M.GroupNorm, M.LayerNorm, M.InstanceNorm)
def flops_norm(module, inputs, outputs):
    return _numel(inputs[0].shape) * 7  # upstream's constant per element


@register_flops(M.pooling._PoolNd)
def flops_pool(module, inputs, outputs):
    k = module.kernel_size
    window = _numel(k) if isinstance(k, (tuple, list)) else k * k
    return _numel(outputs[0].shape) * window


@register_flops(M.adaptive_pooling._AdaptivePoolNd)
def flops_adaptivePool(module, inputs, outputs):
    # upstream's count, so that totals match the numbers its users publish: its formula takes
    # the stride as floor(in / (in - 1)) where the pooling's floor(in / out) is meant, so the
    # window is 1 per axis of 3 or more, 0 for an axis of 2, and (where upstream divides by
    # zero) 1 for an axis of 1 here
    def window(size):
        return 1 if size == 1 else size - (size - 1) * (size // (size - 1))

    ih, iw = inputs[0].shape[2:4]
    return float(_numel(outputs[0].shape) * window(ih) * window(iw))


@register_flops(M.Linear)
def flops_linear(module, inputs, outputs):
    bias = module.out_features if module.bias is not None else 0
    return _numel(outputs[0].shape) * module.in_features + bias


@register_flops(M.BatchMatMulActivation)
def flops_batchmatmul(module, inputs, outputs):
    # upstream's count: batch * in * (n + bias) * in for weight (batch, out, in) @ x (batch,
    # in, n); its formula reads the weight's last axis (in) where out is meant, so the count
    # is the multiply-adds' batch * out * n * in only when out == in
    batch, in_features, n = inputs[0].shape
    bias = 1 if module.bias is not None else 0
    return batch * in_features * (n + bias) * module.weight.shape[2]


#: the layer types whose calls are counted (subclasses included)
hook_modules = [
    M.conv._ConvNd, M.Linear, M.BatchMatMulActivation, M.batchnorm._BatchNorm, M.LayerNorm,
    M.GroupNorm, M.InstanceNorm, M.pooling._PoolNd, M.adaptive_pooling._AdaptivePoolNd,
]


def register_hook_module(module):
    """Count the calls of another layer type (a Module subclass, an instance's type, or a list
    of them) from now on; give it a FLOP formula with `register_flops`."""
    if isinstance(module, (list, tuple)):
        for m in module:
            register_hook_module(m)
        return
    if isinstance(module, M.Module):
        module = type(module)
    if not (isinstance(module, type) and issubclass(module, M.Module)):
        raise TypeError(f"register_hook_module: expected a Module subclass, an instance, or a "
                        f"list of them, got {type(module).__name__}")
    if module not in hook_modules:
        hook_modules.append(module)


def _flops_fn(module):
    for cls in type(module).__mro__:
        fn = _flops_of_type.get(cls)
        if fn is not None:
            return fn
    return None


def _torch_layer_formulas():
    """The ``torch.nn`` layer types counted inside a PyTorchModule, each with the formula of its
    megengine counterpart (their attributes have the same names). Called only for a model that
    holds a PyTorchModule, so torch is already imported."""
    import torch.nn as tnn

    return {
        tnn.Conv1d: flops_convNd, tnn.Conv2d: flops_convNd, tnn.Conv3d: flops_convNd,
        tnn.ConvTranspose2d: flops_convNdTranspose, tnn.Linear: flops_linear,
        tnn.modules.batchnorm._BatchNorm: flops_norm, tnn.GroupNorm: flops_norm,
        tnn.LayerNorm: flops_norm, tnn.modules.instancenorm._InstanceNorm: flops_norm,
        tnn.MaxPool2d: flops_pool, tnn.AvgPool2d: flops_pool,
        tnn.AdaptiveAvgPool2d: flops_adaptivePool, tnn.AdaptiveMaxPool2d: flops_adaptivePool,
    }


def sizeof_fmt(num, suffix="B"):
    """``num`` with a binary prefix for bytes (``"1.500 KiB"``), a decimal one otherwise
    (``sizeof_fmt(2e9, suffix="OPs")`` is ``"2.000 GOPs"``)."""
    scale, units = ((1024.0, ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"]) if suffix == "B"
                    else (1000.0, ["", "K", "M", "G", "T", "P", "E", "Z", "Y"]))
    for unit in units:
        if abs(num) < scale or unit == units[-1]:
            return f"{num:3.3f} {unit}{suffix}"
        num /= scale


def _nbits(dtype):
    return get_dtype_bit(np.dtype(dtype).name)  # (as upstream: a bool is 1 bit)


def _mean_std(values):
    """The mean and standard deviation of a host array, in float32 (complex64 for complex
    values, whose mean is complex), formatted as upstream's table shows them."""
    a = np.asarray(values, dtype=np.complex64 if np.iscomplexobj(values) else np.float32)
    # float32 statistics of huge values overflow to inf or nan: upstream shows them so,
    # without a warning (models with random weights reach such values)
    with np.errstate(over="ignore", invalid="ignore"):
        return f"{a.mean():.3g}", f"{a.std():.3g}"


def get_param_stats(param: Tensor):
    """One parameter's row: dtype, shape, mean, std, param_dim (elements), nbits, size (bytes)."""
    nbits = _nbits(param.dtype)
    dim = _numel(param.shape)
    mean, std = _mean_std(param.numpy())
    return {"dtype": np.dtype(param.dtype), "shape": tuple(param.shape), "mean": mean, "std": std,
            "param_dim": dim, "nbits": nbits, "size": dim * nbits // 8}


def get_activation_stats(output: Tensor, has_input=False):
    """One activation's row: dtype, shape, act_dim, nbits, size (and mean/std of real inputs)."""
    nbits = _nbits(output.dtype)
    dim = _numel(output.shape)
    row = {"dtype": np.dtype(output.dtype), "shape": tuple(output.shape), "act_dim": dim,
           "nbits": nbits, "size": dim * nbits // 8}
    if has_input:  # statistics of zeros made from input_shapes would say nothing
        row["mean"], row["std"] = _mean_std(output.numpy())
    return row


def _torch_activation_stats(output, has_input=False):
    """`get_activation_stats` of a torch layer's output, counted from the torch tensor: its
    shape and element size need no values, and torch holds dtypes that numpy (bfloat16,
    float8) or megengine (complex) cannot, so nothing is converted but the statistics."""
    import torch  # (loaded already: a PyTorchModule ran)

    name = str(output.dtype).replace("torch.", "")
    try:
        dtype = np.dtype(name)
    except TypeError:  # no numpy dtype of that name: the row shows torch's
        dtype = name
    nbits = 1 if output.dtype == torch.bool else output.element_size() * 8  # (as _nbits)
    dim = output.numel()
    row = {"dtype": dtype, "shape": tuple(output.shape), "act_dim": dim, "nbits": nbits,
           "size": dim * nbits // 8}
    if has_input:
        wide = torch.complex64 if output.is_complex() else torch.float32
        row["mean"], row["std"] = _mean_std(output.detach().to("cpu", wide).numpy())
    return row


def _add_totals(rows, key, bar_length_max, fmt, cum_key=None):
    """Cumulative column (``cum_key``, default ``key + "_cum"``), share and bar per row, in
    upstream's key order; returns the total."""
    total = sum(int(r[key]) for r in rows)
    largest = max([r[key] for r in rows] + [0])
    running = 0
    for r in rows:
        running += int(r[key])
        r[cum_key or key + "_cum"] = fmt(running)
        r["ratio"] = r[key] / total if total else 0.0
        r["percentage"] = f"{r['ratio'] * 100:.2f}%"
        r["bar"] = "#" * (int(r[key] / largest * bar_length_max) if largest else 0)
    return total


def dict2table(list_of_dict, header):
    """The table of ``list_of_dict`` under ``header``: the header, then one row per dict, its
    values in the header's order (``""`` where a dict lacks a key)."""
    return [list(header)] + [[d.get(h, "") for h in header] for d in list_of_dict]


def _format_table(table):
    """``table`` (`dict2table`'s rows, the header first) as upstream logs it (``tabulate`` of
    the rows: left-aligned columns two spaces apart, no trailing blanks, a rule above and
    below)."""
    cells = [[str(c) for c in row] for row in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    rule = "  ".join("-" * w for w in widths)
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([rule] + lines + [rule])


def get_op_stats(module, inputs, outputs):
    """One call's FLOPs row: ``input_shapes``, ``output_shapes`` and ``flops_num`` by the
    formula `register_flops` gave the module's type; None for a type without one."""
    fn = _flops_fn(module)
    if fn is None:
        return None
    return _op_row(fn, module, inputs, outputs)


def _op_row(fn, module, inputs, outputs):
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    # upstream's key order (printing a row shows it)
    return {"input_shapes": [tuple(i.shape) for i in inputs],
            "output_shapes": [tuple(o.shape) for o in outputs],
            "flops_num": fn(module, inputs, outputs)}


def sum_op_stats(flops, bar_length_max=20):
    """Add to each FLOPs row (`get_op_stats`' with a ``name``) its ``flops_cum``, ``ratio``,
    ``percentage``, ``bar`` and formatted ``flops``, and append a "total" row; returns
    ``(total flops, flops)``."""
    total = _add_totals(flops, "flops_num", bar_length_max,
                        lambda n: sizeof_fmt(n, suffix="OPs"), cum_key="flops_cum")
    for r in flops:
        r["flops"] = sizeof_fmt(r["flops_num"], suffix="OPs")
    # upstream's total row shows, under output_shapes, the sum of the outputs' second
    # dimensions (channels, for convolutions)
    channels = sum(s[1] for r in flops for s in r["output_shapes"] if len(s) > 1)
    flops.append({"name": "total", "flops": sizeof_fmt(total, suffix="OPs"),
                  "output_shapes": channels})
    return total, flops


def _sum_size_rows(rows, dim_key, bar_length_max):
    """Totals of a params or activations table, ``(dims, bytes)``; formats each row's size
    (with its cumulative size, share and bar) and appends the "total" row."""
    total_dims = sum(int(r[dim_key]) for r in rows)
    total_size = _add_totals(rows, "size", bar_length_max, sizeof_fmt)
    for r in rows:
        r["size_bar"] = r.pop("bar")
        r["size"] = sizeof_fmt(r["size"])
    rows.append({"name": "total", dim_key: total_dims, "size": sizeof_fmt(total_size)})
    return total_dims, total_size


def sum_param_stats(params, bar_length_max=20):
    """Totals of the parameter rows (`get_param_stats`' with a ``name``), which get
    ``size_cum``, ``ratio``, ``percentage``, ``size_bar`` and a formatted ``size``, and a
    "total" row; returns ``(total param_dim, total bytes, params)``."""
    return (*_sum_size_rows(params, "param_dim", bar_length_max), params)


def sum_activations_stats(activations, bar_length_max=20):
    """`sum_param_stats` for activation rows (`get_activation_stats`'); returns
    ``(total act_dim, total bytes, activations)``."""
    return (*_sum_size_rows(activations, "act_dim", bar_length_max), activations)


def print_op_stats(flops):
    """Log the FLOPs table (rows after `sum_op_stats`)."""
    logger.info("flops stats: \n" + _format_table(dict2table(flops, [
        "name", "class_name", "input_shapes", "output_shapes", "flops", "flops_cum",
        "percentage", "bar"])), extra=_WHOLE)


def print_param_stats(params):
    """Log the parameters table (rows after `sum_param_stats`)."""
    logger.info("param stats: \n" + _format_table(dict2table(params, [
        "name", "dtype", "shape", "mean", "std", "param_dim", "nbits", "size", "size_cum",
        "percentage", "size_bar"])), extra=_WHOLE)


def print_activations_stats(activations, has_input=False):
    """Log the activations table (rows after `sum_activations_stats`); ``has_input``: with
    the ``mean`` and ``std`` columns (real inputs, not zeros of given shapes)."""
    header = ["name", "class_name", "dtype", "shape", "nbits", "act_dim", "size", "size_cum",
              "percentage", "size_bar"]
    if has_input:
        header[4:4] = ["mean", "std"]
    logger.info("activations stats: \n" + _format_table(dict2table(activations, header)),
                extra=_WHOLE)


def print_summary(**kwargs):
    """Log the summary table: one ``item  value`` row per keyword, in the order given."""
    logger.info("summary\n" + _format_table([["item", "value"], *kwargs.items()]))


def _is_shapes(x):
    """Whether ``x`` is a shape (a tuple of ints) or a list of shapes, not input data."""
    def is_shape(s):
        return (isinstance(s, tuple) and not hasattr(s, "_fields") and len(s) > 0
                and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in s))

    if is_shape(x):
        return True
    return isinstance(x, list) and len(x) > 0 and all(is_shape(s) for s in x)


def _to_tensors(x):
    """Inputs as the model is to get them: arrays and numbers become Tensors, containers keep
    their type (dicts, named tuples, lists)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return Tensor(x)
    if isinstance(x, collections.abc.Mapping):
        return {k: _to_tensors(v) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_to_tensors(v) for v in x))
    if isinstance(x, (list, tuple)):
        return [_to_tensors(v) for v in x]
    return Tensor(x, dtype=np.float32)


def module_stats(model: M.Module, inputs: Iterable[np.ndarray] = None, input_shapes: list = None,
                 cal_params: bool = True, cal_flops: bool = True, cal_activations: bool = True,
                 logging_to_stdout: bool = True, bar_length_max: int = 20, *,
                 log_params: bool = True, log_flops: bool = True, log_activations: bool = True,
                 input_size=None):
    """Run ``model`` once (in eval mode; its modes are restored) and count its parameters,
    FLOPs and activations.

    Args:
        model: the Module to measure.
        inputs: the model's inputs (one array or Tensor, or a list of them; dicts and named
            tuples are passed through), called as ``model(*inputs)``; or
        input_shapes: one shape or a list of shapes: float32 zeros of those shapes are the inputs.
            Older upstream releases passed the shapes as the second positional argument, or
            as ``input_size``: both still work (a tuple of ints, or a list of such tuples, in
            place of ``inputs`` is taken as shapes).
        cal_params, cal_flops, cal_activations: which of the three to count.
        logging_to_stdout: log the tables (logger ``megengine.utils.module_stats``); the
            summary is logged either way, as upstream's.
        bar_length_max: the width of the longest ``#`` bar in the tables.
        log_params, log_flops, log_activations: which tables to log (upstream's older
            spelling).

    Returns:
        ``(total_stats, stats_details)``: ``total_stats(param_size, param_dims, flops, act_size,
        act_dims)`` (bytes, elements, ops) and ``stats_details(params, flops, activations)``,
        lists of per-module row dicts, each list ending with a ``"total"`` row.
    """
    if input_size is not None and input_shapes is None:  # upstream 1.3's name
        input_shapes = input_size
    if inputs is not None and input_shapes is None and _is_shapes(inputs):
        # upstream 1.4/1.5 took input_shapes as the second positional argument
        inputs, input_shapes = None, inputs
    if inputs is not None:
        has_inputs = True
        if not isinstance(inputs, (tuple, list)) or (isinstance(inputs, tuple)
                                                     and hasattr(inputs, "_fields")):
            inputs = [inputs]
        inputs = _to_tensors(list(inputs))
    elif input_shapes:
        has_inputs = False
        if not isinstance(input_shapes[0], (tuple, list)):
            input_shapes = [input_shapes]
        inputs = [Tensor(np.zeros(tuple(s), np.float32)) for s in input_shapes]
    else:
        raise ValueError("module_stats: give the model's inputs (inputs=...) or their shapes "
                         "(input_shapes=...) so that it can be run once")

    params, flops, activations = [], [], []
    recorded = set()  # ids of counted parameters: a shared one is counted once
    names = {}  # id(hooked module) -> its dotted name

    def note_param(module, attr, value, module_name=None):
        if value is None or id(value) in recorded or not isinstance(value, Tensor):
            return
        recorded.add(id(value))
        row = get_param_stats(value)
        suffix = {"weight": "-w", "bias": "-b"}.get(attr, "-" + attr)
        row["name"] = (names[id(module)] if module_name is None else module_name) + suffix
        params.append(row)

    def add_rows(module, inps, outs_list, name, class_name, formula,
                 activation_stats=get_activation_stats):
        if cal_flops and formula is not None:
            row = _op_row(formula, module, inps, outs_list)
            row["name"], row["class_name"] = name, class_name
            flops.append(row)
        if cal_activations:
            row = activation_stats(outs_list[0], has_inputs)
            row["name"], row["class_name"] = name, class_name
            activations.append(row)

    def hook(module, inps, outs, name=""):
        outs_list = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        if cal_params:
            for attr in ("weight", "bias"):
                note_param(module, attr, getattr(module, attr, None))
        add_rows(module, inps, outs_list, name, type(module).__name__, _flops_fn(module))

    def torch_layer_hook(tmod, inps, outs, name, formula, mirrors):
        # (the parameters a forward reads are listed also without cal_params, as upstream
        # lists a megengine layer's: see watching_getattribute)
        for attr in ("weight", "bias"):
            value = getattr(tmod, attr, None)
            if value is not None:
                note_param(tmod, attr, mirrors.get(id(value)), module_name=name)
        outs_list = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        add_rows(tmod, inps, outs_list, name, "torch " + type(tmod).__name__, formula,
                 _torch_activation_stats)

    def wrapper_hook(wrapper, inps, outs, name=""):
        # torch's forward reads the parameters through torch's attributes, out of the
        # watcher's sight: a called wrapper counts all of its own (those of counted torch
        # layers are counted already, in call order, as megengine layers' are)
        for mirror_name, mirror in wrapper.named_modules(prefix=name or None):
            for attr, p in mirror.named_parameters(recursive=False):
                note_param(mirror, attr, p, module_name=mirror_name)

    handles = []
    types = tuple(hook_modules)
    for name, module in model.named_modules():
        if isinstance(module, types) and id(module) not in names:
            names[id(module)] = name
            handles.append(module.register_forward_hook(functools.partial(hook, name=name)))
    wrappers = pytorch_modules(model)
    torch_formulas = _torch_layer_formulas() if wrappers else {}
    for name, wrapper in wrappers:
        mirrors = {id(p.torch_tensor): p for p in wrapper.parameters()}  # torch's -> megengine's
        handles.append(wrapper.register_forward_hook(functools.partial(wrapper_hook, name=name)))
        for torch_name, tmod in wrapper.torch_module.named_modules():
            formula = next((torch_formulas[c] for c in type(tmod).__mro__
                            if c in torch_formulas), None)
            if formula is not None and id(tmod) not in names:  # (one torch layer wrapped twice)
                names[id(tmod)] = ".".join(filter(None, (name, torch_name)))
                handles.append(tmod.register_forward_hook(functools.partial(
                    torch_layer_hook, name=names[id(tmod)], formula=formula,
                    mirrors=mirrors)))

    # A forward may read a layer's weight without calling the layer (``conv.calc_conv(x,
    # conv.weight, conv.bias)``); upstream counts those too, so reads of ``weight``/``bias`` on
    # hooked layers are watched while the model runs. Module defines no __getattribute__ of
    # its own: the watcher is installed on the class and deleted afterwards.
    def watching_getattribute(module, item):
        value = object.__getattribute__(module, item)
        if ((item == "weight" or item == "bias")  # (also without cal_params, as upstream's:
                and id(module) in names and value is not None):  # it only leaves them unsummed)
            note_param(module, item, value)
        return value

    had_own = "__getattribute__" in vars(M.Module)
    previous = vars(M.Module).get("__getattribute__")
    try:
        M.Module.__getattribute__ = watching_getattribute
        with set_module_mode_safe(model, training=False):
            model(*inputs)
    finally:
        if had_own:
            M.Module.__getattribute__ = previous
        else:
            del M.Module.__getattribute__
        for h in handles:
            h.remove()

    summary = {"#params": len(params)}
    total_flops = total_param_dims = total_param_size = total_act_dims = total_act_size = 0
    if cal_params:
        total_param_dims, total_param_size, _ = sum_param_stats(params, bar_length_max)
        summary["total_param_dims"] = sizeof_fmt(total_param_dims, suffix="")
        summary["total_param_size"] = sizeof_fmt(total_param_size)
        if logging_to_stdout and log_params:
            print_param_stats(params)
    if cal_flops:
        total_flops, _ = sum_op_stats(flops, bar_length_max)
        summary["total_flops"] = sizeof_fmt(total_flops, suffix="OPs")
        if logging_to_stdout and log_flops:
            print_op_stats(flops)
    if cal_activations:
        total_act_dims, total_act_size, _ = sum_activations_stats(activations, bar_length_max)
        summary["total_act_dims"] = sizeof_fmt(total_act_dims, suffix="")
        summary["total_act_size"] = sizeof_fmt(total_act_size)
        if logging_to_stdout and log_activations:
            print_activations_stats(activations, has_inputs)
    if cal_flops and cal_params and total_param_size:
        summary["flops/param_size"] = f"{total_flops / total_param_size:3.3f}"
    print_summary(**summary)  # (also when logging_to_stdout is False, as upstream)
    return (total_stats(param_size=total_param_size, param_dims=total_param_dims,
                        flops=total_flops, act_size=total_act_size, act_dims=total_act_dims),
            stats_details(params=params, flops=flops, activations=activations))
